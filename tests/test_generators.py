"""HDF5Generator and DirectoryGenerator: batch contents, shuffling, randomness, bad input."""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from helpers import area_reference, make_class_folders, smooth_image, write_image
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dsprep import images, store
from dsprep.errors import CorruptImageError, DatasetFormatError, LayoutError, UsageError
from dsprep.generators import DirectoryGenerator, HDF5Generator

NAMES = ["ant", "bee", "cow"]


# -- tiny batch operations that follow the preprocess contract (op(batch, rng), output_shape) --


class Patch:
    """A random (h, w) crop per image, returned as views when every crop is the same."""

    def __init__(self, height, width):
        self.height, self.width = height, width

    def output_shape(self, shape):
        if self.height > shape[0] or self.width > shape[1]:
            raise UsageError(f"patch {self.height}x{self.width} is larger than {shape}")
        return (self.height, self.width, shape[2])

    def __call__(self, batch, rng):
        tops = rng.integers(0, batch.shape[1] - self.height + 1, len(batch))
        lefts = rng.integers(0, batch.shape[2] - self.width + 1, len(batch))
        out = np.empty((len(batch), self.height, self.width, batch.shape[3]), batch.dtype)
        for i, (t, left) in enumerate(zip(tops, lefts, strict=True)):
            out[i] = batch[i, t:t + self.height, left:left + self.width]
        return out


class CornerView:
    """The top-left (h, w) corner as a view of the input (no copy)."""

    def __init__(self, height, width):
        self.height, self.width = height, width

    def output_shape(self, shape):
        return (self.height, self.width, shape[2])

    def __call__(self, batch, rng):
        return batch[:, :self.height, :self.width]


class Scale:
    """x * factor in float32."""

    def __init__(self, factor):
        self.factor = factor

    def output_shape(self, shape):
        return shape

    def __call__(self, batch, rng):
        return batch.astype(np.float32) * self.factor


class AddOne:
    def output_shape(self, shape):
        return shape

    def __call__(self, batch, rng):
        return batch + np.float32(1)


class Noise:
    """Adds uniform noise drawn from the batch's generator (float32)."""

    def output_shape(self, shape):
        return shape

    def __call__(self, batch, rng):
        return batch.astype(np.float32) + rng.random(batch.shape, dtype=np.float32)


# -- data --------------------------------------------------------------------------------------


