"""Find the labelled images in a dump: class sub-folders, file-name prefixes or a labels CSV.

A dump is a folder or a ``.zip`` archive read in place; :func:`find_images` says which file has
which label and which files were left out, and why. Nothing here decodes or copies an image.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import heapq
import io
import lzma
import math
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath

from .errors import DsprepError, LayoutError, UsageError
from .fileio import quoted, refuse_empty_path
from .images import looks_like_image

# .jfif and .jpe are JPEGs under other names (common in scraped dumps); images are decoded by
# their content, never by their extension.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".tif", ".tiff",
                              ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".avif"})
# Image formats OpenCV does not read: listed as left out (UNSUPPORTED), not passed over unseen.
UNSUPPORTED_EXTENSIONS = frozenset({".heic", ".heif", ".jxl", ".svg", ".psd", ".ico", ".exr",
                                    ".raw", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf",
                                    ".rw2", ".dcm", ".dicom", ".nii"})
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
# Folders that archivers and operating systems add and that never hold a dataset's images.
IGNORED_FOLDERS = frozenset({"__macosx"})
LAYOUTS = ("auto", "folders", "prefix", "csv")

# Reasons a file is left out, as written in skipped.csv.
NO_LABEL = "no-label"
BAD_LABEL = "bad-label"
MISSING_FILE = "missing-file"
UNLABELLED = "unlabelled"
AMBIGUOUS_ID = "ambiguous-id"
DUPLICATE = "duplicate"
LABEL_CONFLICT = "label-conflict"
DANGLING_LINK = "dangling-link"
UNREADABLE = "unreadable"
BAD_ROW = "bad-row"
BAD_NAME = "bad-name"
# The detail of an image beside the class folders of a class-folder tree.
OUTSIDE_CLASS_FOLDERS = "outside the class folders: an image without a class"
# The detail of a file left out as a BAD_NAME for a path that is not UTF-8.
NOT_UTF8_NAME = "file name is not valid UTF-8"
UNSUPPORTED = "unsupported-format"
MASK = "mask"  # an image in a class's folder of masks or annotations, beside its images

# Folder names of a dataset's parts, not classes (compared in lower case, letters only): its
# images, and its masks or annotations.
IMAGE_PARTS = frozenset({"images", "image", "imgs", "img", "jpegimages", "photos", "pictures"})
MASK_PARTS = frozenset({
    "annotations", "annotation", "masks", "mask", "lungmasks", "trimaps", "trimap", "labels",
    "segmentations", "segmentation", "segmentationclass", "segmentationobject", "gt",
    "groundtruth", "xmls", "depth"})
PART_NAMES = IMAGE_PARTS | MASK_PARTS | frozenset({"metadata", "thumbnails"})
# A word that makes a folder one of masks: "lung masks", "infection masks" (COVID-QU-Ex).
_MASK_WORDS = frozenset({"mask", "masks", "trimap", "trimaps", "segmentation", "segmentations",
                         "annotation", "annotations", "gt", "groundtruth"})


def part_name(name: str) -> str:
    """A folder's name as compared with the part names: lower case, letters only."""
    return re.sub(r"[^a-z]", "", name.lower())


def _mask_folder(name: str) -> bool:
    """Whether a folder's name says it holds masks or annotations: "masks", "lung masks",
    "masks_png", "LungMask", "CXRMasks"; not "with_mask" (pictures of people wearing one)."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", re.sub(r"([a-z])([A-Z])", r"\1 \2", name))
    words = {w for w in re.split(r"[^a-z]+", spaced.lower()) if w}
    if {"with", "without", "no", "not", "wearing"} & words:
        return False
    return part_name(name) in MASK_PARTS or bool(words & _MASK_WORDS)


def mask_folders(inside: dict[str, list[str]]) -> dict[str, str]:
    """Of class folders, by the paths of their images inside them, those holding all their
    images in one folder of images beside folders of masks or annotations (COVID-19
    Radiography's COVID/images/ and COVID/masks/), each with that folder of images."""
    found = {}
    for label, paths in inside.items():
        # (an image straight in the class folder, a preview, stays an image of the class)
        folders = {p.partition("/")[0] for p in paths if "/" in p}
        if len(folders) < 2:
            continue
        pictures = [f for f in folders if part_name(f) in IMAGE_PARTS]
        if len(pictures) == 1 and all(_mask_folder(f) for f in folders - set(pictures)):
            found[label] = pictures[0]
    return found


def _mask_skip(rel: str, where: str, folder: str, pictures: str) -> Skipped:
    return Skipped(rel, MASK, f"in {where}{folder}/, beside the class's images in "
                              f"{where}{pictures}/")
# The detail of a zip member left out as a BAD_NAME for a path that could escape a folder.
UNSAFE_PATH = "unsafe path inside the archive"

# Header names recognised when no column is named (compared in lower case).
ID_NAMES = ("id", "image_id", "image", "file", "filename", "file_name", "fname", "path", "name")
# Words of a column naming what several images share (a patient, a lesion, a source image): the
# groups that must not be spread over train and test (HAM10000's lesion_id, ISIC's patient_id).
GROUP_WORDS = frozenset({"patient", "lesion", "subject", "person", "participant", "individual",
                         "specimen"})
# Words that name such a group only when followed by one of _WEAK_GROUP_KEYS (source_image,
# case_id, group_id; not a column "source" of hospital names, "age_group", "image_source",
# "group_name" or DICOM's SeriesNumber).
_WEAK_GROUP_WORDS = frozenset({"original", "parent", "source", "group", "case", "study"})
_WEAK_GROUP_KEYS = frozenset({"id", "ids", "image", "img", "file", "key", "code", "no", "nr",
                              "num", "number"})
# Words that may stand beside one of them in such a column's name (patient_id, "Patient No").
_GROUP_KEY_WORDS = frozenset({"id", "ids", "no", "nr", "num", "number", "code", "key", "name",
                              "image", "img", "file"})
LABEL_NAMES = ("label", "labels", "class", "class_name", "category", "breed", "species", "target",
               "y", "dx", "diagnosis", "level", "emotion")


def is_image_name(name: str) -> bool:
    """True for a visible file whose extension (any case) is an image format dsprep reads."""
    if name.startswith(".") or name.lower() in IGNORED_NAMES:
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_class_folders(
    root: str | os.PathLike, problems: list[Skipped] | None = None, *, unsupported: bool = False
) -> tuple[list[str], list[tuple[Path, str]]]:
    """List ``root/<class>/<image>`` files.

    The walk is the one of :meth:`FolderSource.list_files`: links are followed but a folder is
    walked once (a link back up cannot repeat files), only regular files count (no FIFOs or
    devices), and hidden entries and archiver folders such as ``__MACOSX`` are neither
    classes nor images.

    Args:
        root: the folder of class sub-folders.
        problems: if given, entries under the class folders that cannot be read (dangling
            links, unreadable folders) are appended to it, so callers can report them.
        unsupported: also append the files of image formats OpenCV does not read (``.heic``,
            ...) to ``problems``, as split lists them.

    Returns:
        The sorted class names (composed, NFC: two folders whose names differ only in their
        Unicode form are one class), and (path, class) pairs sorted by class then relative
        path, so the result never depends on the order the file system lists files in.
    """
    root = Path(root)
    classes, pairs = class_folder_files(root, problems, unsupported=unsupported)
    return classes, [(root / rel, label) for label, rel in pairs]


def class_folder_files(
    root: str | os.PathLike, problems: list[Skipped] | None = None, *, unsupported: bool = False
) -> tuple[list[str], list[tuple[str, str]]]:
    """:func:`scan_class_folders` with (class, relative POSIX path) string pairs.

    For callers that handle many thousands of files: a ``Path`` per file costs more than the
    walk itself.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder of class sub-folders")
    # A name that is not UTF-8 cannot be stored in HDF5 (nor a class so named): such images
    # are left out as bad-name problems, as split leaves them out.
    known = {d.name for d in root.iterdir() if _visible(d.name) and d.is_dir() and _utf8(d.name)}
    # Class names are composed (NFC), as split makes them: a folder a Mac wrote decomposed
    # ("café" as "cafe" + an accent) is the same class as its composed twin.
    nfc = {name: unicodedata.normalize("NFC", name) for name in known}
    classes = sorted(set(nfc.values()))
    listing = FolderSource(root)
    files, unreadable = listing.list_files()
    listing.refuse_unlisted()
    if problems is not None:
        problems += [p for p in unreadable + (_unsupported(files) if unsupported else [])
                     if p.source.partition("/")[0] in known]
    pairs = []
    for rel in files:
        label, sep, rest = rel.partition("/")
        if not sep:
            # An image beside the class folders has no class: said, not passed over.
            if problems is not None and is_image_name(label) and _utf8(label):
                problems.append(Skipped(rel, NO_LABEL, OUTSIDE_CLASS_FOLDERS))
            continue
        if not is_image_name(rest.rpartition("/")[2]):
            continue
        if not _utf8(rel):
            if problems is not None and (label in known or not _utf8(label)):
                problems.append(Skipped(rel, BAD_NAME, NOT_UTF8_NAME))
        elif label in known:
            pairs.append((nfc[label], rel))
    inside: dict[str, list[str]] = defaultdict(list)
    for _label, rel in pairs:
        inside[rel.partition("/")[0]].append(rel.partition("/")[2])
    masks = mask_folders(inside)
    if masks:
        kept = []
        for label, rel in pairs:
            folder, _, rest = rel.partition("/")
            sub = rest.partition("/")[0] if "/" in rest else None
            if folder in masks and sub is not None and sub != masks[folder]:
                if problems is not None:
                    problems.append(_mask_skip(rel, f"{folder}/", sub, masks[folder]))
            else:
                kept.append((label, rel))
        pairs = kept
    pairs.sort()
    if not pairs:
        raise LayoutError(
            f"{root} has no images in class sub-folders (expected {root}/<class>/<image>)"
        )
    return classes, pairs


@dataclass(frozen=True, order=True)
class Skipped:
    """A file (or labels row) left out, as one row of skipped.csv."""

    source: str
    reason: str
    detail: str = ""
    # The label a bad-label row was given (not in skipped.csv: its detail says it in words).
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # A file name that is not UTF-8 (and a link target naming one) arrives with surrogate
        # escapes, which skipped.csv cannot hold: every row passes here, so none slips through.
        for name in ("source", "detail"):
            text = getattr(self, name)
            if not _utf8(text):
                object.__setattr__(self, name, text.encode("utf-8", "backslashreplace").decode())


def _visible(part: str) -> bool:
    return not part.startswith(".") and part.lower() not in IGNORED_FOLDERS | IGNORED_NAMES


class Source(ABC):
    """A dump to read from: a folder or a zip archive, addressed by POSIX paths relative to it.

    Use :func:`open_source`; close it (or use it as a context manager) when done.
    """

    path: Path
    is_zip: bool = False

    @abstractmethod
    def list_files(self) -> tuple[list[str], list[Skipped]]:
        """Every visible file (sorted relative paths) and the entries that cannot be read."""

    @abstractmethod
    def read(self, rel: str) -> bytes:
        """The bytes of one file."""

    def read_head(self, rel: str, size: int) -> bytes:
        """The first ``size`` bytes of one file (all of it where it is shorter)."""
        return self.read(rel)[:size]

    def size(self, rel: str) -> int:
        """The size of one file, in bytes."""
        return len(self.read(rel))

    # The real paths of the folders the last list_files reached through links: they are part
    # of the dump as much as its own folders.
    linked: Sequence[str] = ()
    # Folders (and links) the last list_files could not look into: (relative path, path,
    # error). Listed among its problems too; whether they matter depends on the layout.
    unlisted: Sequence[tuple[str, str, OSError]] = ()

    def refuse_unlisted(self) -> None:
        """Raise for the first folder :meth:`list_files` could not look into: it may hold a
        whole class, and leaving it out would train a model that never saw one (a note is
        easily missed in a batch job).

        Raises:
            OSError: the folder's error, naming it and saying what to do.
        """
        if self.unlisted:
            _rel, path, exc = self.unlisted[0]
            raise OSError(exc.errno, f"{exc.strerror or exc}: this folder cannot be "
                          "listed (or this link followed), and its images would be left out; "
                          "give read access to it (chmod), or move it elsewhere", path) from exc

    @property
    def name(self) -> str:
        """The dump's own name: its folder's, or its archive's without the extension."""
        # Resolved: a link of another name to the dump names the same dump.
        return self.path.resolve().stem if self.is_zip else self.path.resolve().name

    def close(self) -> None:  # noqa: B027 - a folder holds nothing to release
        """Release the archive, if any."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Folders a file system makes itself, owned by root and unreadable to others (at the top of a
# mounted volume): never a dump's images, so an unreadable one is only reported.
_NEVER_IMAGES = {"lost+found"}


class FolderSource(Source):
    """A dump that is a folder; symbolic links are followed, loops and dangling links reported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._root = str(path)

    def list_files(self) -> tuple[list[str], list[Skipped]]:
        files: list[str] = []
        problems: list[Skipped] = []
        seen: set[tuple[int, int]] = set()
        unlisted: list[tuple[str, str, OSError]] = []
        self.unlisted = unlisted
        through_links: list[str] = []
        self.linked = through_links
        # Folders are walked in this order: those reached through no link, breadth first,
        # then those reached through links, breadth first. Of two ways to one folder (a
        # class folder and a link to it, even from inside another class; two links to one
        # place) the real one is kept, else the shallower, then by name.
        queue: list[tuple[bool, int, str, str]] = [(False, 0, "", str(self.path))]

        def walk(folder: str, prefix: str, linked: bool) -> None:
            try:
                info = os.stat(folder)
                if (info.st_dev, info.st_ino) in seen:
                    return  # a link back to a folder already walked
                seen.add((info.st_dev, info.st_ino))
                # In a fixed order, whatever order the file system lists them in.
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError as exc:
                problems.append(Skipped(prefix.rstrip("/") or ".", UNREADABLE, _os_detail(exc)))
                # Unless it was removed while the dump was listed, or the file system's own.
                if not (isinstance(exc, FileNotFoundError)
                        or prefix.rstrip("/").rpartition("/")[2] in _NEVER_IMAGES):
                    unlisted.append((prefix.rstrip("/"), folder, exc))
                return
            for entry in entries:
                if not _visible(entry.name):
                    continue
                rel = prefix + entry.name
                try:
                    # The directory listing already says what a plain entry is; only links
                    # need a stat of their own (to follow them and to find dangling ones).
                    if entry.is_symlink():
                        kind = os.stat(entry.path).st_mode
                    elif entry.is_dir(follow_symlinks=False):
                        kind = stat.S_IFDIR
                    else:
                        kind = stat.S_IFREG if entry.is_file(follow_symlinks=False) else 0
                except FileNotFoundError:
                    if entry.is_symlink():
                        target = os.readlink(entry.path)
                        problems.append(Skipped(rel, DANGLING_LINK, f"points to missing {target}"))
                    continue
                except OSError as exc:
                    if entry.is_symlink() and exc.errno == errno.ELOOP:
                        # A link to itself, or in a loop of links: it points to nothing.
                        problems.append(Skipped(rel, DANGLING_LINK, "points to itself through "
                                                f"a loop of links ({os.readlink(entry.path)})"))
                        continue
                    unfollowed = entry.is_symlink()
                    if unfollowed and is_image_name(entry.name):
                        # Listed: its read fails, and it is left out with its class (which
                        # is then named if none of its images is left).
                        files.append(rel)
                        continue
                    problems.append(Skipped(rel, UNREADABLE, _os_detail(exc)))
                    if unfollowed and "." not in entry.name:  # maybe to a class folder
                        unlisted.append((rel, entry.path, exc))
                    continue
                if stat.S_ISDIR(kind):
                    if entry.is_symlink():
                        through_links.append(os.path.realpath(entry.path))
                    heapq.heappush(queue, (linked or entry.is_symlink(), rel.count("/") + 1,
                                           rel + "/", entry.path))
                elif stat.S_ISREG(kind):
                    files.append(rel)

        while queue:
            linked, _, prefix, folder = heapq.heappop(queue)
            walk(folder, prefix, linked)
        return sorted(files), problems

    def read(self, rel: str) -> bytes:
        # Unbuffered: one read of the whole file straight into the result; a plain string path,
        # because pathlib's parsing cost as much as the read for small files.
        with open(os.path.join(self._root, rel), "rb", buffering=0) as fh:
            return fh.read()

    def read_head(self, rel: str, size: int) -> bytes:
        with open(os.path.join(self._root, rel), "rb", buffering=0) as fh:
            return fh.read(size)

    def size(self, rel: str) -> int:
        return os.stat(os.path.join(self._root, rel)).st_size


class ZipSource(Source):
    """A dump that is a zip archive, read in place (nothing is extracted)."""

    is_zip = True

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise LayoutError(f"{path} is not a readable zip archive ({exc})") from exc
        # The members by the names list_files gives them, which may differ from the names
        # zipfile knows them by (see _member_name); a member is read through its ZipInfo, also
        # by a ZipSource that never listed them (split places files from a fresh one).
        self._members = {_member_name(info): info for info in self._zip.infolist()
                         if not info.is_dir()}

    def list_files(self) -> tuple[list[str], list[Skipped]]:
        files = []
        problems = []
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            name = _member_name(info)
            parts = PurePosixPath(name).parts
            # Before the hidden names: ".." would pass for one, and be left out unreported.
            if (name.startswith("/") or ".." in parts or "\\" in name
                    or (parts and parts[0].endswith(":"))):  # C:/... from a DOS member
                problems.append(Skipped(name, BAD_NAME, UNSAFE_PATH))
                continue
            if not all(_visible(p) for p in parts):
                continue
            files.append(name)
        for name, n in Counter(files).items():
            # Unpacked, the last member of a name is what the folder keeps; so it is read here.
            problems += [Skipped(name, BAD_NAME, f"one of {n} members of this name in the "
                                 "archive: the last of them is used, as unpacking it keeps")
                         ] * (n - 1)
        return sorted(set(files)), problems

    def read(self, rel: str) -> bytes:
        with self._member_errors():
            return self._zip.read(self._members.get(rel, rel))

    def read_head(self, rel: str, size: int) -> bytes:
        with self._member_errors(), self._zip.open(self._members.get(rel, rel)) as fh:
            return fh.read(size)

    def size(self, rel: str) -> int:
        with self._member_errors():
            member = self._members.get(rel)
            return (member if member is not None else self._zip.getinfo(rel)).file_size

    @contextlib.contextmanager
    def _member_errors(self):
        # A member that cannot be read is one unreadable file, as on disk: the OSError names
        # why, and the caller leaves the file out.
        try:
            yield
        except NotImplementedError as exc:  # Deflate64, PPMd, ...
            raise OSError(f"archive member packed in a way Python cannot read ({exc}); unpack "
                          "the archive with another tool and split the folder") from exc
        except RuntimeError as exc:  # encrypted: "password required", "bad password"
            raise OSError(f"{exc}; unpack the archive (with its password) and split the "
                          "folder") from exc
        except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, KeyError) as exc:
            # Bad CRC, bad header, garbled or cut-short data.
            raise OSError(f"damaged archive member: {exc}") from exc

    def close(self) -> None:
        self._zip.close()


