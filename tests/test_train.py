"""Training into a run folder: the loss falls, checkpoints reload exactly, resume, evaluate."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from helpers import make_class_folders, smooth_image
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras", reason="the training extra (Keras 3) is not installed")

from dsprep.errors import (  # noqa: E402
    DatasetFormatError,
    DestinationExistsError,
    LayoutError,
    UsageError,
)
from dsprep.store import write_arrays  # noqa: E402
from dsprep.train import callbacks as cb  # noqa: E402
from dsprep.train.fit import TrainConfig, configure_device, open_data, resume, train  # noqa: E402
from dsprep.train.predict import evaluate_run, load_model  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_data(root, size=32, classes=("cat", "dog"), counts=(32, 16, 16), seed=0):
    """train/val/test.hdf5 + means.json; each class brightens its own colour channel."""
    root.mkdir(parents=True, exist_ok=True)
    n = seed * 1000
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        labels = np.arange(count) % len(classes)
        images = []
        for label in labels:
            img = smooth_image(size, size, seed=n).astype(np.int32) // 2
            img[..., label % 3] += 120
            images.append(img.astype(np.uint8))
            n += 1
        images = np.stack(images)
        write_arrays(root / f"{split}.hdf5", images, labels, list(classes), split=split)
        if split == "train":
            mean = images.reshape(-1, 3).mean(axis=0)
            (root / "means.json").write_text(json.dumps(dict(zip("RGB", mean.tolist(),
                                                                 strict=True))))
    return root


def tiny(model="resnet18", **kw):
    base = dict(model=model, epochs=2, batch_size=8, lr=0.01, width=8, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """One two-epoch ResNet-18 run shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("resnet")
    data = write_data(root / "data")
    result = train(data, root / "run", tiny())
    return data, root / "run", result


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A two-epoch run of the small convnet (quick to trace again) for the resume tests."""
    root = tmp_path_factory.mktemp("smallnet")
    data = write_data(root / "data", size=48, counts=(16, 8, 8))
    result = train(data, root / "run", tiny("smallnet", width=4))
    return data, root / "run", result


def test_two_epochs_of_resnet18_lower_the_training_loss(resnet_run):
    _, _, result = resnet_run
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 2
    assert losses[1] < losses[0]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="how often TensorFlow traces the training step")
def test_the_training_step_is_traced_once(small_run, tmp_path, monkeypatch):
    # Variables made inside the first step (the optimizer's, the metrics') make TensorFlow
    # trace it again: seconds of every run on a CPU.
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traced = []
    step = TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step",
                        lambda self, data: traced.append(1) or step(self, data))
    data, _, _ = small_run
    result = train(data, tmp_path / "run", tiny("smallnet", width=4, epochs=1))
    assert len(result.history) == 1 and len(traced) == 1
    # A resume, from a checkpoint whose optimizer is built already, too.
    traced.clear()
    resume(tmp_path / "run", epochs=2)
    assert len(traced) == 1


def test_a_resume_compiles_with_xla_as_this_machine_does(small_run, tmp_path, monkeypatch):
    # The checkpoint keeps the jit_compile of the machine it was saved on (a GPU's XLA).
    from dsprep.train import fit, predict

    _, run, _ = small_run
    run = shutil.copytree(run, tmp_path / "run")
    load = predict.load_model

    def saved_on_a_gpu(path, *args, **kwargs):
        model = load(path, *args, **kwargs)
        model.jit_compile = True
        return model

    seen = []
    monkeypatch.setattr(predict, "load_model", saved_on_a_gpu)
    monkeypatch.setattr(fit, "_fit", lambda model, *a, **k: seen.append(model.jit_compile)
                        or type("Result", (), {})())
    resume(run, epochs=3)
    assert seen == [configure_device().jit] == [False]  # no GPU here


@pytest.mark.slow
def test_two_epochs_of_a_small_alexnet_lower_the_training_loss(tmp_path):
    data = write_data(tmp_path / "data", size=64, counts=(32, 8, 8))
    result = train(data, tmp_path / "run", tiny("alexnet", width=0.125))
    losses = [row["loss"] for row in result.history]
    assert losses[1] < losses[0]
    assert (tmp_path / "run" / "best.keras").is_file()


def test_history_csv_and_plots_are_well_formed(resnet_run):
    data, run, result = resnet_run
    with open(run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    expected = {"epoch", "loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc", "lr"}
    assert set(rows[0]) == expected
    for row in rows:
        assert all(math.isfinite(float(v)) for v in row.values())
        assert float(row["lr"]) == pytest.approx(0.01)
        assert 0.0 <= float(row["val_accuracy"]) <= 1.0
    for name in ("curves.png", "lr.png"):
        raw = (run / name).read_bytes()
        assert raw.startswith(PNG_MAGIC)
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 300
    assert not list(run.glob(".*partial*")), "a temporary file was left behind"
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["model"] == "resnet18"
    assert config["classes"] == ["cat", "dog"]
    with h5py.File(data / "train.hdf5", "r") as db:
        assert config["image_shape"] == list(db["images"].shape[1:])
        assert config["resize"] == db.attrs["resize"] == "crop"
    assert config["monitor"] == "val_auc"
    assert config["versions"]["keras"] == keras.__version__
    assert config["versions"]["backend"] == keras.backend.backend()


def test_last_checkpoint_reloads_and_predicts_exactly(resnet_run):
    data, run, result = resnet_run
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    in_memory = keras.ops.convert_to_numpy(result.model.predict_on_batch(x))
    reloaded = load_model(run / "last.keras")
    assert np.array_equal(keras.ops.convert_to_numpy(reloaded.predict_on_batch(x)), in_memory)
    # best.keras is the epoch with the highest val AUC, which the history names; of epochs
    # that tie (both may reach 1.0), the one of lower val loss.
    best_epoch = max(result.history, key=lambda r: (r["val_auc"], -r["val_loss"]))["epoch"]
    best = load_model(run / "best.keras")
    same = np.array_equal(keras.ops.convert_to_numpy(best.predict_on_batch(x)), in_memory)
    assert same == (best_epoch == 1)


def recorded_model(run, classes):
    """A one-layer model with a RunRecorder on ``run``, and a batch to compare predictions on."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(inputs))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    recorder = cb.RunRecorder(run, "val_accuracy", plots=False)
    recorder.set_model(model)
    return model, recorder, np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)


def test_best_checkpoint_keeps_the_best_epoch_and_writes_atomically(tmp_path):
    model, recorder, x = recorded_model(tmp_path, 2)

    recorder.on_epoch_begin(0)
    recorder.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.75})
    at_best = model.predict_on_batch(x)
    model.set_weights([w + 1.0 for w in model.get_weights()])
    recorder.on_epoch_begin(1)
    recorder.on_epoch_end(1, {"loss": 0.5, "val_accuracy": 0.5})
    now = model.predict_on_batch(x)

    assert np.array_equal(load_model(tmp_path / "best.keras").predict_on_batch(x), at_best)
    assert np.array_equal(load_model(tmp_path / "last.keras").predict_on_batch(x), now)
    assert json.loads((tmp_path / "state.json").read_text())["epochs_done"] == 2
    assert [r["epoch"] for r in cb.read_history(tmp_path / "history.csv")] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.keras", "history.csv", "last.keras", "state.json"]


def test_a_tie_on_the_monitored_metric_goes_to_the_lower_loss(tmp_path):
    """A small validation set reaches an accuracy (or AUC) of 1.0 early: the first such epoch
    must not stay the best while the loss still falls."""
    model, recorder, x = recorded_model(tmp_path, 2)
    at = {}
    # (1.0 as float32 rounding leaves a saturated AUC from one epoch to the next: still a tie)
    for epoch, (accuracy, loss) in enumerate([(0.75, 0.5), (1.0000001192092896, 0.4),
                                              (0.9999999403953552, 0.2), (1.0, 0.3)]):
        model.set_weights([w + 0.5 for w in model.get_weights()])
        recorder.on_epoch_begin(epoch)
        recorder.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": accuracy, "val_loss": loss})
        at[epoch] = model.predict_on_batch(x)
    assert recorder.best_epoch == 2 and recorder.best == 0.9999999403953552
    assert np.array_equal(load_model(tmp_path / "best.keras").predict_on_batch(x), at[2])
    # A resumed run finds the same best in its history.
    again = cb.RunRecorder(tmp_path, "val_accuracy", plots=False,
                           history=cb.read_history(tmp_path / "history.csv"))
    assert again.best_epoch == 2


@pytest.mark.parametrize("losses, stops", [((0.5, 0.4, 0.3, 0.2, 0.1, 0.05), False),
                                           ((0.5, 0.4, 0.45, 0.5, 0.6, 0.7), True)])
def test_early_stopping_and_plateau_count_a_tie_with_a_lower_loss_as_progress(tmp_path, losses,
                                                                           stops):
    from dsprep.train.fit import _callbacks

    monitor = "val_auc"

    def model():
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return m

    # The callbacks as training makes them. The first epoch's 0.9999 (one pair of a hundred
    # by a hundred misordered) is passed by 1.0 by less than Keras's default min_delta.
    calls = _callbacks(tmp_path, tiny(schedule="plateau", plateau_patience=2, early_stop=2),
                       monitor, [], True)
    stopper = next(c for c in calls if isinstance(c, keras.callbacks.EarlyStopping))
    plateau = next(c for c in calls if isinstance(c, keras.callbacks.ReduceLROnPlateau))
    for callback in (stopper, plateau):
        m = model()
        callback.set_model(m)
        callback.on_train_begin()
        for epoch, loss in enumerate(losses):
            # (1.0 give or take float32 rounding, as a saturated AUC reads epoch to epoch)
            callback.on_epoch_end(epoch, {monitor: 0.9999 if epoch == 0 else
                                          (1.0, 1.0000001192092896, 0.9999999403953552)[epoch % 3],
                                          "val_loss": loss})
        if callback is stopper:
            assert bool(m.stop_training) == stops
        else:
            assert (cb.learning_rate(m.optimizer) < 0.1) == stops


def test_batch_lines_say_an_epochs_progress_in_a_log_at_most_every_few_seconds(capsys,
                                                                              monkeypatch):
    # DSPREP_PROGRESS=1 outside a terminal: train's log was silent inside an epoch, and a CI
    # service stops a step silent for some minutes.
    clock = iter([0.0, 1.0, 10.5, 12.0, 21.0, 100.0])
    monkeypatch.setattr(cb.time, "monotonic", lambda: next(clock))
    lines = cb.BatchLines(epochs=60, every=10.0)
    lines.set_params({"steps": 500})
    lines.on_epoch_begin(2)  # 0.0
    for batch, loss in enumerate([0.9, 0.8, 0.7, 0.6]):  # at 1.0, 10.5, 12.0, 21.0
        lines.on_train_batch_end(batch, {"loss": loss})
    assert capsys.readouterr().err.splitlines() == [
        "epoch 3/60: batch 2/500, loss 0.8000", "epoch 3/60: batch 4/500, loss 0.6000"]


