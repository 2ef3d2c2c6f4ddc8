"""Framework-free evaluation: ten-crop averaging, rank-k accuracy, ROC AUC, confusion matrices.

Everything here works on numpy arrays and a plain ``predict_fn(batch) -> probabilities``, so the
same code serves Keras, PyTorch, JAX or any other model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .errors import UsageError
from .generators import refuse_path
from .preprocess import as_size, crop, five_crop_positions

__all__ = [
    "confusion_matrix",
    "label_ids",
    "per_class_accuracy",
    "rank_accuracy",
    "roc_auc",
    "ten_crop_predict",
]


def label_ids(labels: np.ndarray, classes: int | None = None, what: str = "labels") -> np.ndarray:
    """Class ids (N,) from class ids (N,) or (N, 1), or one-hot / probability rows (N, C).

    With ``classes``, rows of another width are refused, and (N, 1) is one-hot rows when
    ``classes`` is 1 (a column of ids otherwise, as Keras often keeps labels). ``what`` names
    the argument in the errors.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "OSUMm":  # objects, text, times (bfloat16, kind V, is a number)
        raise UsageError(f"{what} must be numbers (class ids or one-hot rows), got "
                         f"{labels.dtype} values such as {labels.ravel()[:3].tolist()}")
    if labels.ndim == 2 and labels.shape[1] == 1 and classes != 1:
        labels = labels[:, 0]
    elif labels.ndim == 2:
        if classes is not None and labels.shape[1] != classes:
            raise UsageError(f"{what}: one-hot rows must have one column per class "
                             f"({classes}); got shape {labels.shape}")
        return labels.argmax(axis=1).astype(np.int64)
    if labels.ndim != 1:
        raise UsageError(
            f"{what} must be class ids (N,) or one-hot rows (N, C), got shape {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            scores = (" (scores of one class each, as from a sigmoid, become ids with "
                      "(scores > 0.5).astype(int))" if what == "preds" else "")
            raise UsageError(f"{what} must be whole class ids, got fractional values{scores}")
    return labels.astype(np.int64)


def _predict(predict_fn: Callable, x: np.ndarray) -> np.ndarray:
    out = predict_fn(x)
    try:
        probs = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        # torch's bfloat16 (autocast), a tensor on the GPU or one that requires grad.
        raise TypeError(f"predict_fn returned a {type(out).__name__} that NumPy cannot read "
                        f"({exc}); return a NumPy array or a CPU float32 tensor (torch: "
                        ".detach().float().cpu())") from exc
    if probs.ndim != 2 or probs.shape[0] != x.shape[0]:
        raise UsageError(
            f"predict_fn must return one row of class probabilities per image, shape "
            f"({x.shape[0]}, classes); got {probs.shape}"
        )
    return probs


def ten_crop_predict(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    gen: Iterable[tuple[np.ndarray, np.ndarray]],
    size: int | tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities averaged over the ten crops of every image, and the labels.

    Memory stays bounded: crops are predicted one position at a time, so at most one batch's
    worth of crops is held besides the batch itself.

    Args:
        predict_fn: maps a (B, h, w, C) batch to (B, classes) probabilities.
        gen: iterable of ``(x, y)`` batches; ``x`` is either ten-crop samples (B, K, h, w, C)
            from :class:`dsprep.preprocess.TenCrop`, or full images (B, H, W, C) that are cut
            here into the four corners, the centre and their mirrors. ``y`` is int labels or
            one-hot rows.
        size: (height, width) of the crops, or one int; required for full images.

    Returns:
        ``(probs, labels)``: (N, classes) float64 averages and (N,) int64 labels.
    """
    refuse_path(gen, "ten_crop_predict")
    crop_size = None if size is None else as_size(size)
    # A dsprep generator's one-hot rows of a single class are (B, 1): not a column of ids.
    classes = gen.num_classes if getattr(gen, "one_hot", False) is True else None
    all_probs, all_labels = [], []
    width: list[int] = []  # the classes of the first prediction: every one must have as many

    def predict(views: np.ndarray) -> np.ndarray:
        probs = _predict(predict_fn, views)
        if not width:
            width.append(probs.shape[1])
        elif probs.shape[1] != width[0]:
            raise UsageError(f"predict_fn returned {width[0]} class scores per image, then "
                             f"{probs.shape[1]}; it must score the same classes every time")
        return probs

    for x, y in gen:
        x = np.asarray(x)
        if x.ndim == 5:
            if crop_size is not None and tuple(x.shape[2:4]) != crop_size:
                raise UsageError(
                    f"size={crop_size} but the generator yields ten crops of "
                    f"{x.shape[2]}x{x.shape[3]}; leave size out for crops made by TenCrop")
            total = None
            for k in range(x.shape[1]):
                probs = predict(np.ascontiguousarray(x[:, k]))
                total = probs if total is None else total + probs
            mean = total / x.shape[1]
        elif x.ndim == 4:
            if crop_size is None:
                raise UsageError(
                    "the generator yields full images; pass size=(height, width) of the crops "
                    "(or yield ten crops with a TenCrop preprocessor)"
                )
            mean = _ten_crops_of_images(predict, x, crop_size)
        else:
            raise UsageError(
                f"expected batches of shape (B, H, W, C) or (B, 10, h, w, C), got {x.shape}"
            )
        all_probs.append(mean)
        all_labels.append(label_ids(y, classes))
    if not all_probs:
        raise UsageError("the generator yielded no batches; nothing to evaluate")
    return np.concatenate(all_probs), np.concatenate(all_labels)


def _ten_crops_of_images(predict: Callable, x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    n, height, width = x.shape[:3]
    positions = five_crop_positions(height, width, size)
    total = None
    for mirror in (False, True):
        for top, left in positions:
            views = crop(x, top, left, size, flips=mirror)
            probs = predict(views)
            del views  # free this position's crops before cutting the next
            total = probs if total is None else total + probs
    return total / (2 * len(positions))


def rank_accuracy(
    probs: np.ndarray, labels: np.ndarray, k: int | Sequence[int] = (1, 5)
) -> dict[int, float]:
    """The fraction of samples whose true class is among the ``k`` most probable classes.

    Ties break as ``argmax`` breaks them: a class ranks above the true one when it scores
    higher, or the same with a lower index, so uniform scores are not all counted right. A row
    with a NaN or infinite score counts as wrong (a broken model must not look accurate). A
    ``k`` of the number of classes or more counts every other row right: rank-5 of three
    classes is 1.0 (``dsprep evaluate`` leaves it out then).

    Args:
        probs: (N, classes) scores, two columns or more (for a one-column sigmoid output
            ``p``, give ``np.hstack([1 - p, p])``).
        labels: (N,) or (N, 1) class ids, or (N, classes) one-hot rows.
        k: one rank or several.

    Returns:
        ``{k: accuracy}`` for each requested k, e.g. ``{1: 0.71, 5: 0.93}``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        raise UsageError(
            "probs has one column (a sigmoid output?): ranks need a score per class; for two "
            "classes give np.hstack([1 - p, p])")
    labels = label_ids(labels, probs.shape[1] if probs.ndim == 2 else None)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise UsageError(
            f"probs must be (N, classes) with one row per label; got {probs.shape} for "
            f"{labels.shape[0]} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise UsageError(f"labels must be class ids in 0..{probs.shape[1] - 1}")
    try:
        ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    except TypeError:  # neither one rank nor several
        ks = []
    if not ks or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                     for v in ks):
        raise UsageError(f"k must be a positive rank or a list of them, got {k!r}")
    if not labels.size:
        raise UsageError("no samples to score")
    true_scores = probs[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(probs.shape[1])[None, :] < labels[:, None]
    above = (probs > true_scores) | ((probs == true_scores) & lower_index)
    ranks_above = above.sum(axis=1)
    finite = np.isfinite(probs).all(axis=1)
    return {int(v): float(np.mean(finite & (ranks_above < int(v)))) for v in ks}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for two classes, from ranks (the Mann-Whitney U statistic).

    Tied scores count one half, as the trapezoidal ROC curve does.

    Args:
        scores: (N,) scores for the positive class, or (N, 2) probabilities (column 1 is used).
        labels: (N,) or (N, 1) 0/1 (or False/True) labels, or (N, 2) one-hot rows.

    Raises:
        UsageError: labels of one class only, or scores that are not all finite.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]
    labels = label_ids(labels, 2)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise UsageError(
            f"scores must be (N,) or (N, 2) for N labels; got {scores.shape} for {labels.shape}"
        )
    if np.any((labels != 0) & (labels != 1)):
        raise UsageError("roc_auc needs two classes: labels must be 0 or 1")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise UsageError(
            "roc_auc needs both classes among the labels; got only "
            f"{'positives' if negatives == 0 else 'negatives'}"
        )
    if not np.all(np.isfinite(scores)):
        raise UsageError(
            f"roc_auc needs finite scores; {int(np.sum(~np.isfinite(scores)))} of {scores.size} "
            "are NaN or infinite (a diverged model?)")
    ranks = _average_ranks(scores)
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    group_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class.

    Args:
        labels: (N,) or (N, 1) true class ids, or one-hot rows.
        preds: (N,) predicted class ids, or (N, classes) probabilities (the arg-max is taken).
        n_classes: the number of classes.
    """
    labels, preds = label_ids(labels, n_classes), label_ids(preds, n_classes, "preds")
    if labels.shape != preds.shape:
        raise UsageError(f"labels and preds differ in length: {labels.shape} vs {preds.shape}")
    if n_classes < 1:
        raise UsageError(f"n_classes must be at least 1, got {n_classes}")
    for name, ids in (("labels", labels), ("preds", preds)):
        if ids.size and (ids.min() < 0 or ids.max() >= n_classes):
            raise UsageError(f"{name} must be class ids in 0..{n_classes - 1}")
    flat = np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Per class, the fraction of its samples predicted right (recall); NaN for absent classes."""
    matrix = confusion_matrix(labels, preds, n_classes)
    support = matrix.sum(axis=1)
    correct = np.diag(matrix).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, correct / np.maximum(support, 1), np.nan)
