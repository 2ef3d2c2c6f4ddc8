"""The command group itself: version, help, error translation."""

from __future__ import annotations

from click.testing import CliRunner

import dsprep
from dsprep.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert dsprep.__version__ in result.output


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("split", "build-hdf5", "info", "verify", "means", "train", "evaluate",
                 "sample-dump", "demo", "sweep-lr"):
        assert name in result.output
