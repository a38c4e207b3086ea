"""What the serving threads keep per trapped thread (engine.contexts), against real processes:
its status file is opened only when a request needs its umask or credentials, through the
unrestricted hand-over, once, and then read again for each need."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from llsupervise.supervisor.engine.contexts import ThreadContexts, open_task
from llsupervise.supervisor.perform.credentials import own_credentials

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
