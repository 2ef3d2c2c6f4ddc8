"""``dsprep split``: lay out train/val/test class folders from a dump."""

from __future__ import annotations

import click


@click.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dest", type=click.Path())
def split(src: str, dest: str) -> None:
    """Split the labelled images in SRC into DEST/train, DEST/val and DEST/test class folders."""
    raise click.ClickException("split is not available yet")
