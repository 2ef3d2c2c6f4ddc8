"""Streaming channel statistics: exact counts, merge order, means.json."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsprep import stats
from dsprep.errors import DatasetFormatError, LayoutError
from dsprep.stats import ChannelStats, channel_sums, means_record, read_means, write_means


def test_channel_sums_match_integer_numpy(rng):
    pixels = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    flat = pixels.reshape(-1, 3).astype(np.int64)
    count, sums, squares = channel_sums(pixels)
    assert count == 5 * 7 * 9
    np.testing.assert_array_equal(sums, flat.sum(axis=0))
    np.testing.assert_array_equal(squares, (flat * flat).sum(axis=0))
    # A non-contiguous view sums the same pixels as its copy.
    view = pixels[:, ::2, 1:]
    flat = view.reshape(-1, 3).astype(np.int64)
    count, sums, squares = channel_sums(view)
    assert count == flat.shape[0]
    np.testing.assert_array_equal(sums, flat.sum(axis=0))
    np.testing.assert_array_equal(squares, (flat * flat).sum(axis=0))


@pytest.mark.parametrize("n", [1, 63, 65536, 256 * 341])
def test_split_planes_are_separate_and_start_at_different_cache_line_offsets(n, rng):
    planes = stats._planes(n)
    starts = [p.ctypes.data for p in planes]
    assert all(p.shape == (1, n) and p.flags.c_contiguous for p in planes)
    assert len({s % 64 for s in starts}) == 3  # cv2.split slows to a third when they match
    assert all(b - a >= n for a, b in zip(starts[:-1], starts[1:], strict=True))  # no overlap
    pixels = rng.integers(0, 256, (1, n, 3), dtype=np.uint8)
    count, sums, _ = channel_sums(pixels)
    np.testing.assert_array_equal(sums, pixels.reshape(-1, 3).astype(np.int64).sum(axis=0))


def test_image_sums_add_images_one_by_one_exactly(rng, monkeypatch):
    monkeypatch.setattr(stats, "_PIECE", 100)  # the third image is cut into pieces
    images = [rng.integers(0, 256, (7, 9, 3), dtype=np.uint8),
              np.full((5, 6, 3), 255, dtype=np.uint8),
              rng.integers(0, 256, (12, 11, 3), dtype=np.uint8),
              rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)[:, ::2]]  # not contiguous
    acc = stats.ImageSums()
    for image in images:
        acc.add(image)
    flat = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.int64)
    assert (acc.pixels, acc.images) == (len(flat), 4)
    np.testing.assert_array_equal(acc.sums, flat.sum(axis=0))
    np.testing.assert_array_equal(acc.squares, (flat * flat).sum(axis=0))
    assert acc.sums.dtype == acc.squares.dtype == np.int64


def test_channel_sums_stay_exact_on_large_bright_blocks(monkeypatch):
    # All-255 pixels give the largest sums; small pieces exercise the piecewise loop.
    monkeypatch.setattr(stats, "_PIECE", 1000)
    pixels = np.full((70_001, 3), 255, dtype=np.uint8)
    pixels[::7] = 254
    flat = pixels.astype(np.int64)
    count, sums, squares = channel_sums(pixels)
    assert count == 70_001
    np.testing.assert_array_equal(sums, flat.sum(axis=0))
    np.testing.assert_array_equal(squares, (flat * flat).sum(axis=0))


@pytest.mark.parametrize("fill", ["random", "bright", "dark", "extremes"])
def test_channel_sums_are_exact_on_a_full_piece(fill):
    """A whole OpenCV piece (2**24 pixels) with the values that strain float64 most."""
    n = stats._PIECE
    rng = np.random.default_rng(7)
    if fill == "random":
        pixels = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    elif fill == "bright":  # the largest sums and squares
        pixels = np.full((n, 3), 255, dtype=np.uint8)
    elif fill == "dark":  # a tiny variance next to a zero mean
        pixels = np.zeros((n, 3), dtype=np.uint8)
        pixels[12345] = (255, 1, 0)
    else:  # the largest variance: half 0, half 255
        pixels = np.zeros((n, 3), dtype=np.uint8)
        pixels[::2] = 255
        pixels[1::4, 1] = 254
    count, sums, squares = channel_sums(pixels)
    assert count == n
    # Exact integer sums, a block at a time (the whole piece in int64 would take 400 MB).
    want_sums = np.zeros(3, np.int64)
    want_squares = np.zeros(3, np.int64)
    for start in range(0, n, 1 << 20):
        wide = pixels[start:start + (1 << 20)].astype(np.int64)
        want_sums += wide.sum(axis=0)
        want_squares += (wide * wide).sum(axis=0)
    np.testing.assert_array_equal(sums, want_sums)
    np.testing.assert_array_equal(squares, want_squares)


def test_channel_sums_reject_other_shapes():
    with pytest.raises(ValueError, match="uint8"):
        channel_sums(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        channel_sums(np.zeros((4, 4, 4), dtype=np.uint8))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 12), max_size=4),
    low=st.integers(0, 255),
)
def test_merged_pieces_equal_direct_float64(seed, n, cuts, low):
    gen = np.random.default_rng(seed)
    block = gen.integers(low, 256, (n, 5, 4, 3), dtype=np.uint8)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    total = ChannelStats()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = ChannelStats()
        part.update(block[a:b])
        total += part
    flat = block.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(total.mean, flat.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(total.std, flat.std(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(total.sums, flat.sum(axis=0))
    np.testing.assert_array_equal(total.squares, (flat ** 2).sum(axis=0))
    assert total.images == n
    assert total.pixels == n * 5 * 4


def test_constant_image_has_zero_std():
    acc = ChannelStats()
    acc.update(np.full((3, 8, 8, 3), (10, 200, 255), dtype=np.uint8))
    np.testing.assert_array_equal(acc.mean, [10, 200, 255])
    np.testing.assert_array_equal(acc.std, [0, 0, 0])


def test_empty_stats_are_zero():
    acc = ChannelStats()
    np.testing.assert_array_equal(acc.mean, np.zeros(3))
    np.testing.assert_array_equal(acc.std, np.zeros(3))
    assert acc.pixels == 0 and acc.images == 0


def test_single_image_counts_as_one(rng):
    acc = ChannelStats()
    acc.update(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    assert acc.images == 1
    acc.update(rng.integers(0, 256, (2, 6, 5, 3), dtype=np.uint8))
    assert acc.images == 3


def test_means_file_round_trip(tmp_path, rng):
    pixels = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    acc = ChannelStats()
    acc.update(pixels)
    path = write_means(tmp_path / "sub" / "means.json", means_record(acc, "train.hdf5"))
    record = json.loads(path.read_text())
    flat = pixels.reshape(-1, 3).astype(np.float64)
    assert [record[c] for c in "RGB"] == pytest.approx(flat.mean(axis=0).tolist(), abs=1e-9)
    assert [record["std"][c] for c in "RGB"] == pytest.approx(flat.std(axis=0).tolist(), abs=1e-9)
    assert record["count"] == 4 and record["source"] == "train.hdf5"
    np.testing.assert_allclose(read_means(path), flat.mean(axis=0), atol=1e-9)
    assert not (tmp_path / "sub" / "means.json.partial").exists()


def test_read_means_accepts_the_book_format_and_rejects_others(tmp_path):
    book = tmp_path / "book.json"
    book.write_text(json.dumps({"R": 124.96, "G": 115.97, "B": 106.13}))
    np.testing.assert_array_equal(read_means(book), [124.96, 115.97, 106.13])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"R": 1.0, "G": 2.0}))
    with pytest.raises(DatasetFormatError, match="no B key"):
        read_means(bad)
    text = tmp_path / "text.json"
    text.write_text("not json")
    with pytest.raises(DatasetFormatError, match="not a readable means.json"):
        read_means(text)
    nan = tmp_path / "nan.json"
    nan.write_text('{"R": NaN, "G": 1, "B": 2}')
    with pytest.raises(DatasetFormatError, match="finite"):
        read_means(nan)
    with pytest.raises(LayoutError, match="does not exist"):
        read_means(tmp_path / "missing.json")
    # A folder (where the HDF5 files are) names its means.json when it has one.
    with pytest.raises(LayoutError, match="is a folder, not a means file; give the means.json"):
        read_means(tmp_path)
    (tmp_path / "means.json").write_text(book.read_text())
    with pytest.raises(LayoutError, match=f"is a folder, not a means file; give "
                       f"{re.escape(str(tmp_path / 'means.json'))}$"):
        read_means(tmp_path)
