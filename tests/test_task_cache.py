"""The per-thread cache shared by the notification loop and the learning recorder."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from llsupervise.seccomp import MemoryReadError, ProcessMemory, SeccompError
from llsupervise.supervisor.engine.contexts import TaskCache


class Entry:
    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_an_entry_is_opened_once_and_kept() -> None:
    opened: list[int] = []

    def open_task(tid: int) -> Entry:
        opened.append(tid)
        return Entry(tid)

    cache = TaskCache(open_task, limit=4)
    first = cache.get(1)
    assert first is not None and cache.get(1) is first
    assert opened == [1]


def test_past_the_limit_the_oldest_entry_is_closed() -> None:
    cache = TaskCache(Entry, limit=2)
    one, two = cache.get(1), cache.get(2)
    three = cache.get(3)
    assert one is not None and one.closed
    assert two is not None and not two.closed
    assert three is not None and len(cache) == 2
    assert cache.get(1) is not one  # reopened when heard from again


@pytest.mark.parametrize("error", [OSError(2, "gone"), SeccompError(3, "gone")])
def test_an_entry_that_cannot_be_opened_is_none(error: Exception) -> None:
    def open_task(_tid: int) -> Entry:
        raise error

    cache: TaskCache[Entry] = TaskCache(open_task, limit=2)
    assert cache.get(1) is None
    assert cache.read(1, lambda e: e.tid) is None


def test_a_stale_reader_is_reopened_once() -> None:
    cache = TaskCache(Entry, limit=2)
    stale = cache.get(1)
    assert stale is not None

    def read(entry: Entry) -> int:
        if entry is stale:
            raise MemoryReadError(errno.EIO, "stale")
        return entry.tid

    result = cache.read(1, read)
    assert result is not None and result[0] == 1 and result[1] is not stale
    assert stale.closed


def test_a_reader_that_stays_unreadable_raises() -> None:
    cache = TaskCache(Entry, limit=2)

    def read(_entry: Entry) -> int:
        raise MemoryReadError(errno.EIO, "unreadable")

    with pytest.raises(MemoryReadError):
        cache.read(1, read)
    assert len(cache) == 0


def test_close_closes_every_entry() -> None:
    cache = TaskCache(Entry, limit=4)
    entries = [cache.get(tid) for tid in (1, 2, 3)]
    cache.close()
    assert all(e is not None and e.closed for e in entries) and len(cache) == 0


def test_real_memory_readers_of_a_process_that_exited_are_not_opened() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    cache = TaskCache(ProcessMemory, limit=2)
    assert cache.get(child.pid) is None
    live = cache.get(os.getpid())
    assert live is not None
    cache.close()