def tagged_images(n, height=6, width=7, seed=0):
    """Random images whose first two pixels' red values spell the row number."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    imgs[:, 0, 0, 0] = np.arange(n) % 256
    imgs[:, 0, 1, 0] = np.arange(n) // 256
    return imgs


def rows_of(x):
    x = np.asarray(x)
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 1, 0].astype(int)


@pytest.fixture
def h5file(tmp_path):
    imgs = tagged_images(37)
    labels = (np.arange(37) * 7) % 3
    path = store.write_arrays(tmp_path / "train.hdf5", imgs, labels, NAMES)
    return path, imgs, labels


def epoch_rows(gen):
    return [rows_of(x) for x, _ in gen]


# -- construction errors -----------------------------------------------------------------------


def test_missing_file_is_a_layout_error(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        HDF5Generator(tmp_path / "nope.hdf5")


def test_text_file_is_a_format_error(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("not hdf5 at all\n")
    with pytest.raises(DatasetFormatError, match="not a readable HDF5"):
        HDF5Generator(path)


def test_foreign_hdf5_is_a_format_error(tmp_path):
    path = tmp_path / "other.hdf5"
    with h5py.File(path, "w") as f:
        f["features"] = np.zeros((4, 10))
    with pytest.raises(DatasetFormatError, match="not a dsprep HDF5 file"):
        HDF5Generator(path)


def test_a_path_in_bytes_is_read_as_the_file_system_names_it(h5file, class_dump):
    import os

    path = h5file[0]
    gen = HDF5Generator(os.fsencode(path), batch_size=8, shuffle="none")  # was a TypeError
    assert gen.path == path
    np.testing.assert_array_equal(gen[0][0], HDF5Generator(path, batch_size=8,
                                                           shuffle="none")[0][0])
    folders = DirectoryGenerator(os.fsencode(class_dump), image_size=8, batch_size=4, seed=0)
    assert folders.root == class_dump and len(folders) == 5  # 18 images


def _flip_rows(batch, rng):
    return batch[:, ::-1]


def test_a_generator_with_a_lambda_op_says_why_it_cannot_go_to_a_worker(h5file, tmp_path):
    # A spawned worker (the default on macOS and Windows) gets the generator pickled: pickle's
    # own error named neither the generator nor the op, nor what to write instead.
    import functools

    path = h5file[0]
    for gen in (HDF5Generator(path, preprocessors=[lambda batch, rng: batch[:, ::-1]]),
                DirectoryGenerator(make_class_folders(tmp_path / "d", ("a", "b"), per_class=1),
                                   image_size=(8, 8), augment=lambda batch, rng: batch)):
        with pytest.raises(pickle.PicklingError, match=f"{type(gen).__name__} cannot go to "
                                                       "another process: its op <function .*"
                                                       "lambda.* define it with def at a "
                                                       "module's top level"):
            pickle.dumps(gen)
        # A copy in this process is no pickle: the lambda goes along by reference.
        for copied in (copy.copy(gen), copy.deepcopy(gen)):
            assert type(copied) is type(gen) and len(copied) == len(gen)
            np.testing.assert_array_equal(copied[0][0], gen[0][0])

    class Locked(HDF5Generator):  # a subclass that leaves its lock out of its state
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lock = threading.Lock()

        def __getstate__(self):
            return {k: v for k, v in super().__getstate__().items() if k != "lock"}

        def __setstate__(self, state):
            super().__setstate__(state)
            self.lock = threading.Lock()

    locked = Locked(path, batch_size=8, shuffle="none")
    for copied in (copy.copy(locked), copy.deepcopy(locked)):
        assert copied.lock is not locked.lock
        np.testing.assert_array_equal(copied[0][0], locked[0][0])
    for op in (_flip_rows, functools.partial(_flip_rows)):
        gen = HDF5Generator(path, batch_size=8, shuffle="none", preprocessors=[op])
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(gen))[0][0], gen[0][0])


def _write(path, imgs, labels, compression):
    attrs = {"split": "train", "resize": "crop", "interpolation": "area", "order": "sorted",
             "seed": 0, "skipped": 0, "mean_rgb": imgs.reshape(-1, 3).mean(axis=0)}
    with store.HDF5Writer(path, len(imgs), imgs.shape[1:3], NAMES, compression=compression,
                          attrs=attrs, chunk_images=8) as writer:
        writer.append(imgs, labels, [f"row{i}" for i in range(len(imgs))])
    return path


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("shuffle", ["batches", "full"])
def test_a_file_written_over_in_place_is_refused_at_the_next_batch(tmp_path, compression,
                                                                   shuffle):
    # cp over an open file keeps its inode: the maps then read the new rows, and the batches
    # paired them with the labels held since the generator was made, without a word.
    from dsprep.preprocess import RandomPatch

    imgs, labels = tagged_images(40), (np.arange(40) * 7) % 3
    path = _write(tmp_path / "train.hdf5", imgs, labels, compression)
    # Same rows and labels, other pixels (another interpolation, say): the labels alone would
    # not tell it, and HDF5 answers a second open of the file with the first one's cache.
    other = imgs.copy()
    other[:, 1:] //= 2
    other = _write(tmp_path / "other.hdf5", other, labels, compression)
    gen = HDF5Generator(path, batch_size=8, shuffle=shuffle, seed=3,
                        preprocessors=[RandomPatch(4, 4)])
    assert gen[0][0].shape == (8, 4, 4, 3)
    time.sleep(0.01)  # a modification time of its own
    shutil.copyfile(other, path)
    with pytest.raises(DatasetFormatError, match="was written over in place while this "
                                                 "generator read it"):
        gen[1]
    # Replaced by a rename, as build-hdf5 replaces a file: the open file reads on.
    renamed = HDF5Generator(path, batch_size=8, shuffle=shuffle, seed=3)
    first = renamed[0]
    _write(tmp_path / "new.hdf5", imgs, labels, compression).replace(path)
    np.testing.assert_array_equal(renamed[0][0], first[0])


def test_threads_reading_a_file_written_over_all_get_the_same_error(tmp_path):
    # The first to notice closes the file: the others, a batch in flight, failed in h5py's or
    # Python's words ("'NoneType' object has no attribute 'id'").
    import os

    imgs, labels = tagged_images(64, 16, 16), np.arange(64) % 3
    path = _write(tmp_path / "train.hdf5", imgs, labels, "none")
    gen = HDF5Generator(path, batch_size=4, shuffle="full", seed=1, output="uint8")
    gen[0]
    errors, go = [], threading.Event()

    def read():
        go.wait()
        deadline = time.monotonic() + 10
        i = 0
        while time.monotonic() < deadline:
            try:
                gen[i % len(gen)]
            except Exception as exc:  # noqa: BLE001 - what each thread met is the point
                errors.append(exc)
                return
            i += 1

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.05)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    for t in threads:
        t.join(20)
    assert len(errors) == 4
    assert all(isinstance(e, DatasetFormatError) and "written over in place" in str(e)
               for e in errors), [repr(e) for e in errors]
    gen.close()  # closed by hand: read on (the same build)
    np.testing.assert_array_equal(gen[0][0], HDF5Generator(
        path, batch_size=4, shuffle="full", seed=1, output="uint8")[0][0])


def test_a_batch_read_while_the_file_was_written_over_is_refused_too(tmp_path):
    # Only batches that failed, or began later, said so: one whose read had ended could be
    # returned with rows of both files.
    import os

    imgs, labels = tagged_images(32, 8, 8), np.arange(32) % 3
    path = _write(tmp_path / "train.hdf5", imgs, labels, "none")
    reading, written = threading.Event(), threading.Event()

    def hold(batch, rng):
        if threading.current_thread().name == "reader":
            reading.set()
            written.wait(10)
        return batch

    gen = HDF5Generator(path, batch_size=4, shuffle="batches", seed=1, output="uint8",
                        augment=hold)
    gen[0]
    got = []

    def read():
        try:
            got.append(gen[1])
        except DatasetFormatError as exc:
            got.append(exc)

    thread = threading.Thread(target=read, name="reader")
    thread.start()
    assert reading.wait(10)  # its rows are read: the op holds it
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DatasetFormatError, match="written over in place"):
        gen[2]
    written.set()
    thread.join(10)
    assert isinstance(got[0], DatasetFormatError), got
    with pytest.raises(IndexError):  # still its own error
        gen[99]


def test_a_file_built_again_in_its_place_is_refused_when_reopened(tmp_path, h5file):
    path, imgs, labels = h5file
    gen = HDF5Generator(path, batch_size=8, shuffle="none", output="uint8")
    gen[0]
    copy = pickle.loads(pickle.dumps(gen))  # a worker process's copy opens the file anew
    # The same images, the labels in another order (another build's shuffle).
    store.write_arrays(tmp_path / "new.hdf5", imgs, labels[::-1].copy(), NAMES)
    (tmp_path / "new.hdf5").replace(path)
    np.testing.assert_array_equal(gen[1][1], labels[8:16])  # the open handle reads the old file
    for reopened in (gen, copy):
        reopened.close()
        with pytest.raises(DatasetFormatError, match="changed since this generator was made "
                                                     r"\(its labels differ"):
            reopened[0]
    # The same rows, shape and labels, other pixels (another --resize of the same sources).
    other = tagged_images(37, seed=9)
    other[:, 0, :2, 0] = imgs[:, 0, :2, 0]
    store.write_arrays(tmp_path / "new.hdf5", other, labels, NAMES)
    (tmp_path / "new.hdf5").replace(path)
    copy.close()
    with pytest.raises(DatasetFormatError, match=r"\(its pixels differ"):
        copy[0]
    store.write_arrays(tmp_path / "new.hdf5", tagged_images(37, 8, 7), labels, NAMES)
    (tmp_path / "new.hdf5").replace(path)
    with pytest.raises(DatasetFormatError, match=r"holds 37 images of \(8, 7, 3\), not 37 of "
                                                 r"\(6, 7, 3\)"):
        copy[0]
    path.unlink()
    with pytest.raises(LayoutError, match="does not exist"):
        copy[0]
    # The same file again (a rebuild giving the same rows) reads as before.
    store.write_arrays(path, imgs, labels, NAMES)
    np.testing.assert_array_equal(copy[0][1], labels[:8])


def test_a_file_whose_means_are_nan_reads_as_unchanged(tmp_path):
    path = store.write_arrays(tmp_path / "nan.hdf5", tagged_images(4), np.array([0, 1, 0, 1]),
                              NAMES, mean_rgb=[float("nan")] * 3)
    x, y = HDF5Generator(path, batch_size=2, shuffle="none", output="uint8")[0]
    assert rows_of(x).tolist() == [0, 1] and y.tolist() == [0, 1]


def test_set_epoch_takes_whole_numbers_only(h5file):
    gen = HDF5Generator(h5file[0], batch_size=8, seed=1)
    for bad in (1.5, "2", -1, True):
        with pytest.raises(UsageError, match="epoch must be a whole number, 0 or more"):
            gen.set_epoch(bad)
    assert gen.epoch == 0 and gen.epoch_sets == 0
    gen.set_epoch(np.int64(2))
    assert gen.epoch == 2 and type(gen.epoch) is int


def test_patch_larger_than_image_fails_at_construction(h5file):
    with pytest.raises(UsageError, match="larger"):
        HDF5Generator(h5file[0], preprocessors=[Patch(7, 7)])


def test_a_patch_after_an_op_that_resizes_is_checked_against_the_new_size(h5file):
    # A user's op of unknown output shape (here twice the size) then a patch larger than the
    # stored 6x7 images: the shape check took the stored size and refused a pipeline that runs.
    from dsprep.preprocess import RandomPatch

    def upscale(batch, rng):
        return batch.repeat(2, axis=1).repeat(2, axis=2)

    for kwargs in ({"preprocessors": [upscale, RandomPatch(10, 12)]},
                   {"augment": upscale, "preprocessors": [RandomPatch(10, 12)]}):
        gen = HDF5Generator(h5file[0], batch_size=4, **kwargs)
        assert gen.sample_shape == (10, 12, 3) and gen[0][0].shape == (4, 10, 12, 3)
    # Past the new size it is refused at construction still, by the probe batch.
    with pytest.raises(UsageError, match="larger"):
        HDF5Generator(h5file[0], preprocessors=[upscale, RandomPatch(13, 12)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shuffle": "rows"}, "shuffle"),
        ({"output": "float16"}, "output"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": 64, "drop_last": True}, "larger than the 37 rows"),
        ({"preprocessors": [42]}, "not callable"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.7}, "seed"),
        ({"preprocessors": [Patch]}, "is a class; pass an instance"),
        ({"seed": "3"}, "seed"),
        ({"seed": True}, "seed"),
        ({"batch_size": np.array([4])}, "batch_size"),
        ({"augment": "flip"}, "augment must be an operation"),
        ({"drop_last": "no"}, "drop_last must be True, False or \"auto\""),
        ({"one_hot": "false"}, "one_hot must be True or False"),
        ({"shuffle": True}, "shuffle True is not one of"),
        ({"shuffle": np.True_}, "shuffle np.True_ is not one of"),
        # An op of another signature is named at construction, with how ops are called.
        ({"augment": lambda batch: batch}, r"<lambda>\(\) takes 1 positional .* op\(batch, rng\)"),
        ({"preprocessors": [lambda batch: batch]}, r"called as op\(batch, rng\)"),
        # An op that edits in place and returns nothing, or returns a list.
        ({"augment": lambda batch, rng: None}, r"returned NoneType, not a numpy batch"),
        ({"preprocessors": [lambda batch, rng: list(batch)]}, r"returned list, not a numpy"),
        # One that adds images (mirrors appended): x and y would no longer pair up.
        ({"augment": lambda batch, rng: np.concatenate([batch, batch[:, :, ::-1]])},
         r"turned a batch of 1 images into 2; augment and each preprocessor keep one image "
         r"for each label"),
    ],
)
def test_bad_arguments_are_usage_errors(h5file, kwargs, match):
    with pytest.raises(UsageError, match=match):
        HDF5Generator(h5file[0], **kwargs)


def test_zero_dimensional_arrays_serve_as_seed_and_batch_size(h5file):
    # What np.int64 or a config library's 0-d array gives: the same as the plain int.
    gen = HDF5Generator(h5file[0], batch_size=np.array(4), seed=np.array(3))
    plain = HDF5Generator(h5file[0], batch_size=4, seed=3)
    assert (gen.batch_size, gen.seed) == (4, 3) and type(gen.batch_size) is int
    np.testing.assert_array_equal(gen[1][0], plain[1][0])


def test_an_op_failing_inside_keeps_its_own_error(h5file):
    def buggy(batch, rng):
        return batch + "1"  # numpy's TypeError, raised inside the op

    with pytest.raises(TypeError) as raised:
        HDF5Generator(h5file[0], augment=buggy)
    assert not isinstance(raised.value, UsageError) and "op(batch, rng)" not in str(raised.value)

    # A decorated function of the batch alone still gets the hint (its error is a frame deep).
    import functools

    def one(batch):
        return batch

    @functools.wraps(one)
    def logged(*args):
        return one(*args)

    with pytest.raises(UsageError, match=r"called as op\(batch, rng\)"):
        HDF5Generator(h5file[0], augment=logged)


# -- contents per shuffle mode -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "batches", "full"])
def test_every_row_once_per_epoch_with_labels_aligned(h5file, mode):
    path, imgs, labels = h5file
    gen = HDF5Generator(path, batch_size=8, shuffle=mode, seed=3, output="uint8")
    assert len(gen) == 5 and gen.num_samples == 37
    seen = []
    with h5py.File(path, "r") as db:
        for i in range(len(gen)):
            x, y = gen[i]
            rows = gen.batch_rows(i)
            assert x.dtype == np.uint8 and y.dtype == np.int32
            # Direct h5py reads of the same rows, one by one, are the reference.
            np.testing.assert_array_equal(x, np.stack([db["images"][r] for r in rows]))
            np.testing.assert_array_equal(y, [db["labels"][r] for r in rows])
            seen += list(rows)
    assert sorted(seen) == list(range(37))
    assert [len(gen[i][0]) for i in range(5)].count(5) == 1  # one final short batch


def test_none_reads_in_file_order(h5file):
    gen = HDF5Generator(h5file[0], batch_size=10, shuffle="none", seed=0)
    for _ in range(2):
        assert np.concatenate(epoch_rows(gen)).tolist() == list(range(37))


def test_batches_are_contiguous_and_reordered_each_epoch(h5file):
    gen = HDF5Generator(h5file[0], batch_size=4, shuffle="batches", seed=5)
    first = epoch_rows(gen)  # iterating advances to the next epoch
    second = epoch_rows(gen)
    for rows in first + second:
        assert np.all(np.diff(rows) == 1)
    starts = [r[0] for r in first]
    assert starts != sorted(starts)
    assert starts != [r[0] for r in second]
    assert gen.epoch == 2


def test_a_loop_left_part_way_moves_on_at_the_next_loop(h5file):
    # A training loop capped at some steps (break, zip) read the same batches, with the same
    # random draws, in every "epoch".
    gen = HDF5Generator(h5file[0], batch_size=4, shuffle="full", seed=5)
    orders = [[rows_of(gen[e, i][0]) for i in range(len(gen))] for e in range(4)]
    for epoch in range(2):
        for step, (x, _) in enumerate(gen):
            np.testing.assert_array_equal(rows_of(x), orders[epoch][step])
            if step == 2:
                break
    assert gen.epoch == 1
    # Loops of one step each (a smoke run's epochs) move on too: not one batch over and over.
    ones = [rows_of(x).tolist() for _ in range(2) for _, (x, _) in zip(range(1), gen,
                                                                        strict=False)]
    assert ones == [orders[2][0].tolist(), orders[3][0].tolist()]
    gen.set_epoch(1)
    for _, _ in zip(range(3), gen, strict=False):  # epoch 1, part way
        pass
    seen = [rows_of(x) for _, (x, _) in zip(range(3), gen, strict=False)]  # epoch 2, part way
    np.testing.assert_array_equal(np.concatenate(seen), np.concatenate(orders[2][:3]))
    # An epoch set in between is the one the next loop reads, from its first batch.
    gen.set_epoch(2)
    first = next(iter(gen))[0]
    np.testing.assert_array_equal(rows_of(first), orders[2][0])
    # A loop made and dropped unread is no pass; a loop read to its end moves on once.
    iter(gen)
    assert [rows_of(x).tolist() for x, _ in gen] == [r.tolist() for r in orders[3]]
    assert gen.epoch == 4


def test_a_peek_then_a_pass_by_index_leaves_the_next_loop_on_that_order(h5file):
    # README: after model.predict(as_keras(gen)) a loop gives the labels in the order predict
    # read. A peek at the first batch before (shapes) made that loop move on to another order.
    gen = HDF5Generator(h5file[0], batch_size=4, shuffle="full", seed=5)
    next(iter(gen))
    read = [rows_of(gen[i][0]) for i in range(len(gen))]  # what predict reads, by index
    looped = [rows_of(x) for x, _ in gen]
    assert [r.tolist() for r in looped] == [r.tolist() for r in read]
    assert gen.epoch == 1
    # A look at one batch between capped loops (logging a sample) is no pass: the loops move
    # on (it kept every loop on the same two batches).
    firsts = []
    for _ in range(3):
        firsts.append([rows_of(x).tolist() for _, (x, _) in zip(range(2), gen, strict=False)])
        gen[0]
    assert firsts == [[rows_of(gen[e, i][0]).tolist() for i in range(2)] for e in (1, 2, 3)]


def test_setting_epoch_is_set_epoch(h5file):
    # gen.epoch = 3 was taken, and changed nothing: gen[0] still read epoch 0's batch, and
    # EpochSync, seeing epoch 3 already there, left it so (a resumed fit read epoch 0).
    gen = HDF5Generator(h5file[0], batch_size=4, shuffle="full", seed=5)
    expected = gen[3, 0]
    gen.epoch = 3
    assert gen.epoch == 3 and gen.epoch_sets == 1
    np.testing.assert_array_equal(gen[0][0], expected[0])
    with pytest.raises(UsageError, match="epoch must be a whole number"):
        gen.epoch = -1


def test_full_shuffle_mixes_rows_and_changes_between_epochs(h5file):
    gen = HDF5Generator(h5file[0], batch_size=8, shuffle="full", seed=5)
    first = np.concatenate(epoch_rows(gen))
    second = np.concatenate(epoch_rows(gen))
    assert sorted(first) == sorted(second) == list(range(37))
    assert first.tolist() != second.tolist()
    assert any(np.any(np.diff(r) != 1) for r in epoch_rows(gen))


def test_full_shuffle_on_a_compressed_chunked_file(tmp_path):
    imgs = tagged_images(30, 5, 5)
    labels = np.arange(30) % 3
    path = tmp_path / "lzf.hdf5"
    with store.HDF5Writer(path, 30, (5, 5), NAMES, chunk_images=4, compression="lzf") as w:
        w.append(imgs, labels, [str(i) for i in range(30)])
    gen = HDF5Generator(path, batch_size=7, shuffle="full", seed=1, output="uint8")
    for i in range(len(gen)):
        x, y = gen[i]
        rows = gen.batch_rows(i)
        np.testing.assert_array_equal(x, imgs[rows])
        np.testing.assert_array_equal(y, labels[rows])


def test_drop_last_auto_drops_the_short_batch_unless_there_is_only_one(h5file):
    rows = len(h5file[1])
    many = HDF5Generator(h5file[0], batch_size=8, drop_last="auto", seed=2)
    assert many.drop_last is True and len(many) == rows // 8
    assert all(len(many[i][1]) == 8 for i in range(len(many)))
    # Fewer rows than a batch: the one short batch, not a generator with no batch at all.
    few = HDF5Generator(h5file[0], batch_size=rows + 1, drop_last="auto", seed=2)
    assert few.drop_last is False and len(few) == 1 and len(few[0][1]) == rows


def test_drop_last_gives_full_batches_and_every_row_eventually(h5file):
    gen = HDF5Generator(h5file[0], batch_size=8, shuffle="batches", drop_last=True, seed=2)
    assert len(gen) == 4
    union = set()
    for _ in range(12):
        rows = epoch_rows(gen)
        assert all(len(r) == 8 for r in rows) and len(set(np.concatenate(rows))) == 32
        union |= set(np.concatenate(rows).tolist())
    # The start moves each epoch, so no row is left out in every epoch.
    assert union == set(range(37))


@pytest.mark.parametrize("cut", [False, True])
def test_drop_last_leaves_out_any_row_as_often_as_another(h5file, cut):
    from dsprep.preprocess import CenterCrop

    path, imgs, labels = h5file
    assert imgs.shape[:3] == (37, 6, 7)  # batches of 8: 5 rows left out an epoch
    gen = HDF5Generator(path, batch_size=8, shuffle="batches", drop_last=True, seed=3,
                        output="uint8", preprocessors=[CenterCrop(4, 4)] if cut else [])
    epochs = 400
    seen = np.zeros(37)
    for e in range(epochs):
        for i in range(len(gen)):
            seen[gen.batch_rows(i, e)] += 1
    left_out = 1 - seen / epochs
    # 5 of 37 rows (13.5%) an epoch, whichever: a start drawn from the 5 spare rows left the
    # first and last rows out in 5 epochs of 6.
    assert 0.05 < left_out.min() and left_out.max() < 0.25
    # A batch that runs past the file's end holds the rows it names, in order.
    wrapped = 0
    for e in range(12):
        for i in range(len(gen)):
            rows = gen.batch_rows(i, e)
            x, y = gen[e, i]
            want = imgs[rows][:, 1:5, 1:5] if cut else imgs[rows]
            np.testing.assert_array_equal(x, want)
            np.testing.assert_array_equal(y, labels[rows])
            wrapped += bool(rows[-1] < rows[0])
    assert wrapped >= 3


_DROP_ROOT = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_files_and_folders_this_user_may_not_read_are_said_so_not_taken_for_damage(
        h5file, class_dump, tmp_path):
    # chmod -R 644 on a data folder (no folder can be entered) and unreadable files: said to
    # be unreadable, not "a build stopped while renaming" or "rebuild it", nor a traceback.
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("run as root without setpriv: root reads whatever the permission bits say")
    built = tmp_path / "built"
    built.mkdir()
    shutil.copy(h5file[0], built / "train.hdf5")
    (built / "means.json").write_text('{"R": 1.0, "G": 2.0, "B": 3.0}')
    closed = tmp_path / "closed"
    shutil.copytree(built, closed / "h5")
    shutil.copytree(class_dump, closed / "train")
    (built / "train.hdf5").chmod(0o000)
    (built / "means.json").chmod(0o000)
    for path in [closed, *closed.rglob("*")]:
        if path.is_dir():
            path.chmod(0o644)
    script = (
        "import sys\n"
        "from dsprep.generators import DirectoryGenerator, HDF5Generator\n"
        "from dsprep.preprocess import MeanSubtract\n"
        "for make, arg in ((HDF5Generator, sys.argv[1]), (HDF5Generator, sys.argv[2]),\n"
        "                  (lambda p: DirectoryGenerator(p, image_size=8), sys.argv[3]),\n"
        "                  (MeanSubtract, sys.argv[4])):\n"
        "    try:\n"
        "        make(arg)\n"
        "    except PermissionError as exc:\n"
        "        print(exc.filename, '|', exc.strerror)\n"
        "    except Exception as exc:\n"
        "        print('other', type(exc).__name__, exc)\n")
    try:
        done = subprocess.run(
            (_DROP_ROOT if os.geteuid() == 0 else []) + [
                sys.executable, "-c", script, str(closed / "h5" / "train.hdf5"),
                str(built / "train.hdf5"), str(closed / "train"), str(built / "means.json")],
            capture_output=True, text=True, timeout=120,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    finally:
        for path in [closed, *closed.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
    said = "Permission denied: it, or a folder on its path, cannot be read by this user; give "\
        "read access to it (chmod u+r on files, u+rx on folders), or run as its owner"
    assert done.stdout.splitlines() == [
        f"{closed / 'h5'} | {said}", f"{built / 'train.hdf5'} | {said}",
        f"{closed / 'train'} | {said}", f"{built / 'means.json'} | {said}"], done.stderr


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    return {n: store.write_arrays(root / f"n{n}.hdf5", tagged_images(n, 2, 2), np.zeros(n, int),
                                  ["only"]) for n in (1, 5, 16, 23)}


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from([1, 5, 16, 23]), batch_size=st.integers(1, 25),
       mode=st.sampled_from(["none", "batches", "full"]), drop_last=st.booleans(),
       epoch=st.integers(0, 50))
def test_batch_rows_partition_property(sized_files, n, batch_size, mode, drop_last, epoch):
    assume(not (drop_last and batch_size > n))  # refused at construction, tested elsewhere
    gen = HDF5Generator(sized_files[n], batch_size=batch_size, shuffle=mode, drop_last=drop_last,
                        seed=epoch)
    gen.set_epoch(epoch)
    rows = [gen.batch_rows(i) for i in range(len(gen))]
    flat = np.concatenate(rows)
    expected_batches = n // batch_size if drop_last else -(-n // batch_size)
    assert len(rows) == expected_batches
    assert len(set(flat.tolist())) == len(flat)  # no row twice
    if drop_last:
        assert all(len(r) == batch_size for r in rows)
    else:
        assert sorted(flat.tolist()) == list(range(n))
        assert all(len(r) == batch_size for r in rows[:-1])


# -- output, labels and pipeline order ---------------------------------------------------------


def test_float32_default_and_one_hot(h5file):
    path, imgs, labels = h5file
    gen = HDF5Generator(path, batch_size=8, shuffle="full", one_hot=True, seed=0)
    x, y = gen[1]
    rows = gen.batch_rows(1)
    assert x.dtype == np.float32 and y.dtype == np.float32 and y.shape == (8, 3)
    np.testing.assert_array_equal(x, imgs[rows].astype(np.float32))
    np.testing.assert_array_equal(y, np.eye(3, dtype=np.float32)[labels[rows]])
    assert gen.num_classes == 3 and gen.classes == NAMES == gen.label_names


def test_augment_runs_on_raw_pixels_before_preprocessors(h5file):
    path, imgs, _ = h5file
    gen = HDF5Generator(path, batch_size=8, shuffle="none", augment=Scale(2), seed=0,
                        preprocessors=[AddOne()])
    x, _ = gen[0]
    np.testing.assert_array_equal(x, imgs[:8].astype(np.float32) * 2 + 1)
    assert gen.sample_shape == (6, 7, 3)


def test_augment_takes_a_list_applied_in_order_and_preprocessors_none(h5file):
    path, imgs, _ = h5file
    gen = HDF5Generator(path, batch_size=8, shuffle="none", augment=[Scale(2), AddOne()],
                        preprocessors=None, seed=0)
    np.testing.assert_array_equal(gen[0][0], imgs[:8].astype(np.float32) * 2 + 1)
    assert gen.preprocessors == ()


def test_a_batch_index_is_one_integer(h5file):
    gen = HDF5Generator(h5file[0], batch_size=8, seed=0)
    for index in (True, slice(0, 2), 1.0, "1"):
        with pytest.raises(TypeError, match="a batch index is an integer"):
            gen[index]
    with pytest.raises(IndexError, match="out of range"):
        gen[len(gen)]
    np.testing.assert_array_equal(gen[np.int64(-1)][1], gen[len(gen) - 1][1])


def test_a_generator_made_with_an_augment_generator_expression_pickles(h5file):
    from dsprep.augment import RandomFlip

    gen = HDF5Generator(h5file[0], batch_size=8, seed=1, output="uint8",
                        augment=(op for op in [RandomFlip()]))
    copy = pickle.loads(pickle.dumps(gen))  # what a spawned worker gets
    np.testing.assert_array_equal(copy[1][0], gen[1][0])


def test_a_batch_size_far_over_the_rows_allocates_for_the_rows(h5file):
    from dsprep.preprocess import MeanSubtract

    path, imgs, labels = h5file
    gen = HDF5Generator(path, batch_size=10**9, shuffle="none",
                        preprocessors=[MeanSubtract({"R": 1.0, "G": 2.0, "B": 3.0})])
    x, y = gen[0]  # a scratch of 10**9 rows would be 126 GB
    assert len(gen) == 1 and x.shape == (37, 6, 7, 3)
    np.testing.assert_allclose(x, imgs.astype(np.float32) - np.float32([1, 2, 3]))
    np.testing.assert_array_equal(y, labels)


def test_plain_functions_work_as_preprocessors(h5file):
    path, imgs, _ = h5file
    gen = HDF5Generator(path, batch_size=8, shuffle="none", output="uint8", seed=0,
                        preprocessors=lambda batch, rng: batch[:, :2, ::-1])
    assert gen.sample_shape == (2, 7, 3) and gen.x_dtype == np.uint8
    x0, _ = gen[0]
    gen[1]
    np.testing.assert_array_equal(x0, imgs[:8, :2, ::-1])


def test_uint8_output_is_never_the_reused_read_buffer(h5file):
    path, imgs, _ = h5file
    for ops in ([], [CornerView(3, 3)]):
        gen = HDF5Generator(path, batch_size=8, shuffle="none", preprocessors=ops,
                            output="uint8", seed=0)
        x0, _ = gen[0]
        gen[1]
        gen[2]
        assert x0.dtype == np.uint8
        np.testing.assert_array_equal(x0, imgs[:8, :x0.shape[1], :x0.shape[2]])


@pytest.mark.parametrize("compression, plain", [("none", True), ("lzf", False)])
@pytest.mark.parametrize("mode", ["batches", "full"])
def test_plain_rows_bypass_h5py_and_every_layout_reads_the_same(tmp_path, compression, plain,
                                                                 mode):
    imgs = tagged_images(30, 5, 5)
    labels = np.arange(30) % 3
    path = tmp_path / f"{compression}.hdf5"
    with store.HDF5Writer(path, 30, (5, 5), NAMES, chunk_images=4,
                          compression=compression) as w:
        w.append(imgs, labels, [str(i) for i in range(30)])
    gen = HDF5Generator(path, batch_size=7, shuffle=mode, seed=2, output="uint8")
    with ThreadPoolExecutor(3) as pool:
        batches = list(pool.map(lambda i: gen[i], range(len(gen))))
    for i, (x, y) in enumerate(batches):
        np.testing.assert_array_equal(x, imgs[gen.batch_rows(i)])
        np.testing.assert_array_equal(y, labels[gen.batch_rows(i)])
    # Uncompressed rows are read with preadv; compressed chunks through h5py.
    assert (gen._reader is not None) is plain


def test_threads_share_a_generator_safely(h5file):
    path, imgs, _ = h5file
    gen = HDF5Generator(path, batch_size=4, shuffle="full", preprocessors=[CornerView(4, 4)],
                        output="uint8", seed=9)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: gen[i % len(gen)], range(40)))
    for i, (x, _) in enumerate(results):
        np.testing.assert_array_equal(x, imgs[gen.batch_rows(i % len(gen)), :4, :4])


# -- randomness, processes, pickling ---------------------------------------------------------


def test_same_seed_same_batches_and_other_seed_differs(h5file):
    make = lambda seed: HDF5Generator(h5file[0], batch_size=8, shuffle="full",  # noqa: E731
                                      preprocessors=[Patch(4, 4), Noise()], seed=seed)
    a, b, c = make(11), make(11), make(12)
    for gen in (a, b, c):
        gen.set_epoch(2)
    np.testing.assert_array_equal(a[3][0], b[3][0])
    assert not np.array_equal(a[3][0], c[3][0])
    # A batch does not depend on which batches were computed before it.
    fresh = make(11)
    fresh.on_epoch_end()
    fresh.on_epoch_end()
    np.testing.assert_array_equal(fresh[3][0], a[3][0])


def _batch_in_child(blob, index):
    gen = pickle.loads(blob)
    return gen[index]


def _pid_and_rows(gen):
    x, _ = gen[0]
    return gen._pid, rows_of(x).tolist()


def test_forked_child_opens_its_own_handle(h5file):
    gen = HDF5Generator(h5file[0], batch_size=8, shuffle="batches", seed=1, output="uint8")
    parent_rows = rows_of(gen[0][0]).tolist()  # the parent now holds an open handle
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child_pid, child_rows = pool.apply(_pid_and_rows, (gen,))
    assert child_rows == parent_rows
    assert gen._pid is not None and child_pid != gen._pid


def test_pickle_keeps_state_and_drops_the_handle(h5file):
    gen = HDF5Generator(h5file[0], batch_size=8, shuffle="full", seed=4, preprocessors=[Noise()])
    gen.on_epoch_end()
    before = gen[1]
    copy = pickle.loads(pickle.dumps(gen))
    assert copy.epoch == 1 and copy._db is None
    np.testing.assert_array_equal(copy[1][0], before[0])
    gen.close()
    np.testing.assert_array_equal(gen[1][0], before[0])  # reopens after close


@pytest.mark.parametrize("name, value", [
    ("augment", None), ("preprocessors", ()), ("shuffle", "full"), ("batch_size", 16),
    ("drop_last", True), ("output", "uint8"), ("seed", 3), ("one_hot", True)])
def test_a_setting_changed_after_the_generator_is_made_is_refused(h5file, class_dump, name,
                                                                  value):
    # The pipeline and the epoch order are made from these: a change used to be ignored
    # (augment) or to give wrong batches (shuffle "batches" to "full": batch numbers as rows).
    from dsprep.augment import RandomFlip

    gen = HDF5Generator(h5file[0], batch_size=8, shuffle="batches", seed=1,
                        augment=RandomFlip(p=1.0), output="float32")
    folders = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=4, seed=1)
    for made in (gen, folders):
        before = made[0]
        with pytest.raises(AttributeError, match=f"{name} is fixed when the generator is made"):
            setattr(made, name, value)
        np.testing.assert_array_equal(made[0][0], before[0])
    # What is not a setting stays free, and copies keep working.
    gen.note = "mine"
    assert copy.copy(gen).note == "mine" and pickle.loads(pickle.dumps(gen)).batch_size == 8


def test_open_generator_does_not_block_other_readers(h5file):
    path = h5file[0]
    gen = HDF5Generator(path, batch_size=8)
    gen[0]
    with h5py.File(path, "r") as db:  # same process, default locking
        assert db["images"].shape[0] == 37
    code = f"import h5py; print(h5py.File({str(path)!r}, 'r')['labels'].shape[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "37"
    HDF5Generator(path, batch_size=8)[0]


@pytest.mark.parametrize("locking", [False, True])
def test_a_file_this_process_holds_open_with_its_own_locking_is_read(h5file, locking):
    # h5py.File(path, locking=False) is the habit on NFS; a second open with another setting
    # is an HDF5 error, which must not read as a damaged file.
    path, imgs, _ = h5file
    with h5py.File(path, "r", locking=locking) as db:
        gen = HDF5Generator(path, batch_size=8, shuffle="none", output="uint8")
        np.testing.assert_array_equal(gen[0][0], imgs[:8])
        assert db["images"].shape[0] == 37
    gen.close()


def test_relative_paths_are_taken_at_construction(h5file, class_dump, tmp_path, monkeypatch):
    # Training code that changes its working folder after building the generators (a run
    # folder per job) still reads the same files.
    path, imgs, _ = h5file
    monkeypatch.chdir(path.parent)
    gen = HDF5Generator(path.name, batch_size=8, shuffle="none", output="uint8")
    monkeypatch.chdir(class_dump.parent)
    folders = DirectoryGenerator(class_dump.name, image_size=(16, 16), batch_size=6,
                                 shuffle=False, output="uint8", seed=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    np.testing.assert_array_equal(gen[0][0], imgs[:8])
    x, _ = folders[0]
    for image, file in zip(x, folders.batch_files(0), strict=True):
        np.testing.assert_array_equal(image, reference_load(file, (16, 16)))
    assert folders.replaced == []


def test_importing_generators_does_not_load_frameworks():
    code = (
        "import sys, dsprep.generators, dsprep.prefetch, dsprep.preprocess, dsprep.evaluate;"
        "print(','.join(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- DirectoryGenerator ------------------------------------------------------------------------


def reference_load(path, size=(32, 40), mode="crop"):
    """The image as build-hdf5 stores it (the generator must read the same pixels), after
    checking that against OpenCV's full decode and resize written out in the tests: JPEGs
    four times the size are decoded reduced, a few levels off."""
    data = path.read_bytes()
    stored = images.load(data, size, mode)
    plain = area_reference(data, size, mode)
    assert np.abs(stored.astype(int) - plain.astype(int)).max() <= 8
    return stored


@pytest.fixture
def dump_with_bad_files(class_dump):
    good = (class_dump / "cat" / "cat_0.jpg").read_bytes()
    (class_dump / "dog" / "broken.jpg").write_bytes(good[: len(good) // 3] + b"\0" * 10)
    (class_dump / "fox" / "readme.jpg").write_text("this is not an image\n")
    (class_dump / "fox" / "empty.jpg").write_bytes(b"")
    (class_dump / "fox" / "phone.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    return class_dump


def test_directory_bad_files_left_out_and_reported(dump_with_bad_files):
    root = dump_with_bad_files
    gen = DirectoryGenerator(root, image_size=(32, 40), batch_size=5, seed=0, workers=2)
    skipped = {p.name: reason for p, reason in gen.skipped}
    # In the words of split's skipped.csv: reason code, then detail.
    assert skipped["readme.jpg"] == "not-an-image: a text file, not an image"
    assert skipped["empty.jpg"] == "empty: zero-byte file"
    assert skipped["broken.jpg"].startswith("not-an-image: ")
    # Listed, as split lists it, not passed over without a word.
    assert skipped["phone.HEIC"] == ("unsupported-format: .heic images are not read; convert "
                                     "them to JPEG or PNG to include them")
    assert len(gen.skipped) == 4 and gen.num_samples == 18
    assert gen.classes == ["cat", "dog", "fox"]
    seen = []
    for i in range(len(gen)):
        x, y = gen[i]
        files = gen.batch_files(i)
        assert x.shape == (len(files), 32, 40, 3) and x.dtype == np.float32
        for xi, yi, f in zip(x, y, files, strict=True):
            np.testing.assert_array_equal(xi, reference_load(f).astype(np.float32))
            assert gen.classes[yi] == f.parent.name
        seen += files
    assert sorted(seen) == sorted(gen.files) and len(set(seen)) == len(seen)


def test_directory_reshuffles_each_epoch_and_is_reproducible(class_dump):
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=6, seed=3, workers=0)
    first = [f for i in range(len(gen)) for f in gen.batch_files(i)]
    gen.on_epoch_end()
    second = [f for i in range(len(gen)) for f in gen.batch_files(i)]
    assert first != second and sorted(first) == sorted(second)
    other = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=6, seed=3, workers=2,
                               preprocessors=[Noise()])
    other.set_epoch(1)
    assert [f for i in range(len(other)) for f in other.batch_files(i)] == second
    again = pickle.loads(pickle.dumps(other))
    np.testing.assert_array_equal(again[2][0], other[2][0])


def test_directory_unshuffled_order_and_uint8(class_dump):
    gen = DirectoryGenerator(class_dump, image_size=(16, 20), resize="stretch", batch_size=4,
                             shuffle=False, output="uint8", one_hot=True, seed=0)
    x, y = gen[0]
    files = sorted((class_dump / "cat").glob("*.jpg"))[:4]
    assert gen.batch_files(0) == files
    np.testing.assert_array_equal(x, np.stack([reference_load(f, (16, 20), "stretch")
                                               for f in files]))
    np.testing.assert_array_equal(y, np.tile([1, 0, 0], (4, 1)).astype(np.float32))


def test_directory_classes_order_comes_from_the_caller(class_dump):
    gen = DirectoryGenerator(class_dump, image_size=(8, 8), shuffle=False, seed=0,
                             classes=["fox", "dog", "cat", "eel"])
    assert gen.num_classes == 4
    assert {gen.classes[label] for label in gen.labels[:6]} == {"cat"}
    assert gen.labels[:6].tolist() == [2] * 6
    with pytest.raises(UsageError, match="not in classes: fox"):
        DirectoryGenerator(class_dump, classes=["cat", "dog"])
    # A set's order (the ids) changes from run to run with string hashing.
    with pytest.raises(UsageError, match="in the order of the class ids .* got a set"):
        DirectoryGenerator(class_dump, classes={"fox", "dog", "cat", "eel"})
    ordered = DirectoryGenerator(class_dump, image_size=(8, 8), shuffle=False, seed=0,
                                 classes={"fox": 0, "dog": 1, "cat": 2, "eel": 3}.keys())
    assert ordered.classes == ["fox", "dog", "cat", "eel"]


def test_directory_split_lacking_a_class_keeps_the_ids_of_its_split(tmp_path):
    from dsprep import build

    # A dump already split, whose test folder has no apple: the ids follow the whole split,
    # as build-hdf5 gives them, not the test folder's own sorted folders.
    dump = tmp_path / "fruits"
    make_class_folders(dump / "train", classes=("apple", "banana", "cherry"), per_class=2)
    make_class_folders(dump / "test", classes=("banana", "cherry"), per_class=2, seed=9)
    gen = DirectoryGenerator(dump / "test", image_size=(8, 8), shuffle=False)
    assert gen.classes == ["apple", "banana", "cherry"]
    assert [gen.classes[label] for label in gen.labels] == [f.parent.name for f in gen.files]
    classes, rows, _, _ = build.find_rows(dump)
    assert classes == gen.classes
    assert sorted(row.label for row in rows["test"]) == sorted(gen.labels.tolist())
    # A folder of notes is no class (build-hdf5 gives it no id); val/ beside valid/ is no
    # split to follow, and the root's own folders are its classes then.
    (dump / "test" / "aaa_notes").mkdir()
    (dump / "test" / "aaa_notes" / "readme.txt").write_text("scraped 2019")
    gen = DirectoryGenerator(dump / "train", image_size=(8, 8))
    assert gen.classes == build.find_rows(dump)[0] == ["apple", "banana", "cherry"]
    make_class_folders(dump / "val", classes=("apple",), per_class=1, seed=20)
    make_class_folders(dump / "valid", classes=("apple",), per_class=1, seed=21)
    assert DirectoryGenerator(dump / "test", image_size=(8, 8)).classes == ["aaa_notes",
                                                                          "banana", "cherry"]
    doubled = tmp_path / "scenes"
    make_class_folders(doubled / "seg_train" / "seg_train", classes=("sea", "sky"), per_class=1)
    make_class_folders(doubled / "seg_test" / "seg_test", classes=("sky",), per_class=1)
    gen = DirectoryGenerator(doubled / "seg_test" / "seg_test", image_size=(8, 8))
    assert gen.classes == ["sea", "sky"] and gen.labels.tolist() == [1]
    # A dsprep split: split.json's classes, also for a class with no folder in the split.
    made = tmp_path / "made"
    make_class_folders(made / "val", classes=("dog",), per_class=2)
    (made / "split.json").write_text('{"classes": ["cat", "dog"]}')
    gen = DirectoryGenerator(made / "val", image_size=(8, 8), shuffle=False)
    assert gen.classes == ["cat", "dog"] and gen.labels.tolist() == [1, 1]
    # A plain folder of class folders keeps its own.
    gen = DirectoryGenerator(make_class_folders(tmp_path / "plain", classes=("b", "c")),
                             image_size=(8, 8))
    assert gen.classes == ["b", "c"]


def test_directory_split_with_an_unlistable_class_folder_is_an_error(tmp_path, monkeypatch):
    # train/apple cannot be listed: the test folder's ids would silently shift (banana 0).
    from helpers import unlistable

    dump = tmp_path / "fruits"
    make_class_folders(dump / "train", classes=("apple", "banana", "cherry"), per_class=2)
    make_class_folders(dump / "test", classes=("banana", "cherry"), per_class=2, seed=9)
    unlistable(monkeypatch, dump / "train" / "apple")
    with pytest.raises(PermissionError, match="cannot be listed") as info:
        DirectoryGenerator(dump / "test", image_size=(8, 8))
    assert info.value.filename == str(dump / "train" / "apple")


def test_directory_file_failing_mid_epoch_is_replaced_by_its_class_neighbour(class_dump):
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=18, shuffle=False,
                             output="uint8", seed=0)
    victim = class_dump / "dog" / "dog_2.jpg"
    victim.write_bytes(b"garbage")
    x, y = gen[0]
    k = gen.files.index(victim)
    np.testing.assert_array_equal(x[k], reference_load(class_dump / "dog" / "dog_3.jpg", (16, 16)))
    assert y[k] == 1
    assert [p for p, _ in gen.replaced] == [victim]


def test_directory_file_failing_every_epoch_is_listed_once(class_dump):
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=8, shuffle=True,
                             output="uint8", seed=0, workers=2)
    victim = class_dump / "cat" / "cat_1.jpg"
    victim.write_bytes(b"garbage")
    for _ in range(3):
        for _ in gen:
            pass
    gen[0], gen[0]
    assert [p for p, _ in gen.replaced] == [victim]
    copy = pickle.loads(pickle.dumps(gen))
    for _ in copy:
        pass
    assert [p for p, _ in copy.replaced] == [victim]


def test_directory_file_unreadable_for_a_while_is_read_again_once_it_is_back(class_dump):
    # A file that cannot be read (gone for a moment, its disk away) stands in for one batch: it
    # is not left out for the rest of the run, nor in the copies made after.
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=18, shuffle=False,
                             output="uint8", seed=0)
    victim = class_dump / "dog" / "dog_2.jpg"
    k = gen.files.index(victim)
    away = victim.with_name("away.bin")
    victim.rename(away)
    x, _ = gen[0]
    np.testing.assert_array_equal(x[k], reference_load(class_dump / "dog" / "dog_3.jpg", (16, 16)))
    assert gen.replaced == [(victim, "unreadable: No such file or directory")]
    copy = pickle.loads(pickle.dumps(gen))
    away.rename(victim)
    for g in (gen, copy):
        np.testing.assert_array_equal(g[0][0][k], reference_load(victim, (16, 16)))
        assert [p for p, _ in g.replaced] == [victim]  # still listed once


def test_directory_files_gone_stand_in_for_no_other_file(class_dump, monkeypatch):
    # Tried again at their own turn only: with many files of a class gone, each failing file
    # scanned every other one again, batch after batch (minutes per epoch).
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=18, shuffle=False,
                             output="uint8", seed=0, workers=0)
    gone = [class_dump / "dog" / f"dog_{i}.jpg" for i in (1, 2)]
    for path in gone:
        path.rename(path.with_suffix(".away"))
    tried = []
    decode = DirectoryGenerator._decode
    monkeypatch.setattr(DirectoryGenerator, "_decode",
                        lambda self, path: tried.append(path) or decode(self, path))
    first = gen[0][0]
    tried.clear()
    np.testing.assert_array_equal(gen[0][0], first)
    assert [tried.count(path) for path in gone] == [1, 1]
    assert [p for p, _ in gen.replaced] == gone
    assert all(reason == "unreadable: No such file or directory" for _, reason in gen.replaced)


def test_directory_file_back_after_failing_stands_in_when_no_other_can(tmp_path):
    # Left out as a stand-in while it failed, a file back again still serves when every other
    # file of its class fails (one removed, as the note says to do).
    root = make_class_folders(tmp_path / "two", classes=("a", "b"), per_class=2)
    gen = DirectoryGenerator(root, image_size=(16, 16), batch_size=1, shuffle=False,
                             output="uint8", seed=0, workers=0)
    first, second = gen.files.index(root / "a" / "a_0.jpg"), gen.files.index(root / "a" / "a_1.jpg")
    away = root / "a" / "a_1.away"
    (root / "a" / "a_1.jpg").rename(away)
    gen[second]  # a_0 stands in for it
    away.rename(root / "a" / "a_1.jpg")
    (root / "a" / "a_0.jpg").unlink()
    x, _ = gen[first]
    np.testing.assert_array_equal(x[0], reference_load(root / "a" / "a_1.jpg", (16, 16)))


def test_directory_decodes_an_image_without_listing_its_whole_class(class_dump):
    # Each image listed every file of its class before trying its own: 2 classes of 50,000
    # files read at 190 images/s against 5,800.
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=4, shuffle=False,
                             output="uint8", seed=0, workers=0)

    class Counted(list):
        looked = 0

        def __getitem__(self, i):
            Counted.looked += 1
            return super().__getitem__(i)

    gen.files = Counted(gen.files)
    gen[0]
    assert Counted.looked == 4  # one file a slot: its own


def test_directory_class_with_no_file_left_lends_its_places_to_others_with_their_labels(
        class_dump):
    # A class whose every image fails (a rare class of one image in val, that image gone)
    # stopped the epoch: its places now hold images of other classes, labelled as such.
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=18, shuffle=False,
                             output="uint8", seed=0)
    dog = gen.label_names.index("dog")
    for file in (class_dump / "dog").iterdir():
        file.unlink()
    with pytest.warns(RuntimeWarning, match=r"no image of class 'dog' under .* can be read and "
                      r"decoded now \(.*/dog/dog_\d\.jpg \(unreadable: No such file or "
                      r"directory\)\); its places in the batches are taken by images of other "
                      r"classes, with their labels") as said:
        x, y = gen[0]
        again = gen[0]
    assert len([w for w in said if "its places" in str(w.message)]) == 1  # said once
    assert x.shape[0] == 18 and dog not in y.tolist()
    np.testing.assert_array_equal(again[0], x)
    np.testing.assert_array_equal(again[1], y)
    for image, label in zip(x, y, strict=True):  # each image is one of its label's files
        assert any(np.array_equal(image, reference_load(path, (16, 16)))
                   for path, k in zip(gen.files, gen.labels, strict=True) if k == label)
    # Said once gone, a class's places try their own file alone, not all of its class again.
    decode, tried = DirectoryGenerator._decode, []
    gen._decode = lambda path: tried.append(path) or decode(gen, path)
    gen[0]
    assert sum(p.parent.name == "dog" for p in tried) == sum(k == dog for k in gen.labels[:18])
    del gen._decode
    # Nothing left anywhere: said, not looped.
    for folder in class_dump.iterdir():
        for file in folder.iterdir():
            file.unlink()
    with pytest.raises(CorruptImageError, match=r"no image under .* can be read and decoded "
                       r"now \(of class '\w+', the last one tried: .*unreadable: No such file"):
        gen[0]


def damage_png_pixels(path):
    """Invert bytes inside the IDAT chunk: the header and the IEND marker stay intact."""
    data = bytearray(path.read_bytes())
    start = data.find(b"IDAT") + 10
    data[start:start + 190] = bytes(b ^ 0xFF for b in data[start:start + 190])
    path.write_bytes(bytes(data))


def _torch_reader(monkeypatch, worker=None):
    """A stand-in for torch.utils.data: its fetch(dataset, i) indexes the dataset from a frame
    of that module, as a DataLoader's fetcher does; get_worker_info() gives ``worker``."""
    import sys
    import types

    module = types.ModuleType("torch.utils.data")
    exec("def fetch(dataset, i):\n    return dataset[i]\n"
         "def get_worker_info():\n    return WORKER\n", module.__dict__)
    module.WORKER = worker
    monkeypatch.setitem(sys.modules, "torch.utils.data", module)
    return module.fetch


