"""What every command shares: error translation, verbosity and progress-bar settings."""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import functools
import os
import select
import signal
import sys
import unicodedata
from collections.abc import Callable

import click

from ..errors import DsprepError, UsageError
from ..fileio import empty_path_words
from ..system import (
    ForgivingStream,
    command_scope,
    import_matplotlib_quietly,
    inside_a_command,
    on_a_terminal,
    stop_asked,
)

# The exit status of a command stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130
# Exit statuses of a command stopped by SIGTERM or SIGHUP (dsprep.__main__.terminated).
STOPPED_BY_SIGNAL = {128 + signal.SIGTERM, 128 + getattr(signal, "SIGHUP", signal.SIGTERM)}


# What to do after a Ctrl-C, for the commands whose next run carries on (train says its own).
_AFTER_A_STOP = {
    "split": "Nothing that looks finished was left; run the same command again to carry on "
             "(the files placed so far wait in a hidden ...split-partial folder beside DEST, "
             "or inside it; delete that folder if you will not. A copy-mode split stopped "
             "while it still read the dump starts again).",
    "build-hdf5": "Nothing half-written was kept; run the same command again.",
    "sample-dump": "Nothing half-written was kept under DEST; the images written so far wait in "
                   "a hidden .DEST.partial folder beside it, which the next run replaces.",
}


VERBOSE_HELP = ("Show the native libraries' own lines, hidden otherwise: libjpeg's and "
                "libpng's warnings (\"Corrupt JPEG data: ...\", which name no file; the files "
                "left out are listed by name in the skipped lists) and TensorFlow's start-up "
                "log.")
QUIET_HELP = ("Print only errors, warnings, the notes that ask for attention and the "
              "command's answer (info, means, evaluate, a dry run's plan): no progress bars, "
              "no summary.")


class DsprepGroup(click.Group):
    """A click group that prints dsprep's errors as one line ('Error: ...') without a traceback.

    Exit codes: 0 ok, 1 failed, 2 usage (a bad argument or option), 130 stopped by Ctrl-C
    (SIGINT), as a shell reports it; SIGTERM and SIGHUP give 143 and 129 (``dsprep.__main__``).
    """

    def parse_args(self, ctx: click.Context, args: list[str]):
        # The group's own --help and --version print while their options are parsed, before
        # invoke: a closed pipe or a full disk there is said as a command's would be.
        try:
            return super().parse_args(ctx, args)
        except BrokenPipeError:
            if not _stdout_closed():
                raise
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            ctx.exit(141)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else _stream_written(exc)
            raise click.ClickException(f"{where}{exc.strerror or exc}") from exc

    def invoke(self, ctx: click.Context):
        try:
            with command_scope():
                return self._invoke_or_stop(ctx)
        except KeyboardInterrupt as exc:
            # click would say "Aborted!" and exit 1, which a batch script cannot tell from a
            # failure.
            then = _after_a_stop(ctx, exc)
            click.echo("\nAborted!" + (f" {then}" if then else ""), err=True)
            ctx.exit(INTERRUPTED)
        except SystemExit as exc:
            # SIGTERM (a batch system's time limit) and SIGHUP: "Terminated." was said as the
            # signal came; what to do next, as after a Ctrl-C, once the clean-up is done.
            then = _after_a_stop(ctx, exc)
            if then and exc.code in STOPPED_BY_SIGNAL:
                with contextlib.suppress(OSError, ValueError):  # the terminal that hung up
                    click.echo(then, err=True)
            raise
        except UsageError as exc:
            # No context: the message names the option itself, and the group's usage line would
            # point at the wrong command.
            raise click.UsageError(str(exc)) from exc
        except DsprepError as exc:
            raise click.ClickException(str(exc)) from exc
        except BrokenPipeError as exc:
            if not _stdout_closed():
                raise click.ClickException(str(exc)) from exc  # some other pipe
            # The reader of stdout went away (dsprep info FILE | head): stop quietly, as cat
            # would. What is still buffered goes nowhere rather than failing again at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            ctx.exit(141)  # 128 + SIGPIPE, the shell's status for a process a pipe closed on
        except OSError as exc:
            # Disk full, permission denied, a file removed under our feet: one line, no traceback.
            where = f"{exc.filename}: " if exc.filename else _stream_written(exc)
            # Only where running the same command again carries on (train's checkpoints
            # call for --resume, which its own messages say), and not after a message that
            # names no file: those (a split or build that does not fit) say what to do.
            then = ("; free some space there, then run the same command again"
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and exc.filename
                    and ctx.invoked_subcommand in ("split", "build-hdf5") else "")
            raise click.ClickException(f"{where}{exc.strerror or exc}{then}") from exc

    def _invoke_or_stop(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            stop = stop_of(exc)
            if stop is not None:
                raise stop from None
            raise


def _after_a_stop(ctx: click.Context, stop: BaseException) -> str:
    """What to do after the command was stopped: what the stop itself says (``after_stop``,
    set where the work stopped), else the command's usual words; nothing for a step of another
    command (demo's split: running demo again starts afresh, whatever the step would say)."""
    if inside_a_command():
        return ""
    return getattr(stop, "after_stop", "") or _AFTER_A_STOP.get(ctx.invoked_subcommand or "", "")


def stop_of(exc: BaseException) -> BaseException | None:
    """The stop ``exc`` stands for: itself for a Ctrl-C or an exit, and for another error the
    stop a signal asked for (a signal landing inside a library can come out as that library's
    error, a drawing cut short: "Invalid bounding box"); None for a plain error."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return exc
    if isinstance(exc, (click.exceptions.Exit, click.ClickException, click.Abort)):
        return None  # click's own ways out (an inner command of demo that was stopped)
    return stop_asked() if isinstance(exc, Exception) else None


def _stream_written(exc: OSError) -> str:
    """"cannot write to the standard output: " for an error raised writing a message (its
    output sent to a full disk: > log.txt), which names no file; else ""."""
    tb, frame = exc.__traceback__, None
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
    if frame is None or frame.f_code.co_name != "echo" or \
            frame.f_globals.get("__name__") != "click.utils":
        return ""
    return f"cannot write to the standard {'error' if frame.f_locals.get('err') else 'output'}: "


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no real stdout
        return False


class PathArg(click.Path):
    """``click.Path`` that refuses an empty path: click takes "" for the current folder, so
    ``dsprep split "$RAW" "$OUT"`` with OUT unset in a script wrote into (and with --force
    cleared) the folder it ran in."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value == "":
            self.fail(empty_path_words(folder=self.dir_okay), param, ctx)
        return super().convert(value, param, ctx)


def verbosity_options() -> list[click.Option]:
    """``-v`` and ``-q`` for a subcommand, so ``dsprep split SRC DEST -q`` works as well as
    ``dsprep -q split SRC DEST``: both set what the top-level options set."""

    def more(ctx: click.Context, param: click.Parameter, value: int) -> None:
        if value:
            root = ctx.find_root()
            root.obj = dict(root.obj or {})
            root.obj["verbose"] = int(root.obj.get("verbose", 0)) + value

    def quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            be_quiet(ctx)

    return [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=more,
                     help=VERBOSE_HELP),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=quiet,
                     help=QUIET_HELP),
    ]


