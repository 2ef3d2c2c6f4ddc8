"""The build pipeline: schema, pixels against a reference, skipped files, means, order, workers."""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import h5py
import numpy as np
import pytest
from helpers import make_class_folders, make_images_beside_masks, smooth_image, write_image

from dsprep import build, store
from dsprep.errors import (
    DatasetFormatError,
    DestinationExistsError,
    DsprepError,
    ImageTooLargeError,
    LayoutError,
    UsageError,
)

CLASSES = ["cat", "dog", "fox"]


def make_split(root: Path, counts=(("train", 6), ("val", 2), ("test", 2))) -> Path:
    """A split folder as 'dsprep split' lays it out: split.json and class folders per split."""
    for n, (split, per_class) in enumerate(counts):
        make_class_folders(root / split, CLASSES, per_class=per_class, seed=100 * n)
    manifest = {"schema": "dsprep-split/1", "classes": CLASSES,
                "counts": {s: {c: k for c in CLASSES} for s, k in counts}}
    (root / "split.json").write_text(json.dumps(manifest))
    return root


def reference(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Decode with OpenCV, shorter side to size with INTER_AREA, centre crop: the book's way."""
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    height, width = size
    scale = max(height / h, width / w)
    nh, nw = round(h * scale), round(w * scale)
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    top, left = (nh - height) // 2, (nw - width) // 2
    return small[top:top + height, left:left + width]


def rows_of(path: Path):
    with h5py.File(path, "r") as db:
        names = [n.decode() for n in db["filenames"][()]]
        return db["images"][()], db["labels"][()], names, dict(db.attrs)


def opts(**kwargs) -> build.BuildOptions:
    base = {"size": (24, 24), "workers": 1, "exact": True}
    base.update(kwargs)
    return build.BuildOptions(**base)


def test_split_folder_gives_three_files_with_the_schema(tmp_path):
    src = make_split(tmp_path / "split")
    report = build.build_hdf5(src, tmp_path / "out", opts(size=(24, 16), compression="lzf"))
    assert [f.split for f in report.files] == ["train", "val", "test"]
    expected_counts = {"train": 18, "val": 6, "test": 6}
    for split, count in expected_counts.items():
        path = tmp_path / "out" / f"{split}.hdf5"
        with h5py.File(path, "r") as db:
            assert db["images"].dtype == np.uint8
            assert db["images"].shape == (count, 24, 16, 3)
            assert db["images"].compression == "lzf"
            assert db["labels"].shape == (count,)
            assert [n.decode() for n in db["label_names"][()]] == CLASSES
            assert db["filenames"].shape == (count,)
            a = db.attrs
            assert a["schema"] == "dsprep-hdf5/1" and a["split"] == split
            assert list(a["image_size"]) == [24, 16]
            assert a["resize"] == "crop" and a["interpolation"] == "auto"
            assert a["color"] == "RGB" and a["order"] == "shuffled" and a["seed"] == 0
            assert a["count"] == count and a["skipped"] == 0
            assert a["source_root"] == str(src.resolve())
            assert np.asarray(a["mean_rgb"]).shape == (3,)
            for name in db["filenames"][()]:
                assert name.decode().startswith(f"{split}/")
                assert (src / name.decode()).is_file()
        assert store.check_file(path) == []
    record = json.loads((tmp_path / "out" / "means.json").read_text())
    assert record["source"] == "train.hdf5" and record["count"] == 18
    assert (tmp_path / "out" / "skipped.csv").read_text() == "source,reason,detail\n"
    assert not list((tmp_path / "out").glob("*.partial"))


@pytest.mark.parametrize("size", [(24, 24), (24, 16), (16, 32)])
def test_pixels_equal_a_per_image_reference(tmp_path, size):
    src = make_split(tmp_path / "split", counts=(("train", 2),))
    build.build_hdf5(src, tmp_path / "out", opts(size=size, order="sorted"))
    images, labels, names, _ = rows_of(tmp_path / "out" / "train.hdf5")
    assert len(names) == 6
    for image, label, name in zip(images, labels, names, strict=True):
        np.testing.assert_array_equal(image, reference(src / name, size))
        assert CLASSES[label] == Path(name).parts[1]


def test_reduced_decoding_in_a_build_stays_close_to_the_full_decode(tmp_path, monkeypatch):
    # Sources 3x the target on the short side, JPEG, no exact: decoded at half scale.
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    for k, cls in enumerate(CLASSES):
        (src / "train" / cls / f"{cls}_0.jpg").unlink()  # 48x64: too small to reduce
        write_image(src / "train" / cls / f"{cls}_big.jpg", smooth_image(72, 96, seed=50 + k))
    real, flags = cv2.imdecode, []

    def imdecode(buffer, mode):
        flags.append(mode)
        return real(buffer, mode)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    build.build_hdf5(src, tmp_path / "out", opts(exact=False, order="sorted"))
    monkeypatch.undo()
    assert flags and all(f & cv2.IMREAD_REDUCED_GRAYSCALE_2 for f in flags)
    images, _, names, _ = rows_of(tmp_path / "out" / "train.hdf5")
    assert len(names) == 3
    for image, name in zip(images, names, strict=True):
        expected = reference(src / name, (24, 24))
        mse = np.mean((image.astype(np.float64) - expected.astype(np.float64)) ** 2)
        assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) >= 35, name


def _add_bad_files(split_dir: Path) -> dict[str, str]:
    (split_dir / "cat" / "cat_2b.jpg").write_text("this is not a JPEG")
    (split_dir / "dog" / "dog_0a.jpg").write_bytes(b"")
    # 80x80 is over the 5,000-pixel limit the test sets; the good 48x64 images are under it.
    write_image(split_dir / "fox" / "fox_4z.jpg", smooth_image(80, 80, seed=3))
    # The same reason names as the split stage gives for the same failures.
    return {"train/cat/cat_2b.jpg": "not-an-image", "train/dog/dog_0a.jpg": "empty",
            "train/fox/fox_4z.jpg": "too-large"}


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_files_are_skipped_and_rows_stay_aligned(tmp_path, monkeypatch, workers):
    # Small tasks and chunks, so skips fall inside blocks and the ring wraps several times.
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)
    src = make_split(tmp_path / "split", counts=(("train", 6),))
    bad = _add_bad_files(src / "train")
    report = build.build_hdf5(src, tmp_path / "out",
                              opts(chunk_images=2, workers=workers, max_pixels=5000))
    images, labels, names, attrs = rows_of(tmp_path / "out" / "train.hdf5")
    assert len(images) == len(labels) == len(names) == 18
    assert attrs["skipped"] == 3 and attrs["count"] == 18
    assert not set(names) & set(bad)
    for image, label, name in zip(images, labels, names, strict=True):
        np.testing.assert_array_equal(image, reference(src / name, (24, 24)))
        assert CLASSES[label] == Path(name).parts[1]
    with open(tmp_path / "out" / "skipped.csv", newline="") as f:
        listed = {row["source"]: row["reason"] for row in csv.DictReader(f)}
    assert listed == bad
    assert {s.source for s in report.skipped} == set(bad)


def test_too_large_images_are_reported_as_such(tmp_path, monkeypatch):
    src = make_split(tmp_path / "split", counts=(("train", 2),))
    real_load = build.imagelib.load

    def load(data, *args, **kwargs):
        if kwargs["max_pixels"] is not None and len(data) > 0 and data[:4] == b"BOMB":
            raise ImageTooLargeError("20000x20000 exceeds the limit")
        return real_load(data, *args, **kwargs)

    (src / "train" / "cat" / "bomb.jpg").write_bytes(b"BOMB" + b"\0" * 10)
    monkeypatch.setattr(build.imagelib, "load", load)
    report = build.build_hdf5(src, tmp_path / "out", opts())
    assert [(s.source, s.reason) for s in report.skipped] == [("train/cat/bomb.jpg", "too-large")]


def test_max_pixels_skips_images_over_the_limit(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 2),))
    write_image(src / "train" / "dog" / "big.jpg", smooth_image(96, 128, seed=9))
    report = build.build_hdf5(src, tmp_path / "out", opts(max_pixels=48 * 64))
    assert [s.source for s in report.skipped] == ["train/dog/big.jpg"]
    assert report.files[0].count == 6


def test_a_split_whose_every_image_is_left_out_fails_the_build(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 2), ("val", 1)))
    with pytest.raises(DsprepError, match=r"every image of train was left out \(6: 6 too-large"):
        build.build_hdf5(src, tmp_path / "out", opts(max_pixels=100))
    # Nothing half-made: no HDF5 file, no means of zero, no partial file, no empty OUT.
    assert not (tmp_path / "out").exists()


def test_means_equal_a_direct_float64_computation(tmp_path):
    src = make_split(tmp_path / "split")
    _add_bad_files(src / "train")
    build.build_hdf5(src, tmp_path / "out", opts(size=(20, 28), max_pixels=5000))
    record = json.loads((tmp_path / "out" / "means.json").read_text())
    for split in ("train", "val", "test"):
        images, _, _, attrs = rows_of(tmp_path / "out" / f"{split}.hdf5")
        flat = images.reshape(-1, 3).astype(np.float64)
        np.testing.assert_allclose(attrs["mean_rgb"], flat.mean(axis=0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(attrs["std_rgb"], flat.std(axis=0), rtol=0, atol=1e-6)
        if split == "train":
            np.testing.assert_allclose([record[c] for c in "RGB"], flat.mean(axis=0), atol=1e-6)
            np.testing.assert_allclose([record["std"][c] for c in "RGB"], flat.std(axis=0),
                                       atol=1e-6)
            assert record["count"] == len(images) == 18


def test_book_style_reader_loop(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 7),))
    build.build_hdf5(src, tmp_path / "out", opts(chunk_images=4))
    bs, seen, labels_seen = 5, 0, []
    with h5py.File(tmp_path / "out" / "train.hdf5", "r") as db:
        for i in np.arange(0, db["images"].shape[0], bs):
            images = db["images"][i:i + bs]
            labels = db["labels"][i:i + bs]
            assert images.shape[1:] == (24, 24, 3) and len(images) == len(labels)
            seen += len(images)
            labels_seen += labels.tolist()
    assert seen == 21
    assert sorted(labels_seen) == [0] * 7 + [1] * 7 + [2] * 7


def test_sorted_and_shuffled_orders(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 6),))
    names = {}
    for tag, order, seed in (("s", "sorted", 0), ("a", "shuffled", 0), ("b", "shuffled", 0),
                             ("c", "shuffled", 1)):
        build.build_hdf5(src, tmp_path / tag, opts(order=order, seed=seed))
        names[tag] = rows_of(tmp_path / tag / "train.hdf5")[2]
    assert names["s"] == sorted(names["s"], key=lambda n: (n.split("/")[1], n))
    assert names["a"] == names["b"]
    assert names["a"] != names["c"] and names["a"] != names["s"]
    assert sorted(names["a"]) == sorted(names["s"])
    # Shuffled rows mix the classes early on, as the book's build script does.
    assert len({n.split("/")[1] for n in names["a"][:6]}) > 1


def test_parallel_build_equals_serial_build(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)
    src = make_split(tmp_path / "split", counts=(("train", 8),))
    for workers in (1, 2):
        build.build_hdf5(src, tmp_path / f"w{workers}", opts(workers=workers, chunk_images=4))
    one, two = rows_of(tmp_path / "w1" / "train.hdf5"), rows_of(tmp_path / "w2" / "train.hdf5")
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert one[2] == two[2]


def test_the_last_tasks_are_cut_smaller_and_keep_every_row_in_order():
    tasks = [[f"r{b}-{i}" for i in range(8)] for b in range(7)]
    tasks[-1] = tasks[-1][:5]  # a short last block
    cut = build._split_tail(tasks, 2)
    assert [row for task in cut for row in task] == [row for task in tasks for row in task]
    assert cut[:3] == tasks[:3]  # all but the last 2 per worker stay whole
    assert [len(t) for t in cut[3:]] == [2] * 12 + [2, 2, 1]
    assert build._split_tail(tasks, 1) == tasks


@pytest.mark.parametrize("advice", ["default", "refused"])
def test_a_worker_writes_each_image_into_its_ring_slot(tmp_path, monkeypatch, advice):
    from multiprocessing import shared_memory

    folder = tmp_path / "imgs"
    paths = [write_image(folder / f"{i}.png", smooth_image(20 + i, 30, seed=i)) for i in range(3)]
    (folder / "bad.png").write_bytes(b"not an image")
    paths.insert(1, folder / "bad.png")
    shape = (3, 4, 16, 16, 3)
    if advice == "refused":
        # A kernel without MADV_POPULATE_WRITE answers EINVAL: the stores fault pages in.
        monkeypatch.setattr(build, "_POPULATE_WRITE", -1)
    monkeypatch.setattr(build, "_PREFAULTED", set())
    shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
    try:
        ring = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf)
        ring[...] = 7
        decode = build._Decode((16, 16), "crop", None, False, None)
        block = build._decode_block(shm.name, shape, 2, [str(p) for p in paths], decode)
        assert block.ok == [0, 2, 3] and [s[0] for s in block.skips] == [1]
        for k, path in enumerate(p for p in paths if p.name != "bad.png"):
            np.testing.assert_array_equal(ring[2, k], reference(path, (16, 16)))
        assert (ring[2, 3] == 7).all() and (ring[:2] == 7).all()  # nothing else touched
        expected = ring[2, :3].reshape(-1, 3).astype(np.int64)
        np.testing.assert_array_equal(block.sums, expected.sum(axis=0))
        np.testing.assert_array_equal(block.squares, (expected ** 2).sum(axis=0))
        if build._POPULATE_WRITE is not None:
            assert build._PREFAULTED == {(shm.name, 2 * ring[0].nbytes)}  # once per slot
        del ring
    finally:
        attached = build._ATTACHED.pop(shm.name, None)
        if attached is not None:
            attached.close()
        shm.close()
        shm.unlink()


