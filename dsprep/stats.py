"""Streaming per-channel statistics (mean and std of RGB pixels) and the ``means.json`` file.

Sums are kept as exact integers, so partial results from worker processes combine exactly.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetFormatError, DsprepError, LayoutError
from .fileio import access_denied, write_atomic

CHANNELS = ("R", "G", "B")
# Pixels per OpenCV call. A piece's sums and sums of squares are below 2**53 (2**24 * 255**2 is
# about 1.1e12). OpenCV returns them as float64: the sums exactly, the squared norm within a few
# units in the last place (some builds take a square root and square it again: errors of ~2**-12
# measured on full pieces), far below 0.5, so rounding recovers the exact integers.
_PIECE = 1 << 24
# Channel planes up to this many pixels are kept per thread for the next call.
_KEEP_PLANES = 1 << 20
_LINE = 64  # bytes in a cache line


def channel_sums(pixels: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Exact per-channel sums of uint8 pixels shaped (..., 3), and of their squares.

    Returns:
        The number of pixels, and two int64 arrays (R, G, B): the sums and the sums of squares.
    """
    if pixels.dtype != np.uint8 or pixels.ndim < 1 or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 pixels shaped (..., 3), got {pixels.dtype}{pixels.shape}")
    flat = np.ascontiguousarray(pixels).reshape(-1, 3)
    totals = [0] * 6
    for start in range(0, len(flat), _PIECE):
        # One row of pixels: OpenCV sums an (N, 1, 3) column row by row, ~35x slower.
        _add_piece(flat[start:start + _PIECE].reshape(1, -1, 3), totals)
    return len(flat), np.array(totals[:3], dtype=np.int64), np.array(totals[3:], dtype=np.int64)


def _add_piece(piece: np.ndarray, totals: list[int]) -> None:
    """Add the R, G, B sums of a (1, n, 3) uint8 row of pixels to ``totals[0:3]`` and the sums
    of their squares to ``totals[3:6]``.

    The sums in one pass, the squares one channel plane at a time (~0.015 ms for a 256x256
    image in all, against ~0.06 for cv2.meanStdDev's one pass).
    """
    total = cv2.sumElems(piece)
    r, g, b = cv2.split(piece, _planes(piece.shape[1]))
    totals[0] += round(total[0])
    totals[1] += round(total[1])
    totals[2] += round(total[2])
    totals[3] += round(cv2.norm(r, cv2.NORM_L2SQR))
    totals[4] += round(cv2.norm(g, cv2.NORM_L2SQR))
    totals[5] += round(cv2.norm(b, cv2.NORM_L2SQR))


class ImageSums:
    """Exact channel sums of whole images added one at a time, with as little work per image
    as possible (the build's workers add each image right after decoding it).

    ``ChannelStats.update`` does the same sums with argument checks and small arrays around
    them, which cost ~20 us more per 256x256 image there: after the decoder has run, the
    interpreter's own code and data are out of the CPU's caches.
    """

    def __init__(self) -> None:
        self.pixels = 0
        self.images = 0
        self.totals = [0] * 6

    def add(self, image: np.ndarray) -> None:
        """Add one uint8 image shaped (H, W, 3)."""
        n = image.shape[0] * image.shape[1]
        if n > _PIECE or image.dtype != np.uint8 or not image.flags.c_contiguous:
            count, sums, squares = channel_sums(image)
            for c in range(3):
                self.totals[c] += int(sums[c])
                self.totals[3 + c] += int(squares[c])
        else:
            _add_piece(image.reshape(1, n, 3), self.totals)
        self.pixels += n
        self.images += 1

    @property
    def sums(self) -> np.ndarray:
        return np.array(self.totals[:3], dtype=np.int64)

    @property
    def squares(self) -> np.ndarray:
        return np.array(self.totals[3:], dtype=np.int64)


_LOCAL = threading.local()


