"""The run folder's bookkeeping: history.csv, curves.png, lr.png, best/last checkpoints, schedules.

Every file is written under a temporary name and moved into place, so a crash never leaves a
half-written checkpoint, plot or table behind a final name.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from ..errors import DatasetFormatError, LayoutError, UsageError
from ..fileio import named_in, quoted, write_atomic
from ..system import import_matplotlib_quietly, raise_if_stopped
from .options import SCHEDULES, same_figure

HISTORY = "history.csv"
CURVES = "curves.png"
LR_PLOT = "lr.png"
BEST = "best.keras"
LAST = "last.keras"
STATE = "state.json"


def _temp_name(path: Path) -> Path:
    # Keras insists on the ".keras" suffix and matplotlib reads the format from it: keep it last.
    return named_in(path.parent, path.stem, f".partial{path.suffix}", ".")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    return write_atomic(path, text, tmp=_temp_name(path), fsync=True)


def atomic_write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _pending_name(path: Path, epoch: int) -> Path:
    return named_in(path.parent, path.stem, f".epoch{int(epoch)}.partial{path.suffix}", ".")


def read_state(run: str | os.PathLike) -> dict:
    """The run's state.json: ``epochs_done`` (an int), ``best`` and ``best_epoch``."""
    path = Path(run) / STATE
    if not path.is_file():
        raise LayoutError(f"{run} has no finished epoch to resume from (no {STATE}); start it "
                          "again with 'dsprep train --force'")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        state["epochs_done"] = int(state["epochs_done"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DatasetFormatError(
            f"{path} is not a run state with an epochs_done count ({exc!r}); start the run "
            "again with 'dsprep train --force'"
        ) from exc
    if state["epochs_done"] < 0:
        raise DatasetFormatError(f"{path} has a negative epochs_done; start the run again with "
                                 "'dsprep train --force'")
    return state


def settle_checkpoints(run: str | os.PathLike, epochs_done: int) -> None:
    """Finish or discard checkpoints a crash left between their save and their rename.

    Each epoch saves its checkpoints under names that carry the epoch, writes state.json, and
    only then renames them into place. A checkpoint of the last epoch state.json counts is
    moved into place; any other is from an epoch that never finished and is removed.
    """
    run = Path(run)
    for final in (run / BEST, run / LAST):
        for pending in run.glob(f".{final.stem}.epoch*.partial{final.suffix}"):
            if pending == _pending_name(final, epochs_done - 1):
                os.replace(pending, final)
            else:
                pending.unlink(missing_ok=True)


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a history.csv as dicts of floats (``epoch`` as int); [] when there is none."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                parsed = {k: float(v) for k, v in row.items() if v not in ("", None)}
                parsed["epoch"] = int(parsed["epoch"])
            except (KeyError, ValueError) as exc:
                raise DatasetFormatError(
                    f"{path}:{n} is not a history row ({exc}); remove the run folder or the row"
                ) from exc
            rows.append(parsed)
    return rows


def write_history(path: str | os.PathLike, rows: Sequence[dict[str, float]]) -> Path:
    """Write history rows as CSV (``epoch`` first, then the other columns sorted), atomically."""
    keys = sorted({k for row in rows for k in row} - {"epoch"})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for row in rows:
        writer.writerow([int(row["epoch"]), *(_fmt(row.get(k)) for k in keys)])
    return atomic_write_text(path, out.getvalue())


def _fmt(value) -> str:
    return "" if value is None else repr(float(value))


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # stopped or failed part way: no half picture left
        raise
    return path


def plot_curves(rows: Sequence[dict[str, float]], path: str | os.PathLike,
                title: str = "") -> Path:
    """Draw training/validation loss and accuracy (and AUC when logged) against the epoch."""
    import_matplotlib_quietly()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    epochs = [r["epoch"] + 1 for r in rows]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    axes = fig.subplots(1, 2)
    for ax, names, label in ((axes[0], ("loss",), "loss"), (axes[1], ("accuracy", "auc"), "")):
        for name in names:
            for prefix, style in (("", "-"), ("val_", "--")):
                key = prefix + name
                if any(key in r for r in rows):
                    ax.plot(epochs, [r.get(key, math.nan) for r in rows], style, marker="o",
                            markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label or "metric")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_lr(rows: Sequence[dict[str, float]], path: str | os.PathLike) -> Path:
    """Draw the learning rate of each epoch on a log scale."""
    import_matplotlib_quietly()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    ax = fig.subplots()
    lrs = [r.get("lr", math.nan) for r in rows]
    ax.plot([r["epoch"] + 1 for r in rows], lrs, marker="o", markersize=3)
    if all(v > 0 for v in lrs):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_sweep(curves: dict[str, Sequence[dict[str, float]]], path: str | os.PathLike) -> Path:
    """Draw training (solid) and validation (dashed) loss of several runs on shared axes."""
    import_matplotlib_quietly()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    ax = fig.subplots()
    last = 1
    for label, rows in curves.items():
        epochs = [r["epoch"] + 1 for r in rows]
        last = max([last, *epochs])
        # A rate whose loss went to NaN or infinity draws no point there: the legend says so.
        gone = any(diverged(r) for r in rows)
        (line,) = ax.plot(epochs, [r.get("loss", math.nan) for r in rows], marker="o",
                          markersize=3, label=f"lr={label}" + (" (diverged)" if gone else ""))
        if any("val_loss" in r for r in rows):
            # Marked too, so that a one-epoch sweep shows its validation points.
            ax.plot(epochs, [r.get("val_loss", math.nan) for r in rows], "--", marker="x",
                    markersize=4, color=line.get_color())
    ax.set_xlabel("epoch")
    if last <= 20:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (solid: train, dashed: val)")
    losses = [v for rows in curves.values() for r in rows for k in ("loss", "val_loss")
              if isinstance(v := r.get(k), (int, float)) and math.isfinite(v) and v > 0]
    if losses and max(losses) > 20 * min(losses):
        ax.set_yscale("log")  # one diverging rate would flatten every other curve
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def learning_rate(optimizer) -> float:
    """The optimizer's current learning rate as a float."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def schedule_fn(schedule: str, lr: float, epochs: int, step_every: int = 10,
                step_factor: float = 0.5) -> Callable[[int], float] | None:
    """The per-epoch learning rate of a named schedule (None for constant and plateau).

    ``step`` is ``lr * step_factor ** (epoch // step_every)``; ``cosine`` anneals from ``lr``
    to 0 over ``epochs``.
    """
    if schedule not in SCHEDULES:
        raise UsageError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "step":
        if step_every < 1:
            raise UsageError(f"--step-every must be at least 1, got {step_every}")
        return lambda epoch: float(lr * step_factor ** (epoch // step_every))
    if schedule == "cosine":
        total = max(1, int(epochs))
        return lambda epoch: float(lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch, total) / total)))
    return None


# The log-odds range the training AUC resolves: probabilities from 1e-7 to 1 - 1e-7.
_AUC_REACH = 16.0
_AUC_THRESHOLDS = 100_001


@keras.saving.register_keras_serializable(package="dsprep")
class PositiveClassAUC(keras.metrics.AUC):
    """ROC AUC of a two-class softmax model: the score is the probability of class 1.

    Takes integer labels (B,) or one-hot (B, 2) and probabilities (B, 2). Keras measures the
    curve at thresholds evenly spaced in the score; spaced in probability, they put every
    softmax score under 0.005 into one bin, and a trained model's scores crowd near 0 and 1,
    so that AUC was far from the exact one. The score is therefore mapped to its log-odds,
    -16..16 onto 0..1 (the same order, so the same exact AUC), before evenly spaced
    thresholds: 100,001 of them, 0.00032 apart in log-odds (under 0.0001 in probability near
    0.5), as an unsure model's scores crowd near 0.5 (with 1,001 the AUC of scores within
    0.005 of 0.5 was off by 0.06 to 0.14, and close epochs were ranked the wrong way). Evenly
    spaced thresholds are counted by bucket, so the cost per batch is that of a cumulative
    sum over them. ``dsprep evaluate`` gives the exact AUC.
    """

    def __init__(self, name: str = "auc", **kwargs) -> None:
        # Whatever a saved model says (Keras's 200, an older run's 1,001): it measures alike.
        kwargs["num_thresholds"] = _AUC_THRESHOLDS
        kwargs.pop("thresholds", None)
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == 2 and y_true.shape[-1] == 2:
            y_true = y_true[:, 1]
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        p = ops.cast(y_pred[:, 1], "float32")
        log_odds = ops.log(p) - ops.log1p(-p)  # -inf at 0, inf at 1: clipped to the ends
        score = ops.clip((log_odds + _AUC_REACH) / (2 * _AUC_REACH), 0.0, 1.0)
        return super().update_state(y_true, score, sample_weight=sample_weight)


class _ReplayModel:
    """What ReduceLROnPlateau and EarlyStopping touch while past epochs are replayed to them."""

    def __init__(self) -> None:
        self.optimizer = types.SimpleNamespace(learning_rate=1.0)
        self.stop_training = False


class _Resumable:
    """Mixin: on train begin, feed the callback the monitored values of epochs already run.

    Keras resets a callback's counters when ``fit`` starts, so a resumed run would otherwise
    wait a full ``patience`` again before reducing the rate or stopping. The values are replayed
    through the callback's own ``on_epoch_end`` against a stand-in model, so its counters come
    out as if the run had never stopped, and the real model's learning rate (restored with
    the checkpoint) is left alone.
    """

    def __init__(self, *args, history: Sequence[dict[str, float]] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._past = [dict(row) for row in history]

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        if not self._past:
            return
        real = self._model
        self.set_model(_ReplayModel())
        try:
            for row in self._past:
                self.on_epoch_end(int(row["epoch"]), dict(row))
        finally:
            self.set_model(real)
        if isinstance(self, keras.callbacks.EarlyStopping):
            self.stopped_epoch = 0  # a stop during the replay concerned the stand-in


def loss_of(monitor: str) -> str:
    """The loss logged for the same data as ``monitor``: val_loss for a validation metric."""
    return "val_loss" if monitor.startswith("val_") else "loss"


def _lower(loss: float | None, best: float | None) -> bool:
    """Whether ``loss`` is a number below ``best`` (any number when there is no best yet)."""
    return loss is not None and math.isfinite(loss) and (best is None or loss < best)


class _LossBreaksTies:
    """Mixin for Keras's monitoring callbacks: an epoch that equals the best monitored value
    with a lower loss on the same data counts as an improvement.

    A small two-class validation set reaches an AUC (or accuracy) of 1.0 early; without the
    tie-break, the first such epoch stays the best and patience runs out while the loss still
    falls. :class:`RunRecorder` picks best.keras by the same rule.
    """

    def on_train_begin(self, logs=None) -> None:
        self._loss_now = self._best_loss = None
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._loss_now = (logs or {}).get(loss_of(self.monitor))
        super().on_epoch_end(epoch, logs)

    def _is_improvement(self, current, reference) -> bool:
        if (current is not None and reference is not None and math.isfinite(current)
                and math.isfinite(reference) and same_figure(current, reference)):
            better = _lower(self._loss_now, self._best_loss)  # (not the rounding's verdict)
        else:
            better = bool(super()._is_improvement(current, reference))
        if better:
            self._best_loss = self._loss_now
        return better


class BatchLines(keras.callbacks.Callback):
    """A line on stderr at most every ``every`` seconds inside an epoch (``epoch 3/60: batch
    120/500, loss 0.4123``): progress in a log, where Keras's own bar is one line an epoch."""

    def __init__(self, epochs: int, every: float = 10.0) -> None:
        super().__init__()
        self.epochs, self.every = epochs, every
        self.epoch, self.last = 0, 0.0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.epoch, self.last = epoch, time.monotonic()

    def on_train_batch_end(self, batch, logs=None) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        steps = (self.params or {}).get("steps")
        loss = (logs or {}).get("loss")
        line = (f"epoch {self.epoch + 1}/{self.epochs}: batch {batch + 1}"
                + (f"/{steps}" if steps else "")
                + (f", loss {float(loss):.4f}" if loss is not None else ""))
        with contextlib.suppress(OSError, ValueError):  # a log that cannot be written
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


class StopOnNaN(keras.callbacks.Callback):
    """Stop training within the epoch at a NaN or infinite training loss: Keras's
    TerminateOnNaN without its line on the standard output (which -q would not hold back);
    the run's own error says what happened."""

    def on_train_batch_end(self, batch, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True


class ResumablePlateau(_Resumable, _LossBreaksTies, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that continues its patience count from ``history`` on a resume, and
    counts a tie with a lower loss as an improvement."""


class ResumableEarlyStopping(_Resumable, _LossBreaksTies, keras.callbacks.EarlyStopping):
    """EarlyStopping that continues its patience count from ``history`` on a resume, and
    counts a tie with a lower loss as an improvement."""


def best_metric(classes: int, validation: bool = True,
                val_labels: np.ndarray | None = None) -> tuple[str, str]:
    """The metric that picks best.keras and its mode: val AUC for two classes, else val accuracy.

    AUC needs both classes among the validation labels (when given); with one, it is no
    measure (Keras reports 0 every epoch), and accuracy picks instead.
    """
    two = classes == 2 and (val_labels is None or not validation
                            or np.unique(np.asarray(val_labels)).size == 2)
    name = "auc" if two else "accuracy"
    return ("val_" + name if validation else name), "max"


def diverged(row: dict) -> bool:
    """Whether an epoch's training or validation loss is not a number (NaN or infinite)."""
    return any(isinstance(v := row.get(k), float) and not math.isfinite(v)
               for k in ("loss", "val_loss"))


class RunRecorder(keras.callbacks.Callback):
    """Write a run's history.csv, curves.png, lr.png, best.keras, last.keras and state each epoch.

    The order of writes makes a crash at any point resumable: the history row goes first, then the
    checkpoints under names that carry the epoch, then ``state.json`` (the count of finished
    epochs, the commit point), and last the renames of the checkpoints into place. A crash
    before state.json leaves the previous epoch's checkpoints in place; one after it leaves
    this epoch's to be moved into place by :func:`settle_checkpoints` on resume.

    An epoch that ties the best value of ``monitor`` is the new best when its loss on the same
    data is lower (see :class:`_LossBreaksTies`).

    Args:
        run: the run folder.
        monitor: the logged metric that selects best.keras (e.g. "val_accuracy").
        mode: "max" or "min".
        history: rows already in history.csv (a resumed run); the best value comes from them.
        plots: draw curves.png and lr.png.
        title: title of curves.png.
    """

    def __init__(self, run: str | os.PathLike, monitor: str, mode: str = "max",
                 history: Sequence[dict[str, float]] = (), plots: bool = True,
                 title: str = "") -> None:
        super().__init__()
        self.run = Path(run)
        self.monitor = monitor
        self.mode = mode
        self.rows = [dict(r) for r in history]
        self.plots = plots
        self.title = title
        self.best = None
        self.best_loss = None
        self.best_epoch = None
        for row in self.rows:
            if monitor in row and self._better(row[monitor], row.get(loss_of(monitor))):
                self.best, self.best_loss = row[monitor], row.get(loss_of(monitor))
                self.best_epoch = int(row["epoch"])
        self._lr = None

    def _better(self, value: float | None, loss: float | None) -> bool:
        if value is None or not np.isfinite(value):
            return False
        if self.best is None:
            return True
        if same_figure(value, self.best):
            return _lower(loss, self.best_loss)
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_begin(self, epoch, logs=None):
        # Record the rate the epoch trained with (plateau changes it at the epoch's end).
        self._lr = learning_rate(self.model.optimizer)

    def _after_a_failed_save(self, exc: OSError) -> str:
        """What to do once there is room again: the files of the last epoch saved are whole."""
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return ""
        if not (self.run / LAST).is_file():
            return ("; free some space, then run the same command again (the run had no "
                    "epoch to keep)")
        # best.keras and last.keras, as big; 1 MB at least.
        need = max(2 * (self.run / LAST).stat().st_size, 10**6)
        return (f"; free some space (about {need / 1e6:,.0f} MB more), then continue it: "
                f"dsprep train --resume {quoted(self.run)}")

    def on_train_batch_end(self, batch, logs=None):
        raise_if_stopped()  # a signal whose stop was lost on the way (dsprep.system)

    def on_epoch_end(self, epoch, logs=None):
        raise_if_stopped()
        logs = dict(logs or {})
        row = {"epoch": int(epoch)}
        row.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
        row["lr"] = self._lr if self._lr is not None else learning_rate(self.model.optimizer)
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        write_history(self.run / HISTORY, self.rows)
        if self.plots:
            try:
                plot_curves(self.rows, self.run / CURVES, self.title)
                plot_lr(self.rows, self.run / LR_PLOT)
            except Exception:
                raise_if_stopped()  # a signal inside matplotlib comes out as its own error
                raise
        if diverged(row):
            # A diverged epoch (training stops at its NaN) is shown in the history but never
            # checkpointed or counted: best.keras, last.keras and a resume keep the epoch before.
            self.model.stop_training = True  # a NaN validation loss alone does not stop it
            return
        value, loss = row.get(self.monitor), row.get(loss_of(self.monitor))
        pending = []
        better = self._better(value, loss)
        if better or (self.best is None and not (self.run / BEST).exists()):
            if better:
                self.best, self.best_loss = value, loss
            self.best_epoch = int(epoch)
            pending.append(self.run / BEST)
        pending.append(self.run / LAST)
        for final in pending:
            path = _pending_name(final, epoch)
            try:
                self.model.save(path)
            except OSError as exc:  # a full disk, a file size limit
                for other in pending:
                    _pending_name(other, epoch).unlink(missing_ok=True)
                raise OSError(exc.errno, f"{exc.strerror or exc} (saving the checkpoint of "
                              f"epoch {int(epoch) + 1}){self._after_a_failed_save(exc)}",
                              str(final)) from exc
        atomic_write_json(self.run / STATE, {"epochs_done": int(epoch) + 1,
                                             "monitor": self.monitor, "best": self.best,
                                             "best_epoch": self.best_epoch})
        for final in pending:
            os.replace(_pending_name(final, epoch), final)

    def on_train_end(self, logs=None):
        raise_if_stopped()  # lost in the last epoch's plots or checkpoints: still a stop
        # Stopped before its last epoch by a callback (early stopping), not by a divergence:
        # the run is finished, and a resume with the same total has nothing left to do.
        planned = (self.params or {}).get("epochs")
        if (not getattr(self.model, "stop_training", False) or not self.rows
                or diverged(self.rows[-1]) or planned is None):
            return
        state = read_state(self.run)
        if state["epochs_done"] == self.rows[-1]["epoch"] + 1 < planned:
            # The total it stopped short of: a resume asking no more than that has nothing to
            # do, even after a resume asking more was interrupted before its first epoch.
            atomic_write_json(self.run / STATE, {**state, "stopped_early_of": int(planned)})
