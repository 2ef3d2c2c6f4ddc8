"""Finding labelled images: folders, prefixes, patterns, labels CSVs, zips, links, ignored names."""

from __future__ import annotations

import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
from helpers import make_class_folders, smooth_image, unlistable, write_image

import dsprep.sources as sources_module
from dsprep.errors import LayoutError, UsageError
from dsprep.fileio import quoted
from dsprep.sources import (
    AMBIGUOUS_ID,
    BAD_LABEL,
    DANGLING_LINK,
    LABEL_CONFLICT,
    MISSING_FILE,
    NO_LABEL,
    UNLABELLED,
    find_images,
    is_image_name,
    open_source,
    scan_class_folders,
)


def _find(path, **kwargs):
    with open_source(path) as source:
        return find_images(source, **kwargs)


def _reasons(inventory) -> dict[str, str]:
    return {s.source: s.reason for s in inventory.skipped}


def _img(path, seed=0):
    return write_image(path, smooth_image(20, 24, seed=seed))


@pytest.mark.parametrize("name, expected", [
    ("a.jpg", True), ("A.JPG", True), ("b.JpEg", True), ("c.png", True), ("d.bmp", True),
    ("e.tif", True), ("f.TIFF", True), ("g.webp", True), ("h.gif", True),
    ("i.txt", False), ("j", False), (".hidden.jpg", False), ("Thumbs.db", False),
    (".DS_Store", False), ("k.jpg.part", False), ("l.jfif", True), ("m.JPE", True),
    ("n.ppm", True), ("o.PGM", True), ("p.jp2", True), ("q.avif", True), ("r.heic", False),
])
def test_is_image_name(name, expected):
    assert is_image_name(name) is expected


def test_scan_class_folders_still_lists_sorted_pairs(class_dump):
    classes, items = scan_class_folders(class_dump)
    assert classes == ["cat", "dog", "fox"]
    assert [(p.relative_to(class_dump).as_posix(), c) for p, c in items] == [
        (f"{c}/{c}_{i}.jpg", c) for c in classes for i in range(6)]


def test_scan_class_folders_walks_like_the_split(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "a-b", "b"), per_class=1)
    os.symlink("..", root / "a" / "loop")  # a/loop/b/b_0.jpg must not be a second "a" image
    os.mkfifo(root / "b" / "pipe.jpg")  # reading a FIFO would hang the caller
    (root / "__MACOSX" / "a").mkdir(parents=True)
    (root / "__MACOSX" / "a" / "._a_0.jpg").write_bytes(b"resource fork")
    (root / "__MACOSX" / "stray.jpg").write_bytes(b"resource fork")
    classes, items = scan_class_folders(root)
    assert classes == ["a", "a-b", "b"]
    # Sorted by class, then path: "a-b/..." sorts before "a/..." as text, not as classes.
    assert [(p.relative_to(root).as_posix(), c) for p, c in items] == [
        ("a/a_0.jpg", "a"), ("a-b/a-b_0.jpg", "a-b"), ("b/b_0.jpg", "b")]


def test_class_folders_named_in_another_unicode_form_are_one_composed_class(tmp_path):
    # A Mac writes "café" decomposed (e + a combining accent); split composes labels, so
    # the build, --name and DirectoryGenerator must too, or "café" is two classes.
    import unicodedata

    composed = "caf\u00e9"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    root = make_class_folders(tmp_path / "d", classes=(decomposed, "dog"), per_class=2)
    classes, items = scan_class_folders(root)
    assert classes == [composed, "dog"]
    assert [c for _, c in items] == [composed] * 2 + ["dog"] * 2
    assert all(p.is_file() for p, _ in items)  # the paths are still the files' own
    # Both forms side by side (a copy merged on Linux): one class of both folders' files.
    make_class_folders(root, classes=(composed,), per_class=1, seed=5)
    classes, items = scan_class_folders(root)
    assert classes == [composed, "dog"]
    assert sorted(p.parent.name for p, c in items if c == composed) == sorted(
        [decomposed, decomposed, composed])


def test_folders_layout(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("b", "a"), per_class=2)
    _img(root / "a" / "deeper" / "x.PNG", seed=50)
    (root / "a" / "notes.txt").write_text("not an image")
    inv = _find(root)
    assert inv.layout == "folders" and inv.root == ""
    assert inv.items == [("a/a_0.jpg", "a"), ("a/a_1.jpg", "a"), ("a/deeper/x.PNG", "a"),
                         ("b/b_0.jpg", "b"), ("b/b_1.jpg", "b")]
    assert inv.classes == ["a", "b"] and inv.skipped == []


def test_hidden_and_system_files_are_ignored(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=1)
    _img(root / "a" / ".hidden.jpg", seed=9)
    _img(root / ".cache" / "c.jpg", seed=10)
    _img(root / "__MACOSX" / "a" / "._a_0.jpg", seed=11)
    (root / "a" / ".DS_Store").write_bytes(b"\0\0")
    (root / "b" / "Thumbs.db").write_bytes(b"\0\0")
    inv = _find(root)
    assert inv.classes == ["a", "b"]
    assert [rel for rel, _ in inv.items] == ["a/a_0.jpg", "b/b_0.jpg"]


def test_images_outside_class_folders_are_reported(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=1)
    _img(root / "stray.jpg", seed=20)
    inv = _find(root, layout="folders")
    assert _reasons(inv) == {"stray.jpg": NO_LABEL}


def test_symlinks_followed_and_dangling_reported(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=1)
    outside = make_class_folders(tmp_path / "elsewhere", classes=("c",), per_class=2, seed=30)
    os.symlink(outside / "c", root / "c")
    os.symlink(tmp_path / "nowhere.jpg", root / "a" / "gone.jpg")
    os.symlink(root, root / "b" / "loop")  # a loop must not hang the walk
    inv = _find(root)
    assert ("c/c_0.jpg", "c") in inv.items and ("c/c_1.jpg", "c") in inv.items
    assert _reasons(inv) == {"a/gone.jpg": DANGLING_LINK}
    assert all(not rel.startswith("b/loop") for rel, _ in inv.items)


def test_prefix_layout_like_dogs_vs_cats(tmp_path):
    root = tmp_path / "train"
    for name in ("cat.0.jpg", "cat.1.jpg", "dog.0.jpg", "Dog.2.JPG", "dog.10.jpg"):
        _img(root / name, seed=len(name))
    _img(root / "42.jpg", seed=99)  # dogs-vs-cats' test1 files have no label
    inv = _find(root)
    assert inv.layout == "prefix"
    assert dict(inv.items) == {"cat.0.jpg": "cat", "cat.1.jpg": "cat", "dog.0.jpg": "dog",
                               "Dog.2.JPG": "Dog", "dog.10.jpg": "dog"}
    assert _reasons(inv) == {"42.jpg": NO_LABEL}


def test_a_class_folder_with_a_few_dotted_names_stays_a_class_folder(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("brick", "grass"), per_class=3)
    _img(root / "brick" / "2019.01.05.jpg", seed=40)
    _img(root / "brick" / "2020.03.01.jpg", seed=41)
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["brick", "grass"]
    assert ("brick/2019.01.05.jpg", "brick") in inv.items and len(inv.items) == 8


def test_class_folders_of_timestamp_names_stay_class_folders(tmp_path):
    # Phone and screenshot names: dotted, but what precedes the first dot is a time, or
    # differs from name to name; neither is a class.
    names = {"brick": ("2016-05-21 14.23.11.jpg", "2016-05-21 15.02.40.jpg",
                       "2016-06-02 09.11.03.jpg"),
             "grass": ("Screenshot 2019-01-05 at 14.23.11.png",
                       "Screenshot 2019-01-05 at 15.40.02.png",
                       "Screenshot 2019-01-06 at 08.01.59.png"),
             "moss": ("2019.01.05.jpg", "2020.03.01.jpg", "2021.07.30.jpg")}
    for i, (cls, files) in enumerate(names.items()):
        for j, name in enumerate(files):
            _img(tmp_path / "d" / cls / name, seed=10 * i + j)
    inv = _find(tmp_path / "d")
    assert inv.layout == "folders" and inv.classes == ["brick", "grass", "moss"]
    assert len(inv.items) == 9 and not inv.skipped


@pytest.mark.parametrize("names", [
    ("train/0.1.png", "train/0.2.png", "train/1.1.png", "train/2.1.png", "test1/1.png"),
    tuple(f"train/c{i}.0.png" for i in range(10)) + ("test1/1.png",),
    ("imgs/cat.0.png", "imgs/dog.0.png", "imgs/bird.0.png", "imgs/fish.0.png", "other/x.png"),
])
def test_prefix_dumps_with_digit_classes_or_one_image_per_class(tmp_path, names):
    for i, name in enumerate(names):
        _img(tmp_path / "d" / name, seed=i)
    inv = _find(tmp_path / "d")
    assert inv.layout == "prefix"
    labelled = [n for n in names if n.count(".") == 2]
    assert sorted(inv.classes) == sorted({n.split("/")[1].split(".")[0] for n in labelled})


def test_a_folder_of_prefixed_names_beside_class_folders_is_read_by_prefix(tmp_path):
    for i, name in enumerate(("all/cat.0.jpg", "all/cat.1.jpg", "all/dog.0.jpg",
                              "all/dog.1.jpg", "extra/x.jpg")):
        _img(tmp_path / "d" / name, seed=i)
    inv = _find(tmp_path / "d")
    assert inv.layout == "prefix" and inv.classes == ["cat", "dog"]


def test_pixel_tables_are_known_by_their_header_or_a_first_row_of_numbers():
    from dsprep.sources import holds_pixels

    assert holds_pixels("label," + ",".join(f"pixel{i}" for i in range(784)))  # Fashion-MNIST
    assert holds_pixels("emotion,pixels,Usage")  # FER2013
    assert holds_pixels(",".join(["5"] + ["0"] * 784))  # EMNIST: no header, numbers
    assert not holds_pixels("image,x1,y1,x2,y2,class")
    assert not holds_pixels(",".join(["a.jpg"] + ["0"] * 70))  # a file's 70 features


def test_split_of_reads_split_names_with_affixes_only():
    from dsprep.sources import split_of
    names = {"train": "train", "Training": "train", "training_set": "train",
             "seg_train": "train", "Test Images": "test", "test-set": "test", "valid": "val",
             "val_data": "val", "train_station": None, "test1": None, "seg_pred": None,
             "train_test": None, "cats": None, "TEST_SIMPLE": "test", "train_small": "train",
             "simple": None, "Final_Training": None}
    assert {name: split_of(name) for name in names} == names


def test_split_folders_with_affixes_doubled_and_unlabelled_beside_are_read(tmp_path):
    # Kaggle's cats-and-dogs set (training_set/training_set/cats, test_set/test_set/dogs)
    # and Intel's scenes (seg_train/seg_train/<class>, unlabelled seg_pred/seg_pred/*.jpg).
    root = tmp_path / "d"
    make_class_folders(root / "training_set" / "training_set", classes=("cats", "dogs"),
                       per_class=2)
    make_class_folders(root / "test_set" / "test_set", classes=("cats", "dogs"), per_class=1,
                       seed=10)
    _img(root / "seg_pred" / "seg_pred" / "1.jpg", seed=20)
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["cats", "dogs"]
    assert inv.split_folders == ["test_set/test_set", "training_set/training_set"]
    assert len(inv.items) == 6
    assert all(label == rel.split("/")[2] for rel, label in inv.items)
    assert _reasons(inv) == {"seg_pred/seg_pred/1.jpg": NO_LABEL}


