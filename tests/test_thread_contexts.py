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
    sleeper: subprocess.Popen[bytes],
) -> None:
    """A leader is found without /proc (its own pidfd opens); another thread's leader is
    read from its status; a thread that is gone has none."""
    statuses = CountingHandOver()
    assert group_leader(sleeper.pid, lambda: statuses(lambda: read_status(sleeper.pid))) == (
        sleeper.pid
    )
    assert statuses.calls == 0
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
        (tid,) = tids
        assert group_leader(tid, lambda: statuses(lambda: read_status(tid))) == os.getpid()
        assert statuses.calls == 1
    finally:
        done.set()
        worker.join()
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert group_leader(gone.pid) is None
