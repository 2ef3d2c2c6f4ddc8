"""Decoding every kind of image the dumps hold, refusing broken ones, and resizing exactly."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage
from helpers import area_reference, smooth_image, write_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsprep import images
from dsprep.errors import CorruptImageError, ImageTooLargeError, UsageError

PHOTOS = Path(skimage.__file__).parent / "data"


def encode(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


def photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photographs, as RGB."""
    return cv2.cvtColor(cv2.imread(str(PHOTOS / name)), cv2.COLOR_BGR2RGB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def white_composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight alpha over white, in float64, rounded: the reference for every alpha case."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """What an EXIF orientation tag asks a viewer to do, spelled out with numpy."""
    return {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }[orientation](pixels)


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any pixel decoding fail the test: for checks that must stop at the header."""

    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(cv2, "imdecode", refuse)


# --- probe ----------------------------------------------------------------------------------

RGB = smooth_image(37, 53, seed=3)
PIC = Image.fromarray(RGB)
RGBA = np.dstack([RGB, np.linspace(0, 255, 53).astype(np.uint8)[None].repeat(37, 0)])

FORMATS = {
    "jpeg": lambda: encode(PIC, "JPEG"),
    "jpeg-progressive": lambda: encode(PIC, "JPEG", progressive=True),
    "jpeg-gray": lambda: encode(PIC.convert("L"), "JPEG"),
    "jpeg-cmyk": lambda: encode(PIC.convert("CMYK"), "JPEG"),
    "png": lambda: encode(PIC, "PNG"),
    "png-gray": lambda: encode(PIC.convert("L"), "PNG"),
    "png-palette": lambda: encode(PIC.convert("P"), "PNG"),
    "png-rgba": lambda: encode(Image.fromarray(RGBA, "RGBA"), "PNG"),
    "png-16": lambda: png16(RGB.astype(np.uint16) * 257),
    "gif": lambda: encode(PIC.convert("P"), "GIF"),
    "bmp": lambda: encode(PIC, "BMP"),
    "bmp-top-down": lambda: _top_down_bmp(encode(PIC, "BMP")),
    "webp-lossy": lambda: encode(PIC, "WEBP"),
    "webp-lossless": lambda: encode(PIC, "WEBP", lossless=True),
    "webp-extended": lambda: encode(Image.fromarray(RGBA, "RGBA"), "WEBP", exif=exif(1)),
    "tiff": lambda: encode(PIC, "TIFF"),
    "tiff-opencv": lambda: cv2.imencode(".tiff", RGB)[1].tobytes(),
    "tiff-big-endian": lambda: big_endian_tiff(RGB),
}


def png16(rgb: np.ndarray) -> bytes:
    """A 16-bit PNG of an RGB uint16 array (OpenCV writes 16-bit PNGs; Pillow does not)."""
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def _top_down_bmp(data: bytes) -> bytes:
    """The same BMP with a negative height (rows stored top-down), as some writers do."""
    height = struct.unpack_from("<i", data, 22)[0]
    rows = data[54:]
    stride = len(rows) // height
    flipped = b"".join(rows[i * stride : (i + 1) * stride] for i in reversed(range(height)))
    return data[:22] + struct.pack("<i", -height) + data[26:54] + flipped


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_probe_gives_the_true_size_from_the_header_alone(kind, monkeypatch):
    data = FORMATS[kind]()
    decoded = images.decode(data)
    assert decoded.shape == (37, 53, 3)
    assert decoded.dtype == np.uint8
    monkeypatch.setattr(cv2, "imdecode", None)  # a decode attempt would raise TypeError
    assert images.probe(data) == (37, 53)


@pytest.mark.parametrize("kind", ["png", "bmp", "bmp-top-down", "webp-lossless", "tiff",
                                  "tiff-big-endian"])
def test_lossless_formats_decode_to_the_same_pixels(kind):
    np.testing.assert_array_equal(images.decode(FORMATS[kind]()), RGB)


def big_endian_tiff(rgb: np.ndarray, orientation: int = 1) -> bytes:
    """An uncompressed Motorola-order (MM) RGB TIFF, built by hand: Pillow writes only II."""
    height, width = rgb.shape[:2]
    count = 10
    ifd_size = 2 + 12 * count + 4
    bits_at = 8 + ifd_size
    pixels_at = bits_at + 6

    def short(tag, value):
        return struct.pack(">HHIHH", tag, 3, 1, value, 0)

    def long(tag, value):
        return struct.pack(">HHII", tag, 4, 1, value)

    entries = [
        short(256, width), short(257, height), struct.pack(">HHII", 258, 3, 3, bits_at),
        short(259, 1), short(262, 2), long(273, pixels_at), short(274, orientation),
        short(277, 3), short(278, height), long(279, rgb.nbytes),
    ]
    ifd = struct.pack(">H", count) + b"".join(entries) + struct.pack(">I", 0)
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">HHH", 8, 8, 8) + rgb.tobytes()


@pytest.mark.parametrize("orientation", [1, 6])
def test_big_endian_tiff(orientation):
    data = big_endian_tiff(RGB, orientation)
    expected = upright(RGB, orientation)
    assert images.probe(data) == expected.shape[:2]
    np.testing.assert_array_equal(images.decode(data), expected)


