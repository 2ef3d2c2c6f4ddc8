"""The ``dsprep`` command (and ``python -m dsprep``).

The command line's modules import numpy, OpenCV and h5py, which takes a moment: a Ctrl-C then
ends the command as it would a moment later, with "Aborted!" and exit status 130, not a
traceback. SIGTERM ends a command the way Ctrl-C does, cleaning up, with exit status 143, and so
does SIGHUP (a closed ssh session or terminal), with 129, unless it is ignored (``nohup``).
"""

from __future__ import annotations

import signal
import sys

from .system import ForgivingStream, ask_stop, clear_stop


def run() -> None:
    """Import the command line and run it."""
    _open_standard_streams()
    sys.stderr = ForgivingStream(sys.stderr)
    # A batch system stops a job with SIGTERM: it unwinds like a Ctrl-C, so partial files are
    # removed and worker processes stopped, and the exit status still says SIGTERM (143).
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminated)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored (nohup &)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupted)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        # A hangup ends the command by default with nothing cleaned up: .partial files and
        # locks left behind. Under nohup it is ignored, and stays so.
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, terminated)
    try:
        try:
            from .cli import main
        except KeyboardInterrupt:
            print("\nAborted!", file=sys.stderr)  # what a Ctrl-C in a command prints
            raise SystemExit(128 + signal.SIGINT) from None
        main(prog_name="dsprep")
    finally:
        # The command's work is done or undone. A signal from here on, while Python shuts
        # down, must end the process as it would any other, not raise into the shutdown
        # (which prints "Exception ignored" and exits 0). Python's own Ctrl-C handler would
        # raise there too: into the join of a worker pool, which then waits for ever.
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is signal.default_int_handler
                          else handler)
        clear_stop()


def _open_standard_streams() -> None:
    """Put the null device on a closed stdin, stdout or stderr (``>&-``, some daemons).

    Left closed, the next file opened takes the number: libjpeg's warnings would then be
    written into an output file, and a progress bar or a worker process would fail on the
    missing stream.
    """
    import os

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)  # worker processes get it as their own stdout/stderr
        if getattr(sys, name) is None:
            stream = open(fd, mode, buffering=1 if mode == "w" else -1,  # noqa: SIM115
                          closefd=False)
            setattr(sys, name, stream)
            if getattr(sys, f"__{name}__") is None:  # what worker start-up code reads
                setattr(sys, f"__{name}__", stream)


def terminated(signum, frame) -> None:
    """The SIGTERM and SIGHUP handler: raise SystemExit(128 + signum) where the program is."""
    # While the command cleans up, a second SIGTERM ends it at once, and a hangup (systemd
    # sends SIGHUP right after SIGTERM; a closed terminal after a kill) is ignored, so that
    # the clean-up is not cut short by a second unwinding.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        print("\nTerminated." if signum == signal.SIGTERM else "\nHangup.", file=sys.stderr)
    except (OSError, ValueError):
        pass  # the terminal that hung up is gone
    stop = SystemExit(128 + signum)
    ask_stop(stop)  # raised again by long loops should this raise be lost
    raise stop


def interrupted(signum, frame) -> None:
    """The SIGINT handler: Python's own (raise KeyboardInterrupt), the stop also recorded."""
    stop = KeyboardInterrupt()
    ask_stop(stop)
    raise stop


if __name__ == "__main__":
    run()
