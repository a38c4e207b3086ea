"""Seccomp user notification against the real kernel: a child process installs a filter, hands
the listener over, and the test answers the syscalls it traps."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llsupervise.seccomp import (
    Listener,
    MemoryReadError,
    Notification,
    NotificationGone,
    ProcessMemory,
    SeccompError,
    SuperviseesGone,
    native_arch,
    notif_sizes,
)
from llsupervise.seccomp import constants as c

pytestmark = pytest.mark.kernel

CHILD = Path(__file__).with_name("seccomp_child.py")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30.0  # generous: only reached when something is broken
# Which argument of a trapped syscall holds its path.
PATH_ARG = {"open": 0, "creat": 0, "mkdir": 0, "openat": 1, "mkdirat": 1, "openat2": 1}

Handler = Callable[[Listener, Notification, ProcessMemory], None]


@dataclass
class Supervisee:
    proc: subprocess.Popen[bytes]
    listener: Listener
    pidfd: int
    sock: socket.socket
    seen: list[tuple[str | None, str]] = field(default_factory=list)

    def go(self) -> None:
        self.sock.send(b"g")

    def serve(self, handlers: dict[str, Handler]) -> None:
        """Answer notifications until the child exits: handlers by path, CONTINUE otherwise."""
        deadline = time.monotonic() + TIMEOUT
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(self.pidfd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("supervisee did not finish in time")
            events = dict(poller.poll(remaining * 1000))
            if events.get(self.listener.fileno(), 0) & select.POLLIN:
                self.handle_one(handlers)
            elif self.pidfd in events:
                return

    def handle_one(self, handlers: dict[str, Handler]) -> None:
        n = self.listener.recv()
        index = PATH_ARG.get(n.syscall or "")
        if index is None:
            self.listener.send_continue(n.id)
            return
        with ProcessMemory(n.pid) as mem:  # opened before the validity check
            path = mem.read_cstring(n.args[index]).decode()
            if not self.listener.id_valid(n.id):
                return
            self.seen.append((n.syscall, path))
            handler = handlers.get(path)
            if handler is None:
                self.listener.send_continue(n.id)
            else:
                handler(self.listener, n, mem)

    def report(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err.decode()
        result: dict[str, Any] = json.loads(out)
        return result


@contextlib.contextmanager
def supervisee(
    tmp_path: Path, ops: list[dict[str, Any]], syscalls: tuple[str, ...] | None = None
) -> Iterator[Supervisee]:
    """``syscalls``: what the child traps (default: seccomp_child's)."""
    ours, theirs = socket.socketpair()
    config: dict[str, Any] = {"sock": theirs.fileno(), "ops": ops}
    if syscalls is not None:
        config["syscalls"] = list(syscalls)
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "serve", json.dumps(config)],
        pass_fds=[theirs.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    theirs.close()
    pidfd = os.pidfd_open(proc.pid)
    ours.settimeout(TIMEOUT)
    try:
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        if len(fds) != 1:
            proc.kill()
            pytest.fail(f"no listener from the child: {proc.communicate()[1].decode()}")
        with Listener(fds[0]) as listener:
            yield Supervisee(proc, listener, pidfd, ours)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        os.close(pidfd)
        ours.close()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "real.txt").write_text("real")
    (tmp_path / "other.txt").write_text("injected")
    return {name: str(tmp_path / name) for name in ("real.txt", "other.txt", "missing", "newdir")}


def opening(path: str) -> dict[str, str]:
    return {"op": "open", "path": path}


def test_notif_sizes_match_our_structs() -> None:
    notif, resp, data = notif_sizes()
    assert notif >= c.SECCOMP_NOTIF.size and resp >= c.SECCOMP_NOTIF_RESP.size
    assert data >= c.SECCOMP_DATA_SIZE
    assert (notif, resp, data) == (80, 24, 64)  # this kernel's sizes


