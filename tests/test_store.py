"""The HDF5 schema: writing atomically, opening, and refusing what is not dsprep's."""

from __future__ import annotations

import contextlib
import os

import h5py
import numpy as np
import pytest

from dsprep import store
from dsprep.errors import DatasetFormatError, DestinationExistsError, LayoutError, UsageError


def _arrays(rng, n=10, h=8, w=6):
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 3, n)


def test_write_arrays_round_trip(tmp_path, rng):
    images, labels = _arrays(rng)
    path = store.write_arrays(tmp_path / "a.hdf5", images, labels, ["a", "b", "c"])
    with store.open_dataset(path) as db:
        np.testing.assert_array_equal(db["images"][()], images)
        np.testing.assert_array_equal(db["labels"][()], labels)
        assert store.label_names(db) == ["a", "b", "c"]
        assert db.attrs["schema"] == store.SCHEMA
        assert tuple(db.attrs["image_size"]) == (8, 6)
        assert db.attrs["count"] == 10
        # The book-style reader loop works unchanged.
        bs, seen = 4, 0
        for i in range(0, db["images"].shape[0], bs):
            seen += len(db["images"][i:i + bs])
            assert len(db["labels"][i:i + bs]) == len(db["images"][i:i + bs])
        assert seen == 10


def test_failed_write_leaves_no_file(tmp_path, rng):
    images, labels = _arrays(rng)
    path = tmp_path / "b.hdf5"
    with pytest.raises(RuntimeError):
        with store.HDF5Writer(path, 10, (8, 6), ["a", "b", "c"]) as writer:
            writer.append(images[:5], labels[:5], ["x"] * 5)
            raise RuntimeError("interrupted")
    assert not path.exists()
    assert not store.partial_path(path).exists()


def test_existing_file_needs_overwrite(tmp_path, rng):
    images, labels = _arrays(rng)
    path = store.write_arrays(tmp_path / "c.hdf5", images, labels, ["a", "b", "c"])
    with pytest.raises(DestinationExistsError, match="--force"):
        store.write_arrays(path, images, labels, ["a", "b", "c"])


