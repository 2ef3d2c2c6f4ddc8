"""The dsprep HDF5 schema (``dsprep-hdf5/1``): write a file atomically; open, describe, check it.

Knows the on-disk layout (docs/formats.md, "HDF5 file") and nothing of crops, batches or
augmentation.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import json
import mmap
import os
import re
import threading
import unicodedata
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import (
    DatasetFormatError,
    DestinationExistsError,
    DsprepError,
    LayoutError,
    UsageError,
)
from .fileio import (
    access_denied,
    progress_bar,
    refuse_access_denied,
    sibling,
    sync_file,
    sync_folder,
)
from .stats import ChannelStats

SCHEMA = "dsprep-hdf5/1"
PARTIAL_SUFFIX = ".partial"
COMPRESSIONS = ("none", "lzf", "gzip")
ORDERS = ("shuffled", "sorted")  # of the rows build-hdf5 writes (its --order)
DEFAULT_CHUNK_IMAGES = 64
# Rows of labels and file names held before they are written (a few hundred kB at most).
_META_ROWS = 4096
_STR = h5py.string_dtype("utf-8")


def partial_path(path: str | os.PathLike) -> Path:
    """Where a file is written before it is complete."""
    return sibling(path, PARTIAL_SUFFIX)


# The journal build-hdf5 keeps in OUT while it renames its finished files into place, and where
# each waits for its name: NAME.partial for an HDF5 file, NAME.next for the small files.
PUBLISHING_NAME = ".dsprep-build-publishing.json"
NEXT_SUFFIX = ".next"


def waiting_path(final: str | os.PathLike) -> Path:
    """Where a finished output of build-hdf5 waits for its final name."""
    final = Path(final)
    return partial_path(final) if final.suffix == ".hdf5" else sibling(final, NEXT_SUFFIX)


def half_published(folder: str | os.PathLike) -> bool:
    """Whether a build-hdf5 into ``folder`` stopped among its final renames: some of its files
    carry their final names, others still wait, so the folder holds files of two builds."""
    journal = Path(folder) / PUBLISHING_NAME
    try:
        names = json.loads(journal.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except PermissionError as exc:  # (a folder this user cannot enter: chmod -R 644)
        raise access_denied(exc, folder) from exc
    except (OSError, ValueError):
        return True
    if isinstance(names, dict):  # being discarded: what waits goes, nothing was renamed
        names = names.get("discard", [])
    return any(isinstance(n, str) and n == Path(n).name and waiting_path(Path(folder) / n).exists()
               for n in (names if isinstance(names, list) else []))


# HDF5 refuses chunks of 4 GiB or more: larger images get fewer per chunk.
MAX_CHUNK_BYTES = (1 << 32) - 1

def chunk_rows(chunk_images: int, capacity: int, size: tuple[int, int]) -> int:
    """Images per chunk of a file made for ``capacity`` images of ``size`` (height, width):
    ``chunk_images``, or fewer for a smaller file or for chunks HDF5 would refuse."""
    height, width = size
    return max(1, min(int(chunk_images), max(1, capacity), MAX_CHUNK_BYTES // (height * width * 3)))


class HDF5Writer:
    """Append rows to a new dsprep HDF5 file, written under ``NAME.partial`` until :meth:`close`.

    Use as a context manager: on a clean exit the file gets its final attributes and is renamed to
    its final name; on an exception the partial file is removed, so a final name is always whole.

    Args:
        path: the final file name.
        capacity: the number of rows at most (the file is trimmed to the rows appended).
        image_size: (height, width) of every image.
        label_names: class names in id order.
        chunk_images: images per HDF5 chunk.
        compression: "none", "lzf" or "gzip".
        attrs: further root attributes (split, resize, interpolation, order, seed, ...).
        overwrite: replace an existing file at ``path``.
        direct: write whole uncompressed chunks of pixels with ``O_DIRECT`` where the file
            system allows it (Linux), bypassing the page cache: the bytes go from the caller's
            buffer to the disk with no copy through the kernel's cache, which on a machine
            whose cores are busy decoding is CPU time the decoders get back. All chunks are
            then allocated when the file is created, 4 KiB-aligned; the space of chunks left
            empty because rows were skipped is not given back (at most the skipped rows, rounded
            up to whole chunks). Pixels in buffers that are not page-aligned, partial chunks and
            compressed files go through h5py as usual.
        check_names: refuse file names verify would (empty, absolute, with '..', not text);
            off only to copy the rows of a file as they are.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        capacity: int,
        image_size: tuple[int, int],
        label_names: Sequence[str],
        *,
        chunk_images: int = DEFAULT_CHUNK_IMAGES,
        compression: str = "none",
        attrs: dict | None = None,
        overwrite: bool = False,
        direct: bool = False,
        check_names: bool = True,
    ) -> None:
        self.path = Path(path)
        self._check_names = check_names
        if self.path.exists() and not overwrite:
            raise DestinationExistsError(
                f"{self.path} already exists; use --force (overwrite=True) to replace it"
            )
        if compression not in COMPRESSIONS:
            raise UsageError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
        names = _checked_names(label_names, f"{self.path}")
        self._label_names = names
        self.partial = partial_path(self.path)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.capacity = int(capacity)
        height, width = image_size
        self.count = 0
        # Labels and file names wait here and go to the file a few thousand rows at a time:
        # two small h5py writes per block cost the writing process ~1 ms.
        self._meta_start = 0
        self._labels: list[np.ndarray] = []
        self._names: list[str] = []
        self._direct: _DirectChunks | None = None
        direct = bool(direct and compression == "none" and _DirectChunks.supported())
        # "w" truncates a stale partial file left by an interrupted run. Aligned big objects
        # let whole chunks be written with O_DIRECT.
        align = {"alignment_threshold": _PAGE, "alignment_interval": _PAGE} if direct else {}
        try:
            self._file = h5py.File(self.partial, "w", **align)
        except (OSError, RuntimeError) as exc:
            raise _write_failure(exc, self.partial) from exc
        self._open = True  # ours, not HDF5's: a close that failed leaves HDF5's view unsure
        try:
            try:
                self._create(height, width, names, chunk_images, compression, attrs,
                             direct)
                # What HDF5 holds back (the names' data) is written now, where an error is
                # raised: written when an object is freed, its error would be ignored.
                self._file.flush()
            except (OSError, RuntimeError) as exc:
                raise _write_failure(exc, self.partial) from exc
            if direct:
                self._direct = _DirectChunks.open(self.images, self.partial)
        except BaseException:
            self.abort()
            raise

    def _create(self, height, width, label_names, chunk_images, compression, attrs,
                direct) -> None:
        chunk = chunk_rows(chunk_images, self.capacity, (height, width))
        early = {}
        if direct:
            # Every chunk allocated now (so its address is known), never filled by HDF5, and no
            # chunk cache that could hold a stale copy of a chunk written around it.
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            early = {"dcpl": dcpl, "fill_time": "never", "rdcc_nbytes": 0}
        self.images = self._file.create_dataset(
            "images",
            shape=(self.capacity, height, width, 3),
            maxshape=(None, height, width, 3),
            dtype=np.uint8,
            chunks=(chunk, height, width, 3),
            compression=None if compression == "none" else compression,
            **early,
        )
        self.labels = self._file.create_dataset(
            "labels", shape=(self.capacity,), maxshape=(None,), dtype=np.int32
        )
        self.filenames = self._file.create_dataset(
            "filenames", shape=(self.capacity,), maxshape=(None,), dtype=_STR
        )
        self.names = self._file.create_dataset(
            "label_names", data=np.array(list(label_names), dtype=object), dtype=_STR)
        root = self._file.attrs
        root["schema"] = SCHEMA
        root["dsprep_version"] = __version__
        root["image_size"] = np.array([height, width], dtype=np.int64)
        root["color"] = "RGB"
        for key, value in (attrs or {}).items():
            root[key] = value

    def append(self, images: np.ndarray, labels: Sequence[int], filenames: Sequence[str]) -> None:
        """Write a block of rows: images (n, H, W, 3) uint8, their labels and source names."""
        n = len(images)
        if n == 0:
            return
        end = self.count + n
        if end > self.capacity:
            raise UsageError(f"{self.path}: {n} more rows exceed the capacity {self.capacity}")
        labels = np.asarray(labels, dtype=object if _ragged(labels) else None).reshape(-1)
        filenames = [_text_name(f) for f in filenames]
        if len(labels) != n or len(filenames) != n:
            raise UsageError(f"{self.path}: {n} images but {len(labels)} labels and "
                             f"{len(filenames)} file names")
        bad = next((i for i, f in enumerate(filenames)
                    if not isinstance(f, str) or not relative_name(f)),
                   None) if self._check_names else None
        if bad is not None:
            raise UsageError(f"{self.path}: file names are paths relative to the source "
                             f"folder, as text (not empty, no leading '/', no '..'); row "
                             f"{self.count + bad}'s is {filenames[bad]!r}")
        labels = class_ids(labels, len(self._label_names), f"{self.path}")
        images = pixels(images, f"{self.path}", (int(self.images.shape[1]),
                                                 int(self.images.shape[2])))
        try:
            done = self._direct.write(images, self.count) if self._direct is not None else 0
            if done < n:
                self.images.write_direct(images[done:], dest_sel=np.s_[self.count + done:end])
            self._labels.append(labels)
            self._names += filenames
            self.count = end
            if len(self._names) >= _META_ROWS:
                self._write_meta()
        except (OSError, RuntimeError) as exc:
            raise _write_failure(exc, self.partial) from exc

    def _write_meta(self) -> None:
        if self._names:
            start, stop = self._meta_start, self._meta_start + len(self._names)
            self.labels[start:stop] = np.concatenate(self._labels)
            self.filenames[start:stop] = np.array(self._names, dtype=object)
            self._meta_start, self._labels, self._names = stop, [], []

    def close(self, **attrs) -> Path:
        """Trim to the rows written, set final attributes, and rename into place."""
        self.finish(**attrs)
        return self.publish()

    def finish(self, **attrs) -> Path:
        """Trim to the rows written, set final attributes and close, leaving ``NAME.partial``.

        Lets a caller that writes several files rename them all only once every one is whole
        (see :meth:`publish`).
        """
        if self._file.id.valid:
            try:
                self._close_direct()
                self._write_meta()
                for ds in (self.images, self.labels, self.filenames):
                    ds.resize(self.count, axis=0)
                self._file.attrs["count"] = self.count
                for key, value in attrs.items():
                    self._file.attrs[key] = value
                # A full disk must fail here, not in close: HDF5 does not recover from a close
                # that failed (the interpreter crashes at exit), while abort() can still close
                # a file whose flush failed.
                self._file.flush()
                self._file.close()
                self._open = False
            except (OSError, RuntimeError) as exc:
                raise _write_failure(exc, self.partial) from exc
        return self.partial

    def publish(self) -> Path:
        """Flush the finished partial file to the disk and rename it to its final name."""
        if self._file.id.valid:
            self.finish()
        sync_file(self.partial)
        os.replace(self.partial, self.path)
        sync_folder(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Close and remove the partial file (never raising for the close: it runs when
        something has gone wrong already)."""
        try:
            with contextlib.suppress(OSError):
                self._close_direct()
            if self._open:
                # The file is discarded, so its descriptors are pointed at the null device
                # first: on a full disk the flush of the close would fail, and a failed close
                # leaves HDF5 in a state that crashes the interpreter at exit.
                _to_null(self.partial)
                with contextlib.suppress(OSError, RuntimeError):
                    self._file.close()
                self._open = False
        finally:
            self.partial.unlink(missing_ok=True)

    def _close_direct(self) -> None:
        if self._direct is not None:
            direct, self._direct = self._direct, None
            direct.close()

    def __enter__(self) -> HDF5Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()  # a file that could not be finished is not left behind
                raise
        else:
            self.abort()


def _to_null(path: Path) -> None:
    """Point this process's descriptors open on ``path`` at the null device (Linux: found in
    /proc/self/fd, without asking HDF5, whose state after a failed close cannot be trusted)."""
    try:
        target = os.path.realpath(path)
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")
               if _link(f"/proc/self/fd/{fd}") == target]
    except OSError:
        return
    if not fds:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    finally:
        os.close(null)


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _write_failure(exc: BaseException, path: Path) -> Exception:
    """A write error of HDF5's (often a RuntimeError whose text holds the errno) as an OSError
    naming the file, or a DsprepError when it gives no errno."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno else None
    if code is None:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code:
        return OSError(code, os.strerror(code), str(path))
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DsprepError(f"{path}: HDF5 could not write the file ({first})")


