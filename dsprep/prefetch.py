"""Compute a sequence's next batches on threads while the caller uses this one, in any loop.

Framework-free: Keras's adapter (``dsprep.adapters.as_keras``) reads through it, and a PyTorch,
JAX or hand-written loop can too.
"""

from __future__ import annotations

import operator
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from .errors import whole_number


class ReadAhead:
    """Computes the next batches of a sequence on threads while the caller uses this one.

    With ``threads=0`` nothing is read ahead, but :meth:`change` still waits for the batch
    being made.

    ``get(i)`` returns ``seq[i]``; when the calls come in order (``i`` right after the last
    one), batches ``i+1`` to ``i+threads`` are already being computed, each on a thread of its
    own (dsprep's generators are safe to index from several threads and give the same batch
    whichever thread computes it). ``get((epoch, i))``, for dsprep's ``gen[epoch, i]`` (the
    indices ``EpochIndices`` gives), reads ahead alike within that epoch, up to its last batch.
    Calls that step by more than one (``i``, ``i + k``: one rank's of ``EpochIndices(world=k)``)
    read ahead by that step. An out-of-order call is answered directly and drops what was read
    ahead.

    Whatever changes the batches (an epoch change) goes through :meth:`change`, which waits
    until no batch is being made, drops what was read ahead, applies the change and lets
    ``get`` go on: a batch is never made across a change, even when ``get`` is called from
    another thread (TensorFlow's input pipeline calls it from its own). A sequence whose
    ``epoch`` changed without :meth:`change` is noticed at the next ``get``, and what was read
    ahead is dropped then.
    """

    def __init__(self, seq: Any, threads: int) -> None:
        self.seq = seq
        self.threads = whole_number(threads, "threads")
        self._cond = threading.Condition()
        self._one_change = threading.RLock()  # change() calls run one at a time
        self._pending: dict[tuple, Future] = {}  # by _position
        self._orphans: list[Future] = []  # dropped while running: waited for by change()
        self._busy = 0  # get() calls under way
        self._changing = 0  # change() calls waiting for them, or applying
        self._last: tuple | None = None  # _position of the last get
        self._step: int | None = None  # the step from the get before it to that one
        self._epoch = getattr(seq, "epoch", None)
        self._pool: ThreadPoolExecutor | None = None
        _READERS.add(self)

    def get(self, index: int | tuple[int, int]):
        at = _position(index)
        with self._cond:
            while self._changing:
                self._cond.wait()
            epoch = getattr(self.seq, "epoch", None)
            if epoch != self._epoch:
                self._epoch = epoch
                self._drop(self._take())
            found = self._pending.pop(at, None) if at is not None else None
            last, before = self._last, self._step
            # The step from the last call, forward in one epoch: 1, or the ranks' count of
            # EpochIndices(world=...); none for a call out of order. A step of more than one
            # is read ahead by once it comes twice running (not on a random jump forward).
            step = 1 if last is None else (
                at[1] - last[1] if at is not None and at[0] == last[0] and at[1] > last[1]
                else None)
            self._step = step
            if step is not None and step > 1 and step != before:
                step = None
            if self.threads and at is not None and step is not None:
                named, i = at
                coming = range(i + step, min(len(self.seq), i + 1 + self.threads * step), step)
                stale = {k: self._pending.pop(k) for k in list(self._pending)
                         if k[0] != named or k[1] not in coming}
                if stale:
                    self._drop(stale)  # not on this stride: nobody asks for them
                for ahead in coming:
                    if (named, ahead) not in self._pending:
                        # Asked for as the caller asks: (epoch, i) names an epoch, i does not.
                        wanted = ahead if named is None else (named, ahead)
                        self._pending[named, ahead] = self._executor().submit(
                            self.seq.__getitem__, wanted)
            elif self._pending:
                self._drop(self._take())  # out of order: not what comes next
            self._last = at
            self._busy += 1
        try:
            return found.result() if found is not None else self.seq[index]
        finally:
            with self._cond:
                if found is not None and not found.done():  # interrupted while waiting
                    self._orphans.append(found)
                self._busy -= 1
                self._cond.notify_all()

    def change(self, apply: Callable[[], None] | None = None, stop_threads: bool = False) -> None:
        """Wait until no batch is being made, drop what was read ahead, then ``apply()``.

        With ``stop_threads`` the threads end too (the next ``get`` starts new ones): an epoch
        that ended leaves no thread behind, even where the dataset itself lives on. Calls from
        several threads take turns: each one's ``apply`` runs alone.
        """
        with self._one_change:
            self._change(apply, stop_threads)

    def _change(self, apply: Callable[[], None] | None, stop_threads: bool) -> None:
        with self._cond:
            self._changing += 1
            try:
                while self._busy:
                    self._cond.wait()
                pending = list(self._take().values()) + self._orphans
                self._orphans = []
            except BaseException:
                self._changing -= 1
                self._cond.notify_all()
                raise
        try:
            try:
                _wait(pending)
            except BaseException:
                with self._cond:  # interrupted: the next change waits for them
                    self._orphans += [f for f in pending if not f.done()]
                raise
            if apply is not None:
                apply()
        finally:
            with self._cond:
                self._epoch = getattr(self.seq, "epoch", None)
                self._last = None
                pool = None
                if stop_threads:
                    pool, self._pool = self._pool, None
                self._changing -= 1
                self._cond.notify_all()
            if pool is not None:
                pool.shutdown(wait=True)  # idle: every batch it ran is done

    def _take(self) -> dict[tuple, Future]:
        pending, self._pending = self._pending, {}
        self._last = None
        return pending

    def _drop(self, pending: dict[tuple, Future]) -> None:
        """Forget batches nobody will ask for; the next change() waits for those running."""
        self._orphans = [f for f in self._orphans if not f.done()]
        self._orphans += [f for f in pending.values() if not f.cancel()]

    def _reset_in_child(self) -> None:
        # A forked child has none of the parent's threads (its futures would never finish),
        # and a lock another thread held at the fork would never be released.
        self._cond = threading.Condition()
        self._one_change = threading.RLock()
        self._pool, self._pending, self._orphans = None, {}, []
        self._busy, self._changing, self._last = 0, 0, None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dsprep-read-ahead")
        return self._pool


# Every ReadAhead, weakly, so a forked child can reset them all.
_READERS: weakref.WeakSet[ReadAhead] = weakref.WeakSet()


def _reset_readers_in_child() -> None:
    for reader in list(_READERS):
        reader._reset_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_readers_in_child)


def _position(index: Any) -> tuple | None:
    """Where ``index`` stands, as ``(epoch, i)``: ``(None, i)`` for a plain ``i`` (the
    sequence's current epoch), ``(epoch, i)`` for an index that names its epoch, as dsprep's
    generators take and ``EpochIndices`` gives; None for any other index (it is passed on as
    it is, and nothing is read ahead of it). The batch after one is ``i + 1`` of the same
    epoch; a plain ``i`` and an ``(epoch, i)`` are never taken to follow each other, as the
    sequence's epoch need not be the one named."""
    epoch = None
    if isinstance(index, tuple):
        if len(index) != 2 or index[0] is None:
            return None
        epoch, index = index
        try:
            hash(epoch)
        except TypeError:
            return None
    if isinstance(index, bool):
        return None
    try:
        return epoch, operator.index(index)
    except TypeError:
        return None


def _wait(futures: Iterable[Future]) -> None:
    """Cancel what has not started and wait for the rest; their errors are nobody's now."""
    futures = [f for f in futures if not f.cancel()]
    wait(futures)
