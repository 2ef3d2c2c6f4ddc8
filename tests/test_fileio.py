"""Atomic writes: the final name holds the old file or the whole new one, never a part; and one
writer at a time per output."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path

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


def test_a_refused_write_names_the_final_file_not_the_temporary_one(tmp_path, monkeypatch):
    # A read-only folder (a read-only mount: root may write where chmod says not to).
    real_open = open

    def read_only(file, *args, **kwargs):
        if str(file).endswith(".partial.json"):
            raise OSError(30, "Read-only file system", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    real_unlink = fileio.Path.unlink

    def unlink(self, missing_ok=False):  # Linux refuses it on a read-only mount, name or not
        if self.name.endswith(".partial.json"):
            raise OSError(30, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(fileio.Path, "unlink", unlink)
    path = tmp_path / "config.json"
    with pytest.raises(OSError, match="Read-only") as caught:
        fileio.write_atomic(path, "{}", tmp=tmp_path / ".config.partial.json")
    assert caught.value.filename == str(path) and caught.value.errno == 30
    # An error the system raises with the final name (replacing a folder) keeps its type.
    monkeypatch.undo()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside").write_text("x")
    with pytest.raises(OSError) as caught:
        fileio.write_atomic(tmp_path / "folder", "{}")
    assert caught.value.filename == str(tmp_path / "folder")
    assert isinstance(caught.value, IsADirectoryError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


needs_flock = pytest.mark.skipif(
    importlib.util.find_spec("fcntl") is None,
    reason="advisory locks need flock (POSIX); on Windows nothing is locked")


@contextlib.contextmanager
def held_elsewhere(lock):
    """The lock taken the way another process takes it: its own descriptor, flock."""
    import fcntl

    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


@needs_flock
def test_a_second_writer_is_refused_at_once_and_the_lock_goes_with_the_first(tmp_path):
    from dsprep.errors import DestinationExistsError

    lock = tmp_path / ".out.lock"
    with held_elsewhere(lock):
        with pytest.raises(DestinationExistsError, match="another dsprep process"):
            with fileio.exclusive(lock, tmp_path / "out"):
                pass
    with fileio.exclusive(lock, tmp_path / "out"):
        assert lock.exists()
        with pytest.raises(BlockingIOError), held_elsewhere(lock):
            pass
    assert not lock.exists()
    with fileio.exclusive(lock, tmp_path / "out"):  # free again
        with fileio.exclusive(lock, tmp_path / "out"):  # the same thread may nest it
            assert lock.exists()
        assert lock.exists()  # still held by the outer block
    assert not lock.exists()


@needs_flock
def test_a_file_system_without_locks_is_written_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with fileio.exclusive(tmp_path / ".out.lock", tmp_path / "out"):
        ran.append(1)
    assert ran == [1] and not (tmp_path / ".out.lock").exists()


@pytest.mark.parametrize("code", ["EROFS", "EACCES", "EPERM"])
def test_a_folder_this_process_cannot_write_is_not_locked(tmp_path, monkeypatch, code):
    import errno

    real_open = os.open

    def refused(path, flags, *args):
        if str(path).endswith(".lock"):
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
        return real_open(path, flags, *args)

    monkeypatch.setattr(fileio.os, "open", refused)
    ran = []
    with fileio.exclusive(tmp_path / ".out.lock", tmp_path / "out"):  # a read-only RUN, say
        ran.append(1)
    assert ran == [1]
    monkeypatch.undo()

    def full(path, flags, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "open", full)
    with pytest.raises(OSError, match="No space"):  # any other failure is still one
        with fileio.exclusive(tmp_path / ".out.lock", tmp_path / "out"):
            pass


@needs_flock
def test_a_split_or_build_into_an_output_in_use_is_refused_and_harms_nothing(tmp_path):
    from helpers import make_class_folders

    from dsprep import build, split
    from dsprep.errors import DestinationExistsError

    dump = make_class_folders(tmp_path / "dump", ("a", "b"), per_class=4)
    before = sorted(p.name for p in dump.rglob("*"))
    dest = tmp_path / "split"
    with held_elsewhere(tmp_path / ".split.split-lock"):
        with pytest.raises(DestinationExistsError, match="another dsprep process"):
            split.run(dump, dest)
    assert not dest.exists() and sorted(p.name for p in dump.rglob("*")) == before
    split.run(dump, dest)
    out = tmp_path / "hdf5"
    out.mkdir()
    theirs = out / "train.hdf5.partial"  # another build's file in progress
    theirs.write_bytes(b"x")
    with held_elsewhere(out / build.BUILD_LOCK_NAME):
        with pytest.raises(DestinationExistsError, match="another dsprep process"):
            build.build_hdf5(dest, out, build.BuildOptions(size=(8, 8), workers=1))
    assert theirs.read_bytes() == b"x" and not (out / "train.hdf5").exists()
    theirs.unlink()
    report = build.build_hdf5(dest, out, build.BuildOptions(size=(8, 8), workers=1))
    assert report.files and not (out / build.BUILD_LOCK_NAME).exists()


def test_write_errors_name_the_file_the_system_did_not(tmp_path, monkeypatch):
    import errno

    from dsprep.fileio import naming

    with pytest.raises(OSError) as info, naming(tmp_path / "x.csv"):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.csv")
    # A copy: a full target names the target, a read error the source.
    with pytest.raises(OSError) as full, naming("dst.jpg", reads="src.jpg"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as bad, naming("dst.jpg", reads="src.jpg"):
        raise OSError(errno.EIO, "Input/output error")
    assert (full.value.filename, bad.value.filename) == ("dst.jpg", "src.jpg")
    with pytest.raises(FileNotFoundError) as kept, naming(tmp_path / "x.csv"):
        open(tmp_path / "missing" / "y")
    assert kept.value.filename.endswith("y")  # a name the system gave stays

    class Full:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "open", Full, raising=False)
    with pytest.raises(OSError, match="No space left on device") as full:
        fileio.write_atomic(tmp_path / "m.json", "{}")
    assert full.value.filename == str(tmp_path / "m.json")  # the name the user knows


def test_a_file_system_that_cannot_sync_is_no_error_but_a_failed_sync_names_the_file(
        tmp_path, monkeypatch):
    import errno

    from dsprep.fileio import sync_file, sync_folder, write_atomic

    def refuse(code):
        def fsync(fd):
            raise OSError(code, os.strerror(code))
        return fsync

    target = tmp_path / "f.json"
    monkeypatch.setattr(os, "fsync", refuse(errno.EINVAL))  # some FUSE file systems
    write_atomic(target, "{}", fsync=True)
    sync_file(target)
    sync_folder(tmp_path)
    assert target.read_text() == "{}"
    monkeypatch.setattr(os, "fsync", refuse(errno.EIO))  # the bytes never reached the disk
    with pytest.raises(OSError) as caught:
        sync_file(target)
    assert caught.value.errno == errno.EIO and caught.value.filename == str(target)
    with pytest.raises(OSError) as caught:
        write_atomic(tmp_path / "g.json", "{}", fsync=True)
    assert caught.value.filename is not None and not (tmp_path / "g.json").exists()


def test_work_names_of_a_name_near_the_limit_are_cut_short_and_kept_apart(tmp_path):
    assert fileio.sibling(tmp_path / "train.hdf5", ".partial") == tmp_path / "train.hdf5.partial"
    assert fileio.sibling(tmp_path / "d", ".split-old", ".") == tmp_path / ".d.split-old"
    long_a, long_b = "é" * 100 + "a" * 50 + "x", "é" * 100 + "a" * 50 + "y"  # 251 bytes each
    names = set()
    for long in (long_a, long_b):
        work = fileio.sibling(tmp_path / long, ".split-partial", ".")
        assert work.parent == tmp_path
        assert work.name.startswith(".éé") and work.name.endswith(".split-partial")
        assert len(os.fsencode(work.name)) <= 255
        assert work == fileio.sibling(tmp_path / long, ".split-partial", ".")  # the same each time
        work.mkdir()  # a name the file system takes
        names.add(work.name)
    assert len(names) == 2
    # A name cut short lands on a whole character ("é" is 2 bytes).
    odd = fileio.sibling(tmp_path / ("a" + "é" * 125), ".partial")
    assert len(os.fsencode(odd.name)) <= 255 and "\udcc3" not in odd.name
    fileio.write_atomic(tmp_path / long_a, "text")  # through a work name cut short
    assert (tmp_path / long_a).read_text() == "text"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, long_a])


def test_work_names_of_names_that_pathlib_would_fold():
    # "..keras" has the stem ".": its temporary name stays in its folder.
    pytest.importorskip("keras", reason="the training callbacks need Keras 3 (the 'train' extra)")
    from dsprep.train.callbacks import _pending_name, _temp_name

    assert fileio.named_in("/r", ".", ".partial.keras", ".") == Path("/r/...partial.keras")
    assert _temp_name(Path("/r/..keras")) == Path("/r/...partial.keras")
    assert _temp_name(Path("/r/best.keras")) == Path("/r/.best.partial.keras")
    assert _pending_name(Path("/r/m.v1.keras"), 3) == Path("/r/.m.v1.epoch3.partial.keras")
    assert _temp_name(Path("/r/log")) == Path("/r/.log.partial")


def test_a_progress_bar_in_a_log_updates_every_few_seconds_not_many_times_a_second(monkeypatch):
    # DSPREP_PROGRESS=1 in CI: tqdm's ~20 updates a second made megabytes of one log line.
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, interval in ((io.StringIO(), fileio.LOG_PROGRESS_SECONDS), (Terminal(), 0.1)):
        monkeypatch.setattr(sys, "stderr", stream)
        with fileio.progress_bar(total=3) as bar:
            assert bar.mininterval == interval
    assert fileio.LOG_PROGRESS_SECONDS >= 5
    with fileio.progress_bar(total=3, mininterval=0.5) as bar:  # one asked for is kept
        assert bar.mininterval == 0.5