def test_a_torch_loader_reading_one_epoch_again_by_plain_index_is_warned_of(h5file, monkeypatch):
    path, _, _ = h5file
    fetch = _torch_reader(monkeypatch)
    gen = HDF5Generator(path, batch_size=8, seed=3)
    for i in range(len(gen)):
        fetch(gen, i)  # an epoch read by index: nothing said yet
    with pytest.warns(RuntimeWarning, match=r"HDF5Generator: batch 0 of epoch 0 was read again "
                                            r"after every batch of that epoch.*"
                                            r"sampler=EpochIndices\(gen\)"):
        fetch(gen, 0)
    # Moved on by set_epoch (or read through EpochIndices' (epoch, i)): nothing to say.
    quiet = HDF5Generator(path, batch_size=8, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(2):
            quiet.set_epoch(epoch)
            for i in range(len(quiet)):
                fetch(quiet, i)
                fetch(quiet, (epoch + 5, i))
        # Other readers by index (Keras, ten_crop_predict) read one epoch twice on purpose.
        other = HDF5Generator(path, batch_size=8, seed=3)
        for _ in range(2):
            for i in range(len(other)):
                other[i]


def test_a_torch_worker_reading_a_generator_whose_epoch_was_never_set_is_warned_of(
        h5file, monkeypatch):
    path, _, _ = h5file
    fetch = _torch_reader(monkeypatch, worker=object())
    gen = HDF5Generator(path, batch_size=8, seed=3)
    with pytest.warns(RuntimeWarning, match="a DataLoader worker reads batches by plain index "
                                            "from a generator whose epoch was never set"):
        fetch(gen, 0)
    moved = HDF5Generator(path, batch_size=8, seed=3)
    moved.set_epoch(0)  # the main process sets each epoch before the workers are made
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch(moved, 0)


def test_directory_file_that_passes_its_header_check_but_does_not_decode(tmp_path, monkeypatch):
    root = tmp_path / "pngs"
    for name in ("a", "b"):
        for i in range(3):
            write_image(root / name / f"{i}.png", smooth_image(40, 50, seed=10 * ord(name) + i))
    victim = root / "b" / "0.png"
    damage_png_pixels(victim)
    assert images.probe(victim.read_bytes())  # the header check alone keeps it

    gen = DirectoryGenerator(root, image_size=(32, 32), batch_size=6, shuffle=False,
                             output="uint8", seed=0)
    assert [p for p, _ in gen.skipped] == [victim]
    assert gen.skipped[0][1].startswith("not-an-image: ")
    assert victim not in gen.files and len(gen) == 1 and gen[0][0].shape[0] == 5

    # Checked by header only, it fails when first met, and is not decoded again after that.
    decoded = []
    real_decode = DirectoryGenerator._decode
    monkeypatch.setattr(DirectoryGenerator, "_decode",
                        lambda self, path: decoded.append(path) or real_decode(self, path))
    quick = DirectoryGenerator(root, image_size=(32, 32), batch_size=6, shuffle=False,
                               output="uint8", seed=0, check="header", workers=0)
    assert victim in quick.files and not decoded
    for _ in range(3):
        x, _ = quick[0]
        k = quick.files.index(victim)
        np.testing.assert_array_equal(x[k], reference_load(root / "b" / "1.png", (32, 32)))
    assert decoded.count(victim) == 1
    assert [p for p, _ in quick.replaced] == [victim]
    # In a worker process's copy (a DataLoader's), whose gen.replaced nobody reads: a warning.
    other = DirectoryGenerator(root, image_size=(32, 32), batch_size=6, shuffle=False,
                               output="uint8", seed=0, check="header", workers=0)
    other._made_in = -1
    with pytest.warns(RuntimeWarning, match=r"0.png \(not-an-image: .*\) is replaced in its "
                                            r"batches by another image of its class \(in a "
                                            r"worker process"):
        other[0]


def test_directory_errors(tmp_path, class_dump, monkeypatch):
    with pytest.raises(LayoutError, match=r"missing does not exist; give a folder of class "):
        DirectoryGenerator(tmp_path / "missing")
    with pytest.raises(LayoutError, match=r"does not exist"):  # (under a file: not a raw error)
        DirectoryGenerator(next(class_dump.rglob("*.jpg")) / "x")
    # An unset variable in a script: not the working folder's sub-folders read as classes.
    monkeypatch.chdir(class_dump)
    with pytest.raises(UsageError, match="root is empty"):
        DirectoryGenerator("", image_size=(8, 8))
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "a.jpg").write_text("nope")
    with pytest.raises(LayoutError, match="no readable images"):
        DirectoryGenerator(bad)
    with pytest.raises(UsageError, match="resize"):
        DirectoryGenerator(class_dump, resize="squash")
    with pytest.raises(UsageError, match="larger"):
        DirectoryGenerator(class_dump, image_size=(8, 8), preprocessors=[Patch(9, 9)])
    with pytest.raises(UsageError, match="shuffle 'batches'"):
        DirectoryGenerator(class_dump, image_size=(8, 8), shuffle="batches")
    with pytest.raises(UsageError, match="progress must be True or False; received 'no'"):
        DirectoryGenerator(class_dump, image_size=(8, 8), progress="no")  # "no" is truthy
    with pytest.raises(UsageError, match="check 'pixels'"):
        DirectoryGenerator(class_dump, image_size=(8, 8), check="pixels")
    with pytest.raises(UsageError, match=r"the string 'cat'; pass \['cat'\]"):
        DirectoryGenerator(class_dump, image_size=(8, 8), classes="cat")
    with pytest.raises(UsageError, match="workers must be a whole number"):
        DirectoryGenerator(class_dump, image_size=(8, 8), workers=1.5)
    (tmp_path / "split" / "train").mkdir(parents=True)
    (tmp_path / "split" / "split.json").write_text("{}")
    with pytest.raises(UsageError, match="is split into"):  # its "classes": train, val, test
        DirectoryGenerator(tmp_path / "split", image_size=(8, 8))
    (tmp_path / "split" / "split.json").unlink()
    make_class_folders(tmp_path / "split" / "valid", classes=("a",), per_class=1)
    with pytest.raises(UsageError, match="such as .*train"):  # a dump split before dsprep
        DirectoryGenerator(tmp_path / "split", image_size=(8, 8))


