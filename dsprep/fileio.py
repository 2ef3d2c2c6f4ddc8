"""Write a file so that its final name is always whole (a temporary sibling, then a rename), and
keep two processes from writing the same output at once."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import shlex
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import DestinationExistsError, UsageError
from .system import ForgivingStream, on_a_terminal

# The longest file name, in bytes, of the usual Linux file systems (ext4, xfs, btrfs).
NAME_MAX = 255


def quoted(path: str | os.PathLike) -> str:
    """A path as a command shown to be pasted into a shell takes it: quoted where it holds
    spaces, brackets and the like ("New Plant Diseases Dataset(Augmented)"), else as it is."""
    return shlex.quote(os.fspath(path))


def sibling(path: str | os.PathLike, suffix: str, prefix: str = "") -> Path:
    """``prefix + name + suffix`` beside ``path``: a work file's name (``.NAME.partial``); see
    :func:`named_in`."""
    path = Path(path)
    return named_in(path.parent, path.name, suffix, prefix)


def named_in(folder: str | os.PathLike, name: str, suffix: str, prefix: str = "") -> Path:
    """``folder / (prefix + name + suffix)``.

    Where that name would pass ``NAME_MAX`` bytes, ``name`` is cut short and a digest of it
    keeps it apart from other names cut alike: a user's name near the limit that fits on disk
    keeps its work files and figures too.
    """
    whole = prefix + name + suffix
    if len(os.fsencode(whole)) > NAME_MAX:
        raw = os.fsencode(name)
        digest = hashlib.sha1(raw).hexdigest()[:10]
        cut = raw[:NAME_MAX - len(os.fsencode(prefix + suffix)) - len(digest) - 1]
        if _utf8(raw):
            while not _utf8(cut):  # not inside a character
                cut = cut[:-1]
        whole = f"{prefix}{os.fsdecode(cut)}~{digest}{suffix}"
    return Path(folder) / whole


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def write_atomic(
    path: str | os.PathLike,
    data: str | bytes,
    *,
    tmp: str | os.PathLike | None = None,
    fsync: bool = False,
) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` through ``tmp`` and ``os.replace``.

    A crash at any moment leaves either the old file or the new one under ``path``, never half
    of one; the temporary file is removed when the write fails.

    Args:
        path: the final name.
        data: the whole content.
        tmp: the temporary name, in the same folder (default: ``path`` + ``.partial``).
        fsync: flush the bytes to the disk before the rename (for files a resume depends on).
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else sibling(path, ".partial")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with naming(tmp), open(tmp, "wb") as fh:
            fh.write(raw)
            if fsync:
                fh.flush()
                _fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):  # a read-only file system refuses the unlink too
            tmp.unlink(missing_ok=True)
        if exc.filename in (str(tmp), os.fspath(tmp)):
            # The temporary name is dsprep's own: the user knows the file by its final one
            # (a read-only RUN folder said ".config.partial.json: Read-only file system").
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """CSV text with "\n" line ends, as dsprep writes its lists of files.

    A field holding a carriage return is quoted too (a file may be so named): Python's writer
    quotes only what its line terminator holds, and every reader would split such a row.
    """
    buf = io.StringIO()
    plain = csv.writer(buf, lineterminator="\n")
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    plain.writerow(header)
    for row in rows:
        (quoted if any("\r" in str(v) for v in row) else plain).writerow(row)
    return buf.getvalue()


def access_denied(exc: OSError, path: str | os.PathLike | None = None) -> OSError:
    """``exc``, a file or folder this user may not read (or a folder on its path it may not
    enter), said with what to do: not taken for damage, which a rebuild would be the answer to.
    ``path`` names what to give access to, where that is not the file that failed (a folder
    whose own marker files could not be looked for)."""
    return OSError(exc.errno, f"{exc.strerror or exc}: it, or a folder on its path, cannot be "
                   "read by this user; give read access to it (chmod u+r on files, u+rx on "
                   "folders), or run as its owner",
                   str(path) if path is not None else exc.filename)


def refuse_access_denied(path: str | os.PathLike) -> None:
    """Raise :func:`access_denied`'s error where opening ``path`` is not permitted; else nothing
    (for the error paths of readers whose own errors do not say so: HDF5's)."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise access_denied(exc) from exc
    except OSError:
        pass


def refuse_dangling_link(path: str | os.PathLike) -> None:
    """Refuse an output folder given as a link to nothing: writing there would replace the
    link with a folder of its own, away from where the link points (an unmounted scratch
    volume, say).

    A link to nothing higher up the path (``scratch/run`` with ``scratch`` dangling) is
    refused the same way: making the folder would fail with a bare "File exists".

    Raises:
        UsageError: ``path``, or a folder it lies in, is a link whose target does not exist.
    """
    path = Path(path)
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():
            raise UsageError(f"{link} is a link to {os.readlink(link)}, which does not "
                             "exist; create that folder (or mount its volume), or remove the "
                             "link")


def empty_path_words(folder: bool = True) -> str:
    """What is said of an empty path: a script's unset variable ("$OUT") gives one, and
    ``Path("")`` is the current folder, which a split --force would clear."""
    return ("is empty (an unset variable in a script?); give a path"
            + (", '.' for the current folder" if folder else ""))


def refuse_empty_path(path: object, what: str, folder: bool = True) -> None:
    """Refuse an empty string given for a path (see :func:`empty_path_words`)."""
    if isinstance(path, (str, bytes)) and not path:
        raise UsageError(f"{what} {empty_path_words(folder)}")


def refuse_under_a_file(dest: str | os.PathLike) -> None:
    """Refuse a folder to make whose nearest existing parent is a file, naming both (the
    system's "Not a directory" would name whatever dsprep first tried to make inside it)."""
    dest = Path(os.path.abspath(dest))
    above = next((p for p in dest.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{dest} cannot be made: {above} is a file, "
                                 "not a folder; choose another place")


def sync_file(path: str | os.PathLike) -> None:
    """Flush a written file's bytes to the disk, so a rename that follows never gives the final
    name to data a power cut would lose."""
    with naming(path):
        # Windows commits only through a descriptor that may write.
        fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
        try:
            _fsync(fd)
        finally:
            os.close(fd)


def sync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (the renames into it) to the disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows opens no folders; the rename is as durable as the OS makes it
    try:
        with naming(path):
            _fsync(fd)
    finally:
        os.close(fd)


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise  # EIO: the bytes did not reach the disk
        # a file system (some FUSE and virtual ones), or a folder, that cannot be synced


# The errors of a write that mean the target is full or cannot be written.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextmanager
def naming(path: str | os.PathLike, reads: str | os.PathLike | None = None) -> Iterator[None]:
    """Give an OSError raised in the block the file name ``path`` when the system gave none
    (a write on a full disk says only "No space left on device"). With ``reads`` (a copy's
    source), errors that are not about room or write access name that file instead."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno:
            named = path if reads is None or exc.errno in _WRITE_ERRORS else reads
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(named)) from exc
        raise


@contextmanager
def exclusive(lock: str | os.PathLike, what: str | os.PathLike) -> Iterator[None]:
    """Hold an advisory lock on the file ``lock`` for the block, so that two dsprep processes
    never write ``what`` at once; the second is refused at once, not made to wait.

    The lock file is created for the block and removed at its end. Where the platform has no
    ``flock`` (Windows) or the file system refuses it, nothing is locked.

    Re-entrant within a thread: a block nested in one holding the same lock goes ahead.

    Raises:
        DestinationExistsError: another process holds the lock.
    """
    lock = Path(lock).absolute()
    held = _HELD.__dict__.setdefault("locks", set())
    if lock in held:
        yield
        return
    fd = _lock(lock, what)
    held.add(lock)
    try:
        yield
    finally:
        held.discard(lock)
        if fd is not None:
            # Removed while still held, so a process that opens it next finds a new file.
            try:
                with suppress(OSError):
                    lock.unlink()
            finally:
                os.close(fd)


_HELD = threading.local()  # the locks this thread holds


def _lock(lock: Path, what: str | os.PathLike) -> int | None:
    """The descriptor of ``lock``, locked; None where locks are not available."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                # A folder this process cannot write: whatever it does there that writes
                # fails on its own, and reading needs no lock.
                return None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DestinationExistsError(
                f"{what} is being written by another dsprep process (it holds {lock}); let it "
                "finish, or stop it and run the command again"
            ) from None
        except OSError:
            # A file system without locks (some network mounts): carry on unlocked, as
            # HDF5's best-effort locking does.
            os.close(fd)
            with suppress(OSError):
                lock.unlink()
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        # The holder before us removed this file as we opened it: lock the new one.
        os.close(fd)


# Seconds between two updates of a progress bar written to a file or a pipe.
LOG_PROGRESS_SECONDS = 10.0


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar on stderr that a failing stderr only silences: a bar is no part of
    the work, and a full disk under ``2>log`` or a log reader gone (``| tee``) must not stop a
    long build, nor pass for the split's own lack of room."""
    from tqdm import tqdm

    stream = sys.stderr  # the command's own is one already
    if not on_a_terminal(stream):
        # A log (bars forced with DSPREP_PROGRESS=1 in CI): a line each 10 s, not ~20 updates
        # a second (an hour's build would write megabytes of them).
        kwargs.setdefault("mininterval", LOG_PROGRESS_SECONDS)
    return tqdm(iterable, file=stream if isinstance(stream, ForgivingStream)
                else ForgivingStream(stream), **kwargs)