def test_a_split_folder_whose_images_lie_in_one_folder_named_as_no_class_is_unlabelled(
        tmp_path):
    # Tiny ImageNet: train/<wnid>/images/*.JPEG, val/images/*.JPEG (labelled by a text file)
    # and test/images/*.JPEG; val and test were one more class, "images".
    root = tmp_path / "tiny-imagenet-200"
    for wnid in ("n01443537", "n01629819"):
        for k in range(2):
            _img(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", seed=k)
    for split in ("val", "test"):
        for k in range(2):
            _img(root / split / "images" / f"{split}_{k}.JPEG", seed=10 + k)
    inv = _find(root)
    assert inv.classes == ["n01443537", "n01629819"] and len(inv.items) == 4
    assert _reasons(inv) == {f"{split}/images/{split}_{k}.JPEG": NO_LABEL
                             for split in ("val", "test") for k in range(2)}
    assert "images without classes" in inv.skipped[0].detail
    # One class folder named as a class of train stays that class (a val of one class).
    _img(root / "valid" / "n01443537" / "v.JPEG", seed=30)
    (root / "val").rename(tmp_path / "val")
    inv = _find(root)
    assert ("valid/n01443537/v.JPEG", "n01443537") in inv.items


def test_a_split_dump_in_a_folder_beside_test_folders_of_its_own_is_stepped_into(tmp_path):
    # Kaggle's New Plant Diseases archive: X/X/{train,valid}/<class>/ beside test/test/*.JPG;
    # read as class folders, it was two classes, "X" and "test".
    root = tmp_path / "pdd"
    data = root / "New Plant Diseases Dataset(Augmented)" / "New Plant Diseases Dataset(Augmented)"
    make_class_folders(data / "train", classes=("Apple___scab", "Tomato___healthy"), per_class=2)
    make_class_folders(data / "valid", classes=("Apple___scab", "Tomato___healthy"), per_class=1,
                       seed=10)
    for k in range(2):
        _img(root / "test" / "test" / f"AppleScab{k}.JPG", seed=20 + k)
    inv = _find(root)
    assert inv.root == "New Plant Diseases Dataset(Augmented)/New Plant Diseases Dataset(Augmented)"
    assert inv.classes == ["Apple___scab", "Tomato___healthy"] and len(inv.items) == 6
    assert inv.split_folders == ["train", "valid"]
    assert _reasons(inv) == {f"test/test/AppleScab{k}.JPG": NO_LABEL for k in range(2)}
    # A class folder beside it, or a test folder with folders in it, is no such dump.
    for other in ("flowers/daisy.jpg", "test/test/cls/1.jpg"):
        _img(root / other, seed=30)
        assert _find(root).root == "", other
        (root / other).unlink()


def test_flat_class_folders_named_like_splits_stay_classes(tmp_path):
    root = tmp_path / "d"
    make_class_folders(root, classes=("test", "dog"), per_class=2)
    inv = _find(root)
    assert inv.classes == ["dog", "test"] and not inv.split_folders
    from dsprep.sources import own_split_folders
    assert own_split_folders(root, []) == {}


def test_a_dump_already_split_into_split_folders_is_read_by_its_class_folders(tmp_path):
    root = tmp_path / "chest_xray"
    make_class_folders(root / "chest_xray" / "train", classes=("NORMAL", "PNEUMONIA"),
                       per_class=2)
    make_class_folders(root / "chest_xray" / "Test", classes=("NORMAL",), per_class=1, seed=10)
    make_class_folders(root / "chest_xray" / "val", classes=("PNEUMONIA",), per_class=1, seed=20)
    _img(root / "chest_xray" / "Test" / "unlabelled.jpg", seed=30)
    inv = _find(root)
    assert inv.root == "chest_xray" and inv.layout == "folders"
    assert inv.split_folders == ["Test", "train", "val"]
    assert inv.classes == ["NORMAL", "PNEUMONIA"]  # not "train", "Test" and "val"
    assert dict(inv.items)["chest_xray/val/PNEUMONIA/PNEUMONIA_0.jpg"] == "PNEUMONIA"
    assert len(inv.items) == 6
    assert _reasons(inv) == {"chest_xray/Test/unlabelled.jpg": NO_LABEL}


def test_the_chest_xray_archive_with_its_nested_copy_is_read_as_split(tmp_path):
    # Kaggle's archive: chest_xray/{train,test,val}, the same again in chest_xray/chest_xray/,
    # and a __MACOSX folder.
    top = tmp_path / "archive" / "chest_xray"
    for where in (top, top / "chest_xray"):
        make_class_folders(where / "train", classes=("NORMAL", "PNEUMONIA"), per_class=2)
        make_class_folders(where / "test", classes=("NORMAL", "PNEUMONIA"), per_class=1, seed=9)
    _img(top / "__MACOSX" / "train" / "._x.jpg", seed=3)
    inv = _find(tmp_path / "archive")
    assert inv.split_folders == ["chest_xray/test", "chest_xray/train", "test", "train"]
    assert inv.classes == ["NORMAL", "PNEUMONIA"] and len(inv.items) == 12
    assert dict(inv.items)["chest_xray/chest_xray/test/NORMAL/NORMAL_0.jpg"] == "NORMAL"
    assert inv.skipped == []


@pytest.mark.parametrize("names", [
    ("alice/test/shots/1.jpg", "bob/dev/shots/2.jpg", "train/x/3.jpg"),  # no copy of "train"
    ("cat/val/a/1.jpg", "dog/val/a/3.jpg", "train/cat/5.jpg"),  # two "copies"
    ("cat/train/1.jpg", "test/cat/5.jpg"),
])
def test_folders_that_only_look_like_copies_of_split_folders_stay_class_folders(tmp_path, names):
    for i, name in enumerate(names):
        _img(tmp_path / "d" / name, seed=i)
    inv = _find(tmp_path / "d", layout="folders")
    assert inv.split_folders == []
    assert inv.classes == sorted({name.split("/")[0] for name in names})


def test_a_class_folder_holding_val_and_valid_is_still_a_class_folder(tmp_path):
    from dsprep.sources import own_split_folders

    for name in ("cat/val/1.jpg", "cat/valid/2.jpg", "dog/3.jpg"):
        _img(tmp_path / "d" / name, seed=len(name))
    assert own_split_folders(tmp_path / "d", []) == {}  # no error: cat is just not a copy


def test_class_folders_named_like_splits_but_holding_images_stay_classes(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("test", "train"), per_class=2)
    inv = _find(root)
    assert inv.split_folders == [] and inv.classes == ["test", "train"]


def test_wrapper_folders_are_stepped_into(tmp_path):
    make_class_folders(tmp_path / "dump" / "flowers" / "flowers", classes=("daisy", "rose"),
                       per_class=1)
    inv = _find(tmp_path / "dump")
    assert inv.root == "flowers/flowers" and inv.layout == "folders"
    assert inv.items == [("flowers/flowers/daisy/daisy_0.jpg", "daisy"),
                         ("flowers/flowers/rose/rose_0.jpg", "rose")]


def test_a_folder_of_other_files_beside_the_images_is_passed_over(tmp_path):
    # Stanford Dogs: Images/<breed>/*.jpg beside Annotation/<breed>/<XML files, no extension>;
    # read from the top, Images was one class. Its Kaggle zip wraps each in a folder more.
    for top, images, notes in (("dogs", "Images", "Annotation"),
                               ("zipped", "images/Images", "annotations/Annotation")):
        root = tmp_path / top
        make_class_folders(root / images, classes=("n02085620-Chihuahua", "n02085782-Japanese"),
                           per_class=2)
        for breed in ("n02085620-Chihuahua", "n02085782-Japanese"):
            (root / notes / breed).mkdir(parents=True)
            (root / notes / breed / f"{breed[:9]}_1").write_text("<annotation/>")
        (root / "README.txt").write_text("Stanford Dogs")
        inv = _find(root)
        assert inv.root == images and inv.layout == "folders", top
        assert inv.classes == ["n02085620-Chihuahua", "n02085782-Japanese"]
        assert len(inv.items) == 4
    # A folder holding a labels CSV beside the images is no folder of other files.
    root = tmp_path / "withcsv"
    for k in range(4):
        write_image(root / "images" / f"{k}.jpg", smooth_image(40, 40, seed=k))
    (root / "labels").mkdir()
    (root / "labels" / "labels.csv").write_text("id,label\n" + "".join(
        f"{k},{'ab'[k % 2]}\n" for k in range(4)))
    with open_source(root) as source:
        assert sources_module._descend(source.list_files()[0]) == ""
    # A class folder beside one of phone photos (or of notes) is no wrapper: the photos are
    # listed as unsupported, not lost behind a wrapper stepped into.
    root = make_class_folders(tmp_path / "phone", classes=("cat",), per_class=2)
    (root / "dog").mkdir()
    (root / "dog" / "IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    inv = _find(root)
    assert inv.root == "" and inv.classes == ["cat"]
    assert _reasons(inv)["dog/IMG_1.HEIC"] == "unsupported-format"


def test_kaggle_zip_with_train_and_unlabelled_test_folder(tmp_path):
    folder = tmp_path / "src"
    for i, name in enumerate(("train/cat.0.jpg", "train/cat.1.jpg", "train/dog.0.jpg",
                              "test1/1.jpg", "test1/2.jpg")):
        _img(folder / name, seed=i)
    archive = tmp_path / "dogs-vs-cats.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, path.relative_to(folder).as_posix())
        zf.writestr("__MACOSX/train/._cat.0.jpg", b"resource fork")
    inv = _find(archive)
    assert inv.layout == "prefix"
    assert inv.items == [("train/cat.0.jpg", "cat"), ("train/cat.1.jpg", "cat"),
                         ("train/dog.0.jpg", "dog")]
    assert _reasons(inv) == {"test1/1.jpg": NO_LABEL, "test1/2.jpg": NO_LABEL}


def test_pattern_with_label_group(tmp_path):
    root = tmp_path / "pets"
    for i, name in enumerate(("Abyssinian_1.jpg", "Abyssinian_12.jpg", "great_pyrenees_3.jpg",
                              "README.png")):
        _img(root / name, seed=i)
    inv = _find(root, pattern=r"(?P<label>.+)_\d+\.")
    assert inv.layout == "prefix"
    assert dict(inv.items) == {"Abyssinian_1.jpg": "Abyssinian",
                               "Abyssinian_12.jpg": "Abyssinian",
                               "great_pyrenees_3.jpg": "great_pyrenees"}
    assert _reasons(inv) == {"README.png": NO_LABEL}


def test_a_pattern_matching_no_file_name_says_so_not_to_give_one(tmp_path):
    # "expected files named <class>.<n>.<ext> (or give --pattern)", to a user who gave one.
    _img(tmp_path / "d" / "apple_1.jpg")
    _img(tmp_path / "d" / "pear_1.jpg", seed=1)
    with pytest.raises(LayoutError, match=r"expected file names that --pattern "
                                          r"'\(\?P<label>r\[a-z\]\+\)' matches at their start"):
        _find(tmp_path / "d", pattern="(?P<label>r[a-z]+)")


@pytest.mark.parametrize("pattern, message", [
    (r"(?P<lab>\w+)", "named group 'label'"), ("(?P<label>[", "not a valid regular expression")])
def test_bad_patterns(tmp_path, pattern, message):
    _img(tmp_path / "d" / "a.1.jpg")
    with pytest.raises(UsageError, match=message):
        _find(tmp_path / "d", pattern=pattern)


def _csv_dump(tmp_path, text: str, names=("1.jpg", "2.jpg", "3.png", "4.jpg"), newline="\n"):
    root = tmp_path / "d"
    for i, name in enumerate(names):
        _img(root / "images" / name, seed=i)
    (root / "labels.csv").write_bytes(text.replace("\n", newline).encode("utf-8"))
    return root


def test_a_labels_csv_outside_the_dump_is_named_in_full(tmp_path, monkeypatch):
    # Given relative to the working folder, it was kept as given: in split.json it then read
    # as a file inside SRC.
    root = _csv_dump(tmp_path, "")
    (root / "labels.csv").unlink()
    (tmp_path / "mine.csv").write_text("id,label\n1,cat\n2,dog\n3,cat\n4,dog\n")
    monkeypatch.chdir(tmp_path)
    inv = _find(root, layout="csv", labels="mine.csv")
    assert inv.labels_file == str((tmp_path / "mine.csv").resolve())
    assert dict(inv.items)["images/2.jpg"] == "dog"


def test_a_labels_csv_inside_the_dump_named_from_elsewhere_is_the_dumps_own(tmp_path,
                                                                           monkeypatch):
    # --labels dump/labels.csv, or its full path, was kept in full, where formats.md says a CSV
    # inside SRC is named relative to it.
    root = _csv_dump(tmp_path, "id,label\n1,cat\n2,dog\n3,cat\n4,dog\n")
    monkeypatch.chdir(tmp_path)
    for given in (f"{root.name}/labels.csv", root / "labels.csv", "labels.csv"):
        inv = _find(root, layout="csv", labels=given)
        assert inv.labels_file == "labels.csv", given
        assert dict(inv.items)["images/2.jpg"] == "dog"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_csv_with_header_ids_without_extension(tmp_path, newline):
    root = _csv_dump(tmp_path, "id,label\n1,cat\n2,dog\n3,cat\n4,dog\n", newline=newline)
    inv = _find(root)
    assert inv.layout == "csv" and inv.labels_file == "labels.csv"
    assert inv.items == [("images/1.jpg", "cat"), ("images/2.jpg", "dog"),
                         ("images/3.png", "cat"), ("images/4.jpg", "dog")]
    assert inv.skipped == []


@pytest.mark.parametrize("labels, given", [
    ("label", {}), ("label", {"label_column": "label"}), ("grade", {"labels": "labels.csv"})])
def test_numeric_labels_written_in_two_ways_are_one_class(tmp_path, labels, given):
    # A table edited in a spreadsheet (or joined from two exports): 1 and 1.0 are one class.
    names = [f"{i}.jpg" for i in range(1, 9)]
    root = _csv_dump(tmp_path, f"id,{labels}\n1,1\n2,1.0\n3,0.0\n4,0.00\n5,01\n6,2.50\n"
                     "7,2.5\n8,+1\n", names=names)
    inv = _find(root, **given)
    assert inv.items == [(f"images/{i}.jpg", label) for i, label in
                         zip(range(1, 9), ["1", "1", "0.0", "0.0", "1", "2.5", "2.5", "1"],
                             strict=True)]
    assert inv.labels_doubt == (
        "labels.csv: its labels are numbers, some written in more than one way; each number "
        "was taken as one class (0.00 as 0.0; +1 and 01 and 1.0 as 1; 2.50 as 2.5)")


def test_rows_left_out_do_not_keep_numbers_written_two_ways_apart(tmp_path):
    # An image without a label (Kaggle's test rows), a row naming no image, a row without id.
    names = [f"{i}.jpg" for i in range(1, 6)]
    root = _csv_dump(tmp_path, "id,label\n1,1\n2,1.0\n3,2\n4,2.0\n5,\n99,one\n,x\n",
                     names=names)
    inv = _find(root)
    assert {label for _, label in inv.items} == {"1", "2"}
    assert _reasons(inv)["images/5.jpg"] == BAD_LABEL and "99" in _reasons(inv)
    assert "1.0 as 1; 2.0 as 2" in inv.labels_doubt


@pytest.mark.parametrize("halves, name", [(["0.5", ".5"], "0.5"), ([".5", ".50"], "0.5")])
def test_a_number_written_with_a_leading_dot_joins_its_class(tmp_path, halves, name):
    # ".5" alone would be a hidden folder (left out as a bad label).
    names = [f"{i}.jpg" for i in range(1, 5)]
    root = _csv_dump(tmp_path, f"id,label\n1,{halves[0]}\n2,{halves[1]}\n3,1\n4,1\n",
                     names=names)
    inv = _find(root)
    assert dict(inv.items) == {"images/1.jpg": name, "images/2.jpg": name, "images/3.jpg": "1",
                               "images/4.jpg": "1"}
    assert inv.skipped == []


@pytest.mark.parametrize("column", [
    ["1", "1.0", "one"], ["1", "1.0", "nan"], ["1", "1_0", "10"], ["1", "2.0", "3"],
    ["12345678901234567890", "12345678901234567891", "3"],  # one float holds both
    ["1e999999", "1", "1.0"]])
def test_labels_are_taken_as_written_unless_all_are_numbers_some_written_twice(tmp_path,
                                                                             column):
    names = [f"{i}.jpg" for i in range(1, 7)]
    text = "id,label\n" + "".join(f"{i},{column[i % 3]}\n" for i in range(1, 7))
    inv = _find(_csv_dump(tmp_path, text, names=names))
    assert sorted({label for _, label in inv.items}) == sorted(column)
    assert inv.labels_doubt is None


@pytest.mark.parametrize("others", [["hmnist_8_8_L.csv"], ["hmnist_8_8_L.csv", "notes.csv"]])
def test_of_several_csvs_the_one_that_labels_the_images_is_taken(tmp_path, others):
    # HAM10000: images in two part folders, its metadata beside pixel tables (hmnist_*.csv).
    root = tmp_path / "d"
    rows = []
    for i in range(12):
        _img(root / f"HAM10000_images_part_{1 + i // 6}" / f"ISIC_{i:07d}.jpg", seed=i)
        rows.append(f"HAM_{i:07d},ISIC_{i:07d},{['nv', 'mel', 'bkl'][i % 3]},histo,50.0\n")
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age\n"
                                                 + "".join(rows))
    for name in others:
        (root / name).write_text("pixel0000,pixel0001,label\n1,2,0\n3,4,1\n")
    inv = _find(root)
    assert inv.layout == "csv" and inv.labels_file == "HAM10000_metadata.csv"
    assert inv.classes == ["bkl", "mel", "nv"] and len(inv.items) == 12
    assert dict(inv.items)["HAM10000_images_part_2/ISIC_0000007.jpg"] == "mel"


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("zipped", [False, True])
def test_an_id_naming_copies_of_one_image_labels_it_once(tmp_path, explicit, zipped):
    # Kaggle's HAM10000 holds each part folder twice (HAM10000_images_part_1/ and the
    # lower-case ham10000_images_part_1/, byte for byte): every id named two files, so every
    # row was ambiguous-id, the CSV was passed over, and the split failed in every mode.
    root = tmp_path / "d"
    rows = []
    for i in range(12):
        path = root / f"HAM10000_images_part_{1 + i // 6}" / f"ISIC_{i:07d}.jpg"
        _img(path, seed=i)
        copy = root / f"ham10000_images_part_{1 + i // 6}" / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
        rows.append(f"HAM_{i:07d},ISIC_{i:07d},{['nv', 'mel', 'bkl'][i % 3]},histo,50.0\n")
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx,dx_type,age\n"
                                                 + "".join(rows))
    (root / "hmnist_8_8_L.csv").write_text("pixel0000,pixel0001,label\n1,2,0\n3,4,1\n")
    # One id whose two files differ is still ambiguous.
    _img(root / "other" / "ISIC_0000003.jpg", seed=99)
    options = ({"layout": "csv", "labels": "HAM10000_metadata.csv", "id_column": "image_id",
                "label_column": "dx"} if explicit else {})
    # Kaggle's download is a zip: the copies must be told there too (they were not).
    source = shutil.make_archive(str(tmp_path / "d"), "zip", root) if zipped else root
    inv = _find(source, **options)
    assert inv.layout == "csv" and inv.labels_file == "HAM10000_metadata.csv"
    assert inv.classes == ["bkl", "mel", "nv"] and len(inv.items) == 11
    assert dict(inv.items)["HAM10000_images_part_2/ISIC_0000007.jpg"] == "mel"
    copies = {s.source: s.detail for s in inv.skipped if s.reason == "duplicate"}
    assert copies["ham10000_images_part_2/ISIC_0000007.jpg"] == (
        "same content as HAM10000_images_part_2/ISIC_0000007.jpg, which HAM10000_metadata.csv "
        "labels")
    assert len(copies) == 11
    assert [s.source for s in inv.skipped if s.reason == "ambiguous-id"] == ["ISIC_0000003"]


def test_a_csv_whose_every_id_names_several_files_says_so(tmp_path):
    # "no labelled images for the csv layout; expected a labels CSV whose ids name image
    # files", when every id did name files: two each, of other content.
    root = tmp_path / "d"
    for i in range(4):
        for part in ("a", "b"):
            _img(root / part / f"{i}.jpg", seed=10 * i + len(part) + (part == "b"))
    (root / "labels.csv").write_text("id,label\n0,x\n1,y\n2,x\n3,y\n")
    with pytest.raises(LayoutError, match=r"\(4 of its ids each name several files, such as "
                                          r"0: a/0\.jpg, b/0\.jpg; give ids that are paths "
                                          r"inside the dump, or remove the extra copies\)"):
        _find(root, layout="csv", labels="labels.csv")