def test_directory_shuffle_takes_the_hdf5_generator_words_too(class_dump):
    kept = DirectoryGenerator(class_dump, image_size=(8, 8), shuffle="none", seed=0)
    assert kept.files == sorted(kept.files) and kept.shuffle is False
    assert kept.batch_files(0) == kept.files[:kept.batch_size]
    shuffled = DirectoryGenerator(class_dump, image_size=(8, 8), shuffle="full", seed=0)
    assert shuffled.shuffle is True and shuffled.batch_files(0) != kept.batch_files(0)
    assert shuffled.batch_files(0) == DirectoryGenerator(
        class_dump, image_size=(8, 8), shuffle=True, seed=0).batch_files(0)


def test_directory_generator_sees_different_sizes(tmp_path):
    root = tmp_path / "sizes"
    write_image(root / "a" / "wide.png", smooth_image(20, 60, seed=1))
    write_image(root / "a" / "tall.jpg", smooth_image(70, 25, seed=2))
    make_class_folders(root, classes=("b",), per_class=2, size=(30, 30), seed=5)
    gen = DirectoryGenerator(root, image_size=(24, 24), resize="pad", batch_size=8, seed=0,
                             output="uint8")
    x, _ = gen[0]
    assert x.shape == (4, 24, 24, 3)
    for xi, f in zip(x, gen.batch_files(0), strict=True):
        np.testing.assert_array_equal(xi, reference_load(f, (24, 24), "pad"))