def test_probe_falls_back_to_decoding_other_formats():
    data = cv2.imencode(".ppm", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert images.probe(data) == (37, 53)
    np.testing.assert_array_equal(images.decode(data), RGB)


@pytest.mark.parametrize(("magic", "maxval", "values"), [
    (b"P5", 15, [0, 7, 15]), (b"P5", 1023, [0, 511, 1023]), (b"P2", 4095, [1, 2048, 4095]),
    (b"P6", 1000, [0, 500, 999, 1000, 700, 1]), (b"P5", 255, [0, 128, 255]),
    # Text files of a small range, which OpenCV scales itself: not scaled twice.
    (b"P2", 15, [0, 5, 15]), (b"P3", 7, [0, 3, 7, 7, 0, 1])])
def test_pnm_samples_are_scaled_by_their_maxval(magic, maxval, values):
    # 4095 is white in a 12-bit PGM: it came out as 16 (taken as 16-bit) and 15-level
    # images were left at 0..15.
    width = len(values) // (3 if magic in (b"P3", b"P6") else 1)
    header = magic + f"\n# scan\n{width} 1\n{maxval}\n".encode()
    if magic in (b"P2", b"P3"):
        body = " ".join(map(str, values)).encode() + b"\n"
    else:
        body = np.array(values, ">u2" if maxval > 255 else np.uint8).tobytes()
    got = images.decode(header + body)
    # Rounded half up, as 16-bit samples are.
    expected = np.array([int(Fraction(v * 255, maxval) + Fraction(1, 2)) for v in values],
                        np.uint8)
    expected = expected.reshape(1, width, -1) * np.ones((1, 1, 3), np.uint8)
    np.testing.assert_array_equal(got, expected)


def avif_or_skip() -> None:
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow writes no AVIF (it does from 11.3 on), so no AVIF test file "
                    "can be made")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_avif_is_turned_upright_by_its_rotation_and_mirror(orientation):
    # An AVIF keeps its orientation in irot and imir properties (Pillow turns an EXIF tag
    # into them), which OpenCV does not apply: portrait phone photos lay on their side.
    avif_or_skip()
    picture = Image.fromarray(smooth_image(40, 60, seed=4))
    plain = images.decode(encode(picture, "AVIF", quality=90))
    data = encode(picture, "AVIF", quality=90, exif=exif(orientation))
    expected = upright(plain, orientation)
    np.testing.assert_array_equal(images.decode(data), expected)
    assert images.probe(data) == expected.shape[:2]
    np.testing.assert_array_equal(images.load(data, (30, 30), mode="stretch"),
                                  images.resize(expected, (30, 30), mode="stretch"))


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _avif_header(ipco: bytes, ipma: bytes, tail: bytes = b"") -> bytes:
    meta = (b"\0\0\0\0" + _box(b"pitm", b"\0\0\0\0" + struct.pack(">H", 1))
            + _box(b"iprp", _box(b"ipco", ipco) + _box(b"ipma", ipma)))
    return _box(b"ftyp", b"avif\0\0\0\0avifmif1") + _box(b"meta", meta) + tail


def test_avif_properties_are_the_primary_images_and_hostile_counts_cost_nothing(monkeypatch):
    irot, imir = _box(b"irot", b"\x01"), _box(b"imir", b"\x01")
    # Item 1 (the primary) has property 2, item 2 property 1.
    ipma = b"\0\0\0\0" + struct.pack(">I", 2) + b"\0\x01\x01\x02" + b"\0\x02\x01\x01"
    props = images._avif_properties(_avif_header(irot + imir, ipma))
    assert props.transforms == (("mirror", 1),)
    # A primary image the table leaves out takes no other item's rotation.
    ipma = b"\0\0\0\0" + struct.pack(">I", 1) + b"\0\x02\x01\x01"
    assert images._avif_properties(_avif_header(irot, ipma)).transforms == ()
    # A count of 2**32 - 1 entries over an empty table, before 8 MB of image data: the walk
    # of the table stops where the box does (it went through the whole file, for seconds).
    calls = []

    class Counting:
        error = struct.error

        @staticmethod
        def unpack_from(*args):
            calls.append(1)
            return struct.unpack_from(*args)

    hostile = _avif_header(b"", b"\0\0\0\0\xff\xff\xff\xff", _box(b"mdat", bytes(8 << 20)))
    monkeypatch.setattr(images, "struct", Counting)
    assert images._avif_properties(hostile).transforms == ()
    assert len(calls) < 50


@pytest.mark.parametrize("depth", [10, 12])
def test_avif_of_10_and_12_bits_is_scaled_by_its_bit_depth(depth):
    top = (1 << depth) - 1
    pixels = np.zeros((16, 16, 3), np.uint16)
    pixels[..., 2] = top  # red, in OpenCV's BGR
    pixels[8:, :, 1] = top // 2
    ok, buf = cv2.imencode(".avif", pixels, [cv2.IMWRITE_AVIF_DEPTH, depth,
                                             cv2.IMWRITE_AVIF_QUALITY, 100])
    assert ok
    got = images.decode(buf.tobytes()).astype(int)
    # Before, 16-bit words were taken as full-range: full red came out as 4 (10 bits).
    assert np.abs(got[:8] - [255, 0, 0]).max() <= 3
    assert np.abs(got[8:] - [255, 128, 0]).max() <= 3


@pytest.mark.parametrize("fmt", ["AVIF", "JPEG2000"])
def test_transparency_in_avif_and_jpeg2000_is_composited_on_white(fmt):
    if fmt == "AVIF":
        avif_or_skip()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 4:, 3] = 255
    got = images.decode(encode(Image.fromarray(rgba, "RGBA"), fmt)).astype(int)
    assert np.abs(got[:, :4] - 255).max() <= 2  # transparent: white (it came out red)
    assert np.abs(got[:, 4:] - [255, 0, 0]).max() <= 3


# --- orientation ----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_lossless_formats_are_turned_upright(fmt, orientation):
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(PIC, fmt, exif=exif(orientation), **options)
    expected = upright(RGB, orientation)
    np.testing.assert_array_equal(images.decode(data), expected)
    assert images.probe(data) == expected.shape[:2]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_is_turned_upright(orientation):
    source = smooth_image(48, 80, seed=orientation)
    data = encode(Image.fromarray(source), "JPEG", quality=98, exif=exif(orientation))
    expected = upright(source, orientation)
    decoded = images.decode(data)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected).mean() < 2
    assert images.probe(data) == expected.shape[:2]


