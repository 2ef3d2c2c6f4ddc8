"""Small image makers shared by the tests (no image is committed; everything lands in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image: compresses like a photo, differs per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def write_image(path: Path, rgb: np.ndarray, quality: int = 92) -> Path:
    """Write an RGB (or gray, or RGBA) array to ``path``; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        data = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        data = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA)
    else:
        data = rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix, data, params)
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def make_class_folders(
    root: Path, classes=("cat", "dog", "fox"), per_class: int = 6, size=(48, 64), seed: int = 0
) -> Path:
    """Write ``root/<class>/<class>_<n>.jpg`` with distinct smooth images; return root."""
    n = seed
    for name in classes:
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.jpg", smooth_image(*size, seed=n))
            n += 1
    return root


def make_images_beside_masks(root: Path, classes=("COVID", "Normal"), per_class: int = 3) -> Path:
    """COVID-19 Radiography's layout: ``root/<class>/images/<class>-<n>.png`` beside masks of
    the same names in ``root/<class>/masks/``; return root."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / "images" / f"{name}-{i}.png",
                        smooth_image(30, 30, 9 * c + i))
            write_image(root / name / "masks" / f"{name}-{i}.png",
                        smooth_image(30, 30, 50 + 9 * c + i))
    return root


def area_reference(data: bytes, size: tuple[int, int], mode: str = "crop") -> np.ndarray:
    """Full OpenCV decode (EXIF orientation applied), RGB, resized to size, then centre crop
    (crop), nothing (stretch) or a centred black letterbox (pad): written out here, so the
    reduced-decoding tests do not compare the code with itself."""
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    height, width = size
    def flag(nh: int, nw: int) -> int:  # the documented choice: AREA shrinks, CUBIC enlarges
        return cv2.INTER_AREA if min(nh / h, nw / w) < 1 else cv2.INTER_CUBIC

    if mode == "stretch":
        return cv2.resize(rgb, (width, height), interpolation=flag(height, width))
    scale = max(height / h, width / w) if mode == "crop" else min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    nh, nw = (max(nh, height), max(nw, width)) if mode == "crop" else \
        (min(nh, height), min(nw, width))
    small = cv2.resize(rgb, (nw, nh), interpolation=flag(nh, nw))
    if mode == "crop":
        top, left = (nh - height) // 2, (nw - width) // 2
        return small[top:top + height, left:left + width]
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas[top:top + nh, left:left + nw] = small
    return canvas


def unlistable(monkeypatch, *folders) -> None:
    """Make ``os.scandir`` refuse these folders (full paths, or names anywhere) as an
    unreadable folder would: tests run as root, where file modes refuse nothing."""
    import errno

    scandir = os.scandir
    paths = {os.fspath(f) for f in folders}

    def listing(path="."):
        path = os.fspath(path)
        if path in paths or os.path.basename(path) in paths:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", listing)