def _planes(n: int) -> list[np.ndarray]:
    """Three reusable (1, n) uint8 planes for this thread (fresh ones cost more than the sums).

    They lie in one buffer, 16 bytes apart modulo a cache line: with the three starting at the
    same offset in their cache lines (as separate arrays often do, depending on where the heap
    puts them), ``cv2.split`` ran at a third of the speed (~18 us instead of 6 per 256x256
    image).
    """
    planes = getattr(_LOCAL, "planes", None)
    if planes is None or planes[0].shape[1] != n:
        stride = -(-n // _LINE) * _LINE + _LINE // 4
        raw = np.empty(3 * stride + _LINE, dtype=np.uint8)
        base = -raw.ctypes.data % _LINE
        planes = [raw[base + k * stride: base + k * stride + n].reshape(1, n) for k in range(3)]
        _LOCAL.planes = planes if n <= _KEEP_PLANES else None
    return planes


class ChannelStats:
    """Accumulates RGB pixel values and gives their per-channel mean and std in float64.

    Feed it images or blocks with :meth:`update`, or sums computed elsewhere with :meth:`add`;
    combine two with ``a += b``. Sums are exact integers, so the result does not depend on how
    the pixels were split into pieces.
    """

    def __init__(self) -> None:
        self.pixels = 0
        self.sums = np.zeros(3, dtype=np.int64)
        self.squares = np.zeros(3, dtype=np.int64)
        self.images = 0

    def update(self, pixels: np.ndarray, images: int | None = None) -> None:
        """Add uint8 pixels shaped (..., 3).

        Args:
            pixels: one image (H, W, 3) or a block (N, H, W, 3).
            images: how many images they are (default: N for a block, else 1).
        """
        count, sums, squares = channel_sums(pixels)
        self.add(count, sums, squares, _image_count(pixels, images))

    def add(self, pixels: int, sums: np.ndarray, squares: np.ndarray, images: int = 0) -> None:
        """Add sums as returned by :func:`channel_sums`."""
        self.pixels += int(pixels)
        self.sums += np.asarray(sums, dtype=np.int64)
        self.squares += np.asarray(squares, dtype=np.int64)
        self.images += int(images)

    def __iadd__(self, other: ChannelStats) -> ChannelStats:
        self.add(other.pixels, other.sums, other.squares, other.images)
        return self

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean (R, G, B); zeros when nothing was counted."""
        n = self.pixels
        if n == 0:
            return np.zeros(3)
        # Integer sums divided once: no rounding builds up however many images went in.
        return np.array([int(s) / n for s in self.sums], dtype=np.float64)

    @property
    def std(self) -> np.ndarray:
        """Per-channel population standard deviation (R, G, B); zeros when nothing was counted."""
        n = self.pixels
        if n == 0:
            return np.zeros(3)
        # n * sum(x^2) - sum(x)^2 in Python integers is exact: no cancellation error.
        var = [(n * int(q) - int(s) ** 2) / (n * n)
               for s, q in zip(self.sums, self.squares, strict=True)]
        return np.sqrt(np.maximum(np.array(var, dtype=np.float64), 0.0))


def _image_count(pixels: np.ndarray, images: int | None) -> int:
    if images is not None:
        return int(images)
    return int(pixels.shape[0]) if pixels.ndim == 4 else 1


def means_record(stats: ChannelStats, source: str) -> dict:
    """The ``means.json`` content for ``stats`` (docs/formats.md, "Channel statistics");
    ``source`` names the file."""
    mean, std = stats.mean, stats.std
    record: dict = {c: float(m) for c, m in zip(CHANNELS, mean, strict=True)}
    record["std"] = {c: float(s) for c, s in zip(CHANNELS, std, strict=True)}
    record["count"] = stats.images
    record["source"] = source
    return record


def write_means(path: str | os.PathLike, record: Mapping) -> Path:
    """Write a means record as JSON atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(dict(record), indent=2) + "\n")


def read_means(path: str | os.PathLike) -> np.ndarray:
    """The RGB means of a ``means.json`` (dsprep's, or the book's ``{"R", "G", "B"}``), as a
    float64 array (R, G, B): the one reader of the means file.

    Raises:
        LayoutError: the file does not exist.
        DatasetFormatError: it is no means file.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "means.json"
        raise LayoutError(f"{path} is a folder, not a means file; give "
                          + (str(inside) if inside.is_file() else
                             "the means.json 'dsprep build-hdf5' writes next to the HDF5 files"))
    if not path.is_file():
        raise LayoutError(f"{path} does not exist; 'dsprep build-hdf5' writes means.json next to "
                          "the HDF5 files ('dsprep means FILE.hdf5 -o means.json' from one file)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError as exc:
        raise access_denied(exc) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetFormatError(f"{path} is not a readable means.json ({exc}); recompute it "
                                 "with 'dsprep means FILE.hdf5 -o means.json'") from exc
    if not isinstance(record, Mapping):
        raise DatasetFormatError(f"{path} is not a means.json: expected a JSON object with R, G "
                                 "and B channel means")
    return means_vector(record, str(path))


def means_vector(means: Mapping | Sequence[float], source: str = "the means",
                 error: type[DsprepError] = DatasetFormatError) -> np.ndarray:
    """(R, G, B) as float64 from a means.json document (R, G, B keys) or three numbers; a
    missing key, a non-number or a non-finite mean raises ``error`` naming ``source``."""
    if isinstance(means, Mapping):
        missing = [k for k in CHANNELS if k not in means]
        if missing:
            raise error(f"{source} has no {', '.join(missing)} key; expected a means.json with "
                        "R, G and B channel means")
        values = [means[k] for k in CHANNELS]
    else:
        try:
            values = list(means)
        except TypeError as exc:
            raise error(f"{source}: expected three R, G, B means, got {means!r}") from exc
    try:
        vector = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise error(f"{source}: channel means must be numbers, got {values!r}") from exc
    if vector.size != 3 or not np.all(np.isfinite(vector)):
        raise error(f"{source}: expected three finite R, G, B means, got {values!r}")
    return vector
