"""Supervisor-granted opens performed by the compiled loop (engine.grants), on the real kernel.

First the loop alone (``_fastpath.Receiver`` with a ``Grants``): what it performs, and what it
hands back to Python untouched. Then whole runs: the control plane stays out of reach and a
thread that gave up its credentials is not served with ours, when the loop performs opens.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from supervised import policy_text
from test_compiled_receiver import helpers, serve_rest, started  # noqa: F401 (helpers: autouse)
from test_seccomp_notify import Supervisee, opening, supervisee

from llsupervise.policy.loader import load_policy
from llsupervise.seccomp import AUDIT_ARCH, SYSCALLS, ProcessMemory, native_arch
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.engine import _fastpath, loop
from llsupervise.supervisor.engine.fastpath import _needs
from llsupervise.supervisor.engine.grants import compiled_grants, take_performed
from llsupervise.supervisor.perform import blocking
from llsupervise.supervisor.perform.guard import Guard, build_guard

pytestmark = pytest.mark.kernel


def learn_mount(path: Path) -> None:
    """Have the supervisor find the mount of ``path`` not to block, as its first granted open
    there does (the loop performs opens only on mounts known so)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        found = blocking.status(fd)
    finally:
        os.close(fd)
    assert found is not None and found.mount == blocking.INLINE


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """static/ (the static table's), granted/f, granted/policy.toml and granted/token (the
    control plane, the token secret), granted/fifo."""
    paths = {"static": tmp_path / "static", "granted": tmp_path / "granted"}
    for p in paths.values():
        p.mkdir()
    for name, text in (("f", "granted"), ("policy.toml", "policy"), ("token", "token")):
        (paths["granted"] / name).write_text(text)
        paths[name] = paths["granted"] / name
    os.mkfifo(paths["granted"] / "fifo")
    paths["fifo"] = paths["granted"] / "fifo"
    learn_mount(paths["granted"])
    return paths


def guard_for(tree: dict[str, Path]) -> Guard:
    files = [
        (str(tree["policy.toml"]), "the policy file", False),
        (str(tree["token"]), "a token", True),
    ]
    return build_guard(files)


class Loop:
    """The compiled loop serving one child, as a serving thread runs it (unrestricted here:
    these tests are about what it takes, the kernel's judgement is the later ones')."""

    def __init__(self, child: Supervisee, static: Path, guard: Guard) -> None:
        self.child = child
        self.readers = _fastpath.Readers()
        with ProcessMemory(child.proc.pid) as mem:
            self.readers.remember(child.proc.pid, mem.fileno())
        grants = compiled_grants(guard)
        assert grants is not None
        self.grants = grants
        table = _fastpath.StaticTable([(os.fsencode(static), 0xFFFF)], [], _needs())
        arch = native_arch()
        self.receiver = started(_fastpath.Receiver(
            child.listener.fileno(), AUDIT_ARCH[arch], SYSCALLS[arch].get("open", -1),
            SYSCALLS[arch]["openat"], table, self.readers, grants, -1, _fastpath.Handoff(),
        ))  # fmt: skip

    def run(self) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The child's results and the paths of the opens handed back to Python."""
        self.child.go()
        handed = serve_rest(self.child, self.receiver)
        results: list[dict[str, Any]] = self.child.report()["results"]
        return results, handed

    def close(self) -> None:
        self.readers.close()
        self.grants.close()


@pytest.fixture
def serving(tmp_path: Path, tree: dict[str, Path]) -> Iterator[Any]:
    loops: list[Loop] = []
    guards: list[Guard] = []

    @contextlib.contextmanager
    def start(ops: list[dict[str, Any]]) -> Iterator[Loop]:
        guard = guard_for(tree)
        guards.append(guard)
        with supervisee(tmp_path, ops) as child:
            served = Loop(child, tree["static"], guard)
            loops.append(served)
            yield served

    yield start
    for served in loops:
        served.close()
    for guard in guards:
        guard.close()


def test_a_granted_open_of_a_thread_acting_as_we_do_is_performed_in_the_loop(
    tree: dict[str, Path], serving: Any
) -> None:
    path = str(tree["f"])
    with serving([opening(path), opening(path)]) as served:
        served.readers.vouch(served.child.proc.pid)
        results, handed = served.run()
    assert [r.get("content") for r in results] == ["granted", "granted"]
    assert all(r["cloexec"] for r in results)  # as the program asked (os.open: O_CLOEXEC)
    assert os.fsencode(path) not in handed
    assert served.receiver.answered == 2
    # Counted against the rules, as Python's performed opens are.
    assert [p for p, _ in served.grants.drain()] == [os.fsencode(path)] * 2
    assert served.grants.drain() == []