@pytest.mark.parametrize(("first", "second"), [(1, 6), (6, 1), (3, 8)])
def test_the_first_of_two_exif_blocks_gives_the_orientation(first, second):
    # As for libjpeg and Pillow: a second block (added by an editor) was taken when the first
    # said 1, so probe and decode turned the image where every viewer shows it upright.
    from PIL import ImageOps

    source = smooth_image(48, 80, seed=first)
    data = encode(Image.fromarray(source), "JPEG", quality=98, exif=exif(first))
    block = exif(second)
    assert block.startswith(b"Exif\x00\x00")
    app1 = data.index(b"\xff\xe1")
    end = app1 + 2 + int.from_bytes(data[app1 + 2:app1 + 4], "big")
    data = data[:end] + b"\xff\xe1" + (len(block) + 2).to_bytes(2, "big") + block + data[end:]
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    decoded = images.decode(data)
    assert decoded.shape == shown.shape == upright(source, first).shape
    assert np.abs(decoded.astype(int) - shown).mean() < 1
    assert images.probe(data) == shown.shape[:2]


@pytest.mark.parametrize("orientation", [2, 5, 7])
def test_big_endian_exif_in_a_jpeg(orientation):
    # Many cameras write Motorola-order EXIF; Pillow writes Intel order, so build it by hand.
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    jpeg = encode(PIC, "JPEG", quality=98)
    data = jpeg[:2] + app1 + jpeg[2:]
    expected = upright(images.decode(jpeg), orientation)
    np.testing.assert_array_equal(images.decode(data), expected)
    assert images.probe(data) == expected.shape[:2]
    # OpenCV's own reading of the tag (IMREAD_COLOR applies it) agrees.
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(images.decode(data), cv2.cvtColor(opencv, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_orientation_with_alpha_and_16_bits(orientation):
    # These go through IMREAD_UNCHANGED, where OpenCV itself ignores the orientation.
    rgba = encode(Image.fromarray(RGBA, "RGBA"), "PNG", exif=exif(orientation))
    expected = upright(white_composite(RGBA[..., :3], RGBA[..., 3]), orientation)
    np.testing.assert_array_equal(images.decode(rgba), expected)
    data = _png_with_exif(FORMATS["png-16"](), exif(orientation))
    np.testing.assert_array_equal(images.decode(data), upright(RGB, orientation))


def _png_with_exif(png: bytes, blob: bytes) -> bytes:
    """Insert an eXIf chunk right after IHDR (Pillow cannot save 16-bit RGB PNGs)."""
    blob = blob.removeprefix(b"Exif\x00\x00")  # the PNG chunk holds the bare TIFF structure
    chunk = struct.pack(">I", len(blob)) + b"eXIf" + blob
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png"])
def test_reduced_load_honours_orientation(name, orientation):
    # coffee is 400 x 600 (a multiple of 8); chelsea 300 x 451, so libjpeg's reduced sizes
    # round up and leave a partial last column, which a turn moves to the left or top.
    source = photo(name)
    data = encode(Image.fromarray(source), "JPEG", quality=95, exif=exif(orientation))
    # Sizes where chelsea turned 2, 3, 4, 6, 7 or 8 fell to 30.6-34.5 dB while the partial
    # column moved with the turn.
    for size in ((40, 60), (26, 26), (119, 119)):
        for mode in ("crop", "pad"):
            reference = area_reference(data, size, mode)  # OpenCV's imdecode orients it
            reduced = images.load(data, size, mode)
            assert reduced.shape == (*size, 3)
            assert psnr(reduced, reference) >= 35, (size, mode)


# --- colour modes and bit depths ------------------------------------------------------------


def test_grayscale_becomes_three_equal_channels():
    gray = RGB[..., 1]
    decoded = images.decode(encode(Image.fromarray(gray), "PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], gray)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("band", [None, 5 * 53 + 7])  # one band; bands of 5 rows, then 2
def test_alpha_is_composited_on_white(fmt, band, monkeypatch):
    if band:
        monkeypatch.setattr(images, "_BAND_PIXELS", band)
    options = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    data = encode(Image.fromarray(RGBA, "RGBA"), fmt, **options)
    np.testing.assert_array_equal(images.decode(data), white_composite(RGBA[..., :3], RGBA[..., 3]))


def test_gray_with_alpha_is_composited_on_white():
    gray, alpha = RGB[..., 0], RGBA[..., 3]
    data = encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG")
    expected = white_composite(np.dstack([gray] * 3), alpha)
    np.testing.assert_array_equal(images.decode(data), expected)


def test_tiff_alpha_is_composited_on_white():
    data = encode(Image.fromarray(RGBA, "RGBA"), "TIFF")
    decoded = images.decode(data).astype(int)
    expected = white_composite(RGBA[..., :3], RGBA[..., 3]).astype(int)
    assert np.abs(decoded - expected).max() <= 1  # OpenCV premultiplies on the way


def test_transparent_palette_and_colour_key_become_white():
    palette = PIC.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    index = np.asarray(palette)
    data = encode(palette, "PNG", transparency=int(index[0, 0]))
    decoded = images.decode(data)
    expected = np.asarray(palette.convert("RGB")).copy()
    expected[index == index[0, 0]] = 255
    np.testing.assert_array_equal(decoded, expected)

    gray = RGB[..., 2]
    key = int(gray[5, 5])
    decoded = images.decode(encode(Image.fromarray(gray), "PNG", transparency=key))
    expected = np.dstack([np.where(gray == key, 255, gray)] * 3)
    np.testing.assert_array_equal(decoded, expected)


def test_16_bit_is_scaled_by_257_and_rounded():
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    gray = images.decode(cv2.imencode(".png", ramp)[1].tobytes())
    np.testing.assert_array_equal(gray, np.dstack([expected] * 3))
    colour = np.dstack([ramp, ramp[::-1], ramp.T])
    np.testing.assert_array_equal(images.decode(png16(colour)), np.rint(colour / 257.0))


def test_compositing_a_large_image_takes_little_more_memory_than_the_image():
    import tracemalloc

    side = 2048
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[::7, :, 3] = 200
    data = cv2.imencode(".png", rgba)[1].tobytes()
    tracemalloc.start()
    try:
        decoded = images.decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded.shape == (side, side, 3) and decoded[1, 0, 0] == 255
    # The decoded RGBA (4 bytes a pixel), its channel-swapped copy (4) and the result (3), and
    # a band's temporaries: not several times the image in 32-bit temporaries (52 a pixel).
    assert peak / side**2 < 16


@pytest.mark.parametrize("band", [None, 2 * 53])
def test_16_bit_alpha_is_composited_on_white(band, monkeypatch):
    if band:
        monkeypatch.setattr(images, "_BAND_PIXELS", band)
    rgb = RGB.astype(np.uint16) * 257 + 100
    alpha = RGBA[..., 3].astype(np.uint16) * 257
    bgra = np.dstack([rgb[..., ::-1], alpha])
    decoded = images.decode(cv2.imencode(".png", bgra)[1].tobytes())
    a = alpha / 65535.0
    expected = np.rint((rgb * a[..., None] + 65535.0 * (1 - a[..., None])) / 257.0)
    assert np.abs(decoded.astype(int) - expected).max() <= 1


def test_cmyk_jpeg_is_converted():
    decoded = images.decode(encode(PIC.convert("CMYK"), "JPEG", quality=100))
    assert np.abs(decoded.astype(int) - RGB).max() <= 3

    # With a real black channel: R = (255 - C)(255 - K) / 255, and so on.
    rng = np.random.default_rng(5)
    cmyk = cv2.resize(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), (64, 48),
                      interpolation=cv2.INTER_CUBIC)
    decoded = images.decode(encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100))
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    expected = (255 - c) * (255 - k) / 255
    assert np.abs(decoded - expected).max() <= 4
    assert np.abs(decoded - expected).mean() <= 1.5


def test_palette_png_is_expanded():
    palette = PIC.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    decoded = images.decode(encode(palette, "PNG"))
    np.testing.assert_array_equal(decoded, np.asarray(palette.convert("RGB")))


def test_animated_gif_gives_its_first_frame():
    frames = [Image.fromarray(smooth_image(37, 53, seed=s)).quantize(64) for s in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    np.testing.assert_array_equal(images.decode(data), np.asarray(frames[0].convert("RGB")))


def test_animated_webp_gives_its_first_frame():
    frames = [Image.fromarray(smooth_image(37, 53, seed=s)) for s in range(3)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert images.probe(data) == (37, 53)
    np.testing.assert_array_equal(images.decode(data), np.asarray(frames[0]))


def test_a_gif_whose_first_frame_overflows_its_screen_is_refused_from_its_header():
    # OpenCV cannot decode it: the header check kept it, and only the decoding failed, later
    # and vaguely ("could not be decoded").
    data = bytearray(encode(Image.fromarray(smooth_image(20, 20, seed=6)), "GIF"))
    data[6:10] = struct.pack("<HH", 10, 10)
    data = bytes(data)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None
    for check in (lambda d: images.probe(d, verify=True), images.decode):
        with pytest.raises(CorruptImageError, match=r"damaged GIF: its first frame \(20x20 at "
                                                    r"0,0\) does not fit its 10x10 screen"):
            check(data)


def test_transparent_gif_pixels_become_white():
    frame = PIC.quantize(16)
    index = np.asarray(frame)
    decoded = images.decode(encode(frame, "GIF", transparency=0))
    expected = np.asarray(frame.convert("RGB")).copy()
    expected[index == 0] = 255
    np.testing.assert_array_equal(decoded, expected)


# --- refusing what is not a whole image -----------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims another size: a decompression bomb's calling card."""
    data = bytearray(FORMATS["png"]())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_a_bomb_is_refused_before_decoding(no_decoding):
    bomb = _png_claiming(30000, 4000)
    with pytest.raises(ImageTooLargeError, match=r"30000x4000 is over the 89,478,485-pixel"):
        images.decode(bomb)
    with pytest.raises(ImageTooLargeError):
        images.probe(bomb)
    with pytest.raises(ImageTooLargeError):
        images.load(bomb, 64)


def test_a_bomb_jpeg_header_is_refused_before_decoding(no_decoding):
    data = bytearray(FORMATS["jpeg"]())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(ImageTooLargeError, match="60000x60000"):
        images.decode(bytes(data))


def test_the_pixel_limit_is_a_parameter():
    data = encode(Image.fromarray(smooth_image(120, 100)), "PNG")
    with pytest.raises(ImageTooLargeError, match="100x120 is over the 10,000-pixel limit"):
        images.decode(data, max_pixels=10_000)
    assert images.decode(data, max_pixels=12_000).shape == (120, 100, 3)
    assert images.decode(data, max_pixels=None).shape == (120, 100, 3)
    assert issubclass(ImageTooLargeError, CorruptImageError)  # callers that skip bad files


def test_images_over_opencvs_own_limits_are_too_large_not_a_crash():
    # Within the pixel limit, but wider than OpenCV decodes (2**20): it raises, not None.
    ok, wide = cv2.imencode(".bmp", np.zeros((1, 1_100_000, 3), np.uint8))
    assert ok
    for call in (images.decode, images.probe, lambda d: images.load(d, 32)):
        with pytest.raises(ImageTooLargeError, match="larger than OpenCV decodes"):
            call(wide.tobytes())
    # With no pixel limit of dsprep's, a header over OpenCV's 2**30 pixels.
    with pytest.raises(ImageTooLargeError, match="larger than OpenCV decodes"):
        images.decode(_png_claiming(40000, 30000), max_pixels=None)


def test_opencvs_limits_are_read_as_opencv_reads_them(monkeypatch):
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(ImageTooLargeError, match=r"1000x1200 is larger than OpenCV decodes "
                       r"\(at most 1,048,576 pixels wide, 1,048,576 tall and 1,000,000 in all"):
        images.probe(_png_claiming(1000, 1200), max_pixels=None, verify=False)
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_WIDTH", "1KB")  # OpenCV's own suffixes
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_HEIGHT", "2MB")
    monkeypatch.delenv("OPENCV_IO_MAX_IMAGE_PIXELS")
    with pytest.raises(ImageTooLargeError, match=r"at most 1,024 pixels wide, 2,097,152 tall"):
        images.probe(_png_claiming(1500, 10), max_pixels=None, verify=False)
    assert images.probe(_png_claiming(1000, 10), max_pixels=None, verify=False) == (10, 1000)


@pytest.mark.parametrize("cut", [0.5, 0.9, -2])
def test_truncated_jpeg_is_refused(cut):
    data = encode(Image.fromarray(smooth_image(150, 200)), "JPEG")
    end = int(len(data) * cut) if cut > 0 else len(data) + cut
    for function in (images.decode, images.probe):
        with pytest.raises(CorruptImageError, match=r"truncated JPEG \(no end-of-image marker\)"):
            function(data[:end])
    # A download cut short and padded with zeros is no better.
    padded = data[:end] + bytes(len(data) - end)
    with pytest.raises(CorruptImageError, match="truncated JPEG"):
        images.decode(padded)


def damaged_in_its_data(data: bytes, early: bool = False, last_scan: bool = False) -> bytes:
    """A JPEG whose compressed data has a run of marker bytes in the middle (end marker kept):
    libjpeg stops there, warns on stderr and fills the rest of the image with grey. ``early``
    puts the run just after the first scan's header, ``last_scan`` counts from the last."""
    damaged = bytearray(data)
    sos = damaged.rfind(b"\xff\xda") if last_scan else damaged.find(b"\xff\xda")
    at = sos + 40 if early else (sos + len(damaged)) // 2
    damaged[at:at + 64] = b"\xff" * 64
    return bytes(damaged)


def test_a_jpeg_damaged_inside_its_data_is_refused(capfd):
    data = encode(Image.fromarray(smooth_image(96, 128)), "JPEG")
    damaged = damaged_in_its_data(data)
    # What a plain decoder does with it: an image, half of it grey, and only a warning.
    plain = cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_COLOR_RGB)
    assert plain is not None and (plain[-1] == 128).all()
    assert "Corrupt JPEG data" in capfd.readouterr().err
    with pytest.raises(CorruptImageError,
                       match=r"JPEG data is damaged \(a stray marker.*filled the rest with grey"):
        images.decode(damaged)
    # reduced decoding (a large source for a small target) finds it too
    with pytest.raises(CorruptImageError, match="JPEG data is damaged"):
        images.load(damaged, (24, 32))
    # The undamaged file decodes as a plain decoder reads it.
    np.testing.assert_array_equal(images.decode(data), cv2.imdecode(
        np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB))


@pytest.mark.parametrize(("progressive", "restarts"), [(0, 0), (1, 0), (0, 2), (1, 1)])
def test_a_jpeg_with_a_real_grey_bottom_is_kept(progressive, restarts):
    image = smooth_image(64, 80)
    image[40:] = 128  # a mid-grey band, as some letterboxed images have
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive, cv2.IMWRITE_JPEG_RST_INTERVAL, restarts]
    data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)[1].tobytes()
    # the scans and restart markers asked for are there
    assert (b"\xff\xd0" in data) == bool(restarts)
    assert (data.count(b"\xff\xda") > 1) == bool(progressive)
    decoded = images.decode(data)
    assert (decoded[-1] == 128).all() and decoded.shape == (64, 80, 3)
    # ... and the same file damaged inside its first scan is refused
    with pytest.raises(CorruptImageError, match="JPEG data"):
        images.decode(damaged_in_its_data(data, early=True))


def test_damage_is_found_after_a_thumbnail_carried_in_the_header():
    # Cameras put a whole small JPEG (with its own scan and end marker) in the header: the
    # check must read the main image's scan, not the thumbnail's.
    image = smooth_image(64, 80)
    image[40:] = 128
    thumbnail = encode(Image.fromarray(smooth_image(8, 10)), "JPEG")
    data = encode(Image.fromarray(image), "JPEG")
    segment = b"\xff\xfe" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    with_thumbnail = data[:2] + segment + data[2:]
    np.testing.assert_array_equal(images.decode(with_thumbnail), images.decode(data))
    damaged = damaged_in_its_data(with_thumbnail, last_scan=True)
    assert damaged[:len(segment) + 2] == with_thumbnail[:len(segment) + 2]
    with pytest.raises(CorruptImageError, match="stray marker"):
        images.decode(damaged)


@pytest.mark.parametrize(("restarts", "marker"), [(0, b"\xff\xd3"), (2, b"\xff\xd6")])
def test_damage_that_forms_a_restart_marker_is_found(restarts, marker):
    # Restart markers belong in the data only with a restart interval, and in order.
    image = smooth_image(64, 80)
    image[40:] = 128
    params = [cv2.IMWRITE_JPEG_RST_INTERVAL, restarts]
    data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)[1].tobytes()
    assert (b"\xff\xdd" in data) == bool(restarts)
    damaged = bytearray(data)
    sos = damaged.find(b"\xff\xda")
    at = sos + 60
    damaged[at:at + 2] = marker
    decoded = cv2.imdecode(np.frombuffer(bytes(damaged), np.uint8), cv2.IMREAD_COLOR_RGB)
    assert (decoded[-1] == 128).all()
    with pytest.raises(CorruptImageError, match="stray marker"):
        images.decode(bytes(damaged))


