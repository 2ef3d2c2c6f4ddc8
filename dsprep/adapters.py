"""Hand dsprep generators to Keras 3 (a PyDataset), to tf.data, and normalise on the accelerator.

The only generator-facing module that imports Keras; ``as_tf_dataset`` also needs TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from .errors import UsageError


class KerasDataset(keras.utils.PyDataset):
    """A ``keras.utils.PyDataset`` over a dsprep generator (or any batch sequence).

    Forwards ``len`` and indexing; pickles with its generator, so Keras can hand it to worker
    processes. Pass ``shuffle=False`` to ``model.fit``: the generator already shuffles,
    reproducibly, and Keras would otherwise also reorder the batches at random.

    Keras calls ``on_epoch_end`` once more than there are epochs (as a reset before the first
    one); the generator advances only at the end of an epoch that began, so every Keras epoch
    sees a new order. Under the JAX and PyTorch backends the first ``fit`` of a model whose
    metrics are not yet built also opens a short probing pass over the first batch, which
    counts as an epoch here; pass ``EpochSync(ds)`` in ``callbacks`` to pin the generator's
    epoch to Keras's epoch number exactly (``dsprep train`` does), whatever the backend.
    """

    def __init__(self, gen: Any, workers: int = 1, use_multiprocessing: bool = False,
                 max_queue_size: int = 10) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing,
                         max_queue_size=max_queue_size)
        self.gen = gen
        self._begun = False

    def __len__(self) -> int:
        return len(self.gen)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.gen[index]

    def on_epoch_begin(self) -> None:
        self._begun = True

    def on_epoch_end(self) -> None:
        # Keras versions without on_epoch_begin never set _begun: forward every call there.
        if self._begun or not _KERAS_BEGINS_EPOCHS:
            self.gen.on_epoch_end()
        self._begun = False


_KERAS_BEGINS_EPOCHS = hasattr(keras.utils.PyDataset, "on_epoch_begin")


class EpochSync(keras.callbacks.Callback):
    """A Keras callback that sets each generator's epoch to Keras's epoch number.

    With it, Keras epoch ``e`` (counted from ``initial_epoch`` on a resumed fit) reads
    generator epoch ``e`` under every backend, so a run's order and random draws depend only
    on the seed and the epoch. Takes generators, or the datasets ``as_keras`` made of them;
    objects without ``set_epoch`` are left alone.
    """

    def __init__(self, *datasets: Any) -> None:
        super().__init__()
        gens = (getattr(d, "gen", d) for d in datasets if d is not None)
        self.gens = [g for g in gens if hasattr(g, "set_epoch")]

    def on_epoch_begin(self, epoch: int, logs: Mapping | None = None) -> None:
        for gen in self.gens:
            if gen.epoch != epoch:
                gen.set_epoch(epoch)


def as_keras(gen: Any, workers: int = 1, use_multiprocessing: bool = False,
             max_queue_size: int = 10) -> KerasDataset:
    """Wrap a generator for ``model.fit`` / ``evaluate`` / ``predict``.

    Args:
        gen: an HDF5Generator, DirectoryGenerator or any sequence of (x, y) batches with
            ``on_epoch_end``.
        workers: batches computed at once (threads, or processes with use_multiprocessing).
        use_multiprocessing: compute batches in worker processes (forked on Linux; under the
            JAX backend, which is multithreaded, prefer threads: ``workers`` > 1 alone).
        max_queue_size: batches Keras keeps ready ahead of the model.
    """
    if workers < 0 or max_queue_size < 1:
        raise UsageError(
            f"workers must be 0 or more and max_queue_size 1 or more; received "
            f"workers={workers}, max_queue_size={max_queue_size}"
        )
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
    x_spec = tf.TensorSpec((None, *sample_shape), tf.as_dtype(np.dtype(x_dtype)))
    if getattr(gen, "one_hot", False):
        y_spec = tf.TensorSpec((None, gen.num_classes), tf.float32)
    else:
        y_spec = tf.TensorSpec((None,), tf.int32)
    return x_spec, y_spec


def as_tf_dataset(gen: Any, prefetch: int | None = None):
    """A ``tf.data.Dataset`` of the generator's batches, prefetched.

    Each iteration of the dataset runs one epoch; every iteration after the first starts
    with ``gen.on_epoch_end()``, so ``model.fit(ds, epochs=n)`` sees a new order each epoch.

    Args:
        gen: an HDF5Generator, DirectoryGenerator or any sequence of (x, y) batches.
        prefetch: batches to prefetch; None lets tf.data tune it (AUTOTUNE).
    """
    import tensorflow as tf

    signature = _signature(gen)
    started = [False]

    def epoch() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if started[0]:
            gen.on_epoch_end()
        started[0] = True
        for i in range(len(gen)):
            yield gen[i]

    ds = tf.data.Dataset.from_generator(epoch, output_signature=signature)
    # A known length lets Keras count steps instead of running into the end of the data.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(gen)))
    return ds.prefetch(tf.data.AUTOTUNE if prefetch is None else prefetch)


def mean_rgb(means: Mapping | Sequence[float] | str | os.PathLike) -> tuple[float, float, float]:
    """The (R, G, B) means from a means.json dict, a path to one, or three numbers."""
    return _read_means(means)


def _read_means(means: Any) -> tuple[float, float, float]:
    from .preprocess import load_means

    if isinstance(means, (str, os.PathLike, Mapping)):
        return tuple(float(v) for v in load_means(means))
    try:
        r, g, b = (float(v) for v in means)
    except (TypeError, ValueError) as exc:
        # Three numbers passed in code are an argument, not a file: a usage error.
        raise UsageError(f"mean_rgb needs three numbers (R, G, B); received {means!r}") from exc
    return tuple(float(v) for v in load_means([r, g, b]))


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
        self.mean_rgb = [float(v) for v in _read_means(mean_rgb)]
        self.scale = float(scale)

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