@pytest.mark.parametrize("offset,nbytes", [(0, 4096), (2 * 64 * 227 * 227 * 3, 64 * 227 * 227 * 3),
                                           (5, 1), (4095, 2), (3 * 4096, 10 * 4096)])
def test_a_slot_is_prefaulted_as_the_whole_pages_that_hold_it(offset, nbytes):
    import mmap

    start, length = build._page_span(offset, nbytes)
    page = mmap.PAGESIZE
    assert start % page == 0 and offset - page < start <= offset
    assert start + length == offset + nbytes


def _record_rings(monkeypatch) -> list[int]:
    """The block counts of the rings the build makes, in order."""
    made: list[int] = []
    real_take = build._take_ring
    monkeypatch.setattr(build, "_take_ring",
                        lambda blocks, *a: (made.append(blocks), real_take(blocks, *a))[1])
    return made


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the room check reads Linux's /dev/shm; elsewhere there is none")
@pytest.mark.parametrize("free_blocks", [2.5, 5, 100])
def test_the_ring_takes_what_dev_shm_can_hold_or_the_build_is_refused_at_once(
        tmp_path, monkeypatch, free_blocks):
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)  # enough tasks for two workers
    src = make_split(tmp_path / "split")
    block_bytes = 4 * 256 * 256 * 3  # blocks of 4 images of 256x256
    real = os.statvfs

    def small(path):
        found = real(path)
        if str(path) != build.SHM_DIR:
            return found
        # As a tmpfs does: the pages of the ring kept from the last file are not free.
        kept = build._POOL.get("ring")
        used = 0 if kept is None else os.stat(f"{build.SHM_DIR}/{kept.shm.name}").st_blocks * 512
        return os.statvfs_result((4096, 4096, 1 << 20, 1 << 20,
                                  (int(free_blocks * block_bytes) - used) // 4096, *found[5:]))

    monkeypatch.setattr(build.os, "statvfs", small)
    made = _record_rings(monkeypatch)
    out = tmp_path / "out"
    options = opts(workers=2, size=(256, 256), chunk_images=4)
    if free_blocks < 3:  # one block per worker and one being written: 3 at least
        with pytest.raises(DsprepError, match=r"shared memory \(/dev/shm\) has 2.0 MB free; "
                                              r"the decoding workers need 2.4 MB.*--workers"):
            build.build_hdf5(src, out, options)
        assert not out.exists() or not any(out.glob("*.hdf5*"))
        return
    report = build.build_hdf5(src, out, options)
    assert [f.count for f in report.files] == [18, 6, 6]
    # 9 blocks are wanted (4 per worker and 1); 90% of 5 blocks' room holds 4.
    assert set(made) == ({4} if free_blocks == 5 else {9})


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the room check reads Linux's /dev/shm; elsewhere there is none")
@pytest.mark.parametrize("free_blocks", [5, 12, 100])
def test_the_ring_takes_no_more_than_half_the_memory_the_job_may_still_take(
        tmp_path, monkeypatch, free_blocks):
    # /dev/shm pages count against a Slurm job's or a container's memory limit, and a tmpfs
    # may be larger than the memory there is: a ring sized by /dev/shm alone got the job
    # killed by the kernel, with no message and a .partial file left behind.
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)
    build.shutdown_workers()  # no ring kept from another test counts as free
    src = make_split(tmp_path / "split")
    block_bytes = 4 * 256 * 256 * 3
    real = os.statvfs
    monkeypatch.setattr(build.os, "statvfs", lambda path: real(path) if str(path) != build.SHM_DIR
                        else os.statvfs_result((4096, 4096, 1 << 30, 1 << 30, 1 << 30,
                                                *real(path)[5:])))
    where = "memory (the job's limit of 9.0 MB, cgroup /sys/fs/cgroup/job)"

    def room():  # as the kernel counts: the kept ring's pages are in use
        kept = build._POOL.get("ring")
        return int(free_blocks * block_bytes) - (0 if kept is None else kept.array.nbytes), where

    monkeypatch.setattr(build.system, "memory_room", room)
    made = _record_rings(monkeypatch)
    out = tmp_path / "out"
    if free_blocks == 5:  # half of it holds 2 blocks, under one per worker and one written
        with pytest.raises(DsprepError, match=re.escape(
                f"{where} has {5 * block_bytes / 1e6:,.1f} MB free; the decoding workers' shared "
                f"buffer needs {3 * block_bytes / 1e6:,.1f} MB, and may take half of it (the "
                "rest is for the workers themselves). Use fewer --workers")):
            build.build_hdf5(src, out, opts(workers=2, size=(256, 256), chunk_images=4))
        assert not out.exists() or not any(out.glob("*.hdf5*"))
        # The default --workers is lowered to what fits, with a note that says why.
        report = build.build_hdf5(src, out, opts(size=(256, 256), chunk_images=4, workers=None))
        assert [f.count for f in report.files] == [18, 6, 6]
        assert f"{where} has {5 * block_bytes / 1e6:,.1f} MB free, too little room for " \
            "decoding workers: decoding in this process instead of with " in \
            " ".join(report.notes) and "give the job more memory" in " ".join(report.notes)
        assert not made
        return
    report = build.build_hdf5(src, out, opts(workers=2, size=(256, 256), chunk_images=4))
    assert [f.count for f in report.files] == [18, 6, 6]
    assert set(made) == ({6} if free_blocks == 12 else {9})
    build.shutdown_workers()


@pytest.mark.parametrize("kwargs, message", [
    ({"size": (32.5, 32)}, r"size \(32.5, 32\) is not N or HxW"),
    ({"size": 0}, "size 0 is not N or HxW"),
    ({"workers": 1.5}, "workers must be a whole number, 1 or more; received 1.5"),
    ({"chunk_images": 2.5}, "chunk_images must be a whole number, 1 or more"),
    ({"max_pixels": 0}, "max_pixels must be a whole number, 1 or more"),
])
def test_build_options_refuse_what_is_no_count_before_any_work(tmp_path, kwargs, message):
    src = make_split(tmp_path / "split")
    with pytest.raises(UsageError, match=message):
        build.build_hdf5(src, tmp_path / "out", build.BuildOptions(**kwargs))
    assert not (tmp_path / "out").exists()


def test_build_options_take_one_number_for_a_square_size():
    assert build.BuildOptions(size=np.int64(64)).validate().size == (64, 64)
    assert build.BuildOptions(size=(48, np.int32(32))).validate().size == (48, 32)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the ring's segments are Linux's /dev/shm files")
def test_a_ring_that_fails_after_making_its_segment_leaves_none():
    before = set(os.listdir(build.SHM_DIR))
    with pytest.raises(TypeError):  # the segment is made, then no view of it can be
        build._Ring(2, 3, (4.5, 4), shared=True)
    assert set(os.listdir(build.SHM_DIR)) - before == set()


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the room check reads Linux's /dev/shm; elsewhere there is none")
def test_chunk_images_above_a_files_images_do_not_size_the_decoding_buffers(
        tmp_path, monkeypatch):
    # --chunk-images 100000 on a few hundred images sized every block of the shared ring by
    # it: tens of GB, and a build refused for memory it did not need.
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)  # several tasks, so two workers start
    build.shutdown_workers()
    src = make_split(tmp_path / "split")
    real = os.statvfs
    monkeypatch.setattr(build.os, "statvfs", lambda path: real(path) if str(path) != build.SHM_DIR
                        else os.statvfs_result((4096, 4096, 1 << 30, 1 << 30, 1 << 30,
                                                *real(path)[5:])))
    monkeypatch.setattr(build.system, "memory_room", lambda: (64 << 20, "memory"))
    report = build.build_hdf5(src, tmp_path / "out",
                              opts(workers=2, size=(64, 64), chunk_images=100000))
    assert [f.count for f in report.files] == [18, 6, 6]
    build.shutdown_workers()


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the room check reads Linux's /dev/shm; elsewhere there is none")
@pytest.mark.parametrize(("free_blocks", "workers"), [(2.5, 1), (4.5, 3), (100, 4)])
def test_the_default_workers_are_as_many_as_dev_shm_has_room_for(
        tmp_path, monkeypatch, free_blocks, workers):
    # A container's /dev/shm is 64 MB unless given more: an unattended build at the default
    # --workers runs with fewer workers there, where a number given is refused (above).
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)
    monkeypatch.setattr(build.system, "usable_cpus", lambda: 4)
    build.shutdown_workers()  # no ring kept from another test counts as free
    src = make_split(tmp_path / "split")
    block_bytes = 4 * 256 * 256 * 3
    real = os.statvfs
    monkeypatch.setattr(build.os, "statvfs", lambda path: real(path) if str(path) != build.SHM_DIR
                        else os.statvfs_result((4096, 4096, 1 << 20, 1 << 20,
                                                int(free_blocks * block_bytes) // 4096,
                                                *real(path)[5:])))
    started = []
    real_pool = build._decoding_pool
    monkeypatch.setattr(build, "_decoding_pool",
                        lambda n, *a: (started.append(n), real_pool(n, *a))[1])
    report = build.build_hdf5(src, tmp_path / "out",
                              opts(size=(256, 256), chunk_images=4, workers=None))
    assert [f.count for f in report.files] == [18, 6, 6]
    assert set(started) == ({workers} - {1}), report.notes
    noted = [n for n in report.notes if "shared memory" in n]
    if workers == 4:
        assert not noted
    else:
        room = (f"room for {workers} decoding workers of the 4 this build would start"
                if workers > 1 else "too little room for decoding workers: decoding in this "
                "process instead of with 4 workers")
        assert noted == [f"shared memory (/dev/shm) has {free_blocks * block_bytes / 1e6:,.1f} "
                         f"MB free, {room}; in a container, give it more (docker run "
                         "--shm-size=1g) to use them all"]
    build.shutdown_workers()


def _unwritable_dev_shm(tmp_path, monkeypatch):
    # A read-only /dev/shm (or one not the user's to write) has room, so the room check passed
    # it: the default build failed at the ring's file ("/dev/shm/dsprep-ring-...: Read-only
    # file system"), after joblib's own warning. Tests run as root, so the failure is injected.
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(build.SHM_DIR) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(build.os, "open", read_only)


def _deleted_current_folder(tmp_path, monkeypatch):
    # A shell left in a folder deleted since: loky starts each worker in the current folder,
    # and the default build failed with a bare "No such file or directory".
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)  # and back to the folder the test ran in, at its end
    gone.rmdir()


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="Linux's /dev/shm, and a current folder that can be deleted")
@pytest.mark.parametrize("setup, note, refusal", [
    (_unwritable_dev_shm,
     "shared memory (/dev/shm) cannot be written (Read-only file system), and decoding "
     "workers share their images through it: decoding in this process instead of with 2 "
     "workers; make /dev/shm writable to use them",
     r"^shared memory \(/dev/shm\) cannot be written \(Read-only file system\).*use "
     r"--workers 1"),
    (_deleted_current_folder,
     "the current folder no longer exists (it was deleted), and decoding workers start in "
     "it: decoding in this process instead of with 2 workers; cd to a folder that exists "
     "to use them",
     r"^the current folder no longer exists .*; use --workers 1 \(which needs none\), or "
     r"cd to a folder that exists and run the command again$"),
])
def test_where_workers_cannot_start_the_build_decodes_in_its_process_or_a_count_is_refused(
        tmp_path, monkeypatch, setup, note, refusal):
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)
    monkeypatch.setattr(build.system, "usable_cpus", lambda: 2)
    build.shutdown_workers()  # no pool or ring kept from another test
    src = make_split(tmp_path / "split")
    setup(tmp_path, monkeypatch)
    # Starting the workers imports joblib, which warns that it "will operate in serial mode".
    started = []
    monkeypatch.setattr(build.system, "start_trackers", lambda: started.append(True))
    report = build.build_hdf5(src, tmp_path / "out",
                              opts(size=(64, 64), chunk_images=4, workers=None))
    assert [f.count for f in report.files] == [18, 6, 6]
    assert not started
    assert note in report.notes
    # A number given is kept, as where /dev/shm is full: it is refused, with what to do.
    out = tmp_path / "chosen"
    with pytest.raises(DsprepError, match=refusal):
        build.build_hdf5(src, out, opts(size=(64, 64), chunk_images=4, workers=2))
    assert not started
    assert not out.exists()


@pytest.mark.parametrize("err,refused", [(errno.EFAULT, True), (errno.ENOMEM, True),
                                         (errno.EINVAL, False)])
def test_a_slot_that_cannot_be_mapped_is_a_clear_error_not_a_crash(monkeypatch, err, refused):
    class Mapping:
        def madvise(self, *args):
            raise OSError(err, os.strerror(err))

    class Shm:
        name, size, _mmap = "ring", 120 * 10**6, Mapping()

    monkeypatch.setattr(build, "_POPULATE_WRITE", 23)
    monkeypatch.setattr(build, "_PREFAULTED", set())
    if refused:
        # madvise says a store would raise SIGBUS (the shared memory is full).
        with pytest.raises(DsprepError, match=r"ran out of room; .* need 120.0 MB"):
            build._prefault(Shm(), 0, 4096)
    else:
        build._prefault(Shm(), 0, 4096)  # an older kernel: plain stores from now on
        assert build._POPULATE_WRITE is None


