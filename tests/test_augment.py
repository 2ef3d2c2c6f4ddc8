"""Random augmenters: flips, affine warps and brightness, checked against their stated ranges."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st

from dsprep.augment import (
    RandomAffine,
    RandomBrightness,
    RandomFlip,
    affine_matrices,
    warp_affine,
)
from dsprep.errors import UsageError


def batch_of(n=4, h=20, w=24, seed=0):
    return np.stack([smooth_image(h, w, seed=seed + i) for i in range(n)])


# ---------------------------------------------------------------------------------- flips


def test_random_flip_gives_each_image_or_its_mirror():
    batch = batch_of(n=8)
    out = RandomFlip()(batch, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == batch.shape
    kinds = []
    for i in range(8):
        if np.array_equal(out[i], batch[i]):
            kinds.append("same")
        else:
            np.testing.assert_array_equal(out[i], np.fliplr(batch[i]))
            kinds.append("mirror")
    np.testing.assert_array_equal(RandomFlip()(batch, np.random.default_rng(0)), out)
    assert len(set(kinds)) == 2  # with seed 0 both happen among 8 draws


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_random_flip_probability(p):
    batch = np.zeros((2000, 1, 2, 1), np.uint8)
    batch[:, 0, 0] = 1
    out = RandomFlip(p=p)(batch, np.random.default_rng(5))
    fraction = float(np.mean(out[:, 0, 1, 0] == 1))
    assert abs(fraction - p) < 0.04


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_random_flip_vertical_probability_and_independence(p):
    batch = np.zeros((4000, 2, 2, 1), np.uint8)
    batch[:, 0, 0] = 1  # the marked pixel's corner tells which flips were made
    out = RandomFlip(vertical=True, horizontal=False, p=p)(batch, np.random.default_rng(5))
    assert abs(float(np.mean(out[:, 1, 0, 0] == 1)) - p) < 0.04
    both = RandomFlip(horizontal=True, vertical=True, p=p)(batch, np.random.default_rng(6))
    rows, cols = np.nonzero(both[:, :, :, 0])[1:]
    mirrored, upside_down = cols == 1, rows == 1
    assert abs(mirrored.mean() - p) < 0.04 and abs(upside_down.mean() - p) < 0.04
    # Drawn independently: both flips together as often as the product of the two.
    assert abs(float(np.mean(mirrored & upside_down)) - p * p) < 0.04


def test_random_flip_vertical_and_both():
    batch = batch_of(n=6)
    out = RandomFlip(horizontal=False, vertical=True, p=1.0)(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(out, batch[:, ::-1])
    out = RandomFlip(horizontal=True, vertical=True, p=1.0)(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(out, batch[:, ::-1, ::-1])
    with pytest.raises(UsageError, match="needs horizontal=True or vertical=True"):
        RandomFlip(horizontal=False, vertical=False)
    with pytest.raises(UsageError, match="probability"):
        RandomFlip(p=1.5)
    with pytest.raises(UsageError, match="p must be a number, got '0.5'"):
        RandomFlip(p="0.5")


def test_random_flip_leaves_input_alone():
    batch = batch_of(n=4)
    before = batch.copy()
    RandomFlip(horizontal=True, vertical=True, p=1.0)(batch, np.random.default_rng(0))
    np.testing.assert_array_equal(batch, before)


# ---------------------------------------------------------------------------------- affine


def dot_batch(n, size, y, x):
    """float32 images, zero but for a 3x3 bright square centred on (y, x)."""
    batch = np.zeros((n, size, size, 1), np.float32)
    batch[:, y - 1 : y + 2, x - 1 : x + 2] = 100.0
    return batch


def centroids(batch):
    """(y, x) of the intensity centroid of every image."""
    yy, xx = np.mgrid[0 : batch.shape[1], 0 : batch.shape[2]]
    weights = batch[..., 0].astype(np.float64)
    total = weights.sum(axis=(1, 2))
    return (
        (weights * yy).sum(axis=(1, 2)) / total,
        (weights * xx).sum(axis=(1, 2)) / total,
    )


def test_identity_affine_changes_nothing():
    batch = batch_of(n=3)
    out = RandomAffine()(batch, np.random.default_rng(0))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, batch)


def test_shift_never_moves_content_more_than_the_fraction():
    size, centre = 61, 30
    batch = dot_batch(200, size, centre, centre)
    out = RandomAffine(shift=0.2, fill="constant")(batch, np.random.default_rng(1))
    y, x = centroids(out)
    dy, dx = y - centre, x - centre
    limit = 0.2 * size
    assert np.all(np.abs(dy) <= limit + 0.01) and np.all(np.abs(dx) <= limit + 0.01)
    # the range is used, not just respected: some shifts come close to the limit
    assert np.abs(dx).max() > 0.8 * limit and np.abs(dy).max() > 0.8 * limit
    # shape is kept: the square's mass is unchanged when it stays inside
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 900.0, rtol=1e-3)


def test_shift_pair_is_height_then_width():
    batch = dot_batch(100, 41, 20, 20)
    out = RandomAffine(shift=(0.0, 0.25), fill="constant")(batch, np.random.default_rng(2))
    y, x = centroids(out)
    np.testing.assert_allclose(y, 20.0, atol=1e-3)
    assert np.abs(x - 20).max() > 0.5 * 0.25 * 41


def test_rotation_keeps_distance_and_stays_in_range():
    size, centre = 81, 40
    batch = dot_batch(200, size, centre, centre + 20)  # 20 px right of the centre
    out = RandomAffine(rotation=30, fill="constant")(batch, np.random.default_rng(3))
    y, x = centroids(out)
    radius = np.hypot(y - centre, x - centre)
    np.testing.assert_allclose(radius, 20.0, atol=0.05)
    angle = np.degrees(np.arctan2(-(y - centre), x - centre))  # counter-clockwise on screen
    assert np.all(np.abs(angle) <= 30.01)
    assert angle.max() > 20 and angle.min() < -20


def test_zoom_scales_content_by_the_reciprocal_of_the_factor_as_keras_does():
    # Keras's zoom factor maps output pixels to input pixels: zoom_range=0.25 draws factors in
    # [0.75, 1.25], and the content is scaled by their reciprocals, [0.8, 1.333].
    size, centre = 81, 40
    batch = dot_batch(200, size, centre - 15, centre + 20)
    out = RandomAffine(zoom=0.25, fill="constant")(batch, np.random.default_rng(4))
    y, x = centroids(out)
    scale_y, scale_x = (y - centre) / -15.0, (x - centre) / 20.0
    for scale in (scale_y, scale_x):
        assert np.all(scale >= 1 / 1.25 - 0.01) and np.all(scale <= 1 / 0.75 + 0.01)
        assert scale.max() > 1.25 and scale.min() < 0.85  # the whole range is drawn
    # horizontal and vertical factors are drawn independently, as in Keras
    assert np.abs(scale_y - scale_x).max() > 0.1
    # a (low, high) pair of factors above 1 zooms out
    low_high = RandomAffine(zoom=(1.5, 2.0), fill="constant")(batch, np.random.default_rng(4))
    _, x = centroids(low_high)
    assert np.all((x - centre) / 20.0 >= 0.49) and np.all((x - centre) / 20.0 <= 1 / 1.5 + 0.01)


def test_zoom_moves_content_where_keras_does():
    image = importorskip_keras_affine()
    size, centre = 41, 20
    batch = dot_batch(1, size, centre - 8, centre + 10)
    for factor in (0.8, 1.25):
        ours = RandomAffine(zoom=(factor, factor), fill="constant")(batch, np.random.default_rng(0))
        theirs = image.apply_affine_transform(batch[0], zx=factor, zy=factor, row_axis=0,
                                              col_axis=1, channel_axis=2, fill_mode="constant",
                                              order=1)
        np.testing.assert_allclose(np.ravel(centroids(ours)),
                                   np.ravel(centroids(theirs[None])), atol=0.05)


def importorskip_keras_affine():
    """The module of Keras's ImageDataGenerator, the reference for zoom_range's meaning."""
    pytest.importorskip("scipy", reason="Keras's apply_affine_transform is written with SciPy")
    return pytest.importorskip(
        "keras.src.legacy.preprocessing.image",
        reason="Keras (the training extra) keeps ImageDataGenerator's transforms there",
    )


def test_shear_moves_points_along_x_by_tangent_and_stretches_as_keras_does():
    size, centre = 81, 40
    batch = dot_batch(200, size, centre + 20, centre)  # 20 px below the centre
    out = RandomAffine(shear=20, fill="constant")(batch, np.random.default_rng(6))
    y, x = centroids(out)
    # Keras's shear matrix [[1, -sin s], [0, cos s]] (output to input) moves a point at
    # height y by y tan s sideways and to y / cos s = hypot(y, y tan s).
    dx, dy = x - centre, y - centre
    np.testing.assert_allclose(dy, np.hypot(20, dx), atol=0.05)
    angle = np.degrees(np.arctan(dx / 20))
    assert np.all(np.abs(angle) <= 20.01) and np.abs(angle).max() > 16


def keras_transform(image, rotation=0.0, shift_y=0.0, shift_x=0.0, shear=0.0, zoom_y=1.0,
                    zoom_x=1.0, fill="nearest"):
    """Keras's own transform of one (H, W, C) float image, the parameters in dsprep's terms."""
    keras_image = importorskip_keras_affine()
    # Keras 3 takes tx and zx along the columns (its matrices are in (x, y) order), and its
    # shifts move the sampling point, not the content.
    return keras_image.apply_affine_transform(
        image, theta=rotation, tx=-shift_x, ty=-shift_y, shear=shear, zx=1 / zoom_x,
        zy=1 / zoom_y, row_axis=0, col_axis=1, channel_axis=2, fill_mode=fill, order=1)


@pytest.mark.parametrize("fill", ["nearest", "reflect"])
@pytest.mark.parametrize(
    "params",
    [
        dict(rotation=20.0),
        dict(shift_y=-4.0, shift_x=6.5),
        dict(shear=20.0),
        dict(shear=-12.0, zoom_y=1.3, zoom_x=0.8),
        dict(rotation=20.0, shift_x=5.0, zoom_y=1.25, zoom_x=1.25),
        dict(rotation=-35.0, shift_y=3.0, shift_x=-7.0, shear=15.0, zoom_y=0.9, zoom_x=1.2),
    ],
)
def test_affine_transform_is_keras_composed_in_keras_order(params, fill):
    # A smooth image (bilinear and SciPy's order-1 spline then agree to float precision),
    # square because Keras 3 centres its transforms with height and width swapped.
    size = 48
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([np.sin(xx / 5) + np.cos(yy / 7), xx / size, xx * yy / size**2], axis=-1)
    theirs = keras_transform(image, fill=fill, **params)
    values = {k: np.array([params.get(k, default)]) for k, default in (
        ("rotation", 0.0), ("shift_y", 0.0), ("shift_x", 0.0), ("shear", 0.0), ("zoom_y", 1.0),
        ("zoom_x", 1.0))}
    matrices = affine_matrices((size, size), **values)
    ours = warp_affine(image[None].astype(np.float32), matrices, fill=fill)[0]
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_affine_is_reproducible_and_fills():
    batch = batch_of(n=4, h=24, w=24)
    op = RandomAffine(rotation=40, shift=0.1, shear=10, zoom=0.2)
    a = op(batch, np.random.default_rng(9))
    np.testing.assert_array_equal(a, op(batch, np.random.default_rng(9)))
    assert not np.array_equal(a, op(batch, np.random.default_rng(10)))
    assert a.dtype == np.uint8 and a.shape == batch.shape
    # a big shift with a constant fill leaves a band of exactly the fill value
    ones = np.full((20, 30, 30, 3), 200, np.uint8)
    filled = RandomAffine(shift=0.5, fill="constant", fill_value=7)(ones, np.random.default_rng(0))
    assert set(np.unique(filled)) >= {7, 200}
    nearest = RandomAffine(shift=0.5)(ones, np.random.default_rng(0))
    np.testing.assert_array_equal(nearest, 200)


def test_affine_rejects_bad_arguments():
    with pytest.raises(UsageError, match="fill"):
        RandomAffine(fill="mirror")
    with pytest.raises(UsageError, match="zoom"):
        RandomAffine(zoom=1.5)
    with pytest.raises(UsageError, match="rotation"):
        RandomAffine(rotation=-5)
    with pytest.raises(UsageError, match="before any ten-crop"):
        RandomAffine(rotation=5).output_shape((10, 8, 8, 3))
    with pytest.raises(UsageError, match="shear must be below 90"):
        RandomAffine(shear=90)
    with pytest.raises(UsageError, match="int64.*astype"):
        RandomAffine(rotation=5)(np.zeros((2, 8, 8, 3), np.int64), np.random.default_rng(0))
    with pytest.raises(UsageError, match="int8.*astype"):  # OpenCV has no int8 warp
        RandomAffine(rotation=5)(np.zeros((2, 8, 8, 3), np.int8), np.random.default_rng(0))
    # Text and None are named, not Python's "'<' not supported" or "could not convert".
    with pytest.raises(UsageError, match="rotation must be a number, got '10'"):
        RandomAffine(rotation="10")
    with pytest.raises(UsageError, match="shift must be a number, got 'a'"):
        RandomAffine(shift=("a", 0.1))
    with pytest.raises(UsageError, match="zoom must be a number or a .* pair, got None"):
        RandomAffine(zoom=None)
    with pytest.raises(UsageError, match="delta must be a number, got None"):
        RandomBrightness(None)
    for bad in ({"rotation": True}, {"shift": True}, {"shift": (0.1, False)}):
        with pytest.raises(UsageError, match="must be a number, got (True|False)"):
            RandomAffine(**bad)
    assert RandomFlip(p=np.array(0.25)).p == 0.25
    assert RandomAffine(shift=np.array(0.1)).shift == (0.1, 0.1)
    # A 0-d array is one number, as for shift: the range 1 +- 0.2, not the factors (0.2, 0.2).
    assert RandomAffine(zoom=np.array(0.2)).zoom == pytest.approx((0.8, 1.2))
    assert RandomAffine(zoom=(0.5, 2)).zoom == (0.5, 2.0)
    with pytest.raises(UsageError, match=r"zoom must be .* a \(low, high\) pair, got '0.2'"):
        RandomAffine(zoom="0.2")
    # "no" is true in Python: only True or False are taken.
    with pytest.raises(UsageError, match="horizontal must be True or False; received 'no'"):
        RandomFlip(horizontal="no", vertical=True)


@pytest.mark.parametrize("layout", ["transposed", "fortran", "strided"])
def test_affine_takes_batches_in_any_memory_layout(layout):
    batch = batch_of(n=3, h=16, w=20)
    if layout == "transposed":  # channels-first data viewed as NHWC
        view = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    elif layout == "fortran":
        view = np.asfortranarray(batch)
    else:
        wide = np.zeros((3, 16, 40, 3), np.uint8)
        wide[:, :, ::2] = batch
        view = wide[:, :, ::2]
    op = RandomAffine(rotation=30, zoom=0.2)
    np.testing.assert_array_equal(op(view, np.random.default_rng(5)),
                                  op(batch, np.random.default_rng(5)))


# ---------------------------------------------------------------------------------- brightness


@settings(max_examples=20, deadline=None)
@given(delta=st.floats(0, 80), seed=st.integers(0, 10_000))
def test_brightness_adds_one_offset_per_image_within_delta(delta, seed):
    batch = batch_of(n=4, h=8, w=8)
    out = RandomBrightness(delta)(batch, np.random.default_rng(seed))
    assert out.dtype == np.uint8
    for i in range(4):
        diff = out[i].astype(int) - batch[i].astype(int)
        inside = (out[i] > 0) & (out[i] < 255)  # saturated pixels moved less
        offsets = np.unique(diff[inside])
        assert len(offsets) <= 1
        if len(offsets):
            assert abs(offsets[0]) <= round(delta)
            assert np.all(np.abs(diff) <= abs(offsets[0]))


def test_brightness_offsets_spread_over_the_whole_range():
    delta = 40.0
    batch = np.full((2000, 1, 1, 3), 128, np.uint8)
    offsets = RandomBrightness(delta)(batch, np.random.default_rng(3)).astype(int)[:, 0, 0, 0]
    offsets -= 128
    # Uniform over [-delta, delta]: both ends are reached, and each half holds about half.
    assert offsets.min() <= -0.95 * delta and offsets.max() >= 0.95 * delta
    assert abs(float(np.mean(offsets > 0)) - 0.5) < 0.05
    assert abs(float(np.mean(np.abs(offsets) > delta / 2)) - 0.5) < 0.05


def test_brightness_saturates_uint8_and_is_exact_for_float():
    batch = np.stack([np.full((4, 4, 3), 250, np.uint8), np.full((4, 4, 3), 3, np.uint8)])
    out = RandomBrightness(100)(batch, np.random.default_rng(0))
    # rng(0) draws the offsets +27.4 and -46.0 (computed as below); uint8 addition would wrap
    # 250 + 27 to 21 and 3 - 46 to 213; saturating gives 255 and 0.
    offsets = np.random.default_rng(0).uniform(-100, 100, 2)
    assert offsets[0] > 5 and offsets[1] < -3
    np.testing.assert_array_equal(out[0], 255)
    np.testing.assert_array_equal(out[1], 0)
    floats = batch.astype(np.float32)
    got = RandomBrightness(10.5)(floats, np.random.default_rng(1))
    assert got.dtype == np.float32
    shifts = (got - floats).reshape(2, -1)
    np.testing.assert_allclose(shifts, shifts[:, :1].repeat(shifts.shape[1], axis=1), atol=1e-5)
    assert np.all(np.abs(shifts) <= 10.5)
    np.testing.assert_array_equal(
        RandomBrightness(10.5)(floats, np.random.default_rng(1)), got
    )


def test_augment_sits_below_preprocess():
    import ast
    from pathlib import Path

    import dsprep.augment as augment
    import dsprep.preprocess as preprocess

    tree = ast.parse(Path(augment.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {name for name in imported if "preprocess" in name}
    # The public names stay importable from preprocess.
    assert preprocess.flip_horizontal is augment.flip_horizontal
    assert preprocess.require_rng is augment.require_rng


def test_shift_of_one_or_more_is_pixels_below_one_a_fraction():
    # Keras's width/height_shift_range: >= 1 is pixels, < 1 a fraction of the side.
    h, w, n = 40, 80, 64
    zeros = np.zeros((n, h, w, 1), np.uint8)

    def shifts(op):
        # The forward maps' translation columns are the shifts in pixels (no rotation/zoom).
        m = op.draw(n, (h, w), np.random.default_rng(5))
        return np.abs(m[:, 1, 2]), np.abs(m[:, 0, 2])

    dy, dx = shifts(RandomAffine(shift=3))
    assert dy.max() <= 3 and dx.max() <= 3 and dx.max() > 2  # 3 pixels on both axes
    dy, dx = shifts(RandomAffine(shift=(2.0, 0.5)))
    assert dy.max() <= 2 and dy.max() > 1.5  # 2 pixels
    assert dx.max() <= 40 and dx.max() > 30  # half of the 80-pixel width
    dy, dx = shifts(RandomAffine(shift=0.5))
    assert dy.max() <= 20 and dx.max() <= 40 and dx.max() > 30
    assert RandomAffine(shift=3)(zeros, np.random.default_rng(0)).shape == zeros.shape
