"""``dsprep split``: lay out train/val/test class folders from a dump."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..fileio import quoted
from ..images import DEFAULT_MAX_PIXELS
from ..sources import LAYOUTS, MASK, own_split_folders
from ..split import (
    DEFAULT_RATIOS,
    DEFAULT_SEED,
    MODES,
    VERIFY,
    SplitOptions,
    check_run,
    check_unchanged,
    plan,
    run,
)
from ._common import PathArg, count_of, format_table, say, show_progress


def _numbers(text: str | None, kind, option: str) -> tuple | None:
    if text is None:
        return None
    try:
        # An empty part (0.8,,0.2) is an error, not a split left out.
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        example = "0.8,0.1,0.1" if kind is float else "1000,500,500"
        raise UsageError(f"{option} {text!r} is not a comma-separated list of numbers, "
                         f"e.g. {example}") from None


def _column(text: str | None) -> str | int | None:
    return int(text) if text is not None and text.strip().isdigit() else text


@click.command()
@click.argument("src", type=PathArg(exists=True))
@click.argument("dest", type=PathArg())
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
              help="How labels are found: folders (SRC/<class>/<image>), prefix (cat.0.jpg: "
                   "the class is the name before the first dot), csv (a labels file), or auto "
                   "(csv when --labels or a column is given or a CSV at the top labels the "
                   "images, the one that labels most of several, prefix when file names carry "
                   "the classes, else folders).")
@click.option("--pattern", metavar="REGEX",
              help="Prefix layout: a regular expression with a named group 'label', matched "
                   r"at the start of each file name, e.g. '(?P<label>.+)_\d+\.jpg'.")
@click.option("--labels", metavar="FILE",
              help="CSV layout: the labels CSV, inside SRC or anywhere on disk (default: the "
                   "one CSV at the top of SRC).")
@click.option("--id-column", metavar="NAME|N",
              help="CSV column of the image ids (header name or 0-based index; default: a "
                   "column named id/file/image... whose values name the most images, else the "
                   "first column other than the labels).")
@click.option("--label-column", metavar="NAME|N",
              help="CSV column of the labels (header name or 0-based index; default: a column "
                   "named label/class/breed..., else one-hot columns of 0/1 named by class, "
                   "else the second).")
@click.option("--group-column", metavar="NAME|N",
              help="CSV column naming what several images share (a patient, a lesion, a "
                   "source image, e.g. HAM10000's lesion_id): each group's images all go to "
                   "one split, so that the scores on val and test are not flattered by images "
                   "of what was trained on. The splits then follow the ratios as closely as "
                   "the groups allow.")
@click.option("--ratios", metavar="TRAIN,VAL[,TEST]",
              help="Fractions per class adding up to 1, give or take 0.01 (0.333,0.333,0.333 is "
                   "thirds; default 0.8,0.1,0.1; two numbers make train and val only). Rounded "
                   "by largest remainder: totals always add up.")
@click.option("--counts", metavar="TRAIN,VAL[,TEST]",
              help="Images per class for each split instead of ratios, e.g. 1000,500,500.")
@click.option("--limit-per-class", type=click.IntRange(min=1), metavar="N",
              help="First take a reproducible random subset of N images per class.")
@click.option("--min-size", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="PX", help="Leave out images smaller than PX on either side.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS,
              show_default=True, metavar="N",
              help="Leave out images of more pixels than N (too-large: a guard against "
                   "decompression bombs); 0 for no limit. build-hdf5 and train read the split's "
                   "folders with the same limit.")
@click.option("--verify", type=click.Choice(VERIFY), default="header", show_default=True,
              help="header: read the dimensions from the header and check the file is not "
                   "cut short (fast); full: also decode every image, which finds damage inside "
                   "the compressed data too (build-hdf5 decodes them anyway, and skips those).")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULT_SEED, show_default=True,
              help="Seed of the shuffles; the same SRC, options and seed give the same split.")
@click.option("--mode", type=click.Choice(MODES), default="copy", show_default=True,
              help="How files are placed; hardlink falls back to copy across devices.")
@click.option("--force", is_flag=True,
              help="Replace DEST whatever it holds: a split with other options, or this split "
                   "after SRC changed (its images then move between train/val/test); rebuilds "
                   "even this same split (to repair damaged or missing files).")
@click.option("--dry-run", is_flag=True,
              help="Print the per-class, per-split table and what would be left out; write "
                   "nothing.")
def split(src: str, dest: str, layout: str, pattern: str | None, labels: str | None,
          id_column: str | None, label_column: str | None, group_column: str | None,
          ratios: str | None,
          counts: str | None, limit_per_class: int | None, min_size: int, max_pixels: int,
          verify: str,
          seed: int, mode: str, force: bool, dry_run: bool) -> None:
    """Split the labelled images in SRC into DEST/train, DEST/val and DEST/test class folders.

    SRC is a folder or a .zip archive (read in place). Image files (.jpg, .png, ...) that are
    not images, cut short or unreadable (with --verify full: that do not decode), too small,
    exact duplicates or unlabelled are left out and listed in DEST/skipped.csv; other files
    (notes, annotations) are not looked at.
    DEST/files.csv lists every placed file and DEST/split.json (written last) the parameters
    and counts. Running the same command again after an interruption completes the split;
    after SRC changed, it is refused without --force.
    """
    options = SplitOptions(
        layout=layout, pattern=pattern, labels=labels, id_column=_column(id_column),
        label_column=_column(label_column), group_column=_column(group_column),
        ratios=_numbers(ratios, float, "--ratios"),
        counts=_numbers(counts, int, "--counts"), limit_per_class=limit_per_class,
        min_size=min_size, max_pixels=max_pixels, verify=verify, seed=seed)
    if dry_run:
        check_run(src, dest, options, mode, force=force)  # what the real run would refuse
        split_plan = plan(src, options, progress=show_progress(), dest=dest)
        check_unchanged(split_plan, dest, mode, force=force)
    else:
        split_plan, result = run(src, dest, options, mode=mode, force=force,
                                 progress=show_progress())
    counts_by_split = split_plan.counts()
    rows = [[label] + [counts_by_split[s][label] for s in split_plan.splits]
            + [sum(counts_by_split[s][label] for s in split_plan.splits)]
            for label in split_plan.classes]
    rows.append(["total"] + [sum(counts_by_split[s].values()) for s in split_plan.splits]
                + [len(split_plan.files)])
    where = f" (inside {split_plan.root})" if split_plan.root else ""
    classes = count_of(len(split_plan.classes), "class", "classes")
    labels = (f" ({split_plan.labels_file}: {split_plan.labels_columns})"
              if split_plan.labels_columns else "")
    say(f"{src}{where}: {split_plan.layout} layout{labels}, {classes}, seed {seed}")
    for warning in split_plan.warnings():
        say(f"warning: {warning}", err=True)
    # The dump's split folders holding class folders (not Plant Seedlings' test/ of unlabelled
    # images): one alone is split as any folder of classes is.
    if len(split_plan.split_folders) == 1:
        say(f"note: of the dump's split folders, {split_plan.split_folders[0]}/ alone holds "
            "class folders; its images are split here")
    elif split_plan.split_folders:
        folders = ", ".join(f"{f}/" for f in split_plan.split_folders)
        say(f"note: the dump is already split ({folders}); their images are pooled by class "
            "and split again here")
        inside = Path(src) / split_plan.root
        try:
            own = own_split_folders(inside, []) if inside.is_dir() else {}
        except UsageError:
            own = {}
        if own:
            # Without a val folder of its own, the README's route keeps its test set and
            # makes a val split from its train folder.
            val = ("" if "val" in own or "train" not in own or "test" not in own else
                   f" (no val split then; for one, split {quoted(own['train'])} alone with two "
                   f"--ratios, and build {quoted(own['test'])} on its own with --name test)")
            say(f"note: to keep its own splits instead, build them as they are: "
                f"dsprep build-hdf5 {quoted(inside)} OUT{val}")
        elif not Path(src).is_dir():
            say(f"note: to keep its own splits instead, extract {src} and build the folder "
                "as it is with dsprep build-hdf5")
    masks = [s for s in split_plan.skipped if s.reason == MASK]
    if masks:
        say(f"note: class folders hold their images in a folder beside folders of masks or "
            f"annotations (e.g. {masks[0].source}: {masks[0].detail}): the images are split, "
            f"and the {count_of(len(masks), 'file')} of the other folders left out (mask)")
    if split_plan.class_copy:
        copy = Path(src) / split_plan.root / split_plan.class_copy
        say(f"note: {copy}/ holds a copy of the class folders; its images are "
            "labelled by the class folders inside it, and those the same as one outside it "
            "are left out as duplicates")
        if split_plan.copy_variants:
            say(f"warning: {copy}/ holds {count_of(split_plan.copy_variants, 'file')} under "
                "the path of an image outside it, with other content (augmented variants?): "
                "each is placed as an image of its own, so an image and its variant may land "
                f"in different splits. If {copy}/ holds variants, move it out of the dump and "
                "split again", err=True)
    answer = click.echo if dry_run else say  # a dry run's plan is its answer, even with -q
    answer(format_table(rows, ["class", *split_plan.splits, "all"]))
    asked = options.counts or options.ratios or DEFAULT_RATIOS
    option = ("--counts " if options.counts else "--ratios ") + ",".join(f"{v:g}" for v in asked)
    if options.counts is None and options.ratios is None:
        option += " (the default)"
    most = max(sum(counts_by_split[s][c] for s in split_plan.splits) for c in split_plan.classes)
    for split_name, share in zip(split_plan.splits, asked, strict=True):
        empty = [c for c in split_plan.classes if counts_by_split[split_name][c] == 0]
        few = (f"too few groups of --group-column {split_plan.group_column}, or too large"
               if split_plan.group_given else "too few images")
        if empty and any(counts_by_split[split_name].values()):
            say(f"note: no {split_name} images of {', '.join(empty)} ({few}; see the table)")
        elif empty:
            # A split empty in every class is easily missed in the table, and fails whatever
            # trains or evaluates on it; on stderr, so that -q still shows it.
            why = (f"{option} gives it none" if share == 0 else
                   f"{few} for {option}; give {split_name} a larger share, or use more "
                   "images" if split_plan.group_given else
                   f"too few images per class (at most {most}) for {option}; give "
                   f"{split_name} a larger share, or use more images")
            say(f"note: no {split_name} images in any class: {why}", err=True)
    reasons = split_plan.skipped_reasons()
    if reasons:
        answer(f"left out {sum(reasons.values())}: "
               + ", ".join(f"{n} {reason}" for reason, n in reasons.items()))
    if dry_run:
        say("dry run: nothing written")
    elif result.already_complete:
        say(f"{dest} already holds this split; nothing to do")
    elif result.skipped_changed:
        say(f"{dest} already holds this split's files; only the files left out changed: "
            "skipped.csv and split.json written again")
    else:
        note = f", {result.reused} already in place from an interrupted run" if result.reused \
            else ""
        say(f"placed {result.placed} files in {dest} ({mode}{note})")
        if result.copied_instead:
            # On stderr: -q still shows that the split takes the room of a copy.
            one = result.copied_instead == 1
            say(f"note: {count_of(result.copied_instead, 'hard link')} "
                f"{'was' if one else 'were'} not possible (another device) and "
                f"{'was' if one else 'were'} copied instead", err=True)
        say(f"manifests: {dest}/split.json, files.csv, skipped.csv")
    if not dry_run:
        for note in result.notes:
            say(f"warning: {note}", err=True)

