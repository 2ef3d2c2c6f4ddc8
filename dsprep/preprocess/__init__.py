"""Batch preprocessing: mean subtraction, random patches, centre/five/ten crops, scaling, flips.

Pure kernels work on whole NHWC batches; thin classes draw what is random from the
``numpy.random.Generator`` they are handed and call a kernel.

Every preprocessor has ``__call__(batch, rng) -> batch`` and ``output_shape((H, W, C)) -> shape``.
Crops and flips keep the dtype; :class:`MeanSubtract`, :class:`Rescale` and the normalisations
return float32. For speed, crop and flip the uint8 batch first and subtract the mean last (the mean
is per channel, so the result is identical): ``Compose([RandomPatch(227, 227), RandomFlip(),
MeanSubtract(means)])``. :class:`Compose` then fuses those steps into one pass that writes each
float32 crop straight into the output batch, so the full-size image is never converted to float.

Large outputs (4 MiB and more) come from a small pool that reuses a buffer once every array over
it is gone, which spares the page faults of fresh memory on every batch. It keeps at most 512 MiB
idle per process; the environment variable ``DSPREP_BUFFER_POOL_BYTES`` sets another cap in bytes
(it is also the largest buffer pooled), and ``DSPREP_BUFFER_POOL_BYTES=0`` turns the pool off.

Where the machine has two or more cores, the crop kernels split a large batch (16 MB of output or
more) between the calling thread and one helper thread; the result is the same.
``DSPREP_KERNEL_THREADS=1`` (or :func:`set_kernel_threads`) keeps every batch on the calling
thread, e.g. when worker processes already keep every core busy.
"""

from __future__ import annotations

import collections
import math
import numbers
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .. import system
from ..augment import (
    CV_DTYPES,
    RandomFlip,
    as_rows,
    check_batch,
    cv_view,
    flag,
    flip_horizontal,
    flip_vertical,
    real,
    require_rng,
)
from ..errors import DatasetFormatError, UsageError
from ..stats import means_vector, read_means

__all__ = [
    "CenterCrop",
    "Compose",
    "MeanSubtract",
    "MinMaxNormalize",
    "PercentileNormalize",
    "RandomPatch",
    "Rescale",
    "TenCrop",
    "center_crop",
    "crop",
    "five_crop",
    "five_crop_positions",
    "flip_horizontal",
    "flip_vertical",
    "fuse_flip_before",
    "load_means",
    "minmax_normalize",
    "percentile_normalize",
    "require_rng",
    "rescale",
    "set_kernel_threads",
    "subtract_mean",
    "ten_crop",
]

# The environment variable that sets the buffer pool's idle memory cap (see the module docstring).
POOL_BYTES_ENV = "DSPREP_BUFFER_POOL_BYTES"
# The environment variable that lets large batches use a second thread (see the docstring).
KERNEL_THREADS_ENV = "DSPREP_KERNEL_THREADS"

# --------------------------------------------------------------------------------------------
# internals


def _size(height: int, width: int | None) -> tuple[int, int]:
    width = height if width is None else width
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UsageError(f"crop {name} must be a positive integer, got {value!r}")
    return int(height), int(width)


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return _size(size, None)  # a bool is refused there
    if not isinstance(size, (tuple, list, np.ndarray)) or len(size) != 2:
        raise UsageError(f"size must be an int or (height, width), got {size!r}")
    return _size(size[0], size[1])


