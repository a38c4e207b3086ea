"""The notification loop: a plain thread that answers every trapped syscall.

Static-path requests are served without trio: the current generation's broker performs
them (or, for what only the child's own context can name, the kernel decides through
CONTINUE). Only denials cross over to trio, through ``on_denial``; the loop then goes on
serving other requests while the denied one waits for its answer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from llsupervise.rights import AccessFs
from llsupervise.seccomp import (
    Listener,
    MemoryReadError,
    Notification,
    NotificationGone,
    ProcessMemory,
    SeccompError,
    SuperviseesGone,
    native_arch,
    syscall_name,
)
from llsupervise.supervisor.broker import Broker
from llsupervise.supervisor.denials import CheckedObject, checked_objects
from llsupervise.supervisor.fastpath import StaticPrefixes
from llsupervise.supervisor.operations import KernelDecides, Target, perform
from llsupervise.supervisor.requests import AT_FDCWD, DecodeError, FsRequest, decode

EXEC_SYSCALLS = ("execve", "execveat")


@dataclass
class Pending:
    """A denied request waiting for an answer; owns its fds until :meth:`close`."""

    notification: Notification
    target: Target
    objects: list[CheckedObject]
    exe: str
    cmdline: str
    generation: int
    closed: bool = field(default=False)

    @property
    def request(self) -> FsRequest:
        return self.target.request

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.target.dir1, self.target.dir2):
            if fd is not None:
                os.close(fd)
        for obj in self.objects:
            obj.close()


class BrokerSlot:
    """The current generation's broker; swapping waits for the operation in flight."""

    def __init__(self, broker: Broker, generation: int) -> None:
        self.lock = threading.Lock()
        self.broker = broker
        self.generation = generation

    def swap(self, broker: Broker, generation: int) -> None:
        with self.lock:
            old, self.broker, self.generation = self.broker, broker, generation
        old.close()


def read_proc(tid: int, name: str) -> str:
    try:
        if name in ("exe", "cwd"):
            return os.readlink(f"/proc/{tid}/{name}")
        with open(f"/proc/{tid}/{name}", "rb") as f:
            return " ".join(os.fsdecode(a) for a in f.read().split(b"\0") if a)
    except OSError:
        return "?"


