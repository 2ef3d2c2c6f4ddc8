"""``dsprep demo``: the whole pipeline on generated data."""

from __future__ import annotations

import click


@click.command()
@click.argument("workdir", type=click.Path(), default="demo-work", required=False)
def demo(workdir: str) -> None:
    """Run sample-dump, split, build-hdf5, train and evaluate in WORKDIR."""
    raise click.ClickException("demo is not available yet")
