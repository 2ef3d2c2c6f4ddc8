"""Ten-crop averaging and metrics against hand-built cases and brute-force references."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from helpers import smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st

from dsprep.errors import UsageError
from dsprep.evaluate import (
    confusion_matrix,
    per_class_accuracy,
    rank_accuracy,
    roc_auc,
    ten_crop_predict,
)
from dsprep.preprocess import TenCrop


def fake_model(x):
    """Three 'class probabilities' that depend on where a crop was cut and on its mirror."""
    x = x.astype(np.float64)
    left = x[:, :, : x.shape[2] // 2].mean(axis=(1, 2, 3))
    right = x[:, :, x.shape[2] // 2 :].mean(axis=(1, 2, 3))
    top = x[:, : x.shape[1] // 2].mean(axis=(1, 2, 3))
    scores = np.stack([left, right, top], axis=1) + 1.0
    return scores / scores.sum(axis=1, keepdims=True)


def book_ten_crop(image, h, w):
    H, W = image.shape[:2]
    corners = [(0, 0), (0, W - w), (H - h, 0), (H - h, W - w), ((H - h) // 2, (W - w) // 2)]
    crops = [image[y : y + h, x : x + w] for y, x in corners]
    return crops + [np.fliplr(c) for c in crops]


def batches(images, labels, batch_size):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def test_ten_crop_predict_on_full_images_matches_reference():
    images = np.stack([smooth_image(20, 24, seed=s) for s in range(7)])
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    probs, got_labels = ten_crop_predict(fake_model, batches(images, labels, 3), size=(12, 16))
    expected = np.stack(
        [fake_model(np.stack(book_ten_crop(im, 12, 16))).mean(axis=0) for im in images]
    )
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    np.testing.assert_array_equal(got_labels, labels)


def test_a_prediction_numpy_cannot_read_is_said_with_what_to_return():
    class BFloat16:  # torch's bfloat16 tensor, as autocast returns it
        def __array__(self, dtype=None, copy=None):
            raise TypeError("Got unsupported ScalarType BFloat16")

    images = np.stack([smooth_image(20, 24, seed=s) for s in range(2)])
    with pytest.raises(TypeError, match=r"predict_fn returned a BFloat16 that NumPy cannot read "
                                        r"\(Got unsupported ScalarType BFloat16\); return a NumPy "
                                        r"array or a CPU float32 tensor"):
        ten_crop_predict(lambda x: BFloat16(), batches(images, np.array([0, 1]), 2),
                         size=(12, 16))


def test_ten_crop_predict_on_ten_crop_batches_with_one_hot_labels():
    images = np.stack([smooth_image(20, 20, seed=s) for s in range(5)])
    labels = np.array([2, 0, 1, 1, 0])
    one_hot = np.eye(3)[labels]
    crops = TenCrop(14, 14)(images)

    def gen():
        yield crops[:3], one_hot[:3]
        yield crops[3:], one_hot[3:]

    probs, got_labels = ten_crop_predict(fake_model, gen())
    expected = np.stack(
        [fake_model(np.stack(book_ten_crop(im, 14, 14))).mean(axis=0) for im in images]
    )
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    np.testing.assert_array_equal(got_labels, labels)
    # A size that is not the crops' was ignored; the crops' own size is fine.
    with pytest.raises(UsageError, match=r"size=\(12, 12\) but the generator yields ten crops "
                                          "of 14x14"):
        ten_crop_predict(fake_model, gen(), size=12)
    np.testing.assert_allclose(ten_crop_predict(fake_model, gen(), size=14)[0], expected,
                               rtol=1e-12)


@pytest.mark.parametrize("ten_crops", [True, False])
def test_ten_crop_predict_refuses_scores_of_other_widths(ten_crops):
    # One crop position (or one batch) scored with another number of classes was averaged in
    # by broadcasting, or failed at the end with numpy's error.
    images = np.stack([smooth_image(20, 20, seed=s) for s in range(5)])
    x = TenCrop(14, 14)(images) if ten_crops else images
    for narrow_call in (1, 4):  # the first crop position, or the first of the second batch
        calls = []

        def model(batch, narrow_call=narrow_call, calls=calls):
            calls.append(len(batch))
            return np.ones((len(batch), 1 if len(calls) == narrow_call else 3)) / 3

        batches = [(x[:3], np.zeros(3, int)), (x[3:], np.zeros(2, int))]
        with pytest.raises(UsageError, match=r"returned (1|3) class scores per image, then "
                                             r"(3|1); it must score the same classes"):
            ten_crop_predict(model, batches, size=None if ten_crops else 14)


def test_labels_that_are_not_numbers_are_refused_by_name():
    for labels in (np.array(["0", "1"]), np.array([None, 1], dtype=object)):
        with pytest.raises(UsageError, match="labels must be numbers"):
            rank_accuracy(np.eye(3)[:2], labels)
    assert rank_accuracy(np.eye(2), np.array([False, True]), k=1) == {1: 1.0}
    # bfloat16 (mixed precision's scores and one-hot rows) is a number too.
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 comes with the training extra")
    one_hot = np.eye(3)[[2, 0, 1]].astype(ml_dtypes.bfloat16)
    assert rank_accuracy(np.eye(3)[[2, 0, 0]].astype(ml_dtypes.bfloat16), one_hot,
                         k=1) == {1: pytest.approx(2 / 3)}


def test_ten_crop_predict_reads_one_hot_rows_of_a_single_class_as_class_0(tmp_path):
    # A one-class generator's one-hot rows are (B, 1) of ones: class 0, not a column of ids.
    from dsprep.generators import HDF5Generator
    from dsprep.store import write_arrays

    images = np.stack([smooth_image(12, 12, seed=s) for s in range(5)])
    path = write_arrays(tmp_path / "one.hdf5", images, [0] * 5, ["only"])
    gen = HDF5Generator(path, batch_size=2, shuffle="none", one_hot=True)
    assert gen[0][1].shape == (2, 1)
    probs, labels = ten_crop_predict(lambda x: np.ones((len(x), 1)), gen, size=8)
    assert probs.shape == (5, 1)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0])


def test_ten_crop_predict_holds_one_crop_batch_at_a_time():
    batch_size, h, w = 8, 48, 48
    images = np.stack([smooth_image(64, 64, seed=s) for s in range(batch_size)])
    seen = []

    def recording_model(x):
        seen.append(x.shape)
        return np.full((len(x), 2), 0.5)

    one_crop_batch = batch_size * h * w * 3
    tracemalloc.start()
    try:
        ten_crop_predict(recording_model, [(images, np.zeros(batch_size, int))], size=h)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == [(batch_size, h, w, 3)] * 10
    # All ten crops at once would need 10 crop batches; position by position needs about one.
    assert peak < 3 * one_crop_batch


def test_ten_crop_predict_errors():
    images = np.zeros((2, 10, 10, 3), np.uint8)
    with pytest.raises(UsageError, match="size"):
        ten_crop_predict(fake_model, [(images, np.zeros(2, int))])
    with pytest.raises(UsageError, match="larger than"):
        ten_crop_predict(fake_model, [(images, np.zeros(2, int))], size=12)
    with pytest.raises(UsageError, match="no batches"):
        ten_crop_predict(fake_model, [], size=8)
    with pytest.raises(UsageError, match="one row of class probabilities"):
        ten_crop_predict(lambda x: np.zeros(3), [(images, np.zeros(2, int))], size=8)
    # A path where the generator goes failed with "not enough values to unpack".
    with pytest.raises(UsageError, match=r"ten_crop_predict takes a generator .* not the path "
                                         r"'data/test.hdf5'; make one with HDF5Generator"):
        ten_crop_predict(fake_model, "data/test.hdf5", size=8)


def test_rank_accuracy_hand_built():
    probs = np.array(
        [
            [0.50, 0.20, 0.10, 0.10, 0.05, 0.05],  # label 0: rank 1
            [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 3: rank 4
            [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # label 5: rank 6
            [0.10, 0.60, 0.10, 0.10, 0.05, 0.05],  # label 2: tied with class 0 (lower) -> rank 3
        ]
    )
    labels = np.array([0, 3, 5, 2])
    assert rank_accuracy(probs, labels) == {1: 0.25, 5: 0.75}
    assert rank_accuracy(probs, labels, k=2) == {2: 0.25}
    assert rank_accuracy(probs, labels, k=3) == {3: 0.5}
    assert rank_accuracy(probs, labels, k=(1, 4, 6, 10)) == {1: 0.25, 4: 0.75, 6: 1.0, 10: 1.0}
    assert rank_accuracy(probs, np.eye(6)[labels], k=1) == {1: 0.25}
    assert rank_accuracy(probs, labels[:, None], k=(1, 5)) == {1: 0.25, 5: 0.75}  # a column
    with pytest.raises(UsageError, match=r"one column per class \(6\)"):
        rank_accuracy(probs, np.eye(7)[labels])
    with pytest.raises(UsageError, match="class ids"):
        rank_accuracy(probs, np.array([0, 1, 2, 6]))
    for k in (0, 2.9, [1, 2.5], None, True):
        with pytest.raises(UsageError, match="k must"):
            rank_accuracy(probs, labels, k=k)
    assert rank_accuracy(probs, labels, k=np.array([1, 5])) == {1: 0.25, 5: 0.75}
    # A sigmoid's one column has no ranks: its (N, 1) labels used to read as one-hot rows, all
    # class 0, and every row counted right.
    with pytest.raises(UsageError, match=r"one column .*np.hstack\(\[1 - p, p\]\)"):
        rank_accuracy(np.array([[0.9], [0.1], [0.2], [0.8]]), np.array([[1], [1], [1], [0]]))


def test_rank_accuracy_breaks_ties_like_argmax_and_fails_non_finite_rows():
    uniform = np.full((4, 4), 0.25)
    labels = np.array([0, 1, 2, 3])
    # argmax picks class 0 for every row, so only the row labelled 0 is right at rank 1;
    # at rank k the rows labelled 0..k-1 are right.
    assert rank_accuracy(uniform, labels, k=(1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
    probs = np.array(
        [
            [np.nan, np.nan, np.nan],  # label 0: no scores at all -> wrong
            [0.9, np.nan, 0.0],  # label 0: top score, but the row is broken -> wrong
            [0.2, 0.5, np.inf],  # label 2: infinite -> wrong
            [0.1, 0.7, 0.2],  # label 1: rank 1
            [0.4, 0.2, 0.4],  # label 2: tied with class 0 (lower index) -> rank 2
        ]
    )
    labels = np.array([0, 0, 2, 1, 2])
    assert rank_accuracy(probs, labels, k=(1, 2, 3)) == {1: 0.2, 2: 0.4, 3: 0.4}


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 30),
    classes=st.integers(2, 8),
    seed=st.integers(0, 10_000),
)
def test_rank_accuracy_against_sorting_reference(n, classes, seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, classes))  # ties have probability zero here
    labels = rng.integers(0, classes, n)
    got = rank_accuracy(probs, labels, k=range(1, classes + 1))
    for k in range(1, classes + 1):
        top = np.argsort(-probs, axis=1)[:, :k]
        expected = np.mean([labels[i] in top[i] for i in range(n)])
        assert got[k] == pytest.approx(expected)
    assert got[classes] == 1.0


def test_roc_auc_hand_built():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), labels) == pytest.approx(0.75)
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.full(4, 0.5), labels) == 0.5
    two_columns = np.stack([1 - np.array([0.1, 0.4, 0.35, 0.8]), [0.1, 0.4, 0.35, 0.8]], axis=1)
    assert roc_auc(two_columns, np.eye(2)[labels]) == pytest.approx(0.75)
    assert roc_auc(two_columns, labels[:, None]) == pytest.approx(0.75)
    with pytest.raises(UsageError, match="both classes"):
        roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(UsageError, match="0 or 1"):
        roc_auc(np.array([0.1, 0.2]), np.array([0, 2]))
    # NaN scores (a diverged model) used to rank last and give a confident 1.0 here.
    with pytest.raises(UsageError, match="finite scores; 2 of 4 are NaN"):
        roc_auc(np.array([0.1, 0.2, np.nan, np.nan]), labels)


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.integers(0, 5), min_size=2, max_size=25),  # small ints: many ties
    seed=st.integers(0, 10_000),
)
def test_roc_auc_equals_pairwise_probability(scores, seed):
    scores = np.array(scores, dtype=float)
    labels = np.random.default_rng(seed).integers(0, 2, len(scores))
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    assert roc_auc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)))


def test_confusion_matrix_and_per_class_accuracy():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    preds = np.array([0, 1, 1, 1, 2, 2, 0, 3])
    expected = np.array(
        [
            [1, 1, 0, 0],
            [0, 2, 1, 0],
            [1, 0, 1, 0],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_array_equal(confusion_matrix(labels, preds, 4), expected)
    probs = np.eye(4)[preds] * 0.7 + 0.05
    np.testing.assert_array_equal(confusion_matrix(labels, probs, 4), expected)
    np.testing.assert_array_equal(confusion_matrix(labels[:, None], probs, 4), expected)
    # One class: (N, 1) rows of 1.0 are its one-hot rows, not ids of 1.
    np.testing.assert_array_equal(confusion_matrix(np.ones((3, 1)), np.ones((3, 1)), 1), [[3]])
    with pytest.raises(UsageError, match=r"^preds: one-hot rows must have one column per class"):
        confusion_matrix(labels, np.eye(5)[preds], 4)
    with pytest.raises(UsageError, match=r"^labels: one-hot rows must have one column"):
        per_class_accuracy(np.eye(5)[labels], preds, 4)
    # Sigmoid scores given as preds: the fault is named where it is, with the way out.
    with pytest.raises(UsageError, match=r"^preds must be whole class ids, got fractional values "
                                         r"\(scores .*\(scores > 0.5\)"):
        confusion_matrix(np.array([0, 1]), np.array([0.2, 0.9]), 2)
    np.testing.assert_allclose(per_class_accuracy(labels, preds, 4), [0.5, 2 / 3, 0.5, 1.0])
    absent = per_class_accuracy(labels, preds, 5)
    assert np.isnan(absent[4]) and absent[0] == 0.5
    with pytest.raises(UsageError, match="class ids in 0..2"):
        confusion_matrix(labels, preds, 3)
    with pytest.raises(UsageError, match="differ in length"):
        confusion_matrix(labels, preds[:-1], 4)


@pytest.mark.parametrize("size", [0, (4, 0), (4,), True, (2.5, 4)])
def test_ten_crop_predict_refuses_a_crop_size_that_is_not_one(size):
    gen = [(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))]
    with pytest.raises(UsageError, match="size|height|width"):
        ten_crop_predict(lambda x: np.ones((len(x), 2)) / 2, gen, size=size)
