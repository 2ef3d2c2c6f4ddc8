"""``dsprep build-hdf5``, ``info``, ``verify`` and ``means`` from the command line."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_class_folders, smooth_image, unlistable, write_image

from dsprep import store
from dsprep.cli import main

CLASSES = ["cat", "dog", "fox"]


def make_split(root: Path, per_class: int = 3) -> Path:
    """A split folder laid out by hand: split.json, and train and val class folders."""
    for n, split in enumerate(("train", "val")):
        make_class_folders(root / split, CLASSES, per_class=per_class, seed=10 * n)
    (root / "split.json").write_text(json.dumps({"schema": "dsprep-split/1", "classes": CLASSES}))
    return root


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def built(tmp_path):
    src = make_split(tmp_path / "split")
    (src / "train" / "cat" / "broken.jpg").write_text("not an image")
    result = run("build-hdf5", src, tmp_path / "out", "--size", "24x16", "--workers", "1",
                 "--order", "sorted")
    assert result.exit_code == 0, result.output
    return tmp_path / "out", result.output


def test_build_prints_a_summary_and_writes_the_files(built):
    out, output = built
    assert "train.hdf5: 9 images, 1 skipped" in output
    assert "val.hdf5: 9 images in" in output
    assert "means.json: mean R=" in output
    assert "skipped.csv: 1 image skipped (not-an-image: 1)" in output
    assert "note: test: no files" in output
    with h5py.File(out / "train.hdf5", "r") as db:
        assert db["images"].shape == (9, 24, 16, 3)
        assert db.attrs["order"] == "sorted"
    assert (out / "skipped.csv").read_text().splitlines()[1].startswith(
        "train/cat/broken.jpg,not-an-image,")


def test_quiet_still_says_a_split_not_built_and_a_class_missing_from_one(tmp_path):
    # Batch jobs run with -q: a val/ of loose images (no val.hdf5) and a test/ whose class
    # folder is misspelt (a class never trained on) were notes on stdout, which -q hid.
    dump = tmp_path / "xray"
    make_class_folders(dump / "train", ("NORMAL", "PNEUMONIA"), per_class=3)
    make_class_folders(dump / "test", ("NORMAL", "Pneumonia"), per_class=2, seed=20)
    for i in range(2):
        write_image(dump / "val" / f"{i}.jpg", smooth_image(40, 40, seed=40 + i))
    result = run("-q", "build-hdf5", str(dump), str(tmp_path / "out"), "--size", "16",
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"note: val: no images in class folders of {dump / 'val'}, no val.hdf5 built" \
        in result.stderr
    assert "note: train: no images of class(es) Pneumonia" in result.stderr
    assert "note: test: no images of class(es) PNEUMONIA" in result.stderr
    assert ("note: classes that differ only in case (PNEUMONIA and Pneumonia) stay apart, but "
            "share one folder on a case-insensitive file system") in result.stderr
    assert "building its own split folders" not in result.output  # what asks for nothing


def test_an_image_beside_the_class_folders_is_named_not_passed_over(tmp_path):
    dump = tmp_path / "xray"
    make_class_folders(dump / "train", ("NORMAL", "PNEUMONIA"), per_class=3)
    make_class_folders(dump / "test", ("NORMAL", "PNEUMONIA"), per_class=2, seed=20)
    write_image(dump / "train" / "stray.jpeg", smooth_image(40, 40, seed=50))
    result = run("-q", "build-hdf5", str(dump), str(tmp_path / "out"), "--size", "16",
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "note: left out 1 image beside the class folders of train/, such as " \
        "train/stray.jpeg: it has no class" in result.stderr
    result = run("-q", "build-hdf5", str(dump / "train"), str(tmp_path / "one"), "--name",
                 "train", "--size", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "beside the class folders, such as stray.jpeg" in result.stderr
    from dsprep.generators import DirectoryGenerator

    gen = DirectoryGenerator(dump / "train", image_size=(16, 16), batch_size=2)
    assert [(p.name, why.split(":")[0]) for p, why in gen.skipped] == [
        ("stray.jpeg", "no-label")]


def test_build_refuses_to_overwrite_without_force(built, tmp_path):
    out, _ = built
    result = run("build-hdf5", tmp_path / "split", out, "--workers", "1")
    assert result.exit_code == 1
    assert "already exist" in result.output and "--force" in result.output
    assert "Traceback" not in result.output
    result = run("build-hdf5", tmp_path / "split", out, "--workers", "1", "--force",
                 "--size", "8", "--compression", "gzip", "--chunk-images", "2")
    assert result.exit_code == 0, result.output
    with h5py.File(out / "val.hdf5", "r") as db:
        assert db["images"].shape == (9, 8, 8, 3)
        assert db["images"].chunks == (2, 8, 8, 3) and db["images"].compression == "gzip"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "big"], "size 'big'"),
        (["--resize", "fill"], "'fill' is not one of"),
        (["--workers", "0"], "0 is not in the range"),
        (["--name", "x"], "drop --name"),
        (["--seed", "-1"], "-1 is not in the range"),
        (["--seed", str(2**63)], f"{2**63} is not in the range 0<=x<={2**63 - 1}"),
    ],
)
def test_bad_build_arguments_are_usage_errors(tmp_path, args, message):
    src = make_split(tmp_path / "split", per_class=1)
    result = run("build-hdf5", src, tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_a_name_given_with_its_extension_is_refused(tmp_path):
    # It wrote OUT/extra.hdf5.hdf5 without a word.
    src = make_class_folders(tmp_path / "extra", ("a", "b"), per_class=1)
    for given in ("extra.hdf5", "extra.h5"):
        result = run("build-hdf5", src, tmp_path / "out", "--name", given)
        assert result.exit_code == 2, result.output
        assert f"--name '{given}' is without the extension: give 'extra' to write " \
            "extra.hdf5" in result.output
    assert not (tmp_path / "out").exists()


def test_a_build_given_as_src_is_told_from_a_folder_without_images(built, tmp_path):
    # build-hdf5 OUT OUT2 said "no split.json; make it with 'dsprep split'".
    out = built[0]
    result = run("build-hdf5", out, tmp_path / "again")
    assert result.exit_code == 2, result.output
    assert f"{out} holds files build-hdf5 wrote, not images; give the folder they " \
        f"were built from ({tmp_path / 'split'})" in result.output
    assert not (tmp_path / "again").exists()
    # A notebook's hidden folder or a folder without images in OUT changes nothing.
    shutil.copytree(out, tmp_path / "out-copy")
    (tmp_path / "out-copy" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "out-copy" / "runs").mkdir()
    result = run("build-hdf5", tmp_path / "out-copy", tmp_path / "again")
    assert "holds files build-hdf5 wrote, not images" in result.output
    # Beside class folders, a stray .hdf5 does not make the folder a build's: --name is meant.
    classes = make_class_folders(tmp_path / "classes", ("a", "b"), per_class=1)
    shutil.copy(out / "train.hdf5", classes / "all.hdf5")
    result = run("build-hdf5", classes, tmp_path / "again")
    assert result.exit_code == 2 and "pass --name NAME" in result.output


def test_output_folder_equal_to_the_source_is_a_usage_error(tmp_path):
    src = make_split(tmp_path / "split", per_class=1)
    result = run("build-hdf5", src, src, "--workers", "1", "--force")
    assert result.exit_code == 2, result.output
    assert "is the source folder" in result.output and "Traceback" not in result.output
    assert not list(src.glob("*.hdf5"))


def test_verify_refuses_a_negative_seed(built):
    out, _ = built
    result = run("verify", out / "train.hdf5", "--sources", "1", "--seed", "-1")
    assert result.exit_code == 2, result.output
    assert "-1 is not in the range" in result.output


def test_the_largest_seed_builds_and_is_recorded(tmp_path):
    from dsprep import build

    src = make_split(tmp_path / "split", per_class=1)
    assert build.SEED_MAX == 2**63 - 1  # what the command line allows
    result = run("build-hdf5", src, tmp_path / "out", "--seed", str(2**63 - 1), "--workers", "1")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "out" / "train.hdf5", "r") as db:
        assert int(db.attrs["seed"]) == 2**63 - 1


def test_every_command_has_help():
    for command in ("build-hdf5", "info", "verify", "means"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert len(result.output.split("Options:")[0].strip()) > 40
    result = run("build-hdf5", "--help")
    for option in ("--size", "--resize", "--interpolation", "--exact", "--max-pixels", "--order",
                   "--seed", "--chunk-images", "--compression", "--workers", "--force", "--name"):
        assert option in result.output


def test_info_describes_the_file(built):
    out, _ = built
    result = run("info", out / "train.hdf5")
    assert result.exit_code == 0, result.output
    for text in ("dsprep-hdf5/1", "uint8 (9, 24, 16, 3)", "(9, 24, 16, 3)", "compression  none",
                 "3 classes", "mean RGB", "source_root", "skipped"):
        assert text in result.output
    rows = {line.split()[0]: line.split()[-1] for line in result.output.splitlines()
            if line.split() and line.split()[0] in CLASSES}
    with h5py.File(out / "train.hdf5", "r") as db:
        counts = np.bincount(db["labels"][()], minlength=len(CLASSES))
    assert rows == {c: str(n) for c, n in zip(CLASSES, counts.tolist(), strict=True)}
    # Attribute values are text: one left-aligned column, whatever their lengths.
    lines = result.output.splitlines()
    attrs = [line for line in lines[lines.index(next(x for x in lines
                                                     if x.startswith("attribute"))) + 2:]]
    starts = {line.index(line.split()[1]) for line in attrs if len(line.split()) >= 2}
    assert len(attrs) > 5 and len(starts) == 1


def test_info_counts_classes(built):
    out, _ = built
    result = run("info", out / "train.hdf5")
    lines = [line.split() for line in result.output.splitlines()]
    counts = {parts[0]: int(parts[1]) for parts in lines if len(parts) == 2 and parts[0] in CLASSES}
    assert counts == {"cat": 3, "dog": 3, "fox": 3}


def test_verify_passes_a_good_file_and_its_sources(built):
    out, _ = built
    result = run("verify", out / "train.hdf5", "--sources", "4")
    assert result.exit_code == 0, result.output
    assert "ok, every image read, 4 sources re-decoded" in result.output
    more = run("verify", out / "train.hdf5", "--sources", "100", "--quick")
    assert more.exit_code == 0 and "ok, 9 sources re-decoded" in more.output  # 9 rows


def test_verify_fails_on_a_tampered_file(built):
    out, _ = built
    with h5py.File(out / "train.hdf5", "r+") as db:
        db["labels"][0] = 9
        db["images"][2] = 0
    result = run("verify", out / "train.hdf5", "--sources", "9")
    assert result.exit_code == 1
    assert "labels fall outside" in result.output
    assert "row 2: pixels differ" in result.output
    # A black image moves the pixels' means and spreads away from the stored ones.
    assert "mean_rgb" in result.output and "std_rgb" in result.output
    assert "4 problem(s) found" in result.output
    quick = run("verify", out / "train.hdf5", "--sources", "9", "--quick")
    assert "2 problem(s) found" in quick.output and "mean_rgb" not in quick.output


def test_verify_catches_labels_changed_and_hand_edited_attributes(built, tmp_path):
    # Labels rolled by one row, or label_names swapped, verified "ok"; attributes edited by
    # hand made info and verify end in tracebacks.
    out, _ = built
    rolled = tmp_path / "rolled.hdf5"
    shutil.copy(out / "train.hdf5", rolled)
    with h5py.File(rolled, "r+") as db:
        db["labels"][...] = np.roll(db["labels"][()], 1)
    result = run("verify", rolled)
    assert result.exit_code == 1
    assert "labels do not name the class folder their file lies in (row " in result.output
    assert run("verify", out / "train.hdf5").exit_code == 0  # the build's own: sound
    # Every row relabelled as a class named like a folder on every path (a "train" class in
    # train/): the class folder's own depth is compared, not any folder.
    from dsprep import store as store_module

    as_split = tmp_path / "as-split.hdf5"
    shutil.copy(out / "train.hdf5", as_split)
    with h5py.File(as_split, "r+") as db:
        names = [n.decode() if isinstance(n, bytes) else n for n in db["label_names"][()]]
        del db["label_names"]
        db["label_names"] = np.array([("train" if i == 0 else n).encode()
                                      for i, n in enumerate(names)])
        db["labels"][...] = 0
    assert any("labels do not name the class folder" in p
               for p in store_module.check_file(as_split))
    # Files that store.write_arrays wrote from other names (no build) are not compared.
    images = np.zeros((4, 8, 8, 3), np.uint8)
    store_module.write_arrays(tmp_path / "wa.hdf5", images, [0, 0, 1, 1], ["cat", "dog"],
                              ["raw/cat/1.jpg", "raw/cat/3.jpg", "raw/dog/2.jpg", "raw/cat/4.jpg"])
    assert run("verify", tmp_path / "wa.hdf5").exit_code == 0
    edits = [("mean_rgb", [1.0, 2.0]), ("mean_rgb", np.zeros((2, 2))),
             ("mean_rgb", h5py.Empty("f8")), ("std_rgb", "x"), ("source_root", 5)]
    for key, value in edits:
        edited = tmp_path / f"{key}.hdf5"
        shutil.copy(out / "train.hdf5", edited)
        with h5py.File(edited, "r+") as db:
            db.attrs[key] = value
        for args in (["info", edited], ["verify", edited, "--sources", "2"]):
            result = run(*args)
            assert result.exception is None or isinstance(result.exception, SystemExit), \
                (key, args, result.output)
            assert "Traceback" not in result.output
        assert run("verify", edited, "--sources", "2").exit_code == 1, key
    # info counts rows whose label is no class id, which its table leaves out.
    with h5py.File(rolled, "r+") as db:
        db["labels"][0] = 7
    assert "note: 1 row with a label outside 0..2, in no class above" in run("info", rolled).output


def test_verify_of_moved_sources_does_not_ask_for_a_rebuild(built, tmp_path):
    # The file is whole; only its sources are elsewhere now.
    out, _ = built
    moved = tmp_path / "moved"
    (tmp_path / "split").rename(moved)
    result = run("verify", out / "train.hdf5", "--sources", "3")
    assert result.exit_code == 1
    assert "does not exist" in result.output and "--source-root" in result.output
    assert "reads whole, but 1 problem with its sources" in result.output
    assert "if they moved, give --source-root" in result.output
    assert "problem(s) found; rebuild it" not in result.output
    quick = run("verify", out / "train.hdf5", "--sources", "3", "--quick")
    assert quick.exit_code == 1 and "reads whole" not in quick.output
    assert "its pixels unread (--quick); verify it without --quick" in quick.output
    assert run("verify", out / "train.hdf5", "--sources", "3", "--source-root",
               moved).exit_code == 0
    # A --source-root given that is wrong too: the advice is to check it, not to give one.
    wrong = run("verify", out / "train.hdf5", "--sources", "3", "--source-root",
                tmp_path / "nowhere")
    assert wrong.exit_code == 1 and "if they moved, check the --source-root given" \
        in wrong.output


def test_verify_reads_the_pixels_for_damage_and_means(tmp_path):
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    assert run("build-hdf5", src, out, "--size", "16", "--workers", "1", "--compression",
               "gzip", "--chunk-images", "2", "-q").exit_code == 0
    path = out / "train.hdf5"
    with h5py.File(path, "r+") as db:
        means = db.attrs["mean_rgb"]
        db.attrs["mean_rgb"] = means + [2.0, 0.0, 0.0]
    tampered = run("verify", path)
    assert tampered.exit_code == 1 and "mean_rgb" in tampered.output
    assert "differs from the pixels'" in tampered.output
    with h5py.File(path, "r+") as db:
        db.attrs["mean_rgb"] = means
        chunk = db["images"].id.get_chunk_info(1)  # rows 2 and 3
    with open(path, "r+b") as fh:  # damage the compressed bytes of one chunk
        fh.seek(chunk.byte_offset + 4)
        fh.write(b"\xff" * 64)
    damaged = run("verify", path)
    assert damaged.exit_code == 1
    assert f"{path}: rows 2..3 cannot be read" in damaged.output
    assert "1 problem(s) found" in damaged.output
    # Re-decoding sources reads the rows too: the damaged ones are named, not a bare h5py
    # error that hid the finding above.
    with h5py.File(path, "r") as db:
        rows = db["images"].shape[0]
    with_sources = run("verify", path, "--sources", str(rows))
    assert with_sources.exit_code == 1, with_sources.output
    assert f"{path}: rows 2..3 cannot be read" in with_sources.output
    assert "row 2 cannot be read back" in with_sources.output
    assert "row 3 cannot be read back" in with_sources.output
    result = run("means", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "rows 2..3 cannot be read" in result.output
    from dsprep.errors import DatasetFormatError
    from dsprep.generators import HDF5Generator

    gen = HDF5Generator(path, batch_size=2, shuffle="none", output="uint8")
    gen[0]
    with pytest.raises(DatasetFormatError, match="rows 2..3 cannot be read .* damaged"):
        gen[1]
    # Rows from anywhere: the batch's span is named, not taken for the damaged rows.
    anywhere = HDF5Generator(path, batch_size=9, shuffle="full", output="uint8")
    with pytest.raises(DatasetFormatError, match="one of 9 rows read from 0 to 8 cannot be"):
        anywhere[0]


def test_means_of_a_file_without_images_is_an_error(tmp_path):
    path = store.write_arrays(tmp_path / "empty.hdf5", np.zeros((0, 4, 4, 3), np.uint8),
                              np.zeros(0, np.int64), CLASSES)
    result = run("means", path, "-o", tmp_path / "m.json")
    assert result.exit_code == 1 and "holds no images, so it has no means" in result.output
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("kind", ["text", "foreign"])
def test_verify_and_info_refuse_other_files_in_one_line(tmp_path, kind):
    path = tmp_path / "x.hdf5"
    if kind == "text":
        path.write_text("hello")
    else:
        with h5py.File(path, "w") as f:
            f["data"] = np.arange(3)
    for command in ("verify", "info", "means"):
        result = run(command, path)
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert "build it with 'dsprep build-hdf5'" in result.output


def test_means_recomputes_and_writes_json(built, tmp_path):
    out, _ = built
    with h5py.File(out / "train.hdf5", "r") as db:
        flat = db["images"][()].reshape(-1, 3).astype(np.float64)
    result = run("means", out / "train.hdf5", "-o", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "m.json").read_text())
    np.testing.assert_allclose([record[c] for c in "RGB"], flat.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose([record["std"][c] for c in "RGB"], flat.std(axis=0), atol=1e-6)
    assert record["count"] == 9 and record["source"] == "train.hdf5"
    assert record == json.loads((out / "means.json").read_text())
    printed = run("-q", "means", out / "train.hdf5")
    assert json.loads(printed.output) == record
    # -q after the command works as before it; without it a progress bar goes to stderr too.
    after = CliRunner().invoke(main, ["means", str(out / "train.hdf5"), "-q"])
    assert after.exit_code == 0 and after.output == printed.output
    loud = CliRunner().invoke(main, ["means", str(out / "train.hdf5")],
                              env={"DSPREP_PROGRESS": "1"})
    assert loud.output != printed.output
    # An existing file is replaced only with --force, and FILE itself never.
    (tmp_path / "m.json").write_text("{}")
    kept = run("means", out / "train.hdf5", "-o", tmp_path / "m.json")
    assert kept.exit_code == 1 and "exists; use --force" in kept.output
    assert (tmp_path / "m.json").read_text() == "{}"
    forced = run("means", out / "train.hdf5", "-o", tmp_path / "m.json", "--force")
    assert forced.exit_code == 0 and json.loads((tmp_path / "m.json").read_text()) == record
    before = (out / "train.hdf5").read_bytes()
    itself = run("means", out / "train.hdf5", "-o", out / "train.hdf5", "--force")
    assert itself.exit_code == 2 and "is FILE itself" in itself.output
    # A means.json of another split than train (which train would subtract) is warned of.
    val = run("means", out / "val.hdf5", "-o", tmp_path / "means.json")
    assert val.exit_code == 0, val.output
    assert (f"warning: {tmp_path / 'means.json'} is where a build keeps its training split's "
            f"means, which train subtracts; these are of {out / 'val.hdf5'}, the val split"
            ) in val.output
    train = run("means", out / "train.hdf5", "-o", tmp_path / "means.json", "--force")
    assert train.exit_code == 0 and "warning" not in train.output
    assert (out / "train.hdf5").read_bytes() == before
    # Another data file, or a dangling link, is not written over either.
    shutil.copy(out / "val.hdf5", tmp_path / "Val.HDF5.bak")
    for data in (out / "val.hdf5", tmp_path / "Val.HDF5.bak"):  # known by what it holds
        other = run("means", out / "train.hdf5", "-o", data, "--force")
        assert other.exit_code == 2 and "is an HDF5 file; the means go to a .json file" \
            in other.output
        assert store.check_file(data) == []
    (tmp_path / "old.h5").write_text("{}")  # a JSON file, whatever its name
    assert run("means", out / "train.hdf5", "-o", tmp_path / "old.h5", "--force").exit_code == 0
    (tmp_path / "link.json").symlink_to(tmp_path / "nowhere" / "m.json")
    dangling = run("means", out / "train.hdf5", "-o", tmp_path / "link.json")
    assert dangling.exit_code == 1 and "exists; use --force" in dangling.output


def _default_stop_signals():
    """Give a child the default SIGINT and SIGHUP handling: a suite run under nohup, or in the
    background of a script, would otherwise pass on its ignored ones."""
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def _build_reaching_val(src, out):
    """A ``dsprep build-hdf5`` process, returned once it writes val.hdf5.partial (large photos
    decoded with --exact take a second or more each, so it is surely mid-way through val)."""
    big = cv2.resize(smooth_image(64, 64, seed=7), (6000, 6000), interpolation=cv2.INTER_LINEAR)
    slow = [write_image(src / "val" / "fox" / f"big_{k}.jpg", big, quality=70) for k in range(4)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsprep", "-q", "build-hdf5", str(src), str(out), "--workers", "2",
         "--exact"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=_default_stop_signals,
    )
    deadline = time.monotonic() + 60
    while not store.partial_path(out / "val.hdf5").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the build never reached val.hdf5: {proc.communicate()}")
        time.sleep(0.05)
    return proc, slow


@pytest.mark.slow
def test_killed_main_process_leaves_no_final_file_and_reruns_cleanly(tmp_path):
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    proc, slow = _build_reaching_val(src, out)
    try:
        time.sleep(0.3)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    # train.hdf5 was finished before the kill, but nothing carries a final name yet.
    for name in ("train.hdf5", "val.hdf5", "means.json", "skipped.csv"):
        assert not (out / name).exists(), name
    for path in slow:
        path.unlink()
    left = sorted(p.name for p in out.glob("*.partial"))
    assert left
    result = CliRunner().invoke(main, ["build-hdf5", str(src), str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    # The unfinished files are said to be discarded (a build does not resume).
    assert f"note: discarded {', '.join(left)} (" in result.output
    assert "left by a build that was stopped" in result.output
    for split in ("train", "val"):
        assert store.check_file(out / f"{split}.hdf5") == []
    assert not list(out.glob("*.partial"))


@pytest.mark.slow
@pytest.mark.parametrize("signum, group", [
    (signal.SIGTERM, False), (getattr(signal, "SIGHUP", None), False),
    (getattr(signal, "SIGHUP", None), True), (signal.SIGINT, False)],
    ids=["SIGTERM", "SIGHUP", "SIGHUP-to-the-group", "SIGINT"])
def test_a_stopped_build_cleans_up_and_says_which_signal(tmp_path, signum, group):
    # A batch system's SIGTERM, the SIGHUP of an ssh session that closed (to every process of
    # the job, the resource trackers too), or a Ctrl-C: the build removes its partial file
    # and stops its workers, and the status names the signal.
    if signum is None:
        pytest.skip("no SIGHUP on this OS")
    # Enough images for val to be decoded by the worker pool (the trackers are then running).
    src = make_split(tmp_path / "split", per_class=25 if group else 3)
    out = tmp_path / "out"
    proc, _ = _build_reaching_val(src, out)
    try:
        (os.killpg if group else os.kill)(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err.decode() and "died unexpectedly" not in err.decode()
    # What to do next is said for each, after the clean-up.
    assert err.decode().rstrip().endswith("Nothing half-written was kept; run the same "
                                          "command again.")
    assert not list(out.glob("*.partial")) and not (out / "val.hdf5").exists()
    assert run("build-hdf5", src, out, "--force").exit_code == 0


@pytest.mark.slow
def test_closed_stdout_and_stderr_neither_fail_a_build_nor_land_in_its_files(tmp_path):
    # A daemon or 'cmd >&- 2>&-' starts the command without descriptors 1 and 2: the workers
    # must start, no bar may fail, and nothing the libraries print may land in an output file.
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    env = {**os.environ, "DSPREP_PROGRESS": "1"}
    done = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m dsprep build-hdf5 "{src}" "{out}" --workers 2 '
         f'--size 24 >&- 2>&-; echo "status $?" > "{tmp_path / "status"}"'],
        env=env, timeout=300)
    assert done.returncode == 0
    assert (tmp_path / "status").read_text() == "status 0\n"
    for split in ("train", "val"):
        assert store.check_file(out / f"{split}.hdf5") == []
    checked = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m dsprep verify "{out / "train.hdf5"}" 2>&-'],
        env=env, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "ok, every image read" in checked.stdout


def test_bars_show_on_a_terminal_only_unless_asked(monkeypatch):
    from dsprep.cli import _common

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.delenv("DSPREP_PROGRESS", raising=False)
    monkeypatch.setattr(_common, "is_quiet", lambda: False)
    for tty in (True, False):
        monkeypatch.setattr(sys, "stderr", Stream(tty))
        assert _common.show_progress() is tty
        monkeypatch.setenv("DSPREP_PROGRESS", "1")
        assert _common.show_progress() is True
        monkeypatch.setenv("DSPREP_PROGRESS", "0")
        assert _common.show_progress() is False
        # The usual words for on and off, as a batch script may write them.
        for word, on in (("yes", True), ("True", True), ("ON", True), ("no", False),
                         ("false", False), ("off", False)):
            monkeypatch.setenv("DSPREP_PROGRESS", word)
            assert _common.show_progress() is on, word
        monkeypatch.delenv("DSPREP_PROGRESS")
    monkeypatch.setattr(_common, "is_quiet", lambda: True)
    monkeypatch.setenv("DSPREP_PROGRESS", "1")
    assert _common.show_progress() is False and _common.show_epochs() is False


def test_an_unknown_progress_setting_is_warned_of_once(monkeypatch, capsys):
    # DSPREP_PROGRESS=ture (a typo) was taken as "on a terminal only" without a word.
    from dsprep.cli import _common

    monkeypatch.setattr(_common, "is_quiet", lambda: False)
    monkeypatch.setattr(_common, "_WARNED", set())
    monkeypatch.setenv("DSPREP_PROGRESS", "ture")
    assert _common.show_progress() is False  # captured stderr is no terminal
    assert _common.show_progress() is False
    assert capsys.readouterr().err == ("warning: DSPREP_PROGRESS=ture is none of 1/0, yes/no, "
                                       "true/false, on/off; progress bars show on a terminal "
                                       "only\n")


def test_an_output_given_as_a_link_to_nothing_is_refused(tmp_path):
    # Writing through it would replace the link with a local folder, away from its target
    # (an unmounted scratch volume): the data would land on the wrong disk.
    src = make_split(tmp_path / "split")
    dump = make_class_folders(tmp_path / "dump", CLASSES, per_class=4)
    for command in (["build-hdf5", src], ["split", dump], ["split", dump, "--dry-run"]):
        link = tmp_path / "out"
        link.symlink_to(tmp_path / "scratch" / "out")
        result = run(*command[:2], link, *command[2:])
        assert result.exit_code == 2, result.output
        assert "is a link to" in result.output and "which does not exist" in result.output
        assert link.is_symlink() and not (tmp_path / "scratch").exists()
        link.unlink()
        # The link higher up the path: the folder cannot be made ("File exists").
        link.symlink_to(tmp_path / "scratch")
        result = run(*command[:2], link / "sub", *command[2:])
        assert result.exit_code == 2, result.output
        assert f"{link} is a link to {tmp_path / 'scratch'}, which does not exist" \
            in result.output
        link.unlink()


def test_a_class_whose_every_training_image_is_bad_is_warned_of_even_with_q(tmp_path):
    src = make_split(tmp_path / "split")
    for path in (src / "train" / "dog").iterdir():
        path.write_bytes(path.read_bytes()[:40])  # truncated: undecodable
    result = run("-q", "build-hdf5", src, tmp_path / "out", "--size", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert (f"warning: every image of dog in train was left out, so train.hdf5 holds none of "
            f"it; see {tmp_path / 'out' / 'skipped.csv'}") in result.output
    assert "of cat" not in result.output and " in val " not in result.output


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_a_build_of_a_linked_split_stays_up_to_date_when_the_dump_is_chmodded(tmp_path, mode):
    # The split's files are the dump's: a chmod of the dump (to keep it safe) or another
    # hardlink split of it moves their change times, not what they hold.
    dump = make_class_folders(tmp_path / "dump", CLASSES, per_class=6)
    src, out = tmp_path / "split", tmp_path / "out"
    assert run("-q", "split", dump, src, "--mode", mode).exit_code == 0
    build = ["build-hdf5", src, out, "--size", "16", "--workers", "1"]
    assert run(*build).exit_code == 0
    assert run("-q", "split", dump, tmp_path / "other", "--mode", "hardlink",
               "--seed", "3").exit_code == 0
    shutil.rmtree(tmp_path / "other")
    for path in dump.rglob("*.jpg"):
        path.chmod(0o444)
    again = run(*build)
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    # What the files hold is still watched: one touched is a change.
    touched = next(dump.rglob("*.jpg"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert "already exist" in run(*build).output


def test_a_build_run_again_on_the_same_split_has_nothing_to_do(tmp_path):
    # A job that runs 'dsprep split' and 'dsprep build-hdf5' again after their end: split says
    # nothing to do, and so must the build, not fail for want of --force.
    dump = make_class_folders(tmp_path / "dump", CLASSES, per_class=6)
    src, out = tmp_path / "split", tmp_path / "out"
    assert run("-q", "split", dump, src).exit_code == 0
    build = ["build-hdf5", src, out, "--size", "16", "--workers", "1"]
    assert run(*build).exit_code == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    again = run(*build)
    assert again.exit_code == 0, again.output
    assert "already holds this build" in again.output and "nothing to do" in again.output
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
    # A stray file dropped into the dump changes only what the split leaves out: the split
    # keeps its files, and the build is still up to date.
    (dump / "cat" / "notes.png").write_text("not an image")
    again = run("split", dump, src)
    assert again.exit_code == 0 and "only the files left out changed" in again.output
    again = run(*build)
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    # Other options, or a split made again another way, are another build: refused as before.
    other = run(*build[:-2], "--workers", "1", "--size", "8")
    assert other.exit_code == 1 and "already exist" in other.output
    # So is a split whose files changed by hand with their number kept: one moved to another
    # class, one replaced (or repaired) in place.
    moved = next((src / "train" / "cat").iterdir())
    moved.rename(src / "train" / "dog" / moved.name)
    assert "already exist" in run(*build).output
    (src / "train" / "dog" / moved.name).rename(moved)
    assert "already exist" in run(*build).output  # moved back: rebuilt, never wrongly kept
    assert run(*build, "--force").exit_code == 0
    assert "nothing to do" in run(*build).output
    os.utime(moved, ns=(moved.stat().st_atime_ns, moved.stat().st_mtime_ns + 10**9))
    assert "already exist" in run(*build).output
    assert run(*build, "--force").exit_code == 0
    # Other bytes of the same size under the same time (cp -p of a fixed image): the inode's
    # change time tells.
    before = moved.stat()
    data = bytearray(moved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    moved.write_bytes(bytes(data))
    os.utime(moved, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert moved.stat().st_size == before.st_size
    assert "already exist" in run(*build).output
    assert run("-q", "split", dump, src, "--seed", "5", "--force").exit_code == 0
    resplit = run(*build)
    assert resplit.exit_code == 1 and "already exist" in resplit.output
    assert run(*build, "--force").exit_code == 0
    (out / "means.json").unlink()
    gone = run(*build)
    assert gone.exit_code == 1 and "already exist" in gone.output


def test_the_interpolations_offered_are_those_the_build_knows():
    from dsprep import images
    from dsprep.cli import cmd_build

    # Written out in the command so that --help loads no OpenCV; they must not drift apart.
    assert cmd_build._INTERPOLATIONS == ("auto", *images.INTERPOLATIONS)


def test_a_split_is_built_and_read_with_its_own_pixel_limit(tmp_path, monkeypatch):
    from dsprep import images
    from dsprep.generators import DirectoryGenerator

    dump, dest = tmp_path / "dump", tmp_path / "split"
    make_class_folders(dump, classes=("a", "b"), per_class=4)  # 48x64: 3,072 pixels
    write_image(dump / "a" / "large.jpg", smooth_image(80, 100, seed=50))  # 8,000 pixels
    result = run("split", dump, dest, "--max-pixels", "10000", "--ratios", "0.5,0.5")
    assert result.exit_code == 0, result.output
    kept = json.loads((dest / "split.json").read_text())["counts"]
    assert sum(n for split in kept.values() for n in split.values()) == 9
    # The default limit below the large image, so that only the split's limit keeps it.
    monkeypatch.setattr(images, "DEFAULT_MAX_PIXELS", 5000)

    # No --max-pixels: the split's limit, so every image it kept is built.
    result = run("build-hdf5", dest, tmp_path / "out", "--size", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"note: --max-pixels 10,000, the limit the split {dest.resolve()} applied" \
        in result.output
    rows = 0
    for split in ("train", "val"):
        with h5py.File(tmp_path / "out" / f"{split}.hdf5", "r") as f:
            rows += len(f["labels"])
            assert f.attrs["max_pixels"] == 10000
    assert rows == 9
    # A lower limit given is applied.
    result = run("build-hdf5", dest, tmp_path / "low", "--size", "16", "--workers", "1",
                 "--max-pixels", "5000")
    assert result.exit_code == 0, result.output
    assert "1 image skipped (too-large: 1)" in result.output
    # So is one split folder built on its own.
    with open(dest / "files.csv", newline="") as fh:
        where = next(r["split"] for r in csv.DictReader(fh) if r["source"] == "a/large.jpg")
    result = run("build-hdf5", dest / where, tmp_path / "one", "--name", where, "--size", "16",
                 "--workers", "1")
    assert result.exit_code == 0 and "skipped" not in result.output, result.output
    with h5py.File(tmp_path / "one" / f"{where}.hdf5", "r") as f:
        assert len(f["labels"]) == sum(kept[where].values())

    # The directory generator reads a split's folders with the same limit.
    gens = [DirectoryGenerator(dest / split, image_size=16, batch_size=2) for split in
            ("train", "val")]
    assert sum(g.num_samples for g in gens) == 9 and not any(g.skipped for g in gens)
    assert [g.max_pixels for g in gens] == [10000, 10000]
    low = [DirectoryGenerator(dest / split, image_size=16, batch_size=2, max_pixels=5000)
           for split in ("train", "val")]
    left_out = [path.name for g in low for path, _ in g.skipped]
    assert left_out == ["large.jpg"]
    with pytest.raises(Exception, match="max_pixels must be a whole number"):
        DirectoryGenerator(dest / "train", image_size=16, max_pixels=-1)


def test_files_the_split_placed_and_gone_since_are_reported(tmp_path):
    dump, dest, out = tmp_path / "dump", tmp_path / "split", tmp_path / "out"
    make_class_folders(dump, classes=("a", "b", "c"), per_class=4)
    assert run("split", dump, dest, "--ratios", "0.5,0.5").exit_code == 0
    with open(dest / "files.csv", newline="") as fh:
        placed = list(csv.DictReader(fh))
    shutil.rmtree(dest / "train" / "c")
    gone = sorted((dest / "val" / "a").iterdir())[0]
    gone.unlink()
    # The placed files are files.csv's: split.json's counts (edited, or left out) do not count.
    manifest = json.loads((dest / "split.json").read_text())
    del manifest["counts"]
    (dest / "split.json").write_text(json.dumps(manifest))
    result = run("-q", "build-hdf5", dest, out, "--size", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    with open(out / "skipped.csv", newline="") as fh:
        skipped = {(r["source"], r["reason"]) for r in csv.DictReader(fh)}
    expected = {r["path"] for r in placed if (r["split"], r["class"]) == ("train", "c")}
    assert len(expected) == 2
    assert skipped == {(p, "missing-file") for p in expected | {f"val/a/{gone.name}"}}
    # Said even with -q (on stderr), as split says of files it cannot read.
    fault = (r"warning: 3 images could not be read or were gone, e\.g\. \S+ \(missing-file\): "
             r"they are not in the files; make them readable, or put them back, and build again "
             r"with --force")
    assert re.search(fault, result.output), result.output
    # And again by a run that finds the build up to date (a job run again carries on).
    again = run("-q", "build-hdf5", dest, out, "--size", "16", "--workers", "1")
    assert again.exit_code == 0 and re.search(fault, again.output), again.output
    assert "nothing to do" in run("build-hdf5", dest, out, "--size", "16", "--workers",
                                  "1").output
    assert "warning: train: every image of c the split placed is gone since (deleted or " \
        "moved), so it is not in train.hdf5" in result.output
    # Run again: nothing to do, and still said.
    result = run("-q", "build-hdf5", dest, out, "--size", "16", "--workers", "1")
    assert result.exit_code == 0 and "every image of c the split placed is gone" in result.output
    # A split folder gone as a whole: said even with -q.
    shutil.rmtree(dest / "val")
    result = run("-q", "build-hdf5", dest, tmp_path / "out2", "--size", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    in_val = sum(r["split"] == "val" for r in placed)
    assert f"warning: val: the split placed {in_val} images in {dest / 'val'}, and none is " \
        "there now: no val.hdf5 built" in result.output
    result = run("build-hdf5", dest, tmp_path / "out3", "--size", "16", "--workers", "1")
    assert result.output.count("val.hdf5 built") == 1, result.output  # not a note as well
    # Into the first OUT: nothing to do for train, and its val.hdf5 is named as not of it.
    result = run("-q", "build-hdf5", dest, out, "--size", "16", "--workers", "1")
    assert result.exit_code == 0 and f"{out / 'val.hdf5'} is not from this build" \
        in result.output, result.output


def test_a_class_folder_that_cannot_be_read_is_not_called_gone(tmp_path, monkeypatch):
    from dsprep import build
    from dsprep.sources import UNREADABLE, Skipped

    dump, dest = tmp_path / "dump", tmp_path / "split"
    make_class_folders(dump, classes=("a", "b"), per_class=4)
    assert run("split", dump, dest, "--ratios", "0.5,0.5").exit_code == 0
    real = build.class_folder_files

    def unreadable_b(folder, problems, **kwargs):  # as a folder without read permission
        classes, pairs = real(folder, problems, **kwargs)  # (root reads all)
        problems.append(Skipped("b", UNREADABLE, "Permission denied"))
        first_a = next(p for c, p in pairs if c == "a")  # and one link that cannot be followed
        problems.append(Skipped(first_a, UNREADABLE, "Too many levels of symbolic links"))
        return classes, [(c, p) for c, p in pairs if c != "b" and p != first_a]

    monkeypatch.setattr(build, "class_folder_files", unreadable_b)
    result = run("build-hdf5", dest, tmp_path / "out", "--size", "16", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "left out train/b: unreadable (Permission denied)" in result.output
    assert "unreadable (Too many levels of symbolic links)" in result.output
    assert "gone since" not in result.output and "missing-file" not in \
        (tmp_path / "out" / "skipped.csv").read_text()


def test_another_tools_split_json_above_a_train_folder_is_not_read(tmp_path):
    data = tmp_path / "data"
    make_class_folders(data / "train", classes=("a", "b"), per_class=2)
    (data / "split.json").write_text('{"train": ["a"], "test": ["b"]}')
    result = run("build-hdf5", data / "train", tmp_path / "out", "--name", "train", "--size", "16",
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "out" / "train.hdf5", "r") as f:
        assert len(f["labels"]) == 4


def test_a_class_folder_that_cannot_be_listed_stops_the_build(tmp_path, monkeypatch):
    # Leaving its images out would build a train file without the class (exit 0, a note).
    src = make_split(tmp_path / "split")
    unlistable(monkeypatch, src / "train" / "dog")
    result = run("build-hdf5", str(src), str(tmp_path / "out"), "--size", "32")
    assert result.exit_code == 1, result.output
    assert f"{src / 'train' / 'dog'}: Permission denied: this folder" in result.output
    assert not (tmp_path / "out" / "train.hdf5").exists()


def test_an_up_to_date_build_removes_what_a_stopped_force_build_left(built, tmp_path):
    out, _ = built
    # 'build-hdf5 --force' of other options killed before it named its files.
    stale = [out / "train.hdf5.partial", out / "means.json.next", out / "skipped.csv.next"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    result = run("build-hdf5", tmp_path / "split", out, "--size", "24x16", "--workers", "1",
                 "--order", "sorted")
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    assert not any(p.exists() for p in stale)
    assert {"train.hdf5", "val.hdf5", "means.json"} <= {p.name for p in out.iterdir()}


def test_names_near_the_file_name_limit_are_split_and_built(tmp_path):
    # A DEST or --name whose work names (.DEST.split-partial, NAME.skipped.csv.next.partial)
    # pass 255 bytes while the names themselves fit.
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=4)
    dest = tmp_path / ("d" * 250)
    result = run("split", str(dump), str(dest))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["dump", dest.name])
    name = "n" * 243  # NAME.skipped.csv is 255 bytes
    result = run("build-hdf5", str(dest / "train"), str(tmp_path / "out"), "--name", name,
                 "--size", "16")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{name}.hdf5",
                                                                    f"{name}.skipped.csv"]
    result = run("build-hdf5", str(dest / "train"), str(tmp_path / "out2"), "--name",
                 name + "nn", "--size", "16")
    assert result.exit_code == 2 and "--name is too long" in result.output
    assert "257 bytes" in result.output and not (tmp_path / "out2").exists()


def test_a_zip_given_to_build_is_sent_to_split(tmp_path):
    src = make_class_folders(tmp_path / "dump", CLASSES, per_class=2)
    archive = shutil.make_archive(str(tmp_path / "dump"), "zip", src)
    result = run("build-hdf5", archive, tmp_path / "out")
    assert result.exit_code == 2
    assert "is a file, not a folder (a .zip: 'dsprep split' reads it in place" in result.output
    (tmp_path / "notes.txt").write_text("x")
    result = run("build-hdf5", tmp_path / "notes.txt", tmp_path / "out")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert ".zip" not in result.output and not (tmp_path / "out").exists()
