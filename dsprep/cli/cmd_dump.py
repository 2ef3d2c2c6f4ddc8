"""``dsprep sample-dump``: write a Kaggle-like image dump for demos, tests and benchmarks."""

from __future__ import annotations

import click


@click.command("sample-dump")
@click.argument("dest", type=click.Path())
def sample_dump(dest: str) -> None:
    """Write a realistic Kaggle-like image dump into DEST."""
    raise click.ClickException("sample-dump is not available yet")