_PAGE = 4096


def page_aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-filled uint8 array whose data starts on a page boundary (for ``O_DIRECT``).

    Private anonymous memory, like any array: a forked child gets its own copy.
    """
    nbytes = int(np.prod(shape))
    memory = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE)
    return np.frombuffer(memory, dtype=np.uint8, count=nbytes).reshape(shape)


class _DirectChunks:
    """Writes whole chunks of an early-allocated, unfiltered dataset with ``O_DIRECT``."""

    def __init__(self, fd: int, offsets: np.ndarray, chunk_rows: int, row_bytes: int) -> None:
        self.fd = fd
        self.offsets = offsets
        self.chunk_rows = chunk_rows
        self.row_bytes = row_bytes
        self.proven = False  # a direct write has gone through

    @staticmethod
    def supported() -> bool:
        return hasattr(os, "O_DIRECT") and hasattr(os, "pwrite")

    @classmethod
    def open(cls, ds: h5py.Dataset, path: Path) -> _DirectChunks | None:
        """The writer for ``ds``, or None where the chunks or the file system do not allow it."""
        chunk_rows = int(ds.chunks[0])
        row_bytes = int(np.prod(ds.shape[1:]))
        if (chunk_rows * row_bytes) % _PAGE:
            return None
        offsets = chunk_offsets(ds)
        if offsets is None or (offsets % _PAGE).any():
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
        except OSError:  # tmpfs and some network file systems refuse O_DIRECT
            return None
        return cls(fd, offsets, chunk_rows, row_bytes)

    def write(self, images: np.ndarray, start: int) -> int:
        """Write the leading whole chunks of ``images`` (rows from ``start``); rows written.

        Writes nothing unless ``start`` begins a chunk and ``images`` starts on a page; the
        caller writes the rest (a partial chunk, an unaligned buffer) another way. A file
        system that turns O_DIRECT down at its first write (EINVAL) ends direct writing.
        """
        k = self.chunk_rows
        whole = len(images) // k
        if self.fd < 0 or whole == 0 or start % k or images.ctypes.data % _PAGE:
            return 0
        view = memoryview(images.reshape(-1)).cast("B")
        size = k * self.row_bytes
        for i in range(whole):
            offset = int(self.offsets[start // k + i])
            piece = view[i * size:(i + 1) * size]
            try:
                written = os.pwrite(self.fd, piece, offset)
                while written < size:  # a short write: carry on from where it stopped
                    more = os.pwrite(self.fd, piece[written:], offset + written)
                    if more <= 0:
                        raise OSError(f"short write at byte {offset + written}")
                    written += more
            except OSError as exc:
                if not self.proven and exc.errno == errno.EINVAL:
                    self.close()
                    return 0
                raise
            self.proven = True
        return whole * k

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _names_ok(names: list[str]) -> bool:
    """Whether class names can name the label ids: one or more, none empty or repeated."""
    return bool(names) and len(set(names)) == len(names) and all(names)


def _checked_names(label_names, where: str) -> list[str]:
    """The class names, refused where verify would refuse them (none, empty or repeated)."""
    # (An iterator is read once; bytes, as h5py reads names from another file, are text.)
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in label_names]
    if not _names_ok(names):
        raise UsageError(f"{where}: label_names {names} must be one or more names, none "
                         "empty or repeated (label i is label_names[i])")
    return names


def _ragged(values) -> bool:
    """Whether ``values`` hold something numpy would refuse to make one array of (None)."""
    try:
        np.asarray(values)
    except (ValueError, TypeError):
        return True
    return False


def class_ids(labels, classes: int, where: str) -> np.ndarray:
    """``labels`` as int32 class ids, each an index into the ``classes`` label names; refused
    in words otherwise (names given for ids, None, ids outside 0..classes-1)."""
    array = np.asarray(labels, dtype=object if _ragged(labels) else None).reshape(-1)
    if array.size == 0:
        return np.zeros(0, dtype=np.int32)
    ids = None
    if array.dtype.kind in "iu":
        ids = array.astype(np.int64)
    elif array.dtype.kind == "O":  # Python ints of an object array
        whole = [v for v in array.tolist() if isinstance(v, (int, np.integer))
                 and not isinstance(v, (bool, np.bool_))]
        if len(whole) == len(array):
            ids = np.array(whole, dtype=np.int64)
    if ids is None or (len(ids) and (ids.min() < 0 or ids.max() >= classes)):
        seen = (f"{array.dtype} values such as {array[0]!r}" if ids is None else
                f"ids from {ids.min()} to {ids.max()}")
        raise UsageError(f"{where}: labels must be class ids 0..{classes - 1} (indices into "
                         f"label_names, not the names); got {seen}")
    return ids.astype(np.int32)


def pixels(images, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """``images`` as the rows of a dsprep file, (n, height, width, 3) uint8 RGB, C-ordered;
    refused in words where they are not pixels (floats in 0..1 stored as uint8 would all be
    0, and ints above 255 wrap), or not of that shape."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[3] != 3 or (size is not None
                                                  and tuple(array.shape[1:3]) != size):
        want = f"{size[0]}, {size[1]}" if size is not None else "height, width"
        raise UsageError(f"{where}: images must be (n, {want}, 3) RGB rows; got an array of "
                         f"shape {array.shape} (a grey image needs its three channels: "
                         "np.repeat(x[..., None], 3, axis=-1); RGBA drops its alpha: x[..., :3])")
    if array.dtype != np.uint8:
        whole = array.dtype.kind in "iub"
        if not whole or (array.size and (array.min() < 0 or array.max() > 255)):
            seen = f" from {array.min()} to {array.max()}" if array.size else ""
            raise UsageError(f"{where}: images must be uint8 pixels 0..255; got {array.dtype}"
                             f"{seen} (floats in 0..1: (x * 255).round().astype(np.uint8))")
    return np.ascontiguousarray(array, dtype=np.uint8)