def test_damage_that_forms_the_end_of_image_marker_is_found():
    # libjpeg ends the image at the first FF D9 and fills the rest with grey; the file's own
    # end marker, after the rest of the compressed data, looked like a whole file's.
    data = encode(Image.fromarray(smooth_image(120, 160)), "JPEG")
    damaged = bytearray(data)
    sos = damaged.find(b"\xff\xda")
    at = (sos + len(damaged)) // 2
    damaged[at:at + 2] = b"\xff\xd9"
    decoded = cv2.imdecode(np.frombuffer(bytes(damaged), np.uint8), cv2.IMREAD_COLOR_RGB)
    assert (decoded[-1] == 128).all()
    with pytest.raises(CorruptImageError, match=rf"stray marker at byte {at} "):
        images.decode(bytes(damaged))
    # Damage of many FF D9 pairs in a row.
    pairs = bytearray(data)
    pairs[at:at + 400] = b"\xff\xd9" * 200
    with pytest.raises(CorruptImageError, match=rf"stray marker at byte {at} "):
        images.decode(bytes(pairs))
    # The same in the first scan of a progressive JPEG, whose later scans bring their tables.
    progressive = bytearray(encode(Image.fromarray(smooth_image(120, 160)), "JPEG",
                                   progressive=True))
    assert progressive.count(b"\xff\xda") > 1
    at = progressive.find(b"\xff\xda") + 40
    progressive[at:at + 2] = b"\xff\xd9"
    with pytest.raises(CorruptImageError, match="stray marker"):
        images.decode(bytes(progressive))
    # A whole JPEG with a grey bottom and a second image appended (as MPO files carry) is kept.
    image = smooth_image(64, 80)
    image[40:] = 128
    grey = encode(Image.fromarray(image), "JPEG")
    appended = grey + encode(Image.fromarray(smooth_image(16, 20)), "JPEG")
    np.testing.assert_array_equal(images.decode(appended), images.decode(grey))
    # So is one with segments or fill bytes appended after its end, each closed by FF D9.
    for extra in (b"\xff\xe1\x00\x08Exif\x00\x00\xff\xd9", b"\xff\xfe\x00\x07hello\xff\xd9",
                  b"\xff\xff\xd9"):
        np.testing.assert_array_equal(images.decode(grey + extra), images.decode(grey))