def _image_shape(shape: Sequence[int], what: str) -> tuple[int, int, int]:
    """Check a per-sample shape is one (H, W, C) image."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise UsageError(
            f"{what} works on (height, width, channels) images, got samples of shape {shape}; "
            "put it before any ten-crop"
        )
    return shape  # type: ignore[return-value]


def _check_fits(shape: Sequence[int], size: tuple[int, int], what: str) -> tuple[int, int, int]:
    h, w = size
    height, width, channels = _image_shape(shape, what)
    if h > height or w > width:
        raise UsageError(
            f"{what} {h}x{w} is larger than the {height}x{width} images; use a smaller {what} "
            f"or images of at least {h}x{w} (build-hdf5 --size, or a DirectoryGenerator's "
            "image_size)"
        )
    return height, width, channels


def _cv_ok(a: np.ndarray, channels_max: int = 4) -> bool:
    return a.dtype in CV_DTYPES and a.shape[-1] <= channels_max




class _Lease:
    """The owner of one pooled buffer while an array handed out over it (or a view) is alive."""

    __slots__ = ("__array_interface__", "__weakref__", "raw")

    def __init__(self, raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.raw = raw
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (raw.ctypes.data, False),
            "version": 3,
        }


class _BufferPool:
    """Recycles large output buffers once every array over them has been released.

    Writing into freshly mapped memory costs as much as the crop and mean subtraction themselves
    (the kernel zeroes each new page on first touch). An array handed out here has a
    :class:`_Lease` as its base, so numpy keeps the lease alive exactly as long as the array or
    any view of it (or a tensor aliasing it) lives; when the last one goes, the buffer comes
    back for the next batch. Nothing is ever reused while someone can still see it.

    Free buffers are kept per exact byte size and each one's size is checked again before it
    is handed out. A buffer comes back from a finalizer, which a garbage-collection pass can run
    in the middle of :meth:`empty` or of another return on the same thread; so a return only
    queues the buffer, and whoever holds the pool (never two at once, never re-entered) files
    the queue before letting go.
    """

    MIN_BYTES = 4 << 20  # small arrays are cheap to allocate
    DEFAULT_BYTES = 512 << 20  # idle memory kept (a 128 x 227 x 227 x 3 float32 batch is 79 MB)
    MAX_BUFFERS = 6

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        self._lock = threading.RLock()
        self._busy = False
        self._returned: collections.deque[np.ndarray] = collections.deque()
        self._free: dict[int, list[np.ndarray]] = {}

    @property
    def max_bytes(self) -> int:
        """The idle memory kept at most, and the largest buffer pooled; 0 turns the pool off."""
        if self._max_bytes is None:
            self._max_bytes = _pool_bytes_from_env()
        return self._max_bytes

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < self.MIN_BYTES or nbytes > self.max_bytes:
            return np.empty(shape, dtype)
        raw = None
        with self._lock:
            if not self._busy:
                self._busy = True
                try:
                    self._file_returned()
                    same = self._free.get(nbytes)
                    if same:
                        raw = same.pop()
                        if not same:
                            del self._free[nbytes]
                finally:
                    self._file_returned()
                    self._busy = False
        if raw is None or raw.nbytes != nbytes:
            raw = np.empty(nbytes, np.uint8)
        lease = _Lease(raw, tuple(shape), dtype)
        weakref.finalize(lease, self._give_back, raw).atexit = False
        return np.asarray(lease)

    def _give_back(self, raw: np.ndarray) -> None:
        self._returned.append(raw)  # atomic; safe from a finalizer at any point
        with self._lock:
            if self._busy:
                return  # this thread is inside the pool already; it files the queue
            self._busy = True
            try:
                self._file_returned()
            finally:
                self._busy = False

    def _file_returned(self) -> None:
        """Move queued buffers to the free lists, oldest sizes dropped past the caps."""
        while self._returned:
            raw = self._returned.popleft()
            if self.max_bytes <= 0:
                continue
            self._free.setdefault(raw.nbytes, []).append(raw)
            while self._free and (
                sum(len(v) for v in self._free.values()) > self.MAX_BUFFERS
                or sum(b.nbytes for v in self._free.values() for b in v) > self.max_bytes
            ):
                oldest = next(iter(self._free))  # dicts keep insertion order
                self._free[oldest].pop(0)
                if not self._free[oldest]:
                    del self._free[oldest]

    def idle_bytes(self) -> int:
        """Bytes held in free buffers now."""
        with self._lock:
            return sum(b.nbytes for v in self._free.values() for b in v)


# Every pool, weakly, so a forked child can reset them all: it must not inherit a lock held by
# another thread, nor the parent's buffers.
_POOLS: weakref.WeakSet[_BufferPool] = weakref.WeakSet()


def _reset_pools_in_child() -> None:
    for pool in list(_POOLS):
        pool._reset()
    _THREADS._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_in_child)


def _pool_bytes_from_env() -> int:
    value = os.environ.get(POOL_BYTES_ENV, "").strip()
    if not value:
        return _BufferPool.DEFAULT_BYTES
    try:
        nbytes = int(value)
    except ValueError:
        nbytes = -1
    if nbytes < 0:
        raise UsageError(
            f"{POOL_BYTES_ENV}={value!r} is not a byte count; set it to a whole number of bytes "
            "(e.g. 268435456), or 0 to turn the buffer pool off"
        )
    return nbytes


_POOL = _BufferPool()


def _output(out: np.ndarray | None, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The caller's buffer after checking it, or a new one."""
    if out is None:
        return _POOL.empty(shape, dtype)
    if out.shape != shape or out.dtype != np.dtype(dtype):
        raise UsageError(
            f"out has shape {out.shape} and dtype {out.dtype}; expected {shape} and "
            f"{np.dtype(dtype)}"
        )
    # OpenCV writes into dst= only when the slot is contiguous; otherwise it would silently
    # allocate a new array and leave ours untouched.
    if out.size and not out[(0,) * (out.ndim - 3)].flags.c_contiguous:
        raise UsageError("out must hold each image contiguously (a C-ordered array or a slice)")
    return out


def _scalar(mean: np.ndarray) -> tuple[float, float, float, float]:
    values = [float(v) for v in mean] + [0.0] * (4 - len(mean))
    return tuple(values)  # type: ignore[return-value]


def _mean_vector(mean: Sequence[float] | np.ndarray, channels: int) -> np.ndarray:
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    if mean.size != channels:
        raise UsageError(
            f"the mean has {mean.size} values but the images have {channels} channels; "
            "mean subtraction needs one mean per channel (R, G, B)"
        )
    if not np.all(np.isfinite(mean)):
        raise UsageError(f"the channel means must be finite numbers, got {mean.tolist()}")
    return mean


# --------------------------------------------------------------------------------------------
# kernels