def write_arrays(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: Sequence[int],
    label_names: Sequence[str],
    filenames: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
    **attrs,
) -> Path:
    """Write in-memory arrays as a dsprep HDF5 file in one go (small data, tests, examples).

    ``images`` are (n, height, width, 3) uint8 RGB (any integer type within 0..255 is taken),
    ``labels`` class ids into ``label_names``, ``filenames`` paths relative to a source folder
    (default ``row0``, ``row1``, ...); anything else is refused, as verify would. An existing
    ``path`` is refused (DestinationExistsError) unless ``overwrite``; ``attrs`` are written
    as root attributes (``split``, ``source_root``, ...) over the defaults.
    """
    images = pixels(images, f"{path}")
    label_names = _checked_names(label_names, f"{path}")
    labels = class_ids(labels, len(label_names), f"{path}")
    if filenames is None:
        filenames = [f"row{i}" for i in range(len(images))]
        names = [f"{i:012d}" for i in range(len(images))]  # in the order of their numbers
    else:
        filenames = [_text_name(n) for n in filenames]  # (an iterator is read once)
        names = [str(n) for n in filenames]
    mean = images.reshape(-1, 3).mean(axis=0, dtype=np.float64) if len(images) else np.zeros(3)
    # "sorted" only where the rows are in build-hdf5's sorted order, (label, file name).
    keys = list(zip(np.asarray(labels).reshape(-1).tolist(), names, strict=False))
    order = "sorted" if keys == sorted(keys) else "shuffled"
    defaults = {"split": "train", "resize": "crop", "interpolation": "area", "order": order,
                "seed": 0, "skipped": 0, "mean_rgb": mean}
    defaults.update(attrs)
    with HDF5Writer(path, len(images), images.shape[1:3], label_names, attrs=defaults,
                    overwrite=overwrite) as writer:
        writer.append(images, labels, filenames)
    return Path(path)