def test_stray_csvs_whose_columns_are_no_labels_leave_the_folders_classes(tmp_path):
    # Sizes of each image (file,width,height) and credits: a label column only guessed by its
    # place does not outweigh class folders.
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    (root / "image_sizes.csv").write_text("file,width,height\n" + "".join(
        f"{c}_{i}.jpg,{375 if i else 500},333\n" for c in "ab" for i in range(3)))
    (root / "credits.csv").write_text("author,licence\nme,cc\n")
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["a", "b"]


@pytest.mark.parametrize("ids", ["NFC", "NFD"])
def test_ids_match_file_names_written_in_the_other_unicode_form(tmp_path, ids):
    # Names from a macOS archive are decomposed (NFD), ids typed in a CSV composed (NFC).
    import unicodedata

    files = [unicodedata.normalize("NFD" if ids == "NFC" else "NFC", f"crème_{i}.jpg")
             for i in range(4)]
    text = "id,label\n" + "".join(
        f"{unicodedata.normalize(ids, f'crème_{i}')},{'ab'[i % 2]}\n" for i in range(4))
    inv = _find(_csv_dump(tmp_path, text, names=files))
    assert sorted(inv.items) == sorted((f"images/{f}", "ab"[i % 2]) for i, f in enumerate(files))
    assert inv.skipped == []


@pytest.mark.parametrize("sep", [";", "\t"])
def test_csv_separated_by_semicolons_or_tabs_is_found_in_auto_mode(tmp_path, sep):
    text = "id,label\n1,cat\n2,dog\n3,cat\n4,dog\n".replace(",", sep)
    inv = _find(_csv_dump(tmp_path, text))  # it used to give one class, "images"
    assert inv.layout == "csv"
    assert dict(inv.items) == {"images/1.jpg": "cat", "images/2.jpg": "dog",
                               "images/3.png": "cat", "images/4.jpg": "dog"}


def test_separators_inside_quotes_do_not_decide_the_csv_separator(tmp_path):
    text = ('1.jpg,cat,"indoor; tabby; asleep; sofa"\n2.jpg,dog,park\n3.png,cat,x\n'
            '4.jpg,dog,y\n')
    inv = _find(_csv_dump(tmp_path, text))
    assert inv.layout == "csv" and inv.classes == ["cat", "dog"]


def test_csv_without_header_and_with_extensions(tmp_path):
    root = _csv_dump(tmp_path, "1.jpg,cat\n2.jpg,dog\n3.png,cat\n4.jpg,dog\n")
    inv = _find(root, layout="csv")
    assert dict(inv.items) == {"images/1.jpg": "cat", "images/2.jpg": "dog",
                               "images/3.png": "cat", "images/4.jpg": "dog"}


def test_csv_without_header_whose_first_row_names_a_missing_file(tmp_path):
    # The first row is data (its label is one of the others'): it is reported, not eaten as a
    # header; a real header with unknown names is still recognised as one.
    root = _csv_dump(tmp_path, "9.jpg,cat\n1.jpg,cat\n2.jpg,dog\n3.png,cat\n4.jpg,dog\n")
    inv = _find(root, layout="csv")
    assert len(inv.items) == 4
    assert {(s.source, s.reason) for s in inv.skipped} == {("9.jpg", MISSING_FILE)}
    (root / "labels.csv").write_text("picture,kind\n1.jpg,cat\n2.jpg,dog\n3.png,cat\n")
    inv = _find(root, layout="csv")
    assert dict(inv.items) == {"images/1.jpg": "cat", "images/2.jpg": "dog",
                               "images/3.png": "cat"}
    assert {s.reason for s in inv.skipped} == {UNLABELLED}  # 4.jpg has no row


def test_csv_named_columns_and_bom(tmp_path):
    text = "\ufeffbreed,fname,notes\ncat,1,x\ndog,2.jpg,y\ncat,3,z\ndog,4,w\n"
    root = _csv_dump(tmp_path, text)
    inv = _find(root, id_column="fname", label_column="breed")
    assert dict(inv.items) == {"images/1.jpg": "cat", "images/2.jpg": "dog",
                               "images/3.png": "cat", "images/4.jpg": "dog"}
    inv = _find(root, id_column=1, label_column=0)
    assert len(inv.items) == 4
    with pytest.raises(UsageError, match="'kind' is not a column"):
        _find(root, id_column="fname", label_column="kind")


def test_csv_bad_rows_are_reported(tmp_path):
    text = ("id,label\n1,cat\n2,dog\n3,cat\n3,dog\n9,cat\nlonely\n4,../up\n")
    root = _csv_dump(tmp_path, text, names=("1.jpg", "2.jpg", "3.png", "4.jpg", "5.jpg"))
    inv = _find(root)
    assert dict(inv.items) == {"images/1.jpg": "cat", "images/2.jpg": "dog"}
    reasons = {(s.source, s.reason) for s in inv.skipped}
    assert reasons == {
        ("images/3.png", LABEL_CONFLICT),     # two rows, two labels
        ("9", MISSING_FILE),                  # a row with no file
        ("labels.csv line 7", "bad-row"),     # one column only
        ("images/4.jpg", BAD_LABEL),          # not a folder-safe name
        ("images/5.jpg", UNLABELLED),         # a file with no row
    }
    missing = next(s for s in inv.skipped if s.reason == MISSING_FILE)
    assert "line 6" in missing.detail


def test_csv_ambiguous_id(tmp_path):
    root = _csv_dump(tmp_path, "id,label\n1,cat\n2,dog\n", names=("1.jpg", "1.png", "2.jpg"))
    inv = _find(root, layout="csv")
    assert ("1", AMBIGUOUS_ID) in {(s.source, s.reason) for s in inv.skipped}
    assert dict(inv.items) == {"images/2.jpg": "dog"}


def test_ids_naming_a_file_in_a_test_folder_too_take_the_labelled_one(tmp_path):
    # Kaggle's CIFAR-10: train/1.png ... and test/1.png ... (its ids run past train's), with
    # trainLabels.csv naming ids without extension. Every row named two files: nothing was
    # labelled, in auto mode or with --labels.
    root = tmp_path / "cifar"
    for k in range(1, 7):
        _img(root / "train" / f"{k}.png", seed=k)
    for k in range(1, 10):
        _img(root / "test" / f"{k}.png", seed=20 + k)
    (root / "trainLabels.csv").write_text("id,label\n" + "".join(
        f"{k},{'cat' if k % 2 else 'dog'}\n" for k in range(1, 7)))
    (root / "sampleSubmission.csv").write_text("id,label\n" + "".join(
        f"{k},cat\n" for k in range(1, 10)))
    for given in ({}, {"labels": "trainLabels.csv"}):
        inv = _find(root, **given)
        assert inv.layout == "csv" and inv.labels_file == "trainLabels.csv"
        assert dict(inv.items) == {f"train/{k}.png": "cat" if k % 2 else "dog"
                                   for k in range(1, 7)}, given
        assert _reasons(inv) == {f"test/{k}.png": UNLABELLED for k in range(1, 10)}
    # A CSV named for the test split labels the test folder's files, not train's.
    (root / "test.csv").write_text("id,label\n1,dog\n2,cat\n")
    inv = _find(root, labels="test.csv")
    assert dict(inv.items) == {"test/1.png": "dog", "test/2.png": "cat"}
    # Two files in the split the CSV names stay ambiguous.
    _img(root / "train" / "more" / "1.png", seed=40)
    inv = _find(root, labels="trainLabels.csv")
    assert ("1", AMBIGUOUS_ID) in {(s.source, s.reason) for s in inv.skipped}
    # Split folders named with other words (Stanford Cars: cars_train/cars_train/00001.jpg and
    # cars_test/cars_test/00001.jpg, labelled by anno_train.csv without a header).
    cars = tmp_path / "cars"
    for k in range(1, 4):
        _img(cars / "cars_train" / "cars_train" / f"{k:05d}.jpg", seed=50 + k)
        _img(cars / "cars_test" / "cars_test" / f"{k:05d}.jpg", seed=60 + k)
    (cars / "cardatasetcsv").mkdir()
    (cars / "cardatasetcsv" / "anno_train.csv").write_text("".join(
        f"{k:05d}.jpg,39,116,569,375,{k % 2 + 1}\n" for k in range(1, 4)))
    inv = _find(cars, labels=cars / "cardatasetcsv" / "anno_train.csv", label_column=5)
    assert dict(inv.items) == {f"cars_train/cars_train/{k:05d}.jpg": str(k % 2 + 1)
                               for k in range(1, 4)}
    # Not a folder with "test" among its words beside one without (two cameras' folders):
    # the id names two files, said so, not one picked.
    bench = tmp_path / "bench"
    for k in range(2):
        _img(bench / "test_bench" / f"{k}.png", seed=70 + k)
        _img(bench / "bench_b" / f"{k}.png", seed=80 + k)
    (bench / "labels.csv").write_text("filename,label\n0.png,a\n1.png,b\n")
    with pytest.raises(LayoutError, match=r"ids each name several files, such as 0.png"):
        _find(bench, labels="labels.csv")


def test_a_labels_csv_beside_the_folder_given_is_named_when_nothing_is_labelled(tmp_path):
    # Kaggle's dog breeds: train/<hex id>.jpg, with labels.csv (and a submission template)
    # beside train/, not in it.
    root = tmp_path / "dog"
    for i in range(4):
        _img(root / "train" / f"{i:08x}.jpg", seed=i)
    (root / "labels.csv").write_text("id,breed\n" + "".join(
        f"{i:08x},{'ab'[i % 2]}\n" for i in range(4)))
    (root / "sample_submission.csv").write_text("id,a,b\n")
    with pytest.raises(LayoutError, match=rf"if {root / 'labels.csv'} beside it labels the "
                                          r"images, give it with --labels$"):
        _find(root / "train")
    inv = _find(root / "train", labels=root / "labels.csv")
    assert len(inv.items) == 4


def test_a_labels_csv_beside_a_zip_or_a_doubled_folder_is_named(tmp_path):
    # Kaggle's Aerial Cactus: train.zip (train/<hex>.jpg inside) beside train.csv, and its
    # extracted train/train/; the folder holding both names train.csv in its advice.
    root = tmp_path / "cactus"
    for i in range(4):
        _img(root / "train" / "train" / f"{i:08x}.jpg", seed=i)
    (root / "train.csv").write_text("id,has_cactus\n" + "".join(
        f"{i:08x}.jpg,{i % 2}\n" for i in range(4)))
    (root / "sample_submission.csv").write_text("id,has_cactus\n")
    beside = rf"if {root / 'train.csv'} beside it labels the images, give it with --labels$"
    with pytest.raises(LayoutError, match=beside):
        _find(root / "train" / "train")
    archive = tmp_path / "download"
    archive.mkdir()
    _zipped(root / "train", archive / "train.zip")
    shutil.copy(root / "train.csv", archive)
    shutil.copy(root / "sample_submission.csv", archive)
    with pytest.raises(LayoutError, match=beside.replace(str(root), str(archive))):
        _find(archive / "train.zip")
    with pytest.raises(LayoutError, match=rf"split one of them, e.g. 'dsprep split "
                                          rf"{archive}/train.zip DEST --labels "
                                          rf"{archive}/train.csv'$"):
        _find(archive)
    assert len(_find(archive / "train.zip", labels=archive / "train.csv").items) == 4
    (archive / "train.csv").rename(archive / "cactus_labels.csv")  # not named for the archive
    with pytest.raises(LayoutError, match=rf"'dsprep split {archive}/train.zip DEST' \(if "
                                          rf"{archive}/cactus_labels.csv labels its images, "
                                          r"give it with --labels\)$"):
        _find(archive)


def test_the_csv_layout_asked_for_takes_the_one_table_that_labels_the_images(tmp_path,
                                                                              monkeypatch):
    # APTOS 2019: train.csv (id_code,diagnosis), test.csv (id_code), sample_submission.csv;
    # the guess takes train.csv, and so must --layout csv or --label-column diagnosis.
    root = tmp_path / "aptos"
    for i in range(4):
        _img(root / "train_images" / f"{i:04x}.png", seed=i)
        _img(root / "test_images" / f"t{i:03x}.png", seed=10 + i)
    (root / "train.csv").write_text("id_code,diagnosis\n" + "".join(
        f"{i:04x},{i % 2}\n" for i in range(4)))
    (root / "test.csv").write_text("id_code\n" + "".join(f"t{i:03x}\n" for i in range(4)))
    (root / "sample_submission.csv").write_text("id_code,diagnosis\n" + "".join(
        f"t{i:03x},0\n" for i in range(4)))
    for kwargs in ({}, {"layout": "csv"}, {"label_column": "diagnosis", "layout": "csv"},
                   {"id_column": "id_code", "layout": "csv"}):
        inv = _find(root, **kwargs)
        assert inv.labels_file == "train.csv", kwargs
        assert sorted(label for _, label in inv.items) == ["0", "0", "1", "1"], kwargs
    # A file of that name in the working folder is no --labels given twice (none was given).
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "train.csv").write_text("id,label\nx,y\n")
    monkeypatch.chdir(elsewhere)
    assert _find(root, layout="csv").labels_file == "train.csv"
    # A metadata table whose label column is only guessed by its place is not taken: ISIC's
    # metadata (image,age_approx,lesion_id) beside one-hot ground truth (without lesion_id).
    isic = tmp_path / "isic"
    for i in range(4):
        _img(isic / f"ISIC_{i:07d}.jpg", seed=i)
    (isic / "ISIC_2019_Training_GroundTruth.csv").write_text("image,MEL,NV\n" + "".join(
        f"ISIC_{i:07d},{i % 2}.0,{1 - i % 2}.0\n" for i in range(4)))
    (isic / "ISIC_2019_Training_Metadata.csv").write_text(
        "image,age_approx,lesion_id\n" + "".join(f"ISIC_{i:07d},{30 + 15 * i},L{i // 2}\n"
                                                 for i in range(4)))
    with pytest.raises(LayoutError, match="needs one labels CSV at its top"):
        _find(isic, layout="csv", group_column="lesion_id")
    assert _find(isic, layout="csv").labels_file == "ISIC_2019_Training_GroundTruth.csv"
    # A dump of some of a table's images (NIH Chest X-ray: Data_Entry_2017.csv lists 112,120,
    # one folder of them downloaded): the first rows name none of them, and it is taken.
    nih = tmp_path / "nih"
    for i in range(100, 104):
        _img(nih / "images" / f"{i:05d}.png", seed=i)
    (nih / "Data_Entry.csv").write_text("Image Index,Finding Labels\n" + "".join(
        f"{i:05d}.png,{'ab'[i % 2]}\n" for i in range(104)))
    (nih / "BBox_List.csv").write_text("Image Index,Finding Label,x\n00100.png,a,1\n")
    inv = _find(nih, layout="csv", label_column="Finding Labels")
    assert inv.labels_file == "Data_Entry.csv" and len(inv.items) == 4
    # Two tables that label the images: which one is for the user to say.
    monkeypatch.chdir(tmp_path)
    shutil.copy(root / "train.csv", root / "train_copy.csv")
    with pytest.raises(LayoutError, match=r"needs one labels CSV at its top for the csv layout "
                                          r"\(found: sample_submission.csv, test.csv, "
                                          r"train.csv, train_copy.csv\); name it with --labels"):
        _find(root, layout="csv")