def test_a_diverged_epoch_is_recorded_but_never_checkpointed_or_counted(tmp_path):
    model, recorder, x = recorded_model(tmp_path, 3)
    recorder.on_epoch_begin(0)
    recorder.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    before = model.predict_on_batch(x)
    # NaN weights predict class 0 everywhere, which can score a better accuracy than before.
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    recorder.on_epoch_begin(1)
    recorder.on_epoch_end(1, {"loss": float("nan"), "val_accuracy": 0.75})
    for name in ("best.keras", "last.keras"):
        np.testing.assert_array_equal(load_model(tmp_path / name).predict_on_batch(x), before)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["best_epoch"] == 0
    rows = cb.read_history(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == [0, 1] and np.isnan(rows[1]["loss"])
    # A finite training loss with a NaN validation loss is a divergence too, and stops training.
    model.stop_training = False
    recorder.on_epoch_begin(1)
    recorder.on_epoch_end(1, {"loss": 2e8, "val_loss": float("nan"), "val_accuracy": 0.75})
    assert model.stop_training is True
    assert json.loads((tmp_path / "state.json").read_text())["epochs_done"] == 1


def test_resume_continues_the_same_history(small_run, tmp_path):
    data, run, result = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = cb.read_history(copy / "history.csv")
    saved = load_model(copy / "last.keras")
    # 16 training rows in batches of 8: two steps per epoch, four after two epochs.
    assert int(keras.ops.convert_to_numpy(saved.optimizer.iterations)) == 4
    resumed = resume(copy, epochs=3)
    # The optimizer carries on from its saved step count (momentum and schedules depend on it).
    assert int(keras.ops.convert_to_numpy(resumed.model.optimizer.iterations)) == 6
    reloaded = load_model(copy / "last.keras")
    assert int(keras.ops.convert_to_numpy(reloaded.optimizer.iterations)) == 6
    after = cb.read_history(copy / "history.csv")
    assert [r["epoch"] for r in after] == [0, 1, 2]
    assert after[:2] == before
    assert resumed.epochs_done == 3
    assert json.loads((copy / "state.json").read_text())["epochs_done"] == 3
    assert json.loads((copy / "config.json").read_text())["options"]["epochs"] == 3


@pytest.mark.slow
def test_a_resume_after_the_data_moved_asks_for_it_and_remembers_its_new_place(small_run,
                                                                              tmp_path):
    data, run, _ = small_run
    copy, old, new = tmp_path / "run", tmp_path / "old", tmp_path / "new"
    shutil.copytree(run, copy)
    shutil.copytree(data, old)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "data": str(old)}))
    old.rename(new)
    with pytest.raises(LayoutError, match=f"trained on {old}, which is no longer there; give "
                                          f"where the data is now: .* --resume {copy} DATA "
                                          "--epochs 3$"):
        resume(copy, epochs=3)
    assert resume(copy, epochs=3, data=new).epochs_done == 3
    # The next resume (and evaluate) looks for the data there.
    assert json.loads((copy / "config.json").read_text())["data"] == str(new.resolve())
    # A run stopped in its first epoch (config.json alone) starts again: the same check.
    first = tmp_path / "first"
    first.mkdir()
    (first / "config.json").write_text(json.dumps({**config, "data": str(old)}))
    with pytest.raises(LayoutError, match="which is no longer there"):
        resume(first)


def test_resume_refuses_data_built_with_another_resize(small_run, tmp_path):
    # The same size and names, other shapes: the run went on learning from stretched images,
    # and evaluate then refused the test file of the data it had trained on.
    _, run, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    assert config["resize"] == "crop"
    (copy / "config.json").write_text(json.dumps({**config, "resize": "stretch"}))
    with pytest.raises(UsageError, match=r"its images were brought to their size with --resize "
                       r"crop, the run's with --resize stretch .*build it with --resize stretch"):
        resume(copy, epochs=3)
    assert json.loads((copy / "state.json").read_text())["epochs_done"] == 2


def test_resume_refuses_data_that_would_choose_the_best_checkpoint_by_another_metric(
        small_run, tmp_path):
    # The run chose best.keras by val_auc; data without val.hdf5 would choose by the training
    # AUC from then on, against a best score of another metric.
    data, run, _ = small_run
    copy, no_val = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run, copy)
    shutil.copytree(data, no_val)
    (no_val / "val.hdf5").unlink()
    state = (copy / "state.json").read_bytes()
    assert json.loads(state)["monitor"] == "val_auc"
    with pytest.raises(UsageError, match=r"the run chose best.keras by val_auc, but \S+ has no "
                                         r"validation split, so auc would choose"):
        resume(copy, epochs=3, data=no_val)
    assert (copy / "state.json").read_bytes() == state


PATIENCE_VALUES = [0.50, 0.60, 0.55, 0.58, 0.59, 0.61, 0.57, 0.56, 0.55, 0.54]


@pytest.mark.parametrize("kind", ["plateau", "early_stop"])
def test_resumed_patience_continues_where_the_run_stopped(kind):
    monitor = "val_accuracy"

    def make(history=()):
        if kind == "plateau":
            return cb.ResumablePlateau(monitor=monitor, mode="max", factor=0.1, patience=2,
                                       history=history)
        return cb.ResumableEarlyStopping(monitor=monitor, mode="max", patience=3,
                                         history=history)

    def model(lr=0.1):
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
        return m

    def run(callback, m, epochs):
        """(learning rate, stop) after each epoch, as fit would drive the callback."""
        callback.set_model(m)
        callback.on_train_begin()
        trace = []
        for epoch in epochs:
            callback.on_epoch_end(epoch, {monitor: PATIENCE_VALUES[epoch]})
            trace.append((round(cb.learning_rate(m.optimizer), 6), bool(m.stop_training)))
            if m.stop_training:
                break
        return trace

    whole = run(make(), model(), range(10))
    first = model()
    head = run(make(), first, range(3))
    past = [{"epoch": e, monitor: PATIENCE_VALUES[e], "loss": 1.0} for e in range(3)]
    resumed = model(cb.learning_rate(first.optimizer))  # as restored from last.keras
    tail = run(make(past), resumed, range(3, 10))
    assert head + tail == whole
    # The event falls right after the resume point: a callback that forgot the first epochs
    # (as Keras's own would) acts later, so the comparison above can fail.
    forgetful = run(make(), model(cb.learning_rate(first.optimizer)), range(3, 10))
    assert forgetful != whole[3:]
    assert any(stop for _, stop in whole) or whole[-1][0] < 0.1


def test_resume_drops_history_rows_past_the_last_checkpoint(small_run, tmp_path):
    # A crash after history.csv got epoch 1's row but before state.json recorded epoch 1.
    data, run, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "state.json").write_text(json.dumps({"epochs_done": 1}))
    first_row = cb.read_history(copy / "history.csv")[0]
    resume(copy)
    after = cb.read_history(copy / "history.csv")
    assert [r["epoch"] for r in after] == [0, 1]
    assert after[0] == first_row


def _tiny_recorder(run):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    recorder = cb.RunRecorder(run, "val_accuracy", plots=False)
    recorder.set_model(model)
    return model, recorder


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", ["state", "rename"])
def test_a_crash_never_leaves_best_from_an_epoch_the_state_does_not_count(tmp_path, monkeypatch,
                                                                          crash_at):
    model, recorder = _tiny_recorder(tmp_path)
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    recorder.on_epoch_begin(0)
    recorder.on_epoch_end(0, {"loss": 1.0, "val_accuracy": 0.5})
    at_epoch0 = model.predict_on_batch(x)
    model.set_weights([w + 1.0 for w in model.get_weights()])
    at_epoch1 = model.predict_on_batch(x)

    if crash_at == "state":  # killed after the checkpoints were saved, before state.json
        write_json = cb.atomic_write_json

        def crash(path, data):
            if Path(path).name == "state.json":
                raise _Crash()
            return write_json(path, data)

        monkeypatch.setattr(cb, "atomic_write_json", crash)
    else:  # killed after state.json, before the checkpoints were renamed into place
        replace = cb.os.replace

        def crash(src, dst):
            if Path(dst).suffix == ".keras":
                raise _Crash()
            return replace(src, dst)

        monkeypatch.setattr(cb.os, "replace", crash)
    recorder.on_epoch_begin(1)
    with pytest.raises(_Crash):
        recorder.on_epoch_end(1, {"loss": 0.5, "val_accuracy": 0.75})
    monkeypatch.undo()

    state = cb.read_state(tmp_path)
    cb.settle_checkpoints(tmp_path, state["epochs_done"])
    expected = at_epoch0 if crash_at == "state" else at_epoch1
    assert state["epochs_done"] == (1 if crash_at == "state" else 2)
    assert state["best_epoch"] == state["epochs_done"] - 1
    for name in ("best.keras", "last.keras"):
        assert np.array_equal(load_model(tmp_path / name).predict_on_batch(x), expected)
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    ("name", "text", "error", "match"),
    [
        ("state.json", "{not json", "format", "state.json is not a run state"),
        ("state.json", '{"best": 0.5}', "format", "state.json is not a run state"),
        ("state.json", None, "layout", "no state.json"),
        ("config.json", "[1, 2", "format", "config.json is not valid JSON"),
        ("config.json", '{"data": "x"}', "format", "no 'options'"),
        ("config.json", '{"data": "x", "options": {"epochs": "two"}}', "format", "cannot use"),
        ("config.json", '{"options": {}}', "format", "does not name the data folder"),
    ],
)
def test_resume_of_a_damaged_run_says_what_to_do(small_run, tmp_path, name, text, error, match):
    _, run, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if text is None:
        (copy / name).unlink()
    else:
        (copy / name).write_text(text)
    expected = DatasetFormatError if error == "format" else LayoutError
    with pytest.raises(expected, match=match) as info:
        resume(copy)
    assert "\n" not in str(info.value) and "dsprep train" in str(info.value)


@pytest.mark.parametrize(("history", "match"), [
    (None, "history.csv is gone"),
    ("epoch,loss\n1,0.5\n", "history.csv lacks the rows of 1 of the 2 epochs the run has "
                             "trained \\(epoch 1 first\\)"),
])
def test_a_resume_without_the_history_it_judges_the_best_by_is_refused(small_run, tmp_path,
                                                                       history, match):
    # Without it, the first resumed epoch was the best so far: a worse epoch replaced
    # best.keras, and the plateau's and early stopping's patience started again.
    _, run, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if history is None:
        (copy / "history.csv").unlink()
    else:
        (copy / "history.csv").write_text(history)
    best = (copy / "best.keras").read_bytes()
    with pytest.raises(LayoutError, match=match) as info:
        resume(copy, epochs=3)
    assert "put it back, or start the run again with 'dsprep train --force' (copy its " \
        "best.keras elsewhere first to keep it)" in str(info.value)
    assert (copy / "best.keras").read_bytes() == best
    assert resume(copy).epochs_run == 0  # a finished run still has nothing to do


