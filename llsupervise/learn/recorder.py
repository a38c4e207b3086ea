"""Record what a command asks of the filesystem, denying nothing.

The command runs with no Landlock layer and a seccomp filter trapping the syscalls Landlock
mediates. Each notification is decoded, the objects it needs rights on are looked up while the
caller waits (so a relative path is resolved against the caller's own working directory, and a
creation is told apart from an open of an existing file), and the call is let through with
CONTINUE: in learning mode nothing is denied, so CONTINUE here grants nothing the command did
not already have. Nothing is performed on the command's behalf and no broker exists.

Lookups go through the kernel (``O_PATH`` open, then its name in ``/proc/self/fd``), so the
recorded path is the object Landlock would check, symlinks resolved. What the kernel itself
opens without a trapped call (ELF and ``#!`` interpreters) is not seen; ``synthesis`` covers it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import select
import shlex
import signal
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from msgspec import Struct

from llsupervise.errors import LLSuperviseError
from llsupervise.learn.recording import Recording
from llsupervise.libc import AT_FDCWD, OPEN_HOW
from llsupervise.rights import NO_FS, NO_NET, NO_SCOPE, AccessFs
from llsupervise.seccomp import (
    MEDIATED_FS_SYSCALLS,
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
from llsupervise.supervisor.engine.contexts import TaskCache, group_leader
from llsupervise.supervisor.engine.handler import EXEC_SYSCALLS
from llsupervise.supervisor.engine.requests import (
    AT_EMPTY_PATH,
    AT_SYMLINK_FOLLOW,
    AT_SYMLINK_NOFOLLOW,
    DecodeError,
    FsRequest,
    created_file_rights,
    decode,
    make_right,
    open_rights,
    remove_right,
    rename_rights,
    signed_fd,
    split_last,
)
from llsupervise.supervisor.launch.launcher import StaticLayer, Stdio, exit_status, launch
from llsupervise.supervisor.net.mediator import NET_CALLS, open_pidfd, pidfd_getfd, socket_kind
from llsupervise.supervisor.net.sockaddr import decode_call, parse_sockaddr
from llsupervise.supervisor.perform.procfs import read_proc
from llsupervise.supervisor.rules.objects import fd_path

#: ftruncate is trapped too: the truncate right of an fd is fixed when it is opened, so a
#: later ftruncate is how a run shows that an open needed it. TCP bind/connect give ports.
TRAPPED_SYSCALLS = (*MEDIATED_FS_SYSCALLS, *EXEC_SYSCALLS, "ftruncate", *NET_CALLS)

#: No Landlock layer at all: the launcher skips the ruleset when nothing is handled.
UNRESTRICTED = StaticLayer(NO_FS, NO_NET, NO_SCOPE, allow_nothing=True)

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

#: Stands for llsupervise's own launcher while it starts the command: never recorded as a
#: program (its exec of the command is attributed to the program it starts).
LAUNCHER = "llsupervise"

#: Memory handles kept open at once (one descriptor each); a build starts thousands of
#: processes, and the command inherits our descriptor limit, so it is not raised.
MAX_CACHED_TASKS = 256

_LOOKUP = os.O_PATH | os.O_CLOEXEC
_DELETED = " (deleted)"
#: Signals passed on to the command. SIGINT is not: a terminal sends it to the command too.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class CommandNotStarted(LLSuperviseError):
    """The launcher could not exec the command: nothing of it was recorded."""


class _Found(Struct, frozen=True):
    """An object found by a lookup: the kernel's name for it, its mode and identity."""

    path: str
    mode: int
    ident: tuple[int, int]


