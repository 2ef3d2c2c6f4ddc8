"""The HDF5 schema: writing atomically, opening, and refusing what is not dsprep's."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dsprep import store
from dsprep.errors import DatasetFormatError, DestinationExistsError, LayoutError


def _arrays(rng, n=10, h=8, w=6):
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 3, n)


def test_write_arrays_round_trip(tmp_path, rng):
    images, labels = _arrays(rng)
    path = store.write_arrays(tmp_path / "a.hdf5", images, labels, ["a", "b", "c"])
    with store.open_dataset(path) as db:
        np.testing.assert_array_equal(db["images"][()], images)
        np.testing.assert_array_equal(db["labels"][()], labels)
        assert store.label_names(db) == ["a", "b", "c"]
        assert db.attrs["schema"] == store.SCHEMA
        assert tuple(db.attrs["image_size"]) == (8, 6)
        assert db.attrs["count"] == 10
        # The book-style reader loop works unchanged.
        bs, seen = 4, 0
        for i in range(0, db["images"].shape[0], bs):
            seen += len(db["images"][i:i + bs])
            assert len(db["labels"][i:i + bs]) == len(db["images"][i:i + bs])
        assert seen == 10


def test_failed_write_leaves_no_file(tmp_path, rng):
    images, labels = _arrays(rng)
    path = tmp_path / "b.hdf5"
    with pytest.raises(RuntimeError):
        with store.HDF5Writer(path, 10, (8, 6), ["a", "b", "c"]) as writer:
            writer.append(images[:5], labels[:5], ["x"] * 5)
            raise RuntimeError("interrupted")
    assert not path.exists()
    assert not store.partial_path(path).exists()


def test_existing_file_needs_overwrite(tmp_path, rng):
    images, labels = _arrays(rng)
    path = store.write_arrays(tmp_path / "c.hdf5", images, labels, ["a", "b", "c"])
    with pytest.raises(DestinationExistsError, match="--force"):
        store.write_arrays(path, images, labels, ["a", "b", "c"])


def test_open_rejects_missing_non_hdf5_and_foreign(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        store.open_dataset(tmp_path / "missing.hdf5")
    text = tmp_path / "text.hdf5"
    text.write_text("hello")
    with pytest.raises(DatasetFormatError, match="not a readable HDF5"):
        store.open_dataset(text)
    foreign = tmp_path / "foreign.hdf5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(DatasetFormatError, match="no 'images' dataset"):
        store.open_dataset(foreign)
