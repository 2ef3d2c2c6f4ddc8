"""What ``dsprep demo`` adds to the stages it runs: a picture of the batches the network sees."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .augment import RandomFlip
from .fileio import write_atomic
from .generators import HDF5Generator
from .preprocess import MeanSubtract, RandomPatch


def write_preview(
    hdf5_path: str | os.PathLike,
    means: str | os.PathLike | dict,
    out_png: str | os.PathLike,
    patch: tuple[int, int],
    *,
    rows: int = 4,
    cols: int = 8,
    zoom: int = 3,
    seed: int = 0,
) -> Path:
    """Draw a grid of training patches after flips, mean subtraction and random patching.

    The pixels are shown as the network receives them, shifted by 128 so that zero (the mean)
    is mid-grey; each tile is labelled with its class.

    Args:
        hdf5_path: a training HDF5 file.
        means: its means.json (path or dict).
        out_png: where to write the PNG.
        patch: (height, width) of the random patches.
        rows, cols: the grid.
        zoom: each tile is enlarged this many times (nearest neighbour) so pixels stay visible.
        seed: decides which rows, patches and flips are shown.
    """
    gen = HDF5Generator(
        hdf5_path,
        batch_size=rows * cols,
        augment=RandomFlip(),
        preprocessors=[RandomPatch(*patch), MeanSubtract(means)],
        shuffle="full",
        seed=seed,
    )
    try:
        x, y = gen[0]
    finally:
        gen.close()
    tiles = np.clip(x + 128.0, 0, 255).astype(np.uint8)
    h, w = patch[0] * zoom, patch[1] * zoom
    label_h = 16
    grid = np.full((rows * (h + label_h), cols * w, 3), 255, np.uint8)
    for k in range(len(tiles)):
        r, c = divmod(k, cols)
        tile = cv2.resize(tiles[k], (w, h), interpolation=cv2.INTER_NEAREST)
        top = r * (h + label_h)
        grid[top : top + h, c * w : (c + 1) * w] = tile
        cv2.putText(grid, gen.label_names[int(y[k])][: w // 8], (c * w + 2, top + h + 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    out_png = Path(out_png)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - PNG encoding of a uint8 array does not fail
        raise OSError(f"could not encode {out_png}")
    return write_atomic(out_png, buf.tobytes())
