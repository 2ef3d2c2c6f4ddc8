"""Find the labelled images in a dump: class sub-folders, file-name prefixes or a labels CSV."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LayoutError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


def is_image_name(name: str) -> bool:
    """True for a visible file whose extension (any case) is an image format dsprep reads."""
    if name.startswith(".") or name.lower() in IGNORED_NAMES:
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_class_folders(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, str]]]:
    """List ``root/<class>/<image>`` files.

    Returns:
        The sorted class names, and (path, class) pairs sorted by class then relative path, so
        the result never depends on the order the file system lists files in.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder of class sub-folders")
    classes = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    items: list[tuple[Path, str]] = []
    for name in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [Path(dirpath) / f for f in filenames if is_image_name(f)]
        items += [(p, name) for p in sorted(found, key=lambda p: p.relative_to(root).as_posix())]
    if not items:
        raise LayoutError(
            f"{root} has no images in class sub-folders (expected {root}/<class>/<image>)"
        )
    return classes, items
