"""Random geometric and photometric transforms on whole batches, for training-time augmentation.

Each augmenter draws its parameters for the whole batch from the ``numpy.random.Generator`` it is
handed, then applies them with OpenCV; geometric ones keep the dtype. The flip kernels live here
(``dsprep.preprocess`` re-exports them and folds a RandomFlip into a following crop).
"""

from __future__ import annotations

import math
import numbers

import cv2
import numpy as np

from .errors import UsageError

__all__ = [
    "RandomAffine",
    "RandomBrightness",
    "RandomFlip",
    "affine_matrices",
    "flip_horizontal",
    "flip_vertical",
    "require_rng",
    "warp_affine",
]

# Element types OpenCV's kernels take (flip, warpAffine, and preprocess's crops and means).
CV_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.float32, np.float64)}

# warpAffine has no kernel for int8.
_WARP_DTYPES = CV_DTYPES - {np.dtype(np.int8)}

# Keras's fill_mode names. "nearest" and "reflect" fill exactly as Keras (SciPy) does. "wrap"
# tiles the image with period = its side (SciPy's, and so Keras's, repeats the edge pixel:
# period side - 1), and "constant" blends the fill value into the edge pixels' interpolation
# (SciPy uses the value only for points outside the image).
_BORDERS = {
    "nearest": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
    "reflect": cv2.BORDER_REFLECT,
    "wrap": cv2.BORDER_WRAP,
}


