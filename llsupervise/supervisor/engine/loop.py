"""The notification loop: plain threads that answer every trapped syscall.

Requests are served without trio by a thread restricted like the current generation's
broker, which performs them itself (or, for what only the child's own context can name,
lets the kernel decide through CONTINUE). Only denials cross over to trio, through
``on_denial``; the loop then goes on serving other requests while the denied one waits.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from llsupervise.landlock import Ruleset as KernelRuleset
from llsupervise.rights import AccessFs
from llsupervise.seccomp import (
    CONTEXT_SYSCALLS,
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
from llsupervise.supervisor.engine.childfds import SWEEP_SECONDS, ChildFds, open_child_fd
from llsupervise.supervisor.engine.denials import CheckedObject, checked_objects
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.requests import AT_FDCWD, DecodeError, FsRequest, decode
from llsupervise.supervisor.engine.tasks import TaskCache
from llsupervise.supervisor.net.mediator import NetMediator
from llsupervise.supervisor.perform.broker import Broker, restrict_thread
from llsupervise.supervisor.perform.credentials import (
    Credentials,
    access_credentials,
    own_credentials,
)
from llsupervise.supervisor.perform.operations import KernelDecides, Target, perform
from llsupervise.supervisor.perform.placement import borrow, give_back, home_cpu, pin_self
from llsupervise.supervisor.perform.procfs import status_fields, status_number
from llsupervise.supervisor.rules.objects import fd_path

EXEC_SYSCALLS = ("execve", "execveat")
#: Threads whose memory reader (and cached cwd) is kept open at once.
MAX_TASKS = 1024
T = TypeVar("T")


@dataclass
class Pending:
    """A denied request waiting for an answer; owns its fds until :meth:`close`."""

    notification: Notification
    target: Target
    objects: list[CheckedObject]
    generation: int
    #: Filled in by the supervisor (reading them needs its standing, not the loop's).
    exe: str = ""
    cmdline: str = ""
    closed: bool = field(default=False)

    @property
    def request(self) -> FsRequest:
        return self.target.request

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        close_dirs(self.target)
        for obj in self.objects:
            obj.close()


class BrokerSlot:
    """The current generation's broker; swapping waits for the operation in flight."""

    def __init__(self, broker: Broker, generation: int) -> None:
        self.lock = threading.Lock()
        self.broker = broker
        self.generation = generation
        #: Called with each new (broker, generation) before the old broker goes away.
        self.on_swap: list[Callable[[Broker, int], None]] = []

    def swap(self, broker: Broker, generation: int) -> None:
        with self.lock:
            old, self.broker, self.generation = self.broker, broker, generation
        for callback in self.on_swap:
            callback(broker, generation)
        old.close()


@dataclass
class _Task:
    """What the loop keeps per trapped thread, opened with the supervisor's own standing."""

    memory: ProcessMemory
    #: /proc/TID/status, re-read (pread at 0) for the umask when none is cached.
    status: int
    #: Our O_PATH fd of the thread's cwd, and its umask, while no context syscall may have
    #: changed them (see NotificationLoop._unsettle).
    cwd: int | None = None
    cached_umask: int | None = None
    #: The thread's access credentials (see credentials).
    cached_credentials: Credentials | None = None

    def forget_context(self) -> None:
        if self.cwd is not None:
            os.close(self.cwd)
        self.cwd = self.cached_umask = self.cached_credentials = None

    def close(self) -> None:
        self.forget_context()
        self.memory.close()
        os.close(self.status)

    def read_status(self) -> dict[bytes, bytes]:
        """The thread's status fields now; none once it is gone."""
        try:
            return status_fields(os.pread(self.status, 4096, 0))
        except OSError:
            return {}

    def read_umask(self) -> int:
        # Unknown: the narrowest usual umask, never a wider mode.
        return status_number(self.read_status(), b"Umask", 8, 0o077)


def _open_task(tid: int) -> _Task:
    memory = ProcessMemory(tid)
    try:
        status = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        memory.close()
        raise
    return _Task(memory, status)