def test_ordinary_dumps_beside_docs_templates_and_split_named_csvs_keep_their_labels(tmp_path):
    # Cases a first version of the dumps above got wrong.
    def labels_of(root, **kwargs):
        inv = _find(root, **kwargs)
        return inv.layout, dict(inv.items)

    # A wrapper whose labels CSV lies beside its image folders, next to a docs/ folder.
    root = tmp_path / "wrapped"
    for i in range(4):
        _img(root / "cactus" / "train" / f"{i}.jpg", seed=i)
    (root / "cactus" / "train.csv").write_text("id,label\n" + "".join(
        f"{i}.jpg,{'ab'[i % 2]}\n" for i in range(4)))
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("notes")
    assert labels_of(root) == ("csv", {f"cactus/train/{i}.jpg": "ab"[i % 2] for i in range(4)})
    # A CSV named for train whose images lie in a folder named as no split, beside a test one.
    root = tmp_path / "named"
    for i in range(4):
        _img(root / "data" / f"{i}.jpg", seed=10 + i)
        _img(root / "test_images" / f"{i}.jpg", seed=20 + i)
    (root / "train.csv").write_text("image_id,label\n" + "".join(
        f"{i}.jpg,{'ab'[i % 2]}\n" for i in range(4)))
    assert labels_of(root) == ("csv", {f"data/{i}.jpg": "ab"[i % 2] for i in range(4)})
    # One data CSV (its label column named as no usual label) beside a submission template.
    root = tmp_path / "grapheme"
    for i in range(4):
        _img(root / "train" / f"{i}.png", seed=30 + i)
    (root / "train.csv").write_text("image_id,grapheme,source\n" + "".join(
        f"{i},{'ab'[i % 2]},x\n" for i in range(4)))
    (root / "sample_submission.csv").write_text("row_id,target\n")
    assert labels_of(root) == ("csv", {f"train/{i}.png": "ab"[i % 2] for i in range(4)})


def test_a_copy_of_the_class_folders_is_found_in_a_dump_renamed_on_download(tmp_path):
    # Kaggle's flowers, downloaded as flowers-recognition.zip or extracted as flower_photos/:
    # the copy is named "flowers", the dump not; its files lie under the same paths.
    root = make_class_folders(tmp_path / "flower_photos", classes=("daisy", "rose"), per_class=2)
    for f in list(root.rglob("*.jpg")):
        target = root / "flowers" / f.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    inv = _find(root)
    assert inv.class_copy == "flowers" and inv.classes == ["daisy", "rose"]
    # Other files under class names (augmented/daisy/...) are no copy.
    other = make_class_folders(tmp_path / "aug", classes=("daisy", "rose"), per_class=2)
    make_class_folders(other / "augmented", classes=("daisy", "rose"), per_class=2, seed=50)
    for f in (other / "augmented").rglob("*.jpg"):
        f.rename(f.with_name("aug_" + f.name))
    inv = _find(other)
    assert inv.class_copy is None and inv.classes == ["augmented", "daisy", "rose"]


def test_labels_file_outside_the_source(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("x",), per_class=3)
    labels = tmp_path / "my labels.csv"
    labels.write_text("file,class\nx_0,a\nx_1,b\nx_2,a\n")
    inv = _find(root, labels=labels)
    assert inv.layout == "csv"
    assert dict(inv.items) == {"x/x_0.jpg": "a", "x/x_1.jpg": "b", "x/x_2.jpg": "a"}
    with pytest.raises(UsageError, match="not found"):
        _find(root, labels=tmp_path / "nope.csv")


def test_a_stray_csv_does_not_hijack_a_folders_dump(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=2)
    (root / "metadata.csv").write_text("photographer,licence\nann,cc-by\nbob,cc0\n")
    inv = _find(root)
    assert inv.layout == "folders" and len(inv.items) == 4


def _dogs_vs_cats(root, n_train: int, n_test: int):
    """The shape of Kaggle's dogs-vs-cats download, with its submission template."""
    for i in range(n_train):
        _img(root / "train" / f"cat.{i}.jpg", seed=i)
        _img(root / "train" / f"dog.{i}.jpg", seed=100 + i)
    for i in range(1, n_test + 1):
        _img(root / "test1" / f"{i}.jpg", seed=200 + i)
    (root / "sampleSubmission.csv").write_text(
        "id,label\n" + "".join(f"{i},0\n" for i in range(1, n_test + 1)))
    return root


def _zipped(folder, archive):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return archive


@pytest.mark.parametrize("as_zip", [False, True])
def test_a_submission_template_is_not_taken_for_labels(tmp_path, as_zip):
    # 3 cats, 3 dogs, 3 unlabelled test images: every CSV row names an image, but the CSV
    # labels 3 of 9 images, all with the same label.
    src = _dogs_vs_cats(tmp_path / "dogs-vs-cats", n_train=3, n_test=3)
    if as_zip:
        src = _zipped(src, tmp_path / "dogs-vs-cats.zip")
    inv = _find(src)
    assert inv.layout == "prefix" and inv.labels_file is None
    assert dict(inv.items) == {f"train/{c}.{i}.jpg": c for c in ("cat", "dog") for i in range(3)}
    assert _reasons(inv) == {f"test1/{i}.jpg": NO_LABEL for i in (1, 2, 3)}


def test_a_csv_with_one_label_is_not_trusted_even_when_it_covers_most_images(tmp_path):
    # 2 + 2 training images, 5 test images: the template names 5 of 9, but says "0" for all.
    inv = _find(_dogs_vs_cats(tmp_path / "d", n_train=2, n_test=5))
    assert inv.layout == "prefix" and len(inv.items) == 4


def test_a_csv_labelling_under_half_the_images_is_not_trusted(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    (root / "labels.csv").write_text("file,class\na_0,x\nb_0,y\n")  # 2 of 6, two labels
    assert _find(root).layout == "folders"
    assert _find(root, layout="csv").layout == "csv"  # still usable when asked for


@pytest.mark.parametrize("content", [b"", b"\n\n", b"x" * 200_000 + b"\n"])
def test_a_stray_empty_or_malformed_csv_is_ignored_in_auto_mode(tmp_path, content):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=2)
    (root / "notes.csv").write_bytes(content)
    inv = _find(root)
    assert inv.layout == "folders" and len(inv.items) == 4
    if not content.strip():
        with pytest.raises(LayoutError, match="notes.csv is empty"):
            _find(root, labels="notes.csv")