# Creator systems of the zip specification (APPNOTE 4.4.2) that separate folders with "\":
# MS-DOS/FAT, Windows NTFS and VFAT. PowerShell 5's Compress-Archive writes flowers\daisy\0.jpg.
_DOS_SYSTEMS = (0, 10, 14)
_UTF8_NAME_FLAG = 0x800


def _member_name(info: zipfile.ZipInfo) -> str:
    """The path of a zip member as its creator meant it.

    Without the UTF-8 flag, zipfile decodes a name as cp437, but macOS's Archive Utility (and
    other tools) write UTF-8 without setting the flag: a name whose bytes are valid UTF-8 is
    read as UTF-8 (cp437 names outside ASCII are seldom valid UTF-8). A member made on DOS or
    Windows may separate folders with backslashes.
    """
    name = info.filename
    if not info.flag_bits & _UTF8_NAME_FLAG:
        with contextlib.suppress(UnicodeError):
            name = name.encode("cp437").decode("utf-8")
    if info.create_system in _DOS_SYSTEMS:
        name = name.replace("\\", "/")
    return name


def _not_a_zip(path: Path) -> str:
    """Why a file given as the dump cannot be read, and what to do."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc}); give a dump folder or a .zip"
    if magic.startswith(b"PK") or path.suffix.lower() == ".zip":
        return (f"{path} is a damaged or incomplete zip archive (its table of contents at the "
                "end is missing: a download cut short?); download it again, or unzip what "
                "can be read into a folder and give the folder")
    if is_other_archive(path.name):
        return (f"{path} is an archive dsprep does not read in place; extract it and give the "
                "folder (a .zip is read as it is)")
    return f"{path} is a file but not a zip archive; give a dump folder or a .zip"


def is_other_archive(name: str) -> bool:
    """Whether a file name is an archive's that dsprep does not read in place (tar, 7z, rar)."""
    return name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z",
                                  ".rar"))


def open_source(src: str | os.PathLike) -> Source:
    """Open a dump folder or zip archive.

    Raises:
        LayoutError: ``src`` does not exist, or is a file that is not a zip archive.
    """
    path = Path(src)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        if zipfile.is_zipfile(path):
            return ZipSource(path)
        raise LayoutError(_not_a_zip(path))
    if path.exists():  # a pipe, a socket, a device
        raise LayoutError(f"{path} is neither a folder nor a file; give the folder or .zip that "
                          "holds the images")
    raise LayoutError(f"{path} does not exist; give the folder or .zip that holds the images")


def _os_detail(exc: OSError) -> str:
    return exc.strerror or str(exc)