def test_the_files_of_a_build_share_one_ring_freed_when_it_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)
    src = make_split(tmp_path / "split", counts=(("train", 8), ("val", 3), ("test", 3)))
    names = []
    made = build._Ring.__init__

    def record(self, *args, **kwargs):
        made(self, *args, **kwargs)
        names.append(self.shm.name if self.shm is not None else None)

    monkeypatch.setattr(build._Ring, "__init__", record)
    closed = []
    close = build._Ring.close
    monkeypatch.setattr(build._Ring, "close", lambda self: (closed.append(self.shm), close(self)))
    report = build.build_hdf5(src, tmp_path / "a", opts(workers=2, chunk_images=4))
    assert [f.split for f in report.files] == ["train", "val", "test"]
    assert len(names) == 1 and closed[:1] != [None]  # one ring for the three files, then freed
    assert "ring" not in build._POOL
    build.build_hdf5(src, tmp_path / "b", opts(workers=2, chunk_images=4))
    assert len(names) == 2 and names[0] != names[1]
    assert rows_of(tmp_path / "a" / "train.hdf5")[2] == rows_of(tmp_path / "b" / "train.hdf5")[2]


def test_an_interrupted_file_never_leaves_its_ring_for_the_next(tmp_path, monkeypatch):
    """Ctrl-C while waiting for the last task: that task may still be writing into the ring."""
    src = make_split(tmp_path / "split", counts=(("train", 4),))
    rows = build.find_rows(src)[1]["train"]
    last = len(build._split_tail([rows[i:i + 8] for i in range(0, len(rows), 8)], 2))
    waits = []

    class Interrupted:
        def result(self):
            waits.append(1)
            if len(waits) == last:
                raise KeyboardInterrupt
            return build._Block([], [], 0, np.zeros(3, np.int64), np.zeros(3, np.int64))

        def cancel(self):
            return False

    class Pool:
        def submit(self, *args):
            return Interrupted()

    monkeypatch.setattr(build, "_decoding_pool",
                        lambda workers, most=None: contextlib.nullcontext(Pool()))
    build._drop_ring()
    with pytest.raises(KeyboardInterrupt):
        build._run_tasks(rows, opts(workers=2, chunk_images=8), 8, 2, lambda *a: None,
                         keep_ring=True)
    assert len(waits) == last and "ring" not in build._POOL
    build._run_tasks(rows[:4], opts(workers=2, chunk_images=8), 8, 2, lambda *a: None,
                     keep_ring=True)
    assert "ring" in build._POOL  # kept when the file finished
    build._drop_ring()


def test_empty_splits_are_skipped_with_a_note(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 2),))
    (src / "val").mkdir()
    report = build.build_hdf5(src, tmp_path / "out", opts())
    assert [f.split for f in report.files] == ["train"]
    assert any(note.startswith("val:") for note in report.notes)
    assert any(note.startswith("test:") for note in report.notes)
    assert not (tmp_path / "out" / "val.hdf5").exists()


def test_class_ids_follow_split_json_even_when_a_split_lacks_a_class(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 2),))
    make_class_folders(src / "val", ["fox"], per_class=2, seed=50)
    build.build_hdf5(src, tmp_path / "out", opts())
    _, labels, _, _ = rows_of(tmp_path / "out" / "val.hdf5")
    assert labels.tolist() == [2, 2]
    with h5py.File(tmp_path / "out" / "val.hdf5", "r") as db:
        assert store.label_names(db) == CLASSES


def test_a_class_folder_tree_with_a_name(tmp_path):
    root = make_class_folders(tmp_path / "dump", ("b", "a"), per_class=3)
    report = build.build_hdf5(root, tmp_path / "out", opts(), name="all")
    assert [f.path.name for f in report.files] == ["all.hdf5"]
    assert report.means_path is None and not (tmp_path / "out" / "means.json").exists()
    images, labels, names, attrs = rows_of(tmp_path / "out" / "all.hdf5")
    assert attrs["split"] == "all"
    for image, label, name in zip(images, labels, names, strict=True):
        assert ["a", "b"][label] == name.split("/")[0]
        np.testing.assert_array_equal(image, reference(root / name, (24, 24)))
    assert not any("no images in" in note for note in report.notes)
    # A folder of other files (Stanford Dogs' Annotation/ of XML files) is a class without
    # images: said, as its id is in the file.
    (root / "Annotation" / "a").mkdir(parents=True)
    (root / "Annotation" / "a" / "n02085620_1").write_text("<annotation/>")
    report = build.build_hdf5(root, tmp_path / "out2", opts(), name="all")
    assert f"no images in {root / 'Annotation'}/: a class without images; move it out of " \
        f"{root} if it is no class" in report.notes
    # A split's own folder keeps an empty class folder for its id: nothing to say of it.
    split = make_split(tmp_path / "split")
    for image in (split / "test" / CLASSES[0]).iterdir():
        image.unlink()
    report = build.build_hdf5(split / "test", tmp_path / "out3", opts(), name="test")
    assert not any("no images in" in note for note in report.notes), report.notes


def test_a_named_build_of_a_folder_doubled_as_kaggle_ships_it_builds_the_inner_one(tmp_path):
    # Intel's seg_test/seg_test/<class>/: the outer folder given, as a split's build takes it.
    outer = tmp_path / "seg_test"
    root = make_class_folders(outer / "seg_test", ("forest", "sea"), per_class=2)
    report = build.build_hdf5(outer, tmp_path / "out", opts(), name="test")
    _, labels, names, attrs = rows_of(tmp_path / "out" / "test.hdf5")
    assert sorted(names) == sorted(p.relative_to(root).as_posix()
                                   for p in root.rglob("*") if p.is_file())
    assert [["forest", "sea"][label] for label in labels] == [n.split("/")[0] for n in names]
    assert attrs["source_root"] == str(root.resolve())
    assert f"{outer} holds only seg_test/: building {root}" in report.notes
    # Given as "." from inside it, the same.
    with pytest.MonkeyPatch.context() as m:
        m.chdir(outer)
        report = build.build_hdf5(".", tmp_path / "out2", opts(), name="test")
    assert rows_of(tmp_path / "out2" / "test.hdf5")[3]["source_root"] == str(root.resolve())
    # A class folder named as the folder of its classes (moon/moon/*.jpg) is a class, also
    # where it keeps some of its images in folders (moon/moon/2019/).
    moon = make_class_folders(tmp_path / "moon", ("moon",), per_class=2)
    report = build.build_hdf5(moon, tmp_path / "out3", opts(), name="moon")
    assert [f.count for f in report.files] == [2]
    make_class_folders(moon / "moon", ("2019", "2020"), per_class=1, seed=9)
    report = build.build_hdf5(moon, tmp_path / "out3", opts(), name="moon", force=True)
    assert [f.count for f in report.files] == [4] and not report.notes[:1] == [
        f"{moon} holds only moon/: building {moon / 'moon'}"]
    # OUT inside a SRC given as ".": the folder beside it is named in full.
    with pytest.MonkeyPatch.context() as m:
        m.chdir(moon)
        with pytest.raises(UsageError, match=rf"such as {re.escape(str(tmp_path / 'hdf5'))}$"):
            build.build_hdf5(".", "hdf5", opts(), name="moon")


def test_a_named_file_joins_an_earlier_build_with_its_class_ids(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 1), ("val", 1), ("test", 1)))
    out = tmp_path / "out"
    build.build_hdf5(src, out, opts())
    before = (out / "skipped.csv").read_bytes()
    # A later test folder with no images of one class ("dog"), and a bad file.
    extra = make_class_folders(tmp_path / "extra", ("cat", "fox"), per_class=2, seed=70)
    (extra / "fox" / "bad.jpg").write_bytes(b"not a jpeg")
    report = build.build_hdf5(extra, out, opts(), name="extra")
    assert (out / "skipped.csv").read_bytes() == before  # the earlier build's list is kept
    with open(out / "extra.skipped.csv", newline="") as fh:
        assert [r["source"] for r in csv.DictReader(fh)] == ["fox/bad.jpg"]
    assert report.skipped_path == out / "extra.skipped.csv"
    assert any(f"class ids follow {out / 'train.hdf5'} (3 classes; no images of dog here)" in n
               for n in report.notes)
    _, labels, names, _ = rows_of(out / "extra.hdf5")
    with h5py.File(out / "extra.hdf5", "r") as db:
        assert store.label_names(db) == CLASSES
    assert [CLASSES[label] for label in labels] == [n.split("/")[0] for n in names]
    # Other classes than theirs: built with its own ids, and a warning says so.
    other = make_class_folders(tmp_path / "other", ("cat", "emu"), per_class=1, seed=80)
    odd = build.build_hdf5(other, out, opts(), name="odd")
    assert len(odd.warnings) == 1 and "label ids do not match theirs" in odd.warnings[0]
    with h5py.File(out / "odd.hdf5", "r") as db:
        assert store.label_names(db) == ["cat", "emu"]
    # A later subset still follows train.hdf5, whatever odd.hdf5 holds.
    later = make_class_folders(tmp_path / "later", ("cat", "fox"), per_class=1, seed=90)
    build.build_hdf5(later, out, opts(), name="later")
    with h5py.File(out / "later.hdf5", "r") as db:
        assert store.label_names(db) == CLASSES
    # Without a train.hdf5, the files there must agree among themselves.
    (out / "train.hdf5").unlink()
    again = build.build_hdf5(later, out, opts(), name="later", force=True)
    assert len(again.warnings) == 1 and "odd.hdf5: cat, emu" in again.warnings[0]


def test_a_named_train_file_built_after_val_says_to_build_val_again(tmp_path):
    # Built before train.hdf5, val.hdf5 numbered its two classes alone; the way out is to
    # build it again after train (it then takes train's ids), not another folder.
    out = tmp_path / "out"
    val = make_class_folders(tmp_path / "va", ("cat", "fox"), per_class=1, seed=10)
    build.build_hdf5(val, out, opts(), name="val")
    train = make_class_folders(tmp_path / "tr", ("cat", "dog", "fox"), per_class=1, seed=20)
    report = build.build_hdf5(train, out, opts(), name="train")
    assert report.warnings == [
        f"the classes of train.hdf5 (cat, dog, fox) are not among those of the files already "
        f"in {out} (val.hdf5: cat, fox), so its label ids do not match theirs; build val.hdf5 "
        f"again now (--name, into {out}): a file built after train.hdf5 takes its label ids"]
    build.build_hdf5(val, out, opts(), name="val", force=True)
    with h5py.File(out / "val.hdf5", "r") as db:
        assert store.label_names(db) == ["cat", "dog", "fox"]


def test_bad_sources_and_arguments(tmp_path):
    root = make_class_folders(tmp_path / "dump", per_class=1)
    with pytest.raises(UsageError, match="--name"):
        build.build_hdf5(root, tmp_path / "out", opts())
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    with pytest.raises(UsageError, match="drop --name"):
        build.build_hdf5(src, tmp_path / "out", opts(), name="x")
    with pytest.raises(UsageError, match="plain file name"):
        build.build_hdf5(root, tmp_path / "out", opts(), name="../x")
    make_class_folders(src / "train", ["wolf"], per_class=1)
    with pytest.raises(LayoutError, match="wolf"):
        build.build_hdf5(src, tmp_path / "out", opts())
    (src / "split.json").write_text("{}")
    with pytest.raises(DatasetFormatError, match="classes"):
        build.build_hdf5(src, tmp_path / "out", opts())
    (src / "split.json").write_text(json.dumps({"schema": "other/9", "classes": CLASSES}))
    with pytest.raises(DatasetFormatError, match="other/9"):
        build.build_hdf5(src, tmp_path / "out", opts())
    with pytest.raises(UsageError, match="order"):
        build.build_hdf5(root, tmp_path / "out", opts(order="random"), name="x")
    with pytest.raises(UsageError, match="resize"):
        build.build_hdf5(root, tmp_path / "out", opts(resize="fill"), name="x")
    with pytest.raises(UsageError, match="too large"):  # HDF5 chunks hold less than 4 GiB
        build.build_hdf5(root, tmp_path / "out", opts(size=(40000, 40000)), name="x")
    assert not (tmp_path / "out").exists()


def test_existing_outputs_need_force(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 1), ("val", 1)))
    build.build_hdf5(src, tmp_path / "out", opts())
    again = build.build_hdf5(src, tmp_path / "out", opts())  # this very build: nothing to do
    assert again.up_to_date and again.files == []
    with pytest.raises(DestinationExistsError, match="--force"):
        build.build_hdf5(src, tmp_path / "out", opts(size=(20, 20)))
    (tmp_path / "out" / "val.hdf5").unlink()
    with pytest.raises(DestinationExistsError, match="train.hdf5"):
        build.build_hdf5(src, tmp_path / "out", opts())
    store.partial_path(tmp_path / "out" / "train.hdf5").write_text("stale")
    build.build_hdf5(src, tmp_path / "out", opts(size=(16, 16)), force=True)
    assert rows_of(tmp_path / "out" / "train.hdf5")[0].shape == (3, 16, 16, 3)
    assert not list((tmp_path / "out").glob("*.partial"))


def test_files_of_other_splits_in_out_are_left_alone_with_a_warning(tmp_path):
    three = make_split(tmp_path / "three", counts=(("train", 1), ("val", 1), ("test", 1)))
    out = tmp_path / "out"
    build.build_hdf5(three, out, opts())
    before = (out / "train.hdf5").read_bytes()
    # An earlier split's train.hdf5, or the user's own (--name train): never deleted.
    two = make_split(tmp_path / "two", counts=(("val", 1), ("test", 1)))
    report = build.build_hdf5(two, out, opts(), force=True)
    assert (out / "train.hdf5").read_bytes() == before and (out / "means.json").exists()
    assert len(report.warnings) == 2
    assert "train.hdf5 is not from this build" in report.warnings[0]
    assert "means.json is not from this build" in report.warnings[1]