def test_resume_to_fewer_epochs_than_done_is_refused_and_to_as_many_does_nothing(small_run,
                                                                                 tmp_path):
    _, run, _ = small_run  # two epochs done
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = (copy / "config.json").read_text()
    with pytest.raises(UsageError, match="trained 2 epochs already"):
        resume(copy, epochs=1)
    same = resume(copy, epochs=2)  # a job run again after its end
    assert (same.epochs_run, same.epochs_done, same.model) == (0, 2, None)
    assert (copy / "config.json").read_text() == before  # nothing rewritten


def test_affine_ranges_reach_the_augmentation_and_survive_resume(small_run, tmp_path,
                                                                  monkeypatch):
    from dsprep.augment import RandomAffine
    from dsprep.train import fit

    config = tiny(augment="affine", rotation=30, shift=0.25, shear=12, zoom=0.4)
    _, _, augment = fit._ops(config)
    affine = next(op for op in augment.ops if isinstance(op, RandomAffine))
    assert affine.rotation == (-30, 30) and affine.shift == (0.25, 0.25)
    assert affine.shear == (-12, 12) and affine.zoom == pytest.approx((0.6, 1.4))

    _, run, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["options"].update(augment="affine", rotation=30, shift=0.25, shear=12, zoom=0.4)
    (copy / "config.json").write_text(json.dumps(saved))
    seen = []

    def capture(data, config, **kw):
        seen.append(config)
        raise _Crash()

    monkeypatch.setattr(fit, "open_data", capture)
    with pytest.raises(_Crash):
        resume(copy, epochs=3)
    assert (seen[0].rotation, seen[0].shift, seen[0].shear, seen[0].zoom) == (30, 0.25, 12, 0.4)
    # A run started before these options existed resumes with the old fixed ranges.
    assert (TrainConfig().rotation, TrainConfig().shift, TrainConfig().shear,
            TrainConfig().zoom) == (10, 0.1, 5, 0.1)


def test_a_finished_run_is_not_overwritten(resnet_run):
    data, run, _ = resnet_run
    with pytest.raises(DestinationExistsError, match="--resume"):
        train(data, run, tiny())


