"""Train a network on dsprep data into a run folder; resume a run; overfit check; LR sweep.

A run folder holds config.json, history.csv, curves.png, lr.png, best.keras, last.keras and
state.json; see :mod:`dsprep.train.callbacks` for how each is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from .. import __version__, sources
from ..adapters import mean_rgb
from ..errors import (
    DatasetFormatError,
    DestinationExistsError,
    DsprepError,
    LayoutError,
    UnlistedClassError,
    UsageError,
)
from ..fileio import exclusive, quoted, refuse_dangling_link
from ..split import read_split_classes, split_pixel_limit
from ..system import ForgivingStream, on_a_terminal
from . import callbacks as cb
from .models import build_model
from .options import SEED_MAX, TrainConfig

CONFIG = "config.json"
# The model's first layer computes (pixel - mean) * INPUT_SCALE: about -1..1 whatever the data's
# format, so a model sees the same inputs from an HDF5 folder and a split folder. (Raw +-128
# inputs made smallnet, which has no normalisation layer, diverge at the default rate.)
INPUT_SCALE = 1.0 / 127.5
# What limit_per_class writes into the run folder while it trains.
_SUBSET_HDF5, _SUBSET_FOLDER = ".subset-train.hdf5", ".subset-train"
# The means used when a split folder comes without means.json: mid-grey.
_FALLBACK_MEAN = (127.5, 127.5, 127.5)


@dataclass
class TrainResult:
    """What a training run produced."""

    run: Path
    epochs_done: int
    monitor: str
    best: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    model: keras.Model | None = field(default=None, repr=False)
    epochs_planned: int = 0  # the total asked for; more than epochs_done after a stop
    epochs_run: int = 0  # epochs trained by this call (0: a resume of a finished run)
    # The run it was to replace is back in RUN: the new one diverged in its first epoch (train),
    # or never finished one before this resume (resume).
    restored: bool = False
    # RUN held a run stopped before it finished its first epoch, which started again.
    restarted: bool = False
    # Images of a split folder that could not be read, as (path, reason): left out up front,
    # or replaced in their batches when they failed later.
    left_out: list[tuple[str, str]] = field(default_factory=list)
    # Classes of the data with no training image (a test folder of a class train/ lacks):
    # the model has an output for each, but never learned one.
    untrained: list[str] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        """The last epoch's training or validation loss is not a number (NaN or infinite)."""
        return bool(self.history) and cb.diverged(self.history[-1])


@dataclass
class DataBundle:
    """Training and validation sequences of one data folder, and what the model needs to know."""

    train: object
    val: object | None
    label_names: list[str]
    mean: tuple[float, float, float]
    scale: float
    input_shape: tuple[int, int, int]
    input_dtype: str
    kind: str


# ----------------------------------------------------------------------------------------------
# device


@dataclass
class DeviceSetup:
    """The accelerator choices of a run."""

    backend: str
    gpus: int
    precision: str
    jit: bool
    strategy: object | None = None

    def scope(self):
        """A context for building and compiling the model (the strategy's, or a no-op)."""
        import contextlib

        if self.strategy is not None and hasattr(self.strategy, "scope"):
            return self.strategy.scope()
        return contextlib.nullcontext()


