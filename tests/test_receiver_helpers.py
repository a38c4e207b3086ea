"""The compiled receiver's helper threads against the real kernel: what a stop means (they
act on nothing more, and pass on untouched what they still receive), the one queue that
outlives a receiver, and the threads' end."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_compiled_receiver import helper_threads, receiver_of, serve_rest
from test_seccomp_notify import TIMEOUT, Supervisee, opening, supervisee

from llsupervise.seccomp import Notification, ProcessMemory
from llsupervise.supervisor.engine import _fastpath

pytestmark = pytest.mark.kernel

GROUPS = 2
#: How many of them start here, and how many wait in the kernel's receive (one per group).
HELPERS = helper_threads(GROUPS)
RECEIVING = HELPERS // _fastpath.PER_GROUP
#: SECCOMP_IOCTL_NOTIF_RECV, as /proc/TID/syscall shows an ioctl's request.
NOTIF_RECV = "0xc0502100"


def helped(
    child: Supervisee, static: Path, readers: _fastpath.Readers, handoff: _fastpath.Handoff
) -> _fastpath.Receiver:
    receiver = receiver_of(child, static, readers, handoff)
    assert receiver.start_helpers(GROUPS) == HELPERS
    return receiver


def readers_of(child: Supervisee) -> _fastpath.Readers:
    readers = _fastpath.Readers()
    with ProcessMemory(child.proc.pid) as mem:
        readers.remember(child.proc.pid, mem.fileno())
    return readers


def tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def waiting_in_recv() -> int:
    """How many of our threads wait in the kernel's receive."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/syscall").read_text().split()
        except OSError:
            continue  # ended meanwhile
        count += len(fields) > 2 and fields[0] == "16" and fields[2] == NOTIF_RECV
    return count


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("not in time")
        time.sleep(0.005)


@pytest.fixture
def static(tmp_path: Path) -> Path:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "f").write_text("static")
    return tmp_path / "static"


def test_stopped_helpers_end_and_leave_what_comes_next_to_the_next_receiver(
    tmp_path: Path, static: Path
) -> None:
    """A serving thread stops its helpers before it hands over its turn: they end, even
    those waiting in the kernel's receive, so none of them receives (let alone acts on)
    what comes next: the next generation's receiver answers it."""
    ops = [opening(str(static / "f"))] * 8
    with supervisee(tmp_path, ops) as child:
        readers = readers_of(child)
        handoff = _fastpath.Handoff()  # one for the loop, as in engine.loop
        before = tasks()
        waiting = waiting_in_recv()
        old = helped(child, static, readers, handoff)
        until(lambda: waiting_in_recv() == waiting + RECEIVING)
        old.stop_helpers()
        until(lambda: tasks() == before)  # they end, not merely told to (each just after
        # it marks itself ended, which stop_helpers waits for)
        new = helped(child, static, readers, handoff)
        child.go()
        handed = serve_rest(child, new)
        results = child.report()["results"]
        readers.close()
    assert [r["content"] for r in results] == ["static"] * 8
    assert old.answered == 0
    assert handed == []
    assert new.answered == 8
    assert handoff.pending() == 0


def test_helpers_end_once_every_supervisee_is_gone(tmp_path: Path, static: Path) -> None:
    """A helper left waiting in the kernel ends when the filter has no task left: no thread
    outlives what it served."""
    before = tasks()
    with supervisee(tmp_path, [opening(str(static / "f"))]) as child:
        readers = readers_of(child)
        running = helped(child, static, readers, _fastpath.Handoff())
        assert tasks() == before + HELPERS
        child.go()
        serve_rest(child, running)
        child.report()
        readers.close()
    until(lambda: tasks() == before)


def test_helpers_given_up_on_while_idle_end_and_act_on_nothing(
    tmp_path: Path, static: Path
) -> None:
    """Given up on (abandon) while idle, helpers hold nothing the watch must answer, and
    end; the receiver that takes their place serves what comes next."""
    with supervisee(tmp_path, [opening(str(static / "f"))]) as child:
        readers = readers_of(child)
        handoff = _fastpath.Handoff()
        before = tasks()
        waiting = waiting_in_recv()
        given_up = helped(child, static, readers, handoff)
        until(lambda: waiting_in_recv() == waiting + RECEIVING)
        assert given_up.abandon(5.0) == []
        assert not given_up.holding
        until(lambda: tasks() == before)
        wake_r, wake_w = os.pipe()
        try:
            assert given_up.next(wake_r, 0) == _fastpath.ABANDONED
        finally:
            os.close(wake_r)
            os.close(wake_w)
        in_place = helped(child, static, readers, handoff)
        child.go()
        handed = serve_rest(child, in_place)
        assert child.report()["results"][0]["content"] == "static"
        readers.close()
    assert handed == []
    assert in_place.answered == 1
    assert given_up.answered == 0


def test_python_requests_come_through_the_queue_in_order(tmp_path: Path, static: Path) -> None:
    """What the helpers cannot answer reaches Python as received, one after another."""
    others = [tmp_path / f"other{i}" for i in range(5)]
    for path in others:
        path.write_text(path.name)
    ops = [opening(str(path)) for path in others]
    with supervisee(tmp_path, ops) as child:
        readers = readers_of(child)
        receiver = helped(child, static, readers, _fastpath.Handoff())
        seen: list[Notification] = []
        child.go()
        handed = serve_rest(child, receiver, seen)
        results = child.report()["results"]
        readers.close()
    assert handed == [os.fsencode(path) for path in others]
    assert [r["content"] for r in results] == [path.name for path in others]
    assert len({n.id for n in seen}) == len(seen)
