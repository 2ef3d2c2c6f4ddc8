"""The demo end to end, exactly as `make demo` runs it, and the preview picture it leaves."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from dsprep.cli import main
from dsprep.store import write_arrays


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_learns(tmp_path):
    import keras

    from dsprep.train.predict import load_model

    work = tmp_path / "demo-work"
    result = CliRunner().invoke(main, ["demo", str(work)])
    assert result.exit_code == 0, result.output
    for step in ("sample-dump", "split", "build-hdf5", "train", "evaluate"):
        assert f"$ dsprep {step} " in result.output
    assert "left out" in result.output  # the bad files of the dump are reported
    for name in ("split/split.json", "split/skipped.csv", "hdf5/train.hdf5", "hdf5/test.hdf5",
                 "hdf5/means.json", "run/curves.png", "run/best.keras", "preview.png",
                 "run/confusion-test-center.png"):
        assert (work / name).is_file(), name

    # Accuracy recomputed here from the files, independently of dsprep's evaluate: the model
    # takes uint8 pixels (it subtracts the mean itself) centre-cropped to its input size.
    model = load_model(work / "run" / "best.keras")
    h, w = model.input_shape[1:3]
    with h5py.File(work / "hdf5" / "test.hdf5", "r") as db:
        images, labels = db["images"][()], db["labels"][()]
    top, left = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    crops = images[:, top:top + h, left:left + w]
    preds = np.argmax(keras.ops.convert_to_numpy(model.predict(crops, verbose=0)), axis=1)
    accuracy = float(np.mean(preds == labels))
    # Three balanced classes make chance 1/3. With 90 test images, 0.8 (72 right) is more than
    # eight standard deviations above chance; the demo reaches about 0.98, which leaves room
    # for numerical differences between machines.
    assert len(labels) >= 60
    assert accuracy >= 0.8, accuracy


def test_demo_refuses_a_foreign_non_empty_workdir(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    result = CliRunner().invoke(main, ["demo", str(tmp_path)])
    assert result.exit_code == 2
    assert "not made by 'dsprep demo'" in result.output
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_a_demo_stopped_by_ctrl_c_runs_no_further_step(tmp_path, monkeypatch):
    from dsprep.cli import cmd_dump, cmd_split

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    steps = []
    monkeypatch.setattr(cmd_dump, "write_sample_dump", interrupted)
    monkeypatch.setattr(cmd_split, "run", lambda *a, **k: steps.append("split"))
    monkeypatch.setattr(cmd_split, "plan", lambda *a, **k: steps.append("split"))
    result = CliRunner().invoke(main, ["demo", str(tmp_path / "work")])
    assert result.exit_code == 130 and "Aborted!" in result.output
    assert steps == [] and "$ dsprep split" not in result.output
    # The step's own advice (the next sample-dump carries on) is not demo's: it starts afresh.
    assert "the images written so far wait" not in result.output


def test_preview_shows_mean_subtracted_patches(tmp_path):
    from dsprep.demo import write_preview

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    path = write_arrays(tmp_path / "train.hdf5", images, [0, 1] * 4, ["a", "b"])
    means = {"R": 100.0, "G": 110.0, "B": 120.0}
    (tmp_path / "means.json").write_text(json.dumps(means))
    out = write_preview(path, tmp_path / "means.json", tmp_path / "p.png", (16, 16),
                        rows=2, cols=4, zoom=1)
    grid = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert grid.shape == (2 * (16 + 16), 4 * 16, 3)
    # Each tile is a 16x16 window of some stored image (possibly mirrored), minus the means,
    # plus 128 for display.
    shift = np.array([128 - 100, 128 - 110, 128 - 120])
    tile = grid[:16, :16].astype(int)
    found = False
    for image in images.astype(int):
        for view in (image, image[:, ::-1]):
            for t in range(5):
                for s in range(5):
                    if np.array_equal(np.clip(view[t:t + 16, s:s + 16] + shift, 0, 255), tile):
                        found = True
    assert found


def test_demo_passes_its_verbosity_to_its_steps(tmp_path, monkeypatch):
    # -vv shows the native libraries' lines: in each step too, which runs as a command of its
    # own. The first step is stopped once it has shown what it was given.
    from dsprep.cli import _common, cmd_dump

    seen = []

    def first_step(*args, **kwargs):
        seen.append((_common.verbosity(), _common.is_quiet()))
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd_dump, "write_sample_dump", first_step)
    for flags, expected in (([], (0, False)), (["-vv"], (2, False)), (["-q"], (0, True))):
        seen.clear()
        result = CliRunner().invoke(main, [*flags, "demo", str(tmp_path / "work")])
        assert result.exit_code == 130 and seen == [expected], (flags, result.output)