def count_gpus() -> int:
    """GPUs visible to the active Keras backend."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return len(tf.config.list_physical_devices("GPU"))
        if backend == "torch":
            import torch

            return torch.cuda.device_count()
        if backend == "jax":
            import jax

            return sum(1 for d in jax.devices() if d.platform == "gpu")
    except (ImportError, RuntimeError):
        return 0
    return 0


def configure_device(precision: str = "auto", jit: bool = True, gpus: str = "1") -> DeviceSetup:
    """Pick precision, XLA and data parallelism for the machine at hand.

    On a GPU, ``auto`` precision means mixed float16, and XLA is on (TensorFlow and JAX
    backends) unless ``jit`` is False; on a CPU, float32 and no XLA. ``gpus`` is "all" or a
    count; more than one uses the backend's data-parallel strategy.
    """
    backend = keras.backend.backend()
    available = count_gpus()
    wanted = available if gpus == "all" else int(gpus)
    if wanted > max(available, 1):
        # The default, 1, trains on the CPU where there is no GPU; more is a request to refuse.
        raise UsageError(f"--gpus {gpus} asks for more GPUs than the {available} visible; "
                         + (f"use --gpus all or a count up to {available}" if available else
                            "leave --gpus out to train on the CPU"))
    if available == 0:
        wanted = 0
    if precision == "auto":
        precision = "mixed" if wanted else "float32"
    keras.mixed_precision.set_global_policy("mixed_float16" if precision == "mixed"
                                            else "float32")
    strategy = None
    if wanted > 1:
        # The one place that branches on the backend: each has its own data-parallel machinery.
        if backend == "tensorflow":
            import tensorflow as tf

            strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(wanted)])
        elif backend == "jax":
            devices = keras.distribution.list_devices("gpu")[:wanted]
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            strategy = "jax-data-parallel"
        else:
            raise UsageError(f"--gpus {gpus}: multi-GPU training is not supported on the "
                             f"{backend} backend; use --gpus 1 or KERAS_BACKEND=tensorflow/jax")
    # XLA through the backend's own compiler; torch.compile is left to the user.
    use_jit = bool(jit and wanted and backend in ("tensorflow", "jax"))
    return DeviceSetup(backend, wanted, precision, use_jit, strategy)


# ----------------------------------------------------------------------------------------------
# data


def _subset_hdf5(src: Path, dest: Path, per_class: int, block: int = 256) -> Path:
    """Write the first ``per_class`` rows of each class of ``src`` into a new file ``dest``.

    Rows keep their file order (build-hdf5 shuffles them, so batches still mix classes) and are
    copied in blocks with per-row reads, which h5py serves far faster than fancy indexing.
    """
    from ..store import HDF5Writer, label_names, open_dataset

    with open_dataset(src) as db:
        images, labels = db["images"], db["labels"][()]
        keep = np.sort(np.concatenate(
            [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))
        # As text whatever the file holds (numbers, bytes that are no UTF-8): a subset's names
        # are only read back as the rows' names.
        names = ([n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                  for n in db["filenames"][()][keep]] if "filenames" in db
                 else [f"row{i}" for i in keep])
        attrs = {k: db.attrs[k] for k in ("resize", "interpolation", "mean_rgb")
                 if k in db.attrs}
        # (Its rows' names as they are: a file of the user's own may name them otherwise.)
        with HDF5Writer(dest, len(keep), images.shape[1:3], label_names(db), overwrite=True,
                        attrs={**attrs, "split": "train", "order": "subset", "seed": 0,
                               "skipped": 0}, check_names=False) as writer:
            buf = np.empty((min(block, max(1, len(keep))), *images.shape[1:]), np.uint8)
            for start in range(0, len(keep), block):
                rows = keep[start:start + block]
                for j, row in enumerate(rows):
                    images.read_direct(buf, np.s_[int(row)], np.s_[j])
                writer.append(buf[:len(rows)], labels[rows],
                              names[start:start + len(rows)])
    return dest


def _drop_subset(work: Path) -> None:
    """Remove the subset ``limit_per_class`` wrote (a resume writes it again)."""
    (work / _SUBSET_HDF5).unlink(missing_ok=True)
    shutil.rmtree(work / _SUBSET_FOLDER, ignore_errors=True)


def _subset_folder(src: Path, dest: Path, per_class: int) -> Path:
    """Mirror the first ``per_class`` images (by path) of each class folder of ``src`` as
    links: the images the DirectoryGenerator would read there, not notes or other files."""
    if dest.exists():
        shutil.rmtree(dest)
    taken: dict[str, int] = {}
    for label, rel in sources.class_folder_files(src)[1]:
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to((src / rel).resolve())
    return dest


def _ops(config: TrainConfig):
    """Training and validation preprocessors and the training augmentation of a config."""
    train_pre, val_pre, augment = [], [], []
    if config.crop:
        from ..preprocess import CenterCrop, RandomPatch

        train_pre.append(RandomPatch(config.crop, config.crop))
        val_pre.append(CenterCrop(config.crop, config.crop))
    if config.augment in ("flip", "affine"):
        from ..augment import RandomFlip

        augment.append(RandomFlip())
    if config.augment == "affine":
        from ..augment import RandomAffine

        augment.append(RandomAffine(rotation=config.rotation, shift=config.shift,
                                    shear=config.shear, zoom=config.zoom))
    return train_pre, val_pre, _compose(augment)


def _split_params(data: Path) -> dict:
    """The options a split folder was made with (split.json's ``params``), or {}."""
    try:
        params = json.loads((data / "split.json").read_text(encoding="utf-8")).get("params")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return {}
    return params if isinstance(params, dict) else {}


def _split_classes(data: Path) -> list[str]:
    """The ``classes`` of a split folder's split.json (the label ids, in order)."""
    if not (data / "split.json").is_file():
        raise LayoutError(f"{data} has a train/ folder but no split.json, so it is no split "
                          f"made by dsprep (or an unfinished one): build it as it is with "
                          f"'dsprep build-hdf5 {quoted(data)} OUT' and train on OUT, or split its "
                          "images again into a new folder with "
                          f"'dsprep split {quoted(data)} SPLIT'")
    return read_split_classes(data)


def _check_same_data(train, val, data: Path) -> None:
    """Validation must use the training file's label ids and image size."""
    if list(val.label_names) != list(train.label_names):
        raise DatasetFormatError(
            f"{data}/val.hdf5 has classes {list(val.label_names)} but train.hdf5 has "
            f"{list(train.label_names)}; build both from one split with 'dsprep build-hdf5'")
    if tuple(val.image_shape) != tuple(train.image_shape):
        raise DatasetFormatError(
            f"{data}/val.hdf5 holds {tuple(val.image_shape)} images but train.hdf5 holds "
            f"{tuple(train.image_shape)}; build both with the same --size")


# The short last training batch is left out, unless the set is smaller than one batch (counted
# on the images the generator reads: bad files are no rows). A batch of a few images gives
# BatchNorm poor statistics; the generators move the start of the batches each epoch, so the
# rows a dropped tail leaves out change from epoch to epoch.
_DROP_LAST = "auto"


def _compose(ops: list):
    if not ops:
        return None
    if len(ops) == 1:
        return ops[0]
    from ..preprocess import Compose

    return Compose(ops)


def open_data(data: str | os.PathLike, config: TrainConfig, *, work: Path | None = None,
              validation: bool = True, progress: bool = False) -> DataBundle:
    """Open DATA (a build-hdf5 folder or a split folder) as training and validation sequences.

    Args:
        data: folder with train.hdf5 (+ val.hdf5, means.json), or with train/<class>/ folders.
        config: batch size, crop, augmentation, seed, subset and image size come from here.
        work: folder for the subset written by ``limit_per_class`` (the run folder).
        validation: open the validation split when there is one.
        progress: show a bar while image folders are checked (each file decoded once).
    """
    data = Path(data)
    train_pre, val_pre, augment = _ops(config)
    work = work or data
    if (data / "train.hdf5").is_file():
        from ..generators import HDF5Generator, rows_in_class_runs
        from ..store import open_dataset

        train_path = data / "train.hdf5"
        if config.limit_per_class:
            train_path = _subset_hdf5(train_path, work / _SUBSET_HDF5,
                                      config.limit_per_class)
        if (data / "means.json").is_file():
            mean = mean_rgb(data / "means.json")
        else:
            with open_dataset(data / "train.hdf5") as db:
                if "mean_rgb" not in db.attrs:
                    raise DatasetFormatError(
                        f"{data / 'train.hdf5'} has no mean_rgb attribute and {data} no "
                        "means.json, so its channel means are unknown: build the data with "
                        "'dsprep build-hdf5', or write the means as means.json beside it "
                        '({"R": ..., "G": ..., "B": ...})')
                mean = tuple(float(v) for v in db.attrs["mean_rgb"])
        with open_dataset(train_path) as db:
            # Rows in class order (build-hdf5 --order sorted) are drawn from anywhere.
            shuffle = ("full" if rows_in_class_runs(db["labels"][()], config.batch_size)
                       else "batches")
            _check_crop(config, tuple(db["images"].shape[1:3]), f"{data / 'train.hdf5'}",
                        "images built at a larger 'dsprep build-hdf5 --size'")
        train = HDF5Generator(train_path, batch_size=config.batch_size, preprocessors=train_pre,
                              augment=augment, shuffle=shuffle, seed=config.seed,
                              output="uint8", drop_last=_DROP_LAST)
        val = None
        if validation and (data / "val.hdf5").is_file():
            val = HDF5Generator(data / "val.hdf5", batch_size=config.batch_size,
                                preprocessors=val_pre, shuffle="none", output="uint8")
            _check_same_data(train, val, data)
        kind = "hdf5"
    elif (data / "train").is_dir():
        from ..generators import DirectoryGenerator

        train_root = data / "train"
        if config.limit_per_class:
            train_root = _subset_folder(train_root, work / _SUBSET_FOLDER,
                                        config.limit_per_class)
        size = (config.image_size, config.image_size)
        _check_crop(config, size, f"--image-size {config.image_size}",
                    "a larger --image-size")
        # split.json's classes define the label ids, even for a class with no training folder.
        classes = _split_classes(data)
        # A split made with --verify full decoded every file already: the header check will do.
        check = "header" if _split_params(data).get("verify") == "full" else "decode"
        # Every image the split kept, its own --max-pixels included (a subset is elsewhere).
        max_pixels = split_pixel_limit(data) or 0
        with _split_classes_only(data, "train"):  # the subset's folders are the split's
            train = DirectoryGenerator(train_root, image_size=size,
                                       batch_size=config.batch_size, preprocessors=train_pre,
                                       augment=augment, shuffle=True, seed=config.seed,
                                       classes=classes, output="uint8", drop_last=_DROP_LAST,
                                       progress=progress, check=check, max_pixels=max_pixels)
        val = None
        if validation and has_validation(data):
            with _split_classes_only(data, "val"):
                val = DirectoryGenerator(data / "val", image_size=size,
                                         batch_size=config.batch_size, preprocessors=val_pre,
                                         shuffle=False, classes=classes, output="uint8",
                                         progress=progress, check=check, max_pixels=max_pixels)
        if (data / "means.json").is_file():
            mean = mean_rgb(data / "means.json")
        else:
            mean = _FALLBACK_MEAN
        kind = "folders"
    else:
        from ..split import split_above

        above = split_above(data)
        # A run folder given where the data goes: DATA and RUN swapped.
        swapped = (f" ({data} holds a run, {CONFIG}: give DATA first, then RUN)"
                   if (data / CONFIG).is_file() else "")
        raise LayoutError(
            f"{data} has neither train.hdf5 nor a train/ folder; give a 'dsprep build-hdf5' "
            "output folder or a 'dsprep split' folder"
            + (f" (it lies in the split {above}: give {above})" if above else "") + swapped
        )
    if len(train.label_names) < 2:
        made = ("build it again from a split with two or more classes" if kind == "hdf5" else
                "split the dump again")
        raise LayoutError(
            f"{data} holds one class only ({', '.join(train.label_names)}): a classifier needs "
            f"two or more. Check how the dump was split (--layout, and --labels or --pattern), "
            f"then {made}")
    return DataBundle(train, val, list(train.label_names), mean, INPUT_SCALE,
                      tuple(int(s) for s in train.sample_shape),
                      "uint8" if np.dtype(train.x_dtype) == np.uint8 else "float32", kind)


def crop_is_the_image(data: str | os.PathLike, config: TrainConfig) -> str | None:
    """"HxW" when the run's --crop is the whole of DATA's training images (random patches
    are then the image itself), else None."""
    if not config.crop:
        return None
    data = Path(data)
    if (data / "train.hdf5").is_file():
        from ..store import open_dataset

        try:
            with open_dataset(data / "train.hdf5") as db:
                height, width = (int(v) for v in db["images"].shape[1:3])
        except (DsprepError, OSError):
            return None
    elif (data / "train").is_dir():
        height = width = config.image_size
    else:
        return None
    return f"{height}x{width}" if (height, width) == (config.crop, config.crop) else None


def has_validation(data: str | os.PathLike) -> bool:
    """Whether DATA has the validation split :func:`open_data` reads (val.hdf5 beside
    train.hdf5, or a val/ folder beside train/)."""
    data = Path(data)
    if (data / "train.hdf5").is_file():
        return (data / "val.hdf5").is_file()
    # A split made with no val share (--ratios 0.9,0,0.1) has class folders there, all empty.
    # Images as build-hdf5 finds them: notes or .DS_Store files make no validation split.
    try:
        return bool(sources.scan_class_folders(data / "val")[1])
    except (LayoutError, OSError):
        return False


def _check_crop(config: TrainConfig, size: tuple[int, int], where: str, larger: str) -> None:
    """Refuse a --crop larger than the images, in the option's own words."""
    if config.crop and config.crop > min(size):
        raise UsageError(f"--crop {config.crop} is larger than the {size[0]}x{size[1]} images "
                         f"of {where}; give a --crop of at most {min(size)}, or {larger}")


def _as_keras(gen, workers: int):
    from ..adapters import as_keras

    if gen is None:
        return None
    return as_keras(gen, workers=workers)


# ----------------------------------------------------------------------------------------------
# model


def make_optimizer(config: TrainConfig):
    """The Keras optimizer named by the config."""
    # Keras refuses a whole-number momentum (momentum=0 from Python code).
    lr, momentum = float(config.lr), float(config.momentum)
    if config.optimizer != "adam" and not 0 <= momentum < 1:  # 1 or more never forgets
        raise UsageError(f"--momentum must be in [0, 1) for {config.optimizer}, got {momentum}")
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.RMSprop(learning_rate=lr, momentum=momentum)


def compile_model(model: keras.Model, config: TrainConfig, classes: int, jit: bool = False):
    """Compile with sparse cross-entropy, accuracy, and AUC of class 1 for two classes."""
    metrics = ["accuracy"]
    if classes == 2:
        metrics.append(cb.PositiveClassAUC(name="auc"))
    model.compile(optimizer=make_optimizer(config), loss="sparse_categorical_crossentropy",
                  metrics=metrics, jit_compile=jit)
    return model


def _callbacks(run: Path, config: TrainConfig, monitor: str, history: list, validation: bool):
    out = [cb.RunRecorder(run, monitor, "max", history=history,
                          title=f"{config.model} on {run.name}"),
           # A diverged run stops within its epoch instead of training on NaN weights.
           cb.StopOnNaN()]
    fn = cb.schedule_fn(config.schedule, config.lr, config.epochs, config.step_every,
                        config.step_factor)
    if fn is not None:
        out.insert(0, keras.callbacks.LearningRateScheduler(fn))
    # On a resume both continue their patience from the epochs in the history.
    if config.schedule == "plateau":
        # min_delta=0: an epoch is progress by the same rule as for best.keras and
        # --early-stop (Keras's 1e-4 took 0.9999 -> 1.0 for no progress, and a tie after it).
        out.insert(0, cb.ResumablePlateau(monitor=monitor, mode="max", factor=0.1, min_delta=0,
                                          patience=config.plateau_patience, history=history))
    if config.early_stop:
        out.append(cb.ResumableEarlyStopping(monitor=monitor, mode="max",
                                             patience=config.early_stop, history=history))
    return out


def _versions(device: DeviceSetup) -> dict:
    backend = keras.backend.backend()
    version = None
    try:
        module = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}.get(backend)
        if module:
            version = __import__(module).__version__
    except ImportError:
        pass
    return {"dsprep": __version__, "keras": keras.__version__, "backend": backend,
            "backend_version": version, "gpus": device.gpus, "precision": device.precision,
            "jit": device.jit}


