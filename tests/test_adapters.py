"""Keras and tf.data adapters: PyDataset, tf.data.Dataset, the MeanSubtraction layer, mean_rgb."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from dsprep import store
from dsprep.errors import DatasetFormatError, LayoutError, UsageError
from dsprep.generators import HDF5Generator

pytest.importorskip("keras", reason="the adapters need Keras 3 (the 'train' extra)")

from dsprep.adapters import EpochSync  # noqa: E402  (after the skip: needs Keras)

NAMES = ["a", "b", "c"]


@pytest.fixture
def h5file(tmp_path):
    rng = np.random.default_rng(0)
    n = 45
    labels = np.arange(n) % 3
    # Each class has its own brightness so a tiny model can learn something.
    imgs = (rng.integers(0, 60, (n, 8, 8, 3)) + labels[:, None, None, None] * 90).astype(np.uint8)
    imgs[:, 0, 0, 0] = np.arange(n)  # row tag (n < 256)
    return store.write_arrays(tmp_path / "train.hdf5", imgs, labels, NAMES), imgs, labels


def needs_tf():
    return pytest.importorskip(
        "tensorflow", reason="as_tf_dataset builds a tf.data pipeline: it needs TensorFlow, "
        "which the 'train' extra installs (a JAX or PyTorch Keras has none)")


def tiny_model(keras, input_shape=(8, 8, 3), dtype="float32", head=None):
    inputs = keras.Input(input_shape, dtype=dtype)
    x = head(inputs) if head is not None else inputs
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


# -- mean_rgb ----------------------------------------------------------------------------------


def test_mean_rgb_reads_dicts_paths_and_triples(tmp_path):
    from dsprep.adapters import mean_rgb

    doc = {"R": 124.5, "G": 115.25, "B": 106, "std": {"R": 1, "G": 2, "B": 3}, "count": 9}
    path = tmp_path / "means.json"
    path.write_text(json.dumps(doc))
    assert mean_rgb(doc) == mean_rgb(path) == mean_rgb(str(path)) == (124.5, 115.25, 106.0)
    assert mean_rgb([1, 2, 3]) == (1.0, 2.0, 3.0)
    with pytest.raises(DatasetFormatError, match="no B"):
        mean_rgb({"R": 1, "G": 2})
    with pytest.raises(LayoutError):
        mean_rgb(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetFormatError):
        mean_rgb(tmp_path / "bad.json")
    with pytest.raises(UsageError):
        mean_rgb([1, 2])


def test_mean_rgb_reads_means_as_the_preprocessors_do(tmp_path):
    # One reader for means.json: what MeanSubtract refuses, the Keras layer refuses too.
    from dsprep.adapters import MeanSubtraction, mean_rgb
    from dsprep.preprocess import load_means

    path = tmp_path / "means.json"
    path.write_text('{"R": NaN, "G": 1, "B": 2}')
    for reader in (load_means, mean_rgb, MeanSubtraction):
        with pytest.raises(DatasetFormatError, match="finite"):
            reader(path)


# -- PyDataset ---------------------------------------------------------------------------------


def test_as_keras_forwards_and_pickles(h5file):
    import keras

    from dsprep.adapters import as_keras

    gen = HDF5Generator(h5file[0], batch_size=10, shuffle="full", seed=1)
    ds = as_keras(gen, workers=2, max_queue_size=4)
    assert isinstance(ds, keras.utils.PyDataset)
    assert len(ds) == 5 and ds.num_batches == 5 and ds.workers == 2
    np.testing.assert_array_equal(ds[1][0], gen[1][0])
    ds.on_epoch_end()  # a reset before any epoch began (what Keras does first)
    assert gen.epoch == 0
    ds.on_epoch_begin()
    ds.on_epoch_end()
    assert gen.epoch == 1
    copy = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(copy[3][0], ds[3][0])
    with pytest.raises(UsageError):
        as_keras(gen, max_queue_size=0)


@pytest.mark.slow
@pytest.mark.parametrize("workers, multi", [(1, False), (2, True)])
def test_fit_one_epoch_through_as_keras(h5file, workers, multi):
    import keras

    from dsprep.adapters import as_keras

    if multi and keras.backend.backend() == "jax":
        pytest.skip("JAX is multithreaded and warns that Keras's forked workers may deadlock; "
                    "the threaded case runs under JAX")
    gen = HDF5Generator(h5file[0], batch_size=16, shuffle="batches", seed=2)
    model = tiny_model(keras)
    ds = as_keras(gen, workers=workers, use_multiprocessing=multi)
    history = model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[EpochSync(ds)])
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert gen.epoch == 2  # epoch 1 ran, then Keras's on_epoch_end advanced it


class Recording(HDF5Generator):
    """Records the generator epoch each batch was served at (single process only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served = []

    def __getitem__(self, index):
        self.served.append((self.epoch, index))
        return super().__getitem__(index)


def full_epochs(gen):
    by_epoch = {}
    for epoch, index in gen.served:
        by_epoch.setdefault(epoch, set()).add(index)
    return sorted(e for e, seen in by_epoch.items() if seen == set(range(len(gen))))


@pytest.mark.slow
def test_epoch_sync_pins_generator_epoch_to_keras_epoch(h5file):
    """Whatever probing pass the backend makes, Keras epoch e reads generator epoch e."""
    import keras

    from dsprep.adapters import as_keras

    gen = Recording(h5file[0], batch_size=16, shuffle="full", seed=3)
    model = tiny_model(keras)
    ds = as_keras(gen)
    model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[EpochSync(ds)])
    assert full_epochs(gen) == [0, 1]
    assert {e for e, _ in gen.served} == {0, 1}
    # A resumed fit starts at its initial epoch.
    gen.served.clear()
    model.fit(ds, epochs=5, initial_epoch=3, shuffle=False, verbose=0,
              callbacks=[EpochSync(gen)])
    assert full_epochs(gen) == [3, 4]


