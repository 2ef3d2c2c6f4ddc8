"""Batch preprocessors against plain per-image references (the book's formulas)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st

from dsprep.augment import RandomFlip
from dsprep.errors import DatasetFormatError, LayoutError, UsageError
from dsprep.preprocess import (
    CenterCrop,
    Compose,
    MeanSubtract,
    MinMaxNormalize,
    PercentileNormalize,
    RandomPatch,
    Rescale,
    TenCrop,
    center_crop,
    crop,
    five_crop,
    five_crop_positions,
    flip_horizontal,
    flip_vertical,
    subtract_mean,
    ten_crop,
)

MEANS = {"R": 124.96, "G": 115.97, "B": 106.13}


def batch_of(n=4, h=20, w=24, seed=0):
    return np.stack([smooth_image(h, w, seed=seed + i) for i in range(n)])


def ref_mean(image, means):
    """The book's MeanPreprocessor: one channel at a time, in float."""
    out = image.astype(np.float64).copy()
    for c, key in enumerate("RGB"):
        out[..., c] = out[..., c] - means[key]
    return out


# ---------------------------------------------------------------------------------- mean


def test_subtract_mean_matches_per_channel_reference():
    batch = batch_of()
    got = subtract_mean(batch, [MEANS["R"], MEANS["G"], MEANS["B"]])
    assert got.dtype == np.float32 and got.shape == batch.shape
    for i in range(len(batch)):
        np.testing.assert_allclose(got[i], ref_mean(batch[i], MEANS), atol=1e-4)


def test_subtract_mean_on_strided_views_and_ten_crop_batches():
    big = batch_of(n=3, h=30, w=30)
    view = big[:, 3:23, 5:25]  # not contiguous
    got = subtract_mean(view, (10.0, 20.0, 30.0))
    expected = view.astype(np.float64) - np.array([10.0, 20.0, 30.0])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    crops = np.stack([big[:, :8, :8]] * 10, axis=1)  # (B, 10, 8, 8, 3)
    np.testing.assert_allclose(
        subtract_mean(crops, (1.5, 2.5, 3.5)),
        crops.astype(np.float64) - np.array([1.5, 2.5, 3.5]),
        atol=1e-4,
    )


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    mean=st.lists(st.floats(-300, 300), min_size=3, max_size=3),
    as_float=st.booleans(),
)
def test_subtract_mean_property(n, h, w, mean, as_float):
    rng = np.random.default_rng(n * 100 + h * 10 + w)
    batch = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    if as_float:
        batch = batch.astype(np.float32)
    got = subtract_mean(batch, mean)
    expected = np.empty(batch.shape)
    for c in range(3):
        expected[..., c] = batch[..., c].astype(np.float64) - mean[c]
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_mean_subtract_reads_dict_path_and_sequence(tmp_path):
    path = tmp_path / "means.json"
    path.write_text(json.dumps({**MEANS, "std": {"R": 1, "G": 1, "B": 1}, "count": 3}))
    batch = batch_of(n=2)
    expected = np.stack([ref_mean(im, MEANS) for im in batch])
    for means in (MEANS, path, str(path), [MEANS["R"], MEANS["G"], MEANS["B"]]):
        got = MeanSubtract(means)(batch, np.random.default_rng(0))
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_mean_subtract_bad_inputs(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        MeanSubtract(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"R": 1.0, "G": 2.0}))
    with pytest.raises(DatasetFormatError, match="no B key"):
        MeanSubtract(bad)
    bad.write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not a readable"):
        MeanSubtract(bad)
    # Values passed in code are a bad argument, not a bad file.
    for means, match in (([1.0, 2.0], "three finite R, G, B means"),
                         (["a", 2, 3], "must be numbers"), (7, "three R, G, B means")):
        with pytest.raises(UsageError, match=match):
            MeanSubtract(means)
    with pytest.raises(UsageError, match="RGB"):
        MeanSubtract(MEANS).output_shape((8, 8, 1))
    with pytest.raises(UsageError, match="channels"):
        subtract_mean(np.zeros((1, 4, 4, 1), np.uint8), (1.0, 2.0, 3.0))


# ---------------------------------------------------------------------------------- crops


