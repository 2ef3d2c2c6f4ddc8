"""Write a realistic Kaggle-like image dump from the photos scikit-image ships on disk.

Used by the demo, the tests and the benchmarks: JPEGs of varied sizes and quality, three (or more)
learnable classes, and on request a handful of the bad files real dumps contain.
"""

from __future__ import annotations

import os
import shutil
import zlib
from dataclasses import dataclass, field
from functools import cache
from numbers import Integral
from pathlib import Path

import cv2
import numpy as np

from . import system
from .errors import DestinationExistsError, UsageError
from .fileio import progress_bar, refuse_empty_path, refuse_under_a_file, sibling

LAYOUTS = ("folders", "prefix", "csv")

# Class name -> (file shipped in skimage/data, base tint for a grey photo or None, may rotate).
# The texture photos are grey; a per-class tint with jitter makes them look like coloured photos
# and gives a small network a second cue besides the texture itself.
PHOTOS: dict[str, tuple[str, tuple[float, float, float] | None, bool]] = {
    "brick": ("brick.png", (1.12, 0.86, 0.72), True),
    "grass": ("grass.png", (0.82, 1.08, 0.70), True),
    "gravel": ("gravel.png", (0.97, 0.95, 0.92), True),
    "moon": ("moon.png", (0.92, 0.92, 1.05), True),
    "coffee": ("coffee.png", None, False),
    "rocket": ("rocket.jpg", None, False),
    "cat": ("chelsea.png", None, False),
    "motorcycle": ("motorcycle_left.png", None, False),
    "astronaut": ("astronaut.png", None, False),
}
DEFAULT_CLASSES = ("brick", "grass", "gravel")

_CHUNK = 32


@dataclass
class SampleDumpSummary:
    """What :func:`write_sample_dump` wrote.

    Attributes:
        dest: the dump folder.
        layout: "folders", "prefix" or "csv".
        classes: the class names, sorted.
        per_class: good images written per class.
        images: good images written in all.
        bytes: size of every file written, bad ones included.
        bad_files: (path relative to dest, kind) of each bad file; for the csv layout "missing" is
            a labels.csv row with no file, named by the path it would have.
    """

    dest: Path
    layout: str
    classes: list[str]
    per_class: int
    images: int
    bytes: int
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def photo_path(name: str) -> Path:
    """Where the photo behind class ``name`` lies inside the installed scikit-image."""
    import skimage.data

    return Path(skimage.data.__file__).parent / PHOTOS[name][0]


@cache
def _photo(name: str) -> np.ndarray:
    """The class photo as grey (H, W) or RGB (H, W, 3) uint8, loaded once per process."""
    image = cv2.imread(str(photo_path(name)), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UsageError(f"cannot read {photo_path(name)}; is scikit-image installed completely?")
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)
    return image


def _rng(seed: int, name: str, index: int) -> np.random.Generator:
    # Keyed by class name and index, so an image does not depend on the other classes asked
    # for, on per_class, or on which worker makes it.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), index])


def _draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) distributed like the dogs-vs-cats photos."""
    u = rng.random()
    if u < 0.04:
        return int(rng.integers(40, 100)), int(rng.integers(40, 100))
    if u < 0.15:
        return int(rng.integers(150, 500)), int(rng.integers(150, 500))
    short = 375 if rng.random() < 0.5 else int(rng.integers(280, 500))
    return (short, 500) if rng.random() < 0.7 else (500, short)


def make_image(name: str, index: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Draw one RGB image of class ``name`` and the JPEG quality to store it at."""
    rng = _rng(seed, name, index)
    _, tint, may_rotate = PHOTOS[name]
    source = _photo(name)
    if may_rotate:
        source = np.rot90(source, int(rng.integers(0, 4)))
    height, width = _draw_size(rng)
    src_h, src_w = source.shape[:2]
    # The largest crop with the target's aspect ratio, then a random fraction of it.
    max_h = min(src_h, src_w * height / width)
    max_w = max_h * width / height
    scale = rng.uniform(0.35, 1.0)
    crop_h, crop_w = max(8, int(max_h * scale)), max(8, int(max_w * scale))
    top = int(rng.integers(0, src_h - crop_h + 1))
    left = int(rng.integers(0, src_w - crop_w + 1))
    crop = np.ascontiguousarray(source[top : top + crop_h, left : left + crop_w])
    flag = cv2.INTER_AREA if crop_h > height else cv2.INTER_LINEAR
    image = cv2.resize(crop, (width, height), interpolation=flag)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if image.ndim == 2:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2RGB)
    gains = np.ones(3) if tint is None else np.asarray(tint)
    gains = gains * (1.0 + rng.normal(0.0, 0.06, 3)) * rng.uniform(0.75, 1.25)
    contrast = rng.uniform(0.8, 1.2)
    mean = float(image.mean())
    matrix = np.zeros((3, 4))
    matrix[:, :3] = np.diag(gains * contrast)
    matrix[:, 3] = gains * (1.0 - contrast) * mean
    image = cv2.transform(np.ascontiguousarray(image), matrix)
    return image, int(rng.integers(75, 96))


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise UsageError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def _write_chunk(root: str, jobs: list[tuple[str, int, str]], seed: int) -> int:
    """Make and write images (class, index, relative path); return the bytes written."""
    cv2.setNumThreads(1)
    total = 0
    for name, index, rel in jobs:
        data = _encode_jpeg(*make_image(name, index, seed))
        path = os.path.join(root, rel)
        with open(path, "wb") as fh:
            fh.write(data)
        total += len(data)
    return total