def test_epoch_sync_leaves_plain_sequences_alone():
    class Plain:
        epoch = 0

    sync = EpochSync(None, Plain(), [])
    assert sync.gens == []


# -- tf.data -----------------------------------------------------------------------------------


def test_as_tf_dataset_signature_epochs_and_fit(h5file):
    import keras
    tf = needs_tf()

    from dsprep.adapters import as_tf_dataset

    path, imgs, labels = h5file
    gen = HDF5Generator(path, batch_size=16, shuffle="full", seed=4, one_hot=True)
    ds = as_tf_dataset(gen)
    x_spec, y_spec = ds.element_spec
    assert x_spec.shape.as_list() == [None, 8, 8, 3] and x_spec.dtype == tf.float32
    assert y_spec.shape.as_list() == [None, 3] and y_spec.dtype == tf.float32
    epochs = []
    for _ in range(2):
        rows, ys = [], []
        for x, y in ds:
            rows += x.numpy()[:, 0, 0, 0].astype(int).tolist()
            ys.append(y.numpy())
        np.testing.assert_array_equal(np.concatenate(ys), np.eye(3)[labels[rows]])
        epochs.append(rows)
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(45))
    assert epochs[0] != epochs[1]

    model = tiny_model(keras)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    history = model.fit(ds, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_as_tf_dataset_keeps_uint8(h5file):
    tf = needs_tf()

    from dsprep.adapters import as_tf_dataset

    gen = HDF5Generator(h5file[0], batch_size=16, shuffle="none", output="uint8", seed=0)
    x, y = next(iter(as_tf_dataset(gen, prefetch=1)))
    assert x.dtype == tf.uint8 and y.dtype == tf.int32
    np.testing.assert_array_equal(x.numpy(), h5file[1][:16])


# -- MeanSubtraction ---------------------------------------------------------------------------


def test_mean_subtraction_layer_matches_numpy_and_round_trips(h5file, tmp_path):
    import keras

    from dsprep.adapters import MeanSubtraction, as_keras

    mean = {"R": 100.5, "G": 50.25, "B": 10.0}
    layer = MeanSubtraction(mean, scale=0.5)
    batch = np.random.default_rng(3).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    out = keras.ops.convert_to_numpy(layer(batch))
    expected = (batch.astype(np.float64) - np.array([100.5, 50.25, 10.0])) * 0.5
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)

    gen = HDF5Generator(h5file[0], batch_size=16, shuffle="batches", output="uint8", seed=0)
    model = tiny_model(keras, dtype="uint8", head=MeanSubtraction(mean, scale=1 / 64))
    model.fit(as_keras(gen), epochs=1, shuffle=False, verbose=0)
    x, _ = gen[0]
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    restored = [lay for lay in loaded.layers if isinstance(lay, MeanSubtraction)]
    assert len(restored) == 1
    assert restored[0].mean_rgb == [100.5, 50.25, 10.0] and restored[0].scale == 1 / 64
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-6, atol=1e-6)

