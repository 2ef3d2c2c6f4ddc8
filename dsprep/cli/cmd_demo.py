"""``dsprep demo``: the whole pipeline on generated data, as the commands a user would type."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from ..train.options import SEED_MAX
from ._common import PathArg, import_keras_quietly, say

MARKER = ".dsprep-demo"


def _run(ctx: click.Context, args: list[str]) -> None:
    """Run one dsprep command line in this process, echoing it first."""
    say("")
    say(click.style("$ dsprep " + shlex.join(args), bold=True))
    start = time.perf_counter()
    root = ctx.find_root()
    flags = ["-q"] if root.obj.get("quiet") else []
    flags += ["-v"] * int(root.obj.get("verbose", 0))  # -v shows the native lines there too
    status = root.command.main(args=flags + args, prog_name="dsprep", standalone_mode=False)
    if isinstance(status, int) and status:
        ctx.exit(status)  # a step stopped (Ctrl-C: 130): the next ones must not run
    say(f"  ({time.perf_counter() - start:.1f} s)")


@click.command()
@click.argument("workdir", type=PathArg(file_okay=False), default="demo-work", required=False)
@click.option("--per-class", default=200, show_default=True, type=click.IntRange(min=20),
              help="Good images per class in the generated dump.")
@click.option("--size", default=64, show_default=True, type=click.IntRange(min=16),
              help="Side of the stored images; the network trains on random crops 7/8 as large.")
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(min=1),
              help="Training epochs.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="Seed of every random step.")
@click.option("--force", is_flag=True,
              help="Use WORKDIR even if it holds files that an earlier demo did not write.")
@click.pass_context
def demo(ctx: click.Context, workdir: str, per_class: int, size: int, epochs: int, seed: int,
         force: bool) -> None:
    """Run the whole pipeline on generated data in WORKDIR (default: demo-work).

    \b
    1. sample-dump  a Kaggle-like dump of three texture classes, with a few bad files
    2. split        train/val/test class folders (bad files left out, with reasons)
    3. build-hdf5   train/val/test.hdf5 and means.json
    4. train        a small ResNet-18 on random patches with flips
    5. evaluate     centre-crop and ten-crop accuracy on the test split
    and WORKDIR/preview.png, a grid of the training patches the network sees.

    Each step is printed as the command that does it, so it can be rerun by hand. Running the
    demo again replaces its earlier results.
    """
    import_keras_quietly()  # before the dump, split and build: the demo ends by training
    work = Path(workdir)
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists() and not force:
        raise click.UsageError(
            f"{work} is not empty and was not made by 'dsprep demo'; "
            "choose another WORKDIR or use --force"
        )
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by dsprep demo; its sub-folders are replaced on every run\n")
    crop = size * 7 // 8
    w = work.as_posix()
    started = time.perf_counter()
    _run(ctx, ["sample-dump", f"{w}/dump", "--layout", "prefix", "--per-class", str(per_class),
               "--with-bad-files", "--seed", str(seed), "--force"])
    _run(ctx, ["split", f"{w}/dump/train", f"{w}/split", "--ratios", "0.7,0.15,0.15",
               "--min-size", "32", "--seed", str(seed), "--force"])
    _run(ctx, ["build-hdf5", f"{w}/split", f"{w}/hdf5", "--size", str(size), "--seed", str(seed),
               "--force"])
    _run(ctx, ["train", f"{w}/hdf5", f"{w}/run", "--model", "resnet18", "--width", "16",
               "--crop", str(crop), "--augment", "flip", "--optimizer", "adam", "--lr", "0.002",
               "--batch-size", "32", "--epochs", str(epochs), "--seed", str(seed), "--force"])
    _run(ctx, ["evaluate", f"{w}/run", f"{w}/hdf5/test.hdf5", "--ten-crop"])

    from ..demo import write_preview

    preview = write_preview(work / "hdf5" / "train.hdf5", work / "hdf5" / "means.json",
                            work / "preview.png", (crop, crop), seed=seed)
    say("")
    say(f"Done in {time.perf_counter() - started:.0f} s. Look at:")
    for path, what in (
        (preview, "training patches after flips, random patch and mean subtraction"),
        (work / "run" / "curves.png", "loss and accuracy per epoch"),
        (work / "run" / "confusion-test-center.png", "test confusion matrix"),
        (work / "split" / "skipped.csv", "files left out, with reasons"),
    ):
        say(f"  {path}  {what}")
