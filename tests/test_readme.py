"""Every command and code example in README.md runs, in order, so the README cannot go stale."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def readme_steps() -> list[tuple[str, str]]:
    """("shell", line) for each `$ ` line of console blocks, ("python", code) for python blocks."""
    steps = []
    for lang, body in BLOCK.findall(README.read_text()):
        if lang == "console":
            steps += [("shell", line[2:]) for line in body.splitlines() if line.startswith("$ ")]
        elif lang == "python":
            steps.append(("python", body))
    return steps


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    first_block = BLOCK.search(text)
    assert text[: first_block.start()].strip() == "# dsprep"
    commands = [line.split("#")[0].strip() for line in first_block.group(2).splitlines()]
    assert commands[:2] == ["make demo", "make test"]


def test_readme_has_no_unfilled_placeholders():
    assert "@@" not in README.read_text()


def test_readme_has_a_tour_of_every_command():
    shown = {cmd.split()[1] for kind, cmd in readme_steps() if kind == "shell"
             and cmd.startswith("dsprep ")}
    assert {"sample-dump", "split", "build-hdf5", "info", "verify", "means", "train",
            "evaluate", "sweep-lr"} <= shown


@pytest.mark.slow
def test_readme_commands_and_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    namespace: dict = {"__name__": "readme"}
    for kind, step in readme_steps():
        if kind == "shell":
            done = subprocess.run(["bash", "-c", step], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=600)
            assert done.returncode == 0, f"$ {step}\n{done.stdout}\n{done.stderr}"
        else:
            exec(compile(step, "README.md", "exec"), namespace)  # noqa: S102
    # The tour leaves what it promises.
    for name in ("data/split/split.json", "data/hdf5/train.hdf5", "data/hdf5/means.json",
                 "data/means-again.json", "runs/resnet/best.keras", "runs/resnet/curves.png",
                 "runs/sweep/sweep-lr.png"):
        assert (tmp_path / name).is_file(), name
    check_what_the_tour_made(tmp_path, [step for kind, step in readme_steps() if kind == "shell"])


def check_what_the_tour_made(root: Path, commands: list[str]) -> None:
    """What the files hold, against the split's own counts and plain numpy."""
    import csv
    import json

    import h5py
    import numpy as np

    from dsprep.store import check_file

    split = json.loads((root / "data/split/split.json").read_text())
    for name, counts in split["counts"].items():
        for label, n in counts.items():
            assert len(list((root / "data/split" / name / label).iterdir())) == n, (name, label)
    assert check_file(root / "data/hdf5/train.hdf5") == []
    with h5py.File(root / "data/hdf5/train.hdf5", "r") as f:
        assert len(f["labels"]) == sum(split["counts"]["train"].values())
        mean = f["images"][()].reshape(-1, 3).mean(axis=0, dtype=np.float64)
    for means in ("data/hdf5/means.json", "data/means-again.json"):
        record = json.loads((root / means).read_text())
        np.testing.assert_allclose([record[c] for c in "RGB"], mean, atol=1e-6)

    def option(command: str, name: str) -> str:
        return re.search(rf"{name} (\S+)", command).group(1)

    train = next(c for c in commands if c.startswith("dsprep train "))
    with open(root / "runs/resnet/history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == int(option(train, "--epochs"))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    sweep = next(c for c in commands if c.startswith("dsprep sweep-lr "))
    with open(root / "runs/sweep/sweep-lr.csv", newline="") as fh:
        rates = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert rates == [float(v) for v in option(sweep, "--lrs").split(",")]


def test_the_formats_page_gives_the_default_pixel_limit_split_json_leaves_out():
    # split.json omits max_pixels at its default: the page is where a reader finds its value.
    from dsprep.images import DEFAULT_MAX_PIXELS

    page = (Path(__file__).parent.parent / "docs" / "formats.md").read_text(encoding="utf-8")
    assert f"not the default, {DEFAULT_MAX_PIXELS:,}, so absent means that" in " ".join(
        page.split())
