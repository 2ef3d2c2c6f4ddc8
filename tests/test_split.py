"""Planning and placing a split: arithmetic, determinism, bad input, safety, interrupted runs."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy
import pytest
from helpers import make_class_folders, smooth_image, write_image
from hypothesis import given, settings
from hypothesis import strategies as st

import dsprep.split as split_module
from dsprep.errors import DestinationExistsError, LayoutError, SplitError, UsageError
from dsprep.sample import write_sample_dump
from dsprep.sources import LABEL_CONFLICT, FolderSource, Inventory
from dsprep.split import (
    DUPLICATE,
    SplitOptions,
    _Checked,
    _decide,
    allocate,
    check_destination,
    materialize,
    plan,
    run,
)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (links followed) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def reasons(path: Path) -> dict[str, str]:
    return {row["source"]: row["reason"] for row in read_csv(path / "skipped.csv")}


# ---------------------------------------------------------------- arithmetic

ratio_triples = st.lists(st.integers(0, 20), min_size=2, max_size=3).filter(lambda w: sum(w) > 0)


@settings(deadline=None)
@given(n=st.integers(0, 5000), weights=ratio_triples)
def test_allocate_adds_up_and_stays_within_one(n, weights):
    ratios = tuple(w / sum(weights) for w in weights)
    parts = allocate(n, ratios)
    assert sum(parts) == n
    for part, w in zip(parts, weights, strict=True):
        exact = n * w / sum(weights)  # the exact share, from the integer weights
        assert abs(part - exact) < 1
        assert part >= 0


@pytest.mark.parametrize("n, ratios, expected", [
    (10, (0.8, 0.1, 0.1), [8, 1, 1]),
    (11, (0.8, 0.1, 0.1), [9, 1, 1]),   # 8.8, 1.1, 1.1: the largest remainder goes to train
    (3, (1 / 3, 1 / 3, 1 / 3), [1, 1, 1]),
    (2, (1 / 3, 1 / 3, 1 / 3), [1, 1, 0]),  # equal remainders: earlier splits first
    (7, (0.5, 0.5), [4, 3]),
    (0, (0.8, 0.1, 0.1), [0, 0, 0]),
])
def test_allocate_rounding_rule(n, ratios, expected):
    assert allocate(n, ratios) == expected


@pytest.mark.parametrize("ratios, expected", [
    ((0.333, 0.333, 0.333), [34, 33, 33]),   # rounded thirds are thirds
    ((0.33, 0.33, 0.33), [34, 33, 33]),
    ((0.8, 0.1, 0.11), [79, 10, 11]),        # 1.01: 100 * 0.8 / 1.01 = 79.2
])
def test_ratios_rounded_to_add_up_nearly_to_one_are_taken_as_proportions(ratios, expected):
    options = SplitOptions(ratios=ratios)
    assert allocate(100, options.ratios) == expected


@pytest.mark.parametrize("ratios", [(0.33, 0.33, 0.32), (0.5, 0.3, 0.22)])
def test_ratios_further_than_a_rounding_from_one_are_refused(ratios):
    with pytest.raises(UsageError, match="add up to (0.98|1.02), not 1"):
        SplitOptions(ratios=ratios)


def _fake(sizes: list[int], dup_every: int = 0):
    """An inventory and check results for classes of the given sizes (no files needed)."""
    items, checked = [], []
    for c, size in enumerate(sizes):
        for i in range(size):
            rel = f"c{c}/{i:04d}.jpg"
            items.append((rel, f"c{c}"))
            digest = hashlib.sha256(rel.encode()).hexdigest()
            if dup_every and i % dup_every == 1:
                digest = hashlib.sha256(f"c{c}/{i - 1:04d}.jpg".encode()).hexdigest()
            checked.append(_Checked(rel, digest, 10, 10, 100))
    return Inventory("folders", "", items), checked


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4), weights=ratio_triples,
       seed=st.integers(0, 2**32 - 1), shuffle_seed=st.integers(0, 1000))
def test_plan_places_every_kept_file_once_and_ignores_listing_order(sizes, weights, seed,
                                                                   shuffle_seed):
    ratios = tuple(w / sum(weights) for w in weights)
    options = SplitOptions(ratios=ratios, seed=seed)
    inventory, checked = _fake(sizes)
    a = _decide(Path("/src"), inventory, checked, options)
    shuffled = list(zip(inventory.items, checked, strict=True))
    random.Random(shuffle_seed).shuffle(shuffled)
    inventory2 = Inventory("folders", "", [i for i, _ in shuffled])
    b = _decide(Path("/src"), inventory2, [c for _, c in shuffled], options)
    assert a.files == b.files and a.files_csv() == b.files_csv()
    sources = [f.source for f in a.files]
    assert sorted(sources) == sorted(rel for rel, _ in inventory.items)  # each exactly once
    counts = a.counts()
    for c, size in enumerate(sizes):
        for split_name, w in zip(options.splits, weights, strict=True):
            assert abs(counts[split_name][f"c{c}"] - size * w / sum(weights)) < 1


@given(sizes=st.lists(st.integers(5, 40), min_size=1, max_size=3), seed=st.integers(0, 99))
@settings(max_examples=30, deadline=None)
def test_counts_and_limit(sizes, seed):
    inventory, checked = _fake(sizes)
    p = _decide(Path("/src"), inventory, checked, SplitOptions(counts=(3, 1, 1), seed=seed))
    assert all(n == want for split_name, want in zip(("train", "val", "test"), (3, 1, 1),
                                                      strict=True)
               for n in p.counts()[split_name].values())
    assert {s.reason for s in p.skipped} <= {"not-selected"}
    assert len(p.files) + len(p.skipped) == sum(sizes)
    small = _decide(Path("/src"), inventory, checked, SplitOptions(limit_per_class=4, seed=seed))
    large = _decide(Path("/src"), inventory, checked, SplitOptions(limit_per_class=6, seed=seed))
    small_src = {f.source for f in small.files}
    assert small_src <= {f.source for f in large.files}  # a larger limit only adds files
    assert all(sum(small.counts()[s][c] for s in small.splits) == min(4, n)
               for c, n in zip(small.classes, sizes, strict=True))


def test_duplicates_keep_one_copy():
    inventory, checked = _fake([6], dup_every=2)
    p = _decide(Path("/src"), inventory, checked, SplitOptions())
    kept = {f.source for f in p.files}
    assert kept == {"c0/0000.jpg", "c0/0002.jpg", "c0/0004.jpg"}
    assert {(s.source, s.reason) for s in p.skipped} == {
        ("c0/0001.jpg", "duplicate"), ("c0/0003.jpg", "duplicate"), ("c0/0005.jpg", "duplicate")}


def test_class_too_small_for_counts():
    inventory, checked = _fake([10, 4])
    with pytest.raises(SplitError, match="class 'c1' has 4 usable images but --counts 3,1,1"):
        _decide(Path("/src"), inventory, checked, SplitOptions(counts=(3, 1, 1)))
    # The count is the subset's when --limit-per-class took it down: say so (only then).
    with pytest.raises(SplitError, match=r"'c0' has 4 usable images \(kept by "
                                         r"--limit-per-class 4\) but --counts 3,1,1"):
        _decide(Path("/src"), inventory, checked,
                SplitOptions(counts=(3, 1, 1), limit_per_class=4))
    with pytest.raises(SplitError, match=r"'c1' has 4 usable images but --counts 3,1,1"):
        _decide(Path("/src"), inventory, checked,
                SplitOptions(counts=(3, 1, 1), limit_per_class=100))


@pytest.mark.parametrize("kwargs, message", [
    ({"ratios": (0.8, 0.1)}, "add up to 0.9"),
    ({"ratios": (0.5, 0.2, 0.2, 0.1)}, "2 or 3 numbers"),
    ({"ratios": (1.2, -0.2)}, ">= 0"),
    ({"counts": (5,)}, "2 or 3 whole numbers"),
    ({"counts": (0, 0, 0)}, "counts 0,0,0 place no image"),
    ({"ratios": (0.5, 0.5), "counts": (1, 1)}, "not both"),
    ({"verify": "maybe"}, "verify"),
    ({"limit_per_class": 0}, "limit_per_class"),
    # Not cut short to 10,3,2 and written to split.json as what was asked.
    ({"counts": (10.9, 3.9, 2.9)}, r"counts \(10.9, 3.9, 2.9\) must be 2 or 3 whole numbers"),
    ({"counts": (10.0, 5)}, r"counts \(10.0, 5\) must be"),  # named as given, not as "10,5"
    ({"limit_per_class": 2.5}, "limit_per_class must be a whole number, 1 or more"),
    ({"min_size": 1.5}, "min_size must be a whole number, 0 or more"),
    # nan compares false with everything: it slipped past the sign and sum checks.
    ({"ratios": (0.5, float("nan"))}, "finite"),
    ({"ratios": (0.5, float("nan"), 0.5)}, "finite"),
    ({"ratios": (float("inf"), 0.1)}, "finite"),
    ({"ratios": (1.5, -0.5)}, ">= 0"),
    ({"seed": -1}, "seed -1 must be a whole number >= 0"),
    ({"seed": 1.5}, "whole number"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SplitOptions(**kwargs)


def test_seed_changes_the_split_but_not_the_counts():
    inventory, checked = _fake([30, 30])
    a = _decide(Path("/src"), inventory, checked, SplitOptions(seed=1))
    b = _decide(Path("/src"), inventory, checked, SplitOptions(seed=2))
    assert a.counts() == b.counts()
    assert {f.source for f in a.files if f.split == "val"} != {
        f.source for f in b.files if f.split == "val"}


def _grouped(sizes: list[int], group_sizes: list[int], across: bool = False):
    """_fake's classes, their images in groups of the given sizes (in turn; an image left
    over has none); ``across``: each group's last image in the next class."""
    inventory, checked = _fake(sizes)
    by_class = [[rel for rel, label in inventory.items if label == f"c{c}"]
                for c in range(len(sizes))]
    groups: dict[str, str] = {}
    g = 0
    for c, rels in enumerate(by_class):
        i = 0
        while i < len(rels):
            n = group_sizes[g % len(group_sizes)]
            members = rels[i : i + n]
            if across and len(members) > 1 and c + 1 < len(by_class) and by_class[c + 1]:
                members[-1] = by_class[c + 1].pop()
            groups.update(dict.fromkeys(members, f"g{g}"))
            i += n
            g += 1
    return (Inventory("csv", "", inventory.items, groups=groups, group_column="lesion_id",
                      group_given=True), checked)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4), weights=ratio_triples,
       group_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       across=st.booleans(), seed=st.integers(0, 2**32 - 1), shuffle_seed=st.integers(0, 1000))
def test_a_group_column_keeps_each_group_in_one_split(sizes, weights, group_sizes, across, seed,
                                                      shuffle_seed):
    ratios = tuple(w / sum(weights) for w in weights)
    options = SplitOptions(ratios=ratios, seed=seed, layout="csv", group_column="lesion_id")
    inventory, checked = _grouped(sizes, group_sizes, across)
    p = _decide(Path("/src"), inventory, checked, options)
    splits_of: dict[str, set[str]] = {}
    for f in p.files:
        splits_of.setdefault(inventory.groups.get(f.source, f.source), set()).add(f.split)
    assert all(len(s) == 1 for s in splits_of.values())
    assert sorted(f.source for f in p.files) == sorted(rel for rel, _ in inventory.items)
    # Never a split given no share; and with groups of one image, the ratios as without them.
    for split_name, w in zip(options.splits, weights, strict=True):
        if w == 0:
            assert not any(f.split == split_name for f in p.files)
    if max(group_sizes) == 1:
        counts = p.counts()
        for c, size in enumerate(sizes):
            for split_name, w in zip(options.splits, weights, strict=True):
                assert abs(counts[split_name][f"c{c}"] - size * w / sum(weights)) < 1
    # The listing order changes nothing.
    pairs = list(zip(inventory.items, checked, strict=True))
    random.Random(shuffle_seed).shuffle(pairs)
    again = _decide(Path("/src"), Inventory(
        "csv", "", [i for i, _ in pairs], groups=dict(reversed(inventory.groups.items())),
        group_column="lesion_id", group_given=True), [c for _, c in pairs], options)
    assert again.files_csv() == p.files_csv()
    assert p.groups[1] == 0 and not any("groups" in w for w in p.warnings()
                                        if "--group-column" not in w)


def test_groups_of_several_images_share_the_ratios_out_closely():
    inventory, checked = _grouped([200, 150], [1, 2, 3, 4])
    p = _decide(Path("/src"), inventory, checked,
                SplitOptions(layout="csv", group_column="lesion_id", seed=5))
    # Another seed, other groups in val (not the same split for every seed).
    other = _decide(Path("/src"), inventory, checked,
                    SplitOptions(layout="csv", group_column="lesion_id", seed=6))
    assert ({f.source for f in p.files if f.split == "val"}
            != {f.source for f in other.files if f.split == "val"})
    counts = p.counts()
    for c, size in (("c0", 200), ("c1", 150)):
        for split_name, share in zip(("train", "val", "test"), (0.8, 0.1, 0.1), strict=True):
            assert abs(counts[split_name][c] - size * share) <= 2, (split_name, c, counts)
    assert not p.warnings()


