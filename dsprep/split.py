"""Plan a reproducible, stratified train/val/test split of a dump, and place it on disk.

:func:`plan` reads each file once (content hash and image check from the same bytes) and writes
nothing; :func:`materialize` copies or links the planned files and writes the manifests
(docs/formats.md, "Split folder"), ``split.json`` last, so a folder is either a finished split
or not one at all.
:func:`run` does both in one call, and in copy mode reads each file only once.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import stat
import sys
import threading
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral
from pathlib import Path, PurePosixPath

import numpy as np

from . import __version__, images, system
from .errors import (
    CorruptImageError,
    DatasetFormatError,
    DestinationExistsError,
    EmptyImageError,
    ImageTooLargeError,
    LayoutError,
    SplitError,
    UsageError,
    as_integer,
    whole_number,
)
from .fileio import (
    access_denied,
    csv_text,
    exclusive,
    naming,
    progress_bar,
    quoted,
    refuse_dangling_link,
    refuse_empty_path,
    refuse_under_a_file,
    sibling,
    write_atomic,
)
from .sources import (
    BAD_LABEL,
    BAD_NAME,
    DUPLICATE,
    IGNORED_FOLDERS,
    IGNORED_NAMES,
    IMAGE_PARTS,
    LABEL_CONFLICT,
    NOT_UTF8_NAME,
    PART_NAMES,
    UNREADABLE,
    Inventory,
    Skipped,
    chunk_folders,
    find_images,
    is_submission_template,
    open_source,
    own_split_folders,
    part_name,
    presplit_folders,
    split_of,
    visible_folders,
)

SCHEMA = "dsprep-split/1"
SPLITS = ("train", "val", "test")
MODES = ("copy", "hardlink", "symlink")
VERIFY = ("header", "full")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
RATIO_SLACK = 0.01 + 1e-9  # how far from 1 the ratios may add up (rounded decimals)
DEFAULT_SEED = 1337
MANIFEST = "split.json"
FILES_CSV = "files.csv"
SKIPPED_CSV = "skipped.csv"
FILES_COLUMNS = ("split", "class", "path", "source", "sha256", "width", "height")
SKIPPED_COLUMNS = ("source", "reason", "detail")
_MARKER = ".dsprep-split-in-progress.json"
_PART = ".part"
_STAGING = ".staging"  # hidden: nothing takes it for a split or a class folder

# Reasons added here to those of dsprep.sources.
EMPTY = "empty"
NOT_AN_IMAGE = "not-an-image"
TOO_LARGE = "too-large"
TOO_SMALL = "too-small"
NOT_SELECTED = "not-selected"


@dataclass(frozen=True)
class SplitOptions:
    """Everything that decides a split (the seed included); stored in ``split.json``.

    Attributes:
        layout: "auto", "folders", "prefix" or "csv" (see :func:`dsprep.sources.find_images`).
        pattern: regular expression with a group ``label`` for the prefix layout.
        labels: the labels CSV for the csv layout.
        id_column: CSV column of the ids (header name or 0-based index).
        label_column: CSV column of the labels (header name or 0-based index).
        group_column: CSV column naming what several images share (a patient, a lesion, a
            source image): the images of one group all go to one split, so that none of
            them is in train while another is in val or test.
        ratios: (train, val[, test]) fractions adding up to 1 (within 0.01, taken as
            proportions); default 0.8, 0.1, 0.1.
        counts: (train, val[, test]) images per class, instead of ratios.
        limit_per_class: keep a reproducible random subset of at most this many per class first.
        min_size: leave out images smaller than this on either side, in pixels.
        max_pixels: leave out images of more pixels than this (a decompression bomb guard,
            as build-hdf5's --max-pixels); 0: no limit.
        verify: "header" reads the dimensions from the header (and checks the file is not cut
            short), "full" decodes every image.
        seed: the seed of every random choice.
    """

    layout: str = "auto"
    pattern: str | None = None
    labels: str | None = None
    id_column: str | int | None = None
    label_column: str | int | None = None
    group_column: str | int | None = None
    ratios: tuple[float, ...] | None = None
    counts: tuple[int, ...] | None = None
    limit_per_class: int | None = None
    min_size: int = 0
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    verify: str = "header"
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.ratios is not None and self.counts is not None:
            raise UsageError("give --ratios or --counts, not both")
        # An option the chosen layout does not read would be ignored without a word.
        if self.layout in ("folders", "prefix"):
            for value, option in ((self.labels, "--labels"), (self.id_column, "--id-column"),
                                  (self.label_column, "--label-column"),
                                  (self.group_column, "--group-column")):
                if value is not None:
                    raise UsageError(f"{option} is for the csv layout, not --layout "
                                     f"{self.layout}")
        if self.layout in ("folders", "csv") and self.pattern is not None:
            raise UsageError(f"--pattern is for the prefix layout, not --layout {self.layout}")
        if self.ratios is not None:
            ratios = tuple(float(r) for r in self.ratios)
            object.__setattr__(self, "ratios", ratios)
            # nan compares false with everything, so test finiteness before the sign and sum.
            if (len(ratios) not in (2, 3) or not all(math.isfinite(r) for r in ratios)
                    or min(ratios) < 0):
                raise UsageError(f"ratios {_join(ratios)} must be 2 or 3 numbers, finite and "
                                 ">= 0 (train,val[,test]), e.g. 0.8,0.1,0.1")
            # Rounded thirds (0.333,0.333,0.333) are meant as thirds: a sum within 0.01 of 1 is
            # taken as the proportions it gives (allocate divides by the sum).
            if abs(sum(ratios) - 1.0) > RATIO_SLACK:
                raise UsageError(f"ratios {_join(ratios)} add up to {sum(ratios):g}, not 1; "
                                 "e.g. 0.8,0.1,0.1 or 0.9,0.1")
        if self.counts is not None:
            counts = tuple(as_integer(c) for c in self.counts)
            if len(counts) not in (2, 3) or None in counts or min(counts) < 0:
                # 10.9 is refused, not cut to 10 and written to split.json as what was asked.
                raise UsageError(f"counts {tuple(self.counts)!r} must be 2 or 3 whole numbers >= 0 "
                                 "(train,val[,test] per class), e.g. 1000,500,500")
            object.__setattr__(self, "counts", counts)
            if not any(counts):
                raise UsageError(f"counts {_join(counts)} place no image; give at least one "
                                 "count above 0 (train,val[,test] per class), e.g. 1000,500,500")
        if self.limit_per_class is not None:
            object.__setattr__(self, "limit_per_class",
                               whole_number(self.limit_per_class, "limit_per_class", 1))
        object.__setattr__(self, "min_size", whole_number(self.min_size, "min_size"))
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, Integral) \
                or self.max_pixels < 0:
            raise UsageError(f"max_pixels must be a whole number, 0 (no limit) or more, got "
                             f"{self.max_pixels!r}")
        object.__setattr__(self, "max_pixels", int(self.max_pixels))  # numpy ints too (JSON)
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or self.seed < 0:
            raise UsageError(f"seed {self.seed!r} must be a whole number >= 0 (numpy's "
                             f"generators refuse negative seeds), e.g. {DEFAULT_SEED}")
        if self.verify not in VERIFY:
            raise UsageError(f"verify {self.verify!r} is not one of {', '.join(VERIFY)}")

    @property
    def splits(self) -> tuple[str, ...]:
        """The split folders this split makes (two numbers: train and val only)."""
        given = self.counts if self.counts is not None else (self.ratios or DEFAULT_RATIOS)
        return SPLITS[: len(given)]

    def params(self) -> dict:
        """The options as plain JSON values, with defaults filled in."""
        params = asdict(self)
        if self.counts is None and self.ratios is None:
            params["ratios"] = list(DEFAULT_RATIOS)
        if self.max_pixels == images.DEFAULT_MAX_PIXELS:
            del params["max_pixels"]  # as split.json had it before the option: the same split
        if self.group_column is None:
            del params["group_column"]  # likewise
        return json.loads(json.dumps(params))


# Images smaller than this on a side are said (placeholders), unless --min-size leaves them out.
TINY_SIDE = 8


def _join(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


@dataclass(frozen=True)
class PlannedFile:
    """One file to place: where from, where to, and what it is."""

    split: str
    label: str
    path: str  # relative to the split folder, e.g. "train/cat/cat.0.jpg"
    source: str  # relative to the dump
    sha256: str
    width: int
    height: int
    size: int


@dataclass
class SplitPlan:
    """What :func:`plan` decided; :func:`materialize` writes it.

    Attributes:
        source: the dump (absolute path).
        layout: the layout used; root: the folder inside the dump it applies to.
        options: the options that decided it.
        classes: sorted class names (label ids 0..C-1).
        files: the files to place, in manifest order.
        skipped: the files and rows left out, with reasons.
        split_folders: the dump's own split folders, pooled (see ``sources.Inventory``).
        lost_classes: labels found in the dump whose every image was left out (so they are
            not classes of the split).
        labels_columns: for the csv layout, the labels file's id and label columns, in words.
        labels_guessed: the label column was taken by its place (see ``sources.Inventory``).
        labels_doubt: a warning about that column (see ``sources.Inventory``).
        class_copy: the dump's folder holding a copy of its class folders (see
            ``sources.Inventory``).
        copy_variants: files of ``class_copy`` whose path outside it holds other content
            (augmented variants, it may be): placed as images of their own.
        linked: the real paths of folders the dump reaches through links (no split may go
            inside them).
        unnamed: folders left out that may hold images without extensions (see
            ``sources.Inventory``).
        group_column: the labels CSV's column of the images' groups, given or found by its
            name (see ``sources.Inventory``); group_given: given, so each group is in one
            split.
        groups: how many groups hold two placed images or more, and how many of those lie
            in more than one split.
    """

    source: Path
    layout: str
    root: str
    options: SplitOptions
    classes: list[str]
    files: list[PlannedFile]
    skipped: list[Skipped] = field(default_factory=list)
    labels_file: str | None = None
    split_folders: list[str] = field(default_factory=list)
    lost_classes: list[str] = field(default_factory=list)
    labels_columns: str | None = None
    labels_guessed: bool = False
    labels_doubt: str | None = None
    class_copy: str | None = None
    copy_variants: int = 0
    linked: list[str] = field(default_factory=list)
    unnamed: list[tuple[str, int, str]] = field(default_factory=list)
    group_column: str | None = None
    group_given: bool = False
    groups: tuple[int, int] = (0, 0)

    @property
    def splits(self) -> tuple[str, ...]:
        return self.options.splits

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class (zeros included)."""
        counts = {s: dict.fromkeys(self.classes, 0) for s in self.splits}
        for f in self.files:
            counts[f.split][f.label] += 1
        return counts

    def warnings(self) -> list[str]:
        """What a user should look at before training on this split, in words."""
        found = []
        if self.lost_classes:
            found.append(f"every image of {', '.join(self.lost_classes)} was left out, so "
                         f"{'it is' if len(self.lost_classes) == 1 else 'they are'} not among "
                         "the classes; see skipped.csv (or the reasons below)")
        stray = self._stray_labels_file()
        if stray:
            found.append(stray)
        tiny = [f for f in self.files if min(f.width, f.height) < TINY_SIDE]
        if tiny and self.options.min_size < TINY_SIDE:
            # Placeholders and tracking pixels (1x1) left in scraped dumps: each would be
            # blown up into a flat image of one colour, with its class's label.
            n, first = len(tiny), tiny[0]
            found.append(f"{n} image{'s are' if n != 1 else ' is'} smaller than {TINY_SIDE} "
                         f"pixels on a side, e.g. {first.source} ({first.width}x{first.height}):"
                         f" placeholders? --min-size {TINY_SIDE} leaves "
                         f"{'them' if n != 1 else 'it'} out")
        if self.labels_doubt:
            found.append(self.labels_doubt)
        if (self.layout == "folders" and not self.split_folders and self.classes
                and all(split_of(re.sub(r"\d+$", "", c)) for c in self.classes)):
            found.append(f"every class is named as a split ({', '.join(self.classes)}): if "
                         f"{self.source} is split into folders of unlabelled images, these are "
                         "no classes; label the images with a CSV (--layout csv --labels FILE) "
                         "or by their file names (--layout prefix)")
        found += class_name_warnings(self.classes)
        found += self._folder_warnings()
        masks = self._masks_beside_warning()
        if masks:
            found.append(masks)
        pooled = self._csv_over_split_warning()
        if pooled:
            found.append(pooled)
        for folder, n, first in self.unnamed:
            found.append(f"{folder}/ is left out: it holds no image file, but {n} "
                         f"file{'s' * (n != 1)} without an extension ({first} begins as an "
                         "image does); split takes images by their extension: rename "
                         f"{'them' if n != 1 else 'it'} with {'theirs' if n != 1 else 'its'} "
                         f"(.jpg, .png, ...) to keep {'them' if n != 1 else 'it'}")
        unreadable = [s for s in self.skipped if s.reason == UNREADABLE]
        if unreadable:
            n = len(unreadable)
            found.append(f"{n} file{'s' if n != 1 else ''} could not be read and "
                         f"{'are' if n != 1 else 'is'} left out, e.g. {unreadable[0].source} "
                         f"({unreadable[0].detail}): if {'they are' if n != 1 else 'it is'} "
                         "to be in the split, make "
                         f"{'them' if n != 1 else 'it'} readable and run the same command "
                         "again, with --force once the split is made (it is then made again: "
                         "build and train again from it); skipped.csv lists each")
        undecodable = [s for s in self.skipped
                       if s.reason == BAD_NAME and s.detail == NOT_UTF8_NAME]
        if undecodable:
            n = len(undecodable)
            found.append(f"{n} image{'s are' if n != 1 else ' is'} left out for a name (of the "
                         f"file or a folder) that is not valid UTF-8, e.g. "
                         f"{undecodable[0].source}: an archive from Windows unpacked in another "
                         "code page, it may be; rename them in UTF-8 (convmv -f cp1252 -t utf8 "
                         "-r, say) to keep them")
        bad = Counter((repr(s.label) if len(s.label) <= 60 else
                       f"{s.label[:40]!r}... ({len(s.label)} characters)")
                      if s.label else "empty label"
                      for s in self.skipped if s.reason == BAD_LABEL)
        if bad:
            shown = ", ".join(f"{label} ({n})" for label, n in bad.most_common(3))
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            slash = " (a '/' to '_', say)" if any("/" in label for label in bad) else ""
            n = sum(bad.values())
            several = ("; labels joined by '|' name several classes each (multi-label data, as "
                       "NIH's chest X-rays), and a split here gives each image one class"
                       if any("|" in label for label in bad) else "")
            found.append(f"{n} image{'s are' if n != 1 else ' is'} left out for labels that "
                         f"cannot be folder names: {shown}{more}; give them labels that can "
                         f"be, in the dump or its CSV{slash}, to keep them; skipped.csv says "
                         f"why for each{several}")
        if self.layout == "csv":
            found += _tag_sets(self.classes)
        found += self._group_warnings()
        if len(self.classes) == 1:
            found.append(f"one class only ({self.classes[0]}): a classifier needs two or more; "
                         + self._one_class_advice())
        return found

    def _one_class_advice(self) -> str:
        """What to do about a split of one class: the dump inside its folder, where it holds
        a split or class folders (Stanford Cars' car_data/car_data/{train,test}/<class>/, or
        EuroSAT's 2750/<class>/, beside CSVs that stopped the step into it), else the CSVs
        beside the images, else the options."""
        root = f"{self.root}/" if self.root else ""
        if self.layout == "folders":
            inside = self._split_inside(root)
            if inside:
                folder, splits = inside
                return (f"{folder}/ holds a dataset split already "
                        f"({', '.join(f'{s}/' for s in splits)}): "
                        f"{self._give_as_src(root, folder)}")
            below = [f.source[len(root):].split("/")[:-1] for f in self.files]
            depth = 1
            while (all(len(p) > depth for p in below)
                   and len({p[depth] for p in below}) == 1):
                depth += 1  # (wrappers inside the class folder: car_data/car_data/)
            names = sorted({p[depth] for p in below if len(p) > depth})
            if len(names) > 1 and all(len(p) > depth for p in below):
                folder = "/".join(below[0][:depth])
                shown = ", ".join(f"{n}/" for n in names[:3]) + (", ..." if len(names) > 3
                                                                 else "")
                return (f"its images lie in {len(names)} folders of {folder}/ ({shown}): if "
                        f"those are the classes, {self._give_as_src(root, folder)}")
        csvs = self._tables_passed_over()
        return (f"if {' or '.join(csvs)} labels the images, give it with --labels" if csvs
                else "check --layout (and --labels / --pattern)")

    def _group_warnings(self) -> list[str]:
        """Groups of images (a patient's, a lesion's) spread over the splits, where the labels
        CSV has a column naming them and it was not given as the group column; with it given,
        classes far off their share in a split (groups too large to share out finely)."""
        many, spread = self.groups
        if not self.group_given:
            if not spread:
                return []
            return [f"{self.labels_file}'s column {self.group_column!r} names groups of "
                    f"images ({many:,} hold two or more), and {spread:,} of those groups lie in "
                    "more than one split: images of one patient or lesion in train and in val "
                    "or test make the scores better than they will be on new ones. If the "
                    "column names a patient, a lesion or a source image, give --group-column "
                    f"{shlex.quote(self.group_column)} to keep each group in one split"]
        counts = self.counts()
        if self.options.counts is not None:
            short = [(s, c, counts[s][c], want) for c in self.classes
                     for s, want in zip(self.splits, self.options.counts, strict=True)
                     if counts[s][c] < want]
            if not short:
                return []
            shown = ", ".join(f"{s} {c} {n} of {want}" for s, c, n, want in short[:3])
            more = f" and {len(short) - 3} more" if len(short) > 3 else ""
            return [f"--group-column {self.group_column} keeps each group in one split, and "
                    f"the groups do not make up --counts {_join(self.options.counts)} "
                    f"exactly: {shown}{more}"]
        # Each class against what its share would be without groups (allocate's), off by more
        # than a quarter of it (and two images): not the rounding of small classes.
        asked = self.options.ratios or DEFAULT_RATIOS
        off = []
        for c in self.classes:
            got = [counts[s][c] for s in self.splits]
            for s, n, want in zip(self.splits, got, allocate(sum(got), asked), strict=True):
                if abs(n - want) > max(2, want / 4):
                    off.append(f"{c} {s} {n} for {want}")
        if not off:
            return []
        more = f" and {len(off) - 3} more" if len(off) > 3 else ""
        return [f"--group-column {self.group_column} keeps each group in one split, and with "
                f"these groups the splits are off --ratios {_join(asked)}: "
                f"{', '.join(off[:3])}{more} (images; see the table)"]

    def _folder_warnings(self) -> list[str]:
        """Class folders of a folders-layout split that may be no classes: one named as a
        split beside others that are not (a test/ of unlabelled images beside daisy/ and
        rose/), and one whose images all lie in folders of its own, two or more, beside
        others (dataset/daisy/, dataset/rose/ beside a stray assets/)."""
        if self.layout != "folders" or self.split_folders or len(self.classes) < 2:
            return []
        found = []
        # Named as a test or validation split ("train" is a real class: CIFAR-100, VOC).
        named = [c for c in self.classes
                 if split_of(re.sub(r"\d+$", "", c)) in ("test", "val")]
        if named and len(named) < len(self.classes):
            found.append(
                f"class{'es' if len(named) > 1 else ''} {', '.join(named)} "
                f"{'are' if len(named) > 1 else 'is'} named as a split beside classes that are "
                f"not: if {'they hold' if len(named) > 1 else 'it holds'} images without "
                "classes (a test set), move "
                f"{'them' if len(named) > 1 else 'it'} out of {self.source}")
        root = f"{self.root}/" if self.root else ""
        parts = self._part_warning(root) or self._split_named_warning(root)
        if parts:
            return [*found, parts]
        copy = f"{self.class_copy}/" if self.class_copy else None
        subs: dict[str, set[str]] = defaultdict(set)
        flat: set[str] = set()
        for f in self.files:
            parts = f.source[len(root):].split("/")
            if copy and f.source[len(root):].startswith(copy):
                continue
            (subs[parts[0]].add(parts[1]) if len(parts) > 2 else flat.add(parts[0]))
        presplit = self._split_inside(root)
        if presplit:
            # Fruits-360's archive: fruits-360_100x100/fruits-360/{Training,Test}/<class>/
            # beside another size's copy; its top folders were taken for the classes.
            folder, splits = presplit
            give = self._give_as_src(root, folder)
            found.append(f"{folder}/ holds a dataset split already "
                         f"({', '.join(f'{s}/' for s in splits)}), and the top folders were "
                         f"taken for the classes: {give}")
            return found
        if not flat:
            # Every class nested: alike (cat/web/, dog/web/) are sources, not classes; others
            # (fruits/apple/, vegetables/carrot/) may be the classes, a level down.
            alike = {frozenset(inner) for inner in subs.values()}
            inner = sorted(next(iter(alike)))
            if len(alike) > 1:
                shown = ", ".join(f"{c}/{n}/" for c in sorted(subs)[:2]
                                  for n in sorted(subs[c])[:2])
                found.append(f"every class holds its images in folders of its own ({shown}, "
                             "...): if those folders are the classes, make them the top "
                             "folders of the dump, which split takes for the classes")
            elif all(split_of(n) for n in inner):
                # cat/train/, cat/test/, dog/train/, ...: a split of its own, pooled.
                found.append(
                    f"every class holds folders named as splits "
                    f"({', '.join(f'{n}/' for n in inner)}): they were pooled and are split "
                    "again; to keep the dump's own split, lay it out as <split>/<class>/ "
                    "(train/cat/, ...), which build-hdf5 builds as it is")
            elif (len(inner) >= max(4, 2 * len(subs))
                  and not any(split_of(n) for n in inner)):
                # Many more alike folders than classes: PlantVillage's color/, grayscale/ and
                # segmented/ versions of its 38 class folders (a few alike folders, or
                # train/ and test/, are each class's sources or splits).
                first = sorted(subs)[0]
                give = self._give_as_src(root, first)
                found.append(
                    f"every class holds the same {len(inner)} folders ("
                    f"{', '.join(f'{n}/' for n in inner[:3])}, ...): if "
                    f"{', '.join(f'{c}/' for c in sorted(subs))} are versions of one dataset "
                    "(as PlantVillage's color/ and grayscale/) and those folders its classes, "
                    f"{give}; if they are each class's sources, all is well")
            return found
        for folder in sorted(subs):
            if folder not in flat and len(subs[folder]) > 1:
                inner = sorted(subs[folder])
                shown = ", ".join(f"{n}/" for n in inner[:4]) + (", ..." if len(inner) > 4
                                                                   else "")
                give = self._give_as_src(root, folder)
                found.append(f"{folder}/ holds its images in folders of its own ({shown}), "
                             f"beside other classes: if those folders are the classes, {give}")
        return found

    def _part_warning(self, root: str) -> str | None:
        """Class folders named as the parts of a dataset (Oxford-IIIT Pet's images/ beside
        annotations/, whose trimaps/ are masks of the same names): two or more. (One alone may
        be a class: mask beside no_mask, photos beside paintings; files numbered 0.jpg, 1.jpg
        in every class share their names.)"""
        named = [c for c in self.classes if part_name(c) in PART_NAMES]
        if len(named) < 2:
            return None
        stems: dict[str, Counter] = defaultdict(Counter)
        for f in self.files:
            stems[f.label][PurePosixPath(f.source).stem] += 1
        shared = {c: sum(n for stem, n in stems[c].items()
                         if any(stem in stems[o] for o in self.classes if o != c))
                  for c in named}
        images = next((c for c in named if part_name(c) in IMAGE_PARTS), None)
        pairs = sum(shared.values())
        also = (f", and {pairs} of their files share their names with another class's (images "
                "and their masks?)" if pairs else "")
        where = (f"if {images}/ holds the images, {self._give_as_src(root, images)}, with "
                 "--layout prefix (--pattern) or --labels if their names or a list give the "
                 "classes" if images else "give the folder holding the class folders as SRC")
        return (f"the classes {', '.join(named)} are named as the parts of a dataset (its "
                f"images, masks, annotations), not as classes{also}: {where}")

    def _csv_over_split_warning(self) -> str | None:
        """A labels CSV whose images lie in the dump's own split folders of class folders
        (Imagenette's noisy_imagenette.csv over train/<class>/ and val/<class>/): pooled and
        split again, where the folders layout says so in a note."""
        if self.layout != "csv":
            return None
        root = f"{self.root}/" if self.root else ""
        folders = presplit_folders(sorted(f.source for f in self.files), root)
        if len(folders) < 2:
            return None
        inside = self.source / self.root if self.source.is_dir() else None
        keep = (f"'dsprep build-hdf5 {quoted(inside)} OUT' builds them as they are" if inside
                else f"extract {self.source} and build the folder as it is with build-hdf5")
        return (f"the labelled images lie in the dump's own split folders "
                f"({', '.join(f'{f}/' for f in folders)}), pooled by the CSV's labels and split "
                f"again here: its own test or val images may land in train; to keep its split "
                f"where its class folders are the classes, {keep}")

    def _masks_beside_warning(self) -> str | None:
        """Placed images named as the mask of an image in the same folder, and of its size
        (BUSI's "benign (1)_mask.png" beside "benign (1).png"): likely masks, split as images
        of their classes. Only said: names alone cannot tell (a face with a mask on, named
        so beside one without, is a picture)."""
        by_stem = {}
        for f in self.files:
            folder, _, name = f.source.rpartition("/")
            by_stem[folder, os.path.splitext(name)[0]] = f
        paired = []
        for f in self.files:
            folder, _, name = f.source.rpartition("/")
            match = _MASK_NAME.fullmatch(os.path.splitext(name)[0])
            image = match and by_stem.get((folder, match.group(1)))
            if image and (image.width, image.height) == (f.width, f.height):
                paired.append((f, image))
        if len(paired) < 3:
            return None
        mask, image = min(paired, key=lambda pair: pair[0].source)
        per_class = Counter(f.label for f, _ in paired)
        shown = ", ".join(f"{c} {n:,}" for c, n in sorted(per_class.items())[:4])
        more = ", ..." if len(per_class) > 4 else ""
        return (f"{len(paired):,} images are named as the masks of images of their size beside "
                f"them ({shown}{more}; e.g. {mask.source} beside "
                f"{image.source.rpartition('/')[2]}), and are split as images of their classes: "
                "if they are masks (segmentation maps), not pictures, move them out of the dump "
                "(or, in each class, the masks into a masks/ folder and the pictures into an "
                "images/ folder beside it: split then leaves the masks out) and split again")

    def _split_named_warning(self, root: str) -> str | None:
        """Classes that all have a split among the words of their names (ASL Alphabet's
        asl_alphabet_train/ and asl_alphabet_test/, each holding a folder of its own name): a
        split dump, whose classes lie further down."""
        def split_in(name: str) -> str | None:
            return next((s for w in re.split(r"[\s_.\-]+", name) if (s := split_of(w))), None)

        kinds = {c: split_in(c) for c in self.classes}
        # (with a class's images further down: test_pass/ and test_fail/ of images are classes)
        deeper = any(len(f.source[len(root):].split("/")) > 2 for f in self.files)
        if not all(kinds.values()) or not deeper:
            return None
        train = next((c for c, kind in kinds.items() if kind == "train"), self.classes[0])
        folder = train
        for f in self.files:
            parts = f.source[len(root):].split("/")
            if parts[0] == train and len(parts) > 2 and parts[1].lower() == train.lower():
                folder = f"{train}/{parts[1]}"  # asl_alphabet_train/asl_alphabet_train/
                break
        return (f"every class is named as a split ({', '.join(self.classes)}): the dump is split "
                f"already, and its classes lie further down; to split the images of "
                f"{folder}/ by their classes, {self._give_as_src(root, folder)}")

    def _give_as_src(self, root: str, folder: str) -> str:
        """How to split ``folder`` of the dump (``root`` its top) on its own."""
        if self.source.is_dir():
            return f"give {self.source / root / folder} as SRC"
        return f"extract {root}{folder}/ from {self.source} and give it as SRC"

    def _split_inside(self, root: str) -> tuple[str, list[str]] | None:
        """The first folder of a class (the class folder itself, or one up to two levels down;
        classes in order) whose images all lie in folders named as splits, two or more, with
        the names of those, else None."""
        under: dict[str, set[str]] = defaultdict(set)
        for f in self.files:
            parts = f.source[len(root):].split("/")
            # class/Training/<class>/x, class/inner/Training/<class>/x (Fruits-360),
            # class/class/images/TRAIN/<class>/x (Blood Cell Images)
            for depth in (1, 2, 3):
                if len(parts) > depth + 2:
                    under["/".join(parts[:depth])].add(parts[depth])
        for folder, names in sorted(under.items(),
                                    key=lambda kv: (kv[0].split("/")[0], kv[0].count("/"))):
            if len(names) > 1 and all(split_of(n) for n in names):
                return folder, sorted(names)
        return None

    def _tables_passed_over(self) -> list[str]:
        """The CSV files beside the images of a dump split by another layout (a folder dump's
        only: an archive is not opened again for this)."""
        folder = self.source / self.root
        if self.layout == "csv" or not folder.is_dir():
            return []
        return sorted(p.name for p in folder.glob("*.csv")
                      if p.is_file() and not is_submission_template(p.name))

    def _stray_labels_file(self) -> str | None:
        """Labels guessed from elsewhere than folders that may well be the classes: a CSV's
        column taken by its place (the CSV a stray table of something else), or file-name
        prefixes that cut across the folders (cat/orig.1.jpg, cat/flip.1.jpg, dog/orig.2.jpg)."""
        if self.options.layout != "auto":
            return None
        if self.layout == "csv" and self.labels_guessed and self.options.labels is None:
            taken = f"{self.labels_file} ({self.labels_columns})"
        elif self.layout == "prefix" and self.options.pattern is None:
            taken = "the prefixes of their file names"
        else:
            return None
        inner = [f.source[len(self.root) + 1:] if self.root else f.source for f in self.files]
        by_folder: dict[str, set[str]] = defaultdict(set)
        for path, f in zip(inner, self.files, strict=True):
            if "/" in path and split_of(path.split("/", 1)[0]) is None:
                by_folder[path.split("/", 1)[0]].add(f.label)
        folders = sorted(by_folder)
        # Folders of parts of one dump (images_001/, images_002/) hold no classes.
        chunks = chunk_folders(folders)
        classes = {c.casefold() for c in self.classes}
        if len(folders) < 2 or chunks or {f.casefold() for f in folders} & classes:
            return None
        if self.layout == "prefix" and all(
                len([f for f in folders if label in by_folder[f]]) == 1 for label in self.classes):
            return None  # each prefix in one folder only: the folders group the classes
        shown = ", ".join(f"{f}/" for f in folders[:4]) + (", ..." if len(folders) > 4 else "")
        return (f"the images lie in folders ({shown}) but their labels were taken from "
                f"{taken}; if the folders are the classes, give --layout folders")

    def skipped_reasons(self) -> dict[str, int]:
        """How many files were left out for each reason."""
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))

    def manifest(self, mode: str) -> dict:
        """The content of ``split.json`` for this plan placed with ``mode``."""
        params = self.options.params()
        params["mode"] = mode
        return {
            "schema": SCHEMA,
            "dsprep": __version__,
            "source": str(self.source),
            "layout": self.layout,
            "root": self.root,
            "labels_file": self.labels_file,
            "params": params,
            "classes": self.classes,
            "counts": self.counts(),
            "skipped": self.skipped_reasons(),
        }

    def files_csv(self) -> str:
        """The text of ``files.csv``."""
        return csv_text(FILES_COLUMNS, (_csv_row(f) for f in self.files))

    def skipped_csv(self) -> str:
        """The text of ``skipped.csv``."""
        return csv_text(SKIPPED_COLUMNS, ([s.source, s.reason, s.detail] for s in self.skipped))