@dataclass
class Inventory:
    """What :func:`find_images` found.

    Attributes:
        layout: the layout used ("folders", "prefix" or "csv"), never "auto".
        root: the folder inside the source the layout applies to ("" for the source itself;
            single wrapper folders, as Kaggle archives often have, are stepped into).
        items: (path relative to the source, label), sorted by path.
        skipped: files and labels rows left out, with reasons.
        labels_file: the labels CSV used, for the csv layout.
        labels_columns: which of its columns hold the ids and the labels, in words.
        labels_guessed: the label column was taken for want of a header naming one (label,
            class, ...) or a one-hot table: by its place.
        labels_doubt: a warning when that column's table may be one-hot (see
            ``_LabelsTable.doubt``).
        split_folders: for a dump already split into ``train/<class>/...``, ``test/<class>/...``
            folders (see ``SPLIT_FOLDER_NAMES``), those folders: their images are pooled, each
            labelled by its class folder.
        class_copy: the top folder (relative to ``root``) holding a copy of the class folders
            (``flowers/flowers/daisy/``, see :func:`class_copy`), whose images are labelled by
            the class folders inside it.
        linked: the real paths of the folders the dump reaches through links (its images
            are read there too).
        unnamed: class-level folders of a folders layout that hold no image file but files
            without an extension, the first of which begins as an image does: (folder, how
            many such files, that first file), sorted. No image is taken by its content.
        groups: for the csv layout, the group of each image whose row gives one: the value
            of the column given as the group column, or, with none given, of a column named
            as one (lesion_id, patient_id; see ``GROUP_WORDS``), to warn of groups spread
            over the splits.
        group_column: that column's header name (its 0-based index without a header), or
            None.
        group_given: whether the group column was given (the split keeps each group in one
            split), not only found by its name.
    """

    layout: str
    root: str
    items: list[tuple[str, str]]
    skipped: list[Skipped] = field(default_factory=list)
    labels_file: str | None = None
    split_folders: list[str] = field(default_factory=list)
    labels_columns: str | None = None
    labels_guessed: bool = False
    labels_doubt: str | None = None
    class_copy: str | None = None
    linked: list[str] = field(default_factory=list)
    unnamed: list[tuple[str, int, str]] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    group_column: str | None = None
    group_given: bool = False

    @property
    def classes(self) -> list[str]:
        """The sorted class names."""
        return sorted({label for _, label in self.items})


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class folder name, or None when it can."""
    if not label:
        return "empty label"
    if label in (".", "..") or label.startswith("."):
        return f"label {label!r} would be a hidden or special folder"
    if any(c in label for c in '/\\:*?"<>|') or any(ord(c) < 32 or 127 <= ord(c) < 160
                                                      for c in label):
        return f"label {label!r} has a character not allowed in folder names"
    size = len(label.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        return (f"label {label[:40]!r}... is {size} bytes long, more than a folder name may be "
                f"({MAX_NAME_BYTES})")
    return None


# The longest file or folder name most file systems take (ext4, XFS, APFS, NTFS: 255).
MAX_NAME_BYTES = 255


def _prefix_label(name: str, pattern: re.Pattern | None) -> str | None:
    if pattern is not None:
        match = pattern.match(name)
        return match.group("label") if match else None
    stem = os.path.splitext(name)[0]
    return stem.split(".", 1)[0] if "." in stem else None


def compile_pattern(pattern: str | None) -> re.Pattern | None:
    """Compile a ``--pattern`` regular expression, which needs one named group ``label``."""
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UsageError(
            f"--pattern {pattern!r} is not a valid regular expression ({exc})"
        ) from exc
    if "label" not in compiled.groupindex:
        raise UsageError(
            f"--pattern {pattern!r} has no named group 'label'; write e.g. '(?P<label>[a-z]+)_\\d+'"
        )
    return compiled


def _only_folder_of_images(images: list[str], root: str) -> bool:
    """Whether the wrapper folder stepped into holds images straight in it (``one/daisy/1.jpg``
    with nothing beside ``daisy/``): the one class of a dump, not a wrapper."""
    return bool(root) and any("/" not in f[len(root):] for f in images if f.startswith(root))


def _descend(files: list[str]) -> str:
    """The folder to treat as the dump: step into single wrapper folders.

    A folder is a wrapper when it holds no image or CSV of its own and only one of its
    sub-folders holds images or CSVs at any depth. Folders of other files beside that one
    (Stanford Dogs' ``Annotation/`` of XML files beside ``Images/``, docs/, notebooks/) are
    passed over, unless it holds images and no CSV itself: then it is a class folder beside
    others (of HEIC photos, or empty).
    """
    root = ""
    while True:
        here = [f[len(root):] for f in files if f.startswith(root)]
        top_files = [f for f in here if "/" not in f]
        if any(_holds_data(f) for f in top_files):
            return root
        folders = {f.split("/", 1)[0] for f in here if "/" in f and _holds_data(f)}
        if len(folders) != 1:
            return root
        only = folders.pop()
        others = {f.split("/", 1)[0] for f in here if "/" in f} - {only}
        inside = [f[len(only) + 1:] for f in here if f.startswith(only + "/")]
        direct = [f for f in inside if "/" not in f]
        if others and any(is_image_name(f) for f in direct) and not any(
                f.lower().endswith(".csv") for f in direct):
            return root
        root += only + "/"


def _nested_split(files: list[str], root: str) -> str | None:
    """The folder to step into when one top folder holds a dump already split into class
    folders and the others only images without classes in test folders, else None.

    Kaggle's New Plant Diseases archive: ``X/X/train/<class>/``, ``X/X/valid/<class>/`` and
    ``test/test/*.jpg``: two top folders stop :func:`_descend`, and read as class folders
    they were two classes, "X" and "test".
    """
    if _top_csvs(files, root) or any(_holds_data(f[len(root):]) for f in files
                                     if f.startswith(root) and "/" not in f[len(root):]):
        return None
    images: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if f.startswith(root) and "/" in f[len(root):] and is_image_name(f.rpartition("/")[2]):
            top, _, rest = f[len(root):].partition("/")
            images[top].append(rest)
    found = None
    for top, rests in images.items():
        inner = _descend(rests)
        if presplit_folders([r for r in rests if r.startswith(inner)], inner):
            if found is not None:
                return None
            found = f"{root}{top}/{inner}"
        elif not split_of(top) or any(r.count("/") > _doubled([top, *r.split("/")])
                                      for r in rests):
            return None  # a class folder, or test folders with folders in them
    return found


def _holds_data(path: str) -> bool:
    """Whether a file is an image or a CSV (labels), the files a dump is read from."""
    name = path.rpartition("/")[2]
    return is_image_name(name) or name.lower().endswith(".csv")


def find_images(
    source: Source,
    layout: str = "auto",
    *,
    pattern: str | None = None,
    labels: str | os.PathLike | None = None,
    id_column: str | int | None = None,
    label_column: str | int | None = None,
    group_column: str | int | None = None,
) -> Inventory:
    """Find the images of a dump and their labels.

    Layouts: ``folders`` (``<class>/<image>``, deeper folders belong to the class), ``prefix``
    (the class is the file-name part before the first ``.``, as in ``cat.0.jpg``, or the group
    ``label`` of ``pattern`` matched at the start of the file name), ``csv`` (a labels file with
    ids, with or without extension, and labels; or, with no label column named, a one-hot
    table of ids and a 0/1 column per class, the header naming the classes). ``auto`` picks
    csv when a labels file or a column is named or one CSV at the top labels the images,
    prefix when a folder mixes file-name classes (not numbered ones in each class folder),
    and folders otherwise (but never folders named only as splits, such as
    train/ and test/, beside a CSV: that is an error saying to choose).

    Args:
        source: from :func:`open_source`.
        layout: "auto", "folders", "prefix" or "csv".
        pattern: regular expression with a group ``label`` for the prefix layout.
        labels: the labels CSV: a path inside the source, or a file elsewhere.
        id_column: the CSV column of the ids (header name or 0-based index).
        label_column: the CSV column of the labels (header name or 0-based index).
        group_column: the CSV column of the images' groups (a patient, a lesion), whose
            images a split keeps together.

    Raises:
        UsageError: an unknown layout, a bad pattern or a column that does not exist.
        LayoutError: no image file or no labelled image could be found, the layout cannot be
            told, or a one-hot labels CSV gives a row several classes or none.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    regex = compile_pattern(pattern)
    files, problems = source.list_files()
    root = _descend(files)
    if layout in ("auto", "folders") and labels is None and regex is None:
        nested = _nested_split(files, root)
        if nested is not None:
            # Images left beside the folder stepped into lie in test folders of their own.
            problems += [Skipped(f, NO_LABEL, f"outside {nested.rstrip('/')}/, the dump's split "
                                 "folders: images without classes")
                         for f in files if f.startswith(root) and not f.startswith(nested)
                         and is_image_name(PurePosixPath(f).name) and _utf8(f)]
            root = nested
    inside = [f for f in files if f.startswith(root)]
    images = [f for f in inside if is_image_name(PurePosixPath(f).name)]
    problems += _unsupported(inside)
    if not images:
        source.refuse_unlisted()  # the images may all lie in folders that cannot be listed
        raise LayoutError(_no_images(source, files, problems))
    undecodable = [f for f in images if not _utf8(f)]
    if undecodable:
        problems += [Skipped(f.encode("utf-8", "backslashreplace").decode(), BAD_NAME,
                             NOT_UTF8_NAME) for f in undecodable]
        images = [f for f in images if _utf8(f)]

    # A labels file or a column named means the csv layout is wanted: only without them is
    # the top CSV a guess that may turn out not to be the labels.
    guessing = (layout == "auto" and labels is None and id_column is None
                and label_column is None and group_column is None)
    table, labels_name, passed_over, copy, loose = None, None, None, None, False
    if layout in ("auto", "csv"):
        try:
            table, labels_name, passed_over, loose = _read_table(
                source, root, files, images, labels, id_column, label_column, guessing,
                group_column)
        except (LayoutError, UsageError):
            source.refuse_unlisted()  # the labels file may lie in a folder not listed
            raise
    where = f"{source.path}" + (f" (inside {root.rstrip('/')})" if root else "")
    if table is not None:
        items, skipped = table.resolve()
        chosen = "csv"
        if any(s.reason == MISSING_FILE for s in skipped):
            # Rows whose files were not found may name files in a folder not listed.
            source.refuse_unlisted()
        _check_table_matched(table, items, skipped, where, source.path)
    else:
        # Any folder may hold labelled images (a class folder, files named by class), also
        # one beside the folder the dump was taken to be wrapped in.
        source.refuse_unlisted()
        if layout == "auto":
            layout = _guess_layout(images, root, regex)
        if layout == "prefix":
            items, skipped = _by_prefix(images, regex)
        else:
            split_folders = presplit_folders(images, root)
            copy = None if split_folders else class_copy(
                images, root, root.rstrip("/").rpartition("/")[2] or source.name)
            items, skipped = _by_folder(images, root, bool(split_folders), copy)
        chosen = layout
        labels_name = None
    if chosen != "folders":
        split_folders = []
    elif guessing and items and not split_folders and all(split_of(lab) for _, lab in items):
        # The labels file may lie beside the images in each split folder (an export with
        # train/_classes.csv).
        beside = [f for label in sorted({lab for _, lab in items})
                  for f in _top_csvs(files, f"{root}{label}/")]
        _refuse_split_named_classes(items, _top_csvs(files, root) or beside, where)
    good, bad = [], []
    for rel, label in items:
        # "café" typed (composed) and from a macOS archive (decomposed) print alike: one class.
        label = unicodedata.normalize("NFC", label)
        problem = label_problem(label)
        (bad.append(Skipped(rel, BAD_LABEL, problem, label)) if problem
         else good.append((rel, label)))
    inventory = Inventory(chosen, root.rstrip("/"), sorted(good), sorted(problems + skipped + bad),
                          labels_name, split_folders,
                          table.columns_in_words() if table is not None else None,
                          table is not None and table.label_guessed,
                          table.doubt() if table is not None else _passed_over_doubt(
                              passed_over if loose else None, chosen, good),
                          copy.rstrip("/") if chosen == "folders" and copy else None,
                          sorted(set(source.linked)),
                          _unnamed_images(source, inside, images, root, split_folders)
                          if chosen == "folders" else [])
    kept = {rel for rel, _ in good}
    groups = {rel: g for rel, g in table.groups.items() if rel in kept} if table else {}
    # A column found by its name groups images only with three values or more (a yes/no
    # "person" column does not).
    if table is not None and table.group_index is not None and (
            group_column is not None or len(set(groups.values())) > 2):
        inventory.groups = groups
        inventory.group_column = (table.column_names[table.group_index]
                                  if table.first_line == 2 else str(table.group_index))
        inventory.group_given = group_column is not None
    if not inventory.items:
        # Nothing else to go by (no CSV, no pattern): the one folder is the dump's one class.
        # Guessed, or the folders layout asked for (its one folder was stepped into all the
        # same); not where file names or a CSV were to label them.
        wrapper = ((guessing or chosen == "folders") and table is None and passed_over is None
                   and regex is None and _only_folder_of_images(images, root))
        raise LayoutError(_no_labelled_images(where, chosen, source.path, root, wrapper,
                                              passed_over, inventory.skipped, regex)
                          + (_one_class_hint(source.path, images, root)
                             if chosen == "prefix" and regex is None else "")
                          + pixel_tables(source, files))
    return inventory


# Words that name the numbered folders of one set, not classes: images_001/, part_2/.
# Also the folders of medical dumps sorted by patient or study (patient001/): not classes.
_CHUNK_WORDS = frozenset({"part", "batch", "chunk", "images", "imgs", "img", "shard", "folder",
                          "patient", "case", "study", "series", "scan", "session"})


def chunk_folders(names) -> bool:
    """Whether folders named alike but for their numbers are chunks of one dump
    (HAM10000_images_part_1/ and _part_2/, images_001/ to images_012/), by a word of such
    names: 0/ and 1/, c0/ to c9/, class_1/ or ImageNet's n01440764/ are classes."""
    stems = {re.sub(r"\d+", "#", str(n).lower()) for n in names}
    if len(names) < 2 or len(stems) != 1:
        return False
    return bool(set(re.split(r"[^a-z]+", stems.pop())) & _CHUNK_WORDS)


def _passed_over_doubt(passed_over: str | None, chosen: str,
                       items: list[tuple[str, str]]) -> str | None:
    """A warning for a CSV beside the images that the guess did not take for the labels
    while folders or file names labelled two classes or more."""
    classes = sorted({label for _, label in items})
    if passed_over is None or len(classes) < 2:
        return None
    how = "folders" if chosen == "folders" else "file names"
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return (f"{passed_over} names images of the dump but was not taken for their labels: the "
            f"{how} were ({shown}); if {passed_over} holds the labels, give --layout csv "
            f"--labels {passed_over}")


def _read_table(source: Source, root: str, files: list[str], images: list[str],
                labels, id_column, label_column, guessing: bool, group_column=None):
    """The labels table of the csv layout, its file's name, the name of a CSV that a guess
    passed over, and whether that CSV labels most images by ids matched loosely (``(table or
    None, name or None, passed-over name or None, bool)``)."""
    if guessing:
        top = _top_csvs(files, root)
        # Kaggle's submission templates (sample_submission.csv) name the test images, with a
        # placeholder answer: beside another CSV they are no labels.
        templates = [f for f in top if is_submission_template(f)]
        named = [f for f in top if "label" in PurePosixPath(f).name.lower()]
        if len(named) != 1 and templates and len(templates) < len(top):
            rest = [f for f in top if f not in templates]
            if len(rest) > 1 or _class_folders(images, root) > 1:
                # Weighed as several CSVs are: beside class folders, a table whose label
                # column is only guessed by its place (a sizes table) is no labels.
                return (*_best_table(source, root, rest, images), False)
            labels = rest[0]  # the one data CSV, read as a lone one is
            top = rest
        if len(top) > 1 and len(named) != 1:
            return (*_best_table(source, root, top, images), False)
    elif labels is None:
        only = _only_labels_file(source, root, files, images, id_column, label_column,
                                 group_column)
        if only is not None:
            return only, only.name, None, False
    labels_name, text = _labels_text(source, root, files, labels, required=not guessing)
    if text is None:
        return None, labels_name, None, False
    try:
        table = _LabelsTable(text, labels_name, images, root, id_column, label_column,
                             source.name, _copies_of(source), group_column)
    except (LayoutError, UsageError, csv.Error):
        # A stray notes.csv that is empty, not a table or has no id and label columns to
        # tell apart says nothing about labels unless the user asked for them.
        if not guessing:
            raise
        return None, labels_name, None, False
    if guessing and not table.labels_most():
        # A table the guess did not take for the labels: named if nothing else works, and
        # in a warning if it has a label column so named and labels most images by its ids'
        # tails (a Kaggle path, /kaggle/input/x/images/a.jpg) beside folders taken for the
        # classes (images/ and masks/).
        loose = not table.label_guessed and table.labels_most_loosely()
        return None, labels_name, (labels_name if table.labelled or loose else None), loose
    return table, labels_name, None, False


def _only_labels_file(source: Source, root: str, files: list[str], images: list[str],
                      id_column, label_column, group_column) -> _LabelsTable | None:
    """Of several CSVs at the top, with the csv layout or its columns asked for but no
    --labels (APTOS: train.csv, test.csv, sample_submission.csv), the table of the one that
    labels most images with the columns given, when it is the only one but submission
    templates, or the only one that does with a label column named as such or given (not a
    metadata table's guessed age_approx); else None (the caller then asks for --labels)."""
    top = _top_csvs(files, root)
    rest = [f for f in top if not is_submission_template(f)]
    if len(top) < 2 or not rest:
        return None
    copies = _copies_of(source)

    def table_of(name: str, text: str) -> _LabelsTable:
        return _LabelsTable(text, name, images, root, id_column, label_column, source.name,
                            copies, group_column)

    if len(rest) == 1:  # read as a lone CSV is: its errors are the user's to see
        return table_of(rest[0], _decode_csv(_read_labels(source, rest[0]), rest[0]))
    found = []
    for name in rest:
        try:
            # Not a table of pixel values (HAM10000's hmnist_*.csv, 84 MB): read by its head.
            head = source.read_head(name, 65536).decode("utf-8", "replace").split("\n", 1)[0]
            if holds_pixels(head):
                continue
            table = table_of(name, _decode_csv(_read_labels(source, name), name))
        except (OSError, DsprepError, csv.Error):
            continue
        if table.labels_most() and not (table.label_guessed and label_column is None):
            found.append(table)
    return found[0] if len(found) == 1 else None


_PROBE_ROWS = 60  # lines of a CSV read first, to tell whether it may be the labels


def _best_table(source: Source, root: str, csvs: list[str], images: list[str]):
    """Of several CSVs at the top and none named as the labels (HAM10000's metadata beside its
    hmnist pixel tables), the one the guess trusts, with a label column named as such, that
    labels the most images, as ``_read_table`` returns it; one that cannot be read or is no
    table says nothing."""
    best, passed_over = None, None
    copies = _copies_of(source)
    for name in csvs:
        try:
            text = _decode_csv(_read_labels(source, name), name)
            # Its first rows first: a table read whole costs seconds for a pixel table of
            # 80 MB, and one whose label column is only guessed by its place (image_sizes.csv:
            # file,width,height) is no labels beside folders or file names that are.
            probe = _LabelsTable("\n".join(text.split("\n", _PROBE_ROWS)[:_PROBE_ROWS]), name,
                                 images, root, None, None, source.name, copies)
            need = max(probe.id_index, probe.label_index)
            if probe.label_guessed or not any(
                    need < len(row) and probe.lookup(row[probe.id_index]) for row in probe.rows):
                continue
            table = _LabelsTable(text, name, images, root, None, None, source.name, copies)
        except (DsprepError, csv.Error):
            continue
        if table.labels_most():
            if best is None or table.labelled > best.labelled:
                best = table
        elif table.labelled and passed_over is None:
            passed_over = name
    if best is None:
        return None, None, passed_over
    return best, best.name, None


def _check_table_matched(table: _LabelsTable, items: list, skipped: list[Skipped], where: str,
                         path) -> None:
    """Refuse a labels table none of whose rows names an image file of the dump."""
    row_reasons = {s.reason for s in skipped} - {UNLABELLED}
    if items or MISSING_FILE not in row_reasons or not row_reasons <= {MISSING_FILE, BAD_ROW}:
        return
    missing = next(s for s in skipped if s.reason == MISSING_FILE)
    raise LayoutError(
        f"{where}: no row of {table.name} names an image file in it (e.g. "
        f"{missing.source!r}: {missing.detail}); ids, taken from column "
        f"{table.id_header}, are matched as paths inside {path} (for paths from "
        "another machine, their part after its name), with or without the extension "
        "and in any case, or as bare file names: check --id-column and --labels"
        + ("; its fields were taken as separated by spaces (no line near its top holds a "
           "comma, a semicolon or a tab)" if table.delimiter == " " else ""))


def _refuse_split_named_classes(items: list, csvs: list[str], where: str) -> None:
    """train/ and test/ as the only "classes" beside a CSV, or holding one each: the labels
    are in the CSV (one the guess did not trust, or one of several), not in the folder
    names."""
    if not csvs:
        return  # classes after all (the split's summary warns of their names)
    names = ", ".join(sorted({f"{label}/" for _, label in items}))
    raise LayoutError(
        f"{where}: its folders {names} are named as splits, not classes, and the labels "
        f"are likely in {' or '.join(csvs)}; give --layout csv (with --labels, "
        "--id-column and --label-column as needed) to read them, or --layout folders "
        "to take the folder names as classes")


def _copies_of(source: Source) -> Callable[[Sequence[str]], bool]:
    """Whether files of ``source`` are byte-identical copies: by their sizes, then their bytes
    (only for an id naming several files, which seldom happens but for copies); cached."""
    known: dict[tuple[str, ...], bool] = {}

    def copies(rels: Sequence[str]) -> bool:
        key = tuple(rels)
        if key not in known:
            try:
                same = len({source.size(rel) for rel in key}) == 1
                if same:
                    first = source.read(key[0])
                    same = all(source.read(rel) == first for rel in key[1:])
            except (OSError, DsprepError):
                same = False
            known[key] = same
        return known[key]

    return copies


def _no_labelled_images(where: str, chosen: str, path, root: str, wrapper: bool,
                        passed_over: str | None, problems: list[Skipped],
                        regex: re.Pattern | None = None) -> str:
    """Why a dump has no labelled images, and what to try."""
    return (
        f"{where} has no labelled images for the {chosen} layout; expected "
        + {"folders": "<class>/<image> folders",
           "prefix": (f"file names that --pattern {quoted(regex.pattern)} matches at their "
                      "start, with a non-empty group 'label'" if regex is not None
                      else "files named <class>.<n>.<ext> (or give --pattern)"),
           "csv": "a labels CSV whose ids name image files"}[chosen]
        + "; choose the layout with --layout"
        + (f" ({root.rstrip('/')}/ is the only folder of {path} and holds the "
           "images themselves, so it was stepped into as a wrapper: a classifier needs a "
           "folder of images for each class, two or more, side by side)" if wrapper else "")
        + (f" ({passed_over} was not taken for the labels: it labels less than half of "
           "the images, or all alike, or with a value per image; --layout csv reads it)"
           if passed_over else "")
        + _labels_beside(path, passed_over)
        + _ambiguous_note(problems)
        + _unsafe_note(problems)
    )


# File names cameras and phones give, before their number: no classes.
_CAMERA_HEADS = {"img", "dsc", "dscn", "dscf", "pxl", "mvimg", "pano", "photo", "image", "pic",
                 "picture", "screenshot", "vid", "dji", "gopr", "sam", "wp", "p", "dcim", "fb",
                 "received", "whatsapp", "signal", "inshot", "capture", "captura"}


def _one_class_hint(path, images: list[str], root: str) -> str:
    """For a folder of images named without <class>. prefixes: it may be one class's folder
    (flowers/daisy/ given for flowers/), or its names may carry the class otherwise
    (cat_001.jpg), which a --pattern reads."""
    names = [f[len(root):] for f in images if f.startswith(root)]
    flat = [n for n in names if "/" not in n]
    if _labels_beside(path, None):
        return ""  # a labels CSV beside it, named already, is the likelier way
    for sep in ("_", "-", " "):
        # The class is all before the number that ends the name: Oxford pets'
        # american_pit_bull_terrier_12.jpg.
        # Not cameras' and apps' names (IMG_1234.jpg, IMG_20230512_143015.jpg, FB_IMG_...).
        named = [(n, h) for n in flat
                 if (m := re.match(rf"(.*[^\W\d_].*?){re.escape(sep)}\d+\.\w+$", n))
                 and re.split(r"[_\- ]", h := m.group(1), maxsplit=1)[0].lower()
                 not in _CAMERA_HEADS]
        heads = [h for _, h in named]
        # Two classes or more, of two images each on average, that differ in more than their
        # digits (not dates or ids: signal-2023-05-10-143005.jpg, patient001_01.png).
        if (len(heads) * 2 > len(flat) and 1 < len(set(heads)) <= len(heads) // 2
                and len({re.sub(r"\d", "", h) for h in heads}) > 1):
            pattern = rf"(?P<label>.+){sep}\d+\."
            return (f"; names such as {named[0][0]} carry their class before '{sep}' and a "
                    f"number: --layout prefix --pattern {quoted(pattern)} reads them")
    if flat and len(flat) == len(names) and not root and Path(path).is_dir():
        # (The folder given holds the images itself; one stepped into is said otherwise.)
        parent = Path(path).parent
        if parent == Path("."):  # "daisy", ".", "..": named in full
            parent = Path(os.path.abspath(path)).parent
        return (f"; if {path} is the folder of one class, give the folder that holds the "
                f"class folders, such as {parent}")
    return ""


def _ambiguous_note(skipped: list[Skipped]) -> str:
    """Where a labels CSV's ids each name several files of other content: said, with one."""
    ambiguous = [s for s in skipped if s.reason == AMBIGUOUS_ID]
    if not ambiguous:
        return ""
    first = ambiguous[0]
    return (f" ({len(ambiguous)} of its ids each name several files, such as {first.source}: "
            f"{first.detail.partition(' matches ')[2]}; give ids that are paths inside the "
            "dump, or remove the extra copies)")


def is_submission_template(name: str) -> bool:
    """Whether a CSV is a Kaggle submission template (sample_submission.csv,
    sampleSubmission.csv): it names the test images, with a placeholder for each label."""
    return "submission" in PurePosixPath(name).name.lower()


def _labels_beside(path, passed_over: str | None) -> str:
    """A hint naming the CSVs beside a folder or .zip given as the dump (Kaggle's dog breeds:
    train/ given, labels.csv beside it; Aerial Cactus: train.zip beside train.csv; also beside
    a doubled train/train/'s outer folder), which the dump itself does not hold."""
    folder = Path(path)
    if passed_over or not (folder.is_dir() or folder.suffix.lower() == ".zip"):
        return ""
    beside = _tables_in(folder.parent)
    if not beside and folder.parent.name.lower() == folder.name.lower():
        beside = _tables_in(folder.parent.parent)  # train/train/
    if not beside:
        return ""
    names = " or ".join(quoted(p) for p in beside[:3])
    return f"; if {names} beside it labels the images, give it with --labels"


def _tables_in(folder: Path) -> list[Path]:
    """The CSVs in a folder but submission templates, by name; [] if it cannot be read."""
    try:
        return sorted(p for p in folder.glob("*.csv") if p.is_file()
                      and not is_submission_template(p.name))
    except OSError:
        return []


def _unsupported(files: list[str]) -> list[Skipped]:
    """Files of image formats OpenCV does not decode (phone HEIC photos, camera raw), as
    left out: a dump of them would otherwise lose them without a word."""
    left = []
    for f in files:
        ext = os.path.splitext(f)[1].lower()
        if ext in UNSUPPORTED_EXTENSIONS and all(_visible(p) for p in PurePosixPath(f).parts):
            left.append(Skipped(f, UNSUPPORTED, f"{ext} images are not read; convert them to "
                                                "JPEG or PNG to include them"))
    return left


def _unsafe_note(problems: list[Skipped]) -> str:
    """A sentence on the archive members left out for unsafe paths ("" when none were)."""
    unsafe = [p.source for p in problems if p.detail == UNSAFE_PATH]
    if not unsafe:
        return ""
    return (f"; {len(unsafe)} archive member(s) were left out for unsafe paths (absolute, "
            f"through '..' or with a backslash), e.g. {unsafe[0]!r}: check how the archive "
            "was made")


def _unnamed_images(source: Source, inside: list[str], images: list[str], root: str,
                    split_folders: Sequence[str] = ()) -> list[tuple[str, int, str]]:
    """The folders beside the class folders (in each split folder of a dump already split)
    holding no image file, only files without an extension, that may be images all the same
    (``Inventory.unnamed``): a class folder whose images lost their extensions would vanish
    without a word."""
    bare: dict[str, list[str]] = defaultdict(list)
    levels = [f"{root}{folder}/" for folder in split_folders]
    for level in [root, *levels]:
        named = {f[len(level):].partition("/")[0] for f in images if f.startswith(level)}
        for f in inside:
            if not f.startswith(level) or any(f.startswith(deeper) for deeper in levels
                                              if deeper != level):
                continue
            top, _, rest = f[len(level):].partition("/")
            if rest and top not in named and "." not in rest.rpartition("/")[2].lstrip("."):
                bare[f"{level[len(root):]}{top}"].append(f)
    found = []
    for top, files in sorted(bare.items()):
        # The first few (one README or error page need not hide the rest), by their heads:
        # a raw file beside the classes (MNIST's train-images-idx3-ubyte) may be gigabytes.
        for rel in files[:3]:
            try:
                head = source.read_head(rel, 16)
            except (OSError, DsprepError):
                continue
            if looks_like_image(head):
                found.append((top, len(files), rel))
                break
    return found


def _no_images(source: Source, files: list[str], problems: list[Skipped]) -> str:
    """Why a dump without a single image file cannot be split, and what to split instead."""
    unsupported = sorted({os.path.splitext(p.source)[1].lower() for p in problems
                          if p.reason == UNSUPPORTED})
    message = (f"{source.path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
               + (f"; its {', '.join(unsupported)} images are not read: convert them to JPEG "
                  "or PNG" if unsupported else "")
               + _unsafe_note(problems))
    archives = [f for f in files if f.lower().endswith(".zip")]
    if not archives:
        # CIFAR-10 on Kaggle: train.7z beside trainLabels.csv.
        others = [f for f in files if is_other_archive(f)]
        if others:
            return (message + f"; it holds the archive(s) {', '.join(others[:3])}"
                    + (", ..." if len(others) > 3 else "") + ", which dsprep does not read "
                    "in place: extract them here, and split this folder again")
        return message + pixel_tables(source, files) + "; give the folder or .zip that holds " \
            "the images"
    # Kaggle's dogs-vs-cats download: train.zip (labelled) beside test1.zip (unlabelled).
    pick = next((f for f in archives if split_of(PurePosixPath(f).stem) == "train"),
                archives[0])
    message += f"; it holds the archive(s) {', '.join(archives)}"
    if source.is_zip:  # an archive inside an archive cannot be read in place
        return (message + f": extract {source.path} and split the archive inside, e.g. "
                f"'dsprep split {quoted('<extracted folder>/' + pick)} DEST'")
    # Aerial Cactus: train.zip beside train.csv, which labels its images.
    tables = _tables_in(source.path)
    named = next((t for t in tables if t.stem.lower() == PurePosixPath(pick).stem.lower()
                  or _named_split(t.name) == split_of(PurePosixPath(pick).stem) == "train"),
                 None)
    labels = f" --labels {quoted(named)}" if named else ""
    return (message + f": split one of them, e.g. 'dsprep split {quoted(source.path / pick)} "
            f"DEST{labels}'" + (f" (if {' or '.join(quoted(t) for t in tables[:3])} labels "
                                "its images, give it with --labels)" if tables and not named
                                else ""))


def holds_pixels(header: str) -> bool:
    """Whether a CSV header line names pixel values: label,pixel1,...,pixel784 (Fashion-MNIST),
    or one column of them all (FER2013's pixels)."""
    columns = [c.strip().strip('"').lower() for c in re.split(r"[,;\t]", header)]
    if len(columns) >= 64 and all(re.fullmatch(r"-?\d+(\.\d*)?", c) for c in columns):
        return True  # no header: a first row of numbers (EMNIST's label,p1,...,p784)
    return "pixels" in columns or sum(
        bool(re.fullmatch(r"(pixel|px|p)_?\d+|\d+x\d+", c)) for c in columns) >= 64


def pixel_tables(source: Source, files: list[str]) -> str:
    """A note on the CSVs of a dump that hold images as pixel values (Fashion-MNIST's
    label,pixel1,...,pixel784), which are no image files; "" if none does."""
    tables = []
    for rel in sorted(f for f in files if f.lower().endswith(".csv"))[:8]:
        try:
            head = source.read_head(rel, 65536).decode("utf-8", "replace").split("\n", 1)[0]
        except OSError:
            continue
        if holds_pixels(head):
            tables.append(rel)
    if not tables:
        return ""
    return (f"; {', '.join(tables[:2])}{', ...' if len(tables) > 2 else ''} "
            f"hold{'s' if len(tables) == 1 else ''} images as pixel values, one per row, which "
            "dsprep does not read: write them out as image files (PNG) in class folders "
            "first")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _guess_layout(images: list[str], root: str, regex: re.Pattern | None) -> str:
    """"prefix" when the file names carry the classes (cat.0.jpg), else "folders".

    Names carry the classes when some folder's names start with two or more different
    prefixes, at least half of its names having one (dogs-vs-cats' train folder). Names that
    start with a date (2019.01.05.jpg, 2016-05-21 14.23.11.jpg) or whose prefix holds a space
    (Screenshot 2019-01-05 at 14.23.11.png) are a camera's or a screen's, not classes: a class
    folder of them, or with a few dotted names, stays a class folder. So do class folders whose
    names are numbered (1.title.jpg, 2.title.jpg), each prefix naming about one of its files.
    """
    if regex is not None:
        return "prefix"
    if not any("/" in rel[len(root):] for rel in images):
        return "prefix"
    labels: dict[str, set[str]] = defaultdict(set)
    named: Counter[str] = Counter()  # names with a prefix, per folder
    count: Counter[str] = Counter()
    for rel in images:
        folder, _, name = rel[len(root):].rpartition("/")
        count[folder] += 1
        label = _prefix_label(name, None)
        if label is not None and not _DATED.match(name) and not any(c.isspace() for c in label):
            labels[folder].add(label)
            named[folder] += 1
    if not any(len(found) > 1 and 2 * named[folder] >= count[folder]
               for folder, found in labels.items()):
        return "folders"
    # Names numbered one by one (google_images_download's pug/1.title.jpg, pug/2.title.jpg):
    # each prefix names about one file of its folder, where a class would name many. One such
    # folder may also be a prefix dump of one image per class (train/c0.0.png, train/c1.0.png
    # beside an unlabelled test1/): it takes every folder of prefixed names numbered so, and
    # two or more of them, or two or more folders of unprefixed names beside (one scraped
    # class among tulips/tulip_0001.jpg and daisy/daisy_0001.jpg; Roboflow's
    # fire/img34_jpg.rf.<hash>.jpg).
    numbered = [folder for folder, found in labels.items() if 2 * named[folder] <= 3 * len(found)]
    # Folders named as splits or as unlabelled (test1/, unlabeled/) hold no class. A scraped
    # class folder's prefixes are numbers (pug/1.title.jpg) or Roboflow's (img34_jpg.rf.*),
    # where a prefix dump of one image per class has words (imgs/cat.0.png).
    plain = sum(1 for folder in count if folder not in labels and folder
                and not _no_class_folder(folder))
    scraped = any(folder and not _no_class_folder(folder) and all(
        p.isdigit() or p.lower().endswith(("_jpg", "_jpeg", "_png")) for p in labels[folder])
        for folder in numbered)
    if len(numbered) == len(labels) and (len(labels) > 1 or plain > 1 or (plain and scraped)):
        return "folders"
    return "prefix"


def _no_class_folder(folder: str) -> bool:
    """A folder named as a split or as unlabelled images (train/, test1/, unlabeled/)."""
    name = folder.rpartition("/")[2]
    return split_of(re.sub(r"\d+$", "", name)) is not None or "unlabel" in name.lower()


# A name that starts with a date: 2019.01.05.jpg, 2016-05-21 14.23.11.jpg, 20190105_1423.1.jpg.
_DATED = re.compile(r"(19|20)\d\d([-_.]?)[01]\d\2[0-3]\d(\D|$)")


def _by_prefix(images: list[str], regex: re.Pattern | None) -> tuple[list, list[Skipped]]:
    items, skipped = [], []
    why = ("file name does not match --pattern" if regex is not None
           else "file name has no '<class>.' prefix (e.g. cat.0.jpg)")
    for rel in images:
        label = _prefix_label(PurePosixPath(rel).name, regex)
        if label is None:
            skipped.append(Skipped(rel, NO_LABEL, why))
        else:
            items.append((rel, label))
    return items, skipped


# Folder names that mark a dump as already split (chest_xray/train/NORMAL/...), and the split
# each stands for.
SPLIT_FOLDER_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                      "validation": "val", "dev": "val", "test": "test", "testing": "test"}
# Words that may stand beside a split's name in a folder name: training_set/, seg_train/.
# ("final" is not: GTSRB's Final_Training/ and Final_Test/ hold its classes further down.)
_SPLIT_NAME_WORDS = {"set", "data", "dataset", "images", "imgs", "img", "seg", "split", "files",
                     "simple", "small", "sample", "mini", "full", "subset"}


def split_of(name: str) -> str | None:
    """The split a folder name stands for ("train", "val", "test"), else None.

    A name of ``SPLIT_FOLDER_NAMES`` in any case, or one of them joined by ``_``, ``-``, ``.``
    or spaces to words such as set, data or images (``training_set``, ``seg_train``,
    ``Test Images``); ``train_station`` is no split.
    """
    words = [w for w in re.split(r"[\s_.\-]+", name.lower()) if w]
    splits = [SPLIT_FOLDER_NAMES[w] for w in words if w in SPLIT_FOLDER_NAMES]
    if len(splits) == 1 and all(w in SPLIT_FOLDER_NAMES or w in _SPLIT_NAME_WORDS
                                for w in words):
        return splits[0]
    return None


def _doubled(parts: list[str]) -> int:
    """1 when a path starts with a folder inside one of the same name (seg_train/seg_train/,
    as archives of a folder often are), else 0."""
    return int(len(parts) >= 3 and parts[0].lower() == parts[1].lower())


def _split_path(parts: list[str]) -> tuple[str, int, str] | None:
    """Where an image of a pre-split dump lies: (kind, index of its class folder, split folder).

    kind is "split" for ``split/class/...`` (also under a doubled ``split/split/``), "copy" for
    a copy of the split folders one level down (``copy/split/class/...``), "loose" for an
    image straight in another folder (``seg_pred/1.jpg``, ``seg_pred/seg_pred/1.jpg``);
    None for anything else.
    """
    lead = _doubled(parts)
    if len(parts) >= lead + 2 and split_of(parts[lead]):
        return "split", lead + 1, "/".join(parts[:lead + 1])
    if len(parts) >= 3 and split_of(parts[1]):
        return "copy", 2, "/".join(parts[:2])
    if len(parts) == lead + 2:
        return "loose", lead + 1, "/".join(parts[:lead + 1])
    return None


def _class_folders(images: list[str], root: str) -> int:
    """How many top folders (below ``root``) hold images, not counting those named as splits."""
    return len({rel[len(root):].split("/", 1)[0] for rel in images
                if "/" in rel[len(root):] and not split_of(rel[len(root):].split("/", 1)[0])})


def _named_split(path: str) -> str | None:
    """The split a labels file's name names (trainLabels.csv, val_annotations.csv, test.csv),
    else None."""
    stem = PurePosixPath(path.replace("\\", "/")).stem
    words = re.split(r"[\s_.\-]+|(?<=[a-z])(?=[A-Z])", stem)
    splits = {SPLIT_FOLDER_NAMES[w.lower()] for w in words if w.lower() in SPLIT_FOLDER_NAMES}
    return splits.pop() if len(splits) == 1 else None


def classless_splits(classes: dict[str, set[str]]) -> dict[str, str]:
    """The split folders of a pre-split dump whose images lie in one folder that is no class
    (Tiny ImageNet's ``val/images/`` and ``test/images/``, beside ``train/<class>/``): those
    whose one class folder is named as no class of the splits holding two or more.

    Args:
        classes: the class folder names holding images, by split folder.

    Returns:
        That folder's name, by split folder.
    """
    known = set().union(*(names for names in classes.values() if len(names) >= 2))
    return {folder: next(iter(names)) for folder, names in classes.items()
            if len(names) == 1 and known and not names & known}


def presplit_folders(images: list[str], root: str) -> list[str]:
    """The split folders of a dump laid out as ``<split>/<class>/<image>``, else [].

    Such a dump is one where every top folder holding images is named as a split (see
    :func:`split_of`; also inside a folder of the same name, ``seg_train/seg_train/``), but
    for folders of images without classes (Kaggle's unlabelled ``test1/``, ``seg_pred/``) and
    at most one copy of those same split folders one level down (Kaggle's chest_xray archive
    holds ``chest_xray/train/...`` and a copy in ``chest_xray/chest_xray/``); nothing but
    folders lies at the top, and some image is in a class folder of a split: read as plain
    class folders, its classes would be "train" and "test". Only the folders holding images
    in class folders are returned (not Plant Seedlings' test/ of unlabelled images).
    """
    found, copies, copied = set(), set(), set()
    labelled: set[str] = set()  # the split folders holding images in class folders
    for rel in images:
        parts = rel[len(root):].split("/")
        where = _split_path(parts)
        if where is None:
            return []
        kind, k, folder = where
        if kind == "loose":
            continue
        found.add(folder)
        if len(parts) >= k + 2:
            labelled.add(folder)
        if kind == "copy":
            copies.add(parts[0])
            copied.add(split_of(parts[1]))
    splits = {split_of(f.rsplit("/", 1)[-1]) for f in found if f.split("/")[0] not in copies}
    if not labelled or not splits or len(copies) > 1 or not copied <= splits:
        return []
    return sorted(labelled)


def own_split_folders(folder: str | os.PathLike,
                      left_out: list[str] | None = None) -> dict[str, Path]:
    """A folder's split folders when it is laid out as ``<split>/<class>/...``.

    Every visible sub-folder must be named as a split (see :func:`split_of`), or hold one
    folder of the same name that is (``seg_train/seg_train/``). Returns them by split
    ("train", "val", "test"), in that order; {} when the folder is not laid out so. Given
    ``left_out`` (a list), two kinds of sub-folder are passed over, each with a line added
    to it: a folder with no sub-folders (unlabelled images such as ``test1/`` or
    ``seg_pred/seg_pred/``, or notes), and one copy of the split folders (as in Kaggle's
    chest_xray archive). Two folders for one split (val/ and valid/) are refused.
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    copies: list[tuple[Path, dict[str, Path]]] = []
    loose: list[Path] = []
    for name in visible_folders(folder):
        path = folder / name
        inner = visible_folders(path)
        if namesake(path, inner) is not None:
            path = path / inner[0]  # seg_train/seg_train/
            inner = visible_folders(path)
        split = split_of(name)
        if split is None:
            if left_out is None:
                return {}
            if not inner:
                loose.append(path)
                continue
            nested: dict[str, Path] = {}
            if not copies:  # one copy, one level down, no deeper
                with contextlib.suppress(UsageError):
                    nested = own_split_folders(path)
            if not nested:
                return {}
            copies.append((path, nested))
            continue
        if split in found:
            raise UsageError(f"{folder} has both {found[split].relative_to(folder)}/ and "
                             f"{path.relative_to(folder)}/ for the {split} split; move one of "
                             "them out")
        found[split] = path
    # Some split holds class folders, and a copy holds the same splits as those beside it.
    if (not any(visible_folders(path) for path in found.values())
            or any(not set(nested) <= set(found) for _, nested in copies)):
        return {}
    if left_out is not None:
        left_out += [f"left out {path}/: no class folders in it" for path in loose]
        left_out += [f"left out {path}/: split folders of its own (a copy?)"
                     for path, _ in copies]
    return {split: found[split] for split in ("train", "val", "test") if split in found}


def namesake(folder: Path, inner: list[str] | None = None) -> Path | None:
    """The one visible sub-folder of ``folder`` named as it is, in any case (Kaggle's
    ``seg_test/seg_test/``), else None; ``inner``: its visible sub-folders, if known."""
    inner = visible_folders(folder) if inner is None else inner
    return folder / inner[0] if len(inner) == 1 and inner[0].lower() == folder.name.lower() \
        else None


def visible_folders(folder: Path) -> list[str]:
    """The sorted names of a folder's visible sub-folders ([] if it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:  # no stat per file: class folders can be large
            return sorted(e.name for e in entries if e.is_dir() and _visible(e.name))
    except OSError:
        return []


def class_copy(images: list[str], root: str, name: str) -> str | None:
    """The folder of a class-folder dump that holds a copy of its class folders, else None.

    Kaggle's flowers archive holds ``flowers/daisy/...`` and a copy in
    ``flowers/flowers/daisy/...``: read as plain class folders, the copy would be one more
    class, "flowers", whose images are the others' under a second label. A copy is a top
    folder without images of its own, whose sub-folders holding images (two or more) are all
    named as top folders that hold images themselves, and which is named as the dump itself
    (``name``) or holds at least half of its files under the same paths as outside it (a
    dump renamed on download); an ``augmented/<class>/`` or ``rejected/<class>/`` folder of
    other files is no copy.
    """
    direct: set[str] = set()
    below: dict[str, set[str]] = defaultdict(set)
    paths = {rel[len(root):] for rel in images}
    for path in paths:
        parts = path.split("/")
        if len(parts) == 2:
            direct.add(parts[0])
        elif len(parts) > 2:
            below[parts[0]].add(parts[1])

    def copies(folder: str) -> bool:
        if folder.lower() == name.lower():
            return True
        inside = [p[len(folder) + 1:] for p in paths if p.startswith(folder + "/")]
        return 2 * sum(p in paths for p in inside) >= len(inside)

    found = [folder for folder, inner in below.items()
             if folder not in direct and len(inner) >= 2 and inner <= direct - {folder}
             and copies(folder)]
    return found[0] if len(found) == 1 else None


def _by_folder(images: list[str], root: str, presplit: bool = False,
               copy: str | None = None) -> tuple[list, list[Skipped]]:
    """Label each image by its class folder; in ``copy`` (see :func:`class_copy`), by the
    class folder inside it; in a pre-split dump, by the class folder in its split folder."""
    if presplit:
        return _by_split_folder(images, root)
    items, skipped = [], []
    inside: dict[str, list[str]] = defaultdict(list)
    for rel in images:
        label, _, rest = rel[len(root):].partition("/")
        if rest and label != copy:
            inside[label].append(rest)
    masks = mask_folders(inside)
    for rel in images:
        parts = rel[len(root):].split("/")
        if parts[0] in masks and len(parts) > 2 and parts[1] != masks[parts[0]]:
            skipped.append(_mask_skip(rel, f"{parts[0]}/", parts[1], masks[parts[0]]))
        elif copy is not None and parts[0] == copy:
            items.append((rel, parts[1]))  # the copy holds no image of its own
        elif len(parts) < 2:
            skipped.append(Skipped(rel, NO_LABEL, "not inside a class folder"))
        else:
            items.append((rel, parts[0]))
    return items, skipped


def _by_split_folder(images: list[str], root: str) -> tuple[list, list[Skipped]]:
    """:func:`_by_folder` for a dump laid out as ``<split>/<class>/<image>``."""
    placed = []  # (path, class folder or None, split folder)
    classes: dict[str, set[str]] = defaultdict(set)
    for rel in images:
        parts = rel[len(root):].split("/")
        kind, k, where = _split_path(parts) or ("split", 1, parts[0])
        label = parts[k] if kind != "loose" and len(parts) >= k + 2 else None
        placed.append((rel, label, where))
        if label is not None:
            classes[where].add(label)
    classless = classless_splits(classes)
    inside: dict[tuple[str, str], list[str]] = defaultdict(list)
    for rel, label, where in placed:
        if label is not None:
            inside[where, label].append(rel[len(root) + len(where) + len(label) + 2:])
    masks = mask_folders(inside)
    items, skipped = [], []
    for rel, label, where in placed:
        below = rel[len(root) + len(where) + len(label) + 2:] if label is not None else ""
        folder = below.partition("/")[0] if "/" in below else None
        if (where, label) in masks and folder is not None \
                and folder != masks[where, label]:
            skipped.append(_mask_skip(rel, f"{where}/{label}/", folder, masks[where, label]))
        elif label is None:
            skipped.append(Skipped(rel, NO_LABEL, f"not inside a class folder of {where}/"))
        elif classless.get(where) == label:
            skipped.append(Skipped(rel, NO_LABEL, (
                f"in {where}/{label}/, the one folder of {where}/, named as no class of the "
                "other splits: images without classes")))
        else:
            items.append((rel, label))
    return items, skipped


def _refuse_two_labels_files(source: Source, candidate: str, path: Path, data: bytes) -> None:
    """Refuse a relative --labels that names a file inside the dump and another one, with
    other content, from the current folder (a corrected copy, say): which was meant cannot
    be told, and taking the dump's without a word would split by the labels not wanted."""
    if path.is_absolute() or not path.is_file():
        return
    inside = source.path / candidate
    if not source.is_zip and inside.exists() and os.path.samefile(inside, path):
        return
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        return
    inside_hint = (f"{source.path / candidate}" if not source.is_zip else
                   f"run the command from another folder for the one inside {source.path}")
    raise UsageError(
        f"--labels {path} names two different files: {candidate} inside {source.path}, and "
        f"{path.resolve()} from the current folder; give the one meant by a path that only it "
        f"has (./{path}, or {inside_hint})")


def _labels_text(source: Source, root: str, files: list[str], labels, required: bool):
    """(name, text) of the labels CSV, or (None, None) when there is none and none is needed."""
    if labels is not None:
        refuse_empty_path(labels, "--labels", folder=False)
        name = str(labels).replace(os.sep, "/")
        path = Path(labels)
        for candidate in (root + name, name):
            if candidate in files:
                data = _read_labels(source, candidate)
                _refuse_two_labels_files(source, candidate, path, data)
                return candidate, _decode_csv(data, candidate)
        if path.is_file():
            path = path.resolve()
            if not source.is_zip:
                # A file of the dump named from elsewhere (dump/labels.csv, its full path): as
                # the dump's own, relative to it.
                with contextlib.suppress(ValueError, OSError):
                    inside = path.relative_to(source.path.resolve()).as_posix()
                    if inside in files:
                        return inside, _decode_csv(_read_labels(source, inside), inside)
            # Outside the dump: named in full (split.json's labels_file would otherwise read as
            # a path inside SRC, where it is relative to the folder the split was run from).
            return str(path), _decode_csv(path.read_bytes(), str(path))
        # A bad option value (exit 2), as a --label-column the CSV does not have.
        if path.is_dir():
            raise UsageError(f"--labels {labels} is a folder; give the CSV file inside it")
        if path.exists():  # a pipe (<(cat labels.csv)), a device: read once, not again
            raise UsageError(f"--labels {labels} is not a regular file (a pipe?); save the "
                             "CSV to a file and give its path")
        raise UsageError(f"labels file {labels} not found inside {source.path} nor on disk; "
                         "check the --labels path")
    top = _top_csvs(files, root)
    if len(top) > 1:
        named = [f for f in top if "label" in PurePosixPath(f).name.lower()]
        top = named if len(named) == 1 else top
    if len(top) == 1:
        try:
            return top[0], _decode_csv(_read_labels(source, top[0]), top[0])
        except NotTextError:
            if required:
                raise
            return None, None  # a guess: a .csv that is no text labels nothing
    if required:
        found = ", ".join(top) if top else "none"
        raise LayoutError(f"{source.path} needs one labels CSV at its top for the csv layout "
                          f"(found: {found}); name it with --labels")
    return None, None


def _top_csvs(files: list[str], root: str) -> list[str]:
    """The CSV files straight in ``root``, sorted."""
    return sorted(f for f in files
                  if f.startswith(root) and "/" not in f[len(root):] and f.lower().endswith(".csv"))


def _read_labels(source: Source, name: str) -> bytes:
    try:
        return source.read(name)
    except OSError as exc:
        raise LayoutError(f"labels file {name} in {source.path} cannot be read "
                          f"({_os_detail(exc)}); repair it or give another with --labels") from exc


class NotTextError(LayoutError):
    """A labels file that is no text (a spreadsheet workbook, an archive)."""


# What a labels file given by mistake starts with: a zip (an .xlsx or .ods workbook) and an
# OLE file (an .xls workbook).
_BINARY_STARTS = {b"PK\x03\x04": "a zip archive (an .xlsx or .ods workbook?)",
                  b"\xd0\xcf\x11\xe0": "an Office document (an .xls workbook?)"}


def _decode_csv(data: bytes, name: str) -> str:
    for start, what in _BINARY_STARTS.items():
        if data.startswith(start):
            raise NotTextError(f"labels file {name} is not a text CSV but {what}; save it as "
                               "CSV (UTF-8) and give that file")
    # Excel's "Unicode text" and PowerShell 5's output are UTF-16, with a byte-order mark.
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise LayoutError(f"labels file {name} starts like UTF-16 text but does not decode "
                              f"as such ({exc.reason}); save it again as CSV UTF-8") from exc
    # NUL bytes after the text: a copy cut short, or padded; not part of the table.
    data = data.rstrip(b"\0")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    if b"\0" in data[:65536]:  # no text encoding but UTF-16's (above) holds NUL bytes
        raise NotTextError(f"labels file {name} is not a text CSV (it holds NUL bytes: a "
                           "binary file); save the labels as CSV (UTF-8) and give that file")
    # Spreadsheet exports on Windows are often in the legacy code page, Windows-1252 in the
    # West (Latin-1 would turn its curly quotes and "œ" into control characters); Latin-1
    # for the few bytes that code page leaves undefined.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _delimiter(text: str) -> str:
    """The labels file's field separator: the commonest of , ; and tab on its first line
    (after comment lines) outside quoted fields (spreadsheets in many locales export with ;);
    "," on a tie; spaces where the line has none of those (Oxford-IIIT Pet's trainval.txt:
    ``Abyssinian_100 1 1 1``)."""
    lines = [line for line in text.splitlines()[:200] if line.strip()]
    data = [re.sub(r'"[^"]*"', "", line) for line in lines if not line.lstrip().startswith("#")]
    # Spaces only where no line near the top has another separator (not a title line).
    if data and not any(d in line for line in data[:20] for d in ",;\t") \
            and " " in data[0].strip():
        return " "
    bare = re.sub(r'"[^"]*"', "", lines[0]) if lines else ""
    return max((",", ";", "\t"), key=bare.count)


def _table_rows(text: str) -> tuple[list[list[str]], list[int], str]:
    """The rows of a labels file that hold anything, the line each starts on, and the field
    separator; in a list separated by spaces, comment lines (#) before the first row are
    passed over (Oxford-IIIT Pet's list.txt; a CSV's "# image,label" is its header)."""
    delimiter = _delimiter(text)
    # Runs of spaces separate fields as one; a field may end in spaces (a row's trailing one).
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        skipinitialspace=delimiter == " ")
    rows: list[list[str]] = []
    lines: list[int] = []
    start = 1
    for row in reader:
        comment = delimiter == " " and not rows and bool(row) and row[0].lstrip().startswith("#")
        if any(c.strip() for c in row) and not comment:
            if delimiter == " ":
                row = [c for c in row if c] or row
            rows.append(row)
            lines.append(start)
        start = reader.line_num + 1
    return rows, lines, delimiter


class _LabelsTable:
    """A labels CSV matched against the image files."""

    def __init__(self, text: str, name: str, images: list[str], root: str,
                 id_column, label_column, source_name: str = "",
                 copies: Callable[[Sequence[str]], bool] | None = None,
                 group_column=None) -> None:
        # The dump's own folder (or zip) name, for path tails; composed, as ids are.
        self.source_name = unicodedata.normalize("NFC", source_name)
        # Whether files an id names are copies of one image (see _copies_of), and the copies
        # left for the one kept.
        self.copies = copies
        self.copy_of: dict[str, str] = {}
        self.name = name
        self.images = images
        self.root = root
        self.labelled = 0  # images its rows label, once labels_most has counted them
        rows, lines, self.delimiter = _table_rows(text)
        # Lookups from most to least specific: path, path without extension, name, name stem.
        # Paths count both inside the wrapper folder stepped into and inside the source itself
        # (ids written as ds/images/1.jpg for a dump whose everything is in ds/).
        self.keys: list[dict[str, list[str]]] = [defaultdict(list) for _ in range(4)]
        for rel in images:
            for table, key in self._keys_of(rel):
                self.keys[table][key].append(rel)
        self._forgiving: list[dict[str, list[str]]] | None = None  # made when first needed
        self._any_exact: bool | None = None  # whether any row's id matches exactly
        # The class columns of a one-hot table (a 1 in each row's class column), whose names
        # in the header are the classes.
        self.onehot: list[int] = []
        # Three 0/1 columns or more, not one-hot (fewer than nine rows in ten with a single
        # 1): a one-hot table with bad rows, a multi-label table, or a label among 0/1 columns
        # of other things. The share of rows with a single 1.
        self.onehot_doubt: float | None = None
        self.label_given = False
        # Labels that write one number in several ways (1 and 1.0), each to the one name its
        # class goes by (see _numeric_aliases); filled by resolve.
        self.aliases: dict[str, str] = {}
        self.column_names = [c.strip() for c in rows[0]] if rows else []
        id_index, label_index, has_header = self._columns(rows, id_column, label_column,
                                                          group_column)
        self.id_index, self.label_index = id_index, label_index
        # (A header shorter than the rows names only its first columns.)
        self.id_header = (repr(rows[0][id_index].strip())
                          if has_header and id_index < len(rows[0]) else str(id_index))
        self.first_line = 2 if has_header else 1
        self.rows = rows[1:] if has_header else rows
        self.lines = lines[1:] if has_header else lines  # the line each row starts on
        # The column of the images' groups: the one given, else one named as such (to warn
        # of groups spread over the splits); its value for each image, filled by resolve.
        if group_column is None and has_header:
            self.group_index = next((c for c, name in enumerate(self.column_names)
                                     if c not in (id_index, label_index, *self.onehot)
                                     and _names_group(name)), None)
        self.groups: dict[str, str] = {}

    def doubt(self) -> str | None:
        """A warning when the labels were read from one column of a table that may be
        one-hot, or when labels that write one number in several ways were taken as one class
        (after :meth:`resolve`); None if neither."""
        said = []
        if self.aliases:
            groups = defaultdict(list)
            for text, name in sorted(self.aliases.items()):
                groups[name].append(text)
            shown = "; ".join(f"{' and '.join(texts)} as {name}"
                              for name, texts in sorted(groups.items())[:3])
            more = f" and {len(groups) - 3} more" if len(groups) > 3 else ""
            said.append(f"{self.name}: its labels are numbers, some written in more than one "
                        f"way; each number was taken as one class ({shown}{more})")
        if self.onehot_doubt is not None and not self.label_given:
            others = [n for c, n in enumerate(self.column_names) if c != self.id_index]
            shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            share = math.floor(self.onehot_doubt * 100)
            said.append(
                f"{self.name}: its columns {shown} hold only 0 and 1, and {share}% of its "
                "rows have a single 1, so it may be a one-hot (or multi-label) table; its "
                f"labels were read from {self.column_names[self.label_index]!r} alone. If it "
                "is one-hot, give each row exactly one 1; else name the labels' column with "
                "--label-column")
        return "; ".join(said) or None

    def column_in_words(self, c: int) -> str:
        """A column by its header name ("'dx'"), or its place ("column 2") without a header."""
        if self.first_line == 2 and c < len(self.column_names):
            return repr(self.column_names[c])
        return f"column {c}"

    def columns_in_words(self) -> str:
        """Where the ids and labels were read: "ids in 'image_id', labels in 'dx'"."""
        name = self.column_in_words
        if self.onehot:
            labels = f"one-hot columns {', '.join(self.column_names[c] for c in self.onehot)}"
        else:
            labels = f"labels in {name(self.label_index)}"
        groups = (f", groups in {name(self.group_index)}"
                  if self.group_index is not None and self.group_given else "")
        return f"ids in {name(self.id_index)}, {labels}{groups}"

    def _keys_of(self, rel: str) -> list[tuple[int, str]]:
        """(table, key) of an image for the four exact tables. Keys are composed (NFC), as
        lookup's ids are: a name from a macOS archive (decomposed) matches an id typed."""
        inner = unicodedata.normalize("NFC", rel[len(self.root):])
        rel = unicodedata.normalize("NFC", rel)
        name_only = PurePosixPath(inner).name
        keys = [(0, path) for path in ((inner, rel) if self.root else (inner,))]
        keys += [(1, os.path.splitext(path)[0]) for _, path in keys]
        return keys + [(2, name_only), (3, os.path.splitext(name_only)[0])]

    def _forgiving_tables(self) -> list[dict[str, list[str]]]:
        """The four tables in lower case, then the paths inside the source alone (with and
        without the extension, in lower case) for the tails of ids written elsewhere: made
        the first time an id is not found exactly, as most CSVs never need them."""
        if self._forgiving is None:
            tables: list[dict[str, list[str]]] = [defaultdict(list) for _ in range(6)]
            for rel in self.images:
                whole = unicodedata.normalize("NFC", rel)
                keys = self._keys_of(rel) + [(4, whole), (5, os.path.splitext(whole)[0])]
                for table, key in keys:
                    tables[table][key.lower()].append(rel)
            self._forgiving = tables
        return self._forgiving

    def lookup(self, key: str, exact: bool = False) -> list[str]:
        """The images an id names.

        The id is matched as a path, a path without its extension, a file name or a file name
        without its extension; unless ``exact``, then ignoring case, then (an id written as a
        path on another machine, /home/me/kaggle/train/cat/1.jpg for a dump given as train/)
        by its part after the dump's own folder name (cat/1.jpg), and at last without an
        image extension of its own (1.png for 1.jpg). Forgiving matches serve only a table
        none of whose ids matches exactly (see ``forgiving``).
        """
        found = self._lookup(key, exact)
        if len(found) < 2:
            return found
        # An id naming a file in each of a dump's split folders (Kaggle's CIFAR-10: train/1.png
        # and test/1.png): the one in the split the CSV's name names (trainLabels.csv), or,
        # for a CSV that names none, the one outside test folders (unlabelled, in Kaggle's).
        wanted = _named_split(self.name)
        for words in (False, True):
            kinds = [self._split_folder(f, words) for f in found]
            if words and (None in kinds or len(set(kinds)) < len(kinds)):
                # Split words among others (cars_train/, cars_test/) only where each file
                # lies in a folder of another split: not test_bench/ beside bench_b/.
                break
            if wanted:
                picked = [f for f, kind in zip(found, kinds, strict=True) if kind == wanted]
                if len(picked) == 1:
                    return picked
            picked = [f for f, kind in zip(found, kinds, strict=True) if kind != "test"]
            if len(picked) == 1:
                return picked
        # An id naming a file in each copy of a folder (HAM10000's images_part_1/ beside its
        # lower-case twin): one image, the first copy kept.
        if self.copies is not None and self.copies(found):
            for other in found[1:]:
                self.copy_of[other] = found[0]
            return found[:1]
        return found

    def _split_folder(self, rel: str, words: bool = False) -> str | None:
        """The split of the first folder of ``rel`` (below the root) named as one, with
        ``words`` also among other words (Stanford Cars' cars_train/), else None."""
        for part in rel[len(self.root):].split("/")[:-1]:
            split = split_of(part) or (_named_split(part) if words else None)
            if split is not None:
                return split
        return None

    def _lookup(self, key: str, exact: bool) -> list[str]:
        key = unicodedata.normalize("NFC", key.strip().replace("\\", "/"))
        key = key[2:] if key.startswith("./") else key
        for table in self.keys:
            found = table.get(key)
            if found:
                return found
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if exact or not parts:
            return []
        whole = "/".join(parts)
        # (text, tables): the whole id in the four tables, in any case; a tail only as a whole
        # path inside the source, right after the source's own name (so /x/test/5.jpg never
        # takes the 5.jpg of a dump given as train/, nor /x/test/images/5.jpg its
        # images/5.jpg).
        starts = [i for i in range(1, len(parts))
                  if parts[i - 1].lower() == self.source_name.lower()]
        tails = ["/".join(parts[i:]) for i in starts]
        attempts = [(whole, range(4))] + [(tail, (4,)) for tail in tails]
        stem, ext = os.path.splitext(parts[-1])
        if stem and ext.lower() in IMAGE_EXTENSIONS:
            cut = len(ext)
            attempts += [(whole[:-cut], range(4))] + [(tail[:-cut], (5,)) for tail in tails]
        tables = self._forgiving_tables()
        for text, which in attempts:
            for table in which:
                found = tables[table].get(text.lower())
                if found:
                    return found
        return []

    def _columns(self, rows, id_column, label_column,
                 group_column=None) -> tuple[int, int, bool]:
        if not rows:
            raise LayoutError(f"labels file {self.name} is empty; it needs rows of id,label")
        first = [c.strip() for c in rows[0]]
        first_lower = [c.lower() for c in first]
        width = max(len(r) for r in rows)
        if width < 2:
            # APTOS's test.csv (id_code), Food-101's meta/train.txt: ids without labels.
            raise LayoutError(
                f"labels file {self.name} has one column (first row: {','.join(first)}): it "
                "names images but gives them no labels (a test set's list?); give the CSV "
                "with a column of ids and a column of labels")
        for column, what in ((id_column, "--id-column"), (label_column, "--label-column"),
                             (group_column, "--group-column")):
            if column is not None and _is_index(column) and int(column) >= width:
                raise UsageError(
                    f"{what} {column} is not a column of {self.name}: it has {width} (first "
                    f"row: {','.join(first)}); give a 0-based index below {width} or a header "
                    "name")
        has_header = self._has_header(rows, first, id_column, label_column,
                                      named=group_column is not None
                                      and not _is_index(group_column))
        header = first_lower if has_header else []

        def given(column, what: str) -> int:
            if _is_index(column):
                return int(column)
            if column.lower() not in header:
                raise UsageError(
                    f"{what} {column!r} is not a column of {self.name} (header: "
                    f"{','.join(first)}); give a header name or a 0-based index")
            return header.index(column.lower())

        # The group column first: the id and label columns are guessed among the others.
        self.group_given = group_column is not None
        self.group_index = None if group_column is None else given(group_column,
                                                                    "--group-column")
        avoid = set() if self.group_index is None else {self.group_index}
        named = header[self.group_index] if self.group_index in range(len(header)) else ""
        for given_column, names, what in ((label_column, LABEL_NAMES, "labels"),
                                          (id_column, ID_NAMES, "ids")):
            # (unless another column is so named: filename,label,name with name a person's)
            others = [c for c, n in enumerate(header) if n in names and c != self.group_index]
            if given_column is None and named in names and not others:
                raise UsageError(
                    f"--group-column {group_column} is the column of the {what} of {self.name} "
                    f"(by its name); give the column naming what images share (a patient, a "
                    f"lesion), e.g. lesion_id, or with it --{what[:-1]}-column")
        self.label_given = label_column is not None
        if label_column is not None:
            label_index = given(label_column, "--label-column")
        else:
            label_index = next((header.index(n) for n in LABEL_NAMES
                                if n in header and header.index(n) not in avoid), None)
        if id_column is not None:
            id_index = given(id_column, "--id-column")
        else:
            id_index = self._id_guess(rows[1:] if has_header else rows, header, label_index,
                                      avoid, width)
        if label_index is None and has_header:
            self.onehot, share = _onehot_columns(rows[1:], {id_index} | avoid, len(first))
            if not self.onehot and share is not None and len(first) > 3:
                self.onehot_doubt = share
        if label_index is None and not self.onehot:
            # A header with "label" or "class" among its words: NIH's "Finding Labels" (after
            # the one-hot check: class_0,class_1,... are one-hot columns).
            label_index = next((i for i, name in enumerate(header)
                                if i != id_index and i not in avoid
                                and {"label", "labels", "class"}
                                & set(re.split(r"[\s_\-.]+", name))), None)
        self.label_guessed = label_index is None and not self.onehot
        if self.onehot:
            label_index = self.onehot[-1]  # the last column a row must reach
        elif label_index is None:
            # The second column (the first, for ids in the second), else the next one left.
            label_index = next((c for c in (1, 0, *range(2, width))
                                if c != id_index and c not in avoid), None)
            if label_index is None:
                raise UsageError(f"{self.name} has no column for the labels beside the ids and "
                                 f"--group-column {group_column}; give --label-column")
        self.label_named_id = (not self.onehot and label_column is None
                               and label_index < len(header)
                               and header[label_index] in ID_NAMES)
        if id_index == label_index:  # only when both are given
            raise UsageError(f"--id-column and --label-column both pick column {id_index} of "
                             f"{self.name}; name two different columns")
        taken = {id_index: "ids", label_index: "labels", **dict.fromkeys(self.onehot, "labels")}
        if self.group_index in taken:
            raise UsageError(
                f"--group-column {group_column} is the column of the {taken[self.group_index]} "
                f"of {self.name}; give the column naming what images share (a patient, a "
                "lesion), e.g. lesion_id")
        return id_index, label_index, has_header

    def _has_header(self, rows: list[list[str]], first: list[str], id_column,
                    label_column, named: bool = False) -> bool:
        """Whether the first row names the columns: always when a column is given by name
        (``named``: another column is); otherwise when its id names no image but later rows'
        ids do, or it holds id or label names, and its label is not one of the next rows'
        labels."""
        if named or any(c is not None and not _is_index(c) for c in (id_column, label_column)):
            return True
        probe_col = int(id_column) if id_column is not None else 0

        def resolve(row: list[str], exact: bool) -> bool:
            return probe_col < len(row) and bool(self.lookup(row[probe_col], exact=exact))

        # Exact matches decide; only when no row matches exactly (ids from another machine,
        # in another case) do the forgiving ones.
        exact = resolve(first, True) or any(resolve(r, True) for r in rows[1:20])
        if resolve(first, exact):
            return False
        label_col = int(label_column) if label_column is not None else (
            1 if probe_col != 1 else 0)
        # A first row whose label is one of the next rows' labels is data (naming a missing
        # file, reported as such), not a header.
        later_labels = {r[label_col].strip() for r in rows[1:20] if label_col < len(r)}
        first_is_data = label_col < len(first) and first[label_col] in later_labels
        return (any(c.lower() in ID_NAMES + LABEL_NAMES for c in first)
                or (not first_is_data and any(resolve(r, exact) for r in rows[1:20])))

    def _id_guess(self, data: list[list[str]], header: list[str], label_index: int | None,
                  avoid: set[int], width: int) -> int:
        """The id column when none is given: the one whose header is an id name (id, image,
        file...), and of several (Kaggle's ``Image,Id``) the one whose values name the most
        images; without one, the first column that is not the label column (nor one of
        ``avoid``: the group column)."""
        candidates = [header.index(n) for n in ID_NAMES if n in header]
        candidates = [c for c in candidates if c != label_index and c not in avoid]
        if not candidates:
            return next((c for c in range(width) if c != label_index and c not in avoid), 0)
        sample = data[:50]

        def named(c: int, exact: bool) -> int:
            return sum(c < len(r) and bool(self.lookup(r[c], exact=exact)) for r in sample)

        # Exact matches first; forgiving ones when no column has any. max keeps the first of
        # equals: ties go to the order of ID_NAMES.
        exact = any(named(c, True) for c in candidates)
        return max(candidates, key=lambda c: named(c, exact))

    def _marked(self, row: list[str]) -> list[str]:
        """The classes a one-hot row has a 1 for."""
        return [self.column_names[c] for c in self.onehot if row[c].strip() in ("1", "1.0")]

    def _label(self, row: list[str], where: str) -> str:
        """The label of a row long enough to hold it."""
        if not self.onehot:
            return row[self.label_index].strip()
        marked = self._marked(row)
        if len(marked) != 1:
            found = (f"a 1 in {len(marked)} class columns ({', '.join(marked)})" if marked else
                     "no 1 in any class column")
            raise LayoutError(
                f"{where} has {found}: {self.name} reads as a one-hot labels table "
                f"({', '.join(self.column_names[c] for c in self.onehot)}), and a multi-label "
                "CSV is not supported (each image needs exactly one class); to take one "
                "column's values as the classes, name it with --label-column, e.g. "
                f"--label-column {self.column_names[self.onehot[0]]}")
        return marked[0]

    def _folder(self, rel: str) -> str:
        """The top folder of an image inside the root ("" for one straight in it)."""
        inner = rel[len(self.root):]
        return inner.split("/", 1)[0] if "/" in inner else ""

    def labels_most(self) -> bool:
        """Whether the auto layout may trust this CSV as the labels file.

        It must label at least half of the images found, with at least two distinct labels
        (and, when the label column is named like an id, not a different one for nearly every
        image).
        A test folder it names no image of does not count against it (Kaggle's
        labels.csv for train/ beside an unlabelled test/ of as many images). A submission
        template (``id,label`` rows ``1,0`` naming only the unlabelled test images) names images
        too, but labels them all alike; one naming only test folders is measured against every
        image, whatever its labels.

        Ids count as matched exactly; matched only in another case, by a path's tail or
        without their own extension, they count only where no class folders could hold the
        labels instead (a stray metadata CSV naming CAT_0.JPG must not take over cat/).
        Folders named as parts of one set (HAM10000_images_part_1/, _part_2/; see
        :func:`chunk_folders`) are chunks of one dump, not class folders.
        """
        if self._labels_most(exact=True):
            return True
        classes = set()
        for rel in self.images:
            parts = rel[len(self.root):].split("/")
            if len(parts) > 2 and split_of(parts[0]) is not None:
                classes.add(parts[1])  # train/cat/1.jpg
            elif len(parts) > 1 and split_of(parts[0]) is None:
                classes.add(parts[0])
        chunks = chunk_folders(classes)
        return (len(classes) < 2 or chunks) and self.forgiving \
            and self._labels_most(exact=False)

    def labels_most_loosely(self) -> bool:
        """Whether this CSV would label most images were its ids matched forgivingly (any
        case, tails, other extensions) also beside class folders."""
        return self.forgiving and self._labels_most(exact=False)

    @property
    def forgiving(self) -> bool:
        """Whether ids are matched forgivingly (any case, tails, other extensions): only when
        none of them matches exactly. A table whose ids mostly match keeps exact matching, so
        that a row naming a missing image never takes another file of its name (a mask)."""
        if self._any_exact is None:
            self._any_exact = any(
                max(self.id_index, self.label_index) < len(row)
                and bool(self.lookup(row[self.id_index], exact=True)) for row in self.rows)
        return not self._any_exact

    def _labels_most(self, exact: bool) -> bool:
        labelled: set[str] = set()
        labels: set[str] = set()
        for row in self.rows:
            if max(self.id_index, self.label_index) >= len(row):
                continue
            matches = self.lookup(row[self.id_index], exact=exact)
            if len(matches) == 1:
                labelled.add(matches[0])
                # A one-hot row with several classes still labels its image: a multi-label
                # table is the labels, and resolve says it is not supported.
                labels.add("+".join(self._marked(row)) if self.onehot else
                           row[self.label_index].strip())
        self.labelled = len(labelled)
        named = {self._folder(rel) for rel in labelled}
        # Only an unlabelled test folder is excused: a CSV labelling a few images of one
        # folder beside class folders must not take over the whole dump.
        excused = (set() if all(split_of(folder) == "test" for folder in named) else
                   {self._folder(rel) for rel in self.images} - named)
        excused = {folder for folder in excused if split_of(folder) == "test"}
        # (The copies of an image its rows label are no images of their own.)
        within = sum(self._folder(rel) not in excused for rel in self.images
                     if rel not in self.copy_of)
        # A label column taken for want of a label header, and named like an id (Kaggle's
        # Image,Id, where the id is the whale, most of them seen a few times), must repeat its
        # values: a metadata CSV's file,id has a different id for nearly every image, and
        # those are no classes.
        repeat = not self.label_named_id or len(labels) < 0.9 * len(labelled)
        return len(labels) >= 2 and repeat and len(labelled) * 2 >= within > 0

    def resolve(self) -> tuple[list[tuple[str, str]], list[Skipped]]:
        skipped: list[Skipped] = []
        found: dict[str, set[str]] = defaultdict(set)
        need = max(self.id_index, self.label_index) + 1
        labelled: list[tuple[str, str]] = []  # (image, label) of each row naming one image
        for line, row in zip(self.lines, self.rows, strict=True):
            where = f"{self.name} line {line}"
            if len(row) < need:
                skipped.append(Skipped(where, BAD_ROW, f"{len(row)} columns, expected {need}+"))
                continue
            key = row[self.id_index].strip()
            if not key:
                skipped.append(Skipped(where, BAD_ROW, "no id"))
                continue
            label = self._label(row, where)
            matches = self.lookup(key, exact=not self.forgiving)
            if not matches:
                skipped.append(Skipped(key, MISSING_FILE,
                                       f"{where} names it but there is no such image"))
            elif len(matches) > 1:
                skipped.append(Skipped(key, AMBIGUOUS_ID,
                                       f"{where} matches {', '.join(matches[:3])}"))
            else:
                labelled.append((matches[0], label))
                if self.group_index is not None and self.group_index < len(row):
                    group = row[self.group_index].strip()
                    if group:
                        self.groups.setdefault(matches[0], group)
        if not self.onehot:
            # From the labels of the rows kept: an empty label (left out later) or a row of a
            # missing image is no reason to keep 1 and 1.0 apart.
            self.aliases = _numeric_aliases({label for _, label in labelled
                                             if label and (_NUMBER.fullmatch(label) or
                                                           label_problem(label) is None)})
        for rel, label in labelled:
            found[rel].add(self.aliases.get(label, label))
        named = {self._folder(rel) for rel in found}
        items = []
        for rel in self.images:
            labels = found.get(rel)
            if not labels and rel in self.copy_of:
                skipped.append(Skipped(rel, DUPLICATE, f"same content as {self.copy_of[rel]}, "
                                                       f"which {self.name} labels"))
            elif not labels:
                folder = self._folder(rel)
                # A whole folder without a row (Kaggle's test/ beside train/) is said as such.
                why = (f"{self.name} names no image in {self.root}{folder}/"
                       if folder and named and folder not in named else
                       f"not listed in {self.name}")
                skipped.append(Skipped(rel, UNLABELLED, why))
            elif len(labels) > 1:
                skipped.append(Skipped(rel, LABEL_CONFLICT,
                                       f"{self.name} gives it {' and '.join(sorted(labels))}"))
            else:
                items.append((rel, labels.pop()))
        return items, skipped


# A number as a labels CSV writes it: 1, -2, 1.0, .5, 1e3 (not Python's 1_000, nan or inf).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _numeric_aliases(labels: set[str]) -> dict[str, str]:
    """For a label column of numbers only, the labels that write one number in several ways
    (1 and 1.0, as a table edited in a spreadsheet or joined from two exports has), each
    mapped to one name for that number: its plain form (1, 0.5) where one of them is
    written so, else the shortest. Empty unless every label is a number."""
    by_value: dict[Decimal, set[str]] = defaultdict(set)
    for text in labels:
        if not _NUMBER.fullmatch(text):
            return {}
        value = Decimal(text)  # exact: long ids that one float holds stay apart
        if value and abs(value.adjusted()) > 40:
            return {}  # 1e999: no class label
        by_value[value].add(text)
    aliases = {}
    for value, texts in by_value.items():
        if len(texts) > 1:
            plain = format(value.normalize() if value else Decimal(0), "f")  # -0 is 0
            # A plain form not written (.5 and .50) names the class where no text can.
            usable = [t for t in texts if label_problem(t) is None]
            name = plain if plain in texts or not usable else min(usable,
                                                                    key=lambda t: (len(t), t))
            aliases.update({text: name for text in texts if text != name})
    return aliases


# The values of a one-hot table's cells (spreadsheets and pandas write 1.0 for 1).
_ONEHOT_VALUES = frozenset({"0", "1", "0.0", "1.0"})


def _onehot_columns(data: list[list[str]], skip: set[int],
                    width: int) -> tuple[list[int], float | None]:
    """The class columns of a one-hot labels table (image_id,healthy,rust,scab with rows
    Train_0,1,0,0), and the share of its rows with a single 1.

    Every column but those of ``skip`` (the ids', the groups'), when they are two or more, must
    hold only 0 and 1 (else the share is None), and nine rows in ten have a single 1 (else the
    columns are []). A 0/1
    label beside 0/1 columns of something else (image_id,malignant,fold) has a 1 in both, or
    none, in about half its rows.
    """
    columns = [c for c in range(width) if c not in skip]
    full = [row for row in data if len(row) >= width]
    if len(columns) < 2 or not full:
        return [], None
    if not all(row[c].strip() in _ONEHOT_VALUES for row in full for c in columns):
        return [], None
    single = sum(sum(row[c].strip() in ("1", "1.0") for c in columns) == 1 for row in full)
    share = single / len(full)
    return (columns if share >= 0.9 else []), share


def _names_group(name: str) -> bool:
    """Whether a column's header names a group of images: lesion_id, patient_id, "Patient ID",
    patientId, patientid, subject, source_image (see ``GROUP_WORDS``); not patient_sex or
    patient_age."""
    split = re.split(r"[^a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", name).lower())
    words: list[str] = []
    for word in (w for w in split if w):
        key = next((k for k in _GROUP_KEY_WORDS if word.endswith(k) and word != k
                    and word[: -len(k)] in GROUP_WORDS | _WEAK_GROUP_WORDS), None)
        words += [word[: -len(key)], key] if key else [word]  # patientid
    if not set(words) <= GROUP_WORDS | _WEAK_GROUP_WORDS | _GROUP_KEY_WORDS:
        return False
    if set(words) & {"patient", "lesion"}:
        return True  # patient, "Patient ID"; a bare subject or person may be a photo's
    if set(words) & GROUP_WORDS:
        return len(words) == 2 and words[1] in _GROUP_KEY_WORDS
    return (len(words) == 2 and words[0] in _WEAK_GROUP_WORDS
            and words[1] in _WEAK_GROUP_KEYS)


def _is_index(column) -> bool:
    return isinstance(column, int) or (isinstance(column, str) and column.strip().isdigit())
