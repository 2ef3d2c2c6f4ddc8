"""Morphology on batches, against a plain minimum/maximum over a disk written here."""

from __future__ import annotations

import decimal
import fractions

import numpy as np
import pytest
from helpers import smooth_image

from dsprep.errors import UsageError
from dsprep.preprocess import morphology


def disk_offsets(radius):
    return [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx <= radius * radius
    ]


def reference_filter(image, radius, reduce):
    """min or max over a disk, for pixels at least ``radius`` away from the border."""
    h, w = image.shape
    out = np.zeros_like(image)
    for y in range(radius, h - radius):
        for x in range(radius, w - radius):
            out[y, x] = reduce([image[y + dy, x + dx] for dy, dx in disk_offsets(radius)])
    return out


@pytest.mark.parametrize("name, reduce", [("erode", min), ("dilate", max),
                                          ("erosion", min), ("dilation", max)])
@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("dtype", [np.uint8, np.float16])  # SciPy has no float16 kernel
def test_erode_and_dilate_match_disk_reference(name, reduce, radius, dtype):
    batch = np.stack([smooth_image(14, 16, seed=s) for s in range(2)]).astype(dtype)
    got = getattr(morphology, name)(batch, radius)
    assert got.dtype == batch.dtype and got.shape == batch.shape
    r = radius
    for i in range(2):
        for c in range(3):
            expected = reference_filter(batch[i, :, :, c], r, reduce)
            np.testing.assert_array_equal(got[i, r:-r, r:-r, c], expected[r:-r, r:-r])


def test_dilating_one_pixel_draws_a_disk():
    batch = np.zeros((1, 15, 15, 1), np.uint8)
    batch[0, 7, 7, 0] = 255
    got = morphology.dilate(batch, 3)[0, :, :, 0]
    yy, xx = np.mgrid[0:15, 0:15]
    expected = np.where((yy - 7) ** 2 + (xx - 7) ** 2 <= 9, 255, 0)
    np.testing.assert_array_equal(got, expected)


def test_open_removes_specks_and_close_fills_holes():
    image = np.full((1, 20, 20, 1), 50, np.uint8)
    image[0, 4:14, 4:14] = 200  # a square larger than the disk survives opening
    image[0, 17, 17] = 200  # a speck does not
    opened = morphology.opening(image, 1)
    assert opened[0, 17, 17, 0] == 50
    # the radius-1 disk is a plus sign: it fits everywhere in the square but its corners
    expected = np.full((20, 20), 50)
    expected[4:14, 4:14] = 200
    expected[[4, 4, 13, 13], [4, 13, 4, 13]] = 50
    np.testing.assert_array_equal(opened[0, :, :, 0], expected)
    holed = np.full((1, 20, 20, 1), 200, np.uint8)
    holed[0, 10, 10] = 0
    closed = morphology.closing(holed, 1)
    np.testing.assert_array_equal(closed, 200)
    np.testing.assert_array_equal(morphology.Open(1)(image), opened)
    np.testing.assert_array_equal(morphology.Close(1)(holed), closed)


def test_threshold_fixed_and_otsu():
    batch = np.stack([smooth_image(12, 12, seed=s) for s in range(2)])
    got = morphology.threshold(batch, 100)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.where(batch > 100, 255, 0))
    two_levels = np.full((2, 10, 10, 1), 40, np.uint8)
    two_levels[0, :, :4] = 210
    two_levels[1, 5:] = 90
    otsu = morphology.Threshold()(two_levels)
    np.testing.assert_array_equal(otsu, np.where(two_levels > 40, 255, 0))
    flat = np.full((1, 5, 5, 1), 9, np.uint8)
    np.testing.assert_array_equal(morphology.threshold(flat), 0)
    # RGB images, as dsprep files hold (warnings are errors in this suite): one level over all
    # three channels, red dark on the left half, green bright everywhere, blue in between.
    rgb = np.zeros((1, 6, 6, 3), np.uint8)
    rgb[..., 0] = 20
    rgb[:, :, 3:, 0] = 220
    rgb[..., 1] = 230
    rgb[..., 2] = 30
    np.testing.assert_array_equal(morphology.Threshold()(rgb), np.where(rgb > 30, 255, 0))


@pytest.mark.parametrize("value", ["abc", "128", True, float("nan"), [100], 1 + 2j,
                                   np.array("5"), np.array(b"5"), np.array(True)])
def test_a_threshold_that_is_no_number_is_refused_by_name(value):
    # float() took "128" and failed on "abc" with a message naming no argument.
    with pytest.raises(UsageError, match=r"^value must be a number .* or None .*; received"):
        morphology.Threshold(value)
    with pytest.raises(UsageError, match="^value must be a number"):
        morphology.threshold(np.zeros((1, 4, 4, 1), np.uint8), value)
    assert morphology.Threshold(np.uint8(100)).value == 100.0  # numpy numbers are numbers


@pytest.mark.parametrize("value, level", [
    (np.uint8(100), 100.0), (np.array(128), 128.0), (fractions.Fraction(1, 2), 0.5),
    (decimal.Decimal("128"), 128.0), (255.0, 255.0), (0, 0.0)])
def test_any_real_number_is_a_threshold(value, level):
    # A Fraction, a Decimal and a 0-d array were taken before the check by name refused them.
    assert morphology.Threshold(value).value == level


def test_star_import_leaves_the_builtin_open_alone():
    scope: dict = {}
    exec("from dsprep.preprocess.morphology import *", scope)
    assert "open" not in scope and "close" not in scope
    assert scope["opening"] is morphology.open and scope["closing"] is morphology.close


def test_morphology_preprocessors_and_errors():
    batch = np.stack([smooth_image(10, 10, seed=s) for s in range(2)])
    for cls, fn in (
        (morphology.Erode, morphology.erode),
        (morphology.Dilate, morphology.dilate),
    ):
        op = cls(2)
        assert op.output_shape((10, 10, 3)) == (10, 10, 3)
        np.testing.assert_array_equal(op(batch, np.random.default_rng(0)), fn(batch, 2))
    with pytest.raises(UsageError, match="radius"):
        morphology.Erode(-1)
    with pytest.raises(UsageError, match="before any ten-crop"):
        morphology.Dilate(1).output_shape((10, 8, 8, 3))
    with pytest.raises(UsageError, match="batch"):
        morphology.erode(batch[0], 1)