# -- with the real preprocessors ---------------------------------------------------------------


def matching_window(sample, image, mean):
    """(top, left, flipped) of the window of ``image`` minus ``mean`` equal to ``sample``."""
    h, w = sample.shape[:2]
    ref = image.astype(np.float64) - np.asarray(mean, dtype=np.float64)
    found = []
    for top in range(image.shape[0] - h + 1):
        for left in range(image.shape[1] - w + 1):
            window = ref[top:top + h, left:left + w]
            for flipped, view in ((False, window), (True, window[:, ::-1])):
                if np.allclose(sample, view, rtol=0, atol=1e-4):
                    found.append((top, left, flipped))
    return found


def test_training_pipeline_gives_mean_subtracted_random_flipped_patches(h5file):
    from dsprep.augment import RandomFlip
    from dsprep.preprocess import MeanSubtract, RandomPatch

    path, imgs, labels = h5file
    mean = {"R": 100.5, "G": 90.25, "B": 80.0}
    gen = HDF5Generator(path, batch_size=8, shuffle="full", seed=13,
                        preprocessors=[RandomPatch(4, 5), RandomFlip(), MeanSubtract(mean)])
    assert gen.sample_shape == (4, 5, 3)
    positions, flips = set(), set()
    for i in range(2):
        x, y = gen[i]
        rows = gen.batch_rows(i)
        assert x.dtype == np.float32 and x.shape == (len(rows), 4, 5, 3)
        np.testing.assert_array_equal(y, labels[rows])
        for sample, row in zip(x, rows, strict=True):
            found = matching_window(sample, imgs[row], [100.5, 90.25, 80.0])
            assert found, f"batch {i}: no window of row {row} matches"
            positions.add(found[0][:2])
            flips.add(found[0][2])
    assert len(positions) > 3 and flips == {False, True}  # really random


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read"])
@pytest.mark.parametrize("mode", ["batches", "full"])
def test_rows_mapped_or_read_while_cutting_give_the_batches_of_an_upfront_read(h5file, mode,
                                                                      mapped, monkeypatch):
    import dsprep.preprocess as preprocess
    from dsprep.augment import RandomFlip
    from dsprep.generators import batch_rng
    from dsprep.preprocess import Compose, MeanSubtract, RandomPatch

    # Small batches split between the two kernel threads as large ones are.
    monkeypatch.setattr(preprocess, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(preprocess, "_LOAD_STEP", 3)
    path, imgs, _ = h5file
    reads = []
    for name in ("read", "read_rows"):
        real = getattr(store.RowReader, name)

        def record(self, fd, *args, _real=real):
            reads.append(len(args[-1]))  # rows in this call
            return _real(self, fd, *args)

        monkeypatch.setattr(store.RowReader, name, record)
    if not mapped:  # no map can be made (no address space for one)
        monkeypatch.setattr(store.RowReader, "map", lambda *args, **kwargs: None)
        monkeypatch.setattr(store.RowReader, "map_file", lambda *args, **kwargs: None)
    ops = [RandomPatch(4, 5), RandomFlip(), MeanSubtract({"R": 10, "G": 20, "B": 30})]
    gen = HDF5Generator(path, batch_size=16, shuffle=mode, seed=4, preprocessors=ops)
    gen[0]  # opens the file (the reader checks a first and a last row)
    reads.clear()
    x, _ = gen[1]
    assert gen._reader is not None
    if mapped:
        # Windows are cut straight from a read-only map of the file ("batches": one slice of
        # a window of it; "full": each row where it lies in a map of the whole file).
        assert reads == []
        assert (gen._mapped if mode == "batches" else gen._file_map) is not None
    else:
        assert sum(reads) == 16 and max(reads) <= 3  # the batch came in runs of 3 rows at most
        assert gen._mapped is None and gen._file_map is None
    expected = Compose(ops)(imgs[gen.batch_rows(1)], batch_rng(4, 0, 1))
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read"])
@pytest.mark.parametrize("mode", ["none", "batches", "full"])
@pytest.mark.parametrize("pipeline", ["raw", "float32", "rescale"])
def test_rows_without_a_cut_are_copied_from_the_map_or_read(h5file, mode, mapped, pipeline,
                                                           monkeypatch):
    from dsprep.preprocess import Rescale

    path, imgs, _ = h5file
    reads = []
    for name in ("read", "read_rows"):
        real = getattr(store.RowReader, name)

        def record(self, fd, *args, _real=real):
            reads.append(len(args[-1]))
            return _real(self, fd, *args)

        monkeypatch.setattr(store.RowReader, name, record)
    if not mapped:  # no map can be made (no address space for one)
        monkeypatch.setattr(store.RowReader, "map", lambda *args, **kwargs: None)
        monkeypatch.setattr(store.RowReader, "map_file", lambda *args, **kwargs: None)
    kwargs = {"raw": {"output": "uint8"}, "float32": {},
              "rescale": {"preprocessors": [Rescale(0.5)]}}[pipeline]
    gen = HDF5Generator(path, batch_size=16, shuffle=mode, seed=4, **kwargs)
    gen[0]  # opens the file (the reader checks a first and a last row)
    reads.clear()
    x, _ = gen[1]
    rows = gen.batch_rows(1)
    scale = 0.5 if pipeline == "rescale" else 1
    np.testing.assert_array_equal(x, imgs[rows].astype(x.dtype) * scale)
    assert x.dtype == (np.uint8 if pipeline == "raw" else np.float32)
    assert gen._file_map is None  # only a cut takes rows from anywhere in a map
    if mapped and mode != "full":
        # A slice of a read-only map of the file, copied out in user space, not read.
        assert reads == [] and gen._mapped is not None
        assert not any(np.may_share_memory(x, w) for w in gen._mapped._windows.values())
    else:
        assert sum(reads) == 16 and gen._mapped is None
    x[...] = 0  # the caller's to change
    assert gen[1][0].any()


@pytest.mark.parametrize("pipeline", ["raw", "cut"])
def test_a_window_that_cannot_be_mapped_is_read_instead(h5file, pipeline, monkeypatch):
    # A tight ulimit -v: the file's windows are mapped as batches reach them, and one that
    # cannot be made must not fail the epoch.
    import mmap as mmap_module

    from dsprep.preprocess import RandomPatch

    path, imgs, _ = h5file
    kwargs = {"raw": {"output": "uint8"},
              "cut": {"preprocessors": [RandomPatch(4, 4)], "output": "uint8"}}[pipeline]
    gen = HDF5Generator(path, batch_size=8, shuffle="none", seed=3, **kwargs)
    expected = [gen[i][0] for i in range(len(gen))]
    gen = HDF5Generator(path, batch_size=8, shuffle="none", seed=3, **kwargs)

    def no_room(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(store.mmap, "mmap", no_room)
    assert mmap_module.mmap is no_room  # the module the maps are made with
    for i, x in enumerate(expected):
        np.testing.assert_array_equal(gen[i][0], x)
    assert gen._mapped is None and gen._reader is not None
    if pipeline == "raw":
        np.testing.assert_array_equal(expected[0], imgs[:8])


class InPlaceClip:
    """A user preprocessor with an output shape that clips its input batch in place."""

    def output_shape(self, shape):
        return shape

    def __call__(self, batch, rng=None):
        return np.clip(batch, 10, 240, out=batch)


class Unchanged(InPlaceClip):
    def __call__(self, batch, rng=None):
        return batch


@pytest.mark.parametrize("mode", ["none", "batches"])
def test_user_steps_get_a_writable_batch_and_outputs_never_view_the_file(h5file, mode):
    from dsprep.augment import RandomFlip
    from dsprep.preprocess import RandomPatch

    path, imgs, _ = h5file
    # A first step that writes into its input gets a copy of the rows, not the file's map.
    gen = HDF5Generator(path, batch_size=8, shuffle=mode, seed=1, output="uint8",
                        preprocessors=[InPlaceClip(), RandomPatch(4, 4)])
    x, _ = gen[0]
    assert gen._mapped is not None and x.min() >= 10 and x.max() <= 240
    rows = gen.batch_rows(0)
    assert imgs[rows].min() < 10 and imgs[rows].max() > 240  # the clip had work to do
    np.testing.assert_array_equal(gen._mapped.rows_of(int(rows[0]), int(rows[-1]) + 1),
                                  imgs[rows])  # the file's rows as they were
    # A cut first (here fused with a flip) reads the map; what comes out is the caller's own.
    gen = HDF5Generator(path, batch_size=8, shuffle=mode, seed=1, output="uint8",
                        preprocessors=[RandomPatch(4, 4), RandomFlip(), Unchanged()])
    x, _ = gen[0]
    assert gen._mapped is not None and x.flags.writeable
    assert not any(np.may_share_memory(x, w) for w in gen._mapped._windows.values())
    x[...] = 0  # the caller's to change
    again, _ = gen[0]
    assert again.any()


class Mirrored(InPlaceClip):
    """A user step that returns a strided view (a mirror by strides, as np.flip does)."""

    def __call__(self, batch, rng=None):
        return batch[:, :, ::-1]


@pytest.mark.parametrize("mode", ["none", "batches", "full"])
def test_a_batch_a_step_hands_back_in_place_is_not_overwritten_by_the_next(h5file, mode):
    from dsprep.preprocess import CenterCrop

    path, imgs, _ = h5file
    assert imgs.shape[1:3] == (6, 7)
    for steps in ([InPlaceClip()], [Unchanged()], [Unchanged(), Mirrored()],
                  [CenterCrop(4, 4), Mirrored()]):
        gen = HDF5Generator(path, batch_size=8, shuffle=mode, seed=1, output="uint8",
                            preprocessors=steps)
        first, _ = gen[0]
        kept = first.copy()
        second, _ = gen[1]
        np.testing.assert_array_equal(first, kept)  # the read buffer was not handed out
        assert not np.array_equal(first, second)
        assert first.flags.c_contiguous and second.flags.c_contiguous
        if isinstance(steps[0], CenterCrop):  # a new array, then a view of it
            np.testing.assert_array_equal(second, imgs[gen.batch_rows(1)][:, 1:5, 4:0:-1])
        elif isinstance(steps[-1], Mirrored):  # a view of the read buffer
            np.testing.assert_array_equal(second, imgs[gen.batch_rows(1)][:, :, ::-1])


@pytest.mark.parametrize("mode", ["none", "full"])
def test_ten_crop_pipeline_matches_a_per_image_loop(h5file, mode):
    from dsprep.preprocess import MeanSubtract, TenCrop

    path, imgs, _ = h5file
    mean = [10.0, 20.0, 30.0]
    gen = HDF5Generator(path, batch_size=8, shuffle=mode, seed=0,
                        preprocessors=[TenCrop(4, 4), MeanSubtract(mean)])
    assert gen.sample_shape == (10, 4, 4, 3)
    x, _ = gen[1]
    assert x.shape == (8, 10, 4, 4, 3) and x.dtype == np.float32
    # cut from a map of the file, in file order or scattered
    assert (gen._mapped if mode == "none" else gen._file_map) is not None
    for sample, image in zip(x, imgs[gen.batch_rows(1)], strict=True):
        ref = image.astype(np.float64) - mean
        corners = [(0, 0), (0, 3), (2, 0), (2, 3), (1, 1)]  # 6x7 image, 4x4 crops
        crops = [ref[t:t + 4, c:c + 4] for t, c in corners]
        crops += [c[:, ::-1] for c in crops]
        np.testing.assert_allclose(sample, np.stack(crops), rtol=0, atol=1e-4)


def test_real_patch_larger_than_images_fails_at_construction(h5file, class_dump):
    from dsprep.preprocess import RandomPatch

    with pytest.raises(UsageError, match="larger than the 6x7 images"):
        HDF5Generator(h5file[0], preprocessors=[RandomPatch(7, 7)])
    with pytest.raises(UsageError, match="larger"):
        DirectoryGenerator(class_dump, image_size=(16, 16), preprocessors=[RandomPatch(17, 8)])


def test_real_pipeline_is_the_same_in_a_spawned_process(h5file):
    from dsprep.augment import RandomFlip
    from dsprep.preprocess import MeanSubtract, RandomPatch

    gen = HDF5Generator(h5file[0], batch_size=8, shuffle="full", seed=77, augment=RandomFlip(),
                        preprocessors=[RandomPatch(5, 5), MeanSubtract([1, 2, 3])])
    gen.set_epoch(3)
    here = gen[4]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.apply(_batch_in_child, (pickle.dumps(gen), 4))
    np.testing.assert_array_equal(here[0], there[0])


def test_directory_generator_reports_a_dangling_link(tmp_path):
    from helpers import smooth_image, write_image

    from dsprep.generators import DirectoryGenerator

    for i in range(2):
        write_image(tmp_path / "a" / f"{i}.jpg", smooth_image(16, 16, seed=i))
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    gen = DirectoryGenerator(tmp_path, image_size=(8, 8), batch_size=2)
    assert len(gen.files) == 2
    assert [p.name for p, _ in gen.skipped] == ["gone.jpg"]


def test_rows_in_class_order_warn_with_shuffle_batches(tmp_path):
    imgs = np.zeros((240, 4, 4, 3), np.uint8)
    ordered = store.write_arrays(tmp_path / "sorted.hdf5", imgs, np.repeat([0, 1, 2], 80),
                                 ["a", "b", "c"])
    with pytest.warns(UserWarning, match=r"runs of one class .*use shuffle=\"full\""):
        HDF5Generator(ordered, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none for the modes that mix the rows, or keep them
        HDF5Generator(ordered, batch_size=8, shuffle="full")
        assert HDF5Generator(ordered, batch_size=8, shuffle=False).shuffle == "none"
        assert HDF5Generator(ordered, batch_size=8, shuffle=np.False_).shuffle == "none"
        mixed = store.write_arrays(tmp_path / "mixed.hdf5", imgs, np.arange(240) % 3,
                                   ["a", "b", "c"])
        HDF5Generator(mixed, batch_size=8)
        # A shuffled file whose few batches each hold one class by chance: no warning.
        few = store.write_arrays(tmp_path / "few.hdf5", imgs[:12],  # as a shuffled build gave
                                 [0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1], ["a", "b"])
        HDF5Generator(few, batch_size=4)
    with pytest.warns(UserWarning, match="runs of one class"):  # 9 batches, but sorted
        HDF5Generator(ordered, batch_size=24)
    with pytest.raises(UsageError, match=r"shuffle True is not one of .*\"batches\" reads"):
        HDF5Generator(ordered, shuffle=True)


# -- batches of any epoch, for loaders that index the generator in worker processes -------------


@pytest.mark.parametrize("mode,drop_last", [("none", False), ("batches", False),
                                            ("batches", True), ("full", False)])
def test_gen_epoch_index_is_that_epochs_batch_and_leaves_the_epoch(h5file, mode, drop_last):
    from dsprep.augment import RandomFlip

    gen = HDF5Generator(h5file[0], batch_size=8, shuffle=mode, drop_last=drop_last, seed=5,
                        augment=RandomFlip(), output="uint8")
    twin = HDF5Generator(h5file[0], batch_size=8, shuffle=mode, drop_last=drop_last, seed=5,
                         augment=RandomFlip(), output="uint8")
    for epoch in (3, 0, 1, 3, 7, 2):
        twin.set_epoch(epoch)
        for i in range(len(gen)):
            x, y = gen[epoch, i]
            expected_x, expected_y = twin[i]
            np.testing.assert_array_equal(x, expected_x)
            np.testing.assert_array_equal(y, expected_y)
            np.testing.assert_array_equal(gen.batch_rows(i, epoch), twin.batch_rows(i))
        assert gen.epoch == 0
    with pytest.raises(IndexError, match="negative"):
        gen[-1, 0]
    for index in ((0,), (0, 1, 2), (1.0, 0), (True, 0)):
        with pytest.raises(TypeError):
            gen[index]


def test_directory_gen_epoch_index_is_that_epochs_batch(class_dump):
    gen = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=4, seed=2, output="uint8")
    twin = DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=4, seed=2,
                              output="uint8")
    twin.set_epoch(4)
    for i in range(len(gen)):
        assert gen.batch_files(i, 4) == twin.batch_files(i)
        np.testing.assert_array_equal(gen[4, i][0], twin[i][0])
    assert gen.epoch == 0


class TorchLikeIndex:
    """What a 0-d torch tensor is to an index: not an int, but it has __index__."""

    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


def test_an_index_with_index_protocol_is_taken(h5file):
    gen = HDF5Generator(h5file[0], batch_size=8, seed=0, output="uint8")
    np.testing.assert_array_equal(gen[TorchLikeIndex(2)][0], gen[2][0])
    np.testing.assert_array_equal(gen[TorchLikeIndex(1), TorchLikeIndex(2)][0], gen[1, 2][0])
    np.testing.assert_array_equal(gen[np.array(3)][0], gen[3][0])  # a 0-d array is one number
    for one_element in (np.array([2]), np.array(True), np.bool_(True)):
        with pytest.raises(TypeError, match="a batch index is an integer"):
            gen[one_element]
    gen.set_epoch(TorchLikeIndex(2))
    assert gen.epoch == 2


_WORKER_GEN = None


def _keep_copy(blob):
    global _WORKER_GEN
    _WORKER_GEN = pickle.loads(blob)


def _rows_from_copy(index):
    return rows_of(_WORKER_GEN[index][0]).tolist()


def test_epoch_indices_reach_worker_copies_that_never_see_set_epoch(h5file):
    # Persistent worker processes (PyTorch's persistent_workers=True) keep the copy they got;
    # the indices carry the epoch to them, so every epoch gets its own order.
    from dsprep.generators import EpochIndices

    gen = HDF5Generator(h5file[0], batch_size=8, shuffle="full", seed=3, output="uint8")
    sampler = EpochIndices(gen)
    blob = pickle.dumps(gen)
    epochs = []
    with multiprocessing.get_context("spawn").Pool(2, _keep_copy, (blob,)) as pool:
        for epoch in range(3):
            indices = list(sampler)  # each new pass is the next epoch
            assert indices == [(epoch, i) for i in range(len(gen))]
            got = pool.map(_rows_from_copy, indices, chunksize=1)
            gen.set_epoch(epoch)
            assert got == [rows_of(gen[i][0]).tolist() for i in range(len(gen))]
            epochs.append(got)
    assert epochs[0] != epochs[1] != epochs[2]
    # a pass broken off (or read ahead by a loader) counts as its epoch all the same; an
    # iterator never read (a DataLoader makes one when it starts) does not
    unread = iter(sampler)
    first = iter(sampler)
    assert next(first) == (3, 0)
    assert next(iter(sampler)) == (4, 0)
    del unread
    sampler.set_epoch(1)  # named: the next pass gives it, then the count goes on from there
    assert [next(iter(sampler))[0] for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("mode", ["batches", "full"])
def test_epoch_indices_give_ranks_disjoint_batches_of_one_order(h5file, mode):
    from dsprep.generators import EpochIndices

    world = 3
    gens = [HDF5Generator(h5file[0], batch_size=4, shuffle=mode, seed=9, output="uint8")
            for _ in range(world)]  # one per process, each built by its own rank
    n = len(gens[0])  # 10 batches: 4 for each of 3 ranks, the last 2 slots padded
    for epoch in (0, 1):
        taken = []
        rows = []
        for rank, gen in enumerate(gens):
            sampler = EpochIndices(gen, rank=rank, world=world)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            assert len(indices) == math.ceil(n / world)  # the same step count everywhere
            assert {e for e, _ in indices} == {epoch}
            taken += [i for _, i in indices]
            own = indices[:len(range(rank, n, world))]  # before the padding
            rows.append({int(r) for e, i in own for r in gen.batch_rows(i, e)})
        # every batch once, and the padding repeats the first batches, as DistributedSampler does
        assert sorted(taken) == sorted([*range(n), *range(world * math.ceil(n / world) - n)])
        # one order for all ranks: their own batches part the rows
        assert set().union(*rows) == set(range(37)) and sum(map(len, rows)) == 37


def test_epoch_indices_refuse_ranks_without_a_shared_seed(h5file):
    from dsprep.generators import EpochIndices

    drawn = HDF5Generator(h5file[0], batch_size=4)
    assert len(list(EpochIndices(drawn))) == len(drawn)  # one process: any seed is fine
    with pytest.raises(UsageError, match="same seed"):
        EpochIndices(drawn, rank=0, world=2)
    seeded = HDF5Generator(h5file[0], batch_size=4, seed=1)
    with pytest.raises(UsageError, match="rank must be below world"):
        EpochIndices(seeded, rank=2, world=2)
    for kwargs in ({"rank": 1.0, "world": 2}, {"world": 0}, {"rank": -1, "world": 2}):
        with pytest.raises(UsageError, match="must be a whole number"):
            EpochIndices(seeded, **kwargs)
    # drop_last: every rank the whole rounds only (10 batches, 3 ranks: 3 each, 1 left out)
    ranks = [list(EpochIndices(seeded, rank=r, world=3, drop_last=True)) for r in range(3)]
    taken = sorted(i for indices in ranks for _, i in indices)
    assert [len(indices) for indices in ranks] == [3, 3, 3] and taken == list(range(9))
    assert pickle.loads(pickle.dumps(drawn)).seed_drawn


def test_epoch_indices_refuse_a_path_given_for_the_generator(h5file, tmp_path):
    import os
    from pathlib import Path

    from dsprep.generators import EpochIndices

    path = str(h5file[0])
    # A string is a sequence: its characters were counted as batches, without a word.
    for named in (path, Path(path), os.fsencode(path)):
        with pytest.raises(UsageError, match=r"EpochIndices takes a generator .* not the path "
                                             r".*; make one with HDF5Generator\("):
            EpochIndices(named)
    with pytest.raises(UsageError, match=r"make one with DirectoryGenerator\("):
        EpochIndices(str(tmp_path))  # a folder


def test_full_shuffle_reads_its_rows_when_the_whole_file_cannot_be_mapped(h5file, monkeypatch):
    from dsprep.preprocess import MeanSubtract, RandomPatch

    path, imgs, _ = h5file
    ops = [RandomPatch(4, 5), MeanSubtract([10, 20, 30])]
    mapped = HDF5Generator(path, batch_size=8, shuffle="full", seed=2, preprocessors=ops)
    expected = mapped[1][0]
    assert mapped._file_map is not None
    # Each sample is a window of its own row, minus the mean (not only what the other path
    # gives too).
    for sample, row in zip(expected, mapped.batch_rows(1), strict=True):
        assert matching_window(sample, imgs[row], [10, 20, 30])

    def no_room(self):
        raise OSError(12, "Cannot allocate memory")  # a 32-bit process, a tight ulimit -v

    monkeypatch.setattr(store.MappedFile, "data", no_room)
    read = HDF5Generator(path, batch_size=8, shuffle="full", seed=2, preprocessors=ops)
    np.testing.assert_array_equal(read[1][0], expected)
    assert read._file_map is None
    np.testing.assert_array_equal(read[1][0], expected)


@pytest.mark.parametrize("pipeline", ["raw", "cut"])
def test_a_file_in_runs_of_chunks_is_mapped_run_by_run(tmp_path, pipeline, monkeypatch):
    # A real build whose chunks (16 rows of 16x16: 3 pages) lie back to back up to the first
    # of HDF5's index nodes, as 256x256 ones do up to 4,160 rows: batches within a run are
    # slices of a map; the one batch across the node is read, or cut row by row.
    from dsprep.augment import RandomFlip
    from dsprep.generators import batch_rng
    from dsprep.preprocess import Compose, MeanSubtract, RandomPatch

    n = 1500
    imgs = tagged_images(n, 16, 16)
    path = tmp_path / "runs.hdf5"
    with store.HDF5Writer(path, n, (16, 16), NAMES, chunk_images=16, direct=True,
                          attrs={"split": "train", "mean_rgb": [0, 0, 0], "skipped": 0}) as w:
        w.append(imgs, np.arange(n) % 3, [f"r{i}" for i in range(n)])
    with h5py.File(path, "r") as db:
        jumps = np.flatnonzero(np.diff(store.chunk_offsets(db["images"])) != 16 * 768) + 1
    assert len(jumps) == 1  # two runs of chunks
    node = int(jumps[0]) * 16  # the first row after the node
    reads = []
    real = store.RowReader.read

    def record(self, fd, start, stop, out):
        reads.append((start, stop))
        return real(self, fd, start, stop, out)

    monkeypatch.setattr(store.RowReader, "read", record)
    ops = [RandomPatch(12, 11), RandomFlip(), MeanSubtract([10, 20, 30])]
    kwargs = {"output": "uint8"} if pipeline == "raw" else {"preprocessors": ops}
    gen = HDF5Generator(path, batch_size=24, shuffle="none", seed=5, **kwargs)
    gen[0]
    assert gen._mapped is not None and len(gen._mapped.runs) == 2
    reads.clear()
    across = [i for i in range(len(gen)) if i * 24 < node < min(n, (i + 1) * 24)]
    assert len(across) == 1
    for i in range(len(gen)):
        rows = gen.batch_rows(i)
        expected = imgs[rows] if pipeline == "raw" else Compose(ops)(imgs[rows],
                                                                       batch_rng(5, 0, i))
        np.testing.assert_array_equal(gen[i][0], expected)
    if pipeline == "raw":
        assert reads == [(across[0] * 24, (across[0] + 1) * 24)]
    else:
        assert reads == [] and gen._file_map is not None


@pytest.mark.parametrize("mode", ["batches", "full"])
def test_a_file_whose_chunks_lie_apart_is_cut_from_a_map_too(tmp_path, mode, monkeypatch):
    # A real build: HDF5's index nodes lie between every 64 or so chunks. Each row is found
    # from its chunk's offset ("batches": a batch across a node; "full": every batch).
    from dsprep.augment import RandomFlip
    from dsprep.preprocess import MeanSubtract, RandomPatch

    imgs = tagged_images(300)
    labels = np.arange(300) % 3
    path = tmp_path / "apart.hdf5"
    with store.HDF5Writer(path, 300, (6, 7), NAMES, chunk_images=2, direct=True,
                          attrs={"split": "train", "mean_rgb": [0, 0, 0], "skipped": 0}) as w:
        w.append(imgs, labels, [f"r{i}" for i in range(300)])
    with h5py.File(path, "r") as db:
        offsets = store.chunk_offsets(db["images"])
    assert len(set(np.diff(offsets).tolist())) > 1  # the chunks do not lie back to back
    ops = [RandomPatch(4, 5), RandomFlip(), MeanSubtract([10, 20, 30])]
    gen = HDF5Generator(path, batch_size=16, shuffle=mode, seed=3, preprocessors=ops)
    got = [gen[i][0] for i in range(len(gen))]
    assert gen._file_map is not None and (gen._mapped is None) == (mode == "full")
    for i in (0, len(gen) - 1):  # each sample a window of its own row (tagged images differ)
        for sample, row in zip(got[i], gen.batch_rows(i), strict=True):
            assert matching_window(sample, imgs[row], [10, 20, 30])
    monkeypatch.setattr(store.RowReader, "map_file", lambda *args, **kwargs: None)
    read = HDF5Generator(path, batch_size=16, shuffle=mode, seed=3, preprocessors=ops)
    for i, x in enumerate(got):
        np.testing.assert_array_equal(x, read[i][0])
    assert read._file_map is None


def test_a_file_without_rows_or_with_labels_past_its_names_is_a_format_error(tmp_path):
    empty = store.write_arrays(tmp_path / "empty.hdf5", np.zeros((0, 8, 8, 3), np.uint8),
                               np.zeros(0, np.int64), ["a", "b"])
    with pytest.raises(DatasetFormatError, match="has no rows"):
        HDF5Generator(empty)
    path = store.write_arrays(tmp_path / "f.hdf5", np.zeros((3, 8, 8, 3), np.uint8),
                              np.array([0, 1, 0]), ["a", "b"])
    with h5py.File(path, "r+") as f:
        f["labels"][2] = 7
    with pytest.raises(DatasetFormatError, match="labels run from 0 to 7 but there are 2"):
        HDF5Generator(path)


def test_uint8_output_refuses_a_pipeline_that_makes_floats(h5file, class_dump):
    # A model fed uint8 batches subtracts the means itself: float batches, mean subtracted
    # already, would be taken for pixels, with no error anywhere.
    from dsprep.preprocess import MeanSubtract, RandomPatch, Rescale

    path = h5file[0]
    for pipeline in ([RandomPatch(4, 4), MeanSubtract([1, 2, 3])], [Rescale(1 / 255)]):
        with pytest.raises(UsageError, match="output='uint8' hands out raw pixels, but the "
                                             r"pipeline gives float32 \(from "
                                             rf".*{type(pipeline[-1]).__name__}\("):
            HDF5Generator(path, batch_size=4, output="uint8", preprocessors=pipeline)
        with pytest.raises(UsageError, match="output='uint8' hands out raw pixels"):
            DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=4, output="uint8",
                               preprocessors=pipeline)
    x, _ = HDF5Generator(path, batch_size=4, output="uint8", seed=0,
                         preprocessors=[RandomPatch(4, 4)])[0]
    assert x.dtype == np.uint8 and x.shape == (4, 4, 4, 3)
    # Floats on the way that end as uint8 pixels are fine.
    brighter = [lambda b, r: b.astype(np.float32) * 1.1,
                lambda b, r: np.clip(b, 0, 255).astype(np.uint8)]
    gen = HDF5Generator(path, batch_size=4, output="uint8", shuffle="none",
                        preprocessors=brighter)
    x, _ = gen[0]
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(
        x, np.clip(h5file[1][:4].astype(np.float32) * 1.1, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("output", ["uint8", "float32"])
def test_batches_are_c_contiguous_whatever_layout_an_op_returns(h5file, output):
    # torch.from_numpy refuses negative strides; a transposing op (NHWC to NCHW) gave
    # batches of odd strides.
    path, imgs, _ = h5file
    for op, reference in ((lambda b, r: np.rot90(b, 1, axes=(1, 2)),
                           lambda b: np.rot90(b, 1, axes=(1, 2))),
                          (lambda b, r: b.transpose(0, 3, 1, 2),
                           lambda b: b.transpose(0, 3, 1, 2))):
        gen = HDF5Generator(path, batch_size=8, shuffle="none", output=output, preprocessors=op)
        x, _ = gen[1]
        assert x.flags.c_contiguous and all(s > 0 for s in x.strides)
        np.testing.assert_array_equal(x, reference(imgs[8:16]).astype(x.dtype))


def test_with_block_lets_go_of_the_file_and_the_threads(h5file, class_dump):
    with HDF5Generator(h5file[0], batch_size=8) as gen:
        gen[0]
        assert gen._db is not None
    assert gen._db is None
    # Written to at once: only a closed handle leaves the file free for a writer here.
    with h5py.File(h5file[0], "r+") as db:
        assert db["images"].shape[0] == 37

    with DirectoryGenerator(class_dump, image_size=(16, 16), batch_size=4, workers=2) as dgen:
        dgen[0]
        threads = [t for t in threading.enumerate() if t.name.startswith("dsprep-decode")
                   and t in dgen._pool._threads]
        assert threads and all(t.is_alive() for t in threads)
    assert not any(t.is_alive() for t in threads) and dgen._pool is None


def test_an_op_that_sometimes_changes_the_count_fails_its_batch_not_quietly(h5file):
    # Passes the one-image probe, then drops the last image of a real batch.
    def drop_last_image(batch, rng):
        return batch[:-1] if len(batch) > 1 else batch

    gen = HDF5Generator(h5file[0], batch_size=8, augment=drop_last_image)
    with pytest.raises(UsageError, match=r"turned a batch of 8 images into 7"):
        gen[0]
