"""The serving threads' compiled receive loop (engine._fastpath.Receiver) against the real
kernel: a child traps its opens; the loop answers those the static table allows (CONTINUE)
and hands every other request back as its struct seccomp_notif."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_seccomp_notify import TIMEOUT, Supervisee, opening, supervisee

from llsupervise.rights import AccessFs
from llsupervise.seccomp import AUDIT_ARCH, SYSCALLS, Notification, ProcessMemory, native_arch
from llsupervise.supervisor.engine import _fastpath
from llsupervise.supervisor.engine.fastpath import _needs

pytestmark = pytest.mark.kernel

READ = int(AccessFs.READ_FILE | AccessFs.READ_DIR)


def receiver_for(child: Supervisee, static: Path, readers: _fastpath.Readers) -> _fastpath.Receiver:
    table = _fastpath.StaticTable([(os.fsencode(static), READ)], [], _needs())
    arch = native_arch()
    return _fastpath.Receiver(
        child.listener.fileno(), AUDIT_ARCH[arch], SYSCALLS[arch].get("open", -1),
        SYSCALLS[arch]["openat"], table, readers,
    )  # fmt: skip


def serve_rest(child: Supervisee, receiver: _fastpath.Receiver) -> list[bytes]:
    """Run the loop until the child is gone; CONTINUE what it hands back, and return the
    paths of the opens it handed back."""
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


def test_an_unsettled_thread_and_one_with_no_reader_come_back(
    tmp_path: Path, tree: dict[str, str]
) -> None:
    """A thread whose context-changing call may still run goes to Python (which settles it);
    so does one the loop has no memory reader for."""
    for setup in ("unsettled", "no reader"):
        with supervisee(tmp_path, [opening(tree["file"])]) as child:
            readers = _fastpath.Readers()
            if setup == "unsettled":
                with ProcessMemory(child.proc.pid) as mem:
                    readers.remember(child.proc.pid, mem.fileno())
                readers.unsettle(child.proc.pid)
            receiver = receiver_for(child, Path(tree["static"]), readers)
            child.go()
            handed = serve_rest(child, receiver)
            assert child.report()["results"][0]["content"] == "static"
            readers.close()
        assert os.fsencode(tree["file"]) in handed, setup
        assert receiver.answered == 0, setup


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
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    gone = ProcessMemory(pid)
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
        receiver = receiver_for(child, Path(tree["static"]), readers)
        wake_r, wake_w = os.pipe()
        try:
            assert receiver.next(wake_r, 0) == _fastpath.TIMEOUT
            os.write(wake_w, b"x")
            assert receiver.next(wake_r, -1) == _fastpath.WOKEN
            assert receiver.held_since() == 0.0
            assert receiver.abandon() is None  # holding nothing
            child.go()
            assert receiver.next(wake_r, -1) == _fastpath.ABANDONED
        finally:
            os.close(wake_r)
            os.close(wake_w)
        # Nothing was received: the child's open is still waiting, served here.
        fresh = receiver_for(child, Path(tree["static"]), readers)
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
