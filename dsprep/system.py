"""What the machine gives this process: the cores and memory it may use, its commands' stops.

The default worker and thread counts of every stage come from `usable_cpus`, so a job in a
container with a CPU quota (Docker ``--cpus``, a Kubernetes CPU limit) starts as many workers
as it has cores' worth of time, not one per core of the host. `start_trackers` starts the
helper processes of worker pools so that a hangup does not kill them.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"

# The stop a signal asked for (Ctrl-C, SIGTERM, SIGHUP), as the exception its handler raised.
# Python loses that exception where it cannot pass it on (raised while a weakref callback or a
# __del__ runs: "Exception ignored in ..."), and the work would go on as if no signal came:
# long loops ask again here (``raise_if_stopped``).
_STOP: list[BaseException] = []
_COMMANDS = [0]  # commands running (``command_scope``): a demo runs others inside it


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP for a block of steps that must not be cut in two (two
    renames): a stop asked for meanwhile comes right after it, as it would have come."""
    if threading.current_thread() is not threading.main_thread():
        yield  # (only the main thread handles signals)
        return
    asked: list[int] = []
    # (A handler set outside Python reads as None and could not be put back: left alone.)
    held = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
            if s is not None and signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, lambda signum, frame: asked.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        # The first stop asked for that is not ignored (a hangup under nohup is).
        for signum in asked:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.raise_signal(signum)
                break


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """A command's run. Only inside one is a recorded stop raised again; the outermost
    forgets any stop as it starts and as it ends, so library calls after it go on."""
    if not _COMMANDS[0]:
        clear_stop()
    _COMMANDS[0] += 1
    try:
        yield
    finally:
        _COMMANDS[0] -= 1
        if not _COMMANDS[0]:
            clear_stop()


def inside_a_command() -> bool:
    """Whether a command is running (outside any, after the outermost ended: False)."""
    return bool(_COMMANDS[0])


def ask_stop(exc: BaseException) -> None:
    """Record the stop a signal handler is raising."""
    _STOP[:] = [exc]


def clear_stop() -> None:
    """Forget a recorded stop."""
    _STOP.clear()


def stop_asked() -> BaseException | None:
    """The stop a signal asked for while a command runs, if any."""
    return _STOP[0] if _STOP and _COMMANDS[0] else None


def raise_if_stopped() -> None:
    """Raise the stop a signal asked for, again: its first raise may have been lost."""
    stop = stop_asked()
    if stop is not None:
        raise stop