def test_a_relative_open_is_performed_in_the_cwd_python_lent(
    tmp_path: Path, tree: dict[str, Path], serving: Any
) -> None:
    """In the thread's cwd as Python holds it (lent while settled), and counted under that
    directory's path; without a cwd lent, it is Python's."""
    for lent in (True, False):
        with serving([opening("granted/f")]) as served:
            pid = served.child.proc.pid
            served.readers.vouch(pid)
            if lent:
                cwd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
                served.readers.remember_cwd(pid, cwd)
                os.close(cwd)
            results, handed = served.run()
        assert results[0]["content"] == "granted"
        assert (b"granted/f" in handed) is not lent, lent
        performed = [p for p, _ in served.grants.drain()]
        assert performed == ([os.fsencode(tree["f"])] if lent else []), lent


def test_a_thread_not_vouched_for_or_unsettled_since_goes_to_python(
    tree: dict[str, Path], serving: Any
) -> None:
    """Python vouches for a thread's credentials only while no thread is unsettled, and any
    thread unsettled since (a credential or context call) withdraws every vouch."""
    path = str(tree["f"])
    for setup in ("never", "vouched while unsettled", "unsettled since"):
        with serving([opening(path)]) as served:
            pid = served.child.proc.pid
            if setup == "vouched while unsettled":
                served.readers.unsettle(pid + 1)
                served.readers.vouch(pid)
                served.readers.settle(pid + 1)
            elif setup == "unsettled since":
                served.readers.vouch(pid)
                served.readers.unsettle(pid + 1)
                served.readers.settle(pid + 1)
            results, handed = served.run()
        assert results[0]["content"] == "granted", setup
        assert os.fsencode(path) in handed, setup


def test_what_the_loop_leaves_to_python(tree: dict[str, Path], serving: Any) -> None:
    """Only an open without creation, truncation, O_PATH or O_NOFOLLOW of a regular file or
    directory off the control plane, by an absolute path or one relative to a cwd lent, is
    performed in the loop; every other open comes back to Python untouched (here: answered
    CONTINUE by the test)."""
    f, policy, token = str(tree["f"]), str(tree["policy.toml"]), str(tree["token"])
    taken = [opening(f), opening(policy), opening(str(tree["granted"]))]
    left: list[dict[str, Any]] = [
        opening("granted/f"),  # relative to a cwd not lent
        {"op": "open", "path": f, "flags": ["O_NOFOLLOW"]},
        {"op": "open", "path": f, "flags": ["O_WRONLY", "O_TRUNC"]},
        {"op": "open", "path": str(tree["fifo"]), "flags": ["O_NONBLOCK"]},  # not a file
        opening("/dev/null"),  # a device
        opening("/proc/self/status"),  # names the caller
        {"op": "open", "path": policy, "flags": ["O_WRONLY"]},  # the control plane, written
        {"op": "open", "path": policy, "flags": ["O_RDWR"]},
        opening(token),  # a secret one, even read
    ]
    with serving(taken + left) as served:
        served.readers.vouch(served.child.proc.pid)
        results, handed = served.run()
    assert [r.get("content") for r in results[:2]] == ["granted", "policy"]
    assert "fd" in results[2]
    assert handed == [os.fsencode(op["path"]) for op in left]
    assert served.receiver.answered == len(taken)


def test_a_mount_not_known_to_be_inline_is_left_to_python_until_it_is(
    tmp_path: Path, tree: dict[str, Path], serving: Any
) -> None:
    """A mount made after start (here a tmpfs) is unknown: its opens go to Python, which
    finds out what it is; from then on the loop takes them."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(fresh)], check=True)
    try:
        (fresh / "g").write_text("fresh")
        path = str(fresh / "g")
        for learnt in (False, True):
            if learnt:
                learn_mount(fresh)
            with serving([opening(path)]) as served:
                served.readers.vouch(served.child.proc.pid)
                results, handed = served.run()
            assert results[0]["content"] == "fresh"
            assert (os.fsencode(path) in handed) is not learnt, learnt
    finally:
        subprocess.run(["umount", "-l", str(fresh)], check=True)


# --- whole runs ---------------------------------------------------------------------------

#: Opens a granted file by absolute path (the loop's shape), then every way to write the
#: policy file by absolute path, and reads it. One JSON object of errnos (0: done).
CONTROL_PLANE = r"""
import json, os, sys
work, out = sys.argv[1], sys.argv[2]
def attempt(flags):
    try:
        os.close(os.open(os.path.join(work, "policy.toml"), flags))
        return 0
    except OSError as e:
        return e.errno