def _files(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def _replaceable_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("replaceable")
    train(write_data(root / "data", size=48, counts=(8, 4, 4)), root / "run",
          tiny("smallnet", width=4, epochs=1))
    (root / "run" / "confusion-test-center.png").write_bytes(b"old matrix")
    return root


@pytest.fixture()
def replaceable(_replaceable_run, tmp_path):
    """A one-epoch run with an evaluation's confusion matrix in it, and its data: a copy of
    one trained for the module, its config.json pointing at the copy of the data."""
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(_replaceable_run / "data", data)
    shutil.copytree(_replaceable_run / "run", run)
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str((_replaceable_run / "data").resolve())
    config["data"] = str(data.resolve())
    cb.atomic_write_json(run / "config.json", config)
    return data, run, _files(run)


@pytest.mark.parametrize("how", ["interrupted", "diverged"])
def test_a_replacement_that_never_finishes_an_epoch_puts_the_old_run_back(replaceable,
                                                                          monkeypatch, how):
    data, run, old = replaceable
    if how == "interrupted":
        def stop(self, epoch, logs=None):
            raise KeyboardInterrupt

        monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", stop)
        with pytest.raises(KeyboardInterrupt):
            train(data, run, tiny("smallnet", width=4, epochs=1, seed=5), overwrite=True)
    else:
        result = train(data, run, tiny("smallnet", width=4, epochs=2, lr=1e30), overwrite=True)
        assert result.diverged and result.restored and result.epochs_done == 1
    assert _files(run) == old
    assert sorted(p.name for p in run.iterdir()) == sorted(old)


def test_a_replacement_drops_the_old_run_once_its_first_epoch_is_done(replaceable, monkeypatch):
    data, run, old = replaceable
    seen = []
    end = cb.RunRecorder.on_epoch_end

    def watch(self, epoch, logs=None):
        aside = run / ".replaced"
        seen.append((epoch, aside.is_dir() and _files(aside) == old,
                     not (run / "config.json").read_bytes() == old["config.json"]))
        return end(self, epoch, logs)

    monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", watch)
    result = train(data, run, tiny("smallnet", width=4, epochs=2, seed=5), overwrite=True)
    # During the first epoch the old run is whole, set aside; after it, it is gone.
    assert seen == [(0, True, True), (1, False, True)]
    assert result.epochs_done == 2 and not result.restored
    assert not (run / ".replaced").exists() and not (run / "confusion-test-center.png").exists()
    assert [r["epoch"] for r in cb.read_history(run / "history.csv")] == [0, 1]


def test_after_a_crash_in_a_replacement_the_old_run_is_kept_and_named(replaceable,
                                                                      monkeypatch):
    from dsprep.train import fit

    data, run, old = replaceable

    def crashed_replacement():
        # The process died in the new run's first epoch: the old run set aside, a new
        # config.json and a half-saved checkpoint of the epoch that never finished.
        fit._set_aside(run)
        (run / "config.json").write_text(json.dumps({"data": str(data), "options": {}}))
        (run / ".last.epoch0.partial.keras").write_bytes(b"half")

    crashed_replacement()
    with pytest.raises(DestinationExistsError, match=r"never finished an epoch.*kept in "
                                                     r".*\.replaced: 'dsprep train --resume"):
        train(data, run, tiny("smallnet", width=4))
    with pytest.raises(LayoutError, match=r"has not finished an epoch.*kept in .*\.replaced"):
        evaluate_run(run, data / "test.hdf5")
    # A resume puts the old run back (the new one has nothing to resume) and goes on with it.
    result = resume(run)
    assert result.restored and result.epochs_run == 0  # a finished one-epoch run
    assert _files(run) == old and sorted(p.name for p in run.iterdir()) == sorted(old)
    # --force again replaces the unfinished run, and keeps the old one aside until its first
    # epoch is done; a crash in that first epoch still leaves the old run to put back.
    crashed_replacement()

    def stop(self, epoch, logs=None):
        raise _Crash()

    monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", stop)
    with pytest.raises(_Crash):
        train(data, run, tiny("smallnet", width=4, epochs=1, seed=5), overwrite=True)
    assert _files(run) == old and sorted(p.name for p in run.iterdir()) == sorted(old)


def test_a_resume_that_brings_a_replaced_run_back_and_then_fails_says_so(replaceable,
                                                                         tmp_path):
    from dsprep.train import fit

    data, run, old = replaceable
    fit._set_aside(run)  # a --force killed in its first epoch
    (run / "config.json").write_text("{}")
    other = write_data(tmp_path / "other", size=48, classes=("cat", "fox"), counts=(8, 4, 4))
    with pytest.raises(UsageError, match=r"does not match the run.*\(the run the replacement "
                                         r"\(--force\) was replacing, .* is back in"):
        resume(run, epochs=3, data=other)
    assert _files(run) == old
    # When the replaced run never finished an epoch either, the hint promises no resume.
    fit._set_aside(run)
    (run / ".replaced" / "state.json").unlink()
    (run / "config.json").write_text("{}")
    with pytest.raises(DestinationExistsError, match="which never finished an epoch either"):
        train(data, run, tiny("smallnet", width=4))


def test_the_same_command_starts_again_after_two_kills_in_the_first_epoch(tmp_path):
    from dsprep.train import fit

    data = write_data(tmp_path / "data", size=48, counts=(8, 4, 4))

    # A requeued job killed outright (SIGKILL, the OOM killer) twice in its first epoch: the
    # second try had set the first aside. Neither has an epoch to keep, and the third try
    # was refused, pointing to a --resume that could not continue anything.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(data), "options": {}}))
    fit._set_aside(run)
    (run / "config.json").write_text(json.dumps({"data": str(data), "options": {}}))
    (run / ".last.epoch0.partial.keras").write_bytes(b"half")
    result = train(data, run, tiny("smallnet", width=4, epochs=1))
    assert result.epochs_done == 1 and not (run / ".replaced").exists()


def test_a_stale_set_aside_run_goes_when_the_run_is_resumed_or_replaced(replaceable):
    from dsprep.train import fit

    data, run, old = replaceable
    # The new run finished its first epoch but died before dropping the old one.
    (run / ".replaced").mkdir()
    (run / ".replaced" / "config.json").write_text("{}")
    resume(run, epochs=2)
    assert not (run / ".replaced").exists()
    (run / ".replaced").mkdir()
    (run / ".replaced" / "config.json").write_text("{}")
    aside = fit._set_aside(run)
    assert _files(aside).keys() == old.keys() and _files(aside)["config.json"] != b"{}"


def test_evaluate_finishes_a_commit_a_killed_training_left(replaceable):
    import os

    data, run, old = replaceable
    # Killed after the first epoch's state.json, before its checkpoints took their names and
    # the run it replaced was dropped (a part of that already gone).
    for name in ("best", "last"):
        os.replace(run / f"{name}.keras", run / f".{name}.epoch0.partial.keras")
    (run / ".replaced").mkdir()
    (run / ".replaced" / "config.json").write_text("{}")
    (run / ".replaced.dropping").mkdir()
    scores = evaluate_run(run, data / "test.hdf5")
    assert 0.0 <= scores["center"]["rank1"] <= 1.0
    now = _files(run)
    assert now.pop("confusion-test-center.png").startswith(b"\x89PNG")  # drawn again
    old.pop("confusion-test-center.png")
    assert now == old
    assert sorted(p.name for p in run.iterdir()) == sorted([*old, "confusion-test-center.png"])


def test_a_new_run_stopped_after_an_epoch_stays_to_be_resumed(tmp_path, monkeypatch):
    data = write_data(tmp_path / "data", size=48, counts=(8, 4, 4))
    run = tmp_path / "run"
    end = cb.RunRecorder.on_epoch_end

    def stopped_after_the_first(self, epoch, logs=None):
        end(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", stopped_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        train(data, run, tiny("smallnet", width=4, epochs=2))
    monkeypatch.undo()
    assert (run / "last.keras").is_file()  # not removed with the folder of a failed start
    assert resume(run).epochs_done == 2


@pytest.mark.parametrize("moved", [1, 5])
def test_moves_between_a_run_and_its_replaced_folder_that_were_killed_are_settled(replaceable,
                                                                                   moved):
    import os

    data, run, old = replaceable
    names = sorted(old)
    # Killed while setting the run aside: some of its files in the work folder.
    (run / ".replaced.partial").mkdir()
    for name in names[:moved]:
        os.replace(run / name, run / ".replaced.partial" / name)
    assert resume(run, epochs=1).epochs_run == 0  # a finished run: nothing to do
    assert _files(run) == old and sorted(p.name for p in run.iterdir()) == sorted(old)
    # Killed while putting it back: some of its files already in RUN.
    (run / ".replaced.returning").mkdir()
    for name in names[moved:]:
        os.replace(run / name, run / ".replaced.returning" / name)
    with pytest.raises(DestinationExistsError, match="already holds a run"):
        train(data, run, tiny("smallnet", width=4))
    assert _files(run) == old and sorted(p.name for p in run.iterdir()) == sorted(old)


def test_a_replacement_stopped_while_it_sets_the_old_run_aside_leaves_it_whole(replaceable,
                                                                                monkeypatch):
    from dsprep.train import fit

    data, run, old = replaceable
    real = fit._run_files
    calls = []

    def stopped_after_three(folder):
        files = real(folder)
        calls.append(len(files))
        if len(calls) > 1:
            return files
        return (f if i < 3 else _stop() for i, f in enumerate(files))

    def _stop():
        raise KeyboardInterrupt

    monkeypatch.setattr(fit, "_run_files", stopped_after_three)
    with pytest.raises(KeyboardInterrupt):
        train(data, run, tiny("smallnet", width=4, epochs=1, seed=5), overwrite=True)
    assert _files(run) == old and sorted(p.name for p in run.iterdir()) == sorted(old)


def test_a_sweep_keeps_a_rate_that_diverges_in_its_first_epoch_over_an_older_run(tmp_path):
    from dsprep.train.fit import sweep_lr

    data = write_data(tmp_path / "data", size=48, counts=(8, 4, 4))
    sweep = tmp_path / "sweep"
    train(data, sweep / "lr-1e+30", tiny("smallnet", width=4, epochs=1))
    results = sweep_lr(data, sweep, [1e30], tiny("smallnet", width=4, epochs=2), overwrite=True)
    assert results[1e30].diverged and not results[1e30].restored
    config = json.loads((sweep / "lr-1e+30" / "config.json").read_text())
    assert config["options"]["lr"] == 1e30 and not (sweep / "lr-1e+30" / ".replaced").exists()
    assert cb.diverged(cb.read_history(sweep / "lr-1e+30" / "history.csv")[-1])


@pytest.mark.slow
def test_a_sweep_run_again_after_a_stop_carries_on_and_reuses_its_finished_rates(
        tmp_path, monkeypatch):
    from dsprep.train.fit import sweep_lr

    data = write_data(tmp_path / "data", size=48, counts=(8, 4, 4))
    sweep, config = tmp_path / "sweep", tiny("smallnet", width=4, epochs=2)
    end = cb.RunRecorder.on_epoch_end
    calls = []

    def stopped_in_the_second_rate(self, epoch, logs=None):
        end(self, epoch, logs)
        calls.append(epoch)
        if len(calls) == 3:  # lr 0.1's two epochs, then lr 0.01's first
            raise KeyboardInterrupt

    monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", stopped_in_the_second_rate)
    with pytest.raises(KeyboardInterrupt):
        sweep_lr(data, sweep, [0.1, 0.01, 0.001], config)
    monkeypatch.undo()
    finished = (sweep / "lr-0.1" / "last.keras").read_bytes()
    assert [r["epoch"] for r in cb.read_history(sweep / "lr-0.01" / "history.csv")] == [0]
    assert not (sweep / "sweep-lr.csv").exists()
    # The same sweep again: lr 0.1 is reused as it is, lr 0.01 resumed at its second epoch,
    # lr 0.001 trained; it used to be refused ("already holds a run") without --force.
    results = sweep_lr(data, sweep, [0.1, 0.01, 0.001], dataclasses.replace(config, workers=1))
    assert (sweep / "lr-0.1" / "last.keras").read_bytes() == finished
    assert [r.epochs_done for r in results.values()] == [2, 2, 2]
    for rate in ("0.1", "0.01", "0.001"):
        rows = cb.read_history(sweep / f"lr-{rate}" / "history.csv")
        assert [r["epoch"] for r in rows] == [0, 1]
        assert len(results[float(rate)].history) == 2
    assert len((sweep / "sweep-lr.csv").read_text().splitlines()) == 4
    # Another sweep (other options) into the same RUN is refused before it trains anything.
    with pytest.raises(DestinationExistsError, match=r"lr-0.1, .*lr-0.01 already hold runs "
                                                     r"this sweep cannot carry on .*the first "
                                                     r"differs in epochs 2, now 3\)"):
        sweep_lr(data, sweep, [0.1, 0.01, 0.5], dataclasses.replace(config, epochs=3))
    assert not (sweep / "lr-0.5").exists()
    # Nor is a training run taken for a sweep folder.
    with pytest.raises(UsageError, match="is the folder of a training run, not of a sweep"):
        sweep_lr(data, sweep / "lr-0.1", [0.2], config)
    assert not (sweep / "lr-0.1" / "lr-0.2").exists()
    # Nor a sweep's folder for a training run, --force or not.
    for force in (False, True):
        with pytest.raises(UsageError, match="is the folder of a learning-rate sweep"):
            train(data, sweep, config, overwrite=force)
    assert not (sweep / "config.json").exists()


@pytest.mark.slow
def test_a_sweep_run_again_keeps_a_rate_that_diverged_after_its_first_epoch(tmp_path,
                                                                             monkeypatch):
    from dsprep.train.fit import sweep_lr

    data = write_data(tmp_path / "data", size=48, counts=(8, 4, 4))
    sweep = tmp_path / "sweep"
    config = tiny("smallnet", width=4, epochs=3, schedule="step")
    # lr 0.001 diverges in its second epoch (its rate jumps to 1e30 there).
    schedule = cb.schedule_fn
    monkeypatch.setattr(cb, "schedule_fn", lambda kind, lr, *a, **k: (
        lambda epoch: 1e30 if lr == 1e-3 and epoch == 1 else schedule(kind, lr, *a, **k)(epoch)))
    first = sweep_lr(data, sweep, [1e-2, 1e-3], config)
    assert first[1e-3].diverged and first[1e-3].epochs_done == 2
    monkeypatch.undo()
    table = (sweep / "sweep-lr.csv").read_text()
    # The same sweep again: the diverged rate is an answer, kept; resuming it (as a run
    # stopped part way) trained it again, with other draws, and could turn the answer.
    again = sweep_lr(data, sweep, [1e-2, 1e-3], config)
    assert [r.epochs_run for r in again.values()] == [0, 0]
    assert again[1e-3].diverged and again[1e-3].epochs_done == 2
    assert (sweep / "sweep-lr.csv").read_text() == table


def test_a_sweep_run_again_keeps_a_rate_that_diverged_in_its_first_epoch(tmp_path):
    from dsprep.train.fit import sweep_lr

    data = write_data(tmp_path / "data", size=48, counts=(8, 4, 4))
    sweep, config = tmp_path / "sweep", tiny("smallnet", width=4, epochs=2)
    first = sweep_lr(data, sweep, [1e30, 1e-3], config)
    assert first[1e30].diverged and first[1e30].epochs_done == 1
    wild = sweep / "lr-1e+30"
    assert not (wild / "state.json").exists()  # no epoch kept: nothing to count
    kept = {p.name: p.read_bytes() for p in wild.iterdir()}
    table = (sweep / "sweep-lr.csv").read_text()
    # The same sweep again trains neither rate: the first-epoch divergence is its answer too
    # (it was trained again, each time the sweep was re-run).
    again = sweep_lr(data, sweep, [1e30, 1e-3], config)
    assert [r.epochs_run for r in again.values()] == [0, 0]
    assert again[1e30].diverged and again[1e30].epochs_done == 1
    assert again[1e30].monitor == first[1e30].monitor == again[1e-3].monitor
    assert {p.name: p.read_bytes() for p in wild.iterdir()} == kept
    assert (sweep / "sweep-lr.csv").read_text() == table


def test_a_run_being_trained_is_not_replaced_or_resumed_by_another_process(replaceable):
    import subprocess
    import sys

    data, run, old = replaceable
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(60)", str(run / ".dsprep-train.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for call in (lambda: train(data, run, tiny("smallnet", width=4), overwrite=True),
                     lambda: resume(run, epochs=3)):
            with pytest.raises(DestinationExistsError, match="another dsprep process"):
                call()
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()
    (run / ".dsprep-train.lock").unlink()  # the holder's, killed
    assert _files(run) == old


def test_limit_per_class_subsets_are_removed_after_training(tmp_path):
    data = write_data(tmp_path / "data", size=48, counts=(12, 4, 4))
    run = tmp_path / "run"
    # The largest seed trains, and resumes (the seed of a resumed epoch wraps around).
    result = train(data, run, tiny("smallnet", width=4, epochs=1, limit_per_class=2,
                                   seed=2**32 - 1))
    assert result.epochs_done == 1 and not (run / ".subset-train.hdf5").exists()
    resume(run, epochs=2)
    assert not (run / ".subset-train.hdf5").exists()
    assert [r["epoch"] for r in cb.read_history(run / "history.csv")] == [0, 1]


def test_limit_per_class_keeps_the_first_rows_of_each_class(tmp_path):
    data = write_data(tmp_path / "data", counts=(20, 4, 4))
    bundle = open_data(data, tiny(limit_per_class=3), work=tmp_path)
    labels = np.asarray(bundle.train.labels)
    assert np.bincount(labels).tolist() == [3, 3]
    import h5py

    with h5py.File(data / "train.hdf5", "r") as src, h5py.File(bundle.train.path, "r") as sub:
        src_labels = src["labels"][()]
        expected = sorted(np.flatnonzero(src_labels == 0)[:3].tolist()
                          + np.flatnonzero(src_labels == 1)[:3].tolist())
        assert np.array_equal(sub["images"][()], src["images"][()][expected])
        assert np.array_equal(sub["labels"][()], src_labels[expected])
    assert bundle.input_shape == (32, 32, 3) and bundle.input_dtype == "uint8"
    # A file of the user's own naming its rows by absolute paths (which train reads whole)
    # is subset too: its names are copied as they are.
    with h5py.File(data / "train.hdf5", "r+") as db:
        names = [f"/data/imgs/{i}.jpg" for i in range(len(db["filenames"]))]
        db["filenames"][...] = np.array(names, dtype=object)
    bundle = open_data(data, tiny(limit_per_class=3), work=tmp_path)
    assert np.bincount(np.asarray(bundle.train.labels)).tolist() == [3, 3]
    with h5py.File(bundle.train.path, "r") as sub:
        assert [n.decode() for n in sub["filenames"][()]] == [names[i] for i in expected]
    # So are names that are no UTF-8 (fixed-size bytes), or numbers.
    for raw in (np.array([b"caf\xe9%d" % i for i in range(len(names))], dtype="S8"),
                np.arange(len(names))):
        with h5py.File(data / "train.hdf5", "r+") as db:
            del db["filenames"]
            db["filenames"] = raw
        bundle = open_data(data, tiny(limit_per_class=3), work=tmp_path)
        assert np.bincount(np.asarray(bundle.train.labels)).tolist() == [3, 3]


def test_training_batches_are_full_and_validation_is_complete(tmp_path):
    data = write_data(tmp_path / "data", size=8, counts=(21, 12, 4))
    bundle = open_data(data, tiny(batch_size=8), work=tmp_path)
    for epoch in range(3):
        bundle.train.set_epoch(epoch)
        assert [len(bundle.train[i][1]) for i in range(len(bundle.train))] == [8, 8]
    assert [len(bundle.val[i][1]) for i in range(len(bundle.val))] == [8, 4]
    # A training set smaller than one batch is trained on whole rather than refused.
    small = open_data(data, tiny(batch_size=32), work=tmp_path)
    assert [len(small.train[i][1]) for i in range(len(small.train))] == [21]


def test_split_folder_label_ids_come_from_split_json(tmp_path):
    from dsprep.errors import DatasetFormatError

    split = tmp_path / "split"
    # "ant" has no training images, so its folder is missing; its id is still 0.
    make_class_folders(split / "train", classes=("bee", "cat"), per_class=2, size=(16, 16))
    with pytest.raises(LayoutError, match="no split.json"):
        open_data(split, tiny(image_size=16))
    (split / "split.json").write_text(json.dumps({"classes": ["ant", "bee", "cat"]}))
    bundle = open_data(split, tiny(image_size=16, batch_size=4))
    assert bundle.label_names == ["ant", "bee", "cat"]
    expected = {"bee": 1, "cat": 2}
    assert sorted(int(label) for label in bundle.train.labels) == [1, 1, 2, 2]
    for path, label in zip(bundle.train.files, bundle.train.labels, strict=True):
        assert expected[Path(path).parent.name] == label
    (split / "split.json").write_text(json.dumps({"schema": "dsprep-split/1"}))
    with pytest.raises(DatasetFormatError, match="classes"):
        open_data(split, tiny(image_size=16))


def test_files_that_are_no_images_count_for_neither_batches_nor_subsets(tmp_path):
    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("bee", "cat"), per_class=4, size=(16, 16))
    (split / "split.json").write_text(json.dumps({"classes": ["bee", "cat"]}))
    for label in ("bee", "cat"):
        for k in range(4):  # notes sort before the lower-case image names
            (split / "train" / label / f"README{k}.txt").write_text("notes")
    # 8 images (16 files) with batches of 10: one short batch, not "larger than the images
    # with drop_last=True".
    bundle = open_data(split, tiny(image_size=16, batch_size=10), work=tmp_path)
    assert bundle.train.num_samples == 8 and not bundle.train.drop_last
    assert [len(bundle.train[i][1]) for i in range(len(bundle.train))] == [8]
    # 10 files that look like images, 2 of them bad: 8 images with batches of 9 is one short
    # batch too, not "larger than the images with drop_last=True" (the bad files are no rows).
    for label in ("bee", "cat"):
        (split / "train" / label / f"{label}_bad.jpg").write_bytes(b"not a jpeg")
    bundle = open_data(split, tiny(image_size=16, batch_size=9), work=tmp_path)
    assert bundle.train.num_samples == 8 and not bundle.train.drop_last
    subset = open_data(split, tiny(image_size=16, batch_size=2, limit_per_class=3),
                       work=tmp_path)
    assert sorted(Path(p).name for p in subset.train.files) == sorted(
        f"{label}_{i}.jpg" for label in ("bee", "cat") for i in range(3))


def test_a_split_folder_is_read_with_the_pixel_limit_of_its_split(tmp_path):
    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("bee", "cat"), per_class=3, size=(16, 16))
    make_class_folders(split / "val", classes=("bee", "cat"), per_class=1, size=(16, 16), seed=9)
    # 16x16 is 256 pixels: a limit of 255 leaves every image out, of the subset too.
    for limit, kept in ((0, (6, 2)), (256, (6, 2)), (255, None)):
        (split / "split.json").write_text(json.dumps({
            "schema": "dsprep-split/1", "classes": ["bee", "cat"],
            "params": {"max_pixels": limit}}))
        for per_class in (None, 2):
            config = tiny(image_size=16, batch_size=2, limit_per_class=per_class)
            if kept is None:
                with pytest.raises(LayoutError, match="over the 255-pixel limit"):
                    open_data(split, config, work=tmp_path / f"w{per_class}")
                continue
            bundle = open_data(split, config, work=tmp_path / f"w{per_class}")
            assert bundle.train.num_samples == (per_class * 2 if per_class else kept[0])
            assert bundle.val.num_samples == kept[1]
            assert bundle.train.max_pixels == bundle.val.max_pixels == (limit or None)


