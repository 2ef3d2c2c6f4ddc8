"""``dsprep build-hdf5``, ``info``, ``verify`` and ``means``: the HDF5 stage and its companions."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import click

from ..errors import DatasetFormatError, DestinationExistsError, UsageError
from ._common import PathArg, count_of, format_table, say, show_progress

# images.INTERPOLATIONS, written out so that --help loads no OpenCV (a test keeps them equal).
_INTERPOLATIONS = ("auto", "nearest", "linear", "area", "cubic", "lanczos")
# build.SEED_MAX, without loading the build stage (OpenCV, h5py) before the command runs.
_SEED_MAX = 2**63 - 1


@click.command("build-hdf5")
@click.argument("src", type=PathArg(exists=True))
@click.argument("out", type=PathArg(file_okay=False))
@click.option("--name", metavar="NAME",
              help="SRC is one folder of class sub-folders (not a split): write OUT/NAME.hdf5 "
                   "and OUT/NAME.skipped.csv (and OUT/means.json when NAME is train). Its "
                   "class ids follow OUT/train.hdf5 (or the dsprep files already in OUT) when "
                   "its classes are among theirs.")
@click.option("--size", default="256", show_default=True, metavar="N|HxW",
              help="Stored image size: N for NxN, or HEIGHTxWIDTH such as 256x192.")
@click.option("--resize", "resize_mode", type=click.Choice(["crop", "stretch", "pad"]),
              default="crop", show_default=True,
              help="crop: shorter side to size, then centre crop (keeps the aspect ratio); "
                   "stretch: plain resize; pad: fit inside and letterbox on black.")
@click.option("--interpolation", type=click.Choice(_INTERPOLATIONS), default="auto",
              show_default=True,
              help="Resampling filter; auto is area when shrinking and cubic when enlarging.")
@click.option("--exact", is_flag=True,
              help="Always decode at full resolution before resizing. By default a JPEG much "
                   "larger than --size is decoded at 1/2, 1/4 or 1/8 scale first: faster, and "
                   "close to the full decode (about 35 dB PSNR or more).")
@click.option("--max-pixels", type=click.IntRange(min=0), default=None,
              help="Skip images with more pixels than this (decompression bombs); 0: no limit "
                   "[default: the limit SRC's split applied (its split --max-pixels), else "
                   "89478485].")
@click.option("--order", type=click.Choice(["shuffled", "sorted"]), default="shuffled",
              show_default=True,
              help="Row order: shuffled with --seed (batches mix classes) or sorted by class "
                   "and file name (dsprep train then draws each batch from anywhere in the "
                   "file, a little slower).")
@click.option("--seed", type=click.IntRange(0, _SEED_MAX), default=0, show_default=True,
              help="Seed of the row shuffle.")
@click.option("--chunk-images", type=click.IntRange(min=1), default=None,
              help="Images per HDF5 chunk [default: 64 uncompressed, 8 with lzf/gzip: measured "
                   "fastest to write, and keeps random row reads fast].")
@click.option("--compression", type=click.Choice(["none", "lzf", "gzip"]), default="none",
              show_default=True, help="HDF5 compression of the pixels (smaller, slower).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decoding processes [default: one per core this job may use, a container's CPU "
                   "quota included, as many as /dev/shm has room for]; 1 decodes in this "
                   "process.")
@click.option("--force", is_flag=True, help="Replace output files that already exist.")
def build_hdf5(src, out, name, size, resize_mode, interpolation, exact, max_pixels, order, seed,
               chunk_images, compression, workers, force) -> None:
    """Decode, resize and store the images of SRC as chunked HDF5 files in OUT.

    SRC is a split folder from 'dsprep split' (writes OUT/train.hdf5, val.hdf5, test.hdf5 and
    OUT/means.json from train), a dump already split into train/ val/ test/ folders of class
    sub-folders (valid/, testing/ and the like count too), or with --name one folder of class
    sub-folders. Bad images are skipped and listed in OUT/skipped.csv (OUT/NAME.skipped.csv
    with --name).
    """
    from ..build import AttentionNote, BuildOptions
    from ..build import build_hdf5 as run_build
    from ..images import DEFAULT_MAX_PIXELS, parse_size
    from ..split import split_pixel_limit

    if not Path(src).is_dir():
        # An archive is read in place by split, not here: say so rather than "is a file".
        archive = (" (a .zip: 'dsprep split' reads it in place, then build from its DEST)"
                   if zipfile.is_zipfile(src) else "")
        raise click.BadParameter(f"{src!r} is a file, not a folder{archive}",
                                 param_hint="'SRC'")
    if max_pixels is None:  # a split folder's images are read with the limit the split applied
        limit = split_pixel_limit(src)
        if limit != DEFAULT_MAX_PIXELS:
            said = f"{limit:,}" if limit else "0 (no limit)"
            split = Path(src).resolve()
            split = split if (split / "split.json").is_file() else split.parent
            say(f"note: --max-pixels {said}, the limit the split {split} applied")
        max_pixels = limit or 0
    options = BuildOptions(
        size=parse_size(size), resize=resize_mode,
        interpolation=None if interpolation == "auto" else interpolation, exact=exact,
        max_pixels=max_pixels or None, order=order, seed=seed, chunk_images=chunk_images,
        compression=compression, workers=workers,
    )
    report = run_build(src, out, options, name=name, force=force, progress=show_progress())
    for note in report.notes:
        # Those that ask for attention (a file not built, a class missing) on stderr, which
        # -q keeps, as split's.
        say(f"note: {note}", err=isinstance(note, AttentionNote))
    if report.up_to_date:
        say(f"{out} already holds this build of {src} (the same split and options): nothing "
            "to do; --force builds it again")
        for warning in report.warnings:  # what the files lack stays worth saying
            say(f"warning: {warning}", err=True)
        return
    for warning in report.warnings:
        say(f"warning: {warning}", err=True)
    for f in report.files:
        skipped = f", {len(f.skipped)} skipped" if f.skipped else ""
        say(f"{f.path}: {f.count} images{skipped} in {f.seconds:.1f} s ({f.rate:.0f} images/s)")
    if report.means_path is not None:
        train = next(f for f in report.files if f.split == "train")
        r, g, b = train.stats.mean
        say(f"{report.means_path}: mean R={r:.2f} G={g:.2f} B={b:.2f}")
    skipped = report.skipped
    if skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(s.reason for s in skipped)
                                                          .items()))
        say(f"{report.skipped_path}: {count_of(len(skipped), 'image')} skipped ({reasons})")


@click.command()
@click.argument("file", type=PathArg(exists=True, dir_okay=False))
def info(file: str) -> None:
    """Describe a dsprep HDF5 FILE: layout, size, classes, attributes and means.

    The description is the command's answer: -q does not hide it.
    """
    from ..store import describe

    d = describe(file)
    click.echo(f"{d['path']}  ({d['size_bytes'] / 1e6:.1f} MB on disk)")
    click.echo(f"  schema       {d['attrs'].get('schema', '(none)')}")
    click.echo(f"  images       {d['dtype']} {d['shape']}")
    click.echo(f"  chunks       {d['chunks'] or 'contiguous'}")
    opts = f" ({d['compression_opts']})" if d["compression_opts"] is not None else ""
    click.echo(f"  compression  {d['compression']}{opts}")
    classes = count_of(len(d["classes"]), "class", "classes")
    click.echo(f"  labels       {d['label_dtype']}, {classes}")
    if d["mean_rgb"] is not None:
        r, g, b = d["mean_rgb"]
        click.echo(f"  mean RGB     {r:.3f} {g:.3f} {b:.3f}")
    click.echo("")
    click.echo(format_table([[n, c] for n, c in d["classes"]], ["class", "images"]))
    if d["unlabelled"]:
        click.echo(f"note: {count_of(d['unlabelled'], 'row')} with a label outside "
                   f"0..{len(d['classes']) - 1}, in no class above; 'dsprep verify' says more",
                   err=True)
    click.echo("")
    shown = {k: v for k, v in sorted(d["attrs"].items()) if k not in ("schema", "mean_rgb")}
    click.echo(format_table([[k, _short(v)] for k, v in shown.items()], ["attribute", "value"],
                     text=True))


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and value and isinstance(value[0], float):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return str(value)


@click.command()
@click.argument("file", type=PathArg(exists=True, dir_okay=False))
@click.option("--sources", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="N",
              help="Also decode N random source images again (found under the file's "
                   "source_root) and compare them with the stored pixels.")
@click.option("--seed", type=click.IntRange(0, _SEED_MAX), default=0, show_default=True,
              help="Seed for choosing the rows checked with --sources.")
@click.option("--source-root", type=PathArg(file_okay=False), default=None, metavar="DIR",
              help="Where the sources are now, if they moved since the build (the folder "
                   "that was SRC of build-hdf5).")
@click.option("--quick", is_flag=True,
              help="Leave the pixels unread: check the structure and attributes only.")
def verify(file: str, sources: int, seed: int, source_root: str | None, quick: bool) -> None:
    """Check a dsprep HDF5 FILE: schema, attributes, label range; every image readable and the
    stored means those of the pixels; optionally, sources decoded again.

    Exits with 1 and lists the problems when anything is off. An uncompressed file has no
    checksum: pixel damage shows only as far as it moves the means, or in the rows --sources
    re-decodes (a gzip file's chunks are checked as they decompress).
    """
    from ..build import check_sources
    from ..store import check_file, check_pixels, open_dataset

    problems = check_file(file)
    if not quick:
        problems += check_pixels(file, progress=show_progress())
    source_problems = []
    if sources:
        source_problems = check_sources(file, sources, seed, source_root)
        with open_dataset(file) as db:
            sources = min(sources, int(db["images"].shape[0]))
    for problem in problems + source_problems:
        click.echo(f"  {problem}", err=True)
    if problems:
        raise click.ClickException(
            f"{file}: {len(problems) + len(source_problems)} problem(s) found; rebuild it with "
            "'dsprep build-hdf5'"
        )
    if source_problems:
        problems_ = count_of(len(source_problems), "problem")
        if quick:  # the pixels were not read: a damaged file looks the same from here
            raise click.ClickException(
                f"{file}: {problems_} with its sources (above), and its pixels unread "
                "(--quick); verify it without --quick to tell a damaged file from sources "
                "that moved or changed")
        # The file reads whole; its sources moved, went or changed since the build (or its
        # pixels were altered within what the means show).
        moved = ("check the --source-root given" if source_root is not None
                 else "give --source-root")
        raise click.ClickException(
            f"{file} reads whole, but {problems_} with its sources (above); if they moved, "
            f"{moved}; if they changed since the build, rebuild it"
        )
    checked = "" if quick else ", every image read"
    checked += f", {count_of(sources, 'source')} re-decoded" if sources else ""
    say(f"{file}: ok{checked}")


@click.command()
@click.argument("file", type=PathArg(exists=True, dir_okay=False))
@click.option("-o", "--output", type=PathArg(dir_okay=False), default=None, metavar="JSON",
              help="Write the result as a means.json here instead of printing it.")
@click.option("--force", is_flag=True, help="Replace the -o file if it exists.")
def means(file: str, output: str | None, force: bool) -> None:
    """Recompute the per-channel mean and std of a dsprep HDF5 FILE, reading it in blocks."""
    import os

    import h5py

    from ..stats import means_record, write_means
    from ..store import channel_stats

    if output and os.path.lexists(output):  # a dangling link too: it names a file
        if os.path.exists(output) and os.path.samefile(output, file):
            raise UsageError(f"-o {output} is FILE itself; give another path for the means")
        if os.path.isfile(output) and h5py.is_hdf5(output):
            raise UsageError(f"-o {output} is an HDF5 file; the means go to a .json file")
        if not force:
            raise DestinationExistsError(f"{output} exists; use --force to replace it")
    stats = channel_stats(file, progress=show_progress())
    if stats.pixels == 0:
        raise DatasetFormatError(f"{file} holds no images, so it has no means; build it from "
                                 "a split with images")
    record = means_record(stats, Path(file).name)
    if output and Path(output).name == "means.json":
        with h5py.File(file, "r") as db:
            split = db.attrs.get("split")
        if isinstance(split, str) and split != "train":
            # train and evaluate subtract a build's means.json: the training split's alone.
            say(f"warning: {output} is where a build keeps its training split's means, which "
                f"train subtracts; these are of {file}, the {split} split", err=True)
    if output:
        write_means(output, record)
        say(f"{output}: R={record['R']:.3f} G={record['G']:.3f} B={record['B']:.3f} "
            f"from {record['count']} images")
    else:
        click.echo(json.dumps(record, indent=2))