def test_crop_windows_flips_and_mean_match_slicing():
    batch = batch_of(n=5, h=20, w=24)
    tops, lefts = [0, 3, 7, 10, 2], [0, 11, 5, 14, 9]
    flips = [False, True, False, True, True]
    plain = crop(batch, tops, lefts, (10, 10))
    flipped = crop(batch, tops, lefts, (10, 10), flips=flips)
    meaned = crop(batch, tops, lefts, (10, 10), flips=flips, mean=[MEANS[k] for k in "RGB"])
    assert plain.dtype == np.uint8 and flipped.dtype == np.uint8 and meaned.dtype == np.float32
    for i in range(5):
        window = batch[i, tops[i] : tops[i] + 10, lefts[i] : lefts[i] + 10]
        np.testing.assert_array_equal(plain[i], window)
        mirrored = np.fliplr(window) if flips[i] else window
        np.testing.assert_array_equal(flipped[i], mirrored)
        np.testing.assert_allclose(meaned[i], ref_mean(mirrored, MEANS), atol=1e-4)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("channels", [1, 3])
def test_crop_keeps_dtype_for_gray_and_colour(dtype, channels):
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 200, (3, 12, 14, channels)).astype(dtype)
    got = crop(batch, [1, 0, 4], [2, 6, 0], (8, 8), flips=[True, False, True])
    assert got.dtype == batch.dtype and got.shape == (3, 8, 8, channels)
    np.testing.assert_array_equal(got[0], batch[0, 1:9, 2:10][:, ::-1])
    np.testing.assert_array_equal(got[1], batch[1, 0:8, 6:14])
    np.testing.assert_array_equal(got[2], batch[2, 4:12, 0:8][:, ::-1])


def test_crop_rejects_windows_outside_and_wrong_out():
    batch = batch_of(n=2, h=10, w=10)
    with pytest.raises(UsageError, match="outside"):
        crop(batch, [0, 5], [0, 0], (6, 6))
    with pytest.raises(UsageError, match="out has shape"):
        crop(batch, 0, 0, (4, 4), out=np.empty((2, 5, 5, 3), np.uint8))
    with pytest.raises(UsageError, match="out has shape"):
        crop(batch, 0, 0, (4, 4), mean=(1, 2, 3), out=np.empty((2, 4, 4, 3), np.uint8))


