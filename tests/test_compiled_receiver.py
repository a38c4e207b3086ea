"""The serving threads' compiled receive loop (engine._fastpath.Receiver) against the real
kernel: a child traps its opens; the loop answers those the static table allows (CONTINUE)
and hands every other request back as its struct seccomp_notif.

Each test runs twice: with the calling thread receiving itself (as with ``--same-cpu``),
and with helper threads receiving, which queue what is Python's in a Handoff."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_seccomp_notify import TIMEOUT, Supervisee, opening, supervisee

from llsupervise.rights import AccessFs
from llsupervise.seccomp import (
    AUDIT_ARCH,
    MEDIATED_FS_SYSCALLS,
    SYSCALLS,
    Notification,
    ProcessMemory,
    native_arch,
)
from llsupervise.supervisor.engine import _fastpath
from llsupervise.supervisor.engine.contexts import ThreadContexts
from llsupervise.supervisor.engine.fastpath import _needs, root_links

pytestmark = pytest.mark.kernel

READ = int(AccessFs.READ_FILE | AccessFs.READ_DIR)

#: How many groups of helper threads receive: none (the calling thread does), or as in the
#: loop on a 2-CPU machine.
GROUPS = 0


def helper_threads(groups: int) -> int:
    """How many helper threads ``start_helpers(groups)`` starts here."""
    return _fastpath.PER_GROUP * min(groups, len(os.sched_getaffinity(0)), _fastpath.GROUPS_MAX)


@pytest.fixture(autouse=True, params=[0, 2], ids=["self", "helpers"])
def helpers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    groups: int = request.param
    monkeypatch.setattr(sys.modules[__name__], "GROUPS", groups)
    return groups


def receiver_of(
    child: Supervisee, static: Path, readers: _fastpath.Readers, handoff: _fastpath.Handoff
) -> _fastpath.Receiver:
    """A receiver of ``child``'s requests, ``static`` its one static directory (read), no
    helper started; what is Python's is queued in ``handoff``."""
    table = _fastpath.StaticTable([(os.fsencode(static), READ)], [], _needs())
    arch = native_arch()
    return _fastpath.Receiver(
        child.listener.fileno(), AUDIT_ARCH[arch], SYSCALLS[arch].get("open", -1),
        SYSCALLS[arch]["openat"], table, readers, None, -1, handoff,
    )  # fmt: skip


def receiver_for(
    child: Supervisee,
    static: Path,
    readers: _fastpath.Readers,
    handoff: _fastpath.Handoff | None = None,
) -> _fastpath.Receiver:
    """A receiver (see :func:`started`), which queues what is Python's in ``handoff`` (a new
    one by default)."""
    queue = handoff if handoff is not None else _fastpath.Handoff()
    return started(receiver_of(child, static, readers, queue))


def started(receiver: _fastpath.Receiver) -> _fastpath.Receiver:
    """``receiver`` with GROUPS groups of helper threads started: the child's requests are
    theirs from now on."""
    if GROUPS:
        assert receiver.start_helpers(GROUPS) == helper_threads(GROUPS)
    return receiver


def serve_rest(
    child: Supervisee, receiver: _fastpath.Receiver, back: list[Notification] | None = None
) -> list[bytes]:
    """Run the loop until the child is gone; CONTINUE what it hands back, and return the
    paths of the opens it handed back (``back``: given every request handed back)."""
    handed: list[bytes] = []
    wake_r, wake_w = os.pipe()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            got = receiver.next(wake_r, 100)
            if got == _fastpath.HUNG_UP:
                return handed
            if not isinstance(got, bytes):
                assert got == _fastpath.TIMEOUT
                continue
            n = Notification.unpack(got)
            if back is not None:
                back.append(n)
            if n.syscall in ("open", "openat"):
                with ProcessMemory(n.pid) as mem:
                    handed.append(mem.read_cstring(n.args[0 if n.syscall == "open" else 1]))
            child.listener.send_continue(n.id)
    finally:
        os.close(wake_r)
        os.close(wake_w)
    pytest.fail("the child did not finish in time")


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "f").write_text("static")
    (tmp_path / "other").write_text("other")
    return {"static": str(tmp_path / "static"), "file": str(tmp_path / "static" / "f"),
            "other": str(tmp_path / "other")}  # fmt: skip


