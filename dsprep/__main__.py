"""The ``dsprep`` command (and ``python -m dsprep``).

The command line's modules import numpy, OpenCV and h5py, which takes a moment: a Ctrl-C then
ends the command as it would a moment later, with "Aborted!", not a traceback. SIGTERM ends a
command the way Ctrl-C does, cleaning up, with exit status 143.
"""

from __future__ import annotations

import signal
import sys


def run() -> None:
    """Import the command line and run it."""
    # A batch system stops a job with SIGTERM: it unwinds like a Ctrl-C, so partial files are
    # removed and worker processes stopped, and the exit status still says SIGTERM (143).
    signal.signal(signal.SIGTERM, terminated)
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)  # what click prints for a Ctrl-C in a command
        raise SystemExit(1) from None
    main(prog_name="dsprep")


def terminated(signum, frame) -> None:
    """The SIGTERM handler of the command: raise SystemExit(143) where the program is."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    print("\nTerminated.", file=sys.stderr)
    raise SystemExit(128 + signal.SIGTERM)


if __name__ == "__main__":
    run()
