"""Atomic writes: the final name holds the old file or the whole new one, never a part."""

from __future__ import annotations

import pytest

from dsprep import fileio


def test_write_atomic_replaces_text_and_bytes(tmp_path):
    path = tmp_path / "a.json"
    fileio.write_atomic(path, "first\n")
    fileio.write_atomic(path, "zweite Zeile – ünïcode\n")
    assert path.read_bytes() == "zweite Zeile – ünïcode\n".encode()
    fileio.write_atomic(path, b"\x00\x01", fsync=True)
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "means.json"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        fileio.write_atomic(path, "new", tmp=tmp_path / ".means.tmp")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["means.json"]