def test_a_split_whose_class_folders_a_mac_decomposed_builds_one_class(tmp_path):
    import unicodedata

    from dsprep.generators import DirectoryGenerator
    from dsprep.split import SplitOptions, run

    composed = "caf\u00e9"
    dump = make_class_folders(tmp_path / "d", classes=(composed, "dog"), per_class=6)
    split = tmp_path / "s"
    run(dump, split, SplitOptions(ratios=(0.5, 0.5)))
    for part in ("train", "val"):  # copied through a Mac or an SMB share
        folder = split / part / composed
        folder.rename(folder.with_name(unicodedata.normalize("NFD", composed)))
    report = build.build_hdf5(split, tmp_path / "out", opts())
    # The files files.csv lists are all there, in the other Unicode form: nothing is said to
    # be gone, or added by hand.
    assert report.warnings == [] and not any("files.csv" in n for n in report.notes)
    assert (tmp_path / "out" / "skipped.csv").read_text().splitlines() == ["source,reason,detail"]
    for f in report.files:
        images, labels, names, attrs = rows_of(f.path)
        # Labels by folder as the split placed them: café 0, dog 1, in both files.
        expected = [0 if unicodedata.normalize("NFC", n.split("/")[1]) == composed else 1
                    for n in names]
        assert list(labels) == expected and sorted(set(expected)) == [0, 1]
    gen = DirectoryGenerator(split / "val", image_size=(16, 16))
    assert gen.label_names == [composed, "dog"] and sorted(set(gen.labels)) == [0, 1]
    # Classes named as os.listdir gives them (decomposed) are the same classes.
    listed = DirectoryGenerator(split / "val", image_size=(16, 16),
                                classes=sorted(os.listdir(split / "val")))
    assert listed.label_names == gen.label_names and list(listed.labels) == list(gen.labels)


def test_a_dump_already_split_into_class_folders_is_built_as_it_is(tmp_path):
    src = tmp_path / "chest"
    make_class_folders(src / "train", classes=("NORMAL", "PNEUMONIA"), per_class=2)
    make_class_folders(src / "valid", classes=("PNEUMONIA",), per_class=1, seed=10)
    make_class_folders(src / "Test", classes=("NORMAL", "PNEUMONIA"), per_class=1, seed=20)
    report = build.build_hdf5(src, tmp_path / "out", opts())
    assert [f.split for f in report.files] == ["train", "val", "test"]
    assert any("valid/ as val" in note for note in report.notes)
    assert any("val: no images of class(es) NORMAL" in note for note in report.notes)
    for split, count in (("train", 4), ("val", 1), ("test", 2)):
        images, labels, names, attrs = rows_of(tmp_path / "out" / f"{split}.hdf5")
        assert len(names) == count
        # One label per class name in every file, though val has no NORMAL folder.
        assert [["NORMAL", "PNEUMONIA"][label] for label in labels] == [
            name.split("/")[1] for name in names]
        for image, name in zip(images, names, strict=True):
            np.testing.assert_array_equal(image, reference(src / name, (24, 24)))
    assert (tmp_path / "out" / "means.json").exists()

    # A copy of the split folders inside (as Kaggle's chest_xray archive has) is passed over.
    make_class_folders(src / "chest" / "train", classes=("NORMAL",), per_class=1, seed=40)
    again = build.build_hdf5(src, tmp_path / "out3", opts())
    assert [f.count for f in again.files] == [4, 1, 2]
    assert any(f"left out {src / 'chest'}/" in note for note in again.notes)
    # A folder of unlabelled images beside them (Kaggle's test1/) is passed over too.
    write_image(src / "unlabelled" / "1.jpg", smooth_image(24, 24, 30))
    loose = build.build_hdf5(src, tmp_path / "out4", opts())
    assert [f.count for f in loose.files] == [4, 1, 2]
    assert any(f"left out {src / 'unlabelled'}/: no class folders" in n for n in loose.notes)
    make_class_folders(src / "val", classes=("NORMAL",), per_class=1, seed=30)
    with pytest.raises(UsageError, match="both val/ and valid/"):
        build.build_hdf5(src, tmp_path / "out2", opts())
    shutil.rmtree(src / "val")
    make_class_folders(src / "extra", classes=("NORMAL",), per_class=1, seed=50)
    with pytest.raises(UsageError, match="no split.json"):
        build.build_hdf5(src, tmp_path / "out2", opts())


def test_split_folders_named_with_affixes_and_doubled_are_built(tmp_path):
    # Kaggle's Intel scenes archive: seg_train/seg_train/<class>, seg_test/seg_test/<class>
    # and unlabelled seg_pred/seg_pred/*.jpg.
    src = tmp_path / "intel"
    make_class_folders(src / "seg_train" / "seg_train", classes=("sea", "street"), per_class=2)
    make_class_folders(src / "seg_test" / "seg_test", classes=("sea", "street"), per_class=1,
                       seed=10)
    write_image(src / "seg_pred" / "seg_pred" / "7.jpg", smooth_image(24, 24, 20))
    report = build.build_hdf5(src, tmp_path / "out", opts())
    assert [(f.split, f.count) for f in report.files] == [("train", 4), ("test", 2)]
    assert any("seg_train/seg_train/ as train" in note for note in report.notes)
    assert any(f"left out {src / 'seg_pred' / 'seg_pred'}/: no class folders" in note
               for note in report.notes)
    _, labels, names, _ = rows_of(tmp_path / "out" / "test.hdf5")
    assert [["sea", "street"][label] for label in labels] == [n.split("/")[2] for n in names]
    assert report.warnings == []


def test_test_images_that_are_copies_of_training_images_are_warned_of(tmp_path):
    # A pre-split dump whose test folder holds a copy of a training image; then the test
    # folder built on its own beside a split that took that image in: its figures flatter.
    src = tmp_path / "intel"
    train = make_class_folders(src / "seg_train" / "seg_train", ("sea", "street"), per_class=2)
    test = make_class_folders(src / "seg_test" / "seg_test", ("sea", "street"), per_class=2,
                              seed=10)
    shutil.copy(train / "street" / "street_1.jpg", test / "sea" / "copy.jpg")
    report = build.build_hdf5(src, tmp_path / "out", opts())
    assert report.warnings == [
        "test.hdf5: 1 of its 5 images is a copy of an image of train.hdf5 "
        "(seg_test/seg_test/sea/copy.jpg, the same file as "
        "seg_train/seg_train/street/street_1.jpg): figures on test.hdf5 would flatter a model "
        "trained on train.hdf5; remove it from the folder test.hdf5 is built from, and build "
        "it again"]
    from dsprep import split as split_stage

    split = tmp_path / "split"
    split_stage.run(make_class_folders(tmp_path / "dump", ("sea", "street"), per_class=5,
                                       seed=30), split)
    for name, source in zip(("sea/a.jpg", "street/b.jpg"),
                            sorted((split / "train").rglob("*.jpg")), strict=False):
        shutil.copy(source, test / name)
    build.build_hdf5(split, tmp_path / "out2", opts())
    named = build.build_hdf5(test, tmp_path / "out2", opts(), name="test", force=True)
    assert [w.split(" (")[0] for w in named.warnings] == [
        "test.hdf5: 2 of its 7 images are copies of images of train.hdf5"]
    # A source gone since: the count is still of the file's images.
    (test / "street" / "street_0.jpg").unlink()
    assert [w.split(" (")[0] for w in build._shared_with_train(
        tmp_path / "out", [tmp_path / "out" / "test.hdf5"])] == [
        "test.hdf5: 1 of its 5 images is a copy of an image of train.hdf5"]
    # A file in OUT that is not dsprep's hides no warning about the others.
    pre = tmp_path / "pre"
    shutil.copytree(train, pre / "train")
    make_class_folders(pre / "val", ("sea", "street"), per_class=1, seed=20)
    shutil.copy(train / "sea" / "sea_0.jpg", pre / "val" / "street" / "copy.jpg")
    (tmp_path / "out4").mkdir()
    with h5py.File(tmp_path / "out4" / "test.hdf5", "w") as db:
        db["x"] = [1]
    report = build.build_hdf5(pre, tmp_path / "out4", opts())
    assert [w.split(" (")[0] for w in report.warnings if "copy" in w] == [
        "val.hdf5: 1 of its 3 images is a copy of an image of train.hdf5"]
    # (A test folder without copies: nothing to say.)
    (test / "sea" / "a.jpg").unlink()
    (test / "street" / "b.jpg").unlink()
    (test / "sea" / "copy.jpg").unlink()
    clean = build.build_hdf5(test, tmp_path / "out2", opts(), name="test", force=True)
    assert clean.warnings == []


def test_split_folders_of_images_in_one_folder_named_as_no_class_are_left_out(tmp_path):
    # Tiny ImageNet: val/images/ and test/images/ hold images without classes; they were
    # built as files of one class, "images", which train does not have.
    src = tmp_path / "tiny"
    make_class_folders(src / "train", classes=("n014", "n016"), per_class=2)
    for split in ("val", "test"):
        write_image(src / split / "images" / f"{split}_0.JPEG", smooth_image(24, 24, 40))
    report = build.build_hdf5(src, tmp_path / "out", opts())
    assert [(f.split, f.count) for f in report.files] == [("train", 4)]
    for split in ("val", "test"):
        assert any(note.startswith(f"left out {src / split}/: its images lie in images/")
                   for note in report.notes), report.notes
    assert not (tmp_path / "out" / "val.hdf5").exists()
    with store.open_dataset(tmp_path / "out" / "train.hdf5") as db:
        assert store.label_names(db) == ["n014", "n016"]
    # Images straight in a split folder are not "no images".
    shutil.rmtree(src / "val")
    write_image(src / "val" / "val_0.JPEG", smooth_image(24, 24, 41))
    report = build.build_hdf5(src, tmp_path / "out2", opts())
    assert f"val: no images in class folders of {src / 'val'}, no val.hdf5 built" in report.notes


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes "
                    "as a name (macOS and Windows refuse names that are not UTF-8)")