def _val_labels(bundle: DataBundle) -> np.ndarray | None:
    return None if bundle.val is None else getattr(bundle.val, "labels", None)


@contextlib.contextmanager
def _forgiving_stdout():
    """Keras's epoch lines, while it trains, written so that a log that cannot be written (its
    disk full, its reader gone: ``| head``, a closed ssh session's ``tee``) drops them instead
    of ending hours of training; the command's own lines after it then fail as split's and
    build's do ("cannot write to the standard output", or 141 for a closed pipe)."""
    real = sys.stdout
    sys.stdout = ForgivingStream(real)
    try:
        yield
    finally:
        sys.stdout = real


def _build_state(model, bundle: DataBundle, strategy) -> None:
    """Create the optimizer's and the metrics' variables before ``fit``, from one batch of
    zeros. Keras on TensorFlow otherwise creates them inside the first training step, and
    TensorFlow then traces that step twice (seven seconds for the README's ResNet-18 on two
    cores). The weights do not change; the metrics are reset. Under a data-parallel strategy
    Keras builds them itself, in the strategy's scope."""
    if keras.backend.backend() != "tensorflow" or strategy is not None:
        return
    x = np.zeros((1, *bundle.input_shape), dtype=bundle.input_dtype)
    y = np.zeros((1,), dtype=np.int32)
    y_pred = model(x, training=False)
    model.compute_loss(x=x, y=y, y_pred=y_pred)
    model.compute_metrics(x, y, y_pred, sample_weight=None)
    model.reset_metrics()
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _fit(model, bundle: DataBundle, run: Path, config: TrainConfig, initial_epoch: int,
         history: list, progress: bool, aside: Path | None = None,
         strategy: object | None = None, bars: bool = False) -> TrainResult:
    classes = len(bundle.label_names)
    validation = bundle.val is not None
    monitor, _ = cb.best_metric(classes, validation, _val_labels(bundle))
    calls = _callbacks(run, config, monitor, history, validation)
    if aside is not None:
        calls.append(_DropReplaced(run, aside))  # after RunRecorder has written state.json
    if bars and progress and not on_a_terminal(sys.stderr):
        # DSPREP_PROGRESS=1 in a log: a line each 10 s inside an epoch, as split's bars do
        # (a CI service stops a step silent for some minutes).
        calls.append(cb.BatchLines(config.epochs))
    from ..adapters import EpochSync

    train = _as_keras(bundle.train, config.workers)
    # Keras epoch e reads generator epoch e under every backend, on a resume too (set through
    # the dataset, which waits for the batches it is reading ahead).
    calls.insert(0, EpochSync(train))
    try:
        if initial_epoch < config.epochs:
            _build_state(model, bundle, strategy)
            with _forgiving_stdout():
                model.fit(train, validation_data=_as_keras(bundle.val, config.workers),
                          epochs=config.epochs, initial_epoch=initial_epoch, callbacks=calls,
                          # The generator shuffles, reproducibly from its seed and epoch.
                          shuffle=False,
                          verbose=2 if progress else 0)
    finally:
        _drop_subset(run)
    recorder = next(c for c in calls if isinstance(c, cb.RunRecorder))
    rows = recorder.rows
    done = rows[-1]["epoch"] + 1 if rows else 0
    left_out = [(str(path), reason) for gen in (bundle.train, bundle.val) if gen is not None
                for path, reason in [*getattr(gen, "skipped", ()), *getattr(gen, "replaced", ())]]
    seen = set(np.unique(np.asarray(getattr(bundle.train, "labels", []), dtype=np.int64)))
    untrained = [name for i, name in enumerate(bundle.label_names) if i not in seen] \
        if seen else []
    return TrainResult(run, done, monitor, recorder.best, rows, model, config.epochs,
                       done - initial_epoch, left_out=left_out, untrained=untrained)


