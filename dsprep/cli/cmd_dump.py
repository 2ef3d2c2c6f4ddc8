"""``dsprep sample-dump``: write a Kaggle-like image dump for demos, tests and benchmarks."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..sample import DEFAULT_CLASSES, LAYOUTS, PHOTOS, write_sample_dump
from ._common import PathArg, count_of, say, show_progress


@click.command("sample-dump")
@click.argument("dest", type=PathArg(file_okay=False))
@click.option("--layout", type=click.Choice(LAYOUTS), default="folders", show_default=True,
              help="folders: DEST/<class>/<file>; prefix: DEST/train/<class>.<n>.jpg like "
                   "dogs-vs-cats; csv: DEST/images/<id>.jpg plus DEST/labels.csv (id,label).")
@click.option("--per-class", type=click.IntRange(min=0), default=100, show_default=True,
              help="Good images per class.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Decides every crop, size, colour and quality; the same seed gives the same "
                   "bytes.")
@click.option("--classes", default=",".join(DEFAULT_CLASSES), show_default=True,
              help=f"Comma-separated class names, from: {', '.join(PHOTOS)}.")
@click.option("--with-bad-files", is_flag=True,
              help="Add the bad files real dumps hold: empty, truncated, text named .jpg, a PNG "
                   "with alpha, a grey JPEG, an exact duplicate (csv: also a row with no file "
                   "and a file with no row).")
@click.option("--force", is_flag=True, help="Replace DEST if it exists and is not empty.")
def sample_dump(dest: str, layout: str, per_class: int, seed: int, classes: str,
                with_bad_files: bool, force: bool) -> None:
    """Write a realistic Kaggle-like image dump into DEST.

    The images are random crops, scales, flips and colour changes of the photos that
    scikit-image installs (nothing is downloaded), stored as JPEG at quality 75-95 with sizes
    like dogs-vs-cats (mostly 500 px on the longer side, such as 500x375, a few under 100 px).
    """
    names = [c.strip() for c in classes.split(",")]
    if any(not n for n in names):
        raise UsageError(f"--classes {classes!r} has an empty name; give names separated by "
                         "commas, e.g. brick,grass")
    summary = write_sample_dump(dest, layout=layout, per_class=per_class, seed=seed,
                                with_bad_files=with_bad_files, classes=names,
                                progress=show_progress(), overwrite=force)
    classes = count_of(len(summary.classes), "class", "classes")
    say(f"wrote {count_of(summary.images, 'image')} ({classes}: "
        f"{', '.join(summary.classes)}; {summary.bytes / 1e6:.1f} MB) to {summary.dest} "
        f"in the {summary.layout} layout")
    if summary.bad_files:
        kinds = ", ".join(f"{kind} ({rel})" for rel, kind in summary.bad_files)
        say(f"bad files: {kinds}")