def test_a_split_verified_in_full_is_not_decoded_again_to_check_it(tmp_path, monkeypatch):
    from dsprep.generators import DirectoryGenerator

    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("bee", "cat"), per_class=2, size=(16, 16))
    make_class_folders(split / "val", classes=("bee", "cat"), per_class=1, size=(16, 16), seed=9)
    checks = []
    monkeypatch.setattr(DirectoryGenerator, "_check_decode",
                        lambda self, path: checks.append(path))
    for verify, decoded in (("header", 6), ("full", 0)):
        checks.clear()
        (split / "split.json").write_text(json.dumps({"classes": ["bee", "cat"],
                                                      "params": {"verify": verify}}))
        bundle = open_data(split, tiny(image_size=16, batch_size=2))
        assert len(checks) == decoded and bundle.train.num_samples == 4


@pytest.mark.parametrize("mismatch", ["classes", "size"])
def test_validation_file_must_match_the_training_file(tmp_path, mismatch):
    from dsprep.errors import DatasetFormatError

    data = write_data(tmp_path / "data", size=8, counts=(8, 4, 4))
    size, names = (10, ["cat", "dog"]) if mismatch == "size" else (8, ["dog", "cat"])
    images = np.zeros((4, size, size, 3), np.uint8)
    (data / "val.hdf5").unlink()
    write_arrays(data / "val.hdf5", images, np.array([0, 1, 0, 1]), names, split="val")
    with pytest.raises(DatasetFormatError, match="val.hdf5 .*train.hdf5"):
        open_data(data, tiny(batch_size=4))


def test_open_data_reads_means_json_with_the_preprocessing_reader(tmp_path):
    from dsprep.errors import DatasetFormatError

    data = write_data(tmp_path / "data", size=8, counts=(8, 4, 4))
    (data / "means.json").write_text('{"R": 1, "G": Infinity, "B": 2}')
    with pytest.raises(DatasetFormatError, match="finite"):
        open_data(data, tiny(batch_size=4))
    (data / "means.json").write_text('{"R": 1.5, "G": 2, "B": 3, "std": {"R": 1}}')
    assert open_data(data, tiny(batch_size=4)).mean == (1.5, 2.0, 3.0)


def test_open_data_rejects_a_folder_without_data(tmp_path):
    with pytest.raises(LayoutError, match="build-hdf5"):
        open_data(tmp_path, tiny())


@pytest.mark.parametrize(
    "changes",
    [{"model": "vgg"}, {"epochs": 0}, {"optimizer": "lbfgs"}, {"schedule": "poly"},
     {"lr": 0.0}, {"gpus": "two"}, {"augment": "mixup"}, {"rotation": -1}, {"shift": 1.0},
     {"shear": 90}, {"zoom": 1.0}],
)
def test_bad_options_raise_usage_errors(changes):
    with pytest.raises(UsageError):
        tiny(**changes).check()


@settings(max_examples=60, deadline=None)
@given(lr=st.floats(1e-5, 1.0), every=st.integers(1, 20), epoch=st.integers(0, 200))
def test_step_schedule_halves_every_n_epochs(lr, every, epoch):
    expected = lr
    for e in range(1, epoch + 1):
        if e % every == 0:
            expected /= 2
    assert cb.schedule_fn("step", lr, 100, every)(epoch) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-5, 1.0), epochs=st.integers(1, 100))
