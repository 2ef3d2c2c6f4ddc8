"""The command group itself: version, help, error translation."""

from __future__ import annotations

from click.testing import CliRunner

import dsprep
from dsprep.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert dsprep.__version__ in result.output


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("split", "build-hdf5", "info", "verify", "means", "train", "evaluate",
                 "sample-dump", "demo", "sweep-lr"):
        assert name in result.output


def test_os_errors_become_one_line_messages(tmp_path, monkeypatch):
    from dsprep import split as split_module

    dump = tmp_path / "dump"
    for name in ("a", "b"):
        (dump / name).mkdir(parents=True)
    from helpers import smooth_image, write_image

    for i in range(4):
        write_image(dump / "a" / f"a{i}.jpg", smooth_image(32, 32, seed=i))
        write_image(dump / "b" / f"b{i}.jpg", smooth_image(32, 32, seed=10 + i))

    def full_disk(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(split_module, "copy_file", full_disk)
    result = CliRunner().invoke(main, ["split", str(dump), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "No space left on device" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 12