def open_dataset(path: str | os.PathLike, locking: str | bool | None = None) -> h5py.File:
    """Open a dsprep HDF5 file read-only after checking it is one.

    ``locking`` is h5py's (None: HDF5's default, or ``HDF5_USE_FILE_LOCKING``).

    Raises:
        LayoutError: the file does not exist.
        DatasetFormatError: it is not HDF5, or not dsprep's schema.
    """
    path = Path(path)
    if half_published(path.parent):
        raise DatasetFormatError(
            f"{path.parent} holds files of two builds: a 'dsprep build-hdf5' into it stopped "
            "while it renamed its files into place; run that build again (it clears the mix "
            "first)")
    if not path.exists():
        hint = ""
        if partial_path(path).exists():
            hint = f" ({partial_path(path).name} is an unfinished build; run build-hdf5 again)"
        raise LayoutError(f"{path} does not exist{hint}")
    if path.is_dir():
        files = sorted(path.glob("*.hdf5"))
        if files:
            such = next((f for f in files if f.name == "test.hdf5"), files[0])
            raise LayoutError(f"{path} is a folder; give one of its HDF5 files, such as {such}")
        raise LayoutError(f"{path} is a folder without HDF5 files: build them from a split with "
                          "'dsprep build-hdf5 SPLIT OUT'")
    try:
        db = _open_for_reading(path, locking)
    except OSError as exc:
        refuse_access_denied(path)  # (HDF5 says "Permission denied" after other words)
        if "unable to lock file" in str(exc):
            # Another process holds it open for writing (h5py's "r+", HDFView): the file may
            # be whole; a rebuild is not the answer.
            raise DatasetFormatError(
                f"{path} is held open for writing by another process (HDF5 could not take a "
                "read lock on it); close that writer, then run this again") from exc
        if zipfile.is_zipfile(path):  # a Keras model (.keras), or a dump's archive
            what = {".keras": "a Keras model: 'dsprep evaluate RUN DATA' scores a run's",
                    ".npz": "a numpy archive: dsprep.store.write_arrays writes arrays as a "
                            "dsprep file"}.get(Path(path).suffix.lower(),
                                               "a zip archive: 'dsprep split' reads a dump's "
                                               "in place")
            raise DatasetFormatError(f"{path} is {what}; this command reads the HDF5 files "
                                     "'dsprep build-hdf5' writes") from exc
        raise DatasetFormatError(
            f"{path} is not a readable HDF5 file ({exc}); build it with 'dsprep build-hdf5'"
        ) from exc
    try:
        with damaged_metadata(path):
            check_schema(db, path)
    except Exception:
        db.close()
        raise
    return db


def _open_for_reading(path: Path, locking) -> h5py.File:
    """h5py.File(path, "r"), also where this process has the file open already with another
    file-locking setting (``h5py.File(path, locking=False)``, the habit on NFS): HDF5 refuses
    a second open whose setting differs, so it takes the setting of the open it shares."""
    try:
        return h5py.File(path, "r", locking=locking)
    except OSError as exc:
        if "locking" not in str(exc) or "don't match" not in str(exc):
            raise
        for other in (False, True):
            try:
                return h5py.File(path, "r", locking=other)
            except OSError:
                continue
        raise