def test_cosine_schedule_falls_from_lr_to_zero(lr, epochs):
    fn = cb.schedule_fn("cosine", lr, epochs)
    values = [fn(e) for e in range(epochs + 1)]
    assert values[0] == pytest.approx(lr)
    assert values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b - 1e-15 for a, b in zip(values, values[1:], strict=False))
    if epochs % 2 == 0:
        assert values[epochs // 2] == pytest.approx(lr / 2)


# -- evaluate on a hand-built model whose outputs are known exactly ---------------------------


def _hand_built_run(tmp_path, classes, crop):
    """A run folder holding a model: softmax(W . mean colour / 255 + b), and a test file."""
    rng = np.random.default_rng(classes)
    weights = rng.normal(0, 4, (3, classes)).astype(np.float32)
    bias = rng.normal(0, 0.5, classes).astype(np.float32)
    size = crop or 8
    inputs = keras.Input((size, size, 3), dtype="uint8")
    from dsprep.adapters import MeanSubtraction

    x = MeanSubtraction([0, 0, 0], scale=1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(classes, activation="softmax")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([weights, bias])
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "best.keras")
    names = [f"c{i}" for i in range(classes)]
    (run / "config.json").write_text(json.dumps({
        "options": {"crop": crop}, "classes": names, "input_shape": [size, size, 3],
        "input_dtype": "uint8", "image_shape": [8, 8, 3], "resize": "crop"}))
    n = 40
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    labels[:classes] = np.arange(classes)  # every class present
    test = write_arrays(tmp_path / "test.hdf5", images, labels, names, split="test")
    return run, test, images, labels, weights, bias


def _probs(images, weights, bias):
    logits = images.astype(np.float64).mean(axis=(1, 2)) / 255 @ weights + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _pairwise_auc(scores, labels):
    """The fraction of (positive, negative) pairs the positive outscores, ties counting 1/2."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _check_scores(scores, probs, labels, classes):
    preds = probs.argmax(axis=1)
    assert scores["count"] == len(labels)
    assert scores["rank1"] == pytest.approx(np.mean(preds == labels))
    if classes > 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        assert scores["rank5"] == pytest.approx(np.mean([lab in t for lab, t in zip(labels, top5,
                                                                                 strict=True)]))
    else:
        assert scores["rank5"] is None
    if classes == 2:
        assert scores["auc"] == pytest.approx(_pairwise_auc(probs[:, 1], labels), abs=1e-9)
    else:
        assert scores["auc"] is None
    for c in range(classes):
        mine = labels == c
        assert scores["per_class"][f"c{c}"] == pytest.approx(np.mean(preds[mine] == c))
        for d in range(classes):
            assert scores["confusion"][c][d] == int(np.sum(mine & (preds == d)))


@pytest.mark.parametrize("classes", [2, 6])
def test_evaluate_matches_a_hand_built_case(tmp_path, classes):
    run, test, images, labels, weights, bias = _hand_built_run(tmp_path, classes, crop=None)
    result = evaluate_run(run, test)
    _check_scores(result["center"], _probs(images, weights, bias), labels, classes)
    assert "ten_crop" not in result
    png = result["center"]["confusion_png"]
    assert Path(png).read_bytes().startswith(PNG_MAGIC)


def test_ten_crop_evaluation_averages_the_ten_views(tmp_path):
    run, test, images, labels, weights, bias = _hand_built_run(tmp_path, 2, crop=6)
    result = evaluate_run(run, test, ten_crop=True)
    centre = images[:, 1:7, 1:7]
    _check_scores(result["center"], _probs(centre, weights, bias), labels, 2)
    views = [images[:, t:t + 6, s:s + 6] for t, s in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
    views += [v[:, :, ::-1] for v in views]
    ten = np.mean([_probs(v, weights, bias) for v in views], axis=0)
    _check_scores(result["ten_crop"], ten, labels, 2)


def test_ten_crop_of_a_crop_the_size_of_the_image_says_it_is_two_views(tmp_path):
    run, test, images, labels, weights, bias = _hand_built_run(tmp_path, 2, crop=8)
    result = evaluate_run(run, test, ten_crop=True)
    two = (_probs(images, weights, bias) + _probs(images[:, :, ::-1], weights, bias)) / 2
    _check_scores(result["ten_crop"], two, labels, 2)
    assert ("the crop (8x8) is the whole image: its ten crops are the image and its mirror, "
            "five times each") in result["ten_crop"]["notes"]
    assert not any("whole image" in n for n in result["center"]["notes"])
    (tmp_path / "b").mkdir()
    smaller = _hand_built_run(tmp_path / "b", 2, crop=6)
    assert not any("whole image" in n
                   for n in evaluate_run(*smaller[:2], ten_crop=True)["ten_crop"]["notes"])


def test_evaluate_says_the_checkpoint_epoch_and_a_run_not_trained_to_its_end(tmp_path):
    run, test, *_ = _hand_built_run(tmp_path, 2, crop=None)
    assert evaluate_run(run, test)["epoch"] is None  # a run whose state is not kept
    shutil.copy(run / "best.keras", run / "last.keras")
    config = json.loads((run / "config.json").read_text())
    config["options"]["epochs"] = 5
    (run / "config.json").write_text(json.dumps(config))

    def state(**fields):
        (run / "state.json").write_text(json.dumps({"monitor": "val_accuracy", "best": 0.5,
                                                    "best_epoch": 0, **fields}))

    state(epochs_done=2)  # killed after its second epoch, or still training
    best = evaluate_run(run, test)
    last = evaluate_run(run, test, checkpoint="last")
    assert (best["epoch"], last["epoch"]) == (1, 2)
    assert (f"{run} has trained 2 of its 5 epochs (it was stopped, or is still training): "
            "its best checkpoint is from epoch 1; 'dsprep train --resume' trains the rest"
            ) in best["center"]["notes"]
    assert "its last checkpoint is from epoch 2" in " ".join(last["center"]["notes"])
    for fields in ({"epochs_done": 5}, {"epochs_done": 3, "stopped_early_of": 5}):
        state(**fields)
        done = evaluate_run(run, test)
        assert done["epoch"] == 1 and not any("has trained" in n
                                              for n in done["center"]["notes"])


def test_ten_crop_hands_the_model_one_crop_position_at_a_time(tmp_path, monkeypatch):
    from dsprep.train import predict as predict_module

    run, test, images, labels, weights, bias = _hand_built_run(tmp_path, 2, crop=6)
    shapes = []
    original = predict_module.predict_fn

    def recording(model):
        fn = original(model)

        def run_batch(x):
            shapes.append(np.shape(x))
            return fn(x)

        return run_batch

    from dsprep.generators import HDF5Generator

    read = []
    get = HDF5Generator.__getitem__

    def recording_get(gen, index):
        x, y = get(gen, index)
        read.append(x.shape)
        return x, y

    monkeypatch.setattr(predict_module, "predict_fn", recording)
    monkeypatch.setattr(HDF5Generator, "__getitem__", recording_get)
    result = evaluate_run(run, test, ten_crop=True, batch_size=16)
    assert shapes and max(s[0] for s in shapes) == 16
    assert {s[1:] for s in shapes} == {(6, 6, 3)}
    # The generator hands out whole images, never a batch of all ten crops at once.
    assert (16, 8, 8, 3) in read and all(len(s) == 4 and s[0] <= 16 for s in read)
    # Per image: four corners and the centre of the 8x8 image, then their mirror images.
    expected = []
    for img in images:
        views = [img[t:t + 6, s:s + 6] for t, s in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
        views += [v[:, ::-1] for v in views]
        expected.append(np.mean(_probs(np.stack(views), weights, bias), axis=0))
    _check_scores(result["ten_crop"], np.stack(expected), labels, 2)


def test_training_auc_tells_apart_scores_near_zero_and_one():
    from dsprep.evaluate import roc_auc

    # A trained model's softmax scores crowd near 0 and 1; the exact AUC ranks them all.
    scores = np.array([2e-6, 8e-6, 2.7e-3, 0.4, 0.999, 0.99999,   # positives
                       1e-6, 5e-6, 1e-3, 0.6, 0.9999, 0.99998])  # negatives
    labels = np.array([1] * 6 + [0] * 6)
    metric = cb.PositiveClassAUC()
    metric.update_state(labels, np.stack([1 - scores, scores], axis=1).astype("float32"))
    exact = roc_auc(scores, labels)
    assert float(metric.result()) == pytest.approx(exact, abs=0.01)
    again = cb.PositiveClassAUC.from_config(metric.get_config())  # as a saved model reloads it
    assert len(again.thresholds) == len(metric.thresholds)


def test_training_auc_ranks_scores_crowded_near_one_half():
    from dsprep.evaluate import roc_auc

    # An unsure model (early epochs) scores every image within 0.005 of 0.5: with 1,001
    # thresholds its AUC was off by 0.06, and two close epochs could be ranked the wrong way.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = (0.5 + (rng.random(400) - 0.5) * 0.01 + 0.002 * (labels - 0.5)).astype("float32")
    metric = cb.PositiveClassAUC()
    for start in range(0, 400, 50):  # batch by batch, as fit counts it
        part = slice(start, start + 50)
        metric.update_state(labels[part], np.stack([1 - scores[part], scores[part]], axis=1))
    assert float(metric.result()) == pytest.approx(roc_auc(scores, labels), abs=0.002)


def test_metrics_of_one_class_files_and_diverged_models():
    from dsprep.train.predict import metrics

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    one = metrics(probs, np.array([1, 1, 1]), ["a", "b"])
    assert one["auc"] is None and one["notes"] == ["no ROC AUC: every image is of class b"]
    assert one["rank1"] == pytest.approx(1 / 3) and one["per_class"] == {"a": None,
                                                                         "b": pytest.approx(1 / 3)}
    # NaN rows are wrong everywhere: not class 0 by argmax, not in the confusion matrix.
    probs = np.array([[np.nan, np.nan], [0.2, 0.8], [0.7, 0.3], [np.inf, 0.0]])
    labels = np.array([0, 1, 1, 0])
    bad = metrics(probs, labels, ["a", "b"])
    assert bad["nonfinite"] == 2 and bad["rank1"] == 0.25
    assert bad["per_class"] == {"a": 0.0, "b": 0.5}
    assert bad["confusion"] == [[0, 0], [1, 1]] and bad["auc"] is None
    assert "NaN or infinite scores for 2 of 4 images" in bad["notes"][0]
    # One-hot labels, as a generator with one_hot=True gives them, read as their ids.
    probs = np.array([[0.3, 0.7], [0.6, 0.4]])
    hot = metrics(probs, np.array([[0.0, 1.0], [1.0, 0.0]]), ["a", "b"])
    assert hot["rank1"] == 1.0 and hot["auc"] == 1.0 and hot["confusion"] == [[1, 0], [0, 1]]
    with pytest.raises(UsageError, match="whole class ids"):
        metrics(probs, np.array([0.5, 1.0]), ["a", "b"])
    # Nothing predicted (the model saw no batch) is named, not a bare numpy error.
    with pytest.raises(UsageError, match=r"got \(0, 0\) \(no batch was predicted"):
        metrics(np.zeros((0, 0)), np.zeros(0, np.int64), ["a", "b"])
    with pytest.raises(UsageError, match=r"scores of shape \(N, 2\) .* got \(2, 3\)"):
        metrics(np.ones((2, 3)), np.array([0, 1]), ["a", "b"])
    with pytest.raises(UsageError, match="one class .*nothing to measure"):
        metrics(np.ones((2, 1)), np.array([0, 0]), ["a"])


def test_evaluate_reports_its_figures_when_the_run_folder_is_read_only(tmp_path, monkeypatch):
    from dsprep.train import predict as pr

    run, test, images, labels, weights, bias = _hand_built_run(tmp_path, 2, crop=None)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(pr, "plot_confusion", read_only)
    result = evaluate_run(run, test)
    _check_scores(result["center"], _probs(images, weights, bias), labels, 2)
    assert result["center"]["confusion_png"] is None
    assert "cannot write" in result["center"]["notes"][0]


def test_evaluate_draws_the_figure_of_a_data_file_named_near_the_limit(tmp_path):
    run, test, images, labels, weights, bias = _hand_built_run(tmp_path, 2, crop=None)
    long = test.with_name("t" * 240 + ".hdf5")  # confusion-NAME-center.png: 259 bytes
    test.rename(long)
    result = evaluate_run(run, long)
    _check_scores(result["center"], _probs(images, weights, bias), labels, 2)
    png = Path(result["center"]["confusion_png"])
    assert png.parent == run and png.name.startswith("confusion-") and "ttttt~" in png.name
    assert png.name.endswith("-center.png") and len(png.name) <= 255
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in run.iterdir() if ".partial" in p.name]


def test_evaluate_refuses_images_of_another_size_than_training(tmp_path):
    # A 6x6 crop fits the model whatever the image size: the size must be checked itself.
    run, _, _, labels, _, _ = _hand_built_run(tmp_path, 2, crop=6)
    images = np.random.default_rng(1).integers(0, 256, (len(labels), 12, 12, 3), np.uint8)
    big = write_arrays(tmp_path / "big.hdf5", images, labels, ["c0", "c1"], split="test")
    match = r"holds images of 12x12 but .* trained on images of 8x8 \(cropped to 6x6\); .* 8x8"
    with pytest.raises(DatasetFormatError, match=match):
        evaluate_run(run, big)
    # Smaller than the crop: the same message, not the crop's own (which names no file).
    small = write_arrays(tmp_path / "small.hdf5", images[:, :5, :5], labels, ["c0", "c1"],
                         split="test")
    match = r"small.hdf5 holds images of 5x5 but .* trained on images of 8x8 \(cropped to 6x6\)"
    with pytest.raises(DatasetFormatError, match=match):
        evaluate_run(run, small)
    # Images of the right size, resized otherwise (stretched, where the run's were cropped).
    stretched = write_arrays(tmp_path / "stretched.hdf5", images[:, :8, :8], labels,
                             ["c0", "c1"], split="test", resize="stretch")
    match = (r"stretched.hdf5 was built with --resize stretch but \S*run was trained on "
             r"images built with --resize crop; build the file with --resize crop")
    with pytest.raises(DatasetFormatError, match=match):
        evaluate_run(run, stretched)
    # A run folder from before config.json kept the image shape still gets the crop checked.
    config = json.loads((run / "config.json").read_text())
    del config["image_shape"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(DatasetFormatError, match=r"images of at least 6x6 .*--size 6 or more"):
        evaluate_run(run, small)


def test_evaluate_names_classes_that_differ_only_in_accent_encoding(tmp_path):
    run, _, _, labels, _, _ = _hand_built_run(tmp_path, 2, crop=None)
    config = json.loads((run / "config.json").read_text())
    config["classes"] = ["caf\u00e9", "c1"]  # as dsprep split writes them (composed)
    (run / "config.json").write_text(json.dumps(config))
    images = np.zeros((len(labels), 8, 8, 3), np.uint8)
    decomposed = write_arrays(tmp_path / "nfd.hdf5", images, labels, ["cafe\u0301", "c1"],
                              split="test")
    with pytest.raises(DatasetFormatError, match="differ only in how their accents are encoded"):
        evaluate_run(run, decomposed)
    other = write_arrays(tmp_path / "other.hdf5", images, labels, ["tea", "c1"], split="test")
    with pytest.raises(DatasetFormatError, match="evaluate on a file built from the same split"):
        evaluate_run(run, other)
    # Some of the run's classes (a folder of the user's own): how to number them as the run's.
    some = write_arrays(tmp_path / "some.hdf5", images, np.zeros(len(labels), int), ["c1"],
                        split="test")
    built = tmp_path / "built"
    write_arrays(built / "train.hdf5", images, labels, config["classes"], split="train")
    (run / "config.json").write_text(json.dumps({**config, "data": str(built)}))
    with pytest.raises(DatasetFormatError, match=r"has classes \['c1'\] .* to evaluate images "
                       r"of some of its classes, build their folder into the run's data folder "
                       rf"with 'dsprep build-hdf5 FOLDER {re.escape(str(built))} --name NAME "
                       r"--size 8x8', "):  # (the run's size: the default 256 would be refused)
        evaluate_run(run, some)
    # Trained on a split folder (no train.hdf5 to take the ids of): no such advice.
    (run / "config.json").write_text(json.dumps({**config, "data": str(tmp_path / "split")}))
    with pytest.raises(DatasetFormatError, match="evaluate on a file built from the same split"):
        evaluate_run(run, some)
    # Other classes are said before another image size: a rebuild at the run's size was asked
    # for first, of a file of another dataset.
    larger = write_arrays(tmp_path / "larger.hdf5", np.zeros((len(labels), 12, 12, 3), np.uint8),
                          labels, ["tea", "c1"], split="test")
    with pytest.raises(DatasetFormatError, match="has classes"):
        evaluate_run(run, larger)


def test_ten_crop_needs_a_run_trained_on_crops(tmp_path):
    run, test, *_ = _hand_built_run(tmp_path, 2, crop=None)
    with pytest.raises(UsageError, match="whole images"):
        evaluate_run(run, test, ten_crop=True)


def test_cpu_device_setup_is_float32_without_xla():
    try:
        setup = configure_device("auto", jit=True, gpus="all")
        assert (setup.gpus, setup.precision, setup.jit) == (0, "float32", False)
        assert keras.mixed_precision.global_policy().name == "float32"
        forced = configure_device("mixed", jit=True, gpus="1")
        assert forced.precision == "mixed"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        # More GPUs than there are is refused here as on a GPU machine, not run on the CPU.
        with pytest.raises(UsageError, match="--gpus 3 asks for more GPUs than the 0 visible"):
            configure_device("auto", jit=True, gpus="3")
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_overfit_check_needs_the_model_to_learn_the_subset(tmp_path, monkeypatch):
    from dsprep.train import fit

    rows: list[dict] = []

    def fake_train(data, run, config, **kwargs):
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"classes": ["a", "b", "c"], "options": {}}))
        return fit.TrainResult(run, 2, "val_accuracy", None, rows)

    monkeypatch.setattr(fit, "train", fake_train)
    verdicts = []
    for n, (first, last, accuracy) in enumerate(((3.06, 1.09, 0.375), (3.06, 1.05, 0.75),
                                                 (0.70, 0.60, 1.0))):
        # A quarter off an inflated first loss while guessing (0.375, chance 1/3): no pass. A
        # loss that stays high from weight decay while every image is right: a pass.
        rows[:] = [{"loss": first, "accuracy": 0.3}, {"loss": last, "accuracy": accuracy}]
        report = fit.overfit_check(tmp_path / "data", tmp_path / f"run{n}", tiny(epochs=2))
        assert report.chance == pytest.approx(1 / 3)
        assert report.needed_accuracy == pytest.approx(2 / 3)
        verdicts.append(report.passed)
    assert verdicts == [False, True, False]


def test_best_checkpoint_metric():
    assert cb.best_metric(2) == ("val_auc", "max")
    assert cb.best_metric(3) == ("val_accuracy", "max")
    assert cb.best_metric(2, validation=False) == ("auc", "max")
    assert cb.best_metric(2, True, np.array([0, 1, 1])) == ("val_auc", "max")
    # A validation split of one class: AUC is no measure there (Keras gives 0 every epoch).
    assert cb.best_metric(2, True, np.array([1, 1, 1])) == ("val_accuracy", "max")


def test_schedule_and_early_stop_callbacks_watch_the_best_metric(tmp_path):
    from dsprep.train.fit import _callbacks

    calls = _callbacks(tmp_path, tiny(schedule="plateau", plateau_patience=4, early_stop=6),
                       "val_auc", [], True)
    plateau = next(c for c in calls if isinstance(c, keras.callbacks.ReduceLROnPlateau))
    assert (plateau.monitor, plateau.patience, plateau.factor) == ("val_auc", 4, 0.1)
    stop = next(c for c in calls if isinstance(c, keras.callbacks.EarlyStopping))
    assert (stop.monitor, stop.patience) == ("val_auc", 6)
    # The recorder runs after the schedule so it logs the rate each epoch trained with.
    def position(kind):
        return next(i for i, c in enumerate(calls) if isinstance(c, kind))

    assert position(cb.RunRecorder) > position(keras.callbacks.ReduceLROnPlateau)
    constant = _callbacks(tmp_path, tiny(), "val_accuracy", [], True)
    assert [type(c) for c in constant] == [cb.RunRecorder, cb.StopOnNaN]


def test_sweep_plot_turns_logarithmic_when_one_rate_diverges(tmp_path, monkeypatch):
    scales = []
    monkeypatch.setattr(cb, "save_figure",
                        lambda fig, path: scales.append(fig.axes[0].get_yscale()))
    calm = {"0.01": [{"epoch": 0, "loss": 0.9, "val_loss": 1.0},
                     {"epoch": 1, "loss": 0.6, "val_loss": 0.8}],
            "0.001": [{"epoch": 0, "loss": 1.1, "val_loss": 1.2}]}
    cb.plot_sweep(calm, tmp_path / "calm.png")
    wild = {**calm, "0.1": [{"epoch": 0, "loss": 2.0, "val_loss": 15530.0},
                            {"epoch": 1, "loss": float("nan"), "val_loss": 1342.0}]}
    cb.plot_sweep(wild, tmp_path / "wild.png")
    assert scales == ["linear", "log"]


def test_sweep_plot_marks_one_epoch_points_on_whole_epochs_and_names_diverged_rates(
        tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(cb, "save_figure", lambda fig, path: figures.append(fig))
    cb.plot_sweep({"0.01": [{"epoch": 0, "loss": 0.9, "val_loss": 1.0}],
                   "10": [{"epoch": 0, "loss": float("nan"), "val_loss": float("nan")}]},
                  tmp_path / "one.png")
    ax = figures[0].axes[0]
    # A one-epoch validation curve is a single point: a dashed line alone would not show it.
    assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())
    assert list(ax.get_xticks()) == [1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lr=0.01", "lr=10 (diverged)"]


def test_rows_in_class_order_are_drawn_from_anywhere_not_in_one_class_batches(tmp_path):
    mixed = write_data(tmp_path / "mixed", size=16)  # classes alternate row by row
    assert open_data(mixed, tiny(image_size=16)).train.shuffle == "batches"
    ordered = tmp_path / "ordered"
    shutil.copytree(mixed, ordered)
    with h5py.File(mixed / "train.hdf5", "r") as db:
        images, labels = db["images"][()], db["labels"][()]
    by_class = np.argsort(labels, kind="stable")  # as build-hdf5 --order sorted leaves them
    write_arrays(ordered / "train.hdf5", images[by_class], labels[by_class], ["cat", "dog"],
                 overwrite=True)
    gen = open_data(ordered, tiny(image_size=16, batch_size=8)).train
    assert gen.shuffle == "full"
    assert all(len(set(gen[i][1].tolist())) == 2 for i in range(len(gen)))


def test_a_split_folder_whose_val_folders_are_empty_trains_without_validation(tmp_path):
    from dsprep.train.fit import has_validation

    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("bee", "cat"), per_class=4, size=(16, 16))
    for name in ("bee", "cat"):  # split --ratios 0.9,0,0.1 leaves them so
        (split / "val" / name).mkdir(parents=True)
    (split / "split.json").write_text(json.dumps({"classes": ["bee", "cat"]}))
    assert not has_validation(split)
    bundle = open_data(split, tiny(image_size=16, batch_size=4))
    assert bundle.val is None and len(bundle.train.files) == 8
    # Files that are no images (notes, a Finder's .DS_Store) make no validation split either.
    (split / "val" / "bee" / "README.txt").write_text("none yet")
    (split / "val" / "cat" / ".DS_Store").write_bytes(b"\0")
    assert not has_validation(split)
    assert open_data(split, tiny(image_size=16, batch_size=4)).val is None
    make_class_folders(split / "val", classes=("cat",), per_class=1, size=(16, 16), seed=5)
    assert has_validation(split)


@pytest.mark.parametrize("labels, batch, expected", [
    (np.arange(40) % 2, 8, "batches"),  # shuffled, as build-hdf5 leaves them
    (np.repeat([0, 1, 2], 20), 8, "full"),  # --order sorted
    (np.repeat([0, 1, 2], 2), 2, "full"),  # sorted, two a class: every batch one class
    (np.r_[np.arange(1000) % 9, np.full(100, 9)], 32, "full"),  # a class appended
    (np.zeros(50, int), 8, "batches"),  # one class: nothing to mix
    (np.repeat([0, 1], 3), 8, "batches"),  # smaller than a batch
])
def test_the_training_order_is_drawn_from_anywhere_when_classes_lie_in_runs(labels, batch,
                                                                            expected):
    from dsprep.generators import rows_in_class_runs

    assert rows_in_class_runs(labels, batch) == (expected == "full")


def test_models_take_the_means_as_a_path_a_dict_or_numbers(tmp_path):
    from dsprep.train.models import smallnet

    path = tmp_path / "means.json"
    path.write_text(json.dumps({"R": 10.0, "G": 20.0, "B": 30.0}))
    for mean in (str(path), path, {"R": 10.0, "G": 20.0, "B": 30.0}, (10, 20, 30)):
        model = smallnet((48, 48, 3), 2, mean=mean, scale=0.5, input_dtype="uint8")
        layer = model.get_layer("mean_subtraction")
        assert layer.mean_rgb == [10.0, 20.0, 30.0] and layer.scale == 0.5


def test_a_whole_number_momentum_from_python_is_taken(tmp_path):
    from dsprep.train.fit import make_optimizer

    for optimizer in ("sgd", "rmsprop"):
        made = make_optimizer(TrainConfig(optimizer=optimizer, momentum=0, lr=1))
        assert float(made.momentum) == 0.0
    with pytest.raises(UsageError, match=r"--momentum must be in \[0, 1\) for rmsprop"):
        make_optimizer(TrainConfig(optimizer="rmsprop", momentum=1).check())
    make_optimizer(TrainConfig(optimizer="adam", momentum=1).check())  # adam has none
    with pytest.raises(UsageError, match="--weight-decay must be a finite number"):
        TrainConfig(weight_decay=math.inf).check()


def test_a_run_saved_with_a_momentum_of_1_still_resumes(small_run, tmp_path):
    # Runs made before momentum had to be below 1 resume with their saved optimizer.
    _, run, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["options"]["momentum"] = 1.0
    (copy / "config.json").write_text(json.dumps(config))
    assert resume(copy, epochs=3).epochs_done == 3


def test_a_sweep_keeps_tensorflows_retracing_warning_off_stderr(caplog):
    # Each rate is a new model: from the third on, TensorFlow warned of "retracing" on every
    # sweep of the default three rates. Its other warnings still pass.
    import logging

    from dsprep.train.fit import _retracing_unsaid

    logger = logging.getLogger("tensorflow")
    with caplog.at_level(logging.WARNING, logger="tensorflow"), _retracing_unsaid():
        logger.warning("5 out of the last 11 calls to <function f> triggered tf.function "
                       "retracing. Tracing is expensive")
        logger.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
    logger.warning("after: 1 call triggered tf.function retracing")
    assert len(caplog.records) == 2  # only while the sweep runs


def test_sweep_lr_refuses_a_rate_folder_left_mid_move_before_training_any(tmp_path):
    from dsprep.train.fit import sweep_lr

    data = write_data(tmp_path / "data", size=16)
    (tmp_path / "sweep" / "lr-0.1" / ".replaced.partial").mkdir(parents=True)
    with pytest.raises(DestinationExistsError, match=r"lr-0.1 already holds a run this sweep "
                                                     r"cannot carry on .* use --force"):
        sweep_lr(data, tmp_path / "sweep", [0.01, 0.1], tiny(image_size=16))
    assert not (tmp_path / "sweep" / "lr-0.01").exists()


def test_a_folder_inside_a_split_is_answered_with_the_split(tmp_path):
    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("bee", "cat"), per_class=2, size=(16, 16))
    (split / "split.json").write_text(json.dumps({"schema": "dsprep-split/1",
                                                  "classes": ["bee", "cat"]}))
    for inside in (split / "train", split / "train" / "bee"):
        with pytest.raises(LayoutError, match=rf"it lies in the split {re.escape(str(split))}"):
            open_data(inside, tiny(image_size=16))


def test_data_of_one_class_is_refused_before_training(tmp_path):
    # A dump whose classes were not found (images/ beside a CSV taken as the only class)
    # trained with a loss of 0 and an accuracy of 1 before.
    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("images",), per_class=4, size=(16, 16))
    (split / "split.json").write_text(json.dumps({"classes": ["images"]}))
    with pytest.raises(LayoutError, match=r"one class only \(images\).*split the dump again"):
        open_data(split, tiny(image_size=16, batch_size=2), work=tmp_path)
    h5 = tmp_path / "h5"
    h5.mkdir()
    write_arrays(h5 / "train.hdf5", np.zeros((4, 16, 16, 3), np.uint8), np.zeros(4, np.int64),
                 ["images"])
    with pytest.raises(LayoutError, match="one class only.*two or more classes"):
        open_data(h5, tiny(image_size=16, batch_size=2), work=tmp_path)


@pytest.mark.slow
def test_resume_and_evaluate_notice_training_data_split_again(small_run, tmp_path):
    # The data folder rebuilt from another split: resuming would train on the new split's
    # test images, and its test figures would count images the run learned from.
    data, run, _ = small_run
    copy, other = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run, copy)
    shutil.copytree(data, other)
    config = json.loads((copy / "config.json").read_text())
    config["data"] = str(other)
    (copy / "config.json").write_text(json.dumps(config))
    assert len(config["train_images_sha256"]) == 64
    with h5py.File(other / "train.hdf5", "r") as db:
        images, labels = db["images"][()], db["labels"][()]
    names = [f"{['cat', 'dog'][k]}/{i}.jpg" for i, k in enumerate(labels)]
    write_arrays(other / "train.hdf5", images, labels, ["cat", "dog"], filenames=names,
                 overwrite=True)
    with pytest.raises(UsageError, match="its training images .* differ from those the run "
                                         "was trained on"):
        resume(copy, epochs=3)
    report = evaluate_run(copy, other / "test.hdf5")
    assert any(n.startswith(f"the training data {other / 'train.hdf5'} has changed since")
               for n in report["center"]["notes"]), report["center"]["notes"]
    # The same images in another row order (a build with another --seed) are the same data.
    order = np.arange(len(labels))[::-1]
    write_arrays(other / "train.hdf5", images[order], labels[order], ["cat", "dog"],
                 filenames=[names[i] for i in order], overwrite=True)
    again = tmp_path / "again"
    train(other, again, tiny("smallnet", width=4, epochs=1))
    write_arrays(other / "train.hdf5", images, labels, ["cat", "dog"], filenames=names,
                 overwrite=True)
    assert not [n for n in evaluate_run(again, other / "test.hdf5")["center"]["notes"]
                if "changed since" in n]


def test_a_run_folder_among_the_data_is_refused(tmp_path):
    # Its checkpoints and plots would be read as images by the next split or build.
    data = write_data(tmp_path / "data", size=16, counts=(4, 2, 2))
    before = sorted(p.name for p in data.iterdir())
    for run, how in ((data, "is"), (data / "runs" / "a", "lies in")):
        with pytest.raises(UsageError, match=f"run folder {re.escape(str(run))} {how} the data "
                                             "folder"):
            train(data, run, tiny("smallnet", width=4, epochs=1))
    assert sorted(p.name for p in data.iterdir()) == before


def test_evaluate_without_best_keras_points_to_the_last_checkpoint(small_run, tmp_path):
    data, run, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "best.keras").unlink()
    with pytest.raises(LayoutError, match="best.keras does not exist, but last.keras does .*"
                                          "use --checkpoint last"):
        evaluate_run(copy, data / "test.hdf5")
    assert evaluate_run(copy, data / "test.hdf5", checkpoint="last")["center"]["count"] == 8


def test_a_figure_stopped_while_it_is_saved_leaves_no_partial_file(tmp_path):
    # A SIGHUP while curves.png was drawn left .curves.partial.png in the run folder.
    class Stopped:
        def savefig(self, path, **kwargs):
            Path(path).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt

    (tmp_path / "curves.png").write_bytes(b"the last whole picture")
    with pytest.raises(KeyboardInterrupt):
        cb.save_figure(Stopped(), tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    assert (tmp_path / "curves.png").read_bytes() == b"the last whole picture"


def test_a_keras_file_damaged_inside_its_zip_is_named_not_a_traceback(tmp_path):
    import zipfile

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "m.keras"
    model.save(path)
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
        weights = zf.getinfo("model.weights.h5")
    # One byte of the weights changed: a bad CRC (or bad deflate data).
    data = bytearray(path.read_bytes())
    start = weights.header_offset + 30 + len(weights.filename) + len(weights.extra)
    data[start + weights.compress_size // 2] ^= 0xFF
    flipped = tmp_path / "flipped.keras"
    flipped.write_bytes(bytes(data))
    # A member missing.
    missing = tmp_path / "missing.keras"
    with zipfile.ZipFile(missing, "w") as zf:
        for name, body in members.items():
            if name != "config.json":
                zf.writestr(name, body)
    for damaged in (flipped, missing):
        with pytest.raises(DatasetFormatError, match=f"{damaged} is not a loadable Keras "
                                                     "model .*train the run again"):
            load_model(damaged)
    assert load_model(path).output_shape == (None, 2)


def test_confusion_figure_of_many_long_and_cjk_class_names(tmp_path):
    # 200 names were drawn over each other, a long one cut at its start, and CJK names
    # warned once per glyph (errors under this suite's filter).
    from dsprep.train.predict import plot_confusion, tick_labels

    names = [f"class-{i:03d}-" + "x" * 30 for i in range(200)]
    names[0] = "\u65e5\u672c"  # Japanese
    ticks = tick_labels(names)
    assert ticks[0] == names[0]
    assert ticks[4] == names[4][:21] + "..." and len(ticks[4]) == 24
    assert [i for i, t in enumerate(ticks) if t] == list(range(0, 200, 4))  # 50 named
    assert tick_labels(["cat", "dog"]) == ["cat", "dog"]
    png = plot_confusion(np.eye(200, dtype=int), names, tmp_path / "many.png")
    assert png.read_bytes().startswith(PNG_MAGIC)
    png = plot_confusion([[3, 1], [0, 4]], ["\u732b", "\u72ac"], tmp_path / "cjk.png")
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_a_raw_pixel_model_refuses_float_batches(tmp_path):
    # Mean-subtracted floats cast to uint8 by Keras wrap around: a quarter of the right
    # accuracy, and no error.
    from dsprep.generators import HDF5Generator
    from dsprep.preprocess import MeanSubtract
    from dsprep.train.predict import predict, predict_fn

    run, test, images, labels, weights, bias = _hand_built_run(tmp_path, 2, crop=None)
    model = load_model(run / "best.keras")
    np.testing.assert_allclose(predict_fn(model)(images[:4]), _probs(images[:4], weights, bias),
                               rtol=1e-5)
    floats = HDF5Generator(test, batch_size=8, shuffle="none",
                           preprocessors=[MeanSubtract({"R": 120, "G": 120, "B": 120})])
    with pytest.raises(UsageError, match="takes raw uint8 pixels .* the batch is float32: make "
                                         "the generator with output=\"uint8\""):
        predict(model, floats)


def test_a_class_without_training_images_is_named(small_run, tmp_path):
    assert small_run[2].untrained == []
    data = write_data(tmp_path / "data", size=48, classes=("cat", "dog", "emu"),
                      counts=(12, 6, 6))
    with h5py.File(data / "train.hdf5", "r") as db:
        images, labels = db["images"][()], db["labels"][()]
    keep = labels != 2  # train/ has no emu folder; val and test have emus
    (data / "train.hdf5").unlink()
    write_arrays(data / "train.hdf5", images[keep], labels[keep], ["cat", "dog", "emu"],
                 split="train")
    from click.testing import CliRunner

    from dsprep.cli import main

    said = CliRunner().invoke(main, ["train", str(data), str(tmp_path / "run"), "--model",
                                     "smallnet", "--width", "4", "--batch-size", "8",
                                     "--epochs", "1", "--seed", "1"])
    assert said.exit_code == 0, said.output
    assert ("note: no training image is of class emu: the model has an output for it but "
            "never learned it") in said.stderr
    result = train(data, tmp_path / "run2", tiny("smallnet", width=4, epochs=1))
    assert result.untrained == ["emu"]
