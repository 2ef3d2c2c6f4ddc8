"""Streaming per-channel statistics (mean and std of RGB pixels) and the ``means.json`` file.

Counts are kept as exact integer histograms, so partial results from workers combine exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetFormatError, LayoutError

CHANNELS = ("R", "G", "B")
# cv2.calcHist counts in float32, which is exact only up to 2**24 per bin.
_HIST_PIECE = 1 << 24
_LEVELS = np.arange(256, dtype=np.int64)


def histogram(pixels: np.ndarray) -> np.ndarray:
    """Count the values of each channel of uint8 pixels shaped (..., 3).

    Returns:
        A (3, 256) int64 array: ``h[c, v]`` is how many pixels have value ``v`` in channel ``c``.
    """
    if pixels.dtype != np.uint8 or pixels.ndim < 1 or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 pixels shaped (..., 3), got {pixels.dtype}{pixels.shape}")
    flat = np.ascontiguousarray(pixels).reshape(-1, 1, 3)
    counts = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(flat), _HIST_PIECE):
        piece = flat[start:start + _HIST_PIECE]
        for c in range(3):
            hist = cv2.calcHist([piece], [c], None, [256], [0, 256])
            counts[c] += hist.ravel().astype(np.int64)
    return counts


class ChannelStats:
    """Accumulates RGB pixel values and gives their per-channel mean and std in float64.

    Feed it images or blocks with :meth:`update`, or histograms from elsewhere with
    :meth:`add_histogram`; combine two with ``a += b``. The result does not depend on how the
    pixels were split into pieces.
    """

    def __init__(self) -> None:
        self.hist = np.zeros((3, 256), dtype=np.int64)
        self.images = 0

    def update(self, pixels: np.ndarray, images: int | None = None) -> None:
        """Add uint8 pixels shaped (..., 3); ``images`` says how many images they are (default:
        the leading dimension of a 4-D block, else 1)."""
        self.add_histogram(histogram(pixels), _image_count(pixels, images))

    def add_histogram(self, hist: np.ndarray, images: int = 0) -> None:
        """Add a (3, 256) histogram as returned by :func:`histogram`."""
        self.hist += np.asarray(hist, dtype=np.int64)
        self.images += int(images)

    def __iadd__(self, other: ChannelStats) -> ChannelStats:
        self.add_histogram(other.hist, other.images)
        return self

    @property
    def pixels(self) -> int:
        """How many pixels were counted (per channel)."""
        return int(self.hist[0].sum())

    @property
    def sum(self) -> np.ndarray:
        """Exact per-channel sum of the values, as float64 (R, G, B)."""
        return (self.hist @ _LEVELS).astype(np.float64)

    @property
    def sum_squares(self) -> np.ndarray:
        """Exact per-channel sum of the squared values, as float64 (R, G, B)."""
        return (self.hist @ (_LEVELS * _LEVELS)).astype(np.float64)

    @property
    def mean(self) -> np.ndarray:
        """Per-channel mean (R, G, B); zeros when nothing was counted."""
        n = self.pixels
        if n == 0:
            return np.zeros(3)
        # Integer sums divided once: no rounding builds up however many images went in.
        return np.array([int(s) / n for s in self.hist @ _LEVELS], dtype=np.float64)

    @property
    def std(self) -> np.ndarray:
        """Per-channel population standard deviation (R, G, B); zeros when nothing was counted."""
        n = self.pixels
        if n == 0:
            return np.zeros(3)
        sums = self.hist @ _LEVELS
        squares = self.hist @ (_LEVELS * _LEVELS)
        # n * sum(x^2) - sum(x)^2 in Python integers is exact, so no cancellation error.
        out = [(int(n) * int(q) - int(s) * int(s)) / (n * n) for s, q in zip(sums, squares,
                                                                         strict=True)]
        return np.sqrt(np.maximum(np.array(out, dtype=np.float64), 0.0))


def _image_count(pixels: np.ndarray, images: int | None) -> int:
    if images is not None:
        return int(images)
    return int(pixels.shape[0]) if pixels.ndim == 4 else 1


def means_record(stats: ChannelStats, source: str) -> dict:
    """The ``means.json`` content for ``stats`` (DESIGN.md §2.3); ``source`` names the file."""
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
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(dict(record), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_means(path: str | os.PathLike) -> np.ndarray:
    """Read the RGB means from a ``means.json`` (dsprep's, or the book's ``{"R", "G", "B"}``).

    Returns:
        A float64 array (R, G, B).
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} does not exist; build it with 'dsprep build-hdf5' or "
                          "'dsprep means FILE.hdf5 -o means.json'")
    try:
        record = json.loads(path.read_text())
        values = np.array([float(record[c]) for c in CHANNELS], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetFormatError(
            f"{path} is not a means file (expected JSON with numeric 'R', 'G', 'B'); "
            "recompute it with 'dsprep means FILE.hdf5 -o means.json'"
        ) from exc
    if not np.all(np.isfinite(values)):
        raise DatasetFormatError(f"{path} has non-finite means {values.tolist()}; recompute it "
                                 "with 'dsprep means FILE.hdf5 -o means.json'")
    return values
