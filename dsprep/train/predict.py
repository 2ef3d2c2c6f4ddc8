"""Load a run's model and evaluate it on a dsprep HDF5 file: centre crop and 10-crop side by side.

Metrics come from the framework-free :mod:`dsprep.evaluate`; this module only predicts.
"""

from __future__ import annotations

import math
import os
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from ..errors import DatasetFormatError, DsprepError, LayoutError, UsageError
from ..fileio import named_in, progress_bar, quoted
from . import callbacks as cb

CHECKPOINTS = ("best", "last")


def load_model(path: str | os.PathLike, *, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file saved by dsprep (its custom layers and metrics registered).

    ``compile=False`` loads the model for prediction only, without its optimizer and metrics
    (which would warn when the optimizer's variables do not match, as after mixed precision).
    """
    from .. import adapters  # noqa: F401  (registers MeanSubtraction)

    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} does not exist; train a model first with 'dsprep train'")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a file that is there
        raise DatasetFormatError(f"{path} is not a .keras file (a zip archive): damaged or "
                                 "cut short? Train the run again")
    try:
        return keras.saving.load_model(path, compile=compile)
    # BadZipFile and zlib.error: a damaged member (a bad CRC); KeyError: a member missing.
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, KeyError, EOFError) as exc:
        raise DatasetFormatError(f"{path} is not a loadable Keras model ({exc}); "
                                 "train the run again") from exc


def predict_fn(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a batch to class probabilities, float64 numpy, one batch at a time.

    A model that takes raw uint8 pixels (as ``dsprep train`` saves them, subtracting the
    means itself) refuses other batches: Keras would cast mean-subtracted floats to uint8,
    wrapping the negative ones, and answer wrongly without an error.
    """
    inputs = getattr(model, "inputs", None) or []
    raw = len(inputs) == 1 and str(getattr(inputs[0], "dtype", "")) == "uint8"

    def run(x: np.ndarray) -> np.ndarray:
        if raw and getattr(x, "dtype", None) != np.uint8:
            raise UsageError(
                f"the model takes raw uint8 pixels and subtracts the means itself, but the "
                f"batch is {getattr(x, 'dtype', type(x).__name__)}: make the generator with "
                "output=\"uint8\" and without MeanSubtract or Rescale")
        return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(x)), dtype=np.float64)

    return run


def predict(model: keras.Model, gen, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) and labels (N,) of every batch of a generator, in order."""
    fn = predict_fn(model)
    probs, labels = [], []
    batches = range(len(gen))
    if progress:
        batches = progress_bar(batches, desc="predicting", unit="batch")
    for i in batches:
        x, y = gen[i]
        probs.append(fn(x))
        labels.append(np.asarray(y))
    if not probs:
        return np.zeros((0, 0)), np.zeros((0,), dtype=np.int64)
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def metrics(probs: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> dict:
    """Rank-1, rank-5 (None with five classes or fewer), AUC (two classes), per-class accuracy,
    and the confusion matrix (rows: true class, columns: predicted).

    A row of scores with a NaN or infinity (a diverged model) is a wrong answer in every
    accuracy and is left out of the confusion matrix; ``nonfinite`` counts such rows. AUC is
    None where it is not defined (one class among the labels) or such rows exist; ``notes``
    says why.
    """
    from .. import evaluate as ev

    n = len(label_names)
    if n < 2:
        raise UsageError(f"a model of one class ({', '.join(label_names) or 'none'}) is right "
                         "whatever it sees: there is nothing to measure; train on a split of "
                         "two classes or more")
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != n or probs.shape[0] == 0:
        raise UsageError(
            f"metrics needs scores of shape (N, {n}) for {n} classes, N at least 1; got "
            f"{probs.shape}" + (" (no batch was predicted: a drop_last generator with fewer "
                                "images than one batch?)" if probs.size == 0 else ""))
    labels = ev.label_ids(labels, n)
    finite = np.isfinite(probs).all(axis=1)
    preds = np.where(finite, probs.argmax(axis=1), -1)
    ks = (1, 5) if n > 5 else (1,)
    ranks = {int(k): float(v) for k, v in ev.rank_accuracy(probs, labels, k=ks).items()}
    support = np.bincount(labels, minlength=n)
    correct = np.bincount(labels[preds == labels], minlength=n)
    notes: list[str] = []
    nonfinite = int((~finite).sum())
    if nonfinite:
        notes.append(f"the model gave NaN or infinite scores for {nonfinite} of {len(labels)} "
                     "images (diverged?): they count as wrong and are left out of the "
                     "confusion matrix")
    auc = None
    if n == 2:
        present = np.unique(labels)
        if present.size < 2:
            notes.append(f"no ROC AUC: every image is of class {label_names[int(present[0])]}")
        elif not nonfinite:
            auc = float(ev.roc_auc(probs[:, 1], labels))
    return {
        "count": int(len(labels)),
        "rank1": float(ranks[1]),
        "rank5": float(ranks[5]) if 5 in ranks else None,
        "auc": auc,
        "per_class": {name: (float(correct[i] / support[i]) if support[i] else None)
                      for i, name in enumerate(label_names)},
        "confusion": np.asarray(ev.confusion_matrix(labels[finite], preds[finite], n))
        .astype(int).tolist(),
        "nonfinite": nonfinite,
        "notes": notes,
    }


def _data_name(data: Path, config: dict) -> str:
    """The PNG's name for a data file: its stem ("test"), with its folder's name before it when
    it is not in the run's own data folder, so files of two folders keep their own PNGs."""
    trained = config.get("data")
    if isinstance(trained, str) and data.resolve().parent == Path(trained).resolve():
        return data.stem
    return f"{data.resolve().parent.name}-{data.stem}"