def test_csv_layout_without_a_csv_says_how_to_fix(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a",), per_class=1)
    with pytest.raises(LayoutError, match="--labels"):
        _find(root, layout="csv")


def test_nothing_labelled_is_an_error(tmp_path):
    _img(tmp_path / "d" / "1.jpg")
    _img(tmp_path / "d" / "2.jpg", seed=2)
    with pytest.raises(LayoutError, match="no labelled images") as info:
        _find(tmp_path / "d")
    assert "only folder" not in str(info.value)
    # One class folder alone is stepped into as a wrapper: said, with what a dump needs.
    make_class_folders(tmp_path / "one", classes=("daisy",), per_class=2)
    with pytest.raises(LayoutError, match=r"--layout \(daisy/ is the only folder of .* and holds "
                                          r"the images themselves.*two or more"):
        _find(tmp_path / "one")
    # The folders layout asked for: said too (it was a vaguer error).
    with pytest.raises(LayoutError, match=r"--layout \(daisy/ is the only folder of .*two or "
                                          r"more"):
        _find(tmp_path / "one", layout="folders")
    # Not where something else may label them: the prefix layout asked for, or a CSV passed
    # over.
    with pytest.raises(LayoutError, match="choose the layout with --layout$"):
        _find(tmp_path / "one", layout="prefix")
    (tmp_path / "one" / "daisy" / "labels.csv").write_text("id,label\ndaisy_0.jpg,a\n")
    with pytest.raises(LayoutError) as info:
        _find(tmp_path / "one")
    assert "only folder" not in str(info.value) and "labels.csv" in str(info.value)


def test_missing_source_and_non_zip_file(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(LayoutError, match="not a zip"):
        open_source(tmp_path / "f.txt")
    # A download cut short: the zip's table of contents, at its end, is missing.
    folder = make_class_folders(tmp_path / "src", classes=("a", "b"), per_class=2)
    whole = _zipped(folder, tmp_path / "whole.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(LayoutError, match="damaged or incomplete zip archive .*download it "
                                          "again"):
        open_source(tmp_path / "cut.zip")
    (tmp_path / "flowers.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(60))
    with pytest.raises(LayoutError, match="does not read in place; extract it"):
        open_source(tmp_path / "flowers.tar.gz")


def test_zip_reads_members_in_place(tmp_path):
    folder = make_class_folders(tmp_path / "src", classes=("a", "b"), per_class=2)
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, "dump/" + path.relative_to(folder).as_posix())
    with open_source(archive) as source:
        inv = find_images(source)
        assert inv.root == "dump" and inv.classes == ["a", "b"]
        assert source.read("dump/a/a_0.jpg") == (folder / "a" / "a_0.jpg").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.zip", "src"]


def test_a_zip_given_through_a_link_of_another_name_is_named_as_the_zip(tmp_path):
    # split.json records the resolved path, so both must be the same dump: the name feeds the
    # labels CSV's matching of ids from another machine and the nested-copy test.
    folder = make_class_folders(tmp_path / "src", classes=("a", "b"), per_class=2)
    archive = tmp_path / "skin.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, path.relative_to(folder).as_posix())
    link = tmp_path / "link.zip"
    link.symlink_to(archive)
    with open_source(link) as via_link, open_source(archive) as direct:
        assert via_link.name == direct.name == "skin"


def test_scan_class_folders_reports_dangling_links_when_asked(tmp_path):
    from helpers import smooth_image, write_image

    from dsprep.sources import scan_class_folders

    write_image(tmp_path / "a" / "ok.jpg", smooth_image(16, 16))
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    problems = []
    classes, items = scan_class_folders(tmp_path, problems)
    assert classes == ["a"]
    assert [p.name for p, _ in items] == ["ok.jpg"]
    assert [p.source for p in problems] == ["a/gone.jpg"]


def _kaggle_breeds(root, n_train: int = 6, n_test: int = 7):
    """Kaggle's dog-breed shape: labels.csv (id,breed) for train/<hash>.jpg, beside an
    unlabelled test/ of slightly more images."""
    rows = ["id,breed"]
    for i in range(n_train):
        _img(root / "train" / f"{i:04x}beef.jpg", seed=i)
        rows.append(f"{i:04x}beef,{('pug', 'beagle', 'boxer')[i % 3]}")
    for i in range(n_test):
        _img(root / "test" / f"{i:04x}cafe.jpg", seed=100 + i)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_labels_csv_for_train_beside_an_unlabelled_test_folder_is_used(tmp_path):
    # The CSV labels 6 of 13 images: all of train/, none of test/. It used to give the
    # classes "test" and "train".
    inv = _find(_kaggle_breeds(tmp_path / "d"))
    assert inv.layout == "csv" and inv.classes == ["beagle", "boxer", "pug"]
    assert len(inv.items) == 6 and all(rel.startswith("train/") for rel, _ in inv.items)
    assert {(s.source, s.reason, s.detail) for s in inv.skipped} == {
        (f"test/{i:04x}cafe.jpg", UNLABELLED, "labels.csv names no image in test/")
        for i in range(7)}


def test_a_csv_labelling_one_small_folder_does_not_take_over_the_class_folders(tmp_path):
    root = tmp_path / "d"
    for label in ("cat", "dog"):
        for i in range(6):
            _img(root / label / f"{label}{i}.jpg", seed=i + (10 if label == "dog" else 0))
    rows = ["image,label"]
    for i in range(3):
        _img(root / "extra" / f"x{i}.jpg", seed=40 + i)
        rows.append(f"extra/x{i}.jpg,{'ab'[i % 2]}")
    (root / "notes.csv").write_text("\n".join(rows) + "\n")
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["cat", "dog", "extra"]


def test_folders_named_as_splits_beside_an_untrusted_csv_are_not_taken_for_classes(tmp_path):
    # A CSV labelling too few images of train/ to be trusted: the folders must not silently
    # become the classes "test" and "train".
    root = _kaggle_breeds(tmp_path / "d")
    for i in range(6, 20):
        _img(root / "train" / f"{i:04x}beef.jpg", seed=i)
    with pytest.raises(LayoutError, match=r"test/, train/ are named as splits.*--layout csv"):
        _find(root)
    assert _find(root, layout="folders").classes == ["test", "train"]
    assert _find(root, layout="csv").classes == ["beagle", "boxer", "pug"]


def test_csv_ids_written_inside_a_single_wrapper_folder_are_found(tmp_path):
    # d/ds/labels.csv names ds/images/p0/view.jpg: relative to the dump, not to ds/.
    rows = ["path,label"]
    for i in range(4):
        _img(tmp_path / "d" / "ds" / "images" / f"p{i}" / "view.jpg", seed=i)
        rows.append(f"ds/images/p{i}/view{'.jpg' if i % 2 else ''},{'xy'[i % 2]}")
    (tmp_path / "d" / "ds" / "labels.csv").write_text("\n".join(rows) + "\n")
    for kwargs in ({}, {"layout": "csv"}, {"labels": "ds/labels.csv"}):
        inv = _find(tmp_path / "d", **kwargs)
        assert inv.layout == "csv" and inv.root == "ds"
        assert inv.items == [(f"ds/images/p{i}/view.jpg", "xy"[i % 2]) for i in range(4)]


def test_a_csv_naming_only_missing_files_says_so(tmp_path):
    root = _csv_dump(tmp_path, "id,label\nimg/1.jpg,cat\nimg/2.jpg,dog\n")
    with pytest.raises(LayoutError, match=r"no row of labels.csv names an image file .*'img/1"
                                          r".*column 'id'.*--id-column"):
        _find(root, layout="csv")


def test_an_image_column_is_the_id_beside_a_column_named_id(tmp_path):
    # Kaggle's humpback whales: Image,Id where Id is the whale (the label).
    rows = ["Image,Id"] + [f"{i}.jpg,w_{i % 2}" for i in (1, 2, 3, 4)]
    names = ("1.jpg", "2.jpg", "3.jpg", "4.jpg")
    inv = _find(_csv_dump(tmp_path, "\n".join(rows) + "\n", names=names))
    assert inv.layout == "csv"
    assert dict(inv.items) == {"images/1.jpg": "w_1", "images/2.jpg": "w_0",
                               "images/3.jpg": "w_1", "images/4.jpg": "w_0"}


def test_a_metadata_csv_is_labelled_by_its_first_repeating_column_not_named_like_an_id(
        tmp_path):
    # HAM10000's metadata: lesion_id,image_id,dx,... with about 1.3 images per lesion. The
    # labels are dx; lesion_id (the first column) used to be taken, a class per lesion.
    names = tuple(f"ISIC_{i:07d}.jpg" for i in range(8))
    dx = ["nv", "nv", "mel", "nv", "bkl", "mel", "nv", "bkl"]
    rows = ["lesion_id,image_id,dx,dx_type,age"] + [
        f"HAM_{i - i // 3:07d},{name[:-4]},{d},histo,{40 + 5 * (i % 2)}.0"
        for i, (name, d) in enumerate(zip(names, dx, strict=True))]
    inv = _find(_csv_dump(tmp_path, "\n".join(rows) + "\n", names=names))
    assert inv.layout == "csv" and inv.classes == ["bkl", "mel", "nv"]
    assert dict(inv.items) == {f"images/{n}": d for n, d in zip(names, dx, strict=True)}
    assert inv.labels_columns == "ids in 'image_id', labels in 'dx'"


@pytest.mark.parametrize("header, rows, expected", [
    # A label column named like an id beside another repeating column stays the label.
    ("file_name,category_id,source",
     [f"{i}.jpg,{i % 2},cam{'AB'[i // 3]}" for i in (1, 2, 3, 4)], "category_id"),
    # Number labels beside numbered images (1.jpg): still the second column.
    ("img,grade,site", [f"{i},{i % 2},{'xy'[i // 3]}" for i in (1, 2, 3, 4)], "grade"),
])
def test_without_a_label_name_the_second_column_is_the_labels(tmp_path, header, rows,
                                                                expected):
    inv = _find(_csv_dump(tmp_path, "\n".join([header, *rows]) + "\n"), layout="csv")
    assert inv.labels_columns.endswith(f"labels in {expected!r}")
    assert inv.classes == ["0", "1"]


def test_a_header_shorter_than_its_rows_is_described_by_column_numbers(tmp_path):
    inv = _find(_csv_dump(tmp_path, "filename\n1.jpg,cat\n2.jpg,dog\n3.png,cat\n4.jpg,dog\n"))
    assert inv.layout == "csv" and inv.labels_columns == "ids in 'filename', labels in column 1"


def test_ids_matching_only_forgivingly_still_choose_the_id_column_and_the_header(tmp_path):
    names = ("1.jpg", "2.jpg", "3.png", "4.jpg")
    # Two id-named columns: the one naming the images (in another case) is the id.
    rows = ["Image,Id"] + [f"{n.upper()},w_{i % 2}" for i, n in enumerate(names)]
    inv = _find(_csv_dump(tmp_path / "a", "\n".join(rows) + "\n", names=names), layout="csv")
    assert inv.labels_columns == "ids in 'Image', labels in 'Id'" and len(inv.items) == 4
    # Headerless, ids written on another machine, a label per row: the first row is data.
    rows = [f"/home/me/d/images/{n},c{i}" for i, n in enumerate(names)]
    inv = _find(_csv_dump(tmp_path / "b", "\n".join(rows) + "\n", names=names), layout="csv")
    assert inv.labels_columns == "ids in column 0, labels in column 1"
    assert dict(inv.items)["images/1.jpg"] == "c0" and len(inv.items) == 4


def test_forgiving_matches_never_serve_a_csv_whose_ids_mostly_match(tmp_path):
    # Oxford pets: list.csv names images/*.jpg; images/boxer_4.jpg is missing, and the trimap
    # annotations/trimaps/boxer_4.png must not take its row (without its extension).
    root = tmp_path / "pets"
    for i in range(4):
        _img(root / "images" / f"boxer_{i}.jpg", seed=i)
        _img(root / "annotations" / "trimaps" / f"boxer_{i}.png", seed=10 + i)
    _img(root / "annotations" / "trimaps" / "boxer_4.png", seed=20)
    rows = ["image,label"] + [f"boxer_{i}.jpg,{'ab'[i % 2]}" for i in range(5)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    inv = _find(root, layout="csv", labels=tmp_path / "list.csv")
    assert dict(inv.items) == {f"images/boxer_{i}.jpg": "ab"[i % 2] for i in range(4)}
    assert ("boxer_4.jpg", MISSING_FILE) in {(s.source, s.reason) for s in inv.skipped}


def test_a_foreign_path_matches_only_after_the_dumps_own_name(tmp_path):
    # The dump is train/; ids of the test split share its names under test/images/.
    root = tmp_path / "train"
    for i in range(3):
        _img(root / "images" / f"{i}.jpg", seed=i)
    (tmp_path / "all.csv").write_text(
        "path,label\n" + "".join(f"/content/ds/{split}/images/{i}.jpg,{split[:2]}{i % 2}\n"
                                  for split in ("train", "test") for i in range(3)))
    inv = _find(root, layout="csv", labels=tmp_path / "all.csv")
    assert dict(inv.items) == {"images/0.jpg": "tr0", "images/1.jpg": "tr1",
                               "images/2.jpg": "tr0"}
    assert sum(s.reason == MISSING_FILE for s in inv.skipped) == 3


def test_a_stray_csv_matching_forgivingly_leaves_a_dump_split_into_class_folders(tmp_path):
    root = tmp_path / "pets"
    for split in ("train", "val"):
        make_class_folders(root / split, classes=("cat", "dog"), per_class=2)
    rows = ["filepath,width"] + [f"/kaggle/input/pets/{p.relative_to(root).as_posix()},640"
                                 if i % 2 else f"/kaggle/input/pets/{p.relative_to(root)},800"
                                 for i, p in enumerate(sorted(root.rglob("*.jpg")))]
    (root / "image_sizes.csv").write_text("\n".join(rows) + "\n")
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["cat", "dog"]


def test_one_hot_columns_named_class_n_stay_one_hot(tmp_path):
    rows = ["image_id,class_0,class_1,class_2"] + [
        f"{i},{int(i % 3 == 0)},{int(i % 3 == 1)},{int(i % 3 == 2)}" for i in (1, 2, 3, 4)]
    inv = _find(_csv_dump(tmp_path, "\n".join(rows) + "\n"), layout="csv")
    assert inv.classes == ["class_0", "class_1", "class_2"]


def test_a_header_naming_labels_among_its_words_is_the_label_column(tmp_path):
    # NIH ChestX-ray14's Data_Entry_2017.csv: Image Index,Finding Labels,Follow-up #,...
    rows = ["Image Index,Follow-up #,Finding Labels"] + [
        f"{n},{i},{'ab'[i % 2]}" for i, n in enumerate(("1.jpg", "2.jpg", "3.png", "4.jpg"))]
    inv = _find(_csv_dump(tmp_path, "\n".join(rows) + "\n"), layout="csv")
    assert inv.labels_columns == "ids in 'Image Index', labels in 'Finding Labels'"
    assert inv.classes == ["a", "b"] and not inv.labels_guessed


def test_a_stray_csv_matching_only_in_another_case_leaves_the_class_folders(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("cat", "dog", "fox"), per_class=3)
    rows = ["FILE,camera"] + [f"{c.upper()}_{i}.JPG,{'canon' if i else 'nikon'}"
                              for c in ("cat", "dog", "fox") for i in range(3)]
    (root / "photos.csv").write_text("\n".join(rows) + "\n")
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["cat", "dog", "fox"]


def test_csv_ids_match_in_any_case_from_other_machines_and_with_another_extension(tmp_path):
    names = ("IMG_1.JPG", "IMG_2.JPG", "p3.jpg", "p4.jpg", "p5.jpg")
    rows = ["id,label", "IMG_1.jpg,a", "images\\img_2.jpg,b",       # case, Windows separators
            "/home/alice/kaggle/d/images/p3.jpg,a",                # a path on another machine
            "C:/data/d/images/p4.png,b",                           # ... and another extension
            "p5.jpeg,a"]
    inv = _find(_csv_dump(tmp_path, "\n".join(rows) + "\n", names=names))
    assert inv.layout == "csv"
    assert dict(inv.items) == {"images/IMG_1.JPG": "a", "images/IMG_2.JPG": "b",
                               "images/p3.jpg": "a", "images/p4.jpg": "b", "images/p5.jpg": "a"}


def test_a_csv_path_naming_another_folder_does_not_take_a_namesake_image(tmp_path):
    # test/5.jpg is not in the dump; train/5.jpg, of the same name, must not get its label.
    root = tmp_path / "d"
    for i, name in enumerate(("train/5.jpg", "train/6.jpg", "train/7.jpg")):
        _img(root / name, seed=i)
    (root / "labels.csv").write_text(
        "path,label\ntrain/5.jpg,cat\ntrain/6.jpg,dog\ntrain/7.jpg,cat\n/x/test/5.jpg,dog\n")
    inv = _find(root, layout="csv")
    assert dict(inv.items) == {"train/5.jpg": "cat", "train/6.jpg": "dog", "train/7.jpg": "cat"}
    assert {(s.source, s.reason) for s in inv.skipped} == {("/x/test/5.jpg", MISSING_FILE)}
    # Nor when the dump given is train/ itself: the tail counts after the dump's own name.
    (root / "labels.csv").write_text("path,label\n/x/train/6.jpg,dog\n/x/train/7.jpg,cat\n"
                                     "/x/test/5.jpg,dog\n")
    inv = _find(root / "train", layout="csv", labels=root / "labels.csv")
    assert dict(inv.items) == {"6.jpg": "dog", "7.jpg": "cat"}
    assert {(s.source, s.reason) for s in inv.skipped} == {("/x/test/5.jpg", MISSING_FILE),
                                                           ("5.jpg", UNLABELLED)}
    # Nor when train/ is the one folder of the dump, stepped into to read the ids.
    (root / "labels.csv").unlink()
    (tmp_path / "labels.csv").write_text(
        "path,label\ntrain/5.jpg,cat\ntrain/6.jpg,dog\ntrain/7.jpg,cat\n/x/test/5.jpg,dog\n")
    inv = _find(root, layout="csv", labels=tmp_path / "labels.csv")
    assert inv.root == "train" and len(inv.items) == 3
    assert {(s.source, s.reason) for s in inv.skipped} == {("/x/test/5.jpg", MISSING_FILE)}


def test_a_csv_row_without_an_id_is_a_bad_row(tmp_path):
    inv = _find(_csv_dump(tmp_path, "id,label\n1,cat\n2,dog\n,cat\n3,cat\n4,dog\n"))
    assert len(inv.items) == 4
    assert {(s.source, s.reason) for s in inv.skipped} == {("labels.csv line 4", "bad-row")}


def test_a_bad_rows_line_counts_blank_and_quoted_lines(tmp_path):
    # Its line in the file, not its place among the rows that hold anything.
    text = 'id,label\n\n1,cat\n2,"a\nb"\n\n,cat\n3,cat\n4,dog\n'
    inv = _find(_csv_dump(tmp_path, text), layout="csv")
    assert {(s.source, s.reason) for s in inv.skipped if s.reason == "bad-row"} == {
        ("labels.csv line 7", "bad-row")}


def test_a_space_separated_list_with_comment_lines_is_read(tmp_path):
    # Oxford-IIIT Pet's annotations/list.txt: "#" lines, then "Image CLASS-ID SPECIES ...".
    root = tmp_path / "pet"
    for i, name in enumerate(("Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2")):
        _img(root / f"{name}.jpg", seed=i)
    lists = tmp_path / "list.txt"
    lists.write_text("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
                     "Abyssinian_1 1 1 1\nAbyssinian_2  1 1 1 \nbeagle_1 2 2 1\n"
                     "beagle_2\n")
    inv = _find(root, layout="csv", labels=lists)
    assert inv.items == [("Abyssinian_1.jpg", "1"), ("Abyssinian_2.jpg", "1"),
                         ("beagle_1.jpg", "2")]
    assert {(s.source, s.reason) for s in inv.skipped} == {
        (f"{lists} line 6", "bad-row"), ("beagle_2.jpg", "unlabelled")}
    # A blank line before the first row, as before a CSV's (it crashed the comment check).
    blank = tmp_path / "blank.txt"
    blank.write_text("\n" + lists.read_text())
    assert _find(root, layout="csv", labels=blank).items == inv.items
    species = _find(root, layout="csv", labels=lists, label_column=2)
    assert [label for _, label in species.items] == ["1", "1", "2"]
    # Names with spaces in such a list cannot be told from its fields: the error says how the
    # fields were read.
    for i in range(2):
        _img(tmp_path / "spaced" / f"my cat {i}.jpg", seed=i)
    (tmp_path / "spaced.txt").write_text("my cat 0.jpg cat\nmy cat 1.jpg cat\n")
    with pytest.raises(LayoutError, match="its fields were taken as separated by spaces"):
        _find(tmp_path / "spaced", layout="csv", labels=tmp_path / "spaced.txt")


def test_a_csv_header_written_after_a_hash_and_a_title_line_are_read_as_before(tmp_path):
    # numpy.savetxt writes "# image,width,label": the header, not a comment, in a CSV.
    inv = _find(_csv_dump(tmp_path, "# image,width,label\n1,40,cat\n2,41,dog\n3,42,cat\n"
                                    "4,43,dog\n"), layout="csv")
    assert inv.labels_columns == "ids in '# image', labels in 'label'"
    assert sorted({label for _, label in inv.items}) == ["cat", "dog"]
    # A title line of words without a comma does not make the file one of spaces.
    root = tmp_path / "t"
    for i in range(4):
        _img(root / "images" / f"{i}.jpg", seed=i)
    (root / "labels.csv").write_text("Labels for my dataset\nimage,label\n0,cat\n1,dog\n"
                                     "2,cat\n3,dog\n")
    inv = _find(root, layout="csv")
    assert sorted(label for _, label in inv.items) == ["cat", "cat", "dog", "dog"]


@pytest.mark.parametrize("header, group, words", [
    ("image,lesion_id,finding", "lesion_id", "ids in 'image', labels in 'finding', groups in "
                                             "'lesion_id'"),
    ("lesion,file_path,class", "lesion", "ids in 'file_path', labels in 'class', groups in "
                                         "'lesion'"),
])
def test_the_id_and_label_columns_are_guessed_among_the_others_than_the_groups(tmp_path, header,
                                                                              group, words):
    names = header.split(",")
    rows = [dict(zip(names, ("", "", ""), strict=True)) for _ in range(4)]
    for i, row in enumerate(rows):
        row.update({names[0] if "lesion" not in names[0] else names[1]: f"{i + 1}.jpg"})
        row.update({n: f"L{i // 2}" for n in names if "lesion" in n})
        row.update({names[2]: ("cat", "dog")[i % 2]})
    text = header + "\n" + "".join(",".join(r[n] for n in names) + "\n" for r in rows)
    inv = _find(_csv_dump(tmp_path, text, names=("1.jpg", "2.jpg", "3.jpg", "4.jpg")),
                layout="csv", group_column=group)
    assert inv.labels_columns == words
    assert inv.group_given and inv.groups == {"images/1.jpg": "L0", "images/2.jpg": "L0",
                                              "images/3.jpg": "L1", "images/4.jpg": "L1"}


def test_a_yes_no_column_named_as_a_group_groups_nothing(tmp_path):
    text = "image_id,label,person\n1,cat,1\n2,dog,0\n3,cat,1\n4,dog,0\n"
    inv = _find(_csv_dump(tmp_path, text, names=("1.jpg", "2.jpg", "3.jpg", "4.jpg")))
    assert inv.layout == "csv" and inv.groups == {} and inv.group_column is None


@pytest.mark.parametrize("name, groups", [
    ("lesion_id", True), ("patient_id", True), ("Patient ID", True), ("patientId", True),
    ("patientid", True), ("PatientID", True), ("subject", False), ("subject_id", True),
    ("person", False), ("group_id", True),
    ("case_id", True), ("study_id", True), ("source_image", True), ("individual_id", True),
    ("patient_sex", False), ("patient_age", False), ("age_group", False), ("source", False),
    ("group", False), ("image_id", False), ("dx", False), ("image_source", False),
    ("source_name", False), ("group_name", False), ("file_source", False),
    ("SeriesNumber", False), ("original_image", True), ("case_number", True),
    ("Case No", True), ("series_id", False),
])
def test_columns_named_as_groups_of_images(name, groups):
    assert sources_module._names_group(name) is groups


def test_class_folders_of_images_beside_masks_give_the_images_alone(tmp_path):
    # COVID-19 Radiography: <class>/images/ and <class>/masks/ of the same names.
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for c, name in enumerate(("COVID", "Viral Pneumonia")):
        for i in range(2):
            _img(root / name / "images" / f"{name}-{i}.png", seed=10 * c + i)
            _img(root / name / "masks" / f"{name}-{i}.png", seed=50 + 10 * c + i)
    inv = _find(root)
    assert inv.items == [(f"{n}/images/{n}-{i}.png", n) for n in ("COVID", "Viral Pneumonia")
                         for i in range(2)]
    assert {(s.source, s.reason) for s in inv.skipped} == {
        (f"{n}/masks/{n}-{i}.png", "mask") for n in ("COVID", "Viral Pneumonia")
        for i in range(2)}
    assert next(s.detail for s in inv.skipped) == (
        "in COVID/masks/, beside the class's images in COVID/images/")
    # Class by class: a class without masks is read whole; an image straight in a class
    # folder (a preview) stays an image of the class, its masks still left out; a stray image
    # beside the classes changes nothing.
    _img(root / "Normal" / "images" / "Normal-0.png", seed=90)
    _img(root / "COVID" / "COVID-9.png", seed=91)
    _img(root / "preview.png", seed=92)
    inv = _find(root)
    assert {s.source for s in inv.skipped if s.reason == "mask"} == {
        f"{n}/masks/{n}-{i}.png" for n in ("COVID", "Viral Pneumonia") for i in range(2)}
    assert ("Normal/images/Normal-0.png", "Normal") in inv.items
    assert ("COVID/COVID-9.png", "COVID") in inv.items
    # Named in CamelCase (LungMask/), a folder of masks still; with_mask/ (people wearing
    # one) is a folder of pictures.
    (root / "Viral Pneumonia" / "masks").rename(root / "Viral Pneumonia" / "LungMask")
    (root / "COVID" / "masks").rename(root / "COVID" / "with_mask")
    inv = _find(root)
    assert {s.source for s in inv.skipped if s.reason == "mask"} == {
        f"Viral Pneumonia/LungMask/Viral Pneumonia-{i}.png" for i in range(2)}


@pytest.mark.parametrize("name, masks", [
    ("masks", True), ("lung masks", True), ("infection masks", True), ("LungMask", True),
    ("CXRMasks", True), ("masks_png", True), ("mask_images", True), ("masks (copy)", True),
    ("GT_png", True), ("annotations_xml", True), ("with_mask", False), ("no_masks", False),
    ("images", False), ("thumbnails", False),
])
def test_folders_named_as_masks(name, masks):
    assert sources_module._mask_folder(name) is masks


def test_masks_in_a_dump_already_split_and_in_folders_named_of_masks_are_left_out(tmp_path):
    # COVID-QU-Ex: Lung Segmentation Data/{Train,Val,Test}/<class>/{images,lung masks,
    # infection masks}/.
    root = tmp_path / "qu" / "Lung Segmentation Data"
    n = 0
    for split in ("Train", "Test"):
        for name in ("COVID-19", "Normal"):
            for folder in ("images", "lung masks", "infection masks"):
                for i in range(2):
                    _img(root / split / name / folder / f"{name}_{i}.png", seed=n)
                    n += 1
    inv = _find(tmp_path / "qu")
    assert len(inv.items) == 8 and all("/images/" in rel for rel, _ in inv.items)
    assert sorted({s.reason for s in inv.skipped}) == ["mask"]
    assert len(inv.skipped) == 16
    # A folder of class folders, as build-hdf5 and DirectoryGenerator read it: the same.
    problems = []
    classes, pairs = sources_module.class_folder_files(root / "Train", problems)
    assert classes == ["COVID-19", "Normal"] and len(pairs) == 4
    assert all("/images/" in rel for _, rel in pairs)
    assert [p.reason for p in problems] == ["mask"] * 8
    assert problems[0].detail.startswith("in COVID-19/")


def test_a_group_column_named_as_ids_is_taken_where_another_column_holds_the_ids(tmp_path):
    # Faces: filename,label,name, the name a person's: the ids are in filename.
    text = "filename,label,name\n1.jpg,a,ann\n2.jpg,b,ann\n3.png,a,bob\n4.jpg,b,bob\n"
    inv = _find(_csv_dump(tmp_path, text), group_column="name")
    assert inv.labels_columns == "ids in 'filename', labels in 'label', groups in 'name'"


def test_a_dump_of_pixel_tables_is_said_to_hold_no_image_files(tmp_path):
    # Fashion-MNIST on Kaggle: label,pixel1..pixel784 per row, and no image file.
    root = tmp_path / "fashion"
    root.mkdir()
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    (root / "fashion-mnist_train.csv").write_text(header + "\n" + ",".join(["0"] * 785) + "\n")
    with pytest.raises(LayoutError, match="fashion-mnist_train.csv holds images as pixel "
                                          "values, one per row, which dsprep does not read"):
        _find(root)
    # FER2013: emotion,pixels,Usage, the pixels of an image in one column.
    (root / "fashion-mnist_train.csv").unlink()
    (root / "fer2013.csv").write_text("emotion,pixels,Usage\n0,70 80 82,Training\n")
    with pytest.raises(LayoutError, match="fer2013.csv holds images as pixel values"):
        _find(root)


def test_a_stray_csv_of_class_descriptions_leaves_the_folders_layout(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=2)
    (root / "classes.csv").write_text("class,description\na,apples\nb,bananas\n")
    inv = _find(root)  # it used to fail on options nobody gave
    assert inv.layout == "folders" and inv.classes == ["a", "b"]
    # Named as the labels, a label column and an unnamed id column are told apart.
    (root / "classes.csv").write_text("class,picture\nx,a_0\ny,a_1\nx,b_0\ny,b_1\n")
    assert dict(_find(root, layout="csv").items) == {
        "a/a_0.jpg": "x", "a/a_1.jpg": "y", "b/b_0.jpg": "x", "b/b_1.jpg": "y"}


def test_a_metadata_csv_with_a_value_per_image_is_no_labels_file(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("cat", "dog", "fox"), per_class=6)
    rows = ["file,id"] + [f"{c}_{i}.jpg,{1000 + 6 * n + i}"
                          for n, c in enumerate(("cat", "dog", "fox")) for i in range(6)]
    (root / "photos.csv").write_text("\n".join(rows) + "\n")
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["cat", "dog", "fox"]


def test_a_sparse_image_id_csv_is_still_the_labels_and_a_passed_over_csv_is_named(tmp_path):
    # Kaggle's whales: Image,Id, most whales seen once or twice, many "new_whale".
    root = tmp_path / "d"
    rows = ["Image,Id"]
    for i in range(40):
        _img(root / f"w{i:04d}.jpg", seed=i)
        rows.append(f"w{i:04d}.jpg,{'new_whale' if i % 4 == 0 else f'whale_{i // 2}'}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    inv = _find(root)
    assert inv.layout == "csv" and len(inv.items) == 40 and "new_whale" in inv.classes
    # Labelling 10 of them only, it is passed over, and the error says so.
    (root / "train.csv").write_text("\n".join(rows[:11]) + "\n")
    with pytest.raises(LayoutError, match=r"train.csv was not taken for the labels.*"
                                          r"--layout csv reads it"):
        _find(root)
    # A CSV that is no table at all is not offered as the labels.
    (root / "train.csv").write_text("just some notes\n")
    with pytest.raises(LayoutError) as caught:
        _find(root)
    assert "not taken for the labels" not in str(caught.value)


@pytest.mark.parametrize("layout", ["auto", "csv"])
@pytest.mark.parametrize("option", ["id_column", "label_column"])
def test_a_column_index_past_the_csv_is_a_usage_error(tmp_path, layout, option):
    root = _csv_dump(tmp_path, "id,label,extra\n1,cat,x\n2,dog,y\n3,cat,z\n4,dog,w\n")
    with pytest.raises(UsageError, match=r"5 is not a column of labels.csv: it has 3 "
                                         r"\(first row: id,label,extra\)"):
        _find(root, layout=layout, **{option: 5})


def test_a_column_given_in_auto_mode_means_the_csv_layout(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    (root / "labels.csv").write_text("file,class\na_0,x\nb_0,y\n")  # 2 of 6: no guess
    inv = _find(root, label_column="class")
    assert inv.layout == "csv" and dict(inv.items) == {"a/a_0.jpg": "x", "b/b_0.jpg": "y"}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-8"])
def test_csv_with_a_byte_order_mark_is_decoded(tmp_path, encoding):
    # Excel's "Unicode text" and PowerShell 5 write UTF-16 with a BOM (and Excel tabs).
    root = _csv_dump(tmp_path, "")
    text = "\ufeffid\tlabel\n1\tchat\n2\tchien\n3\tchat\n4\tchien\n"
    (root / "labels.csv").write_bytes(text.encode(encoding))
    for layout in ("auto", "csv"):
        inv = _find(root, layout=layout)
        assert inv.layout == "csv" and dict(inv.items) == {
            "images/1.jpg": "chat", "images/2.jpg": "chien", "images/3.png": "chat",
            "images/4.jpg": "chien"}


def test_csv_in_the_windows_code_page_keeps_its_letters(tmp_path):
    # Windows-1252 was read as Latin-1: "cœur" became "c\x9cur", a control character in a
    # class name and folder; Latin-1 text reads as it did.
    root = _csv_dump(tmp_path, "")
    text = "id,label\n1,c\u0153ur\n2,l\u2019\u00e9t\u00e9\n3,c\u0153ur\n4,na\u00efve\n"
    (root / "labels.csv").write_bytes(text.encode("cp1252"))
    inv = _find(root, layout="csv")
    assert dict(inv.items) == {"images/1.jpg": "c\u0153ur", "images/2.jpg": "l\u2019\u00e9t\u00e9",
                               "images/3.png": "c\u0153ur", "images/4.jpg": "na\u00efve"}
    # A byte Windows-1252 leaves undefined (0x81): Latin-1, and its control character is no
    # folder name.
    (root / "labels.csv").write_bytes(b"id,label\n1,a\x81b\n2,caf\xe9\n3,caf\xe9\n4,caf\xe9\n")
    inv = _find(root, layout="csv")
    assert dict(inv.items) == {"images/2.jpg": "caf\u00e9", "images/3.png": "caf\u00e9",
                               "images/4.jpg": "caf\u00e9"}
    assert [(p.source, p.reason) for p in inv.skipped if p.reason == "bad-label"] == [
        ("images/1.jpg", "bad-label")]


def _break_member(archive, member: str, how: str) -> None:
    """Damage one member of a zip written by zipfile: garble its data, or mark it as packed
    with Deflate64 (method 9) or as encrypted, in the central directory and local header."""
    with zipfile.ZipFile(archive) as zf:
        info, central = zf.getinfo(member), zf.start_dir
    data = bytearray(archive.read_bytes())
    local = info.header_offset
    entry = data.index(member.encode(), central) - 46  # the central directory entry
    if how == "damaged":
        name_len, extra_len = struct.unpack("<HH", data[local + 26:local + 30])
        start = local + 30 + name_len + extra_len
        data[start:start + info.compress_size] = b"\xff" * info.compress_size  # bad block type
    elif how == "garbled":  # past the compressor's own header
        name_len, extra_len = struct.unpack("<HH", data[local + 26:local + 30])
        start = local + 30 + name_len + extra_len + 20
        data[start:start + 40] = bytes(b ^ 0x5A for b in data[start:start + 40])
    elif how == "deflate64":
        data[local + 8:local + 10] = data[entry + 10:entry + 12] = struct.pack("<H", 9)
    else:
        flags = struct.unpack("<H", data[entry + 8:entry + 10])[0] | 1
        data[local + 6:local + 8] = data[entry + 8:entry + 10] = struct.pack("<H", flags)
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("how, message, method", [
    ("damaged", "damaged archive member", zipfile.ZIP_DEFLATED),
    ("damaged", "damaged archive member", zipfile.ZIP_LZMA),
    ("garbled", "damaged archive member", zipfile.ZIP_LZMA),
    ("damaged", "Invalid data stream", zipfile.ZIP_BZIP2),  # bz2's own OSError
    ("deflate64", "unpack the archive", zipfile.ZIP_DEFLATED),
    ("encrypted", "password", zipfile.ZIP_DEFLATED),
])
def test_an_unreadable_zip_member_is_an_os_error(tmp_path, how, message, method):
    folder = make_class_folders(tmp_path / "src", classes=("a", "b"), per_class=2)
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w", method) as zf:
        for path in sorted(folder.rglob("*.jpg")):
            zf.write(path, path.relative_to(folder).as_posix())
    _break_member(archive, "a/a_1.jpg", how)
    with open_source(archive) as source:
        assert source.read("a/a_0.jpg") == (folder / "a" / "a_0.jpg").read_bytes()
        with pytest.raises(OSError, match=message):
            source.read("a/a_1.jpg")


@pytest.mark.parametrize("name, target, source, detail", [
    (b"bad\xff.jpg", b"/missing/x.jpg", "a/bad\\udcff.jpg", "points to missing /missing/x.jpg"),
    (b"link.jpg", b"/missing/\xff.jpg", "a/link.jpg", "points to missing /missing/\\udcff.jpg"),
])
def test_dangling_links_with_names_that_are_not_utf8_are_reported_as_text(
        tmp_path, name, target, source, detail):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=1)
    os.symlink(target, os.path.join(os.fsencode(root / "a"), name))
    inv = _find(root)
    assert [(s.source, s.reason, s.detail) for s in inv.skipped] == [
        (source, DANGLING_LINK, detail)]


@pytest.mark.parametrize("link", ["kitten", "animal"])
@pytest.mark.parametrize("listed", ["by name", "reversed"])
def test_a_link_to_a_class_folder_gives_the_same_classes_whatever_the_listing_order(
        tmp_path, monkeypatch, link, listed):
    root = make_class_folders(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    os.symlink("cat", root / link)
    scandir = os.scandir

    class Listing(list):  # os.scandir's result, in the order asked for, usable in a with
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    def listing(path="."):
        with scandir(path) as entries:
            return Listing(sorted(entries, key=lambda e: e.name, reverse=listed == "reversed"))

    monkeypatch.setattr(os, "scandir", listing)
    inv = _find(root)
    assert inv.classes == ["cat", "dog"]
    assert [rel for rel, _ in inv.items] == ["cat/cat_0.jpg", "cat/cat_1.jpg", "dog/dog_0.jpg",
                                             "dog/dog_1.jpg"]


def test_a_link_inside_one_class_to_another_class_keeps_both_classes(tmp_path):
    # cat/alsodogs -> ../dog was walked before dog/ itself: dog/ was then skipped as seen, the
    # dump's classes became "alsodogs" alone and every cat image was left without a label.
    root = make_class_folders(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    os.symlink("../dog", root / "cat" / "alsodogs")
    nested = make_class_folders(tmp_path / "other", classes=("bird",), per_class=1, seed=60)
    os.symlink(nested / "bird", root / "bird")  # a link to a folder outside is still walked
    inv = _find(root, layout="folders")
    assert inv.classes == ["bird", "cat", "dog"]
    assert [rel for rel, _ in inv.items] == ["bird/bird_0.jpg", "cat/cat_0.jpg", "cat/cat_1.jpg",
                                             "dog/dog_0.jpg", "dog/dog_1.jpg"]


def test_of_two_ways_to_one_folder_the_shallower_is_kept(tmp_path):
    # A class folder that is itself a link, and a deeper link to the same folder inside another
    # class; a link to a folder and another link to a folder inside it.
    ext = make_class_folders(tmp_path / "ext", classes=("dogs", "sub"), per_class=1, seed=61)
    root = make_class_folders(tmp_path / "d", classes=("cat",), per_class=1)
    os.symlink(ext / "dogs", root / "dog")
    os.symlink(ext / "dogs", root / "cat" / "alsodogs")
    assert _find(root, layout="folders").classes == ["cat", "dog"]
    two = tmp_path / "two"
    two.mkdir()
    os.symlink(ext, two / "a")
    os.symlink(ext / "sub", two / "b")  # b, not a/sub
    inv = _find(two, layout="folders")
    assert [rel for rel, _ in inv.items] == ["a/dogs/dogs_0.jpg", "b/sub_0.jpg"]
    # A link near the top to a deeper real folder keeps no place of its own: the real one
    # is kept (a link d/cats -> train/cat took train/cat's images, then left them unlabelled).
    split = make_class_folders(tmp_path / "s" / "train", classes=("cat", "dog"), per_class=1)
    make_class_folders(split.parent / "test", classes=("cat", "dog"), per_class=1, seed=62)
    os.symlink(split / "cat", split.parent / "cats")
    inv = _find(split.parent)
    assert len(inv.items) == 4 and ("train/cat/cat_0.jpg", "cat") in inv.items


def test_jfif_and_jpe_files_are_images(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=1)
    (root / "a" / "x.jfif").write_bytes((root / "a" / "a_0.jpg").read_bytes())
    (root / "b" / "y.JPE").write_bytes((root / "b" / "b_0.jpg").read_bytes())
    inv = _find(root)
    assert ("a/x.jfif", "a") in inv.items and ("b/y.JPE", "b") in inv.items


def test_a_submission_template_for_test_only_is_not_trusted_whatever_its_labels(tmp_path):
    # Kaggle's plant seedlings: train/<class>/ and an unlabelled test/, with a template naming
    # every test image; were its labels varied, it still labels none of train/.
    root = make_class_folders(tmp_path / "d" / "train", classes=("a", "b"), per_class=3).parent
    for i in range(4):
        _img(root / "test" / f"t{i}.png", seed=50 + i)
    (root / "sample_submission.csv").write_text(
        "file,species\n" + "".join(f"t{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    inv = _find(root)
    # (test/ holds no class folder: no split folder of labelled images.)
    assert inv.layout == "folders" and inv.split_folders == ["train"]
    assert inv.classes == ["a", "b"] and len(inv.items) == 6


def test_a_submission_template_beside_the_labels_csv_leaves_it_the_labels(tmp_path):
    # Kaggle's Aerial Cactus: train.csv (id,has_cactus; ids with .jpg) beside
    # sample_submission.csv, images in train/train/ and test/test/. With the template beside
    # it, train.csv (whose label column is named as no usual label name) was not trusted.
    root = tmp_path / "cactus"
    for i in range(6):
        _img(root / "train" / "train" / f"{i:04x}.jpg", seed=i)
        _img(root / "test" / "test" / f"t{i:03x}.jpg", seed=20 + i)
    (root / "train.csv").write_text("id,has_cactus\n" + "".join(
        f"{i:04x}.jpg,{i % 2}\n" for i in range(6)))
    (root / "sample_submission.csv").write_text("id,has_cactus\n" + "".join(
        f"t{i:03x}.jpg,0.5\n" for i in range(6)))
    inv = _find(root)
    assert inv.layout == "csv" and inv.labels_file == "train.csv"
    assert dict(inv.items) == {f"train/train/{i:04x}.jpg": str(i % 2) for i in range(6)}
    # A sizes table beside class folders and a template is no labels file either.
    folders = make_class_folders(tmp_path / "sized", classes=("cat", "dog"), per_class=2)
    (folders / "image_sizes.csv").write_text("file,width,height\n" + "".join(
        f"{p.name},{40 + 10 * k},40\n" for k, p in enumerate(sorted(folders.rglob("*.jpg")))))
    (folders / "sample_submission.csv").write_text("id,label\n1,cat\n")
    inv = _find(folders)
    assert inv.layout == "folders" and inv.classes == ["cat", "dog"]
    # A template alone is still no labels file.
    (root / "train.csv").unlink()
    with pytest.raises(LayoutError, match="folders test/, train/ are named as splits"):
        _find(root)


def test_class_folders_of_numbered_names_stay_class_folders(tmp_path):
    # google_images_download's names: 1.<title>.jpg, 2.<title>.jpg, ... in each class folder.
    # They used to give the classes "1" to "6", the folders thrown away.
    root = tmp_path / "d"
    for n, cls in enumerate(("golden retriever", "pug")):
        for i in range(1, 7):
            _img(root / cls / f"{i}.photo-title-{i % 3}.jpg", seed=10 * n + i)
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["golden retriever", "pug"]
    assert len(inv.items) == 12 and not inv.skipped
    # One class folder scraped so beside class folders of other names (or of Roboflow's
    # img34_jpg.rf.<hash>.jpg): the folders are still the classes.
    plain = ("tulips/tulip_0000.jpg", "tulips/tulip_0001.jpg", "daisy/daisy_0000.jpg",
             "daisy/daisy_0001.jpg")
    for odd, names in (("roses", ("1.rose-flower.jpg", "2.red-rose.jpg", "3.rose.jpg")),
                       ("fire", ("img34_jpg.rf.0a1b2c.jpg", "img35_jpg.rf.3d4e5f.jpg"))):
        for i, name in enumerate((*plain, *(f"{odd}/{n}" for n in names))):
            _img(tmp_path / odd / name, seed=40 + i)
        inv = _find(tmp_path / odd)
        assert inv.layout == "folders" and inv.classes == sorted(["daisy", odd, "tulips"])
        assert len(inv.items) == 4 + len(names) and not inv.skipped
    # Classes that repeat in each folder are still read from the names.
    for i, name in enumerate(("train/cat.0.jpg", "train/cat.1.jpg", "train/dog.0.jpg",
                              "train/dog.1.jpg", "valid/cat.2.jpg", "valid/dog.2.jpg")):
        _img(tmp_path / "p" / name, seed=i)
    inv = _find(tmp_path / "p")
    assert inv.layout == "prefix" and inv.classes == ["cat", "dog"]


def _kaggle_paths_dump(root, folders):
    """HAM10000 as a Kaggle notebook lists it: labels.csv names each image by its path under
    /kaggle/input/<dataset>/, and the images lie in two folders."""
    rows = []
    for i in range(12):
        folder = folders[i % 2]
        _img(root / folder / f"ISIC_{i:07d}.jpg", seed=60 + i)
        label = ("nv", "mel", "bkl")[i % 3]
        rows.append(f"/kaggle/input/{root.name}/{folder}/ISIC_{i:07d}.jpg,{label}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def test_a_csv_of_kaggle_paths_labels_a_dump_in_numbered_chunk_folders(tmp_path):
    # Folders named alike but for their numbers are chunks of one dump, not its classes.
    root = _kaggle_paths_dump(tmp_path / "skin-cancer", ("images_part_1", "images_part_2"))
    inv = _find(root)
    assert inv.layout == "csv" and inv.classes == ["bkl", "mel", "nv"] and len(inv.items) == 12
    # So are a medical dump's folders by patient.
    root = _kaggle_paths_dump(tmp_path / "scans", ("patient00", "patient01"))
    assert _find(root).layout == "csv"
    # Beside folders of other names (images/, masks/), which stay the classes, it is named.
    root = _kaggle_paths_dump(tmp_path / "seg", ("images", "masks"))
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == ["images", "masks"]
    assert "labels.csv names images of the dump but was not taken" in inv.labels_doubt
    assert "--layout csv --labels labels.csv" in inv.labels_doubt
    assert _find(root, layout="csv").classes == ["bkl", "mel", "nv"]


@pytest.mark.parametrize("classes", [("0", "1"), ("c0", "c1"), ("class_1", "class_2"),
                                     ("n01440764", "n01443537")])
def test_class_folders_numbered_alike_are_not_taken_for_chunks(tmp_path, classes):
    # A metadata CSV naming the images loosely (other case) must not take over class folders
    # whose names differ only by their numbers: only names of parts (images_part_1/) are chunks.
    root = tmp_path / "d"
    rows = []
    for n, cls in enumerate(classes):
        for i in range(3):
            _img(root / cls / f"img_{n}{i}.jpg", seed=10 * n + i)
            rows.append(f"IMG_{n}{i}.JPG,{('F', 'M')[i % 2]}")
    (root / "metadata.csv").write_text("image,sex\n" + "\n".join(rows) + "\n")
    inv = _find(root)
    assert inv.layout == "folders" and inv.classes == list(classes)


def test_a_prefix_dump_of_one_image_per_class_beside_unlabelled_folders_stays_prefix(tmp_path):
    for extra in (("test1",), ("test", "valid"), ("test1", "unlabeled")):
        root = tmp_path / "-".join(extra)
        for c in range(5):
            _img(root / "train" / f"c{c}.0.png", seed=c)
        for k, folder in enumerate(extra):
            for i in range(4):
                _img(root / folder / f"{i}.png", seed=20 + 4 * k + i)
        inv = _find(root)
        assert inv.layout == "prefix" and inv.classes == [f"c{c}" for c in range(5)], extra
    # One scraped class folder and one plain one, beside a test/: the folders are the classes.
    for i, name in enumerate(("pug/1.pug dog photo.jpg", "pug/2.pug.jpg", "pug/3.a pug.jpg",
                              "husky/img1.jpg", "husky/img2.jpg", "test/t1.jpg")):
        _img(tmp_path / "g" / name, seed=60 + i)
    assert _find(tmp_path / "g").layout == "folders"


def test_a_csv_naming_images_exactly_but_not_taken_gives_no_warning(tmp_path):
    # dogs-vs-cats' sampleSubmission.csv, a metadata CSV of file names beside class folders:
    # no labels, and nothing to say about them.
    root = tmp_path / "dvc"
    for i in range(3):
        for cls in ("cat", "dog"):
            _img(root / "train" / f"{cls}.{i}.jpg", seed=i + 10 * (cls == "dog"))
        _img(root / "test1" / f"{i + 1}.jpg", seed=30 + i)
    (root / "sampleSubmission.csv").write_text("id,label\n1,0\n2,0\n3,0\n")
    inv = _find(root)
    assert inv.layout == "prefix" and inv.labels_doubt is None
    root = make_class_folders(tmp_path / "flowers", classes=("daisy", "rose"), per_class=3)
    (root / "metadata.csv").write_text("filename,width,height,author\n" + "".join(
        f"{c}_{i}.jpg,64,48,someone\n" for c in ("daisy", "rose") for i in range(3)))
    inv = _find(root)
    assert inv.layout == "folders" and inv.labels_doubt is None


def _one_hot_dump(tmp_path, rows):
    """Plant-pathology's shape: images/Train_<n>.jpg and train.csv with a 0/1 column per class."""
    root = tmp_path / "d"
    for i in range(len(rows)):
        _img(root / "images" / f"Train_{i}.jpg", seed=i)
    text = "image_id,healthy,multiple_diseases,rust,scab\n" + "".join(
        f"Train_{i},{row}\n" for i, row in enumerate(rows))
    (root / "train.csv").write_text(text)
    return root


def test_a_one_hot_labels_csv_labels_each_row_by_the_column_of_its_1(tmp_path):
    # It used to give the classes "0" and "1" of the healthy column alone.
    rows = ["1,0,0,0", "0,1,0,0", "0,0,1,0", "0.0,0.0,0.0,1.0", "1,0,0,0", "0,0,1,0"]
    root = _one_hot_dump(tmp_path, rows)
    expected = {"images/Train_0.jpg": "healthy", "images/Train_1.jpg": "multiple_diseases",
                "images/Train_2.jpg": "rust", "images/Train_3.jpg": "scab",
                "images/Train_4.jpg": "healthy", "images/Train_5.jpg": "rust"}
    for kwargs in ({}, {"labels": "train.csv"}, {"layout": "csv", "id_column": "image_id"}):
        inv = _find(root, **kwargs)
        assert inv.layout == "csv" and dict(inv.items) == expected and not inv.skipped
    # A column named as the labels is read as it always was.
    inv = _find(root, label_column="healthy")
    labels = dict(inv.items)
    assert labels["images/Train_0.jpg"] == "1" and labels["images/Train_1.jpg"] == "0"


@pytest.mark.parametrize("bad, found", [("0,1,0,1", r"a 1 in 2 class columns \(multiple"),
                                        ("0,0,0,0", "no 1 in any class column")])
def test_a_multi_label_one_hot_csv_is_an_error_naming_the_row(tmp_path, bad, found):
    root = _one_hot_dump(tmp_path, ["1,0,0,0", "0,0,1,0", bad] + ["0,0,0,1"] * 9)
    for kwargs in ({}, {"labels": "train.csv"}):
        with pytest.raises(LayoutError, match=rf"train.csv line 4 has {found}.*multi-label "
                                              r"CSV is not supported.*--label-column"):
            _find(root, **kwargs)


def _flags_dump(root, header, n, values):
    """``n`` images in images/ (im0.jpg, ...) and a train.csv of ``header``, the row of image
    ``i`` its id and then ``values(i)``."""
    rows = []
    for i in range(n):
        _img(root / "images" / f"im{i}.jpg", seed=i)
        rows.append(f"im{i},{values(i)}\n")
    (root / "train.csv").write_text(header + "\n" + "".join(rows))
    return root


def test_a_table_that_may_be_one_hot_read_as_one_label_column_is_warned_about(tmp_path):
    # Two bad rows of twelve (past one in ten) made a one-hot table a single 0/1 label column,
    # the first: classes "0" and "1", without a word.
    root = _one_hot_dump(tmp_path, ["1,0,0,0", "0,0,1,0", "0,0,0,0", "1,1,0,0"] + ["0,0,0,1"] * 8)
    inv = _find(root)
    assert inv.classes == ["0", "1"] and dict(inv.items)["images/Train_0.jpg"] == "1"
    assert inv.labels_doubt == (
        "train.csv: its columns healthy, multiple_diseases, rust, scab hold only 0 and 1, and "
        "83% of its rows have a single 1, so it may be a one-hot (or multi-label) table; its "
        "labels were read from 'healthy' alone. If it is one-hot, give each row exactly one 1; "
        "else name the labels' column with --label-column")
    # Columns named class_0, class_1, ... (whose first is taken for its name) and a table
    # of many rows with two 1s are warned about too; the share is never rounded up to 90%.
    named = _one_hot_dump(tmp_path / "named", ["1,1,0,0"] * 7 + ["0,0,0,1"] * 3)
    text = (named / "train.csv").read_text().replace(
        "healthy,multiple_diseases,rust,scab", "class_0,class_1,class_2,class_3")
    (named / "train.csv").write_text(text)
    assert "30% of its rows have a single 1" in _find(named).labels_doubt
    almost = _one_hot_dump(tmp_path / "almost", ["1,0,0,0"] * 179 + ["0,0,0,0"] * 21)
    assert "89% of its rows" in _find(almost).labels_doubt
    # A 0/1 label among 0/1 columns of other things is read as before, with the same warning.
    other = _flags_dump(tmp_path / "other", "image_id,malignant,male,flash", 20,
                        lambda i: f"{int(i % 5 == 0)},{int(i % 3 != 0)},0")
    inv = _find(other)
    assert inv.classes == ["0", "1"] and dict(inv.items)["images/im5.jpg"] == "1"
    assert "labels were read from 'malignant' alone" in inv.labels_doubt
    # Named, the column is no doubt; a one-hot table has none either.
    assert _find(other, label_column="malignant").labels_doubt is None
    assert _find(_one_hot_dump(tmp_path / "clean", ["1,0,0,0", "0,0,1,0"] * 3)).labels_doubt \
        is None


def test_a_0_1_label_beside_a_0_1_fold_column_is_not_one_hot(tmp_path):
    root = _flags_dump(tmp_path / "d", "image_id,malignant,fold", 12,
                       lambda i: f"{i % 2},{i // 2 % 2}")
    inv = _find(root)
    assert inv.classes == ["0", "1"]
    assert dict(inv.items)["images/im3.jpg"] == "1"  # malignant, as before one-hot tables


def test_zip_names_in_utf8_without_the_utf8_flag_are_read_as_utf8(tmp_path):
    # macOS's Archive Utility writes UTF-8 names without flag 0x800; zipfile reads them as
    # cp437 ("caf├⌐"). zipfile sets the flag itself, so the names are patched in afterwards.
    folder = make_class_folders(tmp_path / "src", classes=("a", "b"), per_class=2)
    real = {"a": "café", "b": "crème"}
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            # A stand-in as long as the real name in UTF-8 bytes: "a" -> "aaaaa".
            cls = path.parent.name
            zf.write(path, f"{cls * len(real[cls].encode())}/{path.name}")
    data = archive.read_bytes()
    for cls, name in real.items():
        data = data.replace(f"{cls * len(name.encode())}/".encode(), f"{name}/".encode())
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as zf:
        assert all(not info.flag_bits & 0x800 for info in zf.infolist())
    with open_source(archive) as source:
        inv = find_images(source)
        assert inv.classes == ["café", "crème"]
        assert source.read("café/a_0.jpg") == (folder / "a" / "a_0.jpg").read_bytes()
    with open_source(archive) as fresh:  # split places files through a source never listed
        assert fresh.read("crème/b_1.jpg") == (folder / "b" / "b_1.jpg").read_bytes()


def test_zip_members_made_on_windows_may_use_backslashes(tmp_path):
    # PowerShell 5's Compress-Archive: flowers\daisy\0.jpg, made on DOS/Windows (system 0).
    folder = make_class_folders(tmp_path / "src", classes=("daisy", "rose"), per_class=2)
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg")):
            info = zipfile.ZipInfo("flowers\\" + str(path.relative_to(folder)).replace("/", "\\"))
            info.create_system = 0
            zf.writestr(info, path.read_bytes())
        for name, system in (("..\\up.jpg", 0), ("C:\\x.jpg", 0), ("a\\b.jpg", 3)):
            info = zipfile.ZipInfo(name)
            info.create_system = system
            zf.writestr(info, b"not reached")
    with open_source(archive) as source:
        inv = find_images(source)
        assert inv.root == "flowers" and inv.classes == ["daisy", "rose"] and len(inv.items) == 4
        assert source.read("flowers/rose/rose_1.jpg") == (folder / "rose/rose_1.jpg").read_bytes()
    with open_source(archive) as fresh:
        daisy = (folder / "daisy" / "daisy_0.jpg").read_bytes()
        assert fresh.read("flowers/daisy/daisy_0.jpg") == daisy
    from dsprep.split import SplitOptions, run

    # --counts plans, then places the files it picked through a fresh source.
    _, result = run(archive, tmp_path / "out", SplitOptions(counts=(1, 1, 0)))
    assert result.placed == 4
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.jpg")) == sorted(
        p.name for p in folder.rglob("*.jpg"))
    # Still left out: a way out of the folder, a drive, a backslash in a name made elsewhere.
    assert _reasons(inv) == {"../up.jpg": "bad-name", "C:/x.jpg": "bad-name",
                             "a\\b.jpg": "bad-name"}


def test_no_labelled_images_says_when_archive_members_were_left_out_as_unsafe(tmp_path):
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("1.jpg", b"no label")
        zf.writestr("../cat.0.jpg", b"outside")
    with pytest.raises(LayoutError, match=r"no labelled images.*1 archive member\(s\) were "
                                          r"left out for unsafe paths.*'../cat.0.jpg'"):
        _find(archive)


def test_a_dump_of_archives_only_says_to_split_the_archive_inside(tmp_path):
    # Kaggle's dogs-vs-cats download: train.zip and test1.zip, in a folder or a zip.
    inner = tmp_path / "images"
    for i, name in enumerate(("train/cat.0.jpg", "train/cat.1.jpg", "train/dog.0.jpg")):
        _img(inner / name, seed=i)
    root = tmp_path / "d"
    root.mkdir()
    _zipped(inner, root / "train.zip")
    (root / "test1.zip").write_bytes((root / "train.zip").read_bytes())
    (root / "notes.txt").write_text("not an image")
    with pytest.raises(LayoutError, match=r"d holds no image files \(.*\.jpg.*\); it holds the "
                                          r"archive\(s\) test1.zip, train.zip: split one of "
                                          rf"them, e.g. 'dsprep split {root}/train.zip DEST'"):
        _find(root)
    assert _find(root / "train.zip").classes == ["cat", "dog"]  # what it says works
    with pytest.raises(LayoutError, match=r"extract .*outer.zip and split the archive inside"):
        _find(_zipped(root, tmp_path / "outer.zip"))
    (root / "train.zip").unlink()
    (root / "test1.zip").unlink()
    with pytest.raises(LayoutError, match="d holds no image files.*give the folder or .zip"):
        _find(root)
    # CIFAR-10 on Kaggle: train.7z beside trainLabels.csv; extracted in place, it splits.
    (root / "train.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(64))
    (root / "trainLabels.csv").write_text("id,label\n0,cat\n1,dog\n")
    with pytest.raises(LayoutError, match=r"it holds the archive\(s\) train.7z, which dsprep "
                                          "does not read in place: extract them here"):
        _find(root)


def test_class_names_alike_but_for_unicode_composition_are_one_class(tmp_path):
    # "café" typed (composed, NFC) and from a macOS archive (decomposed, NFD).
    root = tmp_path / "d"
    for i, cls in enumerate(("caf\u00e9", "cafe\u0301", "tea")):
        _img(root / cls / f"{i}.jpg", seed=i)
    inv = _find(root)
    assert inv.classes == ["caf\u00e9", "tea"] and len(inv.items) == 3
    (root / "labels.csv").write_text("file,label\n0,tea\n1,caf\u00e9\n2,cafe\u0301\n")
    inv = _find(root, layout="csv")
    assert inv.classes == ["caf\u00e9", "tea"] and len(inv.items) == 3


def test_portable_pixmaps_are_images_and_phone_heic_photos_are_listed_as_left_out(tmp_path):
    import cv2

    root = tmp_path / "d"
    for cls, seed in (("a", 0), ("b", 5)):
        rgb = smooth_image(20, 24, seed=seed)
        (root / cls).mkdir(parents=True)
        assert cv2.imwrite(str(root / cls / "scan.ppm"), rgb[..., ::-1])
        assert cv2.imwrite(str(root / cls / "scan.pgm"), rgb[..., 0])
        (root / cls / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
        (root / cls / ".hidden.heic").write_bytes(b"")
    inv = _find(root)
    assert dict(inv.items) == {"a/scan.pgm": "a", "a/scan.ppm": "a", "b/scan.pgm": "b",
                               "b/scan.ppm": "b"}
    assert _reasons(inv) == {"a/IMG_0001.HEIC": "unsupported-format",
                             "b/IMG_0001.HEIC": "unsupported-format"}
    for f in root.rglob("*.p?m"):
        f.unlink()
    with pytest.raises(LayoutError, match=r"holds no image files.*its \.heic images are not "
                                          r"read: convert them to JPEG or PNG"):
        _find(root)
    # Scans in DICOM (Kaggle's RSNA sets) are named too.
    for f in root.rglob("*.HEIC"):
        f.rename(f.with_suffix(".dcm"))
    with pytest.raises(LayoutError, match=r"its \.dcm images are not read"):
        _find(root)
    # And JPEG XL, which the installed OpenCV does not read.
    for f in root.rglob("*.dcm"):
        f.rename(f.with_suffix(".jxl"))
    with pytest.raises(LayoutError, match=r"its \.jxl images are not read"):
        _find(root)


def test_a_folder_that_cannot_be_listed_stops_the_listing(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("cat", "dog", "eel"), per_class=2)
    (root / "lost+found").mkdir()
    unlistable(monkeypatch, "lost+found")
    # The file system's own folder holds no images: reported, not fatal.
    assert _find(root).classes == ["cat", "dog", "eel"]
    unlistable(monkeypatch, "dog")
    # A class folder left out would be a class the model never sees.
    for listing in (lambda: _find(root), lambda: scan_class_folders(root, [])):
        with pytest.raises(PermissionError, match="cannot be listed.*give read access") as info:
            listing()
        assert info.value.filename == str(root / "dog")


def test_an_unlisted_folder_matters_only_where_labelled_images_could_be(tmp_path, monkeypatch):

    root = tmp_path / "d"
    for i in range(4):
        write_image(root / "images" / f"{i}.jpg", smooth_image(32, 32, seed=i))
    (root / "masks").mkdir()
    (root / "labels.csv").write_text("id,label\n0,cat\n1,dog\n2,cat\n3,dog\n")
    unlistable(monkeypatch, "masks")
    # Every row of the labels file found its image: a folder of masks is no concern.
    inv = _find(root)
    assert inv.layout == "csv" and len(inv.items) == 4
    assert ("masks", "unreadable") in {(s.source, s.reason) for s in inv.skipped}
    # Rows whose images were not found may name files in it: stop, naming it.
    (root / "labels.csv").write_text("id,label\n0,cat\n1,dog\n2,cat\n3,dog\nmasks/4,dog\n")
    with pytest.raises(PermissionError, match="cannot be listed") as info:
        _find(root)
    assert info.value.filename == str(root / "masks")


def test_a_class_behind_a_link_that_cannot_be_followed_stops_the_listing(tmp_path,
                                                                      monkeypatch):
    import errno

    root = make_class_folders(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    make_class_folders(tmp_path / "private", classes=("eel",), per_class=2)
    (root / "eel").symlink_to(tmp_path / "private" / "eel")
    stat = os.stat

    def no_entry(path, *args, **kwargs):  # its target lies in a folder one may not enter
        if os.fspath(path) == str(root / "eel"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", no_entry)
    with pytest.raises(PermissionError, match="cannot be listed") as info:
        _find(root)
    assert info.value.filename == str(root / "eel")


def test_an_unlisted_folder_beside_the_only_listed_one_is_refused(tmp_path, monkeypatch):
    # The dump would be taken to be wrapped in train/, and test/ (with a class of its own)
    # lost; every folder unlisted would be "no image files".
    root = tmp_path / "d"
    make_class_folders(root / "train", classes=("cat", "dog"), per_class=2)
    make_class_folders(root / "test", classes=("cat", "dog", "eel"), per_class=2, seed=7)
    unlistable(monkeypatch, "test")
    with pytest.raises(PermissionError, match="cannot be listed") as info:
        _find(root)
    assert info.value.filename == str(root / "test")
    unlistable(monkeypatch, "train", "test")
    with pytest.raises(PermissionError, match="cannot be listed"):
        _find(root)


def test_a_link_loop_is_reported_not_refused(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    (root / "cat" / "loop").symlink_to(root / "cat" / "loop")
    inv = _find(root)
    assert inv.classes == ["cat", "dog"] and len(inv.items) == 4
    # A link that points to itself points to nothing: no "make it readable" warning.
    assert ("cat/loop", "dangling-link") in {(s.source, s.reason) for s in inv.skipped}
    assert not [s for s in inv.skipped if s.reason == "unreadable"]


def _unfollowable(monkeypatch, root, names, code):
    """os.stat failing with ``code`` on the links of these names under root."""
    import errno

    stat = os.stat

    def stat_of(path, *args, **kwargs):
        if os.path.islink(path) and os.path.basename(os.fspath(path)) in names:
            raise OSError(code, os.strerror(code), os.fspath(path))
        return stat(path, *args, **kwargs)

    assert errno.errorcode[code]
    monkeypatch.setattr(os, "stat", stat_of)


@pytest.mark.parametrize("code", [13, 107])  # EACCES; ENOTCONN (a dead network mount)
def test_links_that_cannot_be_followed(tmp_path, monkeypatch, code):
    from dsprep.sources import FolderSource
    from dsprep.split import plan

    root = make_class_folders(tmp_path / "d", classes=("cat", "dog"), per_class=2)
    store = make_class_folders(tmp_path / "store", classes=("eel", "fox"), per_class=2)
    (root / "fox").symlink_to(store / "fox")  # a class folder behind the link
    (root / "notes.txt").symlink_to(store / "eel" / "eel_0.jpg")
    _unfollowable(monkeypatch, root, {"fox", "notes.txt"}, code)
    with pytest.raises(OSError, match="cannot be listed") as info:
        _find(root)
    assert info.value.filename == str(root / "fox") and info.value.errno == code
    # Another file behind a link is reported only; image links are listed, and their reads
    # fail with their class, which is named when none of its images is left.
    (root / "fox").unlink()
    (root / "eel").mkdir()
    for i in range(2):
        (root / "eel" / f"eel_{i}.jpg").symlink_to(store / "eel" / f"eel_{i}.jpg")
    _unfollowable(monkeypatch, root, {"notes.txt", "eel_0.jpg", "eel_1.jpg"}, code)
    real_read = FolderSource.read

    def read(self, rel):
        if rel.startswith("eel/"):
            raise OSError(code, os.strerror(code))
        return real_read(self, rel)

    monkeypatch.setattr(FolderSource, "read", read)
    inv = _find(root)
    assert ("notes.txt", "unreadable") in {(s.source, s.reason) for s in inv.skipped}
    assert ("eel/eel_0.jpg", "eel") in inv.items
    assert plan(root).lost_classes == ["eel"]


def test_a_labels_file_in_a_folder_not_listed_is_said_so(tmp_path, monkeypatch):
    root = tmp_path / "d"
    for i in range(4):
        write_image(root / "images" / f"{i}.jpg", smooth_image(32, 32, seed=i))
    (root / "meta").mkdir()
    (root / "meta" / "labels.csv").write_text("id,label\n0,cat\n1,dog\n2,cat\n3,dog\n")
    assert len(_find(root, layout="csv", labels="meta/labels.csv").items) == 4
    unlistable(monkeypatch, "meta")
    with pytest.raises(PermissionError, match="cannot be listed") as info:
        _find(root, layout="csv", labels="meta/labels.csv")
    assert info.value.filename == str(root / "meta")


def test_a_folder_of_one_class_or_of_names_with_another_separator_gets_a_hint(tmp_path,
                                                                              monkeypatch):
    # flowers/daisy/ given for flowers/, and cat_001.jpg names: "no labelled images for the
    # prefix layout", with nothing on what to give instead.
    monkeypatch.chdir(tmp_path)
    for i in range(4):
        _img(tmp_path / "flowers" / "daisy" / f"{1000 + i}.jpg", seed=i)
        _img(tmp_path / "pets" / f"{['cat', 'dog'][i % 2]}_{i:03d}.jpg", seed=i)
    with pytest.raises(LayoutError, match=r"if flowers/daisy is the folder of one class, give "
                                          r"the folder that holds the class folders, such as "
                                          r"flowers$"):
        _find(Path("flowers/daisy"))
    # A camera's names (IMG_1234.jpg) are one "class": the folder hint, not a pattern.
    for i in range(4):
        _img(tmp_path / "photos" / "dog" / f"IMG_{1000 + i}.jpg", seed=i)
    with pytest.raises(LayoutError, match=r"if photos/dog is the folder of one class"):
        _find(Path("photos/dog"))
    # Two cameras' names in one folder, a phone's dated ones and its bursts: no classes either.
    for i in range(2):
        _img(tmp_path / "photos" / "dog" / f"DSC_{2000 + i}.jpg", seed=10 + i)
        _img(tmp_path / "photos" / "dog" / f"IMG_2023051{i}_143015.jpg", seed=12 + i)
        _img(tmp_path / "photos" / "dog" / f"IMG_1001_{i + 1}.jpg", seed=14 + i)
    with pytest.raises(LayoutError, match=r"if photos/dog is the folder of one class"):
        _find(Path("photos/dog"))
    # Given as ".", from inside it: the folder above is the one to give.
    with monkeypatch.context() as m:
        m.chdir(tmp_path / "flowers" / "daisy")
        with pytest.raises(LayoutError, match=rf"if \. is the folder of one class, give the "
                                              rf"folder that holds the class folders, such as "
                                              rf"{re.escape(str(tmp_path / 'flowers'))}$"):
            _find(Path("."))
    # Classes of several words (Oxford pets' american_pit_bull_terrier_12.jpg): all before the
    # number is the class.
    for i, name in enumerate(("american_bulldog", "american_pit_bull_terrier", "beagle") * 2):
        _img(tmp_path / "pets" / f"{name}_{i + 10}.jpg", seed=20 + i)
    pattern = r"(?P<label>.+)_\d+\."
    with pytest.raises(LayoutError, match=r"names such as american_bulldog_10\.jpg carry their "
                                          r"class before '_' and a number: --layout prefix "
                                          rf"--pattern {re.escape(quoted(pattern))} reads them$"):
        _find(Path("pets"))
    assert _find(Path("pets"), layout="prefix", pattern=pattern).classes == [
        "american_bulldog", "american_pit_bull_terrier", "beagle", "cat", "dog"]
    # A class named as a camera's word (PACS's photo_001.jpg beside sketch_001.jpg) is one
    # still; names that differ only in their dates or ids are no classes.
    for i in range(6):
        _img(tmp_path / "pacs" / f"{['photo', 'sketch', 'cartoon'][i % 3]}_{i:03d}.jpg",
             seed=30 + i)
        _img(tmp_path / "app" / f"signal-2023-05-1{i % 3}-14300{i}.jpg", seed=40 + i)
    _img(tmp_path / "pacs" / "IMG_0001.jpg", seed=50)  # a camera's name, first: not the example
    with pytest.raises(LayoutError, match=r"names such as cartoon_002\.jpg carry their class "
                                          r"before '_' and a number"):
        _find(Path("pacs"))
    with pytest.raises(LayoutError, match=r"if app is the folder of one class"):
        _find(Path("app"))


@pytest.mark.parametrize("given", [{}, {"label_column": "id_code"}, {"label_column": "0"}])
def test_a_one_column_labels_file_is_refused_as_having_no_labels(tmp_path, given):
    # APTOS's test.csv: the ids of the test images, no labels.
    root = _csv_dump(tmp_path, "id_code\n1\n2\n3\n4\n")
    with pytest.raises(LayoutError, match="has one column .*id_code.*no labels"):
        _find(root, layout="csv", labels=root / "labels.csv", **given)


def test_an_id_column_beyond_a_short_header_is_named_by_its_number(tmp_path):
    root = _csv_dump(tmp_path, "label\ncat,1.jpg\ndog,2.jpg\ncat,3.png\ndog,4.jpg\n")
    inv = _find(root, layout="csv", labels=root / "labels.csv", id_column="1")
    assert inv.labels_columns == "ids in column 1, labels in 'label'"
    assert inv.classes == ["cat", "dog"] and len(inv.items) == 4
