"""The ``dsprep`` command (and ``python -m dsprep``).

The command line's modules import numpy, OpenCV and h5py, which takes a moment: a Ctrl-C then
ends the command as it would a moment later, with "Aborted!", not a traceback.
"""

from __future__ import annotations

import sys


def run() -> None:
    """Import the command line and run it."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)  # what click prints for a Ctrl-C in a command
        raise SystemExit(1) from None
    main(prog_name="dsprep")


if __name__ == "__main__":
    run()