def plot_confusion(confusion: Sequence[Sequence[int]], label_names: Sequence[str],
                   path: str | os.PathLike, title: str = "") -> Path:
    """Draw a confusion matrix (rows: true, columns: predicted) with counts in the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    matrix = np.asarray(confusion)
    n = len(label_names)
    side = min(12.0, 2.5 + 0.45 * n)
    fig = Figure(figsize=(side, side))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ticks = tick_labels(label_names)
    ax.set_xticks(range(n), labels=ticks, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), labels=ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        # imshow spans the colour map from the smallest count to the largest.
        middle = (matrix.min() + matrix.max()) / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > middle else "black")
    if title:
        ax.set_title(title)
    with warnings.catch_warnings():
        # Names in scripts the bundled font lacks (CJK) are drawn as boxes: the figure is
        # still of use, and matplotlib's per-glyph warnings would bury the figures.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.tight_layout()
        return cb.save_figure(fig, path)


# Class names longer than this are cut on the plots' axes, and at most this many named.
_TICK_CHARS = 24
_TICKS = 60


def tick_labels(names: Sequence[str]) -> list[str]:
    """The axis labels of a per-class plot: long names cut short (their start kept, "..."
    after), and with many classes only every k-th named, so the names stay readable."""
    step = math.ceil(len(names) / _TICKS) if names else 1
    return [("" if i % step else
             name if len(name) <= _TICK_CHARS else name[:_TICK_CHARS - 3] + "...")
            for i, name in enumerate(names)]


def _seen_in_training(run: Path, config: dict, data: Path) -> str | None:
    """A note when the run's training data (an HDF5 folder) was split or built again since it
    trained: ``data`` may then hold images it learned from. None when not, or when it cannot
    be told (image folders, subsets)."""
    from ..store import open_dataset
    from .fit import hdf5_names, images_sha256

    trained = config.get("train_images_sha256")
    train_file = Path(str(config.get("data", ""))) / "train.hdf5"
    if (not trained or config.get("data_kind") != "hdf5"
            or config.get("options", {}).get("limit_per_class") or not train_file.is_file()
            or train_file.resolve() == data.resolve()):
        return None
    names = hdf5_names(train_file)
    if names is None:
        return None
    with open_dataset(train_file) as db:
        labels = db["labels"][()]
    if images_sha256(names, labels) == trained:
        return None
    return (f"the training data {train_file} has changed since {run} learned from it (split or "
            f"built again?): if images of {data} were among those it learned from, these "
            "figures are better than it would do on new images")


def _learned_again(run: Path, config: dict, data: Path) -> str | None:
    """A note when images of ``data`` have the content of images the run trained on (a dump
    split again, with another seed, into another folder; a test folder holding copies of
    training images), told by the sha256 each split recorded in its files.csv or, for files
    built from other folders, by reading their sources (up to HASHED_BYTES); None when none
    do, or when it cannot be told."""
    options = config.get("options", {})
    trained = Path(str(config.get("data", "")))
    if options.get("limit_per_class") or not config.get("data"):
        return None  # (a subset: which images it learned from is not recorded)
    from ..build import HASHED_BYTES, image_digests, split_digests

    try:
        if config.get("data_kind") == "hdf5":
            learned = (image_digests(trained / "train.hdf5", HASHED_BYTES)
                       if (trained / "train.hdf5").is_file() else None)
        else:
            learned = split_digests(trained, None, "train")
        seen = image_digests(data, HASHED_BYTES) if learned else None
    except (OSError, DsprepError):
        return None
    if not learned or not seen:
        return None
    learned_set = {digest for _, digest in learned}
    shared = sum(1 for _, digest in seen if digest in learned_set)
    if not shared:
        return None
    from ..store import row_count

    return (f"{shared} of the {row_count(data)} images of {data} "
            f"{'is an image' if shared == 1 else 'are images'} {run} learned from (the same "
            "files as images of its training data, by their content: a dump split again, or a "
            "test folder holding copies?): these figures are better than it would do on new "
            "images")


def _chose_the_checkpoint(config: dict, data: Path, built_from: str, checkpoint: str) -> bool:
    """Whether ``data`` is the validation data that chose the run's ``checkpoint``: its
    val.hdf5, or built from the split folder it trained from, where the run chose best.keras
    by a validation metric (and last.keras, where --early-stop or --schedule plateau went by
    it)."""
    options = config.get("options", {})
    chose = checkpoint == "best" or options.get("early_stop") or (
        options.get("schedule") == "plateau")
    if not chose or not str(config.get("monitor", "")).startswith("val_") \
            or not config.get("data"):
        return False
    trained = Path(str(config["data"]))
    try:
        if config.get("data_kind") == "hdf5":
            return (trained / "val.hdf5").resolve() == data.resolve()
        return bool(built_from) and Path(built_from).resolve() == trained.resolve()
    except OSError:
        return False


def evaluate_run(run: str | os.PathLike, data: str | os.PathLike, *, ten_crop: bool = False,
                 checkpoint: str = "best", batch_size: int = 64,
                 progress: bool = False) -> dict:
    """Evaluate a run's checkpoint on a dsprep HDF5 file.

    The centre crop (of the run's ``--crop``, or the whole image) is always measured; with
    ``ten_crop`` the 10-crop average too. The confusion matrices are drawn into the run folder
    as ``confusion-<file>-<method>.png`` (``confusion-<file>-<method>-last.png`` for the last
    checkpoint).

    Args:
        run: a run folder written by ``dsprep train``.
        data: a dsprep HDF5 file (usually test.hdf5).
        ten_crop: also measure 10-crop (needs a run trained with a crop smaller than the images).
        checkpoint: "best" or "last".
        batch_size: images per prediction batch.
        progress: show a progress bar.

    Returns:
        A dict with ``run``, ``data``, ``checkpoint``, ``epoch`` (from 1, the one the
        checkpoint was saved at; None for runs that do not say), ``classes`` and one entry of
        metrics per method (``center``, and ``ten_crop`` when asked), each with a
        ``confusion_png`` path.
    """
    from ..generators import HDF5Generator
    from ..store import label_names as classes_of
    from ..store import open_dataset
    from .fit import read_run_config, settle

    if checkpoint not in CHECKPOINTS:
        raise UsageError(f"checkpoint {checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
    run, data = Path(run), Path(data)
    settle(run)  # what a training killed in RUN left half done
    config = read_run_config(run)
    model = _load_checkpoint(run, checkpoint, config)
    crop = config.get("options", {}).get("crop")
    classes = list(config.get("classes", []))
    # One preprocessing pass reads the file once per method; nothing random is involved.
    plans: list[tuple[str, list]] = []
    if crop:
        from ..preprocess import CenterCrop

        plans.append(("center", [CenterCrop(crop, crop)]))
    else:
        plans.append(("center", []))
    if ten_crop:
        if not crop:
            raise UsageError(f"{run} was trained on whole images (no --crop), so there is no "
                             "smaller crop to take ten of; evaluate without --ten-crop")
        # Whole images go to ten_crop_predict, which cuts one crop position at a time: a batch
        # of ten crops at once would hand the model 10x the batch and hold it all in memory.
        plans.append(("ten_crop", []))
    with open_dataset(data) as db:
        image_shape = tuple(int(s) for s in db["images"].shape[1:])
        split = db.attrs.get("split")
        resize = db.attrs.get("resize")
        built_from = str(db.attrs.get("source_root", ""))
        found = classes_of(db)
    # Other classes first: a file of another dataset is no matter of its image size.
    _check_classes(run, data, classes, found, config.get("data"), _build_options(config))
    _check_image_size(run, data, config, image_shape)
    _check_resize(run, data, config, resize)
    seen_note = None if split == "train" else (_seen_in_training(run, config, data)
                                               or _learned_again(run, config, data))
    if seen_note is None and split == "val" and _chose_the_checkpoint(config, data, built_from,
                                                                       checkpoint):
        seen_note = (f"{data} is the validation split {run} was trained with, which chose its "
                     f"{checkpoint}.keras: its figures flatter the model a little (evaluate "
                     "test.hdf5 for how it does on new images)")
    epoch, unfinished = _checkpoint_epoch(run, config, checkpoint)
    result = {"run": str(run), "data": str(data), "checkpoint": checkpoint, "epoch": epoch,
              "classes": classes}
    for method, pre in plans:
        gen = HDF5Generator(data, batch_size=batch_size, preprocessors=pre, shuffle="none",
                            output=config.get("input_dtype", "uint8"))
        _check_classes(run, data, classes, list(gen.label_names), config.get("data"),
                       _build_options(config))
        classes = classes or list(gen.label_names)
        expected = tuple(config.get("input_shape", ()))
        if method == "center" and expected and tuple(gen.sample_shape) != expected:
            raise DatasetFormatError(
                f"{data} gives images of shape {tuple(gen.sample_shape)} but the model of {run} "
                f"takes {expected}; build the file with the training image size")
        if method == "ten_crop":
            from .. import evaluate as ev

            probs, labels = ev.ten_crop_predict(predict_fn(model), gen, size=(crop, crop))
            probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
        else:
            probs, labels = predict(model, gen, progress=progress)
        scores = metrics(probs, labels, classes)
        if split == "train":
            scores["notes"].append(f"{data} is a training split: its figures say how well the "
                                   "model fits the images it learned from, not how it does on "
                                   "new ones (evaluate test.hdf5 for that)")
        elif seen_note:
            scores["notes"].append(seen_note)
        if unfinished:
            scores["notes"].append(unfinished)
        if method == "ten_crop" and crop >= min(image_shape[:2]):
            scores["notes"].append(
                f"the crop ({crop}x{crop}) is the whole image: its ten crops are the image "
                "and its mirror, five times each")
        # best.keras keeps the name it always had; last.keras's figure must not replace it.
        which = "" if checkpoint == "best" else f"-{checkpoint}"
        # A data file's name near the limit is cut short (with a digest) in the figure's.
        png = named_in(run, _data_name(data, config), f"-{method.replace('_', '')}{which}.png",
                       "confusion-")
        try:
            scores["confusion_png"] = str(plot_confusion(
                scores["confusion"], classes, png,
                f"{data.name}, {method.replace('_', '-')}, {checkpoint}.keras"))
        except OSError as exc:  # a read-only run folder: the figures still count
            scores["confusion_png"] = None
            scores["notes"].append(f"confusion matrix not drawn: cannot write {png} "
                                   f"({exc.strerror or exc})")
        result[method] = scores
    result["classes"] = classes
    return result


def _load_checkpoint(run: Path, checkpoint: str, config: dict):
    """The run's best or last model, refused if it takes another input than the run says."""
    from .fit import diverged_in, replaced_hint

    path = run / (cb.BEST if checkpoint == "best" else cb.LAST)
    if not path.is_file():
        if diverged_in(run) == 1:
            raise LayoutError(f"{path} does not exist: the run diverged in its first epoch (a "
                              "NaN or infinite loss), so it kept no model; train it again with "
                              "a lower --lr")
        if checkpoint == "best" and (run / cb.LAST).is_file():
            raise LayoutError(f"{path} does not exist, but {cb.LAST} does (it was deleted, or "
                              "the run predates it); use --checkpoint last")
        if checkpoint == "last" and (run / cb.BEST).is_file():
            raise LayoutError(f"{path} does not exist, but {cb.BEST} does (it was deleted, "
                              "to save room it may be); use --checkpoint best")
        raise LayoutError(f"{path} does not exist: the run has not finished an epoch"
                          + replaced_hint(run))
    model = load_model(path, compile=False)
    expected = tuple(config.get("input_shape", ()))
    takes = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else ()
    if expected and takes and takes != expected:
        raise DatasetFormatError(
            f"the model in {run} takes images of {takes} but its config.json says {expected}: "
            "the checkpoint is from another run; train this one again")
    classes = config.get("classes")
    gives = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if classes and gives is not None and gives != len(classes):
        raise DatasetFormatError(
            f"the model in {run} scores {gives} classes but its config.json names "
            f"{len(classes)}: the checkpoint is from another run; train this one again")
    return model


def _checkpoint_epoch(run: Path, config: dict, checkpoint: str) -> tuple[int | None, str | None]:
    """The epoch (from 1) the checkpoint was saved at, and a note if the run has not trained
    all the epochs it was given (stopped, or still training)."""
    try:
        state = cb.read_state(run)
    except DsprepError:  # a run of an older dsprep: nothing to say
        return None, None
    done = state["epochs_done"]
    best = state.get("best_epoch")
    epoch = int(best) + 1 if checkpoint == "best" and isinstance(best, int) else done
    planned = config.get("options", {}).get("epochs")
    from .fit import diverged_in

    gone = diverged_in(run)
    if gone is not None:
        return epoch, (f"{run} diverged in epoch {gone} (its loss became NaN or infinite) "
                       f"and stopped there: its {checkpoint} checkpoint is from epoch {epoch}, "
                       "before it")
    if isinstance(planned, int) and done < planned and not state.get("stopped_early_of"):
        return epoch, (f"{run} has trained {done} of its {planned} epochs (it was stopped, or "
                       f"is still training): its {checkpoint} checkpoint is from epoch {epoch}; "
                       "'dsprep train --resume' trains the rest")
    return epoch, None


def _check_image_size(run: Path, data: Path, config: dict, image_shape: tuple) -> None:
    """Refuse a file of other image sizes than the run trained on, or smaller than its crop.

    A crop of another size of image would fit the model, at another scale.
    """
    crop = config.get("options", {}).get("crop")
    trained_on = tuple(config.get("image_shape", ()))  # older run folders do not say
    if (trained_on and image_shape != trained_on) or (crop and crop > min(image_shape[:2])):
        size = f"{trained_on[0]}x{trained_on[1]}" if trained_on else None
        raise DatasetFormatError(
            f"{data} holds images of {image_shape[0]}x{image_shape[1]} but {run} was trained "
            f"on images of {size or f'at least {crop}x{crop}'}"
            + (f" (cropped to {crop}x{crop})" if crop else "")
            + "; build the file with the training image size (build-hdf5 --size "
            + (f"{size})" if size else f"{crop} or more)"))


def _check_resize(run: Path, data: Path, config: dict, resize) -> None:
    """Refuse a file whose images were brought to their size otherwise than the run's (a
    crop against stretched or padded images: the same size, other shapes)."""
    trained = config.get("resize")  # older run folders do not say
    if trained and resize is not None and str(resize) != trained:
        raise DatasetFormatError(
            f"{data} was built with --resize {resize} but {run} was trained on images built "
            f"with --resize {trained}; build the file with --resize {trained}")


def _build_options(config: dict) -> str:
    """The build-hdf5 options that make images as the run was trained on: " --size HxW" and a
    --resize other than crop, as far as its config.json says."""
    shape, resize = config.get("image_shape"), config.get("resize")
    said = f" --size {shape[0]}x{shape[1]}" if shape and len(shape) >= 2 else ""
    return said + (f" --resize {resize}" if resize and resize != "crop" else "")


def _check_classes(run: Path, data: Path, trained: list[str], found: list[str],
                   trained_on: str | None = None, build_options: str = "") -> None:
    """Refuse a file whose classes are not the run's (in the same order); ``trained_on``: the
    run's data folder (config.json's), named in the advice for a file of some classes, with
    ``build_options`` (:func:`_build_options`)."""
    if not trained or found == trained:
        return
    alike = ([unicodedata.normalize("NFC", c) for c in found]
             == [unicodedata.normalize("NFC", c) for c in trained])
    # A --name build takes train.hdf5's label ids: only where the run's data has one (a run
    # trained on a split folder has none, and the build would number its own classes).
    some = (not alike and set(found) < set(trained) and isinstance(trained_on, str)
            and (Path(trained_on) / "train.hdf5").is_file())
    raise DatasetFormatError(
        f"{data} has classes {found} but {run} was trained on {trained}; "
        + ("the names differ only in how their accents are encoded (composed or "
           "not, as macOS names folders); make the run's data and this file from "
           "splits of this version of 'dsprep split', which composes them (NFC)"
           if alike else
           # A folder of the user's own with some of the classes: a --name build beside the
           # run's train.hdf5 takes its label ids.
           "to evaluate images of some of its classes, build their folder into the run's "
           f"data folder with 'dsprep build-hdf5 FOLDER {quoted(str(trained_on))} --name NAME"
           f"{build_options}', "
           "which numbers its classes as train.hdf5 there does, and evaluate NAME.hdf5 there"
           if some else
           "evaluate on a file built from the same split"))