def test_names_that_are_not_utf8_are_skipped_rows_not_a_crash(tmp_path):
    root = make_class_folders(tmp_path / "src", ("cat", "dog"), per_class=2)
    raw = os.fsencode(root)
    bad = os.path.join(raw, b"cat", b"caf\xe9.jpg")
    with open(bad, "wb") as fh:
        fh.write((root / "cat" / "cat_0.jpg").read_bytes())
    os.mkdir(os.path.join(raw, b"\xff\xfe"))  # a class folder so named
    with open(os.path.join(raw, b"\xff\xfe", b"x.jpg"), "wb") as fh:
        fh.write((root / "dog" / "dog_0.jpg").read_bytes())
    report = build.build_hdf5(root, tmp_path / "out", opts(), name="all")
    assert report.files[0].count == 4
    # Each undecodable byte shows as the escape of the character Python reads it as.
    assert sorted((s.source, s.reason) for s in report.files[0].skipped) == [
        ("\\udcff\\udcfe/x.jpg", "bad-name"), ("cat/caf\\udce9.jpg", "bad-name")]
    with h5py.File(tmp_path / "out" / "all.hdf5", "r") as db:
        assert store.label_names(db) == ["cat", "dog"]
    with open(tmp_path / "out" / "all.skipped.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_a_build_stopped_among_its_renames_leaves_no_mix(tmp_path, monkeypatch):
    src = make_split(tmp_path / "split")
    clean = tmp_path / "clean"
    build.build_hdf5(src, clean, opts())
    expected = {name: rows_of(clean / name)[2] for name in ("train.hdf5", "val.hdf5",
                                                             "test.hdf5")}
    # Stopped in this process (Ctrl-C, SIGTERM, an error): what it renamed goes at once.
    out = tmp_path / "out"
    real_replace = build.os.replace

    def stopped(a, b):
        if str(a).endswith("val.hdf5.partial"):
            raise KeyboardInterrupt
        return real_replace(a, b)

    monkeypatch.setattr(build.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        build.build_hdf5(src, out, opts())
    monkeypatch.setattr(build.os, "replace", real_replace)
    assert not out.exists()

    # Ctrl-C or SIGTERM between two renames of a --force build: every file is whole, so the
    # renames are finished (the renamed ones were discarded, leaving neither build).
    old = tmp_path / "old"
    build.build_hdf5(src, old, opts(size=(16, 16)))
    done = []

    def stop_after_train(a, b):
        real_replace(a, b)
        if str(b).endswith("train.hdf5") and not done:
            done.append(b)
            raise KeyboardInterrupt

    monkeypatch.setattr(build.os, "replace", stop_after_train)
    with pytest.raises(KeyboardInterrupt) as stop:
        build.build_hdf5(src, old, opts(), force=True)
    monkeypatch.setattr(build.os, "replace", real_replace)
    assert stop.value.after_stop == f"The build had finished: its files are all in place in {old}."
    assert {name: rows_of(old / name)[2] for name in expected} == expected
    assert all(rows_of(old / name)[0].shape[1:3] == (24, 24) for name in expected)
    assert not (old / build.PUBLISHING_NAME).exists()
    assert build.build_hdf5(src, old, opts()).up_to_date
    # A second Ctrl-C while they are finished (held: they finish); a rename that fails.
    import signal

    for second in ("stop", "fail"):
        build.build_hdf5(src, old, opts(size=(16, 16)), force=True)
        done.clear()

        def twice(a, b, second=second):
            if str(b).endswith("val.hdf5") and done:
                if second == "fail":
                    raise PermissionError(errno.EACCES, "Permission denied", str(b))
                signal.raise_signal(signal.SIGINT)
            stop_after_train(a, b)

        monkeypatch.setattr(build.os, "replace", twice)
        with pytest.raises(KeyboardInterrupt) as stop:
            build.build_hdf5(src, old, opts(), force=True)
        monkeypatch.setattr(build.os, "replace", real_replace)
        if second == "stop":
            assert stop.value.after_stop.startswith("The build had finished")
            assert {name: rows_of(old / name)[2] for name in expected} == expected
        else:
            assert stop.value.after_stop.startswith(
                "Its files could not all be renamed into place ([Errno 13] Permission denied")

    # Killed outright between two renames: the next build of OUT removes the mix, then builds.
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os
        from dsprep import build
        real = os.replace
        def replace(a, b):
            if str(a).endswith("val.hdf5.partial"):
                os._exit(137)  # as kill -9: no clean-up runs
            real(a, b)
        build.os.replace = replace
        build.build_hdf5({str(src)!r}, {str(killed)!r},
                         build.BuildOptions(size=(24, 24), workers=1, exact=True))
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 137
    assert (killed / "train.hdf5").exists() and (killed / build.PUBLISHING_NAME).exists()
    report = build.build_hdf5(src, killed, opts())
    assert any(f"removed {killed / 'train.hdf5'}" in note for note in report.notes)
    assert {name: rows_of(killed / name)[2] for name in expected} == expected
    assert not (killed / build.PUBLISHING_NAME).exists()

    # Stopped just after its last rename: the build is whole and stays.
    def after_last(a, b):
        real_replace(a, b)
        if str(b).endswith("means.json"):
            raise KeyboardInterrupt

    whole = tmp_path / "whole"
    monkeypatch.setattr(build.os, "replace", after_last)
    with pytest.raises(KeyboardInterrupt):
        build.build_hdf5(src, whole, opts())
    monkeypatch.setattr(build.os, "replace", real_replace)
    assert {name: rows_of(whole / name)[2] for name in expected} == expected
    assert (whole / "means.json").exists() and not (whole / build.PUBLISHING_NAME).exists()

    # Killed while that clean-up discarded the waiting files: the journal now names them for
    # discarding only, so a final file the stopped build never replaced is kept.
    (whole / build.PUBLISHING_NAME).write_text(json.dumps({"discard": ["test.hdf5"]}))
    before = (whole / "test.hdf5").read_bytes()
    build.build_hdf5(src / "test", whole, opts(), name="extra")
    assert (whole / "test.hdf5").read_bytes() == before

    # Killed after its last rename: the build is whole and stays.
    (clean / build.PUBLISHING_NAME).write_text(json.dumps(
        ["train.hdf5", "val.hdf5", "test.hdf5", "skipped.csv", "means.json", "../x.json"]))
    (tmp_path / "x.json").write_text("not the build's")
    extra = build.build_hdf5(src / "test", clean, opts(), name="extra")
    assert not any("removed" in note for note in extra.notes)
    assert {name: rows_of(clean / name)[2] for name in expected} == expected
    assert (tmp_path / "x.json").exists() and not (clean / build.PUBLISHING_NAME).exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="rings are swept from Linux's "
                    "/dev/shm; elsewhere the system names them")
def test_a_ring_left_by_a_killed_build_is_removed_by_the_next(tmp_path):
    import fcntl

    # A ring of a process that is gone (kill -9 of the whole process group), one of a live
    # process (another build running now), and one whose process is gone from this PID
    # namespace but that is held (a build in another namespace sharing /dev/shm).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = build._host()
    shm = Path(build.SHM_DIR)
    left = shm / f"{build._RING_PREFIX}{host}-{dead}-0badc0de"
    live = shm / f"{build._RING_PREFIX}{host}-{os.getpid()}-0badc0de"
    held = shm / f"{build._RING_PREFIX}{host}-{dead}-0badf00d"
    for path in (left, live, held):
        path.write_bytes(b"\0" * 4096)
    holder = os.open(held, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        src = make_split(tmp_path / "split")
        build.build_hdf5(src, tmp_path / "out", opts(workers=2))
        assert not left.exists() and live.exists() and held.exists()
        # Its own ring is gone too.
        assert not list(shm.glob(f"{build._RING_PREFIX}{host}-{os.getpid()}-[!0]*"))
    finally:
        os.close(holder)
        for path in (left, live, held):
            path.unlink(missing_ok=True)


def test_a_full_disk_is_one_error_naming_the_file_and_nothing_is_left(tmp_path, monkeypatch):
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    real_flush = h5py.File.flush

    def full(self):
        # What HDF5 raises when the disk fills while it flushes (text abridged).
        if str(self.filename).endswith("val.hdf5.partial"):
            raise RuntimeError("Can't flush cache (file write failed: time = now, filename = "
                               "'val.hdf5.partial', file descriptor = 4, errno = 28, error "
                               "message = 'No space left on device')")
        return real_flush(self)

    monkeypatch.setattr(h5py.File, "flush", full)
    with pytest.raises(OSError) as info:
        build.build_hdf5(src, out, opts())
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(out / "val.hdf5.partial")
    assert not out.exists()  # nothing was left in it, so the OUT the build made went too


def test_a_build_that_cannot_fit_is_refused_before_any_decode(tmp_path, monkeypatch):
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    count = sum(1 for p in src.rglob("*.*") if p.name != "split.json")
    needs = count * 24 * 24 * 3
    free = needs - 1
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=free, f_bfree=free, f_frsize=1))
    monkeypatch.setattr(build, "_build_files", lambda *a, **k: pytest.fail("decoding began"))
    with pytest.raises(OSError) as info:
        build.build_hdf5(src, out, opts())
    assert info.value.errno == errno.ENOSPC
    assert f"{count:,} images of 24x24x3 need {needs / 1e6:,.1f} MB" in info.value.strerror
    assert "--compression gzip" in info.value.strerror
    assert not out.exists()  # the refused build made OUT, and took it away again
    deep = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(OSError, match="will not fit"):
        build.build_hdf5(src, deep, opts())
    assert not (tmp_path / "new").exists()  # and the parents it made for it
    # An OUT that was there stays, with nothing added.
    out.mkdir()
    with pytest.raises(OSError, match="will not fit"):
        build.build_hdf5(src, out, opts())
    assert list(out.iterdir()) == []
    # A stopped build's .partial files would hold their room until their turn: they go first,
    # and their room counts as free even where the file system gives it back late.
    stale = out / "test.hdf5.partial"
    stale.write_bytes(b"x" * 8192)
    held = stale.stat().st_blocks * 512  # what it takes on the disk
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=needs - held - 1, f_bfree=needs - held - 1, f_frsize=1))
    with pytest.raises(OSError, match="will not fit"):
        build.build_hdf5(src, out, opts())
    assert list(out.iterdir()) == []
    # A sparse one (a stopped build allocates its chunks and writes few) holds no room.
    with open(stale, "wb") as fh:
        fh.truncate(10**7)
    with pytest.raises(OSError, match="will not fit"):
        build.build_hdf5(src, out, opts())
    # Each file takes whole chunks: in chunks of 5, 18 train images take 20 rows, 6 val and
    # 6 test images 10 each.
    padded = needs + (2 + 4 + 4) * 24 * 24 * 3
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=padded - 1, f_bfree=padded - 1, f_frsize=1))
    with pytest.raises(OSError, match="will not fit"):
        build.build_hdf5(src, out, opts(chunk_images=5))
    monkeypatch.undo()
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=padded, f_bfree=padded, f_frsize=1))
    assert build.build_hdf5(src, tmp_path / "padded", opts(chunk_images=5)).files
    stale.write_bytes(b"x" * 8192)
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=needs - held, f_bfree=needs - held, f_frsize=1))
    reports = build.build_hdf5(src, out, opts()).files
    assert sum(r.count for r in reports) == count
    # The blocks a file system reserves are not counted, for root either: root in a
    # container or in a user namespace, or on a file system whose reserve is another user's,
    # cannot write them, and found out only after decoding every image.
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=free, f_bfree=needs, f_frsize=1))
    for uid in (1000, 0):
        monkeypatch.setattr(build.os, "geteuid", lambda uid=uid: uid)
        with pytest.raises(OSError, match="will not fit"):
            build.build_hdf5(src, tmp_path / f"u{uid}", opts())
    # A compressed size cannot be told in advance: no refusal.
    build.build_hdf5(src, tmp_path / "gz", opts(compression="gzip"))
    assert (tmp_path / "gz" / "train.hdf5").is_file()


def test_a_force_build_refused_for_room_says_the_files_it_replaces_hold_it(
        tmp_path, monkeypatch):
    # The files a --force build replaces stay until the new ones are complete, so it needs room
    # for both; the refusal gave only the free space, not that deleting them first would do.
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    build.build_hdf5(src, out, opts())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    names = ["train.hdf5", "val.hdf5", "test.hdf5", "means.json", "skipped.csv"]
    held = sum((out / n).stat().st_blocks * 512 for n in names)
    needs = 30 * 24 * 24 * 3
    assert needs < held  # the old files hold more than the pixels: deleting them makes room
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=needs - 1, f_bfree=needs - 1, f_frsize=1))
    with pytest.raises(OSError, match="will not fit") as info:
        build.build_hdf5(src, out, opts(), force=True)
    assert info.value.errno == errno.ENOSPC
    assert (f"are free there. The files this build would replace ({', '.join(names)}) hold "
            f"{held / 1e6:,.1f} MB, and are kept until the new ones are complete; delete them "
            "first and it fits, choose an OUT on another disk") in info.value.strerror
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A file linked elsewhere too frees no room when deleted: it is not counted.
    os.link(out / "train.hdf5", tmp_path / "kept.hdf5")
    with pytest.raises(OSError, match="will not fit") as info:
        build.build_hdf5(src, out, opts(), force=True)
    assert "(val.hdf5, test.hdf5, means.json, skipped.csv) hold" in info.value.strerror
    # Where deleting them would not be enough (larger images), the message is what it was.
    (tmp_path / "kept.hdf5").unlink()
    larger = 30 * 48 * 48 * 3
    assert larger > held
    monkeypatch.setattr(build.os, "statvfs", lambda path: SimpleNamespace(
        f_bavail=larger - held - 1, f_bfree=larger - held - 1, f_frsize=1))
    with pytest.raises(OSError, match="will not fit") as info:
        build.build_hdf5(src, out, opts(size=(48, 48)), force=True)
    assert "are free there. Free some space, choose" in info.value.strerror
    assert "replace" not in info.value.strerror


@pytest.mark.parametrize("error, reason, detail", [
    # Tests run as root, where file modes do not stop a read: the failure is injected.
    (PermissionError(13, "Permission denied"), "unreadable", "Permission denied"),
    # Listed, then gone before it was read: "unreadable" asked to make it readable, where a
    # file gone before the build is "missing-file".
    (FileNotFoundError(2, "No such file or directory"), "missing-file",
     "gone since the build listed it"),
])
def test_a_file_that_cannot_be_read_is_skipped_with_its_reason(tmp_path, monkeypatch, error,
                                                                reason, detail):
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    real = build.imagelib.read_bytes

    def read_bytes(path):
        if Path(path).name == "dog_0.jpg":
            raise type(error)(error.errno, error.strerror, str(path))
        return real(path)

    monkeypatch.setattr(build.imagelib, "read_bytes", read_bytes)
    report = build.build_hdf5(src, tmp_path / "out", opts())
    assert [(s.source, s.reason) for s in report.skipped] == [("train/dog/dog_0.jpg", reason)]
    assert detail in report.skipped[0].detail


@pytest.mark.parametrize("text, message", [
    ('{"schema": "dsprep-split/1", "classes": ["cat", "d', "is not valid JSON"),
    ('{"schema": "dsprep-split/1", "classes": ["cat", "dog", "cat"]}',
     "'classes' names cat more than once; make the split again with 'dsprep split --force'"),
])
def test_a_damaged_split_manifest_is_said_as_such(tmp_path, text, message):
    # A split.json cut short read as "no 'classes' list"; one edited to name a class twice
    # was built with two ids for one class folder.
    src = make_split(tmp_path / "split")
    (src / "split.json").write_text(text)
    with pytest.raises(DatasetFormatError, match=re.escape(message)):
        build.build_hdf5(src, tmp_path / "out", opts())
    assert not (tmp_path / "out").exists()


