"""The build pipeline: decode and resize images in worker processes, stream them into HDF5.

Workers write pixels into a shared-memory ring of blocks and send back only small metadata; the
parent appends finished blocks in order, so memory is bounded by the ring, not the dataset.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import errno
import hashlib
import json
import mmap
import os
import re
import stat
import sys
import threading
import time
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing import shared_memory
from pathlib import Path

import cv2
import numpy as np

from . import images as imagelib
from . import split as split_stage
from . import store, system
from .errors import (
    CorruptImageError,
    DestinationExistsError,
    DsprepError,
    ImageTooLargeError,
    LayoutError,
    UsageError,
    whole_number,
)
from .fileio import (
    NAME_MAX,
    csv_text,
    exclusive,
    progress_bar,
    quoted,
    refuse_dangling_link,
    refuse_empty_path,
    sync_file,
    sync_folder,
    write_atomic,
)
from .sources import (
    BAD_NAME,
    DANGLING_LINK,
    MASK,
    MISSING_FILE,
    NO_LABEL,
    UNREADABLE,
    UNSUPPORTED,
    FolderSource,
    chunk_folders,
    class_folder_files,
    classless_splits,
    is_image_name,
    is_submission_template,
    namesake,
    own_split_folders,
    pixel_tables,
    split_of,
    visible_folders,
)
from .split import (
    class_name_warnings,
    read_files,
    read_placed,
    read_split_classes,
    refuse_unfinished_split,
    skip_reason,
    split_above,
    split_below,
)
from .stats import ChannelStats, ImageSums, means_record, write_means

SPLITS = split_stage.SPLITS
ORDERS = store.ORDERS
MEANS_NAME = "means.json"
SKIPPED_NAME = "skipped.csv"
# Held in OUT while a build writes there.
BUILD_LOCK_NAME = ".dsprep-build.lock"
# Lists the final names a build is renaming its finished files to (see _build_files).
PUBLISHING_NAME = store.PUBLISHING_NAME
# Images per HDF5 chunk. Measured on 2 cores writing 2,048 256x256 images: uncompressed chunks of
# 64 images wrote fastest (~6,600 images/s) and per-row random reads stayed ~7,000 images/s; with
# lzf a 64-image chunk cut random row reads to ~470 images/s while 8 kept ~2,300.
DEFAULT_CHUNK_IMAGES = store.DEFAULT_CHUNK_IMAGES
DEFAULT_CHUNK_IMAGES_COMPRESSED = 8
# Images a worker decodes per task: enough to hide the per-task overhead.
_TASK_IMAGES = 64
# Ring blocks per worker: tasks queued beyond the running ones. Blocks are consumed in order, so
# a worker that finishes early runs ahead by up to this many blocks while the parent waits on a
# slower one or on a disk write; with 2 a worker sometimes waited for a free block. 4 blocks of
# 64 256x256 images are 50 MB per worker, whatever the number of images.
_BLOCKS_PER_WORKER = 4
# The last blocks of a file go out in quarters, so the workers finish within a short task of
# each other (a whole block is ~0.13 s of one core that the other would spend waiting).
_TAIL_BLOCKS_PER_WORKER = 2
_TAIL_SPLIT = 4


# The largest --seed: the files record it as a signed 64-bit integer.
SEED_MAX = 2**63 - 1


@dataclass(frozen=True)
class BuildOptions:
    """How images become rows: geometry, decoding, order, storage and parallelism.

    Attributes:
        size: (height, width) of the stored images.
        resize: "crop" (aspect-aware, centre crop), "stretch" or "pad".
        interpolation: an OpenCV interpolation name, or None for area when shrinking and cubic
            when enlarging.
        exact: always decode at full resolution (no reduced decoding).
        max_pixels: refuse images with more pixels than this (None: no limit). A split made
            with another ``--max-pixels`` keeps images this refuses: ``split_pixel_limit(src)``
            is its limit (``dsprep.split``; what the command line uses by default).
        order: "shuffled" (with ``seed``) or "sorted" (by class, then path).
        seed: seed of the shuffle.
        chunk_images: images per HDF5 chunk (None: 64 uncompressed, 8 compressed).
        compression: "none", "lzf" or "gzip".
        workers: decoding processes (None: all cores; 1: decode in this process).
    """

    size: tuple[int, int] = (256, 256)
    resize: str = "crop"
    interpolation: str | None = None
    exact: bool = False
    max_pixels: int | None = imagelib.DEFAULT_MAX_PIXELS
    order: str = "shuffled"
    seed: int = 0
    chunk_images: int | None = None
    compression: str = "none"
    workers: int | None = None

    def validate(self) -> BuildOptions:
        """Raise UsageError for a value that cannot work; return self."""
        # A frozen dataclass: the checked values replace what was given (256 -> (256, 256),
        # numpy integers -> int), so the rest of the build sees one type.
        height, width = imagelib.parse_size(self.size)
        object.__setattr__(self, "size", (height, width))
        if height * width * 3 > store.MAX_CHUNK_BYTES:
            raise UsageError(f"size {height}x{width} is too large: one image would take "
                             f"{height * width * 3:,} bytes, and an HDF5 chunk holds less "
                             "than 4 GiB")
        imagelib.check_resize(self.resize, self.interpolation)
        if self.order not in ORDERS:
            raise UsageError(f"order {self.order!r} is not one of {', '.join(ORDERS)}")
        if self.compression not in store.COMPRESSIONS:
            raise UsageError(f"compression {self.compression!r} is not one of "
                             f"{', '.join(store.COMPRESSIONS)}")
        for name in ("chunk_images", "workers", "max_pixels"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, whole_number(getattr(self, name), name, 1))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed <= SEED_MAX:
            # numpy's generators refuse negative seeds, and the file records the seed as a
            # 64-bit integer; say so before any work is done.
            raise UsageError(f"seed {self.seed!r} must be a whole number from 0 to {SEED_MAX}")
        return self

    @property
    def chunk(self) -> int:
        """Images per HDF5 chunk, the default filled in."""
        if self.chunk_images is not None:
            return self.chunk_images
        return DEFAULT_CHUNK_IMAGES if self.compression == "none" else \
            DEFAULT_CHUNK_IMAGES_COMPRESSED

    @property
    def worker_count(self) -> int:
        """Decoding processes, the default filled in."""
        return self.workers or system.usable_cpus()


@dataclass(frozen=True)
class Row:
    """One image to store: its file, its name relative to the source root, its class id.

    ``find_rows`` gives the file as a string (a ``Path`` per file costs more than the listing);
    any path-like works.
    """

    path: str | os.PathLike
    name: str
    label: int


@dataclass(frozen=True)
class Skip:
    """An image left out of a file, and why."""

    source: str
    reason: str
    detail: str


@dataclass
class FileReport:
    """What building one HDF5 file did."""

    path: Path
    split: str
    count: int
    skipped: list[Skip]
    stats: ChannelStats
    seconds: float

    @property
    def rate(self) -> float:
        """Images (stored and skipped) handled per second."""
        return (self.count + len(self.skipped)) / self.seconds if self.seconds > 0 else 0.0


class AttentionNote(str):
    """A note that asks for attention (a file not built, a class missing from a split,
    files removed): the command line shows it on stderr, also with ``-q``."""

    __slots__ = ()


@dataclass
class BuildReport:
    """What a whole build did: one report per file, the means and skipped lists, notes."""

    files: list[FileReport]
    means_path: Path | None
    skipped_path: Path
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # printed even with -q
    up_to_date: bool = False  # OUT held this very build already: nothing was done

    @property
    def skipped(self) -> list[Skip]:
        """Every image left out, over all files."""
        return [s for f in self.files for s in f.skipped]


@dataclass(frozen=True)
class _Decode:
    """The per-image decoding parameters sent to workers."""

    size: tuple[int, int]
    resize: str
    interpolation: str | None
    exact: bool
    max_pixels: int | None


@dataclass(frozen=True)
class _Block:
    """What a worker sends back for a block: good positions, skips and channel sums."""

    ok: list[int]
    skips: list[tuple[int, str, str]]
    pixels: int
    sums: np.ndarray
    squares: np.ndarray


# ---------------------------------------------------------------------------------------------
# Inputs


def _holds_an_image(src: Path, limit: int = 100_000) -> bool:
    """Whether an image file lies anywhere in ``src`` (among its first ``limit`` entries)."""
    seen = 0
    for _, folders, files in os.walk(src):
        folders[:] = [f for f in folders if not f.startswith(".")]
        if any(is_image_name(f) for f in files):
            return True
        seen += len(files) + len(folders)
        if seen > limit:
            return True  # too many to look through: taken to hold some
    return False


def _raw_dump(src: Path) -> str | None:
    """Why ``src`` is a raw dump whose folders are no classes, in words, else None: a labels
    CSV at its top, images straight in it with no folder, or folders named as parts of one
    set (HAM10000_images_part_1/, _part_2/)."""
    try:
        entries = [e for e in os.scandir(src) if not e.name.startswith(".")]
        csvs = sorted(e.name for e in entries
                      if e.name.lower().endswith(".csv") and e.is_file())
        folders = [e.name for e in entries if e.is_dir()]
        images = any(is_image_name(e.name) and e.is_file() for e in entries)
    except OSError:
        return None
    if csvs and not images and not _holds_an_image(src):
        return None  # said by the caller: no image file at all
    if csvs:
        # The likeliest labels file: not a submission template; one named for labels or train.
        tables = [c for c in csvs if not is_submission_template(c)] or csvs
        best = next((c for c in tables if "label" in c.lower()),
                    next((c for c in tables if split_of(Path(c).stem) == "train"), tables[0]))
        return f"{best} at its top may hold its labels"
    if images and not folders:
        return "its images lie straight in it, named by class it may be (cat.0.jpg)"
    if chunk_folders(folders):
        more = ", ..." if len(folders) > 2 else ""
        return f"its folders ({', '.join(sorted(folders)[:2])}{more}) are parts of one set"
    return None


def _built_from(src: Path) -> str | None:
    """The folder the dsprep HDF5 files in ``src`` were built from, if it holds them and no
    folder (a build's OUT given as SRC, not class folders beside a stray file)."""
    try:
        for folder in src.iterdir():
            # A folder of images (class folders beside a stray file) makes it no build's
            # OUT; a notebook's .ipynb_checkpoints/ or a runs/ folder does not.
            if folder.is_dir() and not folder.name.startswith(".") and any(
                    is_image_name(name) for _, _, names in os.walk(folder) for name in names):
                return None
    except OSError:
        return None
    for path in sorted(src.glob("*.hdf5")):
        try:
            with store.open_dataset(path) as db:
                return str(db.attrs.get("source_root", "a folder it does not name"))
        except (DsprepError, OSError):
            continue
    return None


def _enlarged_note(src: Path, size: tuple[int, int]) -> str | None:
    """A note when most images of a split (by the sizes its files.csv records) are smaller
    than ``size`` on both sides: each is enlarged to it, in files many times theirs, with no
    detail gained (the default 256x256 for a dump of 32x32 images is 64 times the pixels)."""
    height, width = size
    sizes = []
    for h, w in read_files(src, ("height", "width")) or []:
        with contextlib.suppress(ValueError):
            sizes.append((int(h), int(w)))
    smaller = [(h, w) for h, w in sizes if h < height and w < width]
    if not sizes or len(smaller) * 2 <= len(sizes):
        return None
    mid_h = int(np.median([h for h, _ in sizes]))
    mid_w = int(np.median([w for _, w in sizes]))
    return (f"{len(smaller)} of the {len(sizes)} images of the split are smaller than "
            f"{height}x{width} on both sides (half are {mid_h}x{mid_w} or smaller) and are "
            "enlarged to it, in larger files with no detail gained; a --size near theirs "
            f"(such as {min(mid_h, mid_w)}) keeps them as they are")


def _problem_notes(problems, prefix: str = "") -> list[str]:
    """One note per entry the folder walk could not read, and one for the images beside the
    class folders, so none is left out silently."""
    loose = sorted(p.source for p in problems if p.reason == NO_LABEL)
    masks = sorted((p for p in problems if p.reason == MASK), key=lambda p: p.source)
    notes: list[str] = [f"left out {prefix}{p.source}: {p.reason} ({p.detail})"
                        for p in problems
                        if p.reason not in (*_SKIPPED_PROBLEMS, NO_LABEL, MASK)]
    if masks:
        # COVID-19 Radiography's COVID/masks/ beside COVID/images/: one note for them all.
        notes.append(f"left out {len(masks)} mask{'s' * (len(masks) > 1)} or annotations in "
                     f"folders beside the classes' images, such as {prefix}{masks[0].source} "
                     f"({masks[0].detail})")
    if loose:
        where = f" of {prefix}" if prefix else ""
        it, has = ("them", "they have") if len(loose) > 1 else ("it", "it has")
        notes.append(AttentionNote(f"left out {len(loose)} image{'s' * (len(loose) > 1)} beside "
                                   f"the class folders{where}, such as {prefix}{loose[0]}: "
                                   f"{has} no class; move {it} into a class folder to build "
                                   f"{it}"))
    return notes


# Images the folder walk leaves out that are skipped rows (listed in skipped.csv, counted):
# links whose targets are gone (a split made with --mode symlink whose sources moved), names
# that are not UTF-8, and formats OpenCV does not read (.heic).
_SKIPPED_PROBLEMS = (DANGLING_LINK, BAD_NAME, UNSUPPORTED)


def _dangling_skips(problems, prefix: str = "") -> list[Skip]:
    """The images in class folders the walk left out as skipped rows (see
    ``_SKIPPED_PROBLEMS``)."""
    skips = [Skip(prefix + p.source, p.reason, p.detail) for p in problems
             if p.reason in _SKIPPED_PROBLEMS and "/" in p.source
             and (p.reason == UNSUPPORTED or is_image_name(p.source.rpartition("/")[2]))]
    return sorted(skips, key=lambda s: s.source)


def find_rows(
    src: str | os.PathLike, name: str | None = None, *,
    placed: dict[str, list[str]] | None = None,
) -> tuple[list[str], dict[str, list[Row]], list[str], dict[str, list[Skip]]]:
    """List what to build from a split folder, or from one class-folder tree with ``name``.

    A folder without split.json laid out as split folders of class folders (``train/``,
    ``valid/``, ``seg_test/seg_test/``, ..., as many dumps come; see
    ``sources.own_split_folders``) is built as it is: its classes are the class folders found
    in any of them; folders beside them with no class folders, and one copy of the split
    folders, are left out with a note.

    Returns:
        The class names (id order), the rows of each file to build (by split or ``name``, in
        sorted order), notes about splits left out because they have no files, and the
        dangling image links of each file's folders (skipped rows).
    """
    src = Path(src)
    refuse_unfinished_split(src)
    has_manifest = (src / "split.json").is_file()
    if name is not None:
        if has_manifest:
            raise UsageError(f"{src} is a split folder; drop --name to build train, val and test")
        if not name or Path(name).name != name or name.startswith("."):
            raise UsageError(f"--name {name!r} must be a plain file name such as 'train'")
        if name.lower().endswith((".hdf5", ".h5")):
            # It would write NAME.hdf5.hdf5.
            stem = name.rsplit(".", 1)[0]
            raise UsageError(f"--name {name!r} is without the extension: give {stem!r} to "
                             f"write {stem}.hdf5")
        longest = f"{name}.{SKIPPED_NAME}"
        if len(os.fsencode(longest)) > NAME_MAX:
            raise UsageError(f"--name is too long: the build writes {longest[:24]}... "
                             f"({len(os.fsencode(longest))} bytes), and file names take "
                             f"{NAME_MAX} bytes at most; give a shorter name")
        problems: list = []
        try:
            classes, pairs = class_folder_files(src, problems, unsupported=True)
        except LayoutError:
            if _dangling_skips(problems):  # images there, but every one a dangling link
                raise _all_left_out(name, _dangling_skips(problems)) from None
            raise
        notes = _problem_notes(problems)
        # A split's own folder keeps every class's folder, empty ones too (its ids).
        # (not a class of images left out as skipped rows: its .heic files are listed)
        listed = {p.source.partition("/")[0] for p in problems if p.reason in _SKIPPED_PROBLEMS}
        empty = ([] if split_above(src) else
                 sorted(set(classes) - {c for c, _ in pairs} - listed))
        if empty:
            # Stanford Dogs' Annotation/ beside Images/: a folder of other files is a class too.
            notes.append(AttentionNote(f"no images in {', '.join(f'{src / c}/' for c in empty)}: "
                         f"{'a class' if len(empty) == 1 else 'classes'} without images; move "
                         f"{'it' if len(empty) == 1 else 'them'} out of {src} if "
                         f"{'it is no class' if len(empty) == 1 else 'they are no classes'}"))
        return (classes, {name: _rows(src, "", pairs, classes)}, notes,
                {name: _dangling_skips(problems)})
    notes: list[str] = []
    links: dict[str, list[Skip]] = {}
    unread: dict[str, tuple[str, ...]] = {}  # folders the walk could not read, by split
    if has_manifest:
        classes = read_split_classes(src)
        folders = {split: src / split for split in SPLITS}
    else:
        left_out: list[str] = []
        folders = own_split_folders(src, left_out)
        if not folders:
            above = split_above(src)
            if above is not None:
                alone = (", or pass --name NAME to build this folder alone"
                         if any(p.is_dir() for p in src.iterdir()) else "")
                raise UsageError(f"{src} lies in the split {above}; give {above} to build "
                                 f"train, val and test{alone}")
            below = split_below(src)
            if below is not None:
                raise UsageError(f"{src} has no split.json, but {below} inside it holds a "
                                 f"split; give {below}")
            built = _built_from(src)
            if built is not None:
                raise UsageError(f"{src} holds files build-hdf5 wrote, not images; give the "
                                 f"folder they were built from ({built})")
            if not _holds_an_image(src):
                with FolderSource(src) as source:
                    files, _ = source.list_files()
                    tables = pixel_tables(source, files)
                raise UsageError(f"{src} holds no image files{tables}; give the folder that "
                                 "holds the images")
            raw = _raw_dump(src)
            if raw:
                # HAM10000's part folders or Caltech's Annotations/ built with --name would
                # become classes: the dump's labels are for split to find.
                raise UsageError(f"{src} has no split.json, and {raw}: split it first "
                                 f"('dsprep split {quoted(src)} DEST'), then build DEST")
            raise UsageError(
                f"{src} has no split.json; make it with 'dsprep split', pass --name NAME to "
                "build one file from a folder of class sub-folders, or give a folder already "
                "split into train/ val/ test/ class folders")
        classes = None  # the class folders found in them, together
        own = ", ".join(f"{_under(src, f)} as {split}" for split, f in folders.items())
        notes.append(f"no split.json in {src}: building its own split folders ({own})")
        notes += left_out
    scanned: dict[str, list[tuple[str, str]]] = {}
    for split, folder in folders.items():
        if not folder.is_dir() or not any(folder.iterdir()):
            notes.append(AttentionNote(f"{split}: no files in {folder}, no {split}.hdf5 built"))
            continue
        problems: list = []
        try:
            _, pairs = class_folder_files(folder, problems, unsupported=True)
            notes += _problem_notes(problems, _under(src, folder))
            links[split] = _dangling_skips(problems, _under(src, folder))
            unread[split] = tuple(_under(src, folder) + p.source.rstrip("/")
                                  for p in problems if p.reason == UNREADABLE)
        except LayoutError:
            dangling = _dangling_skips(problems, _under(src, folder))
            if dangling:  # images there, but every one a dangling link
                raise _all_left_out(split, dangling) from None
            notes.append(AttentionNote(f"{split}: no images in class folders of {folder}, no "
                                       f"{split}.hdf5 built"))
            continue
        scanned[split] = pairs
    if not scanned:
        raise LayoutError(f"{src} has no images in train/, val/ or test/; "
                          "make the split with 'dsprep split'")
    if classes is None:
        named = classless_splits({split: {c for c, _ in pairs} for split, pairs in scanned.items()})
        for split, folder_name in named.items():
            notes.append(AttentionNote(
                f"left out {folders[split]}/: its images lie in {folder_name}/, named as no "
                f"class of the other splits (images without classes), no {split}.hdf5 built"))
            del scanned[split]
        classes = sorted({c for pairs in scanned.values() for c, _ in pairs})
        # (Testing/Glioma/ beside Training/glioma/: two classes, as split would say)
        notes += [AttentionNote(w) for w in class_name_warnings(classes)]
        for split, pairs in scanned.items():
            missing = sorted(set(classes) - {c for c, _ in pairs})
            if missing:
                notes.append(AttentionNote(f"{split}: no images of class(es) "
                                           f"{', '.join(missing)}"))
    ids = set(classes)
    found: dict[str, list[Row]] = {}
    for split, pairs in scanned.items():
        unknown = sorted({c for c, _ in pairs if c not in ids})
        if unknown:
            raise LayoutError(f"{folders[split]} has classes {unknown} that are not in "
                              f"{src / 'split.json'}; make the split again with 'dsprep split'")
        found[split] = _rows(src, _under(src, folders[split]), pairs, classes)
    if has_manifest:
        _add_missing(found, links, unread, read_placed(src) if placed is None else placed,
                     notes)
    return classes, found, notes, links


def _add_missing(found: dict[str, list[Row]], skips: dict[str, list[Skip]],
                 unread: dict[str, tuple[str, ...]], placed: dict[str, list[str]] | None,
                 notes: list[str]) -> None:
    """Count the files the split placed (``placed``: files.csv's paths by split) that are gone
    from its folders as skipped rows of their file, so a deleted file or class folder is
    reported, not left out unseen. Those the walk could not read (a file, or a folder and all
    in it) are left to their own note. Files the split did not place (put there by hand, or
    by a tool) are built, with a note that counts them: they passed none of the split's checks
    (duplicates, labels in two classes, images of one source in two splits)."""
    # Paths compared composed (NFC): a split copied through a Mac may hold its class folders
    # and names decomposed, the same files as files.csv lists.
    for split, rows in found.items():
        there = {_nfc(r.name) for r in rows} | {_nfc(s.source) for s in skips.get(split, ())}
        unreadable = tuple(_nfc(p) for p in unread.get(split, ()))
        listed = {_nfc(p) for p in (placed or {}).get(split, ())}
        added = (sorted(r.name for r in rows if _nfc(r.name) not in listed)
                 if placed is not None else [])
        if added:
            many = len(added) != 1
            notes.append(AttentionNote(
                f"{split}: {len(added)} file{'s' * many} not placed by the split (not in "
                f"files.csv), such as {added[0]}: added since the split, and built with "
                f"{'their' if many else 'its'} class folder's label, unchecked for duplicates "
                "of other images; to have them checked, add them to the dump and split it "
                "again"))
        gone = sorted(p for p in listed - there
                      if p not in unreadable and not p.startswith(_folders(unreadable)))
        skips[split] = sorted([*skips.get(split, ()), *(
            Skip(path, MISSING_FILE, "placed by the split (files.csv) and gone since: deleted "
                 "or moved") for path in gone)], key=lambda s: s.source)


def _nfc(path: str) -> str:
    return unicodedata.normalize("NFC", path)


def _folders(paths: Sequence[str]) -> tuple[str, ...]:
    """Prefixes that match what lies inside each of ``paths`` (as folders)."""
    return tuple(p + "/" for p in paths)


def _missing_warnings(src: Path, planned: dict[str, list[Row]],
                      skips: dict[str, list[Skip]],
                      placed: dict[str, list[str]] | None) -> list[str]:
    """Warnings for the splits, and the classes of a split, whose every file the split placed
    (``placed``: files.csv's paths by split) is gone since."""
    warnings = []
    for split in SPLITS:
        total = Counter(p.split("/")[1] for p in (placed or {}).get(split, ())
                        if p.count("/") >= 2)
        if not total:
            continue
        if split not in planned:
            warnings.append(f"{split}: the split placed {total.total()} images in "
                            f"{src / split}, and none is there now: no {split}.hdf5 built")
            continue
        gone = Counter(s.source.split("/")[1] for s in skips.get(split, ())
                       if s.reason == MISSING_FILE and s.source.count("/") >= 2)
        lost = sorted(c for c, n in gone.items() if n == total.get(c))
        if lost:
            warnings.append(f"{split}: every image of {', '.join(lost)} the split placed is gone "
                            "since (deleted or moved), so it is not in "
                            f"{split}.hdf5; skipped.csv lists them")
    return warnings


def _under(src: Path, folder: Path) -> str:
    """A split folder's path inside ``src`` ("train/", "seg_train/seg_train/")."""
    return folder.relative_to(src).as_posix() + "/"


def _rows(root: Path, prefix: str, pairs: Sequence[tuple[str, str]],
          classes: Sequence[str]) -> list[Row]:
    """Rows for (class, path) pairs relative to ``root / prefix`` (strings: no Path per file)."""
    ids = {c: i for i, c in enumerate(classes)}
    base = os.path.join(str(root), prefix)
    return [Row(os.path.join(base, rel), prefix + rel, ids[label]) for label, rel in pairs]


def order_rows(rows: Sequence[Row], order: str, seed: int) -> list[Row]:
    """Put rows in file order: sorted by (class, name), or a seeded shuffle of that."""
    ordered = sorted(rows, key=lambda r: (r.label, r.name))
    if order == "sorted":
        return ordered
    if order != "shuffled":
        raise UsageError(f"order {order!r} is not one of {', '.join(ORDERS)}")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]


