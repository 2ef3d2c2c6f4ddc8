"""Benchmark the batch generators against plain memory copies, the book's per-image code and Keras.

Run: .venv/bin/python tools/bench/bench_generators.py [--quick] [--workdir DIR]
Everything is measured in one run, one process, on a 256x256 HDF5 file of a generated dump read
from a warm page cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402

from dsprep import images, sample, store  # noqa: E402
from dsprep.augment import RandomFlip  # noqa: E402
from dsprep.generators import HDF5Generator  # noqa: E402
from dsprep.preprocess import (  # noqa: E402
    MeanSubtract,
    RandomPatch,
    TenCrop,
    set_kernel_threads,
)

SIZE = 256
PATCH = 227
BATCH = 128


# -- data ------------------------------------------------------------------------------------


def build_data(work: Path, per_class: int) -> tuple[Path, Path, dict]:
    """A generated dump decoded to 256x256: one HDF5 file and the same pixels as JPEG folders."""
    dump = work / "dump"
    h5 = work / "train.hdf5"
    jpegs = work / "jpeg256"
    if not dump.exists():
        sample.write_sample_dump(dump, layout="folders", per_class=per_class, seed=0)
    classes = sorted(d.name for d in dump.iterdir() if d.is_dir())
    files = [(p, label) for label, name in enumerate(classes)
             for p in sorted((dump / name).glob("*.jpg"))]

    def load(item):
        path, _ = item
        return images.load(images.read_bytes(path), (SIZE, SIZE), "crop")

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        pixels = np.stack(list(pool.map(load, files)))
    labels = np.array([label for _, label in files])
    # Rows in random order, as build-hdf5 writes them, so contiguous batches mix classes.
    order = np.random.default_rng(0).permutation(len(files))
    pixels, labels = pixels[order], labels[order]
    if h5.exists():
        h5.unlink()
    with store.HDF5Writer(h5, len(pixels), (SIZE, SIZE), classes, direct=True) as writer:
        writer.append(pixels, labels, [files[i][0].name for i in order])
    if jpegs.exists():
        shutil.rmtree(jpegs)
    for k, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = jpegs / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 90])
        (folder / f"{k:06d}.jpg").write_bytes(buf.tobytes())
    mean = pixels.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    return h5, jpegs, {"R": mean[0], "G": mean[1], "B": mean[2]}


# Rows of a file larger than one run of back-to-back chunks: a build lays 256x256 rows, 64 per
# chunk, in runs of 4,160, then 3,648, between HDF5's index nodes.
LARGE_ROWS = 8704


def build_large(work: Path, data: np.ndarray) -> Path:
    """A file of ``LARGE_ROWS`` rows (the generated pixels over and over), built as
    build-hdf5 lays it out: its chunks in runs with index nodes between them."""
    path = work / "large.hdf5"
    if path.exists():
        path.unlink()
    with store.HDF5Writer(path, LARGE_ROWS, (SIZE, SIZE), ["a", "b"], direct=True) as writer:
        for start in range(0, LARGE_ROWS, len(data)):
            part = data[:min(len(data), LARGE_ROWS - start)]
            writer.append(part, np.arange(len(part)) % 2, [f"{start + i}" for i in
                                                           range(len(part))])
    return path


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# -- timing ----------------------------------------------------------------------------------


def rate(fn, n_images: int, repeats: int) -> float:
    """Best images/s of ``repeats`` runs of ``fn`` (one warm-up run first)."""
    fn()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = max(best, n_images / (time.perf_counter() - start))
    return best


ROUNDS = 3


def timed_per_round(repeats: int) -> int:
    """Timed runs of each function per round of ``rates_interleaved``: ``repeats`` or more."""
    return max(1, -(-repeats // ROUNDS))


def rates_interleaved(fns: list, n_images: int, repeats: int) -> list[float]:
    """Best images/s of each of ``fns``, timed in blocks that take turns over ``ROUNDS`` rounds.

    Two rates compared as a ratio are then measured over the same minutes, so a change in the
    machine's speed between them (other tenants of the host) moves both. Each block starts
    with an untimed run: the first epoch after the other pipeline's is slower (its caches are
    cold, and TensorFlow tears down its threads after an epoch).
    """
    best = [0.0] * len(fns)
    per_round = timed_per_round(repeats)
    for _ in range(ROUNDS):
        for k, fn in enumerate(fns):
            fn()
            for _ in range(per_round):
                start = time.perf_counter()
                fn()
                best[k] = max(best[k], n_images / (time.perf_counter() - start))
    return best


def epoch_of(gen) -> callable:
    def run():
        for i in range(len(gen)):
            gen[i]
        gen.on_epoch_end()
    return run


def threaded_epoch(gen, workers: int) -> callable:
    """One epoch with ``workers`` batches computed at once by threads (as ``as_keras`` does)."""
    def run():
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(gen.__getitem__, range(len(gen))):
                pass
        gen.on_epoch_end()
    return run


# -- baselines written the way the book writes them ------------------------------------------


def book_mean(image: np.ndarray, means: dict) -> np.ndarray:
    # The book's MeanPreprocessor (its images are BGR; ours are RGB, the cost is the same).
    (r, g, b) = cv2.split(image.astype("float32"))
    r -= means["R"]
    g -= means["G"]
    b -= means["B"]
    return cv2.merge([r, g, b])


def book_training_epoch(h5: Path, means: dict, rng: np.random.Generator, limit: int):
    from sklearn.feature_extraction.image import extract_patches_2d

    def run():
        with h5py.File(h5, "r") as db:
            for start in np.arange(0, limit, BATCH):
                batch = db["images"][start:start + BATCH]
                out = []
                for image in batch:
                    patch = extract_patches_2d(image, (PATCH, PATCH), max_patches=1,
                                               random_state=int(rng.integers(1 << 31)))[0]
                    patch = book_mean(patch, means)
                    if rng.random() < 0.5:
                        patch = np.fliplr(patch)
                    out.append(patch)
                np.array(out)
    return run


def book_ten_crop_epoch(h5: Path, means: dict, limit: int):
    def crops_of(image):
        # The book's CropPreprocessor: corners and centre, resized to the crop size, mirrored.
        h, w = image.shape[:2]
        coords = [[0, 0, PATCH, PATCH], [w - PATCH, 0, w, PATCH], [w - PATCH, h - PATCH, w, h],
                  [0, h - PATCH, PATCH, h]]
        dw, dh = int(0.5 * (w - PATCH)), int(0.5 * (h - PATCH))
        coords.append([dw, dh, w - dw, h - dh])
        crops = []
        for (x0, y0, x1, y1) in coords:
            crop = image[y0:y1, x0:x1]
            crops.append(cv2.resize(crop, (PATCH, PATCH), interpolation=cv2.INTER_AREA))
        crops.extend([cv2.flip(c, 1) for c in crops])
        return np.array(crops)

    def run():
        with h5py.File(h5, "r") as db:
            for start in np.arange(0, limit, BATCH):
                batch = db["images"][start:start + BATCH]
                np.array([crops_of(book_mean(image, means)) for image in batch])
    return run


def memcopy_epoch(data: np.ndarray):
    dest = np.empty((BATCH, *data.shape[1:]), dtype=np.uint8)

    def run():
        for start in range(0, len(data), BATCH):
            part = data[start:start + BATCH]
            np.copyto(dest[:len(part)], part)
    return run


def keras_directory_epoch(root: Path):
    import keras

    ds = keras.utils.image_dataset_from_directory(root, image_size=(SIZE, SIZE),
                                                  batch_size=BATCH, shuffle=True, seed=0,
                                                  verbose=False)

    def run():
        for _ in ds:
            pass
    return run


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--workdir", type=Path, help="keep generated data here (default: temp)")
    parser.add_argument("--per-class", type=int, help="images per class (default 600, quick 50)")
    parser.add_argument("--repeats", type=int,
                        help="timed runs per figure, best kept (default 5, quick 1)")
    parser.add_argument("--baseline-images", type=int, default=768,
                        help="rows the slow per-image baselines are timed on (default 768)")
    parser.add_argument("--skip-keras", action="store_true", help="leave out goal (c)")
    args = parser.parse_args(argv)
    per_class = args.per_class or (50 if args.quick else 600)
    repeats = args.repeats or (1 if args.quick else 5)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-generators-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"data: {per_class} images per class, {SIZE}x{SIZE}, in {work}", flush=True)
        h5, jpegs, means = build_data(work, per_class)
        warm(h5)
        with h5py.File(h5, "r") as db:
            data = db["images"][()]
        n = len(data)
        # The per-image baselines are slow: time them on the first rows only (whole batches).
        slow_n = min(n, max(BATCH, (args.baseline_images // BATCH) * BATCH))
        rng = np.random.default_rng(0)
        pipeline = [RandomPatch(PATCH, PATCH), RandomFlip(), MeanSubtract(means)]
        rows = []

        def gen(**kwargs):
            return HDF5Generator(h5, batch_size=BATCH, seed=0, **kwargs)

        def measure(what, ours, base_name, base, goal, base_n=None, ours_n=None):
            """Time ``ours`` and ``base`` (callables) unless given as images/s already."""
            ours = rate(ours, ours_n or n, repeats) if callable(ours) else ours
            base = rate(base, base_n or n, repeats) if callable(base) else base
            rows.append((what, ours, base_name, base, ours / base, goal))
            print(f"  {what}: {ours:,.0f} vs {base:,.0f} images/s", flush=True)
            return ours

        measure("(a) uint8 batches, shuffle=batches", epoch_of(gen(output="uint8")),
                "np.copyto from memory", memcopy_epoch(data), 0.8)
        if not args.quick:
            large = build_large(work, data)
            warm(large)
            measure(f"(a2) the same, a file of {LARGE_ROWS:,} rows",
                    epoch_of(HDF5Generator(large, batch_size=BATCH, seed=0, output="uint8")),
                    "np.copyto from memory", memcopy_epoch(data), None, ours_n=LARGE_ROWS)
            large.unlink()
        train_epoch = epoch_of(gen(preprocessors=pipeline))
        keras_rate = None
        if args.skip_keras:
            train_rate = rate(train_epoch, n, repeats)
        else:
            # (b) is also (c)'s numerator: time it in rounds with Keras's reader.
            train_rate, keras_rate = rates_interleaved(
                [train_epoch, keras_directory_epoch(jpegs)], n, repeats)
        measure(
            "(b) patch+flip+mean, float32", train_rate,
            "book per-image (split/merge, extract_patches_2d)",
            book_training_epoch(h5, means, rng, slow_n), 8.0, slow_n)
        book_rate = rows[-1][3]
        if (os.cpu_count() or 1) > 1:
            # (b) splits each large batch between two threads; this is the same on one.
            set_kernel_threads(1)
            measure("(b1) same, kernels on one thread", epoch_of(gen(preprocessors=pipeline)),
                    "(b), kernels on two threads", train_rate, None)
            set_kernel_threads(2)
        measure("(b') patch+flip, uint8 (mean on the GPU)",
                epoch_of(gen(preprocessors=pipeline[:2], output="uint8")),
                "book per-image (as in b)", book_rate, None)
        if keras_rate is not None:
            measure("(c) patch+flip+mean, float32", train_rate,
                    "keras image_dataset_from_directory", keras_rate, 5.0)
            # Keras decodes with a thread per core; give the generator the same (one process).
            cores = os.cpu_count() or 1
            measure(f"(c') same, {cores} threads", threaded_epoch(gen(preprocessors=pipeline),
                                                                     cores),
                    "keras (as in c)", keras_rate, None)
        measure("(d) patch+flip+mean, shuffle=full",
                epoch_of(gen(preprocessors=pipeline, shuffle="full")),
                "same, shuffle=batches", train_rate, 0.5)
        measure("(e) ten-crop + mean, float32",
                epoch_of(gen(preprocessors=[TenCrop(PATCH, PATCH), MeanSubtract(means)],
                             shuffle="none")),
                "book per-image crop loop", book_ten_crop_epoch(h5, means, slow_n), 2.0, slow_n)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    header = ("measure", "dsprep img/s", "baseline", "base img/s", "ratio", "goal", "")
    table = [header] + [
        (what, f"{ours:,.0f}", base_name, f"{base:,.0f}", f"{ratio:.2f}",
         "-" if goal is None else f">= {goal:g}",
         "" if goal is None else "PASS" if ratio >= goal else "FAIL")
        for what, ours, base_name, base, ratio, goal in rows
    ]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"\n{n} images of {SIZE}x{SIZE} ({slow_n} for the per-image baselines), batches of "
          f"{BATCH}, best of {repeats} ((b) and Keras: of {ROUNDS * timed_per_round(repeats)}, "
          f"in {ROUNDS} rounds taking turns; (b1) and (d) are timed apart from (b)); "
          f"{os.cpu_count()} cores; 1 process (Keras uses its own threads).")
    return 0 if all(goal is None or ratio >= goal for *_, ratio, goal in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