def test_a_source_path_that_is_not_utf8_is_refused_in_words(tmp_path):
    # split makes such a folder; h5py then failed writing source_root, with a traceback.
    src = make_split(tmp_path / "split")
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/spl\xfft"))
    src.rename(odd)
    with pytest.raises(UsageError, match="is not valid UTF-8"):
        build.build_hdf5(odd, tmp_path / "out", opts())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_decoder_warnings_stay_out_of_stderr(tmp_path, capfd, monkeypatch, workers):
    monkeypatch.setattr(build, "_TASK_IMAGES", 2)  # several tasks, so the workers really run
    src = make_split(tmp_path / "split", counts=(("train", 2),))
    jpeg = bytearray((src / "train" / "cat" / "cat_0.jpg").read_bytes())
    # Stray restart markers in the middle of the entropy data: libjpeg warns as it decodes.
    jpeg[len(jpeg) // 2:len(jpeg) // 2 + 40] = b"\xff\xd0" * 20
    (src / "train" / "cat" / "cat_0.jpg").write_bytes(bytes(jpeg))
    build.shutdown_workers()  # fresh workers, started while this test captures stderr
    report = build.build_hdf5(src, tmp_path / "out", opts(workers=workers))
    build.shutdown_workers()
    # The warning becomes the file's reason in skipped.csv, not noise on stderr.
    assert [(s.source, s.reason) for s in report.skipped] == [("train/cat/cat_0.jpg",
                                                                "not-an-image")]
    if workers > 1:
        # Worker processes write nothing to stderr. In this process (--workers 1) libjpeg's
        # line still reaches it: its file descriptor 2 is shared by every thread here, so it
        # is not taken away for a decode.
        assert "Corrupt JPEG" not in capfd.readouterr().err


def test_in_process_decoding_silences_the_opencv_log_only_meanwhile(tmp_path, monkeypatch):
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    level = cv2.utils.logging.getLogLevel()
    seen = []
    real = build.imagelib.load

    def load(*args, **kwargs):
        seen.append(cv2.utils.logging.getLogLevel())
        return real(*args, **kwargs)

    monkeypatch.setattr(build.imagelib, "load", load)
    build.build_hdf5(src, tmp_path / "out", opts())
    assert seen and set(seen) == {cv2.utils.logging.LOG_LEVEL_SILENT}
    assert cv2.utils.logging.getLogLevel() == level


def test_skipped_csv_alone_counts_as_an_existing_output(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "skipped.csv").write_text("mine\n")
    with pytest.raises(DestinationExistsError, match="skipped.csv"):
        build.build_hdf5(src, tmp_path / "out", opts())
    assert (tmp_path / "out" / "skipped.csv").read_text() == "mine\n"


@pytest.mark.parametrize("force", [False, True])
def test_output_folder_that_is_the_source_is_refused(tmp_path, force):
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    (src / "skipped.csv").write_text("source,reason,detail\nx.jpg,empty,zero-byte file\n")
    with pytest.raises(UsageError, match="is the source folder"):
        build.build_hdf5(src, tmp_path / "split" / ".", opts(), force=force)
    assert (src / "skipped.csv").read_text().endswith("x.jpg,empty,zero-byte file\n")
    assert not list(src.glob("*.hdf5*")) and not (src / "means.json").exists()
    # Inside it too: a --name build's OUT would be one more class folder the next time.
    for inside in (src / "hdf5", src / "train"):
        with pytest.raises(UsageError, match="is inside the source folder"):
            build.build_hdf5(src, inside, opts(), force=force)
    assert not (src / "hdf5").exists() and not list(src.rglob("*.hdf5*"))


def test_failed_build_leaves_the_old_skipped_csv_alone(tmp_path, monkeypatch):
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    out = tmp_path / "out"
    out.mkdir()
    (out / "skipped.csv").write_text("old\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    # means.json is written after skipped.csv: a failure there must not have replaced it.
    monkeypatch.setattr(build, "write_means", fail)
    with pytest.raises(OSError, match="disk full"):
        build.build_hdf5(src, out, opts(), force=True)
    assert (out / "skipped.csv").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["skipped.csv"]


@pytest.mark.parametrize("seed", [-1, -(2**40), 1.5, True])
def test_seed_must_be_a_whole_number_not_below_zero(seed):
    with pytest.raises(UsageError, match="seed"):
        build.BuildOptions(seed=seed).validate()


def test_check_sources_refuses_a_negative_seed(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 1),))
    build.build_hdf5(src, tmp_path / "out", opts())
    with pytest.raises(UsageError, match="seed"):
        build.check_sources(tmp_path / "out" / "train.hdf5", 1, seed=-1)


def test_check_sources_finds_changed_pixels_and_missing_sources(tmp_path):
    src = make_split(tmp_path / "split", counts=(("train", 3),))
    build.build_hdf5(src, tmp_path / "out", opts(size=(20, 20)))
    path = tmp_path / "out" / "train.hdf5"
    assert build.check_sources(path, 9) == []
    with h5py.File(path, "r+") as db:
        db["images"][4] = 255 - db["images"][4]
        missing = db["filenames"][7].decode()
    (src / missing).unlink()
    problems = build.check_sources(path, 9)
    assert len(problems) == 2
    assert any(p.startswith("row 4: pixels differ") for p in problems)
    assert any(p.startswith("row 7:") and missing in p for p in problems)
    # The sources moved: the file's source_root is gone; --source-root finds them.
    moved = tmp_path / "moved"
    src.rename(moved)
    assert build.check_sources(path, 9) == [
        f"source folder {src} does not exist; sources cannot be re-decoded (if the sources "
        "moved, name where they are now with --source-root)"]
    again = build.check_sources(path, 9, source_root=moved)
    assert len(again) == 2 and any(p.startswith("row 4: pixels differ") for p in again)
    assert any(str(moved / missing) in p for p in again)


# --- a worker killed mid-build ---------------------------------------------------------------


