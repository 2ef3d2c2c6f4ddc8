"""``dsprep train``, ``evaluate`` and ``sweep-lr``: Keras 3 training over dsprep data.

Keras loads inside the commands only, so ``dsprep --help`` and the other stages stay quick.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import click

from ..errors import DsprepError, UsageError
from ..fileio import quoted
from ..train.options import (
    AUGMENTS,
    MIN_SIDES,
    MODEL_NAMES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SEED_MAX,
    TrainConfig,
    same_figure,
)
from ._common import (
    STOPPED_BY_SIGNAL,
    PathArg,
    count_of,
    format_table,
    import_keras_quietly,
    say,
    show_epochs,
    show_progress,
    stop_of,
)

_DEFAULTS = TrainConfig()


def _training_options(epochs: int, exclude: tuple[str, ...] = (),
                      epochs_help: str = "Epochs to train (with --resume: the new total, "
                                         "counting the epochs already done).") -> Callable:
    """The options train and sweep-lr share (sweep-lr trains fewer epochs, and has no --lr)."""
    options = [
        _named("--model", type=click.Choice(MODEL_NAMES), default=_DEFAULTS.model,
               show_default=True,
               help="Network to train (" + ", ".join(f"{name} takes images of {side} pixels "
                                                     "a side or more"
                                                     for name, side in MIN_SIDES.items())
               + "; the ResNets any size)."),
        _named("--epochs", type=click.IntRange(min=1), default=epochs, show_default=True,
               help=epochs_help),
        _named("--batch-size", type=click.IntRange(min=1), default=_DEFAULTS.batch_size,
               show_default=True,
               help="Images per training step. Each epoch leaves out its short last "
                    "batch (other images each epoch), unless the data is smaller than one "
                    "batch."),
        _named("--optimizer", type=click.Choice(OPTIMIZERS), default=_DEFAULTS.optimizer,
               show_default=True, help="Optimizer."),
        _named("--lr", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.lr,
               show_default=True, help="Initial learning rate."),
        _named("--momentum", type=click.FloatRange(min=0), default=_DEFAULTS.momentum,
               show_default=True, help="Momentum of sgd and rmsprop, below 1."),
        _named("--weight-decay", type=click.FloatRange(min=0), default=None,
               help="L2 weight on every kernel [default: the model's own: alexnet 2e-4, "
                    "resnet 1e-4, smallnet 0]."),
        _named("--schedule", type=click.Choice(SCHEDULES), default=_DEFAULTS.schedule,
               show_default=True,
               help="Learning-rate schedule: step = lr * step-factor ** (epoch // "
                    "step-every); plateau = divide by 10 when the validation metric "
                    "stalls; cosine = anneal to 0 over the epochs (a run carried on to a "
                    "larger --epochs stretches it over the new total, so the rate rises "
                    "again there)."),
        _named("--step-every", type=click.IntRange(min=1), default=_DEFAULTS.step_every,
               show_default=True, help="Epochs between steps of the step schedule."),
        _named("--step-factor", type=click.FloatRange(min=0, max=1, min_open=True),
               default=_DEFAULTS.step_factor, show_default=True,
               help="Factor of each step of the step schedule."),
        _named("--plateau-patience", type=click.IntRange(min=1),
               default=_DEFAULTS.plateau_patience, show_default=True,
               help="Epochs without improvement before the plateau schedule cuts the rate."),
        _named("--crop", type=click.IntRange(min=8), default=None,
               help="Train on random CROPxCROP patches, validate on the centre crop "
                    "(e.g. 227 for AlexNet on 256x256 files) [default: whole images]."),
        _named("--augment", type=click.Choice(AUGMENTS), default=_DEFAULTS.augment,
               show_default=True,
               help="Training augmentation: flip = random horizontal flips; affine = flips "
                    "plus random rotations, shifts, shears and zooms (--rotation, --shift, "
                    "--shear, --zoom)."),
        _named("--rotation", type=click.FloatRange(0, 180), default=_DEFAULTS.rotation,
               show_default=True,
               help="With --augment affine: rotations up to this many degrees either way "
                    "(Keras rotation_range)."),
        _named("--shift", type=click.FloatRange(0, 1, max_open=True),
               default=_DEFAULTS.shift, show_default=True,
               help="With --augment affine: shifts up to this fraction of the height and "
                    "of the width (Keras height/width_shift_range)."),
        _named("--shear", type=click.FloatRange(0, 90, max_open=True),
               default=_DEFAULTS.shear, show_default=True,
               help="With --augment affine: shear angles up to this many degrees "
                    "(Keras shear_range)."),
        _named("--zoom", type=click.FloatRange(0, 1, max_open=True),
               default=_DEFAULTS.zoom, show_default=True,
               help="With --augment affine: zoom factors in [1 - ZOOM, 1 + ZOOM] "
                    "(Keras zoom_range)."),
        _named("--early-stop", type=click.IntRange(min=1), default=None,
               help="Stop after N epochs without a better validation metric."),
        _named("--seed", type=click.IntRange(0, SEED_MAX), default=_DEFAULTS.seed,
               show_default=True, help="Seed for weights, order and augmentation."),
        _named("--limit-per-class", type=click.IntRange(min=1), default=None,
               help="Train on the first N images of each class only, in the HDF5 file's "
                    "row order or, in a split folder, by path (not a random subset, unlike "
                    "split's option): ablation runs."),
        _named("--width", type=click.FloatRange(min=0, min_open=True), default=None,
               help="Model width: resnet/smallnet first-stage filters, alexnet filter "
                    "multiplier [default: the published network]."),
        _named("--image-size", type=click.IntRange(min=8), default=_DEFAULTS.image_size,
               show_default=True,
               help="Side the images of a split folder are resized to (HDF5 data keeps "
                    "its own size)."),
        _named("--workers", type=click.IntRange(min=1), default=_DEFAULTS.workers,
               help="Batches prepared at once by the input pipeline (threads) [default: "
                    "one per core up to 8, at least 2, so batches load while the model "
                    "trains]."),
        _named("--precision", type=click.Choice(PRECISIONS), default="auto",
               show_default=True,
               help="auto = mixed float16 on a GPU, float32 on a CPU."),
        _named("--jit/--no-jit", default=True,
               help="Compile with XLA on a GPU (the default; with the TensorFlow and JAX "
                    "backends, not torch); --no-jit turns it off."),
        _named("--gpus", default="1", show_default=True,
               help="GPUs to train on: a count, or 'all' (data-parallel)."),
    ]

    def apply(fn: Callable) -> Callable:
        for name, option in reversed(options):
            if name not in exclude:  # the ones this command does not take are left out
                fn = option(fn)
        return fn

    return apply


def _named(*decls: str, **attrs) -> tuple[str, Callable]:
    """``click.option(*decls, **attrs)`` and the name click gives its parameter."""
    return click.Option(decls, **attrs).name, click.option(*decls, **attrs)


_AFFINE = ("rotation", "shift", "shear", "zoom")


def _given() -> list[str]:
    """The parameters of the running command set on the command line (or its environment)."""
    ctx = click.get_current_context()
    explicit = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return [p.name for p in ctx.command.params if ctx.get_parameter_source(p.name) in explicit]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The options a resume takes (those of the machine: fit.MACHINE_OPTIONS).
_MACHINE = ("gpus", "workers", "jit")

# Options that only one --schedule reads.
_SCHEDULE_OF = {"step_every": "step", "step_factor": "step", "plateau_patience": "plateau"}


def _config(opts: dict) -> TrainConfig:
    given = _given()
    affine = [n for n in given if n in _AFFINE]
    if affine and opts.get("augment") != "affine":
        verb = "applies" if len(affine) == 1 else "apply"
        raise UsageError(f"{', '.join(map(_flag, affine))} only {verb} with --augment affine; "
                         "add --augment affine or leave them out")
    unread = [n for n in given if n in _SCHEDULE_OF and opts.get("schedule") != _SCHEDULE_OF[n]]
    if unread:
        wanted = _SCHEDULE_OF[unread[0]]
        unread = [n for n in unread if _SCHEDULE_OF[n] == wanted]
        verb = "applies" if len(unread) == 1 else "apply"
        raise UsageError(f"{', '.join(map(_flag, unread))} only {verb} with --schedule {wanted}; "
                         f"add --schedule {wanted} or leave {'it' if len(unread) == 1 else 'them'} "
                         "out")
    if "momentum" in given and opts.get("optimizer") == "adam":
        raise UsageError("--momentum only applies with --optimizer sgd or rmsprop (adam keeps "
                         "its own moving averages); leave it out or choose one of those")
    return TrainConfig(**opts).check()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


@contextlib.contextmanager
def _resume_hint(run: str, replacing: bool = False, again: bool = False):
    """On Ctrl-C, SIGTERM or SIGHUP after a finished epoch, say how to continue the run
    (``again``: the same command carries it on too).

    A replacement (--force) stopped before its first epoch ended puts back the run it was to
    replace, state.json and all, untouched: that is said instead.
    """
    state = Path(run) / "state.json"
    before = _stamp(state) if replacing else None
    try:
        yield
    except BaseException as exc:
        stop = stop_of(exc)
        if stop is None:
            raise
        stopped = isinstance(stop, KeyboardInterrupt) or stop.code in STOPPED_BY_SIGNAL
        if stopped and before is not None and _stamp(state) == before:
            click.echo(f"\nthe run stopped before it finished an epoch; {run} holds what it "
                       "held before", err=True)
        elif stopped and (Path(run) / "last.keras").is_file():
            click.echo(f"\nthe run stopped; continue it with: dsprep train --resume {quoted(run)}"
                       + (" (or the same command again)" if again else ""), err=True)
        elif stopped:
            # Nothing to resume: a first epoch cut short is not kept, and the same command
            # starts the run again (a batch job's retry needs no --force).
            click.echo("\nthe run stopped before it finished an epoch, so there is nothing to "
                       "resume; the same command starts it again", err=True)
        if stop is exc:
            raise
        raise stop from None


def _no_validation_note(data: str) -> None:
    say(f"note: {data} has no validation split (val.hdf5, or images in val/), so best.keras, "
        "--early-stop and --schedule plateau go by a training metric (AUC for two classes, "
        "else accuracy)", err=True)


def _left_out_note(left_out: list[tuple[str, str]], data) -> None:
    """Name the images of a split folder that could not be used (unreadable, or beside the
    class folders) and were left out."""
    shown = "; ".join(f"{path}: {reason}" for path, reason in left_out[:3])
    more = f"; and {len(left_out) - 3} more" if len(left_out) > 3 else ""
    one = len(left_out) == 1
    say(f"note: {count_of(len(left_out), 'image')} of {data} could not be used and "
        f"{'was' if one else 'were'} left out ({shown}{more}); move, remove or replace "
        f"{'it' if one else 'them'}, or split the dump again", err=True)


def _diverged(result) -> click.ClickException:
    """The error for a run whose last epoch's loss went NaN or infinite."""
    last = result.history[-1]
    which, value = next((name, last[key]) for key, name in (("loss", "loss"),
                                                            ("val_loss", "validation loss"))
                        if isinstance(last.get(key), float) and not math.isfinite(last[key]))
    kept = (f"; {result.run}/best.keras holds the best of the epochs before it"
            if result.epochs_done > 1 else "")
    if result.restored:
        kept = f"; {result.run} holds the run it was to replace, as before"
    from ..train import fit

    # A run folder that kept no epoch starts again without --force.
    force = "" if fit.never_finished_an_epoch(Path(result.run)) else " (and --force)"
    return click.ClickException(
        f"training diverged: the {which} became {value} in epoch {result.epochs_done}, and "
        f"the run stopped there; start again with a lower --lr{force}{kept}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _folder_given(what: str, file_hint: str):
    """A click callback for a folder argument, refusing a file with ``file_hint``: a file
    given where the folder goes is most often its own file (train.hdf5) or the other
    argument."""

    def check(ctx: click.Context, param: click.Parameter, value):
        if value is not None and Path(value).is_file():
            raise click.BadParameter(f"{value} is a file, not {what}; {file_hint}", ctx, param)
        return value

    return check


_DATA_FILE = ("give the folder that holds train.hdf5 (or train/), not a file in it")


@click.command()
@click.argument("data", type=PathArg(exists=True), required=False,
                callback=_folder_given("a data folder", _DATA_FILE))
@click.argument("run", type=PathArg(), required=False,
                callback=_folder_given("a run folder", "RUN is the folder of the run"))
@_training_options(epochs=_DEFAULTS.epochs)
@click.option("--resume", "resume_run", type=PathArg(exists=True, file_okay=False),
              default=None,
              help="Continue the interrupted run in this folder from its last finished epoch "
                   "(its own options; --epochs may raise the total; DATA, if given, is where "
                   "the data is now; --gpus, --workers and --jit/--no-jit may suit another "
                   "machine).")
@click.option("--overfit-check", is_flag=True,
              help="Train --epochs epochs on 8 images per class (no flips or affine "
                   "transforms, though --crop still takes random patches; a constant "
                   "learning rate and no early stop, whatever else is given) and report "
                   "whether the model learnt them: the training loss down to 0.75 of the "
                   "first epoch's, the accuracy halfway from guessing to 1. RUN keeps that "
                   "small run (give a RUN of its own).")
@click.option("--force", is_flag=True,
              help="Replace a run already in RUN. It is kept in RUN/.replaced until the new "
                   "run has finished its first epoch, and put back if the new run fails "
                   "before that.")
def train(data: str | None, run: str | None, resume_run: str | None, overfit_check: bool,
          force: bool, **opts) -> None:
    """Train a network on DATA, writing everything into the folder RUN.

    DATA is a 'dsprep build-hdf5' folder (train.hdf5, val.hdf5, means.json) or a 'dsprep
    split' folder. RUN receives config.json, history.csv (a row per epoch), curves.png,
    lr.png, best.keras (best validation AUC for two classes, else accuracy; the training
    metric when DATA has no validation split; a tie goes to the lower loss, which also keeps
    --early-stop and the plateau schedule going) and last.keras.

    \b
    Examples:
      dsprep train data/hdf5 runs/alexnet --model alexnet --crop 227 --augment flip
      dsprep train --resume runs/alexnet --epochs 90
    """
    import_keras_quietly()
    from ..train import fit

    if resume_run:
        if run is not None:
            raise UsageError("give either DATA RUN or --resume RUN [DATA], not both")
        given = _given()
        # The run keeps the options it was started with; anything else given would be ignored.
        ignored = [_flag(n) for n in given
                   if n not in ("epochs", "data", "resume_run", "verbose", "quiet",
                                *_MACHINE)]
        if ignored:
            raise UsageError(f"--resume continues {resume_run} with its own options, so "
                             f"{', '.join(ignored)} would be ignored; leave them out (only "
                             "--epochs, DATA and the machine's --gpus, --workers and "
                             "--jit/--no-jit go with --resume)")
        epochs = opts["epochs"] if "epochs" in given else None
        machine = {n: opts[n] for n in given if n in _MACHINE}
        with _resume_hint(resume_run):
            result = fit.resume(resume_run, epochs=epochs, data=data, progress=show_epochs(),
                                bars=show_progress(), machine=machine)
        if result.restored:
            say(f"note: {resume_run} held a replacement (--force) that never finished an epoch; "
                "the run it was replacing is back in its place, and is what resumed", err=True)
        verb = "resumed"
        if result.restarted:
            say(f"note: {resume_run} had not finished an epoch, so it started again with its "
                "own options", err=True)
            verb = "trained"
    else:
        if data is None or run is None:
            raise UsageError("train needs DATA and RUN (or --resume RUN)")
        config = _config(opts)
        if "image_size" in _given() and (Path(data) / "train.hdf5").is_file():
            say(f"note: --image-size is for split folders; {data} holds train.hdf5, whose "
                "images keep the size they were built at (build-hdf5 --size)", err=True)
        whole = fit.crop_is_the_image(data, config)
        if whole:
            # Random patches are the augmentation a --crop asks for: here there are none.
            larger = config.crop * 256 // 227
            how = (f"--image-size {larger}" if not (Path(data) / "train.hdf5").is_file()
                   else f"data built at --size {larger}")
            say(f"note: --crop {config.crop} is the whole {whole} image, so every patch is the "
                f"image itself and no random crops are made; train on larger images ({how} "
                f"for --crop {config.crop}) to have them", err=True)
        if overfit_check:
            report = fit.overfit_check(data, run, config, overwrite=force,
                                       progress=show_epochs(), bars=show_progress())
            if report.result.left_out:
                _left_out_note(report.result.left_out, data)
            if report.result.diverged:
                raise _diverged(report.result)
            verdict = "passed" if report.passed else "FAILED"
            epochs = count_of(report.result.epochs_done, "epoch")
            say(f"overfit check {verdict}: training loss {report.first_loss:.4f} -> "
                f"{report.last_loss:.4f} ({report.ratio:.2f} of the first epoch's), training "
                f"accuracy {report.accuracy:.2f} (guessing: {report.chance:.2f}) over {epochs}; "
                f"curves in {run}/curves.png")
            if not report.passed:
                raise click.ClickException(
                    f"on a tiny subset of {data}, the training loss must fall to 0.75 of its "
                    f"first value and the training accuracy reach "
                    f"{report.needed_accuracy:.2f}; check the labels, the input pipeline and "
                    "--lr, or give more --epochs")
            return
        done = None if force else fit.carries_on(run, data, config)
        carry_on = done is not None
        diverged_first = False
        if carry_on:
            # The same command again (a requeued job): what --resume RUN would do.
            if done < config.epochs:
                say(f"note: {run} holds a run of these options on {data}; it carries on from "
                    f"its epoch {done}, as --resume {quoted(run)} would", err=True)
            machine = {name: getattr(config, name) for name in _MACHINE}
            with _resume_hint(run, again=True):
                result = fit.resume(run, epochs=config.epochs, data=data,
                                    progress=show_epochs(), bars=show_progress(),
                                    machine=machine)
            if result.epochs_run == 0:
                _nothing_to_do(result)
                return
        else:
            with contextlib.suppress(OSError, DsprepError):
                diverged_first = fit.diverged_in(run) == 1
            with _resume_hint(run, replacing=force, again=not force):
                result = fit.train(data, run, config, overwrite=force, progress=show_epochs(),
                                   bars=show_progress())
        if result.restarted:
            held = ("that diverged in its first epoch" if diverged_first
                    else "stopped before it finished an epoch")
            say(f"note: {run} held a run {held}; it started again", err=True)
        if not fit.has_validation(data):
            _no_validation_note(data)
        shape = fit.read_run_config(result.run).get("input_shape") or [0, 0]
        if config.model == "alexnet" and config.crop is None and min(shape[:2]) > 227:
            say(f"note: --model alexnet without --crop trained on whole {shape[0]}x{shape[1]} "
                "images; its usual recipe is --crop 227 (random patches) and evaluate "
                "--ten-crop", err=True)
        verb = "resumed" if carry_on else "trained"
    last = result.history[-1] if result.history else {}
    if resume_run and result.epochs_run == 0:
        _nothing_to_do(result)
        return
    if result.left_out:
        _left_out_note(result.left_out, data or fit.read_run_config(result.run).get("data"))
    if result.untrained:
        one = len(result.untrained) == 1
        say(f"note: no training image is of class{'' if one else 'es'} "
            f"{', '.join(result.untrained)}: the model has an output for "
            f"{'it' if one else 'each'} but never learned {'it' if one else 'them'}, so its "
            f"images are always misclassified; add training images of "
            f"{'it' if one else 'them'}, or leave {'it' if one else 'them'} out of the data",
            err=True)
    if result.diverged:
        raise _diverged(result)
    stopped = (f" (stopped early by --early-stop, of {result.epochs_planned})"
               if result.epochs_done < result.epochs_planned else "")
    say(f"{verb} {result.run}: {count_of(result.epochs_done, 'epoch')}{stopped}, last loss "
        f"{_fmt(last.get('loss'))}, best {result.monitor} {_fmt(result.best)}")
    say(f"wrote {result.run}/best.keras, last.keras, history.csv, curves.png, lr.png")


def _nothing_to_do(result) -> None:
    how = (f"stopped early after {result.epochs_done} of its {result.epochs_planned} epochs"
           if result.epochs_done < result.epochs_planned
           else f"trained all its {count_of(result.epochs_done, 'epoch')}")
    further = (f"to train it further: 'dsprep train --resume {quoted(result.run)} --epochs N', "
               f"N above {result.epochs_planned}")
    if not (Path(result.run) / "last.keras").is_file():
        # Deleted to save room: a resume goes on from it.
        further = "its last.keras is gone, so it cannot be trained further"
    say(f"{result.run} has {how} already: nothing to do ({further})")


@click.command()
@click.argument("run", type=PathArg(exists=True), callback=_folder_given(
    "a run folder", "give the run folder first, then the data file (dsprep evaluate RUN "
    "DATA)"))
@click.argument("data", type=PathArg(exists=True))  # a folder gets dsprep's own hint
@click.option("--ten-crop", is_flag=True,
              help="Also measure the average over ten crops (corners, centre, and their "
                   "mirrors), side by side with the centre crop; for a run trained with "
                   "--crop.")
@click.option("--checkpoint", type=click.Choice(("best", "last")), default="best",
              show_default=True, help="Which checkpoint of RUN to evaluate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per prediction batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def evaluate(run: str, data: str, ten_crop: bool, checkpoint: str, batch_size: int,
             as_json: bool) -> None:
    """Evaluate the model of RUN on the HDF5 file DATA (usually test.hdf5).

    Prints rank-1 accuracy, rank-5 accuracy (with more than five classes), AUC for two classes
    and per-class accuracy, and draws the confusion matrix into
    RUN/confusion-<file>-center.png (and -tencrop.png with --ten-crop; -last is added with
    --checkpoint last).
    """
    import_keras_quietly()
    from ..train.predict import evaluate_run

    result = evaluate_run(run, data, ten_crop=ten_crop, checkpoint=checkpoint,
                          batch_size=batch_size, progress=show_progress() and not as_json)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    methods = [m for m in ("center", "ten_crop") if m in result]
    header = ["metric", *(m.replace("_", "-") for m in methods)]
    rows = [["images", *(result[m]["count"] for m in methods)]]
    for key, label in (("rank1", "rank-1 accuracy"), ("rank5", "rank-5 accuracy"),
                       ("auc", "ROC AUC")):
        if any(result[m][key] is not None for m in methods):
            rows.append([label, *(_fmt(result[m][key]) for m in methods)])
    for name in result["classes"]:
        rows.append([f"accuracy of {name}",
                     *(_fmt(result[m]["per_class"][name]) for m in methods)])
    # The figures are the command's answer: -q hides only the progress bar and the PNGs' line
    # (the notes go to stderr, where -q leaves them).
    at = f", epoch {result['epoch']}" if result.get("epoch") else ""
    click.echo(f"{Path(run)} ({checkpoint}.keras{at}) on {data}:")
    click.echo(format_table(rows, header))
    pngs = [result[m]["confusion_png"] for m in methods if result[m]["confusion_png"]]
    if pngs:
        say(f"confusion matrices: {', '.join(pngs)}")
    for note in dict.fromkeys(n for m in methods for n in result[m]["notes"]):
        say(f"note: {note}", err=True)


@click.command("sweep-lr")
@click.argument("data", type=PathArg(exists=True),
                callback=_folder_given("a data folder", _DATA_FILE))
@click.argument("run", type=PathArg(),
                callback=_folder_given("a folder for the runs", "RUN is a folder"))
@click.option("--lrs", default="0.1,0.01,0.001", show_default=True,
              help="Comma-separated learning rates to try.")
@_training_options(epochs=3, exclude=("lr",), epochs_help="Epochs to train at each rate.")
@click.option("--force", is_flag=True,
              help="Replace runs already in RUN/lr-*, even those of this very sweep.")
def sweep_lr(data: str, run: str, lrs: str, force: bool, **opts) -> None:
    """Train briefly at several learning rates and plot their loss curves on one chart.

    Each rate gets its own run folder RUN/lr-<rate>; RUN/sweep-lr.png draws their training
    (solid) and validation (dashed) loss, and RUN/sweep-lr.csv lists the final figures.
    The same command run again after a stop carries on: the rates it finished are kept, the
    one it stopped in resumes. Runs of other data or options in RUN/lr-* are refused.
    """
    import_keras_quietly()
    from ..train import fit

    try:
        rates = [float(v) for v in lrs.split(",") if v.strip()]
    except ValueError as exc:
        raise UsageError(f"--lrs {lrs!r} is not a comma-separated list of numbers, e.g. "
                         "0.1,0.01,0.001") from exc
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise UsageError(f"--lrs {lrs!r} needs positive, finite learning rates, e.g. "
                         "0.1,0.01,0.001")
    config = _config({**opts, "lr": rates[0]})
    try:
        results = fit.sweep_lr(data, run, rates, config, overwrite=force,
                               progress=show_epochs(), bars=show_progress(),
                               announce=lambda lr, kept: say(
                                   f"lr {lr:g} ({run}/lr-{lr:g}):"
                                   + (" trained before, kept" if kept else "")))
    except BaseException as exc:
        stop = stop_of(exc)
        if stop is None:
            raise
        if isinstance(stop, KeyboardInterrupt) or stop.code in STOPPED_BY_SIGNAL:
            click.echo("\nthe sweep stopped; " + (
                # With --force nothing in RUN is the sweep's own: every rate starts over.
                "the same command again (with --force) trains every rate anew" if force else
                "run the same command again to carry on (the rates it finished are kept, a "
                "rate stopped after an epoch resumes)"), err=True)
        if stop is exc:
            raise
        raise stop from None
    if not fit.has_validation(data):
        _no_validation_note(data)
    rows = []
    for lr, r in results.items():
        last = r.history[-1] if r.history else {}
        rows.append([f"{lr:g}", _fmt(last.get("loss")), _fmt(last.get("val_loss")),
                     _fmt(r.best)])
    monitor = next(iter(results.values())).monitor
    say(format_table(rows, ["lr", "final loss", "final val_loss", f"best {monitor}"]))
    diverged = [f"{lr:g} (epoch {r.epochs_done})" for lr, r in results.items() if r.diverged]
    if diverged:
        say(f"diverged, stopped at a NaN or infinite training or validation loss: lr "
            f"{', '.join(diverged)}")
    best = _highest(results)
    if best:
        say(best)
    say(f"wrote {run}/sweep-lr.png and {run}/sweep-lr.csv")


def _highest(results: dict) -> str:
    """The rate with the highest best figure, ties going to the lowest final validation (else
    training) loss, which is said; "" when no rate has a figure."""
    def final_loss(r) -> float:
        last = r.history[-1] if r.history else {}
        loss = last.get("val_loss", last.get("loss"))
        return loss if isinstance(loss, float) and math.isfinite(loss) else math.inf

    def which_loss(lr) -> str:
        last = results[lr].history[-1] if results[lr].history else {}
        return "val_loss" if "val_loss" in last else "training loss"

    ranked = [(r.best, lr, final_loss(r)) for lr, r in results.items()
              if not r.diverged and isinstance(r.best, (int, float)) and math.isfinite(r.best)]
    if not ranked:
        return ""
    top = max(value for value, _, _ in ranked)
    tied = sorted((loss, lr) for value, lr, loss in ranked if same_figure(value, top))
    lr = tied[0][1]
    monitor = next(iter(results.values())).monitor
    said = f"highest best {monitor}: lr {lr:g} ({top:.4f})"
    if len(tied) > 1:
        same = [f"{other:g}" for loss, other in tied[1:] if loss == tied[0][0]]
        higher = [f"{other:g}" for loss, other in tied[1:] if loss != tied[0][0]]
        if higher:
            said += (f", tied with lr {', '.join(higher)}: taken for its lower final "
                     f"{which_loss(lr)}"
                     + (f" (lr {', '.join(same)}, at the same final {which_loss(lr)} too, "
                        "cannot be told from it)" if same else ""))
        else:
            said += (f", tied with lr {', '.join(same)} at the same final {which_loss(lr)} "
                     "too: nothing here tells them apart (rates too low to learn in these "
                     "epochs?)")
    return said