def status_field(tid: int, name: bytes, base: int, default: int) -> int:
    """A numeric field of /proc/TID/status (Umask, Tgid, ...)."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(name + b":"):
                    return int(line.split()[1], base)
    except (OSError, ValueError):
        pass
    return default


def child_umask(tid: int) -> int:
    return status_field(tid, b"Umask", 8, 0o022)


class NotificationLoop:
    def __init__(
        self,
        listener: Listener,
        slot: BrokerSlot,
        handled_fs: AccessFs,
        on_denial: Callable[[Pending], None],
        on_exec: Callable[[Notification, FsRequest, CheckedObject], None] | None = None,
        fast: StaticPrefixes | None = None,
    ) -> None:
        self.fast = fast
        self.listener = listener
        self.slot = slot
        self.handled_fs = handled_fs
        self.on_denial = on_denial
        self.on_exec = on_exec
        self.arch = native_arch()
        self._memory: dict[int, ProcessMemory] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self.served = 0
        #: Why :meth:`run` stopped early, if it did; the supervisor reports it.
        self.failure: BaseException | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe to call from any thread, any number of times."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Release the loop's own fds once :meth:`run` has returned."""
        for mem in self._memory.values():
            mem.close()
        self._memory.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        listener_fd = self.listener.fileno()
        try:
            while True:
                events = dict(poller.poll())
                if self._wake_r in events:
                    return
                mask = events.get(listener_fd, 0)
                if not mask & select.POLLIN:
                    return  # POLLHUP without input: every supervisee is gone
                try:
                    n = self.listener.recv()
                except SuperviseesGone:
                    return
                except SeccompError as exc:
                    if exc.errno in (errno.EINTR, errno.ENOENT):
                        continue  # the task died between poll and recv
                    raise
                try:
                    self.handle(n)
                except NotificationGone:
                    pass
        except BaseException as exc:
            self.failure = exc
            raise

    def _reader(self, n: Notification) -> ProcessMemory | None:
        """A memory reader for the thread, opened BEFORE id_valid so pid reuse is caught."""
        mem = self._memory.get(n.pid)
        if mem is None:
            try:
                mem = ProcessMemory(n.pid)
            except (OSError, SeccompError):
                return None
            self._memory[n.pid] = mem
        return mem

    def _forget(self, tid: int) -> None:
        mem = self._memory.pop(tid, None)
        if mem is not None:
            mem.close()

    def _decode(self, n: Notification, name: str) -> FsRequest | None:
        for attempt in range(2):
            mem = self._reader(n)
            if mem is None or not self.listener.id_valid(n.id):
                return None
            try:
                return decode(n, name, mem.read_cstring, mem.read)
            except MemoryReadError:
                # A cached reader goes stale when its thread's address space went away
                # (exit, pid reuse): reopen once, then give up.
                self._forget(n.pid)
                if attempt:
                    raise
        return None

    def handle(self, n: Notification) -> None:
        self.served += 1
        name = syscall_name(self.arch, n.nr) or ""
        if name in EXEC_SYSCALLS:
            self._exec(n, name)
            return
        try:
            request = self._decode(n, name)
        except (DecodeError, MemoryReadError):
            self.listener.send_continue(n.id)  # the static layer decides
            return
        if request is None:
            return  # the task is gone
        if request.leave_to_kernel() or (self.fast is not None and self.fast.allows(request)):
            self.listener.send_continue(n.id)
            return
        target = self._bind(n, request)
        if target is None:
            return
        self.serve(n, target)

    def _exec(self, n: Notification, name: str) -> None:
        """Exec cannot be granted live (Landlock checks it in the child's context): the static
        layer decides, and ``on_exec`` hears of the executable so a denial can be reported."""
        try:
            request = self._decode(n, name) if self.on_exec is not None else None
        except (DecodeError, MemoryReadError):
            request = None
        # The address space is replaced: a cached reader would read the old one.
        self._forget(n.pid)
        if request is not None and self.on_exec is not None:
            try:
                dir1 = self._dirfd(n.pid, request.dirfd, request.path)
            except OSError:
                dir1 = None
            try:
                objects = checked_objects(request, dir1, None, self.handled_fs)
            except OSError:
                objects = []
            finally:
                if dir1 is not None:
                    os.close(dir1)
            for obj in objects:
                self.on_exec(n, request, obj)  # takes ownership of obj
        self.listener.send_continue(n.id)

    def _dirfd(self, tid: int, dirfd: int, path: bytes) -> int | None:
        if path.startswith(b"/"):
            return None
        where = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
        return os.open(where, os.O_PATH | os.O_CLOEXEC)

    def _bind(self, n: Notification, r: FsRequest) -> Target | None:
        try:
            dir1 = self._dirfd(n.pid, r.dirfd, r.path)
        except OSError as exc:
            self._reply_errno(n, exc.errno or errno.EBADF)
            return None
        try:
            dir2 = self._dirfd(n.pid, r.dirfd2, r.path2) if r.path2 else None
        except OSError as exc:
            if dir1 is not None:
                os.close(dir1)
            self._reply_errno(n, exc.errno or errno.EBADF)
            return None
        umask = child_umask(n.pid) if r.creates else 0
        return Target(r, dir1, dir2, umask)

    def _reply_errno(self, n: Notification, err: int) -> None:
        # /proc/TID/fd/N missing means the child passed a bad fd.
        self.listener.send_error(n.id, errno.EBADF if err == errno.ENOENT else err)

    def serve(self, n: Notification, target: Target) -> None:
        """Perform with the current broker; a Landlock denial goes to ``on_denial``."""
        with self.slot.lock:
            generation = self.slot.generation
            try:
                result = self.slot.broker.call(lambda: perform(target))
            except KernelDecides:
                result = None
            except OSError as exc:
                if exc.errno == errno.EACCES and self._deny(n, target, generation):
                    return
                _close_dirs(target)
                self.listener.send_error(n.id, exc.errno or errno.EIO)
                return
        _close_dirs(target)
        if result is None:
            self.listener.send_continue(n.id)
        else:
            reply(self.listener, n, target.request, result)

    def _deny(self, n: Notification, target: Target, generation: int) -> bool:
        """Hand a denial over; False when it was not Landlock's (no handled right missing)."""
        try:
            objects = checked_objects(target.request, target.dir1, target.dir2, self.handled_fs)
        except OSError:
            objects = []
        if not objects:
            return False
        self.on_denial(
            Pending(n, target, objects, read_proc(n.pid, "exe"), read_proc(n.pid, "cmdline"),
                    generation)
        )  # fmt: skip
        return True


def _close_dirs(target: Target) -> None:
    for fd in (target.dir1, target.dir2):
        if fd is not None:
            os.close(fd)


def reply(listener: Listener, n: Notification, request: FsRequest, result: int) -> None:
    """Answer with a performed operation's result: inject the fd of an open, else the value."""
    if request.op == "open":
        try:
            listener.addfd(n.id, result, send=True, cloexec=bool(request.flags & os.O_CLOEXEC))
        finally:
            os.close(result)
    else:
        listener.send_value(n.id, result)