def native_lines_hidden(command: Callable, *, tensorflow: bool = False) -> Callable:
    """Run ``command`` (a click callback) with the native libraries' own lines hidden unless
    ``-v`` was given (``_native_warnings_hidden``).

    libjpeg and libpng write "Corrupt JPEG data: premature end of data segment" and the like
    while a split checks or a build decodes, naming no file: the files left out are named in
    the skipped lists with the reason, and those kept decoded whole. For a command that runs
    TensorFlow, ``TF_CPP_MIN_LOG_LEVEL`` set below 3 asks for its native log (0: all, 2:
    errors), so it keeps descriptor 2 too.
    """

    @functools.wraps(command)
    def run(*args, **kwargs):
        ctx = click.get_current_context()
        wanted = verbosity(ctx) >= 1 or (
            tensorflow and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1", "2"))
        if wanted or is_quiet(ctx):  # -q hides them already, for the whole command
            return command(*args, **kwargs)
        with _native_warnings_hidden():
            return command(*args, **kwargs)

    return run


def be_quiet(ctx: click.Context) -> None:
    """Make the command quiet (``-q``): no summary, no progress bars, and no native library's
    warnings for the rest of the command."""
    root = ctx.find_root()
    if root.obj and root.obj.get("quiet"):
        return
    root.obj = {**(root.obj or {}), "quiet": True}
    root.with_resource(_native_warnings_hidden())


@contextlib.contextmanager
def _native_warnings_hidden():
    """Send file descriptor 2 to the null device, and Python's ``sys.stderr`` to a copy of it.

    libjpeg and libpng print their warnings ("Corrupt JPEG data: 2 extraneous bytes before
    marker 0xd9", common in real dumps) straight to descriptor 2 from whichever thread decodes,
    below anything Python or OpenCV can switch off. Unless ``-v`` is given (and always under
    ``-q``, where only errors may be printed), for the command's life the descriptor goes
    nowhere, while Python's own stderr (errors, warnings, tracebacks, "Terminated.",
    faulthandler's report) writes to the real one through a duplicate. Native libraries'
    fatal messages are hidden with their warnings (``-v`` shows them). Without a real
    descriptor 2 (a test runner's captured stream) nothing changes.
    """
    try:
        real = sys.stderr.fileno() == 2 and os.fstat(2) is not None
    except (AttributeError, OSError, ValueError):  # no real stderr, or descriptor 2 closed
        real = False
    if not real:
        yield
        return
    sys.stderr.flush()
    python_stderr = sys.stderr
    sys.stderr = _stderr_copy(python_stderr)
    faults = faulthandler.is_enabled()
    if faults:
        faulthandler.enable(sys.stderr)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(sys.stderr.fileno(), 2)
        sys.stderr = python_stderr
        if faults:
            faulthandler.enable(python_stderr)


_STDERR_COPY: list = []  # the copy of the real stderr a -q command wrote to, kept open


def _stderr_copy(stream):
    """A text stream on a duplicate of descriptor 2, reused while it names the same file.

    It stays open after the command: a logging handler made meanwhile (TensorFlow's) keeps
    writing to it, and would fail on a closed file.
    """
    target = os.fstat(2)
    for copy in _STDERR_COPY:
        with contextlib.suppress(OSError, ValueError):
            found = os.fstat(copy.fileno())
            if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
                return copy
    copy = ForgivingStream(open(os.dup(2), "w", encoding=stream.encoding,  # noqa: SIM115
                                errors=stream.errors, buffering=1))
    _STDERR_COPY[:] = [copy]
    return copy


def is_quiet(ctx: click.Context | None = None) -> bool:
    """True when ``-q`` was given to the top-level command."""
    ctx = ctx or click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("quiet"))