def _relative_names(layout: str, classes: list[str], per_class: int,
                    seed: int) -> tuple[list[tuple[str, int, str]], dict[str, int]]:
    """The (class, index, relative path) of every good image, and csv ids by path."""
    jobs = []
    ids: dict[str, int] = {}
    if layout == "csv":
        # Ids are shuffled so that the class cannot be read from the number.
        order = np.random.default_rng([seed, 1]).permutation(len(classes) * per_class) + 1
    for c, name in enumerate(classes):
        for i in range(per_class):
            if layout == "folders":
                rel = f"{name}/{name}_{i:05d}.jpg"
            elif layout == "prefix":
                rel = f"train/{name}.{i}.jpg"
            else:
                number = int(order[c * per_class + i])
                rel = f"images/{number}.jpg"
                ids[rel] = number
            jobs.append((name, i, rel))
    return jobs, ids


def _bad_name(layout: str, name: str, tag: str, number: int, ext: str = ".jpg") -> str:
    if layout == "folders":
        return f"{name}/{name}_{tag}{ext}"
    if layout == "prefix":
        return f"train/{name}.{tag}{ext}"
    return f"images/{number}{ext}"


def _write_bad_files(root: Path, layout: str, classes: list[str], jobs, seed: int,
                     next_id: int) -> tuple[list[tuple[str, str]], dict[str, tuple[int, str]]]:
    """Write the bad files; return (relative path, kind) and the csv rows they need."""
    bad: list[tuple[str, str]] = []
    rows: dict[str, tuple[int, str]] = {}
    good = _encode_jpeg(*make_image(classes[0], 10_000, seed))

    def put(kind: str, name: str, data: bytes | None, ext: str = ".jpg", label=True) -> None:
        nonlocal next_id
        rel = _bad_name(layout, name, kind, next_id, ext)
        if data is not None:
            (root / rel).write_bytes(data)
        if layout == "csv" and label:
            rows[rel] = (next_id, name)
        next_id += 1
        bad.append((rel, kind))

    def cls(k: int) -> str:
        return classes[k % len(classes)]

    rgb, _ = make_image(cls(1), 10_001, seed)
    put("empty", cls(0), b"")
    whole = _encode_jpeg(rgb, 90)
    put("truncated", cls(1), whole[: len(whole) // 3])  # a third of its own bytes
    put("text", cls(2), b"This is not an image, whatever its name says.\n")
    rgba = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = np.linspace(64, 255, rgba.shape[1], dtype=np.uint8)[None, :]
    put("alpha", cls(0), cv2.imencode(".png", rgba)[1].tobytes(), ext=".png")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray_jpeg = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    put("grayscale", cls(1), gray_jpeg)
    # An exact copy of a good image of the same class: the split keeps exactly one of the two.
    original = next(rel for name, _, rel in jobs if name == cls(2))
    put("duplicate", cls(2), (root / original).read_bytes())
    if layout == "csv":
        put("missing", cls(0), None)
        put("unlabelled", cls(1), good, label=False)
    return bad, rows


def write_sample_dump(
    dest: str | os.PathLike,
    layout: str = "folders",
    per_class: int = 100,
    seed: int = 0,
    with_bad_files: bool = False,
    classes: list[str] | tuple[str, ...] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
) -> SampleDumpSummary:
    """Write a Kaggle-like dump of natural-photo JPEGs into ``dest``.

    The same arguments always give byte-identical files. The dump is written into a hidden
    sibling folder and renamed into place, so ``dest`` never holds half a dump.

    Args:
        dest: the folder to create (it may exist if empty).
        layout: "folders" (``<class>/<class>_<n>.jpg``), "prefix" (``train/<class>.<n>.jpg``,
            like dogs-vs-cats) or "csv" (``images/<id>.jpg`` plus ``labels.csv`` with ``id,label``).
        per_class: good images per class.
        seed: decides every crop, size, flip, colour and quality.
        with_bad_files: also write an empty, a truncated and a text file named ``.jpg``, a PNG
            with alpha, a grey JPEG and an exact duplicate (and for csv a row with no file and a
            file with no row).
        classes: class names from :data:`PHOTOS` (default brick, grass, gravel).
        progress: show a progress bar.
        overwrite: replace a non-empty ``dest``.
        workers: processes to use (default: all cores for large dumps, one for small ones).

    Raises:
        UsageError: an unknown layout or class, or a negative count or seed.
        DestinationExistsError: ``dest`` is not empty and ``overwrite`` is false.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if per_class < 0:
        raise UsageError(f"per_class must be 0 or more, got {per_class}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise UsageError(f"seed {seed!r} must be a whole number >= 0 (numpy's generators "
                         "refuse negative seeds), e.g. 0")
    if classes is not None and not classes:
        raise UsageError(f"classes must name at least one class; choose from {', '.join(PHOTOS)}")
    twice = sorted({c for c in (classes or ()) if list(classes).count(c) > 1})
    if twice:
        raise UsageError(f"classes names {', '.join(twice)} more than once")
    names = sorted(set(classes or DEFAULT_CLASSES))
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise UsageError(
            f"unknown sample class {', '.join(unknown)}; choose from {', '.join(PHOTOS)}"
        )
    if with_bad_files and per_class < 1:
        raise UsageError("with_bad_files (--with-bad-files) needs per_class (--per-class) of "
                         "1 or more: a good image per class")
    refuse_empty_path(dest, "the dump folder (DEST)")
    given = Path(dest)
    try:
        here = Path.cwd().resolve()
    except OSError:  # the working folder was deleted: DEST cannot hold it
        if not given.is_absolute():
            raise UsageError(f"the working folder is gone, so {dest} has nowhere to be; give "
                             "an absolute path, or change to an existing folder") from None
        here = None
    dest = Path(os.path.abspath(dest))  # "." has no name to put the work folder beside
    if dest.is_symlink() and dest.is_dir():
        # A link to a folder: the dump goes into the folder (the link stays), as split's.
        dest = dest.resolve()
    refuse_under_a_file(dest)
    if here is not None and (dest.resolve() == here or dest.resolve() in here.parents):
        raise UsageError(f"{dest} is the working folder or holds it, and the dump replaces "
                         "its folder whole; give a new folder, such as dump")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not overwrite:
        raise DestinationExistsError(
            f"{dest} exists and is not empty; choose another folder or use --force to replace it"
        )
    partial = sibling(dest, ".partial", ".")
    if partial.exists():
        shutil.rmtree(partial)
    jobs, ids = _relative_names(layout, names, per_class, seed)
    for folder in sorted({os.path.dirname(rel) for _, _, rel in jobs} | set(
            names if layout == "folders" else ["train" if layout == "prefix" else "images"])):
        (partial / folder).mkdir(parents=True, exist_ok=True)

    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    n_jobs = workers or (system.usable_cpus() if len(jobs) >= 400 else 1)
    total = 0
    bar = None
    if progress:
        bar = progress_bar(total=len(jobs), unit="img", desc="sample-dump")
    if n_jobs == 1:
        for chunk in chunks:
            total += _write_chunk(str(partial), chunk, seed)
            if bar is not None:
                bar.update(len(chunk))
    else:
        from joblib import Parallel, delayed

        system.start_trackers()
        parallel = Parallel(n_jobs=n_jobs, return_as="generator")
        for chunk, written in zip(chunks, parallel(
                delayed(_write_chunk)(str(partial), chunk, seed) for chunk in chunks),
                strict=True):
            total += written
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()

    bad: list[tuple[str, str]] = []
    if with_bad_files:
        bad, extra_rows = _write_bad_files(partial, layout, names, jobs, seed, len(jobs) + 1)
        total += sum((partial / rel).stat().st_size for rel, _ in bad if (partial / rel).exists())
        for rel, (number, name) in extra_rows.items():
            ids[rel] = number
            jobs.append((name, -1, rel))
    if layout == "csv":
        label_of = {rel: name for name, _, rel in jobs}
        rows = sorted((number, label_of[rel]) for rel, number in ids.items())
        text = "id,label\n" + "".join(f"{number},{name}\n" for number, name in rows)
        (partial / "labels.csv").write_text(text, encoding="utf-8", newline="\n")
        total += len(text.encode())

    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    os.replace(partial, dest)
    return SampleDumpSummary(dest=given, layout=layout, classes=names, per_class=per_class,
                             images=per_class * len(names), bytes=total, bad_files=bad)
