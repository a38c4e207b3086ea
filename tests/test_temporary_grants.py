""" "Allow for N seconds": the kernel lets a running child through, then refuses it again.

Trio's mock clock drives the expiry: the test freezes it (``autojump_threshold = inf``) while
the child runs under the grant, then moves it by hand, so the grant's lifetime is exact and
costs no real time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from supervised import READ_OK, ReadLoop, make_tree, policy

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial

pytestmark = pytest.mark.kernel

GRANT_SECONDS = 30.0


class AllowForThenDeny:
    """The first question gets "allow for GRANT_SECONDS", later ones "deny"."""

    def __init__(self) -> None:
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        self.asked.append(denial)
        if len(self.asked) == 1:
            return Decision(Answer.ALLOW_FOR, duration=GRANT_SECONDS)
        return Decision(Answer.DENY)


async def wait_real(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll in real time (the trio clock is frozen); the limit only stops a broken test."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await trio.to_thread.run_sync(time.sleep, 0.01)


@pytest.mark.trio
async def test_a_grant_for_a_while_expires_and_the_kernel_denies_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    autojump_clock.autojump_threshold = math.inf  # time moves only when the test says so
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    reader = ReadLoop(tmp_path)
    frontend = AllowForThenDeny()
    decisions = ModeDecisions("interactive", "deny", 300.0, frontend)
    events: list[Mapping[str, Any]] = []
    async with (
        Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup,
        trio.open_nursery() as nursery,
    ):
        sup.listeners.append(events.append)
        reader.start(sup, nursery)
        await wait_real(lambda: reader.lines().count(READ_OK) >= 20, "reads under the grant")
        assert "err 13" not in reader.lines()  # the first read was asked about and allowed
        [granted] = [e for e in events if e["event"] == "denial"]
        assert granted["decision"] == "allow_for"
        assert granted["rules"] == [
            {"path": str(paths["data"] / "x"), "access": ["read_file"], "seconds": GRANT_SECONDS}
        ]

        autojump_clock.jump(GRANT_SECONDS - 1)
        await trio.testing.wait_all_tasks_blocked()
        mark = len(reader.lines())
        await wait_real(lambda: len(reader.lines()) > mark + 20, "reads just before expiry")
        assert set(reader.lines()[mark:]) == {READ_OK}

        autojump_clock.jump(1)
        await wait_real(lambda: "err 13" in reader.lines()[mark:], "the kernel to deny again")
        assert not sup.rules.mutable.committed.fs  # the temporary rule is gone
        asked = [d.path for d in frontend.asked]
        assert len(asked) >= 2 and set(asked) == {str(paths["data"] / "x")}
        denials = [e for e in events if e["event"] == "denial"]
        assert [e["decision"] for e in denials[:2]] == ["allow_for", "deny"]
        reader.stop()