def usable_cpus() -> int:
    """Cores this process may run on, capped by its cgroup CPU quota; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def cgroup_cpu_quota(root: str | os.PathLike = CGROUP_ROOT,
                     membership: str | os.PathLike = "/proc/self/cgroup") -> int | None:
    """The CPU quota of this process's cgroups in whole cores (rounded up), or None if none.

    cgroup v2 keeps the quota in ``cpu.max`` ("max 100000", or "150000 100000" for 1.5 cores)
    in the process's own group and each group above it; cgroup v1 in ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (-1: none). Inside a container the group is mounted at ``root``
    itself. The tightest quota found counts; a file that cannot be read counts as no quota.
    """
    folders = _cgroup_folders(Path(root), membership, "cpu", ("cpu", "cpu,cpuacct"))
    limits = [q for q in map(_quota_in, folders) if q is not None]
    return min(limits) if limits else None


def _cgroup_folders(root: Path, membership: str | os.PathLike, controller: str,
                    v1_mounts: tuple[str, ...]) -> list[Path]:
    """The folders that may hold this process's limits of ``controller``: the hierarchy's root
    (a container's own group is mounted there), then the process's group and each group above
    it, in cgroup v2 (one hierarchy at ``root``) and v1 (one per controller, at ``v1_mounts``).
    """
    folders = [root, *(root / m for m in v1_mounts)]
    try:
        lines = Path(membership).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        # "0::/user.slice/job.scope" (v2) or "4:cpu,cpuacct:/docker/abc" (v1)
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.strip().lstrip("/")
        if not rel:
            continue
        bases = [root] if controllers == "" else \
            [root / m for m in v1_mounts] if controller in controllers.split(",") else []
        for base in bases:
            here = base / rel
            while here != base and base in here.parents:
                folders.append(here)
                here = here.parent
    return folders


# cgroup v1 writes "no limit" as the largest page-aligned 63-bit number; anything near it is none.
_NO_MEMORY_LIMIT = 1 << 60


def memory_room(root: str | os.PathLike = CGROUP_ROOT,
                membership: str | os.PathLike = "/proc/self/cgroup",
                meminfo: str | os.PathLike = "/proc/meminfo") -> tuple[int, str] | None:
    """Bytes of memory this process's job may still take, and what sets that; None if unknown.

    The least of the machine's available memory (``MemAvailable``) and, for each memory limit
    of the process's cgroups (a Slurm job's ``--mem``, a container's ``--memory``), the limit
    less what the group uses, its inactive file cache left out (v2: ``memory.max`` and
    ``memory.current``; v1: ``memory.limit_in_bytes`` and ``memory.usage_in_bytes``). Shared
    memory (/dev/shm) counts against both: a job that takes more is killed, with no message,
    by the kernel.
    """
    rooms: list[tuple[int, str]] = []
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                rooms.append((int(line.split()[1]) * 1024, "memory (available RAM)"))
                break
    except (OSError, ValueError, IndexError):
        pass
    for folder in _cgroup_folders(Path(root), membership, "memory", ("memory",)):
        limit = _memory_limit_in(folder)
        if limit is not None:
            used, bound = limit
            rooms.append((max(0, bound - used),
                          f"memory (the job's limit of {bound / 1e6:,.1f} MB, cgroup {folder})"))
    return min(rooms, key=lambda room: room[0]) if rooms else None


def _memory_limit_in(folder: Path) -> tuple[int, int] | None:
    """(bytes in use, limit) of one cgroup, or None where it has no memory limit.

    The use leaves out the group's inactive file cache (``memory.stat``), which the kernel
    takes back before it kills anything, as a working-set count does: a job that has just
    copied a dump holds gigabytes of it, all of it free for the taking.
    """
    for limit_file, usage_file, cache_key in (
            ("memory.max", "memory.current", "inactive_file"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")):
        try:
            text = (folder / limit_file).read_text().strip()
        except OSError:
            continue
        try:
            if text == "max" or int(text) >= _NO_MEMORY_LIMIT:
                return None
            used = int((folder / usage_file).read_text())
        except (OSError, ValueError):
            return None
        return max(0, used - _stat_value(folder / "memory.stat", cache_key)), int(text)
    return None


def _stat_value(path: Path, key: str) -> int:
    """One ``key value`` line's value of a cgroup stat file; 0 where it cannot be read."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _quota_in(folder: Path) -> int | None:
    try:
        text = (folder / "cpu.max").read_text().split()
    except OSError:
        text = None
    try:
        if text is None:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        elif len(text) == 2 and text[0] != "max":
            quota, period = int(text[0]), int(text[1])
        else:
            return None
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


_TRACKERS_STARTED: set[int] = set()  # the processes whose trackers run (a fork has none)


def start_trackers() -> None:
    """Start the resource trackers of multiprocessing (a build's shared ring) and of loky (the
    worker pools of build-hdf5 and sample-dump) with SIGHUP blocked, as they start with SIGINT
    and SIGTERM blocked. Call it before starting worker processes.

    A hangup sent to the whole process group (a closed terminal or ssh session) then stops the
    command, which cleans up, but not the trackers: they died of it, and the command's last
    steps printed their warnings ("died unexpectedly, relaunching") and tracebacks. They still
    stop when the command's process ends.
    """
    if os.getpid() in _TRACKERS_STARTED or not hasattr(signal, "SIGHUP") or \
            not hasattr(signal, "pthread_sigmask"):
        return
    from multiprocessing import resource_tracker

    from joblib.externals.loky.backend import resource_tracker as loky_tracker

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
        loky_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a hangup meanwhile comes now
    _TRACKERS_STARTED.add(os.getpid())


def on_a_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (False for a log, a pipe, a closed or odd stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def import_matplotlib_quietly() -> None:
    """Import matplotlib without its warnings on stderr where its config folder cannot be
    made (a cron or service account's HOME: "mkdir -p failed ..., created a temporary cache
    directory"), which it then makes elsewhere itself: noise in every job log, even -q's."""
    if "matplotlib" in sys.modules:
        return
    import logging

    log = logging.getLogger("matplotlib")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import matplotlib  # noqa: F401
    finally:
        log.setLevel(level)


class ForgivingStream:
    """A text stream (standard error) that a failing write silences instead of stopping the
    command.

    A note, a warning or a progress bar that cannot be written (stderr on a full disk, its
    reader gone) is no reason to leave a split or a build half done: the first failure drops
    what could not be written, and later writes are dropped too. The exit status still tells
    how the command ended.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # a text stream (click tells text from binary so)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not self.broken:
            try:
                self._stream.write(text)
                if "\n" in text:
                    self._stream.flush()
            except BlockingIOError:
                pass  # a non-blocking pipe full for now: this text is lost, not the stream
            except (OSError, ValueError):
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BlockingIOError:
                pass  # as in write: full for now
            except (OSError, ValueError):
                self.broken = True

    def __getattr__(self, name: str):  # fileno, encoding, errors, isatty, ...
        if name == "buffer":
            # Not the stream's bytes underneath: click writes there, around this one, when
            # the encoding is ASCII, and a failure would stop the command again.
            raise AttributeError(name)
        return getattr(self._stream, name)
