"""``dsprep train``, ``evaluate`` and ``sweep-lr`` end to end on tiny generated data."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_class_folders, smooth_image

pytest.importorskip("keras", reason="the training extra (Keras 3) is not installed")

from dsprep.cli import main  # noqa: E402
from dsprep.store import write_arrays  # noqa: E402

QUICK = ["--model", "smallnet", "--width", "4", "--batch-size", "8", "--seed", "1"]


def write_data(root, size=48, counts=(16, 8, 8), names=("cat", "dog")):
    """Two classes told apart by a bright red (cat) or green (dog) channel."""
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        labels = np.arange(count) % 2
        images = []
        for label in labels:
            img = smooth_image(size, size, seed=n).astype(np.int32) // 2
            img[..., label] += 120
            images.append(img.astype(np.uint8))
            n += 1
        images = np.stack(images)
        write_arrays(root / f"{split}.hdf5", images, labels, list(names), split=split)
        if split == "train":
            mean = images.reshape(-1, 3).mean(axis=0).tolist()
            (root / "means.json").write_text(json.dumps(dict(zip("RGB", mean, strict=True))))
    return root


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def history(run):
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture(scope="module")
def one_epoch_run(data, tmp_path_factory):
    """A finished one-epoch run of DATA, for tests to copy."""
    run = tmp_path_factory.mktemp("one-epoch") / "run"
    result = invoke("train", data, run, *QUICK, "--epochs", "1")
    assert result.exit_code == 0, result.output
    return run


def test_arguments_swapped_or_a_file_for_a_folder_are_told_what_to_give(data, one_epoch_run,
                                                                        tmp_path):
    # "Directory 'train.hdf5' is a file." and "... has neither train.hdf5 nor a train/
    # folder" said nothing of what to give instead.
    result = invoke("train", data / "train.hdf5", tmp_path / "run", *QUICK)
    assert result.exit_code == 2
    assert "is a file, not a data folder; give the folder that holds train.hdf5" in result.output
    result = invoke("evaluate", data / "test.hdf5", one_epoch_run)
    assert result.exit_code == 2
    assert "is a file, not a run folder; give the run folder first, then the data file" \
        in result.output
    result = invoke("train", one_epoch_run, tmp_path / "run", *QUICK)
    assert result.exit_code != 0
    assert f"{one_epoch_run} holds a run, config.json: give DATA first, then RUN" \
        in result.output
    assert not (tmp_path / "run").exists()


def test_training_without_a_validation_split_says_what_picks_the_best(data, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("train.hdf5", "means.json"):
        shutil.copy(data / name, bare / name)
    result = invoke("train", bare, tmp_path / "run", *QUICK, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "has no validation split (val.hdf5, or images in val/), so best.keras" in result.output
    assert "best auc" in result.output  # two classes
    assert "--image-size" not in result.output  # not given: no note
    with_val = invoke("train", data, tmp_path / "run2", *QUICK, "--epochs", "1")
    assert with_val.exit_code == 0 and "no validation split" not in with_val.output
    sweep = invoke("sweep-lr", bare, tmp_path / "sweep", *QUICK, "--lrs", "0.01",
                   "--epochs", "1")
    assert sweep.exit_code == 0, sweep.output
    assert "has no validation split (val.hdf5, or images in val/), so best.keras" in sweep.output


def test_an_hdf5_without_means_is_refused_in_words(tmp_path):
    # Images and labels only, as the book's own builder writes them, and no means.json.
    import h5py
    import numpy as np

    (tmp_path / "fh").mkdir()
    with h5py.File(tmp_path / "fh" / "train.hdf5", "w") as f:
        f["images"] = np.zeros((16, 48, 48, 3), np.uint8)
        f["labels"] = np.arange(16) % 2
    result = invoke("train", tmp_path / "fh", tmp_path / "run", *QUICK, "--epochs", "1")
    assert result.exit_code == 1, result.output
    assert "has no mean_rgb attribute and" in result.output and "means.json" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_an_image_size_given_for_hdf5_data_is_said_to_be_unused(data, tmp_path):
    result = invoke("train", data, tmp_path / "run", *QUICK, "--epochs", "1",
                    "--image-size", "32")
    assert result.exit_code == 0, result.output
    assert "note: --image-size is for split folders" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["input_shape"] == [48, 48, 3]  # the file's size, not 32


def test_a_resume_after_a_crashed_replacement_brings_the_old_run_back(one_epoch_run, tmp_path):
    from dsprep.train import fit

    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    kept = {p.name: p.read_bytes() for p in run.iterdir()}
    fit._set_aside(run)  # as a --force killed in its first epoch leaves it
    (run / "config.json").write_text("{}")
    result = invoke("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "held a replacement (--force) that never finished an epoch" in result.output
    assert "has trained all its 1 epoch already: nothing to do" in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == kept


@pytest.mark.slow
def test_train_resume_and_evaluate(data, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", data, run, *QUICK, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "2 epochs" in result.output and "best val_auc" in result.output
    for name in ("config.json", "history.csv", "curves.png", "lr.png", "best.keras",
                 "last.keras"):
        assert (run / name).is_file(), name
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["model"] == "smallnet" and options["batch_size"] == 8 and options["seed"] == 1

    again = invoke("train", data, run, *QUICK)
    assert again.exit_code == 1
    assert "already holds a run" in again.output and "--resume" in again.output
    # --force with an option the data refuses leaves the run it was to replace whole.
    kept = {name: (run / name).read_bytes() for name in ("config.json", "history.csv",
                                                         "best.keras", "last.keras")}
    refused = invoke("train", data, run, *QUICK, "--force", "--crop", "100")
    assert refused.exit_code == 2 and "--crop 100 is larger" in refused.output
    assert {name: (run / name).read_bytes() for name in kept} == kept
    # So does a replacement that diverges in its first epoch.
    diverged = invoke("train", data, run, *QUICK, "--force", "--lr", "1e30")
    assert diverged.exit_code == 1 and "training diverged" in diverged.output
    assert "Invalid loss" not in diverged.output  # (Keras's own line: -q would not hide it)
    assert f"{run} holds the run it was to replace, as before" in diverged.output
    assert {name: (run / name).read_bytes() for name in kept} == kept

    resumed = invoke("train", "--resume", run, "--epochs", "3")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output
    assert [int(r["epoch"]) for r in history(run)] == [0, 1, 2]
    # The data given to a resume must be what the run was trained on.
    for other, what in ((write_data(tmp_path / "fox", names=("cat", "fox")), "classes"),
                        (write_data(tmp_path / "big", size=56), "model input")):
        wrong = invoke("train", "--resume", run, "--epochs", "4", other)
        assert wrong.exit_code == 2 and f"does not match the run: its {what}" in wrong.output
        assert "Traceback" not in wrong.output
    quiet = invoke("train", "--resume", run, "--epochs", "4", "-q")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output == "" and [int(r["epoch"]) for r in history(run)] == [0, 1, 2, 3]

    as_json = invoke("evaluate", run, data / "test.hdf5", "--json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["center"]["count"] == 8
    # The figures recomputed here from best.keras's own predictions on the file's pixels.
    import h5py

    from dsprep.train.predict import load_model

    with h5py.File(data / "test.hdf5", "r") as db:
        pixels, labels = db["images"][()], db["labels"][()]
    probs = np.asarray(load_model(run / "best.keras").predict(pixels, verbose=0), np.float64)
    preds = probs.argmax(axis=1)
    assert report["center"]["rank1"] == pytest.approx(float(np.mean(preds == labels)))
    confusion = np.zeros((2, 2), int)
    np.add.at(confusion, (labels, preds), 1)
    assert report["center"]["confusion"] == confusion.tolist()
    pos, neg = probs[labels == 1, 1], probs[labels == 0, 1]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert report["center"]["auc"] == pytest.approx(float(pairs.mean()))

    table = invoke("evaluate", run, data / "test.hdf5", "--checkpoint", "last")
    assert table.exit_code == 0, table.output
    for text in ("rank-1 accuracy", "ROC AUC", "accuracy of cat", "accuracy of dog",
                 "confusion-test-center-last.png"):
        assert text in table.output
    assert "rank-5" not in table.output  # meaningless with two classes
    # The last checkpoint's figure does not replace the best one's.
    assert (run / "confusion-test-center.png").is_file()
    on_train = invoke("evaluate", run, data / "train.hdf5")
    assert on_train.exit_code == 0 and "is a training split: its figures say" in on_train.output
    assert "training split" not in as_json.output
    folder = invoke("evaluate", run, data)  # the folder, not a file of it
    assert folder.exit_code == 1 and f"such as {data / 'test.hdf5'}" in folder.output
    # With -q the figures are still the answer; the PNG line is not.
    quiet = invoke("evaluate", run, data / "test.hdf5", "-q")
    assert quiet.exit_code == 0 and "rank-1 accuracy" in quiet.output
    assert "confusion matrices" not in quiet.output
    info = invoke("-q", "info", data / "test.hdf5")
    assert info.exit_code == 0 and "schema" in info.output and "cat" in info.output
    # A test file of another folder gets its own PNG, not the run's data's.
    (tmp_path / "extra").mkdir()
    shutil.copy(data / "test.hdf5", tmp_path / "extra" / "test.hdf5")
    other = invoke("evaluate", run, tmp_path / "extra" / "test.hdf5")
    assert other.exit_code == 0 and "confusion-extra-test-center.png" in other.output
    assert (run / "confusion-test-center.png").is_file()

    # A sweep-lr folder holds runs one level down; a damaged or foreign checkpoint is named.
    sweep = tmp_path / "sweep"
    shutil.copytree(run, sweep / "lr-0.01")
    parent = invoke("evaluate", sweep, data / "test.hdf5")
    assert parent.exit_code == 1 and f"such as {sweep / 'lr-0.01'}" in parent.output
    cut = sweep / "lr-0.01" / "best.keras"
    cut.write_bytes(cut.read_bytes()[:1000])
    damaged = invoke("evaluate", sweep / "lr-0.01", data / "test.hdf5")
    assert damaged.exit_code == 1 and "is not a .keras file" in damaged.output
    # A resume needs last.keras: with it cut short, the way on is starting the run again.
    cut_last = shutil.copytree(run, tmp_path / "cut-last")
    (cut_last / "last.keras").write_bytes((cut_last / "last.keras").read_bytes()[:1000])
    no_resume = invoke("train", "--resume", cut_last, "--epochs", "9")
    assert no_resume.exit_code == 1, no_resume.output
    assert "is not a .keras file" in no_resume.output
    assert (f"cannot resume without it: start it again with 'dsprep train {data.resolve()} "
            f"{cut_last} --force'") in " ".join(no_resume.output.split())
    config = json.loads((run / "config.json").read_text())
    config["input_shape"] = [40, 40, 3]
    (sweep / "lr-0.01" / "config.json").write_text(json.dumps(config))
    foreign = invoke("evaluate", sweep / "lr-0.01", data / "test.hdf5", "--checkpoint", "last")
    assert foreign.exit_code == 1 and "Traceback" not in foreign.output
    assert "checkpoint is from another run" in foreign.output
    # A checkpoint of as many inputs but other classes: said, not scored against them.
    config = json.loads((run / "config.json").read_text())
    config["classes"] = ["cat", "dog", "cow"]
    (sweep / "lr-0.01" / "config.json").write_text(json.dumps(config))
    classes = invoke("evaluate", sweep / "lr-0.01", data / "test.hdf5", "--checkpoint", "last")
    assert classes.exit_code == 1 and "Traceback" not in classes.output
    assert ("the model in " in classes.output
            and "scores 2 classes but its config.json names 3" in classes.output)


@pytest.mark.slow
def test_crop_augment_step_schedule_and_ten_crop(data, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", data, run, *QUICK, "--epochs", "2", "--crop", "46",
                    "--augment", "affine", "--rotation", "15", "--shift", "0.05", "--shear", "2",
                    "--zoom", "0.2", "--schedule", "step", "--step-every", "1")
    assert result.exit_code == 0, result.output
    rows = history(run)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01, 0.005])
    config = json.loads((run / "config.json").read_text())
    assert {k: config["options"][k] for k in ("rotation", "shift", "shear", "zoom")} == {
        "rotation": 15, "shift": 0.05, "shear": 2, "zoom": 0.2}
    assert config["input_shape"] == [46, 46, 3]
    table = invoke("evaluate", run, data / "test.hdf5", "--ten-crop")
    assert table.exit_code == 0, table.output
    header = next(line for line in table.output.splitlines() if line.startswith("metric"))
    assert "center" in header and "ten-crop" in header
    assert (run / "confusion-test-tencrop.png").is_file()


@pytest.mark.slow
def test_overfit_check_passes_on_learnable_data(data, tmp_path):
    result = invoke("train", data, tmp_path / "run", *QUICK, "--overfit-check", "--epochs", "10",
                    "--optimizer", "adam", "--lr", "0.001")
    assert result.exit_code == 0, result.output
    assert "overfit check passed" in result.output


def test_overfit_check_fails_a_model_that_stays_at_guessing(data, tmp_path):
    # A rate of zero never moves the weights: the loss stays at guessing's, ln 2.
    result = invoke("train", data, tmp_path / "run", *QUICK, "--overfit-check", "--epochs", "2",
                    "--optimizer", "sgd", "--lr", "1e-12")
    assert result.exit_code == 1, result.output
    assert "overfit check FAILED" in result.output and "(guessing: 0.50)" in result.output
    assert "accuracy reach 0.75" in result.output


def test_overfit_check_needs_two_epochs(data, tmp_path):
    result = invoke("train", data, tmp_path / "run", *QUICK, "--overfit-check", "--epochs", "1")
    assert result.exit_code == 2, result.output
    assert "2 epochs or more" in result.output
    assert not (tmp_path / "run" / "history.csv").exists()


def test_sweep_lr_refuses_a_rate_given_twice(data, tmp_path):
    result = invoke("sweep-lr", data, tmp_path / "sweep", *QUICK, "--lrs", "0.01,0.0100000001",
                    "--epochs", "1")  # both would train into lr-0.01
    assert result.exit_code == 2, result.output
    assert "0.01 more than once" in result.output
    assert not (tmp_path / "sweep" / "lr-0.01").exists()


@pytest.mark.slow
def test_sweep_lr_plots_each_rate(data, tmp_path):
    run = tmp_path / "sweep"
    result = invoke("sweep-lr", data, run, *QUICK, "--lrs", "0.05,0.001", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert (run / "sweep-lr.png").read_bytes().startswith(b"\x89PNG")
    with open(run / "sweep-lr.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["lr"] for r in rows] == ["0.05", "0.001"]
    # Each rate's training is headed by its rate, in the order trained.
    heads = [result.output.index(f"lr {rate} ({run}/lr-{rate}):") for rate in ("0.05", "0.001")]
    assert heads == sorted(heads)
    for rate in ("0.05", "0.001"):
        assert len(history(run / f"lr-{rate}")) == 1
    assert "diverged" not in result.output
    # A rate whose best figure is highest is named (the table left the reader to find it).
    top = max(float(r["best"]) for r in rows)
    named = re.search(r"highest best (\S+): lr (\S+) \(([\d.]+)\)", result.output)
    assert named and named.group(1) == rows[0]["best_metric"]
    assert float(next(r["best"] for r in rows if r["lr"] == named.group(2))) == top
    assert named.group(3) == f"{top:.4f}"
    # The same sweep run again trains nothing, and says why under each rate (it printed the
    # rates' heads with nothing under them).
    same = invoke("sweep-lr", data, run, *QUICK, "--lrs", "0.05,0.001", "--epochs", "1")
    assert same.exit_code == 0, same.output
    for rate in ("0.05", "0.001"):
        assert f"lr {rate} ({run}/lr-{rate}): trained before, kept" in same.output
        assert len(history(run / f"lr-{rate}")) == 1
    # Another sweep (other options) into RUN is refused before it trains any rate.
    again = invoke("sweep-lr", data, run, *QUICK, "--lrs", "0.01,0.001", "--epochs", "2")
    assert again.exit_code == 1 and f"{run / 'lr-0.001'} already holds a run" in again.output
    assert "--force" in again.output and not (run / "lr-0.01").exists()
    wild = invoke("sweep-lr", data, tmp_path / "wild", *QUICK, "--lrs", "1e30,0.001",
                  "--epochs", "2")
    assert wild.exit_code == 0, wild.output
    assert ("diverged, stopped at a NaN or infinite training or validation loss: lr 1e+30 "
            "(epoch 1)") in wild.output
    assert "Invalid loss" not in wild.output
    assert "highest best" in wild.output and "highest best val_auc: lr 1e+30" not in wild.output


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_log_that_cannot_be_written_does_not_stop_training(data, tmp_path):
    # train > log on a full disk (or its reader gone): Keras's epoch line failed, and with it
    # the run, at its first epoch, with an error that named no file.
    run = tmp_path / "run"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "dsprep", "train", str(data), str(run),
                               *QUICK, "--epochs", "2"], stdout=full, stderr=subprocess.PIPE,
                              timeout=300, cwd=os.path.dirname(os.path.dirname(
                                  os.path.abspath(__file__))))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1] == (
        "Error: cannot write to the standard output: No space left on device")
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 2  # trained whole
    assert len(history(run)) == 2


def test_a_home_that_cannot_be_written_adds_nothing_to_a_quiet_log(data, tmp_path):
    # A cron or service account's HOME: matplotlib (imported with Keras) wrote two lines of
    # its own to stderr in every job log, -q's too.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = os.devnull + "/home"  # (no folder can be made there, even by root)
    done = subprocess.run([sys.executable, "-m", "dsprep", "-q", "train", str(data),
                           str(tmp_path / "run"), *QUICK, "--epochs", "1"], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_progress_asked_for_in_a_log_says_batches_inside_an_epoch(data, tmp_path, monkeypatch):
    from dsprep.train import callbacks as cb

    monkeypatch.setenv("DSPREP_PROGRESS", "1")
    made = []
    real = cb.BatchLines.__init__

    def every_batch(self, epochs, every=10.0):
        made.append(epochs)
        real(self, epochs, every=0.0)  # (a line each batch here; each 10 s in a real log)

    monkeypatch.setattr(cb.BatchLines, "__init__", every_batch)
    result = CliRunner().invoke(main, ["train", str(data), str(tmp_path / "run"), *QUICK,
                                       "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert made == [2]
    assert "epoch 2/2: batch 2/2, loss " in result.stderr
    monkeypatch.setenv("DSPREP_PROGRESS", "0")
    made.clear()
    assert CliRunner().invoke(main, ["train", str(data), str(tmp_path / "quiet"), *QUICK,
                                     "--epochs", "1"]).exit_code == 0
    assert made == []


def test_a_sweeps_highest_rate_breaks_ties_by_the_lower_final_loss():
    # Small validation sets tie often: max() of (best, lr) took the largest rate, whose
    # val_loss was 56 against 4.1.
    from types import SimpleNamespace

    from dsprep.cli.cmd_train import _highest

    def result(best, val_loss, diverged=False):
        return SimpleNamespace(best=best, diverged=diverged, monitor="val_auc",
                               history=[{"loss": 0.7, "val_loss": val_loss}])

    assert _highest({0.5: result(0.5, 56.0), 0.1: result(0.5, 4.1),
                     0.01: result(0.4, 0.6)}) == (
        "highest best val_auc: lr 0.1 (0.5000), tied with lr 0.5: taken for its lower final "
        "val_loss")
    # A saturated AUC, 1.0 but for float32 rounding: a tie too.
    assert _highest({0.5: result(1.0000001192092896, 56.0),
                     0.1: result(0.9999999403953552, 4.1)}) == (
        "highest best val_auc: lr 0.1 (1.0000), tied with lr 0.5: taken for its lower final "
        "val_loss")
    # Without validation, the training loss, said as such (the table's "final loss").
    assert _highest({0.5: SimpleNamespace(best=0.5, diverged=False, monitor="accuracy",
                                          history=[{"loss": 0.9}]),
                     0.1: SimpleNamespace(best=0.5, diverged=False, monitor="accuracy",
                                          history=[{"loss": 0.4}])}) == (
        "highest best accuracy: lr 0.1 (0.5000), tied with lr 0.5: taken for its lower final "
        "training loss")
    assert _highest({0.1: result(0.9, 1.0), 1e30: result(None, float("nan"), True)}) == (
        "highest best val_auc: lr 0.1 (0.9000)")
    assert _highest({1e30: result(None, float("nan"), True)}) == ""
    # The same final loss too (rates too low to move the model): not "lower".
    assert _highest({1e-7: result(0.42, 1.098), 1e-8: result(0.42, 1.098),
                     1e-9: result(0.42, 1.098)}) == (
        "highest best val_auc: lr 1e-09 (0.4200), tied with lr 1e-08, 1e-07 at the same final "
        "val_loss too: nothing here tells them apart (rates too low to learn in these epochs?)")
    # Some at the same loss, some higher: each said as it is.
    assert _highest({1e-4: result(0.5, 0.3), 1e-5: result(0.5, 0.3), 0.1: result(0.5, 2.5)}) == (
        "highest best val_auc: lr 1e-05 (0.5000), tied with lr 0.1: taken for its lower final "
        "val_loss (lr 0.0001, at the same final val_loss too, cannot be told from it)")


@pytest.mark.slow
def test_a_diverging_run_stops_with_an_error_and_early_stops_are_reported(data, one_epoch_run,
                                                                          tmp_path):
    diverged = invoke("train", data, tmp_path / "nan", *QUICK, "--epochs", "3", "--lr", "1e30")
    assert diverged.exit_code == 1
    assert "training diverged: the loss became nan in epoch 1" in diverged.output
    assert "lower --lr" in diverged.output and "Traceback" not in diverged.output
    assert "--force" not in diverged.output  # it kept no epoch: the folder starts again
    assert len(history(tmp_path / "nan")) == 1  # not three epochs of NaN
    # evaluate says why there is no model (it said the run had not finished an epoch).
    looked = invoke("evaluate", tmp_path / "nan", data / "test.hdf5")
    assert looked.exit_code == 1
    assert "the run diverged in its first epoch (a NaN or infinite loss), so it kept no model; " \
        "train it again with a lower --lr" in looked.output, looked.output
    check = invoke("train", data, tmp_path / "check", *QUICK, "--overfit-check", "--epochs", "3",
                   "--lr", "1e30")
    assert check.exit_code == 1 and "training diverged" in check.output
    # It kept no epoch, so the command run again (a lower --lr) simply starts it again.
    again = invoke("train", data, tmp_path / "nan", *QUICK, "--epochs", "1")
    assert again.exit_code == 0, again.output
    assert "held a run that diverged in its first epoch; it started again" in again.output
    rows = history(tmp_path / "nan")
    assert len(rows) == 1 and "nan" not in rows[0].values()

    run = tmp_path / "early"
    early = invoke("train", data, run, *QUICK, "--epochs", "8", "--early-stop", "1",
                   "--lr", "1e-9")
    assert early.exit_code == 0, early.output
    epochs = len(history(run))
    assert epochs < 8 and f"{epochs} epochs (stopped early by --early-stop, of 8)" in early.output
    # A finished run, stopped early or not, has nothing left to do when the job runs again.
    for args in ([], ["--epochs", "8"], ["--epochs", "5"]):
        rerun = invoke("train", "--resume", run, *args)
        assert rerun.exit_code == 0, rerun.output
        assert (f"stopped early after {epochs} of its 8 epochs already: nothing to do (to "
                f"train it further: 'dsprep train --resume {run} --epochs N', N above 8)"
                ) in " ".join(rerun.output.split())
        assert len(history(run)) == epochs
    # Fewer epochs than it trained: refused, saying why the least is 8 and not its epochs.
    fewer = invoke("train", "--resume", run, "--epochs", "1")
    assert fewer.exit_code == 2
    assert (f"has trained {epochs} epochs already (early stopping ended it, which counts as "
            "all 8 it was given); --epochs is the new total, so give more than 8"
            ) in " ".join(fewer.output.split())
    # So has the same command run again: it does not claim to carry the run on.
    same = invoke("train", data, run, *QUICK, "--epochs", "8", "--early-stop", "1", "--lr",
                  "1e-9")
    assert same.exit_code == 0, same.output
    assert "carries on" not in same.output and "nothing to do" in same.output
    assert len(history(run)) == epochs
    # A resume asking for more that stopped before its first epoch leaves config.json with the
    # new total and state.json as it was: running it again trains on.
    config = json.loads((run / "config.json").read_text())
    config["options"]["epochs"] = 12
    (run / "config.json").write_text(json.dumps(config))
    more = invoke("train", "--resume", run)
    assert more.exit_code == 0, more.output
    assert len(history(run)) > epochs and "resumed" in more.output

    # A job that runs the same resume again after the run's end succeeds, claiming no work.
    finished = shutil.copytree(one_epoch_run, tmp_path / "finished")
    before = (finished / "last.keras").read_bytes()
    for args in ([], ["--epochs", "1"]):
        again = invoke("train", "--resume", finished, *args)
        assert again.exit_code == 0, again.output
        assert "has trained all its 1 epoch already: nothing to do" in again.output
        assert "wrote" not in again.output and (finished / "last.keras").read_bytes() == before


def test_evaluating_the_validation_split_that_chose_best_keras_is_noted(data, one_epoch_run):
    # Its figures flatter the model, as the training split's do (which had a note): nothing
    # was said.
    val = invoke("evaluate", one_epoch_run, data / "val.hdf5")
    assert val.exit_code == 0, val.output
    assert (f"{data / 'val.hdf5'} is the validation split {one_epoch_run} was trained with, "
            "which chose its best.keras") in " ".join(val.output.split())
    test = invoke("evaluate", one_epoch_run, data / "test.hdf5")
    assert test.exit_code == 0 and "validation split" not in test.output
    # last.keras is the last epoch's whatever the validation said (no --early-stop, no
    # plateau schedule): nothing to say of it.
    last = invoke("evaluate", one_epoch_run, data / "val.hdf5", "--checkpoint", "last")
    assert last.exit_code == 0 and "validation split" not in last.output


@pytest.mark.slow
def test_evaluating_a_split_made_again_that_holds_training_images_is_noted(tmp_path):
    # The dump split again with another seed into another folder: most of its test images
    # were images the run learned from, and nothing was said.
    import csv as csv_module

    dump = make_class_folders(tmp_path / "dump", classes=("cat", "dog"), per_class=12,
                              size=(48, 48))
    for seed, name in (("1", "a"), ("2", "b")):
        made = invoke("-q", "split", dump, tmp_path / f"split-{name}", "--seed", seed)
        assert made.exit_code == 0, made.output
        built = invoke("-q", "build-hdf5", tmp_path / f"split-{name}", tmp_path / f"hdf5-{name}",
                       "--size", "48")
        assert built.exit_code == 0, built.output
    run = tmp_path / "run"
    assert invoke("train", tmp_path / "hdf5-a", run, *QUICK, "--epochs", "1").exit_code == 0

    def sources(split_folder, split):
        with open(split_folder / "files.csv", newline="") as fh:
            return {r["source"] for r in csv_module.DictReader(fh) if r["split"] == split}

    shared = len(sources(tmp_path / "split-b", "test") & sources(tmp_path / "split-a", "train"))
    assert shared > 0  # the seeds chosen so that some are
    other = invoke("evaluate", run, tmp_path / "hdf5-b" / "test.hdf5")
    assert other.exit_code == 0, other.output
    total = len(sources(tmp_path / "split-b", "test"))
    are = "is an image" if shared == 1 else "are images"
    assert (f"{shared} of the {total} images of {tmp_path / 'hdf5-b' / 'test.hdf5'} {are} "
            f"{run} learned from") in " ".join(other.output.split())
    own = invoke("evaluate", run, tmp_path / "hdf5-a" / "test.hdf5")
    assert own.exit_code == 0 and "learned from" not in own.output
    # A file built on its own (--name) from the other split's test folder: the same count.
    named = invoke("-q", "build-hdf5", tmp_path / "split-b" / "test", tmp_path / "named",
                   "--name", "test", "--size", "48")
    assert named.exit_code == 0, named.output
    alone = invoke("evaluate", run, tmp_path / "named" / "test.hdf5")
    assert alone.exit_code == 0, alone.output
    assert f"{shared} of the {total} images of" in " ".join(alone.output.split())
    # A test folder of the user's own, not a split's (a pre-split dump's test/), holding
    # copies of two training images: its files are read to tell.
    mine = tmp_path / "mine"
    learned = sorted(sources(tmp_path / "split-a", "train"))[:2]
    for n, source in enumerate(learned):
        (mine / source.split("/")[0]).mkdir(parents=True, exist_ok=True)
        shutil.copy(dump / source, mine / source.split("/")[0] / f"copy{n}.jpg")
    fresh = make_class_folders(tmp_path / "fresh", classes=("cat", "dog"), per_class=2,
                               size=(48, 48), seed=99)
    for path in fresh.rglob("*.jpg"):
        (mine / path.parent.name).mkdir(exist_ok=True)
        shutil.copy(path, mine / path.parent.name / path.name)
    built = invoke("-q", "build-hdf5", mine, tmp_path / "mine-hdf5", "--name", "test",
                   "--size", "48")
    assert built.exit_code == 0, built.output
    copies = invoke("evaluate", run, tmp_path / "mine-hdf5" / "test.hdf5")
    assert copies.exit_code == 0, copies.output
    assert (f"2 of the 6 images of {tmp_path / 'mine-hdf5' / 'test.hdf5'} are images {run} "
            "learned from") in " ".join(copies.output.split())
    # The run's split made again in place: a name of its train.hdf5 tells a file it learned
    # from only while the file is still in train, and those are in no test split of the new
    # one: no count is made (not a wrong one) of what can no longer be told.
    again = invoke("-q", "split", dump, tmp_path / "split-a", "--seed", "2", "--force")
    assert again.exit_code == 0, again.output
    unknown = invoke("evaluate", run, tmp_path / "hdf5-b" / "test.hdf5")
    assert unknown.exit_code == 0 and "learned from (the same files" not in unknown.output
    # Built again too, its val.hdf5 is no longer the one that chose best.keras: the warning
    # that the training data changed is what is said (the milder note took its place).
    rebuilt = invoke("-q", "build-hdf5", tmp_path / "split-a", tmp_path / "hdf5-a", "--size",
                     "48", "--force")
    assert rebuilt.exit_code == 0, rebuilt.output
    val = invoke("evaluate", run, tmp_path / "hdf5-a" / "val.hdf5")
    assert val.exit_code == 0, val.output
    assert "has changed since" in val.output and "is the validation split" not in val.output


@pytest.mark.slow
def test_evaluating_a_pre_split_dumps_test_file_counts_its_copies_of_training_images(tmp_path):
    # A dump that comes split (train/, test/), built as it is: its test folder held a copy of
    # a training image, which the build warned of and evaluate did not count (no files.csv).
    dump = tmp_path / "dump"
    make_class_folders(dump / "train", classes=("cat", "dog"), per_class=8, size=(48, 48))
    make_class_folders(dump / "test", classes=("cat", "dog"), per_class=2, size=(48, 48),
                       seed=50)
    shutil.copy(dump / "train" / "dog" / "dog_3.jpg", dump / "test" / "cat" / "copy.jpg")
    built = invoke("build-hdf5", dump, tmp_path / "hdf5", "--size", "48")
    assert built.exit_code == 0, built.output
    assert "test.hdf5: 1 of its 5 images is a copy of an image of train.hdf5" in " ".join(
        built.output.split())
    run = tmp_path / "run"
    trained = invoke("train", tmp_path / "hdf5", run, *QUICK, "--epochs", "1")
    assert trained.exit_code == 0, trained.output
    test = invoke("evaluate", run, tmp_path / "hdf5" / "test.hdf5")
    assert test.exit_code == 0, test.output
    assert (f"1 of the 5 images of {tmp_path / 'hdf5' / 'test.hdf5'} is an image {run} learned "
            "from") in " ".join(test.output.split())


def test_a_crop_that_is_the_whole_image_is_noted(data, tmp_path):
    # --size 227 then --crop 227 (the README's AlexNet crop): no random crops, and nothing
    # said until evaluate noted its ten crops were one.
    whole = invoke("train", data, tmp_path / "run", *QUICK, "--crop", "48", "--epochs", "1")
    assert whole.exit_code == 0, whole.output
    assert ("note: --crop 48 is the whole 48x48 image, so every patch is the image itself and "
            "no random crops are made") in " ".join(whole.output.split())
    assert "train on larger images (data built at --size 54 for --crop 48)" in " ".join(
        whole.output.split())
    smaller = invoke("train", data, tmp_path / "small", *QUICK, "--crop", "46", "--epochs", "1")
    assert smaller.exit_code == 0 and "no random crops" not in smaller.output


def test_a_finished_run_without_its_last_checkpoint_has_nothing_to_do(data, one_epoch_run,
                                                                     tmp_path):
    # last.keras deleted to save room, best.keras kept: the run was said to have "no finished
    # epoch", and the advice, --force, would have thrown best.keras away.
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    (run / "last.keras").unlink()
    best = (run / "best.keras").read_bytes()
    for args in (["train", "--resume", run], ["train", data, run, *QUICK, "--epochs", "1"]):
        again = invoke(*args)
        assert again.exit_code == 0 and "nothing to do" in again.output, again.output
        # Not "to train it further: --resume --epochs N", which would fail.
        assert "its last.keras is gone, so it cannot be trained further" in again.output
    other = invoke("train", data, run, *QUICK, "--epochs", "3")
    assert other.exit_code == 1 and "use --resume" not in other.output
    assert ("its last.keras is gone, so it cannot be continued: use --force to start over "
            "(copy its best.keras elsewhere first to keep it)") in " ".join(other.output.split())
    # More epochs need it: said so, and best.keras is named to keep.
    more = invoke("train", "--resume", run, "--epochs", "2")
    assert more.exit_code == 1
    assert (f"{run} has trained 1 epochs, but its last.keras, which a resume goes on from, is "
            "gone (deleted?); put it back, or start the run again with 'dsprep train --force' "
            "(copy its best.keras elsewhere first to keep it)") in " ".join(more.output.split())
    last = invoke("evaluate", run, data / "test.hdf5", "--checkpoint", "last")
    assert last.exit_code == 1
    assert "last.keras does not exist, but best.keras does" in last.output
    assert "--checkpoint best" in last.output
    assert (run / "best.keras").read_bytes() == best


def test_a_run_that_diverged_after_its_first_epoch_is_not_offered_a_resume(data, tmp_path,
                                                                            monkeypatch):
    from dsprep.train import callbacks as cb

    run = tmp_path / "run"
    args = ["train", data, run, *QUICK, "--epochs", "3", "--schedule", "step"]
    schedule = cb.schedule_fn
    with monkeypatch.context() as m:  # its rate jumps to 1e30 in the second epoch
        m.setattr(cb, "schedule_fn", lambda kind, lr, *a, **k: (
            lambda epoch: 1e30 if epoch == 1 else schedule(kind, lr, *a, **k)(epoch)))
        first = invoke(*args)
    assert first.exit_code == 1 and "training diverged" in first.output
    assert "(and --force)" in first.output  # the folder keeps its first epoch
    # The same command again: it was told to --resume, which only diverged again.
    again = invoke(*args)
    assert again.exit_code == 1 and "--resume " not in again.output
    assert (f"{run} holds this run, which diverged in epoch 2 (its loss became NaN or "
            "infinite) and stopped there: the same options would most likely meet it again, a "
            "resume too. Start again with a lower --lr and --force"
            ) in " ".join(again.output.split())
    # evaluate said it "was stopped, or is still training".
    scored = invoke("evaluate", run, data / "test.hdf5")
    assert scored.exit_code == 0, scored.output
    assert (f"{run} diverged in epoch 2 (its loss became NaN or infinite) and stopped there: "
            "its best checkpoint is from epoch 1, before it") in " ".join(scored.output.split())
    assert "still training" not in scored.output


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(143), SystemExit(129)])
def test_a_stopped_run_says_how_to_resume_it(data, one_epoch_run, tmp_path, monkeypatch, stop):
    from dsprep.train import fit

    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(fit, "resume", stopped)
    status = 130 if isinstance(stop, KeyboardInterrupt) else stop.code
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == status
    assert f"continue it with: dsprep train --resume {run}\n" in result.output

    # A replacement stopped in its first epoch: the old run is back, and no resume is offered
    # (it would continue the old run, not the one that was stopped).
    from dsprep.train import callbacks as cb

    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", stopped)
    replaced = CliRunner().invoke(main, ["train", str(data), str(run), *QUICK, "--force"])
    assert replaced.exit_code == status
    assert f"stopped before it finished an epoch; {run} holds what it held before" in \
        replaced.output and "--resume" not in replaced.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept
    # Before any epoch finished there is nothing to resume: no --resume hint, but what a job's
    # retry does (a SIGTERM printed only "Terminated.").
    monkeypatch.setattr(fit, "train", stopped)
    fresh = CliRunner().invoke(main, ["train", str(data), str(tmp_path / "new"), *QUICK])
    assert fresh.exit_code == status and "--resume" not in fresh.output
    assert ("stopped before it finished an epoch, so there is nothing to resume; the same "
            "command starts it again") in fresh.output


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(143), SystemExit(1)])
def test_a_stopped_sweep_says_the_same_command_carries_on(data, tmp_path, monkeypatch, stop):
    from dsprep.train import fit

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(fit, "sweep_lr", stopped)
    for force, hint in (([], "the sweep stopped; run the same command again to carry on"),
                        (["--force"], "the sweep stopped; the same command again (with --force) "
                                      "trains every rate anew")):
        result = CliRunner().invoke(main, ["sweep-lr", str(data), str(tmp_path / "s"), *QUICK,
                                           *force])
        assert result.exit_code == (130 if isinstance(stop, KeyboardInterrupt) else stop.code)
        assert (hint in result.output) == (result.exit_code != 1)  # not after a failure


@pytest.mark.parametrize("how", ["same command", "--resume"])
def test_a_run_stopped_in_its_first_epoch_starts_again_when_the_job_runs_again(
        data, tmp_path, monkeypatch, how):
    # A batch system's SIGTERM (or a full disk) before the first epoch ended leaves config.json
    # and no finished epoch: the requeued job must not fail for ever.
    from dsprep.train import callbacks as cb

    run = tmp_path / "run"
    real = cb.RunRecorder.on_epoch_end

    def stopped(*args, **kwargs):
        raise SystemExit(143)

    monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", stopped)
    first = invoke("train", data, run, *QUICK, "--epochs", "2", "--lr", "0.002")
    assert first.exit_code == 143 and (run / "config.json").is_file()
    assert not (run / "state.json").exists()
    monkeypatch.setattr(cb.RunRecorder, "on_epoch_end", real)
    if how == "--resume":
        again = invoke("train", "--resume", run)
        assert "had not finished an epoch, so it started again with its own options" in \
            again.output
    else:
        again = invoke("train", data, run, *QUICK, "--epochs", "2", "--lr", "0.002")
        assert "it started again" in again.output
    assert again.exit_code == 0, again.output
    assert len(history(run)) == 2 and (run / "last.keras").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["lr"] == 0.002 and config["options"]["epochs"] == 2
    assert not (run / ".replaced").exists()
    # A run with checkpoints is never started again on its own, even with state.json lost.
    (run / "state.json").unlink()
    kept = (run / "last.keras").read_bytes()
    refused = invoke("train", data, run, *QUICK, "--epochs", "2", "--lr", "0.002")
    assert refused.exit_code == 1
    assert "holds checkpoints but no state.json, so it cannot be resumed; use --force" in \
        refused.output
    assert (run / "last.keras").read_bytes() == kept


def test_a_checkpoint_that_cannot_be_written_names_it_and_leaves_no_partial(
        data, tmp_path, monkeypatch):
    import errno

    import keras

    def full(self, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(keras.Model, "save", full)
    run = tmp_path / "run"
    result = invoke("train", data, run, *QUICK, "--epochs", "1")
    assert result.exit_code == 1
    assert f"{run / 'best.keras'}: File too large (saving the checkpoint of epoch 1)" in \
        result.output
    assert not list(run.glob(".*partial*")) and not (run / "state.json").exists()


def test_a_full_disk_at_a_checkpoint_says_how_much_room_and_how_to_go_on(
        data, one_epoch_run, tmp_path, monkeypatch):
    import errno

    import keras

    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    size = max((run / "last.keras").stat().st_size, 500_000)

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full)
    result = invoke("train", "--resume", run, "--epochs", "2")
    assert result.exit_code == 1
    assert (f"No space left on device (saving the checkpoint of epoch 2); free some space "
            f"(about {2 * size / 1e6:,.0f} MB more), then continue it: dsprep train --resume "
            f"{run}") in result.output
    fresh = invoke("train", data, tmp_path / "new", *QUICK, "--epochs", "1")
    assert fresh.exit_code == 1
    assert "then run the same command again (the run had no epoch to keep)" in fresh.output


def test_a_resume_takes_the_machines_options_and_keeps_them(one_epoch_run, tmp_path):
    # A job started with --gpus 2 and requeued on a node with fewer GPUs (here: none).
    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["options"]["gpus"] = "2"
    (run / "config.json").write_text(json.dumps(config))
    refused = invoke("train", "--resume", run, "--epochs", "2")
    assert refused.exit_code == 2, refused.output
    # The run's own --gpus, not given to the resume: the fix is adding one, not leaving it out.
    assert "was started with --gpus 2, but 0 GPUs are visible here; add --gpus 1 to the " \
        "resume" in refused.output
    result = invoke("train", "--resume", run, "--epochs", "2", "--gpus", "1", "--workers", "1",
                    "--no-jit")
    assert result.exit_code == 0, result.output
    assert len(history(run)) == 2
    options = json.loads((run / "config.json").read_text())["options"]
    assert (options["gpus"], options["workers"], options["jit"], options["epochs"]) == \
        ("1", 1, False, 2)
    assert {k: v for k, v in options.items() if k not in ("gpus", "workers", "jit", "epochs")} \
        == {k: v for k, v in config["options"].items()
            if k not in ("gpus", "workers", "jit", "epochs")}
    # A run saved with --no-jit can have XLA back at a later resume.
    again = invoke("train", "--resume", run, "--epochs", "3", "--jit")
    assert again.exit_code == 0, again.output
    assert json.loads((run / "config.json").read_text())["options"]["jit"] is True


def test_train_refuses_a_folder_holding_another_tools_files_of_a_runs_names(data, tmp_path):
    # Taken for a run stopped in its first epoch, another tool's config.json was set aside and
    # deleted; a history.csv without a config.json was written over.
    theirs = tmp_path / "proj"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"my": "settings"}')
    (theirs / "notes.txt").write_text("keep")
    keras_log = tmp_path / "logs"
    keras_log.mkdir()
    (keras_log / "history.csv").write_text("epoch,loss\n0,1.0\n")
    # What a run of dsprep killed while it wrote its first config.json left is no other tool's.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".config.partial.json").write_text('{"sch')
    assert invoke("train", data, killed, *QUICK, "--epochs", "1").exit_code == 0
    for folder, names in ((theirs, "config.json"), (keras_log, "history.csv")):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        result = invoke("train", data, folder, *QUICK, "--epochs", "1")
        assert result.exit_code == 1, result.output
        assert f"{folder} holds {names} but no dsprep run" in result.output
        assert "give the run a folder of its own, or use --force to replace it" in result.output
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_run_resumes_after_an_unreadable_training_image_is_repaired(tmp_path):
    # train says to remove or replace a file it left out; replaced, the split is the same.
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=6)
    split = tmp_path / "split"
    assert invoke("split", dump, split, "--ratios", "0.5,0.5").exit_code == 0
    victim = next((split / "train" / "a").iterdir())
    good = victim.read_bytes()
    victim.write_bytes(good[:200])
    run = tmp_path / "run"
    first = invoke("train", split, run, *QUICK, "--image-size", "48", "--epochs", "1")
    assert first.exit_code == 0, first.output
    assert "could not be used and was left out" in first.output
    backup = tmp_path / "run-before-the-repair"
    shutil.copytree(run, backup)
    victim.write_bytes(good)
    resumed = invoke("train", "--resume", run, "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert len(history(run)) == 2
    # Or removed, as the note also says: the same data too.
    victim.unlink()
    shutil.rmtree(run)
    backup.rename(run)
    resumed = invoke("train", "--resume", run, "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert len(history(run)) == 2
    # Another split of the dump is still refused.
    other = tmp_path / "other"
    assert invoke("split", dump, other, "--ratios", "0.5,0.5", "--seed", "7").exit_code == 0
    refused = invoke("train", "--resume", run, other, "--epochs", "3")
    assert refused.exit_code == 2 and "training images" in refused.output


def test_a_class_folder_added_to_a_split_is_a_fault_of_the_data(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=6)
    assert invoke("split", dump, tmp_path / "split", "--ratios", "0.5,0.5").exit_code == 0
    for split, options in (("val", []), ("train", ["--limit-per-class", "2"])):
        stray = tmp_path / "split" / split / "moon"
        stray.mkdir()
        shutil.copy(next((dump / "a").iterdir()), stray / "m.jpg")
        result = invoke("train", tmp_path / "split", tmp_path / "run", *QUICK, "--image-size",
                        "48", *options)
        assert result.exit_code == 1, result.output
        assert (f"{tmp_path / 'split' / split} has class folders that "
                f"{tmp_path / 'split' / 'split.json'} does not name: moon; move them out of "
                "the split, or make the split again with them") in result.output
        shutil.rmtree(stray)


@pytest.mark.slow
def test_smallnet_learns_from_hdf5_at_its_defaults(data, tmp_path):
    # smallnet has no normalisation layer: fed raw mean-subtracted pixels (+-128) it diverged at
    # the default learning rate (losses 11, 334, 4e13); its inputs are scaled to about -1..1.
    run = tmp_path / "run"
    result = invoke("train", data, run, "--model", "smallnet", "--batch-size", "8", "--seed", "1",
                    "--epochs", "10")
    assert result.exit_code == 0, result.output
    losses = [float(r["loss"]) for r in history(run)]
    assert all(np.isfinite(losses)) and max(losses) < 1.5, losses
    # And it learns: the two classes (a bright red or green channel) are told apart, well
    # below guessing's loss of ln 2.
    rows = history(run)
    assert losses[-1] < 0.75 * losses[0], losses
    assert float(rows[-1]["val_accuracy"]) >= 0.875 and float(rows[-1]["val_loss"]) < 0.5, rows[-1]
    assert json.loads((run / "config.json").read_text())["scale"] == pytest.approx(1 / 127.5)


@pytest.mark.slow
def test_train_on_a_split_folder(tmp_path):
    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("cat", "dog"), per_class=8, size=(48, 48))
    make_class_folders(split / "val", classes=("cat", "dog"), per_class=2, size=(48, 48), seed=50)
    (split / "split.json").write_text(json.dumps({"schema": "dsprep-split/1",
                                                  "classes": ["cat", "dog"]}))
    # A file damaged since the split is left out, and said so.
    broken = sorted((split / "train" / "dog").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:200])
    run = tmp_path / "run"
    result = invoke("train", split, run, *QUICK, "--epochs", "1", "--image-size", "48")
    assert result.exit_code == 0, result.output
    assert f"note: 1 image of {split} could not be used and was left out ({broken}: " \
        in result.output and "move, remove or replace it, or split the dump again" \
        in result.output
    # A log (no terminal) gets the epoch's line but no bar from checking the folders.
    assert "accuracy:" in result.output and "checking train" not in result.output
    shown = CliRunner().invoke(main, ["train", str(split), str(tmp_path / "shown"), *QUICK,
                                      "--epochs", "1", "--image-size", "48"],
                               env={"DSPREP_PROGRESS": "1"})
    assert shown.exit_code == 0 and "checking train" in shown.output
    config = json.loads((run / "config.json").read_text())
    assert config["data_kind"] == "folders" and config["classes"] == ["cat", "dog"]
    assert config["resize"] == "crop"  # the directory generator's, as evaluate checks it
    assert config["scale"] == pytest.approx(1 / 127.5)  # the same inputs as from HDF5
    assert config["input_shape"] == [48, 48, 3]
    assert len(history(run)) == 1
    # Its val/ built into HDF5 is the validation data that chose best.keras: said so.
    built = invoke("-q", "build-hdf5", split, tmp_path / "hdf5", "--size", "48")
    assert built.exit_code == 0, built.output
    val = invoke("evaluate", run, tmp_path / "hdf5" / "val.hdf5")
    assert val.exit_code == 0, val.output
    assert "is the validation split" in val.output and "chose its best.keras" in val.output


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["train", "{data}"], 2, "needs DATA and RUN"),
        (["train", "{data}", "{tmp}/r", "--resume", "{tmp}"], 2, "not both"),
        (["train", "{tmp}", "{tmp}/r"], 1, "neither train.hdf5"),
        (["sweep-lr", "{data}", "{tmp}/s", "--lrs", "fast"], 2, "comma-separated"),
        (["sweep-lr", "{data}", "{tmp}/r", "--lrs", "0.1,nan"], 2, "positive, finite"),
        (["sweep-lr", "{data}", "{tmp}/r", "--lrs", "inf"], 2, "positive, finite"),
        (["train", "{data}", "{tmp}/r", "--model", "vgg"], 2, "Invalid value"),
        (["train", "{data}", "{tmp}/r", "--model", "alexnet"], 2, "at least 63x63"),
        (["train", "--resume", "{tmp}"], 1, "not a run folder"),
        (["train", "--resume", "{tmp}", "--lr", "0.1", "--seed", "2", "--epochs", "4"], 2,
         "--lr, --seed would be ignored"),
        (["train", "--resume", "{tmp}", "--force"], 2, "--force would be ignored"),
        (["train", "{data}", "{tmp}/r", "--rotation", "20", "--zoom", "0.2"], 2,
         "--rotation, --zoom only apply with --augment affine"),
        (["train", "{data}", "{tmp}/r", "--zoom", "0.2"], 2,
         "--zoom only applies with --augment affine"),
        # Read by one schedule only: without it they changed nothing, silently.
        (["train", "{data}", "{tmp}/r", "--step-every", "1", "--step-factor", "0.1"], 2,
         "--step-every, --step-factor only apply with --schedule step"),
        (["train", "{data}", "{tmp}/r", "--schedule", "step", "--plateau-patience", "2"], 2,
         "--plateau-patience only applies with --schedule plateau"),
        (["train", "{data}", "{tmp}/r", "--step-every", "2", "--plateau-patience", "2"], 2,
         "--step-every only applies with --schedule step"),
        (["train", "--resume", "{tmp}", "--precision", "float32"], 2,
         "--precision would be ignored"),
        (["evaluate", "{tmp}", "{data}/test.hdf5"], 1, "not a run folder"),
        (["train", "{data}", "{tmp}/r", "--crop", "100"], 2,
         "--crop 100 is larger than the 48x48 images of"),
        (["train", "{data}", "{tmp}/r", "--gpus", "64"], 2, "--gpus 64 asks for more GPUs"),
        (["train", "{data}", "{tmp}/r", "--lr", "inf"], 2, "--lr must be a positive number"),
        (["train", "{data}", "{tmp}/r", "--momentum", "1"], 2,
         "--momentum must be in [0, 1) for sgd, got 1.0"),
        # Adam has no momentum: it was taken, recorded in config.json, and never used.
        (["train", "{data}", "{tmp}/r", "--optimizer", "adam", "--momentum", "0.5"], 2,
         "--momentum only applies with --optimizer sgd or rmsprop"),
        (["sweep-lr", "{data}", "{tmp}/s", "--lrs", "0.1,0.01", "--optimizer", "adam",
          "--momentum", "0.5"], 2, "--momentum only applies with --optimizer sgd or rmsprop"),
        (["train", "{data}", "{tmp}/r", "--weight-decay", "inf"], 2,
         "--weight-decay must be a finite number"),
        (["train", "{data}", "{tmp}/r", "--seed", str(2**32)], 2,
         "4294967296 is not in the range 0<=x<=4294967295"),
    ],
)
def test_bad_input_gives_one_line_errors(data, tmp_path, args, code, text):
    args = [a.format(data=data, tmp=tmp_path) for a in args]
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert text in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists(), "a failed start left a run folder behind"


def test_alexnet_without_crop_on_large_images_gets_its_usual_recipe(data, tmp_path,
                                                                     monkeypatch):
    from dsprep.train import fit

    refused = invoke("train", data, tmp_path / "r", "--model", "alexnet")
    assert refused.exit_code == 2 and "at least 63x63" in refused.output  # 48x48 images
    assert "usual recipe" not in refused.output  # no advice for a run that never trained

    def trained(data, run, config, **kwargs):  # as a run on 256x256 images ends
        Path(run).mkdir()
        (Path(run) / "config.json").write_text(json.dumps({"input_shape": [256, 256, 3],
                                                           "options": {}}))
        return fit.TrainResult(Path(run), 1, "val_auc", 0.5, [{"loss": 0.7}], epochs_planned=1,
                               epochs_run=1)

    monkeypatch.setattr(fit, "train", trained)
    result = invoke("train", data, tmp_path / "big", "--model", "alexnet")
    assert result.exit_code == 0, result.output
    assert ("--model alexnet without --crop trained on whole 256x256 images; its usual recipe "
            "is --crop 227") in result.output
    cropped = invoke("train", data, tmp_path / "crop", "--model", "alexnet", "--crop", "227")
    assert cropped.exit_code == 0 and "usual recipe" not in cropped.output


def _lost(stop):
    """What a signal handler does when its raise lands in a weakref callback: the stop is
    recorded, and Python prints "Exception ignored" and goes on."""
    import gc
    import weakref

    from dsprep import system

    class Thing:
        pass

    def callback(ref):
        system.ask_stop(stop)
        raise stop

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    gc.collect()
    return ref


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost raise
def test_a_stop_whose_raise_was_lost_still_stops_the_run(data, tmp_path, monkeypatch):
    # A SIGTERM landing in a weakref callback was lost: training went on to the end (exit 0),
    # and the scheduler's second SIGTERM killed it with nothing cleaned up.
    from dsprep.train import callbacks as cb

    write = cb.write_history
    calls = []

    def write_and_lose_a_stop(path, rows):
        write(path, rows)
        calls.append(len(rows))
        if len(calls) == 1:
            _lost(SystemExit(143))

    monkeypatch.setattr(cb, "write_history", write_and_lose_a_stop)
    run = tmp_path / "run"
    result = invoke("train", data, run, *QUICK, "--epochs", "3")
    assert result.exit_code == 143, result.output
    assert calls == [1] and len(history(run)) == 1  # stopped in the second epoch
    # A signal inside a library comes out as its error (matplotlib: "Invalid bounding box"):
    # the stop is the answer, not exit 1 with a traceback, and the resume hint is still said
    # (here in the second epoch, after one was kept).
    from dsprep import system

    written = []

    def broken_write(path, rows):
        written.append(1)
        if len(written) == 2:
            system.ask_stop(KeyboardInterrupt())
            raise ValueError("Invalid bounding box")
        return write(path, rows)

    monkeypatch.setattr(cb, "write_history", broken_write)
    other = tmp_path / "other"
    result = invoke("train", data, other, *QUICK, "--epochs", "3")
    assert result.exit_code == 130 and "Invalid bounding box" not in result.output
    assert (f"the run stopped; continue it with: dsprep train --resume {other} (or the same "
            "command again)") in result.output
    # The stop was the command's: library calls after it, and the next command, go on.
    assert system.stop_asked() is None
    system.raise_if_stopped()
    monkeypatch.undo()
    assert invoke("train", data, tmp_path / "third", *QUICK, "--epochs", "1").exit_code == 0


def test_the_same_train_command_again_carries_the_run_on(data, one_epoch_run, tmp_path):
    # A requeued job repeats its command: it was refused ("already holds a run; use
    # --resume"), and --resume of a RUN not yet made is a usage error, so job scripts had to
    # look for config.json themselves.
    run = shutil.copytree(one_epoch_run, tmp_path / "run")
    finished = invoke("train", data, run, *QUICK, "--epochs", "1")
    assert finished.exit_code == 0, finished.output
    assert "has trained all its 1 epoch already: nothing to do" in finished.output
    # Planned for two epochs and stopped after the first (as a killed job leaves it); the
    # new machine's options may differ.
    config = json.loads((run / "config.json").read_text())
    config["options"]["epochs"] = 2
    (run / "config.json").write_text(json.dumps(config))
    again = invoke("train", data, run, *QUICK, "--epochs", "2", "--workers", "1")
    assert again.exit_code == 0, again.output
    assert f"note: {run} holds a run of these options on {data}; it carries on from its " \
        f"epoch 1, as --resume {run} would" in again.output
    assert f"resumed {run}: 2 epochs" in again.output
    assert [row["epoch"] for row in history(run)] == ["0", "1"]
    # Other options are still another run: refused, as before.
    other = invoke("train", data, run, *QUICK, "--epochs", "3", "--lr", "0.5")
    assert other.exit_code == 1 and "already holds a run" in other.output
    # ... naming what differs, as split and build-hdf5 do.
    assert "already holds a run of other data or options (epochs 2, now 3; lr " \
        in other.output and ", now 0.5)" in other.output
    # So is a run that diverged (the same options would likely meet it again), saying so.
    rows = (run / "history.csv").read_text().splitlines()
    cells = rows[-1].split(",")
    rows.append(",".join(["2"] + ["nan"] * (len(cells) - 1)))
    (run / "history.csv").write_text("\n".join(rows) + "\n")
    config = json.loads((run / "config.json").read_text())
    config["options"]["epochs"] = 4
    (run / "config.json").write_text(json.dumps(config))
    diverged = invoke("train", data, run, *QUICK, "--epochs", "4")
    assert diverged.exit_code == 1 and "holds this run, which diverged in epoch 3" \
        in diverged.output


def test_clicks_own_ways_out_are_no_stop_even_with_one_pending():
    # dsprep demo runs each step as a command: a step stopped by Ctrl-C leaves its stop
    # recorded and exits with click's Exit(130), which the demo passed on. Taken for the stop,
    # it printed "Aborted!" a second time.
    import click

    from dsprep import system
    from dsprep.cli._common import stop_of

    with system.command_scope():
        system.ask_stop(KeyboardInterrupt())
        for way_out in (click.exceptions.Exit(130), click.ClickException("x"), click.Abort()):
            assert stop_of(way_out) is None
        assert isinstance(stop_of(ValueError("Invalid bounding box")), KeyboardInterrupt)
    assert stop_of(ValueError("x")) is None  # outside a command nothing is pending