def train(data: str | os.PathLike, run: str | os.PathLike, config: TrainConfig | None = None,
          *, overwrite: bool = False, progress: bool = False,
          restore_diverged: bool = True, bars: bool | None = None) -> TrainResult:
    """Train a model on DATA and write everything into the folder RUN.

    A run replaced with ``overwrite`` is kept in RUN/.replaced until the new run has finished
    its first epoch, and put back if the new run fails, is stopped or (with
    ``restore_diverged``) diverges before that.

    Args:
        data: a build-hdf5 output folder or a split folder.
        run: the run folder (created; must not hold a run unless ``overwrite``).
        config: the options; defaults when None.
        overwrite: replace an existing run in RUN.
        progress: print one line per epoch.
        restore_diverged: put the replaced run back when the new one diverges in its first
            epoch (``sweep_lr`` keeps the diverged run: that is its answer for the rate).
        bars: show a bar while image folders are checked (default: as ``progress``).

    Raises:
        DestinationExistsError: RUN already holds a run and ``overwrite`` is False.
        UsageError: an option is out of range.
    """
    config = (config or TrainConfig()).check()
    run = Path(run)
    refuse_dangling_link(run)
    _refuse_run_with_data(run, Path(data))
    if (run / "sweep-lr.csv").exists() or any((sub / CONFIG).exists()
                                               for sub in run.glob("lr-*")):
        # Its config.json beside the rates' folders would stop the sweep from carrying on.
        raise UsageError(f"{run} is the folder of a learning-rate sweep (sweep-lr); give "
                         "train a folder of its own")
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    with exclusive(run / TRAIN_LOCK, run):
        try:
            return _train(data, run, config, created, overwrite, progress, restore_diverged,
                          progress if bars is None else bars)
        except BaseException:
            # A run that never started leaves no folder to be mistaken for one (one that did,
            # its config.json written, stays: to be resumed, or replaced with --force).
            if created and not (run / CONFIG).exists():
                shutil.rmtree(run, ignore_errors=True)
            raise


@contextlib.contextmanager
def _split_classes_only(data: Path, split: str):
    """A class folder added to the split folder ``split`` of a split after it was made is a
    fault of the data (exit 1)."""
    try:
        yield
    except UnlistedClassError as exc:
        raise LayoutError(
            f"{data / split} has class folders that {data / 'split.json'} does not name: "
            f"{', '.join(exc.folders)}; move them out of the split, or make the split again "
            "with them") from exc


def _refuse_run_with_data(run: Path, data: Path) -> None:
    """Refuse a run folder that is the data folder or lies in it: checkpoints and plots among
    the data are read as images (or as a class) by the next split or build. (Data that is no
    data is refused later, as such.)"""
    if not ((data / "train.hdf5").is_file() or (data / "train").is_dir()):
        return
    r, d = run.resolve(), data.resolve()
    if r == d or d in r.parents:
        raise UsageError(f"run folder {run} {'is' if r == d else 'lies in'} the data folder "
                         f"{data}; give a run folder apart from the data, such as "
                         f"{d.parent / 'runs' / d.name}")


# config.json's "schema": what tells a dsprep run from another tool's files.
RUN_SCHEMA = "dsprep-run/1"

# Held by the process training in RUN: a second one (a --force, a --resume) is refused.
TRAIN_LOCK = ".dsprep-train.lock"


def _refuse_foreign_run_files(run: Path) -> None:
    """Refuse a RUN holding files of the names a run writes that are not a dsprep run's:
    another tool's config.json would be taken for a run stopped in its first epoch, set aside
    and dropped, and a history.csv or checkpoint without a config.json written over."""
    config = run / CONFIG
    if (run / REPLACED).exists():
        return  # a replacement's: the run it replaces waits there
    if config.is_file():
        try:
            ours = json.loads(config.read_text(encoding="utf-8")).get("schema") == RUN_SCHEMA
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            ours = False
        if ours:
            return
        found = [CONFIG]
    else:  # what a run of dsprep killed while writing its first config.json left is no run
        found = [p.name for p in _run_files(run) if not p.name.startswith(".")]
    if found:
        raise DestinationExistsError(
            f"{run} holds {', '.join(found)} but no dsprep run ({CONFIG} of a 'dsprep train'); "
            f"give the run a folder of its own, or use --force to replace "
            f"{'it' if len(found) == 1 else 'them'}")


def _train(data, run: Path, config: TrainConfig, created: bool, overwrite: bool,
           progress: bool, restore_diverged: bool, bars: bool) -> TrainResult:
    _settle_replacement(run)
    if not overwrite:
        _refuse_foreign_run_files(run)
    replacing = (run / CONFIG).exists() or (run / REPLACED).exists()
    restarted = False
    if replacing and not overwrite:
        if not never_finished_an_epoch(run):
            if not (run / cb.STATE).exists():  # checkpoints, but the epoch count is lost
                raise DestinationExistsError(
                    f"{run} holds checkpoints but no {cb.STATE}, so it cannot be resumed; use "
                    "--force to start over")
            differs = run_differences(run, data, config)
            diverged = _diverged_result(run, config.epochs)
            if diverged is not None and not differs:
                # The same options would meet the divergence again: a resume only repeats it.
                raise DestinationExistsError(
                    f"{run} holds this run, which diverged in epoch {diverged.epochs_done} "
                    f"(its loss became NaN or infinite) and stopped there: the same options "
                    f"would most likely meet it again, a resume too. Start again with a lower "
                    f"--lr and --force ({cb.BEST} holds the best of the epochs before it; copy "
                    "it elsewhere first to keep it)")
            resume = (f"use --resume {quoted(run)} to continue it (with its own options), or "
                      "--force to start over")
            if not (run / cb.LAST).is_file():  # deleted to save room: nothing to resume from
                resume = (f"its {cb.LAST} is gone, so it cannot be continued: use --force to "
                          f"start over{_keep_best(run)}")
            raise DestinationExistsError(
                f"{run} already holds a run"
                + (f" of other data or options ({differs})" if differs else "")
                + f"; {resume}")
        if (run / REPLACED).exists() and never_finished_an_epoch(run / REPLACED):
            # Two runs killed outright in their first epoch (SIGKILL, the OOM killer), the
            # second having set the first aside: neither has anything to keep.
            _drop_replaced(run)
        if (run / REPLACED).exists():
            raise DestinationExistsError(
                f"{run} holds a run that never finished an epoch; use --force to start over"
                + replaced_hint(run))
        # Stopped (or failed) before its first epoch ended: it has nothing to keep, and the
        # same command, run again (a requeued job), starts it again.
        overwrite = restarted = True
    try:
        keras.utils.set_random_seed(config.seed)
        device = configure_device(config.precision, config.jit, config.gpus)
        bundle = open_data(data, config, work=run, progress=bars)
        classes = len(bundle.label_names)
        with device.scope():
            model = build_model(config.model, bundle.input_shape, classes,
                                reg=config.weight_decay, width=config.width, mean=bundle.mean,
                                scale=bundle.scale, input_dtype=bundle.input_dtype)
            compile_model(model, config, classes, jit=device.jit)
    except BaseException:
        # A run it was to replace stays whole (a refused option must not cost its
        # checkpoints); a folder made for this run goes (see train).
        if not created:
            _drop_subset(run)
        raise
    # The run it replaces is set aside until the new one has finished an epoch, and put back
    # if the new one fails, is stopped or diverges before that.
    aside = None
    try:
        if replacing:
            aside = _set_aside(run)
        result = _start(model, bundle, data, run, config, device, classes, aside, progress,
                        bars)
    except BaseException:
        if replacing:
            _settle_replacement(run)  # a setting aside cut short is undone
            if (run / REPLACED).is_dir() and not (run / cb.STATE).exists():
                _put_back(run)
        raise
    if aside is not None and not (run / cb.STATE).exists():
        # Diverged in its first epoch: nothing of it is worth keeping, but in a sweep.
        if restore_diverged:
            _put_back(run)
            result.restored = True
        else:
            _drop_replaced(run)
    result.restarted = restarted
    return result


def _start(model, bundle: DataBundle, data, run: Path, config: TrainConfig,
           device: DeviceSetup, classes: int, aside: Path | None,
           progress: bool, bars: bool = False) -> TrainResult:
    """Write a new run's config.json and train it."""
    cb.atomic_write_json(run / CONFIG, {
        "schema": RUN_SCHEMA, "data": str(Path(data).resolve()), "data_kind": bundle.kind,
        "options": config.to_dict(), "classes": bundle.label_names,
        "input_shape": list(bundle.input_shape), "input_dtype": bundle.input_dtype,
        "image_shape": [int(s) for s in bundle.train.image_shape],
        "resize": _resize_of(bundle.train),
        "mean_rgb": list(bundle.mean), "scale": bundle.scale,
        "monitor": cb.best_metric(classes, bundle.val is not None, _val_labels(bundle))[0],
        # With and without the images that could not be read (see _train_images_sha256).
        **dict(zip(("train_images_sha256", "train_images_read_sha256"),
                   _train_images_sha256(bundle), strict=True)),
        "versions": _versions(device)})
    return _fit(model, bundle, run, config, 0, [], progress, aside=aside,
                strategy=device.strategy, bars=bars)