def test_open_rejects_missing_non_hdf5_and_foreign(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        store.open_dataset(tmp_path / "missing.hdf5")
    with pytest.raises(LayoutError, match="is a folder without HDF5 files: .*build-hdf5"):
        store.open_dataset(tmp_path)
    text = tmp_path / "text.hdf5"
    text.write_text("hello")
    with pytest.raises(LayoutError, match="is a folder; give one of its HDF5 files, such as "
                                          ".*text.hdf5"):
        store.open_dataset(tmp_path)
    with pytest.raises(DatasetFormatError, match="not a readable HDF5"):
        store.open_dataset(text)
    (tmp_path / "test.hdf5").write_text("hello")  # what evaluate wants most often
    with pytest.raises(LayoutError, match=r"such as \S*test\.hdf5$"):
        store.open_dataset(tmp_path)
    foreign = tmp_path / "foreign.hdf5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(DatasetFormatError, match="no 'images' dataset"):
        store.open_dataset(foreign)


def test_finish_leaves_partial_until_publish(tmp_path, rng):
    images, labels = _arrays(rng)
    path = tmp_path / "d.hdf5"
    writer = store.HDF5Writer(path, 10, (8, 6), ["a", "b", "c"])
    writer.append(images[:7], labels[:7], [f"f{i}" for i in range(7)])
    partial = writer.finish(skipped=3)
    assert partial == store.partial_path(path) and partial.exists()
    assert not path.exists()
    assert writer.publish() == path
    assert path.exists() and not partial.exists()
    with store.open_dataset(path) as db:
        assert db["images"].shape == (7, 8, 6, 3)
        assert db.attrs["count"] == 7 and db.attrs["skipped"] == 3
        np.testing.assert_array_equal(db["images"][()], images[:7])


def test_stale_partial_is_replaced(tmp_path, rng):
    images, labels = _arrays(rng)
    path = tmp_path / "e.hdf5"
    store.partial_path(path).write_bytes(b"left over from a killed build")
    store.write_arrays(path, images, labels, ["a", "b", "c"])
    with store.open_dataset(path) as db:
        np.testing.assert_array_equal(db["labels"][()], labels)
    assert not store.partial_path(path).exists()


def test_check_schema_rejects_a_group_named_images(tmp_path):
    path = tmp_path / "group.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("images")
        f["labels"] = np.zeros(3, dtype=np.int32)
    with pytest.raises(DatasetFormatError, match="not groups"):
        store.open_dataset(path)


@pytest.mark.parametrize("labels", [np.array([0, 1.7, 1]), np.array([b"cat", b"dog", b"cat"])])
def test_check_schema_rejects_labels_that_are_not_class_ids(tmp_path, labels):
    path = tmp_path / "labels.hdf5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((3, 4, 4, 3), np.uint8)
        f["labels"] = labels
    with pytest.raises(DatasetFormatError, match="expected integer class ids"):
        store.open_dataset(path)


def test_describe_reports_layout_classes_and_attributes(tmp_path, rng):
    images = rng.integers(0, 256, (9, 8, 6, 3), dtype=np.uint8)
    labels = np.array([0, 0, 2, 2, 2, 1, 0, 2, 2])
    path = tmp_path / "f.hdf5"
    with store.HDF5Writer(path, 9, (8, 6), ["a", "b", "c"], chunk_images=4,
                          compression="lzf", attrs={"split": "val"}) as writer:
        writer.append(images, labels, [f"x{i}" for i in range(9)])
    info = store.describe(path)
    assert info["shape"] == (9, 8, 6, 3) and info["count"] == 9
    assert info["chunks"] == (4, 8, 6, 3)
    assert info["compression"] == "lzf"
    assert info["classes"] == [("a", 3), ("b", 1), ("c", 5)]
    assert info["size_bytes"] == path.stat().st_size
    assert info["attrs"]["split"] == "val"
    assert info["attrs"]["image_size"] == [8, 6]


def test_chunks_of_large_images_hold_fewer_images(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(store, "MAX_CHUNK_BYTES", 3 * 8 * 6 * 3)  # three 8x6 images
    images = rng.integers(0, 256, (9, 8, 6, 3), dtype=np.uint8)
    path = tmp_path / "f.hdf5"
    with store.HDF5Writer(path, 9, (8, 6), ["a"], chunk_images=64) as writer:
        writer.append(images, np.zeros(9, dtype=np.int32), [f"x{i}" for i in range(9)])
    assert store.describe(path)["chunks"] == (3, 8, 6, 3)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["images"][()], images)


def _good_file(tmp_path, rng, name="g.hdf5"):
    images, labels = _arrays(rng)
    return store.write_arrays(tmp_path / name, images, labels, ["a", "b", "c"],
                              filenames=[f"f{i}.jpg" for i in range(10)])


def test_check_file_passes_a_sound_file(tmp_path, rng):
    assert store.check_file(_good_file(tmp_path, rng)) == []


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda db: db.attrs.__setitem__("count", 11), "count attribute 11"),
        (lambda db: db.attrs.__setitem__("mean_rgb", [1.0, np.nan, 2.0]), "mean_rgb"),
        (lambda db: db.attrs.__setitem__("schema", "other/2"), "schema is 'other/2'"),
        (lambda db: db.attrs.__setitem__("image_size", [5, 5]), "image_size attribute"),
        (lambda db: db.attrs.__delitem__("split"), "missing root attributes: split"),
        (lambda db: db["labels"].__setitem__(3, 7), "1 labels fall outside 0..2"),
        (lambda db: db.__delitem__("filenames"), "no 'filenames' dataset"),
        (lambda db: db["filenames"].__setitem__(2, "../up.jpg"),
         "'filenames' of 1 rows are not relative UTF-8 paths (rows 2)"),
        (lambda db: db["filenames"].__setitem__(4, b"\xff\xfe.jpg"), "(rows 4)"),
        (lambda db: db.attrs.__setitem__("resize", "wobble"),
         "resize is 'wobble', expected one of crop, stretch, pad"),
        (lambda db: db.attrs.__setitem__("order", "sideways"), "order is 'sideways'"),
        (lambda db: db.attrs.__setitem__("max_pixels", -3), "max_pixels attribute -3 is not"),
        (lambda db: db.attrs.__setitem__("exact", "maybe"), "exact attribute 'maybe'"),
    ],
)
def test_check_file_finds_problems(tmp_path, rng, tamper, message):
    path = _good_file(tmp_path, rng)
    with h5py.File(path, "r+") as db:
        tamper(db)
    problems = store.check_file(path)
    assert len(problems) == 1, problems
    assert message in problems[0]


@pytest.mark.parametrize("where, error", [
    ("check_schema", KeyError("Unable to synchronously open object (bad version number for "
                              "fill value message)")),
    ("attributes", RuntimeError("Error iterating over attributes (integer offset out of "
                                "bounds)")),
])
def test_damaged_metadata_is_a_format_error_naming_the_file(tmp_path, rng, monkeypatch, where,
                                                             error):
    # What h5py raises on a file whose headers or attribute heap took damage (seen on files
    # with random bytes flipped): it used to reach the user as a traceback.
    path = _good_file(tmp_path, rng)

    def damaged(*args, **kwargs):
        raise error

    monkeypatch.setattr(store, where, damaged)
    for read in (store.check_file, store.describe):
        with pytest.raises(DatasetFormatError, match=rf"{path} is damaged: its HDF5 metadata "
                                                     r"cannot be read .*rebuild it"):
            read(path)


