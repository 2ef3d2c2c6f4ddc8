"""``dsprep build-hdf5``, ``info``, ``verify`` and ``means``: the HDF5 stage and its companions."""

from __future__ import annotations

import click


@click.command("build-hdf5")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path())
def build_hdf5(src: str, out: str) -> None:
    """Decode, resize and store the images of SRC as chunked HDF5 files in OUT."""
    raise click.ClickException("build-hdf5 is not available yet")


@click.command()
@click.argument("file", type=click.Path(exists=True))
def info(file: str) -> None:
    """Describe a dsprep HDF5 file."""
    raise click.ClickException("info is not available yet")


@click.command()
@click.argument("file", type=click.Path(exists=True))
def verify(file: str) -> None:
    """Check a dsprep HDF5 file."""
    raise click.ClickException("verify is not available yet")


@click.command()
@click.argument("file", type=click.Path(exists=True))
def means(file: str) -> None:
    """Recompute the per-channel statistics of a dsprep HDF5 file."""
    raise click.ClickException("means is not available yet")
