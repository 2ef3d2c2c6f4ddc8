"""Decode one image robustly into RGB uint8 pixels, and resize it to a target (height, width).

The only place where OpenCV's BGR order and (width, height) sizes appear.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import CorruptImageError, EmptyImageError, ImageTooLargeError, UsageError

DEFAULT_MAX_PIXELS = 89_478_485
RESIZE_MODES = ("crop", "stretch", "pad")
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}

# Reduced JPEG decoding (libjpeg's scaled IDCT) by factor f is used only when the source is at
# least this many times the scaled size. Just above f, libjpeg's own filtering followed by a small
# INTER_AREA step blurs more than one INTER_AREA does (down to 29 dB at 8x); with these margins,
# measured on seven of skimage's photos at every size, the result stays >= 35 dB PSNR from full
# decode + INTER_AREA (worst: 35.9 dB at 1/2, 36.2 at 1/4, 35.4 at 1/8).
REDUCE_MIN_RATIO = ((8, 16.0), (4, 7.0), (2, 2.5))
# The GRAYSCALE variants carry only the reduction bits, to be combined with _COLOR_RGB.
_REDUCED_FLAG = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}

# Colour decodes come out in RGB straight from the codec, with orientation left to this module:
# OpenCV applies EXIF orientation with some flags and not others, so one rule (ours) is simpler.
_COLOR_RGB = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                       0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(slots=True)
class _Header:
    """What the header says about an encoded image, read without decoding the pixels."""

    format: str
    height: int  # as stored, before orientation
    width: int
    orientation: int = 1  # EXIF orientation, 1..8
    orient_here: bool = True  # False where the codec applies orientation itself (TIFF)
    unchanged: bool = False  # needs IMREAD_UNCHANGED: alpha or more than 8 bits
    premultiplied: bool = False  # alpha that OpenCV returns premultiplied (8-bit TIFF)
    gray_key: int | None = None  # a grayscale PNG's transparent value (tRNS)
    complete: str | None = None  # None if the file looks whole, else why it does not
    scan: int = -1  # a JPEG's first scan header (SOS) offset, found by walking its segments
    restart: int = 0  # a JPEG's restart interval in force at its first scan (DRI), 0 for none

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) after orientation: the shape that decoding gives."""
        if self.orientation >= 5:
            return self.width, self.height
        return self.height, self.width


def read_bytes(path: str | os.PathLike) -> bytes:
    """Return the raw bytes of an image file (OSError if it cannot be read)."""
    # Unbuffered: one fstat and read straight into the result, ~30 us less per file than a
    # buffered read (measured in a decode loop, where that is ~2% of an image's time).
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def probe(
    data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, verify: bool = True
) -> tuple[int, int]:
    """Return the (height, width) an image will decode to, reading only its header.

    JPEG, PNG, GIF, BMP, WebP and TIFF headers are parsed directly (microseconds); other formats
    fall back to a full decode. EXIF orientation is taken into account, so the result equals
    ``decode(data).shape[:2]``.

    Args:
        data: the encoded file.
        max_pixels: refuse images with more pixels than this (None: no limit).
        verify: also check the file is not cut short (an end marker is present); cheap, but
            needs the whole file rather than a prefix.

    Raises:
        CorruptImageError: empty, not an image, an unknown format, a broken header, or (with
            ``verify``) a truncated file.
        ImageTooLargeError: over ``max_pixels``.
    """
    header = _inspect(data)
    if header is None:
        return _decode_fallback(data, max_pixels).shape[:2]
    _check_pixels(header, max_pixels)
    if verify and header.complete:
        raise CorruptImageError(header.complete)
    return header.shape