def test_check_file_flags_an_empty_file(tmp_path):
    path = store.write_arrays(tmp_path / "empty.hdf5", np.zeros((0, 4, 4, 3), np.uint8), [],
                              ["a"], filenames=[])
    assert store.check_file(path) == ["the file holds no images"]


@pytest.mark.parametrize("block", [1, 3, 4, 64])
def test_channel_stats_streams_any_block_size(tmp_path, rng, block):
    images = rng.integers(0, 256, (10, 8, 6, 3), dtype=np.uint8)
    path = store.write_arrays(tmp_path / "s.hdf5", images, np.zeros(10, int), ["a"])
    stats = store.channel_stats(path, block=block)
    flat = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats.mean, flat.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats.std, flat.std(axis=0), rtol=0, atol=1e-9)
    assert stats.images == 10


@pytest.mark.parametrize("compression", ["none", "lzf"])
def test_appends_of_whole_and_partial_chunks_round_trip(tmp_path, rng, compression):
    images = rng.integers(0, 256, (23, 8, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 23)
    path = tmp_path / f"chunks-{compression}.hdf5"
    with store.HDF5Writer(path, 25, (8, 6), ["a", "b", "c"], chunk_images=4,
                          compression=compression) as writer:
        # Aligned whole chunks, a ragged block, then unaligned blocks.
        for lo, hi in ((0, 8), (8, 13), (13, 16), (16, 23)):
            writer.append(images[lo:hi], labels[lo:hi], [f"f{i}" for i in range(lo, hi)])
    with store.open_dataset(path) as db:
        np.testing.assert_array_equal(db["images"][()], images)
        np.testing.assert_array_equal(db["labels"][()], labels)
        assert db["filenames"][22].decode() == "f22"


def test_labels_and_names_held_back_land_on_their_rows(tmp_path, rng, monkeypatch):
    # Labels and file names are written a few rows at a time; the file is trimmed after them.
    monkeypatch.setattr(store, "_META_ROWS", 5)
    images = rng.integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(13) % 3
    path = tmp_path / "meta.hdf5"
    with store.HDF5Writer(path, 20, (4, 4), ["a", "b", "c"], chunk_images=2,
                          direct=True) as writer:
        for lo, hi in ((0, 3), (3, 4), (4, 9), (9, 13)):
            writer.append(images[lo:hi], labels[lo:hi], [f"f{i}" for i in range(lo, hi)])
        with pytest.raises(UsageError, match="2 images but 1 labels and 2 file names"):
            writer.append(images[:2], labels[:1], ["x", "y"])
    with store.open_dataset(path) as db:
        assert db["images"].shape[0] == db["labels"].shape[0] == db["filenames"].shape[0] == 13
        np.testing.assert_array_equal(db["images"][()], images)
        np.testing.assert_array_equal(db["labels"][()], labels)
        assert [n.decode() for n in db["filenames"][()]] == [f"f{i}" for i in range(13)]


# -- RowReader: plain rows read with preadv, outside h5py ---------------------------------------


def _raw_file(path, images, userblock=0, **create):
    with h5py.File(path, "w", userblock_size=userblock) as f:
        f.create_dataset("images", data=images, **create)
    return path


def _reader(path):
    with h5py.File(path, "r") as f:
        return store.RowReader.for_dataset(f["images"])


@contextlib.contextmanager
def _raw(path):
    """The reader and a descriptor of the file, as a generator holds them."""
    with h5py.File(path, "r") as f:
        reader = store.RowReader.for_dataset(f["images"])
        assert reader is not None
        with store.RowReader.open(f["images"]) as handle:
            yield reader, handle.fileno()


@pytest.mark.parametrize("create, userblock", [
    ({"chunks": (4, 8, 6, 3)}, 0),  # 10 rows: the last chunk is partly filled
    ({"chunks": (1, 8, 6, 3)}, 0),
    ({}, 0),  # contiguous
    ({"chunks": (3, 8, 6, 3)}, 512),  # a user block before the HDF5 data
])
def test_row_reader_reads_what_h5py_reads(tmp_path, rng, create, userblock):
    images, _ = _arrays(rng)
    with _raw(_raw_file(tmp_path / "r.h5", images, userblock, **create)) as (reader, fd):
        for start, stop in [(0, 10), (3, 9), (9, 10), (4, 8)]:
            out = np.zeros((stop - start, 8, 6, 3), np.uint8)
            reader.read(fd, start, stop, out)
            np.testing.assert_array_equal(out, images[start:stop])
        for rows in ([7, 2, 3, 4, 9, 0], [5], list(rng.permutation(10)), [3, 3, 4]):
            out = np.zeros((len(rows), 8, 6, 3), np.uint8)
            reader.read_rows(fd, rows, out)
            np.testing.assert_array_equal(out, images[rows])


@pytest.mark.parametrize("create, userblock", [
    ({"chunks": (4, 8, 6, 3)}, 0),  # the last chunk partly filled
    ({}, 0),  # contiguous
    ({"chunks": (3, 8, 6, 3)}, 1024),  # a user block before the HDF5 data
])
def test_mapped_rows_match_h5py_window_by_window(tmp_path, rng, monkeypatch, create, userblock):
    # Windows of 3 rows (plus a batch of 2), at most 2 kept mapped.
    monkeypatch.setattr(store.MappedRows, "WINDOW_BYTES", 3 * 8 * 6 * 3)
    monkeypatch.setattr(store.MappedRows, "KEEP", 2)
    images = rng.integers(0, 256, (10, 8, 6, 3), dtype=np.uint8)
    path = _raw_file(tmp_path / "m.hdf5", images, userblock=userblock, **create)
    with h5py.File(path, "r") as f:
        reader = store.RowReader.for_dataset(f["images"])
        with store.RowReader.open(f["images"]) as handle:
            mapped = reader.map(handle, (8, 6, 3), 2)
            assert mapped is not None
            for start in range(10):
                got = mapped.rows_of(start, min(start + 2, 10))
                assert not got.flags.writeable
                np.testing.assert_array_equal(got, images[start:start + 2])
                assert len(mapped._windows) <= 2
            with pytest.raises(ValueError, match="not a batch"):
                mapped.rows_of(0, 3)
            with pytest.raises(ValueError, match="read-only"):
                mapped.rows_of(0, 1)[0, 0, 0, 0] = 1


def test_mapped_rows_in_runs_give_batches_within_a_run_and_none_across_two(tmp_path, rng,
                                                                           monkeypatch):
    # Rows laid out by hand, in chunks of 2 rows: chunks 0-2 back to back, a gap (an index
    # node), chunks 3-4 back to back, then chunk 5 after another gap, its last row missing.
    monkeypatch.setattr(store.MappedRows, "WINDOW_BYTES", 2 * 4 * 4 * 3)  # windows of 2 rows
    monkeypatch.setattr(store.MappedRows, "KEEP", 2)
    images = rng.integers(0, 256, (11, 4, 4, 3), dtype=np.uint8)
    row = images[0].nbytes
    offsets = np.array([100, 100 + 2 * row, 100 + 4 * row, 5000, 5000 + 2 * row, 9001])
    data = bytearray(9001 + row)
    for r in range(11):
        at = offsets[r // 2] + (r % 2) * row
        data[at:at + row] = images[r].tobytes()
    path = tmp_path / "runs.bin"
    path.write_bytes(bytes(data))
    reader = store.RowReader(offsets, 2, row, 11)
    assert reader.runs() == [(0, 6, 100), (6, 4, 5000), (10, 1, 9001)]
    with store.Descriptor(os.open(path, os.O_RDONLY)) as handle:
        # Rows read one by one (shuffle="full"): consecutive rows on either side of a gap
        # are two reads, not one run of bytes.
        for rows in ([5, 6], [4, 5, 6, 7], [9, 10], [10, 9, 6, 5], list(range(11))):
            out = np.zeros((len(rows), 4, 4, 3), np.uint8)
            reader.read_rows(handle.fileno(), rows, out)
            np.testing.assert_array_equal(out, images[rows])
        mapped = reader.map(handle, (4, 4, 3), 3)
        assert mapped is not None
        for start in range(11):
            stop = min(start + 3, 11)
            got = mapped.rows_of(start, stop)
            if start < 6 <= stop - 1 or start < 10 <= stop - 1:  # across two runs
                assert got is None
            else:
                assert not got.flags.writeable
                np.testing.assert_array_equal(got, images[start:stop])
            assert len(mapped._windows) <= 2
        np.testing.assert_array_equal(mapped.rows_of(10, 11), images[10:11])
        assert reader.map(handle, (4, 4, 3), 7) is None  # no run holds a batch of 7
        assert reader.map(handle, (4, 4, 3), 6) is not None
        # A file cut short of a run's end is not mapped.
        short = tmp_path / "short.bin"
        short.write_bytes(bytes(data[:9001]))
        with store.Descriptor(os.open(short, os.O_RDONLY)) as cut:
            assert reader.map(cut, (4, 4, 3), 3) is None


def test_row_reader_maps_only_runs_of_rows_that_lie_back_to_back(tmp_path, rng):
    images = rng.integers(0, 256, (10, 8, 6, 3), dtype=np.uint8)
    # Chunks written last-first lie in the file in the other order: not one range of rows.
    shuffled = tmp_path / "b.hdf5"
    with h5py.File(shuffled, "w") as f:
        ds = f.create_dataset("images", shape=images.shape, dtype=np.uint8, chunks=(4, 8, 6, 3))
        for lo in (8, 4, 0):
            ds[lo:lo + 4] = images[lo:lo + 4]
    with h5py.File(shuffled, "r") as f:
        reader = store.RowReader.for_dataset(f["images"])
        with store.RowReader.open(f["images"]) as handle:
            assert reader.runs() == [(0, 4, reader.offsets[0]), (4, 4, reader.offsets[1]),
                                     (8, 2, reader.offsets[2])]
            assert reader.map(handle, (8, 6, 3), 5) is None  # no run of chunks holds 5 rows
            mapped = reader.map(handle, (8, 6, 3), 4)  # each chunk its own run
            np.testing.assert_array_equal(mapped.rows_of(4, 8), images[4:8])
            assert mapped.rows_of(2, 6) is None
            got = np.empty_like(images)
            reader.read(handle.fileno(), 0, 10, got)  # reads still work
            np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("create", [
    {"chunks": (4, 8, 6, 3), "compression": "lzf"},
    {"chunks": (4, 8, 6, 3), "shuffle": True},
    {"chunks": (4, 4, 6, 3)},  # a chunk holds half rows
])
def test_row_reader_declines_layouts_that_are_not_plain_rows(tmp_path, rng, create):
    images, _ = _arrays(rng)
    assert _reader(_raw_file(tmp_path / "r.h5", images, **create)) is None


def test_row_reader_reads_a_one_row_file(tmp_path, rng):
    images, _ = _arrays(rng, n=1)
    path = _raw_file(tmp_path / "r.h5", images, chunks=(4, 8, 6, 3), maxshape=(None, 8, 6, 3))
    out = np.zeros_like(images)
    with _raw(path) as (reader, fd):
        reader.read(fd, 0, 1, out)
    np.testing.assert_array_equal(out, images)


def test_row_reader_declines_unwritten_chunks(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("images", shape=(8, 2, 2, 3), dtype=np.uint8, chunks=(2, 2, 2, 3))
        ds[:2] = 1  # chunks 1-3 never written
    assert _reader(path) is None


def test_row_reader_finishes_short_reads(tmp_path, rng, monkeypatch):
    import os

    images, _ = _arrays(rng)
    path = _raw_file(tmp_path / "r.h5", images, chunks=(5, 8, 6, 3))
    real = os.preadv
    calls = []

    def short(fd, buffers, offset):
        # Hand back at most 100 bytes a call, as a signal or a network file system may.
        calls.append(offset)
        first = buffers[0][:100]
        return real(fd, [first], offset)

    out = np.zeros((4, 8, 6, 3), np.uint8)
    with _raw(path) as (reader, fd):
        monkeypatch.setattr(os, "preadv", short)
        reader.read_rows(fd, [6, 1, 2, 7], out)
        monkeypatch.setattr(os, "preadv", real)
    np.testing.assert_array_equal(out, images[[6, 1, 2, 7]])
    assert len(calls) > 4 * 8 * 6 * 3 // 100


# -- direct (O_DIRECT) chunk writes --------------------------------------------------------------


def _direct_writer(tmp_path, capacity=40, chunk=8, size=(32, 32)):
    return store.HDF5Writer(tmp_path / "d.hdf5", capacity, size, ["a", "b"], chunk_images=chunk,
                            direct=True)


def test_direct_writer_writes_whole_chunks_around_the_page_cache(tmp_path, rng):
    images = rng.integers(0, 256, (29, 32, 32, 3), dtype=np.uint8)
    writer = _direct_writer(tmp_path)
    assert writer._direct is not None  # ext4/xfs under the test's tmp folder take O_DIRECT
    aligned = store.page_aligned_empty((16, 32, 32, 3))
    aligned[:] = images[:16]
    writer.append(aligned, [0] * 16, ["x"] * 16)  # two whole chunks, page-aligned: direct
    assert writer._direct.proven
    writer.append(images[16:21], [1] * 5, ["y"] * 5)  # a partial chunk: through h5py
    writer.append(images[21:29], [0] * 8, ["z"] * 8)  # starts mid-chunk: through h5py
    path = writer.close(mean_rgb=np.zeros(3))
    with h5py.File(path, "r") as f:
        # Fewer rows than the capacity (as when images are skipped): trimmed, all in place.
        assert f["images"].shape == (29, 32, 32, 3)
        np.testing.assert_array_equal(f["images"][()], images)
        np.testing.assert_array_equal(f["labels"][()], [0] * 16 + [1] * 5 + [0] * 8)


def test_direct_writer_falls_back_where_o_direct_is_refused(tmp_path, rng, monkeypatch):
    import errno
    import os

    images = store.page_aligned_empty((16, 32, 32, 3))
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    real_pwrite = os.pwrite

    def refuse(fd, data, offset):  # a file system that accepts the flag but not the writes
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "pwrite", refuse)
    writer = _direct_writer(tmp_path)
    writer.append(images, [0] * 16, ["x"] * 16)
    assert writer._direct is None or not writer._direct.proven
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    path = writer.close(mean_rgb=np.zeros(3))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["images"][()], images)


def test_direct_writer_only_for_uncompressed_files(tmp_path):
    writer = store.HDF5Writer(tmp_path / "c.hdf5", 16, (32, 32), ["a"], chunk_images=8,
                              compression="lzf", direct=True)
    assert writer._direct is None
    writer.abort()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                    reason="counts open descriptors through /proc/self/fd (Linux)")
