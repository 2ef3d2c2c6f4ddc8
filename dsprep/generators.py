"""Batch generators over a dsprep HDF5 file or a folder of class sub-folders.

Both are framework-free, fork-safe sequences of ``(x, y)`` batches (docs/formats.md, "Batches"); the
adapters module turns them into Keras and tf.data inputs.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import pickle
import sys
import threading
import unicodedata
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from . import images, sources, store, system
from .augment import flag
from .errors import (
    CorruptImageError,
    DatasetFormatError,
    DsprepError,
    LayoutError,
    UnlistedClassError,
    UsageError,
    as_integer,
    whole_number,
)
from .fileio import access_denied, progress_bar, refuse_empty_path
from .preprocess import Compose, Gathered, Loader
from .split import (
    SPLITS,
    read_split_classes,
    refuse_unfinished_split,
    skip_reason,
    split_pixel_limit,
)

SHUFFLE_MODES = ("none", "batches", "full")
OUTPUTS = ("float32", "uint8")
CHECKS = ("decode", "header")  # how DirectoryGenerator checks its files when it is built

# Distinct first words in the seed sequence's spawn key keep the streams apart.
_ORDER_KEY, _BATCH_KEY, _PROBE_KEY = 0, 1, 2

# Guards the lazy per-process opening of HDF5 handles; re-made in a forked child because a
# thread of the parent may have held it at the moment of the fork.
_OPEN_LOCK = threading.Lock()


def _reinit_open_lock() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_open_lock)


def _build_stamp(db: h5py.File) -> tuple:
    """What tells one build's pixels from another's: the channel statistics computed from them
    and the options that made them (a build of the same rows again gives the same)."""
    stamp = []
    for key in ("mean_rgb", "std_rgb", "resize", "interpolation", "exact", "image_size"):
        value = db.attrs.get(key)
        # As bytes: a NaN equals itself there.
        stamp.append(None if value is None else (np.asarray(value).dtype.str,
                                                  np.asarray(value).tobytes()))
    return tuple(stamp)


def _changed(db: h5py.File, images: h5py.Dataset, rows: int, shape: tuple, labels: np.ndarray,
             built: tuple) -> str | None:
    """How the file ``db`` differs from the build a generator was made from, or None."""
    if int(images.shape[0]) != rows or tuple(images.shape[1:]) != shape:
        return (f"it holds {int(images.shape[0])} images of {images.shape[1:]}, not {rows} of "
                f"{shape}")
    if not np.array_equal(np.asarray(db["labels"][()], dtype=np.int64), labels):
        return "its labels differ"
    if _build_stamp(db) != built:
        # The same rows, shape and labels but other pixels (--resize pad for crop): this
        # process would read other images than the one the generator was made in.
        return "its pixels differ: other channel statistics or build options"
    return None


def batch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator for batch ``index`` of ``epoch``: the same in every process."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_BATCH_KEY, epoch, index)))


def _order_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_ORDER_KEY, epoch)))


def _whole(value: object, what: str) -> int:
    """A batch index or an epoch in an index, as an int (else a TypeError, as for a list)."""
    number = as_integer(value)
    if number is None:
        raise TypeError(f"{what} is an integer, got {value!r}; ask for one batch at a time, "
                        "gen[i] or gen[epoch, i]")
    return number


def refuse_path(gen: object, who: str) -> None:
    """Refuse a path given where a generator goes (``who`` names the callee). A string is a
    sequence too: taken for one, it would fail far from the call (inside ``model.fit``), or
    not at all (its length counted as batches)."""
    if isinstance(gen, (str, bytes, os.PathLike)):
        path = os.fsdecode(gen)
        maker = "DirectoryGenerator" if os.path.isdir(path) else "HDF5Generator"
        raise UsageError(f"{who} takes a generator (HDF5Generator, DirectoryGenerator, or any "
                         f"sequence of (x, y) batches), not the path {path!r}; make one with "
                         f"{maker}({path!r})")


def _called_wrongly(op, x: np.ndarray, rng: np.random.Generator, exc: TypeError) -> bool:
    """Whether ``op(x, rng)`` failed with ``exc`` for how it was called, not inside: raised by
    the call itself (a Keras layer's ``__call__``), or the op (or the function a decorator
    wraps) takes no ``(batch, rng)``."""
    if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
        return True
    try:
        inspect.signature(op).bind(x, rng)
    except TypeError:
        return True
    except ValueError:  # no signature to read (a builtin)
        return False
    return False


def _count_changed(op, before: int, after: int) -> str:
    return (f"{op!r} turned a batch of {before} images into {after}; augment and each "
            "preprocessor keep one image for each label (for more images per epoch, use a "
            "larger batch_size or more epochs)")


def _probe_batch(shape: tuple[int, ...]) -> np.ndarray:
    """A one-image batch with varied pixels (a constant image would upset normalisations)."""
    size = int(np.prod(shape))
    return (np.arange(size, dtype=np.int64) * 37 % 251).astype(np.uint8).reshape((1, *shape))


def _op_tuple(ops, name: str) -> tuple:
    """One operation, a sequence of them (applied in order), or None, as a tuple."""
    if ops is None:
        return ()
    if callable(ops):
        return (ops,)
    if isinstance(ops, (str, bytes)) or not isinstance(ops, Iterable):
        raise UsageError(f"{name} must be an operation called as op(batch, rng), or a list of "
                         f"them; received {ops!r}")
    return tuple(ops)


class _BatchSequence(ABC):
    """What both generators share: batching, epochs, randomness, the preprocessing pipeline."""

    def __init__(
        self,
        *,
        batch_size: int,
        preprocessors: Sequence[Callable] | Callable,
        augment: Callable | Sequence[Callable] | None,
        one_hot: bool,
        seed: int | None,
        drop_last: bool | str,
        output: str,
    ) -> None:
        size = as_integer(batch_size)
        if size is None or size < 1:
            raise UsageError(f"batch_size must be a positive integer; received {batch_size!r}")
        if output not in OUTPUTS:
            raise UsageError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")
        ops = _op_tuple(preprocessors, "preprocessors")
        augments = _op_tuple(augment, "augment")
        for op in ops + augments:
            if isinstance(op, type):
                raise UsageError(f"preprocessor {op.__name__} is a class; pass an instance, "
                                 f"such as {op.__name__}(...)")
            if not callable(op):
                raise UsageError(
                    f"preprocessor {op!r} is not callable; pass objects called as op(batch, rng)"
                )
            if any(c.__module__.split(".")[0] == "keras" for c in type(op).__mro__):
                # Called as layer(batch, rng) it fails in Keras's words, which do not say this.
                raise UsageError(
                    f"{op!r} is a Keras layer: put it in the model (first, so it runs on the "
                    "accelerator), not in augment or preprocessors, which run numpy ops called "
                    "as op(batch, rng)")
        flag(one_hot, "one_hot")
        if not (isinstance(drop_last, (bool, np.bool_)) or drop_last == "auto"):
            raise UsageError(f"drop_last must be True, False or \"auto\"; received {drop_last!r}")
        self.batch_size = size
        self.preprocessors = ops
        # The tuple, not the argument: a generator expression given would not pickle.
        self.augment = augments
        self._augments = augments
        self.one_hot = bool(one_hot)
        self._drop_last_asked = drop_last
        self.drop_last = drop_last == "auto" or bool(drop_last)  # "auto": settled once counted
        self.output = output
        seed_value = None if seed is None else as_integer(seed)
        if seed is not None and (seed_value is None or seed_value < 0):
            # 1.7 would quietly become 1, and "3" a different stream than 3.
            raise UsageError(f"seed must be a non-negative integer; received {seed!r}")
        self.seed = int(np.random.SeedSequence().entropy if seed is None else seed_value)
        self.seed_drawn = seed is None  # drawn here: another process's copy draws another
        self._epoch = 0
        self._current: tuple[int, object] = (0, None)  # (epoch, its order), read as one
        self._read_part_way: int | None = None  # see __iter__
        self._orders: dict[int, object] = {}  # orders of other epochs asked for by (epoch, i)
        self.epoch_sets = 0  # set_epoch calls so far (on_epoch_end's included)
        # Batches read by plain index in the current epoch (as of epoch_sets), to warn of a
        # loader that reads epoch after epoch without moving it on (see _note_plain_read).
        self._plain_reads: tuple[int, set[int]] = (0, set())
        self._warned_repeat = False
        self._checked_in: int | None = None  # the process that looked for a torch reader
        self._torch_reads = False  # whether a torch DataLoader reads this process's copy
        self.label_names: list[str] = []
        self.image_shape: tuple[int, int, int] = (0, 0, 3)
        self.sample_shape: tuple[int, ...] = ()
        self.x_dtype = np.dtype(np.float32)
        ops_all = self._ops()
        if ops_all and all(callable(getattr(op, "output_shape", None)) for op in ops_all):
            # Compose fuses adjacent crop / flip / mean steps into one pass (same batches).
            self._steps: tuple[Callable, ...] = (Compose(ops_all),)
        else:
            self._steps = ops_all

    # What the constructor was given: the pipeline, the epoch orders and the batch shapes
    # follow from it there, so a later change would be ignored or give wrong batches.
    _FIXED = frozenset({"batch_size", "preprocessors", "augment", "shuffle", "one_hot",
                        "drop_last", "output", "seed", "path", "root", "image_size", "resize"})

    def __setattr__(self, name: str, value) -> None:
        if name in self._FIXED and self.__dict__.get("_made"):
            raise AttributeError(
                f"{type(self).__name__}.{name} is fixed when the generator is made (its "
                f"batches and pipeline follow from it); make a new generator with "
                f"{name}=... instead")
        super().__setattr__(name, value)

    def __reduce_ex__(self, protocol):
        # Pickling (to another process), not copying: copy.copy and deepcopy come below.
        self._refuse_unpicklable_ops()
        return super().__reduce_ex__(protocol)

    # A copy in this process takes the ops as they are (a lambda copies by reference), and
    # the state as __getstate__ gives it, a subclass's own included.
    def __copy__(self):
        new = object.__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new

    def __deepcopy__(self, memo: dict):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def _refuse_unpicklable_ops(self) -> None:
        """Name an op that keeps the generator from being pickled (to a spawned worker
        process: the default on macOS and Windows), instead of pickle's own words."""
        for op in self.preprocessors + self.augment:
            try:
                pickle.dumps(op)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise pickle.PicklingError(
                    f"{type(self).__name__} cannot go to another process: its op {op!r} "
                    f"cannot be pickled ({exc}); define it with def at a module's top level "
                    "(or as functools.partial of such a function, or a class's instance) to "
                    "use the generator in worker processes") from exc

    # What one process makes for itself (open files, thread pools): never pickled, and made
    # again by _reset_process_state where the generator is unpickled (a worker process).
    _PROCESS_STATE: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in self._PROCESS_STATE}
        state["_orders"] = {}  # a cache: each process draws what it is asked for
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    @abstractmethod
    def _reset_process_state(self) -> None:
        """Make this process's own state afresh (see _PROCESS_STATE)."""

    # -- the sequence protocol -------------------------------------------------------------

    @property
    @abstractmethod
    def num_samples(self) -> int:
        """Rows (images) in one epoch's source, before any drop_last."""

    @property
    def classes(self) -> list[str]:
        """The class names in label-id order (same as ``label_names``)."""
        return self.label_names

    @property
    def num_classes(self) -> int:
        """How many classes the labels index."""
        return len(self.label_names)

    def _settle_drop_last(self) -> None:
        """Turn drop_last="auto" into True or False, once the rows are known: the short last
        batch is left out unless the rows are fewer than one batch."""
        if self._drop_last_asked == "auto":
            self.drop_last = self.num_samples >= self.batch_size

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Run one epoch; when the loop completes, move on to the next epoch's order.

        A loop left part way (``break`` after some steps, ``zip(range(steps), gen)``) moves
        on when the next loop starts, unless ``set_epoch`` named an epoch, or a pass by index
        (a Keras pass: ``predict``) read up to the last batch, in between: each loop reads a
        new order and new random draws, as a loop read to its end does.

        The epoch belongs to the generator: loops over it in two threads at once would move
        it under each other. Threads share one generator by indexing it (``gen[i]``, safe
        from any thread), each loop of its own needs a generator of its own.
        """
        # epoch_sets as the loop read its first batch: unchanged since, no epoch was set.
        if getattr(self, "_read_part_way", None) == self.epoch_sets:
            self.on_epoch_end()
        self._read_part_way = None
        for i in range(len(self)):
            batch = self[i]
            self._read_part_way = self.epoch_sets
            yield batch
        self._read_part_way = None
        self.on_epoch_end()

    @property
    def epoch(self) -> int:
        """The current epoch (``gen[i]`` reads its batches); setting it is ``set_epoch``."""
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    @abstractmethod
    def __getitem__(self, index: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch as ``(x, y)``; ``gen[epoch, index]`` gives
        that batch of any epoch without changing ``gen.epoch`` (see :class:`EpochIndices`)."""

    @abstractmethod
    def close(self) -> None:
        """Let go of what this process holds for reading (it is taken again on the next batch)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def on_epoch_end(self) -> None:
        """Advance to the next epoch: a new order, new random draws."""
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch`` (its order and random draws depend only on seed and epoch)."""
        self._epoch = whole_number(epoch, "epoch")
        self.epoch_sets += 1
        self._shuffle_order()

    def _shuffle_order(self) -> None:
        """Draw this epoch's order from the seed and the epoch."""
        self._current = (self.epoch, self._draw_order(self.epoch))

    @abstractmethod
    def _draw_order(self, epoch: int) -> object:
        """The order of ``epoch``, from the seed and the epoch alone."""

    def _order_of(self, epoch: int) -> object:
        """The order of ``epoch``: the current one's, or one drawn (and kept) for the asking."""
        current_epoch, order = self._current
        if current_epoch == epoch:
            return order
        orders = self._orders  # a dict: its single steps need no lock, and a race only draws twice
        order = orders.get(epoch)
        if order is None:
            order = self._draw_order(epoch)
            if len(orders) >= 4:
                orders.clear()
            orders[epoch] = order
        return order

    def _resolve(self, index: int | tuple[int, int]) -> tuple[int, int]:
        """``(epoch, batch)`` of an index: ``i`` in the current epoch, or ``(epoch, i)``.

        The last batch asked for by index ends a pass read otherwise than by a loop (a
        Keras pass, ``predict``): a loop left part way before it (a peek at the first batch)
        no longer moves the next loop on, which reads the order that pass read. A look at
        another batch (``gen[0]`` between capped loops) leaves the loop to move on.
        """
        plain = not isinstance(index, tuple)
        if not plain:
            if len(index) != 2:
                raise TypeError(f"a batch index is i or (epoch, i), got {index!r}")
            epoch, index = index
            epoch = _whole(epoch, "an epoch")
            if epoch < 0:
                raise IndexError(f"epoch {epoch} is negative")
        else:
            epoch = self._current[0]
        index = self._check_index(index)
        if index == len(self) - 1:
            self._read_part_way = None
        if plain:
            self._note_plain_read(index)
        return epoch, index

    def _note_plain_read(self, index: int) -> None:
        """Warn, once, of a torch DataLoader reading batches by plain index, which repeats
        one epoch over and over: in the main process (``num_workers=0``), a batch read again
        after every batch of the epoch, with nothing moving the epoch on; in a worker, a
        generator whose epoch was never set (its copies, made afresh each epoch, read epoch
        0 every time). Other readers by index (Keras, ``ten_crop_predict``) move the epoch as
        they mean to, or read one epoch on purpose."""
        if self._warned_repeat:
            return
        if self._checked_in != os.getpid():
            self._checked_in = os.getpid()
            self._torch_reads = _read_by_torch()
            data = sys.modules.get("torch.utils.data")
            if self._torch_reads and self.epoch_sets == 0 and data is not None \
                    and data.get_worker_info() is not None:
                self._warn_repeat("a DataLoader worker reads batches by plain index from a "
                                  "generator whose epoch was never set")
                return
        if not self._torch_reads:
            return
        sets, seen = self._plain_reads
        if sets != self.epoch_sets:
            sets, seen = self.epoch_sets, set()
            self._plain_reads = (sets, seen)
        if index in seen and len(seen) >= len(self):
            self._warn_repeat(f"batch {index} of epoch {self.epoch} was read again after every "
                              "batch of that epoch, and nothing moved the epoch on")
        seen.add(index)

    def _warn_repeat(self, what: str) -> None:
        self._warned_repeat = True
        warnings.warn(f"{type(self).__name__}: {what}: every epoch then reads the same batches "
                      "and random draws. Give the DataLoader sampler=EpochIndices(gen) (or call "
                      "gen.set_epoch(epoch) before each epoch, without persistent workers)",
                      RuntimeWarning, stacklevel=5)

    def _check_index(self, index: int) -> int:
        n = len(self)
        index = _whole(index, "a batch index")
        if -n <= index < n:
            return index % n
        raise IndexError(f"batch index {index!r} is out of range for {n} batches")

    # -- the pipeline ----------------------------------------------------------------------

    def _ops(self) -> tuple[Callable, ...]:
        return self._augments + self.preprocessors

    def _check_pipeline(self) -> None:
        """Run the shapes and one small batch through the pipeline so a misfit fails now."""
        # Each output_shape refuses, in its own words, a shape it cannot take (a patch larger
        # than the images): the shapes alone, before any pixel, up to the first op that does
        # not say what shape it gives (it may resize); the probe batch checks the rest.
        shape: tuple[int, ...] = tuple(self.image_shape)
        for op in self._ops():
            output_shape = getattr(op, "output_shape", None)
            if output_shape is None:
                break
            shape = tuple(output_shape(shape))
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_PROBE_KEY,)))
        x = _probe_batch(self.image_shape)
        converted = None
        for op in self._steps:
            n = len(x)
            try:
                x = op(x, rng)
                if not isinstance(x, np.ndarray):
                    raise UsageError(
                        f"{op!r} returned {type(x).__name__}, not a numpy batch; augment and "
                        "each preprocessor return the batch (an op that changes it in place "
                        "returns it too)")
                if len(x) != n:
                    raise UsageError(_count_changed(op, n, len(x)))
                if converted is None and x.dtype != np.uint8:
                    converted = op
            except TypeError as exc:
                if not _called_wrongly(op, x, rng, exc):
                    raise  # raised inside the op: its own error, not how it was called
                raise UsageError(
                    f"{op!r} failed on a batch of shape {x.shape} ({exc}); augment and each "
                    "preprocessor are called as op(batch, rng), with a numpy batch of "
                    "(B, H, W, C) images and a numpy.random.Generator, and return the batch "
                    "(wrap a function of the batch alone in one: def op(batch, rng): return "
                    "f(batch), at a module's top level so the generator pickles to worker "
                    "processes; a lambda does not)"
                ) from exc
        if self.output == "uint8" and x.dtype != np.uint8:
            # A model fed uint8 batches (with its own mean layer) would take these for pixels.
            raise UsageError(
                f"output='uint8' hands out raw pixels, but the pipeline gives {x.dtype} (from "
                f"{converted!r} on); leave out output='uint8' for float batches, or leave the "
                "float step to the model (dsprep.adapters.MeanSubtraction subtracts the means)")
        self.sample_shape = tuple(int(s) for s in x.shape[1:])
        self.x_dtype = np.dtype(np.float32) if self.output == "float32" else x.dtype

    def _finish(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        epoch: int,
        index: int,
        scratch: np.ndarray | None = None,
        load: Loader | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Apply augment and preprocessors to a raw uint8 batch and shape the labels.

        With ``load``, ``x`` is still unread: the fused pipeline (a single Compose step) reads
        it range by range as it cuts (``preprocess.Loader``).
        """
        if load is not None and not self._lazy_steps():
            load(0, len(x))
            load = None
        if self._steps:
            rng = batch_rng(self.seed, epoch, index)
            if load is not None:
                x = self._steps[0](x, rng, load=load)
            else:
                for op in self._steps:
                    x = op(x, rng)
        if len(x) != len(labels):  # an op that changes the count only sometimes
            raise UsageError(_count_changed(self._steps, len(labels), len(x)))
        if self.output == "float32" and x.dtype != np.float32:
            x = x.astype(np.float32, order="C")
        elif scratch is not None and np.may_share_memory(x, scratch):
            # Never hand out the reusable read buffer: the next batch would overwrite it.
            x = np.array(x, copy=True, order="C")
        if not x.flags.c_contiguous:
            # An op of the caller's that transposes or mirrors by strides (NCHW for PyTorch,
            # np.rot90): torch.from_numpy refuses negative strides, and tf.data copies anyway.
            x = np.ascontiguousarray(x)
        return x, self._labels_out(labels)

    def _lazy_steps(self) -> bool:
        """Whether the pipeline is one Compose, which can read a batch while it cuts it."""
        return len(self._steps) == 1 and isinstance(self._steps[0], Compose)

    def _cuts_first(self) -> bool:
        """Whether the pipeline starts with a cut, which never writes into its input."""
        return self._lazy_steps() and self._steps[0].cuts_first

    def _labels_out(self, labels: np.ndarray) -> np.ndarray:
        if not self.one_hot:
            return labels.astype(np.int32, copy=True)
        y = np.zeros((len(labels), self.num_classes), dtype=np.float32)
        y[np.arange(len(labels)), labels] = 1.0
        return y


class HDF5Generator(_BatchSequence):
    """Batches ``(x, y)`` from a dsprep HDF5 file, with preprocessing on whole batches.

    ``x`` is ``(B, *sample_shape)`` float32 (``output="float32"``) or uint8 pixels
    (``output="uint8"``, for crops, flips and other ops that keep them uint8); ``y`` is
    int32 labels ``(B,)`` or one-hot float32 ``(B, C)``. The last batch of an epoch is short
    when the row count is not a multiple of ``batch_size``, unless ``drop_last``.

    ``augment`` runs first, on the raw uint8 pixels, then ``preprocessors`` in order; each is
    called as ``op(batch, rng)`` with ``rng`` drawn from ``(seed, epoch, batch index)``, so a
    batch is the same whichever process computes it. Ops that declare ``output_shape`` run as
    one ``dsprep.preprocess.Compose``, which fuses a crop with a following horizontal flip and
    a mean subtraction into one pass (measured: a flip as ``augment`` before the crop costs
    about the same).

    Shuffle modes and their speed (256x256 rows, warm page cache, batches of 128, one process,
    2 shared cores; tools/bench/bench_generators.py):

    - ``"none"``: contiguous slices in file order, copied into the batch in one call: ~40,000
      uint8 images/s, 0.85-0.99 of a plain ``np.copyto`` from memory (where the rows lie back
      to back, below; about half that where they are read); the patch + flip + mean
      pipeline 9,900-22,400 float32 images/s (bound by memory bandwidth: 79 MB per batch).
    - ``"batches"``: the same contiguous reads, the order of the batches shuffled each epoch
      (the short tail batch stays last; with ``drop_last`` the batches start at a random row
      each epoch and run round the end of the file, so the few rows left out are any rows,
      each as likely as another). Same speed as "none". It relies on the rows being mixed, as
      build-hdf5's default ``--order shuffled`` leaves them; on rows in runs of one class
      (``--order sorted``) the generator warns, since each batch would hold one class.
    - ``"full"``: every batch drawn from anywhere in the file. Cut from the mapped file (below)
      it runs about as fast as "batches" through the patch + flip + mean pipeline (0.62-1.31
      of it, 0.8-1.1 in most runs); where the rows are read instead (compressed files, a
      pipeline that does not start with a cut), each batch's rows are read in file order into
      their places in the batch, at 0.48-0.97 of "batches". With lzf/gzip every chunk a
      batch touches is decompressed once, so prefer uncompressed files for "full". (h5py
      fancy indexing, which this avoids, reads ~100 rows/s.)

    Rows of an uncompressed file are read outside h5py's process-wide lock, so several
    threads (Keras's workers) read side by side. For "none" and "batches", a batch whose rows lie
    back to back in the file is a slice of a read-only memory map of it (a few windows of ~256 MB
    mapped at a time, ``dsprep.store.MappedRows``). A build lays its chunks so in runs (4,160 then
    3,648 rows of 256x256 at the default 64 per chunk) with one of HDF5's index nodes between two
    runs, so all but about one batch in 30 are such slices; chunks of rows that are no multiple of 4
    KiB (227x227) are padded apart, so only batches within one chunk are. A pipeline that starts
    with a cut (a crop fused with a flip or a mean, or a ten-crop) cuts its windows straight from
    the slice, with no copy in between; raw batches and any other pipeline copy the batch out of it
    (in one call, which for a batch over ~20 MB uses stores that bypass the caches: about twice the
    speed of a read into the batch on one 2-core host). Otherwise ("full", or a batch across two
    runs) a cut takes each window from its row where it lies in one map of the whole file
    (``dsprep.store.MappedFile``), and other pipelines read the rows with ``os.preadv`` at their
    offsets (``dsprep.store.RowReader``), as every pipeline does where no map can be made (no
    address space for one); compressed files go through h5py. The maps hold the file, so a new build
    replacing the path does not disturb them. A copy written over the same file in place (``cp``
    or ``rsync --inplace``) is noticed at the next batch (one ``fstat`` a batch) and refused
    with a :class:`~dsprep.errors.DatasetFormatError`; a batch read while the copy truncates
    the file, or an I/O error
    under a map, stops the process with SIGBUS rather than an error (a Keras worker process so
    stopped leaves ``fit`` waiting for it).

    The file is opened lazily in each process, read-only, with HDF5's shared read lock taken
    where the file system supports it (``locking="best-effort"``: any number of readers, no
    writer; a dsprep file with its final name never has one, builds write ``NAME.partial``).
    So the generator is safe to pickle, fork (Keras ``use_multiprocessing=True``) and share
    between several trainings reading the same file, and other readers in the same process
    open the file as usual. A file found at the path with other rows, another image shape or
    other labels than at construction (built again in its place) is refused when opened.
    Each process opens the path for itself, so a new build replacing the file keeps its
    old rows only for the processes that had opened it: Keras's worker processes
    (``use_multiprocessing=True``), started anew each epoch, refuse the new build at the
    next epoch, and ``fit`` stops with that error (threads, ``dsprep train``'s way, read on
    from the old file). Rebuild into another folder while a training reads.

    Args:
        path: a dsprep HDF5 file.
        batch_size: rows per batch.
        preprocessors: batch operations applied in order (or one callable, or None).
        augment: a random batch operation applied first, to the uint8 pixels (or a list of
            them, applied in order).
        shuffle: "none" (or False), "batches" or "full" (see above).
        one_hot: one-hot float32 labels instead of int32 ids.
        seed: the seed for orders and random draws; None draws one now.
        drop_last: leave out the final short batch; "auto" leaves it out unless the
            generator holds fewer images than one batch (then its one batch is short).
        output: "float32" (x is always cast) or "uint8" (raw pixels; a pipeline that makes
            floats is refused).

    Raises:
        LayoutError: the file does not exist.
        DatasetFormatError: it is not HDF5 or not dsprep's schema, has no rows, or labels
            outside its label names; also later, when a batch is read, if the file at the path
            has changed since (see above).
        UsageError: a bad argument, or a preprocessor that does not fit the images.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int = 128,
        preprocessors: Sequence[Callable] | Callable = (),
        augment: Callable | Sequence[Callable] | None = None,
        shuffle: str = "batches",
        one_hot: bool = False,
        seed: int | None = None,
        drop_last: bool | str = False,
        output: str = "float32",
    ) -> None:
        super().__init__(batch_size=batch_size, preprocessors=preprocessors, augment=augment,
                         one_hot=one_hot, seed=seed, drop_last=drop_last, output=output)
        if isinstance(shuffle, (bool, np.bool_)) and not shuffle:
            shuffle = "none"
        if isinstance(shuffle, (bool, np.bool_)) or shuffle not in SHUFFLE_MODES:
            raise UsageError(f"shuffle {shuffle!r} is not one of {', '.join(SHUFFLE_MODES)} "
                             "(or False): \"batches\" reads whole batches, \"full\" any rows")
        # Absolute: a process that changes its working folder later still finds the file.
        # A path in bytes (as os.fsencode gives) is decoded as the file system does.
        self.path = Path(os.fsdecode(path)).absolute()
        self.shuffle = shuffle
        with store.open_dataset(self.path) as db:
            self._built = _build_stamp(db)
            ds = db["images"]
            self.image_shape = tuple(int(s) for s in ds.shape[1:])
            self._rows = int(ds.shape[0])
            self._chunk_rows = int(ds.chunks[0]) if ds.chunks else 0
            self._filtered = ds.chunks is not None and ds.id.get_create_plist().get_nfilters() > 0
            self.labels = np.asarray(db["labels"][()], dtype=np.int64)
            self.label_names = store.label_names(db)
        if self._rows == 0:  # a file's fault, not the call's: exit 1 at the command line
            raise DatasetFormatError(f"{self.path} has no rows; build it from a split with "
                                     "images")
        self._settle_drop_last()
        if len(self) == 0:
            raise UsageError(
                f"batch_size {self.batch_size} is larger than the {self._rows} rows of "
                f"{self.path} with drop_last=True; use a smaller batch_size"
            )
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DatasetFormatError(
                f"{self.path}: labels run from {self.labels.min()} to {self.labels.max()} but "
                f"there are {self.num_classes} label names; rebuild it with 'dsprep build-hdf5'"
            )
        if shuffle == "batches" and rows_in_class_runs(self.labels, self.batch_size,
                                                       min_batches=20):
            warnings.warn(f"{self.path} holds its rows in runs of one class (built with --order "
                          "sorted?), so shuffle=\"batches\" gives batches of one class; use "
                          "shuffle=\"full\" to train on it", stacklevel=2)
        self._check_pipeline()
        self._reset_process_state()
        self._shuffle_order()
        self._made = True

    @property
    def num_samples(self) -> int:
        """Rows in the file."""
        return self._rows

    # -- per-process state: never pickled, re-made after a fork -----------------------------

    def _reset_process_state(self, stale: str | None = None) -> None:
        self._db: h5py.File | None = None
        self._images: h5py.Dataset | None = None
        self._reader: store.RowReader | None = None
        self._raw: store.Descriptor | None = None
        self._mapped: store.MappedRows | None = None
        self._file_map: store.MappedFile | None = None
        self._pid: int | None = None
        self._written: tuple[int, int] | None = None
        self._stale = stale  # why this generator's file is refused (see _recheck)
        self._local = threading.local()

    _PROCESS_STATE = ("_db", "_images", "_reader", "_raw", "_mapped", "_file_map", "_pid",
                      "_local", "_written", "_stale")

    def _dataset(self) -> h5py.Dataset:
        if self._stale is not None:
            raise DatasetFormatError(self._stale)
        pid = os.getpid()
        if self._pid == pid and self._images is not None:
            if self._write_mark() != self._written:  # one fstat a batch
                self._recheck()
            return self._images
        with _OPEN_LOCK:
            if self._pid != pid or self._images is None:
                # A handle inherited through fork belongs to the parent: leave it alone.
                # "best-effort": shared read locks like any other reader (a mismatch with other
                # opens of the file in this process is an HDF5 error), ignored where the file
                # system has none (NFS, Lustre).
                self._db = store.open_dataset(self.path, locking="best-effort")
                images = self._db["images"]
                self._check_unchanged(images)
                # Plain rows are mapped (or read with preadv), outside h5py's process-wide
                # lock, so threads (Keras workers) read side by side; other layouts go
                # through h5py.
                reader = store.RowReader.for_dataset(images)
                self._raw = store.RowReader.open(images) if reader is not None else None
                self._reader = reader if self._raw is not None else None
                # Contiguous batches of rows that lie back to back are slices of a window of
                # a read-only map of the file. A pipeline that starts with a cut takes its
                # windows straight from the map; any other copies the batch out of it in one
                # call (a copy that large is made with stores that bypass the caches: twice
                # the speed of preadv's on one host). A cut also takes any other batch's
                # windows (rows anywhere, or across two runs of chunks) row by row from a map
                # of the whole file.
                self._mapped = self._file_map = None
                if self._reader is not None and self._raw is not None:
                    if self.shuffle != "full":
                        self._mapped = self._reader.map(self._raw, self.image_shape,
                                                        self.batch_size)
                    if self._cuts_first() and (self._mapped is None
                                               or len(self._mapped.runs) > 1):
                        self._file_map = self._reader.map_file(self._raw, self.image_shape)
                self._local = threading.local()
                self._written = self._write_mark()
                self._images = images
                self._pid = pid
        return self._images

    def _write_mark(self) -> tuple[int, int] | None:
        """(size, modification time) of the file this process holds open, by its descriptor:
        a copy written over it in place (``cp``, ``rsync --inplace``) changes them, where a
        new build renamed into the path leaves the open file as it was."""
        try:
            raw = self._raw
            fd = raw.fd if raw is not None else self._db.id.get_vfd_handle()
            st = os.fstat(fd)
        except (OSError, AttributeError, TypeError, ValueError):
            return None  # no descriptor to ask (another HDF5 driver): not watched
        return st.st_size, st.st_mtime_ns

    def _recheck(self) -> None:
        """The open file was written to since this process opened it: refuse it. (Whether it
        is still the same build cannot be told from here: HDF5 answers a second open of a
        file this process holds with the first one's cached contents.)"""
        with _OPEN_LOCK:
            if self._write_mark() == self._written:
                return
        message = (
            f"{self.path} was written over in place while this generator read it (its size or "
            "modification time changed): its batches could pair other images with the labels "
            "read when it was made; make the generator again (a new build should replace the "
            "file, as build-hdf5 does, which leaves open readers the old one)")
        # Closed, so that a generator made again opens the file anew (HDF5 would hand it this
        # process's stale open file while any handle to it stays open); every thread of this
        # one, those with a batch in flight included, gets the same error until close().
        self._close(stale=message)
        raise DatasetFormatError(message)

    def _check_unchanged(self, images: h5py.Dataset) -> None:
        """Refuse a file at the path that is not the one this generator was made from (a new
        build in its place): its rows would be read with the labels and shape held here."""
        changed = _changed(self._db, images, self._rows, self.image_shape, self.labels,
                           self._built)
        if changed is not None:
            self._db.close()
            self._db = None
            raise DatasetFormatError(f"{self.path} changed since this generator was made "
                                     f"({changed}; built again?); make the generator again")

    def close(self) -> None:
        """Close this process's handle (it reopens on the next batch).

        Call it when no other thread is reading a batch of this generator (between epochs,
        or at the end): a read in flight may fail on the closed file.
        """
        self._close()

    def _close(self, stale: str | None = None) -> None:
        with _OPEN_LOCK:  # not while another thread opens the file
            # Marked first: a read in flight that fails on the closed file says why.
            self._stale = stale
            if self._db is not None and self._pid == os.getpid():
                # The raw file and the map close with their last reference: a read in flight
                # that took them keeps its own.
                self._raw = None
                self._mapped = self._file_map = None
                self._db.close()
            self._reset_process_state(stale)

    def _scratch(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A per-thread reusable uint8 buffer (reads into warm memory, no page faults)."""
        buf = getattr(self._local, name, None)
        if buf is None or buf.shape != shape:
            buf = np.empty(shape, dtype=np.uint8)
            setattr(self._local, name, buf)
        return buf

    # -- order and reading -----------------------------------------------------------------

    def _draw_order(self, epoch: int) -> tuple[np.ndarray, int]:
        """(rows for "full", else batch numbers; the row offset of a drop_last epoch)."""
        rng = _order_rng(self.seed, epoch)
        nb = len(self)
        if self.shuffle == "full":
            return rng.permutation(self._rows), 0
        if self.shuffle == "batches":
            full = self._rows // self.batch_size
            # The short tail batch, if any, stays last so only the final batch is short.
            order = np.concatenate([rng.permutation(full), np.arange(full, nb)])
            offset = 0
            if self.drop_last and self._rows > nb * self.batch_size:
                # The batches run round the file from a random row, so the rows left out are
                # the few before it: each row as likely to be left out as any other. (A start
                # drawn from the leftover only left the rows at the two ends out in most
                # epochs.) One batch a epoch may wrap past the end; it is read row by row.
                offset = int(rng.integers(0, self._rows))
            return order, offset
        return np.arange(nb), 0

    def batch_rows(self, index: int, epoch: int | None = None) -> np.ndarray:
        """The file rows of batch ``index`` in this epoch (or in ``epoch``), in batch order."""
        index = self._check_index(index)
        order, offset = self._order_of(self._current[0] if epoch is None else epoch)
        if self.shuffle == "full":
            return order[index * self.batch_size:(index + 1) * self.batch_size]
        start = offset + int(order[index]) * self.batch_size
        if offset:  # drop_last: whole batches round the file
            return (start + np.arange(self.batch_size)) % self._rows
        return np.arange(start, min(start + self.batch_size, self._rows))

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        try:
            batch = self._batch(index)
        except Exception as exc:
            if self._stale is None or isinstance(exc, (IndexError, DsprepError)):
                raise
            # Another thread found the file written over and closed it under this batch.
            raise DatasetFormatError(self._stale) from exc
        if self._stale is not None:  # found so while this batch was read: it may mix files
            raise DatasetFormatError(self._stale)
        return batch

    def _batch(self, index: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = self._resolve(index)
        ds = self._dataset()
        rows = self.batch_rows(index, epoch)
        n = len(rows)
        # One slice of the file ("none", "batches"), or rows anywhere ("full", or the batch of
        # a drop_last epoch that wraps past the file's end).
        scattered = self.shuffle == "full" or int(rows[-1]) - int(rows[0]) != n - 1
        reader, raw, mapped = self._reader, self._raw, self._mapped  # held for the whole batch
        source = None
        if mapped is not None and not scattered:
            try:
                source = mapped.rows_of(int(rows[0]), int(rows[0]) + n)
            except (OSError, OverflowError):
                # No room for a window of the file (a tight ulimit -v): this process reads
                # its rows instead.
                self._mapped = None
        if source is not None and self._cuts_first():
            # The batch's rows are one slice of a map of the file; the pipeline starts with a
            # cut, which never writes into its input.
            return self._finish(source, self.labels[rows], epoch, index, source)
        file_map, data = self._file_map, None  # a cut's, for a batch not in one run
        if file_map is not None:
            try:
                data = file_map.data()
            except (OSError, OverflowError, ValueError):
                # No room for one map of the whole file (a 32-bit process, a tight ulimit -v):
                # this process reads its rows instead.
                self._file_map = file_map = None
        if file_map is not None:
            # Rows anywhere in the file (or chunks apart): the pipeline's first cut takes each
            # window from its row in the map, with nothing copied before (preprocess.Gathered).
            x = self._scratch("batch", (min(self.batch_size, self._rows),
                                        *self.image_shape))[:n]
            return self._finish(x, self.labels[rows], epoch, index, x, Gathered(
                lambda i: file_map.row(int(rows[i]), data), x))
        shape = (n, *self.image_shape)
        scratch = None
        if self._steps:
            scratch = self._scratch("batch", (min(self.batch_size, self._rows),
                                              *self.image_shape))
            x = scratch[:n]
        else:
            x = np.empty(shape, dtype=np.uint8)
        load = None
        if source is not None:
            def load(a: int, b: int) -> None:  # the whole batch in one call, unless cut
                np.copyto(x[a:b], source[a:b])
        elif reader is not None and raw is not None:
            # ``raw`` stays referenced by the closures, so its descriptor outlives every read.
            if scattered:
                def load(a: int, b: int) -> None:
                    reader.read_rows(raw.fileno(), rows[a:b], x[a:b])
            else:
                def load(a: int, b: int) -> None:
                    reader.read(raw.fileno(), int(rows[0]) + a, int(rows[0]) + b, x[a:b])
        if load is not None:
            if scratch is None:
                load(0, n)
            else:
                # Lock-free reads: the pipeline's threads read the rows they are about to cut.
                return self._finish(x, self.labels[rows], epoch, index, scratch, load)
        else:
            try:
                if scattered:
                    self._read_rows(ds, rows, x)
                else:
                    ds.read_direct(x, source_sel=np.s_[rows[0]:rows[0] + n],
                                   dest_sel=np.s_[0:n])
            except OSError as exc:  # a damaged chunk: HDF5 names neither file nor rows
                raise store.unreadable(self.path, int(rows.min()), int(rows.max()), exc,
                                       len(rows) if scattered else 0) from exc
        return self._finish(x, self.labels[rows], epoch, index, scratch)

    def _read_rows(self, ds: h5py.Dataset, rows: np.ndarray, out: np.ndarray) -> None:
        """Read scattered rows into ``out`` in the order given, visiting the file in order."""
        by_file = np.argsort(rows, kind="stable")
        if not self._filtered:
            # One low-level read per row (h5py's read_direct costs ~2x more per call; a union of
            # hyperslabs in one read is ~100x slower in HDF5 1.14). The dataspaces are copies
            # local to this call, so threads never share a selection.
            fspace = ds.id.get_space()
            mspace = h5py.h5s.create_simple(out.shape)
            count = (1, *self.image_shape)
            zeros = (0,) * len(self.image_shape)
            for pos in by_file:
                fspace.select_hyperslab((int(rows[pos]), *zeros), count)
                mspace.select_hyperslab((int(pos), *zeros), count)
                ds.id.read(mspace, fspace, out)
            return
        # Compressed chunks: decompress each touched chunk once and take its rows from memory.
        cr = self._chunk_rows
        chunk = self._scratch("chunk", (cr, *self.image_shape))
        chunk_of = rows[by_file] // cr
        for c in np.unique(chunk_of):
            lo, hi = int(c) * cr, min(int(c) * cr + cr, self._rows)
            ds.read_direct(chunk, source_sel=np.s_[lo:hi], dest_sel=np.s_[0:hi - lo])
            for pos in by_file[chunk_of == c]:
                out[pos] = chunk[rows[pos] - lo]


def _read_by_torch() -> bool:
    """Whether a torch DataLoader is reading the batch now asked for (a frame of
    torch.utils.data among the callers')."""
    try:
        frame = sys._getframe(3)
    except ValueError:  # (called from fewer frames: no caller to look at)
        return False
    for _ in range(8):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith("torch.utils.data"):
            return True
        frame = frame.f_back
    return False


class EpochIndices:
    """The batch indices of one epoch as ``(epoch, i)`` pairs, for another framework's loader.

    A loader that indexes the generator in worker processes (PyTorch's ``DataLoader`` with
    ``num_workers``, above all with ``persistent_workers=True``) holds copies of it that never
    see ``set_epoch`` in the main process: every epoch would repeat the first one's order and
    random draws. Indices that carry their epoch reach every copy::

        sampler = EpochIndices(gen)  # or EpochIndices(gen, rank=r, world=n) for n processes
        loader = DataLoader(gen, batch_size=None, sampler=sampler, num_workers=4,
                            persistent_workers=True)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)  # optional: each new pass is the next epoch
            for x, y in loader: ...

    Each pass over the sampler (each ``for ... in loader``) is the epoch after the last pass,
    however far that one was read, or the epoch ``set_epoch`` named since: the same in every
    process, whatever the loader reads ahead. A pass counts once its first index is read.

    With ``world`` > 1 (distributed training: one process per GPU, each with its own
    generator), rank ``r`` takes batches ``r, r + world, ...`` of the same order, so the ranks
    see disjoint batches, and every rank as many, as collective training steps need: where the
    batches do not divide evenly, the last ranks take the first batches again, or with
    ``drop_last`` the batches past the last whole round are left out. The generators must then
    share a seed: one drawn by each process would give each its own order.
    """

    def __init__(self, gen: _BatchSequence, rank: int = 0, world: int = 1,
                 drop_last: bool = False) -> None:
        refuse_path(gen, "EpochIndices")
        rank, world = whole_number(rank, "rank"), whole_number(world, "world", least=1)
        if rank >= world:
            raise UsageError(f"rank must be below world; received rank={rank}, world={world}")
        flag(drop_last, "drop_last")
        if world > 1 and getattr(gen, "seed_drawn", False):
            raise UsageError("with world > 1 every rank's generator needs the same seed; give "
                             "the generator seed=... (it drew one of its own)")
        if drop_last and len(gen) < world:
            raise UsageError(f"drop_last with {len(gen)} batches for {world} ranks leaves none; "
                             "use a smaller batch_size")
        self.gen, self.rank, self.world, self.drop_last = gen, rank, world, bool(drop_last)
        self.epoch = int(getattr(gen, "epoch", 0))
        self._named = True  # the next pass gives self.epoch itself

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass gives."""
        self.epoch = whole_number(epoch, "epoch")
        self._named = True

    def __len__(self) -> int:
        n = len(self.gen)
        return n // self.world if self.drop_last else math.ceil(n / self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # A generator: its epoch is taken when the pass is first read, so an iterator made and
        # dropped unread (PyTorch's DataLoader makes one so) is no pass.
        if not self._named:
            self.epoch += 1
        self._named = False
        epoch, n = self.epoch, len(self.gen)
        for k in range(len(self)):
            yield epoch, (self.rank + k * self.world) % n


def rows_in_class_runs(labels: np.ndarray, batch_size: int, min_batches: int = 0) -> bool:
    """Whether rows lie in runs of one class (``build-hdf5 --order sorted``, arrays written
    class by class, a class appended at the end), so that batches of contiguous rows
    (``shuffle="batches"``) would mostly hold one class; build-hdf5's default shuffled order
    does not. Batches of one class are only counted with ``min_batches`` whole batches or
    more: in a few batches of a shuffled file they happen by chance."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if n < 2 or batch_size < 2 or n <= batch_size:
        return False  # one batch, or one image a batch: the order within makes no odds
    share = np.unique(labels, return_counts=True)[1] / n
    # A random order changes class between neighbours (n - 1)(1 - sum p^2) times on average,
    changes = int(np.count_nonzero(labels[1:] != labels[:-1]))
    mixed = changes >= (n - 1) * (1.0 - float(np.sum(share * share))) / 2
    if not mixed:
        return True
    # and gives a batch of one class with a chance of about sum p^batch.
    if n // batch_size < max(1, min_batches):
        return False
    blocks = labels[:n // batch_size * batch_size].reshape(-1, batch_size)
    single = float(np.mean(np.all(blocks == blocks[:, :1], axis=1)))
    return single > 2 * float(np.sum(share ** batch_size)) + 0.05


def _in_split_folder(root: Path) -> bool:
    """Whether ``root`` is one split (train/, val/, test/) of a 'dsprep split' folder."""
    here = root.resolve()
    return (here.parent / "split.json").is_file() and here.name in SPLITS


def _split_classes(root: Path, found: list[str]) -> list[str]:
    """The classes of the split ``root`` belongs to, in build-hdf5's id order, or ``found``.

    A test folder without a class would otherwise number the other classes differently from
    its train folder and from the HDF5 files built from the same split.
    """
    here = root.resolve()
    if _in_split_folder(here):
        return read_split_classes(here.parent)
    # A dump already split (train/, test/, or seg_train/seg_train/): as build-hdf5 builds it.
    doubled = here.parent.name.lower() == here.name.lower()
    for base in (here.parent.parent, here.parent) if doubled else (here.parent,):
        try:
            folders = sources.own_split_folders(base, [])
        except (DsprepError, OSError):  # val/ beside valid/: not a split to follow
            continue
        if here in (f.resolve() for f in folders.values()):
            # As build.find_rows numbers them: the class folders holding images, in any split.
            names: set[str] = set()
            for folder in folders.values():
                try:
                    names.update(name for _, name in sources.scan_class_folders(folder)[1])
                except LayoutError:
                    continue  # no images there: no classes from it, as in build-hdf5
            return sorted(names)
    return list(found)


def _left_out(check: Callable[[], object]) -> str | None:
    """None if ``check()`` passes, else why its file is left out (see :func:`_reason`)."""
    try:
        check()
    except (DsprepError, OSError) as exc:
        return _reason(exc)
    return None


def _reason(exc: Exception) -> str:
    """Why a file is left out, in the words of split's and build's skipped lists
    ("not-an-image: truncated PNG ...", "unreadable: Permission denied", "empty: ...")."""
    if isinstance(exc, (CorruptImageError, OSError)):
        return "{}: {}".format(*skip_reason(exc))
    return f"{type(exc).__name__}: {exc}"


_MAP_RUN = 1024  # files handed to the decoding threads at once by DirectoryGenerator._map


class DirectoryGenerator(_BatchSequence):
    """Batches ``(x, y)`` decoded from ``root/<class>/<image>`` files with a thread pool.

    Uses the same decode and resize as build-hdf5 (``dsprep.images.load``). Every file is
    checked once at construction, by decoding it (``check="decode"``, one pass over the data
    in the decoding threads) or from its header alone (``check="header"``, much faster, for
    files already checked, e.g. by ``dsprep split --verify full``): files that fail are left
    out and listed in ``skipped`` as ``(path, reason)``, the reason in the words of split's
    skipped.csv (``"not-an-image: truncated PNG ..."``, ``"unsupported-format: ..."``). A
    file that still fails to decode later (changed since, or passed the header check only) is
    replaced, in that batch and from
    then on in this process, by the next good image of its class (the same one in every
    process), and listed once in ``replaced`` as ``(path, reason)``; one that cannot be read
    (gone, or its disk away for a moment) is replaced the same way but tried again at its next
    turn, and stands in for no other file until it is read again (so, while files come and
    go, a process that met the failure may take another stand-in than a fresh one). Where no
    file of its class decodes any longer, an image of the next class that has one takes its
    place, with that class's label, and a ``RuntimeWarning`` says so once per class and
    process; only where no file at all decodes does a batch raise ``CorruptImageError``. Relative
    paths are taken from the working folder at construction. Batches, randomness,
    ``augment``, ``preprocessors``, ``one_hot`` and ``output`` behave as in
    :class:`HDF5Generator`; ``shuffle=True`` shuffles every image each epoch (free here, as each
    image is decoded on its own).

    Args:
        root: a folder of class sub-folders (e.g. a split's ``train``).
        image_size: (height, width) the images are resized to.
        resize: "crop", "stretch" or "pad" (see ``dsprep.images.resize``).
        batch_size: images per batch.
        preprocessors: batch operations applied in order (or one callable, or None).
        augment: a random batch operation applied first, to the uint8 pixels (or a list of
            them, applied in order).
        shuffle: shuffle the images each epoch: True or "full", False or "none".
        one_hot: one-hot float32 labels instead of int32 ids.
        seed: the seed for orders and random draws; None draws one now.
        workers: decoding threads (None: up to 8, one per core).
        classes: class names in label-id order; default: when ``root`` is one split of a
            split folder, the split's classes as ``build-hdf5`` numbers them (split.json's
            ``classes``, or for a folder already split into train/val/test folders the class
            folders found in any of them), so a split lacking a class keeps the others' ids;
            else the sorted sub-folder names.
        interpolation: resize interpolation name; None picks as build-hdf5 does.
        drop_last: leave out the final short batch; "auto" leaves it out unless the
            generator holds fewer images than one batch (then its one batch is short).
        output: "float32" or "uint8" (raw pixels; a pipeline that makes floats is refused).
        progress: show a progress bar while checking the files.
        check: "decode" (the default) or "header": how the files are checked at construction.
        max_pixels: leave out images of more pixels than this (decompression bombs), 0 for no
            limit; None (the default): when ``root`` is one split of a split folder, the limit
            the split applied (``split --max-pixels``), so every image it kept is read; else
            89,478,485, as ``build-hdf5``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | str | tuple[int, int] = (256, 256),
        resize: str = "crop",
        batch_size: int = 32,
        preprocessors: Sequence[Callable] | Callable = (),
        augment: Callable | Sequence[Callable] | None = None,
        shuffle: bool | str = True,
        one_hot: bool = False,
        seed: int | None = None,
        workers: int | None = None,
        classes: Sequence[str] | None = None,
        *,
        interpolation: str | None = None,
        drop_last: bool | str = False,
        output: str = "float32",
        progress: bool = False,
        check: str = "decode",
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, preprocessors=preprocessors, augment=augment,
                         one_hot=one_hot, seed=seed, drop_last=drop_last, output=output)
        if check not in CHECKS:
            raise UsageError(f"check {check!r} is not one of {', '.join(CHECKS)}")
        images.check_resize(resize, interpolation)
        if workers is not None:
            workers = whole_number(workers, "workers")
        if max_pixels is not None:
            max_pixels = whole_number(max_pixels, "max_pixels")
        flag(progress, "progress")
        refuse_empty_path(root, "root")  # (Path("") is the current folder, read as classes)
        self.root = Path(os.fsdecode(root)).absolute()  # as HDF5Generator's path
        self.image_size = images.parse_size(image_size)
        if min(self.image_size) < 1:
            raise UsageError(f"image_size {image_size!r} must be positive")
        self.resize = resize
        self.interpolation = interpolation
        if shuffle not in (True, False, "full", "none"):
            # Each image is its own file, so "batches" (contiguous rows) means nothing here.
            raise UsageError(f"shuffle {shuffle!r} is not True or \"full\", False or \"none\"")
        self.shuffle = shuffle in (True, "full")
        self.workers = min(8, system.usable_cpus()) if workers is None else int(workers)
        self.image_shape = (*self.image_size, 3)

        try:
            os.lstat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            raise LayoutError(f"{self.root} does not exist; give a folder of class "
                              "sub-folders") from None
        except PermissionError as exc:  # (a folder on its path this user cannot enter)
            raise access_denied(exc, self.root) from exc
        refuse_unfinished_split(self.root)
        splits = sources.own_split_folders(self.root, [])
        if (self.root / "split.json").is_file() or splits:
            # Its class folders would be train, val and test.
            first = next(iter(splits.values()), self.root / "train")
            raise UsageError(f"{self.root} is split into train/val/test folders; give one of "
                             f"them, such as {first}")
        unreadable: list[sources.Skipped] = []
        found, items = sources.scan_class_folders(self.root, unreadable, unsupported=True)
        if isinstance(classes, (str, bytes)):
            raise UsageError(f"classes is a list of class names, got the string {classes!r}; "
                             f"pass [{classes!r}] for one class")
        if isinstance(classes, (set, frozenset)):
            # Its order numbers the classes: a set's changes from run to run (string hashing).
            raise UsageError(f"classes must be in the order of the class ids (a list), got a "
                             f"{type(classes).__name__}; pass sorted(...) of it")
        # Composed (NFC), as the class folders' names are taken: a list of os.listdir's
        # decomposed names (a Mac's) names the same classes.
        names = (_split_classes(self.root, found) if classes is None else
                 [unicodedata.normalize("NFC", str(c)) for c in classes])
        if len(set(names)) != len(names):
            raise UsageError(f"classes has duplicate names: {names}")
        # A folder without images (notes) labels nothing, so it need not be a class.
        extra = sorted({name for _, name in items} - set(names))
        if extra:
            raise UnlistedClassError(
                f"{self.root} has class folders not in classes: {', '.join(extra)}; "
                "pass classes that name every folder (e.g. the split.json 'classes')",
                self.root, extra
            )
        self.label_names = names
        if max_pixels is None:  # the limit of the split the files come from
            self.max_pixels = split_pixel_limit(self.root)
        else:
            self.max_pixels = int(max_pixels) or None
        self._reset_process_state()
        ids = {name: i for i, name in enumerate(names)}
        checker = self._check_decode if check == "decode" else self._check_file
        ok = self._map(checker, [p for p, _ in items], progress=progress,
                       desc=f"checking {self.root.name}")
        self.skipped: list[tuple[Path, str]] = [
            (self.root / p.source, f"{p.reason}: {p.detail}") for p in unreadable
        ]
        self.replaced: list[tuple[Path, str]] = []
        self._made_in = os.getpid()  # where gen.replaced is read; a copy elsewhere warns
        self.files: list[Path] = []
        labels = []
        for (path, name), reason in zip(items, ok, strict=True):
            if reason is None:
                self.files.append(path)
                labels.append(ids[name])
            else:
                self.skipped.append((path, reason))
        self.labels = np.asarray(labels, dtype=np.int64)
        if not self.files:
            raise LayoutError(
                f"{self.root} has no readable images ({len(self.skipped)} files left out, "
                f"first: {self.skipped[0][1] if self.skipped else 'none'})"
            )
        self._settle_drop_last()  # on the readable images: the bad ones are no rows
        if len(self) == 0:
            raise UsageError(
                f"batch_size {self.batch_size} is larger than the {len(self.files)} images of "
                f"{self.root} with drop_last=True; use a smaller batch_size"
            )
        by_class: dict[int, list[int]] = {}
        self._position = np.empty(len(labels), dtype=np.int64)  # file k's place in its class
        for k, label in enumerate(labels):
            self._position[k] = len(by_class.setdefault(label, []))
            by_class[label].append(k)
        self._by_class = by_class
        self._check_pipeline()
        self._shuffle_order()
        self._made = True

    @property
    def num_samples(self) -> int:
        """Good images found (skipped files not counted)."""
        return len(self.files)

    # -- per-process state -----------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid: int | None = None
        self._replaced_lock = threading.Lock()
        # Files that did not decode in this process, not decoded again here. A file that
        # could not be read (gone, its disk away for a moment) is tried again at its own turn,
        # but stands in for no other file while it fails.
        self._undecodable: set[Path] = set()
        self._unreadable: set[Path] = set()
        self._listed = {path for path, _ in getattr(self, "replaced", ())}
        self._classes_gone: set[int] = set()  # classes said to have no image that decodes

    _PROCESS_STATE = ("_pool", "_pool_pid", "_replaced_lock", "_undecodable", "_unreadable",
                      "_listed", "_classes_gone")

    def _executor(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        with _OPEN_LOCK:
            # A pool inherited through fork has no threads in this process: make a new one.
            if self._pool is None or self._pool_pid != pid:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dsprep-decode")
                self._pool_pid = pid
                # So is a lock: one a parent's thread held at the fork stays held here.
                self._replaced_lock = threading.Lock()
            return self._pool

    def close(self) -> None:
        """Stop this process's decoding threads (they restart on the next batch)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
        self._reset_process_state()

    def _map(self, fn: Callable, args: Sequence, *, progress: bool = False, desc: str = ""):
        if self.workers <= 1:
            it = map(fn, args)
        else:
            # In runs: one future per file of 200,000 at once held 300 MB after the check.
            pool = self._executor()
            it = (result for start in range(0, len(args), _MAP_RUN)
                  for result in pool.map(fn, args[start:start + _MAP_RUN]))
        if progress:
            it = progress_bar(it, total=len(args), desc=desc, unit="file")
        return list(it)

    # -- files -----------------------------------------------------------------------------

    def _check_file(self, path: Path) -> str | None:
        """None for a readable image, else why it is left out."""
        return _left_out(lambda: images.probe(images.read_bytes(path),
                                              max_pixels=self.max_pixels))

    def _check_decode(self, path: Path) -> str | None:
        """None for an image that decodes to the generator's size, else why it is left out."""
        return _left_out(lambda: self._decode(path))

    def _decode(self, path: Path) -> np.ndarray:
        return images.load(images.read_bytes(path), self.image_size, self.resize,
                           self.interpolation, max_pixels=self.max_pixels)

    def _load(self, k: int) -> tuple[np.ndarray, int]:
        """Decode file ``k``, or the next file of its class that decodes (recorded), with its
        label; where no file of its class decodes now, the next of another class that does,
        with that class's label (said once): an epoch never stops for a bad file."""
        label = int(self.labels[k])
        if label in self._classes_gone:
            # Said before to have no image that decodes: its own file alone is tried again
            # (back, it serves), not all of its class for each of its places (a class folder
            # moved away made every batch 400 times slower).
            path = self.files[k]
            image, last = (None, None) if path in self._undecodable else self._try(path, None)
        else:
            image, last = self._load_of(label, int(self._position[k]))
        if image is not None:
            return image, label
        ids = sorted(self._by_class)
        at = ids.index(label)
        for other in ids[at + 1:] + ids[:at]:
            image, _ = self._load_of(other, int(self._position[k]))
            if image is not None:
                with self._replaced_lock:
                    said = label in self._classes_gone
                    self._classes_gone.add(label)
                if not said:
                    warnings.warn(
                        f"DirectoryGenerator: no image of class "
                        f"{self.label_names[label]!r} under {self.root} can be read and "
                        f"decoded now ({last or 'each failed before'}); its places in the "
                        "batches are taken by images of other classes, with their labels. "
                        "Check the files and build the generator again",
                        RuntimeWarning, stacklevel=2)
                return image, other
        raise CorruptImageError(
            f"no image under {self.root} can be read and decoded now (of class "
            f"{self.label_names[label]!r}, the last one tried: {last or 'each failed before'}"
            "); check the files and build the generator again"
        )

    def _load_of(self, label: int, start: int) -> tuple[np.ndarray | None, str | None]:
        """(an image of class ``label``, None): its file at ``start`` in the class, or the
        next that decodes; else (None, why the last one tried failed)."""
        members = self._by_class[label]
        last = None
        later = []  # unreadable before: tried as stand-ins only when no other file decodes
        # (one file at a time: listing a class of 50,000 files for each image costs more than
        # decoding it)
        for step in range(len(members)):
            path = self.files[members[(start + step) % len(members)]]
            if path in self._undecodable:
                continue  # decoding it again would fail again
            if step and path in self._unreadable:
                later.append(path)
                continue
            image, last = self._try(path, last)
            if image is not None:
                return image, None
        for path in later:
            image, last = self._try(path, last)
            if image is not None:
                return image, None
        return None, last

    def _try(self, path: Path, last: str | None) -> tuple[np.ndarray | None, str | None]:
        """(the image, None) or (None, why it failed, recorded); ``last`` passes through."""
        try:
            image = self._decode(path)
        except (DsprepError, OSError) as exc:
            reason = _reason(exc)
            self._record_replaced(path, reason, undecodable=isinstance(exc, DsprepError))
            return None, f"{path} ({reason})"
        if path in self._unreadable:
            with self._replaced_lock:
                self._unreadable.discard(path)  # back: a stand-in again
        return image, last

    def _record_replaced(self, path: Path, reason: str, undecodable: bool) -> None:
        """List a failing file once, however many batches, epochs and processes meet it."""
        with self._replaced_lock:  # decoding threads fail at the same time
            (self._undecodable if undecodable else self._unreadable).add(path)
            if path not in self._listed:
                self._listed.add(path)
                self.replaced.append((path, reason))
                if os.getpid() != getattr(self, "_made_in", os.getpid()):
                    # A DataLoader worker's copy: the gen.replaced the user reads never
                    # lists it.
                    warnings.warn(f"DirectoryGenerator: {path} ({reason}) is replaced in its "
                                  "batches by another image of its class (in a worker "
                                  "process, so gen.replaced does not list it)",
                                  RuntimeWarning, stacklevel=2)

    # -- order and batches -----------------------------------------------------------------

    def _draw_order(self, epoch: int) -> np.ndarray:
        n = len(self.files)
        return _order_rng(self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)

    def batch_files(self, index: int, epoch: int | None = None) -> list[Path]:
        """The files of batch ``index`` in this epoch (or in ``epoch``), in batch order."""
        return [self.files[k] for k in self._batch_indices(index, epoch)]

    def _batch_indices(self, index: int, epoch: int | None = None) -> np.ndarray:
        index = self._check_index(index)
        order = self._order_of(self._current[0] if epoch is None else epoch)
        return order[index * self.batch_size:(index + 1) * self.batch_size]

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = self._resolve(index)
        ks = self._batch_indices(index, epoch)
        x = np.empty((len(ks), *self.image_shape), dtype=np.uint8)
        labels = self.labels[ks].copy()

        def fill(j: int) -> None:
            x[j], labels[j] = self._load(int(ks[j]))

        self._map(fill, range(len(ks)))
        return self._finish(x, labels, epoch, index)
