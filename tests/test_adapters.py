"""Keras and tf.data adapters: PyDataset, tf.data.Dataset, the MeanSubtraction layer, mean_rgb."""

from __future__ import annotations

import json
import os
import pickle
import time

import numpy as np
import pytest

from dsprep import store
from dsprep.errors import DatasetFormatError, LayoutError, UsageError
from dsprep.generators import HDF5Generator

pytest.importorskip("keras", reason="the adapters need Keras 3 (the 'train' extra)")

from dsprep.adapters import EpochSync, KerasDataset  # noqa: E402  (after the skip: needs Keras)

NAMES = ["a", "b", "c"]


@pytest.fixture
def h5file(tmp_path):
    rng = np.random.default_rng(0)
    n = 45
    labels = np.arange(n) % 3
    # Each class has its own brightness so a tiny model can learn something.
    imgs = (rng.integers(0, 60, (n, 8, 8, 3)) + labels[:, None, None, None] * 90).astype(np.uint8)
    imgs[:, 0, 0, 0] = np.arange(n)  # row tag (n < 256)
    return store.write_arrays(tmp_path / "train.hdf5", imgs, labels, NAMES), imgs, labels


def needs_tf():
    return pytest.importorskip(
        "tensorflow", reason="as_tf_dataset builds a tf.data pipeline: it needs TensorFlow, "
        "which the 'train' extra installs (a JAX or PyTorch Keras has none)")


