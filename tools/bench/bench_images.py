"""Benchmark one-image decoding: ``images.load`` (exact and reduced) and ``images.probe``.

Run: .venv/bin/python tools/bench/bench_images.py [--quick] [--count N] [--rounds R]
JPEGs of natural photos (crops of scikit-image's pictures, ~500x375) are decoded from memory in
one process and one OpenCV thread, interleaved over rounds; each figure is the median round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import skimage

from dsprep import images

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
          "retina.jpg", "motorcycle_left.png", "motorcycle_right.png"]


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Random crops of the bundled photos, resized to about 500x375 (some portrait), as JPEG."""
    folder = Path(skimage.__file__).parent / "data"
    sources = [cv2.imread(str(folder / name)) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = (375, 500) if rng.random() < 0.85 else (500, 375)
        size = (size[0] + int(rng.integers(-20, 21)), size[1] + int(rng.integers(-20, 21)))
        crop = cv2.resize(src[top:top + ch, left:left + cw], (size[1], size[0]),
                          interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def book_style(data: bytes, size: int) -> np.ndarray:
    """The book's way: decode to BGR, shorter side to size with INTER_AREA, centre crop."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    new = (size, int(h * size / w)) if w < h else (int(w * size / h), size)
    image = cv2.resize(image, new, interpolation=cv2.INTER_AREA)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def timed(fn, files: list[bytes]) -> float:
    """Seconds per file for one pass over ``files``."""
    start = time.perf_counter()
    for data in files:
        fn(data)
    return (time.perf_counter() - start) / len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (60 images)")
    parser.add_argument("--count", type=int, default=500, help="JPEGs per pass (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    count, rounds = (60, 2) if args.quick else (args.count, args.rounds)
    cv2.setNumThreads(1)  # what one build worker sees; keeps the figures per core

    files = make_jpegs(count)
    cases = {
        "book style, 256 crop (baseline)": lambda d: book_style(d, 256),
        "load exact, 256 crop": lambda d: images.load(d, 256, exact=True),
        "load reduced, 256 crop": lambda d: images.load(d, 256),
        "book style, 128 crop (baseline)": lambda d: book_style(d, 128),
        "load exact, 128 crop": lambda d: images.load(d, 128, exact=True),
        "load reduced, 128 crop": lambda d: images.load(d, 128),
        "decode only (full, RGB)": images.decode,
        "probe": images.probe,
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            seconds[name].append(timed(fn, files))
    per_file = {name: statistics.median(values) for name, values in seconds.items()}

    quality = {
        size: min(psnr(images.load(d, size), images.load(d, size, exact=True)) for d in files)
        for size in (256, 128)
    }
    mean_kb = sum(map(len, files)) / len(files) / 1024
    print(f"{len(files)} JPEGs, about 500x375, {mean_kb:.0f} KB each; median of {rounds} "
          "interleaved rounds; one process, one OpenCV thread\n")
    print(f"{'case':34} {'images/s':>10} {'us/file':>9} {'ratio':>7}")
    baselines = {"256": "book style, 256 crop (baseline)", "128": "book style, 128 crop (baseline)"}
    for name, sec in per_file.items():
        base = next((b for key, b in baselines.items() if key in name), None)
        ratio = f"{per_file[base] / sec:6.2f}x" if base else ""
        print(f"{name:34} {1 / sec:10,.0f} {sec * 1e6:9.1f} {ratio:>7}")
    probe_ratio = per_file["decode only (full, RGB)"] / per_file["probe"]
    print(f"\nprobe is {probe_ratio:,.0f}x cheaper than a full decode")
    print(f"reduced vs exact PSNR, worst file: 256 crop {quality[256]:.1f} dB (same path), "
          f"128 crop {quality[128]:.1f} dB")

    goals = [
        ("load exact >= 0.95x book style at 256 (robustness costs little)",
         per_file["book style, 256 crop (baseline)"] / per_file["load exact, 256 crop"] >= 0.95),
        ("load reduced >= 1.5x load exact at 128 (source >= 2.5x target)",
         per_file["load exact, 128 crop"] / per_file["load reduced, 128 crop"] >= 1.5),
        ("reduced PSNR >= 35 dB against exact on every file", min(quality.values()) >= 35),
        ("probe <= 50 us per file", per_file["probe"] <= 50e-6),
    ]
    print()
    for text, met in goals:
        print(f"  [{'met' if met else 'NOT met'}] {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
