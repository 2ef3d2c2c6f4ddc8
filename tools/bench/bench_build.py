"""Benchmark ``build-hdf5`` against the book's one-process build and a decode-only ceiling.

Run: .venv/bin/python tools/bench/bench_build.py [--quick] [--memory-check] [--workdir DIR]
Each measurement runs in its own process (so peak RSS is its own), interleaved over rounds, on a
generated Kaggle-like dump (mostly ~500x375 JPEGs) read from a warm page cache, to 256x256.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = 256
BOOK_BUFFER = 1000
TASK = 64


# -- the three builds, each run in a child process ----------------------------------------------


def list_images(dump: Path) -> list[tuple[str, int]]:
    from dsprep.sources import scan_class_folders

    classes, items = scan_class_folders(dump)
    return [(str(p), classes.index(c)) for p, c in items]


def aspect_aware(image, width: int, height: int, inter):
    """The book's AspectAwarePreprocessor: shorter side to size, centre crop, final resize."""
    import cv2

    h, w = image.shape[:2]
    if w < h:
        new = (width, int(h * width / w))
    else:
        new = (int(w * height / h), height)
    image = cv2.resize(image, new, interpolation=inter)
    top = (image.shape[0] - height) // 2
    left = (image.shape[1] - width) // 2
    image = image[top:top + height, left:left + width]
    return cv2.resize(image, (width, height), interpolation=inter)


def run_book(dump: Path, out: Path, workers: int) -> dict:
    """One process: imread, aspect-aware INTER_AREA resize, 1,000-image buffer, cv2.mean."""
    import cv2
    import h5py
    import numpy as np

    start = time.perf_counter()  # from the dump folder, as dsprep's build is timed
    items = list_images(dump)
    np.random.default_rng(0).shuffle(items)
    # The book stored float pixels; uint8 here, so every method writes the same bytes.
    db = h5py.File(out, "w")
    images = db.create_dataset("images", (len(items), SIZE, SIZE, 3), dtype="uint8")
    labels = db.create_dataset("labels", (len(items),), dtype="int")
    buffer, buffer_labels, index = [], [], 0
    means = ([], [], [])
    for path, label in items:
        image = aspect_aware(cv2.imread(path), SIZE, SIZE, cv2.INTER_AREA)
        b, g, r = cv2.mean(image)[:3]
        for values, v in zip(means, (r, g, b), strict=True):
            values.append(v)
        buffer.append(image)
        buffer_labels.append(label)
        if len(buffer) >= BOOK_BUFFER:
            images[index:index + len(buffer)] = np.array(buffer)
            labels[index:index + len(buffer)] = buffer_labels
            index += len(buffer)
            buffer, buffer_labels = [], []
    if buffer:
        images[index:index + len(buffer)] = np.array(buffer)
        labels[index:index + len(buffer)] = buffer_labels
    db.close()
    (out.parent / "book-means.json").write_text(json.dumps(
        {"R": float(np.mean(means[0])), "G": float(np.mean(means[1])),
         "B": float(np.mean(means[2]))}))
    return {"seconds": time.perf_counter() - start, "images": len(items)}


def _ceiling_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _ceiling_task(paths: list[str]) -> int:
    import cv2

    for path in paths:
        aspect_aware(cv2.imread(path), SIZE, SIZE, cv2.INTER_AREA)
    return len(paths)


def run_ceiling(dump: Path, out: Path, workers: int) -> dict:
    """The same number of worker processes doing only imread + the same resize."""
    from joblib.externals.loky import get_reusable_executor

    executor = get_reusable_executor(max_workers=workers, initializer=_ceiling_init)
    # Start the workers before the clock, as dsprep's are started by its warm-up build.
    first = [p for p, _ in list_images(dump)[:2]]
    list(executor.map(_ceiling_task, [first] * (2 * workers)))
    start = time.perf_counter()  # from the dump folder, as dsprep's build is timed
    paths = [p for p, _ in list_images(dump)]
    chunks = [paths[i:i + TASK] for i in range(0, len(paths), TASK)]
    done = sum(executor.map(_ceiling_task, chunks))
    seconds = time.perf_counter() - start
    executor.shutdown(wait=True)
    return {"seconds": seconds, "images": done}


def run_dsprep(dump: Path, out: Path, workers: int) -> dict:
    """dsprep's build: workers decode into shared memory, the parent streams to HDF5."""
    from dsprep import build

    options = build.BuildOptions(size=(SIZE, SIZE), interpolation="area", workers=workers)
    warm = out.parent / "warm"
    if warm.exists():
        shutil.rmtree(warm)
    # A small build first starts the worker processes, as the ceiling's are started.
    tiny = out.parent / "warm-src"
    if not tiny.exists():
        for path, _ in list_images(dump)[: 4 * TASK * workers: 2]:
            dest = tiny / Path(path).parent.name / Path(path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(path)
    build.build_hdf5(tiny, warm, options, name="warm")
    start = time.perf_counter()
    report = build.build_hdf5(dump, out.parent, options, name=out.stem, force=True)
    seconds = time.perf_counter() - start
    build.shutdown_workers()
    return {"seconds": seconds, "images": report.files[0].count,
            "skipped": len(report.skipped)}


METHODS = {"book": run_book, "ceiling": run_ceiling, "dsprep": run_dsprep}


def child(method: str, dump: Path, out: Path, workers: int) -> None:
    result = METHODS[method](dump, out, workers)
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(rss_self_mb=own.ru_maxrss / 1024, rss_children_mb=kids.ru_maxrss / 1024,
                  cpu_self_s=own.ru_utime + own.ru_stime,
                  cpu_children_s=kids.ru_utime + kids.ru_stime)
    print("RESULT " + json.dumps(result), flush=True)


def measure(method: str, dump: Path, work: Path, workers: int) -> dict:
    out = work / f"{method}-out" / "bench.hdf5"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", method, "--dump", str(dump), "--out", str(out),
           "--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{method} failed:\n{proc.stdout}\n{proc.stderr}")
    for leftover in out.parent.glob("*.hdf5"):
        leftover.unlink()
    return json.loads(lines[-1][len("RESULT "):])