@contextlib.contextmanager
def damaged_metadata(path: str | os.PathLike) -> Iterator[None]:
    """Turn the errors h5py raises on damaged metadata (a dataset's header, an attribute, an
    index node) into a DatasetFormatError that names the file."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, OSError) as exc:
        if isinstance(exc, (DsprepError, FileNotFoundError, PermissionError)):
            raise
        raise DatasetFormatError(
            f"{path} is damaged: its HDF5 metadata cannot be read ({exc}); rebuild it with "
            "'dsprep build-hdf5'") from exc


def chunk_offsets(ds: h5py.Dataset) -> np.ndarray | None:
    """File offsets of the chunks of ``ds``, in row order, for a dataset chunked in whole rows.

    None unless every chunk (one per ``chunks[0]`` rows) has been allocated and each holds
    whole rows.
    """
    if ds.chunks is None or tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
        return None
    chunk_rows = int(ds.chunks[0])
    count = -(-int(ds.shape[0]) // chunk_rows)
    if count == 0 or ds.id.get_num_chunks() != count:
        return None
    offsets = np.full(count, -1, dtype=np.int64)

    def note(info) -> None:
        offsets[info.chunk_offset[0] // chunk_rows] = info.byte_offset

    if hasattr(ds.id, "chunk_iter"):  # HDF5 1.14: one pass over the chunk index
        ds.id.chunk_iter(note)
    elif count <= _CHUNK_INFO_LIMIT:
        # Each lookup scans the chunk index: fine for a few, quadratic for many.
        for i in range(count):
            note(ds.id.get_chunk_info(i))
    else:
        return None
    return None if (offsets < 0).any() else offsets


_CHUNK_INFO_LIMIT = 1000


class Descriptor:
    """An OS file descriptor that closes itself when the last reference to it goes.

    Whoever reads holds a reference for the whole read, so dropping it elsewhere (a generator's
    ``close()``) never closes it under a read, and a forgotten one never leaks.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __enter__(self) -> Descriptor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MappedRows:
    """Image rows that lie back to back in a file, handed out as read-only arrays over memory
    maps of it: windows cut from them read the page cache directly, with no copy first.

    The rows lie in one or more runs, each a range of rows whose bytes follow each other (a
    build's chunks lie so, up to the first of HDF5's index nodes between them). A batch of
    rows within one run is one slice of a map; a batch across two runs has none
    (:meth:`rows_of` returns None): it is read instead, or cut row by row from a
    :class:`MappedFile`.

    Each run is mapped a window at a time (about 256 MB of rows, plus one batch so that any
    batch starting in a window ends in it), and only the few windows used last stay mapped:
    page tables stay small whatever the file's size. A window stays valid while an array over
    it is referenced; the maps hold the file, so a new build replacing the path does not
    disturb them. Truncating the same file in place (as a ``cp`` over it does first), or an
    I/O error under a map (a failing disk, a lost network mount), stops the reading process
    with SIGBUS instead of raising an error: a dsprep file under its final name is never
    rewritten (HDF5Generator notices a file rewritten since it opened it at its next batch).

    Thread-safe.
    """

    WINDOW_BYTES = 256 << 20
    KEEP = 3

    def __init__(self, handle: Descriptor, runs: Sequence[tuple[int, int, int]],
                 shape: tuple[int, ...], batch_rows: int) -> None:
        """``runs``: (first row, rows, byte offset of the first row) of each run, in row
        order, covering every row."""
        self.handle = handle  # the file, held open
        self.runs = [(int(first), int(n), int(offset)) for first, n, offset in runs]
        self._firsts = [first for first, _, _ in self.runs]
        self.rows = self.runs[-1][0] + self.runs[-1][1] if self.runs else 0
        self.shape = tuple(int(s) for s in shape)
        self.row_bytes = int(np.prod(self.shape))
        self.window_rows = max(1, self.WINDOW_BYTES // self.row_bytes)
        self.batch_rows = max(1, int(batch_rows))
        self._lock = threading.Lock()
        self._windows: collections.OrderedDict[tuple[int, int], np.ndarray] = \
            collections.OrderedDict()

    def rows_of(self, start: int, stop: int) -> np.ndarray | None:
        """Rows ``start:stop`` (at most one batch) as a read-only (n, *shape) array, or None
        where they do not lie in one run."""
        if not 0 <= start <= stop <= self.rows or stop - start > self.batch_rows:
            raise ValueError(f"rows {start}:{stop} are not a batch of the {self.rows} rows")
        r = max(0, bisect.bisect_right(self._firsts, start) - 1)
        first, n, _ = self.runs[r]
        if stop > first + n:
            return None
        k = (start - first) // self.window_rows
        window = self._window(r, k)
        low = first + k * self.window_rows
        return window[start - low:stop - low]

    def _window(self, r: int, k: int) -> np.ndarray:
        with self._lock:
            window = self._windows.get((r, k))
            if window is not None:
                self._windows.move_to_end((r, k))
                return window
        run_first, run_rows, run_offset = self.runs[r]
        first = k * self.window_rows  # within the run
        last = min(run_rows, first + self.window_rows + self.batch_rows)
        start = run_offset + first * self.row_bytes
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        length = run_offset + last * self.row_bytes - aligned
        mapping = mmap.mmap(self.handle.fileno(), length, access=mmap.ACCESS_READ,
                            offset=aligned)
        window = np.ndarray((last - first, *self.shape), dtype=np.uint8, buffer=mapping,
                            offset=start - aligned)
        with self._lock:
            self._windows[(r, k)] = window
            self._windows.move_to_end((r, k))
            while len(self._windows) > self.KEEP:
                # Unmapped when the last array over it goes (a batch in flight keeps it).
                self._windows.popitem(last=False)
        return window


class MappedFile:
    """Every image row of a file as a read-only array over one memory map of the whole file:
    a window cut from a row reads the page cache directly, with no copy first.

    Rows lie in chunks of whole rows; the chunks need not lie back to back (HDF5 puts its index
    nodes between them every 64 chunks or so), as each row's place is found from its chunk's offset.
    For batches whose rows lie anywhere in the file (``shuffle="full"``), or across chunks that lie
    apart (see :class:`MappedRows`). The map is made on first use; what it costs is address space
    (the file's size) and, for the rows read, page-table entries (2 MB per GB). Like
    :class:`MappedRows`, it holds the file: a rebuild replacing the path does not disturb it.

    Thread-safe.
    """

    def __init__(self, handle: Descriptor, offsets: np.ndarray, chunk_rows: int,
                 shape: tuple[int, ...]) -> None:
        self.handle, self.offsets, self.chunk_rows = handle, offsets, int(chunk_rows)
        self.shape = tuple(int(s) for s in shape)
        self.row_bytes = int(np.prod(self.shape))
        self._lock = threading.Lock()
        self._bytes: np.ndarray | None = None

    def data(self) -> np.ndarray:
        """The whole file as read-only bytes (mapped on the first call).

        Raises:
            OSError, ValueError, OverflowError: the map cannot be made (no address space).
        """
        if self._bytes is None:
            with self._lock:
                if self._bytes is None:
                    mapping = mmap.mmap(self.handle.fileno(), 0, access=mmap.ACCESS_READ)
                    self._bytes = np.frombuffer(mapping, dtype=np.uint8)
        return self._bytes

    def row(self, r: int, data: np.ndarray | None = None) -> np.ndarray:
        """Row ``r`` as a read-only array of the row's shape."""
        data = self.data() if data is None else data
        c = r // self.chunk_rows
        start = int(self.offsets[c]) + (r - c * self.chunk_rows) * self.row_bytes
        return data[start:start + self.row_bytes].reshape(self.shape)


class RowReader:
    """Reads whole image rows straight from the file with ``os.preadv``, without h5py.

    h5py serialises every call behind one process-wide lock, so threads reading a file through
    it take turns (two threads read no faster than one). For an unfiltered ``images`` dataset
    (contiguous, or chunked in whole rows) the rows are plain C-order bytes at known offsets;
    ``preadv`` reads them with the GIL released, so reading threads run side by side. Built by
    :meth:`for_dataset`, which returns None where the rows are not plain bytes (compressed or
    filtered chunks, chunks that split a row, chunks never written) or where a check read of
    the first and last rows disagrees with h5py's.

    Thread-safe: each read names its own offsets. The descriptor is the caller's, from
    :meth:`open`: a duplicate of the one h5py holds, so the reads go to the very file whose
    layout was read even if the path has since been replaced. One per process (a forked child
    opens its own file and descriptor); readers hold the file object while they read.
    """

    def __init__(self, offsets: np.ndarray, chunk_rows: int, row_bytes: int, rows: int) -> None:
        self.offsets = offsets
        self.chunk_rows = chunk_rows
        self.row_bytes = row_bytes
        self.rows = rows

    @classmethod
    def for_dataset(cls, ds: h5py.Dataset) -> RowReader | None:
        """The reader for ``ds`` (a dsprep ``images`` dataset), or None if it cannot have one."""
        rows = int(ds.shape[0])
        if (not hasattr(os, "preadv") or rows == 0 or ds.dtype != np.uint8
                or ds.id.get_create_plist().get_nfilters() > 0):
            return None
        row_bytes = int(np.prod(ds.shape[1:]))
        if ds.chunks is None:
            offset = ds.id.get_offset()
            if offset is None:
                return None
            offsets, chunk_rows = np.array([offset], dtype=np.int64), rows
        else:
            chunk_rows = int(ds.chunks[0])
            offsets = chunk_offsets(ds)
            if offsets is None:
                return None
        reader = cls(offsets, chunk_rows, row_bytes, rows)
        handle = cls.open(ds)
        if handle is None:
            return None
        with handle:
            try:
                got = np.empty((1, *ds.shape[1:]), dtype=np.uint8)
                for r in sorted({0, rows - 1}):
                    reader.read_rows(handle.fileno(), [r], got)
                    if not np.array_equal(got[0], ds[r]):
                        return None
            except OSError:
                return None
        return reader

    @staticmethod
    def open(ds: h5py.Dataset) -> Descriptor | None:
        """A descriptor of the file h5py has open for ``ds`` (its own, duplicated), or None
        where h5py's driver has no plain descriptor to share."""
        try:
            return Descriptor(os.dup(ds.file.id.get_vfd_handle()))
        except (OSError, ValueError, TypeError, RuntimeError):
            return None

    def map(self, handle: Descriptor, shape: tuple[int, ...],
            batch_rows: int) -> MappedRows | None:
        """The rows as read-only arrays over memory maps of the file (:class:`MappedRows`), in runs
        of chunks that lie back to back in row order; None unless some run holds a whole batch. A
        dsprep build lays chunks back to back when a chunk's bytes are a multiple of 4 KiB, as for
        256x256 images, with one of HDF5's index nodes between every 60 or so (runs of 4,160 then
        3,648 rows of 256x256 at the default 64 per chunk); chunks of 227x227 are padded apart.
        :meth:`map_file` maps any layout of whole rows.
        """
        size = self._size_for(handle, shape)
        if size is None:
            return None
        runs = self.runs()
        longest = max(n for _, n, _ in runs)
        ends = [offset + n * self.row_bytes for _, n, offset in runs]
        if longest < min(int(batch_rows), self.rows) or max(ends) > size:
            return None
        return MappedRows(handle, runs, shape, batch_rows)

    def runs(self) -> list[tuple[int, int, int]]:
        """(first row, rows, byte offset) of each run of chunks that lie back to back in row
        order."""
        k, step = self.chunk_rows, self.chunk_rows * self.row_bytes
        breaks = np.flatnonzero(np.diff(self.offsets) != step) + 1
        starts = [0, *breaks.tolist()]
        ends = [*breaks.tolist(), len(self.offsets)]
        return [(a * k, min(b * k, self.rows) - a * k, int(self.offsets[a]))
                for a, b in zip(starts, ends, strict=True)]

    def map_file(self, handle: Descriptor, shape: tuple[int, ...]) -> MappedFile | None:
        """Every row as a read-only array over one memory map of the whole file
        (:class:`MappedFile`), wherever its chunk lies; None if the file is shorter than the
        rows' offsets say."""
        size = self._size_for(handle, shape)
        # Every chunk's end, whatever their order in the file (the last row's chunk may not
        # lie last).
        counts = np.minimum(self.chunk_rows,
                            self.rows - np.arange(len(self.offsets)) * self.chunk_rows)
        ends = self.offsets.astype(np.int64) + np.maximum(counts, 0) * self.row_bytes
        if size is None or len(ends) == 0 or int(ends.max()) > size:
            return None
        return MappedFile(handle, self.offsets, self.chunk_rows, shape)

    def _size_for(self, handle: Descriptor, shape: tuple[int, ...]) -> int | None:
        """The file's size, if rows of ``shape`` are this reader's rows (else None)."""
        if int(np.prod(shape)) != self.row_bytes:
            return None
        try:
            return os.fstat(handle.fileno()).st_size
        except (OSError, ValueError):
            return None

    def _spans(self, start: int, stop: int):
        """(first row, rows, file offset) of each chunk-contiguous piece of rows start:stop."""
        k = self.chunk_rows
        r = start
        while r < stop:
            c = r // k
            hi = min((c + 1) * k, stop)
            yield r, hi - r, int(self.offsets[c]) + (r - c * k) * self.row_bytes
            r = hi

    def read(self, fd: int, start: int, stop: int, out: np.ndarray) -> None:
        """Read rows ``start:stop`` into ``out[:stop - start]`` (C-contiguous uint8)."""
        view = memoryview(out.reshape(-1)).cast("B")
        pos = 0
        for _, n, offset in self._spans(start, stop):
            self._fill(fd, [view[pos:pos + n * self.row_bytes]], offset)
            pos += n * self.row_bytes

    def read_rows(self, fd: int, rows: Sequence[int], out: np.ndarray) -> None:
        """Read file rows ``rows`` (any order) into ``out[i]`` for each ``rows[i]``.

        Rows are visited in file order; each run of consecutive rows within a chunk is one
        scattering ``preadv`` into its places in ``out``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        flat = memoryview(out.reshape(len(out), -1)).cast("B")
        b = self.row_bytes
        i = 0
        while i < len(order):
            first = int(rows[order[i]])
            chunk = first // self.chunk_rows
            j = i + 1
            while (j < len(order) and j - i < _IOV_MAX and rows[order[j]] == first + (j - i)
                   and rows[order[j]] // self.chunk_rows == chunk):
                j += 1
            buffers = [flat[int(p) * b:(int(p) + 1) * b] for p in order[i:j]]
            offset = int(self.offsets[chunk]) + (first - chunk * self.chunk_rows) * b
            self._fill(fd, buffers, offset)
            i = j

    @staticmethod
    def _fill(fd: int, buffers: list, offset: int) -> None:
        """``preadv`` until every buffer is full (reads may come back short)."""
        while buffers:
            got = os.preadv(fd, buffers, offset)
            if got == 0:
                raise OSError(f"unexpected end of file at byte {offset}")
            offset += got
            rest = []
            for m in buffers:
                if got >= len(m):
                    got -= len(m)
                else:
                    rest.append(m[got:])
                    got = 0
            buffers = rest


def _iov_max() -> int:
    """Buffers one ``preadv`` may take (1024 on Linux; indeterminate counts as 1024)."""
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 1024
    return min(limit, 1024) if limit > 0 else 1024


_IOV_MAX = _iov_max()


def check_schema(db: h5py.File, path: str | os.PathLike = "") -> None:
    """Raise DatasetFormatError unless ``db`` has dsprep's datasets with consistent shapes."""
    name = path or db.filename
    for key in ("images", "labels"):
        if key not in db:
            raise DatasetFormatError(
                f"{name} is not a dsprep HDF5 file (no {key!r} dataset); "
                "build it with 'dsprep build-hdf5'"
            )
    images, labels = db["images"], db["labels"]
    if not isinstance(images, h5py.Dataset) or not isinstance(labels, h5py.Dataset):
        raise DatasetFormatError(
            f"{name}: 'images' and 'labels' must be datasets, not groups; "
            "rebuild it with 'dsprep build-hdf5'"
        )
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(
            f"{name}: 'images' is {images.dtype}{images.shape}, expected uint8 (N, H, W, 3); "
            "rebuild it with 'dsprep build-hdf5'"
        )
    if labels.shape != (images.shape[0],):
        raise DatasetFormatError(
            f"{name}: 'labels' has shape {labels.shape} but there are {images.shape[0]} images; "
            "rebuild it with 'dsprep build-hdf5'"
        )
    if labels.dtype.kind not in "iu":
        raise DatasetFormatError(
            f"{name}: 'labels' holds {labels.dtype} values, expected integer class ids; "
            "rebuild it with 'dsprep build-hdf5'"
        )


def file_names(db: h5py.File) -> list[str] | None:
    """The source names of the rows (``filenames``, relative to ``source_root``) as text, in
    row order; None for a file without them."""
    if "filenames" not in db:
        return None
    return [n.decode("utf-8", "surrogateescape") if isinstance(n, bytes) else str(n)
            for n in db["filenames"][()]]


def row_count(path: str | os.PathLike) -> int:
    """The rows (images) of a dsprep HDF5 file."""
    with open_dataset(path) as db:
        return int(db["labels"].shape[0])


def label_names(db: h5py.File) -> list[str]:
    """The class names in id order (``label_names``), or ids as strings if the file has none."""
    if "label_names" in db:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in db["label_names"][()]]
    labels = db["labels"][()]
    top = int(labels.max()) + 1 if labels.size else 0
    if top > max(_MAX_UNNAMED_CLASSES, labels.size):  # more names than rows: not class ids
        raise DatasetFormatError(
            f"{db.filename}: no 'label_names', and labels up to {top - 1:,} are too many classes "
            "to number; rebuild it with 'dsprep build-hdf5'")
    return [str(i) for i in range(top)]


