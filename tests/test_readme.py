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
