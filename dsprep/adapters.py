"""Hand dsprep generators to Keras 3 (a PyDataset), to tf.data, and normalise on the accelerator.

The only generator-facing module that imports Keras; ``as_tf_dataset`` also needs TensorFlow.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from .errors import UsageError, whole_number
from .generators import refuse_path
from .prefetch import ReadAhead


class KerasDataset(keras.utils.PyDataset):
    """A ``keras.utils.PyDataset`` over a dsprep generator (or any batch sequence).

    Forwards ``len`` and indexing; pickles with its generator, so Keras can hand it to worker
    processes. Pass ``shuffle=False`` to ``model.fit``: the generator already shuffles,
    reproducibly, and Keras would otherwise also reorder the batches at random (and, with
    threads, ask for them out of order, which reading ahead cannot serve).

    With ``workers`` > 1 threads (not processes) the dataset reads ahead itself: while Keras
    uses batch ``i``, threads of its own compute batches ``i+1`` to ``i+workers`` (see
    ``ReadAhead``), and Keras reads the dataset in order from one thread (``ds.workers`` is 1;
    ``ds.threads`` is the number asked for; ``max_queue_size`` then plays no part). Keras's
    own thread pool passes each batch through two more threads and delivered a third as many
    batches per second (2 cores: 21,000 against 58,000 150x150 images/s). Epoch changes wait
    for the batches in flight: give ``EpochSync`` this dataset rather than its generator.

    Every pass Keras makes after the first (``fit``'s epochs, ``evaluate``, ``predict``)
    starts by moving the generator to its next epoch, as ``as_tf_dataset`` does, unless its
    epoch was set in between; the first pass counts too when an earlier dataset of the same
    generator made one (a second ``fit`` with a new dataset goes on to a new epoch; one
    generator in two datasets at once, as training and validation data, moves on at the
    passes of both: give each its own generator): so every Keras epoch sees a new order, and after
    ``model.predict(ds)`` the generator still stands at the epoch whose order ``predict``
    read (``for x, y in gen`` then gives the labels in the same order). The move is made when
    the pass asks for its first batch, in whatever order Keras asks; with ``steps_per_epoch``
    below ``len(gen)``, Keras's epochs go on through one pass of the data, and the whole pass
    reads one order (each batch once), not a new order from each Keras epoch on. With
    ``use_multiprocessing`` the generator moves on at the end of each pass instead, since
    Keras forks its worker processes before it tells the dataset that a pass begins.

    Under the JAX and PyTorch backends the first ``fit`` of a model whose metrics are not yet
    built also opens a short probing pass over the first batch, which counts as a pass here;
    pass ``EpochSync(ds)`` in ``callbacks`` to pin the generator's epoch to Keras's epoch
    number exactly (``dsprep train`` does), whatever the backend.
    """

    def __init__(self, gen: Any, workers: int = 1, use_multiprocessing: bool = False,
                 max_queue_size: int = 10) -> None:
        refuse_path(gen, type(self).__name__)
        workers = whole_number(workers, "workers")
        max_queue_size = whole_number(max_queue_size, "max_queue_size", 1)
        self.threads = workers if workers > 1 and not use_multiprocessing else 0
        super().__init__(workers=1 if self.threads else workers,
                         use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.gen = gen
        self._begun = False
        self._pass_due = False  # a Keras epoch began: decide at its first batch (see below)
        self._started = False  # a Keras epoch began once
        # The batches Keras epochs asked for since the generator last moved, or was set.
        self._served: set[int] = set()
        # Where the generator stood when the last pass over it began (see _next_pass).
        self._last = _passes_of(gen)
        # Keras versions without on_epoch_begin, and forked workers, need the move at the end.
        self._at_end = use_multiprocessing or not _KERAS_BEGINS_EPOCHS
        # Threads or not, batches go through a ReadAhead (with no threads it reads nothing
        # ahead): an epoch change then waits for a batch that TensorFlow's input thread is
        # still making. Worker processes hold their own copies.
        self._ahead = None if use_multiprocessing else ReadAhead(gen, self.threads)

    def __len__(self) -> int:
        return len(self.gen)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pass_due:
            # The first batch of a Keras epoch, decided on once: a new pass over the data if
            # the generator's epoch served it already (whatever order Keras asks in: fit
            # shuffles the batch order by default), or if nothing was served yet. With
            # steps_per_epoch below len, Keras's epochs go on through one pass, asking for
            # batches not yet served: the generator moves on only when that pass is over.
            self._pass_due = False
            if not self._served or index in self._served:
                self._served = set()
                self._change(lambda: _next_pass(self.gen, self._last))
        if self._started:  # not what Keras reads before its first epoch to learn the shapes
            self._served.add(index)
        if self._ahead is not None:
            return self._ahead.get(index)
        return self.gen[index]

    @property
    def epoch(self) -> int | None:
        return getattr(self.gen, "epoch", None)

    def set_epoch(self, epoch: int) -> None:
        """Set the generator's epoch, once no batch of the dataset is being made."""
        self._change(lambda: self.gen.set_epoch(epoch))
        self._served = set()

    def on_epoch_begin(self) -> None:
        if self._at_end:
            self._change(None)
        else:
            self._pass_due = True  # the move waits for the pass's first batch
            self._started = True
        self._begun = True

    def on_epoch_end(self) -> None:
        # Keras calls on_epoch_end once more than it makes passes (as a reset before the
        # first); Keras versions without on_epoch_begin never set _begun: every call counts.
        advance = self._at_end and (self._begun or not _KERAS_BEGINS_EPOCHS) \
            and callable(getattr(self.gen, "on_epoch_end", None))
        self._begun = False
        # An epoch that asked for no batch (TensorFlow had read the rest of the pass ahead)
        # decided nothing: a batch read before the next epoch must not move the generator.
        self._pass_due = False
        self._change(self.gen.on_epoch_end if advance else None, end=True)

    def _change(self, apply: Callable[[], None] | None, end: bool = False) -> None:
        if self._ahead is not None:
            self._ahead.change(apply, stop_threads=end)
        elif apply is not None:
            apply()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ahead"] = None  # threads and futures stay in this process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._last = _passes_of(self.gen)
        if not self.use_multiprocessing:
            self._ahead = ReadAhead(self.gen, self.threads)


_KERAS_BEGINS_EPOCHS = hasattr(keras.utils.PyDataset, "on_epoch_begin")


def _epoch_mark(gen: Any) -> tuple:
    # dsprep's generators count set_epoch calls, so setting the same epoch again counts;
    # other sequences are judged by their epoch number, if they have one.
    return getattr(gen, "epoch_sets", None), getattr(gen, "epoch", None)


# Where each generator stood when a pass over it last began, weakly by generator: shared by
# every dataset made of it, so a second fit with a new dataset does not read the epoch the
# first one ended on again.
_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _passes_of(gen: Any) -> list:
    """The shared record of ``gen``'s passes (a fresh one for what cannot be weakly keyed)."""
    try:
        return _PASSES.setdefault(gen, [])
    except TypeError:  # a list of batches: not weakly referable, nor hashable
        return []


def _next_pass(gen: Any, last: list) -> None:
    """Begin a pass over ``gen``: every pass after the first (through any dataset made of it)
    moves it to its next epoch, unless its epoch was set since the last pass began (``last``,
    from ``_passes_of``, keeps where it stood then)."""
    if last and _epoch_mark(gen) in (last[0], (None, None)):
        # Nobody set an epoch since: a new one (for a sequence that has epochs; a plain
        # list of batches just plays again).
        if callable(getattr(gen, "on_epoch_end", None)):
            gen.on_epoch_end()
    last[:] = [_epoch_mark(gen)]


class EpochSync(keras.callbacks.Callback):
    """A Keras callback that sets each generator's epoch to Keras's epoch number.

    With it, Keras epoch ``e`` (counted from ``initial_epoch`` on a resumed fit) reads
    generator epoch ``e`` under every backend, so a run's order and random draws depend only
    on the seed and the epoch. Takes generators, or the datasets ``as_keras`` made of them;
    objects without ``set_epoch`` are left alone. (With ``steps_per_epoch`` below the
    generator's length, Keras epoch ``e`` then reads epoch ``e``'s batches from where the
    last Keras epoch stopped: leave it out to read each pass in one order.) ``None`` is
    skipped; anything else with no epoch to set (a dataset made from ``as_tf_dataset``'s by
    ``map`` or ``repeat``, another library's sequence) is warned of and left alone: a resumed
    fit would read other epochs than the first run did.
    """

    def __init__(self, *datasets: Any) -> None:
        super().__init__()
        self.gens = []
        for d in datasets:
            refuse_path(d, "EpochSync")
            gen = getattr(d, "gen", d)
            if d is None:
                continue
            if not (hasattr(gen, "set_epoch") and hasattr(gen, "epoch")):
                warnings.warn(
                    f"EpochSync cannot set the epoch of a {type(d).__name__}: it has no "
                    "set_epoch, so its epochs do not follow Keras's (a resumed fit reads "
                    "other epochs than the first run did). Give EpochSync the generator itself "
                    "(a tf.data dataset made by map() or repeat() does not carry it) or the "
                    "dataset as_keras made of it.", UserWarning, stacklevel=2)
                continue
            # A dataset sets its generator's epoch itself, once none of its batches is being
            # made (it may be reading ahead on threads); a bare generator is set directly.
            self.gens.append(d if isinstance(d, KerasDataset) else gen)

    def on_epoch_begin(self, epoch: int, logs: Mapping | None = None) -> None:
        for gen in self.gens:
            if gen.epoch != epoch or isinstance(gen, KerasDataset):
                # A dataset's generator is set even at the same epoch: that counts as set,
                # so the pass reads this epoch rather than moving on from it.
                gen.set_epoch(epoch)
            elif isinstance(getattr(gen, "epoch_sets", None), int):
                # Already there: count it as set, so as_tf_dataset reads this epoch rather
                # than moving on from it, without drawing the order again.
                gen.epoch_sets += 1


def as_keras(gen: Any, workers: int = 1, use_multiprocessing: bool = False,
             max_queue_size: int = 10) -> KerasDataset:
    """Wrap a generator for ``model.fit`` / ``evaluate`` / ``predict``.

    Args:
        gen: an HDF5Generator, DirectoryGenerator or any sequence of (x, y) batches with
            ``on_epoch_end``.
        workers: batches computed at once: threads that read ahead of Keras (see
            ``KerasDataset``), or processes with use_multiprocessing.
        use_multiprocessing: compute batches in worker processes (forked on Linux; under the
            JAX backend, which is multithreaded, prefer threads: ``workers`` > 1 alone).
        max_queue_size: batches Keras keeps ready ahead of the model.
    """
    refuse_path(gen, "as_keras")
    return KerasDataset(gen, workers=workers, use_multiprocessing=use_multiprocessing,
                        max_queue_size=max_queue_size)


def _signature(gen: Any):
    import tensorflow as tf

    sample_shape = getattr(gen, "sample_shape", None)
    x_dtype = getattr(gen, "x_dtype", None)
    if sample_shape is None or x_dtype is None:
        x0, y0 = gen[0]
        x_spec = tf.TensorSpec((None, *x0.shape[1:]), tf.as_dtype(x0.dtype))
        y_spec = tf.TensorSpec((None, *y0.shape[1:]), tf.as_dtype(y0.dtype))
        return x_spec, y_spec
    # Every batch full (drop_last, or rows a multiple of the batch size): a static batch size
    # spares compiled models a second trace for a short last batch.
    batch_size = getattr(gen, "batch_size", None)
    rows = getattr(gen, "num_samples", None)
    full = batch_size is not None and rows is not None and (
        getattr(gen, "drop_last", False) or rows % batch_size == 0)
    batch = int(batch_size) if full else None
    x_spec = tf.TensorSpec((batch, *sample_shape), tf.as_dtype(np.dtype(x_dtype)))
    if getattr(gen, "one_hot", False):
        y_spec = tf.TensorSpec((batch, gen.num_classes), tf.float32)
    else:
        y_spec = tf.TensorSpec((batch,), tf.int32)
    return x_spec, y_spec


def as_tf_dataset(gen: Any, prefetch: int | None = None):
    """A ``tf.data.Dataset`` of the generator's batches, prefetched.

    Each iteration of the dataset runs one epoch; every iteration after the first (or after
    a pass of another dataset of the same generator) starts with ``gen.on_epoch_end()``, so
    ``model.fit(ds, epochs=n)`` sees a new order each epoch, unless the generator's epoch was
    set in between (``EpochSync(gen)`` in the callbacks does
    that): then the iteration reads the epoch that was set.

    Args:
        gen: an HDF5Generator, DirectoryGenerator or any sequence of (x, y) batches.
        prefetch: batches to prefetch, 0 or more; None (or ``tf.data.AUTOTUNE``, -1) lets
            tf.data tune it.
    """
    import tensorflow as tf

    refuse_path(gen, "as_tf_dataset")
    # Checked here: tf.data would refuse it only with an error from inside its graph.
    if prefetch is not None and (isinstance(prefetch, (bool, np.bool_))
                                 or not isinstance(prefetch, (int, np.integer))
                                 or prefetch < tf.data.AUTOTUNE):
        raise UsageError(f"prefetch must be a whole number of batches, 0 or more, or None (or "
                         f"tf.data.AUTOTUNE, -1) to let tf.data tune it; received {prefetch!r}")

    signature = _signature(gen)
    last = _passes_of(gen)  # where the generator stood when the previous pass began

    def epoch() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _next_pass(gen, last)
        for i in range(len(gen)):
            yield gen[i]

    ds = tf.data.Dataset.from_generator(epoch, output_signature=signature)
    # A known length lets Keras count steps instead of running into the end of the data.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(gen)))
    ds = ds.prefetch(tf.data.AUTOTUNE if prefetch is None else int(prefetch))
    # EpochSync(ds) then syncs the generator, as EpochSync(gen) does (a dataset made from
    # this one, by repeat() or map(), does not carry it: pass the generator then).
    try:
        ds.gen = gen
    except AttributeError:
        pass
    return ds


def mean_rgb(means: Mapping | Sequence[float] | str | os.PathLike) -> tuple[float, float, float]:
    """The (R, G, B) means from a means.json dict, a path to one, or three numbers."""
    from .preprocess import load_means

    return tuple(float(v) for v in load_means(means))


@keras.saving.register_keras_serializable(package="dsprep")
class MeanSubtraction(keras.layers.Layer):
    """Cast to float, subtract the RGB mean and multiply by ``scale``: ``(x - mean) * scale``.

    Put it first in a model fed with ``output="uint8"`` batches so normalisation runs on the
    accelerator and only raw bytes cross the host link. Saved models reload it by name.

    Args:
        mean_rgb: the (R, G, B) means, a means.json dict or a path to one.
        scale: a factor applied after the subtraction (e.g. 1/255 or 1/std).
    """

    def __init__(self, mean_rgb: Any, scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        from .preprocess import load_means

        self.mean_rgb = [float(v) for v in load_means(mean_rgb)]
        self.scale = float(scale)

    def build(self, input_shape) -> None:
        if len(input_shape) < 1 or input_shape[-1] not in (3, None):
            raise UsageError(f"MeanSubtraction subtracts one mean per RGB channel: its input's "
                             f"last axis must be 3, got the shape {tuple(input_shape)}")
        super().build(input_shape)

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        mean = keras.ops.convert_to_tensor(self.mean_rgb, dtype=self.compute_dtype)
        return (x - mean) * keras.ops.cast(self.scale, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"mean_rgb": list(self.mean_rgb), "scale": self.scale})
        return config