def test_groups_with_counts_never_overfill_and_leave_out_what_fits_nowhere():
    inventory, checked = _grouped([30, 30], [5, 1, 1, 2])
    p = _decide(Path("/src"), inventory, checked,
                SplitOptions(layout="csv", group_column="lesion_id", counts=(6, 2, 2), seed=3))
    counts = p.counts()
    for split_name, want in zip(("train", "val", "test"), (6, 2, 2), strict=True):
        assert all(counts[split_name][c] <= want for c in ("c0", "c1"))
    assert {s.reason for s in p.skipped} == {"not-selected"}
    assert len(p.files) + len(p.skipped) == 60
    splits_of: dict[str, set[str]] = {}
    for f in p.files:
        splits_of.setdefault(inventory.groups.get(f.source, f.source), set()).add(f.split)
    assert all(len(s) == 1 for s in splits_of.values())
    # A group of 5 fits no val or test of 2: where train is full, it is left out whole, said so.
    whole = [s for s in p.skipped if "fits in no split" in s.detail]
    sizes = Counter(inventory.groups.values())
    assert any(sizes[inventory.groups[x.source]] == 5 for x in whole)
    assert all(sum(inventory.groups[x.source] == g for x in whole) == sizes[g] > 1
               for g in {inventory.groups[x.source] for x in whole})
    short = [w for w in p.warnings() if "do not make up --counts 6,2,2" in w]
    assert bool(short) == any(counts[s][c] < want for c in ("c0", "c1")
                              for s, want in (("train", 6), ("val", 2), ("test", 2)))


def test_counts_by_groups_draw_on_many_groups_not_the_largest_few():
    # 150 patients a class of 1 to 10 images: val's 10 images of a class come from several.
    inventory, checked = _grouped([825, 825], list(range(1, 11)))
    p = _decide(Path("/src"), inventory, checked,
                SplitOptions(layout="csv", group_column="lesion_id", counts=(50, 10, 10)))
    for split_name in ("train", "val", "test"):
        for c in ("c0", "c1"):
            groups = {inventory.groups[f.source] for f in p.files
                      if f.split == split_name and f.label == c}
            assert len(groups) >= (5 if split_name == "train" else 2), (split_name, c, groups)


def test_every_split_with_a_share_takes_a_group_where_there_are_enough():
    # Four patients of ten images a class, 0.8,0.1,0.1: 2/1/1 patients, not 3/1/0.
    inventory, checked = _grouped([40, 40], [10])
    for seed in range(5):
        p = _decide(Path("/src"), inventory, checked,
                    SplitOptions(layout="csv", group_column="lesion_id", seed=seed))
        assert all(p.counts()[s][c] == (20 if s == "train" else 10)
                   for s in p.splits for c in ("c0", "c1")), p.counts()


def test_a_large_group_goes_where_it_fits_and_the_ratios_hold():
    # One patient of 300 images among patients of 20: in train, whatever the seed; val and
    # test within a group of their share.
    inventory, checked = _grouped([500], [300] + [20] * 10)
    for seed in range(8):
        p = _decide(Path("/src"), inventory, checked,
                    SplitOptions(layout="csv", group_column="lesion_id", seed=seed))
        counts = [p.counts()[s]["c0"] for s in p.splits]
        assert counts[0] >= 380 and all(40 <= n <= 60 for n in counts[1:]), (seed, counts)
        assert not any("--group-column" in w for w in p.warnings())


def _sized(groups_of: dict[str, list[int]]):
    """_decide's inputs for classes whose groups have the given sizes."""
    items, checked, groups = [], [], {}
    for label, sizes in groups_of.items():
        for g, size in enumerate(sizes):
            for k in range(size):
                rel = f"{label}/{g}-{k}.jpg"
                items.append((rel, label))
                groups[rel] = f"{label}{g}"
                checked.append(_Checked(rel, hashlib.sha256(rel.encode()).hexdigest(), 9, 9, 9))
    return Inventory("csv", "", sorted(items), groups=groups, group_column="lesion_id",
                     group_given=True), checked


@pytest.mark.parametrize("sizes, ratios, want", [
    ([40, 15, 5, 4, 2, 2], (0.8, 0.1, 0.1), [55, 7, 6]),  # 15 overfills train by one
    ([20, 4, 2], (0.9, 0.1), [24, 2]),
])
def test_a_group_that_fits_nowhere_overfills_the_split_it_overfills_least(sizes, ratios, want):
    inventory, checked = _sized({"a": sizes})
    for seed in range(6):
        p = _decide(Path("/src"), inventory, checked, SplitOptions(
            layout="csv", group_column="lesion_id", ratios=ratios, seed=seed))
        got = [p.counts()[s]["a"] for s in p.splits]
        assert got[0] == want[0] and sorted(got[1:]) == sorted(want[1:]), (seed, got)
        assert not any("--group-column" in w for w in p.warnings())


@pytest.mark.parametrize("sizes, ratios, want", [
    ([40, 20, 12, 12, 10, 6], (0.9, 0.1), [90, 10]),  # largest first alone: 94/6
    ([39, 38, 29, 18, 15, 7, 1], (0.8, 0.1, 0.1), [114, 15, 18]),  # alone: 124/16/7
])
def test_groups_placed_largest_first_are_brought_to_a_closer_fit(sizes, ratios, want):
    inventory, checked = _sized({"a": sizes})
    for seed in range(4):
        p = _decide(Path("/src"), inventory, checked, SplitOptions(
            layout="csv", group_column="lesion_id", ratios=ratios, seed=seed))
        assert [p.counts()[s]["a"] for s in p.splits] == want, seed


@settings(max_examples=40, deadline=None)
@given(groups=st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=7), min_size=1,
                       max_size=3),
       weights=ratio_triples, seed=st.integers(0, 2**16))
def test_no_single_move_or_exchange_of_groups_would_fit_the_ratios_better(groups, weights, seed):
    inventory, checked = _sized({f"c{k}": sizes for k, sizes in enumerate(groups)})
    options = SplitOptions(layout="csv", group_column="lesion_id", seed=seed,
                           ratios=tuple(w / sum(weights) for w in weights))
    p = _decide(Path("/src"), inventory, checked, options)
    size = Counter(inventory.groups.values())
    where = {inventory.groups[f.source]: p.splits.index(f.split) for f in p.files}
    label = {inventory.groups[f.source]: f.label for f in p.files}
    target = {c: allocate(sum(sizes), options.ratios) for c, sizes in
              ((f"c{k}", sizes) for k, sizes in enumerate(groups))}
    shares = [i for i, w in enumerate(weights) if w > 0]

    def off(place: dict) -> tuple[float, set]:
        """Images off the shares, each class's as a fraction of its images; the cells held."""
        got = Counter()
        for g, i in place.items():
            got[label[g], i] += size[g]
        return (sum(abs(got[c, i] - want) / sum(wants) for c, wants in target.items()
                    for i, want in enumerate(wants)), {k for k, n in got.items() if n})

    now, present = off(where)
    for g in where:
        for i in shares:
            for h in [None, *where]:  # g moved to i, or exchanged with h (in split i)
                if i == where[g] or (h is not None and where[h] != i):
                    continue
                other = dict(where, **{g: i}, **({h: where[g]} if h else {}))
                then, kept = off(other)
                assert then >= now - 1e-9 or not present <= kept, (g, h, i, then, now)


def test_a_small_class_far_off_its_ratios_is_said_beside_a_large_one_that_is_not():
    inventory, checked = _sized({"a": [1] * 2000, "b": [60, 30, 10]})
    p = _decide(Path("/src"), inventory, checked,
                SplitOptions(layout="csv", group_column="lesion_id"))
    b = [p.counts()[s]["b"] for s in p.splits]
    assert b != [80, 10, 10]  # 60, 30 and 10 cannot make 80/10/10
    warning = next(w for w in p.warnings() if "--group-column" in w)
    assert "the splits are off --ratios 0.8,0.1,0.1: b " in warning
    assert " a " not in warning.split("0.8,0.1,0.1:")[1]


def test_one_large_group_is_said_when_the_splits_cannot_follow_the_ratios():
    inventory, checked = _grouped([40], [20, 1])
    p = _decide(Path("/src"), inventory, checked,
                SplitOptions(layout="csv", group_column="lesion_id", ratios=(0.5, 0.5)))
    shares = [sum(p.counts()[s].values()) / 40 for s in ("train", "val")]
    # Groups of 20, 19 and 1: 0.5,0.5 within a group's size of one image, and not said.
    assert abs(shares[0] - 0.5) < 0.03 and not any("--group-column" in w for w in p.warnings())
    inventory, checked = _grouped([40], [30, 1])
    p = _decide(Path("/src"), inventory, checked,
                SplitOptions(layout="csv", group_column="lesion_id", ratios=(0.5, 0.5)))
    shares = [sum(p.counts()[s].values()) / 40 for s in ("train", "val")]
    assert sorted(shares) == [0.25, 0.75]  # 30 of 40 in one group
    got = [p.counts()[s]["c0"] for s in ("train", "val")]
    assert any("--group-column lesion_id keeps each group in one split, and with these groups the "
               "splits are off --ratios 0.5,0.5: "
               f"c0 train {got[0]} for 20, c0 val {got[1]} for 20 (images; see the table)" == w
               for w in p.warnings()), p.warnings()


def test_a_stop_while_reading_stops_the_reading_threads_before_the_clean_up():
    # The staged copies are removed after the stop: threads still reading (and staging) would
    # race that removal, and a second Ctrl-C no longer waits for them.
    import threading

    calls, lock = [], threading.Lock()

    def fn(item):
        if item == 0:
            raise KeyboardInterrupt
        time.sleep(0.002)
        with lock:
            calls.append(item)
        return item

    with pytest.raises(KeyboardInterrupt):
        split_module._map(fn, list(range(400)), 2, False, "reading")
    done = len(calls)
    time.sleep(0.05)
    assert len(calls) == done  # no thread reads on after _map has raised
    assert done < 20  # the other thread stopped within a read or two, not at its chunk's end


def test_an_unfinished_split_holding_only_its_staged_copies_is_known_as_ours(tmp_path):
    # Killed while it removed them: the marker went first, the staged copies stayed.
    partial = tmp_path / ".out.split-partial"
    (partial / ".staging").mkdir(parents=True)
    (partial / ".staging" / "ab12").write_bytes(b"x")
    split_module._remove_partial(partial, force=False)
    assert not partial.exists()
    (partial / "notes").mkdir(parents=True)
    with pytest.raises(DestinationExistsError, match="was not made by dsprep split"):
        split_module._remove_partial(partial, force=False)


# ---------------------------------------------------------------- on disk

@pytest.fixture
def dump(tmp_path):
    """Three classes of eight images, plus every kind of bad file the sample writes."""
    return write_sample_dump(tmp_path / "dump", per_class=8, with_bad_files=True, seed=3)