# A file without label_names numbers its classes 0..max label: at most this many (or one per row).
_MAX_UNNAMED_CLASSES = 100_000


# Root attributes every file written by 'dsprep build-hdf5' carries (docs/formats.md).
REQUIRED_ATTRS = ("schema", "dsprep_version", "split", "image_size", "resize", "interpolation",
                  "color", "order", "seed", "mean_rgb", "count", "skipped")


def attributes(db: h5py.File) -> dict:
    """The root attributes as plain Python values (str, int, float, bool or lists of them)."""
    out = {}
    for key, value in db.attrs.items():
        if isinstance(key, bytes):  # a name that is not UTF-8 (a damaged header)
            key = key.decode("utf-8", "replace")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.ndarray):
            value = [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def rgb_values(value) -> np.ndarray | None:
    """An attribute's three per-channel values (mean_rgb, std_rgb) as float64, or None
    when it is no such thing (edited by hand: two values, a string, an empty attribute)."""
    try:
        values = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    return values if values.shape == (3,) else None


def describe(path: str | os.PathLike) -> dict:
    """Summarize a dsprep HDF5 file: layout of ``images``, size on disk, classes, attributes.

    Returns:
        A dict with ``path``, ``size_bytes``, ``count``, ``shape``, ``dtype``, ``chunks``,
        ``compression``, ``compression_opts``, ``label_dtype``, ``classes`` (a list of
        (name, count) pairs in id order), ``unlabelled`` (rows whose label is no class id),
        ``attrs`` and ``mean_rgb`` (or None).
    """
    path = Path(path)
    with open_dataset(path) as db, damaged_metadata(path):
        images = db["images"]
        names = label_names(db)
        labels = db["labels"][()].astype(np.int64)
        valid = labels[(labels >= 0) & (labels < len(names))]
        counts = np.bincount(valid, minlength=len(names)) if len(names) else np.zeros(0, int)
        attrs = attributes(db)
        mean = attrs.get("mean_rgb")
        return {
            "path": str(path),
            "size_bytes": path.stat().st_size,
            "count": int(images.shape[0]),
            "shape": tuple(int(d) for d in images.shape),
            "dtype": str(images.dtype),
            "chunks": tuple(images.chunks) if images.chunks else None,
            "compression": images.compression or "none",
            "compression_opts": images.compression_opts,
            "label_dtype": str(db["labels"].dtype),
            "classes": [(n, int(c)) for n, c in zip(names, counts, strict=True)],
            # Rows whose label names no class (edited by hand): not in ``classes``.
            "unlabelled": int(labels.size - valid.size),
            "attrs": attrs,
            "mean_rgb": (None if mean is None or rgb_values(mean) is None
                         else rgb_values(mean).tolist()),
        }


def check_build_attributes(attrs: dict) -> list[str]:
    """The attributes that say how the images were made, each a value build-hdf5 writes."""
    from .images import INTERPOLATIONS, RESIZE_MODES

    allowed = {"resize": RESIZE_MODES, "interpolation": ("auto", *INTERPOLATIONS),
               "order": ORDERS}
    problems = [f"{key} is {attrs[key]!r}, expected one of {', '.join(values)}"
                for key, values in allowed.items() if key in attrs and attrs[key] not in values]
    for key in ("seed", "max_pixels"):
        value = attrs.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{key} attribute {value!r} is not a whole number, 0 or more")
    exact = attrs.get("exact", False)
    if not isinstance(exact, bool) and exact not in (0, 1):
        problems.append(f"exact attribute {exact!r} is not true or false")
    if "split" in attrs and (not isinstance(attrs["split"], str) or not attrs["split"]):
        problems.append(f"split attribute {attrs['split']!r} is not a split name")
    return problems


def check_file(path: str | os.PathLike) -> list[str]:
    """Check a dsprep HDF5 file beyond its basic shape: attributes, label range, means.

    Returns:
        One line per problem found; an empty list means the file is sound.

    Raises:
        LayoutError: the file does not exist.
        DatasetFormatError: it is not HDF5 or has no dsprep datasets at all.
    """
    path = Path(path)
    problems: list[str] = []
    with open_dataset(path) as db, damaged_metadata(path):
        n, height, width = (int(d) for d in db["images"].shape[:3])
        attrs = attributes(db)
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            problems.append(f"missing root attributes: {', '.join(missing)}")
        if "schema" in attrs and attrs["schema"] != SCHEMA:
            problems.append(f"schema is {attrs['schema']!r}, expected {SCHEMA!r}")
        if "image_size" in attrs and list(attrs["image_size"]) != [height, width]:
            problems.append(f"image_size attribute {attrs['image_size']} does not match the "
                            f"images ({height}, {width})")
        if "count" in attrs and attrs["count"] != n:
            problems.append(f"count attribute {attrs['count']} does not match the {n} rows")
        if "color" in attrs and attrs["color"] != "RGB":
            problems.append(f"color is {attrs['color']!r}, expected 'RGB'")
        skipped = attrs.get("skipped", 0)
        if not isinstance(skipped, int) or skipped < 0:
            problems.append(f"skipped attribute {skipped!r} is not a count")
        problems += check_build_attributes(attrs)
        if n == 0:
            problems.append("the file holds no images")
        problems += _check_rows(db, n)
        if "mean_rgb" in attrs:
            mean = rgb_values(attrs["mean_rgb"])
            if mean is None or not np.all(np.isfinite(mean)) or np.any(mean < 0) \
                    or np.any(mean > 255):
                shown = attrs["mean_rgb"] if mean is None else mean.tolist()
                problems.append(f"mean_rgb {shown!r} is not three finite values in 0..255")
    return problems


def check_pixels(path: str | os.PathLike, *, progress: bool = False) -> list[str]:
    """Read every image of a file: rows HDF5 cannot read, and ``mean_rgb``/``std_rgb``
    attributes that differ from the pixels' own statistics.

    Returns:
        One line per problem found.
    """
    problems: list[str] = []
    stats = channel_stats(path, progress=progress,
                          on_unreadable=lambda error: problems.append(str(error)))
    if problems or stats.pixels == 0:
        return problems  # statistics of what could be read say nothing about the attributes
    with open_dataset(path) as db:
        attrs = attributes(db)
    for key, measured in (("mean_rgb", stats.mean), ("std_rgb", stats.std)):
        if key not in attrs:
            continue
        stored = rgb_values(attrs[key])
        # Both are float64 sums of the same pixels: they agree to rounding.
        if stored is None or not np.allclose(stored, measured, rtol=0, atol=1e-3):
            shown = attrs[key] if stored is None else np.round(stored, 4).tolist()
            problems.append(f"{key} {shown!r} differs from the pixels' "
                            f"{np.round(measured, 4).tolist()}")
    return problems


def _text_name(name):
    """A row's file name as text: names read back from a dsprep file come as UTF-8 bytes
    (h5py's strings); bytes that are no UTF-8 stay bytes (refused as no text)."""
    if isinstance(name, bytes):
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            return name
    return name


def relative_name(name: str) -> bool:
    """Whether a row's file name is one verify takes: a path relative to the source root."""
    return bool(name) and not name.startswith("/") and ".." not in name.split("/")


def _check_filenames(names: h5py.Dataset) -> list[str]:
    """Every file name readable (its bytes in the file's heap whole), UTF-8 and relative."""
    try:
        values = list(names[()])
    except (OSError, RuntimeError, ValueError) as whole:
        bad = []
        for i in range(names.shape[0]):  # which rows: one by one
            try:
                names[i]
            except (OSError, RuntimeError, ValueError):
                bad.append(i)
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        return [f"'filenames' of {len(bad)} rows cannot be read ({shown}: {whole})"]
    wrong = []
    for i, raw in enumerate(values):
        try:
            name = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            wrong.append(i)
            continue
        if not relative_name(name):
            wrong.append(i)
    if wrong:
        shown = ", ".join(map(str, wrong[:5])) + (", ..." if len(wrong) > 5 else "")
        return [f"'filenames' of {len(wrong)} rows are not relative UTF-8 paths (rows {shown})"]
    return []


def _check_rows(db: h5py.File, n: int) -> list[str]:
    problems = []
    if "filenames" not in db:
        problems.append("no 'filenames' dataset")
    elif db["filenames"].shape != (n,):
        problems.append(f"'filenames' has shape {db['filenames'].shape} but there are {n} images")
    else:
        problems += _check_filenames(db["filenames"])
    if "label_names" not in db:
        problems.append("no 'label_names' dataset")
        return problems
    names = label_names(db)
    if not _names_ok(names):
        problems.append(f"label_names {names} are empty or repeated")
    labels = db["labels"][()]
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        bad = int(np.count_nonzero((labels < 0) | (labels >= len(names))))
        problems.append(f"{bad} labels fall outside 0..{len(names) - 1} "
                        f"({len(names)} label_names)")
    elif not problems and "sources_stamp" in db.attrs:  # built by build-hdf5 from folders
        problems += _check_label_folders(db["filenames"], labels, names)
    return problems


def _check_label_folders(files: h5py.Dataset, labels: np.ndarray, names: list[str]) -> list[str]:
    """Every row's label names the class folder its file lies in: build-hdf5 labels each
    image by its class folder, so a label changed by hand, or label_names reordered, shows
    here. The class folder is the path component at one depth for every row (after the
    split's folder, and any folders around it); that depth is the one holding the most
    distinct class names, then class names for the most rows (a class named as the split,
    ``train/train/``, must not take the split's place)."""
    nfc = [unicodedata.normalize("NFC", name) for name in names]
    classes = set(nfc)
    paths = [unicodedata.normalize("NFC", raw.decode("utf-8") if isinstance(raw, bytes)
                                   else str(raw)).split("/")[:-1] for raw in files[()]]
    depths = max((len(p) for p in paths), default=0)
    if not depths:
        return []

    def score(depth: int) -> tuple[int, int]:
        found = [p[depth] for p in paths if len(p) > depth and p[depth] in classes]
        return len(set(found)), len(found)

    depth = max(range(depths), key=score)
    if score(depth)[1] == 0:
        return []  # no folder of a class name anywhere: not labelled by folders
    wrong = [i for i, p in enumerate(paths)
             if len(p) <= depth or p[depth] != nfc[labels[i]]]
    if not wrong:
        return []
    i = wrong[0]
    raw = files[i]
    path = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return [f"{len(wrong)} labels do not name the class folder their file lies in (row {i}: "
            f"label {int(labels[i])} ({names[labels[i]]}), file {path}); the labels or "
            "label_names were changed since the build"]


def unreadable(path: str | os.PathLike, first: int, last: int, exc: BaseException,
               scattered: int = 0) -> DatasetFormatError:
    """The error for rows of a file that HDF5 cannot read (a damaged chunk): rows
    ``first..last``, or with ``scattered``, one of that many rows between them."""
    if scattered:
        rows = f"one of {scattered} rows read from {first} to {last}"
    else:
        rows = f"row {first}" if first == last else f"rows {first}..{last}"
    return DatasetFormatError(f"{path}: {rows} cannot be read ({exc}); the file is damaged, "
                              "build it again with 'dsprep build-hdf5'")


def channel_stats(
    path: str | os.PathLike, *, block: int | None = None, progress: bool = False,
    on_unreadable: Callable[[DatasetFormatError], None] | None = None,
) -> ChannelStats:
    """Recompute the per-channel statistics of a file's images, reading ``block`` rows at a time.

    Memory stays bounded by one block whatever the file's size. Rows HDF5 cannot read (a
    damaged chunk) raise DatasetFormatError, or with ``on_unreadable`` are passed to it and
    left out.
    """
    stats = ChannelStats()
    with open_dataset(path) as db:
        images = db["images"]
        n = images.shape[0]
        if block is None:
            block = images.chunks[0] if images.chunks else DEFAULT_CHUNK_IMAGES
        block = max(1, int(block))
        buffer = np.empty((min(block, max(n, 1)),) + images.shape[1:], dtype=np.uint8)
        with progress_bar(total=n, unit="img", desc=Path(path).name,
                          disable=not progress) as bar:
            for start in range(0, n, block):
                stop = min(start + block, n)
                view = buffer[: stop - start]
                try:
                    images.read_direct(view, np.s_[start:stop])
                except OSError as exc:
                    error = unreadable(path, start, stop - 1, exc)
                    if on_unreadable is None:
                        raise error from exc
                    on_unreadable(error)
                else:
                    stats.update(view)
                bar.update(stop - start)
    return stats