def test_generators_dropped_without_close_leave_no_descriptor(tmp_path, rng):
    import gc

    from dsprep.generators import HDF5Generator

    images, labels = _arrays(rng, n=12)
    path = store.write_arrays(tmp_path / "g.hdf5", images, labels, ["a", "b", "c"])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        gen = HDF5Generator(path, batch_size=4, output="uint8")
        np.testing.assert_array_equal(gen[0][0], images[gen.batch_rows(0)])
        assert gen._raw is not None  # the plain-row reader was used
        del gen
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_chunk_offsets_without_chunk_iter_stop_at_many_chunks(tmp_path, monkeypatch):
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((12, 2, 2, 3), np.uint8), chunks=(1, 2, 2, 3))
    with h5py.File(path, "r") as f:
        ds = f["images"]
        assert store.chunk_offsets(ds) is not None

        class NoIter:  # an h5py built on HDF5 without H5Dchunk_iter
            def __init__(self, dsid):
                self._id = dsid

            def __getattr__(self, name):
                if name == "chunk_iter":
                    raise AttributeError(name)
                return getattr(self._id, name)

        class Wrapped:
            chunks, shape = ds.chunks, ds.shape
            id = NoIter(ds.id)

        offsets = store.chunk_offsets(Wrapped())
        # HDF5's own answer, chunk by chunk in row order.
        np.testing.assert_array_equal(
            offsets, [ds.id.get_chunk_info_by_coord((i, 0, 0, 0)).byte_offset for i in range(12)])
        monkeypatch.setattr(store, "_CHUNK_INFO_LIMIT", 10)
        assert store.chunk_offsets(Wrapped()) is None  # 12 lookups would each scan the index


