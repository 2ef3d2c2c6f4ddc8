"""``dsprep sample-dump`` and ``dsprep split`` from the command line."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import zipfile

import pytest
from click.testing import CliRunner
from helpers import make_class_folders, make_images_beside_masks, smooth_image, write_image

from dsprep.cli import main


def run(*args: str):
    """Invoke quietly (no progress bars); errors still print."""
    return CliRunner().invoke(main, ["-q", *args])


def loud(*args: str):
    return CliRunner().invoke(main, list(args))


def test_sample_dump_then_split(tmp_path):
    dump, dest = tmp_path / "dump", tmp_path / "split"
    result = loud("sample-dump", str(dump), "--per-class", "5", "--with-bad-files", "--seed", "2")
    assert result.exit_code == 0, result.output
    assert "wrote 15 images" in result.output and "truncated" in result.output
    result = loud("split", str(dump), str(dest), "--verify", "full", "--ratios", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines
             if line.split() and line.split()[0] in ("brick", "grass", "gravel", "total")}
    # grass has the grey JPEG and gravel the duplicate (left out); brick the alpha PNG.
    assert table["brick"] == ["4", "1", "1", "6"]
    assert table["grass"] == ["4", "1", "1", "6"]
    assert table["gravel"] == ["3", "1", "1", "5"]
    assert table["total"] == ["11", "3", "3", "17"]
    assert "left out 4: 1 duplicate, 1 empty, 2 not-an-image" in result.output
    assert json.loads((dest / "split.json").read_text())["counts"]["train"]["gravel"] == 3

    again = loud("split", str(dump), str(dest), "--verify", "full", "--ratios", "0.6,0.2,0.2")
    assert again.exit_code == 0 and "already holds this split" in again.output


def test_force_over_a_dest_it_cannot_wholly_remove_succeeds_with_a_warning(tmp_path,
                                                                         monkeypatch):
    import dsprep.split as split_module

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=10)
    dest = tmp_path / "split"
    (dest / "keep").mkdir(parents=True)
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if os.path.basename(path) == ".split.split-old":
            raise PermissionError(13, "Permission denied", "f")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(split_module.shutil, "rmtree", rmtree)
    result = run("split", str(dump), str(dest), "--force")
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"warning: what {dest} held before the split could not all be "
                             f"removed ({dest.parent / '.split.split-old'}: Permission denied); "
                             f"it is left in {dest.parent / '.split.split-old'}: remove it "
                             "yourself\n")
    assert (dest / "split.json").is_file()


def test_an_already_split_dump_is_pooled_with_a_note(tmp_path):
    make_class_folders(tmp_path / "dump" / "train", classes=("a", "b"), per_class=4)
    make_class_folders(tmp_path / "dump" / "test", classes=("a", "b"), per_class=2, seed=20)
    result = loud("split", str(tmp_path / "dump"), str(tmp_path / "split"), "--dry-run",
                  "--ratios", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    assert "already split (test/, train/)" in result.output
    assert f"dsprep build-hdf5 {tmp_path / 'dump'} OUT" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("a "))
    assert row.split()[-1] == "6"  # class a of both folders


def test_a_dump_whose_test_folder_is_unlabelled_is_not_said_to_be_pooled(tmp_path):
    # Plant Seedlings: train/<class>/ beside test/ of images without classes. Nothing is
    # pooled, and building the folders as they are would give no val or test file.
    dump = make_class_folders(tmp_path / "dump" / "train", classes=("a", "b"), per_class=4)
    for i in range(3):
        write_image(tmp_path / "dump" / "test" / f"{i}.png", smooth_image(40, 40, seed=60 + i))
    result = loud("split", str(dump.parent), str(tmp_path / "split"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("note: of the dump's split folders, train/ alone holds class folders; its images "
            "are split here") in result.output
    assert "pooled" not in result.output and "build-hdf5" not in result.output


def test_split_folders_whose_images_are_all_left_out_are_still_said_to_be_pooled(tmp_path):
    # val/ holds copies of train/'s images: left out as duplicates, but a split folder with
    # class folders all the same.
    dump = tmp_path / "dump"
    make_class_folders(dump / "train", classes=("a", "b"), per_class=4)
    for name in ("a", "b"):
        (dump / "val" / name).mkdir(parents=True)
        shutil.copy(dump / "train" / name / f"{name}_0.jpg", dump / "val" / name / "copy.jpg")
    result = loud("split", str(dump), str(tmp_path / "split"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "already split (train/, val/)" in result.output
    assert "2 duplicate" in result.output


def test_a_class_too_small_for_every_split_gets_a_note(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a",), per_class=10)
    make_class_folders(dump, classes=("tiny",), per_class=2, seed=50)
    result = loud("split", str(dump), str(tmp_path / "split"), "--dry-run",
                  "--ratios", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    assert "note: no test images of tiny" in result.output
    assert "of a " not in result.output  # class a has some in every split


def test_a_split_empty_in_every_class_gets_a_note_even_with_q(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=5)
    dest = str(tmp_path / "split")
    result = run("split", str(dump), dest, "--dry-run")  # 0.8,0.1,0.1 of 5: 4, 1, 0
    assert result.exit_code == 0, result.output
    # With -q a dry run still shows its plan: it is the command's answer.
    assert "total      8    2     0   10" in result.stdout
    assert "note: no test images in any class: too few images per class (at most 5) for " \
        "--ratios 0.8,0.1,0.1 (the default)" in result.stderr
    assert "no val" not in result.output and "no train" not in result.output
    result = run("split", str(dump), dest, "--dry-run", "--ratios", "0,1,0")
    assert result.exit_code == 0, result.output
    assert "note: no train images in any class: --ratios 0,1,0 gives it none" in result.stderr
    assert "note: no test images in any class" in result.stderr
    result = run("split", str(dump), dest, "--counts", "0,0,0")
    assert result.exit_code == 2 and "counts 0,0,0 place no image" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump"]


def test_a_file_no_longer_chosen_is_not_called_gone(tmp_path):
    # With fixed counts, a new image takes the place of one still in the dump.
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=10)
    dest = tmp_path / "split"
    assert run("split", str(dump), str(dest), "--counts", "4,2,2").exit_code == 0
    chosen = (dest / "files.csv").read_text()
    for i in range(3):
        write_image(dump / "a" / f"new{i}.jpg", smooth_image(40, 40, seed=90 + i))
    result = run("split", str(dump), str(dest), "--counts", "4,2,2")
    assert result.exit_code == 1, result.output
    # As many of the dump's images drop out of the split as new ones come in; none is gone.
    found = re.search(r"(\d+) new, 0 gone, (\d+) no longer chosen, ", result.output)
    assert found and found[1] == found[2] and int(found[1]) > 0, result.output
    assert (dest / "files.csv").read_text() == chosen


def test_a_source_changed_since_the_split_needs_force(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=10)
    dest = tmp_path / "split"
    assert run("split", str(dump), str(dest)).exit_code == 0
    files_csv = (dest / "files.csv").read_text()
    again = loud("split", str(dump), str(dest))
    assert again.exit_code == 0 and "already holds this split" in again.output
    write_image(dump / "a" / "new.jpg", smooth_image(40, 40, seed=99))
    for extra in (["--dry-run"], []):
        result = run("split", str(dump), str(dest), *extra)
        assert result.exit_code == 1, result.output
        assert (f"{dump} changed since {dest} was split (or this version of dsprep reads it "
                "otherwise): 1 new, 0 gone") in result.output
        assert "use --force to split again" in result.output
        assert (dest / "files.csv").read_text() == files_csv
    result = run("split", str(dump), str(dest), "--force")
    assert result.exit_code == 0, result.output
    assert "a/new.jpg" in (dest / "files.csv").read_text()


def test_a_single_class_is_warned_about(tmp_path):
    for i in range(4):
        write_image(tmp_path / "dump" / f"cat.{i}.jpg", smooth_image(40, 40, seed=i))
    result = loud("-q", "split", str(tmp_path / "dump"), str(tmp_path / "split"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "warning: one class only (cat)" in result.output  # even with -q
    # A Kaggle dump of images/ beside its tables: the tables are named, as the way out.
    kaggle = tmp_path / "kaggle"
    for i in range(4):
        write_image(kaggle / "images" / f"{i}.jpg", smooth_image(40, 40, seed=i))
    (kaggle / "train.csv").write_text("id,species\n0,a\n1,b\n2,a\n3,b\n")
    (kaggle / "sample_submission.csv").write_text("id,a,b\n")
    result = loud("-q", "split", str(kaggle), str(tmp_path / "k"), "--dry-run",
                  "--layout", "folders")
    assert result.exit_code == 0, result.output
    # (Not the submission template: it names the test images, with no labels.)
    assert ("warning: one class only (images): a classifier needs two or more; if "
            "train.csv labels the images, give it with --labels") in result.output
    # dogs-vs-cats' test1/ beside sampleSubmission.csv alone: nothing to offer.
    (kaggle / "train.csv").unlink()
    result = loud("-q", "split", str(kaggle), str(tmp_path / "k"), "--dry-run",
                  "--layout", "folders")
    assert "submission" not in result.output
    assert "check --layout (and --labels / --pattern)" in result.output


def test_split_folders_of_unlabelled_images_are_refused_or_warned_about(tmp_path):
    # An export already split (train/, valid/, test/ of flat images): with a labels CSV in
    # each, the folders are no classes; with none, they may be, with a warning.
    for n, folder in enumerate(("train", "valid", "test")):
        for i in range(3):
            write_image(tmp_path / "rf" / folder / f"{folder}{i}.jpg",
                        smooth_image(40, 40, seed=10 * n + i))
    result = loud("-q", "split", str(tmp_path / "rf"), str(tmp_path / "s0"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("warning: every class is named as a split (test, train, valid): if "
            f"{tmp_path / 'rf'} is split into folders of unlabelled images, these are no "
            "classes") in result.output
    for folder in ("train", "valid", "test"):
        (tmp_path / "rf" / folder / "_classes.csv").write_text(
            "filename, cat, dog\n" + "".join(f"{folder}{i}.jpg,1,0\n" for i in range(3)))
    result = loud("-q", "split", str(tmp_path / "rf"), str(tmp_path / "s1"), "--dry-run")
    assert result.exit_code == 1
    assert ("test/, train/, valid/ are named as splits, not classes, and the labels are likely "
            "in test/_classes.csv or train/_classes.csv or valid/_classes.csv") in result.output


def test_number_classes_ordered_as_text_and_classes_alike_but_for_case_are_warned_about(
        tmp_path):
    def dry_split(name, labels=(), prefix=False):
        """A dry split of tmp_path/name, with two images of each label written first."""
        for i, label in enumerate(list(labels) * 2):
            rel = f"{label}.{i}.jpg" if prefix else f"{label}/{i}.jpg"
            write_image(tmp_path / name / rel, smooth_image(40, 40, seed=i))
        result = loud("-q", "split", str(tmp_path / name), str(tmp_path / f"{name}-split"),
                      "--dry-run", "--ratios", "0.5,0.5")
        assert result.exit_code == 0, result.output
        return result.output

    output = dry_split("num", ["0", "1", "2", "10"])
    assert ("warning: the classes are numbers, numbered as sorted text (0, 1, 10, 2): label "
            "id 2 is class '10'") in output
    output = dry_split("case", ["Cat", "cat", "dog"], prefix=True)
    assert "warning: classes that differ only in case (Cat and cat) stay apart" in output
    assert "numbers" not in output
    # Numbers that sort the same as text and as numbers need no warning.
    shutil.rmtree(tmp_path / "num" / "10")
    output = dry_split("num")
    assert "0 " in output and "warning" not in output
    # Folders whose names differ only in spaces, a no-break space or a zero-width space look
    # alike in every table.
    output = dry_split("look", ["cat", "cat ", "dog x", "dog\u00a0x", "emu", "e\u200bmu"])
    assert ("warning: classes that differ only in spaces or invisible characters ('cat' and "
            "'cat '; 'dog x' and 'dog\\xa0x'; 'emu' and 'e\\u200bmu') stay apart") in output


def test_labels_that_cannot_be_folder_names_are_warned_about_with_their_counts(tmp_path):
    dump = tmp_path / "fruit"
    labels = ["Apple/Braeburn", "pear", "N/A", "pear", "Apple/Braeburn", "plum", "plum", ""]
    for i in range(len(labels)):
        write_image(dump / "images" / f"{i}.jpg", smooth_image(40, 40, seed=i))
    (dump / "labels.csv").write_text(
        "id,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels)))
    result = loud("-q", "split", str(dump), str(tmp_path / "s"), "--dry-run",
                  "--ratios", "0.5,0.5")
    assert result.exit_code == 0, result.output
    assert ("warning: 4 images are left out for labels that cannot be folder names: "
            "'Apple/Braeburn' (2), 'N/A' (1), empty label (1); give them labels that can be, "
            "in the dump or its CSV (a '/' to '_', say), to keep them") in result.output


def test_a_label_too_long_for_a_folder_name_is_left_out_not_a_failed_split(tmp_path):
    dump = tmp_path / "d"
    labels = ["cat", "dog", "cat", "dog", "é" * 128]  # 256 bytes in UTF-8
    for i in range(len(labels)):
        write_image(dump / "images" / f"{i}.jpg", smooth_image(40, 40, seed=i))
    (dump / "labels.csv").write_text(
        "id,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels)),
        encoding="utf-8")
    result = loud("split", str(dump), str(tmp_path / "s"), "--ratios", "0.5,0.5")
    assert result.exit_code == 0, result.output
    assert ("1 image is left out for labels that cannot be folder names: "
            f"{'é' * 40!r}... (128 characters)") in result.output
    with open(tmp_path / "s" / "skipped.csv", newline="", encoding="utf-8") as fh:
        skipped = list(csv.DictReader(fh))
    assert [(r["source"], r["reason"]) for r in skipped] == [("images/4.jpg", "bad-label")]
    assert "256 bytes long, more than a folder name may be (255)" in skipped[0]["detail"]
    assert sorted(p.name for p in (tmp_path / "s" / "train").iterdir()) == ["cat", "dog"]


def test_prefixes_that_cut_across_class_folders_are_warned_about(tmp_path):
    # Augmented copies beside their originals: cat/orig.0.jpg, cat/flip.0.jpg, dog/orig.3.jpg.
    dump = tmp_path / "aug"
    n = 0
    for c in ("cat", "dog"):
        for i in range(3):
            for kind in ("orig", "flip"):
                write_image(dump / c / f"{kind}.{i}.jpg", smooth_image(40, 40, seed=n))
                n += 1
    result = loud("-q", "split", str(dump), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("warning: the images lie in folders (cat/, dog/) but their labels were taken from "
            "the prefixes of their file names; if the folders are the classes, give --layout "
            "folders") in result.output
    # Not where the folders group the prefixes (a dump in parts), nor for one folder.
    for name, folders in (("parts", {"a": ("cat", "dog"), "b": ("fox", "owl")}),
                          ("one", {"train": ("cat", "dog")})):
        for folder, labels in folders.items():
            for label in labels:
                for i in range(3):
                    write_image(tmp_path / name / folder / f"{label}.{i}.jpg",
                                smooth_image(40, 40, seed=n))
                    n += 1
        result = loud("-q", "split", str(tmp_path / name), str(tmp_path / f"s{name}"),
                      "--dry-run")
        assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_a_csv_taken_by_its_second_column_over_class_folders_is_warned_about(tmp_path):
    dump = tmp_path / "d"
    rows = ["file,width"]
    for k, c in enumerate(("cat", "dog", "fox")):
        for i in range(3):
            write_image(dump / c / f"{c}_{i}.jpg", smooth_image(40, 40, seed=10 * k + i))
            rows.append(f"{c}_{i}.jpg,{640 + 160 * (i % 2)}")
    (dump / "photos.csv").write_text("\n".join(rows) + "\n")
    result = loud("-q", "split", str(dump), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("warning: the images lie in folders (cat/, dog/, fox/) but their labels were taken "
            "from photos.csv (ids in 'file', labels in 'width'); if the folders are the "
            "classes, give --layout folders") in result.output
    # Nor for folders that are chunks of one dump (NIH's images_001/, images_002/).
    chunks = tmp_path / "chunks"
    for k in range(2):
        shutil.copytree(dump / ("cat", "dog")[k], chunks / f"images_00{k + 1}")
    (chunks / "photos.csv").write_text("\n".join(rows) + "\n")
    result = loud("-q", "split", str(chunks), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    # A column named as labels is no guess: no warning.
    (dump / "photos.csv").write_text("\n".join(rows).replace("width", "label") + "\n")
    result = loud("-q", "split", str(dump), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0 and "warning" not in result.output


def test_dry_run_writes_nothing(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=10)
    dest = tmp_path / "split"
    result = loud("split", str(dump), str(dest), "--dry-run", "--counts", "5,2,1")
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("a "))
    assert row.split() == ["a", "5", "2", "1", "8"]
    assert "left out 4: 4 not-selected" in result.output
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dump"]


def test_a_dry_run_refuses_what_the_run_would(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=3)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    for args, code, message in (
            ([str(taken)], 1, "--force"),
            ([str(dump / "a" / "out")], 2, "overlap"),
            ([str(tmp_path / "s"), "--mode", "hardlink"], None, None)):
        result = loud("split", str(dump), *args, "--dry-run")
        if code is None:
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == code and message in result.output, result.output
        assert "dry run" not in result.output
    assert (taken / "mine.txt").read_text() == "keep" and not (tmp_path / "s").exists()
    archive = shutil.make_archive(str(tmp_path / "dump"), "zip", dump)
    linked = loud("split", archive, str(tmp_path / "s"), "--mode", "hardlink", "--dry-run")
    assert linked.exit_code == 2 and "needs a source folder" in linked.output


def test_a_class_whose_every_image_is_left_out_is_warned_about(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "c"), per_class=3)
    write_image(dump / "b" / "tiny.jpg", smooth_image(20, 20, seed=80))
    result = loud("-q", "split", str(dump), str(tmp_path / "split"), "--dry-run",
                  "--min-size", "40")
    assert result.exit_code == 0, result.output
    assert "warning: every image of b was left out, so it is not among the classes" \
        in result.output


@pytest.mark.parametrize("args, message", [
    (["--ratios", "0.8,0.1"], "add up to 0.9"),
    (["--ratios", "a,b"], "not a comma-separated list"),
    (["--ratios", "0.8,,0.2"], "not a comma-separated list"),
    (["--layout", "folders", "--labels", "labels.csv"], "--labels is for the csv layout"),
    (["--layout", "csv", "--pattern", "(?P<label>.+)_"], "--pattern is for the prefix layout"),
    (["--counts", "1.5,2"], "not a comma-separated list"),
    (["--pattern", "(?P<x>.)"], "named group 'label'"),
    (["--layout", "weird"], "Invalid value for '--layout'"),
    (["--ratios", "0.5,nan"], "finite"),
    (["--ratios", "inf,0.5"], "finite"),
    (["--ratios", "1.5,-0.5"], ">= 0"),
    (["--seed", "-1"], "Invalid value for '--seed'"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=2)
    result = run("split", str(dump), str(tmp_path / "s"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "s").exists()


def test_too_small_class_fails_before_writing(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=3)
    result = run("split", str(dump), str(tmp_path / "s"), "--counts", "2,1,1")
    assert result.exit_code == 1
    assert "Error: class 'a' has 3 usable images but --counts 2,1,1 needs 4" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump"]


def test_non_empty_destination_needs_force(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=3)
    dest = tmp_path / "s"
    assert run("split", str(dump), str(dest)).exit_code == 0
    result = run("split", str(dump), str(dest), "--seed", "9")
    assert result.exit_code == 1
    assert "other parameters" in result.output and "--force" in result.output
    assert json.loads((dest / "split.json").read_text())["params"]["seed"] != 9
    result = run("split", str(dump), str(dest), "--seed", "9", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((dest / "split.json").read_text())["params"]["seed"] == 9


def test_csv_layout_with_named_columns_from_a_zip(tmp_path):
    dump = tmp_path / "kaggle.zip"
    summary_dir = tmp_path / "dump"
    written = run("sample-dump", str(summary_dir), "--layout", "csv", "--per-class", "4")
    assert written.exit_code == 0
    with open(summary_dir / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    text = "species,image\r\n" + "".join(f"{lab},{i}\r\n" for i, lab in rows[1:])
    with zipfile.ZipFile(dump, "w") as zf:
        for path in sorted((summary_dir / "images").iterdir()):
            zf.write(path, f"data/images/{path.name}")
    labels = tmp_path / "species.csv"
    labels.write_text(text, newline="")
    dest = tmp_path / "s"
    result = run("split", str(dump), str(dest), "--labels", str(labels), "--id-column",
                 "image", "--label-column", "species")
    assert result.exit_code == 0, result.output
    manifest = json.loads((dest / "split.json").read_text())
    assert manifest["layout"] == "csv" and manifest["classes"] == ["brick", "grass", "gravel"]
    label_of = dict(rows[1:])
    with open(dest / "files.csv", newline="") as fh:
        placed = list(csv.DictReader(fh))
    assert len(placed) == 12
    for row in placed:
        assert row["source"].startswith("data/images/")
        number = row["source"].rsplit("/", 1)[1].split(".")[0]
        assert label_of[number] == row["class"]


def test_pattern_and_hardlink_mode(tmp_path):
    dump = tmp_path / "dump"
    assert run("sample-dump", str(dump), "--layout", "prefix", "--per-class", "3").exit_code == 0
    for path in (dump / "train").iterdir():  # brick.0.jpg -> brick_0.jpg
        path.rename(path.with_name(path.name.replace(".", "_", 1)))
    dest = tmp_path / "s"
    result = loud("split", str(dump), str(dest), "--pattern", r"(?P<label>[a-z]+)_\d+",
                  "--mode", "hardlink")
    assert result.exit_code == 0, result.output
    assert "prefix layout, 3 classes" in result.output and "(hardlink)" in result.output
    placed = list(dest.glob("*/*/*.jpg"))
    assert len(placed) == 9 and all(p.stat().st_nlink == 2 for p in placed)


def test_missing_source_is_a_usage_error(tmp_path):
    result = run("split", str(tmp_path / "nope"), str(tmp_path / "s"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_sample_dump_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = run("sample-dump", str(tmp_path / "full"))
    assert result.exit_code == 1 and "not empty" in result.output
    result = run("sample-dump", str(tmp_path / "new"), "--classes", "brick,dragon")
    assert result.exit_code == 2 and "dragon" in result.output
    # Repeated or empty names used to be dropped without a word (brick,brick: one class).
    result = run("sample-dump", str(tmp_path / "new"), "--classes", "brick,brick")
    assert result.exit_code == 2 and "names brick more than once" in result.output
    for empty in (",", "brick,,grass"):
        result = run("sample-dump", str(tmp_path / "new"), "--classes", empty)
        assert result.exit_code == 2 and "has an empty name" in result.output
    assert not (tmp_path / "new").exists()


def test_help_describes_every_option():
    for command, options in (
        ("split", ["--layout", "--pattern", "--labels", "--id-column", "--label-column",
                   "--ratios", "--counts", "--limit-per-class", "--min-size", "--verify",
                   "--seed", "--mode", "--force", "--dry-run"]),
        ("sample-dump", ["--layout", "--per-class", "--seed", "--classes", "--with-bad-files",
                         "--force"]),
    ):
        result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0
        params = {f"--{p.name.replace('_', '-')}": p for p in main.commands[command].params}
        for option in options:
            assert option in result.output
            help_text = getattr(params[option], "help", None) or ""
            assert len(help_text.split()) >= 3, f"{command} {option} has no help text"


def test_split_copies_in_one_pass_with_the_same_result(tmp_path, monkeypatch):
    import dsprep.split as split_module

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=5)
    two = tmp_path / "two"
    split_module.materialize(split_module.plan(dump), two)

    def no_copy(src, dst):
        raise AssertionError(f"{src} was read a second time to copy it")

    monkeypatch.setattr(split_module, "copy_file", no_copy)
    result = loud("split", str(dump), str(tmp_path / "one"))
    assert result.exit_code == 0, result.output
    assert "placed 10 files" in result.output

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "one") == files(two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "one", "two"]


def test_a_kaggle_labels_csv_beside_train_and_test_folders_gives_the_breeds(tmp_path):
    dump = tmp_path / "dump"
    rows = ["id,breed"]
    for i in range(9):
        write_image(dump / "train" / f"{i:04x}beef.jpg", smooth_image(40, 40, seed=i))
        rows.append(f"{i:04x}beef,{('pug', 'beagle', 'boxer')[i % 3]}")
    for i in range(10):  # unlabelled, and more than the labelled ones
        write_image(dump / "test" / f"{i:04x}cafe.jpg", smooth_image(40, 40, seed=50 + i))
    (dump / "labels.csv").write_text("\n".join(rows) + "\n")
    result = loud("split", str(dump), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "csv layout (labels.csv: ids in 'id', labels in 'breed'), 3 classes" in result.output
    assert "left out 10: 10 unlabelled" in result.output


def test_a_damaged_zip_member_is_left_out_as_unreadable(tmp_path):
    folder = make_class_folders(tmp_path / "src", classes=("a", "b"), per_class=3)
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, path.relative_to(folder).as_posix())
        info = zf.getinfo("a/a_1.jpg")
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename)  # zipfile writes no local extra
    data[start:start + info.compress_size] = b"\xff" * info.compress_size  # zlib.error
    archive.write_bytes(bytes(data))
    result = run("split", str(archive), str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    with open(tmp_path / "s" / "skipped.csv", newline="") as fh:
        assert [(r["source"], r["reason"]) for r in csv.DictReader(fh)] == [
            ("a/a_1.jpg", "unreadable")]


def test_a_dangling_link_whose_name_is_not_utf8_is_listed_in_skipped_csv(tmp_path):
    import os

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=3)
    os.symlink(b"/missing/x.jpg", os.fsencode(dump / "a") + b"/bad\xff.jpg")
    result = run("split", str(dump), str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "s" / "skipped.csv").read_text(encoding="utf-8").splitlines()
    assert rows[1:] == ["a/bad\\udcff.jpg,dangling-link,points to missing /missing/x.jpg"]


@pytest.mark.parametrize("content, what", [
    (b"PK\x03\x04" + bytes(100), "a zip archive (an .xlsx or .ods workbook?)"),
    (b"\xd0\xcf\x11\xe0" + bytes(100), "an Office document (an .xls workbook?)"),
    (b"\x89HDF\r\n\x1a\n" + bytes(200000) + b"\x01\x02" + bytes(100), "it holds NUL bytes"),
])
def test_labels_that_are_no_text_are_refused_as_such(tmp_path, content, what):
    # A workbook given as --labels read as Latin-1 gave an error quoting 600 characters of
    # garbled bytes, or a traceback from the csv module (a field over its limit).
    dump = tmp_path / "dump"
    for i in range(4):
        write_image(dump / "images" / f"{i}.jpg", smooth_image(40, 40, seed=i))
    (tmp_path / "labels.xlsx").write_bytes(content)
    result = run("split", str(dump), str(tmp_path / "s"), "--labels",
                 str(tmp_path / "labels.xlsx"), "--dry-run")
    assert result.exit_code == 1, result.output
    assert f"labels file {tmp_path / 'labels.xlsx'} is not a text CSV" in result.output
    assert what in result.output and "Traceback" not in result.output
    # A CSV padded with NUL bytes after its text (a copy cut short) is still text, in
    # Windows-1252 as in UTF-8.
    for encoding in ("utf-8", "cp1252"):
        (tmp_path / "padded.csv").write_bytes(
            "id,label\n0,brické\n1,grass\n2,brické\n3,grass\n".encode(encoding)
            + bytes(512))
        result = run("split", str(dump), str(tmp_path / "s"), "--labels",
                     str(tmp_path / "padded.csv"), "--dry-run")
        assert result.exit_code == 0 and "brické" in result.output, result.output
    # A stray .csv of that kind beside class folders is no labels, and no error.
    make_class_folders(tmp_path / "f", classes=("a", "b"), per_class=2)
    (tmp_path / "f" / "data.csv").write_bytes(content)
    result = run("split", str(tmp_path / "f"), str(tmp_path / "s2"), "--dry-run")
    assert result.exit_code == 0, result.output


def test_a_labels_name_of_two_different_files_is_refused(tmp_path, monkeypatch):
    # A corrected labels.csv in the current folder and the dump's own: --labels labels.csv
    # took the dump's without a word.
    dump = tmp_path / "dump"
    for i in range(4):
        write_image(dump / "images" / f"{i}.jpg", smooth_image(40, 40, seed=i))
    (dump / "labels.csv").write_text("id,label\n0,p\n1,q\n2,p\n3,q\n")
    (tmp_path / "labels.csv").write_text("id,label\n0,x\n1,y\n2,x\n3,y\n")
    monkeypatch.chdir(tmp_path)
    result = run("split", "dump", "s", "--labels", "labels.csv", "--dry-run")
    assert result.exit_code == 2, result.output
    assert "--labels labels.csv names two different files: labels.csv inside dump" \
        in result.output
    assert "\nx " in run("split", "dump", "s", "--labels", "./labels.csv", "--dry-run").output
    # A zip's own labels.csv has no other path: the way is another current folder.
    with zipfile.ZipFile(tmp_path / "dump.zip", "w") as zf:
        for path in sorted(dump.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(dump).as_posix())
    result = run("split", "dump.zip", "s", "--labels", "labels.csv", "--dry-run")
    assert result.exit_code == 2 and "(./labels.csv, or run the command from another folder " \
        "for the one inside dump.zip)" in result.output
    # The same file by both names (SRC is the current folder), or the same content: no doubt.
    monkeypatch.chdir(dump)
    assert run("split", ".", str(tmp_path / "s"), "--labels", "labels.csv",
               "--dry-run").exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.csv").write_bytes((dump / "labels.csv").read_bytes())
    assert run("split", "dump", "s", "--labels", "labels.csv", "--dry-run").exit_code == 0


def test_a_class_folder_named_in_another_code_page_is_not_lost_without_a_warning(tmp_path):
    # "niño" in Latin-1, as unzip leaves a Windows archive: its images cannot be placed, and
    # a whole class gone must not pass as a count among the files left out.
    from pathlib import Path

    dump = make_class_folders(tmp_path / "dump", classes=("cat", "dog"), per_class=3)
    folder = os.fsencode(dump) + b"/ni\xf1o"
    os.mkdir(folder)
    for i in range(3):
        write_image(Path(os.fsdecode(folder + f"/{i}.jpg".encode())),
                    smooth_image(40, 40, seed=50 + i))
    result = run("split", str(dump), str(tmp_path / "s"), "-q")
    assert result.exit_code == 0, result.output
    assert "3 images are left out for a name" in result.output
    assert "ni\\udcf1o/0.jpg" in result.output


@pytest.mark.parametrize("layout", ["auto", "csv"])
def test_a_column_past_the_labels_csv_is_a_usage_error(tmp_path, layout):
    dump = tmp_path / "dump"
    for i in range(4):
        write_image(dump / "images" / f"{i}.jpg", smooth_image(40, 40, seed=i))
    (dump / "labels.csv").write_text("id,breed,extra\n0,pug,x\n1,boxer,x\n2,pug,x\n3,boxer,x\n")
    result = run("split", str(dump), str(tmp_path / "s"), "--layout", layout,
                 "--label-column", "5", "--dry-run")
    assert result.exit_code == 2
    assert "--label-column 5 is not a column of labels.csv: it has 3" in result.output


def test_jfif_files_are_split_like_jpegs(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=3)
    write_image(dump / "a" / "photo.jpg", smooth_image(40, 40, seed=77)).rename(
        dump / "a" / "photo.jfif")
    result = run("split", str(dump), str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    with open(tmp_path / "s" / "files.csv", newline="") as fh:
        placed = {r["source"]: r["class"] for r in csv.DictReader(fh)}
    assert placed.get("a/photo.jfif") == "a" and len(placed) == 7


def test_max_pixels_reaches_the_split_and_its_manifest(tmp_path):
    dump, dest = tmp_path / "dump", tmp_path / "split"
    make_class_folders(dump, classes=("a", "b"), per_class=4)  # 48x64: 3,072 pixels
    result = run("split", str(dump), str(dest), "--max-pixels", "3000", "--ratios", "0.5,0.5")
    assert result.exit_code == 1 and "Raise --max-pixels (now 3,000" in result.output
    result = run("split", str(dump), str(dest), "--max-pixels", "0", "--ratios", "0.5,0.5")
    assert result.exit_code == 0, result.output
    assert json.loads((dest / "split.json").read_text())["params"]["max_pixels"] == 0
    # Run again at the default: refused, saying what differs (the default is not written).
    result = run("split", str(dump), str(dest), "--ratios", "0.5,0.5")
    assert result.exit_code == 1 and "max_pixels 0, now 89478485" in result.output


def test_sources_and_destinations_that_are_not_folders_are_named(tmp_path):
    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=3)
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "labels").mkdir()
    for args, message in (
            ([dump, tmp_path / "afile" / "out"], f"{tmp_path / 'afile' / 'out'} cannot be made: "
             f"{tmp_path / 'afile'} is a file, not a folder; choose another place"),
            ([tmp_path / "pipe", tmp_path / "out"], "pipe is neither a folder nor a file"),
            ([dump, tmp_path / "out", "--labels", tmp_path / "labels"],
             f"--labels {tmp_path / 'labels'} is a folder; give the CSV file inside it"),
            # <(cat labels.csv): said to be missing before.
            ([dump, tmp_path / "out", "--labels", tmp_path / "pipe"],
             f"--labels {tmp_path / 'pipe'} is not a regular file (a pipe?); save the CSV to a "
             "file and give its path")):
        result = loud("split", *map(str, args))
        assert result.exit_code != 0 and message in result.output, result.output
        if "--labels" in args:  # a bad option value, as a --label-column the CSV lacks
            assert result.exit_code == 2
        assert ".split-lock" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", [[], ["--counts", "2,1,1"], ["--mode", "symlink"]])
def test_an_existing_dest_keeps_its_mode_group_and_attributes(tmp_path, how):
    # A group-private project folder (setgid, 2770) must not come back world-readable and
    # owned by another group after the split is swapped into its place.
    import stat

    src = make_class_folders(tmp_path / "dump", classes=("cat", "dog"), per_class=4)
    dest = tmp_path / "shared"
    dest.mkdir()
    group = 65534 if os.getgid() != 65534 else 0
    os.chown(dest, -1, group)
    os.chmod(dest, 0o2770)
    try:
        os.setxattr(dest, "user.project", b"x-ray")
        xattrs = True
    except OSError:  # a file system without user attributes: the mode and group still hold
        xattrs = False
    for force in ([], ["--force", "--seed", "2"]):  # made, then made again in its place
        result = run("split", str(src), str(dest), *how, *force)
        assert result.exit_code == 0, result.output
        st = os.stat(dest)
        assert stat.S_IMODE(st.st_mode) == 0o2770 and st.st_gid == group
        assert os.stat(dest / "train").st_gid == group  # made inside, so it took the group
        if xattrs:
            assert os.getxattr(dest, "user.project") == b"x-ray"
        assert (dest / "split.json").is_file()


def test_nothing_to_do_removes_what_a_stopped_force_run_left(tmp_path):
    from dsprep import split as splitting

    src = make_class_folders(tmp_path / "dump", classes=("cat", "dog"), per_class=4)
    dest = tmp_path / "out"
    assert run("split", str(src), str(dest)).exit_code == 0
    # A 'split --force --seed 7' killed while it placed its files (up to a copy of the data).
    partial = splitting._partial(dest)
    (partial / "train" / "cat").mkdir(parents=True)
    (partial / splitting._MARKER).write_text("{}")
    (partial / "train" / "cat" / "a.jpg").write_bytes(b"x" * 1000)
    result = loud("split", str(src), str(dest))
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert not partial.exists()
    # A folder of that name dsprep did not make is left alone.
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    assert run("split", str(src), str(dest)).exit_code == 0
    assert (partial / "notes.txt").read_text() == "mine"


def test_a_name_with_a_carriage_return_is_quoted_in_the_lists(tmp_path):
    # Python's csv writer quotes only what its line end holds ("\n"): unquoted, the row was
    # read back as two, and the same command again failed with a traceback.
    import csv

    src = make_class_folders(tmp_path / "dump", classes=("cat", "dog"), per_class=4)
    write_image(src / "cat" / "a\rb.jpg", smooth_image(48, 48, seed=77))
    (src / "dog" / "bad\r.jpg").write_text("not an image")
    dest = tmp_path / "out"
    result = run("split", str(src), str(dest))
    assert result.exit_code == 0, result.output
    again = loud("split", str(src), str(dest))  # the same command again: nothing to do
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output
    with open(dest / "files.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and "cat/a\rb.jpg" in {r["source"] for r in rows}
    assert all(None not in r.values() for r in rows)
    with open(dest / "skipped.csv", newline="", encoding="utf-8") as fh:
        skipped = list(csv.DictReader(fh))
    assert [r["source"] for r in skipped] == ["dog/bad\r.jpg"]
    placed = next(r["path"] for r in rows if r["source"] == "cat/a\rb.jpg")
    assert (dest / placed).is_file()


def test_a_copy_of_the_class_folders_inside_the_dump_is_named(tmp_path):
    root = make_class_folders(tmp_path / "flowers", classes=("daisy", "rose"), per_class=3)
    shutil.copytree(root, tmp_path / "copy")
    shutil.move(tmp_path / "copy", root / "flowers")
    result = loud("split", str(root), str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"note: {root / 'flowers'}/ holds a copy of the class folders" in result.output
    assert "2 classes" in result.output and "left out 6: 6 duplicate" in result.output
    assert "variants" not in result.output
    # A copy whose files differ from those under the same paths outside it (augmented ones):
    # merged into the classes, an image and its variant could be split apart; that is said.
    for k in range(2):
        write_image(root / "flowers" / "rose" / f"rose_{k}.jpg", smooth_image(48, 48, seed=80 + k))
    varied = loud("split", str(root), str(tmp_path / "out"), "--dry-run")
    assert varied.exit_code == 0, varied.output
    assert (f"warning: {root / 'flowers'}/ holds 2 files under the path of an image outside it, "
            "with other content (augmented variants?)") in " ".join(varied.output.split())
    assert "left out 4: 4 duplicate" in varied.output


def test_commands_shown_to_be_pasted_quote_their_paths(tmp_path):
    # Kaggle's New Plant Diseases archive: its folder names hold spaces and brackets, which a
    # shell takes apart (or refuses) unquoted.
    root = tmp_path / "pdd"
    data = root / "Plant Dataset(Augmented)" / "Plant Dataset(Augmented)"
    make_class_folders(data / "train", classes=("scab", "healthy"), per_class=2)
    make_class_folders(data / "valid", classes=("scab", "healthy"), per_class=1, seed=10)
    write_image(root / "test" / "test" / "1.JPG", smooth_image(40, 40, seed=20))
    result = loud("split", str(root), str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"dsprep build-hdf5 '{data}' OUT" in result.output
    assert "2 classes" in result.output and "left out 1: 1 no-label" in result.output


def test_a_stop_while_the_old_split_is_removed_says_the_new_one_is_complete(tmp_path,
                                                                            monkeypatch):
    # A job's time limit while split --force removed a large old split: the new split was in
    # place, yet the command said "Nothing that looks finished was left".
    from dsprep import split as split_module

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=10)
    dest = tmp_path / "split"
    assert CliRunner().invoke(main, ["split", str(dump), str(dest)]).exit_code == 0
    real = shutil.rmtree

    def stopped(path, *args, **kwargs):
        if str(path).endswith(".split-old"):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(split_module.shutil, "rmtree", stopped)
    result = CliRunner().invoke(main, ["split", str(dump), str(dest), "--force", "--seed", "7"])
    assert result.exit_code == 130
    old = tmp_path / ".split.split-old"
    assert (f"The split is complete in {dest}; what it held before is left in {old}, which the "
            f"next split into {dest} removes") in " ".join(result.output.split())
    assert "Nothing that looks finished" not in result.output
    assert json.loads((dest / "split.json").read_text())["params"]["seed"] == 7
    monkeypatch.undo()
    again = CliRunner().invoke(main, ["split", str(dump), str(dest), "--force", "--seed", "7"])
    assert again.exit_code == 0 and not old.exists()


def test_hard_links_that_became_copies_are_said_on_stderr_even_with_q(tmp_path, monkeypatch):
    # A --mode hardlink split across devices copies the whole dump: -q hid that.
    import errno

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=10)
    real_link = os.link

    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    result = CliRunner().invoke(
        main, ["-q", "split", str(dump), str(tmp_path / "split"), "--mode", "hardlink"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == ("note: 20 hard links were not possible (another device) and were "
                             "copied instead\n")
    calls = []

    def one_cross_device(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", one_cross_device)
    one = CliRunner().invoke(
        main, ["-q", "split", str(dump), str(tmp_path / "one"), "--mode", "hardlink"])
    assert one.exit_code == 0, one.output
    assert one.stderr == ("note: 1 hard link was not possible (another device) and was copied "
                          "instead\n")


def _lesions(root, header="lesion_id,image_id,dx,sex", sex="male"):
    """A HAM10000-like dump: 60 lesions of 1-3 images each, labelled by lesion."""
    rows, n = [header], 0
    for lesion in range(60):
        for _ in range(lesion % 3 + 1):
            write_image(root / "images" / f"ISIC_{n:04d}.jpg", smooth_image(36, 40, seed=n))
            rows.append(f"HAM_{lesion:04d},ISIC_{n:04d},{('nv', 'mel')[lesion % 2]},{sex}")
            n += 1
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _groups_spread(dest, dump) -> int:
    with open(dump / "metadata.csv", newline="") as fh:
        lesion = {r["image_id"]: r["lesion_id"] for r in csv.DictReader(fh)}
    with open(dest / "files.csv", newline="") as fh:
        splits: dict[str, set[str]] = {}
        for r in csv.DictReader(fh):
            splits.setdefault(lesion[r["source"].rsplit("/", 1)[1][:-4]], set()).add(r["split"])
    return sum(len(s) > 1 for s in splits.values())


def test_a_group_column_keeps_a_lesions_images_in_one_split(tmp_path):
    # HAM10000: a lesion's images (lesion_id) in train and in test flatter the test scores.
    dump = _lesions(tmp_path / "ham")
    result = loud("split", str(dump), str(tmp_path / "plain"))
    assert result.exit_code == 0, result.output
    assert _groups_spread(tmp_path / "plain", dump) > 0
    out = " ".join(result.output.split())
    assert ("warning: metadata.csv's column 'lesion_id' names groups of images (40 hold two or "
            "more), and") in out
    assert "give --group-column lesion_id to keep each group in one split" in out
    params = json.loads((tmp_path / "plain" / "split.json").read_text())["params"]
    assert "group_column" not in params  # split.json as before the option

    result = loud("split", str(dump), str(tmp_path / "grouped"), "--group-column", "lesion_id")
    assert result.exit_code == 0, result.output
    assert "ids in 'image_id', labels in 'dx', groups in 'lesion_id'" in result.output
    assert "warning" not in result.output
    assert _groups_spread(tmp_path / "grouped", dump) == 0
    manifest = json.loads((tmp_path / "grouped" / "split.json").read_text())
    assert manifest["params"]["group_column"] == "lesion_id"
    assert sum(manifest["counts"]["train"].values()) == 96  # 0.8 of 120, the groups allowing
    again = loud("split", str(dump), str(tmp_path / "grouped"), "--group-column", "lesion_id")
    assert again.exit_code == 0 and "already holds this split; nothing to do" in again.output
    other = loud("split", str(dump), str(tmp_path / "grouped"))
    assert other.exit_code == 1 and "group_column 'lesion_id', now None" in other.output


@pytest.mark.parametrize("args, message", [
    (("--group-column", "dx"), "--group-column dx is the column of the labels of metadata.csv"),
    (("--group-column", "image_id"), "is the column of the ids of metadata.csv"),
    (("--group-column", "lesion"), "--group-column 'lesion' is not a column of metadata.csv"),
    (("--group-column", "7"), "--group-column 7 is not a column of metadata.csv: it has 4"),
    (("--layout", "folders", "--group-column", "0"), "--group-column is for the csv layout"),
])
def test_a_group_column_that_cannot_be_one_is_a_usage_error(tmp_path, args, message):
    dump = _lesions(tmp_path / "ham")
    result = run("split", str(dump), str(tmp_path / "s"), *args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_columns_not_naming_groups_are_not_taken_for_them(tmp_path):
    # patient_sex repeats its values but groups nothing; an id of one image each groups nothing.
    dump = _lesions(tmp_path / "ham", header="image_uid,image_id,dx,patient_sex")
    result = loud("split", str(dump), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    rows = (dump / "metadata.csv").read_text().splitlines()
    (dump / "metadata.csv").write_text("\n".join(
        ["patient_id,image_id,dx,sex"] + [f"P{i}," + r.split(",", 1)[1]
                                         for i, r in enumerate(rows[1:])]) + "\n")
    result = loud("split", str(dump), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_splits_left_empty_by_large_groups_are_said_to_be_so(tmp_path):
    dump = tmp_path / "few"
    rows = ["patient_id,image_id,label"]
    for p in range(3):
        for k in range(10):
            write_image(dump / "images" / f"p{p}_{k}.jpg", smooth_image(30, 30, seed=10 * p + k))
            rows.append(f"P{p},p{p}_{k},{('a', 'b', 'a')[p]}")
    (dump / "labels.csv").write_text("\n".join(rows) + "\n")
    result = loud("split", str(dump), str(tmp_path / "s"), "--group-column", "patient_id",
                  "--dry-run")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert ("note: no test images in any class: too few groups of --group-column patient_id, "
            "or too large for --ratios 0.8,0.1,0.1 (the default)") in out
    assert ("with these groups the splits are off --ratios 0.8,0.1,0.1: a train 10 for 16, a "
            "val 10 for 2 (images; see the table)" in out)


def test_notes_for_masks_beside_images_and_for_keeping_a_dumps_own_splits(tmp_path):
    dump = make_images_beside_masks(tmp_path / "covid")
    result = loud("split", str(dump), str(tmp_path / "s"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert ("note: class folders hold their images in a folder beside folders of masks or "
            "annotations (e.g. COVID/masks/COVID-0.png: in COVID/masks/, beside the class's "
            "images in COVID/images/): the images are split, and the 6 files of the other "
            "folders left out (mask)") in " ".join(result.output.split())
    # A dump split into train and test only: how to keep its test set and have a val split.
    brain = tmp_path / "brain"
    make_class_folders(brain / "Training", classes=("glioma", "notumor"), per_class=4)
    make_class_folders(brain / "Testing", classes=("glioma", "notumor"), per_class=2, seed=30)
    result = loud("split", str(brain), str(tmp_path / "b"), "--dry-run")
    assert (f"build them as they are: dsprep build-hdf5 {brain} OUT (no val split then; for "
            f"one, split {brain / 'Training'} alone with two --ratios, and build "
            f"{brain / 'Testing'} on its own with --name test)") in " ".join(result.output.split())
    shutil.make_archive(str(tmp_path / "brain"), "zip", brain)
    result = loud("split", str(tmp_path / "brain.zip"), str(tmp_path / "z"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert (f"note: to keep its own splits instead, extract {tmp_path / 'brain.zip'} and build "
            "the folder as it is with dsprep build-hdf5") in " ".join(result.output.split())