# -- data and the report -----------------------------------------------------------------------


def make_dump(work: Path, images: int) -> Path:
    from dsprep import sample

    dump = work / f"dump-{images}"
    if not dump.exists():
        print(f"generating {images} images in {dump} ...", flush=True)
        sample.write_sample_dump(dump, layout="folders", per_class=math.ceil(images / 3),
                                 seed=0)
    return dump


def replicate(dump: Path, dest: Path, times: int) -> Path:
    """A class-folder tree of symbolic links naming each image of ``dump`` ``times`` times."""
    if dest.exists():
        return dest
    for path, _ in list_images(dump):
        for k in range(times):
            link = dest / Path(path).parent.name / f"r{k}_{Path(path).name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return dest


def warm_cache(dump: Path) -> int:
    total = 0
    for path, _ in list_images(dump):
        total += len(Path(path).read_bytes())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (300 images)")
    parser.add_argument("--images", type=int, default=5000, help="images in the dump")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best kept)")
    parser.add_argument("--memory-check", action="store_true",
                        help="also compare dsprep's peak RSS on N and 4N images")
    parser.add_argument("--workdir", type=Path, help="keep generated data here")
    parser.add_argument("--child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dump, args.out, args.workers)
        return
    n = 300 if args.quick else args.images
    rounds = 1 if args.quick else args.rounds
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report(work, n, rounds, args.workers, args.memory_check)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(work: Path, n: int, rounds: int, workers: int, memory_check: bool) -> None:
    dump = make_dump(work, n)
    count = len(list_images(dump))
    source_mb = warm_cache(dump) / 1e6
    out_mb = count * SIZE * SIZE * 3 / 1e6
    print(f"{count} images ({source_mb:.0f} MB of JPEG) -> {SIZE}x{SIZE}, {workers} workers, "
          f"{os.cpu_count()} cores, {rounds} interleaved round(s); best of the rounds")
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    order = list(METHODS)
    for r in range(rounds):
        for method in order[r % 3:] + order[: r % 3]:
            results[method].append(measure(method, dump, work, workers))
            print(f"  round {r + 1} {method:8s} {results[method][-1]['seconds']:7.2f} s",
                  flush=True)
    best = {m: min(rs, key=lambda x: x["seconds"]) for m, rs in results.items()}
    rate = {m: count / b["seconds"] for m, b in best.items()}
    print()
    header = f"{'method':28s} {'images/s':>9s} {'in MB/s':>8s} {'out MB/s':>9s} " \
             f"{'peak RSS MB':>12s} {'vs book':>8s} {'vs ceiling':>10s}"
    print(header)
    print("-" * len(header))
    labels = {"book": "book-style (1 process)", "ceiling": f"ceiling ({workers} proc, no write)",
              "dsprep": f"dsprep build ({workers} workers)"}
    for m in METHODS:
        b = best[m]
        rss = b["rss_self_mb"] + b["rss_children_mb"]
        secs = b["seconds"]
        print(f"{labels[m]:28s} {rate[m]:9.0f} {source_mb / secs:8.1f} {out_mb / secs:9.1f} "
              f"{rss:12.0f} {rate[m] / rate['book']:7.2f}x {rate[m] / rate['ceiling']:10.2f}")
    vs_ceiling = rate["dsprep"] / rate["ceiling"]
    vs_book = rate["dsprep"] / rate["book"]
    print()
    print(f"goal: dsprep >= 0.90 of the ceiling: {vs_ceiling:.2f} -> "
          f"{'met' if vs_ceiling >= 0.9 else 'NOT met'}")
    print(f"goal: dsprep about 2.2x book-style or more: {vs_book:.2f}x -> "
          f"{'met' if vs_book >= 2.2 else 'NOT met'} (the ceiling itself is "
          f"{rate['ceiling'] / rate['book']:.2f}x book-style on this machine)")
    print("peak RSS = the process itself + its largest worker (ru_maxrss of self and children)")
    if memory_check:
        memory(work, dump, workers)


def memory(work: Path, dump: Path, workers: int) -> None:
    big = replicate(dump, work / "dump-x4", 4)
    rows = []
    for tree in (dump, big):
        r = measure("dsprep", tree, work, workers)
        rows.append((len(list_images(tree)), r))
    print()
    print(f"{'images':>8s} {'seconds':>8s} {'parent RSS MB':>14s} {'worker RSS MB':>14s}")
    for n, r in rows:
        print(f"{n:8d} {r['seconds']:8.1f} {r['rss_self_mb']:14.0f} {r['rss_children_mb']:14.0f}")
    (n1, r1), (n2, r2) = rows
    grow = (r2["rss_self_mb"] + r2["rss_children_mb"]) / (r1["rss_self_mb"] + r1["rss_children_mb"])
    print(f"goal: peak RSS does not grow with the images ({n1} -> {n2}): x{grow:.2f} -> "
          f"{'met' if grow <= 1.1 else 'NOT met'}")


if __name__ == "__main__":
    main()