def test_bytes_after_the_jpeg_end_marker_are_fine():
    data = FORMATS["jpeg"]()
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    np.testing.assert_array_equal(images.decode(data + b"\x00" * 64 + b"trailer"), expected)


@pytest.mark.parametrize(("before", "stray"), [(b"\xff\xdb", b"\x00\x00"),
                                              (b"\xff\xc4", b"\x0a"),
                                              (b"\xff\xda", b"\r\n\xff\x00")])
def test_stray_bytes_between_jpeg_segments_are_skipped_as_libjpeg_skips_them(before, stray):
    # libjpeg decodes such a file, with only "Corrupt JPEG data: N extraneous bytes before
    # marker": it was refused as a garbled header, in the split, the build and the generators.
    data = FORMATS["jpeg"]()
    at = data.index(before)
    damaged = data[:at] + stray + data[at:]
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    np.testing.assert_array_equal(images.decode(damaged), expected)
    assert images.probe(damaged) == expected.shape[:2]


@pytest.mark.parametrize("cut", [0.5, -12, -1])
def test_truncated_png_is_refused(cut):
    data = FORMATS["png"]()
    end = int(len(data) * cut) if cut > 0 else len(data) + cut
    with pytest.raises(CorruptImageError, match=r"truncated PNG"):
        images.decode(data[:end])


