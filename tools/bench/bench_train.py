"""Benchmark training throughput: fed from HDF5Generator via the Keras adapter vs from memory.

Run: .venv/bin/python tools/bench/bench_train.py [--quick] [--device cpu|gpu] [--workdir DIR]
On a GPU without TensorFlow: KERAS_BACKEND=torch python tools/bench/bench_train.py --device gpu
For each model, the same compiled model trains on the same uint8 batches (random patch + flip,
mean subtraction on the device) twice in one run: once from ``as_keras(HDF5Generator(...))``,
once from arrays already in memory. The ratio says how much the input pipeline costs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# name -> (stored image side, crop side or None, full-run batch, full-run steps, goal ratio)
MODELS = {
    "alexnet": (256, 227, 32, 8, 0.90),
    "resnet18": (256, 224, 16, 8, 0.90),
    "smallnet": (150, None, 32, 16, 0.75),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="hide the GPUs (cpu) or use the first one (gpu)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per step [default: 32 (resnet18 16); 128 on a GPU; "
                             "8 with --quick]")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed epoch [default: 8 (smallnet 16); 160 on a GPU; "
                             "3 with --quick]")
    parser.add_argument("--epochs", type=int, default=None,
                        help="timed epochs after one warm-up epoch [default: 2; 1 with --quick]")
    parser.add_argument("--workers", type=int, default=None,
                        help="batches the adapter prepares at once (threads) [default: as "
                             "'dsprep train': one per core up to 8, at least 2]")
    parser.add_argument("--precision", choices=("auto", "mixed", "float32"), default="auto",
                        help="auto = mixed float16 on a GPU")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the generated HDF5 files go [default: a temporary folder]")
    return parser.parse_args(argv)


def hide_or_show_gpus(device: str) -> None:
    """Set the environment before any framework loads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def device_name(device: str) -> str:
    """The accelerator's (or the CPU's) model name, found through the active backend."""
    import keras

    backend = keras.backend.backend()
    if device == "gpu":
        try:
            if backend == "tensorflow":
                import tensorflow as tf

                gpus = tf.config.list_physical_devices("GPU")
                if gpus:
                    return tf.config.experimental.get_device_details(gpus[0]).get(
                        "device_name", gpus[0].name)
            elif backend == "torch":
                import torch

                if torch.cuda.is_available():
                    return torch.cuda.get_device_name(0)
            elif backend == "jax":
                import jax

                gpus = [d for d in jax.devices() if d.platform == "gpu"]
                if gpus:
                    return gpus[0].device_kind
        except (ImportError, RuntimeError):
            pass
        return "no GPU found (running on the CPU)"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def write_file(path: Path, rows: int, side: int, seed: int) -> Path:
    """A dsprep HDF5 file of smooth random images (fast to make, photo-like to compress)."""
    import cv2
    import numpy as np

    from dsprep.store import write_arrays

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (rows, 16, 16, 3), dtype=np.uint8)
    images = np.stack([cv2.resize(s, (side, side), interpolation=cv2.INTER_CUBIC) for s in small])
    labels = np.arange(rows) % 2
    return write_arrays(path, images, labels, ["a", "b"], split="train", overwrite=True)


class EpochTimer:
    """Wall time of each epoch, as a Keras callback (built lazily: Keras loads late)."""

    @staticmethod
    def make():
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self._start)

        return _Timer()


def measure(model, data, epochs: int, images_per_epoch: int, **fit_kw) -> float:
    """Images per second: the median of the timed epochs after a warm-up epoch."""
    timer = EpochTimer.make()
    model.fit(data, epochs=1 + epochs, verbose=0, shuffle=False, callbacks=[timer], **fit_kw)
    return images_per_epoch / statistics.median(timer.times[1:])


def bench_model(name: str, work: Path, args, batch: int, steps: int, epochs: int) -> dict:
    import keras
    import numpy as np

    from dsprep.adapters import as_keras
    from dsprep.augment import RandomFlip
    from dsprep.generators import HDF5Generator
    from dsprep.preprocess import RandomPatch
    from dsprep.train.fit import compile_model, configure_device
    from dsprep.train.models import build_model
    from dsprep.train.options import TrainConfig

    side, crop, _, _, goal = MODELS[name]
    if args.quick and name != "smallnet":
        side, crop = 128, 112  # a smaller network input keeps the CPU smoke run short
    rows = batch * steps
    path = write_file(work / f"{name}-{side}.hdf5", rows, side, seed=len(name))
    pre = [RandomPatch(crop, crop)] if crop else []
    gen = HDF5Generator(path, batch_size=batch, preprocessors=pre, augment=RandomFlip(),
                        shuffle="batches", seed=0, output="uint8", drop_last=True)
    # The in-memory baseline trains on exactly the batches the generator makes (epoch 0).
    batches = [gen[i] for i in range(len(gen))]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])

    keras.utils.set_random_seed(0)
    device = configure_device(args.precision, jit=True, gpus="1")
    model = build_model(name, x.shape[1:], 2, mean=(120.0, 120.0, 120.0), input_dtype="uint8")
    config = TrainConfig(model=name, optimizer="sgd", lr=0.001)
    compile_model(model, config, classes=2, jit=device.jit)

    # Alternate the two feeds so a noisy neighbour hurts both alike; keep each one's best.
    memory, fed = [], []
    for _ in range(1 if args.quick else 2):
        memory.append(measure(model, x, epochs, rows, y=y, batch_size=batch))
        fed.append(measure(model, as_keras(gen, workers=args.workers), epochs, rows))
    best_memory, best_fed = max(memory), max(fed)
    return {"model": name, "input": f"{x.shape[1]}x{x.shape[2]}", "batch": batch,
            "memory": best_memory, "fed": best_fed, "ratio": best_fed / best_memory,
            "goal": goal}


def main(argv=None) -> int:
    args = parse_args(argv)
    hide_or_show_gpus(args.device)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if args.workers is None:
        from dsprep.train.options import default_workers

        args.workers = default_workers()
    import keras

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"device: {args.device} - {device_name(args.device)}")
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"adapter workers {args.workers}")
    results = []
    try:
        for name in names:
            default_batch = 8 if args.quick else (128 if args.device == "gpu" else MODELS[name][2])
            batch = args.batch_size or default_batch
            # A GPU runs the CPU's few steps in a blink, and Keras restarts its input
            # workers every epoch: time epochs long enough for the steady state there.
            steps = args.steps or (3 if args.quick else 160 if args.device == "gpu"
                                   else MODELS[name][3])
            epochs = args.epochs or (1 if args.quick else 2)
            started = time.perf_counter()
            results.append(bench_model(name, work, args, batch, steps, epochs))
            print(f"  {name}: done in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    header = ("model", "input", "batch", "in memory img/s", "HDF5Generator img/s", "ratio",
              "goal", "met")
    rows = [(r["model"], r["input"], str(r["batch"]), f"{r['memory']:.1f}", f"{r['fed']:.1f}",
             f"{r['ratio']:.2f}", f">= {r['goal']:.2f}", "yes" if r["ratio"] >= r["goal"] else "NO")
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if args.quick:
        print("\n(--quick: a smoke run with small inputs and few steps; the figures are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