def _tag_sets(classes: Sequence[str]) -> list[str]:
    """A warning when a CSV's labels look like sets of tags (Planet's "clear primary",
    "clear primary water"): several classes hold the words of another and more."""
    words = {c: frozenset(re.split(r"[\s,;]+", c.strip())) for c in classes}
    several = [c for c, w in words.items() if len(w) > 1]
    within = [(a, b) for a in classes for b in several if a != b and words[a] < words[b]]
    if len(within) < 2:
        return []
    shown = ", ".join(f"{b!r} holds {a!r}" for a, b in within[:2])
    return [f"the labels look like sets of tags ({shown}): multi-label data? A split here "
            f"makes each set a class of its own ({len(classes)} classes), and an image "
            "tagged with one word more is in another class"]


def _csv_row(f: PlannedFile) -> list[str]:
    return [f.split, f.label, f.path, f.source, f.sha256, str(f.width), str(f.height)]


def allocate(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Split ``n`` items by ``ratios`` (largest remainder rounding).

    Each part gets the floor of its exact share ``n * ratio``; the items left over go one each
    to the parts with the largest fractional remainders, ties to the earlier part (train before
    val before test). The parts always add up to ``n`` and each is within 1 of its exact share.
    """
    total = float(sum(ratios))
    exact = [n * r / total for r in ratios]
    parts = [int(np.floor(e + 1e-9)) for e in exact]
    left = n - sum(parts)
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def _class_rng(seed: int, label: str) -> np.random.Generator:
    # Keyed by class name: one class's shuffle does not change when another class changes.
    return np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])


@dataclass(frozen=True)
class _Checked:
    rel: str
    sha256: str = ""
    height: int = 0
    width: int = 0
    size: int = 0
    problem: Skipped | None = None


def skip_reason(exc: OSError | CorruptImageError | ImageTooLargeError) -> tuple[str, str]:
    """The skipped.csv reason and detail of an image that could not be read or decoded; the
    split, the build and DirectoryGenerator's ``skipped`` say the same of the same file."""
    if isinstance(exc, ImageTooLargeError):
        return TOO_LARGE, str(exc)
    if isinstance(exc, EmptyImageError):
        return EMPTY, "zero-byte file"
    if isinstance(exc, CorruptImageError):
        return NOT_AN_IMAGE, str(exc) or "not an image"
    return UNREADABLE, exc.strerror or str(exc)


def _check(source, rel: str, verify: str, min_size: int, stash=None,
           max_pixels: int = images.DEFAULT_MAX_PIXELS) -> _Checked:
    """Read one file once: hash it and check it is an image of a usable size.

    ``stash``, when given, receives the bytes and the SHA-256 of a usable file, so that a
    one-pass split can write them out without reading the file a second time.
    """
    try:
        data = source.read(rel)
    except OSError as exc:
        return _Checked(rel, problem=Skipped(rel, *skip_reason(exc)))
    digest = hashlib.sha256(data).hexdigest()  # a zero-byte file: EmptyImageError below
    try:
        limit = max_pixels or None
        if verify == "full":
            height, width = images.decode(data, max_pixels=limit).shape[:2]
        else:
            height, width = images.probe(data, max_pixels=limit)
    except (ImageTooLargeError, CorruptImageError) as exc:
        return _Checked(rel, problem=Skipped(rel, *skip_reason(exc)))
    if min(height, width) < min_size:
        return _Checked(rel, problem=Skipped(
            rel, TOO_SMALL, f"{width}x{height} is under the minimum side of {min_size} px"))
    if stash is not None:
        stash(data, digest)
    return _Checked(rel, digest, int(height), int(width), len(data))


def _map(fn, items, workers: int, progress: bool, desc: str):
    """Run ``fn`` over ``items`` in threads (the work releases the GIL); results in order.

    Items go to the threads in contiguous chunks, and the bar moves once per chunk: with
    thousands of small files, a future and a bar update per file cost more than the copy.
    """
    bar = None
    if progress:
        bar = progress_bar(total=len(items), unit="file", desc=desc)
    # Small chunks keep both threads busy to the end; large ones keep the overhead down.
    size = max(1, min(_CHUNK, -(-len(items) // (4 * max(1, workers)))))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]

    stop = threading.Event()

    def run(chunk):
        out = []
        for item in chunk:
            if stop.is_set():  # the main thread is unwinding: no more reads
                break
            out.append(fn(item))
        return out

    try:
        out = []
        if workers <= 1 or len(chunks) < 2:
            for chunk in chunks:
                system.raise_if_stopped()
                out += run(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            return out
        with ThreadPoolExecutor(min(workers, len(chunks))) as pool:
            futures = [pool.submit(run, chunk) for chunk in chunks]
            try:
                for chunk, future in zip(chunks, futures, strict=True):
                    system.raise_if_stopped()  # a signal whose stop was lost on the way
                    out += future.result()
                    if bar is not None:
                        bar.update(len(chunk))
            except BaseException:
                stop.set()
                for future in futures:
                    future.cancel()
                # Whatever cleans up after this (the staged copies) must not race the threads
                # still reading: a second Ctrl-C waits for them, and comes after.
                with system.stops_held():
                    wait(futures)
                raise
            return out
    finally:
        if bar is not None:
            bar.close()


_CHUNK = 64


def default_workers() -> int:
    """Threads for reading and copying: one per core this process may run on.

    Reading from the page cache, hashing and copying release the GIL but keep a core busy;
    more threads than cores only add switching (measured: 8 threads on 2 cores were slower
    than 2).
    """
    return min(16, system.usable_cpus())


def plan(
    src: str | os.PathLike,
    options: SplitOptions | None = None,
    *,
    progress: bool = False,
    workers: int | None = None,
    dest: str | os.PathLike | None = None,
    **kwargs,
) -> SplitPlan:
    """Decide which file of ``src`` goes to which split, without writing anything.

    Every image file is read once: its SHA-256 and its header (or full decode with
    ``verify="full"``) come from the same bytes. Files that are not images, too small, exact
    duplicates (one copy kept; the same bytes under two labels are both left out) or unlabelled
    are recorded in ``skipped``. Each class is then shuffled with a generator seeded by
    ``(seed, class name)`` from its files sorted by path, so the result never depends on the
    order the file system lists files in, and cut by :func:`allocate` (ratios) or by counts.

    Args:
        src: the dump folder or ``.zip``.
        options: a :class:`SplitOptions`; keyword arguments override its fields.
        progress: show a progress bar while reading.
        workers: reading threads (default :func:`default_workers`).
        dest: the split folder it is for, if known: one inside a folder the dump reaches
            through a link is refused once the dump is listed, before any file is read.

    Raises:
        UsageError: bad options, or ``dest`` inside a folder the dump links to.
        LayoutError: no labelled images found.
        SplitError: a class is too small for the requested counts.
    """
    refuse_empty_path(src, "the source")
    options = replace(options or SplitOptions(), **kwargs) if kwargs else (
        options or SplitOptions())
    with open_source(src) as source:
        inventory = find_images(source, options.layout, pattern=options.pattern,
                                labels=options.labels, id_column=options.id_column,
                                label_column=options.label_column,
                                group_column=options.group_column)
        if dest is not None:
            _refuse_linked(inventory.linked, Path(src).resolve(), Path(dest).absolute())
        checked = _map(lambda item: _check(source, item[0], options.verify, options.min_size,
                                           max_pixels=options.max_pixels),
                       inventory.items, workers or default_workers(), progress, "checking")
    return _decide(Path(src).resolve(), inventory, checked, options)


def _decide(source: Path, inventory: Inventory, checked: list[_Checked],
            options: SplitOptions) -> SplitPlan:
    skipped = list(inventory.skipped)
    label_of = dict(inventory.items)
    good: list[_Checked] = []
    for c in checked:
        (skipped.append(c.problem) if c.problem else good.append(c))

    # Exact duplicates: keep the first path of a group within one label; across labels, none.
    by_hash: dict[str, list[_Checked]] = defaultdict(list)
    for c in good:
        by_hash[c.sha256].append(c)
    kept: dict[str, list[_Checked]] = defaultdict(list)
    # A dump's copy of its own class folders gives way to the folders it copies.
    root = f"{inventory.root}/" if inventory.root else ""
    copy = f"{root}{inventory.class_copy}/"
    # Its files under the path of a file outside it with other content (augmented variants).
    sha = {c.rel: c.sha256 for c in good} if inventory.class_copy else {}
    variants = sum(1 for rel, digest in sha.items()
                   if rel.startswith(copy) and sha.get(root + rel[len(copy):], digest) != digest)
    for group in by_hash.values():
        group.sort(key=lambda c: (bool(inventory.class_copy) and c.rel.startswith(copy),
                                  _path_order(c.rel)))
        labels = sorted({label_of[c.rel] for c in group})
        if len(labels) > 1:
            others = ", ".join(f"{c.rel} ({label_of[c.rel]})" for c in group)
            skipped += [Skipped(c.rel, LABEL_CONFLICT, f"same content under two labels: {others}")
                        for c in group]
            continue
        kept[labels[0]].append(group[0])
        skipped += [Skipped(c.rel, DUPLICATE, f"same content as {group[0].rel}")
                    for c in group[1:]]

    classes = sorted(kept)
    if not classes:
        reasons = Counter(s.reason for s in skipped)
        examples = "; ".join(f"{s.source}: {s.detail}" for s in sorted(skipped)[:3])
        top = reasons.most_common(1)[0][0]
        conflict = ("The same images lie under two labels: a dump that holds a copy of its "
                    "class folders (flowers/daisy/ and flowers/flowers/daisy/) does; give one "
                    "copy as SRC" if inventory.layout == "folders" else
                    "The same images lie under two labels (copies of one image labelled "
                    "differently); see the examples, and keep one label for each")
        advice = {
            LABEL_CONFLICT: conflict,
            TOO_SMALL: f"Lower --min-size (now {options.min_size})",
            TOO_LARGE: f"Raise --max-pixels (now {options.max_pixels:,}; 0 for no limit)",
        }.get(top, "Check the options that leave files out, such as --min-size, and the "
                   "files themselves")
        raise LayoutError(f"{source} has no usable image: every file was left out ("
                          + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
                          + f"; for example {examples}). {advice}")
    splits = options.splits
    grouped = inventory.group_given
    chosen: dict[str, list[_Checked]] = {}  # each class's images, shuffled
    sizes_of: dict[str, list[int]] = {}
    for label in classes:
        members = sorted(kept[label], key=lambda c: _path_order(c.rel))
        order = _class_rng(options.seed, label).permutation(len(members))
        members = [members[i] for i in order]
        limited = options.limit_per_class is not None and len(members) > options.limit_per_class
        if limited:
            skipped += [Skipped(c.rel, NOT_SELECTED,
                                f"over --limit-per-class {options.limit_per_class}")
                        for c in members[options.limit_per_class:]]
            members = members[: options.limit_per_class]
        if options.counts is not None:
            sizes = list(options.counts)
            if sum(sizes) > len(members):
                cut = f" (kept by --limit-per-class {options.limit_per_class})" if limited else ""
                raise SplitError(
                    f"class {label!r} has {len(members)} usable images{cut} but --counts "
                    f"{_join(sizes)} needs {sum(sizes)}; lower the counts or use --ratios")
            if not grouped:
                skipped += [Skipped(c.rel, NOT_SELECTED, f"beyond --counts {_join(sizes)}")
                            for c in members[sum(sizes):]]
        else:
            sizes = allocate(len(members), options.ratios or DEFAULT_RATIOS)
        chosen[label], sizes_of[label] = members, sizes
    if grouped:
        chunks, left_out = _by_groups(chosen, sizes_of, inventory.groups, options)
        skipped += left_out
    else:
        chunks = {label: [chosen[label][sum(sizes[:i]) : sum(sizes[: i + 1])]
                          for i in range(len(sizes))] for label, sizes in sizes_of.items()}
    files: list[PlannedFile] = []
    for label in classes:
        for split_name, chunk in zip(splits, chunks[label], strict=True):
            names = _dest_names(chunk)
            files += [PlannedFile(split_name, label, f"{split_name}/{label}/{names[c.rel]}", c.rel,
                                  c.sha256, c.width, c.height, c.size) for c in chunk]
    where: dict[str, set[str]] = defaultdict(set)
    size: Counter = Counter()
    for f in files:
        group = inventory.groups.get(f.source)
        if group is not None:
            where[group].add(f.split)
            size[group] += 1
    groups = (sum(n > 1 for n in size.values()), sum(len(s) > 1 for s in where.values()))
    rank = {s: i for i, s in enumerate(splits)}
    files.sort(key=lambda f: (rank[f.split], f.label, f.path))
    lost = sorted({label for _, label in inventory.items} - set(classes))
    return SplitPlan(source, inventory.layout, inventory.root, options, classes, files,
                     sorted(set(skipped)), inventory.labels_file, inventory.split_folders, lost,
                     inventory.labels_columns, inventory.labels_guessed, inventory.labels_doubt,
                     inventory.class_copy, variants, list(inventory.linked),
                     list(inventory.unnamed), inventory.group_column, inventory.group_given,
                     groups)


def _by_groups(members: dict[str, list[_Checked]], sizes: dict[str, list[int]],
               groups: dict[str, str], options: SplitOptions
               ) -> tuple[dict[str, list[list[_Checked]]], list[Skipped]]:
    """Each class's images in each split, every group (``Inventory.groups``; an image without
    one is a group of its own) in one split, and the images left out.

    ``sizes`` is what allocate or --counts gives each class in each split: a split's room.
    First every split with a share but the one with the most room takes, for each class, the
    smallest group of that class there is (of equals, one drawn by the seed), while one more
    is left for the split with the most room, so that no split is left without a class for
    want of a group drawn for it. With --counts (a subset, which should come from many
    groups) the other groups follow in an order shuffled by the seed; with ratios, from the
    largest to the smallest in sizes rounded to powers of two (of one such size, in an order
    shuffled by the seed), so that large groups go first where they fit and the small ones,
    single images last, fill what is left. Each goes to a split where all its images fit,
    the one with the largest share of its room left (ties to the earlier split); a group
    that fits nowhere goes, with ratios, to the split it overfills least for its room
    (train, mostly), and with --counts is left out. Never to a split given no share. With
    ratios, :func:`_closer` then moves or exchanges groups where that fits the shares better.
    """
    asked = options.counts if options.counts is not None else (options.ratios or DEFAULT_RATIOS)
    units: dict[tuple[int, str], list[tuple[str, _Checked]]] = defaultdict(list)
    for label, chosen in members.items():
        for c in chosen:
            group = groups.get(c.rel)
            units[(0, group) if group is not None else (1, c.rel)].append((label, c))
    keys = sorted(units)
    keys = [keys[i] for i in _class_rng(options.seed, "\0groups").permutation(len(keys))]
    room = {label: list(s) for label, s in sizes.items()}
    placed: dict[str, list[list[_Checked]]] = {label: [[] for _ in asked] for label in members}
    shares = [i for i, share in enumerate(asked) if share > 0]

    need_of = {key: Counter(label for label, _ in unit) for key, unit in units.items()}

    def needs(key) -> Counter:
        return need_of[key]

    def fits(need: Counter, i: int) -> bool:
        return all(n <= room[lab][i] for lab, n in need.items())

    where_of: dict = {}  # each group's split

    def put(key, i: int) -> None:
        where_of[key] = i
        for label, n in needs(key).items():
            room[label][i] -= n

    # Every split a group of every class, from the smallest groups (the shuffled order
    # breaks ties); the split with the most room (train) takes the large ones anyway.
    taken: set = set()
    of_label: dict[str, list] = defaultdict(list)  # each class's groups, smallest first
    for key in sorted(keys, key=lambda k: len(units[k])):
        for label in need_of[key]:
            of_label[label].append(key)
    for label in sorted(members):
        most = max(shares, key=lambda i, label=label: (sizes[label][i], -i))
        for i in shares:
            free = [k for k in of_label[label] if k not in taken]
            # (one group at least is kept for the split with the most room)
            if (i == most or sizes[label][i] <= 0 or room[label][i] != sizes[label][i]
                    or len(free) < 2):
                continue
            key = next((k for k in free
                        if options.counts is None or fits(needs(k), i)), None)
            if key is not None:
                taken.add(key)
                put(key, i)
    rest = [k for k in keys if k not in taken]
    if options.counts is None:  # (a stable sort: shuffled within one size)
        rest.sort(key=lambda k: -int(math.log2(len(units[k]))))
    left_out: list[Skipped] = []
    for key in rest:
        need = needs(key)
        where = [i for i in shares if fits(need, i)]
        if not where and options.counts is not None:
            left_out += [Skipped(c.rel, NOT_SELECTED,
                                 f"beyond --counts {_join(options.counts)} (its group "
                                 f"{key[1]!r} fits in no split)" if len(units[key]) > 1 else
                                 f"beyond --counts {_join(options.counts)}")
                         for _, c in units[key]]
            continue

        def rank(i: int, need=need) -> tuple:
            whole = max(1, sum(sizes[lab][i] for lab in need))
            # Where it fits nowhere: the split it overfills least for its size (mostly train).
            over = sum(max(0, n - room[lab][i]) for lab, n in need.items()) / whole
            return -over, sum(room[lab][i] for lab in need) / whole, -i

        put(key, max(where or shares, key=rank))
    if options.counts is None:
        _closer(list(where_of), where_of, need_of, room, shares,
                {label: 1 / max(1, sum(s)) for label, s in sizes.items()})
    for key in keys:  # (in the shuffled order, as placed before)
        if key in where_of:
            for label, c in units[key]:
                placed[label][where_of[key]].append(c)
    return placed, left_out


# Groups of a split by ratios above which _closer tries moves only, not exchanges of two
# groups (those take time in the square of the groups' number; with so many groups, most of
# them small, moves alone come close).
_EXCHANGE_GROUPS = 400
_EPSILON = 1e-9  # a gain below this is rounding (each step must lower the sum, or it loops)


def _closer(keys: list, where_of: dict, need_of: dict, room: dict, shares: list[int],
            weight: dict[str, float]) -> None:
    """Bring a split by groups closer to each class's share: move a group to another split,
    or exchange two groups of two splits, wherever that lowers the images off the shares
    (summed over classes and splits, each class's as a fraction of its images: a small
    class weighs as much as a large one) without leaving a split with no image of a class
    it had, until nothing does. Placing large groups first can miss a closer fit: groups of
    40, 20, 12, 12, 10 and 6 at 0.9,0.1 place 94/6, where 90/10 was there to take."""
    have = Counter()
    for key in keys:
        for label, n in need_of[key].items():
            have[label, where_of[key]] += n

    def gain(change: Counter) -> float:
        return sum((abs(room[label][i]) - abs(room[label][i] - n)) * weight[label]
                   for (label, i), n in change.items())

    def keeps(change: Counter) -> bool:
        return all(have[label, i] + n > 0 for (label, i), n in change.items() if n < 0)

    def apply(change: Counter) -> None:
        for (label, i), n in change.items():
            room[label][i] -= n
            have[label, i] += n

    def moved(key, to: int) -> Counter:
        change = Counter()
        for label, n in need_of[key].items():
            change[label, where_of[key]] -= n
            change[label, to] += n
        return change

    exchange = len(keys) <= _EXCHANGE_GROUPS
    for _ in range(50):  # (each round lowers the sum; it ends well before this)
        better = False
        for key in keys:
            best = max(((gain(moved(key, to)), -to) for to in shares if to != where_of[key]
                        and keeps(moved(key, to))), default=(0, 0))
            if best[0] > _EPSILON:
                apply(moved(key, -best[1]))
                where_of[key] = -best[1]
                better = True
        if exchange:
            for a in keys:
                for b in keys:
                    i, j = where_of[a], where_of[b]
                    if i == j:
                        continue
                    change = moved(a, j)
                    change.update(moved(b, i))
                    if gain(change) > _EPSILON and keeps(change):
                        apply(change)
                        where_of[a], where_of[b] = j, i
                        better = True
        if not better:
            return


# A name of an image's mask beside it: the image's name with a mask suffix (BUSI's
# "benign (1)_mask.png", "_mask_1.png" for a second one).
_MASK_NAME = re.compile(r"(.+?)[_\- ]?(?:mask|Mask|MASK)(?:[_\-]\d+)?")


# The longest file name, in bytes, of the usual file systems (ext4, XFS, Btrfs, APFS).
_NAME_MAX = 255


def _dest_names(chunk: list[_Checked]) -> dict[str, str]:
    """File names inside one class folder of one split; clashes resolved without order effects.

    A name used once (compared without case, for case-insensitive file systems) is kept; every
    file sharing a name gets the first 10 hex digits of its content hash appended, which is
    unique because exact duplicates are already gone. So does a name too long for a file
    system (a zip member's), and the stem is cut to make room for the suffix.
    """
    base = {c.rel: PurePosixPath(c.rel).name for c in chunk}
    uses = Counter(_name_key(name) for name in base.values())
    names = {}
    taken = {_name_key(name) for name in base.values() if uses[_name_key(name)] == 1}
    for c in sorted(chunk, key=lambda c: _path_order(c.rel)):
        name = base[c.rel]
        if uses[_name_key(name)] > 1 or len(name.encode()) > _NAME_MAX:
            stem, ext = os.path.splitext(name)
            name = _fit(stem, f"-{c.sha256[:10]}{ext}")
            n = 2
            while _name_key(name) in taken:
                name = _fit(stem, f"-{c.sha256[:10]}-{n}{ext}")
                n += 1
            taken.add(_name_key(name))
        names[c.rel] = name
    return names


def _path_order(rel: str) -> tuple[str, str]:
    """The order files are taken in: by their paths composed (NFC), so that a dump whose
    names a Mac or its archives decomposed (NFD) splits as the same dump with composed names."""
    return unicodedata.normalize("NFC", rel), rel


def _name_key(name: str) -> str:
    """Names that are one file on a case-insensitive or normalising file system (macOS)."""
    return unicodedata.normalize("NFC", name).lower()


def _fit(stem: str, tail: str) -> str:
    """``stem + tail``, the stem cut to fit :data:`_NAME_MAX` bytes (the limit is in bytes,
    not characters), never inside a character's UTF-8 sequence."""
    room = max(0, _NAME_MAX - len(tail.encode()))
    return stem.encode()[:room].decode("utf-8", errors="ignore") + tail


@dataclass
class SplitResult:
    """What :func:`materialize` (or :func:`run`) did.

    Attributes:
        dest: the split folder.
        placed: files copied or linked by this call.
        reused: files already in place from an interrupted earlier run.
        copied_instead: hard links that fell back to a copy (another device or no support).
        already_complete: the folder already held this exact split; nothing was written.
        skipped_changed: the folder held this split's files, and only the files left out
            changed: ``skipped.csv`` and ``split.json`` were written again, nothing else.
        notes: what the user should see to, in words (the split is in place all the same).
    """

    dest: Path
    placed: int = 0
    reused: int = 0
    copied_instead: int = 0
    already_complete: bool = False
    skipped_changed: bool = False
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_split(found: dict | None, wanted: dict) -> bool:
    return isinstance(found, dict) and all(found.get(k) == wanted[k]
                                           for k in ("schema", "source", "params"))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _identity(source: Path, options: SplitOptions, mode: str) -> dict:
    """What makes two splits the same: the schema, the source and every parameter."""
    params = options.params()
    params["mode"] = mode
    return {"schema": SCHEMA, "source": str(source), "params": params}


def check_run(src: str | os.PathLike, dest: str | os.PathLike, options: SplitOptions | None = None,
              mode: str = "copy", *, force: bool = False) -> bool:
    """What :func:`run` refuses before it reads a file: an unknown mode, links into an archive,
    a ``dest`` overlapping the source, and one holding something else (see
    :func:`check_destination`, whose answer this returns). A dry run checks the same."""
    _refuse_split_source(src, dest)
    dest = _check_target(Path(src).resolve(), dest, mode)
    return check_destination(src, dest, options, mode, force=force)


def check_destination(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    options: SplitOptions | None = None,
    mode: str = "copy",
    *,
    force: bool = False,
) -> bool:
    """Say, before any file is read, whether ``dest`` can receive this split.

    Returns:
        True when ``dest`` holds a split of the same source with the same parameters and mode
        (it may be up to date: :func:`materialize` compares the files before skipping it),
        False when it is free (missing, empty, or to be replaced with ``force``).

    Raises:
        DestinationExistsError: ``dest`` holds something else and ``force`` is false.
    """
    dest = Path(dest)
    if force:
        return False
    wanted = _identity(Path(src).resolve(), options or SplitOptions(), mode)
    if dest.is_dir() and _same_split(_read_json(dest / MANIFEST), wanted):
        return True
    swapping = _read_json(dest / f"{_OWN}-swapping") if dest.is_dir() else None
    if swapping is not None:
        # A split stopped while its entries moved into a folder that cannot be replaced.
        if _same_split(swapping, wanted):
            return False  # this split: the run completes it
        raise DestinationExistsError(
            f"{dest} holds a split with other parameters, stopped while it was moved in; "
            "run that split again to complete it, or use --force to replace it")
    if dest.exists() and (not dest.is_dir()
                          or any(not _ignored(dest, e.name) for e in dest.iterdir())):
        if not dest.is_dir():
            raise DestinationExistsError(f"{dest} is a file, not a folder; choose another DEST "
                                         "(and give SRC before DEST)")
        found = _read_json(dest / MANIFEST)
        if isinstance(found, dict) and found.get("schema") == SCHEMA:
            raise DestinationExistsError(
                f"{dest} holds a split made with other parameters ({_differences(found, wanted)})"
                "; choose another folder, or use --force to replace that split")
        if (dest / MANIFEST).exists():
            raise DestinationExistsError(
                f"{dest} holds a split.json that is not a readable dsprep split manifest; choose "
                "another folder, or use --force to replace what it holds")
        entries = sorted(e.name for e in dest.iterdir() if not _ignored(dest, e.name))
        held = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
        raise DestinationExistsError(
            f"{dest} is not a split folder: it holds {held} dsprep did not write, such as "
            f"{entries[0]}; choose another folder (--force would delete what it holds), and "
            "give SRC before DEST")
    return False


def _differences(found: dict, wanted: dict) -> str:
    """What differs between a split.json and the split asked for, in the options' words."""
    said = []
    if found.get("source") != wanted["source"]:
        said.append(f"source {found.get('source')}, now {wanted['source']}")
    before = found.get("params") if isinstance(found.get("params"), dict) else {}
    # max_pixels is left out of params at its default: compare it filled in.
    default = {"max_pixels": images.DEFAULT_MAX_PIXELS}
    before, now = {**default, **before}, {**default, **wanted["params"]}
    for key in list(now) + [k for k in before if k not in now]:
        if before.get(key) != now.get(key):
            said.append(f"{key} {before.get(key)!r}, now {now.get(key)!r}")
    return "; ".join(said) or "another version of its manifest"


def _read_manifest(split_dir: str | os.PathLike) -> tuple[Path, dict]:
    """A split folder's ``split.json``: its path and its record, checked to be one."""
    path = Path(split_dir) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LayoutError(f"{path} does not exist; make the split with 'dsprep split'") from exc
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path} is not UTF-8 text, so not a dsprep split manifest; "
                                 "make the split again with 'dsprep split'") from exc
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise DatasetFormatError(f"{path} is not valid JSON ({exc}): damaged, cut short or "
                                 "edited by hand; make the split again with 'dsprep split'"
                                 ) from exc
    try:
        record["classes"]
    except (KeyError, TypeError) as exc:
        raise DatasetFormatError(f"{path} is not a dsprep split manifest (no 'classes' list); "
                                 "make the split again with 'dsprep split'") from exc
    if record.get("schema", SCHEMA) != SCHEMA:
        raise DatasetFormatError(f"{path} has schema {record['schema']!r}, not {SCHEMA!r}; "
                                 "make the split again with this version of 'dsprep split'")
    return path, record


def read_split_classes(split_dir: str | os.PathLike) -> list[str]:
    """Read the sorted class names from a split folder's ``split.json``."""
    path, record = _read_manifest(split_dir)
    classes = record["classes"]
    if not isinstance(classes, list) or not classes or \
            not all(isinstance(c, str) for c in classes):
        raise DatasetFormatError(f"{path}: 'classes' must be a non-empty list of names; "
                                 "make the split again with 'dsprep split'")
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:  # edited by hand: two ids for one class folder
        raise DatasetFormatError(f"{path}: 'classes' names {', '.join(twice)} more than once; "
                                 "make the split again with 'dsprep split --force'")
    return list(classes)


def read_split_max_pixels(split_dir: str | os.PathLike) -> int | None:
    """The pixel limit a split folder's images were checked against (None: no limit).

    Reading its files with this limit keeps every image the split kept (``split
    --max-pixels``); split.json's ``params`` hold it only when it is not the default.
    """
    path, record = _read_manifest(split_dir)
    params = record.get("params")
    limit = params.get("max_pixels", images.DEFAULT_MAX_PIXELS) \
        if isinstance(params, dict) else images.DEFAULT_MAX_PIXELS
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise DatasetFormatError(f"{path}: params 'max_pixels' must be a whole number, 0 or "
                                 f"more, not {limit!r}; make the split again with 'dsprep split'")
    return limit or None


def read_files(split_dir: str | os.PathLike,
               columns: Sequence[str]) -> list[tuple[str, ...]] | None:
    """The ``columns`` (of ``FILES_COLUMNS``) of each row of a split's files.csv; None where
    there is no files.csv as the split wrote it (missing, or edited into another form)."""
    path = Path(split_dir) / FILES_CSV
    at = [FILES_COLUMNS.index(c) for c in columns]
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            if next(reader, None) != list(FILES_COLUMNS):
                return None
            return [tuple(row[i] for i in at) for row in reader
                    if len(row) == len(FILES_COLUMNS)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def read_placed(split_dir: str | os.PathLike) -> dict[str, list[str]] | None:
    """The files a split placed, by split: files.csv's paths ("train/cat/cat.0.jpg"); None
    where there is no files.csv as the split wrote it."""
    rows = read_files(split_dir, ("split", "path"))
    if rows is None:
        return None
    placed: dict[str, list[str]] = defaultdict(list)
    for split, path in rows:
        placed[split].append(path)
    return dict(placed)


def split_pixel_limit(src: str | os.PathLike) -> int | None:
    """The pixel limit to read ``src``'s images with so that every image its split kept is read.

    For a split folder, or one of its train/, val/, test/ folders, the split's own (``split
    --max-pixels``, from split.json; None: no limit); for any other folder the default limit.
    """
    src = Path(src)
    if (src / MANIFEST).is_file():
        return read_split_max_pixels(src)
    here = src.resolve()
    # Another tool's split.json above a folder named train is no split of ours.
    if here.name in SPLITS and _is_split_manifest(here.parent / MANIFEST):
        return read_split_max_pixels(here.parent)
    return images.DEFAULT_MAX_PIXELS


def _is_split_manifest(path: Path) -> bool:
    found = _read_json(path)
    return isinstance(found, dict) and found.get("schema") == SCHEMA


def split_above(folder: str | os.PathLike) -> Path | None:
    """The split folder made by dsprep that ``folder`` lies in, as one of its split folders or
    a class folder of one; None when it lies in none. Relative to the working folder when it is
    under it, as a user would type it."""
    here = Path(folder).resolve()
    for up in (here.parent, here.parent.parent):
        if up != here and _is_split_manifest(up / MANIFEST):
            with contextlib.suppress(ValueError):
                return up.relative_to(Path.cwd().resolve())
            return up
    return None


def class_name_warnings(classes: Sequence[str]) -> list[str]:
    """What a user should know of the class names: numbers ordered as text (label id 2 is
    then class "10", not class 2), and names that differ only in case (one folder on macOS's
    and Windows's file systems)."""
    warnings = []
    if all(c.isdecimal() for c in classes) and list(classes) != sorted(classes, key=int):
        swapped = next(i for i, c in enumerate(classes) if int(c) != sorted(map(int, classes))[i])
        warnings.append(
            f"the classes are numbers, numbered as sorted text ({', '.join(classes[:4])}"
            f"{', ...' if len(classes) > 4 else ''}): label id {swapped} is class "
            f"{classes[swapped]!r}; map predictions to names through split.json's classes (or "
            "the HDF5 files' label_names), never by the number itself")
    by_case: dict[str, list[str]] = {}
    for c in classes:
        by_case.setdefault(c.casefold(), []).append(c)
    alike = [names for names in by_case.values() if len(names) > 1]
    if alike:
        warnings.append(
            f"classes that differ only in case ({'; '.join(' and '.join(n) for n in alike)}) "
            "stay apart, but share one folder on a case-insensitive file system (macOS, "
            "Windows), which mixes their images; rename them in the dump if they are one class")
    by_look: dict[str, list[str]] = {}
    for c in classes:
        by_look.setdefault(_look(c), []).append(c)
    alike = [names for names in by_look.values() if len(names) > 1]
    if alike:
        warnings.append(
            "classes that differ only in spaces or invisible characters ("
            + "; ".join(" and ".join(repr(n) for n in names) for names in alike)
            + ") stay apart, but look the same in every table; rename them in the dump if they "
            "are one class")
    return warnings


def _look(name: str) -> str:
    """``name`` as it looks: no invisible characters, any space one plain space, no spaces
    at the ends."""
    seen = "".join(" " if unicodedata.category(c) == "Zs" else c for c in name
                   if unicodedata.category(c) != "Cf")
    return " ".join(seen.split())


def split_below(folder: str | os.PathLike) -> Path | None:
    """A split just inside ``folder``: a sub-folder holding a dsprep split.json, or, down a
    chain of single wrapper folders (an unzipped archive's chest_xray/chest_xray/), one laid
    out as train/ val/ test/ class folders. None when there is none; relative to the working
    folder when under it."""
    here = Path(folder)
    found = next((here / name for name in visible_folders(here)
                  if _is_split_manifest(here / name / MANIFEST)), None)
    inner = here
    for _ in range(2):
        if found is not None:
            break
        names = visible_folders(inner)
        if len(names) != 1:
            break
        inner = inner / names[0]
        # Beside its splits it may hold what the build leaves out (test1/ of unlabelled
        # images); two folders for one split (val/ and valid/) are said as they are.
        if own_split_folders(inner, []):
            found = inner
    if found is None:
        return None
    with contextlib.suppress(ValueError):
        return found.resolve().relative_to(Path.cwd().resolve())
    return found


def refuse_unfinished_split(folder: str | os.PathLike) -> None:
    """Refuse a folder (or a split folder's ``train``/``val``/``test``) that a ``dsprep split``
    stopped while it moved a new split in, in place of the old one: it holds parts of both.

    (A split filled inside its folder writes the new one apart, in ``.dsprep-split-partial``,
    and leaves the old one whole until the swap: the old entries move aside into
    ``.dsprep-split-old``, then a journal marks that they all are, then the new ones move in.)

    Raises:
        LayoutError: the swap's journal is there, or entries set aside.
    """
    here = Path(folder)
    for up in (here, here.parent):
        journal, aside = up / f"{_OWN}-swapping", up / f"{_OWN}-old"
        try:
            there = journal.exists()
        except PermissionError as exc:  # (a folder this user cannot enter: chmod -R 644)
            raise access_denied(exc, up) from exc
        left = journal if there else aside if _holds_anything(aside) else None
        if left is not None:
            raise LayoutError(
                f"{up} holds parts of two splits: a 'dsprep split' into it stopped while it "
                f"moved the new split in (it left {left.name}); run that split again to "
                "finish it")


def _holds_anything(folder: Path) -> bool:
    try:
        return folder.is_dir() and bool(os.listdir(folder))
    except OSError:
        return False


def _refuse_split_source(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """A split made by dsprep given as SRC, with a DEST that holds other files, is most likely
    DEST given first: the split would be pooled into the dump's folder, replacing its files
    with --force. Into a new or empty folder (or over a split) it is split again. An empty
    SRC or DEST (see ``fileio.empty_path_words``) is refused first."""
    refuse_empty_path(src, "the source")
    refuse_empty_path(dest, "the split folder (DEST)")
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        return
    inside = split_above(src)  # split/train given as SRC is as much a split
    if not (_is_split_manifest(src / MANIFEST) or inside is not None):
        return
    if dest.is_dir():
        if (_is_split_manifest(dest / MANIFEST)
                or _is_split_manifest(dest / f"{_OWN}-swapping")  # a split stopped moving in
                or not any(not _ignored(dest, e.name) for e in dest.iterdir())):
            return  # over a split, or into an empty folder: split again
    elif not dest.exists():
        return
    # A folder of other files, or a file (a dump's .zip): --force would delete it.
    what = (f"is a split made by 'dsprep split' (it holds {MANIFEST})" if inside is None else
            f"lies in the split {inside}, made by 'dsprep split'")
    raise UsageError(
        f"{src} {what} and {dest} holds other files: did you give DEST before SRC? The order "
        f"is: dsprep split SRC DEST. To split {src} again, give a new or empty DEST")


def check_unchanged(split_plan: SplitPlan, dest: str | os.PathLike, mode: str = "copy", *,
                    force: bool = False) -> None:
    """Refuse to rebuild a finished split of the same source and options whose files the plan
    changes: the source gained, lost or changed files since, and a rebuild would reshuffle the
    classes, moving images that may have been trained on into val or test. ``force`` allows it.

    A ``dest`` whose ``files.csv`` matches the plan is left to :func:`materialize`: another
    ``skipped.csv`` or a placed file deleted by hand moves no image, and it is repaired. One
    whose ``files.csv`` cannot be read (damaged, or moved aside by a stopped run) is not
    compared, and is rebuilt as before.

    Raises:
        DestinationExistsError: the plan differs from the split in ``dest`` and ``force`` is
            false.
        UsageError: ``dest`` overlaps the source, or lies in a folder the source links to
            (``force`` or not).
    """
    source = split_plan.source
    dest = _check_target(source, dest, mode)
    _refuse_linked(split_plan.linked, source, dest)
    if force:
        return
    if not _same_split(_read_json(dest / MANIFEST),
                       _identity(source, split_plan.options, mode)):
        return  # not this split: check_destination says what to do with it
    if _same_text(dest / FILES_CSV, split_plan.files_csv()):
        return
    try:
        with open(dest / FILES_CSV, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != list(FILES_COLUMNS):
                return  # edited by hand (a spreadsheet's BOM, other columns): not comparable
            before = {row["source"]: row for row in reader}
    except (OSError, UnicodeDecodeError, csv.Error):
        return
    if None in before or any(None in row.values() for row in before.values()):
        return  # rows cut short (a name with a carriage return, unquoted by an older dsprep)
    planned = {f.source: f for f in split_plan.files}
    new = sum(s not in before for s in planned)
    out = [s for s in before if s not in planned]
    # Still in the dump, but no longer chosen (--counts, --limit-per-class) or now left out.
    kept = sum((source / s).exists() for s in out) if source.is_dir() else 0
    moved = [f for s, f in planned.items() if s in before and before[s]["split"] != f.split]
    # Same split, but another content, class or name (a file edited in place, a new label).
    other = sum(s in before and before[s]["split"] == f.split
                and before[s] != dict(zip(FILES_COLUMNS, _csv_row(f), strict=True))
                for s, f in planned.items())
    if not (new or out or moved or other):
        return  # the same rows, written otherwise (line ends, quoting): nothing moves
    splits = "/".join(split_plan.splits)
    example = (f" (e.g. {moved[0].source}: {before[moved[0].source]['split']} to "
               f"{moved[0].split})" if moved else "")
    changed = f", {other} changed in content, class or name" if other else ""
    raise DestinationExistsError(
        f"{source} changed since {dest} was split (or this version of dsprep reads it "
        f"otherwise): {new} new, {len(out) - kept} gone"
        + (f", {kept} no longer chosen" if kept else "") + f", {len(moved)} "
        f"would move between {splits}{example}{changed}; use --force to split again "
        f"({dest}'s {splits} change)")


def _same_text(path: Path, text: str) -> bool:
    try:
        # As written: a name may hold a carriage return, which universal newlines would change.
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read() == text
    except (OSError, UnicodeDecodeError):
        return False


def materialize(
    split_plan: SplitPlan,
    dest: str | os.PathLike,
    *,
    mode: str = "copy",
    force: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> SplitResult:
    """Place the planned files under ``dest`` and write the manifests, ``split.json`` last.

    The split is built in a hidden sibling folder (``.<dest>.split-partial``) and renamed to
    ``dest`` when complete, so an interrupted run never leaves a ``dest`` that looks finished;
    running the same split again reuses what the interrupted run placed and completes it. A
    second process splitting into the same ``dest`` at the same time is refused.

    Args:
        split_plan: from :func:`plan`.
        dest: the split folder to create.
        mode: "copy", "hardlink" (falls back to a copy across devices) or "symlink".
        force: replace ``dest`` whatever it holds, and rebuild even an identical split (to
            repair one whose files were damaged).
        progress: show a progress bar while placing files.
        workers: copying threads (default :func:`default_workers`).

    Raises:
        UsageError: an unknown mode, a link mode with a zip source, or ``dest`` overlapping
            the source.
        DestinationExistsError: ``dest`` holds something else, or this split of a source
            that changed since (:func:`check_unchanged`), and ``force`` is false; or another
            process is writing it.
        SplitError: a file to copy changed size since it was planned (the files placed so
            far are kept for the next run).
    """
    _refuse_split_source(split_plan.source, dest)
    with _writing(split_plan.source, dest, mode):
        source = split_plan.source
        dest = _check_target(source, dest, mode)
        files_csv = split_plan.files_csv()
        skipped_csv = split_plan.skipped_csv()
        same_options = check_destination(source, dest, split_plan.options, mode, force=force)
        check_unchanged(split_plan, dest, mode, force=force)
        # The parameters alone do not make a split up to date: the source may have gained or lost
        # files since, so the file lists must match too.
        manifest = split_plan.manifest(mode)
        if (same_options
                and _same_text(dest / FILES_CSV, files_csv)
                and _all_present(dest, split_plan.files)):
            skipped_changed = not _same_text(dest / SKIPPED_CSV, skipped_csv)
            if skipped_changed:
                # Only what was left out changed (a stray or broken file came or went): the
                # placed files stay as they are, so what was built from them stays up to date.
                # split.json first: stopped in between, skipped.csv still differs next time.
                _write_text(dest / MANIFEST, json.dumps(manifest, indent=2) + "\n")
                _write_text(dest / SKIPPED_CSV, skipped_csv)
            _clear_leftovers(dest)
            return SplitResult(dest, already_complete=not skipped_changed,
                               skipped_changed=skipped_changed)
        if same_options:  # repaired by making it again, which replaces the whole folder
            _refuse_foreign_entries(dest, split_plan)
        wanted = json.loads(json.dumps(manifest))

        partial, old = _partial(dest), _old(dest)
        _drop_old_aside(dest)
        marker = _marker(manifest, files_csv)
        result = SplitResult(dest)
        # --force rebuilds from scratch: nothing left by an earlier run is trusted.
        finished = (not force and partial.is_dir()
                    and _same_split(_read_json(partial / MANIFEST), wanted)
                    and _same_text(partial / FILES_CSV, files_csv)
                    and _same_text(partial / SKIPPED_CSV, skipped_csv))
        if not finished:
            resume = (not force and partial.is_dir()
                      and _read_json(partial / _MARKER) == marker)
            if partial.exists() and not resume:
                _remove_partial(partial, force)
            folder = source.is_dir()
            with _room(dest, mode=mode, folder=folder,
                       files=split_plan.files if resume else None):
                partial.mkdir(parents=True, exist_ok=True)
                _like(dest, partial)
                _write_text(partial / _MARKER, json.dumps(marker, indent=2))
                for split_name in split_plan.splits:
                    for label in split_plan.classes:
                        (partial / split_name / label).mkdir(parents=True, exist_ok=True)
            with _room(dest, mode=mode, folder=folder, files=split_plan.files,
                       # --force discards what a run placed: nothing is kept for the next.
                       keep=not force, discard=partial if force else None):
                _place_all(split_plan, partial, mode, resume, result, progress,
                           workers or default_workers())
                _finish(partial, files_csv, skipped_csv, manifest)
        note = _swap(partial, dest, old)
        result.notes += [note] if note else []
        return result


def _refuse_foreign_entries(dest: Path, split_plan: SplitPlan) -> None:
    """Refuse to make ``dest``'s split again while it holds what the split did not write.

    A split with a placed file missing is made again and swapped in whole: notes, a model or
    an HDF5 folder put inside it would go with the old one.
    """
    own_files = {f.path for f in split_plan.files} | {MANIFEST, FILES_CSV, SKIPPED_CSV}
    own_folders = {p for f in split_plan.files for p in _parents(f.path)}
    own_folders |= {f"{s}/{c}" for s in split_plan.splits for c in split_plan.classes}
    own_folders |= set(split_plan.splits)
    foreign: list[str] = []
    for top, folders, names in os.walk(dest):
        rel = os.path.relpath(top, dest).replace(os.sep, "/")
        at = "" if rel == "." else rel + "/"

        def noise(name: str, at: str = at) -> bool:
            return _noise(name) or (at == "" and _ignored(dest, name))

        foreign += [f"{at}{n}/" for n in sorted(folders)
                    if f"{at}{n}" not in own_folders and not noise(n)]
        folders[:] = [n for n in folders if f"{at}{n}" in own_folders]
        foreign += [f"{at}{n}" for n in sorted(names)
                    if f"{at}{n}" not in own_files and not noise(n)]
    if foreign:
        foreign.sort()
        held = f"{len(foreign)} {'entry' if len(foreign) == 1 else 'entries'}"
        raise DestinationExistsError(
            f"{dest} is this split, with a placed file missing or a files.csv changed, and is "
            f"made again whole; it also holds {held} the split did not write, such as "
            f"{foreign[0]}, which that would delete. Move them out of it and run the split "
            "again, or use --force to replace them too")


def _noise(name: str) -> bool:
    """What file browsers and notebooks leave in any folder they show (.DS_Store, Thumbs.db,
    macOS's ._ files, .ipynb_checkpoints/): no loss when a split folder is made again."""
    lower = name.lower()
    return (lower in IGNORED_NAMES or lower in IGNORED_FOLDERS or name.startswith("._")
            or name == ".ipynb_checkpoints")


def _parents(path: str) -> list[str]:
    """The folders above a relative path: "train/cat/x.jpg" -> ["train", "train/cat"]."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


@contextlib.contextmanager
def _writing(source: Path, dest: str | os.PathLike, mode: str):
    """The lock that keeps two splits from writing one ``dest`` (a hidden sibling file, made
    only once ``dest`` is known to lie outside the source). The folders made to hold ``dest``
    are removed again if the run fails before it leaves anything in them."""
    dest = _check_target(source, dest, mode)
    refuse_under_a_file(dest)
    made = []  # from the deepest up
    if not dest.parent.exists():
        made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
        try:
            dest.parent.mkdir(parents=True)
        except OSError as exc:
            raise OSError(exc.errno, f"{dest} cannot be made ({exc.strerror}); choose "
                          "another DEST") from None
    elif not os.access(dest.parent, os.W_OK) and not dest.is_dir():
        raise OSError(errno.EACCES, f"{dest} cannot be made: {dest.parent} cannot be written "
                      "to here; choose another DEST")
    lock = dest / f"{_OWN}.lock" if _inside(dest) else sibling(dest, ".split-lock", ".")
    try:
        with exclusive(lock, dest):
            yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()  # only while empty: what a stopped run keeps stays
            except OSError:
                break
        raise


def _all_present(dest: Path, files: Sequence[PlannedFile]) -> bool:
    """Whether every planned file is in place (one deleted by hand makes the split incomplete,
    and it is built again). A name check per file: ~2 ms per thousand files."""
    root = str(dest)
    return all(os.path.exists(os.path.join(root, f.path)) for f in files)


# What a split folder that cannot be replaced holds while it is written: its work files.
_OWN = ".dsprep-split"


def _inside(dest: Path) -> bool:
    """Whether the split is made inside ``dest`` instead of beside it: ``dest`` is a mount
    point (a container's volume, ``docker run -v host:/out``), which cannot be renamed, a
    folder whose parent cannot be written, or the working folder (a folder put in its place
    would leave the shell that ran the split in a deleted one)."""
    return dest.is_dir() and (_is_mount(dest) or not os.access(dest.parent, os.W_OK)
                              or _is_cwd(dest))


def _is_cwd(dest: Path) -> bool:
    try:
        return Path.cwd().resolve() == dest.resolve()
    except OSError:  # the working folder is gone
        return False


def _is_mount(path: Path) -> bool:
    """A mount point, bind mounts of a folder of the same file system included (which
    ``os.path.ismount`` cannot tell from a folder): those listed in /proc/self/mountinfo."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            points = {line.split()[4] for line in fh if len(line.split()) > 4}
    except OSError:
        return False
    # mountinfo writes a space, tab, newline or backslash as its octal escape (\040).
    real = os.path.realpath(path)
    return any(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point) == real
               for point in points)


def _ignored(dest: Path, name: str) -> bool:
    """Entries of ``dest`` that say nothing of what it holds: dsprep's work files inside a
    folder that cannot be replaced, and the lost+found at a file system's root."""
    return name.startswith(_OWN) or (name == "lost+found" and os.path.ismount(dest))


def _partial(dest: Path) -> Path:
    return dest / f"{_OWN}-partial" if _inside(dest) else sibling(
        dest, ".split-partial", ".")


def _old(dest: Path) -> Path:
    return dest / f"{_OWN}-old" if _inside(dest) else sibling(dest, ".split-old", ".")


def _marker(manifest: dict, files_csv: str) -> dict:
    """What marks an unfinished split whose files are being placed (it can be resumed)."""
    return {**json.loads(json.dumps(manifest)),
            "files_sha256": hashlib.sha256(files_csv.encode()).hexdigest()}


def run(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    options: SplitOptions | None = None,
    *,
    mode: str = "copy",
    force: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> tuple[SplitPlan, SplitResult]:
    """Plan a split of ``src`` and place it in ``dest`` in one call; what ``dsprep split`` runs.

    In copy mode every file is read once: the bytes read for the hash and the image check are
    written straight away to a hidden staging folder inside the unfinished split, and once the
    plan is decided each kept file is renamed from there to its place (the same file system,
    so no second copy) and the rest are deleted. The result is the same, byte for byte, as
    :func:`plan` followed by :func:`materialize`, which this falls back to for the link modes
    (placing a link reads nothing), for a ``dest`` that may already hold this split, and for a
    run that an interruption stopped while placing files (their placed files are reused).

    Args:
        src: the dump folder or ``.zip``.
        dest: the split folder to create.
        options: a :class:`SplitOptions`.
        mode: "copy", "hardlink" (falls back to a copy across devices) or "symlink".
        force: replace ``dest`` whatever it holds, and rebuild even an identical split.
        progress: show a progress bar while reading and placing.
        workers: reading and copying threads (default :func:`default_workers`).

    Returns:
        The plan and what was done.

    Raises:
        UsageError: bad options, an unknown mode, a link mode with a zip source, or ``dest``
            overlapping the source.
        DestinationExistsError: ``dest`` holds something else, or this split of a source
            that changed since (:func:`check_unchanged`), and ``force`` is false; or another
            process is writing it.
        LayoutError: no labelled images found.
        SplitError: a class is too small for the requested counts (nothing is left on disk).
    """
    _refuse_split_source(src, dest)
    with _writing(Path(src).resolve(), dest, mode):
        options = options or SplitOptions()
        workers = workers or default_workers()
        source_path = Path(src).resolve()
        dest = _check_target(source_path, dest, mode)
        partial = _partial(dest)
        # Refuse a dest holding something else before reading every file of the dump.
        maybe_done = check_destination(source_path, dest, options, mode, force=force)
        identity = _identity(source_path, options, mode)
        # Staging copies every usable file before the plan picks some; with --counts or
        # --limit-per-class most may be dropped, and the copies would need room for the dump.
        picks = options.counts is not None or options.limit_per_class is not None
        if mode != "copy" or maybe_done or picks or (not force and _placing(partial, identity)):
            split_plan = plan(src, options, progress=progress, workers=workers, dest=dest)
            return split_plan, materialize(split_plan, dest, mode=mode, force=force,
                                          progress=progress, workers=workers)

        with open_source(src) as source:
            inventory = find_images(source, options.layout, pattern=options.pattern,
                                    labels=options.labels, id_column=options.id_column,
                                    label_column=options.label_column,
                                    group_column=options.group_column)
            _refuse_linked(inventory.linked, source_path, dest)
            _drop_old_aside(dest)  # (before the partial goes: it tells a swap under way)
            if partial.exists():
                # Staged copies of an interrupted one-pass run are not worth checking: redo them.
                _remove_partial(partial, force)
            staging = partial / _STAGING
            partial.mkdir(parents=True)
            _like(dest, partial)
            _write_text(partial / _MARKER, json.dumps(identity))
            staging.mkdir()
            stage = str(staging)
            # One copy per content, named by its SHA-256: the split keeps at most one file of
            # each content, so duplicates left out take no room.
            contents: set[str] = set()
            lock = threading.Lock()

            def stash(data: bytes, digest: str) -> None:
                with lock:
                    if digest in contents:
                        return
                    contents.add(digest)
                _write_bytes(os.path.join(stage, digest), data)

            def check(rel: str) -> _Checked:
                return _check(source, rel, options.verify, options.min_size, stash,
                              max_pixels=options.max_pixels)

            try:
                # The staged copies go first: what is free is then said as it will be.
                with _room(dest, mode=mode, folder=source_path.is_dir(),
                           count=len(inventory.items), discard=partial):
                    checked = _map(check, [rel for rel, _label in inventory.items], workers,
                                   progress, "reading")
                split_plan = _decide(source_path, inventory, checked, options)
            except (Exception, KeyboardInterrupt, SystemExit):
                # A plan that cannot be made (a class too small, no usable image, a full disk),
                # or a stop (Ctrl-C, SIGTERM), leaves nothing behind: the next run would not
                # take the staged copies up, and they can take the room of the dump. Only a
                # kill leaves them, for the next run to discard.
                with system.stops_held():  # not cut short by a second Ctrl-C
                    shutil.rmtree(partial, ignore_errors=True)
                raise
        files_csv = split_plan.files_csv()
        manifest = split_plan.manifest(mode)
        folder = source_path.is_dir()
        with _room(dest, mode=mode, folder=folder, discard=partial):
            # From here on the partial split is resumable like one materialize was placing.
            _write_text(partial / _MARKER, json.dumps(_marker(manifest, files_csv), indent=2))
        # --force discards what a run placed: nothing is kept for the next.
        # The staged copies left are not taken up by a next run: their room comes back.
        with _room(dest, mode=mode, folder=folder, files=split_plan.files, keep=not force,
                   discard=partial if force else staging):
            for split_name in split_plan.splits:
                for label in split_plan.classes:
                    (partial / split_name / label).mkdir(parents=True, exist_ok=True)
            out = str(partial)
            for f in split_plan.files:
                os.replace(os.path.join(stage, f.sha256), os.path.join(out, f.path))
            _finish(partial, files_csv, split_plan.skipped_csv(), manifest)
        note = _swap(partial, dest, _old(dest))
        return split_plan, SplitResult(dest, placed=len(split_plan.files),
                                       notes=[note] if note else [])


@contextlib.contextmanager
def _room(dest: Path, *, mode: str, folder: bool,
          files: Sequence[PlannedFile] | None = None, discard: Path | None = None,
          count: int | None = None, keep: bool = True):
    """Say a full disk or quota as a split that does not fit in ``dest``, not as the hidden
    work file the write failed on, and say what to do. ``files``: the files to place, known
    once the split is planned; the files placed so far then stay for the next run to reuse
    (before, nothing is kept). ``folder``: the source is a folder, so other modes would serve.
    ``discard``: the work folder of a run that keeps nothing (``--force``), or what a run
    keeps no use for, removed so that its room comes back. ``count``: the files to write before
    ``files`` are known. ``keep``: False when the files placed are not kept (``--force``)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if discard is not None:
            shutil.rmtree(discard, ignore_errors=True)
        kept = keep and files is not None
        free, no_entries = _room_left(dest, mode, files, count)
        then = ("The files placed so far are kept: free some space, then run the same command "
                "again to carry on" if kept else
                "Nothing was kept: free some space, then run the same command again")
        instead = {
            # Symbolic links take file entries too; hard links do not.
            "copy": ", or place hard links instead of copies (--mode hardlink, on the dump's "
                    "own disk)" if no_entries else
                    ", or place links instead of copies (--mode symlink, or --mode hardlink "
                    "on the dump's own disk)",
            # Hard links to another disk are copies, which take the room of the images.
            "hardlink": ", or place symbolic links (--mode symlink)",
        }.get(mode, "") if folder else ""
        # Still an OSError of the same errno for code that catches those.
        raise OSError(exc.errno, f"{dest}: the split does not fit ("
                      f"{exc.strerror or os.strerror(exc.errno)}{free}). {then}{instead}.") from exc


def _room_left(dest: Path, mode: str, files: Sequence[PlannedFile] | None,
               count: int | None = None) -> tuple[str, bool]:
    """What the split needs against what is free on ``dest``'s disk: the bytes of its copies
    (hard links that fall back to copies across disks take them too; symbolic links only a
    little each), and the file entries (inodes) where fewer are free than it has files (or
    than the ``count`` files it writes before it is planned); and whether those ran short."""
    if files is None and count is None:
        return "", False
    try:
        # DEST itself when it exists: a mount point is filled in place.
        fs = os.statvfs(dest if dest.is_dir() else dest.parent)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return "", False
    needs, whole = "", True
    if files is not None:
        # Those placed already (kept for the next run) take their room already.
        placed = _partial(dest)
        left = [f for f in files if not _placed_whole(placed / f.path, f, mode)]
        whole = len(left) == len(files)
        what = "its files" if whole else "the files still to place"
        # Each copy takes whole blocks: small files (thumbnails) take far more than their size.
        block = fs.f_frsize or fs.f_bsize or 4096
        copies = f"{sum(-(-f.size // block) * block for f in left) / 1e6:,.1f} MB"
        needs = {"copy": f"{what} take {copies}, and ",
                 "hardlink": f"{what} take {copies} where hard links become copies, and "
                 }.get(mode, "") if left else ""
        count = len(left)
    text = f"; {needs}{fs.f_bavail * fs.f_frsize / 1e6:,.1f} MB are free there"
    # A hard link takes no file entry; a file system that makes them as it goes (btrfs)
    # counts none.
    short = bool(mode != "hardlink" and fs.f_files and fs.f_favail < count)
    if short:
        kind = "links" if mode == "symlink" else "files"
        text += (f", and {fs.f_favail:,} file entries (inodes) for "
                 + (f"its {count:,} {kind}" if whole else f"the {count:,} {kind} still to place"))
    return text, short


def _placed_whole(target: Path, f: PlannedFile, mode: str) -> bool:
    """Whether ``target`` looks placed in full: a link, or a file of the planned size (a copy
    the full disk cut short is not)."""
    try:
        st = os.lstat(target)
    except OSError:
        return False
    return mode == "symlink" or st.st_size == f.size


def _placing(partial: Path, identity: dict) -> bool:
    """Whether ``partial`` is this split, finished or stopped while its files were placed.

    Either way :func:`materialize` completes it and reuses what is in place; anything else
    left there is discarded.
    """
    if not partial.is_dir():
        return False
    if _same_split(_read_json(partial / MANIFEST), identity):
        return True
    found = _read_json(partial / _MARKER)
    return _same_split(found, identity) and "files_sha256" in found


def _write_bytes(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _BINARY, 0o666)
    try:
        view = memoryview(data)
        with naming(path):
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _check_target(source: Path, dest: str | os.PathLike, mode: str) -> Path:
    """Refuse an unknown mode, links into an archive and a ``dest`` overlapping the source."""
    if mode not in MODES:
        raise UsageError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    dest = Path(dest).absolute()
    if dest.name == "..":  # "out/.." (a rename of it fails): the folder it stands for
        dest = Path(os.path.realpath(dest))
    elif ".." in dest.parts:  # "link/../out": ".." as the OS takes it, after the link
        dest = Path(os.path.realpath(dest.parent)) / dest.name
    refuse_dangling_link(dest)
    if dest.is_symlink() and dest.is_dir():
        # A link to a folder: the split goes into the folder (the link is left as it is).
        dest = dest.resolve()
    if mode != "copy" and not source.is_dir():
        raise UsageError(f"--mode {mode} needs a source folder, but {source} is an archive; "
                         "use --mode copy")
    real_dest = dest.resolve()
    if _within(real_dest, source) or _within(source, real_dest):
        raise UsageError(f"{dest} and the source {source} overlap; put the split folder "
                         "outside the dump (the source is never modified)")
    return dest


def _refuse_linked(linked: Sequence[str], source: Path, dest: Path) -> None:
    """Refuse a ``dest`` inside a folder the dump reaches through a link: the split would be
    read as part of the dump the next time."""
    real = dest.resolve()
    for folder in linked:
        if _within(real, Path(folder)):
            raise UsageError(f"{dest} lies inside {folder}, which the source {source} reaches "
                             "through a link (its images are part of the dump); put the split "
                             "folder outside both")


def _finish(partial: Path, files_csv: str, skipped_csv: str, manifest: dict) -> None:
    """Write the manifests of a fully placed split, ``split.json`` last.

    The in-progress marker goes only once ``split.json`` is written: a split that cannot
    write it (a full disk) stays resumable, its placed files reused by the next run.
    """
    _sweep_parts(partial)
    # A one-pass run interrupted while placing leaves its staged copies; a resumed run no
    # longer needs them.
    if (partial / _STAGING).exists():
        shutil.rmtree(partial / _STAGING)
    _write_text(partial / FILES_CSV, files_csv)
    _write_text(partial / SKIPPED_CSV, skipped_csv)
    _write_text(partial / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (partial / _MARKER).unlink(missing_ok=True)


def _like(dest: Path, folder: Path) -> None:
    """Give the folder a split is written into what an existing ``dest`` has of its own: its
    mode (a group-private 2770 project folder must not become 755), its group (and owner, as
    root), and its extended attributes (ACLs); the group and a default ACL are then inherited
    by what is made in it. Its owner keeps the right to change it: a split put in place of a
    0555 DEST is replaced by the next --force, which must remove it.
    """
    if _inside(dest) or dest.is_symlink() or not dest.is_dir():
        return
    try:
        st = os.stat(dest)
    except OSError:
        return
    with contextlib.suppress(OSError, AttributeError):  # a group one is not a member of
        os.chown(folder, st.st_uid if os.geteuid() == 0 else -1, st.st_gid)
    with contextlib.suppress(OSError, AttributeError):  # no extended attributes there
        for name in os.listxattr(dest):
            with contextlib.suppress(OSError):
                os.setxattr(folder, name, os.getxattr(dest, name))
    os.chmod(folder, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def _swap(partial: Path, dest: Path, old: Path) -> str | None:
    """Rename the finished split into place, replacing whatever ``dest`` held; a note if
    what it held could not all be removed afterwards.

    A crash between the two renames leaves the finished split in ``partial``, which the next
    run moves into place without copying again.
    """
    # A run stopped between writing split.json and removing the marker left both.
    (partial / _MARKER).unlink(missing_ok=True)
    if _inside(dest):
        return _swap_inside(partial, dest, old)
    _like(dest, partial)
    if old.exists():
        left = _remove_old(old, dest)
        if left:
            raise SplitError(f"{left}; then run the same command again")
    # A stop between the two renames would leave no DEST, the old split aside and the new
    # one in its work folder: it comes after them.
    try:
        with system.stops_held():
            if dest.is_dir() and not any(dest.iterdir()):
                dest.rmdir()
            elif dest.is_dir() and not dest.is_symlink():
                os.replace(dest, old)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(partial, dest)
    except (KeyboardInterrupt, SystemExit) as stop:
        if not partial.exists():  # the stop came after the renames, as held
            stop.after_stop = _complete_after_stop(dest, old)
        raise
    return _remove_old_after_swap(old, dest) if old.exists() else None


def _remove_old_after_swap(old: Path, dest: Path) -> str | None:
    """``_remove_old`` once the new split is in place: a stop then (a job's time limit, while
    a large old split is removed) cuts short only the clearing up, and says so."""
    try:
        return _remove_old(old, dest)
    except (KeyboardInterrupt, SystemExit) as stop:
        stop.after_stop = _complete_after_stop(dest, old)
        raise


def _complete_after_stop(dest: Path, old: Path) -> str:
    """What a split stopped once it was in place says."""
    return (f"The split is complete in {dest}" + (
        f"; what it held before is left in {old}, which the next split into {dest} removes "
        "(or remove it yourself)." if old.exists() else "."))


def _remove_old(old: Path, dest: Path) -> str | None:
    """Remove what ``dest`` held before (set aside in ``old``); where that fails, say so."""
    try:
        shutil.rmtree(old)
    except OSError as exc:
        where = exc.filename if exc.filename and os.path.isabs(exc.filename) else old
        return (f"what {dest} held before the split could not all be removed ({where}: "
                f"{exc.strerror or exc}); it is left in {old}: remove it yourself")
    return None


def _swap_inside(partial: Path, dest: Path, old: Path) -> str | None:
    """Move a finished split into a ``dest`` that cannot be replaced (see :func:`_inside`):
    what it held goes aside, then the split's entries move in, ``split.json`` last.

    A journal file, holding the split's manifest, marks the moment the old entries are all
    aside, so a run of the same split stopped while the new ones move in is completed by the
    next without taking new entries for old ones; any other split moves them all aside.
    """
    journal = dest / f"{_OWN}-swapping"
    manifest = _read_json(partial / MANIFEST) or {}
    if _read_json(journal) != manifest:
        old.mkdir(exist_ok=True)
        # split.json last, so that until all is aside DEST still reads as the split it was.
        for name in _manifest_last(n for n in os.listdir(dest) if not _ignored(dest, n)):
            if (old / name).exists() or (old / name).is_symlink():
                _remove(old / name)  # left there by a run stopped before
            os.replace(dest / name, old / name)
        write_atomic(journal, json.dumps(manifest))
    for name in _manifest_last(os.listdir(partial)):
        if (dest / name).exists() or (dest / name).is_symlink():
            _remove(dest / name)  # moved in by a run of this split stopped before
        os.replace(partial / name, dest / name)
    partial.rmdir()
    journal.unlink()
    return _remove_old_after_swap(old, dest)


def _manifest_last(names) -> list[str]:
    return sorted(names, key=lambda name: (name == MANIFEST, name))


def _drop_old_aside(dest: Path) -> None:
    """Remove the split before the one in DEST, set aside by a run stopped after its swap
    (while it removed it), before new copies are made: it would hold room they need (what
    cannot be removed is said at the swap). Not while a swap into a mount point is under way,
    whose aside folder may hold DEST's own entries."""
    old, partial = _old(dest), _partial(dest)
    if not old.is_dir() or not (dest / MANIFEST).is_file():
        return
    if _inside(dest):
        # The aside folder holds only the split before once the new one is all in: its
        # split.json (moved in last) is the one the journal names, or the swap ended.
        journal = dest / f"{_OWN}-swapping"
        if journal.exists():
            if _read_json(journal) != _read_json(dest / MANIFEST):
                return
        elif partial.exists():
            return  # its entries may be going aside
    with contextlib.suppress(OSError):
        shutil.rmtree(old)


def _clear_leftovers(dest: Path) -> None:
    """Remove what a run killed after its split was in place left: the previous split set
    aside, an empty work folder, a swap journal."""
    for path in (_old(dest), dest / f"{_OWN}-old"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        (dest / f"{_OWN}-partial").rmdir()  # only if empty
    # Suppressed: a split mounted read-only answers even a missing name with EROFS.
    with contextlib.suppress(OSError):
        (dest / f"{_OWN}-swapping").unlink()
    # A --force run of another split stopped before its swap: only another --force could take
    # its files up, and that starts afresh. They can be a whole copy of the data.
    partial = _partial(dest)
    if partial.is_dir():
        with contextlib.suppress(DestinationExistsError, OSError):
            _remove_partial(partial, force=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_partial(partial: Path, force: bool) -> None:
    """Remove an unfinished split left by an earlier run with other parameters.

    It is known for dsprep's by its marker or manifest; also when empty (a run stopped just
    after making it), holding only its staged copies (one killed while it removed them) or
    holding files.csv (one stopped between the marker's removal and the manifest's writing).
    """
    ours = any((partial / name).exists() for name in (_MARKER, MANIFEST, FILES_CSV)) or (
        # Empty, or holding only staged copies (a run killed while it removed them).
        partial.is_dir() and {p.name for p in partial.iterdir()} <= {_STAGING}) or any(
        # A run killed while it wrote its first marker.
        partial.glob(glob.escape(_MARKER) + "*"))
    if not (ours or force):
        raise DestinationExistsError(
            f"{partial} exists but was not made by dsprep split; remove it or use --force")
    shutil.rmtree(partial)


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text, tmp=sibling(path, _PART))


def _place_all(split_plan: SplitPlan, partial: Path, mode: str, resume: bool,
               result: SplitResult, progress: bool, workers: int) -> None:
    todo = split_plan.files
    if resume:
        reusable = _map(lambda f: _in_place(partial / f.path, f, split_plan.source, mode),
                        split_plan.files, workers, False, "")
        todo = [f for f, ok in zip(split_plan.files, reusable, strict=True) if not ok]
        for f in todo:
            target = partial / f.path
            if target.exists() or target.is_symlink():
                target.unlink()
        staging = partial / _STAGING
        if staging.is_dir():
            # Copies a one-pass run staged before it was stopped while placing: moved into
            # place rather than copied again, and the rest removed before any copy, so a disk
            # that held the split with them holds it now.
            if mode == "copy":
                todo = [f for f in todo if not _take_staged(staging, f, partial)]
            shutil.rmtree(staging)
        result.reused = len(split_plan.files) - len(todo)
    source = open_source(split_plan.source) if not split_plan.source.is_dir() else None
    try:
        root, out = str(split_plan.source), str(partial)
        fell_back = _map(lambda f: _place(root, source, f, os.path.join(out, f.path), mode),
                         todo, workers, progress, "placing")
    finally:
        if source is not None:
            source.close()
    result.placed += len(todo)
    result.copied_instead += sum(fell_back)


def _take_staged(staging: Path, f: PlannedFile, partial: Path) -> bool:
    """Move the staged copy of ``f`` (named by its SHA-256, written whole before the run
    planned) into place, if there is one of its size."""
    staged = staging / f.sha256
    try:
        if staged.stat().st_size != f.size:
            return False
    except OSError:
        return False
    os.replace(staged, partial / f.path)
    return True


def _in_place(target: Path, f: PlannedFile, root: Path, mode: str) -> bool:
    """Whether an interrupted run already placed this file whole (checked by content)."""
    try:
        if mode == "symlink":
            return os.readlink(target) == os.path.abspath(root / f.source)
        if target.is_symlink() or target.stat().st_size != f.size:
            return False
        with open(target, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest() == f.sha256
    except OSError:
        return False


def _place(root: str, archive, f: PlannedFile, target: str, mode: str) -> bool:
    """Put one file in place; True if a hard link had to become a copy.

    Files go straight to their final names: the whole folder is unfinished until it is renamed,
    and a resumed run checks each file's content before reusing it. Paths are plain strings:
    this runs once per file, and pathlib's parsing cost as much as the copy itself.
    """
    fell_back = False
    if archive is not None:
        with open(target, "wb") as fh:
            fh.write(archive.read(f.source))
    elif mode == "symlink":
        os.symlink(os.path.abspath(os.path.join(root, f.source)), target)
    elif mode == "hardlink":
        source = os.path.join(root, f.source)
        if os.path.islink(source):
            # A link of the dump's own: os.link would link the link itself, whose relative
            # target means nothing from DEST.
            source = os.path.realpath(source)
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            _copy_planned(root, f, target)
            fell_back = True
    else:
        _copy_planned(root, f, target)
    return fell_back


def _copy_planned(root: str, f: PlannedFile, target: str) -> None:
    """Copy a planned file, refusing one whose size changed since it was checked (a dump still
    being written or unpacked): its hash, size and checks in files.csv would describe other
    bytes. A rewrite of the same size is not seen here."""
    copy_file(os.path.join(root, f.source), target)
    size = os.stat(target).st_size
    if size != f.size:
        os.unlink(target)
        raise SplitError(
            f"{os.path.join(root, f.source)} changed while the split ran ({f.size:,} bytes when "
            f"it was checked, {size:,} when copied): let whatever writes the dump finish, then "
            "run the same command again"
        )


_BINARY = getattr(os, "O_BINARY", 0)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the bytes of one file (no metadata), in the kernel where it can.

    Two opens and a ``sendfile`` loop: ``shutil.copyfile`` adds four ``stat`` calls per file
    (same-file and special-file checks) that a planned copy does not need, since the source was
    listed as a regular file and the target is a new name in a folder of our own.
    """
    fin = os.open(src, os.O_RDONLY | _BINARY)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _BINARY, 0o666)
        try:
            with naming(dst, reads=src):
                _copy_fd(fin, fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _copy_fd(fin: int, fout: int) -> None:
    if hasattr(os, "sendfile") and sys.platform.startswith("linux"):
        try:
            # Offset None: read from the current position, until the end, whatever the size.
            while os.sendfile(fout, fin, None, 1 << 30):
                pass
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
                raise
            # No sendfile between these file systems: restart with plain reads.
            os.lseek(fin, 0, os.SEEK_SET)
            os.lseek(fout, 0, os.SEEK_SET)
            os.ftruncate(fout, 0)
    while chunk := os.read(fin, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fout, view):]


def _sweep_parts(partial: Path) -> None:
    """Remove temporary manifest files an interrupted run left behind."""
    for leftover in partial.glob(f"*{_PART}"):
        leftover.unlink()