def subtract_mean(
    batch: np.ndarray, mean_rgb: Sequence[float], *, out: np.ndarray | None = None
) -> np.ndarray:
    """Subtract a per-channel mean from every pixel of a batch.

    Args:
        batch: (B, H, W, C) or (B, K, H, W, C) array, uint8 or float.
        mean_rgb: one value per channel, in the batch's channel order (RGB).
        out: optional float32 buffer of the batch's shape to write into.

    Returns:
        A float32 array of the batch's shape.
    """
    batch = check_batch(batch)
    mean = _mean_vector(mean_rgb, batch.shape[-1])
    out = _output(out, batch.shape, np.float32)
    if not _cv_ok(batch):
        np.subtract(batch, mean.astype(np.float32), out=out, casting="unsafe")
        return out
    scalar = _scalar(mean)
    src_rows, dst_rows = as_rows(batch), as_rows(out)
    if src_rows is not None and dst_rows is not None:
        # One OpenCV call for the whole batch: it sees B*H rows of one tall image.
        cv2.subtract(cv_view(src_rows), scalar, dst=cv_view(dst_rows), dtype=cv2.CV_32F)
        return out
    for index in np.ndindex(batch.shape[:-3]):
        cv2.subtract(cv_view(batch[index]), scalar, dst=cv_view(out[index]), dtype=cv2.CV_32F)
    return out

Loader = Callable[[int, int], None]
"""``load(start, stop)`` fills images ``start:stop`` of a batch that was handed over unread.

The generators pass one to the window kernels so that reading a batch overlaps cutting it: each
kernel thread reads the next few images of the range it took, then cuts them while they are
still in the CPU's cache. Ranges never overlap and may be loaded from two threads at once.
"""

# Images loaded at a time ahead of cutting them: 8 rows of 256x256x3 are 1.5 MB (cache-sized).
_LOAD_STEP = 8