# ---------------------------------------------------------------------------------------------
# Decoding (runs in the workers, or in this process with one worker)


def _decode_into(out: np.ndarray, paths: Sequence[str], decode: _Decode) -> _Block:
    """Decode ``paths`` into ``out[0:k]`` (good images packed first)."""
    ok: list[int] = []
    # Summed image by image while each is still in the CPU's cache (a whole block afterwards
    # comes back from memory); the sums are exact integers, so this equals a block's sums.
    totals = ImageSums()
    skips: list[tuple[int, str, str]] = []
    for pos, path in enumerate(paths):
        try:
            data = imagelib.read_bytes(path)  # a zero-byte file: EmptyImageError, "empty"
            # Straight into the ring slot: no per-image array to copy afterwards.
            pixels = imagelib.load(data, decode.size, decode.resize, decode.interpolation,
                                   exact=decode.exact, max_pixels=decode.max_pixels,
                                   out=out[len(ok)])
        except FileNotFoundError:
            # Deleted or moved since the build listed it: as a file files.csv lists and the
            # build did not find.
            skips.append((pos, MISSING_FILE, "gone since the build listed it (deleted or "
                                             "moved while it ran)"))
            continue
        except (ImageTooLargeError, CorruptImageError, OSError) as exc:
            skips.append((pos, *skip_reason(exc)))
            continue
        totals.add(pixels)
        ok.append(pos)
    return _Block(ok, skips, totals.pixels, totals.sums, totals.squares)


