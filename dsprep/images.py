"""Decode one image robustly into RGB uint8 pixels, and resize it to a target (height, width).

The only place where OpenCV's BGR order and (width, height) sizes appear.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import CorruptImageError, UsageError

DEFAULT_MAX_PIXELS = 89_478_485
RESIZE_MODES = ("crop", "stretch", "pad")
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def read_bytes(path: str | os.PathLike) -> bytes:
    """Return the raw bytes of an image file."""
    return Path(path).read_bytes()


def probe(data: bytes) -> tuple[int, int]:
    """Return the (height, width) of an encoded image, raising CorruptImageError if unreadable."""
    return decode(data).shape[:2]


def decode(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into an (H, W, 3) uint8 RGB array."""
    if not data:
        raise CorruptImageError("empty file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImageError("not a decodable image")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise CorruptImageError(f"{image.shape[1]}x{image.shape[0]} exceeds {max_pixels} pixels")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """Read and decode an image file into (H, W, 3) uint8 RGB."""
    return decode(read_bytes(path), **kwargs)


def parse_size(size: int | str | tuple[int, int]) -> tuple[int, int]:
    """Turn ``256``, ``"256"``, ``"256x192"`` (height x width) or a pair into (height, width)."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            return values[0], values[0]
        if len(values) == 2 and min(values) > 0:
            return values[0], values[1]
        raise UsageError(f"size {size!r} is not N or HxW (e.g. 256 or 256x192)")
    height, width = size
    return int(height), int(width)


def resize(
    image: np.ndarray,
    size: tuple[int, int],
    mode: str = "crop",
    interpolation: str | None = None,
) -> np.ndarray:
    """Resize an (H, W, C) image to ``size`` = (height, width).

    ``crop`` scales the shorter side to fit and centre-crops, ``stretch`` ignores the aspect
    ratio, ``pad`` letterboxes on black. INTER_AREA shrinks and INTER_CUBIC enlarges unless
    ``interpolation`` names another.
    """
    height, width = size
    h, w = image.shape[:2]
    if mode == "stretch":
        scale_h, scale_w = height / h, width / w
        target = (width, height)
    elif mode in ("crop", "pad"):
        scale = max(height / h, width / w) if mode == "crop" else min(height / h, width / w)
        scale_h = scale_w = scale
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
    else:
        raise UsageError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if interpolation is None:
        flag = cv2.INTER_AREA if min(scale_h, scale_w) < 1 else cv2.INTER_CUBIC
    else:
        flag = INTERPOLATIONS[interpolation]
    out = image if target == (w, h) else cv2.resize(image, target, interpolation=flag)
    if mode == "crop":
        top = (out.shape[0] - height) // 2
        left = (out.shape[1] - width) // 2
        out = out[top : top + height, left : left + width]
    elif mode == "pad":
        canvas = np.zeros((height, width) + out.shape[2:], dtype=out.dtype)
        top = (height - out.shape[0]) // 2
        left = (width - out.shape[1]) // 2
        canvas[top : top + out.shape[0], left : left + out.shape[1]] = out
        out = canvas
    return np.ascontiguousarray(out)


def load(
    data: bytes,
    size: tuple[int, int],
    mode: str = "crop",
    interpolation: str | None = None,
    *,
    exact: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode image bytes and resize them to ``size``; the one path build and generators share."""
    return resize(decode(data, max_pixels=max_pixels), size, mode, interpolation)
