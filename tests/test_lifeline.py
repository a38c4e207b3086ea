"""The lifeline (launch.lifeline): a run's cgroup, and the watchdog that empties it once the
supervisor is gone. Against the real cgroup v2 hierarchy."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from llsupervise.supervisor.launch.lifeline import Lifeline

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


def test_what_is_left_in_the_cgroup_is_killed_and_the_cgroup_removed() -> None:
    line = made()
    child = subprocess.Popen(["sleep", "60"])
    try:
        line.adopt(child.pid)
        line.close()
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert not os.path.exists(line.path)
    finally:
        child.kill()
        child.wait()