# Linux's madvise(MADV_POPULATE_WRITE) (5.14 and later): maps a range writable in one call.
_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform == "linux" else None)


def _page_span(offset: int, nbytes: int) -> tuple[int, int]:
    """(start, length) of the whole pages that hold bytes [offset, offset + nbytes)."""
    start = offset - offset % mmap.PAGESIZE
    return start, offset + nbytes - start


def _prefault(shm: shared_memory.SharedMemory, offset: int, nbytes: int) -> None:
    """Map a slot's pages into this process before it is written (once per slot).

    A worker stores ~200 KB per image into the shared ring; left to page faults, each 4 KB
    page costs a fault the first time this process touches it (~0.06 ms per 256x256 image,
    a twentieth of the decode), and one call here maps them all. Where the call is not
    available (before Linux 5.14), the stores fault the pages in as usual.

    Raises:
        DsprepError: the shared memory has no room left for the slot (a store would kill
            the worker with SIGBUS).
    """
    global _POPULATE_WRITE
    key = (shm.name, offset)
    if _POPULATE_WRITE is None or key in _PREFAULTED:
        return
    mapping = getattr(shm, "_mmap", None)
    try:
        mapping.madvise(_POPULATE_WRITE, *_page_span(offset, nbytes))
    except (AttributeError, ValueError):
        _POPULATE_WRITE = None  # no madvise on this mapping: page faults from now on
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
            _POPULATE_WRITE = None  # an older kernel: page faults from now on
        else:  # EFAULT or ENOMEM: the pages cannot be had
            raise DsprepError(_shm_full_message(shm.size)) from exc
    _PREFAULTED.add(key)


def _shm_full_message(nbytes: int, free: int | None = None, where: str | None = None) -> str:
    where = where or _SHM_WHERE
    short = (f"{where} has {free / 1e6:,.1f} MB free" if free is not None
             else f"{where} ran out of room")
    if where != _SHM_WHERE:
        return (
            f"{short}; the decoding workers' shared buffer needs {nbytes / 1e6:,.1f} MB, and "
            "may take half of it (the rest is for the workers themselves). Use fewer --workers "
            "(--workers 1 needs none) or a smaller --size, or give the job more memory"
        )
    return (
        f"{short}; the decoding workers need {nbytes / 1e6:,.1f} MB there. Free space in it, "
        "use fewer --workers (--workers 1 needs none), or in a container give it more "
        "(docker run --shm-size=1g)"
    )


_PREFAULTED: set[tuple[str, int]] = set()


_ATTACHED: dict[str, shared_memory.SharedMemory] = {}


def _init_worker(parent: int | None = None) -> None:
    # OpenCV's own thread pool would fight the worker processes for the same cores.
    cv2.setNumThreads(1)
    # A bad image is reported in skipped.csv; OpenCV's messages about it ("imdecode_: can't
    # read data") would only bypass -q.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    # libjpeg and libpng print their warnings ("Corrupt JPEG data: ...") straight to file
    # descriptor 2, below OpenCV's logging. A worker has nothing else to say there: its results
    # and exceptions travel back through the pool, so its stderr goes to the null device.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    exit_with_parent(parent=parent)


def exit_with_parent(poll: float = 1.0, parent: int | None = None) -> None:
    """End this process soon after its parent ends, even if the parent was killed outright.

    A decoding worker whose build was killed (``kill -9``, the out-of-memory killer) would
    otherwise live on, holding its memory and the shared ring, which then outlives the build
    in ``/dev/shm``. A daemon thread checks the parent's id every ``poll`` seconds. ``parent``
    is the id the parent gave when it started this process: a parent killed while this one
    was still starting is then noticed too (its own ``getppid()`` would already be another).
    """
    parent = os.getppid() if parent is None else int(parent)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="dsprep-parent-watch", daemon=True).start()


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's log while this process decodes (a failure is reported in skipped.csv),
    then restore it."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _attach(name: str) -> shared_memory.SharedMemory:
    shm = _ATTACHED.get(name)
    if shm is None:
        for old in _ATTACHED.values():
            try:
                old.close()
            except BufferError:  # a view is still alive; the mapping goes when it does
                pass
        _ATTACHED.clear()
        _PREFAULTED.clear()
        # Attaching registers the segment with the resource tracker again; loky workers share
        # the parent's tracker, so that only repeats the parent's entry, and the tracker still
        # unlinks the segment if the parent is killed.
        shm = shared_memory.SharedMemory(name=name)
        _ATTACHED[name] = shm
    return shm


def _decode_block(name: str, shape: tuple[int, ...], slot: int, paths: list[str],
                  decode: _Decode) -> _Block:
    """Worker entry point: decode into slot ``slot`` of the shared ring called ``name``."""
    shm = _attach(name)
    ring = np.ndarray(shape, dtype=np.uint8, buffer=shm.buf)
    _prefault(shm, slot * ring[0].nbytes, ring[0].nbytes)
    return _decode_into(ring[slot], paths, decode)


class _InlineFuture:
    """A finished result, shaped like a future, for decoding in this process."""

    def __init__(self, value: _Block) -> None:
        self._value = value

    def result(self) -> _Block:
        return self._value


# ---------------------------------------------------------------------------------------------
# Writing one file


# Shared rings are named dsprep-ring-<host>-<pid>-<random>, so one whose build was killed
# with all its processes (kill -9 of the process group: the resource tracker that would have
# removed it dies too) is found and removed by the next build on the host.
_RING_PREFIX = "dsprep-ring-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", os.uname().nodename)[:32] if hasattr(os, "uname") \
        else "host"