def verbosity(ctx: click.Context | None = None) -> int:
    """How many ``-v`` were given to the top-level command."""
    ctx = ctx or click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return int(root.obj.get("verbose", 0)) if root and root.obj else 0


def say(message: str = "", *, err: bool = False) -> None:
    """Print a line of a command's summary (suppressed by ``-q`` unless it goes to stderr)."""
    if err or not is_quiet():
        click.echo(message, err=err)


def count_of(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular for one: "1 class", "3 classes"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


PROGRESS_ENV = "DSPREP_PROGRESS"
_ON, _OFF = ("1", "yes", "true", "on"), ("0", "no", "false", "off")
_WARNED: set[str] = set()  # DSPREP_PROGRESS values said to be unknown, once each


def show_progress() -> bool:
    """Whether long work shows a progress bar: on a terminal, not with ``-q``.

    A log file or a pipe (a batch job's stderr) would fill with redrawn bars, so they show
    there only with ``DSPREP_PROGRESS=1``; ``DSPREP_PROGRESS=0`` hides them everywhere
    (also ``yes``/``no``, ``true``/``false``, ``on``/``off``, in any case).
    """
    if is_quiet():
        return False
    wanted = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if wanted in _ON + _OFF:
        return wanted in _ON
    if wanted and wanted not in _WARNED:  # a typo would otherwise go unseen
        _WARNED.add(wanted)
        click.echo(f"warning: {PROGRESS_ENV}={os.environ[PROGRESS_ENV]} is none of 1/0, "
                   "yes/no, true/false, on/off; progress bars show on a terminal only",
                   err=True)
    return on_a_terminal(sys.stderr)


def show_epochs() -> bool:
    """Whether training prints a line per epoch: everywhere but with ``-q`` (a line per epoch
    reads well in a log, unlike a bar)."""
    return not is_quiet()


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (CJK, most emoji) characters take two,
    combining accents (a decomposed "é") and zero-width ones none."""
    return sum(0 if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf")
               else 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def format_table(rows: list[list[object]], header: list[str], *, text: bool = False) -> str:
    """Render rows as a plain text table: the first column left-aligned, the others right-
    aligned as numbers read best, or left-aligned too with ``text``."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(
            (c + " " * (w - display_width(c))) if i == 0 or text else
            (" " * (w - display_width(c)) + c)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def import_keras_quietly() -> None:
    """Import Keras (and start its backend) with the backend's native start-up log hidden.

    TensorFlow prints CPU-feature and missing-CUDA notices from C++ straight to file descriptor 2
    while it loads, whatever ``TF_CPP_MIN_LOG_LEVEL`` says, burying the command's own output. They
    stay hidden unless ``TF_CPP_MIN_LOG_LEVEL`` is set below 3 (or ``-v`` is given); Python
    errors are unaffected because they are raised, not printed, while the descriptor is redirected.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if sys.modules.get("keras") is not None:
        return
    silence = os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "3" and verbosity() < 1
    if silence:
        import_matplotlib_quietly()  # (Keras imports it, warning of a HOME it cannot write)
    try:
        with _native_stderr_to_devnull() if silence else contextlib.nullcontext():
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.config.list_physical_devices()
    except ImportError as exc:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        missing = (exc.name or "").partition(".")[0]
        if missing == "keras" or missing == backend == "tensorflow":  # a core install
            raise DsprepError(
                f"this command needs Keras 3 and TensorFlow, which the training extra installs: "
                f"pip install 'dsprep[train]' (from a checkout: pip install -e '.[train]'); {exc}"
            ) from exc
        if missing == backend:
            raise DsprepError(f"KERAS_BACKEND={backend} needs {backend} installed; install it, "
                              f"or unset KERAS_BACKEND to use TensorFlow ({exc})") from exc
        raise DsprepError(f"importing Keras failed: {exc}") from exc
    except ValueError as exc:  # KERAS_BACKEND names no backend Keras knows
        raise DsprepError(f"Keras could not load its backend ({exc}); check KERAS_BACKEND"
                          ) from exc


@contextlib.contextmanager
def _native_stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