def _resize_of(train) -> str | None:
    """How the training images were brought to their size: the --resize of build-hdf5 (the
    file says), or of the directory generator."""
    if getattr(train, "resize", None) is not None:
        return str(train.resize)
    from ..store import open_dataset

    with open_dataset(train.path) as db:
        value = db.attrs.get("resize")
    return None if value is None else str(value)


# Where --force keeps the run it replaces until the new run has finished its first epoch.
REPLACED = ".replaced"


def _run_files(run: Path) -> list[Path]:
    """The files of the run in RUN: its records and checkpoints, files a crash left half
    written, and the confusion matrices 'dsprep evaluate' drew of its model."""
    names = (CONFIG, cb.HISTORY, cb.STATE, cb.BEST, cb.LAST, cb.CURVES, cb.LR_PLOT)
    return ([run / name for name in names if (run / name).exists()]
            + sorted(run.glob(".*.partial.*")) + sorted(run.glob("confusion-*.png")))


# Work folders of the moves between RUN and RUN/.replaced: files on their way into it, the
# folder on its way back into RUN, and on its way out. Each move begins or ends with one
# rename, so a process killed while moving leaves one of these, which _settle_replacement
# finishes or undoes.
_SETTING_ASIDE = ".replaced.partial"
_PUTTING_BACK = ".replaced.returning"
_DROPPING = ".replaced.dropping"


def _set_aside(run: Path) -> Path:
    """Move the run in RUN into RUN/.replaced; return that folder.

    After a replacement that never finished an epoch (a crash), the run in ``.replaced`` is
    still the one to keep, and the unfinished one goes; after one that did, ``.replaced`` is
    stale and goes.
    """
    aside = run / REPLACED
    if aside.exists():
        if not (run / cb.STATE).exists():
            for path in _run_files(run):
                path.unlink()
            return aside
        _drop_replaced(run)
    partial = run / _SETTING_ASIDE
    partial.mkdir()
    for path in _run_files(run):
        os.replace(path, partial / path.name)
    os.replace(partial, aside)
    return aside


def _put_back(run: Path) -> None:
    """Remove the new run's files and move the run set aside back into RUN.

    The new run never finished an epoch, so removing its files part way leaves what a crash
    in its first epoch leaves; only then does .replaced start on its way back.
    """
    for path in _run_files(run):
        path.unlink(missing_ok=True)
    os.replace(run / REPLACED, run / _PUTTING_BACK)
    _settle_replacement(run)


def _drop_replaced(run: Path) -> None:
    """Delete RUN/.replaced (the run that replaced it finished an epoch, or in a sweep
    diverged): renamed first, so a part of it is never taken for the whole."""
    if (run / REPLACED).is_dir():
        os.replace(run / REPLACED, run / _DROPPING)
    shutil.rmtree(run / _DROPPING, ignore_errors=True)


def _settle_replacement(run: Path) -> None:
    """Finish or undo the move between RUN and RUN/.replaced that a killed process left."""
    for name in (_SETTING_ASIDE, _PUTTING_BACK):
        folder = run / name
        if folder.is_dir():
            # Setting aside is undone (the new run had not started), putting back finished:
            # either way the files go back into RUN, which holds no others of their names.
            for path in folder.iterdir():
                os.replace(path, run / path.name)
            folder.rmdir()
    if (run / _DROPPING).exists():
        shutil.rmtree(run / _DROPPING, ignore_errors=True)
    if (run / REPLACED).is_dir() and (run / cb.STATE).exists():
        _drop_replaced(run)  # stale: the run that replaced it finished an epoch


def settle(run: str | os.PathLike) -> None:
    """Finish what a training killed in RUN left half done (a checkpoint commit, a move of a
    replaced run) so RUN can be read, unless a training holds RUN now or RUN cannot be
    written: then it is read as it is."""
    run = Path(run)
    pending = any(run.glob(".*.partial.*")) or any(
        (run / name).exists() for name in (_SETTING_ASIDE, _PUTTING_BACK, _DROPPING))
    if not pending:
        return
    try:
        with exclusive(run / TRAIN_LOCK, run):
            _settle_replacement(run)
            if (run / cb.STATE).exists():
                cb.settle_checkpoints(run, cb.read_state(run)["epochs_done"])
    except (DestinationExistsError, OSError, DatasetFormatError):
        # A training holds RUN now (its own commit is under way), RUN cannot be written, or
        # its state.json is damaged (reading the run says so): read RUN as it is.
        pass


def replaced_hint(run: Path) -> str:
    """Where a replacement that never finished an epoch left the run it replaced, if so."""
    if not (run / REPLACED).is_dir() or (run / cb.STATE).exists():
        return ""
    if not (run / REPLACED / cb.STATE).exists():
        return (f" (the run it was replacing, which never finished an epoch either, is kept in "
                f"{run / REPLACED}: 'dsprep train --resume {quoted(run)}' puts it back)")
    return (f" (the run it was replacing is kept in {run / REPLACED}: 'dsprep train --resume "
            f"{quoted(run)}' puts it back and continues it)")


class _DropReplaced(keras.callbacks.Callback):
    """Delete the run --force set aside once the new run has finished its first epoch."""

    def __init__(self, run: Path, aside: Path) -> None:
        super().__init__()
        self.run, self.aside = run, aside

    def on_epoch_end(self, epoch, logs=None):
        if self.aside.exists() and (self.run / cb.STATE).exists():
            _drop_replaced(self.run)


def read_run_config(run: str | os.PathLike) -> dict:
    """The config.json of a run folder."""
    path = Path(run) / CONFIG
    if not path.is_file():
        runs = sorted(Path(run).glob(f"lr-*/{CONFIG}"))
        if runs:  # a sweep-lr folder: its runs are one level down
            raise LayoutError(f"{run} holds the runs of a learning-rate sweep, not one run; "
                              f"give one of them, such as {runs[0].parent}")
        raise LayoutError(f"{run} is not a run folder (no {CONFIG}); start one with 'dsprep train'"
                          + replaced_hint(Path(run)))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetFormatError(f"{path} is not valid JSON ({exc}); start the run again with "
                                 "'dsprep train --force'") from exc
    if not isinstance(config, dict) or not isinstance(config.get("options"), dict):
        raise DatasetFormatError(f"{path} has no 'options' object; start the run again with "
                                 "'dsprep train --force'")
    return config


def training_names(gen) -> list[str] | None:
    """The images a training generator reads, by their names inside their split
    (``class/file``), in row order; None for an HDF5 file without file names."""
    if hasattr(gen, "files"):  # DirectoryGenerator: its root is the split's train folder
        return [Path(p).relative_to(gen.root).as_posix() for p in gen.files]
    return hdf5_names(gen.path)


def hdf5_names(path: Path) -> list[str] | None:
    """The images of a dsprep HDF5 file by their names inside their split (``class/file``),
    in row order; None for a file without file names."""
    from ..store import file_names, open_dataset

    with open_dataset(path) as db:
        names = file_names(db)
    if names is None:
        return None
    # build-hdf5 names them inside the split folder ("train/cat/1.jpg").
    return [rest if rest and sources.split_of(first) else name
            for name in names for first, _, rest in [name.partition("/")]]