class Gathered:
    """A ``Loader`` for a batch whose images already lie in memory elsewhere (rows of a memory
    map of a file): image ``i`` of the batch is ``image(i)``.

    The window kernels cut straight from those images, so nothing is copied before the cut;
    any other step gets ``batch`` filled by calling it, as with any loader.
    """

    def __init__(self, image: Callable[[int], np.ndarray], batch: np.ndarray) -> None:
        self.image, self.batch = image, batch

    def __call__(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            self.batch[i] = self.image(i)


def _images(batch: np.ndarray, load: Loader | None, start: int, stop: int):
    """(i, image i) for ``start:stop``: read where it lies when ``load`` is :class:`Gathered`,
    else from ``batch``, each loaded through ``load`` (in small runs) before use."""
    if isinstance(load, Gathered):
        for i in range(start, stop):
            yield i, load.image(i)
        return
    for i in _loaded(load, start, stop):
        yield i, batch[i]


def _loaded(load: Loader | None, start: int, stop: int) -> Iterator[int]:
    """The indices ``start:stop``, each loaded through ``load`` (in small runs) before use."""
    if load is None:
        yield from range(start, stop)
        return
    for first in range(start, stop, _LOAD_STEP):
        last = min(first + _LOAD_STEP, stop)
        load(first, last)
        yield from range(first, last)



def crop(
    batch: np.ndarray,
    tops: Sequence[int] | np.ndarray,
    lefts: Sequence[int] | np.ndarray,
    size: int | tuple[int, int],
    *,
    flips: Sequence[bool] | np.ndarray | None = None,
    mean: Sequence[float] | None = None,
    out: np.ndarray | None = None,
    load: Loader | None = None,
) -> np.ndarray:
    """Cut one window per image, optionally mirror it and subtract a per-channel mean.

    ``out[i] = batch[i, tops[i]:tops[i]+h, lefts[i]:lefts[i]+w]``, flipped left-right where
    ``flips[i]``, minus ``mean`` when given. The mean and flip are applied while copying, so the
    float32 result is written once and the full-size image is never converted.

    Args:
        batch: (B, H, W, C) array.
        tops: row of each window's top-left corner, one per image.
        lefts: column of each window's top-left corner, one per image.
        size: (height, width) of the windows, or one int for squares.
        flips: optional booleans, one per image: mirror that window horizontally.
        mean: optional per-channel mean; when given the result is float32.
        out: optional buffer of shape (B, h, w, C) to write into.
        load: optional ``load(start, stop)`` that fills ``batch[start:stop]``; when given, the
            batch's pixels are not read before that call, and each thread loads the few images
            it is about to cut (see ``Loader``).

    Returns:
        (B, h, w, C), the batch's dtype, or float32 when ``mean`` is given.
    """
    batch = check_batch(batch, exact=True)
    h, w = as_size(size)
    n, height, width, channels = batch.shape
    tops = _per_image(tops, n, "tops")
    lefts = _per_image(lefts, n, "lefts")
    if n and (
        tops.min() < 0 or lefts.min() < 0 or tops.max() + h > height or lefts.max() + w > width
    ):
        raise UsageError(
            f"a {h}x{w} window at the given corners falls outside the {height}x{width} images"
        )
    flip_mask = None
    if flips is not None:
        flip_mask = _per_image(flips, n, "flips")
    mean_vec = None if mean is None else _mean_vector(mean, channels)
    dtype = batch.dtype if mean_vec is None else np.float32
    out = _output(out, (n, h, w, channels), dtype)

    uniform = n > 0 and bool(np.all(tops == tops[0]) and np.all(lefts == lefts[0]))
    no_flip = flip_mask is None or not flip_mask.any()
    if mean_vec is None and no_flip and uniform:
        # The same window everywhere (centre and corner crops): one strided copy.
        if load is not None:
            load(0, n)
        np.copyto(out, batch[:, tops[0] : tops[0] + h, lefts[0] : lefts[0] + w])
        return out

    flip_list = [False] * n if flip_mask is None else flip_mask.tolist()
    tops_list, lefts_list = tops.tolist(), lefts.tolist()

    writers = _PerThread(lambda: _WindowWriter(batch.dtype, channels, (h, w), mean_vec))

    def cut(start: int, stop: int) -> None:
        writer = writers.get()
        for i, image in _images(batch, load, start, stop):
            top, left = tops_list[i], lefts_list[i]
            writer.write(image[top : top + h, left : left + w], flip_list[i], out[i])

    _split_images(n, out.nbytes, cut)
    return out


def _per_image(values, n: int, name: str) -> np.ndarray:
    """``values`` as (n,): one value (or a list of one) for every image, or one per image;
    whole numbers for
    corners (a float corner is refused, not truncated), booleans for ``flips``."""
    given = np.asarray(values)
    if given.ndim > 1 or (given.ndim == 1 and given.shape[0] not in (1, n)):
        raise UsageError(f"{name} must be one value or one per image ({n}); got shape "
                         f"{given.shape}")
    if name == "flips":
        if given.dtype != bool and not np.all((given == 0) | (given == 1)):
            raise UsageError(f"flips must be booleans; got {given.ravel()[:4].tolist()}")
        return np.broadcast_to(given.astype(bool), (n,))
    whole = np.issubdtype(given.dtype, np.integer) or (
        np.issubdtype(given.dtype, np.floating) and bool(np.all(given == np.round(given))))
    if not whole:
        raise UsageError(f"{name} must be whole numbers; got {given.ravel()[:4].tolist()}")
    return np.broadcast_to(given.astype(np.int64), (n,))


# Above this many output bytes a window kernel splits its images between two threads (OpenCV
# releases the GIL): a 128 x 227 x 227 x 3 float32 batch is 79 MB, a uint8 one 20 MB.
_PARALLEL_MIN_BYTES = 16 << 20


class _KernelThreads:
    """One helper thread per process that cuts a large batch's windows with the calling thread.

    Used only when the machine has a second core, ``DSPREP_KERNEL_THREADS`` is not 1, and no
    other thread is cutting a batch at that moment: callers already running in parallel (as
    Keras's worker threads do) keep their work to themselves instead of crowding the cores.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.busy = threading.Lock()
        self.count_lock = threading.Lock()
        self.active = 0  # kernel calls running now, in any thread
        self.pool: ThreadPoolExecutor | None = None
        self.pid: int | None = None
        self.enabled: bool | None = None

    def executor(self) -> ThreadPoolExecutor:
        if self.pool is None or self.pid != os.getpid():
            # A pool inherited through fork has no thread in this process.
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="dsprep-kernel")
            self.pid = os.getpid()
        return self.pool

    def allowed(self) -> bool:
        if self.enabled is None:
            self.enabled = system.usable_cpus() > 1 and _kernel_threads_from_env() > 1
        return self.enabled


_THREADS = _KernelThreads()


def set_kernel_threads(threads: int) -> None:
    """Let large batches use two threads (2) or keep them on the calling thread (1).

    Overrides ``DSPREP_KERNEL_THREADS`` for this process; with one core it stays at 1.
    """
    if threads not in (1, 2):
        raise UsageError(f"threads must be 1 or 2, got {threads!r}")
    _THREADS.enabled = threads == 2 and system.usable_cpus() > 1


def _kernel_threads_from_env() -> int:
    value = os.environ.get(KERNEL_THREADS_ENV, "").strip()
    if not value:
        return 2
    if value not in ("1", "2"):
        raise UsageError(
            f"{KERNEL_THREADS_ENV}={value!r} is not 1 or 2; set 1 to keep each batch on one "
            "thread, 2 (the default) to split large batches between two"
        )
    return int(value)


def _split_images(n: int, nbytes: int, work) -> None:
    """``work(0, n)``, or ``work`` over ranges of a large batch taken by two threads at once.

    The two threads take ranges from the front as they go, large first and smaller towards the
    end (see ``_Ranges``), so they finish within a couple of images of each other: fixed halves
    left one thread idle for ~7% of a batch, waiting for the other (mirrored windows and cache
    misses differ from image to image). If one thread fails, the other takes no new range.
    """
    if n < 2 or nbytes < _PARALLEL_MIN_BYTES or not _THREADS.allowed():
        work(0, n)
        return
    with _THREADS.count_lock:
        alone = _THREADS.active == 0
        _THREADS.active += 1
    try:
        if not alone or not _THREADS.busy.acquire(blocking=False):
            # Another thread is cutting a batch too: both cores have work already.
            work(0, n)
            return
        try:
            ranges = _Ranges(n)

            def drain() -> None:
                try:
                    for start, stop in ranges:
                        work(start, stop)
                except BaseException:
                    ranges.stop()
                    raise

            future = _THREADS.executor().submit(drain)
            try:
                drain()
            finally:
                future.result()
        finally:
            _THREADS.busy.release()
    finally:
        with _THREADS.count_lock:
            _THREADS.active -= 1


class _Ranges:
    """Consecutive ranges of ``range(n)`` for two threads to take: a quarter of what is left
    each time, at least ``_MIN_RANGE`` images but for the last (guided scheduling)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.next = 0
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            with self.lock:
                start = self.next
                if start >= self.n:
                    return
                stop = min(self.n, start + max(_MIN_RANGE, (self.n - start) // 4))
                self.next = stop
            yield start, stop

    def stop(self) -> None:
        """Hand out no more ranges (the ranges already taken still run)."""
        with self.lock:
            self.next = self.n


_MIN_RANGE = 2


class _PerThread:
    """One object per thread, made on first use (a kernel's scratch for the ranges it takes)."""

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make
        self.made: dict[int, object] = {}

    def get(self):
        key = threading.get_ident()
        found = self.made.get(key)
        if found is None:
            found = self.made[key] = self.make()
        return found


class _WindowWriter:
    """Copies one window into its slot of the output, mirrored and mean-subtracted as asked."""

    def __init__(self, dtype, channels: int, size: tuple[int, int], mean: np.ndarray | None):
        self.use_cv = np.dtype(dtype) in CV_DTYPES and channels <= 4
        self.scalar = None if mean is None else _scalar(mean)
        self.mean32 = None if mean is None else mean.astype(np.float32)
        # Mirroring the small uint8 window first moves a quarter of the bytes of a float mirror.
        self.flipped = None if mean is None else np.empty((*size, channels), dtype)

    def write(self, view: np.ndarray, flip: bool, dst: np.ndarray) -> None:
        if not self.use_cv:
            view = view[:, ::-1] if flip else view
            if self.mean32 is None:
                dst[...] = view
            else:
                np.subtract(view, self.mean32, out=dst, casting="unsafe")
        elif self.scalar is None:
            if flip:
                cv2.flip(cv_view(view), 1, dst=cv_view(dst))
            else:
                dst[...] = view
        else:
            if flip:
                cv2.flip(cv_view(view), 1, dst=cv_view(self.flipped))
                view = self.flipped
            cv2.subtract(cv_view(view), self.scalar, dst=cv_view(dst), dtype=cv2.CV_32F)


def center_crop(
    batch: np.ndarray,
    size: int | tuple[int, int],
    *,
    mean: Sequence[float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The centred window of every image (rounded towards the top-left when the margin is odd)."""
    batch = check_batch(batch, exact=True)
    h, w = as_size(size)
    _check_fits(batch.shape[1:], (h, w), "crop")
    top, left = (batch.shape[1] - h) // 2, (batch.shape[2] - w) // 2
    return crop(batch, top, left, (h, w), mean=mean, out=out)


def five_crop_positions(
    height: int, width: int, size: int | tuple[int, int]
) -> list[tuple[int, int]]:
    """(top, left) of the five crops: top-left, top-right, bottom-left, bottom-right, centre."""
    h, w = as_size(size)
    _check_fits((height, width, 1), (h, w), "crop")
    bottom, right = height - h, width - w
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]


def five_crop(
    batch: np.ndarray,
    size: int | tuple[int, int],
    *,
    flip: bool = False,
    mean: Sequence[float] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The four corner crops and the centre crop of every image.

    Args:
        batch: (B, H, W, C) array.
        size: (height, width) of the crops, or one int for squares.
        flip: mirror every crop horizontally.
        mean: optional per-channel mean to subtract (the result is then float32).
        out: optional (B, 5, h, w, C) buffer.

    Returns:
        (B, 5, h, w, C) in the order top-left, top-right, bottom-left, bottom-right, centre.
    """
    return _multi_crop(batch, size, (flip,), mean, out)


def ten_crop(
    batch: np.ndarray,
    size: int | tuple[int, int],
    *,
    mirror: bool = True,
    mean: Sequence[float] | None = None,
    out: np.ndarray | None = None,
    load: Loader | None = None,
) -> np.ndarray:
    """Five crops, then the horizontal mirror of each of them in the same order.

    ``load`` works as in ``crop``: the batch is filled range by range just before it is cut.

    Returns:
        (B, 10, h, w, C): top-left, top-right, bottom-left, bottom-right, centre, then their
        mirrors; (B, 5, h, w, C) with ``mirror=False``. Float32 when ``mean`` is given.
    """
    return _multi_crop(batch, size, (False, True) if mirror else (False,), mean, out, load)


def _multi_crop(batch, size, mirrors: tuple[bool, ...], mean, out, load=None) -> np.ndarray:
    """The five crops of every image once per entry of ``mirrors`` (mirrored where true)."""
    batch = check_batch(batch, exact=True)
    h, w = as_size(size)
    n, height, width, channels = batch.shape
    positions = five_crop_positions(height, width, (h, w))
    mean_vec = None if mean is None else _mean_vector(mean, channels)
    dtype = batch.dtype if mean_vec is None else np.float32
    out = _output(out, (n, 5 * len(mirrors), h, w, channels), dtype)
    if mean_vec is None and not any(mirrors):
        if load is not None:
            load(0, n)
        for k, (top, left) in enumerate(positions):
            np.copyto(out[:, k], batch[:, top : top + h, left : left + w])
        return out

    writers = _PerThread(lambda: _WindowWriter(batch.dtype, channels, (h, w), mean_vec))

    def cut(start: int, stop: int) -> None:
        writer = writers.get()
        # Image by image, so the source image stays in cache while its windows are cut.
        for i, image in _images(batch, load, start, stop):
            for m, mirror in enumerate(mirrors):
                for k, (top, left) in enumerate(positions):
                    view = image[top : top + h, left : left + w]
                    writer.write(view, mirror, out[i, 5 * m + k])

    _split_images(n, out.nbytes, cut)
    return out


def rescale(batch: np.ndarray, scale: float, offset: float = 0.0) -> np.ndarray:
    """``batch * scale + offset`` as float32 (e.g. scale=1/255 maps uint8 to [0, 1])."""
    batch = check_batch(batch)
    out = np.multiply(batch, np.float32(scale), dtype=np.float32)
    if offset:
        out += np.float32(offset)
    return out


def minmax_normalize(batch: np.ndarray) -> np.ndarray:
    """Scale each image (H, W, C) to [0, 1] by its own minimum and maximum; flat images give 0."""
    batch = check_batch(batch)
    data = batch.astype(_work_dtype(batch.dtype))
    axes = (-3, -2, -1)
    low = data.min(axis=axes, keepdims=True)
    span = data.max(axis=axes, keepdims=True) - low
    data -= low
    data /= np.where(span > 0, span, 1.0)
    return data.astype(np.float32, copy=False)


def percentile_normalize(batch: np.ndarray, low: float = 5, high: float = 95) -> np.ndarray:
    """Clip each image to its own ``low``/``high`` percentiles and scale that range to [0, 1].

    A flat image (both percentiles equal) becomes all zeros instead of dividing by zero.
    """
    batch = check_batch(batch)
    _check_percentiles(low, high)
    shape = batch.shape
    work = _work_dtype(batch.dtype)
    flat = batch.reshape(-1, shape[-3] * shape[-2] * shape[-1]).astype(work)
    lo, hi = np.percentile(flat, [low, high], axis=1, keepdims=True).astype(work)
    span = hi - lo
    np.clip(flat, lo, hi, out=flat)
    flat -= lo
    flat /= np.where(span > 0, span, 1.0)
    return flat.reshape(shape).astype(np.float32, copy=False)


def _work_dtype(dtype: np.dtype) -> type:
    """float32 where it holds every value exactly (8- and 16-bit data, float32), else float64:
    a float64 image of values near 1e8 loses its detail in float32 before the minimum is taken."""
    return np.float32 if dtype.itemsize <= 2 or dtype == np.float32 else np.float64


def _check_percentiles(low: float, high: float) -> None:
    for value in (low, high):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
            raise UsageError(f"percentiles must be numbers; got low={low!r}, high={high!r}")
    if not (0 <= low < high <= 100):
        raise UsageError(
            f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}"
        )


def load_means(means: Mapping[str, float] | str | os.PathLike | Sequence[float]) -> np.ndarray:
    """The (R, G, B) means from a means.json path, a dict with R, G, B keys, or three numbers.

    Raises:
        LayoutError: the file does not exist.
        DatasetFormatError: the file, or the dict (a means.json document), is no means.json.
        UsageError: numbers given in code are not three finite means.
    """
    if isinstance(means, (str, os.PathLike)):
        return read_means(means)
    # Numbers passed in code are an argument; a means.json document is data.
    return means_vector(means, error=DatasetFormatError if isinstance(means, Mapping)
                        else UsageError)


# --------------------------------------------------------------------------------------------
# preprocessors


class MeanSubtract:
    """Subtract the training set's per-channel mean (the book's MeanPreprocessor), to float32.

    Place it after the crops and flips: the result is the same (the mean is per channel) and
    :class:`Compose` then subtracts it while cutting each window, never converting the full image.

    Args:
        means: a means.json path, a dict with R, G and B keys (docs/formats.md), or three numbers.
    """

    def __init__(self, means: Mapping[str, float] | str | os.PathLike | Sequence[float]) -> None:
        self.mean = load_means(means)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The same shape; the images must have three channels."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3 or shape[-1] != 3:
            raise UsageError(
                f"MeanSubtract needs RGB images (..., H, W, 3), got samples of shape {shape}"
            )
        return shape

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return subtract_mean(batch, self.mean)

    def fuse(self, following):
        """Fold this subtraction into a following crop (the result is the same)."""
        fused = _as_plan(following)
        if fused is None or fused.mean is not None:
            return None
        return fused.with_mean(self.mean)

    def __repr__(self) -> str:
        r, g, b = (round(float(v), 3) for v in self.mean)
        return f"MeanSubtract(R={r}, G={g}, B={b})"


class RandomPatch:
    """A random ``height`` x ``width`` window of each image (the book's PatchPreprocessor)."""

    def __init__(self, height: int, width: int | None = None) -> None:
        self.size = _size(height, width)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(h, w, C); raises UsageError when the patch does not fit."""
        channels = _check_fits(shape, self.size, "patch")[2]
        return (*self.size, channels)

    def draw(self, batch_shape: tuple[int, ...], rng: np.random.Generator):
        """The (tops, lefts) of one batch's windows."""
        rng = require_rng(rng, "RandomPatch")
        n, height, width = batch_shape[:3]
        h, w = self.size
        return rng.integers(0, height - h + 1, n), rng.integers(0, width - w + 1, n)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batch = check_batch(batch)
        self.output_shape(batch.shape[1:])
        tops, lefts = self.draw(batch.shape, rng)
        return crop(batch, tops, lefts, self.size)

    def fuse(self, following):
        return _CropPlan(self).fuse(following)

    def __repr__(self) -> str:
        return f"RandomPatch({self.size[0]}, {self.size[1]})"


class CenterCrop:
    """The centred ``height`` x ``width`` window of each image."""

    def __init__(self, height: int, width: int | None = None) -> None:
        self.size = _size(height, width)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(h, w, C); raises UsageError when the crop does not fit."""
        channels = _check_fits(shape, self.size, "crop")[2]
        return (*self.size, channels)

    def draw(self, batch_shape: tuple[int, ...], rng: np.random.Generator | None):
        n, height, width = batch_shape[:3]
        h, w = self.size
        return np.full(n, (height - h) // 2), np.full(n, (width - w) // 2)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        batch = check_batch(batch)
        self.output_shape(batch.shape[1:])
        return center_crop(batch, self.size)

    def fuse(self, following):
        return _CropPlan(self).fuse(following)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size[0]}, {self.size[1]})"


class TenCrop:
    """Ten views per image for evaluation: 4 corners, centre, then the mirror of each.

    Output samples are (10, h, w, C) (or (5, h, w, C) with ``mirror=False``), in the order
    top-left, top-right, bottom-left, bottom-right, centre, then their horizontal mirrors.
    """

    def __init__(self, height: int, width: int | None = None, mirror: bool = True) -> None:
        self.size = _size(height, width)
        self.mirror = flag(mirror, "mirror")
        self.mean: np.ndarray | None = None

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(10, h, w, C) or (5, h, w, C); raises UsageError when the crop does not fit."""
        channels = _check_fits(shape, self.size, "crop")[2]
        if self.mean is not None and channels != self.mean.size:
            raise UsageError(f"MeanSubtract needs RGB images, got {channels} channels")
        return (10 if self.mirror else 5, *self.size, channels)

    def __call__(
        self, batch: np.ndarray, rng: np.random.Generator | None = None, load: Loader | None = None
    ) -> np.ndarray:
        batch = check_batch(batch)
        self.output_shape(batch.shape[1:])
        return ten_crop(batch, self.size, mirror=self.mirror, mean=self.mean, load=load)

    def with_mean(self, mean: Mapping[str, float] | str | os.PathLike | Sequence[float]
                  ) -> TenCrop:
        """The same crops with a per-channel mean subtracted while they are cut (float32).

        ``mean``: what :class:`MeanSubtract` takes (three numbers, a means.json path or dict).
        """
        fused = TenCrop(*self.size, mirror=self.mirror)
        fused.mean = load_means(mean)
        return fused

    def fuse(self, following):
        if isinstance(following, MeanSubtract) and self.mean is None:
            return self.with_mean(following.mean)
        return None

    def __repr__(self) -> str:
        extra = "" if self.mean is None else " + MeanSubtract"
        return f"TenCrop({self.size[0]}, {self.size[1]}, mirror={self.mirror}){extra}"


class _CropPlan:
    """A crop, optionally with a random horizontal mirror and a mean subtraction, in one pass.

    Compose builds it from adjacent steps; it draws from ``rng`` in exactly the order the separate
    steps would, so fused and unfused pipelines give the same batches. A mirror drawn before the
    crop (``flip_first``) becomes a mirror of the window at the mirrored position.
    """

    def __init__(
        self,
        cropper,
        flip_p: float | None = None,
        mean: np.ndarray | None = None,
        flip_first: bool = False,
    ) -> None:
        self.cropper = cropper
        self.flip_p = flip_p
        self.mean = mean
        self.flip_first = flip_first

    def with_mean(self, mean: np.ndarray) -> _CropPlan:
        return _CropPlan(self.cropper, self.flip_p, mean, self.flip_first)

    def with_flip(self, p: float, first: bool) -> _CropPlan | None:
        if self.flip_p is not None:
            return None
        return _CropPlan(self.cropper, p, self.mean, first)

    def fuse(self, following):
        if isinstance(following, MeanSubtract) and self.mean is None:
            return self.with_mean(following.mean)
        if isinstance(following, RandomFlip):
            mirror_p = following.horizontal_flip_probability
            if mirror_p is not None:
                return self.with_flip(mirror_p, first=False)
        return None

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        out = self.cropper.output_shape(shape)
        if self.mean is not None and out[-1] != self.mean.size:
            raise UsageError(f"MeanSubtract needs RGB images, got {out[-1]} channels")
        return out

    def __call__(
        self, batch: np.ndarray, rng: np.random.Generator, load: Loader | None = None
    ) -> np.ndarray:
        batch = check_batch(batch)
        self.output_shape(batch.shape[1:])
        n, width = batch.shape[0], batch.shape[2]
        flips = None
        if self.flip_p is not None and self.flip_first:
            flips = require_rng(rng, "RandomFlip").random(n) < self.flip_p
        tops, lefts = self.cropper.draw(batch.shape, rng)
        if flips is not None:
            # Cutting a mirrored image at x is mirroring the window cut at width - x - w.
            lefts = np.where(flips, width - lefts - self.cropper.size[1], lefts)
        elif self.flip_p is not None:
            flips = require_rng(rng, "RandomFlip").random(n) < self.flip_p
        return crop(batch, tops, lefts, self.cropper.size, flips=flips, mean=self.mean, load=load)

    def __repr__(self) -> str:
        parts = [repr(self.cropper)]
        flip = f"RandomFlip(p={self.flip_p})"
        if self.flip_p is not None:
            parts.insert(0 if self.flip_first else 1, flip)
        if self.mean is not None:
            parts.append("MeanSubtract")
        return "+".join(parts)


def fuse_flip_before(p: float, following) -> _CropPlan | None:
    """A random horizontal mirror with probability ``p`` folded into a following crop, or None.

    Compose uses it so ``[RandomFlip(), RandomPatch(...), MeanSubtract(...)]`` (augmentation
    first, as the generators order it) runs as one pass too.
    """
    plan = _as_plan(following)
    if not isinstance(plan, _CropPlan):
        return None
    return plan.with_flip(p, first=True)


def _as_plan(op) -> _CropPlan | TenCrop | None:
    """The crop step ``op`` as something a mean subtraction can fold into, or None."""
    if isinstance(op, (_CropPlan, TenCrop)):
        return op
    if isinstance(op, (RandomPatch, CenterCrop)):
        return _CropPlan(op)
    return None


class Rescale:
    """``batch * scale + offset`` as float32 (e.g. ``Rescale(1 / 255)``)."""

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        self.scale, self.offset = real(scale, "scale"), real(offset, "offset")
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise UsageError(f"scale and offset must be finite numbers, got {scale}, {offset}")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return rescale(batch, self.scale, self.offset)

    def __repr__(self) -> str:
        return f"Rescale({self.scale}, offset={self.offset})"


class MinMaxNormalize:
    """Scale each image to [0, 1] by its own minimum and maximum (flat images become 0)."""

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return minmax_normalize(batch)

    def __repr__(self) -> str:
        return "MinMaxNormalize()"


class PercentileNormalize:
    """Clip each image to its ``low``/``high`` percentiles and scale that range to [0, 1]."""

    def __init__(self, low: float = 5, high: float = 95) -> None:
        _check_percentiles(low, high)
        self.low = float(low)
        self.high = float(high)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return percentile_normalize(batch, self.low, self.high)

    def __repr__(self) -> str:
        return f"PercentileNormalize(low={self.low}, high={self.high})"


class Compose:
    """Apply preprocessors in order; a chain of steps behaves as one.

    Adjacent steps that can run in one pass are fused when the chain is built: a crop
    (RandomPatch, CenterCrop) with a horizontal-only RandomFlip just before or after it, and a
    crop or a TenCrop with a MeanSubtract on either side (a TenCrop mirrors its crops itself;
    a flip before it stays a step of its own). The batches are the same as running the steps
    one by one (the same draws from ``rng``, the same pixels); only the time differs.

    Args:
        ops: preprocessors or augmenters; nested Compose objects are flattened.
    """

    def __init__(self, ops: Iterable) -> None:
        flat = []
        for op in ops:
            if isinstance(op, Compose):
                flat.extend(op.ops)
                continue
            if not callable(op) or not callable(getattr(op, "output_shape", None)):
                raise UsageError(
                    f"{op!r} is not a preprocessor: it needs __call__(batch, rng) and "
                    "output_shape(shape)"
                )
            flat.append(op)
        self.ops = flat
        self._steps = _fuse_all(flat)

    @property
    def cuts_first(self) -> bool:
        """Whether the first step cuts windows (a crop fused with a flip or a mean, or a
        ten-crop): it reads its input range by range and never writes into it."""
        return bool(self._steps) and isinstance(self._steps[0], (_CropPlan, TenCrop))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-sample shape after every step; UsageError from the first that cannot apply."""
        shape = tuple(int(s) for s in shape)
        for op in self.ops:
            shape = tuple(op.output_shape(shape))
        return shape

    def __call__(
        self, batch: np.ndarray, rng: np.random.Generator | None = None, load: Loader | None = None
    ) -> np.ndarray:
        """Run the chain on one batch.

        Args:
            batch: the input batch (it is not modified).
            rng: the generator every random step draws from.
            load: optional ``load(start, stop)`` that fills ``batch[start:stop]`` (see
                ``Loader``): a first step that cuts windows with a mean or a flip folded in
                (a crop fused with them, or a ten-crop) loads as it cuts; any other first step
                (a bare crop among them) gets the whole batch loaded before it runs.
        """
        for k, step in enumerate(self._steps):
            if k == 0 and load is not None and self.cuts_first:
                batch = step(batch, rng, load=load)
                continue
            if k == 0 and load is not None:
                load(0, len(batch))
            batch = step(batch, rng)
        if not self._steps and load is not None:
            load(0, len(batch))
        return batch

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(op) for op in self.ops)}])"


def _fuse_pair(op, following):
    """``op`` and ``following`` as one step, or None when they do not fuse."""
    if isinstance(op, RandomFlip):
        # augment sits below this module and knows nothing of crops: the fusing happens here.
        p = op.horizontal_flip_probability
        return None if p is None else fuse_flip_before(p, following)
    fuse = getattr(op, "fuse", None)
    return fuse(following) if fuse is not None else None


def _fuse_all(ops: list) -> list:
    steps: list = []
    for op in ops:
        if steps:
            merged = _fuse_pair(steps[-1], op)
            if merged is not None:
                steps[-1] = merged
                continue
        steps.append(op)
    return steps