@pytest.mark.parametrize("options", [{}, {"compression": "tiff_lzw"}, {"compression": "raw",
                                                                    "rowsperstrip": 8}])
def test_a_truncated_tiff_is_found_from_its_header(options):
    data = encode(Image.fromarray(smooth_image(150, 200)), "TIFF", **options)
    assert images.probe(data, verify=True) == (150, 200)  # whole: fine
    assert images.probe(data + b"appended data", verify=True) == (150, 200)
    for end in (len(data) // 2, len(data) - 1):
        # Cut inside its pixel data, with its header (first, as written here) intact.
        with pytest.raises(CorruptImageError, match="truncated TIFF"):
            images.probe(data[:end], verify=True)
        with pytest.raises(CorruptImageError):
            images.decode(data[:end])


def _band_tiff(height: int, width: int, bands: int) -> bytes:
    """An uncompressed little-endian 16-bit TIFF of ``bands`` samples per pixel, by hand
    (EuroSAT's 13-band satellite images)."""
    pixels = np.arange(height * width * bands, dtype="<u2").tobytes()
    bits = struct.pack(f"<{bands}H", *[16] * bands)
    data_at, ifd_at = 8 + len(bits), 8 + len(bits) + len(pixels)
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, bands, 8), (259, 3, 1, 1),
            (262, 3, 1, 1), (273, 4, 1, data_at), (277, 3, 1, bands), (278, 3, 1, height),
            (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHIHH", t, kind, n, v, 0) if kind == 3 and n == 1
        else struct.pack("<HHII", t, kind, n, v) for t, kind, n, v in tags)
    return b"II*\x00" + struct.pack("<I", ifd_at) + bits + pixels + ifd + b"\0\0\0\0"


def test_a_multispectral_tiff_is_said_to_be_one_not_damaged():
    # EuroSATallBands: 13 bands passed the header check, then "could not be decoded
    # (corrupt or truncated)" at every build.
    data = _band_tiff(8, 6, 13)
    for read in (lambda: images.probe(data), lambda: images.decode(data)):
        with pytest.raises(CorruptImageError, match=r"TIFF of 13 samples per pixel \(a "
                           r"multispectral image.*write three of its bands out as an RGB"):
            read()


