"""The door from plain threads into trio (supervisor.door): calls made before trio runs wait
in order and ring the bell once; once trio runs they pass; once the run is over they are
refused, so that their callers fail closed."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator

import pytest
import trio

from llsupervise.supervisor.door import Door


def rung(door: Door) -> bool:
    return bool(select.select([door.bell], [], [], 0)[0])


@pytest.fixture
def door() -> Iterator[Door]:
    d = Door()
    yield d
    d.close()


def test_calls_before_trio_wait_in_order_and_ring_once(door: Door) -> None:
    seen: list[int] = []
    assert not rung(door)
    for i in range(3):
        assert door.call_soon(seen.append, i)
    assert rung(door)
    assert os.eventfd_read(door.bell) == 1  # one ring for all three
    assert seen == []  # nothing runs before trio

    async def main() -> None:
        door.open(trio.lowlevel.current_trio_token())
        assert door.call_soon(seen.append, 3)
        await trio.testing.wait_all_tasks_blocked()

    trio.run(main)
    assert seen == [0, 1, 2, 3]


def test_calls_from_threads_while_trio_opens_keep_their_order(door: Door) -> None:
    """Each thread's calls arrive in the order it made them, across the hand-over."""
    seen: list[tuple[int, int]] = []
    start = threading.Barrier(5)

    def caller(k: int) -> None:
        start.wait()
        for i in range(200):
            door.call_soon(seen.append, (k, i))

    async def main() -> None:
        threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        start.wait()
        door.open(trio.lowlevel.current_trio_token())
        for t in threads:
            await trio.to_thread.run_sync(t.join)
        await trio.testing.wait_all_tasks_blocked()

    trio.run(main)
    assert len(seen) == 800
    for k in range(4):
        assert [i for j, i in seen if j == k] == list(range(200))


def test_close_if_idle_refuses_while_a_call_waits(door: Door) -> None:
    assert door.call_soon(print, "waiting")
    assert not door.close_if_idle()  # trio must start for it
    assert door.call_soon(print, "still taken")


def test_once_closed_calls_are_refused(door: Door) -> None:
    seen: list[int] = []
    assert door.close_if_idle()
    assert not door.call_soon(seen.append, 1)
    assert not rung(door)
    assert seen == []


def test_after_trio_ends_calls_are_refused(door: Door) -> None:
    async def main() -> None:
        door.open(trio.lowlevel.current_trio_token())

    trio.run(main)
    assert not door.call_soon(print, "too late")


def test_close_drops_what_waited_and_releases_the_bell() -> None:
    door = Door()
    bell = door.bell
    assert door.call_soon(print, "never run")
    door.close()
    door.close()  # twice: nothing more
    assert not door.call_soon(print, "refused")
    with pytest.raises(OSError):
        os.fstat(bell)


def test_after_the_run_calls_still_reach_a_running_trio() -> None:
    """A late report (a slow filesystem's creation, done after the run) still reaches trio
    while it runs; the handlers know the run is over."""
    seen: list[str] = []

    async def main() -> None:
        door = Door()
        door.open(trio.lowlevel.current_trio_token())
        door.close()
        assert door.call_soon(seen.append, "late")
        await trio.testing.wait_all_tasks_blocked()

    trio.run(main)
    assert seen == ["late"]
