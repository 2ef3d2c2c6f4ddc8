"""Morphology for non-natural images (X-rays, scans): threshold, erode (erosion), dilate
(dilation), opening, closing.

Each operation runs scikit-image on every channel of every image of a batch, with a disk of the
given radius; the classes wrap them as preprocessors for a generator chain.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable

import numpy as np
from skimage import filters, morphology

from ..augment import check_batch
from ..errors import UsageError

__all__ = [
    "Close",
    "Dilate",
    "Erode",
    "Open",
    "Threshold",
    "closing",
    "dilate",
    "dilation",
    "erode",
    "erosion",
    "opening",
    "threshold",
]


def _batch(batch: np.ndarray) -> np.ndarray:
    return check_batch(batch, exact=True, who="morphology needs")


def _radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise UsageError(f"radius must be a non-negative integer (pixels), got {radius!r}")
    return int(radius)


def _level(value: float | None) -> float | None:
    # A string is refused, even one float() reads ("128"): float() failed on the others with
    # a message naming no argument. NaN would turn every pixel 0.
    if value is None:
        return None
    number = None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        # A 0-d array of numbers: its number (not one of text or a bool).
        value = value.item() if value.dtype.kind in "iuf" else None
    if value is not None and not isinstance(value, (bool, np.bool_, str, bytes, np.ndarray)):
        # Any real number: int, float, numpy scalars, Fraction, Decimal.
        with contextlib.suppress(TypeError, ValueError, ArithmeticError):
            number = float(value)
        if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
            number = None
    if number is None or math.isnan(number):
        raise UsageError(f"value must be a number (pixels above it turn 255), or None to pick "
                         f"one per image by Otsu's method; received {value!r}")
    return number


def _per_channel(batch: np.ndarray, op: Callable, radius: int) -> np.ndarray:
    batch = _batch(batch)
    if batch.dtype == np.float16:
        # SciPy has no float16 kernels; a minimum or maximum of float16 values is exact in
        # float32 and back.
        return _per_channel(batch.astype(np.float32), op, radius).astype(np.float16)
    footprint = morphology.disk(_radius(radius))
    out = np.empty_like(batch)
    for i in range(batch.shape[0]):
        for c in range(batch.shape[3]):
            op(batch[i, :, :, c], footprint, out=out[i, :, :, c])
    return out


def threshold(batch: np.ndarray, value: float | None = None) -> np.ndarray:
    """Binarise each image: 255 where a pixel is above the threshold, 0 elsewhere (uint8).

    Args:
        batch: (B, H, W, C) array.
        value: the threshold; None picks one per image with Otsu's method over all its channels.
    """
    batch = _batch(batch)
    if value is None:
        # Flattened: Otsu over all channels (skimage warns about an RGB-shaped image).
        levels = np.array([filters.threshold_otsu(image.ravel()) for image in batch],
                          dtype=np.float64)
    else:
        levels = np.full(batch.shape[0], _level(value))
    above = batch > levels.reshape(-1, 1, 1, 1)
    return above.astype(np.uint8) * np.uint8(255)


def erode(batch: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level erosion (minimum over a disk of ``radius`` pixels), per channel; keeps dtype."""
    return _per_channel(batch, morphology.erosion, radius)


def dilate(batch: np.ndarray, radius: int) -> np.ndarray:
    """Grey-level dilation (maximum over a disk of ``radius`` pixels), per channel; keeps dtype."""
    return _per_channel(batch, morphology.dilation, radius)


def opening(batch: np.ndarray, radius: int) -> np.ndarray:
    """Opening (erosion then dilation) with a disk: removes bright specks smaller than the disk."""
    return _per_channel(batch, morphology.opening, radius)


def closing(batch: np.ndarray, radius: int) -> np.ndarray:
    """Closing (dilation then erosion) with a disk: fills dark gaps smaller than the disk."""
    return _per_channel(batch, morphology.closing, radius)


# The nouns, as scikit-image names them beside opening and closing.
erosion = erode
dilation = dilate

# The first names of opening and closing, kept for code that used them; not exported, as a
# star import would shadow the builtin open.
open = opening  # noqa: A001
close = closing


class _Morphology:
    """A morphology kernel as a preprocessor: same shape and dtype out as in."""

    kernel: Callable[[np.ndarray, int], np.ndarray]

    def __init__(self, radius: int) -> None:
        self.radius = _radius(radius)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise UsageError(
                f"{type(self).__name__} works on (height, width, channels) images, got samples of "
                f"shape {shape}; put it before any ten-crop"
            )
        return shape

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return type(self).kernel(batch, self.radius)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(radius={self.radius})"


class Erode(_Morphology):
    """Erosion with a disk of ``radius`` pixels."""

    kernel = staticmethod(erode)


class Dilate(_Morphology):
    """Dilation with a disk of ``radius`` pixels."""

    kernel = staticmethod(dilate)


class Open(_Morphology):
    """Opening with a disk of ``radius`` pixels."""

    kernel = staticmethod(opening)


class Close(_Morphology):
    """Closing with a disk of ``radius`` pixels."""

    kernel = staticmethod(closing)


class Threshold:
    """Binarise images to 0/255 uint8 at ``value``, or per image by Otsu's method when None."""

    def __init__(self, value: float | None = None) -> None:
        self.value = _level(value)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise UsageError(
                f"Threshold works on (height, width, channels) images, got samples of shape {shape}"
            )
        return shape

    def __call__(self, batch: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return threshold(batch, self.value)

    def __repr__(self) -> str:
        return f"Threshold({self.value})"
