"""What a serving loop keeps open per trapped thread (its memory reader, and more).

Shared by the supervisor's notification loop and the learning recorder. Nothing says when a
thread exits, so the cache is bounded: past ``limit`` threads the oldest entry is closed
(and reopened if that thread is heard from again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from llsupervise.seccomp import MemoryReadError, SeccompError


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)
R = TypeVar("R")


class TaskCache(Generic[T]):
    """Per-thread entries made by ``open_task(tid)``, closed when dropped."""

    def __init__(self, open_task: Callable[[int], T], limit: int) -> None:
        self._open = open_task
        self.limit = limit
        self._entries: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._entries.values()))

    def get(self, tid: int) -> T | None:
        """The thread's entry, opened if needed; None when it cannot be (the thread is gone,
        or we are short of descriptors)."""
        entry = self._entries.get(tid)
        if entry is None:
            if len(self._entries) >= self.limit:
                self.forget(next(iter(self._entries)))
            try:
                entry = self._open(tid)
            except (OSError, SeccompError):
                return None
            self._entries[tid] = entry
        return entry

    def pop(self, tid: int) -> T | None:
        """The thread's entry if one is kept, no longer kept (the caller closes it)."""
        return self._entries.pop(tid, None)

    def forget(self, tid: int) -> None:
        entry = self._entries.pop(tid, None)
        if entry is not None:
            entry.close()

    def close(self) -> None:
        for tid in list(self._entries):
            self.forget(tid)

    def read(self, tid: int, read: Callable[[T], R]) -> tuple[R, T] | None:
        """``read(entry)`` and the entry; None when the thread has no entry.

        A cached memory reader goes stale when its thread's address space went away (exec,
        exit, tid reuse): on :class:`MemoryReadError` the entry is reopened once, then the
        error is raised."""
        for attempt in range(2):
            entry = self.get(tid)
            if entry is None:
                return None
            try:
                return read(entry), entry
            except MemoryReadError:
                self.forget(tid)
                if attempt:
                    raise
        return None