def test_crop_refuses_corners_and_flips_that_do_not_fit_the_batch():
    batch = batch_of(n=3, h=10, w=10)
    # A list of the wrong length gave numpy's broadcast error; float corners were truncated.
    with pytest.raises(UsageError, match=r"tops must be one value or one per image \(3\)"):
        crop(batch, [0, 1], 0, 4)
    with pytest.raises(UsageError, match="flips must be one value or one per image"):
        crop(batch, 0, 0, 4, flips=[True] * 4)
    with pytest.raises(UsageError, match="lefts must be whole numbers"):
        crop(batch, 0, [0.5, 1, 2], 4)
    with pytest.raises(UsageError, match="flips must be booleans"):
        crop(batch, 0, 0, 4, flips=[0.5, 1, 0])
    # Whole floats (as np.round gives them) and 0/1 flips still do, and so does a list of one.
    got = crop(batch, [1.0, 2.0, 3.0], 0, 4, flips=np.array([1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(got[0], batch[0, 1:5, 0:4][:, ::-1])
    np.testing.assert_array_equal(got[2], batch[2, 3:7, 0:4])
    got = crop(batch, [2], [1], 4, flips=[True])
    np.testing.assert_array_equal(got[1], batch[1, 2:6, 1:5][:, ::-1])


def test_crop_writes_into_out():
    batch = batch_of(n=2, h=10, w=12)
    out = np.full((2, 4, 5, 3), -1.0, np.float32)
    got = crop(batch, [1, 2], [3, 4], (4, 5), flips=[True, False], mean=(0, 0, 0), out=out)
    assert got is out
    np.testing.assert_array_equal(out[0], batch[0, 1:5, 3:8][:, ::-1])
    np.testing.assert_array_equal(out[1], batch[1, 2:6, 4:9])


def test_random_patch_is_a_window_in_bounds_and_reproducible():
    batch = batch_of(n=6, h=16, w=20)
    op = RandomPatch(9, 12)
    a = op(batch, np.random.default_rng(7))
    b = op(batch, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 9, 12, 3) and a.dtype == np.uint8
    for i in range(6):
        hits = [
            (y, x)
            for y in range(16 - 9 + 1)
            for x in range(20 - 12 + 1)
            if np.array_equal(batch[i, y : y + 9, x : x + 12], a[i])
        ]
        assert hits, f"patch {i} is not a window of its image"


def test_random_patch_reaches_every_corner():
    batch = np.zeros((400, 5, 5, 1), np.uint8)
    batch[:, 0, 0] = 1  # marks the top-left pixel
    batch[:, 4, 4] = 2  # marks the bottom-right pixel
    out = RandomPatch(3, 3)(batch, np.random.default_rng(1))
    # tops and lefts are uniform in 0..2: the top-left corner survives only at (0, 0) ...
    assert (out[:, 0, 0, 0] == 1).any()
    # ... and the bottom-right corner only at (2, 2); both must happen in 400 draws.
    assert (out[:, 2, 2, 0] == 2).any()


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    data=st.data(),
)
def test_random_patch_output_shape_and_contents(height, width, data):
    h = data.draw(st.integers(1, height))
    w = data.draw(st.integers(1, width))
    # pixel value = y * 16 + x, so a patch's first pixel tells where it was cut
    grid = (np.arange(height)[:, None] * 16 + np.arange(width)[None, :]).astype(np.uint8)
    batch = np.repeat(grid[None, :, :, None], 4, axis=0)
    op = RandomPatch(h, w)
    assert op.output_shape((height, width, 1)) == (h, w, 1)
    out = op(batch, np.random.default_rng(data.draw(st.integers(0, 1000))))
    for i in range(4):
        top, left = divmod(int(out[i, 0, 0, 0]), 16)
        assert 0 <= top <= height - h and 0 <= left <= width - w
        np.testing.assert_array_equal(out[i, :, :, 0], grid[top : top + h, left : left + w])


def test_patch_larger_than_images_is_a_clear_error():
    with pytest.raises(UsageError) as info:
        RandomPatch(227, 227).output_shape((200, 200, 3))
    assert str(info.value) == (
        "patch 227x227 is larger than the 200x200 images; use a smaller patch or images of "
        "at least 227x227 (build-hdf5 --size, or a DirectoryGenerator's image_size)"
    )
    with pytest.raises(UsageError, match="larger than"):
        CenterCrop(10, 30).output_shape((20, 20, 3))
    with pytest.raises(UsageError, match="mirror must be True or False; received 'no'"):
        TenCrop(3, mirror="no")
    with pytest.raises(UsageError, match="larger than"):
        TenCrop(21).output_shape((20, 20, 3))
    with pytest.raises(UsageError, match="positive integer"):
        RandomPatch(0, 5)


def test_center_crop_matches_book_formula():
    batch = batch_of(n=3, h=21, w=30)
    for h, w in ((10, 10), (21, 30), (7, 13)):
        top, left = int(0.5 * (21 - h)), int(0.5 * (30 - w))
        got = CenterCrop(h, w)(batch)
        np.testing.assert_array_equal(got, batch[:, top : top + h, left : left + w])
        np.testing.assert_array_equal(center_crop(batch, (h, w)), got)


# ---------------------------------------------------------------------------------- ten crop


def coordinate_batch(n, height, width):
    """float32 images whose channel 0 is y*1000 + x and channel 1 the image index."""
    yy, xx = np.mgrid[0:height, 0:width]
    batch = np.zeros((n, height, width, 3), np.float32)
    batch[..., 0] = yy * 1000 + xx
    batch[..., 1] = np.arange(n)[:, None, None]
    return batch


def test_ten_crop_order_and_coordinates():
    height, width, h, w = 20, 27, 11, 8
    batch = coordinate_batch(2, height, width)
    out = ten_crop(batch, (h, w))
    assert out.shape == (2, 10, h, w, 3)
    expected_corners = [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w)]
    expected_corners.append(((height - h) // 2, (width - w) // 2))
    assert five_crop_positions(height, width, (h, w)) == expected_corners
    for i in range(2):
        for k, (top, left) in enumerate(expected_corners):
            window = batch[i, top : top + h, left : left + w]
            np.testing.assert_array_equal(out[i, k], window)
            np.testing.assert_array_equal(out[i, 5 + k], np.fliplr(window))
            assert out[i, k, 0, 0, 0] == top * 1000 + left


def test_ten_crop_against_book_loop_with_mean():
    batch = batch_of(n=3, h=24, w=24)
    h = w = 19
    got = TenCrop(h, w)(batch)
    fused = Compose([TenCrop(h, w), MeanSubtract(MEANS)])(batch)
    for i in range(3):
        image = batch[i]
        H, W = image.shape[:2]
        coords = [[0, 0, w, h], [W - w, 0, W, h], [0, H - h, w, H], [W - w, H - h, W, H]]
        # The book's centre window, without its resize back to size (exact when it is odd).
        dw, dh = int(0.5 * (W - w)), int(0.5 * (H - h))
        coords.append([dw, dh, dw + w, dh + h])
        crops = [image[y0:y1, x0:x1] for (x0, y0, x1, y1) in coords]
        crops.extend([np.fliplr(c) for c in crops])
        np.testing.assert_array_equal(got[i], np.stack(crops))
        np.testing.assert_allclose(
            fused[i], np.stack([ref_mean(c, MEANS) for c in crops]), atol=1e-4
        )


def test_ten_crop_with_mean_takes_what_mean_subtract_takes():
    batch = batch_of(n=2, h=12, w=12)
    fused = Compose([TenCrop(8, 8), MeanSubtract(MEANS)])(batch)
    for means in (MEANS, [MEANS["R"], MEANS["G"], MEANS["B"]],
                  (MEANS["R"], MEANS["G"], MEANS["B"])):
        np.testing.assert_array_equal(TenCrop(8, 8).with_mean(means)(batch), fused)


def test_ten_crop_without_mirror_and_five_crop():
    batch = batch_of(n=2, h=12, w=12)
    five = TenCrop(6, 6, mirror=False)(batch)
    assert five.shape == (2, 5, 6, 6, 3) and five.dtype == np.uint8
    assert TenCrop(6, 6, mirror=False).output_shape((12, 12, 3)) == (5, 6, 6, 3)
    assert TenCrop(6).output_shape((12, 12, 3)) == (10, 6, 6, 3)
    np.testing.assert_array_equal(five, five_crop(batch, 6))
    np.testing.assert_array_equal(five_crop(batch, 6, flip=True), five[:, :, :, ::-1])


# ---------------------------------------------------------------------------------- flips


def test_flip_kernels_follow_masks():
    batch = batch_of(n=4)
    mask = [True, False, False, True]
    got = flip_horizontal(batch, mask)
    for i in range(4):
        expected = np.fliplr(batch[i]) if mask[i] else batch[i]
        np.testing.assert_array_equal(got[i], expected)
    got = flip_vertical(batch, mask)
    for i in range(4):
        expected = np.flipud(batch[i]) if mask[i] else batch[i]
        np.testing.assert_array_equal(got[i], expected)
    np.testing.assert_array_equal(flip_horizontal(batch), batch[:, :, ::-1])


def test_flip_in_place_and_on_ten_crop_samples():
    batch = batch_of(n=3)
    original = batch.copy()
    same = flip_horizontal(batch, [True, False, True], out=batch)
    assert same is batch
    np.testing.assert_array_equal(batch[0], np.fliplr(original[0]))
    np.testing.assert_array_equal(batch[1], original[1])
    crops = ten_crop(original, 10)
    flipped = flip_horizontal(crops, [True, False, False])
    np.testing.assert_array_equal(flipped[0], crops[0][:, :, ::-1])
    np.testing.assert_array_equal(flipped[1:], crops[1:])


# ---------------------------------------------------------------------------------- scaling


def test_rescale():
    batch = batch_of(n=2)
    got = Rescale(1 / 255)(batch)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, batch / 255.0, rtol=1e-6)
    np.testing.assert_allclose(Rescale(2.0, offset=-1.0)(batch), batch * 2.0 - 1.0, rtol=1e-6)
    with pytest.raises(UsageError, match="must be finite numbers, got nan"):
        Rescale(float("nan"))
    with pytest.raises(UsageError, match="scale must be a number, got '1/255'"):
        Rescale("1/255")
    np.testing.assert_allclose(Rescale(np.array(0.5))(batch), batch * 0.5)  # a 0-d array


def test_minmax_normalize_per_image_and_flat_images():
    batch = batch_of(n=3)
    batch[2] = 77  # a flat image
    got = MinMaxNormalize()(batch)
    assert got.dtype == np.float32
    for i in range(2):
        image = batch[i].astype(np.float64)
        expected = (image - image.min()) / (image.max() - image.min())
        np.testing.assert_allclose(got[i], expected, atol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)


def test_percentile_normalize_clips_and_scales_per_image():
    batch = batch_of(n=3)
    batch[1, :2, :2] = 255  # outliers that clipping must tame
    batch[2] = 5
    got = PercentileNormalize(low=5, high=95)(batch)
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() <= 1
    for i in range(2):
        image = batch[i].astype(np.float64)
        lo, hi = np.percentile(image, 5), np.percentile(image, 95)
        expected = (np.clip(image, lo, hi) - lo) / (hi - lo)
        np.testing.assert_allclose(got[i], expected, atol=1e-5)
    np.testing.assert_array_equal(got[2], 0.0)
    with pytest.raises(UsageError, match="percentiles"):
        PercentileNormalize(low=90, high=10)
    with pytest.raises(UsageError, match="percentiles must be numbers; got low='a'"):
        PercentileNormalize("a", 10)  # it was a bare TypeError from the comparison
    assert PercentileNormalize(np.float32(2), 98).low == 2.0


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_normalizations_keep_the_detail_of_wide_data_types(dtype):
    # Values near 1e8 differ by less than float32's spacing there (8): converting first would
    # flatten the detail the normalisation is meant to show.
    rng = np.random.default_rng(3)
    batch = (1e8 + rng.integers(0, 51, (2, 6, 7, 3))).astype(dtype)
    minmax = MinMaxNormalize()(batch)
    percentile = PercentileNormalize(low=5, high=95)(batch)
    assert minmax.dtype == percentile.dtype == np.float32
    for i in range(2):
        image = batch[i].astype(np.float64)
        np.testing.assert_allclose(minmax[i], (image - image.min()) / np.ptp(image), atol=1e-6)
        lo, hi = np.percentile(image, 5), np.percentile(image, 95)
        np.testing.assert_allclose(percentile[i], (np.clip(image, lo, hi) - lo) / (hi - lo),
                                   atol=1e-6)


# ---------------------------------------------------------------------------------- compose


def run_one_by_one(ops, batch, seed):
    rng = np.random.default_rng(seed)
    for op in ops:
        batch = op(batch, rng)
    return batch


@pytest.mark.parametrize(
    "ops",
    [
        [RandomPatch(11, 13), RandomFlip(), MeanSubtract(MEANS)],
        [MeanSubtract(MEANS), RandomPatch(11, 13), RandomFlip(p=0.7)],
        [RandomPatch(11, 13), MeanSubtract(MEANS), RandomFlip()],
        [CenterCrop(9, 9), RandomFlip(), MeanSubtract(MEANS)],
        [TenCrop(9, 9), MeanSubtract(MEANS)],
        [MeanSubtract(MEANS), TenCrop(9, 9, mirror=False)],
        [RandomFlip(vertical=True), RandomPatch(11, 13), MeanSubtract(MEANS), Rescale(0.5)],
        [RandomFlip(), RandomPatch(11, 13), MeanSubtract(MEANS)],
        [RandomFlip(p=0.3), CenterCrop(9, 11), MeanSubtract(MEANS)],  # odd margin: 18 - 11
        [RandomFlip(), MeanSubtract(MEANS), RandomPatch(11, 13)],
    ],
    ids=repr,
)
def test_compose_gives_the_same_batches_as_steps_one_by_one(ops):
    batch = batch_of(n=6, h=16, w=18)
    pipeline = Compose(ops)
    got = pipeline(batch, np.random.default_rng(42))
    expected = run_one_by_one(ops, batch, 42)
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert pipeline.output_shape((16, 18, 3)) == got.shape[1:]


class RecordingLoader:
    """Fills an unread batch from ``source`` range by range and records every range."""

    def __init__(self, source, unread):
        import threading

        self.source, self.unread = source, unread
        self.ranges: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, start, stop):
        with self.lock:
            self.ranges.append((start, stop))
        self.unread[start:stop] = self.source[start:stop]


@pytest.mark.parametrize(
    "ops",
    [
        [RandomPatch(11, 13), RandomFlip(), MeanSubtract(MEANS)],
        [RandomFlip(), RandomPatch(11, 13), MeanSubtract(MEANS)],
        [CenterCrop(9, 9)],  # one strided copy for the whole batch
        [TenCrop(9, 9), MeanSubtract(MEANS)],
        [TenCrop(9, 9, mirror=False)],
        [MeanSubtract(MEANS), RandomPatch(11, 13)],  # first step cuts nothing: loaded first
        [],
    ],
    ids=repr,
)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_loader_fills_each_range_once_before_it_is_cut(ops, threads, monkeypatch):
    import dsprep.preprocess as preprocess

    # Every batch large enough to be split between the two kernel threads.
    monkeypatch.setattr(preprocess, "_PARALLEL_MIN_BYTES", 0)
    # The setting as it was (the environment's, or not yet read) comes back after the test.
    monkeypatch.setattr(preprocess._THREADS, "enabled", preprocess._THREADS.enabled)
    preprocess.set_kernel_threads(threads)
    source = batch_of(n=21, h=16, w=18)
    expected = run_one_by_one(ops, source, 5)
    unread = np.full_like(source, 255)  # anything cut before its load shows up as 255s
    loader = RecordingLoader(source, unread)
    got = Compose(ops)(unread, np.random.default_rng(5), load=loader)
    np.testing.assert_array_equal(got, expected)
    covered = sorted(loader.ranges)
    assert covered[0][0] == 0 and covered[-1][1] == 21
    assert all(a[1] == b[0] for a, b in zip(covered[:-1], covered[1:], strict=True))  # no gaps


def test_fused_patch_flip_mean_matches_book_reference():
    batch = batch_of(n=8, h=16, w=18)
    got = Compose([RandomPatch(11, 13), RandomFlip(), MeanSubtract(MEANS)])(
        batch, np.random.default_rng(3)
    )
    assert got.dtype == np.float32 and got.shape == (8, 11, 13, 3)
    for i in range(8):
        candidates = []
        for y in range(16 - 11 + 1):
            for x in range(18 - 13 + 1):
                window = batch[i, y : y + 11, x : x + 13]
                candidates += [ref_mean(window, MEANS), ref_mean(np.fliplr(window), MEANS)]
        assert any(np.allclose(got[i], c, atol=1e-4) for c in candidates)


def test_compose_chain_errors():
    batch = batch_of(n=4, h=16, w=16)
    nested = Compose([Compose([CenterCrop(12, 12)]), RandomPatch(8, 8)])
    assert len(nested) == 2 and nested.output_shape((16, 16, 3)) == (8, 8, 3)
    with pytest.raises(UsageError, match="patch 20x20 is larger than the 12x12"):
        Compose([CenterCrop(12, 12), RandomPatch(20, 20)]).output_shape((16, 16, 3))
    with pytest.raises(UsageError, match="before any ten-crop"):
        Compose([TenCrop(8, 8), RandomPatch(4, 4)]).output_shape((16, 16, 3))
    with pytest.raises(UsageError, match="not a preprocessor"):
        Compose([lambda b, r: b])
    np.testing.assert_array_equal(Compose([])(batch), batch)


def test_compose_fuses_crop_flip_and_mean_into_one_pass(monkeypatch):
    import dsprep.preprocess as preprocess

    def whole_image_subtraction(*args, **kwargs):
        raise AssertionError("the full-size batch was converted to float")

    def whole_image_flip(*args, **kwargs):
        raise AssertionError("the full-size batch was mirrored")

    import dsprep.augment as augment

    monkeypatch.setattr(preprocess, "subtract_mean", whole_image_subtraction)
    monkeypatch.setattr(augment, "flip_horizontal", whole_image_flip)
    batch = batch_of(n=3, h=16, w=16)
    for ops in (
        [RandomPatch(8, 8), RandomFlip(), MeanSubtract(MEANS)],
        [RandomFlip(), RandomPatch(8, 8), MeanSubtract(MEANS)],
        [MeanSubtract(MEANS), CenterCrop(8, 8)],
        [TenCrop(8, 8), MeanSubtract(MEANS)],
    ):
        out = Compose(ops)(batch, np.random.default_rng(0))
        assert out.dtype == np.float32
    with pytest.raises(AssertionError, match="converted"):
        Compose([MeanSubtract(MEANS)])(batch, np.random.default_rng(0))


def test_random_steps_need_a_generator_and_pipelines_pickle():
    import pickle

    batch = batch_of(n=3, h=16, w=16)
    with pytest.raises(UsageError, match="numpy.random.Generator"):
        RandomPatch(8, 8)(batch, None)
    with pytest.raises(UsageError, match="numpy.random.Generator"):
        Compose([CenterCrop(8, 8), RandomFlip()])(batch, 7)
    # Worker processes receive pipelines by pickling; a copy must behave identically.
    pipeline = Compose([RandomPatch(8, 8), RandomFlip(), MeanSubtract(MEANS)])
    copy = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(
        copy(batch, np.random.default_rng(4)), pipeline(batch, np.random.default_rng(4))
    )


def test_large_outputs_are_recycled_only_after_release():
    # An unusual size so no other test's buffers are in the pool.
    batch = np.random.default_rng(0).integers(0, 256, (3, 521, 523, 3), dtype=np.uint8)
    means = (10.0, 20.0, 30.0)
    first = subtract_mean(batch, means)
    address = first.ctypes.data
    kept = first[1:]  # a view keeps the buffer in use
    del first
    second = subtract_mean(batch[::-1], means)
    assert second.ctypes.data != address
    np.testing.assert_allclose(kept, batch[1:].astype(np.float64) - means, atol=1e-4)
    del kept
    third = subtract_mean(batch, means)
    assert third.ctypes.data == address  # released, so reused
    np.testing.assert_allclose(third, batch.astype(np.float64) - means, atol=1e-4)
    np.testing.assert_allclose(second, batch[::-1].astype(np.float64) - means, atol=1e-4)


def _pool(max_bytes=None):
    from dsprep.preprocess import _BufferPool

    return _BufferPool(max_bytes)


MIB = 1 << 20


def test_pool_reuses_only_the_exact_size():
    pool = _pool(64 * MIB)
    small = pool.empty((5 * MIB,), np.uint8)
    big = pool.empty((7 * MIB,), np.uint8)
    small_at, big_at = small.ctypes.data, big.ctypes.data
    del small, big
    assert pool.idle_bytes() == 12 * MIB
    again = pool.empty((7 * MIB,), np.uint8)
    assert again.ctypes.data == big_at and again.nbytes == 7 * MIB
    other = pool.empty((5 * MIB // 4,), np.float32)  # same bytes, another dtype and shape
    assert other.ctypes.data == small_at and other.shape == (5 * MIB // 4,)
    assert pool.idle_bytes() == 0


def test_pool_survives_a_buffer_returned_while_it_looks_up_a_size():
    # A garbage-collection pass can run a finalizer in the middle of empty(); stand in for it
    # with a free-list lookup that releases another array on the same thread at that moment.
    pool = _pool(64 * MIB)
    held = {"array": pool.empty((6 * MIB,), np.uint8)}
    for size in (5, 9):
        tmp = pool.empty((size * MIB,), np.uint8)
        del tmp

    class ReleasingDict(dict):
        def get(self, key, default=None):
            held.pop("array", None)  # runs the pool's finalizer right here
            return super().get(key, default)

    pool._free = ReleasingDict(pool._free)
    got = pool.empty((9 * MIB,), np.uint8)
    assert got.nbytes == 9 * MIB
    got[:] = 1  # the whole buffer is ours: no overflow into a smaller one
    assert "array" not in held
    assert pool.idle_bytes() == 11 * MIB  # the 5 MiB one and the 6 MiB one just returned
    assert sorted(pool._free) == [5 * MIB, 6 * MIB]


def test_pool_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("DSPREP_BUFFER_POOL_BYTES", raising=False)
    assert _pool().max_bytes == 512 * MIB
    monkeypatch.setenv("DSPREP_BUFFER_POOL_BYTES", str(8 * MIB))
    pool = _pool()
    kept = pool.empty((6 * MIB,), np.uint8)
    too_big = pool.empty((9 * MIB,), np.uint8)
    del kept, too_big
    assert pool.idle_bytes() == 6 * MIB  # the 9 MiB one is never pooled
    monkeypatch.setenv("DSPREP_BUFFER_POOL_BYTES", "0")
    off = _pool()
    buf = off.empty((6 * MIB,), np.uint8)
    del buf
    assert off.idle_bytes() == 0
    monkeypatch.setenv("DSPREP_BUFFER_POOL_BYTES", "lots")
    with pytest.raises(UsageError, match="DSPREP_BUFFER_POOL_BYTES='lots' is not a byte count"):
        _pool().empty((6 * MIB,), np.uint8)


@pytest.mark.parametrize("n", [2, 3, 7, 128, 1000])
def test_a_batch_is_shared_out_in_shrinking_ranges_that_cover_it_once(n):
    from dsprep.preprocess import _MIN_RANGE, _Ranges

    ranges = list(_Ranges(n))
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges[:-1], ranges[1:], strict=True))
    sizes = [b - a for a, b in ranges]
    assert sizes == sorted(sizes, reverse=True)
    assert all(size >= _MIN_RANGE for size in sizes[:-1])
    if n >= 8 * _MIN_RANGE:
        assert sizes[0] == n // 4 and sizes[-1] <= _MIN_RANGE  # large first, small at the end


def test_when_one_kernel_thread_fails_the_other_takes_no_new_range(monkeypatch):
    import threading

    import dsprep.preprocess as preprocess

    monkeypatch.setattr(preprocess._THREADS, "enabled", True)
    caller = threading.get_ident()
    caller_failed = threading.Event()
    done = []

    def work(start, stop):
        if threading.get_ident() == caller:
            caller_failed.set()
            raise RuntimeError("a read failed")
        caller_failed.wait(10)  # the helper is still on its range when the caller fails
        done.append((start, stop))

    with pytest.raises(RuntimeError, match="a read failed"):
        preprocess._split_images(64, 1 << 30, work)
    assert len(done) <= 1  # the range it held when the caller failed, and no other


def test_large_batches_split_between_two_threads_give_the_same_pixels(monkeypatch):
    import threading

    import dsprep.preprocess as preprocess

    monkeypatch.setattr(preprocess._THREADS, "enabled", True)
    monkeypatch.setattr(preprocess, "_PARALLEL_MIN_BYTES", 1 << 10)
    seen = set()
    helper_wrote = threading.Event()
    real = preprocess._WindowWriter.write

    def spy(self, view, flip, dst):
        name = threading.current_thread().name
        seen.add(name)
        if name.startswith("dsprep-kernel"):
            helper_wrote.set()
        else:
            # The calling thread would otherwise take every range of so small a batch before
            # the helper wakes up: hold it until the helper has taken one.
            helper_wrote.wait(10)
        real(self, view, flip, dst)

    monkeypatch.setattr(preprocess._WindowWriter, "write", spy)
    batch = batch_of(n=6, h=16, w=18)
    RGB = [MEANS[k] for k in "RGB"]
    tops, lefts = [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]
    flips = [True, False, False, True, True, False]
    got = crop(batch, tops, lefts, (11, 13), flips=flips, mean=RGB)
    assert any(name.startswith("dsprep-kernel") for name in seen)
    for i in range(6):
        window = batch[i, tops[i] : tops[i] + 11, lefts[i] : lefts[i] + 13]
        window = np.fliplr(window) if flips[i] else window
        np.testing.assert_allclose(got[i], ref_mean(window, MEANS), atol=1e-4)
    tens = ten_crop(batch, (11, 13), mean=RGB)
    monkeypatch.setattr(preprocess._THREADS, "enabled", False)
    np.testing.assert_array_equal(tens, ten_crop(batch, (11, 13), mean=RGB))


def test_kernel_threads_setting_is_checked(monkeypatch):
    import dsprep.preprocess as preprocess

    monkeypatch.setenv("DSPREP_KERNEL_THREADS", "1")
    assert preprocess._kernel_threads_from_env() == 1
    monkeypatch.setenv("DSPREP_KERNEL_THREADS", "many")
    with pytest.raises(UsageError, match="DSPREP_KERNEL_THREADS='many' is not 1 or 2"):
        preprocess._kernel_threads_from_env()
    monkeypatch.setattr(preprocess._THREADS, "enabled", None)
    preprocess.set_kernel_threads(1)
    assert preprocess._THREADS.allowed() is False
    with pytest.raises(UsageError, match="threads must be 1 or 2"):
        preprocess.set_kernel_threads(4)