class Delivered(KerasDataset):
    """Keeps each batch handed to Keras, with the generator epoch it was handed out in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delivered = []

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        self.delivered.append((self.gen.epoch, index, x.copy()))
        return x, y


def tiny_model(keras, input_shape=(8, 8, 3), dtype="float32", head=None):
    inputs = keras.Input(input_shape, dtype=dtype)
    x = head(inputs) if head is not None else inputs
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


# -- mean_rgb ----------------------------------------------------------------------------------


def test_mean_rgb_reads_dicts_paths_and_triples(tmp_path):
    from dsprep.adapters import mean_rgb

    doc = {"R": 124.5, "G": 115.25, "B": 106, "std": {"R": 1, "G": 2, "B": 3}, "count": 9}
    path = tmp_path / "means.json"
    path.write_text(json.dumps(doc))
    assert mean_rgb(doc) == mean_rgb(path) == mean_rgb(str(path)) == (124.5, 115.25, 106.0)
    assert mean_rgb([1, 2, 3]) == (1.0, 2.0, 3.0)
    with pytest.raises(DatasetFormatError, match="no B"):
        mean_rgb({"R": 1, "G": 2})
    with pytest.raises(LayoutError, match="missing.json does not exist"):
        mean_rgb(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetFormatError):
        mean_rgb(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="expected three finite R, G, B means"):
        mean_rgb([1, 2])


def test_mean_rgb_reads_means_as_the_preprocessors_do(tmp_path):
    # One reader for means.json: what MeanSubtract refuses, the Keras layer refuses too.
    from dsprep.adapters import MeanSubtraction, mean_rgb
    from dsprep.preprocess import load_means

    path = tmp_path / "means.json"
    path.write_text('{"R": NaN, "G": 1, "B": 2}')
    for reader in (load_means, mean_rgb, MeanSubtraction):
        with pytest.raises(DatasetFormatError, match="finite"):
            reader(path)


def test_keras_layers_given_as_generator_ops_are_refused_with_where_they_go(h5file, tmp_path):
    # The mean layer is for output="uint8" batches, in the model; as a numpy op it failed
    # in Keras's own words (a ValueError about positional tensors).
    import keras

    from dsprep.adapters import MeanSubtraction
    from dsprep.generators import HDF5Generator

    path = tmp_path / "means.json"
    path.write_text('{"R": 1, "G": 2, "B": 3}')
    for layer in (MeanSubtraction(path), keras.layers.RandomFlip()):
        with pytest.raises(UsageError, match=r"is a Keras layer: put it in the model"):
            HDF5Generator(h5file[0], preprocessors=[layer])
        with pytest.raises(UsageError, match=r"is a Keras layer"):
            HDF5Generator(h5file[0], augment=layer)


# -- PyDataset ---------------------------------------------------------------------------------


def test_as_keras_forwards_and_pickles(h5file):
    import keras

    from dsprep.adapters import as_keras

    gen = HDF5Generator(h5file[0], batch_size=10, shuffle="full", seed=1)
    ds = as_keras(gen, workers=2, max_queue_size=4)
    assert isinstance(ds, keras.utils.PyDataset)
    # Two threads read ahead of Keras, which reads the dataset in order from one thread.
    assert len(ds) == 5 and ds.num_batches == 5 and ds.workers == 1 and ds.threads == 2
    np.testing.assert_array_equal(ds[1][0], gen[1][0])
    ds.on_epoch_end()  # a reset before any pass began (what Keras does first)
    ds.on_epoch_begin()
    np.testing.assert_array_equal(ds[0][0], gen[0][0])
    ds.on_epoch_end()
    assert gen.epoch == 0  # the pass's epoch stays until the next pass begins
    ds.on_epoch_begin()
    assert gen.epoch == 0  # and that is when it asks for batch 0
    np.testing.assert_array_equal(ds[0][0], gen[1, 0][0])
    assert gen.epoch == 1
    ds.on_epoch_end()
    copy = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(copy[3][0], ds[3][0])
    for size in (0, None, "4"):
        with pytest.raises(UsageError, match="max_queue_size must be .*1 or more"):
            as_keras(gen, max_queue_size=size)
    for workers in (2.5, -1, True, None, "2"):  # 2.5 used to fail only deep into an epoch
        with pytest.raises(UsageError, match="workers must be .*0 or more"):
            as_keras(gen, workers=workers)
    np.testing.assert_array_equal(as_keras(gen, workers=0)[2][0], gen[2][0])


class Slow:
    """A sequence whose batches take a while and record the thread and epoch they ran in."""

    def __init__(self, n=12, fail=None):
        import threading

        self.n, self.fail, self.epoch = n, fail, 0
        self.calls = []
        self.lock = threading.Lock()
        self.running = 0
        self.overlapped = False
        self.torn = []  # batches during which the epoch changed

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        import threading

        with self.lock:
            self.running += 1
            self.overlapped |= self.running > 1
        try:
            epoch = self.epoch
            time.sleep(0.005)
            if index == self.fail:
                raise RuntimeError(f"batch {index} failed")
            if self.epoch != epoch:
                self.torn.append(index)
            self.calls.append((epoch, index, threading.current_thread().name))
            return np.full((2, 3), 10 * epoch + index), np.array([index, index])
        finally:
            with self.lock:
                self.running -= 1

    def on_epoch_end(self):
        self.epoch += 1

    def set_epoch(self, epoch):
        self.epoch = epoch


def test_read_ahead_gives_each_batch_of_each_epoch_in_order_made_on_its_threads():
    from dsprep.adapters import as_keras

    seq = Slow()
    ds = as_keras(seq, workers=3)
    for epoch in range(2):
        ds.on_epoch_begin()
        got = [int(ds[i][0][0, 0]) for i in range(len(ds))]
        assert got == [10 * epoch + i for i in range(12)]
        ds.on_epoch_end()
    assert seq.epoch == 1  # the next pass would move it on
    made = sorted((e, i) for e, i, _ in seq.calls)
    assert made == [(e, i) for e in range(2) for i in range(12)]  # each batch made once
    assert seq.overlapped  # computed side by side
    ahead = [name for e, i, name in seq.calls if i > 0]
    assert all(name.startswith("dsprep-read-ahead") for name in ahead)


def test_an_epoch_cut_short_waits_for_the_batches_read_ahead_before_it_ends():
    from dsprep.adapters import as_keras

    seq = Slow()
    ds = as_keras(seq, workers=4)
    ds.on_epoch_begin()
    ds[0], ds[1]  # batches 2 to 5 are being read ahead
    ds.on_epoch_end()  # e.g. steps_per_epoch=2
    time.sleep(0.1)  # time for a batch still running, were there one, to record itself
    # Each batch read ahead was finished in epoch 0 or never started: none was torn between
    # two epochs, and none was made for epoch 1 before anyone asked for it.
    assert seq.epoch == 0 and seq.torn == []
    assert [i for e, i, _ in seq.calls if e == 1] == []
    ds.on_epoch_begin()
    assert int(ds[0][0][0, 0]) == 10 and int(ds[1][0][0, 0]) == 11
    assert seq.epoch == 1


def test_read_ahead_answers_out_of_order_calls_and_drops_what_it_read_for_another_epoch():
    from dsprep.adapters import ReadAhead

    seq = Slow()
    ahead = ReadAhead(seq, 2)
    assert int(ahead.get(0)[0][0, 0]) == 0  # starts 1 and 2
    assert int(ahead.get(7)[0][0, 0]) == 7  # out of order: answered directly
    assert int(ahead.get(3)[0][0, 0]) == 3
    ahead.change()
    assert int(ahead.get(0)[0][0, 0]) == 0
    assert int(ahead.get(1)[0][0, 0]) == 1  # 2 and 3 are being read ahead, in epoch 0
    seq.epoch = 5  # changed on the generator itself, not through change()
    assert int(ahead.get(2)[0][0, 0]) == 52  # not the batch read ahead in epoch 0
    assert int(ahead.get(3)[0][0, 0]) == 53
    ahead.change()
    assert not ahead._pending


def test_an_epoch_change_from_another_thread_waits_for_the_batches_in_flight():
    """TensorFlow's input thread keeps asking for batches while Keras ends an epoch and
    EpochSync sets the next on Keras's thread (fit with steps_per_epoch): no batch may be
    made across the change."""
    import threading

    from dsprep.adapters import as_keras

    seq = Slow(n=40)
    ds = as_keras(seq, workers=3)
    ds.on_epoch_begin()
    got = []
    changed = threading.Event()

    def reader():
        for i in range(40):
            if i == 20:  # however slow this thread's start, the change comes before the end
                changed.wait(30)
            got.append((i, int(ds[i][0][0, 0])))

    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + 30
    while len(got) < 4 and time.monotonic() < deadline:  # a few batches in, most to come
        time.sleep(0.001)
    ds.on_epoch_end()  # mid-pass, from this thread
    ds.on_epoch_begin()
    ds.set_epoch(1)
    changed.set()
    thread.join(30)
    time.sleep(0.05)  # time for a batch still running, were there one, to record itself
    assert seq.torn == []
    assert sorted(i for i, _ in got) == list(range(40))
    assert all(v - i in (0, 10) for i, v in got)  # each batch whole, of epoch 0 or epoch 1
    assert any(v - i == 10 for i, v in got)  # and the change came mid-pass


class Gated:
    """Batches that wait for a gate to open: the first call of batch ``i`` waits on ``gates[i]``
    if it has one (a second call, e.g. a batch read ahead again, does not)."""

    def __init__(self, n=8):
        import threading

        self.n, self.epoch = n, 0
        self.gates = {}
        self.started = {i: threading.Event() for i in range(n)}

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.started[index].set()
        gate = self.gates.pop(index, None)
        if gate is not None:
            assert gate.wait(10)
        return np.full((1, 1), 10 * self.epoch + index), np.zeros(1)

    def on_epoch_end(self):
        self.epoch += 1


@pytest.mark.parametrize("threads", [0, 2])
def test_an_epoch_change_waits_for_a_batch_being_made_on_another_thread(threads):
    import threading

    from dsprep.adapters import ReadAhead

    seq = Gated()
    gate = seq.gates[5] = threading.Event()
    ahead = ReadAhead(seq, threads)
    caller = threading.Thread(target=ahead.get, args=(5,))  # made on the caller's thread
    caller.start()
    assert seq.started[5].wait(10)
    changer = threading.Thread(target=ahead.change, args=(seq.on_epoch_end,))
    changer.start()
    changer.join(0.2)
    assert changer.is_alive() and seq.epoch == 0  # waiting for batch 5
    gate.set()
    caller.join(10)
    changer.join(10)
    assert seq.epoch == 1


@pytest.mark.parametrize("threads", [2.5, None, "2", True, -1])
def test_read_ahead_threads_must_be_a_whole_number(threads):
    from dsprep.adapters import ReadAhead

    with pytest.raises(UsageError, match="threads must be a whole number, 0 or more"):
        ReadAhead(Gated(), threads)
    assert ReadAhead(Gated(), np.int64(2)).threads == 2


def test_an_epoch_change_waits_for_a_batch_read_ahead_and_dropped_while_running():
    import threading

    from dsprep.adapters import ReadAhead

    seq = Gated()
    gate = seq.gates[2] = threading.Event()
    ahead = ReadAhead(seq, 2)
    ahead.get(0)  # reads 1 and 2 ahead; 2 waits at its gate
    assert seq.started[2].wait(10)
    seq.epoch = 3  # changed behind the reader's back: what it read ahead is dropped
    assert int(ahead.get(1)[0][0, 0]) == 31
    changer = threading.Thread(target=ahead.change, args=(seq.on_epoch_end,))
    changer.start()
    changer.join(0.2)
    assert changer.is_alive() and seq.epoch == 3  # batch 2 of epoch 0 still running
    gate.set()
    changer.join(10)
    assert seq.epoch == 4


def test_epoch_changes_from_two_threads_take_turns():
    import threading

    from dsprep.adapters import ReadAhead

    seq = Slow()
    ahead = ReadAhead(seq, 2)
    ahead.get(0)
    inside, overlaps, done = [0], [], []
    start = threading.Barrier(2)

    def apply():
        inside[0] += 1
        overlaps.append(inside[0])
        time.sleep(0.1)  # long enough for the other change to come in if it could
        inside[0] -= 1
        seq.on_epoch_end()

    def change():
        start.wait(10)
        ahead.change(apply)
        done.append(True)

    threads = [threading.Thread(target=change) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert done == [True, True] and seq.epoch == 2
    assert overlaps == [1, 1]  # never two applies at once
    assert int(ahead.get(0)[0][0, 0]) == 20


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # JAX warns about forking its threads
def test_a_forked_child_reads_ahead_afresh():
    import multiprocessing
    import threading

    from dsprep.adapters import ReadAhead

    seq = Gated()
    gate = seq.gates[2] = threading.Event()
    ahead = ReadAhead(seq, 2)
    ahead.get(0)  # batch 2 is being read ahead, and never finishes in the child
    assert seq.started[2].wait(10)

    def child(out):
        seq.gates.clear()
        out.put([int(ahead.get(i)[0][0, 0]) for i in range(4)])
        ahead.change()

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=child, args=(out,))
    proc.start()
    proc.join(30)
    if proc.is_alive():
        proc.kill()
    gate.set()
    ahead.change()
    assert proc.exitcode == 0 and out.get(timeout=5) == [0, 1, 2, 3]


def test_an_epoch_that_ends_leaves_no_read_ahead_thread_behind():
    import threading

    from dsprep.adapters import as_keras

    def threads():
        return [t for t in threading.enumerate() if t.name.startswith("dsprep-read-ahead")]

    before = set(threads())
    ds = as_keras(Slow(), workers=3)
    for _ in range(2):
        ds.on_epoch_begin()
        for i in range(len(ds)):
            ds[i]
        mine = set(threads()) - before
        assert mine
        ds.on_epoch_end()
        # Ended with the epoch, even though the dataset is kept (as tf.data keeps it).
        assert not any(t.is_alive() for t in mine)


def test_a_batch_that_fails_while_read_ahead_fails_when_it_is_asked_for():
    from dsprep.adapters import ReadAhead

    seq = Slow(fail=2)
    ahead = ReadAhead(seq, 2)
    ahead.get(0)
    ahead.get(1)
    with pytest.raises(RuntimeError, match="batch 2 failed"):
        ahead.get(2)
    # Read ahead, never asked for: dropped with its error.
    seq2 = Slow(fail=1)
    ahead2 = ReadAhead(seq2, 2)
    ahead2.get(0)
    ahead2.change()  # batch 1 failed, read ahead: nobody asked for it, nothing raised


def test_read_ahead_reads_epoch_indices_ahead_and_mixes_them_with_plain_ones(h5file):
    """(epoch, i) indices, as EpochIndices gives them for another framework's loader, used to
    fail in ReadAhead (it added 1 to the tuple), and so did a plain index after one."""
    import threading

    from dsprep.adapters import ReadAhead
    from dsprep.generators import EpochIndices

    class Recording(HDF5Generator):
        def __getitem__(self, index):
            self.read.append((index, threading.current_thread().name))
            return super().__getitem__(index)

    gen = Recording(h5file[0], batch_size=4, shuffle="full", seed=3)  # 12 batches
    gen.read = []
    plain = HDF5Generator(h5file[0], batch_size=4, shuffle="full", seed=3)
    ahead = ReadAhead(gen, 2)
    sampler = EpochIndices(gen)
    sampler.set_epoch(5)  # not the generator's epoch (0): a mix-up would show
    for index in sampler:
        x, y = ahead.get(index)
        want_x, want_y = plain[index]
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
    ahead_of = [index for index, name in gen.read if name.startswith("dsprep-read-ahead")]
    assert (5, 1) in ahead_of and (5, len(gen) - 1) in ahead_of  # read ahead, in epoch 5
    assert all(i < len(gen) for _, i in ahead_of)  # never past the epoch's last batch
    # Plain indices after (epoch, i) ones, and back: each is its own epoch's batch.
    for index in [0, 1, 2, (5, 3), (5, 4), 5, 6, (5, 7)]:
        np.testing.assert_array_equal(ahead.get(index)[0], plain[index][0])
    ahead.change()
def test_read_ahead_follows_one_ranks_indices_of_several(h5file):
    """EpochIndices(world=2) steps by two: read ahead by one, every batch after the first
    calls was dropped unused, made for nothing."""
    import threading

    from dsprep.adapters import ReadAhead
    from dsprep.generators import EpochIndices

    class Recording(HDF5Generator):
        def __getitem__(self, index):
            with self.lock:
                self.read.append(index)
                self.threads[index] = threading.current_thread().name
            return super().__getitem__(index)

    gen = Recording(h5file[0], batch_size=2, shuffle="full", seed=3)  # 23 batches
    gen.read, gen.lock, gen.threads = [], threading.Lock(), {}
    plain = HDF5Generator(h5file[0], batch_size=2, shuffle="full", seed=3)
    ahead = ReadAhead(gen, 3)
    sampler = EpochIndices(gen, rank=1, world=2)
    asked = list(sampler)
    assert len(asked) == 12
    for index in asked:
        np.testing.assert_array_equal(ahead.get(index)[0], plain[index][0])
    ahead.change()
    # Made once each, ahead or when asked for; besides them, only what the first call (whose
    # step is not known yet) and the second (a step of two, not yet seen twice) read ahead.
    made = sorted(set(gen.read))
    assert sorted(gen.read) == made
    assert set(asked) <= set(made) and len(set(made) - set(asked)) <= 3
    # From the third call on, the batches asked for on this stride were read ahead.
    on_stride = [i for i in asked[3:] if i[1] > asked[2][1]]
    assert on_stride and all(gen.threads[i].startswith("dsprep-read-ahead") for i in on_stride)


@pytest.mark.slow
@pytest.mark.parametrize("workers, multi", [(1, False), (2, False), (2, True)])
def test_fit_one_epoch_through_as_keras(h5file, workers, multi):
    import keras

    from dsprep.adapters import as_keras

    if multi and keras.backend.backend() == "jax":
        pytest.skip("JAX is multithreaded and warns that Keras's forked workers may deadlock; "
                    "the threaded case runs under JAX")
    gen = HDF5Generator(h5file[0], batch_size=16, shuffle="full", seed=2)
    model = tiny_model(keras)
    # The same steps by hand: each epoch's batches, in order (plain SGD: the weights after
    # two epochs differ for any other batch, order or epoch; the two epochs differ).
    assert not np.array_equal(gen[0, 0][0], gen[1, 0][0])
    reference = tiny_model(keras)
    reference.set_weights(model.get_weights())
    for epoch in range(2):
        for i in range(len(gen)):
            reference.train_on_batch(*gen[epoch, i])
    ds = as_keras(gen, workers=workers, use_multiprocessing=multi)
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[EpochSync(ds)])
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Epoch 1 ran last; forked workers need the move to the next epoch made as a pass ends.
    assert gen.epoch == (2 if multi else 1)


@pytest.mark.parametrize("workers", [1, 3])
def test_predict_through_as_keras_leaves_the_generator_at_the_order_it_read(h5file, workers):
    import keras

    from dsprep.adapters import as_keras

    gen = HDF5Generator(h5file[0], batch_size=10, shuffle="batches", seed=5)
    model = tiny_model(keras)
    ds = as_keras(gen, workers=workers)
    probs = model.predict(ds, verbose=0)
    assert gen.epoch == 0
    # The order predict read, as a user's loop collects the labels after it.
    x = np.concatenate([x for x, _ in gen])
    np.testing.assert_allclose(probs, model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert gen.epoch == 1  # the loop moved on as it ended: the next pass reads epoch 1
    probs = model.predict(ds, verbose=0)
    x = np.concatenate([gen[1, i][0] for i in range(len(gen))])
    np.testing.assert_allclose(probs, model.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert gen.epoch == 1


def test_epoch_sync_holds_a_dataset_at_the_epoch_it_already_stands_at(h5file):
    import keras

    from dsprep.adapters import as_keras

    gen = HDF5Generator(h5file[0], batch_size=10, shuffle="batches", seed=5)
    model = tiny_model(keras)
    ds = as_keras(gen)
    # A first fit builds the model's metrics: under JAX and PyTorch it also makes a probing
    # pass over batch 0 before the epoch, a pass of its own. Then back to epoch 0.
    model.fit(ds, epochs=1, shuffle=False, verbose=0)
    gen.set_epoch(0)
    model.fit(ds, epochs=1, shuffle=False, verbose=0)
    assert gen.epoch == 0
    # Keras's epoch 0 again: the pass reads generator epoch 0, not the one after it.
    model.fit(ds, epochs=1, shuffle=False, verbose=0, callbacks=[EpochSync(ds)])
    assert gen.epoch == 0
    model.fit(ds, epochs=1, shuffle=False, verbose=0)
    assert gen.epoch == 1


def test_as_keras_plays_a_plain_list_of_batches_every_epoch():
    import keras

    from dsprep.adapters import KerasDataset

    rng = np.random.default_rng(0)
    batches = [(rng.random((4, 8, 8, 3), np.float32), np.array([0, 1, 2, i % 3]))
               for i in range(3)]
    history = tiny_model(keras).fit(KerasDataset(batches), epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2  # the end of an epoch used to raise


class Recording(HDF5Generator):
    """Records the generator epoch each batch was served at (single process only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served = []

    def __getitem__(self, index):
        self.served.append((self.epoch, index))
        return super().__getitem__(index)


def full_epochs(gen):
    by_epoch = {}
    for epoch, index in gen.served:
        by_epoch.setdefault(epoch, set()).add(index)
    return sorted(e for e, seen in by_epoch.items() if seen == set(range(len(gen))))


@pytest.mark.parametrize("wrap", ["as_keras", "as_tf_dataset"])
def test_a_second_fit_with_a_new_dataset_goes_on_to_new_epochs(h5file, wrap):
    # Training in stages (warm up, then fit again) with as_keras(gen) made anew in each fit:
    # the second fit began with the epoch the first ended on, its order and draws again.
    import keras

    from dsprep import adapters

    if wrap == "as_tf_dataset":
        needs_tf()
    gen = Recording(h5file[0], batch_size=16, shuffle="full", seed=5)
    model = tiny_model(keras)

    def dataset():
        return adapters.as_keras(gen, workers=2) if wrap == "as_keras" else \
            adapters.as_tf_dataset(gen)

    trained = []  # the generator epoch each Keras epoch ended on

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            trained.append(gen.epoch)

    # (Under JAX and PyTorch the first fit also makes a probing pass over batch 0 before its
    # first epoch, a pass of its own: it then trains on epochs 1 and 2.)
    model.fit(dataset(), epochs=2, shuffle=False, verbose=0, callbacks=[Epochs()])
    last = trained[-1]
    assert trained == [last - 1, last] and last in full_epochs(gen)
    model.fit(dataset(), epochs=2, shuffle=False, verbose=0, callbacks=[Epochs()])
    assert trained[2:] == [last + 1, last + 2] and last + 2 in full_epochs(gen)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 3])