def test_a_static_open_is_answered_in_the_loop_and_others_come_back(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    ops = [opening(tree["file"]), opening(tree["other"]), opening("static/f")]
    with supervisee(tmp_path, ops) as child:
        readers = _fastpath.Readers()
        with ProcessMemory(child.proc.pid) as mem:
            readers.remember(child.proc.pid, mem.fileno())
        receiver = receiver_for(child, Path(tree["static"]), readers)
        child.go()
        handed = serve_rest(child, receiver)
        results = child.report()["results"]
        readers.close()
    # Every open went on to the kernel (CONTINUE), each answered once.
    assert [r.get("content") for r in results] == ["static", "other", "static"]
    assert os.fsencode(tree["file"]) not in handed
    assert os.fsencode(tree["other"]) in handed
    assert b"static/f" in handed  # relative: not judged lexically
    assert receiver.answered >= 1


def test_a_thread_with_no_reader_or_among_too_many_unsettled_comes_back(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """A thread the loop has no memory reader for (and no opener to open one) goes to
    Python; so does every thread while more threads are unsettled than the loop keeps."""
    for setup in ("no reader", "too many unsettled"):
        with supervisee(tmp_path, [opening(tree["file"])]) as child:
            readers = _fastpath.Readers()
            if setup == "too many unsettled":
                with ProcessMemory(child.proc.pid) as mem:
                    readers.remember(child.proc.pid, mem.fileno())
                for tid in range(child.proc.pid, child.proc.pid + 65):
                    readers.unsettle(tid)
            receiver = receiver_for(child, Path(tree["static"]), readers)
            child.go()
            handed = serve_rest(child, receiver)
            assert child.report()["results"][0]["content"] == "static"
            assert readers.take_heard() == [], setup
            readers.close()
        assert os.fsencode(tree["file"]) in handed, setup
        assert receiver.answered == 0, setup


def test_an_unsettled_thread_heard_from_is_settled_and_served(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """A new syscall from an unsettled thread proves that the call which unsettled it has
    returned: the loop settles it, tells Python (take_heard), and serves the request. Other
    unsettled threads stay so: Python still may not vouch for anyone."""
    with supervisee(tmp_path, [opening(tree["file"])]) as child:
        pid = child.proc.pid
        readers = _fastpath.Readers()
        with ProcessMemory(pid) as mem:
            readers.remember(pid, mem.fileno())
        readers.unsettle(pid)
        readers.unsettle(pid + 1)
        receiver = receiver_for(child, Path(tree["static"]), readers)
        child.go()
        handed = serve_rest(child, receiver)
        assert child.report()["results"][0]["content"] == "static"
        assert readers.take_heard() == [pid]
        assert readers.take_heard() == []
        readers.close()
    assert handed == []
    assert receiver.answered == 1


def next_handed(receiver: _fastpath.Receiver) -> Notification:
    """The next request the loop hands back."""
    wake_r, wake_w = os.pipe()
    try:
        got = receiver.next(wake_r, int(TIMEOUT * 1000))
    finally:
        os.close(wake_r)
        os.close(wake_w)
    assert isinstance(got, bytes), got
    return Notification.unpack(got)


def test_python_settles_the_threads_the_loop_heard_from(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """Python's record of unsettled threads follows the loop's at its next catch-up (the
    first thing it does with any request): only then does it cache a context again."""
    contexts = ThreadContexts(lambda fn: fn())
    ops = [opening(tree["other"]), opening(tree["file"]), opening(tree["other"])]
    try:
        with supervisee(tmp_path, ops) as child:
            receiver = receiver_for(child, Path(tree["static"]), contexts.readers)
            child.go()
            n = next_handed(receiver)
            decoded = contexts.decode(n, "openat")
            assert decoded is not None
            task = decoded[1]
            contexts.unsettle(n.pid)  # as a context call would (it may still run)
            child.listener.send_continue(n.id)
            # The static open comes next, heard from in the loop; then the other again.
            n = next_handed(receiver)
            contexts.umask(task)
            assert task.cached_umask is None  # unsettled: not cached
            contexts.catch_up()
            assert contexts.umask(task) == task.cached_umask == os.umask(os.umask(0o22))
            child.listener.send_continue(n.id)
            serve_rest(child, receiver)
            assert [r["content"] for r in child.report()["results"]] == ["other", "static", "other"]
        assert receiver.answered == 1
    finally:
        contexts.close()


def test_a_reader_closed_by_python_is_not_used(tmp_path: Path, tree: dict[str, str]) -> None:
    """The loop reads through its own copy: forgetting the thread's reader (its Task closed)
    hands its requests back, and a reader of an address space that is gone (here: another
    process's, exited) reads nothing, so the request comes back too."""
    with supervisee(tmp_path, [opening(tree["file"])]) as child:
        readers = _fastpath.Readers()
        with ProcessMemory(child.proc.pid) as mem:
            readers.remember(child.proc.pid, mem.fileno())
        readers.forget(child.proc.pid)
        receiver = receiver_for(child, Path(tree["static"]), readers)
        child.go()
        handed = serve_rest(child, receiver)
        child.report()
        readers.close()
    assert os.fsencode(tree["file"]) in handed
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(hold_w)
        os.read(hold_r, 1)  # alive until its reader is open (a zombie's mem does not open)
        os._exit(0)
    os.close(hold_r)
    gone = ProcessMemory(pid)
    os.close(hold_w)
    os.waitpid(pid, 0)
    with supervisee(tmp_path, [opening(tree["file"])]) as child, gone:
        readers = _fastpath.Readers()
        readers.remember(child.proc.pid, gone.fileno())
        receiver = receiver_for(child, Path(tree["static"]), readers)
        child.go()
        handed = serve_rest(child, receiver)
        assert child.report()["results"][0]["content"] == "static"
        readers.close()
    assert os.fsencode(tree["file"]) in handed


def test_a_woken_loop_returns_and_an_abandoned_one_acts_no_more(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    with supervisee(tmp_path, [opening(tree["file"])]) as child:
        readers = _fastpath.Readers()
        handoff = _fastpath.Handoff()
        receiver = receiver_for(child, Path(tree["static"]), readers, handoff)
        wake_r, wake_w = os.pipe()
        try:
            assert receiver.next(wake_r, 0) == _fastpath.TIMEOUT
            os.write(wake_w, b"x")
            assert receiver.next(wake_r, -1) == _fastpath.WOKEN
            assert receiver.held_since() == 0.0
            assert receiver.abandon() == []  # holding nothing
            child.go()
            assert receiver.next(wake_r, -1) == _fastpath.ABANDONED
        finally:
            os.close(wake_r)
            os.close(wake_w)
        # Nothing was acted on: the child's open is still waiting (in the kernel, or queued
        # by a helper that received it after it was given up on), and served here.
        fresh = receiver_for(child, Path(tree["static"]), readers, handoff)
        serve_rest(child, fresh)
        assert child.report()["results"][0]["content"] == "static"
        readers.close()


def test_a_relative_open_is_judged_by_where_it_leads_while_its_cwd_is_lent(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """With the thread's cwd lent (Python holds it settled), a relative open of a static
    file is answered in the loop, and one through a symlink that leads out of the static
    tree comes back; once every cwd is taken back (a context may have changed), relative
    opens come back."""
    (Path(tree["static"]) / "out").symlink_to(tree["other"])
    ops = [opening("static/f"), opening("static/out")]
    for lent in (True, False):
        with supervisee(tmp_path, ops) as child:
            readers = _fastpath.Readers()
            cwd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
            with ProcessMemory(child.proc.pid) as mem:
                readers.remember(child.proc.pid, mem.fileno())
            readers.remember_cwd(child.proc.pid, cwd)
            os.close(cwd)
            if not lent:
                readers.forget_cwds()
            receiver = receiver_for(child, Path(tree["static"]), readers)
            child.go()
            handed = serve_rest(child, receiver)
            results = child.report()["results"]
            readers.close()
        assert [r.get("content") for r in results] == ["static", "other"]
        assert b"static/out" in handed
        assert (b"static/f" in handed) is not lent, lent


def exec_receiver(
    child: Supervisee, static: Path, readers: _fastpath.Readers
) -> _fastpath.Receiver:
    """A loop that answers execs too, with the system's programs and libraries static."""
    dirs = [(os.fsencode(static), READ), (b"/usr", READ | int(AccessFs.EXECUTE)), (b"/etc", READ)]
    table = _fastpath.StaticTable(dirs, list(root_links().items()), _needs())
    arch = native_arch()
    return started(_fastpath.Receiver(
        child.listener.fileno(), AUDIT_ARCH[arch], SYSCALLS[arch].get("open", -1),
        SYSCALLS[arch]["openat"], table, readers, None, SYSCALLS[arch]["execve"],
        _fastpath.Handoff(),
    ))  # fmt: skip


EXECS = (*MEDIATED_FS_SYSCALLS, "execve")
#: A program under /usr, which exec_receiver's table allows (where it leads, whatever PATH says).
CAT = os.path.realpath(shutil.which("cat") or "/usr/bin/cat")


def test_a_static_exec_and_the_new_programs_opens_are_served_with_readers_the_opener_opens(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """With the opener started, a process the loop has no reader for is served all the same:
    an exec the static layer allows is answered in the loop (and Python told of it, to drop
    what it keeps of that thread), and so are the new program's static opens, through a
    reader the opener opened; so is an exec of nothing (the dentry cache says so). An exec of
    a file outside the static layer comes back, to be reported."""
    outside = tmp_path / "true"
    shutil.copy(shutil.which("true") or "/bin/true", outside)
    missing = str(tmp_path / "missing")
    os.path.exists(missing)  # a negative dentry: its exec is then judged in the loop
    ops = [
        {"op": "spawn", "argv": [CAT, tree["file"]]},
        {"op": "spawn", "argv": [str(outside)]},
        {"op": "spawn", "argv": [missing]},  # a search along PATH: nothing to report
    ]
    with supervisee(tmp_path, ops, EXECS) as child:
        readers = _fastpath.Readers()
        readers.start_opener(-1)
        receiver = exec_receiver(child, Path(tree["static"]), readers)
        child.go()
        back: list[Notification] = []
        serve_rest(child, receiver, back)
        results = child.report()["results"]
        execd = readers.take_execs()
        readers.close()
    assert [(r["status"], r["stdout"]) for r in results[:2]] == [(0, "static"), (0, "")]
    assert results[2] == {"errno": errno.ENOENT}
    cat_pid, outside_pid = results[0]["pid"], results[1]["pid"]
    assert [n.syscall for n in back if n.pid == cat_pid] == []
    # The only exec to report: of a file outside the static layer.
    assert [n.pid for n in back if n.syscall == "execve"] == [outside_pid]
    # Each exec was told, whether answered here or handed back.
    assert execd is not None and cat_pid in execd and outside_pid in execd
    assert receiver.answered >= 3  # cat's exec, ld.so's opens, the file


def test_without_its_opener_a_process_with_no_reader_comes_back_whole(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """No opener (a restricted serving thread may not open one): the exec and every open
    of the new program go to Python, as before."""
    with supervisee(tmp_path, [{"op": "spawn", "argv": [CAT, tree["file"]]}], EXECS) as child:
        readers = _fastpath.Readers()
        receiver = exec_receiver(child, Path(tree["static"]), readers)
        child.go()
        back: list[Notification] = []
        serve_rest(child, receiver, back)
        results = child.report()["results"]
        readers.close()
    assert results[0]["stdout"] == "static"
    mine = [n.syscall for n in back if n.pid == results[0]["pid"]]
    assert mine[0] == "execve" and "openat" in mine
    assert receiver.answered == 0


def test_an_exec_drops_the_reader_kept_for_its_thread(tmp_path: Path, tree: dict[str, str]) -> None:
    """A kept reader reads the address space it was opened on: once its thread execs, the
    loop drops it (and opens another for the new program) rather than read the new program's
    requests through it. Here the child itself execs cat: had the loop kept the reader, the
    dynamic loader's opens would read through one of an address space that is gone, and
    come back; they are answered in the loop."""
    report = Path(tree["static"]) / "report.json"
    report.write_text(json.dumps({"results": ["from cat"]}))
    ops = [{"op": "exec", "argv": [CAT, str(report)]}]
    with supervisee(tmp_path, ops, EXECS) as child:
        readers = _fastpath.Readers()
        readers.start_opener(-1)
        with ProcessMemory(child.proc.pid) as mem:
            readers.remember(child.proc.pid, mem.fileno())
        receiver = exec_receiver(child, Path(tree["static"]), readers)
        child.go()
        back: list[Notification] = []
        serve_rest(child, receiver, back)
        assert child.report()["results"] == ["from cat"]
        execd = readers.take_execs()
        readers.close()
    assert [n.syscall for n in back] == []
    assert execd == [child.proc.pid]


def test_python_forgets_what_it_kept_of_a_thread_whose_exec_the_loop_answered(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """Python kept a task for the thread (reader, cwd, credentials); the loop answers its
    exec: Python's next catch-up (the first thing it does with any request) drops that task,
    so nothing read before the exec is used after it."""
    report = Path(tree["static"]) / "report.json"
    report.write_text(json.dumps({"results": ["from cat"]}))
    contexts = ThreadContexts(lambda fn: fn())
    contexts.readers.start_opener(-1)
    ops: list[dict[str, Any]] = [opening(tree["other"]), {"op": "exec", "argv": [CAT, str(report)]}]
    try:
        with supervisee(tmp_path, ops, EXECS) as child:
            receiver = exec_receiver(child, Path(tree["static"]), contexts.readers)
            child.go()
            n = next_handed(receiver)
            decoded = contexts.decode(n, "openat")  # Python keeps a task for the thread
            assert decoded is not None and decoded[0].path == os.fsencode(tree["other"])
            child.listener.send_continue(n.id)
            back: list[Notification] = []
            serve_rest(child, receiver, back)
            assert child.report()["results"] == ["from cat"]
        assert back == []  # the exec and cat's opens: answered in the loop
        assert [task.tid for task in contexts] == [child.proc.pid]
        contexts.catch_up()
        assert list(contexts) == []
    finally:
        contexts.close()