for _ in range(20):
    with open(os.path.join(work, "other.txt")) as f:
        f.read()
r = {
    "write": attempt(os.O_WRONLY), "append": attempt(os.O_WRONLY | os.O_APPEND),
    "rdwr": attempt(os.O_RDWR), "read": attempt(os.O_RDONLY),
}
with open(os.path.join(out, "result"), "w") as f:
    json.dump(r, f)
"""


class Drained:
    """What each loop's compiled grants performed, as the loop takes it for the counts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[bytes] = []
        original = take_performed

        def take(grants: _fastpath.Grants | None, into: collections.deque[Any]) -> None:
            before = len(into)
            original(grants, into)
            self.paths += [p for p, _ in list(into)[before:]]

        monkeypatch.setattr(loop, "take_performed", take)


def rw(path: Path) -> str:
    return (
        f'[[supervisor.path_beneath]]\nallowed_access = ["abi.read_write"]\nparent = ["{path}"]\n'
    )


def someone_elses(granted: Path) -> Path:
    """A new directory ``granted`` holding "theirs", another user's file (mode 0600): only
    CAP_DAC_OVERRIDE (or CAP_DAC_READ_SEARCH) reads it for us."""
    granted.mkdir()
    theirs = granted / "theirs"
    theirs.write_text("someone else's")
    os.chown(theirs, 1000, 1000)
    theirs.chmod(0o600)
    return theirs


@pytest.mark.trio
async def test_the_policy_file_stays_unwritable_while_the_loop_performs_grants_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "other.txt").write_text("other")
    policy = work / "policy.toml"
    original = policy_text(tmp_path, supervisor_rules=rw(work))
    policy.write_text(original)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(work)})
    drained = Drained(monkeypatch)
    async with Supervisor.open(doc) as sup:
        status = await sup.run(
            [sys.executable, "-c", CONTROL_PLANE, str(work), str(out)], forward_signals=False
        )
    assert status == 0
    result = json.loads((out / "result").read_text())
    assert result == {"write": errno.EACCES, "append": errno.EACCES, "rdwr": errno.EACCES,
                      "read": 0}  # fmt: skip
    assert policy.read_text() == original
    # The loop did perform granted opens beside it (the first are Python's: it vouches for
    # the thread and learns the mount), and the reads of the policy file may be among them.
    other = os.fsencode(work / "other.txt")
    assert drained.paths.count(other) >= 10
    assert set(drained.paths) <= {other, os.fsencode(policy)}


#: The start of a child script: ``out``, its result file (argv[1], opened at once, so a
#: script may write it after giving up its rights), ``path`` (argv[2]), ``libc``, and
#: ``read()``: the text of ``path``, or the errno of its open.
READER = r"""
import ctypes, json, os, struct, sys, threading
out, path = open(sys.argv[1], "w"), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
def read():
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return e.errno
"""

#: Reads a root-only granted file, gives up root (setresuid to nobody), reads it again.
GIVE_UP_ROOT = READER + r"""
r = {"as_root": [read() for _ in range(10)]}
os.setresgid(65534, 65534, 65534)
os.setgroups([])
os.setresuid(65534, 65534, 65534)
r["as_nobody"] = [read() for _ in range(3)]
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_a_thread_that_gave_up_root_is_not_served_with_our_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "granted" / "root-only"
    secret.parent.mkdir()
    secret.write_text("root")
    secret.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    doc = load_policy(
        _write(tmp_path / "p.toml", policy_text(tmp_path, supervisor_rules=rw(secret.parent))),
        {"HOME": str(tmp_path), "PWD": str(tmp_path)},
    )
    drained = Drained(monkeypatch)
    async with Supervisor.open(doc) as sup:
        status = await sup.run(
            [sys.executable, "-c", GIVE_UP_ROOT, str(out / "r.json"), str(secret)],
            forward_signals=False,
        )
    assert status == 0
    result = json.loads((out / "r.json").read_text())
    assert result["as_root"] == ["root"] * 10
    assert result["as_nobody"] == [errno.EACCES] * 3
    assert drained.paths.count(os.fsencode(secret)) >= 5  # the loop served it as root


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