def real(value, name: str) -> float:
    """``value`` as a float, or a UsageError naming ``name`` for text, None, a bool and the
    like (Python's own error would name neither the argument nor what it takes)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a numpy scalar, checked as one
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise UsageError(f"{name} must be a number, got {value!r}")
    return float(value)


def flag(value, name: str) -> bool:
    """``value`` as a bool, or a UsageError for anything but True or False ("no" is truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False; received {value!r}")
    return bool(value)


def _probability(p: float) -> float:
    p = real(p, "p")
    if not (0.0 <= p <= 1.0):
        raise UsageError(f"p must be a probability between 0 and 1, got {p}")
    return float(p)


def check_batch(batch: np.ndarray, exact: bool = False, who: str = "expected") -> np.ndarray:
    """``batch`` as an array of (B, H, W, C) images (``exact``), or of more dimensions (crops
    per sample); a UsageError naming ``who`` otherwise."""
    if not isinstance(batch, np.ndarray):
        batch = np.asarray(batch)
    if batch.ndim < 4 or (exact and batch.ndim != 4):
        raise UsageError(
            f"{who} a batch of shape (B, H, W, C), got an array of shape {batch.shape}"
        )
    return batch


def cv_view(a: np.ndarray) -> np.ndarray:
    """The view OpenCV should see: single-channel images as 2-D, so ``dst=`` is honoured."""
    return a[..., 0] if a.shape[-1] == 1 else a


def require_rng(rng, who: str) -> np.random.Generator:
    """``rng`` when it is a numpy Generator; a UsageError naming ``who`` otherwise."""
    if not isinstance(rng, np.random.Generator):
        raise UsageError(
            f"{who} draws random parameters and needs a numpy.random.Generator, got {rng!r}; "
            "pass np.random.default_rng(seed)"
        )
    return rng


def flip_horizontal(
    batch: np.ndarray, mask: np.ndarray | None = None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Mirror images left-right: all of them, or those where ``mask`` is true.

    Args:
        batch: (B, H, W, C) or (B, K, H, W, C) array; with K crops per sample, a sample's mask
            entry mirrors all of its crops.
        mask: booleans, one per sample; None flips every sample.
        out: optional buffer of the batch's shape and dtype; it may be ``batch`` itself.

    Returns:
        An array of the batch's shape and dtype.
    """
    return _flip(batch, mask, out, axis=-2)


def flip_vertical(
    batch: np.ndarray, mask: np.ndarray | None = None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Mirror images top-bottom: all of them, or those where ``mask`` is true."""
    return _flip(batch, mask, out, axis=-3)


def _flip_output(out: np.ndarray | None, batch: np.ndarray) -> np.ndarray:
    if out is None:
        return np.empty_like(batch)
    if out.shape != batch.shape or out.dtype != batch.dtype:
        raise UsageError(
            f"out has shape {out.shape} and dtype {out.dtype}; expected {batch.shape} and "
            f"{batch.dtype}"
        )
    return out


def as_rows(a: np.ndarray) -> np.ndarray | None:
    """A C-contiguous (..., W, C) array as one (rows, W, C) image, or None when not contiguous."""
    if not a.flags.c_contiguous:
        return None
    return a.reshape(-1, a.shape[-2], a.shape[-1])


def _flip(batch, mask, out, axis: int) -> np.ndarray:
    batch = check_batch(batch)
    n = batch.shape[0]
    mask = np.ones(n, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), (n,))
    in_place = out is batch
    out = _flip_output(out, batch)
    use_cv = axis == -2 and batch.dtype in CV_DTYPES and batch.shape[-1] <= 512
    for i in range(n):
        if not mask[i]:
            if not in_place:
                out[i] = batch[i]
            continue
        src_rows = as_rows(batch[i]) if use_cv else None
        dst_rows = as_rows(out[i]) if src_rows is not None else None
        if dst_rows is not None:
            # flipCode 1 reverses every row, so (K*H, W, C) rows flip every crop at once.
            cv2.flip(cv_view(src_rows), 1, dst=cv_view(dst_rows))
        else:
            out[i] = np.flip(batch[i], axis=axis)
    return out


class RandomFlip:
    """Mirror each image with probability ``p``, horizontally and/or vertically.

    Horizontal and vertical flips are drawn independently (horizontal first), one draw per
    sample; with ten-crop samples a flip applies to all ten crops of the sample.
    """

    def __init__(self, horizontal: bool = True, vertical: bool = False, p: float = 0.5) -> None:
        self.horizontal = flag(horizontal, "horizontal")
        self.vertical = flag(vertical, "vertical")
        if not (self.horizontal or self.vertical):
            raise UsageError("RandomFlip needs horizontal=True or vertical=True (or both)")
        self.p = _probability(p)

    @property
    def horizontal_flip_probability(self) -> float | None:
        """p for a horizontal-only flip (lets Compose fold it into a crop), else None."""
        return self.p if self.horizontal and not self.vertical else None

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3:
            raise UsageError(f"RandomFlip works on (H, W, C) images, got samples of shape {shape}")
        return shape

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batch = check_batch(batch)
        rng = require_rng(rng, "RandomFlip")
        n = batch.shape[0]
        out = batch
        if self.horizontal:
            out = flip_horizontal(batch, rng.random(n) < self.p)
        if self.vertical:
            mask = rng.random(n) < self.p
            out = flip_vertical(out, mask, out=out if out is not batch else None)
        return out

    def __repr__(self) -> str:
        return f"RandomFlip(horizontal={self.horizontal}, vertical={self.vertical}, p={self.p})"


def _symmetric_range(value, name: str) -> tuple[float, float]:
    value = real(value, name)
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{name} must be a non-negative number, got {value}")
    return -value, value


def _pair(value, name: str) -> tuple[float, float]:
    """One value for both axes, or a (height, width) pair."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (int, float, np.number)):
        return real(value, name), real(value, name)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise UsageError(f"{name} must be a number or a (height, width) pair, got {value!r}")
    return real(value[0], name), real(value[1], name)


def affine_matrices(
    shape: tuple[int, int],
    rotation: np.ndarray,
    shift_y: np.ndarray,
    shift_x: np.ndarray,
    shear: np.ndarray,
    zoom_y: np.ndarray,
    zoom_x: np.ndarray,
) -> np.ndarray:
    """(B, 2, 3) forward maps (input pixel to output pixel) about the image centre.

    The steps compose as in Keras's ImageDataGenerator (``apply_affine_transform``), which
    maps output pixels to input pixels through rotation, shift, shear and zoom matrices in that
    order: the content is rotated, then shifted, then sheared, then zoomed. So a shift is
    scaled by the zoom and sheared with the rest, and a shear also stretches the image
    vertically by 1 / cos(shear), as Keras's shear matrix does.

    Args:
        shape: (height, width) of the images.
        rotation: angles in degrees, counter-clockwise as seen on screen.
        shift_y: vertical shifts in pixels (positive moves content down).
        shift_x: horizontal shifts in pixels (positive moves content right).
        shear: shear angles in degrees (vertical lines lean by this angle; positive moves the
            bottom of the image right).
        zoom_y: vertical scale of the content (above 1 enlarges it; Keras's zy is 1 / zoom_y).
        zoom_x: horizontal scale of the content.
    """
    height, width = shape
    theta = np.deg2rad(np.asarray(rotation, dtype=np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    shear = np.deg2rad(np.asarray(shear, dtype=np.float64))
    n = len(theta)
    # Keras's output-to-input matrices, in (x, y) with y pointing down, inverted step by step:
    # rotation [[cos, -sin], [sin, cos]], shift (-shift_x, -shift_y), shear
    # [[1, -sin s], [0, cos s]], zoom diag(1 / zoom_x, 1 / zoom_y).
    rotate = np.empty((n, 2, 2))
    rotate[:, 0, 0], rotate[:, 0, 1] = cos, sin
    rotate[:, 1, 0], rotate[:, 1, 1] = -sin, cos
    shear_zoom = np.zeros((n, 2, 2))
    shear_zoom[:, 0, 0] = zoom_x
    shear_zoom[:, 0, 1] = np.tan(shear) * zoom_x
    shear_zoom[:, 1, 1] = zoom_y / np.cos(shear)
    a = shear_zoom @ rotate
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = np.stack([np.broadcast_to(shift_x, n), np.broadcast_to(shift_y, n)], axis=1)
    offset = centre + (shear_zoom @ shift[:, :, None])[:, :, 0] - a @ centre
    return np.concatenate([a, offset[:, :, None]], axis=2)


def warp_affine(
    batch: np.ndarray,
    matrices: np.ndarray,
    *,
    fill: str = "nearest",
    fill_value: float = 0.0,
) -> np.ndarray:
    """Apply one forward affine map per image with bilinear interpolation; keeps dtype and shape."""
    batch = check_batch(batch)
    if fill not in _BORDERS:
        raise UsageError(f"fill must be one of {', '.join(_BORDERS)}, got {fill!r}")
    if batch.dtype not in _WARP_DTYPES:
        raise UsageError(
            f"affine transforms need uint8, uint16, int16, float32 or float64 batches, got "
            f"{batch.dtype}; convert the batch first (e.g. batch.astype(np.float32))"
        )
    n, height, width = batch.shape[:3]
    # C order whatever the input's layout: OpenCV writes only into contiguous destinations.
    out = np.empty(batch.shape, batch.dtype)
    for i in range(n):
        cv2.warpAffine(
            cv_view(batch[i]),
            matrices[i],
            (width, height),
            dst=cv_view(out[i]),
            flags=cv2.INTER_LINEAR,
            borderMode=_BORDERS[fill],
            borderValue=(fill_value,) * 4,
        )
    return out


class RandomAffine:
    """Random rotation, shift, shear and zoom per image, as Keras's ImageDataGenerator draws them.

    Each image gets the transform Keras's ``apply_affine_transform`` makes of the drawn
    values, composed in its order (see ``affine_matrices``), with bilinear interpolation,
    about the image's centre. Keras 3's ImageDataGenerator differs in two ways, both from its
    row and column axes being swapped after its offsets are computed:

    - it takes the centre of an H x W image at row W/2, column H/2, so on images that are not
      square its rotations, shears and zooms turn about another point (a 23 degree rotation
      of a 30x50 image differs by tens of grey levels);
    - its ``height_shift_range`` moves the image sideways, by a fraction of its height, and
      its ``width_shift_range`` up and down, by a fraction of its width. Here ``shift=(h, w)``
      moves it up and down by up to ``h`` of its height and sideways by up to ``w`` of its
      width: a Keras setting of unequal ranges does not carry over as it is (on a square
      image, swap the pair).

    Every transform of a square image with equal shift ranges is drawn as Keras draws it.

    Args:
        rotation: degrees; the angle is uniform in [-rotation, rotation] (``rotation_range``).
        shift: the largest shift, one value for both axes or a (height, width) pair
            (``height_shift_range``, ``width_shift_range``). As in Keras, a value below 1 is a
            fraction of that side's size and a value of 1 or more is pixels; the shift is drawn
            uniformly in [-shift, shift], independently for each axis (for a Python int, Keras
            draws whole pixels below it instead: an int 3 gives -2 to 2 there).
        shear: degrees; the shear angle is uniform in [-shear, shear] (``shear_range``).
        zoom: a float z for factors uniform in [1 - z, 1 + z], or a (low, high) pair; the
            horizontal and vertical factors are drawn independently (``zoom_range``). As in
            Keras, the content is scaled by 1 / factor: a factor below 1 zooms in.
        fill: how to fill pixels mapped from outside the image: "nearest", "constant",
            "reflect" or "wrap" (``fill_mode``). "nearest" and "reflect" fill as Keras does;
            "wrap" repeats the image with a period of its side (Keras: one pixel less, the edge
            pixel shared), and "constant" blends ``fill_value`` into the interpolation at the
            edge (Keras: only beyond it).
        fill_value: the value for ``fill="constant"`` (``cval``).
    """

    def __init__(
        self,
        rotation: float = 0,
        shift: float | tuple[float, float] = 0,
        shear: float = 0,
        zoom: float | tuple[float, float] = 0,
        fill: str = "nearest",
        fill_value: float = 0.0,
    ) -> None:
        self.rotation = _symmetric_range(rotation, "rotation")
        shift_h, shift_w = _pair(shift, "shift")
        self.shift = (_symmetric_range(shift_h, "shift")[1], _symmetric_range(shift_w, "shift")[1])
        self.shear = _symmetric_range(shear, "shear")
        if self.shear[1] >= 90:
            raise UsageError(f"shear must be below 90 degrees, got {shear!r}")
        if isinstance(zoom, np.ndarray) and zoom.ndim == 0:
            zoom = zoom[()]
        if isinstance(zoom, (int, float, np.number)):
            low, high = 1.0 - real(zoom, "zoom"), 1.0 + real(zoom, "zoom")
        elif isinstance(zoom, (str, bytes)) or not hasattr(zoom, "__len__") or len(zoom) != 2:
            raise UsageError(f"zoom must be a number or a (low, high) pair, "
                             f"got {zoom!r}")
        else:
            low, high = real(zoom[0], "zoom"), real(zoom[1], "zoom")
        if not (0 < low <= high and math.isfinite(high)):
            raise UsageError(
                f"zoom must give factors 0 < low <= high (a float below 1 or a (low, high) pair), "
                f"got {zoom!r}"
            )
        self.zoom = (low, high)
        if fill not in _BORDERS:
            raise UsageError(f"fill must be one of {', '.join(_BORDERS)}, got {fill!r}")
        self.fill = fill
        self.fill_value = float(fill_value)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or shape[-1] > 4:
            raise UsageError(
                "RandomAffine works on (height, width, channels) images with at most 4 channels, "
                f"got samples of shape {shape}; put it before any ten-crop"
            )
        return shape

    def draw(self, n: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """The (n, 2, 3) forward matrices for one batch of images of (height, width) ``shape``."""
        rng = require_rng(rng, "RandomAffine")
        height, width = shape
        rotation = rng.uniform(*self.rotation, n)
        # Below 1 a fraction of the side, 1 or more pixels (Keras's *_shift_range rule).
        max_y = self.shift[0] * height if self.shift[0] < 1 else self.shift[0]
        max_x = self.shift[1] * width if self.shift[1] < 1 else self.shift[1]
        shift_y = rng.uniform(-max_y, max_y, n)
        shift_x = rng.uniform(-max_x, max_x, n)
        shear = rng.uniform(*self.shear, n)
        # Keras's factor maps output pixels to input pixels: the content scales by its reciprocal.
        zoom_y = 1.0 / rng.uniform(*self.zoom, n)
        zoom_x = 1.0 / rng.uniform(*self.zoom, n)
        return affine_matrices(shape, rotation, shift_y, shift_x, shear, zoom_y, zoom_x)

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batch = check_batch(batch)
        self.output_shape(batch.shape[1:])
        matrices = self.draw(batch.shape[0], batch.shape[1:3], rng)
        return warp_affine(batch, matrices, fill=self.fill, fill_value=self.fill_value)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(rotation={self.rotation[1]}, shift={self.shift}, "
            f"shear={self.shear[1]}, zoom={self.zoom}, fill={self.fill!r})"
        )


class RandomBrightness:
    """Add one random offset in [-delta, delta] to every pixel of each image.

    ``delta`` is in the data's units (0-255 for uint8). uint8 batches stay uint8, the offset
    rounded to an integer and the result saturated to [0, 255]; float batches get the exact offset.
    """

    def __init__(self, delta: float) -> None:
        self.delta = _symmetric_range(delta, "delta")[1]

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3:
            raise UsageError(
                f"RandomBrightness works on (H, W, C) images, got samples of shape {shape}"
            )
        return shape

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batch = check_batch(batch)
        rng = require_rng(rng, "RandomBrightness")
        offsets = rng.uniform(-self.delta, self.delta, batch.shape[0])
        if batch.dtype == np.uint8:
            out = np.empty_like(batch)
            levels = np.arange(256, dtype=np.float64)
            for i, offset in enumerate(np.rint(offsets)):
                # A lookup table per image: one saturating pass, whatever the offset's sign.
                table = np.clip(levels + offset, 0, 255).astype(np.uint8)
                if batch.ndim == 4 and batch[i].flags.c_contiguous:
                    cv2.LUT(cv_view(batch[i]), table, dst=cv_view(out[i]))
                else:
                    out[i] = table[batch[i]]
            return out
        if not np.issubdtype(batch.dtype, np.floating):
            raise UsageError(
                f"RandomBrightness needs uint8 or float batches, got {batch.dtype}"
            )
        shape = (-1,) + (1,) * (batch.ndim - 1)
        return (batch + offsets.reshape(shape)).astype(batch.dtype, copy=False)

    def __repr__(self) -> str:
        return f"RandomBrightness({self.delta})"
