"""The sample-dump generator: layouts, determinism, sizes, bad files, learnable classes."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from dsprep import images
from dsprep.errors import CorruptImageError, DestinationExistsError, UsageError
from dsprep.sample import _draw_size, make_image, write_sample_dump


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_folders_layout_writes_class_folders_of_jpegs(tmp_path):
    summary = write_sample_dump(tmp_path / "d", per_class=4)
    tree = _tree(tmp_path / "d")
    assert sorted(tree) == sorted(f"{c}/{c}_{i:05d}.jpg" for c in ("brick", "grass", "gravel")
                                  for i in range(4))
    assert summary.images == 12 and summary.classes == ["brick", "grass", "gravel"]
    assert summary.bytes == sum(len(b) for b in tree.values())
    for data in tree.values():
        assert data[:3] == b"\xff\xd8\xff"  # JPEG signature
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.ndim == 3 and image.shape[2] == 3


def test_force_onto_a_link_to_a_folder_fills_the_folder(tmp_path):
    # It failed with "Cannot call rmtree on a symbolic link", leaving a copy beside it.
    target = tmp_path / "target"
    write_sample_dump(target, layout="folders", per_class=1)
    (tmp_path / "link").symlink_to(target)
    write_sample_dump(tmp_path / "link", layout="prefix", per_class=1, overwrite=True)
    assert (tmp_path / "link").is_symlink() and (target / "train").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_prefix_layout_is_flat_like_dogs_vs_cats(tmp_path):
    write_sample_dump(tmp_path / "d", layout="prefix", per_class=2, classes=["grass", "cat"])
    assert sorted(_tree(tmp_path / "d")) == [
        "train/cat.0.jpg", "train/cat.1.jpg", "train/grass.0.jpg", "train/grass.1.jpg"]


def test_csv_layout_labels_every_image_once(tmp_path):
    write_sample_dump(tmp_path / "d", layout="csv", per_class=3)
    root = tmp_path / "d"
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "label"]
    ids = [r[0] for r in rows[1:]]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 10)]
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{i}.jpg" for i in ids)
    labels = [r[1] for r in rows[1:]]
    assert {lab: labels.count(lab) for lab in labels} == {"brick": 3, "grass": 3, "gravel": 3}
    # Ids are shuffled: the labels in id order are not three sorted runs.
    assert labels != sorted(labels)


def test_same_seed_same_bytes_and_workers_do_not_matter(tmp_path):
    # 45 images make several chunks, so two processes really share the work.
    a = write_sample_dump(tmp_path / "a", per_class=15, seed=7, workers=1)
    b = write_sample_dump(tmp_path / "b", per_class=15, seed=7, workers=2)
    c = write_sample_dump(tmp_path / "c", per_class=15, seed=8, workers=1)
    assert _tree(a.dest) == _tree(b.dest)
    assert _tree(a.dest).keys() == _tree(c.dest).keys()
    assert all(_tree(a.dest)[k] != _tree(c.dest)[k] for k in _tree(a.dest))


def test_an_image_does_not_depend_on_the_other_classes(tmp_path):
    a = write_sample_dump(tmp_path / "a", per_class=2, classes=["grass"])
    b = write_sample_dump(tmp_path / "b", per_class=5, classes=["brick", "grass", "moon"])
    assert (a.dest / "grass/grass_00001.jpg").read_bytes() == (
        b.dest / "grass/grass_00001.jpg").read_bytes()


def test_images_differ_within_a_class():
    images = [make_image("brick", i)[0] for i in range(6)]
    shapes = {im.shape for im in images}
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            if images[i].shape == images[j].shape:
                assert np.abs(images[i].astype(int) - images[j]).mean() > 5
    assert len(shapes) > 1


def test_sizes_are_like_dogs_vs_cats():
    rng = np.random.default_rng(0)
    sizes = [_draw_size(rng) for _ in range(4000)]
    long_500 = sum(max(s) == 500 for s in sizes) / len(sizes)
    tiny = sum(max(s) < 100 for s in sizes) / len(sizes)
    portrait = sum(h == 500 and w < 500 for h, w in sizes) / len(sizes)
    assert long_500 > 0.8
    assert 0.02 < tiny < 0.07
    assert 0.15 < portrait < 0.4
    assert sum(s == (375, 500) for s in sizes) / len(sizes) > 0.25


def test_jpeg_quality_in_range():
    qualities = {make_image("gravel", i, seed=3)[1] for i in range(200)}
    assert min(qualities) >= 75 and max(qualities) <= 95 and len(qualities) > 10


@pytest.mark.parametrize(("layout", "classes"), [
    ("folders", None), ("prefix", None), ("csv", None),
    # The truncated file was cut at a third of another image's length: here, past its end.
    ("csv", ["cat", "moon", "brick"])])
def test_bad_files_are_what_they_claim(tmp_path, layout, classes):
    summary = write_sample_dump(tmp_path / "d", layout=layout, per_class=2, with_bad_files=True,
                                classes=classes)
    root = summary.dest
    kinds = {kind: rel for rel, kind in summary.bad_files}
    expected = {"empty", "truncated", "text", "alpha", "grayscale", "duplicate"}
    if layout == "csv":
        expected |= {"missing", "unlabelled"}
    assert set(kinds) == expected
    assert (root / kinds["empty"]).stat().st_size == 0
    assert not (root / kinds["text"]).read_bytes().startswith(b"\xff\xd8")
    truncated = (root / kinds["truncated"]).read_bytes()
    assert truncated[:2] == b"\xff\xd8" and not truncated.endswith(b"\xff\xd9")
    with pytest.raises(CorruptImageError, match="truncated"):
        images.probe(truncated, verify=True)
    alpha = cv2.imread(str(root / kinds["alpha"]), cv2.IMREAD_UNCHANGED)
    assert alpha.shape[2] == 4 and alpha[..., 3].min() < 255
    gray = cv2.imread(str(root / kinds["grayscale"]), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2
    dup = (root / kinds["duplicate"]).read_bytes()
    same = [p for p in root.rglob("*.jpg") if p.read_bytes() == dup]
    assert len(same) == 2 and same[0].parent == same[1].parent
    if layout == "csv":
        assert not (root / kinds["missing"]).exists()
        listed = (root / "labels.csv").read_text()
        missing_id = Path(kinds["missing"]).stem
        unlabelled_id = Path(kinds["unlabelled"]).stem
        assert f"\n{missing_id}," in listed and f"\n{unlabelled_id}," not in listed


def test_refuses_a_non_empty_destination(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(DestinationExistsError, match="not empty"):
        write_sample_dump(dest, per_class=1)
    assert (dest / "keep.txt").read_text() == "mine"
    write_sample_dump(dest, per_class=1, overwrite=True)
    assert not (dest / "keep.txt").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_the_working_folder_and_its_parents_are_refused_not_emptied(tmp_path, monkeypatch):
    here = tmp_path / "work" / "sub"
    here.mkdir(parents=True)
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    for dest in (".", "..", str(here)):
        with pytest.raises(UsageError, match="is the working folder or holds it"):
            write_sample_dump(dest, per_class=1, overwrite=True)
    assert (here / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.txt", "sub", "work"]
    summary = write_sample_dump("dump", per_class=1)  # a relative name still works
    assert summary.dest == Path("dump") and (here / "dump").is_dir()
    (here / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile is a file, not a folder"):
        write_sample_dump("afile/dump", per_class=1)
    # A working folder deleted under the shell: nothing to refuse there.
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    assert write_sample_dump(tmp_path / "elsewhere", per_class=1).images == 3
    with pytest.raises(UsageError, match="the working folder is gone, so dump has nowhere"):
        write_sample_dump("dump", per_class=1)


def test_empty_existing_destination_is_fine(tmp_path):
    (tmp_path / "d").mkdir()
    assert write_sample_dump(tmp_path / "d", per_class=1).images == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "zip"}, "layout"),
    ({"classes": ["brick", "unicorn"]}, "unicorn"),
    ({"per_class": -1}, "per_class"),
    ({"seed": -1}, "seed -1 must be a whole number >= 0"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        write_sample_dump(tmp_path / "d", **kwargs)


def test_cli_refuses_a_negative_seed_before_writing(tmp_path):
    from click.testing import CliRunner

    from dsprep.cli import main

    result = CliRunner().invoke(main, ["-q", "sample-dump", str(tmp_path / "d"), "--seed", "-1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--seed" in result.output
    assert not (tmp_path / "d").exists()


def test_classes_are_separable_by_a_trivial_model():
    """Nearest class mean of tiny thumbnails beats chance clearly, so a CNN has something to learn.

    The threshold is far above chance (1/3) yet far from perfect, so a change that made the
    classes identical, or trivially identical images, would fail one way or the other.
    """
    names = ["brick", "grass", "gravel"]

    def features(name, i):
        image = make_image(name, i, seed=5)[0]
        small = cv2.resize(image, (8, 8), interpolation=cv2.INTER_AREA).astype(float)
        return np.concatenate([small.mean(axis=(0, 1)), small.std(axis=(0, 1))])

    train = {n: np.mean([features(n, i) for i in range(30)], axis=0) for n in names}
    correct = total = 0
    for label, n in enumerate(names):
        for i in range(100, 120):
            f = features(n, i)
            guess = int(np.argmin([np.linalg.norm(f - train[m]) for m in names]))
            correct += guess == label
            total += 1
    assert 0.6 < correct / total < 0.98


@pytest.mark.slow
def test_a_hangup_to_the_whole_group_stops_a_parallel_dump_cleanly(tmp_path):
    # A closed terminal sends SIGHUP to every process of the job, the worker pool's resource
    # trackers too: they must outlive it, or the stop prints their "died unexpectedly" warnings.
    import os
    import signal
    import subprocess
    import sys
    import time

    from dsprep import system

    if not hasattr(signal, "SIGHUP"):
        pytest.skip("no SIGHUP on this OS")
    if system.usable_cpus() < 2:
        pytest.skip("one core: sample-dump writes without a worker pool, which this is about")

    def default_hangup():
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a suite run under nohup ignores it

    dest = tmp_path / "dump"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsprep", "sample-dump", str(dest), "--per-class", "2000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=default_hangup)
    partial = tmp_path / ".dump.partial"
    deadline = time.monotonic() + 60
    try:
        # Written by the workers: the pool and its trackers are running.
        while not any(partial.glob("*/*.jpg")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGHUP)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "died unexpectedly" not in err and "Traceback" not in err, err
    assert err.rstrip().endswith("which the next run replaces."), err
    assert not dest.exists()