def decode(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into an (H, W, 3) uint8 RGB array.

    EXIF orientation (and an AVIF's rotation and mirror) is applied; grayscale is replicated
    to three channels; transparency is composited on white; 16-bit samples are scaled to 8
    bits (x / 257, rounded), and samples of fewer bits by their own range (a PNM's maxval, a
    10 or 12-bit AVIF); floating-point samples are taken as 0..1, and signed integers over
    their type's range; CMYK and palette images are converted; an animated GIF gives its first
    frame.

    Raises:
        CorruptImageError: empty, not an image, truncated or undecodable.
        ImageTooLargeError: more than ``max_pixels`` pixels, checked from the header before
            any pixel is decoded (for formats read by the fallback, after decoding).
    """
    header = _inspect(data)
    if header is None:
        return _decode_fallback(data, max_pixels)
    _check_pixels(header, max_pixels)
    if header.complete:
        raise CorruptImageError(header.complete)
    return _decode(data, header)


def read_image(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """Read and decode an image file into (H, W, 3) uint8 RGB; keywords go to ``decode``."""
    return decode(read_bytes(path), **kwargs)


def parse_size(size: int | str | tuple[int, int]) -> tuple[int, int]:
    """Turn ``256``, ``"256"``, ``"256x192"`` (height x width) or a pair into (height, width).

    Raises:
        UsageError: not a positive size.
    """
    values: list[int] = []
    if isinstance(size, str):
        try:
            values = [int(p) for p in size.lower().split("x")]
        except ValueError:
            values = []
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        values = [int(size)]
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
            values = [int(v) for v in size]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise UsageError(f"size {size!r} is not N or HxW with positive sides (e.g. 256 or 256x192)")
    return values[0], values[1]


def resize(
    image: np.ndarray,
    size: int | str | tuple[int, int],
    mode: str = "crop",
    interpolation: str | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Resize an (H, W, C) image to ``size`` = (height, width), or anything ``parse_size`` takes.

    ``crop`` scales the shorter side to fit and centre-crops, ``stretch`` ignores the aspect
    ratio, ``pad`` letterboxes on black. INTER_AREA shrinks and INTER_CUBIC enlarges unless
    ``interpolation`` names another (one of ``INTERPOLATIONS``). Returns the input itself when
    it already has the requested size (unless ``out`` is given). With ``out``, a C-contiguous
    array of the result's shape and dtype, the result is written there and ``out`` returned:
    a caller filling a batch buffer saves a copy per image.

    Raises:
        UsageError: an unknown mode or interpolation, or a size that is not positive.
    """
    size = parse_size(size)
    check_resize(mode, interpolation)
    _check_out(out, size, image.shape[2:], image.dtype)
    return _fit(image, image.shape[0], image.shape[1], 1, size, mode, interpolation, out)


def load(
    data: bytes,
    size: int | str | tuple[int, int],
    mode: str = "crop",
    interpolation: str | None = None,
    *,
    exact: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode image bytes and resize them to ``size``: the one path build and generators share.

    Gives ``resize(decode(data), size, mode, interpolation)``. Unless ``exact``, a JPEG much
    larger than the target is decoded at 1/2, 1/4 or 1/8 scale first (see ``REDUCE_MIN_RATIO``),
    which is faster and stays at about 35 dB PSNR or more from the exact result. With ``out``, a
    C-contiguous (height, width, 3) uint8 array, the pixels are written there and ``out``
    returned (its content is undefined if decoding fails).

    Raises:
        CorruptImageError, ImageTooLargeError: as ``decode``.
        UsageError: as ``resize``, or an ``out`` of the wrong shape or dtype.
    """
    size = parse_size(size)
    check_resize(mode, interpolation)
    _check_out(out, size, (3,), np.dtype(np.uint8))
    header = _inspect(data)
    if header is None:
        image = _decode_fallback(data, max_pixels)
        return _fit(image, image.shape[0], image.shape[1], 1, size, mode, interpolation, out)
    _check_pixels(header, max_pixels)
    if header.complete:
        raise CorruptImageError(header.complete)
    full_h, full_w = header.shape
    factor = 1
    if not exact and header.format == "JPEG" and interpolation in (None, "area"):
        factor = _reduction(full_h, full_w, size, mode)
    turned = factor > 1 and header.orient_here and header.orientation not in (1, 5)
    if turned and not _crop_first(full_h, full_w, size, mode):
        # libjpeg rounds a reduced size up: the partial last row and column lie at the bottom
        # and right as stored, and an orientation would move them to the top or left. Scale in
        # the stored frame, cut them off there, then turn the image upright to crop or pad.
        sh, sw = _scaled_size(full_h, full_w, size, mode)
        stored = (sw, sh) if header.orientation >= 5 else (sh, sw)
        raw = _decode(data, header, factor, orient=False)
        scaled = _reduced_resize(raw, header.height, header.width, factor, stored,
                                 _flag(sh, sw, full_h, full_w, interpolation))
        image = _orient(scaled, header.orientation)
        return _fit(image, sh, sw, 1, size, mode, interpolation, out)
    image = _decode(data, header, factor)
    return _fit(image, full_h, full_w, factor, size, mode, interpolation, out)


# --- resizing -------------------------------------------------------------------------------


def check_resize(mode: str, interpolation: str | None) -> None:
    """Refuse a resize mode or an interpolation this module does not know (a UsageError)."""
    if mode not in RESIZE_MODES:
        raise UsageError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise UsageError(
            f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        )


def _check_out(out: np.ndarray | None, size: tuple[int, int], channels: tuple[int, ...],
               dtype: np.dtype) -> None:
    if out is None:
        return
    shape = (*size, *channels)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise UsageError(f"out must be a C-contiguous {dtype} array shaped {shape}, "
                         f"got {out.dtype}{out.shape}; pass a slice of a matching buffer")


# In "crop" mode, an image whose scaled whole would have more than this many times the target's
# pixels is cut to the kept part before scaling (ordinary photos scale whole: 4:3 is 1.33 times).
CROP_FIRST_RATIO = 16


def _scaled_size(h: int, w: int, size: tuple[int, int], mode: str) -> tuple[int, int]:
    """The (height, width) the whole image is scaled to before cropping or padding."""
    height, width = size
    if mode == "stretch":
        return height, width
    pick = max if mode == "crop" else min
    scale = pick(height / h, width / w)
    # The side that decides the scale gets the target exactly, whatever the float rounding.
    sh = height if scale == height / h else max(1, round(h * scale))
    sw = width if scale == width / w else max(1, round(w * scale))
    if mode == "crop":
        return max(sh, height), max(sw, width)
    return min(sh, height), min(sw, width)


def _reduction(h: int, w: int, size: tuple[int, int], mode: str) -> int:
    """The JPEG reduced-decoding factor (1, 2, 4 or 8) that keeps the quality promise."""
    sh, sw = _scaled_size(h, w, size, mode)
    ratio = min(h / sh, w / sw)
    for factor, least in REDUCE_MIN_RATIO:
        if ratio >= least:
            return factor
    return 1


def _flag(sh: int, sw: int, full_h: int, full_w: int, interpolation: str | None) -> int:
    """The OpenCV interpolation: the one named, else area when shrinking and cubic when not."""
    if interpolation is None:
        return cv2.INTER_AREA if min(sh / full_h, sw / full_w) < 1 else cv2.INTER_CUBIC
    return INTERPOLATIONS[interpolation]


def _crop_first(full_h: int, full_w: int, size: tuple[int, int], mode: str) -> bool:
    """Whether a crop keeps so small a part of the scaled image that it is cut first."""
    sh, sw = _scaled_size(full_h, full_w, size, mode)
    return mode == "crop" and sh * sw > CROP_FIRST_RATIO * size[0] * size[1]


def _reduced_resize(image: np.ndarray, full_h: int, full_w: int, factor: int,
                    scaled: tuple[int, int], flag: int) -> np.ndarray:
    """Scale a full_h x full_w picture decoded at 1/factor (its partial last row and column at
    the bottom and right, as libjpeg leaves them) to ``scaled`` (height, width).

    Exact scale factors (not a destination size) keep the reduced grid aligned; the few extra
    rows or columns from libjpeg's rounding up are cut off afterwards.
    """
    sh, sw = scaled
    out = cv2.resize(image, None, fx=factor * sw / full_w, fy=factor * sh / full_h,
                     interpolation=flag)
    if out.shape[0] < sh or out.shape[1] < sw:
        out = cv2.resize(image, (sw, sh), interpolation=flag)
    return out[:sh, :sw]


def _fit(
    image: np.ndarray,
    full_h: int,
    full_w: int,
    factor: int,
    size: tuple[int, int],
    mode: str,
    interpolation: str | None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Scale, then crop or pad, ``image``: a full_h x full_w picture decoded at 1/factor scale.

    The geometry always comes from the full size, so a reduced decode lands on the same pixel
    grid as a full one (libjpeg rounds reduced sizes up, which would otherwise shift the crop).
    """
    height, width = size
    sh, sw = _scaled_size(full_h, full_w, size, mode)
    flag = _flag(sh, sw, full_h, full_w, interpolation)
    h, w = image.shape[:2]
    if _crop_first(full_h, full_w, size, mode):
        # A far wider (or taller) image than the target, such as a 1x12000 banner: scaled whole,
        # it would take gigabytes. Cut the centre part the crop keeps, then scale only that.
        keep_h = min(h, max(1, round(h * height / sh)))
        keep_w = min(w, max(1, round(w * width / sw)))
        top, left = (h - keep_h) // 2, (w - keep_w) // 2
        part = image[top : top + keep_h, left : left + keep_w]
        if out is None:
            return cv2.resize(part, (width, height), interpolation=flag)
        np.copyto(out, cv2.resize(part, (width, height), interpolation=flag))
        return out
    if factor == 1:
        if (sh, sw) == (h, w):
            scaled = image
        elif out is not None and (sh, sw) == (height, width) and out.shape[2:] == image.shape[2:]:
            # Nothing to crop or pad: OpenCV resizes straight into the caller's buffer.
            return cv2.resize(image, (sw, sh), dst=out, interpolation=flag)
        else:
            scaled = cv2.resize(image, (sw, sh), interpolation=flag)
    else:
        scaled = _reduced_resize(image, full_h, full_w, factor, (sh, sw), flag)
    if mode == "pad":
        if out is None:
            canvas = np.zeros((height, width) + scaled.shape[2:], dtype=scaled.dtype)
        else:
            canvas = out
            canvas[...] = 0
        top, left = (height - sh) // 2, (width - sw) // 2
        canvas[top : top + sh, left : left + sw] = scaled
        return canvas
    top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    cropped = scaled[top : top + height, left : left + width]
    if out is not None:
        # One copy from the crop window into the caller's buffer, none in between.
        np.copyto(out, cropped)
        return out
    return cropped if cropped.flags.c_contiguous else np.ascontiguousarray(cropped)


# --- decoding -------------------------------------------------------------------------------


def _opencv_limits() -> tuple[int, int, int]:
    """OpenCV's largest decodable width, height and pixel count (its OPENCV_IO_MAX_IMAGE_*
    variables, else its defaults)."""
    limits = []
    for name, default in (("WIDTH", 1 << 20), ("HEIGHT", 1 << 20), ("PIXELS", 1 << 30)):
        # As OpenCV reads them: digits, then nothing, KB or MB (in any of its spellings).
        found = re.fullmatch(r"(\d+)(KB|Kb|kb|MB|Mb|mb)?",
                             os.environ.get(f"OPENCV_IO_MAX_IMAGE_{name}", ""))
        if found is None:
            limits.append(default)
            continue
        unit = {"": 1, "k": 1 << 10, "m": 1 << 20}[(found.group(2) or " ")[0].lower().strip()]
        limits.append(int(found.group(1)) * unit)
    return limits[0], limits[1], limits[2]


def _limits_text() -> str:
    width, height, pixels = _opencv_limits()
    return f"at most {width:,} pixels wide, {height:,} tall and {pixels:,} in all"


def _check_pixels(header: _Header, max_pixels: int | None) -> None:
    if max_pixels is not None and header.height * header.width > max_pixels:
        raise ImageTooLargeError(
            f"{header.width}x{header.height} is over the {max_pixels:,}-pixel limit"
        )
    # OpenCV's own limits, which it applies whatever max_pixels says (and which its
    # OPENCV_IO_MAX_IMAGE_* variables move): a header past them will not decode.
    width, height, pixels = _opencv_limits()
    if header.width > width or header.height > height or header.height * header.width > pixels:
        raise ImageTooLargeError(f"{header.width}x{header.height} is larger than OpenCV "
                                 f"decodes ({_limits_text()})")


def _imdecode(buffer: np.ndarray, flags: int) -> np.ndarray | None:
    """cv2.imdecode, with OpenCV's errors turned into dsprep's: an image over its size limits
    (2**20 pixels wide or tall, 2**30 in all, unless set otherwise in OPENCV_IO_MAX_IMAGE_*)
    raises instead of returning None."""
    try:
        return cv2.imdecode(buffer, flags)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE" in str(exc):
            raise ImageTooLargeError(f"larger than OpenCV decodes ({_limits_text()})") from None
        detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "no detail"
        raise CorruptImageError(f"could not be decoded (OpenCV: {detail})") from None


def _decode(data: bytes, header: _Header, factor: int = 1, *, orient: bool = True) -> np.ndarray:
    """Decode a file whose header was read, at 1/factor scale (JPEG only), to RGB uint8,
    upright (or as stored, without ``orient``)."""
    buffer = np.frombuffer(data, np.uint8)
    if header.unchanged:
        raw = _imdecode(buffer, cv2.IMREAD_UNCHANGED)
    else:
        flags = _COLOR_RGB | (_REDUCED_FLAG[factor] if factor > 1 else 0)
        raw = _imdecode(buffer, flags)
        if raw is not None and header.format == "JPEG" and _grey_last_row(raw):
            stray = _stray_marker(data, header.scan, header.restart)
            if stray is not None:
                raise CorruptImageError(
                    f"JPEG data is damaged (a stray marker at byte {stray} inside the "
                    "compressed data); the decoder filled the rest with grey")
    if raw is None:
        raise CorruptImageError(f"{header.format} data could not be decoded (corrupt or truncated)")
    if header.unchanged:
        image = _to_rgb8(raw, premultiplied=header.premultiplied, gray_key=header.gray_key)
    else:
        image = raw if raw.dtype == np.uint8 else _to_uint8(raw)  # e.g. a 12-bit JPEG
    if orient and header.orient_here and header.orientation != 1:
        image = _orient(image, header.orientation)
    return image


def _grey_last_row(raw: np.ndarray) -> bool:
    """Whether the bottom row is all mid-grey (128), as libjpeg leaves the part of an image
    after its data stopped: the sign of a JPEG damaged inside its compressed data."""
    return raw.dtype == np.uint8 and bool((raw[-1] == 128).all())


# Markers that may stand between the scans of a JPEG: tables, restart interval, comments,
# application data, the next scan, DNL. Inside a scan's data, FF is followed only by 00 (a
# stuffed FF), FF (fill) or a restart marker D0-D7.
_JPEG_BETWEEN_SCANS = frozenset({0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)})


def _markers_in_data(data: np.ndarray) -> tuple[np.ndarray, ...]:
    """Where FF stands in compressed data, the byte after each, which of those are restart
    markers, and where the real markers are (FF not followed by 00, FF or a restart)."""
    ff = np.flatnonzero(data[:-1] == 0xFF)
    after = data[ff + 1]
    is_rst = (after >= 0xD0) & (after <= 0xD7)
    return ff, after, is_rst, ff[(after != 0) & (after != 0xFF) & ~is_rst]


def _stray_marker(data: bytes, scan: int, restart: int = 0) -> int | None:
    """The offset of a marker that cannot stand where it is in a JPEG's compressed data (a
    run of damaged bytes forms one, and libjpeg stops there with only a warning), or None.

    ``scan`` is the offset of the first scan header, as the header walk found it (a search
    for its marker could find the one of an EXIF thumbnail first); ``restart`` the restart
    interval then in force. Restart markers count as stray unless an interval is set, and
    out of their D0, D1, ..., D7, D0 order. Damage that forms the end-of-image marker is
    found by what follows it: more compressed data, up to the file's real end-of-image marker
    (data appended to a whole JPEG, such as a second image, is no such data). Damage that
    garbles the data without forming a marker is not found here.
    """
    array = np.frombuffer(data, np.uint8)
    pos, end = scan, len(data)
    try:
        while 0 <= pos < end - 3:
            code = data[pos + 1]
            (length,) = struct.unpack_from(">H", data, pos + 2)
            pos += 2 + length
            if code == 0xDA:  # a scan: its data runs to the next real marker
                ff, after, is_rst, real = _markers_in_data(array[pos:])
                if not real.size:
                    return None  # no end-of-image marker: the header check reports truncation
                rst = is_rst & (ff < real[0])
                codes = after[rst].astype(np.int64) - 0xD0
                wrong = np.flatnonzero(codes != np.arange(len(codes)) % 8)
                if codes.size and (not restart or wrong.size):
                    return pos + int(ff[rst][wrong[0] if restart else 0])
                pos += int(real[0])
            else:  # a segment between scans: the next marker follows it at once
                while data[pos:pos + 2] == b"\xff\xff":
                    pos += 1
                if data[pos] != 0xFF:
                    return pos
            following = data[pos + 1]
            if following == 0xD9:
                return pos if _scan_data_follows(array, pos + 2) else None
            if following == 0xDD:  # a new restart interval for the scans that follow
                (restart,) = struct.unpack_from(">H", data, pos + 4)
            if following not in _JPEG_BETWEEN_SCANS:
                return pos
    except (struct.error, IndexError):
        return pos
    return None


def _scan_data_follows(array: np.ndarray, start: int) -> bool:
    """Whether ``array[start:]`` reads as the rest of a JPEG's compressed data: scan data (FF
    followed only by 00, FF or a restart marker) and, in a progressive file, the segments of
    its later scans, each run of them ending in a scan header with data after it, up to the
    file's end-of-image marker. What is appended to a whole JPEG (a second image, EXIF or
    comment segments, fill bytes) begins with a marker, or ends without scan data."""
    tail = array[start:]
    while tail.size > 4 and tail[0] == 0xFF and tail[1] == 0xD9:
        tail = tail[2:]  # damage of several FF D9 pairs in a row
    if tail.size < 3 or tail[-2] != 0xFF or tail[-1] != 0xD9:
        return False
    body = tail[:-2]
    if body[-1] == 0xFF:
        return False
    real = _markers_in_data(body)[3].tolist()
    if real and real[0] == 0:
        return False  # segments, not the rest of a scan's data
    skip_to, last = 0, 0xDA  # what follows the stray marker is a scan's data
    for at in real:
        if at < skip_to:
            continue  # inside a segment's own bytes (a table may hold FF)
        if at > skip_to and last != 0xDA:
            return False  # data after a segment that is no scan header
        code = int(body[at + 1])
        if code not in _JPEG_BETWEEN_SCANS or at + 4 > body.size:
            return False
        skip_to, last = at + 2 + (int(body[at + 2]) << 8 | int(body[at + 3])), code
    return last == 0xDA and skip_to < body.size


def _decode_fallback(data: bytes, max_pixels: int | None) -> np.ndarray:
    """Formats without a header parser here: let OpenCV decode (it applies EXIF orientation).

    AVIF and JPEG 2000 are read with their alpha (composited on white, as for PNG), AVIF
    turned upright by its own rotation and mirror properties (OpenCV does not apply them),
    and samples of fewer bits than their container scaled by their real range: a PNM's
    maxval, an AVIF's bit depth (10 or 12 bits come in 16-bit words).
    """
    if not data:
        raise EmptyImageError("empty file")
    avif = _avif_properties(data)
    keep_alpha = avif is not None or data.startswith(_JPEG2000_SIGNATURES)
    raw = _imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED if keep_alpha
                    else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if raw is None:
        fmt = _fallback_format(data)
        if fmt is not None:
            raise CorruptImageError(f"{fmt} data could not be decoded (corrupt or truncated)")
        if _looks_like_text(data):
            raise CorruptImageError("a text file, not an image")
        raise CorruptImageError("not an image in a known format")
    h, w = raw.shape[:2]
    if max_pixels is not None and h * w > max_pixels:
        raise ImageTooLargeError(f"{w}x{h} is over the {max_pixels:,}-pixel limit")
    top = _pnm_maxval(data) or (avif.top if avif is not None else None)
    rgb = _to_rgb8(_stretch(raw, top) if top else raw)
    for kind, value in avif.transforms if avif is not None else ():
        if kind == "rotate":  # anticlockwise, in quarter turns
            rgb = np.rot90(rgb, value)
        else:  # mirror: 0 top to bottom, 1 left to right
            rgb = rgb[::-1] if value == 0 else rgb[:, ::-1]
    return np.ascontiguousarray(rgb)


_JPEG2000_SIGNATURES = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")


def _stretch(raw: np.ndarray, top: int) -> np.ndarray:
    """Samples of range 0..top brought to 0..255 (rounded half up), or, with alpha, to the
    whole range of their 16-bit container."""
    full = np.iinfo(raw.dtype).max if raw.dtype in (np.uint8, np.uint16) else None
    if full is None or top == full or top <= 0:
        return raw
    alpha = raw.ndim == 3 and raw.shape[2] in (2, 4)
    if not alpha:
        full = 255
    wide = np.minimum(raw.astype(np.uint64), top)
    return ((wide * (2 * full) + top) // (2 * top)).astype(raw.dtype if alpha else np.uint8)


_PNM_HEADER = re.compile(rb"P[2356](?:\s|#[^\r\n]*)+(\d+)(?:\s|#[^\r\n]*)+(\d+)"
                         rb"(?:\s|#[^\r\n]*)+(\d+)")


def _pnm_maxval(data: bytes) -> int | None:
    """A grey or colour PNM's maxval (the value of white), from its header, where OpenCV
    leaves its samples unscaled: in binary files, and in text ones above 255 (it scales a
    text file's smaller range to 0..255 itself)."""
    found = _PNM_HEADER.match(data[:4096])
    if not found:
        return None
    maxval = int(found.group(3))
    return maxval if data[1:2] in (b"5", b"6") or maxval > 255 else None


@dataclass(frozen=True)
class _AvifProperties:
    top: int | None  # the largest sample, where the bit depth is not 8 or 16
    transforms: tuple[tuple[str, int], ...]  # ("rotate", quarter turns) or ("mirror", axis)


def _avif_properties(data: bytes) -> _AvifProperties | None:
    """The primary image's bit depth, rotation and mirror of an AVIF file; None for another
    format (or an AVIF whose boxes cannot be read: OpenCV then decides)."""
    try:
        # The top-level boxes, walked by their sizes (the image data after meta, or before).
        boxes = dict(_boxes(data, 0, len(data), first_only=True))
        ftyp = boxes.get(b"ftyp")
        if ftyp is None or not any(data[i:i + 4] in (b"avif", b"avis")
                                   for i in range(ftyp[0], ftyp[1], 4)):
            return None
        meta = boxes.get(b"meta")
        if meta is None:
            return _AvifProperties(None, ())
        inner = dict(_boxes(data, meta[0] + 4, meta[1], first_only=True))
        primary = None
        if b"pitm" in inner:
            start = inner[b"pitm"][0]
            primary = (struct.unpack_from(">H", data, start + 4)[0] if data[start] == 0
                       else struct.unpack_from(">I", data, start + 4)[0])
        iprp = inner.get(b"iprp")
        parts = dict(_boxes(data, *iprp, first_only=True)) if iprp else {}
        ipco = list(_boxes(data, *parts[b"ipco"])) if b"ipco" in parts else []
        chosen = _associated(data, parts.get(b"ipma"), primary, len(ipco))
        # No association table (a file of one image): the properties are its own. A primary
        # image the table leaves out has none (another item's are not its).
        properties = (ipco if parts.get(b"ipma") is None or primary is None else
                      [ipco[i] for i in chosen or []])
    except (struct.error, IndexError, KeyError):
        return None
    top, transforms = None, []
    for kind, (start, end) in properties:
        if kind == b"irot" and end > start:
            transforms.append(("rotate", data[start] & 3))
        elif kind == b"imir" and end > start:
            transforms.append(("mirror", data[start] & 1))
        elif kind == b"av1C" and end >= start + 3 and top is None:
            flags = data[start + 2]
            bits = 12 if flags & 0x20 else 10 if flags & 0x40 else 8
            top = (1 << bits) - 1 if bits != 8 else None
    return _AvifProperties(top, tuple(transforms))


# Items and properties of an AVIF file walked at most (a phone's tiled image has ~100).
_MAX_ITEMS = 1 << 14


def _boxes(data: bytes, start: int, end: int, first_only: bool = False):
    """(type, (body start, end)) of each ISO base media box from ``start`` to ``end`` (at
    most ``_MAX_ITEMS`` of them)."""
    seen = set()
    pos = start
    for _ in range(_MAX_ITEMS):
        if pos + 8 > end:
            return
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        if not (first_only and kind in seen):
            seen.add(kind)
            yield kind, (pos + head, pos + size)
        pos += size


def _associated(data: bytes, ipma: tuple[int, int] | None, item: int | None,
                count: int) -> list[int] | None:
    """The 0-based indices of the properties ``ipma`` gives ``item``, in their order."""
    if ipma is None or item is None:
        return None
    start, end = ipma
    version, flags = data[start], int.from_bytes(data[start + 1:start + 4], "big")
    pos = start + 4
    (entries,) = struct.unpack_from(">I", data, pos)
    pos += 4
    # Each entry takes 3 bytes or more: a count past what the box holds is not walked, nor
    # more items than any real file has (a hostile count would cost a walk of the file).
    for _ in range(min(entries, (end - pos) // 3, _MAX_ITEMS)):
        if pos >= end:
            break
        if version < 1:
            (item_id,) = struct.unpack_from(">H", data, pos)
            pos += 2
        else:
            (item_id,) = struct.unpack_from(">I", data, pos)
            pos += 4
        n = data[pos]
        pos += 1
        indices = []
        for _ in range(n):
            if flags & 1:
                index = struct.unpack_from(">H", data, pos)[0] & 0x7FFF
                pos += 2
            else:
                index = data[pos] & 0x7F
                pos += 1
            if 0 < index <= count:
                indices.append(index - 1)
        if item_id == item:
            return indices
    return None


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _to_rgb8(raw: np.ndarray, *, premultiplied: bool = False, gray_key: int | None = None):
    """OpenCV's IMREAD_UNCHANGED output (gray, BGR or BGRA; 8, 16 or 32-bit) to RGB uint8."""
    if raw.ndim == 2:
        raw = raw[:, :, None]
    channels = raw.shape[2]
    if raw.dtype == np.uint8 and channels == 1 and gray_key is None:
        return cv2.cvtColor(raw, cv2.COLOR_GRAY2RGB)
    if raw.dtype == np.uint8 and channels == 3:
        return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    if channels == 1 and gray_key is not None:
        alpha = np.where(raw == gray_key, 0, np.iinfo(raw.dtype).max).astype(raw.dtype)
        raw = np.concatenate([raw, alpha], axis=2)
        channels = 2
    if channels == 2:  # gray + alpha
        raw = raw[:, :, [0, 0, 0, 1]]
    elif channels == 1:
        raw = raw[:, :, [0, 0, 0]]
    elif channels >= 4:
        raw = raw[:, :, [2, 1, 0, 3]]
    else:
        raw = raw[:, :, ::-1]
    if raw.shape[2] == 4:
        return _composite_on_white(raw, premultiplied)
    return _to_uint8(raw)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    if pixels.dtype == np.uint16:
        # round(x / 257) without floats: no x lands on a .5, so this is exact.
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(pixels.dtype, np.floating):  # TIFF/HDR floats, taken as 0..1
        return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        scaled = (pixels.astype(np.float64) - info.min) / (info.max - info.min) * 255.0
        return np.rint(scaled).astype(np.uint8)
    raise CorruptImageError(f"unsupported pixel type {pixels.dtype}")


# Pixels composited at a time: the arithmetic's temporaries (up to 120 bytes a pixel for 16-bit
# RGBA) stay around 30 MB whatever the image's size.
_BAND_PIXELS = 1 << 18


def _composite_on_white(rgba: np.ndarray, premultiplied: bool) -> np.ndarray:
    """RGBA (straight or premultiplied alpha) over a white background, as RGB uint8."""
    height, width = rgba.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        out[top : top + rows] = _composite_band(rgba[top : top + rows], premultiplied)
    return out


def _composite_band(rgba: np.ndarray, premultiplied: bool) -> np.ndarray:
    if rgba.dtype == np.uint8:
        rgb = rgba[:, :, :3].astype(np.uint32)
        alpha = rgba[:, :, 3:].astype(np.uint32)
        if premultiplied:
            return np.minimum(rgb + (255 - alpha), 255).astype(np.uint8)
        # Integer rounding of (c * a + 255 * (255 - a)) / 255.
        return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    if rgba.dtype == np.uint16:
        top = 65535.0
    elif np.issubdtype(rgba.dtype, np.floating):
        top = 1.0
    else:
        top = float(np.iinfo(rgba.dtype).max)
    rgb = rgba[:, :, :3].astype(np.float64)
    alpha = np.clip(rgba[:, :, 3:].astype(np.float64) / top, 0.0, 1.0)
    mixed = rgb + top * (1.0 - alpha) if premultiplied else rgb * alpha + top * (1.0 - alpha)
    return np.rint(np.clip(mixed / top, 0.0, 1.0) * 255.0).astype(np.uint8)


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) so the image is shown upright."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def _fallback_format(data: bytes) -> str | None:
    """The name of a format OpenCV reads without a header parser here, told by its first
    bytes; None for anything else."""
    if data[:1] == b"P" and data[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6") and \
            data[2:3] in (b" ", b"\t", b"\n", b"\r", b"#"):
        return "PNM (PPM/PGM/PBM)"
    if data.startswith(_JPEG2000_SIGNATURES):
        return "JPEG 2000"
    if data.startswith(b"#?RADIANCE") or data.startswith(b"#?RGBE"):
        return "Radiance HDR"
    for prefix, name in ((b"v/1\x01", "OpenEXR"), (b"\x59\xa6\x6a\x95", "Sun raster"),
                         (b"PF\n", "PFM"), (b"Pf\n", "PFM")):
        if data.startswith(prefix):
            return name
    return None


# --- header parsing -------------------------------------------------------------------------


def _inspect(data: bytes) -> _Header | None:
    """Read the header of a known format; None for formats left to the fallback decoder.

    Raises:
        CorruptImageError: empty, or a known format whose header is broken.
    """
    if not data:
        raise EmptyImageError("empty file")
    try:
        if data.startswith(b"\xff\xd8"):
            return _inspect_jpeg(data)
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _inspect_png(data)
        if data.startswith((b"GIF87a", b"GIF89a")):
            return _inspect_gif(data)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _inspect_webp(data)
        if data.startswith(b"BM"):
            return _inspect_bmp(data)
        if data.startswith((b"II*\x00", b"MM\x00*")):
            return _inspect_tiff(data)
    except (struct.error, IndexError):
        fmt = _format_name(data)
        raise CorruptImageError(f"truncated {fmt} (the file ends inside its header)") from None
    return None


def _format_name(data: bytes) -> str:
    for prefix, name in ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF", "GIF"),
                         (b"RIFF", "WebP"), (b"BM", "BMP")):
        if data.startswith(prefix):
            return name
    return "TIFF"


def looks_like_image(head: bytes) -> bool:
    """Whether a file whose first 16 bytes are ``head`` begins as one of a format dsprep reads
    (by its signature alone: a WAV file is RIFF too, and says WAVE where WebP says WEBP)."""
    return (head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a",
                             b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x0cjP  \r\n\x87\n",
                             b"\xff\x4f\xff\x51"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or (head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00")  # reserved, zero
            or (head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6")
                and head[2:3] in (b" ", b"\t", b"\r", b"\n"))  # PBM, PGM, PPM
            or (head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis")))


def _valid_size(fmt: str, height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise CorruptImageError(f"{fmt} header gives an empty size ({width}x{height})")


def _inspect_jpeg(data: bytes) -> _Header:
    pos, end = 2, len(data)
    size = None
    orientation = 1
    exif_seen = False
    restart = 0
    while True:
        if data[pos] != 0xFF:
            # Stray bytes between two segments: libjpeg skips them to the next marker (with
            # "Corrupt JPEG data: N extraneous bytes before marker") and decodes the image.
            pos = data.find(b"\xff", pos)
            if pos < 0:
                raise CorruptImageError("garbled JPEG header (a marker was expected)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x00:  # FF 00 is no marker: skipped with the stray bytes
            pos += 2
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            raise CorruptImageError("JPEG has no image data (end-of-image before any scan)")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            raise CorruptImageError("garbled JPEG header (bad segment length)")
        body = pos + 4
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, body + 1)
            size = (height, width)
        elif marker == 0xE1 and data.startswith(b"Exif\x00\x00", body) and not exif_seen:
            # The first Exif block counts, as for libjpeg and Pillow (an editor may add one).
            exif_seen = True
            orientation = _exif_orientation(data, body, pos + 2 + length)
        elif marker == 0xDD:
            (restart,) = struct.unpack_from(">H", data, body)
        elif marker == 0xDA:
            break
        pos += 2 + length
        if pos >= end:
            raise struct.error("header runs past the end")
    if size is None:
        raise CorruptImageError("JPEG has no frame header (SOF)")
    _valid_size("JPEG", *size)
    # Entropy-coded data cannot contain FF D9, so an end marker after the first scan header
    # means the file was written to the end; bytes after it (some cameras add some) are fine.
    complete = None if data.rfind(b"\xff\xd9", pos) >= 0 else (
        "truncated JPEG (no end-of-image marker)")
    return _Header("JPEG", size[0], size[1], orientation, complete=complete, scan=pos,
                   restart=restart)


def _inspect_png(data: bytes) -> _Header:
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        raise CorruptImageError("garbled PNG header (IHDR is not the first chunk)")
    width, height, depth, color = struct.unpack_from(">IIBB", data, 16)
    _valid_size("PNG", height, width)
    orientation, has_trns, gray_key = 1, False, None
    pos, first_idat = 33, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            first_idat = pos
            break
        if kind == b"tRNS":
            has_trns = True
            if color == 0 and length >= 2:
                (gray_key,) = struct.unpack_from(">H", data, pos + 8)
                if depth < 8:  # OpenCV scales 1, 2 and 4-bit gray up to 0..255
                    gray_key *= 255 // ((1 << depth) - 1)
        elif kind == b"eXIf":  # allowed before IDAT only; later copies are not looked for
            orientation = _exif_orientation(data, pos + 8, pos + 8 + length)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if first_idat is None:
        raise CorruptImageError("truncated PNG (no image data)")
    iend = data.rfind(b"\x00\x00\x00\x00IEND", first_idat)
    complete = None if iend >= 0 and iend + 12 <= len(data) else "truncated PNG (no IEND chunk)"
    alpha = color in (4, 6) or (has_trns and color in (2, 3))
    unchanged = alpha or depth == 16 or gray_key is not None
    return _Header("PNG", height, width, orientation, unchanged=unchanged,
                   gray_key=gray_key if color == 0 else None, complete=complete)


def _inspect_gif(data: bytes) -> _Header:
    width, height = struct.unpack_from("<HH", data, 6)
    _valid_size("GIF", height, width)
    complete = None if _gif_whole(data) else "truncated GIF (its data ends inside a block)"
    frame = _gif_first_frame(data)
    if complete is None and frame is not None:
        left, top, w, h = frame
        if left + w > width or top + h > height or not (w and h):
            # OpenCV refuses to decode it (a decoder that grows the screen would): said as
            # what is wrong, with the file's check rather than at its decoding.
            complete = (f"damaged GIF: its first frame ({w}x{h} at {left},{top}) does not fit "
                        f"its {width}x{height} screen; convert it to PNG to keep it")
    # GIFs may carry transparency in any frame's extension; IMREAD_UNCHANGED reports it as alpha.
    return _Header("GIF", height, width, unchanged=True, complete=complete)


def _gif_first_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(left, top, width, height) of a GIF's first image descriptor, None if not found."""
    pos = 13
    if len(data) < pos:
        return None
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    while pos + 10 <= len(data):
        if data[pos] == 0x2C:
            return struct.unpack_from("<HHHH", data, pos + 1)
        if data[pos] != 0x21:
            return None
        pos += 2
        while pos < len(data) and data[pos]:
            pos += data[pos] + 1
        pos += 1
    return None


def _gif_whole(data: bytes) -> bool:
    """Whether the GIF's blocks all end within ``data`` (walked by their lengths, not decoded).

    False only when the data stops inside a block or before the trailer; anything after the
    trailer, and blocks of unknown kinds, are let be (the decoder judges those).
    """
    n = len(data)
    pos = 13
    if n < pos:
        return False
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    while pos < n:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            return True
        if kind == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif kind == 0x2C:  # image: descriptor, local colour table, code size, sub-blocks
            if pos + 10 > n:
                return False
            flags = data[pos + 9]
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0) + 1
        else:
            return True  # not a block this walk knows
        while pos < n and data[pos]:  # sub-blocks, each led by its length, up to a 0
            pos += data[pos] + 1
        pos += 1  # the terminating 0
        if pos > n:
            return False
    return False


def _inspect_bmp(data: bytes) -> _Header:
    (offset,) = struct.unpack_from("<I", data, 10)
    (dib,) = struct.unpack_from("<I", data, 14)
    if dib == 12:
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    height = abs(height)  # negative height means rows stored top-down
    _valid_size("BMP", height, width)
    complete = None
    if compression in (0, 3, 6):  # uncompressed rows (plain or with bit fields)
        row = (width * bits + 31) // 32 * 4
        if len(data) < offset + row * height:
            complete = "truncated BMP (shorter than its rows)"
    return _Header("BMP", height, width, complete=complete)


def _inspect_webp(data: bytes) -> _Header:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    complete = None if len(data) >= 8 + riff_size else "truncated WebP (shorter than its RIFF size)"
    kind = data[12:16]
    alpha = False
    orientation = 1
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise CorruptImageError("garbled WebP header (no VP8 start code)")
        width, height = struct.unpack_from("<HH", data, 26)
        width, height = width & 0x3FFF, height & 0x3FFF
    elif kind == b"VP8L":
        if data[20] != 0x2F:
            raise CorruptImageError("garbled WebP header (no VP8L signature)")
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        alpha = bool(bits >> 28 & 1)
    elif kind == b"VP8X":
        flags = data[20]
        w3, h3 = data[24:27], data[27:30]
        if len(h3) < 3:
            raise struct.error("header runs past the end")
        width = int.from_bytes(w3, "little") + 1
        height = int.from_bytes(h3, "little") + 1
        alpha = bool(flags & 0x10)
        if flags & 0x08:  # an EXIF chunk follows the image data
            orientation = _webp_orientation(data)
    else:
        raise CorruptImageError(f"unknown WebP chunk {kind!r}")
    _valid_size("WebP", height, width)
    return _Header("WebP", height, width, orientation, unchanged=alpha, complete=complete)


def _webp_orientation(data: bytes) -> int:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        if kind == b"EXIF":
            return _exif_orientation(data, pos + 8, pos + 8 + length)
        pos += 8 + length + (length & 1)
    return 1


# The pixel data of a TIFF: strips (StripOffsets, StripByteCounts) or tiles (TileOffsets,
# TileByteCounts).
_TIFF_DATA = ((273, 279), (324, 325))


def _inspect_tiff(data: bytes) -> _Header:
    every = {tag for pair in _TIFF_DATA for tag in pair}
    tags = _tiff_ifd0(data, 0, len(data), {256, 257, 258, 274, 277, 338}, every)
    width, height = tags.get(256, 0), tags.get(257, 0)
    _valid_size("TIFF", height, width)
    samples = tags.get(277, 1)
    if samples > 4:  # (OpenCV reads grey, RGB and RGBA: it fails on these as on damage)
        raise CorruptImageError(
            f"TIFF of {samples} samples per pixel (a multispectral image, such as a satellite's "
            "bands?): only grey, RGB and RGBA images are read; write three of its bands out as "
            "an RGB image")
    orientation = tags.get(274, 1)
    bits = tags.get(258, 1)
    extra = tags.get(338, 0)
    # Associated alpha (1) is stored premultiplied; unassociated (2) 8-bit alpha comes out
    # premultiplied too, because OpenCV reads it through libtiff's RGBA interface.
    premultiplied = extra == 1 or (extra == 2 and bits == 8)
    complete = None
    for offsets, counts in _TIFF_DATA:
        ends = [o + n for o, n in zip(tags.get(offsets, ()), tags.get(counts, ()), strict=False)]
        if ends and max(ends) > len(data):
            complete = "truncated TIFF (its pixel data runs past the end of the file)"
    # OpenCV's TIFF decoder applies orientation itself, whatever the flags.
    return _Header("TIFF", height, width, orientation if 1 <= orientation <= 8 else 1,
                   orient_here=False, unchanged=True, premultiplied=premultiplied,
                   complete=complete)


def _exif_orientation(data: bytes, start: int, stop: int) -> int:
    """The orientation tag of a TIFF-structured EXIF block at data[start:stop]; 1 if none."""
    if data.startswith(b"Exif\x00\x00", start):  # some writers keep JPEG's APP1 prefix
        start += 6
    try:
        value = _tiff_ifd0(data, start, stop, {274}).get(274, 1)
    except struct.error:
        return 1
    return value if 1 <= value <= 8 else 1


_TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4)}  # BYTE, SHORT, LONG


def _tiff_ifd0(data: bytes, start: int, stop: int, wanted: set[int],
               every: set[int] = frozenset()) -> dict:
    """First value of each wanted tag in the first IFD of the TIFF structure at data[start:],
    and all the values (a tuple) of each tag in ``every``."""
    order = data[start : start + 2]
    if order == b"II":
        prefix = "<"
    elif order == b"MM":
        prefix = ">"
    else:
        raise struct.error("no TIFF byte order")
    magic, offset = struct.unpack_from(prefix + "HI", data, start + 2)
    if magic != 42:
        raise struct.error("not TIFF")
    ifd = start + offset
    if ifd + 2 > stop:
        raise struct.error("IFD past the end")
    (count,) = struct.unpack_from(prefix + "H", data, ifd)
    found: dict[int, int] = {}
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > stop:
            break
        tag, kind, n = struct.unpack_from(prefix + "HHI", data, entry)
        if (tag not in wanted and tag not in every) or n < 1 or kind not in _TIFF_TYPES:
            continue
        code, itemsize = _TIFF_TYPES[kind]
        at = entry + 8  # the values themselves when they fit in four bytes, else their offset
        if n * itemsize > 4:
            at = start + struct.unpack_from(prefix + "I", data, at)[0]
        if tag in every:
            found[tag] = struct.unpack_from(f"{prefix}{n}{code}", data, at)
        else:
            (found[tag],) = struct.unpack_from(prefix + code, data, at)
    return found