def test_continue_lets_the_kernel_run_the_syscall(tmp_path: Path, files: dict[str, str]) -> None:
    ops = [opening(files["real.txt"]), opening(files["missing"])]
    ops.append({"op": "mkdir", "path": files["newdir"]})
    with supervisee(tmp_path, ops) as child:
        child.go()
        child.serve({})
        results = child.report()["results"]
    assert results[0]["content"] == "real"
    assert results[1] == {"errno": errno.ENOENT}
    assert results[2] == {"ok": True, "exists": True}
    # The paths read from the child's memory are exactly the ones it passed; glibc's mkdir()
    # uses the legacy syscall on x86_64.
    mkdir = "mkdir" if native_arch() == "x86_64" else "mkdirat"
    expected = [("openat", files["real.txt"]), ("openat", files["missing"])]
    assert [s for s in child.seen if s[1] in files.values()] == [
        *expected,
        (mkdir, files["newdir"]),
    ]


def test_send_error_fails_the_syscall(tmp_path: Path, files: dict[str, str]) -> None:
    def deny(listener: Listener, n: Notification, mem: ProcessMemory) -> None:
        listener.send_error(n.id, errno.EACCES)

    ops = [opening(files["real.txt"]), {"op": "mkdir", "path": files["newdir"]}]
    with supervisee(tmp_path, ops) as child:
        child.go()
        child.serve({files["real.txt"]: deny, files["newdir"]: deny})
        results = child.report()["results"]
    assert results == [{"errno": errno.EACCES}, {"errno": errno.EACCES}]
    assert not Path(files["newdir"]).exists()


def test_send_value_skips_the_syscall(tmp_path: Path, files: dict[str, str]) -> None:
    def fake_fd(listener: Listener, n: Notification, mem: ProcessMemory) -> None:
        listener.send_value(n.id, 7777)

    def fake_success(listener: Listener, n: Notification, mem: ProcessMemory) -> None:
        listener.send_value(n.id, 0)

    ops = [opening(files["real.txt"]), {"op": "mkdir", "path": files["newdir"]}]
    with supervisee(tmp_path, ops) as child:
        child.go()
        child.serve({files["real.txt"]: fake_fd, files["newdir"]: fake_success})
        results = child.report()["results"]
    assert results[0] == {"fd": 7777, "read_errno": errno.EBADF}
    assert results[1] == {"ok": True, "exists": False}


def test_addfd_injects_the_supervisors_file(tmp_path: Path, files: dict[str, str]) -> None:
    injected: list[int] = []

    def inject(newfd: int | None, cloexec: bool, send: bool) -> Handler:
        def handler(listener: Listener, n: Notification, mem: ProcessMemory) -> None:
            fd = os.open(files["other.txt"], os.O_RDONLY | os.O_CLOEXEC)
            try:
                number = listener.addfd(n.id, fd, send=send, cloexec=cloexec, newfd=newfd)
            finally:
                os.close(fd)
            if not send:
                listener.send_value(n.id, number)
            injected.append(number)

        return handler

    # The child asks for real.txt three times; each time it gets the test's other.txt instead.
    ops = [opening(files["real.txt"])] * 3
    plan = iter([inject(None, False, True), inject(77, True, False), inject(None, False, False)])
    with supervisee(tmp_path, ops) as child:
        child.go()
        child.serve({files["real.txt"]: lambda *a: next(plan)(*a)})
        results = child.report()["results"]
    assert [r["content"] for r in results] == ["injected"] * 3
    assert [r["fd"] for r in results] == injected
    assert injected[1] == 77
    assert [r["cloexec"] for r in results] == [False, True, False]


def test_set_sync_wakeup(tmp_path: Path, files: dict[str, str]) -> None:
    with supervisee(tmp_path, [opening(files["real.txt"])]) as child:
        child.listener.set_sync_wakeup()
        child.go()
        child.serve({})
        assert child.report()["results"][0]["content"] == "real"