_FULL = ("file write failed: time = now, filename = 'x', file descriptor = 4, errno = 28, "
         "error message = 'No space left on device'")


@pytest.mark.parametrize("where", ["create", "close"])
def test_write_failures_name_the_file_and_leave_nothing(tmp_path, monkeypatch, where):
    import errno

    path = tmp_path / "train.hdf5"
    real_file, real_close = h5py.File, h5py.File.close
    failed = []

    def create(*args, **kwargs):
        raise OSError(errno.ENOSPC, f"Unable to synchronously create file ({_FULL})")

    def close(self):
        if not failed:  # the close in finish fails (a superblock rewrite on a full disk)
            failed.append(True)
            raise RuntimeError(f"Can't decrement id ref count ({_FULL})")
        return real_close(self)

    if where == "create":
        monkeypatch.setattr(store.h5py, "File", create)
    else:
        monkeypatch.setattr(real_file, "close", close)
    with pytest.raises(OSError) as info:
        with store.HDF5Writer(path, 4, (8, 8), ["a", "b"]) as writer:
            writer.append(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1], list("wxyz"))
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith(
        "train.hdf5.partial")
    assert list(tmp_path.iterdir()) == []


def test_a_whole_file_map_is_refused_when_any_chunk_lies_past_the_end(tmp_path):
    # The chunks need not lie in row order: the first row's chunk may be the one past the end
    # of a file that shrank.
    path = tmp_path / "f.bin"
    content = np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8)  # rows differ
    path.write_bytes(content.tobytes())
    handle = store.Descriptor(os.open(path, os.O_RDONLY))
    try:
        out_of_order = store.RowReader(np.array([8192, 0, 4096]), 1, 4096, 3)
        assert out_of_order.map_file(handle, (4096,)) is None
        in_order = store.RowReader(np.array([4096, 0]), 1, 4096, 2)
        mapped = in_order.map_file(handle, (4096,))
        assert mapped is not None
        np.testing.assert_array_equal(mapped.row(0), content[4096:])
        np.testing.assert_array_equal(mapped.row(1), content[:4096])
    finally:
        handle.close()



