"""Attacks on the compiled loop's settling by hearing (an unsettled thread's next syscall,
heard in the loop, settles it there and is told to Python at its next catch-up) and on the
loop's exec answers (a leader's exec of a static path, or of nothing), made by the program.

Each test here shows a defence holding: it passes against the code it was written for.

The program runs as root, as the supervisor does, so its credentials are found to be ours:
the loop is vouched for its threads and performs their granted opens itself, in the cwd
Python lends it. What it must never do is perform one with a cwd or credentials from before
a context call that has returned since.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from catch_ups import record_catch_ups
from test_compiled_grant_attacks import run
from test_compiled_grants import READER, Drained, rw

from llsupervise.supervisor.engine import reports


def heard_in_the_loop(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The threads the loop heard from (and settled), as each of Python's catch-ups takes
    them (the list fills as the run goes)."""
    return record_catch_ups(monkeypatch, "take_heard")


pytestmark = pytest.mark.kernel

#: One thread moves between two granted directories (chdir, then a static open, which the
#: loop hears and settles it on); after each move, it and the main thread read "f" by its
#: relative name. Every read must come from the directory the mover is in by then: the
#: loop must not perform one in the cwd Python lent it before the move.
CHDIR_RACE = r"""
import json, os, sys, threading
out, d1, d2 = open(sys.argv[1], "w"), sys.argv[2], sys.argv[3]
def read():
    try:
        with open("f") as f:
            return f.read()
    except OSError as e:
        return e.errno
os.chdir(d1)
r = {"warm": [read() for _ in range(10)], "mover": [], "main": []}
go, done = threading.Event(), threading.Event()
where = [os.path.basename(d1)]
def mover():
    for i in range(40):
        go.wait()
        go.clear()
        d = d2 if i % 2 == 0 else d1
        os.chdir(d)
        # Its next trapped call: a static open, answered (and settling it) in the loop.
        os.close(os.open("/etc/passwd", os.O_RDONLY))
        r["mover"].append([os.path.basename(d), read(), read()])
        where[0] = os.path.basename(d)
        done.set()
t = threading.Thread(target=mover)
t.start()
for _ in range(40):
    go.set()
    done.wait()
    done.clear()
    r["main"].append([where[0]] + [read() for _ in range(3)])
t.join()
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_a_cwd_settled_in_the_loop_is_never_used_from_before_the_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chdir unsettles the mover (every lent cwd is withdrawn); its next call, heard in the
    loop, settles it there, and Python, told at its next catch-up, lends the new cwd. No
    relative open is performed in the old one, by either thread."""
    granted = tmp_path / "granted"
    for name in ("d1", "d2"):
        (granted / name).mkdir(parents=True)
        (granted / name / "f").write_text(name)
    drained = Drained(monkeypatch)
    heard = heard_in_the_loop(monkeypatch)
    result = await run(tmp_path, rw(granted), CHDIR_RACE, str(granted / "d1"), str(granted / "d2"))
    assert sum(map(len, heard)) >= 20, heard  # the mover was settled in the loop, move after move
    assert result["warm"] == ["d1"] * 10
    assert len(result["mover"]) == len(result["main"]) == 40
    for where, *reads in result["mover"] + result["main"]:
        assert reads == [where] * len(reads), (where, reads)
    # The loop did perform relative opens in lent cwds, between the moves too.
    performed = [os.path.basename(os.path.dirname(p)) for p in drained.paths]
    assert performed.count(b"d1") >= 5 and performed.count(b"d2") >= 5, performed