@pytest.mark.parametrize("verify", ["header", "full"])
def test_split_folders_and_manifests(dump, tmp_path, verify):
    dest = tmp_path / "split"
    p = plan(dump.dest, verify=verify)
    result = materialize(p, dest)
    assert result.placed == len(p.files) == 24 + 2  # the alpha PNG and the grey JPEG are kept
    manifest = json.loads((dest / "split.json").read_text())
    assert manifest["schema"] == "dsprep-split/1"
    assert manifest["classes"] == ["brick", "grass", "gravel"]
    assert manifest["params"]["seed"] == split_module.DEFAULT_SEED
    assert manifest["params"]["mode"] == "copy"
    rows = read_csv(dest / "files.csv")
    assert list(rows[0]) == ["split", "class", "path", "source", "sha256", "width", "height"]
    placed = {p_.relative_to(dest).as_posix() for p_ in dest.glob("*/*/*") if p_.is_file()}
    assert placed == {r["path"] for r in rows}
    for r in rows:
        data = (dest / r["path"]).read_bytes()
        assert data == (dump.dest / r["source"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        assert r["path"].split("/")[:2] == [r["split"], r["class"]]
        assert r["source"].split("/")[0] == r["class"]
    counted = {s: {c: 0 for c in manifest["classes"]} for s in ("train", "val", "test")}
    for r in rows:
        counted[r["split"]][r["class"]] += 1
    assert manifest["counts"] == counted
    bad = {rel: kind for rel, kind in dump.bad_files}
    expected = {"empty": "empty", "text": "not-an-image", "truncated": "not-an-image",
                "duplicate": "duplicate"}
    assert reasons(dest) == {rel: expected[kind] for rel, kind in bad.items() if kind in expected}
    assert not list(tmp_path.glob(".*"))  # no partial folder left behind


def test_header_check_rejects_files_cut_inside_the_header(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    data = (root / "a" / "a_0.jpg").read_bytes()
    (root / "a" / "cut.jpg").write_bytes(data[:20])
    (root / "b" / "text.png").write_text("hello")
    p = plan(root)
    assert {(s.source, s.reason) for s in p.skipped} == {("a/cut.jpg", "not-an-image"),
                                                         ("b/text.png", "not-an-image")}


def test_min_size_and_label_conflict(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    write_image(root / "a" / "tiny.jpg", smooth_image(30, 200, seed=70))
    write_image(root / "b" / "small.jpg", smooth_image(99, 120, seed=71))
    (root / "b" / "same.jpg").write_bytes((root / "a" / "a_1.jpg").read_bytes())
    p = plan(root, min_size=40)
    got = {(s.source, s.reason) for s in p.skipped}
    assert got == {("a/tiny.jpg", "too-small"), ("a/a_1.jpg", LABEL_CONFLICT),
                   ("b/same.jpg", LABEL_CONFLICT)}
    tiny = next(s for s in p.skipped if s.reason == "too-small")
    assert "200x30" in tiny.detail
    assert "b/small.jpg" in {f.source for f in p.files}


@pytest.mark.parametrize("verify", ["header", "full"])
def test_max_pixels_leaves_out_larger_images_and_zero_lifts_the_limit(tmp_path, verify):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)  # 48x64
    write_image(root / "a" / "big.png", smooth_image(80, 100, seed=72))  # 8,000 pixels
    p = plan(root, max_pixels=5000, verify=verify)
    big = next(s for s in p.skipped if s.source == "a/big.png")
    assert big.reason == "too-large" and "100x80 is over the 5,000-pixel limit" in big.detail
    assert len(p.files) == 6
    assert "a/big.png" in {f.source for f in plan(root, max_pixels=0, verify=verify).files}
    # The default is build-hdf5's, and left out of split.json's params as before the option.
    assert "max_pixels" not in SplitOptions().params()
    assert SplitOptions(max_pixels=0).params()["max_pixels"] == 0
    with pytest.raises(LayoutError, match=r"Raise --max-pixels \(now 1,000; 0 for no limit\)"):
        plan(root, max_pixels=1000)
    for bad in (-1, 2.5, True):
        with pytest.raises(UsageError, match="max_pixels must be a whole number"):
            SplitOptions(max_pixels=bad)
    assert SplitOptions(max_pixels=numpy.int64(5)).params()["max_pixels"] == 5


def test_every_file_left_out_is_an_error_that_counts_and_shows_the_reasons(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    (root / "b" / "notes.jpg").write_text("not an image")
    with pytest.raises(LayoutError) as caught:
        plan(root, min_size=500)
    message = str(caught.value)
    assert "every file was left out (6 too-small, 1 not-an-image; for example a/a_0.jpg: " \
        in message and "Lower --min-size (now 500)" in message and "--dry-run" not in message


def test_a_dump_holding_a_copy_of_its_class_folders_is_split_by_its_classes(tmp_path):
    # Kaggle's flowers archive: flowers/daisy/... and again flowers/flowers/daisy/...; read as
    # plain class folders, the copy was one more class, every image of which is another's.
    root = make_class_folders(tmp_path / "flowers", classes=("daisy", "rose"), per_class=3)
    shutil.copytree(root, tmp_path / "copy")
    shutil.move(tmp_path / "copy", root / "flowers")
    p = plan(root)
    assert p.classes == ["daisy", "rose"] and p.class_copy == "flowers" and p.copy_variants == 0
    assert sorted(f.source for f in p.files) == sorted(
        f"{c}/{c}_{k}.jpg" for c in ("daisy", "rose") for k in range(3))
    assert sorted((s.source, s.reason) for s in p.skipped) == sorted(
        (f"flowers/{c}/{c}_{k}.jpg", DUPLICATE) for c in ("daisy", "rose") for k in range(3))
    # The two copies need not be alike: each image is labelled by its class folder.
    write_image(root / "daisy" / "outer_only.jpg", smooth_image(48, 48, seed=91))
    write_image(root / "flowers" / "rose" / "copy_only.jpg", smooth_image(48, 48, seed=92))
    p = plan(root)
    label_of = {f.source: f.label for f in p.files}
    assert p.classes == ["daisy", "rose"] and len(p.files) == 8
    assert label_of["daisy/outer_only.jpg"] == "daisy"
    assert label_of["flowers/rose/copy_only.jpg"] == "rose"
    assert p.copy_variants == 0  # a file only in the copy varies nothing
    # The same as a zip, wrapped in its folder: the copy is found below the wrapper.
    archive = shutil.make_archive(str(tmp_path / "flowers"), "zip", tmp_path, "flowers")
    zipped = plan(archive)
    assert zipped.root == "flowers" and zipped.class_copy == "flowers"
    assert sorted(f.source for f in zipped.files) == sorted(f"flowers/{f}" for f in label_of)
    assert zipped.copy_variants == 0
    # A file of the copy with other content than the file under its path outside it.
    write_image(root / "flowers" / "daisy" / "daisy_0.jpg", smooth_image(48, 48, seed=93))
    assert plan(root).copy_variants == 1


def test_a_class_folder_with_sub_folders_is_no_copy(tmp_path):
    # A class of its own (images straight in it), sub-folders named as no class beside it,
    # only one, or a folder not named as the dump (augmented/daisy/, rejected/rose/): the
    # folder stays a class, its images labelled by it.
    for extra, inner in ((True, ("daisy", "rose")), (False, ("daisy", "lily")),
                         (False, ("daisy",)), (False, ("daisy", "rose"))):
        root = make_class_folders(tmp_path / f"d{len(inner)}{extra}{inner[-1]}",
                                  classes=("daisy", "rose"), per_class=2)
        for k, name in enumerate(inner):
            write_image(root / "mixed" / name / "x.jpg", smooth_image(48, 48, seed=60 + k))
        if extra:
            write_image(root / "mixed" / "own.jpg", smooth_image(48, 48, seed=70))
        p = plan(root)
        assert p.class_copy is None and p.classes == ["daisy", "mixed", "rose"], (extra, inner)


def test_labels_that_are_sets_of_tags_are_warned_of(tmp_path):
    # Planet's tags ("clear primary", "clear primary water") and NIH's "A|B": multi-label
    # data a single-label split makes odd classes of (or leaves out).
    root = tmp_path / "planet"
    tags = ["clear primary", "clear primary water", "haze primary", "clear primary road",
            "Effusion|Mass", "cloudy"]
    rows = []
    for i, tag in enumerate(tags * 2):
        write_image(root / "train-jpg" / f"train_{i}.jpg", smooth_image(40, 40, seed=i))
        rows.append(f"train_{i},{tag}\n")
    (root / "train_v2.csv").write_text("image_name,tags\n" + "".join(rows))
    warnings = plan(root).warnings()
    assert any(w.startswith("the labels look like sets of tags ('clear primary road' holds "
                            "'clear primary', 'clear primary water' holds 'clear primary')")
               for w in warnings), warnings
    assert any("labels joined by '|' name several classes each" in w for w in warnings)
    # Class names of several words are no tags when none holds another's.
    fruits = make_class_folders(tmp_path / "fruits", classes=("Apple Braeburn", "Apple Red 1"),
                                per_class=2)
    (fruits / "labels.csv").write_text("file,label\n" + "".join(
        f"{p.relative_to(fruits).as_posix()},{p.parent.name}\n"
        for p in sorted(fruits.rglob("*.jpg"))))
    fruit_plan = plan(fruits)
    assert fruit_plan.layout == "csv" and not any("tags" in w for w in fruit_plan.warnings())


def test_class_folders_named_as_a_datasets_parts_are_warned_of(tmp_path):
    # Oxford-IIIT Pet from its top folder: images/ and annotations/ (trimaps/ of masks of the
    # same names) taken for two classes.
    pet = tmp_path / "pet"
    for i, breed in enumerate(("Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2")):
        write_image(pet / "images" / f"{breed}.jpg", smooth_image(40, 40, seed=i))
        write_image(pet / "annotations" / "trimaps" / f"{breed}.png",
                    smooth_image(40, 40, seed=20 + i)[..., 0])
    warnings = plan(pet).warnings()
    assert warnings == [
        "the classes annotations, images are named as the parts of a dataset (its images, "
        "masks, annotations), not as classes, and 8 of their files share their names with "
        f"another class's (images and their masks?): if images/ holds the images, give "
        f"{pet / 'images'} as SRC, with --layout prefix (--pattern) or --labels if their names "
        "or a list give the classes"], warnings
    # One folder so named is a class (a mask-wearing one), also where every class numbers
    # its files alike.
    for classes in (("mask", "no_mask", "incorrect_mask"), ("photos", "paintings")):
        for k, name in enumerate(classes):
            for i in range(3):
                write_image(tmp_path / classes[0] / name / f"{i}.jpg",
                            smooth_image(40, 40, seed=40 + i + 5 * k))
        warnings = plan(tmp_path / classes[0]).warnings()
        assert not any("parts of a dataset" in w for w in warnings), warnings


def test_classes_named_as_splits_are_warned_of_with_the_folder_to_split(tmp_path):
    # ASL Alphabet: asl_alphabet_train/asl_alphabet_train/<letter>/ beside a flat test folder.
    root = tmp_path / "asl"
    for k, letter in enumerate("AB"):
        for i in range(3):
            write_image(root / "asl_alphabet_train" / "asl_alphabet_train" / letter
                        / f"{letter}{i}.jpg", smooth_image(40, 40, seed=10 * k + i))
        write_image(root / "asl_alphabet_test" / "asl_alphabet_test" / f"{letter}_test.jpg",
                    smooth_image(40, 40, seed=80 + k))
    warnings = plan(root).warnings()
    assert warnings == [
        "every class is named as a split (asl_alphabet_test, asl_alphabet_train): the dump is "
        "split already, and its classes lie further down; to split the images of "
        "asl_alphabet_train/asl_alphabet_train/ by their classes, give "
        f"{root / 'asl_alphabet_train' / 'asl_alphabet_train'} as SRC"], warnings
    inner = plan(root / "asl_alphabet_train" / "asl_alphabet_train")
    assert inner.classes == ["A", "B"] and inner.warnings() == []
    # Classes whose names hold such words, their images straight inside: classes.
    flat = make_class_folders(tmp_path / "qa", classes=("test_pass", "test_fail"), per_class=3)
    assert not any("named as a split" in w for w in plan(flat).warnings())


def test_a_class_whose_every_image_is_left_out_is_named(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "c"), per_class=3)
    write_image(root / "b" / "tiny.jpg", smooth_image(20, 20, seed=80))
    p = plan(root, min_size=40)
    assert p.classes == ["a", "c"] and p.lost_classes == ["b"]
    assert plan(root).lost_classes == []


def test_unreadable_file_is_skipped_not_fatal(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    real_read = FolderSource.read

    def read(self, rel):
        # Tests run as root, so file modes cannot make a file unreadable: inject the fault.
        if rel == "b/b_2.jpg":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_read(self, rel)

    monkeypatch.setattr(FolderSource, "read", read)
    p = plan(root)
    assert [(s.source, s.reason, s.detail) for s in p.skipped] == [
        ("b/b_2.jpg", "unreadable", "Permission denied")]
    assert len(p.files) == 5
    # A file that cannot be read is a fault of the machine, not of the data: a warning (on
    # stderr, even with -q) says so, where a bad image is only counted.
    assert [w for w in p.warnings() if "could not be read" in w] == [
        "1 file could not be read and is left out, e.g. b/b_2.jpg (Permission denied): if it "
        "is to be in the split, make it readable and run the same command again, with --force "
        "once the split is made (it is then made again: build and train again from it); "
        "skipped.csv lists each"]
    materialize(p, tmp_path / "out")
    monkeypatch.undo()
    # Readable again, the file is one more image: the split it was left out of is refused
    # without --force, as the warning says.
    with pytest.raises(DestinationExistsError, match="1 new"):
        materialize(plan(root), tmp_path / "out")
    assert materialize(plan(root), tmp_path / "out", force=True).placed == 6
    assert not any("could not be read" in w for w in plan(make_class_folders(
        tmp_path / "d2", classes=("a", "b"), per_class=3)).warnings())


def test_placeholder_sized_images_are_said_unless_min_size_leaves_them_out(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    write_image(root / "b" / "pixel.png", numpy.full((1, 1, 3), 200, numpy.uint8))
    said = [w for w in plan(root).warnings() if "smaller than" in w]
    assert said == ["1 image is smaller than 8 pixels on a side, e.g. b/pixel.png (1x1): "
                    "placeholders? --min-size 8 leaves it out"]
    p = plan(root, min_size=8)
    assert not any("smaller than" in w for w in p.warnings())
    assert [(s.source, s.reason) for s in p.skipped] == [("b/pixel.png", "too-small")]


def test_two_ratios_make_train_and_val_only(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=5)
    dest = tmp_path / "s"
    materialize(plan(root, ratios=(0.6, 0.4)), dest)
    assert sorted(p.name for p in dest.iterdir() if p.is_dir()) == ["train", "val"]
    assert json.loads((dest / "split.json").read_text())["counts"] == {
        "train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}}


def test_every_class_folder_exists_in_every_split(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=1)
    dest = tmp_path / "s"
    materialize(plan(root), dest)  # one image per class: val and test get none
    for split_name in ("train", "val", "test"):
        assert sorted(p.name for p in (dest / split_name).iterdir()) == ["a", "b"]


def test_name_clashes_are_resolved_deterministically(tmp_path):
    root = tmp_path / "d"
    write_image(root / "a" / "x" / "1.jpg", smooth_image(20, 20, seed=1))
    write_image(root / "a" / "y" / "1.jpg", smooth_image(20, 20, seed=2))
    write_image(root / "a" / "y" / "Photo.JPG", smooth_image(20, 20, seed=3))
    write_image(root / "a" / "z" / "photo.jpg", smooth_image(20, 20, seed=4))
    write_image(root / "b" / "1.jpg", smooth_image(20, 20, seed=5))
    p = plan(root, ratios=(1.0, 0.0))
    names = {f.source: f.path for f in p.files}
    assert names["b/1.jpg"] == "train/b/1.jpg"
    clashing = [names[s] for s in ("a/x/1.jpg", "a/y/1.jpg", "a/y/Photo.JPG", "a/z/photo.jpg")]
    assert len({n.lower() for n in clashing}) == 4
    for src, path in zip(("a/x/1.jpg", "a/y/1.jpg"), clashing[:2], strict=True):
        digest = hashlib.sha256((root / src).read_bytes()).hexdigest()
        assert path == f"train/a/1-{digest[:10]}.jpg"
    dest = tmp_path / "s"
    materialize(p, dest)
    assert len(list((dest / "train" / "a").iterdir())) == 4


def test_long_clashing_names_are_cut_to_fit_the_file_system(tmp_path):
    # 250 bytes, 125 characters: a hash suffix pushed them past 255 bytes, and the split
    # failed. "é" is two bytes; the odd "x" makes the cut fall inside one.
    stem = "x" + "é" * 122 + "1"
    root = tmp_path / "d"
    for i, sub in enumerate(("p1", "p2", "p3")):
        name = f"{stem}.jpg" if sub != "p3" else f"{stem.upper()}.jpg"
        write_image(root / "a" / sub / name, smooth_image(20, 20, seed=i))
    write_image(root / "b" / "1.jpg", smooth_image(20, 20, seed=9))
    p, result = run(root, tmp_path / "s", SplitOptions(ratios=(1.0, 0.0)))
    names = sorted(p.name for p in (tmp_path / "s" / "train" / "a").iterdir())
    assert result.placed == 4 and len(names) == 3
    assert len({n.lower() for n in names}) == 3
    assert all(len(n.encode()) <= 255 and n.endswith(".jpg") for n in names)
    assert all(n.startswith("x" + "é" * 119 + "-") or n.startswith("X" + "É" * 119 + "-")
               for n in names)
    # A zip member's name may be too long on its own: it is cut the same way.
    long = "z" * 300 + ".png"
    names = split_module._dest_names([_Checked(f"a/{long}", "ab" * 32),
                                      _Checked("a/short.png", "cd" * 32)])
    assert names == {f"a/{long}": f"{'z' * 240}-{'ab' * 5}.png",
                     "a/short.png": "short.png"}


def test_source_is_unchanged(dump, tmp_path):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in dump.dest.rglob("*")
              if p.is_file()}
    for mode in ("copy", "hardlink", "symlink"):
        materialize(plan(dump.dest), tmp_path / mode, mode=mode)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in dump.dest.rglob("*")
             if p.is_file()}
    assert after == before


def test_zip_source_is_unchanged(dump, tmp_path):
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(dump.dest.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(dump.dest).as_posix())
    before = (archive.read_bytes(), archive.stat().st_mtime_ns)
    result = materialize(plan(archive, verify="full"), tmp_path / "s")
    assert result.placed > 0
    with pytest.raises(UsageError):
        materialize(plan(archive), tmp_path / "l", mode="hardlink")
    assert (archive.read_bytes(), archive.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "dump.zip", "s"]


def test_force_repairs_a_damaged_split(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=5)
    dest = tmp_path / "s"
    p = plan(root)
    materialize(p, dest)
    clean = tree(dest)
    lost = dest / p.files[0].path
    lost.unlink()
    result = materialize(plan(root), dest, force=True)
    assert not result.already_complete and result.placed == len(p.files)
    assert lost.is_file() and tree(dest) == clean


def test_cli_force_repairs_a_damaged_split(tmp_path):
    from click.testing import CliRunner

    from dsprep.cli import main

    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=5)
    dest = tmp_path / "s"
    args = ["-q", "split", str(root), str(dest)]
    assert CliRunner().invoke(main, args).exit_code == 0
    clean = tree(dest)
    victim = next((dest / "train" / "a").iterdir())
    victim.unlink()
    result = CliRunner().invoke(main, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert victim.is_file() and tree(dest) == clean


def test_a_source_that_changed_is_not_split_again_without_force(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=10)
    dest = tmp_path / "s"
    materialize(plan(root), dest)
    before = tree(dest)
    # A rebuild would reshuffle class a: images trained on would move into val or test.
    write_image(root / "a" / "new.jpg", smooth_image(24, 24, seed=77))
    p = plan(root)
    with pytest.raises(DestinationExistsError, match=r"changed since .* 1 new, 0 gone, \d+ "
                       r"would move between train/val/test.*use --force"):
        materialize(p, dest)
    with pytest.raises(DestinationExistsError, match="1 new"):
        run(root, dest)
    assert tree(dest) == before
    (root / "a" / "a_0.jpg").unlink()
    with pytest.raises(DestinationExistsError, match="1 new, 1 gone"):
        run(root, dest)
    result = materialize(plan(root), dest, force=True)
    assert not result.already_complete
    placed = next(f for f in plan(root).files if f.source == "a/new.jpg")
    assert (dest / placed.path).read_bytes() == (root / "a" / "new.jpg").read_bytes()
    assert materialize(plan(root), dest).already_complete  # now it is up to date
    # A new file left out moves no image: the split is brought up to date without --force,
    # its placed files left as they are (what was built from them stays up to date).
    inodes = {p: p.stat().st_ino for p in dest.rglob("*.jpg")}
    (root / "b" / "empty.jpg").write_bytes(b"")
    p = plan(root)
    result = materialize(p, dest)
    assert not result.already_complete and result.skipped_changed and result.placed == 0
    assert reasons(dest) == {"b/empty.jpg": "empty"}
    assert json.loads((dest / "split.json").read_text())["skipped"] == {"empty": 1}
    assert {p: p.stat().st_ino for p in dest.rglob("*.jpg")} == inodes
    assert materialize(plan(root), dest).already_complete
    # A files.csv saved again by a spreadsheet (a BOM before its header) is not compared.
    text = (dest / "files.csv").read_text(encoding="utf-8")
    (dest / "files.csv").write_text("\ufeff" + text, encoding="utf-8")
    write_image(root / "a" / "newer.jpg", smooth_image(24, 24, seed=78))
    assert not materialize(plan(root), dest).already_complete


def test_link_modes(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    p = plan(root)
    materialize(p, tmp_path / "h", mode="hardlink")
    materialize(p, tmp_path / "l", mode="symlink")
    for f in p.files:
        assert (tmp_path / "h" / f.path).stat().st_ino == (root / f.source).stat().st_ino
        link = tmp_path / "l" / f.path
        assert link.is_symlink() and Path(os.readlink(link)) == (root / f.source).resolve()
    assert json.loads((tmp_path / "l" / "split.json").read_text())["params"]["mode"] == "symlink"


def test_hardlink_mode_links_the_file_a_relative_link_of_the_dump_points_to(tmp_path):
    # os.link linked the dump's link itself; its relative target was then looked up from DEST,
    # where nothing lay, and the build left the image out as a dangling link.
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=2)
    write_image(tmp_path / "ext" / "ext.png", smooth_image(24, 24, seed=79))
    os.symlink("../../ext/ext.png", root / "a" / "rel.png")
    p = plan(root)
    placed = next(f for f in p.files if f.source == "a/rel.png")
    materialize(p, tmp_path / "h", mode="hardlink")
    linked = tmp_path / "h" / placed.path
    assert not linked.is_symlink()
    assert linked.stat().st_ino == (tmp_path / "ext" / "ext.png").stat().st_ino


def test_hardlink_across_devices_falls_back_to_copy(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=2)

    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(split_module.os, "link", cross_device)
    result = materialize(plan(root), tmp_path / "s", mode="hardlink")
    assert result.copied_instead == 4
    for path in (tmp_path / "s").glob("*/*/*.jpg"):
        assert path.stat().st_nlink == 1


def test_zip_source_gives_the_same_split_as_the_folder(dump, tmp_path):
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(dump.dest.rglob("*")):
            if path.is_file():
                zf.write(path, "dump/" + path.relative_to(dump.dest).as_posix())
    materialize(plan(dump.dest), tmp_path / "from-folder")
    materialize(plan(archive), tmp_path / "from-zip")
    a, b = tree(tmp_path / "from-folder"), tree(tmp_path / "from-zip")
    placed = {k for k in a if k.count("/") == 2}
    assert placed and placed == {k for k in b if k.count("/") == 2}
    assert all(a[k] == b[k] for k in placed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "dump.zip", "from-folder",
                                                          "from-zip"]
    with pytest.raises(UsageError, match="archive"):
        materialize(plan(archive), tmp_path / "linked", mode="symlink")


def test_same_split_whatever_the_listing_order(dump, tmp_path, monkeypatch):
    materialize(plan(dump.dest), tmp_path / "a")
    real_scandir = os.scandir

    class ReversedScandir:
        """os.scandir listing in reverse name order (file systems promise no order)."""

        def __init__(self, path=".") -> None:
            with real_scandir(path) as it:
                self.entries = iter(sorted(it, key=lambda e: e.name, reverse=True))

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    reversed_scandir = ReversedScandir

    monkeypatch.setattr(os, "scandir", reversed_scandir)
    materialize(plan(dump.dest, workers=1), tmp_path / "b")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")  # manifests included


def test_destination_rules(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    dest = tmp_path / "s"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    p = plan(root)
    with pytest.raises(DestinationExistsError, match=r"not a split folder: it holds 1 entry "
                       r"dsprep did not write, such as mine.txt; .*--force would delete"):
        materialize(p, dest)
    assert (dest / "mine.txt").read_text() == "keep"
    materialize(p, dest, force=True)
    assert not (dest / "mine.txt").exists()
    assert check_destination(root, dest, SplitOptions()) is True
    assert materialize(p, dest).already_complete
    # A placed file deleted by hand: the split is no longer complete, and a rerun restores it.
    gone = dest / p.files[0].path
    gone.unlink()
    again = materialize(p, dest)
    assert not again.already_complete and gone.is_file()
    assert materialize(p, dest).already_complete
    # Made again whole: not while it holds what the split did not write, which would go.
    mine = [dest / "NOTES.md", dest / "hdf5" / "train.hdf5", dest / (p.files[1].path + "x")]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("keep")
    for broken in ("a placed file gone", "another skipped.csv"):
        if broken == "a placed file gone":
            gone.unlink()
        else:
            (root / "a" / "empty.jpg").write_bytes(b"")
        with pytest.raises(DestinationExistsError, match=r"holds 3 entries the split did not "
                           r"write, such as NOTES.md, .*Move them out"):
            materialize(plan(root), dest)
        assert all(path.read_text() == "keep" for path in mine)
    for path in mine:
        path.unlink()
    (dest / "hdf5").rmdir()
    # What a file browser leaves is no loss: it does not stop the repair.
    (dest / ".DS_Store").write_text("x")
    (dest / gone.parent.relative_to(dest) / "Thumbs.db").write_text("x")
    assert not materialize(plan(root), dest).already_complete and gone.is_file()
    (root / "a" / "empty.jpg").unlink()
    p = plan(root)
    materialize(p, dest)
    with pytest.raises(DestinationExistsError, match=r"other parameters \(seed 1337, now 5\)"):
        check_destination(root, dest, SplitOptions(seed=5))
    with pytest.raises(DestinationExistsError, match="other parameters"):
        materialize(plan(root, seed=5), dest)
    assert check_destination(root, dest, SplitOptions(seed=5), force=True) is False
    with pytest.raises(UsageError, match="overlap"):
        materialize(p, root / "split")
    with pytest.raises(UsageError, match="overlap"):
        materialize(p, tmp_path, force=True)
    assert len(list(root.rglob("*.jpg"))) == 6


def test_dest_inside_a_folder_the_dump_links_to_is_refused(tmp_path, monkeypatch):
    # The dump's "c" is a link to a folder elsewhere: a split put inside that folder, by
    # either path, would be read as part of the dump by the next split.
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    elsewhere = make_class_folders(tmp_path / "ext", classes=("c",), per_class=3, seed=50) / "c"
    (root / "c").symlink_to(elsewhere)
    before = tree(tmp_path / "ext")
    for dest in (root / "c" / "out", elsewhere / "out"):
        with pytest.raises(UsageError, match="through a link"):
            run(root, dest)
        with pytest.raises(UsageError, match="through a link"):
            run(root, dest, force=True)
        with pytest.raises(UsageError, match="through a link"):
            materialize(plan(root), dest)
    assert tree(tmp_path / "ext") == before
    # Refused once the dump is listed, before its files are read, whatever the path taken.
    read = []
    real_check = split_module._check
    monkeypatch.setattr(split_module, "_check", lambda *a, **k: read.append(1) or real_check(
        *a, **k))
    for kwargs in ({"mode": "hardlink"}, {"options": SplitOptions(limit_per_class=2)}):
        with pytest.raises(UsageError, match="through a link"):
            run(root, elsewhere / "out", **kwargs)
    assert not read
    run(root, tmp_path / "ext" / "out")  # beside the linked folder: outside the dump
    assert sorted(json.loads((tmp_path / "ext" / "out" / "split.json").read_text())
                  ["classes"]) == ["a", "b", "c"]


def test_decomposed_file_names_split_as_the_composed_ones(tmp_path):
    # A Mac (or its archives) decomposes "café" (NFD); the same dump with composed names
    # (NFC) must give each image the same split.
    import unicodedata

    names = ["café", "éclair", "crème", "brûlée", "gâteau", "pâte", "noël", "ça",
             "déjà", "été", "frère", "pièce"]
    composed, decomposed = tmp_path / "nfc", tmp_path / "nfd"
    for n, name in enumerate(names):
        for label in ("sucré", "salé"):
            rgb = smooth_image(24, 24, seed=n * 2 + (label == "salé"))
            write_image(composed / label / f"{name}.jpg", rgb)
            write_image(decomposed / unicodedata.normalize("NFD", label)
                        / unicodedata.normalize("NFD", f"{name}.jpg"), rgb)

    def where(root):
        return {unicodedata.normalize("NFC", f.source): f.split for f in plan(root).files}

    assert where(composed) == where(decomposed)
    assert set(where(composed).values()) == {"train", "val", "test"}


def test_class_folders_that_may_be_no_classes_are_warned_of(tmp_path):
    # A test/ of unlabelled images beside flat class folders; a wrapper dataset/ of class
    # folders beside a stray assets/ of pictures: each was a class without a word.
    root = make_class_folders(tmp_path / "flat", classes=("daisy", "rose", "test"), per_class=3)
    warned = [w for w in plan(root).warnings() if "named as a split" in w]
    assert warned == [f"class test is named as a split beside classes that are not: if it "
                      f"holds images without classes (a test set), move it out of {root}"]
    root = tmp_path / "wrapped"
    make_class_folders(root / "dataset", classes=("daisy", "rose", "tulip"), per_class=3)
    make_class_folders(root / "assets", classes=("x",), per_class=2, seed=50)
    for path in (root / "assets" / "x").iterdir():
        path.rename(root / "assets" / path.name)
    p = plan(root)
    assert p.classes == ["assets", "dataset"]
    assert [w for w in p.warnings() if "folders of its own" in w] == [
        "dataset/ holds its images in folders of its own (daisy/, rose/, tulip/), beside "
        f"other classes: if those folders are the classes, give {root / 'dataset'} as SRC"]
    # Ordinary class folders, classes each kept in folders by source (cat/web/, cat/phone/),
    # and a real class named train (CIFAR-100, VOC) get neither.
    nested = tmp_path / "nested"
    for n, cls in enumerate(("cat", "dog")):
        for k, where in enumerate(("web", "phone")):
            make_class_folders(nested / cls, classes=(where,), per_class=2, seed=10 * n + 4 * k)
    vehicles = make_class_folders(tmp_path / "vehicles", classes=("boat", "bus", "train"),
                                  per_class=3)
    # Classes nested differently (fruits/apple/, vegetables/carrot/) may be one level down.
    grouped = tmp_path / "grouped"
    for n, (group, kinds) in enumerate((("fruits", ("apple", "banana")),
                                        ("vegetables", ("carrot", "potato")))):
        make_class_folders(grouped / group, classes=kinds, per_class=2, seed=30 + 5 * n)
    assert [w for w in plan(grouped).warnings() if "folders of its own" in w] == [
        "every class holds its images in folders of its own (fruits/apple/, fruits/banana/, "
        "vegetables/carrot/, vegetables/potato/, ...): if those folders are the classes, make "
        "them the top folders of the dump, which split takes for the classes"]
    # The same class folders in every top folder, more of them than top folders: versions
    # of one dataset (PlantVillage's color/, grayscale/ and segmented/).
    versions = tmp_path / "plantvillage"
    for n, version in enumerate(("color", "grayscale")):
        make_class_folders(versions / version, classes=("scab", "rust", "healthy", "blight"),
                           per_class=1, seed=40 + 5 * n)
    assert [w for w in plan(versions).warnings() if "same 4 folders" in w] == [
        "every class holds the same 4 folders (blight/, healthy/, rust/, ...): if color/, "
        "grayscale/ are versions of one dataset (as PlantVillage's color/ and grayscale/) and "
        f"those folders its classes, give {versions / 'color'} as SRC; if they are each "
        "class's sources, all is well"]
    # Each class's few sources (NORMAL/hospital_a/), or its own train/ and test/: no warning.
    sources = tmp_path / "sources"
    for n, cls in enumerate(("normal", "pneumonia")):
        make_class_folders(sources / cls, classes=("hospital_a", "hospital_b", "hospital_c"),
                           per_class=1, seed=60 + 5 * n)
    splits = tmp_path / "splits"
    for n, cls in enumerate(("cat", "dog")):
        make_class_folders(splits / cls, classes=("train", "val", "test", "extra"), per_class=1,
                           seed=70 + 5 * n)
    # Top folders that each hold a dataset split already, a level down (Fruits-360's archive:
    # fruits-360_100x100/fruits-360/{Training,Test}/<class>/ beside another size's copy).
    sizes = tmp_path / "fruits"
    for n, (top, inner) in enumerate((("f_100", "fruits-360"), ("f_full", "fruits-full"))):
        for k, part in enumerate(("Training", "Test")):
            make_class_folders(sizes / top / inner / part, classes=("apple", "banana"),
                               per_class=1, seed=50 + 5 * n + k)
    assert [w for w in plan(sizes).warnings() if "split already" in w] == [
        "f_100/fruits-360/ holds a dataset split already (Test/, Training/), and the top "
        f"folders were taken for the classes: give {sizes / 'f_100' / 'fruits-360'} as SRC"]
    # Found in any class, three levels down (Blood Cell Images: dataset-master/ of loose
    # images first, then dataset2-master/dataset2-master/images/{TRAIN,TEST,TEST_SIMPLE}/).
    blood = tmp_path / "blood"
    make_class_folders(blood / "dataset-master", classes=("dataset-master",), per_class=2)
    cells = blood / "dataset2-master" / "dataset2-master" / "images"
    for k, part in enumerate(("TRAIN", "TEST", "TEST_SIMPLE")):
        make_class_folders(cells / part, classes=("EOSINOPHIL", "MONOCYTE"), per_class=1,
                           seed=60 + k)
    assert [w for w in plan(blood).warnings() if "split already" in w] == [
        "dataset2-master/dataset2-master/images/ holds a dataset split already (TEST/, "
        f"TEST_SIMPLE/, TRAIN/), and the top folders were taken for the classes: give {cells} "
        "as SRC"]
    # Every class holding train/ and test/ (a split of its own) is pooled: said.
    own = tmp_path / "own"
    for n, cls in enumerate(("cat", "dog")):
        make_class_folders(own / cls, classes=("train", "test"), per_class=2, seed=80 + 5 * n)
    assert [w for w in plan(own).warnings() if "named as splits" in w] == [
        "every class holds folders named as splits (test/, train/): they were pooled and are "
        "split again; to keep the dump's own split, lay it out as <split>/<class>/ (train/cat/, "
        "...), which build-hdf5 builds as it is"]
    for clean in (make_class_folders(tmp_path / "plain", per_class=3), nested, vehicles,
                  sources, splits):
        assert not [w for w in plan(clean).warnings()
                    if "named as a split" in w or "folders of its own" in w
                    or "versions of one dataset" in w or "split already" in w], clean


def test_one_class_holding_a_split_or_classes_beside_csvs_names_the_folder_to_give(tmp_path):
    # Stanford Cars by classes: car_data/car_data/{train,test}/<class>/ beside anno_train.csv
    # (no header: file, box, class id), which stopped the step into car_data/: one class, and
    # the advice named the CSVs (whose second column, a box corner, made 19 "classes").
    cars = tmp_path / "cars"
    for k, part in enumerate(("train", "test")):
        make_class_folders(cars / "car_data" / "car_data" / part,
                           classes=("AM General Hummer", "Acura RL"), per_class=2, seed=10 * k)
    (cars / "anno_train.csv").write_text("00001.jpg,39,116,569,375,14\n")
    (cars / "names.csv").write_text("AM General Hummer\nAcura RL\n")
    p = plan(cars)
    assert p.classes == ["car_data"]
    assert [w for w in p.warnings() if "one class only" in w] == [
        "one class only (car_data): a classifier needs two or more; car_data/car_data/ holds a "
        f"dataset split already (test/, train/): give {cars / 'car_data' / 'car_data'} as SRC"]
    # EuroSAT's 2750/<class>/ beside train.csv, validation.csv, test.csv.
    euro = tmp_path / "euro"
    make_class_folders(euro / "2750", classes=("AnnualCrop", "Forest", "Highway", "River"),
                       per_class=2)
    (euro / "train.csv").write_text(",Filename,Label,ClassName\n0,Forest/Forest_1.jpg,1,Forest\n")
    assert [w for w in plan(euro).warnings() if "one class only" in w] == [
        "one class only (2750): a classifier needs two or more; its images lie in 4 folders of "
        f"2750/ (AnnualCrop/, Forest/, Highway/, ...): if those are the classes, give "
        f"{euro / '2750'} as SRC"]
    assert len(plan(euro / "2750").classes) == 4  # what it says works


def test_a_labels_csv_over_the_dumps_own_split_folders_is_warned_of(tmp_path):
    # Imagenette: train/<wnid>/ and val/<wnid>/ beside noisy_imagenette.csv (path,
    # noisy_labels_0,...,is_valid): the CSV labels both, and its benchmark val images were
    # pooled into the new train without a word (the folders layout says so in a note).
    root = tmp_path / "imagenette2-160"
    rows = []
    for k, part in enumerate(("train", "val")):
        folder = make_class_folders(root / part, classes=("n01440764", "n02102040"),
                                    per_class=3, seed=30 * k)
        rows += [(p.relative_to(root).as_posix(), p.parent.name, str(part == "val"))
                 for p in sorted(folder.rglob("*.jpg"))]
    (root / "noisy_imagenette.csv").write_text(
        "path,noisy_labels_0,is_valid\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    p = plan(root)
    assert p.layout == "csv"
    assert [w for w in p.warnings() if "own split folders" in w] == [
        "the labelled images lie in the dump's own split folders (train/, val/), pooled by the "
        "CSV's labels and split again here: its own test or val images may land in train; to "
        f"keep its split where its class folders are the classes, 'dsprep build-hdf5 {root} "
        "OUT' builds them as they are"]
    # One folder of images with a CSV: nothing to say.
    flat = make_class_folders(tmp_path / "flat", classes=("a", "b"), per_class=3)
    (flat / "labels.csv").write_text("file,label\n" + "".join(
        f"{q.relative_to(flat).as_posix()},{q.parent.name}\n" for q in sorted(flat.rglob("*.jpg"))))
    assert not [w for w in plan(flat).warnings() if "own split folders" in w]


def test_masks_named_and_sized_as_images_beside_them_are_warned_of(tmp_path):
    # BUSI: benign/benign (1).png beside benign/benign (1)_mask.png (and _mask_1.png).
    root = tmp_path / "busi"
    for c, cls in enumerate(("benign", "malignant")):
        for i in range(1, 4):
            write_image(root / cls / f"{cls} ({i}).png", smooth_image(30, 20, seed=9 * c + i))
            write_image(root / cls / f"{cls} ({i})_mask.png",
                        smooth_image(30, 20, seed=50 + 9 * c + i))
        write_image(root / cls / f"{cls} (1)_mask_1.png", smooth_image(30, 20, seed=80 + c))
    warning = [w for w in plan(root).warnings() if "masks" in w]
    assert warning == [
        "8 images are named as the masks of images of their size beside them (benign 4, "
        "malignant 4; e.g. benign/benign (1)_mask.png beside benign (1).png), and are split as "
        "images of their classes: if they are masks (segmentation maps), not pictures, move "
        "them out of the dump (or, in each class, the masks into a masks/ folder and the "
        "pictures into an images/ folder beside it: split then leaves the masks out) and split "
        "again"], warning
    # What it says works: the masks are left out.
    for cls in ("benign", "malignant"):
        for path in sorted((root / cls).glob("*.png")):
            part = "masks" if "_mask" in path.name else "images"
            (root / cls / part).mkdir(exist_ok=True)
            path.rename(root / cls / part / path.name)
    p = plan(root)
    assert len(p.files) == 6 and not any("_mask" in f.source for f in p.files)
    assert not [w for w in p.warnings() if "masks" in w]
    # Pictures of other sizes named so (a face with a mask on, beside one without): nothing.
    faces = tmp_path / "faces"
    for c, cls in enumerate(("alice", "bob")):
        for i in range(3):
            write_image(faces / cls / f"{i}.jpg", smooth_image(30, 20, seed=9 * c + i))
            write_image(faces / cls / f"{i}_mask.jpg", smooth_image(32, 24, seed=40 + c + i))
    assert not [w for w in plan(faces).warnings() if "masks" in w]


def test_a_class_folder_of_images_without_extensions_is_warned_of(tmp_path):
    # A class folder whose images lost their extensions (fox/0, fox/1) vanished without a word.
    root = make_class_folders(tmp_path / "dump", classes=("cat", "dog", "fox"), per_class=3)
    for path in sorted((root / "fox").iterdir()):
        path.rename(path.with_suffix(""))
    docs = root / "docs"  # extension-less files that are no images: nothing to say
    docs.mkdir()
    (docs / "LICENSE").write_text("all rights reserved\n")
    (docs / "README").write_bytes(b"\x00\x01binary")
    for source in (root, shutil.make_archive(str(tmp_path / "dump"), "zip", root)):
        p = plan(source)
        assert p.classes == ["cat", "dog"]
        assert [w for w in p.warnings() if "extension" in w] == [
            "fox/ is left out: it holds no image file, but 3 files without an extension (fox/fox_0 "
            "begins as an image does); split takes images by their extension: rename them with "
            "theirs (.jpg, .png, ...) to keep them"]
    # Extension-less files beside images in a class folder, or one file that is no image:
    # nothing to say.
    (root / "fox" / "fox_0").rename(root / "cat" / "extra")
    for path in (root / "fox").iterdir():
        path.unlink()
    (root / "fox" / "notes").write_text("fox images to come\n")
    assert not [w for w in plan(root).warnings() if "extension" in w]


def test_extension_less_images_are_found_by_their_signatures_alone(tmp_path, monkeypatch):
    # A dump already split (train/grass/ of such files vanished unseen), PPM files (missed),
    # WAV files (RIFF, taken for WebP), a README first in the folder (it hid the rest), and a
    # large raw file beside the classes (read whole, gigabytes for MNIST's idx files).
    import cv2

    root = tmp_path / "dump"
    for split_name in ("train", "val"):
        make_class_folders(root / split_name, classes=("brick", "gravel"), per_class=3)
    grass = root / "train" / "grass"
    grass.mkdir()
    (grass / "0README").write_text("grass images, no extensions\n")
    for i in range(1, 3):
        ok, data = cv2.imencode(".png", smooth_image(20, 20, seed=i))
        (grass / f"g{i}").write_bytes(data.tobytes())
    flat = make_class_folders(tmp_path / "flat", classes=("cat", "dog"), per_class=3)
    (flat / "ppm").mkdir()
    (flat / "ppm" / "p0").write_bytes(b"P6\n20 20\n255\n" + bytes(1200))
    (flat / "audio").mkdir()
    (flat / "audio" / "clip0").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64))
    (flat / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(64))
    # A whole split folder of such files beside the others (test/) is said too.
    (root / "test" / "brick").mkdir(parents=True)
    (root / "test" / "brick" / "t1").write_bytes((grass / "g1").read_bytes())
    assert [w for w in plan(root).warnings() if "extension" in w] == [
        "test/ is left out: it holds no image file, but 1 file without an extension "
        "(test/brick/t1 begins as an image does); split takes images by their extension: "
        "rename it with its (.jpg, .png, ...) to keep it",
        "train/grass/ is left out: it holds no image file, but 3 files without an extension "
        "(train/grass/g1 begins as an image does); split takes images by their extension: "
        "rename them with theirs (.jpg, .png, ...) to keep them"]
    from dsprep import sources

    heads = []
    real = sources.FolderSource.read_head

    def read_head(self, rel, size):
        heads.append(size)
        return real(self, rel, size)

    monkeypatch.setattr(sources.FolderSource, "read_head", read_head)
    assert [w.split(" is left out")[0] for w in plan(flat).warnings() if "extension" in w] == [
        "ppm/"]
    assert heads and set(heads) == {16}  # the heads only, never a whole file


def _disk_full_at_copy(monkeypatch, n: int):
    """Copies fail with ENOSPC from the ``n``-th on; returns the real copy function."""
    real_copy = split_module.copy_file
    calls = []

    def failing_copy(src, dst):
        calls.append(src)
        if len(calls) >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst)

    monkeypatch.setattr(split_module, "copy_file", failing_copy)
    return real_copy


def _on_disk(sizes, block=4096):
    """The room files of these sizes take in whole blocks (what the split says it needs):
    a written reference, not the code's."""
    return sum(math.ceil(size / block) * block for size in sizes)


def _disk_full_at_split_json(monkeypatch):
    """Writing split.json fails with ENOSPC; returns the real writer."""
    real_write = split_module._write_text

    def full(path, text):
        if Path(path).name == "split.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, text)

    monkeypatch.setattr(split_module, "_write_text", full)
    return real_write


def test_interrupted_copy_then_rerun_completes(dump, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    materialize(plan(dump.dest), clean)
    dest = tmp_path / "split"
    real_copy = _disk_full_at_copy(monkeypatch, 10)
    p = plan(dump.dest)
    with pytest.raises(OSError, match="No space") as info:
        materialize(p, dest, workers=1)
    # Named as the split that does not fit, not as the hidden file the write failed on.
    assert info.value.errno == errno.ENOSPC and info.value.filename is None
    message = info.value.strerror
    assert message.startswith(f"{dest}: the split does not fit")
    partial = tmp_path / ".split.split-partial"
    # What is left to place: the files placed are kept, and take their room already.
    sizes = [f.size for f in p.files if not (partial / f.path).exists()]
    assert 0 < len(sizes) < len(p.files)
    left = _on_disk(sizes, os.statvfs(tmp_path).f_frsize)
    assert f"the files still to place take {left / 1e6:,.1f} MB" in message
    assert "placed so far are kept" in message and "--mode symlink" in message
    assert not dest.exists()  # nothing that looks finished
    assert partial.is_dir() and not (partial / "split.json").exists()
    monkeypatch.setattr(split_module, "copy_file", real_copy)
    # A file cut short and one garbled in place (same size) must not be reused.
    placed = sorted(partial.glob("*/*/*.*"))
    assert len(placed) == 9
    placed[0].write_bytes(placed[0].read_bytes()[:100])
    garbled = bytearray(placed[1].read_bytes())
    garbled[-10] ^= 0xFF
    placed[1].write_bytes(bytes(garbled))
    result = materialize(plan(dump.dest), dest)
    assert result.reused == 7 and result.placed == len(p.files) - 7
    assert tree(dest) == tree(clean)
    assert not partial.exists()


def test_a_forced_split_on_a_full_disk_keeps_nothing_and_says_so(dump, tmp_path, monkeypatch):
    real_copy = _disk_full_at_copy(monkeypatch, 5)
    dest = tmp_path / "split"
    with pytest.raises(OSError, match="Nothing was kept"):
        materialize(plan(dump.dest), dest, force=True, workers=1)
    # True to its word: the files it placed are gone, and their room with them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump"]
    monkeypatch.setattr(split_module, "copy_file", real_copy)
    # The same in one pass, full while it writes the split's own files.
    _disk_full_at_split_json(monkeypatch)
    with pytest.raises(OSError, match="Nothing was kept"):
        run(dump.dest, dest, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump"]


def test_a_full_disk_while_writing_the_split_files_names_dest(dump, tmp_path, monkeypatch):
    real_write = _disk_full_at_split_json(monkeypatch)
    dest = tmp_path / "split"
    for place in (lambda: materialize(plan(dump.dest), dest), lambda: run(dump.dest, dest)):
        with pytest.raises(OSError) as info:
            place()
        # DEST, not the hidden work folder's split.json, and the placed files stay for a rerun.
        assert info.value.errno == errno.ENOSPC and info.value.filename is None
        assert info.value.strerror.startswith(f"{dest}: the split does not fit")
        assert "placed so far are kept" in info.value.strerror
    monkeypatch.setattr(split_module, "_write_text", real_write)
    assert run(dump.dest, dest)[1].reused == len(plan(dump.dest).files)


@pytest.mark.parametrize("mode", ["symlink", "hardlink"])
def test_links_on_a_full_disk_are_told_by_what_they_take(dump, tmp_path, monkeypatch, mode):
    calls = []
    real_copy = split_module.copy_file

    def full(*args):
        calls.append(args)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        if mode == "hardlink":
            real_copy(*args)

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    if mode == "symlink":
        monkeypatch.setattr(split_module.os, "symlink", full)
    else:  # hard links to another disk become copies, and those fill it
        monkeypatch.setattr(split_module.os, "link", cross_device)
        monkeypatch.setattr(split_module, "copy_file", full)
    monkeypatch.setattr(split_module.os, "statvfs", lambda path: os.statvfs_result(
        (4096, 4096, 100, 50, 50, 1000, 7, 7, 0, 255)))
    p = plan(dump.dest)
    dest = tmp_path / "split"
    with pytest.raises(OSError) as info:
        materialize(p, dest, mode=mode, workers=1)
    message = info.value.strerror
    assert info.value.errno == errno.ENOSPC
    assert f"{50 * 4096 / 1e6:,.1f} MB are free there" in message
    copies = f"its files take {_on_disk(f.size for f in p.files) / 1e6:,.1f} MB"
    if mode == "symlink":
        # Fewer file entries free than links to make: said, with no bytes of copies.
        assert f"7 file entries (inodes) for its {len(p.files):,} links" in message
        assert copies not in message and "--mode" not in message
    else:
        # A hard link takes no file entry; across disks it is a copy, which takes the bytes
        # (those copied before the disk filled are kept for the next run).
        copied = {os.fspath(src) for src, _ in calls[:2]}
        left = _on_disk(f.size for f in p.files if os.fspath(dump.dest / f.source) not in copied)
        assert "inodes" not in message and (f"the files still to place take {left / 1e6:,.1f} "
                                            "MB where hard links become copies") in message
        assert "(--mode symlink)" in message and "--mode hardlink" not in message


@pytest.mark.parametrize("where", [".", "train"])
def test_the_working_folder_as_dest_is_filled_in_place(dump, tmp_path, monkeypatch, where):
    clean = tmp_path / "clean"
    run(dump.dest, clean)
    dest = tmp_path / "out"
    run(dump.dest, dest, SplitOptions(seed=5))
    inode = dest.stat().st_ino
    monkeypatch.chdir(dest / where)
    # Replacing the folder the shell stands in would strand the shell in a deleted folder:
    # the split goes into it instead. ("out/train/.." is "out", the folder above.)
    run(dump.dest, Path("..") if where == "train" else Path("."), force=True)
    assert tree(dest) == tree(clean) and sorted(os.listdir(dest)) == sorted(os.listdir(clean))
    if where == ".":
        assert dest.stat().st_ino == inode and sorted(os.listdir(".")) == sorted(os.listdir(clean))


def test_dotdot_after_a_link_in_dest_is_taken_as_the_system_takes_it(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=2)
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "lnk").symlink_to(tmp_path / "real" / "deep")
    monkeypatch.chdir(tmp_path / "work")
    # lnk/../out is real/out, as for ls and every other program.
    (tmp_path / "real" / "out").mkdir()
    (tmp_path / "real" / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DestinationExistsError):
        split_module.check_run(root, "lnk/../out")
    with pytest.raises(DestinationExistsError):
        run(root, "lnk/../out")
    (tmp_path / "real" / "out" / "notes.txt").unlink()
    p, result = run(root, "lnk/../out")
    assert result.placed == len(p.files) == 4
    assert (tmp_path / "real" / "out" / "split.json").is_file()
    assert not (tmp_path / "work" / "out").exists()


def test_a_mount_point_dest_is_filled_in_place(dump, tmp_path, monkeypatch):
    # A container's volume (docker run -v host:/out) cannot be renamed or removed: the split
    # is made inside it. os.path.ismount stands in for the mount; lost+found is then ignored.
    clean = tmp_path / "clean"
    run(dump.dest, clean)
    dest = tmp_path / "volume"
    (dest / "lost+found").mkdir(parents=True)
    real_ismount = os.path.ismount
    monkeypatch.setattr(split_module.os.path, "ismount",
                        lambda p: Path(p) == dest or real_ismount(p))
    run(dump.dest, dest)
    assert sorted(os.listdir(dest)) == sorted([*os.listdir(clean), "lost+found"])
    assert tree(dest) == tree(clean)
    assert not list(tmp_path.glob(".volume.*"))  # nothing beside it
    assert run(dump.dest, dest)[1].already_complete

    # Replaced with --force by another split; stopped while the new entries move in, then
    # completed by the next run.
    def moving_in(a, b):
        return ".dsprep-split-partial" in str(a) and Path(b).parent == dest

    _stop_at_third_rename(monkeypatch, moving_in,
                          lambda: run(dump.dest, dest, SplitOptions(seed=5), force=True))
    assert not (dest / "split.json").exists()
    run(dump.dest, dest, SplitOptions(seed=5))
    other = tmp_path / "other"
    run(dump.dest, other, SplitOptions(seed=5))
    assert tree(dest) == tree(other)
    assert sorted(os.listdir(dest)) == sorted([*os.listdir(other), "lost+found"])

    # Stopped the same way, then run again with --force (a fresh partial, the same split).
    _stop_at_third_rename(monkeypatch, moving_in,
                          lambda: run(dump.dest, dest, SplitOptions(seed=7), force=True))
    run(dump.dest, dest, SplitOptions(seed=7), force=True)
    seven = tmp_path / "seven"
    run(dump.dest, seven, SplitOptions(seed=7))
    assert tree(dest) == tree(seven)

    # Stopped while the old split was moved aside: split.json goes last, so DEST still reads
    # as that split, and the same command completes it.
    _stop_at_third_rename(monkeypatch, lambda a, b: "-old" in str(b),
                          lambda: run(dump.dest, dest, SplitOptions(seed=5), force=True))
    assert (dest / "split.json").exists()
    run(dump.dest, dest, SplitOptions(seed=5), force=True)
    assert tree(dest) == tree(other)
    # Left over by a run killed after the split was in place: cleared by the next.
    (dest / ".dsprep-split-old" / "train").mkdir(parents=True)
    (dest / ".dsprep-split-swapping").write_text("{}")
    assert run(dump.dest, dest, SplitOptions(seed=5))[1].already_complete
    assert sorted(os.listdir(dest)) == sorted([*os.listdir(other), "lost+found"])


def _stop_at_third_rename(monkeypatch, matches, split) -> None:
    """Run ``split`` with a Ctrl-C at the third rename that ``matches(src, dst)``."""
    real = split_module.os.replace
    seen = []

    def stop(a, b):
        if matches(a, b):
            seen.append(b)
            if len(seen) == 3:
                raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(split_module.os, "replace", stop)
    with pytest.raises(KeyboardInterrupt):
        split()
    monkeypatch.setattr(split_module.os, "replace", real)


def test_a_bind_mount_is_known_from_mountinfo(tmp_path, monkeypatch):
    # A bind mount of a folder of the same file system: os.path.ismount cannot see it.
    vol = tmp_path / "my vol"
    vol.mkdir()
    line = f"36 25 0:32 /x {str(vol).replace(' ', chr(92) + '040')} rw - tmpfs tmpfs rw\n"
    real_open = open

    def mountinfo(path, *args, **kwargs):
        if path == "/proc/self/mountinfo":
            return io.StringIO(line)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(split_module, "open", mountinfo, raising=False)
    assert split_module._is_mount(vol) and not split_module._is_mount(tmp_path)


def test_a_link_to_a_folder_as_dest_fills_the_folder(dump, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    run(dump.dest, link)
    assert link.is_symlink() and (target / "split.json").is_file()
    run(dump.dest, link, SplitOptions(seed=5), force=True)
    assert link.is_symlink() and json.loads((target / "split.json").read_text())[
        "params"]["seed"] == 5


def test_a_different_split_discards_an_unfinished_one(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=4)

    def broken(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(split_module, "copy_file", broken)
    with pytest.raises(OSError):
        materialize(plan(root, seed=1), tmp_path / "s")
    monkeypatch.undo()
    result = materialize(plan(root, seed=2), tmp_path / "s")
    assert result.reused == 0 and result.placed == 8
    assert json.loads((tmp_path / "s" / "split.json").read_text())["params"]["seed"] == 2


def test_a_source_that_changed_size_since_it_was_planned_is_not_copied(tmp_path):
    # The two-step API (and --counts, --limit-per-class) checks and hashes the dump, then
    # copies it: a file rewritten in between would be placed under the old hash and checks.
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=4)
    planned = plan(root, seed=1)
    changed = root / planned.files[3].source
    good = changed.read_bytes()
    changed.write_bytes(good[: len(good) // 2])  # a copy still being written
    with pytest.raises(SplitError, match="changed while the split ran") as caught:
        materialize(planned, tmp_path / "s")
    assert str(changed) in str(caught.value)
    assert not (tmp_path / "s").exists()
    changed.write_bytes(good)
    result = materialize(planned, tmp_path / "s")  # carries on
    assert result.placed + result.reused == 8 and result.placed >= 1
    placed = tmp_path / "s" / planned.files[3].path
    assert hashlib.sha256(placed.read_bytes()).hexdigest() == planned.files[3].sha256


KILLED_RUN = textwrap.dedent("""
    import sys, time
    import dsprep.split as s
    real = s.copy_file
    def slow(src, dst):
        real(src, dst)
        time.sleep(0.05)
    s.copy_file = slow
    s.materialize(s.plan(sys.argv[1]), sys.argv[2], workers=1)
""")


@pytest.mark.slow
def test_killed_run_leaves_no_finished_split_and_rerun_completes(dump, tmp_path):
    dest = tmp_path / "split"
    partial = tmp_path / ".split.split-partial"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(dump.dest), str(dest)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if partial.is_dir() and len(list(partial.glob("train/*/*.jpg"))) >= 5:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists() and not (partial / "split.json").exists()
    result = materialize(plan(dump.dest), dest)
    assert result.reused >= 5
    clean = tmp_path / "clean"
    materialize(plan(dump.dest), clean)
    assert tree(dest) == tree(clean)


# ---------------------------------------------------------------- one-pass split (run)


def entries(root: Path) -> list[str]:
    """Every file and folder under root, hidden ones included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def two_step(src, dest: Path, options: SplitOptions | None = None) -> None:
    materialize(plan(src, options), dest)


def no_copy(src, dst):
    raise AssertionError(f"{src} was copied a second time instead of reusing the bytes read")


def test_run_is_one_pass_and_matches_plan_then_materialize(dump, tmp_path, monkeypatch):
    two_step(dump.dest, tmp_path / "two")
    reads = Counter()
    real_read = FolderSource.read

    def counting_read(self, rel):
        reads[rel] += 1
        return real_read(self, rel)

    monkeypatch.setattr(FolderSource, "read", counting_read)
    monkeypatch.setattr(split_module, "copy_file", no_copy)
    p, result = run(dump.dest, tmp_path / "one")
    assert result.placed == len(p.files) > 0 and not result.already_complete
    assert reads and set(reads.values()) == {1}  # every file read exactly once
    assert entries(tmp_path / "one") == entries(tmp_path / "two")  # no staging left behind
    assert tree(tmp_path / "one") == tree(tmp_path / "two")  # manifests included
    # The dump holds a duplicate: its staged copy was dropped, not placed.
    assert "duplicate" in set(reasons(tmp_path / "one").values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "one", "two"]


def test_run_matches_whatever_the_listing_order(dump, tmp_path, monkeypatch):
    two_step(dump.dest, tmp_path / "two")
    real_scandir = os.scandir

    class Listing(list):
        """A finished listing that also works as os.scandir's context manager."""

        def __enter__(self):
            return iter(self)

        def __exit__(self, *exc) -> None:
            pass

    def reversed_scandir(path="."):
        with real_scandir(path) as it:
            return Listing(sorted(it, key=lambda e: e.name, reverse=True))

    monkeypatch.setattr(os, "scandir", reversed_scandir)
    run(dump.dest, tmp_path / "one", workers=1)
    assert tree(tmp_path / "one") == tree(tmp_path / "two")


def test_run_from_a_zip_writes_the_archived_bytes(dump, tmp_path, monkeypatch):
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(dump.dest.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(dump.dest).as_posix())
    before = (archive.read_bytes(), archive.stat().st_mtime_ns)
    two_step(archive, tmp_path / "two")
    monkeypatch.setattr(split_module, "copy_file", no_copy)
    run(archive, tmp_path / "one")
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    placed = [k for k in tree(tmp_path / "one") if k.count("/") == 2]
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in dump.dest.rglob("*")
                 if p.is_file()}
    assert placed and all(hashlib.sha256((tmp_path / "one" / k).read_bytes()).hexdigest()
                          in originals for k in placed)
    assert (archive.read_bytes(), archive.stat().st_mtime_ns) == before


class Killed(BaseException):
    """Stands for an abrupt stop (Ctrl-C, kill -9): nothing gets to clean up."""


def test_run_stopped_while_reading_is_redone_on_rerun(dump, tmp_path, monkeypatch):
    two_step(dump.dest, tmp_path / "two")
    before = tree(dump.dest)
    dest = tmp_path / "one"
    real_read = FolderSource.read
    calls = []

    def dying_read(self, rel):
        calls.append(rel)
        if len(calls) == 12:
            raise Killed
        return real_read(self, rel)

    monkeypatch.setattr(FolderSource, "read", dying_read)
    with pytest.raises(Killed):
        run(dump.dest, dest, workers=1)
    partial = tmp_path / ".one.split-partial"
    assert not dest.exists()  # nothing that looks finished
    assert len(list((partial / ".staging").iterdir())) >= 5
    monkeypatch.setattr(FolderSource, "read", real_read)
    monkeypatch.setattr(split_module, "copy_file", no_copy)  # the rerun is one pass again
    p, result = run(dump.dest, dest)
    assert result.placed == len(p.files) and result.reused == 0
    assert not partial.exists()
    assert entries(dest) == entries(tmp_path / "two")
    assert tree(dest) == tree(tmp_path / "two")
    assert tree(dump.dest) == before


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_run_stopped_while_reading_leaves_no_staged_copies(dump, tmp_path, monkeypatch, stop):
    # Ctrl-C, or SIGTERM (SystemExit(143)): the copies staged so far would not be taken up by
    # the next run, and they can take the room of the whole dump.
    real_read = FolderSource.read
    calls = []

    def stopped_read(self, rel):
        calls.append(rel)
        if len(calls) == 12:
            raise stop()
        return real_read(self, rel)

    monkeypatch.setattr(FolderSource, "read", stopped_read)
    with pytest.raises(stop):
        run(dump.dest, tmp_path / "one", workers=1)
    assert len(calls) == 12
    assert not (tmp_path / ".one.split-partial").exists() and not (tmp_path / "one").exists()


def test_run_stopped_while_placing_resumes_on_rerun(dump, tmp_path, monkeypatch):
    two_step(dump.dest, tmp_path / "two")
    dest = tmp_path / "one"
    real_replace = os.replace
    moved = []

    def dying_replace(src, dst):
        if ".staging" in str(src):
            moved.append(dst)
            if len(moved) == 6:
                raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(split_module.os, "replace", dying_replace)
    with pytest.raises(Killed):
        run(dump.dest, dest)
    monkeypatch.setattr(split_module.os, "replace", real_replace)
    assert not dest.exists()
    # The copies it staged are moved into place, not copied again (before, they stayed
    # until the end, and a disk that held the split with them could not hold a second copy).
    monkeypatch.setattr(split_module, "copy_file", no_copy)
    staging = tmp_path / ".one.split-partial" / split_module._STAGING
    gone = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        gone.append(Path(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(split_module.shutil, "rmtree", rmtree)
    p, result = run(dump.dest, dest)
    assert result.reused == len(p.files) and result.placed == 0
    assert gone[0] == staging  # what was left of it (the duplicate), before anything else
    assert entries(dest) == entries(tmp_path / "two")  # staged leftovers removed
    assert tree(dest) == tree(tmp_path / "two")


def test_a_one_pass_split_stages_one_copy_of_each_content(tmp_path, monkeypatch):
    # Duplicates are left out: their copies would only take room (a dump of "x (1).jpg"
    # copies did not fit where its split did).
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=4)
    for path in list(root.rglob("*.jpg")):
        shutil.copyfile(path, path.with_name(f"{path.stem} (1).jpg"))
    shutil.copyfile(root / "a" / "a_0.jpg", root / "b" / "same.jpg")  # two labels: both out
    staged = []
    real_write = split_module._write_bytes

    def write(path, data):
        staged.append(hashlib.sha256(data).hexdigest())
        real_write(path, data)

    monkeypatch.setattr(split_module, "_write_bytes", write)
    monkeypatch.setattr(split_module, "copy_file", no_copy)
    p, result = run(root, tmp_path / "one")
    distinct = {hashlib.sha256(f.read_bytes()).hexdigest() for f in root.rglob("*.jpg")}
    assert sorted(staged) == sorted(distinct) and len(distinct) == 8
    assert result.placed == len(p.files) == 7
    monkeypatch.undo()
    two_step(root, tmp_path / "two")
    assert tree(tmp_path / "one") == tree(tmp_path / "two")


def test_a_failed_run_removes_the_folders_it_made_for_dest(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    with pytest.raises(SplitError, match="needs 4"):
        run(root, tmp_path / "out" / "x" / "s", SplitOptions(counts=(2, 1, 1)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    # A stopped run keeps what it placed, and the folders holding it, for the next.
    real_replace = os.replace

    def dying_replace(src, dst):
        if ".staging" in str(src):
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(split_module.os, "replace", dying_replace)
    with pytest.raises(Killed):
        run(root, tmp_path / "out" / "x" / "s")
    assert (tmp_path / "out" / "x" / ".s.split-partial").is_dir()


def test_run_failing_before_the_plan_is_decided_leaves_nothing(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    with pytest.raises(SplitError, match="needs 4"):
        run(root, tmp_path / "s", SplitOptions(counts=(2, 1, 1)))

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(split_module, "_write_bytes", full_disk)
    with pytest.raises(OSError, match="No space") as info:
        run(root, tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert info.value.errno == errno.ENOSPC
    assert info.value.strerror.startswith(f"{tmp_path / 's'}: the split does not fit")
    assert "Nothing was kept" in info.value.strerror and "--mode symlink" in info.value.strerror
    # A zip cannot be linked to: no link mode is offered.
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*.*")):
            zf.write(path, path.relative_to(root).as_posix())
    with pytest.raises(OSError, match="Nothing was kept") as info:
        run(archive, tmp_path / "s")
    assert "--mode" not in info.value.strerror


def test_run_keeps_the_destination_rules(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    dest = tmp_path / "s"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(DestinationExistsError, match="not a split folder"):
        run(root, dest)
    assert entries(dest) == ["mine.txt"]
    assert entries(tmp_path) == sorted(["d", "s", "s/mine.txt"] + [
        p.relative_to(tmp_path).as_posix() for p in root.rglob("*")])
    run(root, dest, force=True)
    assert not (dest / "mine.txt").exists()
    clean = tree(dest)
    assert run(root, dest)[1].already_complete
    with pytest.raises(DestinationExistsError, match="other parameters"):
        run(root, dest, SplitOptions(seed=5))
    (dest / "train" / "a").iterdir().__next__().write_bytes(b"damaged")
    result = run(root, dest, force=True)[1]
    assert result.placed == 6 and tree(dest) == clean
    with pytest.raises(UsageError, match="overlap"):
        run(root, root / "split")
    foreign = tmp_path / ".t.split-partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ours")
    with pytest.raises(DestinationExistsError, match="not made by dsprep split"):
        run(root, tmp_path / "t")
    assert (foreign / "notes.txt").read_text() == "not ours"
    # Left by a run killed just after making it (empty), while writing its first marker, or
    # just before writing split.json (its marker gone, files.csv written): dsprep's, so the
    # next run replaces it.
    for left in ("empty", "marker", "files.csv"):
        stopped = tmp_path / f".{left}.split-partial"
        (stopped / "train" / "a").mkdir(parents=True)
        if left == "files.csv":
            (stopped / "files.csv").write_text("split,class,path\n")
        else:
            shutil.rmtree(stopped / "train")
        if left == "marker":
            (stopped / f"{split_module._MARKER}.part").write_text('{"sour')
        run(root, tmp_path / left)
        assert tree(tmp_path / left) == clean and not stopped.exists()


def test_a_split_on_a_read_only_mount_is_found_complete(tmp_path, monkeypatch):
    # A read-only file system answers the removal of a missing leftover with EROFS, not
    # ENOENT: a finished split mounted read-only on the compute nodes failed every rerun.
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    dest = tmp_path / "s"
    run(root, dest)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.is_relative_to(dest):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert run(root, dest)[1].already_complete
    assert materialize(plan(root), dest).already_complete


@pytest.mark.parametrize("how", ["run", "materialize"])
def test_the_split_a_stopped_force_run_left_aside_is_removed_before_copying(tmp_path,
                                                                          monkeypatch, how):
    # Stopped while it removed the old split (after the swap), then run again: the old split
    # held its room through the whole copy, and on a disk with room for two the run failed,
    # every time.
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    dest = tmp_path / "s"
    run(root, dest)
    old = tmp_path / ".s.split-old"
    shutil.copytree(dest, old)  # what the stopped run left
    seen = []
    real = split_module._finish  # the files are all placed, the swap still to come
    monkeypatch.setattr(split_module, "_finish",
                        lambda *args: (seen.append(old.exists()), real(*args))[1])
    if how == "run":
        p, _ = run(root, dest, SplitOptions(seed=9), force=True)
    else:
        p = plan(root, SplitOptions(seed=9))
        materialize(p, dest, force=True)
    assert seen == [False] and not old.exists()
    assert sorted(f.path for f in p.files) == sorted(
        x.relative_to(dest).as_posix() for x in dest.rglob("*.jpg"))


@pytest.mark.parametrize("how", ["run", "materialize"])
def test_what_force_cannot_remove_of_the_old_dest_is_a_note_not_a_failure(tmp_path,
                                                                         monkeypatch, how):
    # The split is in place by then: a batch job under set -e stopped on it, told only of the
    # last name the removal failed on ("f: Permission denied").
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    dest = tmp_path / "s"
    (dest / "keep").mkdir(parents=True)
    (dest / "keep" / "f").write_text("x")
    old = tmp_path / ".s.split-old"
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if Path(path) == old:
            raise PermissionError(errno.EACCES, "Permission denied", "f")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(split_module.shutil, "rmtree", rmtree)
    if how == "run":
        p, result = run(root, dest, force=True)
    else:
        p = plan(root)
        result = materialize(p, dest, force=True)
    assert result.notes == [
        f"what {dest} held before the split could not all be removed ({old}: Permission "
        f"denied); it is left in {old}: remove it yourself"]
    assert sorted(f.path for f in p.files) == sorted(
        x.relative_to(dest).as_posix() for x in dest.rglob("*.jpg"))
    assert (old / "keep" / "f").read_text() == "x"
    # A next run (of another split) cannot set DEST aside while that is there: it says so.
    with pytest.raises(SplitError, match=f"could not all be removed.*{old}.*run the same "
                                         "command again"):
        run(root, dest, SplitOptions(seed=9), force=True)
    assert sorted(p.path for p in p.files) == sorted(
        x.relative_to(dest).as_posix() for x in dest.rglob("*.jpg"))


def test_a_zip_with_two_members_of_one_name_uses_the_last_and_lists_the_first(tmp_path):
    import warnings

    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    archive = tmp_path / "dump.zip"
    first = smooth_image(48, 48, seed=91)
    first_path = write_image(tmp_path / "first.jpg", first)
    with zipfile.ZipFile(archive, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        zf.write(first_path, "a/a_0.jpg")
        for path in sorted(root.rglob("*.jpg")):
            zf.write(path, path.relative_to(root).as_posix())
    p = plan(archive)
    assert [(s.source, s.reason) for s in p.skipped] == [("a/a_0.jpg", "bad-name")]
    assert "the last of them is used" in p.skipped[0].detail
    placed = {f.source: f.sha256 for f in p.files}
    assert placed["a/a_0.jpg"] == hashlib.sha256((root / "a" / "a_0.jpg").read_bytes()
                                                 ).hexdigest()
    assert len(p.files) == 6
    dest = tmp_path / "s"
    run(archive, dest)
    assert tree(dest) == tree(materialize(p, tmp_path / "two").dest)


def test_run_in_link_modes_uses_the_two_step_path(tmp_path):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    p, result = run(root, tmp_path / "s", mode="symlink")
    assert result.placed == 6
    assert all((tmp_path / "s" / f.path).is_symlink() for f in p.files)


@pytest.mark.parametrize("picks", [{"limit_per_class": 2}, {"counts": (1, 1, 0)}])
def test_run_copies_only_the_files_it_keeps_when_it_picks_a_few(tmp_path, monkeypatch, picks):
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=10)
    written = []
    real_write = split_module._write_bytes

    def counting_write(path, data):
        written.append(path)
        return real_write(path, data)

    monkeypatch.setattr(split_module, "_write_bytes", counting_write)
    p, result = run(root, tmp_path / "s", SplitOptions(**picks))
    assert result.placed == len(p.files) == 4
    # Not every usable file copied aside first (20 of them) to keep four: a big dump would
    # need room for all of it.
    assert written == []
    assert sorted(str(f.relative_to(tmp_path / "s")) for f in (tmp_path / "s").rglob("*.jpg")
                  ) == sorted(f.path for f in p.files)


@pytest.mark.slow
def test_keras_reads_the_train_folder(tmp_path):
    import keras

    pytest.importorskip("tensorflow", reason="image_dataset_from_directory builds a tf.data "
                        "pipeline: it needs TensorFlow (a JAX or PyTorch Keras has none)")

    summary = write_sample_dump(tmp_path / "dump", per_class=6, seed=1)
    dest = tmp_path / "split"
    materialize(plan(summary.dest), dest)
    classes = json.loads((dest / "split.json").read_text())["classes"]
    dataset = keras.utils.image_dataset_from_directory(
        dest / "train", image_size=(32, 32), batch_size=4, shuffle=False, verbose=False)
    assert dataset.class_names == classes
    labels = [int(y) for _, batch in dataset for y in batch]
    rows = read_csv(dest / "files.csv")
    expected = sorted((r["class"], r["path"]) for r in rows if r["split"] == "train")
    assert labels == [classes.index(c) for c, _ in expected]


def test_a_split_given_as_the_source_is_refused_as_swapped_arguments(tmp_path):
    # "dsprep split data/split dump/train --force" used to pool the split into the dump's
    # folder, deleting the images there.
    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    made = tmp_path / "s"
    materialize(plan(root), made)
    for refused in (lambda: split_module.check_run(made, root / "a"),
                    lambda: run(made, root / "a", force=True),
                    lambda: materialize(plan(made), root / "a", force=True)):
        with pytest.raises(UsageError, match=r"is a split made by 'dsprep split' .* holds other "
                                             r"files: did you give DEST before SRC\?"):
            refused()
    assert sorted(p.name for p in (root / "a").iterdir()) == ["a_0.jpg", "a_1.jpg", "a_2.jpg"]
    # Nor over a zip dump, or a folder whose split.json is another tool's.
    archive = tmp_path / "dump.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(root / "a" / "a_0.jpg", "a/a_0.jpg")
    (root / "b" / "split.json").write_text('{"train": [], "test": []}')
    for dest in (archive, root / "b"):
        with pytest.raises(UsageError, match="did you give DEST before SRC"):
            run(made, dest, force=True)
    # Nor one of the split's folders: it lies in the split.
    with pytest.raises(UsageError, match=r"lies in the split .*did you give DEST before SRC"):
        run(made / "train", root / "b", force=True)
    # A split of the split stopped while moving into a folder filled in place is finished.
    stopped = tmp_path / "mount"
    stopped.mkdir()
    (stopped / "files.csv").write_text("split,class\n")
    (stopped / ".dsprep-split-swapping").write_text((made / "split.json").read_text())
    split_module._refuse_split_source(made, stopped)
    assert zipfile.ZipFile(archive).namelist() == ["a/a_0.jpg"]
    assert len(list((root / "b").glob("*.jpg"))) == 3
    # Into a new folder, a split is split again (a split someone shared, say).
    _, again = run(made, tmp_path / "again", SplitOptions(ratios=(0.5, 0.5)))
    assert again.placed == 6


@pytest.mark.parametrize(
    ("params", "limit"),
    [(None, 89_478_485), ({"seed": 1}, 89_478_485), ({"max_pixels": 0}, None),
     ({"max_pixels": 5000}, 5000), ({"max_pixels": -1}, "error"), ({"max_pixels": "0"}, "error"),
     ({"max_pixels": True}, "error")],
)
def test_split_pixel_limit_reads_what_the_split_applied(tmp_path, params, limit):
    from dsprep.errors import DatasetFormatError

    record = {"schema": "dsprep-split/1", "classes": ["a"]}
    if params is not None:
        record["params"] = params
    (tmp_path / "split.json").write_text(json.dumps(record))
    if limit == "error":
        with pytest.raises(DatasetFormatError, match="'max_pixels' must be a whole number"):
            split_module.split_pixel_limit(tmp_path)
    else:
        assert split_module.split_pixel_limit(tmp_path) == limit
    # A folder without split.json: the default limit.
    assert split_module.split_pixel_limit(tmp_path / "elsewhere") == 89_478_485


def test_a_one_pass_copy_out_of_file_entries_says_so(dump, tmp_path, monkeypatch):
    # The default split copies every file as it reads it: a disk with bytes to spare but no
    # file entries left said only "free some space", and offered symbolic links (entries too).
    calls = []

    def full(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(split_module, "_write_bytes", full)
    monkeypatch.setattr(split_module.os, "statvfs", lambda path: os.statvfs_result(
        (4096, 4096, 10**6, 10**5, 10**5, 1000, 2, 2, 0, 255)))
    dest = tmp_path / "split"
    with pytest.raises(OSError) as info:
        run(dump.dest, dest)
    message = info.value.strerror
    listed = len(plan(dump.dest).files) + len(plan(dump.dest).skipped)
    assert info.value.errno == errno.ENOSPC and "Nothing was kept" in message
    assert f"{10**5 * 4096 / 1e6:,.1f} MB are free there" in message
    assert f"2 file entries (inodes) for its {listed:,} files" in message
    assert "--mode hardlink" in message and "--mode symlink" not in message
    assert not dest.exists()


def test_a_full_disk_midway_counts_only_the_files_still_to_place(dump, tmp_path, monkeypatch):
    # The files placed stay for the next run and take their room already: what is needed is
    # what is left (a disk said to lack entries for all the files when most were in place).
    p = plan(dump.dest)
    real, calls = split_module.copy_file, []

    def copy_then_full(*args, **kwargs):
        calls.append(args)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(split_module, "copy_file", copy_then_full)
    monkeypatch.setattr(split_module.os, "statvfs", lambda path: os.statvfs_result(
        (4096, 4096, 100, 50, 50, 1000, 2, 2, 0, 255)))
    with pytest.raises(OSError) as info:
        materialize(p, tmp_path / "split", workers=1)
    left = len(p.files) - 3
    assert f"2 file entries (inodes) for the {left:,} files still to place" in info.value.strerror
    assert "the files still to place take" in info.value.strerror


def test_a_full_disk_says_what_is_needed_with_force_too(dump, tmp_path, monkeypatch):
    # --force keeps nothing, so every file is still to place; file entries short rule out
    # symbolic links as the way out (they take entries too).
    p = plan(dump.dest)
    materialize(p, tmp_path / "split", workers=1)
    real, calls = split_module.copy_file, []

    def stub_then_full(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) > 3:
            Path(dst).write_bytes(b"x")  # a copy the full disk cut short
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(split_module, "copy_file", stub_then_full)
    monkeypatch.setattr(split_module.os, "statvfs", lambda path: os.statvfs_result(
        (4096, 4096, 100, 50, 50, 1000, 2, 2, 0, 255)))
    with pytest.raises(OSError) as info:
        materialize(p, tmp_path / "split", workers=1, force=True)
    message = info.value.strerror
    assert f"its files take {_on_disk(f.size for f in p.files) / 1e6:,.1f} MB" in message
    assert f"2 file entries (inodes) for its {len(p.files):,} files" in message
    assert "Nothing was kept" in message and "--mode symlink" not in message
    # Kept placed files: the one cut short is still to place.
    calls.clear()
    with pytest.raises(OSError) as info:
        materialize(p, tmp_path / "other", workers=1)
    left = len(p.files) - 3
    assert f"for the {left:,} files still to place" in info.value.strerror


def test_a_one_pass_split_filling_the_disk_as_it_moves_its_copies_keeps_what_it_placed(
        dump, tmp_path, monkeypatch):
    # The staged copies not yet moved are no use to the next run (it copies from the dump
    # again): they go, so that their room comes back; the files moved stay for it.
    dest = tmp_path / "split"
    real, moved = os.replace, []

    def replace(src, dst):
        if split_module._STAGING in os.fspath(src):
            if len(moved) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(split_module.os, "replace", replace)
    with pytest.raises(OSError) as info:
        run(dump.dest, dest)
    assert "placed so far are kept" in info.value.strerror
    partial = tmp_path / ".split.split-partial"
    assert not (partial / split_module._STAGING).exists()
    assert sorted(p for p in partial.rglob("*") if p.is_file() and p.suffix != ".json") \
        == sorted(Path(m) for m in moved)
    monkeypatch.undo()
    assert run(dump.dest, dest)[1].reused == 3


def test_an_empty_path_is_refused_by_the_library_too(tmp_path, monkeypatch):
    # os.environ.get("OUT", "") in a script: split.run(src, "", force=True) cleared the folder
    # it ran in and wrote the split there.
    from dsprep import build
    from dsprep.sample import write_sample_dump
    from dsprep.split import run as split_run

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=4)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("keep\n")
    monkeypatch.chdir(work)
    for call, what in ((lambda: split_run(dump, "", force=True), "the split folder (DEST)"),
                       (lambda: split_run("", tmp_path / "s"), "the source"),
                       (lambda: plan(""), "the source"),
                       (lambda: build.build_hdf5(dump, ""), "the output folder (OUT)"),
                       (lambda: plan(dump, layout="csv", labels=""), "--labels"),
                       (lambda: write_sample_dump(""), "the dump folder (DEST)")):
        with pytest.raises(UsageError, match=f"^{re.escape(what)} is empty"):
            call()
    assert [p.name for p in work.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "s").exists()


def test_a_stop_between_the_swaps_two_renames_comes_after_them(tmp_path, monkeypatch):
    # Ctrl-C between setting DEST aside and moving the new split in left no DEST, and a
    # message about the work folder only.
    import signal

    root = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=3)
    dest = tmp_path / "s"
    run(root, dest)
    real_replace = os.replace

    def replace(a, b):
        real_replace(a, b)
        if Path(a) == dest:  # DEST set aside: the stop comes now
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(split_module.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt) as stop:
        run(root, dest, SplitOptions(seed=9), force=True)
    assert json.loads((dest / "split.json").read_text())["params"]["seed"] == 9
    assert not (tmp_path / ".s.split-partial").exists()
    # What it says is what happened (it said the files placed wait in the work folder).
    assert stop.value.after_stop == (
        f"The split is complete in {dest}; what it held before is left in "
        f"{tmp_path / '.s.split-old'}, which the next split into {dest} removes (or remove it "
        "yourself).")


def test_the_aside_folder_of_a_swap_into_a_mount_point_goes_only_once_it_is_all_in(
        tmp_path, monkeypatch):
    # Stopped while DEST's entries went aside, the aside folder holds some of the split DEST
    # still reads as: dropped by the next --force run (which then stopped too), DEST became a
    # split without its test/ and files.csv that build-hdf5 built without a word.
    dest = tmp_path / "mp"
    monkeypatch.setattr(split_module, "_inside", lambda path: Path(path) == dest)
    aside, partial = dest / ".dsprep-split-old", dest / ".dsprep-split-partial"
    journal = dest / ".dsprep-split-swapping"
    for folder in (dest / "train", aside / "test", partial / "train"):
        folder.mkdir(parents=True)
    (dest / "split.json").write_text(json.dumps({"params": {"seed": 1}}))
    (partial / "split.json").write_text(json.dumps({"params": {"seed": 2}}))
    split_module._drop_old_aside(dest)
    assert aside.exists()  # going aside: kept
    journal.write_text(json.dumps({"params": {"seed": 2}}))
    split_module._drop_old_aside(dest)
    assert aside.exists()  # moving in, split.json not yet: kept
    os.replace(partial / "split.json", dest / "split.json")
    split_module._drop_old_aside(dest)
    assert not aside.exists()  # all in: the split before, dropped
    (aside / "test").mkdir(parents=True)
    journal.unlink()
    shutil.rmtree(partial)
    split_module._drop_old_aside(dest)
    assert not aside.exists()  # the swap ended: dropped
