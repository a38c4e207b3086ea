"""A child thread is pinned to the serving CPU only while a descriptor is injected into it;
its own affinity is what it has before and after."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from supervised import make_tree, run_script

from llsupervise.supervisor.perform import placement
from llsupervise.supervisor.perform.placement import Choice, borrow, give_back, home_cpu

CPUS = sorted(os.sched_getaffinity(0))


def test_the_home_cpu_is_the_requested_one_or_one_we_may_use() -> None:
    assert home_cpu(None) in CPUS
    assert home_cpu(CPUS[-1]) == CPUS[-1]


def test_a_thread_is_pinned_inside_the_block_and_restored_after() -> None:
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            before = os.sched_getaffinity(child.pid)
            original = borrow(child.pid, CPUS[0])
            assert original == before
            assert os.sched_getaffinity(child.pid) == {CPUS[0]}
            give_back(child.pid, original)
            assert os.sched_getaffinity(child.pid) == before
        finally:
            child.kill()


def test_a_thread_that_chose_other_cpus_is_left_alone() -> None:
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            os.sched_setaffinity(child.pid, {CPUS[-1]})
            assert borrow(child.pid, CPUS[0]) is None
            assert os.sched_getaffinity(child.pid) == {CPUS[-1]}
        finally:
            child.kill()


def test_a_thread_that_is_gone_is_no_error() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert borrow(child.pid, CPUS[0]) is None
    assert borrow(child.pid, None) is None
    give_back(child.pid, set(CPUS))  # no error either


# Opens a granted file many times (each open is an injected descriptor), and reports its
# affinity before and after, once with the default affinity and once with a chosen one.
GRANTED_OPENS = r"""
import os, sys
def opens():
    for _ in range(200):
        os.close(os.open("data/x", os.O_RDONLY))
before = sorted(os.sched_getaffinity(0))
opens()
after = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, {int(sys.argv[1])})
opens()
chosen = sorted(os.sched_getaffinity(0))
with open("out/affinity", "w") as f:
    f.write(f"{before}|{after}|{chosen}")
"""


@pytest.mark.kernel
@pytest.mark.trio
@pytest.mark.parametrize("borrowing", [True, False], ids=["borrowing", "direct"])
async def test_grants_leave_the_childs_affinity_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, borrowing: bool
) -> None:
    """Whichever way the descriptors are injected (see placement.Choice)."""
    monkeypatch.setattr(placement.CHOICE, "borrowing", lambda: borrowing)
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    rule = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{tmp_path}/data"]
"""
    status = await run_script(tmp_path, GRANTED_OPENS, str(CPUS[-1]), supervisor_rules=rule)
    assert status == 0
    before, after, chosen = (tmp_path / "out" / "affinity").read_text().split("|")
    assert before == after == str(CPUS)
    assert chosen == str([CPUS[-1]])


def test_the_choice_goes_the_cheaper_way_and_now_and_then_the_other() -> None:
    choice = Choice()
    ways = []
    for _ in range(4 * Choice.EXPLORE):
        borrowed = choice.borrowing()
        ways.append(borrowed)
        choice.took(borrowed, 30_000 if borrowed else 10_000)  # borrowing costs more here
    assert ways.count(True) == 1 + 4  # measured at first, then one in EXPLORE
    assert not any(ways[1 : Choice.EXPLORE - 1])


def test_the_choice_follows_a_change_of_costs() -> None:
    choice = Choice()
    for _ in range(4 * Choice.EXPLORE):
        borrowed = choice.borrowing()
        choice.took(borrowed, 30_000 if borrowed else 10_000)
    # Now the direct way gets dear (an idle CPU to wake, say): borrowing wins in time.
    ways = []
    for _ in range(8 * Choice.EXPLORE):
        borrowed = choice.borrowing()
        ways.append(borrowed)
        choice.took(borrowed, 30_000 if borrowed else 80_000)
    assert ways[-Choice.EXPLORE :].count(True) == Choice.EXPLORE - 1