def images_sha256(names: Sequence[str], labels: Sequence[int]) -> str:
    """A digest of a training set by its image names and labels (not its pixels): data split
    again, or built from another split, gives another."""
    digest = hashlib.sha256()
    # Sorted: a build's row order (--seed, --order) is no other data.
    for name, label in sorted(zip(names, map(int, labels), strict=True)):
        digest.update(f"{label}\t{name}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _train_images_sha256(bundle: DataBundle) -> tuple[str | None, str | None]:
    """Two digests of the training images: one where the images of an image folder that could
    not be read count too, so that a file repaired later is the same data, and one of the
    images read, so that a file deleted later is (older runs kept only that one). None for
    data without image names."""
    gen = bundle.train
    names = training_names(gen)
    if names is None:
        return None, None
    labels = [int(label) for label in gen.labels]
    read = images_sha256(names, labels)
    ids = {name: i for i, name in enumerate(gen.label_names)}
    unreadable = [(rel, ids[first]) for path, _ in getattr(gen, "skipped", ())
                  for rel in [Path(path).relative_to(gen.root).as_posix()]
                  for first, sep, _ in [rel.partition("/")] if sep and first in ids]
    if not unreadable:
        return read, read
    return images_sha256([*names, *(n for n, _ in unreadable)],
                         [*labels, *(i for _, i in unreadable)]), read


def _check_resumed_data(bundle: DataBundle, saved: dict, data, config_path: Path,
                        monitor: str | None = None) -> None:
    """Refuse data whose classes or image size differ from those the run was trained on, or
    that would choose best.keras by another metric than the run's ``monitor`` (data without
    the validation split the run had, or with one it did not have)."""
    checks = (("classes", list(bundle.label_names), "classes"),
              ("input_shape", list(bundle.input_shape), "model input"),
              ("image_shape", [int(s) for s in bundle.train.image_shape], "images"))
    for key, now, what in checks:
        if key in saved and saved[key] != now:
            raise UsageError(
                f"{data} does not match the run: its {what} {now} differ from the "
                f"{saved[key]} in {config_path}; give the data the run was trained on"
            )
    # The same size, other shapes: cropped images against stretched or padded ones (evaluate
    # refuses such a file too).
    resize = _resize_of(bundle.train)
    if saved.get("resize") and resize is not None and resize != saved["resize"]:
        raise UsageError(
            f"{data} does not match the run: its images were brought to their size with "
            f"--resize {resize}, the run's with --resize {saved['resize']} ({config_path}); "
            "give the data the run was trained on, or build it with "
            f"--resize {saved['resize']}")
    trained = {saved.get("train_images_sha256"), saved.get("train_images_read_sha256")} - {None}
    now = set(_train_images_sha256(bundle))
    if trained and None not in now and not trained & now:
        raise UsageError(
            f"{data} does not match the run: its training images (their names and labels) "
            f"differ from those the run was trained on (split or built again since?); give the "
            "data the run was trained on, or start a new run (another RUN, or this one with "
            "'dsprep train DATA RUN --force'), lest the test images of the new split be among "
            "those it learned")
    now = cb.best_metric(len(bundle.label_names), bundle.val is not None,
                         _val_labels(bundle))[0]
    if monitor and now != monitor:
        has = ("has no validation split" if bundle.val is None else
               "has a validation split (the run had none)" if not monitor.startswith("val_")
               else "has a validation split of one class" if now == "val_accuracy"
               else "has a validation split of both classes (the run's had one)")
        raise UsageError(
            f"{data} does not match the run: the run chose best.keras by {monitor}, but {data} "
            f"{has}, so {now} would choose from now on; give the data the run was trained on")


# The options of the machine, not of the run: a resume may change them (a job requeued on a
# node with fewer GPUs). The precision stays: the checkpoint's layers keep theirs.
MACHINE_OPTIONS = ("gpus", "workers", "jit")


def resume(run: str | os.PathLike, *, epochs: int | None = None,
           data: str | os.PathLike | None = None, progress: bool = False,
           bars: bool | None = None, machine: dict | None = None) -> TrainResult:
    """Continue an interrupted run from its last finished epoch, appending to its history.

    A run that has trained all its epochs trains nothing: the result has ``epochs_run`` 0 (and
    no model), so a job that runs the same resume again after its end succeeds.

    Args:
        run: the run folder.
        epochs: a new total epoch count (default: the run's own).
        data: where the data is now (default: the folder recorded in config.json).
        progress: print one line per epoch.
        bars: show a bar while image folders are checked (default: as ``progress``).
        machine: new values of ``MACHINE_OPTIONS`` (``{"gpus": "1"}``), kept in config.json
            for the next resume.
    """
    run = Path(run)
    machine = dict(machine or {})
    unknown = sorted(set(machine) - set(MACHINE_OPTIONS))
    if unknown:
        raise UsageError(f"a resume can change only {', '.join(MACHINE_OPTIONS)}; not "
                         f"{', '.join(unknown)}")
    if not run.is_dir():
        raise LayoutError(f"{run} is not a run folder; start one with 'dsprep train'")
    with exclusive(run / TRAIN_LOCK, run):
        return _resume(run, epochs, data, progress, progress if bars is None else bars,
                       machine)


def _resumed_options(run: Path, saved: dict, epochs: int | None, machine: dict) -> TrainConfig:
    """The run's own options, with the new total of epochs and the machine's options."""
    config = _saved_options(run, saved)
    if epochs is not None:
        config.epochs = int(epochs)
    for name, value in machine.items():
        setattr(config, name, value)
    config.check()
    if "gpus" not in machine and config.gpus not in ("1", "all"):
        # The run's own --gpus, not given now: a fault of this machine, said in its words.
        available = count_gpus()
        if int(config.gpus) > max(available, 1):
            seen = "1 GPU is" if available == 1 else f"{available} GPUs are"
            raise UsageError(
                f"{run} was started with --gpus {config.gpus}, but {seen} visible here; add "
                f"--gpus {max(available, 1)} to the resume"
                + (" (or --gpus all)" if available else " (it trains on the CPU)"))
    return config


def _resume(run: Path, epochs: int | None, data, progress: bool, bars: bool,
            machine: dict) -> TrainResult:
    _settle_replacement(run)
    restored = False
    if not (run / cb.STATE).exists() and (run / REPLACED).is_dir():
        # A replacement (--force) that never finished an epoch has nothing to resume; the run
        # it was replacing, kept aside, does: it comes back, and goes on.
        _put_back(run)
        restored = True
    if not restored and (run / CONFIG).exists() and never_finished_an_epoch(run):
        # Stopped before its first epoch ended: resuming it is starting it again, with the
        # options and data it was started with.
        saved = read_run_config(run)
        config = _resumed_options(run, saved, epochs, machine)
        _check_run_data(run, saved, data, epochs)
        _refuse_run_with_data(run, Path(data or saved["data"]))
        result = _train(data or saved["data"], run, config, False, True, progress, True, bars)
        result.restarted = True
        return result
    try:
        result = _resume_run(run, epochs, data, progress, bars, machine)
    except DsprepError as exc:
        if not restored:
            raise
        raise type(exc)(f"{exc} (the run the replacement (--force) was replacing, which never "
                        f"finished an epoch, is back in {run})") from exc
    result.restored = restored
    return result


def _diverged_result(run: Path, planned: int) -> TrainResult | None:
    """The result of a run that stopped at a NaN or infinite loss (its history's row past the
    epochs state.json counts; a run that diverged in its first epoch has no state.json and no
    checkpoint), or None for any other run."""
    if not (run / cb.HISTORY).is_file():
        return None
    if (run / cb.STATE).is_file():
        state = cb.read_state(run)
    elif never_finished_an_epoch(run) and (run / CONFIG).is_file():
        try:
            state = {"epochs_done": 0, "monitor": read_run_config(run).get("monitor", "")}
        except (LayoutError, DatasetFormatError):
            return None
    else:
        return None
    done = int(state.get("epochs_done", 0))
    rows = cb.read_history(run / cb.HISTORY)
    kept = [r for r in rows if r["epoch"] <= done]
    if not kept or kept[-1]["epoch"] != done or not cb.diverged(kept[-1]):
        return None
    return TrainResult(run, done + 1, str(state.get("monitor", "")), state.get("best"), kept,
                       None, planned, 0)


def diverged_in(run: str | os.PathLike) -> int | None:
    """The epoch (from 1) a run stopped at for a NaN or infinite loss; None for any other."""
    result = _diverged_result(Path(run), 0)
    return None if result is None else result.epochs_done


def carries_on(run: str | os.PathLike, data, config: TrainConfig) -> int | None:
    """The epochs RUN counts as done when ``dsprep train DATA RUN`` run again carries it on:
    those it trained, or all it planned where an early stop ended it (nothing is left). That
    is for the same run (``same_run``), not stopped by a divergence (the same options would
    meet it again: the command says so instead); else None."""
    run = Path(run)
    if not same_run(run, data, config) or _diverged_result(run, config.epochs) is not None:
        return None
    state = cb.read_state(run)
    return _epochs_counted(state, int(state.get("epochs_done", 0)))


def _trained_all(run: Path, epochs: int) -> bool:
    """Whether RUN has trained ``epochs`` (or an early stop ended it): a resume trains nothing."""
    try:
        state = cb.read_state(run)
    except (LayoutError, DatasetFormatError):
        return False
    return epochs <= _epochs_counted(state, int(state.get("epochs_done", 0)))


def _epochs_counted(state: dict, done: int) -> int:
    """The epochs a run counts as done: ``done``, or the total an early stop cut short."""
    stopped_of = state.get("stopped_early_of")
    return stopped_of if isinstance(stopped_of, int) and stopped_of > done else done


def same_run(run: str | os.PathLike, data, config: TrainConfig) -> bool:
    """Whether RUN holds a run started on ``data`` with ``config``, the machine's options
    (``MACHINE_OPTIONS``) aside, that finished an epoch: the same command run again (a
    requeued job) carries it on."""
    run = Path(run)
    if not (run / cb.STATE).is_file():
        return False  # (checkpoints without state.json cannot be resumed: train says so)
    return _differences(run, data, config) == []


def run_differences(run: Path, data, config: TrainConfig) -> str:
    """What differs between the run in RUN and ``data`` with ``config``, in the options'
    words ("epochs 1, now 2"), the machine's options aside; "" when it cannot say."""
    return "; ".join(_differences(run, data, config) or [])


def _differences(run: Path, data, config: TrainConfig) -> list[str] | None:
    """The data and options (the machine's aside) of the run in RUN that differ from
    ``data`` and ``config``, in words; None when RUN holds no readable run."""
    if not (run / CONFIG).is_file():
        return None
    try:
        saved = read_run_config(run)
        options = _saved_options(run, saved)
    except (LayoutError, DatasetFormatError):
        return None
    said = []
    if saved.get("data") != str(Path(data).resolve()):
        said.append(f"data {saved.get('data')}, now {Path(data).resolve()}")
    mine, theirs = dataclasses.asdict(config), dataclasses.asdict(options)
    for name in mine:
        if name not in MACHINE_OPTIONS and mine[name] != theirs.get(name):
            said.append(f"{name.replace('_', '-')} {theirs.get(name)!r}, now {mine[name]!r}")
    return said


def _keep_best(run: Path) -> str:
    """Advice before a --force that would replace the run: to keep its best.keras, if any."""
    return f" (copy its {cb.BEST} elsewhere first to keep it)" if (run / cb.BEST).is_file() \
        else ""


def never_finished_an_epoch(run: Path) -> bool:
    """Whether RUN holds nothing an epoch left: no state.json and no checkpoint (a run stopped
    or failed in its first epoch, which is safe to start again)."""
    return not any((run / name).exists() for name in (cb.STATE, cb.LAST, cb.BEST))


def _saved_options(run: Path, saved: dict) -> TrainConfig:
    """The options a run was started with, from its config.json."""
    try:
        return TrainConfig.from_dict(saved["options"]).check()
    except (KeyError, TypeError, UsageError) as exc:
        raise DatasetFormatError(f"{run / CONFIG} holds an option dsprep cannot use ({exc}); "
                                 "start the run again with 'dsprep train --force'") from exc


def _resume_run(run: Path, epochs: int | None, data, progress: bool,
                bars: bool, machine: dict) -> TrainResult:
    from .predict import load_model

    saved = read_run_config(run)
    config_path = run / CONFIG
    if data is None and not isinstance(saved.get("data"), str):
        # No data named: refused (one moved away is refused below, after a finished run has
        # said that it has nothing left to do).
        _check_run_data(run, saved, data, epochs)
    config = _resumed_options(run, saved, epochs, machine)
    done = int(cb.read_state(run)["epochs_done"])
    cb.settle_checkpoints(run, done)
    if done < 1:
        raise LayoutError(f"{run} has no finished epoch to resume from; start it again with "
                          "'dsprep train --force'")
    state = cb.read_state(run)
    own = _epochs_counted(state, done)
    if epochs is not None and config.epochs < done:
        early = (f" (early stopping ended it, which counts as all {own} it was given)"
                 if own > done else "")
        raise UsageError(f"{run} has trained {done} epochs already{early}; --epochs is the new "
                         f"total, so give more than {own}")
    history = [r for r in cb.read_history(run / cb.HISTORY) if r["epoch"] < done]
    if config.epochs <= own:
        # A finished run (all its epochs, or stopped early): nothing to train, so a job run
        # again after its end, with or without the same --epochs, succeeds (last.keras
        # deleted to save room, best.keras kept, as well).
        return TrainResult(run, done, str(state.get("monitor", saved.get("monitor", ""))),
                           state.get("best"), history, None, own, 0)
    missing = sorted(set(range(done)) - {int(r["epoch"]) for r in history})
    if missing:
        # The best epoch, the plateau's and early stopping's patience and the curves are
        # judged from the history: without its rows, a resumed epoch worse than the best
        # would replace best.keras as the best.
        raise LayoutError(
            f"{run / cb.HISTORY} " + ("is gone" if not (run / cb.HISTORY).exists() else
                                      f"lacks the rows of {len(missing)} of the {done} epochs "
                                      f"the run has trained (epoch {missing[0] + 1} first)")
            + f" (deleted or cut short?), which a resume judges the best epoch from; put it "
            f"back, or start the run again with 'dsprep train --force'{_keep_best(run)}")
    if not (run / cb.LAST).is_file():
        raise LayoutError(f"{run} has trained {done} epochs, but its {cb.LAST}, which a "
                          f"resume goes on from, is gone (deleted?); put it back, or start "
                          f"the run again with 'dsprep train --force'{_keep_best(run)}")
    # A new seed for Keras (dropout) so the resumed epochs do not replay the first ones; the
    # generator jumps to the epoch, which fixes its order and random draws.
    keras.utils.set_random_seed((config.seed + done) % (SEED_MAX + 1))
    device = configure_device(config.precision, config.jit, config.gpus)
    _check_run_data(run, saved, data, epochs)
    _refuse_run_with_data(run, Path(data or saved["data"]))
    bundle = open_data(data or saved["data"], config, work=run, progress=bars)
    _check_resumed_data(bundle, saved, data or saved["data"], config_path,
                        state.get("monitor") or saved.get("monitor"))
    bundle.train.set_epoch(done)
    with device.scope():
        try:
            model = load_model(run / cb.LAST)
        except DatasetFormatError as exc:
            raise DatasetFormatError(
                f"{exc}. The run cannot resume without it: start it again with 'dsprep train "
                f"{quoted(data or saved['data'])} {quoted(run)} --force' and the options in "
                f"{run / CONFIG} (copy its best.keras elsewhere first to keep it)") from exc
    # XLA as this machine has it (the checkpoint keeps the setting of the one it came from).
    model.jit_compile = device.jit
    # The new total, the machine's options, and where the data is now (the next resume and
    # evaluate look there).
    options = {**saved["options"], "epochs": config.epochs,
               **{name: getattr(config, name) for name in machine}}
    where = str(Path(data or saved["data"]).resolve())
    if options != saved["options"] or where != saved["data"]:
        saved["options"], saved["data"] = options, where
        cb.atomic_write_json(run / CONFIG, saved)
    return _fit(model, bundle, run, config, done, history, progress, strategy=device.strategy,
                bars=bars)


def _check_run_data(run: Path, saved: dict, data, epochs: int | None = None) -> None:
    """Without DATA, the run's own data folder must be named in config.json and still there.
    The command to give says ``epochs``, the new total given with --resume, if any."""
    if data is not None:
        return
    command = (f"dsprep train --resume {quoted(run)} DATA"
               + (f" --epochs {epochs}" if epochs is not None else ""))
    if not isinstance(saved.get("data"), str):
        raise DatasetFormatError(f"{run / CONFIG} does not name the data folder ('data'); "
                                 f"give DATA: {command}")
    if not Path(saved["data"]).exists():
        raise LayoutError(f"{run} was trained on {saved['data']}, which is no longer there; "
                          f"give where the data is now: {command}")


# ----------------------------------------------------------------------------------------------
# checks and sweeps


@dataclass
class OverfitReport:
    """Training loss at the first and last epoch of an overfit check, the last epoch's training
    accuracy, and the verdict. ``chance`` is the accuracy of guessing, 1 / classes."""

    first_loss: float
    last_loss: float
    passed: bool
    result: TrainResult
    accuracy: float = math.nan
    chance: float = math.nan

    @property
    def ratio(self) -> float:
        return self.last_loss / self.first_loss if self.first_loss else math.nan

    @property
    def needed_accuracy(self) -> float:
        """Halfway from guessing to every image right."""
        return (1.0 + self.chance) / 2


def overfit_check(data: str | os.PathLike, run: str | os.PathLike,
                  config: TrainConfig | None = None, *, per_class: int = 8,
                  max_ratio: float = 0.75, overwrite: bool = False,
                  progress: bool = False, bars: bool | None = None) -> OverfitReport:
    """Train on a tiny subset without augmentation; the training loss must fall.

    A model that cannot drive the loss down on a handful of images has a bug (a wrong label
    mapping, a broken input pipeline, a learning rate far off), whatever the full run would say.

    It passes when the last epoch's loss is at most ``max_ratio`` of the first's and its
    training accuracy at least halfway from guessing (1 / classes) to 1: a loss inflated in
    the first epoch can fall by a quarter while the model still guesses. (The loss itself is
    no measure of that: it holds the weight decay's penalty.)

    Args:
        per_class: images per class in the subset.
        max_ratio: the most the last epoch's loss may be, as a fraction of the first's.
    """
    config = dataclasses.replace(config or TrainConfig(), limit_per_class=per_class,
                                 augment="none", early_stop=None, schedule="constant")
    if config.epochs < 2:
        raise UsageError(f"the overfit check compares the first epoch's training loss with the "
                         f"last's, so it needs 2 epochs or more, got {config.epochs}; try "
                         "--epochs 10")
    result = train(data, run, config, overwrite=overwrite, progress=progress, bars=bars)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    accuracy = float(result.history[-1].get("accuracy", math.nan))
    chance = 1.0 / max(2, len(read_run_config(run).get("classes", [])))
    report = OverfitReport(first, last, False, result, accuracy, chance)
    report.passed = bool(last <= first * max_ratio and accuracy >= report.needed_accuracy)
    return report


def sweep_lr(data: str | os.PathLike, run: str | os.PathLike, lrs: Sequence[float],
             config: TrainConfig | None = None, *, overwrite: bool = False,
             progress: bool = False, bars: bool | None = None,
             announce: Callable[[float, bool], None] | None = None
             ) -> dict[float, TrainResult]:
    """Train briefly at each learning rate (same seed) and plot their loss curves on one chart.

    Each rate gets its own run folder ``RUN/lr-<rate>``; ``RUN/sweep-lr.png`` and
    ``RUN/sweep-lr.csv`` compare them. ``announce`` is called with each rate before it
    trains, and whether it was trained before and is kept as it is (finished, or diverged).
    """
    if not lrs:
        raise UsageError("--lrs needs at least one learning rate, e.g. --lrs 0.1,0.01,0.001")
    # Each rate gets the run folder lr-<rate>, its %g form: rates that print alike collide.
    names = [f"{float(lr):g}" for lr in lrs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UsageError(f"--lrs names {', '.join(twice)} more than once (each rate gets one "
                         "run folder, lr-<rate>)")
    config = config or TrainConfig()
    run = Path(run)
    # A rate's folder that holds a run of this very sweep (same data and options but the
    # worker count) is carried on: the same command, run again after a stop, resumes the rate
    # it stopped in and reuses those it finished. Any other run there is refused, all before
    # any rate is trained: a sweep must not leave a run of the new sweep beside the old
    # sweep's plot and table.
    ours: set[str] = set()
    held = []
    differs = ""  # what the first run held differs in, in the options' words
    for name, lr in zip(names, lrs, strict=True):
        sub_run = run / f"lr-{name}"
        moving = any((sub_run / mark).exists()
                     for mark in (REPLACED, _SETTING_ASIDE, _PUTTING_BACK, _DROPPING))
        if overwrite or not (moving or (sub_run / CONFIG).exists()):
            continue
        sub = dataclasses.replace(config, lr=float(lr))
        if not moving and (same_run(sub_run, data, sub) or (
                _diverged_result(sub_run, sub.epochs) is not None
                and _differences(sub_run, data, sub) == [])):
            ours.add(name)  # (a rate that diverged in its first epoch is an answer too)
        elif moving or not never_finished_an_epoch(sub_run):
            held.append(sub_run)  # (a run that never finished an epoch starts again)
            if not moving and not differs:
                differs = run_differences(sub_run, data,
                                          dataclasses.replace(config, lr=float(lr)))
    if held:
        one = len(held) == 1
        why = f"; the first differs in {differs}" if differs else ""
        raise DestinationExistsError(
            f"{', '.join(map(str, held))} already {'holds a run' if one else 'hold runs'} "
            "this sweep cannot carry on (made with other data or options, or being "
            f"replaced{why}); use --force to replace {'it' if one else 'them'}, or another "
            "RUN")
    if (run / CONFIG).exists():
        raise UsageError(f"{run} is the folder of a training run, not of a sweep; give "
                         "sweep-lr a folder of its own (it makes RUN/lr-<rate> for each rate)")
    refuse_dangling_link(run)
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    results: dict[float, TrainResult] = {}
    with _retracing_unsaid():
        for name, lr in zip(names, lrs, strict=True):
            sub = dataclasses.replace(config, lr=float(lr))
            sub_run = run / f"lr-{name}"
            diverged = _diverged_result(sub_run, sub.epochs) if name in ours else None
            if announce is not None:
                announce(float(lr), diverged is not None
                         or (name in ours and _trained_all(sub_run, sub.epochs)))
            if diverged is not None or (name in ours and not never_finished_an_epoch(sub_run)):
                # Trained before: diverged (an answer, kept as it is), finished (resume
                # trains nothing) or stopped part way (resumed).
                machine = {name: getattr(sub, name) for name in MACHINE_OPTIONS}
                results[float(lr)] = diverged or resume(sub_run, data=data, progress=progress,
                                                        bars=bars, machine=machine)
                continue
            try:
                results[float(lr)] = train(data, sub_run, sub, overwrite=overwrite,
                                           progress=progress, restore_diverged=False,
                                           bars=bars)
            except BaseException:
                if created:  # a sweep refused at its first rate leaves no empty RUN behind
                    with contextlib.suppress(OSError):
                        run.rmdir()
                raise
    cb.plot_sweep({f"{lr:g}": r.history for lr, r in results.items()}, run / "sweep-lr.png")
    _sweep_table(run, results)
    return results


@contextlib.contextmanager
def _retracing_unsaid():
    """Keep TensorFlow's "N out of the last M calls ... triggered tf.function retracing"
    warning off stderr: each rate of a sweep is a new model, whose functions are traced
    anew by design."""
    import logging

    class _Unsaid(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "triggered tf.function retracing" not in record.getMessage()

    unsaid = _Unsaid()
    logger = logging.getLogger("tensorflow")
    logger.addFilter(unsaid)
    try:
        yield
    finally:
        logger.removeFilter(unsaid)


def _sweep_table(run: Path, results: dict) -> None:
    """Write RUN/sweep-lr.csv: one row per rate."""
    lines = ["lr,epochs,final_loss,final_val_loss,best_metric,best"]
    for lr, r in results.items():
        last = r.history[-1] if r.history else {}
        lines.append(",".join([f"{lr:g}", str(r.epochs_done), _cell(last.get("loss")),
                               _cell(last.get("val_loss")), r.monitor, _cell(r.best)]))
    cb.atomic_write_text(run / "sweep-lr.csv", "\n".join(lines) + "\n")


def _cell(value) -> str:
    return "" if value is None else f"{value:.6g}"