def _loky_workers() -> list[int]:
    """Worker processes of this test process (loky names them in their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and "loky" in cmdline and "resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


def _slow_images(folder: Path, count: int) -> list[Path]:
    """Write ``count`` 6000x6000 JPEGs (each a second or so to decode and shrink)."""
    big = cv2.resize(smooth_image(64, 64, seed=7), (6000, 6000), interpolation=cv2.INTER_LINEAR)
    return [write_image(folder / f"big_{k}.jpg", big, quality=70) for k in range(count)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                    reason="finds worker processes through Linux /proc")
def test_killed_worker_gives_a_clean_error_and_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_TASK_IMAGES", 4)  # several tasks, so two workers really run
    src = make_split(tmp_path / "split", counts=(("train", 4),))
    # Large photos take a second or more each to decode, so the build is surely mid-way when
    # the worker is killed (a named pipe no longer works: the listing leaves such files out).
    slow = _slow_images(src / "train" / "dog", 4)
    out = tmp_path / "out"
    outcome: dict = {}
    build.shutdown_workers()
    others = set(_loky_workers())  # joblib's own, kept by an earlier test (the sample dump's)

    def run():
        try:
            build.build_hdf5(src, out, opts(workers=2))
        except BaseException as exc:  # handed over to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (store.partial_path(out / "train.hdf5").exists()
                   and set(_loky_workers()) - others):
            assert time.monotonic() < deadline, "the build never started its workers"
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(sorted(set(_loky_workers()) - others)[0], signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive(), "the build did not notice the killed worker"
    finally:
        thread.join(10)
    error = outcome.get("error")
    assert isinstance(error, DsprepError), error
    # SIGKILL is the kernel's OOM killer's signal (or a scheduler's): memory is what to change.
    assert "worker process died (TerminatedWorkerError: killed with SIGKILL, most often by the " \
        "system for want of memory)" in str(error) and "fewer --workers" in str(error)
    assert "crashes the decoder" not in str(error)
    assert not (out / "train.hdf5").exists() and not (out / "means.json").exists()
    assert not store.partial_path(out / "train.hdf5").exists()
    # Running it again builds everything cleanly.
    for path in slow:
        path.unlink()
    report = build.build_hdf5(src, out, opts(workers=2))
    assert report.files[0].count == 12 and store.check_file(out / "train.hdf5") == []


def test_dangling_link_in_a_class_folder_is_reported_not_swallowed(tmp_path):
    from helpers import smooth_image, write_image

    from dsprep.build import find_rows
    from dsprep.sources import DANGLING_LINK

    write_image(tmp_path / "src" / "a" / "ok.jpg", smooth_image(16, 16))
    (tmp_path / "src" / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "src" / "a" / "notes.txt").symlink_to(tmp_path / "nowhere.txt")  # not an image
    classes, rows, notes, links = find_rows(tmp_path / "src", name="train")
    assert classes == ["a"] and [r.name for r in rows["train"]] == ["a/ok.jpg"]
    assert notes == [] and [s.source for s in links["train"]] == ["a/gone.jpg"]
    # The build lists it in train.skipped.csv, with where it pointed, and counts it.
    report = build.build_hdf5(tmp_path / "src", tmp_path / "out", opts(), name="train")
    assert report.files[0].count == 1
    assert [(s.source, s.reason) for s in report.files[0].skipped] == [
        ("a/gone.jpg", DANGLING_LINK)]
    with open(tmp_path / "out" / "train.skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source"] for r in rows] == ["a/gone.jpg"] and "nowhere.jpg" in rows[0]["detail"]
    with h5py.File(tmp_path / "out" / "train.hdf5", "r") as db:
        assert db.attrs["skipped"] == 1  # as many as the list and the report


@pytest.mark.parametrize("name", [None, "train"])
def test_an_unsupported_format_in_a_class_folder_is_a_skipped_row(tmp_path, name):
    # An iPhone's .heic among the JPEGs of a pre-split dump or a --name build: left out
    # without a word, where split and DirectoryGenerator list it.
    from helpers import smooth_image, write_image

    from dsprep.sources import UNSUPPORTED

    src = tmp_path / "src"
    classes = src / "train" if name is None else src
    write_image(classes / "a" / "ok.jpg", smooth_image(16, 16))
    write_image(classes / "b" / "ok.jpg", smooth_image(16, 16, seed=3))
    (classes / "b" / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(32))
    report = build.build_hdf5(src, tmp_path / "out", opts(), name=name)
    where = "train/" if name is None else ""
    assert report.files[0].count == 2
    assert [(s.source, s.reason) for s in report.files[0].skipped] == [
        (f"{where}b/photo.heic", UNSUPPORTED)]
    listed = tmp_path / "out" / ("skipped.csv" if name is None else "train.skipped.csv")
    with open(listed, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["source"], r["reason"]) for r in rows] == [(f"{where}b/photo.heic", UNSUPPORTED)]
    assert "convert them to" in rows[0]["detail"]
    # A class of such files only: its files are listed, not said to be "no class".
    (classes / "b" / "ok.jpg").unlink()
    report = build.build_hdf5(src, tmp_path / "again", opts(), name=name)
    assert [s.source for s in report.files[0].skipped] == [f"{where}b/photo.heic"]
    assert not [n for n in report.notes if "no images" in n], report.notes


@pytest.mark.parametrize("name", [None, "train"])
def test_a_folder_of_only_dangling_links_is_an_error_naming_them(tmp_path, name):
    src = tmp_path / "src" / ("train" if name is None else "")
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        (src / cls / "gone.jpg").symlink_to(tmp_path / f"nowhere-{cls}.jpg")
    with pytest.raises(DsprepError, match=r"every image of train was left out \(2: 2 "
                                          r"dangling-link; the first, (train/)?a/gone.jpg"):
        build.build_hdf5(tmp_path / "src", tmp_path / "out", opts(), name=name)
    assert not (tmp_path / "out" / "train.hdf5").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the process")
def test_a_worker_whose_build_was_killed_ends_too(tmp_path):
    """A decoding worker outlived a ``kill -9`` of its build, holding the shared ring."""
    ready = tmp_path / "ready"
    worker = ("import sys, time; from dsprep.build import exit_with_parent; "
              "exit_with_parent(0.05); open(sys.argv[1], 'w').close(); time.sleep(60)")
    build_process = ("import subprocess, sys, time; "
                     f"child = subprocess.Popen([sys.executable, '-c', {worker!r}, sys.argv[1]]); "
                     "print(child.pid, flush=True); time.sleep(60)")
    middle = subprocess.Popen([sys.executable, "-c", build_process, str(ready)],
                              stdout=subprocess.PIPE, text=True)
    child = int(middle.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists() and _running(child)
        middle.kill()
        middle.wait(10)
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child)
    finally:
        middle.kill()
        middle.wait(10)
        middle.stdout.close()
        if _running(child):
            os.kill(child, signal.SIGKILL)


def recorded_pools(monkeypatch) -> list:
    """The decoding pools that builds use from now on, in the order they take them."""
    used = []
    real = build._decoding_pool

    @contextlib.contextmanager
    def recorded(workers, most=None):
        with real(workers, most) as executor:
            used.append(executor)
            yield executor

    monkeypatch.setattr(build, "_decoding_pool", recorded)
    return used


def test_the_files_of_a_build_share_one_pool_of_its_worker_count(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_TASK_IMAGES", 2)  # val's 3 images alone would use 2 workers
    src = make_split(tmp_path / "split", counts=(("train", 6), ("val", 1)))
    used = recorded_pools(monkeypatch)
    try:
        build.build_hdf5(src, tmp_path / "out", opts(workers=3))
        assert len(used) == 2 and used[0] is used[1]  # not a second pool of 2 for val
        assert list(build._POOL["executors"]) == [3]
        # A later build with fewer workers gets a pool of its own size: --workers caps it.
        build.build_hdf5(src, tmp_path / "out2", opts(workers=2))
        assert used[2] is used[3] and used[2] is not used[0]
        assert list(build._POOL["executors"]) == [2]
    finally:
        build.shutdown_workers()


def test_a_val_file_larger_than_train_shares_one_pool_sized_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_TASK_IMAGES", 2)  # train's 3 images need 2 workers, val's 6: 3
    src = make_split(tmp_path / "split", counts=(("train", 1), ("val", 2)))
    used = recorded_pools(monkeypatch)
    try:
        build.build_hdf5(src, tmp_path / "out", opts(workers=3))
        assert len(used) == 2 and used[0] is used[1]
        assert list(build._POOL["executors"]) == [3]
    finally:
        build.shutdown_workers()


def test_builds_in_two_threads_share_pools_that_are_never_shut_down_under_them():
    # A build in another thread with another --workers used to shut down the pool a running
    # build was submitting to ("cannot schedule new futures after shutdown").
    try:
        with build._decoding_pool(2) as two:
            with build._decoding_pool(3) as three:
                assert three is not two  # two was busy: it is kept, and still serves
                assert two.submit(abs, -2).result(60) == 2
                assert three.submit(abs, -3).result(60) == 3
            with build._decoding_pool(2) as again:
                assert again is two
            with build._decoding_pool(2, 3) as upto:
                assert upto is two  # the smallest that serves
        with build._decoding_pool(4) as four:
            # Pools no build uses any more are stopped when another starts, not left idling.
            assert set(build._POOL["executors"].values()) == {four}
            assert four.submit(abs, -4).result(60) == 4
        with build._decoding_pool(3, 4) as smaller:
            assert smaller is four  # a smaller file of a build of 4 uses its pool
        with pytest.raises(RuntimeError, match="shutdown"):
            two.submit(abs, -2)
    finally:
        build.shutdown_workers()
    with build._decoding_pool(2) as fresh:
        assert fresh is not four  # shut down: a later build starts afresh
    build.shutdown_workers()


def test_a_worker_whose_build_died_while_it_started_ends_at_once():
    # Killed before the worker read its parent's id, the build would leave it watching its new
    # parent (init) for ever: the id it is given at its start is the one that counts.
    code = ("import os, time; from dsprep.build import exit_with_parent; "
            "exit_with_parent(0.05, parent=os.getppid() + 1); time.sleep(30)")
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 1  # a guard that never fired would sleep 30 s and exit 0
    alive = subprocess.run([sys.executable, "-c", "import os, time; from dsprep.build import "
                            "exit_with_parent; exit_with_parent(0.05, parent=os.getppid()); "
                            "time.sleep(0.3)"], timeout=60)
    assert alive.returncode == 0


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie has ended, whoever reaps it


def test_one_folder_of_a_split_is_answered_with_the_split(tmp_path):
    split = make_split(tmp_path / "split")
    with pytest.raises(UsageError, match=r"split/train lies in the split .*split; give .*split "
                                          r"to build train, val and test, or pass --name"):
        build.build_hdf5(split / "train", tmp_path / "out", opts())
    with pytest.raises(UsageError, match=r"split/train/cat lies in the split .*split; give "
                                          r"\S*split to build train, val and test$"):
        build.build_hdf5(split / "train" / "cat", tmp_path / "out", opts())
    assert not (tmp_path / "out").exists()
    # Another tool's split.json is no dsprep split to point at.
    (split / "split.json").write_text('{"train": [], "test": []}')
    with pytest.raises(UsageError, match="has no split.json; make it with 'dsprep split'"):
        build.build_hdf5(split / "train", tmp_path / "out", opts())


@pytest.mark.parametrize("layout, why", [
    ("csv", "labels.csv at its top may hold its labels"),
    ("flat", r"its images lie straight in it, named by class it may be \(cat.0.jpg\)"),
    ("parts", r"its folders \(images_part_1, images_part_2\) are parts of one set"),
])
def test_a_raw_dump_is_answered_with_the_split_to_make_not_with_name(tmp_path, layout, why):
    # Its folders built with --name would be taken for classes: HAM10000's two part folders.
    dump = tmp_path / "dump"
    if layout == "flat":
        for i in range(2):
            write_image(dump / f"cat.{i}.jpg", smooth_image(30, 30, seed=i))
    else:
        make_class_folders(dump, classes=("images_part_1", "images_part_2"), per_class=1)
    if layout == "csv":  # (not the submission template first in order: CIFAR-10's)
        (dump / "labels.csv").write_text("id,label\n")
        (dump / "aaa_sampleSubmission.csv").write_text("id,label\n")
        (dump / "a_notes.csv").write_text("what,when\n")
    with pytest.raises(UsageError, match=rf"dump has no split.json, and {why}: split it first "
                                          r"\('dsprep split \S*dump DEST'\), then build DEST$"):
        build.build_hdf5(dump, tmp_path / "out", opts())
    # Class folders alone may be classes: --name is offered.
    make_class_folders(tmp_path / "pets", classes=("cat", "dog"), per_class=1)
    with pytest.raises(UsageError, match="pass --name NAME"):
        build.build_hdf5(tmp_path / "pets", tmp_path / "out", opts())


def test_a_build_of_class_folders_leaves_their_masks_out_with_one_note(tmp_path):
    # COVID-19 Radiography built with --name: COVID/images/ beside COVID/masks/.
    root = make_images_beside_masks(tmp_path / "covid")
    report = build.build_hdf5(root, tmp_path / "out", opts(), name="train")
    _, labels, names, _ = rows_of(tmp_path / "out" / "train.hdf5")
    assert len(labels) == 6 and all("/images/" in n for n in names)
    notes = [str(n) for n in report.notes]
    assert notes == ["left out 6 masks or annotations in folders beside the classes' images, "
                     "such as COVID/masks/COVID-0.png (in COVID/masks/, beside the class's "
                     "images in COVID/images/)"], notes


def test_a_folder_of_pixel_tables_is_said_to_hold_no_image_files(tmp_path):
    dump = tmp_path / "sign"
    dump.mkdir()
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    (dump / "sign_mnist_train.csv").write_text(header + "\n" + ",".join(["3"] * 785) + "\n")
    with pytest.raises(UsageError, match=r"sign holds no image files; sign_mnist_train.csv "
                                          r"holds images as pixel values, one per row"):
        build.build_hdf5(dump, tmp_path / "out", opts())


def test_a_folder_holding_a_split_just_inside_is_answered_with_that_split(tmp_path):
    # The folder above a dsprep split, and an unzipped archive's wrapper around a folder
    # already split into train/ val/ test/ (chest_xray/chest_xray/).
    make_split(tmp_path / "data" / "split")
    (tmp_path / "data" / "notes").mkdir()
    with pytest.raises(UsageError, match=r"data has no split.json, but \S*data/split inside it "
                                          r"holds a split; give \S*data/split$"):
        build.build_hdf5(tmp_path / "data", tmp_path / "out", opts())
    inner = tmp_path / "chest_xray" / "chest_xray"
    for split in ("train", "val", "test"):
        make_class_folders(inner / split, classes=("NORMAL", "PNEUMONIA"), per_class=1)
    with pytest.raises(UsageError, match=r"give \S*chest_xray/chest_xray$"):
        build.build_hdf5(tmp_path / "chest_xray", tmp_path / "out", opts())
    # With a folder of unlabelled images beside the splits (which a build of it leaves out), it
    # said only "make it with 'dsprep split'".
    make_class_folders(tmp_path / "unl", classes=("test1",), per_class=1)
    shutil.move(tmp_path / "unl" / "test1", inner / "test1")
    with pytest.raises(UsageError, match=r"give \S*chest_xray/chest_xray$"):
        build.build_hdf5(tmp_path / "chest_xray", tmp_path / "out", opts())
    # Two folders for one split there are named, not answered with "make it with split".
    make_class_folders(inner / "valid", classes=("NORMAL",), per_class=1)
    with pytest.raises(UsageError, match=r"has both val/ and valid/ for the val split"):
        build.build_hdf5(tmp_path / "chest_xray", tmp_path / "out", opts())
    assert not (tmp_path / "out").exists()


def test_every_output_reaches_the_disk_before_it_takes_its_final_name(tmp_path, monkeypatch):
    # A power cut right after the renames must find the bytes the names point at: each file is
    # flushed while it still waits under its temporary name, and the folder after the renames.
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    events = []

    def synced(path):
        path = Path(path)
        events.append(("file", path.name, sorted(p.name for p in out.iterdir())))

    monkeypatch.setattr(build, "sync_file", synced)
    monkeypatch.setattr(build, "sync_folder", lambda path: events.append(("folder", Path(path))))
    build.build_hdf5(src, out, opts())
    finals = {"train.hdf5", "val.hdf5", "test.hdf5", "means.json", "skipped.csv"}
    files = [e for e in events if e[0] == "file"]
    assert {build._waiting(out / name).name for name in finals} == {e[1] for e in files}
    assert all(not finals & set(listing) for _, _, listing in files)
    # the journal before the renames, the renames after
    assert events[-1] == ("folder", out) and events.count(("folder", out)) == 2
    assert finals <= {p.name for p in out.iterdir()}

    # A file written alone (the library's write_file) is flushed before its rename too.
    seen = []
    monkeypatch.setattr(store, "sync_file", lambda path: seen.append(
        (Path(path).name, (out / "one.hdf5").exists())))
    classes, planned, _, _ = build.find_rows(src)
    build.write_file(planned["train"], out / "one.hdf5", classes, opts(), split="train",
                     source_root=src)
    assert seen == [("one.hdf5.partial", False)] and (out / "one.hdf5").is_file()


def test_a_split_stopped_while_moving_in_is_not_built_from(tmp_path):
    # A split filled in place (a container volume) and killed while its entries moved in holds
    # parts of two splits: building or reading it would quietly miss val/ or mix the two.
    from dsprep import split as splitting
    from dsprep.generators import DirectoryGenerator

    src = make_split(tmp_path / "split")
    (src / f"{splitting._OWN}-swapping").write_text("{}")
    with pytest.raises(LayoutError, match="run that split again to finish it"):
        build.build_hdf5(src, tmp_path / "out", opts())
    with pytest.raises(LayoutError, match="holds parts of two splits"):
        DirectoryGenerator(src / "train", image_size=(16, 16))
    assert not (tmp_path / "out").exists()
    (src / f"{splitting._OWN}-swapping").unlink()
    # Stopped while the old entries moved aside, before the journal: some are aside.
    (src / f"{splitting._OWN}-old").mkdir()
    (src / "test").rename(src / f"{splitting._OWN}-old" / "test")
    with pytest.raises(LayoutError, match=r"it left \.dsprep-split-old"):
        build.build_hdf5(src, tmp_path / "out", opts())
    (src / f"{splitting._OWN}-old" / "test").rename(src / "test")
    # A new split being written apart (or one abandoned there) leaves the old one whole.
    (src / f"{splitting._OWN}-partial" / "val").mkdir(parents=True)
    build.build_hdf5(src, tmp_path / "out", opts())
    assert (tmp_path / "out" / "train.hdf5").is_file()


def _two_builds(src, out, waiting):
    """OUT as a build killed among its final renames leaves it: its journal names every file,
    ``waiting`` still waits under its temporary name, the others took their final names."""
    build.build_hdf5(src, out, opts())
    shutil.copy(out / waiting, store.partial_path(out / waiting))
    (out / build.PUBLISHING_NAME).write_text(json.dumps(
        ["train.hdf5", "val.hdf5", "test.hdf5", "skipped.csv", "means.json"]))


def test_a_folder_left_with_files_of_two_builds_is_refused_until_built_again(tmp_path):
    # A build killed among its final renames: train.hdf5 is the new build's, val.hdf5 and
    # means.json still the old one's, the new val.hdf5 waiting under its temporary name.
    from dsprep.generators import HDF5Generator

    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    _two_builds(src, out, waiting="val.hdf5")
    for path in (out / "train.hdf5", out / "val.hdf5"):
        with pytest.raises(DatasetFormatError, match="holds files of two builds"):
            store.open_dataset(path)
    with pytest.raises(DatasetFormatError, match="run that build again"):
        HDF5Generator(out / "train.hdf5")
    # Every rename done (nothing waits): the build was whole, and reads.
    store.partial_path(out / "val.hdf5").rename(tmp_path / "aside.hdf5")
    with store.open_dataset(out / "train.hdf5"):
        pass
    shutil.copy(tmp_path / "aside.hdf5", store.partial_path(out / "val.hdf5"))
    build.build_hdf5(src, out, opts(), force=True)  # clears the mix, then builds
    assert not (out / build.PUBLISHING_NAME).exists()
    for split in ("train", "val", "test"):
        assert store.check_file(out / f"{split}.hdf5") == []


def test_a_refusal_after_clearing_two_builds_says_what_it_removed(tmp_path):
    # The clearing up happens before the refusal: the files are gone either way, and the
    # message is the only place left to say so.
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    _two_builds(src, out, waiting="val.hdf5")
    with pytest.raises(DestinationExistsError, match=re.escape(
            f"(this run removed {out / 'train.hdf5'}, ")) as refused:
        build.build_hdf5(src, out, opts())
    assert "a build stopped while it renamed them into place" in str(refused.value)
    assert not (out / "train.hdf5").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="rings live in /dev/shm")
def test_shared_memory_refused_by_a_size_limit_is_named_with_the_way_out(monkeypatch):
    def limited(fd, size):
        raise OSError(errno.EFBIG, "File too large")

    def ours():  # this process's segments only: other processes make and remove their own
        return {n for n in os.listdir(build.SHM_DIR)
                if n.startswith(f"{build._RING_PREFIX}{build._host()}-{os.getpid()}-")}

    before = ours()
    monkeypatch.setattr(os, "ftruncate", limited)
    with pytest.raises(DsprepError, match=r"shared memory the decoding workers write into "
                                          r"\(/dev/shm/.*File too large\); use --workers 1"):
        build._locked_segment(2**21)
    assert ours() <= before  # the file it made is gone


def test_a_named_build_into_a_folder_of_two_builds_clears_them_first(tmp_path):
    # Its classes follow the files already in OUT; files of a build stopped among its renames
    # are no files to follow: they are cleared (as any build into OUT does) before it looks.
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    _two_builds(src, out, waiting="test.hdf5")
    extra = make_class_folders(tmp_path / "extra", ["dog", "fox"], per_class=2, seed=70)
    report = build.build_hdf5(extra, out, opts(), name="extra")
    assert any(note.startswith("removed ") for note in report.notes)
    assert not (out / "train.hdf5").exists() and not (out / build.PUBLISHING_NAME).exists()
    # test.hdf5 was never replaced: it is the earlier build's, whole, and the ids follow it
    with store.open_dataset(out / "extra.hdf5") as db:
        assert store.label_names(db) == CLASSES


def test_classes_that_train_no_classifier_are_warned_about(tmp_path):
    # dogs-vs-cats as downloaded: train/ and test1/ taken for the classes of a --name build.
    dump = tmp_path / "dvc"
    make_class_folders(dump, classes=("train", "test1"), per_class=2)
    report = build.build_hdf5(dump, tmp_path / "a", opts(), name="train")
    assert any(w.startswith("class folders named as splits (test1, train): if ")
               and "split it first" in w for w in report.warnings), report.warnings
    one = tmp_path / "one"
    make_class_folders(one / "train", classes=("images",), per_class=2)
    report = build.build_hdf5(one, tmp_path / "b", opts())
    assert any(w.startswith("one class only (images): a classifier needs two or more")
               for w in report.warnings), report.warnings
    report = build.build_hdf5(make_split(tmp_path / "split"), tmp_path / "c", opts())
    assert not [w for w in report.warnings if "class" in w]
    # A split's own class named like a split (CIFAR-100's "train") is no dump's folder.
    cifar = tmp_path / "cifar"
    for split in ("train", "val"):
        make_class_folders(cifar / split, classes=("bus", "train"), per_class=2)
    (cifar / "split.json").write_text(json.dumps({"schema": "dsprep-split/1",
                                                  "classes": ["bus", "train"]}))
    report = build.build_hdf5(cifar, tmp_path / "d", opts())
    assert not [w for w in report.warnings if "class" in w], report.warnings


def test_a_build_refused_over_another_says_what_differs(tmp_path):
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    build.build_hdf5(src, out, opts())
    with pytest.raises(DestinationExistsError,
                       match=r"and are not this build \(images of 24x24 in train.hdf5, now "
                             r"32x32\); use --force"):
        build.build_hdf5(src, out, opts(size=(32, 32)))
    with pytest.raises(DestinationExistsError, match=r"\(resize 'crop' in train.hdf5, now "
                                                     r"'stretch'\)"):
        build.build_hdf5(src, out, opts(resize="stretch"))
    # A file of OUT written by other means (no build attributes) is named, not a traceback.
    other = tmp_path / "other"
    other.mkdir()
    store.write_arrays(other / "train.hdf5", np.zeros((2, 24, 24, 3), np.uint8), [0, 1],
                       ["cat", "dog"])
    with h5py.File(other / "train.hdf5", "a") as db:
        del db.attrs["image_size"]
    with pytest.raises(DestinationExistsError, match="already exists and is not this build"):
        build.build_hdf5(src, other, opts())
    image = next((src / "train" / "cat").iterdir())
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    with pytest.raises(DestinationExistsError, match=r"\(the images of train changed since "
                                                     r"train.hdf5 was built"):
        build.build_hdf5(src, out, opts())


def test_a_build_from_before_gone_files_were_counted_is_still_up_to_date(tmp_path, monkeypatch):
    from dsprep.split import FILES_COLUMNS

    src = make_split(tmp_path / "split")
    placed = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.jpg"))
    with open(src / "files.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FILES_COLUMNS)
        writer.writerows([p.split("/")[0], p.split("/")[1], p, p, "0", "48", "64"] for p in placed)
    gone = placed[-1]
    (src / gone).unlink()
    with monkeypatch.context() as m:  # a build by a version that did not count gone files
        m.setattr(build, "_add_missing", lambda *args: None)
        before = build.build_hdf5(src, tmp_path / "out", opts())
    assert before.skipped == []
    assert build.build_hdf5(src, tmp_path / "out", opts()).up_to_date
    now = build.build_hdf5(src, tmp_path / "now", opts())
    assert [(s.source, s.reason) for s in now.skipped] == [(gone, "missing-file")]
    assert build.build_hdf5(src, tmp_path / "now", opts()).up_to_date


def test_files_added_to_a_split_by_hand_are_built_with_a_note(tmp_path):
    from dsprep import split

    dump = make_class_folders(tmp_path / "dump", CLASSES, per_class=10)
    src = tmp_path / "split"
    split.materialize(split.plan(dump, counts=(6, 2, 2)), src)
    assert not [n for n in build.build_hdf5(src, tmp_path / "out", opts()).notes
                if "not placed by the split" in n]
    added = src / "train" / CLASSES[0] / "added by hand.png"
    write_image(added, smooth_image(48, 64, seed=5))
    report = build.build_hdf5(src, tmp_path / "again", opts())
    assert report.files[0].count == 6 * len(CLASSES) + 1  # built, as the folders say
    assert [n for n in report.notes if "not placed by the split" in n] == [
        f"train: 1 file not placed by the split (not in files.csv), such as train/{CLASSES[0]}/"
        "added by hand.png: added since the split, and built with its class folder's label, "
        "unchecked for duplicates of other images; to have them checked, add them to the dump "
        "and split it again"]


@pytest.mark.parametrize("damage", ["deleted", "edited"])
def test_a_split_without_its_files_csv_is_built_with_a_note_that_gone_files_go_unseen(tmp_path,
                                                                                    damage):
    from dsprep import split

    dump = make_class_folders(tmp_path / "dump", CLASSES, per_class=10)
    src = tmp_path / "split"
    split.materialize(split.plan(dump, counts=(6, 2, 2)), src)
    assert not [n for n in build.build_hdf5(src, tmp_path / "out", opts()).notes
                if "files.csv" in n]
    if damage == "deleted":
        (src / "files.csv").unlink()
    else:  # opened and saved by a spreadsheet with other columns
        (src / "files.csv").write_text("file,class\n")
    next((src / "val" / CLASSES[0]).iterdir()).unlink()
    report = build.build_hdf5(src, tmp_path / "again", opts())
    assert report.skipped == []  # the deleted image cannot be told from one never placed
    notes = [n for n in report.notes if "files.csv" in n]
    why, fix = (("is missing", "put it back") if damage == "deleted" else
                ("is not as the split wrote it (edited?)", "put the split's back"))
    assert notes == [f"{src / 'files.csv'} {why}, so this build cannot tell which images were "
                     "deleted from the split folder or added to it since the split (none is "
                     f"listed as missing-file); {fix} to have them checked"]
    assert isinstance(notes[0], build.AttentionNote)


def test_images_mostly_smaller_than_the_size_built_are_noted_as_enlarged(tmp_path):
    # The default --size 256 on a dump of 48x64 images: every image enlarged, the files many
    # times larger, without a word.
    from dsprep import split

    dump = make_class_folders(tmp_path / "dump", CLASSES, per_class=10, size=(48, 64))
    src = tmp_path / "split"
    split.materialize(split.plan(dump, counts=(6, 2, 2)), src)
    report = build.build_hdf5(src, tmp_path / "big", opts(size=(128, 128)))
    total = 10 * len(CLASSES)
    assert [n for n in report.notes if "enlarged" in n] == [
        f"{total} of the {total} images of the split are smaller than 128x128 on both sides "
        "(half are 48x64 or smaller) and are enlarged to it, in larger files with no detail "
        "gained; a --size near theirs (such as 48) keeps them as they are"]
    again = build.build_hdf5(src, tmp_path / "big", opts(size=(128, 128)))
    assert again.up_to_date and not [n for n in again.notes if "enlarged" in n]
    for size in ((48, 48), (64, 48)):  # not smaller on both sides
        report = build.build_hdf5(src, tmp_path / f"at{size[0]}x{size[1]}", opts(size=size))
        assert not [n for n in report.notes if "enlarged" in n], size


def test_a_split_whose_files_csv_cannot_be_read_is_told_to_make_it_readable(tmp_path,
                                                                           monkeypatch):
    # It said "is missing ... put it back" of a file that was there, but not this user's.
    import pathlib

    from dsprep import split

    dump = make_class_folders(tmp_path / "dump", CLASSES, per_class=10)
    src = tmp_path / "split"
    split.materialize(split.plan(dump, counts=(6, 2, 2)), src)
    real_open = pathlib.Path.open

    def no_access(self, *args, **kwargs):
        if self.name == "files.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", no_access)
    monkeypatch.setattr(build, "read_placed", lambda folder: None)  # as it fails to read it
    notes = [n for n in build.build_hdf5(src, tmp_path / "out", opts()).notes if "files.csv" in n]
    assert notes == [f"{src / 'files.csv'} cannot be read (Permission denied), so this build "
                     "cannot tell which images were deleted from the split folder or added to "
                     "it since the split (none is listed as missing-file); make it readable to "
                     "have them checked"]


@pytest.mark.parametrize("change", ["replaced", "rewritten", "linked", "relinked"])
def test_a_split_replaced_while_it_is_built_keeps_nothing(tmp_path, monkeypatch, change):
    # A 'split --force' of SRC while the build reads it: the files would mix two splits, and
    # the images gone would be counted as unreadable ones, with exit 0.
    from dsprep.errors import DsprepError

    src = make_split(tmp_path / "split")
    real = build.write_file

    def write_file(rows, path, *args, **kwargs):
        report = real(rows, path, *args, **kwargs)
        if path.name == "val.hdf5":  # train is written; now its files are laid out anew
            victim = next((src / "train" / CLASSES[0]).iterdir())
            if change == "replaced":
                shutil.copyfile(victim, victim.with_name("new.jpg"))
                os.replace(victim.with_name("new.jpg"), victim)
            elif change == "rewritten":  # in place, a new time (cp over it)
                data = bytearray(victim.read_bytes())
                data[len(data) // 2] ^= 0xFF
                victim.write_bytes(bytes(data))
                st = victim.stat()
                os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            elif change == "linked":  # the same file, a chmod and another hard link to it
                os.link(victim, tmp_path / "elsewhere.jpg")
                os.chmod(victim, 0o600)
            else:  # a link made and removed elsewhere (a hardlink split --force): its change
                os.link(victim, tmp_path / "elsewhere.jpg")  # time alone moves
                os.unlink(tmp_path / "elsewhere.jpg")
        return report

    monkeypatch.setattr(build, "write_file", write_file)
    out = tmp_path / "out"
    counts = [6 * len(CLASSES), 2 * len(CLASSES), 2 * len(CLASSES)]
    if change in ("linked", "relinked"):  # no image changed: no reason to fail
        assert [f.count for f in build.build_hdf5(src, out, opts()).files] == counts
        return
    with pytest.raises(DsprepError, match="images of train changed while they were built"):
        build.build_hdf5(src, out, opts())
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []
    monkeypatch.undo()
    # Run again once the split is done: a whole build.
    assert [f.count for f in build.build_hdf5(src, out, opts()).files] == counts


def test_a_worker_dead_of_another_signal_is_blamed_on_a_file():
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    error = TerminatedWorkerError("A worker process managed by the executor was unexpectedly "
                                  "terminated.\n\nThe exit codes of the workers are "
                                  "{SIGSEGV(-11)}\n")
    message = build._worker_died_message(error)
    assert message.startswith("a decoding worker process died (TerminatedWorkerError: SIGSEGV); ")
    assert "use --workers 1 to find the file that crashes the decoder" in message


def test_the_digests_of_a_files_name_come_from_the_names_still_listed(tmp_path):
    # One image added to a split folder by hand (build-hdf5 builds it, with a note) turned the
    # whole learned-from count off.
    from dsprep.split import FILES_COLUMNS

    rows = [["train", "cat", f"train/cat/{i}.jpg", f"cat/{i}.jpg", f"d{i}", "8", "8"]
            for i in range(4)]
    with open(tmp_path / "files.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([FILES_COLUMNS, *rows])
    names = [f"train/cat/{i}.jpg" for i in range(4)]
    listed = [(name, f"d{i}") for i, name in enumerate(names)]
    assert build.split_digests(tmp_path, [*names, "train/cat/added.jpg"]) == listed
    assert build.split_digests(tmp_path, None, "train") == listed
    # Most names gone (the folder split again since): nothing is told.
    assert build.split_digests(tmp_path, ["train/cat/0.jpg", "x", "y"]) is None


def test_the_digests_of_a_file_built_from_other_folders_are_read_from_its_sources(tmp_path):
    import hashlib

    root = make_class_folders(tmp_path / "d", ("a", "b"), per_class=2)
    build.build_hdf5(root, tmp_path / "out", opts(), name="test")
    path = tmp_path / "out" / "test.hdf5"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    digests = dict(build.image_digests(path, build.HASHED_BYTES))
    assert digests == {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in files}
    assert build.image_digests(path) is None  # not read unless asked
    total = sum((root / n).stat().st_size for n in files)
    assert build.image_digests(path, total - 1) is None  # more bytes than it may read
    for name in files[:2]:  # half of them gone: not told
        (root / name).unlink()
    assert build.image_digests(path, build.HASHED_BYTES) is None


def test_an_up_to_date_build_on_a_read_only_mount_has_nothing_to_do(tmp_path, monkeypatch):
    # A read-only mount answers even the removal of a missing name with EROFS: the re-run of a
    # pipeline whose data is mounted read-only failed on a .partial file that was never there.
    src = make_split(tmp_path / "split")
    out = tmp_path / "out"
    build.build_hdf5(src, out, opts())
    real_unlink = Path.unlink

    def read_only(self, missing_ok=False):
        if self.parent == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    assert build.build_hdf5(src, out, opts()).up_to_date