#: More threads than the loop keeps unsettled (64) each call umask and wait, so that all are
#: unsettled at once (the loop's list overflows: it hands every request to Python); then one
#: of them drops root for itself (raw setresuid) and reads a root-only file, while the others
#: read it as root, and the main thread reads it before and after.
OVERFLOW_THEN_DROP = (
    READER
    + r"""
SETRESUID = 117
N = 80
r = {"main": [read() for _ in range(5)], "workers": [], "dropped": [], "again": []}
lock = threading.Lock()
first, second = threading.Barrier(N + 1), threading.Barrier(N + 1)
def worker(i):
    os.umask(0o022)  # a context call: unsettled until heard from again
    first.wait()  # a futex, not trapped: all N unsettled at once
    second.wait()
    if i == 0:
        assert libc.syscall(SETRESUID, 65534, 65534, 0) == 0
        got = [read() for _ in range(5)]
        assert libc.syscall(SETRESUID, 0, 0, 0) == 0
        with lock:
            r["dropped"] = got
            r["again"] = [read() for _ in range(5)]
    else:
        got = read()
        with lock:
            r["workers"].append(got)
threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
first.wait()
r["meanwhile"] = [read() for _ in range(3)]
second.wait()
for t in threads:
    t.join()
r["main"] += [read() for _ in range(10)]
json.dump(r, out)
out.close()
"""
)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="raw syscall numbers of x86_64")
@pytest.mark.trio
async def test_a_thread_dropping_root_past_an_overflow_of_unsettled_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's unsettled list overflows (80 threads at once); threads then settle one by
    one, some heard in Python, some exiting. Nothing is vouched for meanwhile, and a thread
    that drops root is refused; once all have settled, the loop serves as root again. (The
    ring of threads heard in the loop cannot overflow: it holds at most what the unsettled
    list held since Python last drained it, which is at most as many as the ring.)"""
    granted = tmp_path / "granted"
    granted.mkdir()
    secret = granted / "root-only"
    secret.write_text("root")
    secret.chmod(0o600)
    os.chown(secret, 0, 0)
    drained = Drained(monkeypatch)
    result = await run(tmp_path, rw(granted), OVERFLOW_THEN_DROP, str(secret))
    assert result["dropped"] == [errno.EACCES] * 5
    assert result["again"] == ["root"] * 5
    assert result["workers"] == ["root"] * 79
    assert result["meanwhile"] == ["root"] * 3
    assert result["main"] == ["root"] * 15
    assert drained.paths.count(os.fsencode(secret)) >= 3  # served in the loop again


#: Spawns (posix_spawn: vfork, then the child's exec is its own group's leader's, answered
#: in the loop where it can be) an executable outside the static exec rights, by absolute
#: path, after a look-up of it that failed (a negative dentry at its name, then the file
#: made there), and execs of nothing (absent names: the loop answers those unreported).
EXEC_REPORTS = r"""
import json, os, shutil, sys
out, bindir = open(sys.argv[1], "w"), sys.argv[2]
r = {}
target = os.path.join(bindir, "denied")
try:
    os.stat(target)  # nothing there yet: the dentry cache keeps that
except OSError as e:
    r["before"] = e.errno
shutil.copyfile("/usr/bin/true", target)  # made there (granted: performed by Python)
os.chmod(target, 0o755)
def spawn(path):
    try:
        pid = os.posix_spawn(path, [path], {})
    except OSError as e:
        return e.errno
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
r["nothing"] = [spawn(os.path.join(bindir, "absent%d" % i)) for i in range(3)]
r["denied"] = spawn(target)
r["static"] = spawn("/usr/bin/true")
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_an_exec_denied_after_a_failed_lookup_of_its_name_is_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop answers a leader's exec unreported when the dentry cache says nothing is at
    its path. A name looked up in vain, then made, is cached as the file, not as nothing:
    its exec (refused by the static layer) is reported. Execs of nothing are not, as Python
    finds nothing to report of them either."""
    bindir = tmp_path / "granted"
    bindir.mkdir()
    reported: list[bytes] = []
    original = reports.ExecReports._report

    def spy(self: reports.ExecReports, n: Any, request: Any, objects: Any) -> None:
        objects = list(objects)
        if objects:  # Python's own finding: nothing to report of an exec of nothing
            reported.append(request.path)
        original(self, n, request, objects)

    monkeypatch.setattr(reports.ExecReports, "_report", spy)
    result = await run(tmp_path, rw(bindir), EXEC_REPORTS, str(bindir))
    assert result["before"] == errno.ENOENT
    assert result["nothing"] == [errno.ENOENT] * 3
    assert result["denied"] == errno.EACCES
    assert result["static"] == 0
    assert os.fsencode(bindir / "denied") in reported
    assert not any(b"absent" in p for p in reported)


#: Many short processes: each exec answered in the loop, each new process's reader opened by
#: the opener, each of the execs of nothing looked up in the dentry cache.
SPAWNS = r"""
import json, os, sys
out = open(sys.argv[1], "w")
n = int(sys.argv[2])
codes = []
for i in range(n):
    try:
        pid = os.posix_spawnp("true", ["true"], {}, )
        codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    except OSError as e:
        codes.append(-e.errno)
json.dump(codes, out)
out.close()
"""


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.trio
async def test_the_loops_exec_answers_and_opener_leave_no_descriptor_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Execs along a PATH whose first directories hold no ``true`` (execs of nothing, then
    the static one), from 150 processes: what the loop and its opener open for them is
    closed by the end of the run (a little slack for what the run itself keeps)."""
    empty = [tmp_path / f"e{i}" for i in range(3)]
    for d in empty:
        d.mkdir()
    true_dir = os.path.dirname(shutil.which("true") or "/usr/bin/true")
    monkeypatch.setenv("PATH", os.pathsep.join([*map(str, empty), true_dir]))
    # A run first, so that what is opened once per process (imports, caches) is counted out.
    await run(tmp_path, "", SPAWNS, "2")
    before = _fds()
    codes = await run(tmp_path, "", SPAWNS, "150")
    assert codes == [0] * 150
    assert _fds() <= before + 4, (before, _fds())
    assert sys.platform == "linux"