def test_files_without_label_names_are_numbered_within_reason(tmp_path):
    path = tmp_path / "plain.hdf5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((2, 4, 4, 3), np.uint8)
        f["labels"] = np.array([0, 2])
    with h5py.File(path, "r") as f:
        assert store.label_names(f) == ["0", "1", "2"]
    with h5py.File(path, "r+") as f:
        f["labels"][1] = 2**31 - 1  # not a class id: numbering it would take gigabytes
    with h5py.File(path, "r") as f, pytest.raises(DatasetFormatError, match="too many classes"):
        store.label_names(f)


def test_attribute_names_that_are_not_utf8_are_read_as_text(tmp_path):
    path = tmp_path / "f.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs.create(b"note\xff", 1)
        f.attrs["split"] = "train"
    with h5py.File(path, "r") as f:
        found = store.attributes(f)
    assert found["split"] == "train" and found["note\ufffd"] == 1
    assert sorted(found) == ["note\ufffd", "split"]


def test_a_file_held_open_for_writing_is_said_so_not_called_unreadable(tmp_path):
    # HDFView or h5py's "r+" in another process: the file is whole, a rebuild is no answer.
    import subprocess
    import sys

    images = np.zeros((2, 4, 4, 3), np.uint8)
    path = store.write_arrays(tmp_path / "held.hdf5", images, np.array([0, 1]), ["a", "b"])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'r+'); "
         "print('open', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DatasetFormatError, match="held open for writing by another "
                           "process") as info:
            store.open_dataset(path)
        assert "build it with" not in str(info.value)
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
    with store.open_dataset(path) as db:  # the writer closed: read as ever
        assert db["images"].shape == (2, 4, 4, 3)