def test_truncated_webp_and_gif_are_refused():
    webp = FORMATS["webp-lossy"]()
    with pytest.raises(CorruptImageError, match="truncated WebP"):
        images.decode(webp[: len(webp) - 10])
    gif = FORMATS["gif"]()
    with pytest.raises(CorruptImageError):
        images.decode(gif[: len(gif) // 2])


@pytest.mark.parametrize("fmt", ["gif", "bmp"])
def test_a_truncated_gif_or_bmp_is_found_from_its_header(fmt):
    data = FORMATS[fmt]()
    assert images.probe(data, verify=True) == RGB.shape[:2]  # whole: fine
    if fmt == "gif":
        for tail in (b"\x00\x00", b"\n", b"\r\n", b"appended data" * 100):
            # after the trailer: fine
            assert images.probe(data + tail, verify=True) == RGB.shape[:2]
        frames = [Image.fromarray(smooth_image(37, 53, seed=s)).quantize(64) for s in range(3)]
        animated = encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                          duration=50, loop=0, transparency=0, comment=b"made here")
        assert images.probe(animated, verify=True) == (37, 53)
        with pytest.raises(CorruptImageError, match="truncated GIF"):
            images.probe(animated[: len(animated) * 2 // 3], verify=True)
    with pytest.raises(CorruptImageError, match=f"truncated {fmt.upper()}"):
        images.probe(data[: len(data) - 7], verify=True)


@pytest.mark.parametrize(("ext", "name"), [(".ppm", "PNM"), (".pgm", "PNM"),
                                           (".jp2", "JPEG 2000"), (".hdr", "Radiance HDR")])
def test_a_damaged_file_of_a_format_opencv_reads_is_named_by_its_format(ext, name):
    image = smooth_image(64, 48, seed=2)
    if ext == ".pgm":
        image = image[..., 0]
    elif ext == ".hdr":
        image = image.astype(np.float32) / 255
    ok, buf = cv2.imencode(ext, image)
    assert ok
    data = buf.tobytes()
    assert images.decode(data).shape == (64, 48, 3)  # whole: fine
    for cut in (data[: len(data) // 2], data[:-5]):
        with pytest.raises(CorruptImageError, match=f"^{name}.* could not be decoded"):
            images.decode(cut)


def test_cut_inside_the_header():
    data = FORMATS["jpeg"]()
    for end in (3, 20, 100):
        with pytest.raises(CorruptImageError, match="JPEG"):
            images.probe(data[:end])
    with pytest.raises(CorruptImageError, match="PNG"):
        images.probe(FORMATS["png"]()[:20])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<html><body>404 Not Found</body></html>\n", "text file"),
        (bytes(range(256)) * 4, "not an image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x13" * 50, "garbled JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDX" + bytes(40), "garbled PNG"),
    ],
)
def test_not_an_image(data, reason):
    for function in (images.decode, images.probe):
        with pytest.raises(CorruptImageError, match=reason):
            function(data)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "cat.1.jpg"
    path.write_text("this is a note, not a picture\n")
    with pytest.raises(CorruptImageError, match="text file, not an image"):
        images.read_image(path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty file"):
        images.read_image(tmp_path / "empty.jpg")


def test_read_image_reads_files(tmp_path):
    path = write_image(tmp_path / "a.png", RGB)
    np.testing.assert_array_equal(images.read_image(path), RGB)
    with pytest.raises(ImageTooLargeError):
        images.read_image(path, max_pixels=100)


# --- sizes and resizing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [(256, (256, 256)), ("256", (256, 256)), ("256x192", (256, 192)), ("64X32", (64, 32)),
     ((10, 20), (10, 20)), (np.int64(7), (7, 7))],
)
def test_parse_size(size, expected):
    assert images.parse_size(size) == expected


@pytest.mark.parametrize("size", [0, -5, "0", "x", "2x3x4", "", "10x0", (0, 5), (1.5, 2), True])
def test_parse_size_refuses_nonsense(size):
    with pytest.raises(UsageError, match="size"):
        images.parse_size(size)


def test_resize_refuses_unknown_options():
    with pytest.raises(UsageError, match="resize mode 'zoom'"):
        images.resize(RGB, (8, 8), "zoom")
    with pytest.raises(UsageError, match="interpolation 'bilinear'"):
        images.resize(RGB, (8, 8), interpolation="bilinear")


def test_crop_is_the_book_aspect_aware_resize():
    source = smooth_image(100, 200, seed=9)
    # Shorter side 100 -> 50 gives 50 x 100; the centre 50 columns start at 25.
    expected = cv2.resize(source, (100, 50), interpolation=cv2.INTER_AREA)[:, 25:75]
    np.testing.assert_array_equal(images.resize(source, (50, 50)), expected)
    # Enlarging uses cubic: 20 x 30 -> 40 x 60, then the centre 40 columns.
    small = smooth_image(20, 30, seed=2)
    expected = cv2.resize(small, (60, 40), interpolation=cv2.INTER_CUBIC)[:, 10:50]
    np.testing.assert_array_equal(images.resize(small, (40, 40)), expected)


def test_pad_letterboxes_on_black():
    source = smooth_image(50, 100, seed=4)
    out = images.resize(source, (60, 60), "pad")
    expected = cv2.resize(source, (60, 30), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out[15:45], expected)
    assert not out[:15].any() and not out[45:].any()


def test_stretch_and_named_interpolation():
    source = smooth_image(50, 100, seed=4)
    expected = cv2.resize(source, (30, 40), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(images.resize(source, (40, 30), "stretch", "nearest"), expected)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 300), st.integers(1, 300), st.integers(1, 300), st.integers(1, 300),
    st.sampled_from(images.RESIZE_MODES),
)
def test_resize_always_gives_the_requested_size(h, w, height, width, mode):
    source = np.full((h, w, 3), 200, np.uint8)
    out = images.resize(source, (height, width), mode)
    assert out.shape == (height, width, 3)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    if mode == "crop":
        assert (out == 200).all()  # the crop never reaches outside the scaled picture
    elif mode == "pad":
        # The picture fills one side completely and is centred on the other.
        filled = np.argwhere(out[..., 0] == 200)
        rows = filled[:, 0].max() - filled[:, 0].min() + 1
        cols = filled[:, 1].max() - filled[:, 1].min() + 1
        assert rows == height or cols == width
        assert abs(filled[:, 0].min() - (height - filled[:, 0].max() - 1)) <= 1
        assert abs(filled[:, 1].min() - (width - filled[:, 1].max() - 1)) <= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 8))
def test_crop_to_an_exact_divisor_is_a_centred_box_average(h, w, k):
    # Shrinking by an integer k is a k x k box average; the crop is the centre of that.
    rng = np.random.default_rng(h * 100 + w)
    source = rng.integers(0, 256, (h * k, (w + 2) * k, 3), dtype=np.uint8)
    out = images.resize(source, (h, w))
    boxes = source.reshape(h, k, w + 2, k, 3).mean(axis=(1, 3))
    expected = np.rint(boxes[:, 1 : 1 + w])
    assert np.abs(out - expected).max() <= 1


