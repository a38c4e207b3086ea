"""What the serving threads keep per trapped thread (engine.contexts), against real processes:
its status file is opened only when a request needs its umask or credentials, through the
unrestricted hand-over, once, and then read again for each need."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from llsupervise.supervisor.engine import contexts as contexts_module
from llsupervise.supervisor.engine.contexts import ThreadContexts, group_leader, open_task
from llsupervise.supervisor.perform.credentials import own_credentials
from llsupervise.supervisor.perform.procfs import read_status

T = TypeVar("T")


class CountingHandOver:
    """Runs the call here, counting the hand-overs (the loop's goes to another thread)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn: Callable[[], T]) -> T:
        self.calls += 1
        return fn()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "30"], umask=0o027)
    try:
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def other_thread() -> Iterator[int]:
    """The id of a thread of this process other than its leader, alive meanwhile."""
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def thread() -> None:
        tids.append(threading.get_native_id())
        ready.set()
        done.wait()

    worker = threading.Thread(target=thread)
    worker.start()
    try:
        ready.wait()
        yield tids[0]
    finally:
        done.set()
        worker.join()


def test_status_is_opened_on_first_need_then_kept(sleeper: subprocess.Popen[bytes]) -> None:
    hand_over = CountingHandOver()
    contexts = ThreadContexts(hand_over)
    task = open_task(sleeper.pid)
    try:
        assert task.status is None  # a task's static opens and execs never need it
        assert contexts.umask(task) == 0o027
        assert hand_over.calls == 1 and task.status is not None
        assert contexts.credentials(task) == own_credentials()  # same uid: same credentials
        # The open file is read again, not reopened; its user namespace is looked up (ours).
        assert hand_over.calls == 2
        assert contexts.credentials(task) == own_credentials()
        assert hand_over.calls == 2  # cached
    finally:
        task.close()


def test_a_task_gone_before_its_status_was_opened(sleeper: subprocess.Popen[bytes]) -> None:
    contexts = ThreadContexts(CountingHandOver())
    task = open_task(sleeper.pid)
    try:
        sleeper.kill()
        sleeper.wait()
        # Unknown: the narrowest usual umask, and no credentials to act with.
        assert contexts.umask(task) == 0o077
        assert contexts.credentials(task) is None
        assert task.status is None
    finally:
        task.close()


def test_the_group_leader_of_a_thread_is_read_only_for_other_threads(
    sleeper: subprocess.Popen[bytes], other_thread: int
) -> None:
    """A leader is found without /proc (its own pidfd opens); another thread's leader is
    read from its status; a thread that is gone has none."""
    statuses = CountingHandOver()
    leader = group_leader(sleeper.pid, lambda: statuses(lambda: read_status(sleeper.pid)))
    assert leader == sleeper.pid and statuses.calls == 0
    tid = other_thread
    assert group_leader(tid, lambda: statuses(lambda: read_status(tid))) == os.getpid()
    assert statuses.calls == 1
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert group_leader(gone.pid) is None


def test_an_exec_whose_leader_cannot_be_found_drops_what_is_kept_for_every_thread(
    sleeper: subprocess.Popen[bytes], other_thread: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that is not its group's leader execs, and its leader cannot be read (its
    status read fails: short of descriptors, say): the id it takes is unknown, so what is
    kept for every thread goes, nothing is cached until the exec is over, and what was kept
    meanwhile goes again then."""
    contexts = ThreadContexts(CountingHandOver())
    try:
        kept = contexts._tasks.get(sleeper.pid)  # as one of its requests would keep it
        assert kept is not None and list(contexts) == [kept]
        monkeypatch.setattr(contexts_module, "read_status", lambda _tid: {})
        contexts.exec_begins(other_thread)
        assert list(contexts) == []
        task = contexts._tasks.get(sleeper.pid)
        assert task is not None
        contexts.umask(task)
        assert task.cached_umask is None  # unsettled until the exec is over
        contexts.heard_from(other_thread)  # it was (here: its exec failed, it is still there)
        assert list(contexts) == []
    finally:
        contexts.close()
