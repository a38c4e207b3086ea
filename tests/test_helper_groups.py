"""The helper groups (engine._fastpath: Group, lend_turn, keep_receiving,
start_helpers(groups)) at the Receiver level, against the real kernel: the pinning under a
single or sparse affinity, one receiver per group whatever keep_receiving is told, and the
end of every helper (spares waiting for their turn included) on each way out."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from supervised import kept_to
from test_compiled_receiver import receiver_of, serve_rest
from test_receiver_helpers import helped, readers_of, tasks, until, waiting_in_recv
from test_seccomp_notify import opening, supervisee

from llsupervise.supervisor.engine import _fastpath

pytestmark = pytest.mark.kernel

CPUS = sorted(os.sched_getaffinity(0))


#: Counts of our threads compare with `<=`: a thread of an earlier test (trio's idle workers)
#: may end meanwhile; ours, not ended, would keep the count above.


def new_tids(before: set[str]) -> list[int]:
    return sorted(int(t) for t in set(os.listdir("/proc/self/task")) - before)


def allowed_cpus(tid: int) -> set[int]:
    return os.sched_getaffinity(tid)


@pytest.fixture
def static(tmp_path: Path) -> Path:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "f").write_text("static")
    return tmp_path / "static"


@pytest.mark.parametrize(
    "affinity",
    [CPUS[:1], CPUS[-1:], CPUS],
    ids=["first-cpu", "last-cpu-only", "all"],
)
def test_helpers_are_pinned_within_the_process_affinity_and_serve(
    tmp_path: Path, static: Path, affinity: list[int]
) -> None:
    """start_helpers(GROUPS_MAX): one group per CPU the process may use (the main thread's
    affinity), each pinned to CPUs of that set only; a single CPU (even not CPU 0) gives
    one group of PER_GROUP threads, one of which receives; and they serve."""
    with kept_to(affinity):
        ops = [opening(str(static / "f"))] * 20
        with supervisee(tmp_path, ops) as child:
            readers = readers_of(child)
            before = set(os.listdir("/proc/self/task"))
            waiting = waiting_in_recv()
            receiver = receiver_of(child, static, readers, _fastpath.Handoff())
            started = receiver.start_helpers(_fastpath.GROUPS_MAX)
            groups = min(len(affinity), _fastpath.GROUPS_MAX)
            assert started == groups * _fastpath.PER_GROUP
            tids = new_tids(before)
            assert len(tids) == started
            sets = [allowed_cpus(t) for t in tids]
            for s in sets:
                assert s and s <= set(affinity), sets
            # one group per CPU: each CPU of the set belongs to exactly PER_GROUP helpers
            for cpu in affinity[:groups]:
                assert sum(cpu in s for s in sets) == _fastpath.PER_GROUP, sets
            until(lambda: waiting_in_recv() == waiting + groups)
            child.go()
            handed = serve_rest(child, receiver)
            results = child.report()["results"]
            receiver.stop_helpers()
            readers.close()
        assert [r["content"] for r in results] == ["static"] * 20
        assert handed == []
        assert receiver.answered == 20


def test_keep_receiving_never_puts_a_second_helper_of_a_group_in_the_receive(
    tmp_path: Path, static: Path
) -> None:
    """keep_receiving only gives the turn to a group none of whose helpers receives: told
    again and again while every group has its receiver, no spare joins the receive (two in
    one group's receive would be woken together by each trap, the cost the groups avoid)."""
    with supervisee(tmp_path, [opening(str(static / "f"))]) as child:
        readers = readers_of(child)
        waiting = waiting_in_recv()
        receiver = helped(child, static, readers, _fastpath.Handoff())
        groups = min(len(CPUS), _fastpath.GROUPS_MAX, 2)
        until(lambda: waiting_in_recv() == waiting + groups)
        for _ in range(200):
            receiver.keep_receiving()
        time.sleep(0.2)  # a spare that wrongly took a turn would be in the receive by now
        assert waiting_in_recv() == waiting + groups
        child.go()
        serve_rest(child, receiver)
        child.report()
        receiver.stop_helpers()
        readers.close()


def test_keep_receiving_after_stop_starts_nothing(tmp_path: Path, static: Path) -> None:
    """After stop_helpers no helper is left, not even a spare that keep_receiving (the
    watch) could wake into the receive to act with the old rules: the next receiver
    answers what comes."""
    ops = [opening(str(static / "f"))] * 4
    with supervisee(tmp_path, ops) as child:
        readers = readers_of(child)
        handoff = _fastpath.Handoff()
        before = tasks()
        old = helped(child, static, readers, handoff)
        old.stop_helpers()
        assert tasks() <= before
        for _ in range(50):
            old.keep_receiving()
        assert tasks() <= before
        new = helped(child, static, readers, handoff)
        child.go()
        assert serve_rest(child, new) == []
        child.report()
        new.stop_helpers()
        readers.close()
    assert old.answered == 0
    assert new.answered == 4


def test_every_helper_ends_when_the_receiver_goes_without_a_stop(
    tmp_path: Path, static: Path
) -> None:
    """A Receiver dropped while its helpers run (no stop_helpers: an error path) wakes them
    all, the spares waiting for their turn too: once the supervisee is gone none is left."""
    before = tasks()
    with supervisee(tmp_path, [opening(str(static / "f"))]) as child:
        readers = readers_of(child)
        receiver = helped(child, static, readers, _fastpath.Handoff())
        assert tasks() > before
        del receiver
        # the spares end at once (broadcast), the receivers on the wake signal: all before
        # any request comes (what one still received would be queued, untouched)
        until(lambda: tasks() <= before)
        child.go()
        child.serve({})
        assert child.report()["results"][0]["content"] == "static"
        readers.close()
    assert tasks() <= before


def test_keep_receiving_after_abandon_starts_nothing(tmp_path: Path, static: Path) -> None:
    """Given up on, every helper ends (the spares on the broadcast), and the watch's later
    keep_receiving (a race with its own give-up) wakes none to act."""
    with supervisee(tmp_path, [opening(str(static / "f"))]) as child:
        readers = readers_of(child)
        handoff = _fastpath.Handoff()
        before = tasks()
        given_up = helped(child, static, readers, handoff)
        assert given_up.abandon(5.0) == []
        for _ in range(50):
            given_up.keep_receiving()
        until(lambda: tasks() <= before)
        in_place = helped(child, static, readers, handoff)
        child.go()
        assert serve_rest(child, in_place) == []
        child.report()
        in_place.stop_helpers()
        readers.close()
    assert given_up.answered == 0