def test_epoch_sync_pins_generator_epoch_to_keras_epoch(h5file, workers):
    """Whatever probing pass the backend makes, Keras epoch e reads generator epoch e."""
    import keras


    def full_epochs(ds):
        by_epoch = {}
        for epoch, index, _ in ds.delivered:
            by_epoch.setdefault(epoch, set()).add(index)
        return sorted(e for e, seen in by_epoch.items() if seen == set(range(len(ds))))

    gen = Recording(h5file[0], batch_size=16, shuffle="full", seed=3)
    model = tiny_model(keras)
    ds = Delivered(gen, workers=workers)  # 3: read ahead on threads
    model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[EpochSync(ds)])
    assert full_epochs(ds) == [0, 1]
    assert {e for e, *_ in ds.delivered} == {0, 1}
    if workers == 1:
        assert {e for e, _ in gen.served} == {0, 1}  # nothing made but what was asked for
    # A resumed fit starts at its initial epoch.
    ds.delivered.clear()
    model.fit(ds, epochs=5, initial_epoch=3, shuffle=False, verbose=0,
              callbacks=[EpochSync(gen)])
    assert full_epochs(ds) == [3, 4]
    # And each batch is the one the generator makes for that epoch and index.
    fresh = HDF5Generator(h5file[0], batch_size=16, shuffle="full", seed=3)
    for epoch, index, x in ds.delivered:
        fresh.set_epoch(epoch)
        np.testing.assert_array_equal(x, fresh[index][0])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_steps_per_epoch_below_len_reads_each_pass_in_one_generator_epoch(h5file, workers,
                                                                          shuffle):
    # With steps_per_epoch < len, Keras's epochs go on through one pass of the data. Moving
    # the generator on at every Keras epoch mixed two orders in one pass: some batches
    # twice, others never (and so did batches TensorFlow read ahead between two epochs).
    import keras


    gen = HDF5Generator(h5file[0], batch_size=7, shuffle="full", seed=4, drop_last=True)
    assert len(gen) == 6
    ds = Delivered(gen, workers=workers)

    class Begin(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            ds.delivered.clear()  # Keras read a batch or two to learn their shapes

    model = tiny_model(keras)
    model.fit(ds, epochs=9, steps_per_epoch=2, shuffle=shuffle, verbose=0, callbacks=[Begin()])
    # Each pass (six batches in a row) reads every batch once, all of one generator epoch.
    delivered = [(e, i) for e, i, _ in ds.delivered]
    passes = [delivered[k:k + 6] for k in range(0, len(delivered) - 5, 6)]
    assert len(passes) == 3
    for one in passes:
        assert sorted(i for _, i in one) == list(range(len(gen)))
        assert len({e for e, _ in one}) == 1, one
    assert len({one[0][0] for one in passes}) == len(passes)  # a new order each pass
    fresh = HDF5Generator(h5file[0], batch_size=7, shuffle="full", seed=4, drop_last=True)
    for epoch, index, x in ds.delivered:
        fresh.set_epoch(epoch)
        np.testing.assert_array_equal(x, fresh[index][0])
    # A predict after a fit that stopped inside a pass reads one order whole, and leaves the
    # generator at it (the labels of a loop over it line up with the predictions).
    model.fit(ds, epochs=1, steps_per_epoch=2, shuffle=shuffle, verbose=0)
    probs = model.predict(ds, verbose=0)
    x = np.concatenate([x for x, _ in gen])
    np.testing.assert_allclose(probs, model.predict_on_batch(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_new_pass_is_decided_at_each_keras_epochs_first_batch(workers):
    # Driven as Keras drives it. A continuing epoch left the "new pass" flag set, so a later
    # batch moved the generator in the middle of a pass, or a shape-reading peek moved it
    # and the pass after moved it again (an epoch made and never read).
    from dsprep.adapters import as_keras

    seq = Slow(n=6)
    ds = as_keras(seq, workers=workers)

    def epoch_of(*indices):
        ds.on_epoch_begin()
        got = [int(ds[i][0][0, 0]) // 10 for i in indices]
        ds.on_epoch_end()
        return got

    ds.on_epoch_end()  # Keras's reset before the first epoch
    assert epoch_of(3, 4) == [0, 0]
    assert epoch_of(0, 1, 2, 5) == [0, 0, 0, 0]  # the pass goes on: no move in it
    assert epoch_of(2, 0, 5, 1, 3, 4) == [1] * 6  # a batch served already: a new pass
    assert epoch_of(0, 1) == [2, 2]
    assert epoch_of(2, 3) == [2, 2]  # continues; the flag is not left set after it
    ds[0], ds[1]  # what Keras reads to learn the shapes before predict
    assert seq.epoch == 2
    assert epoch_of(*range(6)) == [3] * 6  # predict's pass: one move, one order
    # An epoch that asks for nothing (TensorFlow read the rest of the pass ahead) leaves no
    # decision pending for the peek of the next predict or evaluate.
    assert epoch_of(0, 1) == [4, 4]
    assert epoch_of() == []
    ds[0], ds[1]
    assert seq.epoch == 4
    assert epoch_of(*range(6)) == [5] * 6


@pytest.mark.parametrize("workers", [1, 2])
def test_fit_shuffling_the_batch_order_reads_one_generator_epoch_per_keras_epoch(h5file,
                                                                                 workers):
    # fit(shuffle=True), Keras's default, asks for a PyDataset's batches in a shuffled order:
    # batch 0 comes anywhere in a pass, so it cannot be what tells a new pass.
    import keras


    class Marks(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            ds.delivered.clear()  # Keras read a batch or two to learn their shapes

        def on_epoch_end(self, epoch, logs=None):
            ds.delivered.append("end")

    gen = HDF5Generator(h5file[0], batch_size=9, shuffle="full", seed=4, drop_last=True)
    ds = Delivered(gen, workers=workers)
    tiny_model(keras).fit(ds, epochs=4, shuffle=True, verbose=0, callbacks=[Marks()])
    epochs = [[]]
    for item in ds.delivered:
        if item == "end":
            epochs.append([])
        else:
            epochs[-1].append(item)
    epochs = epochs[:-1]
    assert len(epochs) == 4
    for read in epochs:  # each Keras epoch: every batch once, of one generator epoch
        assert sorted(i for _, i, _ in read) == list(range(len(gen)))
        assert len({e for e, _, _ in read}) == 1, [(e, i) for e, i, _ in read]
    assert len({read[0][0] for read in epochs}) == 4  # a new order each
    assert any([i for _, i, _ in read] != sorted(i for _, i, _ in read) for read in epochs)


def test_epoch_sync_warns_of_what_it_cannot_sync_and_refuses_a_path(h5file):
    class Plain:
        epoch = 0

    assert EpochSync(None).gens == []  # no validation data: nothing to say
    for other in (Plain(), []):
        with pytest.warns(UserWarning, match=f"cannot set the epoch of a {type(other).__name__}: "
                          "it has no set_epoch"):
            assert EpochSync(other).gens == []
    with pytest.raises(UsageError, match="EpochSync takes a generator"):
        EpochSync(h5file[0])


# -- tf.data -----------------------------------------------------------------------------------


def test_as_tf_dataset_signature_epochs_and_fit(h5file):
    import keras
    tf = needs_tf()

    from dsprep.adapters import as_tf_dataset

    path, imgs, labels = h5file
    gen = HDF5Generator(path, batch_size=16, shuffle="full", seed=4, one_hot=True)
    ds = as_tf_dataset(gen)
    x_spec, y_spec = ds.element_spec
    assert x_spec.shape.as_list() == [None, 8, 8, 3] and x_spec.dtype == tf.float32
    assert y_spec.shape.as_list() == [None, 3] and y_spec.dtype == tf.float32
    # every batch full: the batch size is part of the signature
    for kwargs in ({"drop_last": True}, {"batch_size": 15}):
        full = HDF5Generator(path, **{"batch_size": 16, "seed": 4, **kwargs})
        x_full, y_full = as_tf_dataset(full).element_spec
        assert x_full.shape[0] == y_full.shape[0] == full.batch_size
        assert all(x.shape[0] == full.batch_size for x, _ in as_tf_dataset(full))
    epochs = []
    for _ in range(2):
        rows, ys = [], []
        for x, y in ds:
            rows += x.numpy()[:, 0, 0, 0].astype(int).tolist()
            ys.append(y.numpy())
        np.testing.assert_array_equal(np.concatenate(ys), np.eye(3)[labels[rows]])
        epochs.append(rows)
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(45))
    assert epochs[0] != epochs[1]

    model = tiny_model(keras)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    history = model.fit(ds, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_as_tf_dataset_with_epoch_sync_reads_keras_epoch_numbers(h5file):
    import keras
    needs_tf()

    from dsprep.adapters import as_tf_dataset

    class Recording(HDF5Generator):
        def __getitem__(self, index):
            self.read.append(self.epoch)
            return super().__getitem__(index)

    gen = Recording(h5file[0], batch_size=16, shuffle="full", seed=4)
    gen.read = []
    model = tiny_model(keras)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    ds = as_tf_dataset(gen, prefetch=1)
    for _ in ds.take(1):  # a look at the data first
        pass
    gen.read.clear()
    model.fit(ds, epochs=3, shuffle=False, verbose=0, callbacks=[EpochSync(gen)])
    # Keras epoch e reads generator epoch e (it used to skip one each epoch: 0, 2, 3).
    assert sorted(set(gen.read)) == [0, 1, 2] and gen.epoch == 2
    for _ in range(2):  # fits of one epoch each start again at epoch 0
        gen.read.clear()
        model.fit(ds, epochs=1, shuffle=False, verbose=0, callbacks=[EpochSync(gen)])
        assert set(gen.read) == {0}
    gen.read.clear()
    model.fit(as_tf_dataset(gen, prefetch=1), epochs=2, shuffle=False, verbose=0)
    # Without it, each iteration moves on by one, the first of a new dataset's too: the last
    # fit read epoch 0.
    assert sorted(set(gen.read)) == [1, 2]
    # The dataset passed to EpochSync stands for its generator: a resumed fit reads the
    # generator epochs of its Keras epochs, not epochs 0 and 1 again.
    gen.read.clear()
    ds = as_tf_dataset(gen, prefetch=1)
    model.fit(ds, epochs=5, initial_epoch=3, shuffle=False, verbose=0,
              callbacks=[EpochSync(ds)])
    assert sorted(set(gen.read)) == [3, 4]
    # A dataset made from it by map() does not carry the generator: said, not passed over.
    with pytest.warns(UserWarning, match="a tf.data dataset made by map"):
        assert EpochSync(ds.map(lambda x, y: (x, y))).gens == []


def test_as_tf_dataset_plays_a_plain_list_of_batches_every_epoch():
    needs_tf()
    from dsprep.adapters import as_tf_dataset

    batches = [(np.full((2, 3, 3, 3), i, np.float32), np.array([i, i])) for i in range(3)]
    ds = as_tf_dataset(batches)
    for _ in range(2):  # the second pass used to fail: a list has no on_epoch_end
        assert [int(y.numpy()[0]) for _, y in ds] == [0, 1, 2]


def test_as_tf_dataset_keeps_uint8(h5file):
    tf = needs_tf()

    from dsprep.adapters import as_tf_dataset

    gen = HDF5Generator(h5file[0], batch_size=16, shuffle="none", output="uint8", seed=0)
    x, y = next(iter(as_tf_dataset(gen, prefetch=1)))
    assert x.dtype == tf.uint8 and y.dtype == tf.int32
    np.testing.assert_array_equal(x.numpy(), h5file[1][:16])


def test_a_path_given_for_the_generator_is_refused_at_once(h5file):
    from dsprep.adapters import as_keras

    path = str(h5file[0])
    # as_keras took it, and model.fit failed on it; as_tf_dataset failed unpacking a character.
    for given in (path, h5file[0], os.fsencode(path)):
        with pytest.raises(UsageError, match=r"^as_keras takes a generator \(HDF5Generator, "
                                             r"DirectoryGenerator, or any sequence of \(x, y\) "
                                             r"batches\), not the path '.*train.hdf5'; make one "
                                             r"with HDF5Generator\('.*train.hdf5'\)$"):
            as_keras(given)
    with pytest.raises(UsageError, match="^KerasDataset takes a generator"):
        KerasDataset(path)
    needs_tf()
    from dsprep.adapters import as_tf_dataset

    with pytest.raises(UsageError, match="^as_tf_dataset takes a generator .* not the path"):
        as_tf_dataset(path)


def test_as_tf_dataset_refuses_a_prefetch_tf_data_would_refuse(h5file):
    tf = needs_tf()
    from dsprep.adapters import as_tf_dataset

    gen = HDF5Generator(h5file[0], batch_size=16, seed=0)
    for prefetch in (-3, 1.5, "2", True):  # -3 was TensorFlow's InvalidArgumentError
        with pytest.raises(UsageError, match=r"^prefetch must be a whole number of batches, 0 "
                                             r"or more, or None .*AUTOTUNE.*; received"):
            as_tf_dataset(gen, prefetch=prefetch)
    for prefetch in (tf.data.AUTOTUNE, 0, np.int64(2)):
        assert len(list(as_tf_dataset(gen, prefetch=prefetch))) == len(gen)


# -- MeanSubtraction ---------------------------------------------------------------------------


def test_mean_subtraction_layer_matches_numpy_and_round_trips(h5file, tmp_path):
    import keras

    from dsprep.adapters import MeanSubtraction, as_keras

    mean = {"R": 100.5, "G": 50.25, "B": 10.0}
    layer = MeanSubtraction(mean, scale=0.5)
    batch = np.random.default_rng(3).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    out = keras.ops.convert_to_numpy(layer(batch))
    expected = (batch.astype(np.float64) - np.array([100.5, 50.25, 10.0])) * 0.5
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    # Three means broadcast over one channel would make three: refused as the model is built.
    with pytest.raises(UsageError, match="last axis must be 3, got the shape .None, 4, 5, 1"):
        MeanSubtraction(mean)(keras.Input((4, 5, 1)))

    gen = HDF5Generator(h5file[0], batch_size=16, shuffle="batches", output="uint8", seed=0)
    model = tiny_model(keras, dtype="uint8", head=MeanSubtraction(mean, scale=1 / 64))
    model.fit(as_keras(gen), epochs=1, shuffle=False, verbose=0)
    x, _ = gen[0]
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    restored = [lay for lay in loaded.layers if isinstance(lay, MeanSubtraction)]
    assert len(restored) == 1
    assert restored[0].mean_rgb == [100.5, 50.25, 10.0] and restored[0].scale == 1 / 64
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-6, atol=1e-6)