def _sweep_rings() -> list[str]:
    """Remove the shared rings in /dev/shm of this host's builds whose process is gone."""
    mine = f"{_RING_PREFIX}{_host()}-"
    removed = []
    try:
        names = [n for n in os.listdir(SHM_DIR) if n.startswith(mine)]
    except OSError:
        return removed
    for name in names:
        pid = name[len(mine):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        # A process this one cannot see (another PID namespace sharing /dev/shm) may own it:
        # its owner holds a lock on it for the ring's life, which a kill releases.
        import fcntl  # POSIX only; rings are swept on Linux alone

        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_size == 0:
                continue  # being made: its owner sizes it only once it holds its lock
        except OSError:
            continue  # held: in use
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(name)
        finally:
            os.close(fd)
    return removed


def _locked_segment(nbytes: int) -> int:
    """Create a ring's file in /dev/shm, locked from its first moment (no sweep can take it
    between its creation and its lock), of ``nbytes``; return the open, locked descriptor."""
    import fcntl  # Linux here

    while True:
        name = f"{_RING_PREFIX}{_host()}-{os.getpid()}-{os.urandom(4).hex()}"
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            # Between this open and this lock a sweep could take the lock first: it leaves
            # an empty file alone (see _sweep_rings), and the size comes only after the lock.
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                os.ftruncate(fd, nbytes)
            except OSError as exc:  # a file size limit (ulimit -f) counts this file too
                raise DsprepError(
                    f"cannot make the {nbytes / 2**20:.0f} MB of shared memory the decoding "
                    f"workers write into ({path}: {exc.strerror or exc}); use --workers 1, "
                    "which needs none, or raise the limit ('ulimit -f')") from exc
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return fd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # there, but not ours to signal
    return True


class _Ring:
    """Blocks of image slots the workers fill: shared memory for processes, plain for one."""

    def __init__(self, blocks: int, block: int, size: tuple[int, int], shared: bool) -> None:
        self.shape = (blocks, block, size[0], size[1], 3)
        nbytes = int(np.prod(self.shape))
        self.shm = None
        self._held: int | None = None
        if shared:
            if sys.platform.startswith("linux"):
                _sweep_rings()
                self._held = _locked_segment(nbytes)
                path = os.readlink(f"/proc/self/fd/{self._held}")
                try:
                    self.shm = shared_memory.SharedMemory(name=os.path.basename(path))
                except BaseException:
                    os.close(self._held)
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    raise
            else:  # elsewhere names are short (31 bytes on macOS) and not in /dev/shm
                self.shm = shared_memory.SharedMemory(create=True, size=nbytes)
        # Page-aligned (shared memory is mapped pages), so whole chunks can go to the file
        # with O_DIRECT straight from a slot.
        try:
            self.array = (np.ndarray(self.shape, dtype=np.uint8, buffer=self.shm.buf)
                          if self.shm else store.page_aligned_empty(self.shape))
        except BaseException:
            self.close()  # the segment is made and locked: it would stay until the process ends
            raise

    def close(self) -> None:
        if self.shm is not None:
            shm, self.shm = self.shm, None
            shm.unlink()
        if self._held is not None:  # after the unlink: no sweep can take it in between
            held, self._held = self._held, None
            os.close(held)
            self.__dict__.pop("array", None)
            try:
                shm.close()
            except BufferError:
                # A traceback still holds a view of the ring; the mapping goes with it.
                pass


# Where Linux keeps POSIX shared memory (a tmpfs; Docker gives containers 64 MB by default).
SHM_DIR = "/dev/shm"
_SHM_WHERE = f"shared memory ({SHM_DIR})"


def _ring_blocks(wanted: int, least: int, block_bytes: int) -> int:
    """How many ring blocks to make: ``wanted``, or as many as the shared memory can hold.

    Creating a ring never fails for lack of room (its pages are taken only as they are
    written); the workers would die mid-build with SIGBUS instead, or the job be killed for
    its memory. So on Linux the free space of /dev/shm and the memory the job may still take
    are checked first: a small /dev/shm (a container's is 64 MB unless given more) or a tight
    memory limit gets fewer blocks, down to ``least`` (one per worker and one being written),
    and below that the build is refused with what to do.
    """
    room = _shm_room(block_bytes)
    if room is None:
        return wanted
    free, fit, where = room
    if fit >= wanted:
        return wanted
    if fit >= least:
        return fit
    raise DsprepError(_shm_full_message(least * block_bytes, free, where))


# The part of /dev/shm's free space a ring may take when it cannot have all it wants.
_SHM_SHARE = 0.9
# The part of the job's free memory: the rest is the workers' and the writer's own.
_MEMORY_SHARE = 0.5


def _shm_room(block_bytes: int) -> tuple[int, int, str] | None:
    """Bytes free, how many ring blocks of ``block_bytes`` a ring may take, and what limits it:
    the free space of /dev/shm or the memory the job may still take (``system.memory_room``),
    whichever holds fewer blocks; None where neither is known (not Linux). The ring kept from
    the last file counts as free: it is reused, or freed before a new one is made.
    """
    if not sys.platform.startswith("linux"):
        return None
    kept = _POOL.get("ring")
    kept_bytes = 0 if kept is None else int(np.prod(kept.shape))
    rooms = []
    try:
        fs = os.statvfs(SHM_DIR)
    except OSError:
        pass
    else:
        free = fs.f_bavail * fs.f_frsize + kept_bytes
        rooms.append((int(free * _SHM_SHARE) // block_bytes, free, _SHM_WHERE))
    memory = system.memory_room()
    if memory is not None:
        free = memory[0] + kept_bytes
        rooms.append((int(free * _MEMORY_SHARE) // block_bytes, free, memory[1]))
    if not rooms:
        return None
    fit, free, where = min(rooms, key=lambda room: room[0])
    return free, fit, where


def _shm_unwritable() -> str | None:
    """Why no file can be made in /dev/shm (mounted read-only, or not this user's to write),
    or None where one can, or where it cannot be told (not Linux, a kernel before 3.11).

    Free space alone does not tell it: a read-only /dev/shm has room, and the ring's first
    file failed there, after joblib had warned that it "will operate in serial mode".
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "O_TMPFILE"):
        return None
    try:
        # A file with no name: nothing is left behind, even by a process killed meanwhile.
        fd = os.open(SHM_DIR, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EOPNOTSUPP, errno.EINVAL):
            return None  # unnamed files unsupported: the ring itself will tell
        return exc.strerror or str(exc)
    os.close(fd)
    return None


def _why_no_workers() -> tuple[str, str] | None:
    """Why decoding worker processes cannot run here, and what would let them; None where they
    can: a current folder deleted (a shell left in a folder removed since: loky starts each
    worker there, and failed with a bare "No such file or directory"), or a /dev/shm that
    cannot be written (the workers share their images through it)."""
    try:
        os.getcwd()
    except FileNotFoundError:
        return ("the current folder no longer exists (it was deleted), and decoding workers "
                "start in it", "cd to a folder that exists")
    unwritable = _shm_unwritable()
    if unwritable is not None:
        return (f"{_SHM_WHERE} cannot be written ({unwritable}), and decoding workers share "
                "their images through it", f"make {SHM_DIR} writable")
    return None


def _fit_workers(options: BuildOptions, images: int, notes: list[str]) -> BuildOptions:
    """The default number of decoding workers, lowered to what /dev/shm has room for.

    Each worker needs a block of the shared ring, and a container's /dev/shm is 64 MB unless
    given more: about four blocks of 64 images of 256x256. A worker count the user chose is
    kept (the ring refuses it with what to do); the default becomes what fits, with a note.
    A /dev/shm that cannot be written has room for none, and a current folder deleted
    starts none: this process decodes.
    """
    workers = _workers_for(images, options)
    if options.workers is not None or workers <= 1:
        return options
    why = _why_no_workers()
    if why is not None:
        notes.append(f"{why[0]}: decoding in this process instead of with {workers} workers; "
                     f"{why[1]} to use them")
        return replace(options, workers=1)
    room = _shm_room(_block_images(options, images) * options.size[0] * options.size[1] * 3)
    if room is None:
        return options
    free, fit, where = room
    if fit >= workers + 1:  # one block per worker and one being written
        return options
    fewer = max(1, fit - 1)
    more = ("in a container, give it more (docker run --shm-size=1g)" if where == _SHM_WHERE
            else "give the job more memory")
    room_for = (f"room for {fewer} decoding workers of the {workers} this build would start"
                if fewer > 1 else "too little room for decoding workers: decoding in this "
                f"process instead of with {workers} workers")
    notes.append(f"{where} has {free / 1e6:,.1f} MB free, {room_for}; {more} to use them all")
    return replace(options, workers=fewer)


def _worker_died_message(exc: BaseException) -> str:
    """What to do when a decoding worker died: loky's error names the workers' exit signals."""
    died = f"a decoding worker process died ({type(exc).__name__}"
    if "SIGKILL" in str(exc):
        # Nothing a file does makes a decoder kill itself this way: the kernel's OOM killer (or
        # a job scheduler over its memory limit, or a person) did.
        return (f"{died}: killed with SIGKILL, most often by the system for want of memory); "
                "nothing was written under a final name. Run the command again with fewer "
                "--workers or a smaller --size, or give the job more memory")
    signals = re.search(r"\{(SIG\w+)\(", str(exc))
    return (f"{died}{': ' + signals.group(1) if signals else ''}); nothing was written under a "
            "final name. Run the command again; if it happens again, use --workers 1 to find "
            "the file that crashes the decoder")


class _Appender:
    """Appends good rows to the writer in whole blocks, so every write covers whole chunks."""

    def __init__(self, writer: store.HDF5Writer, block: int, size: tuple[int, int]) -> None:
        self.writer = writer
        self.block = block
        self.size = size
        self.staging: np.ndarray | None = None
        self.rows: list[Row] = []

    def add(self, pixels: np.ndarray, rows: list[Row]) -> None:
        if not self.rows and len(rows) == self.block:
            self._write(pixels, rows)
            return
        if self.staging is None:
            self.staging = store.page_aligned_empty((self.block, *self.size, 3))
        taken = 0
        while taken < len(rows):
            room = self.block - len(self.rows)
            part = rows[taken:taken + room]
            self.staging[len(self.rows):len(self.rows) + len(part)] = \
                pixels[taken:taken + len(part)]
            self.rows += part
            taken += len(part)
            if len(self.rows) == self.block:
                self.flush()

    def flush(self) -> None:
        if self.rows:
            self._write(self.staging[: len(self.rows)], self.rows)
            self.rows = []

    def _write(self, pixels: np.ndarray, rows: list[Row]) -> None:
        self.writer.append(pixels, [r.label for r in rows], [r.name for r in rows])


# The decoding pools kept between files and builds, the builds using each now, and the ring
# kept between files.
_POOL: dict = {}
_POOL_LOCK = threading.Lock()


@contextlib.contextmanager
def _decoding_pool(workers: int, most: int | None = None) -> Iterator:
    """A pool of ``workers`` decoding processes for the block, or a pool kept from before of
    up to ``most`` (a build's ``--workers``: never more).

    Kept between files (and builds), so train, val and test share one start-up: a smaller
    file uses the larger file's pool, keeping fewer tasks in flight on it. A pool of our own,
    not loky's process-wide reusable one: joblib.Parallel elsewhere in the same process (the
    sample dump) expects that one to be set up by joblib itself. Builds in two threads may
    share a pool, and a pool is never shut down while a build uses it. A new pool stops the
    idle ones, and idle workers stop after the timeout.
    """
    from joblib.externals.loky import ProcessPoolExecutor

    system.start_trackers()
    stale = []
    with _POOL_LOCK:
        executors = _POOL.setdefault("executors", {})
        users = _POOL.setdefault("users", Counter())
        fits = sorted(w for w in executors if workers <= w <= max(workers, most or workers))
        executor = executors[fits[0]] if fits else None
        if executor is None:
            stale = [executors.pop(w) for w in list(executors) if not users[executors[w]]]
            executor = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                           initargs=(os.getpid(),), timeout=300)
            executors[workers] = executor
        users[executor] += 1
    for old in stale:
        old.shutdown(wait=False)
    try:
        yield executor
    finally:
        with _POOL_LOCK:
            users[executor] -= 1
            if not users[executor]:
                del users[executor]


def _forget_executor(executor) -> None:
    """Stop a pool whose worker died; the next build starts a fresh one."""
    with _POOL_LOCK:
        executors = _POOL.get("executors", {})
        for workers in [w for w, e in executors.items() if e is executor]:
            del executors[workers]
    executor.shutdown(wait=False)


def shutdown_workers() -> None:
    """Stop the decoding processes kept for later builds (they also stop after idling)."""
    with _POOL_LOCK:
        executors = _POOL.pop("executors", {})
    _drop_ring()
    for executor in executors.values():
        executor.shutdown(wait=True)


atexit.register(shutdown_workers)


def _take_ring(blocks: int, block: int, size: tuple[int, int]) -> _Ring:
    """A shared ring of ``blocks`` blocks, or the one kept from the last file if its blocks
    have the same shape.

    A fresh ring's pages are zeroed and mapped into every worker on first touch (~0.2 ms per
    image slot), so the files of one build (train, val, test) share one; the build frees it
    at its end. A build running in another thread at the same time finds none and makes its
    own.
    """
    ring = _POOL.pop("ring", None)
    if ring is not None and ring.shape[1:] == (block, *size, 3):
        # Its count was fitted to /dev/shm already; any count works (tasks in flight <= blocks).
        return ring
    if ring is not None:
        ring.close()
    system.start_trackers()
    return _Ring(blocks, block, size, shared=True)


def _keep_ring(ring: _Ring) -> None:
    old = _POOL.pop("ring", None)
    if old is not None and old is not ring:
        old.close()
    _POOL["ring"] = ring


def _drop_ring() -> None:
    ring = _POOL.pop("ring", None)
    if ring is not None:
        ring.close()


def _split_tail(tasks: list[list[Row]], workers: int) -> list[list[Row]]:
    """The same rows in the same order, with the last few tasks cut in quarters."""
    if workers < 2:
        return tasks
    tail = _TAIL_BLOCKS_PER_WORKER * workers
    head, last = tasks[:-tail], tasks[-tail:]
    piece = max(1, -(-len(last[0]) // _TAIL_SPLIT))
    return head + [task[i:i + piece] for task in last for i in range(0, len(task), piece)]


def write_file(
    rows: Sequence[Row],
    path: str | os.PathLike,
    classes: Sequence[str],
    options: BuildOptions,
    *,
    split: str,
    source_root: str | os.PathLike,
    overwrite: bool = False,
    publish: bool = True,
    progress: bool = False,
    keep_ring: bool = False,
    left_out: Sequence[Skip] = (),
    pool_workers: int | None = None,
) -> FileReport:
    """Decode, resize and write ``rows`` (in the given order) as one dsprep HDF5 file.

    Bad images are skipped and reported; the file holds only good rows, labels and filenames
    aligned with them. ``left_out`` are images of the file's folders left out before
    decoding (dangling links); they count among its skipped images. With ``publish=False``
    the finished file stays at ``NAME.partial`` for the caller to rename (so several files
    can appear together). With ``keep_ring`` the shared memory the workers decode into is
    kept for the next call (``build_hdf5`` passes it for train, val and test and frees it at
    its end; so does :func:`shutdown_workers`). ``pool_workers`` sizes the decoding pool
    when one must be started (the build passes its largest file's need, so that its smaller
    files share that pool); by default it is this file's need.

    Raises:
        DsprepError: a worker process died (nothing is left under the final name).
    """
    options.validate()
    path = Path(path)
    started = time.perf_counter()
    workers = _workers_for(len(rows), options)
    chunk = options.chunk
    block = _block_images(options, len(rows))
    attrs = _file_attrs(options, split, source_root)
    # What it is built from, so a build run again on the same files can tell it is up to date.
    attrs["sources_stamp"] = sources_stamp(rows, left_out, not _linked(rows))
    writer = store.HDF5Writer(path, len(rows), options.size, classes, chunk_images=chunk,
                              compression=options.compression, attrs=attrs, overwrite=overwrite,
                              direct=True)
    stats = ChannelStats()
    skipped: list[Skip] = list(left_out)
    appender = _Appender(writer, block, options.size)
    bar = progress_bar(total=len(rows), unit="img", desc=path.name, disable=not progress,
                       dynamic_ncols=True)

    def consume(task_rows: list[Row], pixels: np.ndarray, result: _Block) -> None:
        system.raise_if_stopped()  # a signal whose stop was lost on the way
        appender.add(pixels[: len(result.ok)], [task_rows[i] for i in result.ok])
        skipped.extend(Skip(task_rows[i].name, reason, detail)
                       for i, reason, detail in result.skips)
        stats.add(result.pixels, result.sums, result.squares, len(result.ok))
        bar.update(len(task_rows))
        if result.skips:
            bar.set_postfix(skipped=len(skipped), refresh=False)

    try:
        with bar:
            _run_tasks(rows, options, block, workers, consume, keep_ring, pool_workers)
            appender.flush()
        writer.finish(mean_rgb=stats.mean, std_rgb=stats.std, skipped=len(skipped))
        if publish:
            writer.publish()
    except BaseException:
        writer.abort()
        raise
    return FileReport(path, split, writer.count, skipped, stats, time.perf_counter() - started)


def _file_attrs(options: BuildOptions, split: str, source_root: str | os.PathLike) -> dict:
    """The attributes a file is built with: what made it, and what it was made from."""
    return {
        "split": split,
        "resize": options.resize,
        "interpolation": options.interpolation or "auto",
        "order": options.order,
        "seed": int(options.seed),
        "exact": bool(options.exact),
        "max_pixels": int(options.max_pixels or 0),
        "source_root": str(Path(source_root).resolve()),
        "chunk_images": int(options.chunk),
        "compression": options.compression,
    }


def sources_stamp(rows: Sequence[Row], left_out: Sequence[Skip] = (), ctime: bool = True) -> str:
    """A digest of what a file is built from: each row's name, label, size, modification
    time, inode and (with ``ctime``) change time, and the names of the images left out before
    decoding (dangling links). A file renamed, moved to another class, replaced, repaired or
    touched changes it; so does a copy of the whole folder (a rebuild, never a wrong "nothing
    to do"). The change time also tells a copy in place that keeps size and time (``cp -p``
    of a fixed image); a split whose files are the dump's (:func:`_linked`) leaves
    it out, since a chmod of the dump or another hardlink split of it moves it."""
    return sources_stamps(rows, [left_out], ctime)[0]


def sources_stamps(rows: Sequence[Row], left_outs: Sequence[Sequence[Skip]],
                   ctime: bool = True) -> list[str]:
    """``sources_stamp`` of the rows with each of several lists of images left out (the
    files are looked at once)."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.name):  # whatever order the file stores them in
        try:
            # The inode too: a label fixed by swapping two files changes it.
            st = os.stat(row.path)
            seen = f"{st.st_size} {st.st_mtime_ns} {st.st_ino}" + (
                f" {st.st_ctime_ns}" if ctime else "")
        except OSError:
            seen = "-"
        digest.update(f"{row.name}\0{row.label}\0{seen}\n".encode("utf-8", "surrogateescape"))
    stamps = []
    for left_out in left_outs:
        each = digest.copy()
        for skip in sorted(left_out, key=lambda k: k.source):
            each.update(f"{skip.source}\0link\n".encode("utf-8", "surrogateescape"))
        stamps.append(each.hexdigest())
    return stamps


def _linked(rows: Sequence[Row]) -> bool:
    """Whether the rows' files are links to a dump's (a split made with ``--mode hardlink`` or
    ``symlink``, not one that fell back to copies): their change times move with what is done
    to the dump or to other splits of it. The first few files tell."""
    for row in rows[:8]:
        try:
            if os.path.islink(row.path) or os.stat(row.path).st_nlink > 1:
                return True
        except OSError:
            continue
    return False


def _file_states(rows: Sequence[Row]) -> dict[str, tuple | None]:
    """Each row's file as the system describes it (None: gone), to tell files replaced while
    a build reads them (:func:`_changed`)."""
    states: dict[str, tuple | None] = {}
    for row in rows:
        try:
            st = os.stat(row.path)
        except OSError:
            states[row.name] = None
        else:
            states[row.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return states


def _changed(before: dict[str, tuple | None], after: dict[str, tuple | None]) -> bool:
    """Whether a file of ``before`` is gone, replaced or rewritten in ``after``: another
    size, modification time or inode. Not its change time, which a chmod, another hard link
    made and removed elsewhere (a hardlink split of the same dump) or an attribute moves; a
    rewrite in place of the same size with its time put back (``cp -p``) is not seen."""
    return any(after.get(name) != was for name, was in before.items())


def _unlike(src: Path, out: Path, planned: dict[str, list[Row]], classes: list[str],
            options: BuildOptions, links: dict[str, list[Skip]],
            others: list[Path]) -> str | None:
    """None when OUT holds this very build: every file there, made from the same files (by
    their names, labels, sizes and times) with the same options and classes, and no file of
    another build waiting; else the first difference, in words."""
    if store.half_published(out):
        return "a build stopped while it renamed its files into place"
    missing = [p.name for p in others if not p.is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    for split, rows in planned.items():
        path = out / f"{split}.hdf5"
        wanted = _file_attrs(options, split, src)
        skips = list(links.get(split, ()))
        # As built before gone files were counted, too: up to date. Each stamp with the number
        # of skipped rows that goes with it.
        known = [s for s in skips if s.reason != MISSING_FILE]
        variants = [skips, known] if len(known) < len(skips) else [skips]
        # Of a linked split, also as stamped before change times were left out for it.
        stamps = {stamp: len(variant) for ctime in ((False, True) if _linked(rows) else (True,))
                  for stamp, variant in zip(sources_stamps(rows, variants, ctime), variants,
                                            strict=True)}
        try:
            with store.open_dataset(path) as db:
                found = store.attributes(db)
                names = store.label_names(db)
        except DsprepError:
            return f"{path.name} missing or not a dsprep file"
        if names != list(classes):
            return f"classes {', '.join(names)} in {path.name}, now {', '.join(classes)}"
        size = np.asarray(found.get("image_size")).tolist()
        if size != list(options.size):
            there = "x".join(map(str, size)) if isinstance(size, list) else "no stated size"
            return f"images of {there} in {path.name}, now {options.size[0]}x{options.size[1]}"
        for key, value in wanted.items():
            there = np.asarray(found.get(key)).tolist()
            if there != np.asarray(value).tolist():
                return f"{key} {there!r} in {path.name}, now {value!r}"
        stamp = np.asarray(found.get("sources_stamp")).tolist()
        if stamp not in stamps:
            return (f"the images of {split} changed since {path.name} was built "
                    "(added, removed, renamed, moved or touched)")
        if (int(found.get("count", -1)) + int(found.get("skipped", 0))
                != len(rows) + stamps[stamp]):
            return f"{path.name} was built from another number of images"
    return None


def _block_images(options: BuildOptions, images: int) -> int:
    """Images per decoding task: whole chunks, about ``_TASK_IMAGES``, and no more than the
    file's ``images`` (a --chunk-images above them would size every buffer by it)."""
    return max(1, min(options.chunk * max(1, _TASK_IMAGES // options.chunk), images))


def _workers_for(images: int, options: BuildOptions) -> int:
    """Decoding processes worth starting for a file of ``images``: one per task, capped."""
    return min(options.worker_count, max(1, -(-images // _TASK_IMAGES)))


def _run_tasks(rows: Sequence[Row], options: BuildOptions, block: int, workers: int,
               consume: Callable[[list[Row], np.ndarray, _Block], None],
               keep_ring: bool = False, pool_workers: int | None = None) -> None:
    """Decode rows block by block and hand each result to ``consume`` in order."""
    decode = _Decode(options.size, options.resize, options.interpolation, options.exact,
                     options.max_pixels)
    tasks = [list(rows[i:i + block]) for i in range(0, len(rows), block)]
    if not tasks:
        return
    parallel = workers > 1
    why = _why_no_workers() if parallel else None
    if why is not None:  # a count chosen: the default fell back in _fit_workers
        raise DsprepError(f"{why[0]}; use --workers 1 (which needs none), or {why[1]} and run "
                          "the command again")
    # Each in-flight task owns one block of the ring.
    if parallel:
        # Full size even for a short file: shared memory takes pages only where written.
        blocks = _ring_blocks(_BLOCKS_PER_WORKER * workers + 1, workers + 1,
                              block * options.size[0] * options.size[1] * 3)
        ring = _take_ring(blocks, block, options.size)
        tasks = _split_tail(tasks, workers)
    else:
        ring = _Ring(1, block, options.size, shared=False)
    with contextlib.ExitStack() as stack:
        pending: deque = deque()
        completed = False
        executor = None
        try:
            executor = (stack.enter_context(_decoding_pool(
                max(workers, pool_workers or 0), options.worker_count)) if parallel else None)
            next_task = 0
            while pending or next_task < len(tasks):
                # Task t fills block t % blocks, submitted only once task t - blocks is consumed.
                while next_task < len(tasks) and len(pending) < ring.shape[0]:
                    slot = next_task % ring.shape[0]
                    paths = [r.path for r in tasks[next_task]]
                    if executor is None:
                        with _quiet_opencv():
                            future = _InlineFuture(_decode_into(ring.array[slot], paths, decode))
                    else:
                        future = executor.submit(_decode_block, ring.shm.name, ring.shape, slot,
                                                 paths, decode)
                    pending.append((next_task, slot, future))
                    next_task += 1
                index, slot, future = pending.popleft()
                consume(tasks[index], ring.array[slot], future.result())
            completed = True
        except BrokenProcessPool as exc:
            if executor is not None:
                _forget_executor(executor)
            raise DsprepError(_worker_died_message(exc)) from exc
        finally:
            for *_, future in pending:
                if not isinstance(future, _InlineFuture):
                    future.cancel()
            if parallel and completed and keep_ring:
                _keep_ring(ring)
            else:
                # After an error or Ctrl-C, workers may still be writing into it: never reused.
                ring.close()


# ---------------------------------------------------------------------------------------------
# Whole builds


def build_hdf5(
    src: str | os.PathLike,
    out: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    name: str | None = None,
    force: bool = False,
    progress: bool = False,
) -> BuildReport:
    """Build ``OUT/train.hdf5``, ``val.hdf5``, ``test.hdf5`` and ``means.json`` from a split
    folder, or ``OUT/NAME.hdf5`` from one folder of class sub-folders.

    Every file is written as ``NAME.partial`` and all are renamed together at the end, so an
    interrupted build leaves no final-named file and can simply be run again; one stopped
    among those renames leaves a journal, and the next build of OUT first removes the files
    it names (so OUT never holds files of two builds). ``means.json``
    comes from the training file only (a split called "train").

    Raises:
        DestinationExistsError: an output (an HDF5 file, means.json or skipped.csv) exists and
            ``force`` is false.
        LayoutError, UsageError: the source or the options are not usable, or OUT is SRC.
        DsprepError: a worker process died.
    """
    options = (options or BuildOptions()).validate()
    refuse_empty_path(src, "the source (SRC)")
    refuse_empty_path(out, "the output folder (OUT)")
    src, out = Path(src), Path(out)
    try:
        str(src.resolve()).encode("utf-8")
    except UnicodeEncodeError:
        # The files record it (source_root) as UTF-8, which HDF5's strings must be.
        raise UsageError(f"the path of {src.resolve()!s} is not valid UTF-8 (a folder named in "
                         "another code page), and the files record it; rename that folder in "
                         "UTF-8 and build again") from None
    if out.resolve() == src.resolve():
        # The split's own skipped.csv would be replaced, and the outputs mixed with the sources.
        raise UsageError(f"output folder {out} is the source folder {src}; "
                         "choose another OUT such as data/hdf5")
    if src.resolve() in out.resolve().parents:
        # Inside, OUT would be read as one more class or split folder by the next build, and
        # 'dsprep split --force' of the source would delete it.
        beside = Path(os.path.abspath(src)).parent if src.parent == Path(".") else src.parent
        raise UsageError(f"output folder {out} is inside the source folder {src}; put it "
                         f"beside the source, such as {beside / 'hdf5'}")
    stepped = None
    if name is not None:
        # seg_test/ given for seg_test/seg_test/<class>/, as a split's build takes it ("."
        # too); not a class folder named as the folder of its classes (moon/moon/*.jpg).
        inner = namesake(Path(os.path.abspath(src)))
        if inner is not None and visible_folders(inner) and not any(
                is_image_name(p.name) for p in inner.iterdir()):  # (no images of its own)
            stepped = src = src / inner.name
    placed = read_placed(src) if name is None and (src / "split.json").is_file() else None
    enlarged = _enlarged_note(src, options.size) if placed is not None else None
    classes, planned, notes, links = find_rows(src, name, placed=placed)
    if stepped is not None:
        notes.insert(0, f"{src.parent} holds only {src.name}/: building {src}")
    if enlarged:
        notes.append(enlarged)
    if name is None and placed is None and (src / "split.json").is_file():
        listed = src / "files.csv"
        try:
            listed.open("rb").close()
            why, fix = "is not as the split wrote it (edited?)", "put the split's back"
        except FileNotFoundError:
            why, fix = "is missing", "put it back"
        except IsADirectoryError:
            why, fix = "is a folder, not the split's list of files", "put the split's back"
        except OSError as exc:
            why, fix = f"cannot be read ({exc.strerror or exc})", "make it readable"
        notes.append(AttentionNote(
            f"{listed} {why}, so this build cannot tell which images were deleted from the "
            f"split folder or added to it since the split (none is listed as missing-file); "
            f"{fix} to have them checked"))
    warnings = [] if name is not None else _missing_warnings(src, planned, links, placed)
    gone = {w.split(":", 1)[0] for w in warnings if w.endswith("built")}
    notes = [n for n in notes if n.split(":", 1)[0] not in gone]  # said by the warning
    outputs = [out / f"{split}.hdf5" for split in planned]
    # A split's file this build does not make may be left from an earlier build of another
    # split (other classes, other rows) or be the user's own (--name test): it stays, and the
    # report warns about it.
    others = [] if name is not None else [out / f"{split}.hdf5" for split in SPLITS
                                          if split not in planned]
    means_path = out / MEANS_NAME if "train" in planned else None
    if means_path is None and name is None:
        others.append(out / MEANS_NAME)
    # A file built on its own lists its skipped images beside it, so it can join the files of
    # an earlier build in OUT without replacing their list.
    skipped_final = out / (SKIPPED_NAME if name is None else f"{name}.{SKIPPED_NAME}")
    refuse_dangling_link(out)
    # One build at a time per OUT: a second would write (and on failure remove) the same
    # NAME.partial files.
    if sys.platform.startswith("linux"):
        _sweep_rings()  # what builds killed outright left in /dev/shm
    with _made_folder(out), exclusive(out / BUILD_LOCK_NAME, out):
        undone = _undo_publishing(out)
        if undone:
            notes.append(AttentionNote(
                "removed " + ", ".join(undone) + ": a build stopped while it renamed them "
                "into place left them (so they were from two builds)"))
        unfinished = [store.partial_path(p) for p in outputs if store.partial_path(p).is_file()]
        if unfinished:
            # A build killed outright (SIGKILL, the OOM killer) leaves them: a build does not
            # resume, and the next one writes them again from the start.
            size = sum(p.stat().st_size for p in unfinished)
            notes.append(f"discarded {', '.join(p.name for p in unfinished)} ({size / 1e6:,.1f} "
                         "MB), left by a build that was stopped: a build starts its files over")
        if name is not None:  # after the clearing up: the files it agrees with are whole
            classes, planned = _classes_beside(out, name, classes, planned, notes, warnings)
        unlike = None
        if not force and name is None:
            unlike = _unlike(src, out, planned, classes, options, links,
                             [p for p in (means_path, skipped_final) if p is not None])
            if unlike is None:
                # A --force build of other files stopped before it named them: they would
                # stay, up to a whole build's size, as nothing is built here.
                _remove_unnamed(outputs, [means_path, skipped_final])
                # (Nothing is enlarged now: that note is for a build that decodes.)
                notes = [n for n in notes if n != enlarged]
                return BuildReport([], means_path, skipped_final, notes,
                                   warnings + _not_ours(others)
                                   + _faults(_read_skipped(skipped_final)), up_to_date=True)
        if not force:
            existing = [p for p in [*outputs, means_path, skipped_final]
                        if p is not None and p.exists()]
            if existing:
                # Why it is not the same build, where the files say: what a user changed.
                why = (f" and {'is' if len(existing) == 1 else 'are'} not this build "
                       f"({unlike})"
                       if unlike and any(p.exists() for p in outputs) else "")
                # What this run cleared up first is said too: it is gone either way.
                removed = (f" (this run removed {', '.join(undone)} first: a build stopped "
                           "while it renamed them into place left them, from two builds)"
                           if undone else "")
                raise DestinationExistsError(
                    f"{', '.join(map(str, existing))} already "
                    f"{'exists' if len(existing) == 1 else 'exist'}{why}; use --force to "
                    f"replace {'it' if len(existing) == 1 else 'them'}{removed}"
                )
        _check_room(out, planned, options, outputs,
                    [p for p in [*outputs, means_path, skipped_final] if p is not None])
        options = _fit_workers(options, max(map(len, planned.values())), notes)
        reports = _build_files(src, out, planned, classes, options, outputs, means_path,
                               skipped_final, progress, links)
    warnings += _lost_classes(reports, planned, classes, skipped_final)
    if name is not None or "train" in planned:  # (else a train.hdf5 not its own: said)
        warnings += _shared_with_train(out, [r.path for r in reports])
    warnings += _class_warnings(src, classes)
    warnings += _not_ours(others)
    warnings += _faults([s for r in reports for s in r.skipped])
    return BuildReport(reports, means_path, skipped_final, notes, warnings)


def _faults(skipped: Sequence[Skip]) -> list[str]:
    """A warning for images left out by a fault of the machine, not of the data (unreadable,
    gone): said by every run, the one that finds the build up to date too, as split's."""
    faults = [s for s in skipped if s.reason in (UNREADABLE, MISSING_FILE)]
    if not faults:
        return []
    n, first = len(faults), faults[0]
    return [f"{n} image{'s' * (n != 1)} could not be read or {'were' if n != 1 else 'was'} "
            f"gone, e.g. {first.source} ({first.reason}): {'they are' if n != 1 else 'it is'} "
            "not in the files; make them readable, or put them back, and build again with "
            "--force"]


def _read_skipped(path: Path) -> list[Skip]:
    """The rows of a build's skipped.csv (none where it cannot be read)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [Skip(r.get("source") or "", r.get("reason") or "", r.get("detail") or "")
                    for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


# The most bytes of source images read to tell, by their content, what a file built from
# folders without a split's files.csv holds (its test images among a training file's).
HASHED_BYTES = 2 << 30


def split_digests(folder: Path, names: list[str] | None,
                  split: str = "") -> list[tuple[str, str]] | None:
    """(name, sha256) of images of a dsprep split folder, from its files.csv: of ``names``
    (paths inside the folder, "train/cat/1.jpg"), or of every file of ``split``; None where
    the folder has no files.csv as the split wrote it."""
    rows = read_files(folder, ("split", "path", "sha256"))
    if rows is None:
        return None
    if names is None:
        return [(path, digest) for of, path, digest in rows if of == split]
    sha = {path: digest for _, path, digest in rows}
    # A path of the folder names the same file of the dump in any split of it (the split's
    # names come from the dump's), so the names still listed tell their content; a name gone
    # (moved by a split made again, or added by hand) tells nothing, and where most are gone
    # nothing is told.
    found = [(n, sha[n]) for n in names if n in sha]
    return found if len(found) * 2 > len(names) else None


def image_digests(path: Path, hash_up_to: int = 0) -> list[tuple[str, str]] | None:
    """(name, sha256) of the images of a dsprep HDF5 file: from the files.csv of the split
    folder it was built from, or, for a file built from other folders, by reading its source
    files where they are there and hold ``hash_up_to`` bytes at most. None where it cannot be
    told (most sources gone, too many bytes, a file without names)."""
    with store.open_dataset(path) as db:
        root = str(db.attrs.get("source_root", ""))
        names = store.file_names(db)
    if not root or names is None:
        return None
    folder = Path(root)
    if not (folder / split_stage.FILES_CSV).is_file() and (
            folder.parent / split_stage.FILES_CSV).is_file():
        # A --name build of one split folder (split/test): its names are inside it.
        folder, names = folder.parent, [f"{folder.name}/{n}" for n in names]
    found = split_digests(folder, names)
    if found is not None or hash_up_to <= 0:
        return found
    sizes = []
    for name in names:
        with contextlib.suppress(OSError):
            sizes.append((name, (folder / name).stat().st_size))
    if len(sizes) * 2 <= len(names) or sum(size for _, size in sizes) > hash_up_to:
        return None
    found = []
    for name, _ in sizes:
        with contextlib.suppress(OSError):  # (an image: read whole, as split hashes them)
            found.append((name, hashlib.sha256((folder / name).read_bytes()).hexdigest()))
    return found


def _shared_with_train(out: Path, built: list[Path]) -> list[str]:
    """Warnings for images of OUT's other files with the content of images of its
    train.hdf5 (a pre-split dump's test folder holding copies of training images, or a test
    folder built beside a split that took it in): their figures would flatter a model."""
    train = out / f"{SPLITS[0]}.hdf5"
    others = [p for p in built if p != train]
    if train in built:  # the other files in OUT, built before
        others += [p for p in (out / f"{s}.hdf5" for s in SPLITS[1:])
                   if p not in built and p.is_file()]
    if not others or not train.is_file():
        return []
    try:
        learned = image_digests(train, HASHED_BYTES)
    except (OSError, DsprepError):
        return []  # a file that cannot be read: its own build or use says so
    if not learned:
        return []
    trained = {digest: name for name, digest in reversed(learned)}
    found = []
    for path in others:
        try:
            seen = image_digests(path, HASHED_BYTES) or []
            rows = store.row_count(path)
        except (OSError, DsprepError):
            continue  # (a file not dsprep's: said as not from this build)
        shared = [(name, trained[digest]) for name, digest in seen if digest in trained]
        if shared:
            name, same = shared[0]
            one = len(shared) == 1
            found.append(
                f"{path.name}: {len(shared)} of its {rows} images "
                f"{'is a copy of an image' if one else 'are copies of images'} of "
                f"{train.name} ({'' if one else 'e.g. '}{name}, the same file as {same}): "
                f"figures on {path.name} would flatter a model trained on {train.name}; "
                f"remove {'it' if one else 'them'} from the folder {path.name} is built from, "
                "and build it again")
    return found


def _not_ours(others: list[Path]) -> list[str]:
    """Warnings for the files in OUT of splits this build does not make, left as they were."""
    return [f"{path} is not from this build (this split has no "
            f"{'train' if path.name == MEANS_NAME else path.stem} files) and was left as it "
            "was; remove it if it does not belong with these files"
            for path in others if path.exists()]


@contextlib.contextmanager
def _made_folder(out: Path) -> Iterator[None]:
    """Create ``out`` (and its missing parents) for the block; if the block fails, remove the
    folders this made again while they are empty, so a refused or failed build leaves no
    empty folders behind."""
    made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not ours to remove): nor are the ones above it
        raise


def _check_room(out: Path, planned: dict[str, list[Row]], options: BuildOptions,
                outputs: list[Path], replaced: list[Path]) -> None:
    """Refuse, before any image is decoded, a build whose pixels alone cannot fit on OUT's
    disk (uncompressed files only: a compressed size cannot be told in advance). An unattended
    build would otherwise fail on a full disk after decoding for as long as it took to fill it.

    The files a build replaces (``replaced``, a --force build's) keep their room until the new
    ones are whole; where they are what leaves too little, the refusal says so. The
    ``.partial`` files of a stopped build would be overwritten only in their turn, so they go
    first. Every file takes whole chunks (the last one padded).
    """
    if options.compression != "none":
        return
    free_before = _free_bytes(out)
    stale = 0
    for path in map(store.partial_path, outputs):
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            # The blocks it holds: a stopped build's file is sparse where it wrote nothing.
            stale += getattr(st, "st_blocks", st.st_size // 512) * 512
            path.unlink()  # under OUT's lock: a stopped build's, never another's
    height, width = options.size
    count = sum(len(rows) for rows in planned.values())
    needs = 0
    for rows in planned.values():
        chunk = store.chunk_rows(options.chunk, len(rows), (height, width))
        needs += -(-len(rows) // chunk) * chunk * height * width * 3
    free = _free_bytes(out)
    if free is None or free_before is None:
        return  # a file system that cannot say: the writes will tell
    # Some file systems (ZFS, btrfs, NFS) give the room of removed files back a moment later.
    free = max(free, free_before + stale)
    if needs > free:
        held, names = _held_room(replaced)
        # The old files stay until the new ones are whole, so that a failed build leaves them:
        # the room they hold is why it does not fit, and deleting them first is the way out.
        free_some = (f"The files this build would replace ({', '.join(names)}) hold "
                     f"{held / 1e6:,.1f} MB, and are kept until the new ones are complete; "
                     "delete them first and it fits"
                     if held and needs <= free + held else "Free some space")
        raise OSError(errno.ENOSPC, (
            f"{out}: the HDF5 files will not fit: {count:,} images of {height}x{width}x3 need "
            f"{needs / 1e6:,.1f} MB, and {free / 1e6:,.1f} MB are free there. {free_some}, "
            "choose an OUT on another disk, or store smaller images (--size) or compressed ones "
            "(--compression gzip, smaller files but slower reads); nothing was written"))


def _held_room(paths: list[Path]) -> tuple[int, list[str]]:
    """The bytes that deleting ``paths`` would free on their disk, and the names of the files
    that hold them."""
    held, names = 0, []
    for path in paths:
        try:
            st = path.lstat()
        except OSError:
            continue
        # A file linked elsewhere too (a hard link), or a symbolic link, frees no room.
        blocks = getattr(st, "st_blocks", st.st_size // 512) * 512
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and blocks:
            held += blocks
            names.append(path.name)
    return held, names


def _class_warnings(src: Path, classes: list[str]) -> list[str]:
    """What the classes found say of SRC: one class trains no classifier, and classes named
    as splits (train/, test1/) are the folders of a dump, not of a split."""
    found = []
    # A split's own class may be named so (CIFAR-100's "train"): only a folder not made by
    # 'dsprep split' is suspect.
    splits = [] if (src / "split.json").is_file() else [
        c for c in classes if split_of(re.sub(r"\d+$", "", c))]
    if splits:
        found.append(f"class folders named as splits ({', '.join(splits)}): if {src} is a "
                     f"dump, split it first ('dsprep split {quoted(src)} DEST'), then build "
                     "from DEST")
    elif len(classes) == 1:
        found.append(f"one class only ({classes[0]}): a classifier needs two or more; check "
                     f"how {src} was split (--layout, and --labels or --pattern)")
    return found


def _free_bytes(folder: Path) -> int | None:
    """Bytes that may still be written on ``folder``'s file system; None where it cannot say."""
    try:
        fs = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    # The blocks a file system keeps in reserve (5% on ext4) are left out even for root:
    # root in a container, or on a file system whose reserve is another user's, cannot
    # write them, and a build that fails for room after hours of decoding costs more than
    # one refused for a few per cent it could have used.
    return fs.f_bavail * fs.f_frsize


def _lost_classes(reports: list[FileReport], planned: dict[str, list[Row]],
                  classes: list[str], skipped: Path) -> list[str]:
    """Warnings for the classes a file was to hold but lost every image of (all skipped)."""
    warnings = []
    for report in reports:
        wanted = {row.label for row in planned.get(report.split, ())}
        with store.open_dataset(report.path) as db:
            kept = set(np.unique(db["labels"][()]).tolist())
        lost = [classes[k] for k in sorted(wanted - kept)]
        if lost:
            warnings.append(f"every image of {', '.join(lost)} in {report.split} was left out, "
                            f"so {report.path.name} holds none of "
                            f"{'it' if len(lost) == 1 else 'them'}; see {skipped}")
    return warnings


def _classes_beside(out: Path, name: str, classes: list[str], planned: dict[str, list[Row]],
                    notes: list[str], warnings: list[str]) -> tuple[list[str], dict]:
    """Class ids for a ``--name`` file that agree with the dsprep files already in ``out``.

    Those files are ``out/train.hdf5`` when there is one (the ids a model trains on), else
    all of them, which must agree. A folder holding only some of their classes (a test
    folder with no images of one class) takes their ids, so a model trained on them reads
    this file right; one with other classes keeps its own, with a warning.
    """
    paths = [p for p in (sorted(out.glob("*.hdf5")) if out.is_dir() else [])
             if p.name != f"{name}.hdf5"]  # the file this build replaces has no say
    if out / "train.hdf5" in paths:
        paths = [out / "train.hdf5"]
    found: dict[tuple[str, ...], Path] = {}
    for path in paths:
        try:
            with store.open_dataset(path) as db:
                found.setdefault(tuple(store.label_names(db)), path)
        except DsprepError:
            continue  # not a dsprep file: nothing to agree with
    if not found:
        return classes, planned
    names, path = next((list(n), p) for n, p in found.items())
    if len(found) > 1 or not set(classes) <= set(names):
        theirs = "; ".join(f"{p.name}: {', '.join(n)}" for n, p in found.items())
        if name == "train" and all(set(n) <= set(classes) for n in found):
            # Built before train.hdf5 (val, test): built again after it, they take its ids.
            again = ", ".join(p.name for p in found.values())
            advice = (f"build {again} again now (--name, into {out}): a file built after "
                      "train.hdf5 takes its label ids")
        else:
            advice = "build it into another folder unless that is meant"
        warnings.append(f"the classes of {name}.hdf5 ({', '.join(classes)}) are not among "
                        f"those of the files already in {out} ({theirs}), so its label ids do "
                        f"not match theirs; {advice}")
        return classes, planned
    if names == classes:
        return classes, planned
    ids = {c: names.index(c) for c in classes}
    missing = [c for c in names if c not in ids]
    notes.append(f"class ids follow {path} ({len(names)} classes"
                 + (f"; no images of {', '.join(missing)} here" if missing else "") + ")")
    return names, {split: [Row(r.path, r.name, ids[classes[r.label]]) for r in rows]
                   for split, rows in planned.items()}


def _build_files(src: Path, out: Path, planned: dict[str, list[Row]], classes: list[str],
                 options: BuildOptions, outputs: list[Path], means_path: Path | None,
                 skipped_final: Path, progress: bool,
                 links: dict[str, list[Skip]]) -> list[FileReport]:
    """Write every file as NAME.partial, then give them all their final names together."""
    reports: list[FileReport] = []
    finals: list[Path] = []
    journal = out / PUBLISHING_NAME
    # One pool for every file, sized for the largest (val may outnumber train).
    pool_workers = _workers_for(max(map(len, planned.values()), default=0), options)
    states: dict[str, dict] = {}
    try:
        for split, rows in planned.items():
            ordered = order_rows(rows, options.order, options.seed)
            states[split] = _file_states(rows)
            reports.append(write_file(ordered, out / f"{split}.hdf5", classes, options,
                                      split=split, source_root=src, overwrite=True,
                                      publish=False, progress=progress, keep_ring=True,
                                      left_out=links.get(split, ()),
                                      pool_workers=pool_workers))
        for split, rows in planned.items():
            if _changed(states[split], _file_states(rows)):
                # Its files were replaced while they were read (a split --force of SRC): the
                # files built would mix two splits, with the images gone counted as bad ones.
                raise DsprepError(
                    f"{src}: the images of {split} changed while they were built (added, "
                    "removed or replaced: was the split made again?); nothing was kept. Run "
                    "the same command again once SRC is no longer being written")
        _write_skipped(_waiting(skipped_final), [s for r in reports for s in r.skipped])
        for report in reports:
            if report.count == 0 and report.skipped:
                raise _all_left_out(report.split, report.skipped)
        if means_path is not None:
            train = next(r for r in reports if r.split == "train")
            write_means(_waiting(means_path), means_record(train.stats, train.path.name))
        # Everything is whole before anything takes a final name; then the renames, together.
        # A journal lists them first: a build stopped among them leaves files of two builds,
        # which the next build of OUT removes (see _undo_publishing).
        finals = [r.path for r in reports] + [skipped_final] + (
            [means_path] if means_path is not None else [])
        # On the disk before they are named: a power cut after the renames must not leave
        # final names on files whose bytes never reached it.
        for final in finals:
            sync_file(_waiting(final))
        write_atomic(journal, json.dumps([p.name for p in finals]), fsync=True)
        sync_folder(out)  # the journal is on the disk before any rename it covers
        for final in finals:
            os.replace(_waiting(final), final)
        sync_folder(out)
    except BaseException:
        # What took its final name is told by the files, not by the list: a Ctrl-C may land
        # between a rename and its note.
        renamed = [f for f in finals if not _waiting(f).exists()]
        finished = f"The build had finished: its files are all in place in {out}."
        if renamed and len(renamed) < len(finals) and isinstance(
                sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
            # Stopped among the renames (Ctrl-C, SIGTERM): every file is whole and on the
            # disk, so the renames are finished; discarding the renamed ones would leave
            # neither build where a --force build had replaced files.
            stop = sys.exc_info()[1]
            failed: OSError | None = None
            try:
                with system.stops_held():  # a second stop comes after them
                    for final in finals:
                        if _waiting(final).exists():
                            os.replace(_waiting(final), final)
            except OSError as exc:
                failed = exc
            except (KeyboardInterrupt, SystemExit):
                pass  # a second stop: the first is on its way out
            if failed is None and not any(_waiting(f).exists() for f in finals):
                with contextlib.suppress(OSError):
                    sync_folder(out)
                with contextlib.suppress(OSError):
                    journal.unlink(missing_ok=True)
                stop.after_stop = finished
            else:  # none of this build's files is kept
                renamed = [f for f in finals if not _waiting(f).exists()]
                _discard(journal, renamed, [f for f in finals if f not in renamed])
                if failed is not None:
                    stop.after_stop = (f"Its files could not all be renamed into place "
                                       f"({failed}), so none was kept; run the same command "
                                       "again.")
        elif renamed and len(renamed) < len(finals):
            # A rename failed: the files renamed already go too, so that OUT holds no mix of
            # two builds (a kill leaves that to the next build).
            _discard(journal, renamed, [f for f in finals if f not in renamed])
        elif not renamed:
            _remove_unnamed(outputs, [means_path, skipped_final])
            journal.unlink(missing_ok=True)
        else:  # every file is in place: the build is whole and stays
            with contextlib.suppress(OSError):
                journal.unlink()
            if renamed and isinstance(sys.exc_info()[1], (KeyboardInterrupt, SystemExit)):
                sys.exc_info()[1].after_stop = finished
        raise
    finally:
        _drop_ring()
    # A journal left over (the unlink failed) names no waiting file: the next build drops it.
    with contextlib.suppress(OSError):
        journal.unlink()
    return reports


def _remove_unnamed(outputs: list[Path], others: list[Path | None]) -> None:
    """Remove what a build wrote before naming it: the HDF5 files' ``.partial`` files and the
    other outputs' waiting files (call under OUT's lock: they are then a stopped build's)."""
    for path in [*map(store.partial_path, outputs),
                 *(_waiting(p) for p in others if p is not None)]:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            # A read-only mount answers even a missing name with EROFS: nothing to remove.
            if path.exists() or path.is_symlink():
                raise


def _discard(journal: Path, renamed: list[Path], waiting: list[Path]) -> None:
    """Remove the files a stopped build renamed, then those still waiting for their names.

    The journal is rewritten first to name the waiting ones for discarding only: stopped in
    between, the next build then removes no final name that this build never replaced.
    """
    for final in renamed:
        final.unlink(missing_ok=True)
    write_atomic(journal, json.dumps({"discard": [f.name for f in waiting]}))
    for final in waiting:
        _waiting(final).unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


def _waiting(final: Path) -> Path:
    """Where a finished output waits for its final name (``store.waiting_path``)."""
    return store.waiting_path(final)


def _undo_publishing(out: Path) -> list[str]:
    """Clear up after a build killed while it renamed its finished files into place.

    Its journal names them. If none is waiting any more, every rename was done: the build is
    whole and stays. Otherwise the files it renamed already go, with those still waiting, so
    OUT holds no mix of two builds. A journal rewritten for discarding (see ``_discard``)
    has only waiting files removed.

    Returns:
        The final names that were there and are gone.
    """
    journal = out / PUBLISHING_NAME
    try:
        found = json.loads(journal.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        found = []
    discard = isinstance(found, dict)
    names = found.get("discard", []) if discard else found
    # Plain names of dsprep's outputs only: a journal never points elsewhere.
    finals = [out / name for name in (names if isinstance(names, list) else [])
              if isinstance(name, str) and name == Path(name).name
              and name.endswith((".hdf5", ".csv", ".json")) and not name.startswith(".")]
    waiting = [f for f in finals if _waiting(f).is_file()]
    if not (discard or waiting):
        journal.unlink()  # every rename was done
        return []
    renamed = [] if discard else [f for f in finals if f not in waiting and f.is_file()]
    _discard(journal, renamed, waiting)
    return [str(f) for f in renamed]


def _all_left_out(split: str, skipped: Sequence[Skip]) -> DsprepError:
    """The error for a file whose every image was left out: an empty file helps no one."""
    reasons = Counter(s.reason for s in skipped)
    first = skipped[0]
    return DsprepError(
        f"every image of {split} was left out ({len(skipped)}: "
        + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        + f"; the first, {first.source}: {first.detail}); nothing was written. "
        "Check the options that leave images out (--max-pixels) and the source files"
    )


def _write_skipped(path: Path, skipped: Iterable[Skip]) -> Path:
    return write_atomic(path, csv_text(["source", "reason", "detail"],
                                       ([s.source, s.reason, s.detail] for s in skipped)))


# ---------------------------------------------------------------------------------------------
# Checking a built file against its sources


def check_sources(path: str | os.PathLike, count: int, seed: int = 0,
                  source_root: str | os.PathLike | None = None) -> list[str]:
    """Re-decode ``count`` random rows' source files and compare them with the stored pixels.

    The sources are found under the file's ``source_root`` attribute, or under
    ``source_root`` when given (the sources moved since the build), and decoded with the
    file's own size, resize, interpolation and decoding attributes.

    Returns:
        One line per problem (a missing source, a failed decode, pixels that differ).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed {seed!r} must be a whole number, 0 or more")
    problems: list[str] = []
    with store.open_dataset(path) as db:
        attrs = store.attributes(db)
        n = db["images"].shape[0]
        if count <= 0 or n == 0:
            return problems
        if "filenames" not in db or (source_root is None and "source_root" not in attrs):
            return ["no 'source_root' attribute or 'filenames' dataset: sources cannot be found"]
        if source_root is None and not isinstance(attrs["source_root"], str):
            return [f"source_root attribute {attrs['source_root']!r} is not a path; name where "
                    "the sources are with --source-root"]
        root = Path(attrs["source_root"] if source_root is None else source_root)
        if not root.is_dir():
            where = ("" if source_root is not None else
                     " (if the sources moved, name where they are now with --source-root)")
            return [f"source folder {root} does not exist; sources cannot be re-decoded{where}"]
        wrong = store.check_build_attributes(attrs)
        if wrong:
            return [f"sources not re-decoded, for want of how the file was built: "
                    f"{'; '.join(wrong)}"]
        interpolation = attrs.get("interpolation", "auto")
        try:
            decode = _Decode(tuple(db["images"].shape[1:3]), attrs.get("resize", "crop"),
                             None if interpolation == "auto" else interpolation,
                             bool(attrs.get("exact", False)),
                             int(attrs.get("max_pixels", 0)) or None)
        except (UsageError, TypeError, ValueError) as exc:
            return [f"its decoding attributes are not build-hdf5's ({exc}): sources cannot be "
                    "decoded the way it was built"]
        picks = np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
        for i in picks.tolist():
            try:
                raw = db["filenames"][i]
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                stored = db["images"][i]
            except (OSError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
                problems.append(f"row {i} cannot be read back ({exc})")
                continue
            source = root / name
            try:
                with _quiet_opencv():
                    fresh = imagelib.load(imagelib.read_bytes(source), decode.size,
                                          decode.resize, decode.interpolation,
                                          exact=decode.exact, max_pixels=decode.max_pixels)
            except (CorruptImageError, OSError) as exc:
                problems.append(f"row {i}: source {source} could not be decoded again ({exc})")
                continue
            diff = np.abs(fresh.astype(np.int16) - stored.astype(np.int16))
            # Allow a level of rounding between OpenCV builds, nothing more.
            if diff.max() > 1:
                problems.append(f"row {i}: pixels differ from a fresh decode of {source} "
                                f"(max difference {int(diff.max())}, mean {diff.mean():.2f})")
    return problems


__all__ = [
    "BuildOptions", "BuildReport", "FileReport", "Row", "Skip", "build_hdf5", "check_sources",
    "find_rows", "order_rows", "read_split_classes", "shutdown_workers", "write_file",
]