def _lookup(where: bytes, follow: bool) -> _Found | None:
    try:
        fd = os.open(where, _LOOKUP if follow else _LOOKUP | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return _Found(fd_path(fd), st.st_mode, (st.st_dev, st.st_ino))
    finally:
        os.close(fd)


def _mode(where: bytes, follow: bool = False) -> int | None:
    try:
        return os.stat(where, follow_symlinks=follow).st_mode
    except OSError:
        return None


def _split(where: bytes) -> tuple[bytes, str]:
    """The directory part of a lookup path and the last component's name."""
    head, tail = split_last(where)
    return head or b"/", os.fsdecode(tail.rstrip(b"/"))


def _child_view(tid: int, path: bytes) -> bytes:
    """An absolute path as the calling thread sees it: ``/proc/self`` and ``/dev/fd`` name
    the caller's objects, not ours."""
    fds = b"/proc/%d/fd" % tid
    for prefix, replacement in (
        (b"/proc/self", b"/proc/%d" % tid),
        (b"/proc/thread-self", b"/proc/%d/task/%d" % (tid, tid)),
        (b"/dev/fd", fds),
        (b"/dev/stdin", fds + b"/0"),
        (b"/dev/stdout", fds + b"/1"),
        (b"/dev/stderr", fds + b"/2"),
    ):
        if path == prefix or path.startswith(prefix + b"/"):
            return replacement + path[len(prefix) :]
    return path


class _Traced(Struct):
    """A trapped thread's memory reader and executable."""

    memory: ProcessMemory
    exe: str

    @classmethod
    def open(cls, tid: int) -> _Traced:
        memory = ProcessMemory(tid)
        return cls(memory, read_proc(tid, "exe"))

    def close(self) -> None:
        self.memory.close()


class _Observer:
    """Records what each observed request needs, as Landlock would check it."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def record(
        self, path: str, access: AccessFs, exe: str, *, is_dir: bool = False,
        static: AccessFs = NO_FS,
    ) -> None:  # fmt: skip
        # Pipes, sockets and anonymous files have no path and no Landlock check.
        if path.startswith("/") and not path.endswith(_DELETED):
            program = None if exe == LAUNCHER else exe
            self.recording.record_path(path, access, program, is_dir=is_dir, static=static)

    def parent(self, where: bytes) -> tuple[_Found, str] | None:
        head, name = _split(where)
        parent = _lookup(head, True)
        if parent is None or not stat.S_ISDIR(parent.mode):
            return None
        return parent, name

    def observe(self, tid: int, r: FsRequest, exe: str) -> None:
        if r.op == "open" and r.flags & os.O_PATH:
            return  # Landlock does not check O_PATH opens
        # Paths such as /dev/stdout are judged in the caller's context: static layer only.
        kernel = r.leave_to_kernel()
        where = _where(tid, r.dirfd, r.path)
        if r.op == "open":
            self.open(where, r.flags, exe, kernel)
        elif r.op in ("mkdir", "mknod", "symlink"):
            mode = {"mkdir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(r.op, r.mode)
            self.make(where, make_right(mode), exe, kernel)
        elif r.op in ("unlink", "rmdir"):
            self.remove(where, exe, kernel)
        elif r.op == "rename":
            self.rename(where, _where(tid, r.dirfd2, r.path2), r.flags, exe)
        elif r.op == "link":
            self.link(tid, r, where, exe, kernel)
        elif r.op == "truncate":
            found = _lookup(where, True)
            if found is not None:
                self.record(found.path, AccessFs.TRUNCATE, exe,
                             static=AccessFs.TRUNCATE if kernel else NO_FS)  # fmt: skip
        elif r.op == "execute":
            self.execute(tid, r, where, exe)

    def open(self, where: bytes, flags: int, exe: str, kernel: bool) -> None:
        found = _lookup(where, not flags & os.O_NOFOLLOW)
        if found is not None:
            if (flags & os.O_CREAT and flags & os.O_EXCL) or stat.S_ISLNK(found.mode):
                return  # EEXIST, ELOOP: no access happens
            is_dir = stat.S_ISDIR(found.mode)
            tmpfile = flags & os.O_TMPFILE == os.O_TMPFILE
            access = open_rights(flags, is_dir and not tmpfile)
            if tmpfile:
                access |= AccessFs.MAKE_REG  # an unnamed file in that directory
            static = access if kernel else NO_FS
            if stat.S_ISCHR(found.mode) or stat.S_ISBLK(found.mode):
                # ioctl is not trapped (too frequent): an opened device may need it, and the
                # right is fixed at open time, often by a static-layer open.
                access |= AccessFs.IOCTL_DEV
                static |= AccessFs.IOCTL_DEV
            self.record(found.path, access, exe, is_dir=is_dir, static=static)
        elif flags & os.O_CREAT:
            parent = self.parent(where)
            if parent is None:
                return
            directory, name = parent
            created = posixpath.join(directory.path, name)
            make = AccessFs.MAKE_REG
            self.record(directory.path, make, exe, is_dir=True, static=make if kernel else NO_FS)
            access = created_file_rights(flags)
            self.record(created, access, exe, static=access if kernel else NO_FS)
            self.recording.record_created(created)

    def make(self, where: bytes, right: AccessFs, exe: str, kernel: bool) -> None:
        if _mode(where) is not None:
            return  # EEXIST: mkdir -p and friends try existing directories
        parent = self.parent(where)
        if parent is not None:
            directory, name = parent
            self.record(directory.path, right, exe, is_dir=True,
                         static=right if kernel else NO_FS)  # fmt: skip
            self.recording.record_created(posixpath.join(directory.path, name))

    def remove(self, where: bytes, exe: str, kernel: bool) -> None:
        mode = _mode(where)
        parent = self.parent(where) if mode is not None else None
        if mode is None or parent is None:
            return
        directory, name = parent
        right = remove_right(mode)
        self.record(directory.path, right, exe, is_dir=True, static=right if kernel else NO_FS)
        self.recording.record_removed(posixpath.join(directory.path, name))

    def rename(self, where: bytes, where2: bytes, flags: int, exe: str) -> None:
        src_mode, dst_mode = _mode(where), _mode(where2)
        exchange = bool(flags & RENAME_EXCHANGE)
        if src_mode is None or (exchange and dst_mode is None):
            return
        if dst_mode is not None and flags & RENAME_NOREPLACE:
            return
        found1, found2 = self.parent(where), self.parent(where2)
        if found1 is None or found2 is None:
            return
        (dir1, name1), (dir2, name2) = found1, found2
        access1, access2 = rename_rights(src_mode, dst_mode, exchange, dir1.ident == dir2.ident)
        self.record(dir1.path, access1, exe, is_dir=True)
        self.record(dir2.path, access2, exe, is_dir=True)
        old, new = posixpath.join(dir1.path, name1), posixpath.join(dir2.path, name2)
        self.recording.record_removed(old)
        self.recording.record_created(new)
        if exchange:
            self.recording.record_created(old)
            self.recording.record_removed(new)

    def link(self, tid: int, r: FsRequest, where: bytes, exe: str, kernel: bool) -> None:
        from_fd = not r.path and r.flags & AT_EMPTY_PATH
        source = b"/proc/%d/fd/%d" % (tid, r.dirfd) if from_fd else where
        src_mode = _mode(source, follow=bool(from_fd or r.flags & AT_SYMLINK_FOLLOW))
        where2 = _where(tid, r.dirfd2, r.path2)
        if src_mode is None or _mode(where2) is not None:
            return
        found2 = self.parent(where2)
        if found2 is None:
            return
        dir2, name2 = found2
        access2 = make_right(src_mode)
        # The source's directory is unknown for an fd, or one under /proc (O_TMPFILE links).
        found1 = None if from_fd or kernel else self.parent(where)
        if found1 is not None and found1[0].ident != dir2.ident:
            access2 |= AccessFs.REFER
            self.record(found1[0].path, AccessFs.REFER, exe, is_dir=True)
        self.record(dir2.path, access2, exe, is_dir=True)
        self.recording.record_created(posixpath.join(dir2.path, name2))

    def execute(self, tid: int, r: FsRequest, where: bytes, exe: str) -> None:
        if not r.path and r.flags & AT_EMPTY_PATH:
            where = b"/proc/%d/fd/%d" % (tid, r.dirfd)
        found = _lookup(where, not r.flags & AT_SYMLINK_NOFOLLOW)
        if found is not None and stat.S_ISREG(found.mode):
            execute = AccessFs.EXECUTE
            if exe == LAUNCHER and found.mode & 0o111:
                # The launcher starts the command: from now on this pid is the command's.
                exe, self.launcher, self.started = found.path, None, True
            self.record(found.path, execute, exe, static=execute)


def _where(tid: int, dirfd: int, path: bytes) -> bytes:
    """A lookup path naming what ``path`` names for the caller (relative paths through its
    cwd or dirfd, as the kernel resolves them)."""
    if path.startswith(b"/"):
        return _child_view(tid, path)
    base = b"/proc/%d/cwd" % tid if dirfd == AT_FDCWD else b"/proc/%d/fd/%d" % (tid, dirfd)
    return base + b"/" + path if path else base


class Recorder:
    """Serves one listener: record, then CONTINUE, for every trapped call."""

    def __init__(
        self, listener: Listener, recording: Recording, launcher: int | None = None
    ) -> None:
        self.listener = listener
        self.recording = recording
        self.observer = _Observer(recording)
        #: The launcher's pid: until it execs the command it is llsupervise's own interpreter.
        self.launcher = launcher
        self._launcher_exe = os.path.realpath(sys.executable)
        self.arch = native_arch()
        #: Whether the command was started: the launcher exec'd an executable file, or another
        #: process made a trapped call. A launcher that could not exec exits 126 or 127.
        self.started = False
        #: Per thread: its memory (opened before id_valid, so pid reuse is caught) and exe.
        self._tasks = TaskCache(_Traced.open, MAX_CACHED_TASKS)
        self.served = 0

    def close(self) -> None:
        self._tasks.close()

    # -- the loop ---------------------------------------------------------------------------

    def serve(self, pidfd: int) -> None:
        """Answer notifications until the command (``pidfd``) has exited and none is waiting,
        or every supervisee is gone."""
        listener_fd = self.listener.fileno()
        poller = select.poll()
        poller.register(listener_fd, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            events = dict(poller.poll())
            mask = events.get(listener_fd, 0)
            if mask & select.POLLIN:
                try:
                    n = self.listener.recv()
                except SuperviseesGone:
                    return
                except NotificationGone:
                    continue
                try:
                    self.handle(n)
                except NotificationGone:
                    pass
                continue
            if pidfd in events or mask & (select.POLLHUP | select.POLLERR):
                return

    def handle(self, n: Notification) -> None:
        self.served += 1
        name = syscall_name(self.arch, n.nr) or ""
        if name == "ftruncate":
            self._ftruncate(n)
            return
        if name in NET_CALLS:
            try:
                self._net(n, name)
            finally:
                self.listener.send_continue(n.id)
            return
        try:
            decoded = self._decode(n, name)
        except (DecodeError, MemoryReadError):
            decoded = None
        if decoded is None:
            # Gone (the reply then fails harmlessly) or unreadable: nothing to record.
            self.listener.send_continue(n.id)
            return
        request, exe = decoded
        if n.pid == self.launcher and exe == self._launcher_exe:
            exe = LAUNCHER
        elif n.pid != self.launcher:
            self.started = True
        try:
            self.observer.observe(n.pid, request, exe)
        finally:
            if request.op == "execute":
                # The address space and exe are about to change, under the group leader's id
                # too when another thread execs (it takes that id).
                self._tasks.forget(n.pid)
                leader = group_leader(n.pid)
                if leader is not None and leader != n.pid:
                    self._tasks.forget(leader)
            self.listener.send_continue(n.id)

    # -- the calling thread ---------------------------------------------------------------

    def _decode(self, n: Notification, name: str) -> tuple[FsRequest, str] | None:
        def read(task: _Traced) -> tuple[FsRequest, str] | None:
            # id_valid after the memory was opened: a reused pid is caught.
            if not self.listener.id_valid(n.id):
                return None
            return _decode_request(n, name, task.memory), task.exe

        result = self._tasks.read(n.pid, read)
        return None if result is None else result[0]

    def _net(self, n: Notification, name: str) -> None:
        """Record the port of a TCP bind/connect (other sockets are not Landlock's)."""
        task = self._tasks.get(n.pid)
        if task is None:
            return
        mem, exe = task.memory, task.exe
        try:
            call = decode_call(name, n.args, mem.read)
            if call is None or not call.readable:
                return
            endpoint = parse_sockaddr(mem.read(call.addr, call.addrlen), call.direction)
        except MemoryReadError:
            return
        if endpoint is None:
            return
        try:
            pidfd = open_pidfd(n.pid)
            try:
                if not self.listener.id_valid(n.id):
                    return
                sock = pidfd_getfd(pidfd, call.fd)
            finally:
                os.close(pidfd)
            try:
                tcp = socket_kind(sock).is_tcp
            finally:
                os.close(sock)
        except OSError:
            return  # not a socket, or gone: the kernel answers the child
        if tcp:
            self.recording.record_port(endpoint.port, call.access, exe)

    def _ftruncate(self, n: Notification) -> None:
        try:
            path: str | None = os.readlink(f"/proc/{n.pid}/fd/{n.arg_int(0)}")
        except OSError:
            path = None
        task = self._tasks.get(n.pid)
        valid = self.listener.id_valid(n.id)
        self.listener.send_continue(n.id)
        if path is not None and task is not None and valid:
            self.observer.record(path, AccessFs.TRUNCATE, task.exe)


def _decode_request(n: Notification, name: str, mem: ProcessMemory) -> FsRequest:
    try:
        return decode(n, name, mem.read_cstring, mem.read)
    except DecodeError:
        if name != "openat2" or n.args[3] < OPEN_HOW.size:
            raise
        # RESOLVE_* flags only narrow the lookup: the rights needed are those of the open.
        flags, mode, _resolve = OPEN_HOW.unpack(mem.read(n.args[2], OPEN_HOW.size))
        return FsRequest(name, "open", signed_fd(n.args[0]), mem.read_cstring(n.args[1]),
                         flags, mode)  # fmt: skip


@contextlib.contextmanager
def _signals_passed_to(pid: int) -> Iterator[None]:
    """While recording, signals meant for us go to the command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def record(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    stdio: Stdio = (None, None, None),
) -> tuple[int, Recording]:
    """Run ``argv`` once with nothing denied; return its exit status (128+N if killed by
    signal N) and what it did; CommandNotStarted if it could not be started. Paths in the
    recording are literal (see Recording.templated)."""
    recording = Recording.new_run(argv)
    launched = launch(argv, UNRESTRICTED, TRAPPED_SYSCALLS, env=env, cwd=cwd, stdio=stdio)
    recorder = Recorder(launched.listener, recording, launched.pid)
    try:
        with contextlib.suppress(SeccompError):
            launched.listener.set_sync_wakeup()  # older kernels: slower, same result
        pidfd = os.pidfd_open(launched.pid)
        try:
            with _signals_passed_to(launched.pid):
                recorder.serve(pidfd)
        finally:
            os.close(pidfd)
    except BaseException:
        # A recorder that failed must not leave a command running unrecorded.
        with contextlib.suppress(ProcessLookupError):
            launched.process.kill()
        raise
    finally:
        recorder.close()
        launched.listener.close()
        returncode = launched.process.wait()
    status = exit_status(returncode)
    if status in (126, 127) and not recorder.started:
        raise CommandNotStarted(
            f"the command could not be started (status {status}: "
            f"{'not found' if status == 127 else 'not executable'}): {shlex.join(argv)}"
        )
    return status, recording


__all__ = ["TRAPPED_SYSCALLS", "UNRESTRICTED", "CommandNotStarted", "Recorder", "record"]
