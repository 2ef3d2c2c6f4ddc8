"""The ``dsprep`` command line: parse options, call the library, print summaries. No logic here."""

from __future__ import annotations

import click

from .. import __version__
from ._common import (
    QUIET_HELP,
    VERBOSE_HELP,
    DsprepGroup,
    be_quiet,
    native_lines_hidden,
    verbosity_options,
)
from .cmd_build import build_hdf5, info, means, verify
from .cmd_demo import demo
from .cmd_dump import sample_dump
from .cmd_split import split
from .cmd_train import evaluate, sweep_lr, train


@click.group(cls=DsprepGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit status: 0 done (or nothing to do), 1 failed, 2 bad arguments or "
                    "options, 130 stopped by Ctrl-C, 143 by SIGTERM, 129 by a hangup, 141 when "
                    "the reader of its output went away.")
@click.version_option(__version__, prog_name="dsprep")
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Turn a raw image dump into training-ready data, and train CNNs on it.

    \b
    Typical flow:
      dsprep split DUMP data/split            # train/val/test class folders
      dsprep build-hdf5 data/split data/hdf5  # train/val/test.hdf5 + means.json
      dsprep train data/hdf5 runs/alexnet --model alexnet --crop 227 --augment flip
      dsprep evaluate runs/alexnet data/hdf5/test.hdf5 --ten-crop
    """
    ctx.obj = {**(ctx.obj or {}), "verbose": verbose}
    if quiet:
        be_quiet(ctx)


for command in (sample_dump, split, build_hdf5, info, verify, means, train, evaluate, sweep_lr,
                demo):
    command.params.extend(verbosity_options())
    command.callback = native_lines_hidden(
        command.callback, tensorflow=command in (train, evaluate, sweep_lr, demo))
    main.add_command(command)

__all__ = ["main"]