def test_notification_of_a_killed_task_is_gone(tmp_path: Path, files: dict[str, str]) -> None:
    checked: list[str] = []
    spare = os.open(files["other.txt"], os.O_RDONLY | os.O_CLOEXEC)

    def kill_then_reply(listener: Listener, n: Notification, mem: ProcessMemory) -> None:
        assert listener.id_valid(n.id)
        os.kill(n.pid, signal.SIGKILL)
        child.proc.wait(TIMEOUT)
        assert not listener.id_valid(n.id)
        for reply in (
            lambda: listener.send_continue(n.id),
            lambda: listener.send_error(n.id, errno.EACCES),
            lambda: listener.addfd(n.id, spare, send=True),
        ):
            with pytest.raises(NotificationGone) as info:
                reply()
            assert info.value.errno in (errno.ENOENT, errno.ESRCH)
        with pytest.raises(MemoryReadError):  # the address space is gone too
            mem.read_cstring(n.args[1])
        checked.append(n.syscall or "")

    with supervisee(tmp_path, [opening(files["real.txt"])]) as child:
        child.go()
        child.serve({files["real.txt"]: kill_then_reply})
        assert checked == ["openat"]
        assert child.proc.returncode == -signal.SIGKILL
    os.close(spare)


def test_recv_after_the_last_supervisee_exits(tmp_path: Path) -> None:
    with supervisee(tmp_path, []) as child:
        child.go()
        child.serve({})
        assert child.report() == {"results": []}
        poller = select.poll()
        poller.register(child.listener.fileno(), select.POLLIN)
        assert poller.poll(TIMEOUT * 1000)[0][1] & select.POLLHUP
        for _ in range(2):  # and it stays that way
            with pytest.raises(SuperviseesGone) as info:
                child.listener.recv()
            assert isinstance(info.value, SeccompError)
            assert info.value.errno == errno.ENOENT


def test_listener_close_is_idempotent() -> None:
    r, w = os.pipe()
    os.close(w)
    listener = Listener(r)
    listener.close()
    listener.close()
    assert listener.closed
    with pytest.raises(SeccompError) as info:
        listener.recv()
    assert info.value.errno == errno.EBADF


# --- ProcessMemory on this process's own memory -------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


@pytest.fixture
def last_page() -> Iterator[int]:
    """Address of a writable page followed by an unmapped one."""
    size = mmap.PAGESIZE
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    addr = _libc.mmap(None, 2 * size, prot, flags, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    assert _libc.munmap(addr + size, size) == 0
    yield addr
    _libc.munmap(addr, size)


def test_read_cstring_stops_at_the_nul(last_page: int) -> None:
    page = mmap.PAGESIZE
    text = b"/a/path/that/ends/at/the/end/of/the/page"
    ctypes.memmove(last_page + page - len(text) - 1, text + b"\0", len(text) + 1)
    with ProcessMemory(os.getpid()) as mem:
        assert mem.read_cstring(last_page + page - len(text) - 1) == text
        assert mem.read(last_page, 4) == b"\0" * 4
        assert mem.read_cstring(last_page + 8, max_len=16) == b""


def test_read_cstring_across_pages_and_limits(last_page: int) -> None:
    page = mmap.PAGESIZE
    ctypes.memset(last_page, ord("x"), page)
    with ProcessMemory(os.getpid()) as mem:
        # No NUL before the unmapped page: unreadable, not a truncated string.
        with pytest.raises(MemoryReadError) as info:
            mem.read_cstring(last_page + 100)
        assert info.value.errno == errno.EFAULT
        with pytest.raises(MemoryReadError) as info:
            mem.read_cstring(last_page, max_len=50)
        assert info.value.errno == errno.ENAMETOOLONG
        with pytest.raises(MemoryReadError):
            mem.read(last_page + page - 2, 4)

    buf = ctypes.create_string_buffer(b"y" * 3 * page + b"\0")
    with ProcessMemory(os.getpid()) as mem:
        assert mem.read_cstring(ctypes.addressof(buf), max_len=4 * page) == b"y" * 3 * page
        with pytest.raises(MemoryReadError) as info:
            mem.read_cstring(ctypes.addressof(buf), max_len=3 * page)
        assert info.value.errno == errno.ENAMETOOLONG


def test_process_memory_of_a_missing_process() -> None:
    with pytest.raises(MemoryReadError) as info:
        ProcessMemory(2**22 + 1)  # above the largest pid_max
    assert info.value.errno == errno.ENOENT