@pytest.mark.parametrize("shape", [(1200, 4), (3, 1500)])
def test_a_banner_is_cut_before_it_is_scaled(shape, monkeypatch):
    # Scaled whole, a 1x12000 banner cropped to 256x256 would first become 256x3,072,000.
    h, w = shape
    ramp = np.linspace(0, 255, max(h, w))
    source = np.empty((h, w, 3), np.uint8)
    source[...] = np.rint(ramp[:, None, None] if h > w else ramp[None, :, None])
    sizes = []
    real = cv2.resize

    def resize(src, dsize, *args, **kwargs):
        result = real(src, dsize, *args, **kwargs)
        sizes.append(result.shape[0] * result.shape[1])
        return result

    monkeypatch.setattr(cv2, "resize", resize)
    out = images.resize(source, (32, 32))
    assert out.shape == (32, 32, 3)
    assert max(sizes) <= images.CROP_FIRST_RATIO * 32 * 32
    # Close to the centre of the whole image scaled up (a smooth ramp, so edges matter little).
    scale = 32 / min(h, w)
    whole = real(source, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    top, left = (whole.shape[0] - 32) // 2, (whole.shape[1] - 32) // 2
    expected = whole[top : top + 32, left : left + 32].astype(int)
    assert np.abs(out.astype(int) - expected).max() <= 2


def test_resize_of_the_right_size_is_unchanged():
    np.testing.assert_array_equal(images.resize(RGB, (37, 53)), RGB)


# --- load: the hot path ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", images.RESIZE_MODES)
def test_exact_load_is_decode_then_resize(mode):
    # Against OpenCV's full decode and resize written out in the tests (area_reference).
    data = FORMATS["jpeg"]()
    np.testing.assert_array_equal(images.load(data, (20, 30), mode, exact=True),
                                  area_reference(data, (20, 30), mode))
    composite = encode(Image.fromarray(white_composite(RGBA[..., :3], RGBA[..., 3])), "PNG")
    np.testing.assert_array_equal(images.load(FORMATS["png-rgba"](), (20, 30), mode),
                                  area_reference(composite, (20, 30), mode))


def _flags_used(monkeypatch) -> list[int]:
    seen: list[int] = []
    real = cv2.imdecode

    def spy(buffer, flags):
        seen.append(flags)
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return seen


REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


@pytest.mark.parametrize(
    ("name", "size", "mode", "factor"),
    [
        ("astronaut.png", (200, 200), "crop", 2),   # 512 / 200 = 2.56
        ("coffee.png", (100, 130), "crop", 2),      # 400 x 600 -> 100 x 150, then crop
        ("chelsea.png", (40, 60), "crop", 4),       # 300 x 451 -> 40 x 60: 7.5
        ("astronaut.png", (32, 32), "crop", 8),     # 16x
        ("coffee.png", (50, 50), "stretch", 4),     # the smaller ratio 400 / 50 = 8
        ("coffee.png", (30, 120), "pad", 4),        # 400 x 600 -> 30 x 45: 13.3
        ("chelsea.png", (60, 60), "pad", 4),        # 300 x 451 -> 40 x 60: 7.5
        # Odd sizes: libjpeg rounds 451 / 2 up, which must not shift the crop or the padding.
        ("chelsea.png", (76, 76), "crop", 2),
        ("coffee.png", (23, 23), "pad", 8),
    ],
)
def test_reduced_decoding_stays_close_to_the_full_decode(monkeypatch, name, size, mode, factor):
    data = encode(Image.fromarray(photo(name)), "JPEG", quality=90)
    exact = area_reference(data, size, mode)
    seen = _flags_used(monkeypatch)
    fast = images.load(data, size, mode)
    assert fast.shape == exact.shape == size + (3,)
    assert seen and seen[-1] & REDUCED[factor] == REDUCED[factor]
    assert psnr(fast, exact) >= 35


def test_reduced_decoding_is_not_used_when_it_would_cost_quality(monkeypatch):
    # The Kaggle case: 500 x 375 to 256 is under 2x, so the full decode is the only choice.
    data = encode(Image.fromarray(smooth_image(375, 500)), "JPEG")
    seen = _flags_used(monkeypatch)
    images.load(data, 256)
    images.load(data, 100, exact=True)
    images.load(data, 100, interpolation="cubic")
    assert all(flags & 0x70 == 0 for flags in seen)
    images.load(data, 100)
    assert seen[-1] & 0x70 == REDUCED[2]


def test_reduced_decoding_over_many_target_sizes():
    # An odd-sized photo (300 x 451) at every size from 20 to 125, square and 2:3.
    data = encode(Image.fromarray(photo("chelsea.png")), "JPEG", quality=90)
    worst = float("inf")
    for side in range(20, 126, 3):
        for size in ((side, side), (side, side * 3 // 2)):
            for mode in ("crop", "pad"):
                exact = area_reference(data, size, mode)
                worst = min(worst, psnr(images.load(data, size, mode), exact))
    assert worst >= 35


@pytest.mark.parametrize("mode", ["crop", "stretch", "pad"])
def test_load_and_resize_write_into_a_given_buffer(mode):
    data = encode(Image.fromarray(photo("chelsea.png")), "JPEG", quality=90)
    for size in ((40, 60), (76, 76), (300, 451)):
        expected = images.load(data, size, mode)
        block = np.full((2, *size, 3), 7, np.uint8)
        result = images.load(data, size, mode, out=block[1])
        assert np.shares_memory(result, block[1])
        np.testing.assert_array_equal(block[1], expected)
        assert (block[0] == 7).all()  # nothing written outside the slot
        block[1] = 7
        images.resize(images.decode(data), size, mode, out=block[1])
        np.testing.assert_array_equal(block[1], images.resize(images.decode(data), size, mode))


def test_out_buffer_of_the_wrong_shape_or_type_is_refused():
    data = encode(Image.fromarray(smooth_image(30, 40)), "PNG")
    for bad in (np.empty((20, 20, 3), np.float32), np.empty((21, 20, 3), np.uint8),
                np.empty((20, 40, 3), np.uint8)[:, ::2]):
        with pytest.raises(UsageError, match="out must be"):
            images.load(data, (20, 20), out=bad)