@pytest.mark.parametrize("images, labels, names, match", [
    # Floats in 0..1 were stored as all-black uint8, ints above 255 wrapped: verify said ok.
    (np.random.default_rng(0).random((4, 8, 8, 3)), [0, 1, 0, 1], ["a", "b"],
     r"images must be uint8 pixels 0..255; got float64 from 0\.0\d* to 0\.9\d*"),
    (np.full((4, 8, 8, 3), 300), [0, 1, 0, 1], ["a", "b"], "got int64 from 300 to 300"),
    (np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1], ["a", "b"], r"shape \(4, 8, 8\)"),
    (np.zeros((4, 8, 8, 4), np.uint8), [0, 1, 0, 1], ["a", "b"], r"RGBA drops its alpha"),
    # Labels and names verify refuses were written and renamed into place.
    (np.zeros((4, 8, 8, 3), np.uint8), [0, 5, 0, 1], ["a", "b"], "class ids 0..1"),
    (np.zeros((4, 8, 8, 3), np.uint8), [0, -1, 0, 1], ["a", "b"], "class ids 0..1"),
    (np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1], ["a", "a"], "none empty or repeated"),
    (np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1], [], "one or more names"),
    # Names given for ids, and a missing id, said so (numpy's and sort's own errors before).
    (np.zeros((2, 8, 8, 3), np.uint8), ["cat", "dog"], ["cat", "dog"],
     r"class ids 0..1 \(indices into label_names, not the names\); got <U3 values such as "
     r"np.str_\('cat'\)"),
    (np.zeros((2, 8, 8, 3), np.uint8), [0, None], ["a", "b"], "got object values such as 0"),
])
def test_arrays_that_are_not_a_dsprep_file_are_refused_before_any_is_written(tmp_path, images,
                                                                            labels, names,
                                                                            match):
    path = tmp_path / "f.hdf5"
    with pytest.raises(UsageError, match=match):
        store.write_arrays(path, images, labels, names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("filenames, row", [
    (["", "", ""], 0), (["a/1.jpg", "/abs/2.jpg", "b/3.jpg"], 1), (["a", "../b", "c"], 1),
    ([1, 2, 3], 0), ([b"a/1.jpg", b"a/caf\xe9.jpg", b"b/3.jpg"], 1)])
def test_file_names_verify_refuses_are_refused_before_any_is_written(tmp_path, filenames, row):
    # Written, then refused by verify with advice to rebuild with build-hdf5; integers failed
    # in h5py's words.
    images = np.zeros((3, 4, 4, 3), np.uint8)
    with pytest.raises(UsageError, match=rf"file names are paths relative .*; row {row}'s is"):
        store.write_arrays(tmp_path / "f.hdf5", images, [0, 1, 0], ["a", "b"],
                           filenames=filenames)
    assert list(tmp_path.iterdir()) == []
    good = store.write_arrays(tmp_path / "f.hdf5", images, [0, 1, 0], ["a", "b"],
                              filenames=["a/1.jpg", "b/2.jpg", "a/3.jpg"])
    assert store.check_file(good) == []
    # Names read back from a dsprep file come as bytes: a file's rows copy into another.
    with h5py.File(good, "r") as db:
        names = db["filenames"][()]
    copy = store.write_arrays(tmp_path / "copy.hdf5", images, [0, 1, 0], ["a", "b"],
                              filenames=names)
    assert store.check_file(copy) == []
    with store.open_dataset(copy) as db:
        assert store.file_names(db) == ["a/1.jpg", "b/2.jpg", "a/3.jpg"]
    # Rows in (label, name) order are "sorted" whether their names come as text or bytes.
    names = ["a/x", "a/x y", "a/é"]
    for given in (names, [n.encode() for n in names]):
        path = store.write_arrays(tmp_path / "o.hdf5", images, [0, 0, 0], ["a", "b"],
                                  filenames=given, overwrite=True)
        with store.open_dataset(path) as db:
            assert db.attrs["order"] == "sorted"


def test_write_arrays_says_sorted_only_of_rows_in_sorted_order(tmp_path):
    # It said "sorted" of any rows: formats.md's sorted is by (label id, source path).
    images = np.zeros((4, 2, 2, 3), np.uint8)
    for labels, names, order in (([0, 0, 1, 1], ["a", "b", "a", "b"], "sorted"),
                                 ([1, 0, 1, 0], ["a", "b", "c", "d"], "shuffled"),
                                 ([0, 0, 1, 1], ["b", "a", "c", "d"], "shuffled")):
        path = store.write_arrays(tmp_path / f"{order}{labels}{names}.hdf5", images, labels,
                                  ["x", "y"], filenames=names)
        with h5py.File(path) as db:
            assert db.attrs["order"] == order, (labels, names)
    # Rows named for want of names (row0 ... row11) are in order by their numbers.
    path = store.write_arrays(tmp_path / "unnamed.hdf5", np.zeros((12, 2, 2, 3), np.uint8),
                              [0] * 6 + [1] * 6, ["x", "y"])
    with h5py.File(path) as db:
        assert db.attrs["order"] == "sorted"


def test_labels_and_names_in_any_sequence_are_taken(tmp_path):
    # Names given as an iterator were read by the check and written empty; file names from a
    # generator were used up before they were written; names read from another file (bytes)
    # were stored as "b'a'".
    path = store.write_arrays(tmp_path / "f.hdf5", np.zeros((2, 4, 4, 3), np.uint8),
                              np.array([0, 1], dtype=object), map(str, ["a", "b"]),
                              filenames=(f"x{i}.jpg" for i in range(2)))
    with h5py.File(path) as db:
        assert store.label_names(db) == ["a", "b"]
        assert db["labels"][()].tolist() == [0, 1]
        assert [n.decode() for n in db["filenames"][()]] == ["x0.jpg", "x1.jpg"]
    path = store.write_arrays(tmp_path / "g.hdf5", np.zeros((2, 4, 4, 3), np.uint8), [0, 1],
                              [b"a", b"b"])
    with h5py.File(path) as db:
        assert store.label_names(db) == ["a", "b"]


def test_whole_numbers_within_a_byte_are_taken_as_pixels(tmp_path):
    images = np.arange(4 * 2 * 2 * 3, dtype=np.int64).reshape(4, 2, 2, 3)
    path = store.write_arrays(tmp_path / "f.hdf5", images, np.array([0, 1, 0, 1]), ["a", "b"])
    with h5py.File(path) as db:
        assert db["images"].dtype == np.uint8
        np.testing.assert_array_equal(db["images"][()], images)
    with store.HDF5Writer(tmp_path / "g.hdf5", 2, (2, 2), ["a", "b"]) as writer:
        with pytest.raises(UsageError, match=r"images must be \(n, 2, 2, 3\) RGB rows"):
            writer.append(np.zeros((2, 3, 3, 3), np.uint8), [0, 1], ["x", "y"])
        writer.append(images[:2], [0, 1], ["x", "y"])


def test_a_keras_model_or_a_zip_given_for_a_file_is_named_as_such(tmp_path):
    # dsprep info runs/a/best.keras said "build it with 'dsprep build-hdf5'".
    import zipfile

    for name, said in (("best.keras", "is a Keras model: 'dsprep evaluate RUN DATA' scores"),
                       ("arrays.npz", "is a numpy archive: dsprep.store.write_arrays"),
                       ("dump.zip", "is a zip archive: 'dsprep split' reads a dump's")):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("config.json", "{}")
        with pytest.raises(DatasetFormatError, match=said):
            store.open_dataset(tmp_path / name)


def test_write_arrays_refuses_an_existing_file_unless_overwrite(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    path = store.write_arrays(tmp_path / "f.hdf5", images, [0, 1], ["a", "b"])
    with pytest.raises(DestinationExistsError, match="overwrite=True"):
        store.write_arrays(path, images + 7, [1, 0], ["a", "b"])
    store.write_arrays(path, images + 7, [1, 0], ["a", "b"], overwrite=True)
    with store.open_dataset(path) as db:
        assert db["labels"][()].tolist() == [1, 0] and int(db["images"][0, 0, 0, 0]) == 7
