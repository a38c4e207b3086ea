"""The lifeline (launch.lifeline): a run's cgroup, and the watchdog that empties it once the
supervisor is gone. Against the real cgroup v2 hierarchy."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from llsupervise.supervisor.launch.helper import Helper
from llsupervise.supervisor.launch.lifeline import Adoption, Lifeline

pytestmark = pytest.mark.kernel


def made() -> Lifeline:
    made = Lifeline.create()
    assert made is not None, "no writable cgroup v2 here (these machines have one)"
    return made


def alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_empty_cgroup_is_removed_at_once_and_its_watchdog_reaped_later() -> None:
    """Nothing left in the cgroup: close removes it itself, without the watchdog (stopped
    here, as one still starting up would be); it then finds the cgroup gone and exits, and a
    later close reaps it."""
    line = made()
    watchdog = line._watchdog
    assert watchdog is not None
    os.kill(watchdog, signal.SIGSTOP)
    try:
        line.close()
        assert not os.path.exists(line.path)
    finally:
        os.kill(watchdog, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while alive(watchdog):
        assert time.monotonic() < deadline, "the watchdog never exited"
        time.sleep(0.01)
    made().close()  # reaps what earlier runs left
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        assert str(watchdog) not in f.read().split()


@contextlib.contextmanager
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def closed_with(line: Lifeline, child: subprocess.Popen[bytes]) -> None:
    """Close ``line``, with ``child`` in it: the child is killed and the cgroup removed."""
    line.close()
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert not os.path.exists(line.path)


def test_what_is_left_in_the_cgroup_is_killed_and_the_cgroup_removed() -> None:
    line = made()
    with sleeper() as child:
        line.adopt(child.pid)
        closed_with(line, child)


def cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().split("::", 1)[1].strip()


def test_an_adoption_makes_the_lifeline_with_the_process_in_it() -> None:
    """Made in a thread while the caller goes on; taken, it is the process's cgroup, and a
    second move (the launcher's) is nothing."""
    with sleeper() as child:
        adoption = Adoption(child.pid)
        adoption.start()
        line = adoption.take()
        assert line is not None
        assert line.path.endswith(cgroup_of(child.pid))
        with open(os.path.join(line.path, "cgroup.procs")) as f:
            assert f.read().split() == [str(child.pid)]
        line.adopt(child.pid)
        closed_with(line, child)


def test_an_abandoned_helper_takes_its_lifeline_with_it() -> None:
    """A run that fails before it launches (a bad policy, say): the helper exits at the end
    of its spec pipe, and its cgroup goes too; a taken adoption is the run's to close."""
    probe = made()
    beside = os.path.dirname(probe.path)  # where the lifelines are made
    probe.close()
    helper = Helper.start()
    helper.adoption = Adoption(helper.process.pid)
    helper.adoption.start()
    mine = f"llsupervise-{os.getpid()}-"
    deadline = time.monotonic() + 30
    while mine not in cgroup_of(helper.process.pid):
        assert time.monotonic() < deadline, "the helper was never moved"
        time.sleep(0.01)  # moved in by the adoption's thread
    path = os.path.join(beside, os.path.basename(cgroup_of(helper.process.pid)))
    assert os.path.isdir(path)
    helper.abandon()
    assert helper.process.returncode is not None
    assert not os.path.exists(path)

    taken = Helper.start()
    adoption = taken.adoption = Adoption(taken.process.pid)
    adoption.start()
    line = adoption.take()
    assert line is not None
    taken.abandon()
    assert os.path.exists(line.path)  # not the helper's to close once taken
    line.close()
    assert not os.path.exists(line.path)


def test_a_watchdog_made_by_an_adoption_blocks_no_signal() -> None:
    """The adoption's thread blocks every signal (see Adoption.start); the watchdog it
    spawns does not inherit that mask."""
    with sleeper() as child:
        adoption = Adoption(child.pid)
        adoption.start()
        line = adoption.take()
        assert line is not None and line._watchdog is not None
        with open(f"/proc/{line._watchdog}/status") as f:
            blocked = [row.split()[1] for row in f if row.startswith("SigBlk:")]
        assert blocked == ["0000000000000000"]
        closed_with(line, child)