class _Server:
    """One generation's serving thread: restricted like that generation's broker, so the
    requests it performs are judged by the kernel with no hand-off to another thread."""

    def __init__(self, kernel: KernelRuleset, generation: int) -> None:
        #: The generation's ruleset (its broker's, open until the server has restricted).
        self.kernel = kernel
        self.generation = generation
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)
        #: Set once the previous server has stopped: one server receives at a time.
        self.turn = threading.Event()
        self.thread: threading.Thread | None = None

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    def close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class NotificationLoop:
    """Receives and answers every trapped syscall, in a thread per commit generation.

    Each generation's thread restricts itself with that generation's rules (static ∪
    committed), then receives, decodes and performs requests itself. What needs the
    supervisor's own standing — opening the child's /proc entries (its memory, cwd and
    dirfds) — is handed to one unrestricted worker: a restricted thread may not open the
    /proc entries of a process outside its Landlock domain.
    """

    def __init__(
        self,
        listener: Listener,
        slot: BrokerSlot,
        handled_fs: AccessFs,
        on_denial: Callable[[Pending], None],
        on_exec: Callable[[Notification, FsRequest, CheckedObject], None] | None = None,
        fast: StaticPrefixes | None = None,
        net: NetMediator | None = None,
        cpu: int | None = None,
    ) -> None:
        #: The CPU the loop's threads run on (see placement).
        self.cpu = home_cpu(cpu)
        self.fast = fast
        self.net = net
        self.listener = listener
        self.slot = slot
        self.handled_fs = handled_fs
        self.on_denial = on_denial
        self.on_exec = on_exec
        self.arch = native_arch()
        #: Read here: the serving threads, restricted, may not read /proc.
        self._our_credentials = own_credentials()
        self._tasks: TaskCache[_Task] = TaskCache(
            lambda tid: self._call_unrestricted(lambda: _open_task(tid)), MAX_TASKS
        )
        self._child_fds = ChildFds(
            lambda tid, fd: self._call_unrestricted(lambda: open_child_fd(tid, fd))
        )
        #: Threads whose cwd/umask-changing syscall may still be running: while any is, what
        #: is read about a thread's context is not cached (it may be from before the change).
        self._unsettled: set[int] = set()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._stopping = False
        self._done = threading.Event()
        self._unrestricted: Broker | None = None
        self.served = 0
        #: (path as the child named it, absolute; time) of each request a server performed:
        #: the supervisor counts them against its rules. Bounded: under a flood the oldest go.
        self.performed: collections.deque[tuple[bytes, float]] = collections.deque(maxlen=65536)
        self._dir_paths: dict[tuple[int, int], bytes] = {}
        #: Why :meth:`run` stopped early, if it did; the supervisor reports it.
        self.failure: BaseException | None = None

    # -- lifetime -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until every supervisee is gone or :meth:`stop` is called."""
        self._unrestricted = Broker(None, "supervisor-proc", self.cpu)
        self.slot.on_swap.append(self._switch)
        with self.slot.lock:
            self._start(self.slot.broker, self.slot.generation)
        self._done.wait()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe to call from any thread, any number of times."""
        with self._lock:
            self._stopping = True
            server = self._server
        if server is not None:
            server.wake()
            server.turn.set()  # a server still waiting for its turn sees the stop at once
        else:
            self._done.set()

    def close(self) -> None:
        """Release the loop's own fds once :meth:`run` has returned."""
        with contextlib.suppress(ValueError):
            self.slot.on_swap.remove(self._switch)
        server = self._server
        if server is not None and server.thread is not None:
            server.wake()
            server.turn.set()
            server.thread.join()
            server.close()
        self._tasks.close()
        self._child_fds.close()
        if self._unrestricted is not None:
            self._unrestricted.close()

    def _start(self, broker: Broker, generation: int) -> _Server | None:
        """Start a server for ``generation``; it waits for its turn before receiving."""
        assert broker.kernel is not None
        server = _Server(broker.kernel, generation)
        ready: threading.Event = threading.Event()
        server.thread = threading.Thread(
            target=self._serve, args=(server, ready), name=f"notifications-g{generation}",
            daemon=True,
        )  # fmt: skip
        with self._lock:
            previous, self._server = self._server, server
        server.thread.start()
        ready.wait()
        if previous is None:
            server.turn.set()
        else:
            previous.wake()
        return previous

    def _switch(self, broker: Broker, generation: int) -> None:
        """A commit: the new generation's server takes over once the old one has finished
        the request in flight, so no request is served with revoked rules after this."""
        with self._lock:
            if self._stopping or self._done.is_set() or self._server is None:
                return
        previous = self._start(broker, generation)
        if previous is not None and previous.thread is not None:
            previous.thread.join()
            previous.close()

    def _serve(self, server: _Server, ready: threading.Event) -> None:
        try:
            pin_self(self.cpu)
            restrict_thread(server.kernel)
        except BaseException as exc:
            self.failure = exc
            ready.set()
            self._done.set()
            return
        ready.set()
        server.turn.wait()
        try:
            handed_over = self._receive(server)
        except BaseException as exc:
            self.failure = exc
            handed_over = False
        if not handed_over:
            self._done.set()
            with self._lock:
                successor = self._server
            if successor is not server and successor is not None:
                # A commit raced with the end: let the newer server see it and end too.
                successor.wake()
                successor.turn.set()

    def _receive(self, server: _Server) -> bool:
        """Serve until stopped; True when stopped to hand over to a newer generation."""
        poller = select.poll()
        listener_fd = self.listener.fileno()
        poller.register(listener_fd, select.POLLIN)
        poller.register(server.wake_r, select.POLLIN)
        sweep_ms = int(SWEEP_SECONDS * 1000)
        while True:
            # Idle while keeping child dirfds: let go of those no longer named.
            events = poller.poll(sweep_ms if self._child_fds else None)
            if not events:
                self._child_fds.sweep()
                continue
            if len(events) > 1 or events[0][0] == server.wake_r:
                with self._lock:
                    successor = self._server
                    stopping = self._stopping
                if stopping or successor is server or successor is None:
                    return False
                successor.turn.set()
                return True
            mask = events[0][1]
            if not mask & select.POLLIN:
                return False  # POLLHUP without input: every supervisee is gone
            try:
                n = self.listener.recv()
            except SuperviseesGone:
                return False
            except SeccompError as exc:
                if exc.errno in (errno.EINTR, errno.ENOENT):
                    continue  # the task died between poll and recv
                raise
            try:
                self.handle(n, server.generation)
            except NotificationGone:
                pass

    def _call_unrestricted(self, fn: Callable[[], T]) -> T:
        assert self._unrestricted is not None
        return self._unrestricted.call(fn)

    def _open_proc(self, where: str) -> int:
        """An O_PATH fd (ours) of a /proc entry of the child: only our standing may open it."""
        return self._call_unrestricted(lambda: os.open(where, os.O_PATH | os.O_CLOEXEC))

    def _decode(self, n: Notification, name: str) -> tuple[FsRequest, _Task] | None:
        """Read the request from the task's memory; None when the task is gone.

        The memory reader is opened BEFORE id_valid so that pid reuse is caught; the result
        is not yet known to be the task's: check ``id_valid`` before acting on it other than
        by CONTINUE (which is safe whatever was read)."""
        return self._tasks.read(
            n.pid, lambda task: decode(n, name, task.memory.read_cstring, task.memory.read)
        )

    def _unsettle(self, tid: int) -> None:
        """``tid`` may change its cwd, root or umask (shared with other threads and even
        processes): drop every cached context, and cache none until ``tid`` is heard from
        again, which proves its syscall has returned."""
        for task in self._tasks:
            task.forget_context()
        self._unsettled.add(tid)

    def _cwd(self, tid: int, task: _Task | None) -> int:
        """An O_PATH fd (ours to close) of the thread's current working directory."""
        if task is not None and task.cwd is not None:
            return os.dup(task.cwd)
        fd = self._open_proc(f"/proc/{tid}/cwd")
        if task is None or self._unsettled:
            return fd
        task.cwd = fd
        return os.dup(fd)

    def _credentials(self, task: _Task) -> Credentials | None:
        """The thread's access credentials; None when unknown (it is gone)."""
        if task.cached_credentials is not None:
            return task.cached_credentials
        credentials = access_credentials(task.read_status())
        if not self._unsettled:
            task.cached_credentials = credentials
        return credentials

    def _umask(self, task: _Task) -> int:
        if task.cached_umask is not None:
            return task.cached_umask
        umask = task.read_umask()
        if not self._unsettled:
            task.cached_umask = umask
        return umask

    def handle(self, n: Notification, generation: int) -> None:
        self.served += 1
        self._unsettled.discard(n.pid)  # its previous syscall has returned
        if self.net is not None and self.net.handle(n):
            return  # bind/connect: the mediator answers it from its own threads
        name = syscall_name(self.arch, n.nr) or ""
        if name in CONTEXT_SYSCALLS:
            self._unsettle(n.pid)
            self.listener.send_continue(n.id)  # not mediated: only observed
            return
        if name in EXEC_SYSCALLS:
            self._exec(n, name)
            return
        try:
            decoded = self._decode(n, name)
        except (DecodeError, MemoryReadError):
            self.listener.send_continue(n.id)  # the static layer decides
            return
        if decoded is None:
            # Its memory could not be opened: the task is gone (then this reply fails
            # harmlessly), or we are short of descriptors. The static layer decides.
            self.listener.send_continue(n.id)
            return
        request, task = decoded
        if request.leave_to_kernel() or (self.fast is not None and self.fast.allows(request)):
            self.listener.send_continue(n.id)
            return
        credentials = self._credentials(task)
        if credentials is None:
            self.listener.send_continue(n.id)  # not knowing them, we may not act for it
            return
        # Still waiting, so the memory read (through a fd opened before) was the task's.
        if not self.listener.id_valid(n.id):
            return
        # Not ours: the operation is performed with the thread's own (see credentials).
        theirs = None if credentials == self._our_credentials else credentials
        target = self._bind(n, request, task, theirs)
        if target is None:
            return
        self.serve(n, target, generation)

    def _exec(self, n: Notification, name: str) -> None:
        """Exec cannot be granted live (Landlock checks it in the child's context): the static
        layer decides, and ``on_exec`` hears of the executable so a denial can be reported."""
        try:
            decoded = self._decode(n, name) if self.on_exec is not None else None
        except (DecodeError, MemoryReadError):
            decoded = None
        if decoded is not None and not self.listener.id_valid(n.id):
            decoded = None
        # The address space is replaced: a cached reader would read the old one.
        self._tasks.forget(n.pid)
        if decoded is not None and self.on_exec is not None:
            request = decoded[0]
            try:
                dir1 = self._dirfd(n.pid, request.dirfd, request.path, None)
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

    def _dirfd(self, tid: int, dirfd: int, path: bytes, task: _Task | None) -> int | None:
        if path.startswith(b"/"):
            return None
        if dirfd == AT_FDCWD:
            return self._cwd(tid, task)
        return self._child_fds.open(tid, dirfd)

    def _bind(
        self, n: Notification, r: FsRequest, task: _Task, credentials: Credentials | None
    ) -> Target | None:
        try:
            dir1 = self._dirfd(n.pid, r.dirfd, r.path, task)
        except OSError as exc:
            self._reply_errno(n, exc.errno or errno.EBADF)
            return None
        try:
            dir2 = self._dirfd(n.pid, r.dirfd2, r.path2, task) if r.path2 else None
        except OSError as exc:
            if dir1 is not None:
                os.close(dir1)
            self._reply_errno(n, exc.errno or errno.EBADF)
            return None
        umask = self._umask(task) if r.creates else 0
        return Target(r, dir1, dir2, umask, credentials)

    def _reply_errno(self, n: Notification, err: int) -> None:
        # /proc/TID/fd/N missing means the child passed a bad fd.
        self.listener.send_error(n.id, errno.EBADF if err == errno.ENOENT else err)

    def serve(self, n: Notification, target: Target, generation: int) -> None:
        """Perform in this (restricted) thread; a Landlock denial goes to ``on_denial``."""
        try:
            result = perform(target)
            self._note_performed(target)
        except KernelDecides:
            result = None
        except OSError as exc:
            if exc.errno == errno.EACCES and self._deny(n, target, generation):
                return
            close_dirs(target)
            self.listener.send_error(n.id, exc.errno or errno.EIO)
            return
        close_dirs(target)
        if result is None:
            self.listener.send_continue(n.id)
        else:
            reply(self.listener, n, target.request, result, self.cpu)

    def _note_performed(self, target: Target) -> None:
        path = target.request.path
        if target.dir1 is not None and not path.startswith(b"/"):
            path = self._dir_path(target.dir1) + b"/" + path
        self.performed.append((path, time.time()))

    def _dir_path(self, fd: int) -> bytes:
        """The path of the directory ``fd`` names, remembered by the directory's identity:
        a program works in the same few directories, and a stat is cheaper than a readlink.
        (Only rule-use counts read it: a directory renamed since counts under its old path.)"""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        path = self._dir_paths.get(key)
        if path is None:
            if len(self._dir_paths) >= MAX_TASKS:
                self._dir_paths.clear()
            path = self._dir_paths[key] = os.fsencode(fd_path(fd))
        return path

    def _deny(self, n: Notification, target: Target, generation: int) -> bool:
        """Hand a denial over; False when it was not Landlock's (no handled right missing)."""
        try:
            objects = checked_objects(target.request, target.dir1, target.dir2, self.handled_fs)
        except OSError:
            objects = []
        if not objects:
            return False
        self.on_denial(Pending(n, target, objects, generation))
        return True


def close_dirs(target: Target) -> None:
    for fd in (target.dir1, target.dir2):
        if fd is not None:
            os.close(fd)


def reply(
    listener: Listener, n: Notification, request: FsRequest, result: int, cpu: int | None = None
) -> None:
    """Answer with a performed operation's result: inject the fd of an open, else the value.

    ``cpu``: the caller's own CPU, where the child is woken by the injection (placement)."""
    if request.op == "open":
        cloexec = bool(request.flags & os.O_CLOEXEC)
        try:
            original = borrow(n.pid, cpu)
            if original is None:
                listener.addfd(n.id, result, send=True, cloexec=cloexec)
                return
            try:
                # Not answered yet: the thread must not run its program while pinned.
                # (Only a fatal signal can end the wait in between: WAIT_KILLABLE_RECV.)
                injected = listener.addfd(n.id, result, cloexec=cloexec)
            finally:
                give_back(n.pid, original)
            listener.send_value(n.id, injected)
        finally:
            os.close(result)
    else:
        listener.send_value(n.id, result)
