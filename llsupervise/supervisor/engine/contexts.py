"""What the serving threads know of each trapped thread: its memory reader, and its cwd,
umask and credentials while no context-changing syscall may have changed them.

:class:`TaskCache` (shared with the learning recorder) keeps what is opened per thread.
Nothing says when a thread exits, so it is bounded: past ``limit`` threads the oldest entry is
closed (and reopened if that thread is heard from again)."""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from msgspec import Struct

from llsupervise.seccomp import MemoryReadError, Notification, ProcessMemory, SeccompError
from llsupervise.supervisor.engine._fastpath import Readers
from llsupervise.supervisor.engine.requests import FsRequest, decode
from llsupervise.supervisor.net.sockets import user_namespace
from llsupervise.supervisor.perform.credentials import Credentials, access_credentials
from llsupervise.supervisor.perform.procfs import read_status, status_fields, status_number

#: Threads whose memory reader (and cached cwd) is kept open at once.
MAX_TASKS = 1024
#: pidfd_open's flag for a pidfd of one thread, readable once that thread has exited.
PIDFD_THREAD = os.O_EXCL
T = TypeVar("T")


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)
R = TypeVar("R")


class TaskCache(Generic[C]):
    """Per-thread entries made by ``open_task(tid)``, closed when dropped."""

    def __init__(
        self,
        open_task: Callable[[int], C],
        limit: int,
        exited: Callable[[C], bool] | None = None,
    ) -> None:
        self._open = open_task
        self.limit = limit
        #: Whether the thread an entry was opened for has exited (its id may now be another
        #: task's): such an entry is opened afresh.
        self._exited = exited
        self._entries: dict[int, C] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._entries.values()))

    def get(self, tid: int) -> C | None:
        """The thread's entry, opened if needed; None when it cannot be (the thread is gone,
        or we are short of descriptors)."""
        entry = self._entries.get(tid)
        if entry is not None and self._exited is not None and self._exited(entry):
            self.forget(tid)
            entry = None
        if entry is None:
            if len(self._entries) >= self.limit:
                self.forget(next(iter(self._entries)))
            try:
                entry = self._open(tid)
            except (OSError, SeccompError):
                return None
            self._entries[tid] = entry
        return entry

    def pop(self, tid: int) -> C | None:
        """The thread's entry if one is kept, no longer kept (the caller closes it)."""
        return self._entries.pop(tid, None)

    def forget(self, tid: int) -> None:
        entry = self._entries.pop(tid, None)
        if entry is not None:
            entry.close()

    def close(self) -> None:
        for tid in list(self._entries):
            self.forget(tid)

    def read(self, tid: int, read: Callable[[C], R]) -> tuple[R, C] | None:
        """``read(entry)`` and the entry; None when the thread has no entry.

        A cached memory reader goes stale when its thread's address space went away (exec,
        exit, tid reuse): on :class:`MemoryReadError` the entry is reopened once, then the
        error is raised."""
        for attempt in range(2):
            entry = self.get(tid)
            if entry is None:
                return None
            try:
                return read(entry), entry
            except MemoryReadError:
                self.forget(tid)
                if attempt:
                    raise
        return None


class Task(Struct):
    """What is kept per trapped thread, opened with the supervisor's own standing."""

    memory: ProcessMemory
    tid: int
    #: A pidfd of the thread (readable once it has exited), -1 for none; opened before the
    #: memory reader, so that it is of the same task or of an earlier one with that id.
    pidfd: int = -1
    #: /proc/TID/status, re-read (pread at 0) for the umask and credentials when none are
    #: cached; opened when first needed (see ThreadContexts.status): most threads' requests
    #: are answered without it (a static open, an exec), and each open is a hand-over.
    status: int | None = None
    #: Our O_PATH fd of the thread's cwd, and its umask, while no context syscall may have
    #: changed them (see ThreadContexts.unsettle).
    cwd: int | None = None
    cached_umask: int | None = None
    #: The thread's access credentials (see credentials).
    cached_credentials: Credentials | None = None
    #: Where the compiled loop keeps its own copy of the memory reader (see engine.loop).
    readers: Readers | None = None

    def forget_context(self) -> None:
        if self.cwd is not None:
            os.close(self.cwd)
        self.cwd = self.cached_umask = self.cached_credentials = None

    def close(self) -> None:
        self.forget_context()
        if self.readers is not None:
            self.readers.forget(self.tid)
        self.memory.close()
        if self.status is not None:
            os.close(self.status)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def exited(self) -> bool:
        """Whether the thread has exited: its id may now name another task."""
        return self.pidfd >= 0 and bool(readable([self.pidfd]))

    def read_status(self) -> dict[bytes, bytes]:
        """The thread's status fields now; none once it is gone (or never opened)."""
        if self.status is None:
            return {}
        try:
            return status_fields(os.pread(self.status, 4096, 0))
        except OSError:
            return {}


def readable(pidfds: Iterable[int]) -> list[int]:
    """Those of ``pidfds`` whose thread has exited (a pidfd is readable from then on)."""
    poll = select.poll()
    for fd in pidfds:
        poll.register(fd, select.POLLIN)
    return [fd for fd, _ in poll.poll(0)]


def thread_pidfd(tid: int) -> int:
    """A pidfd of the thread ``tid``; -1 where the kernel has none for a thread (before
    6.9). Raises OSError (ESRCH) when it is gone."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise
        return -1


def group_leader(
    tid: int, status: Callable[[], dict[bytes, bytes]] | None = None
) -> int | None:
    """The id of ``tid``'s thread-group leader, which an exec by ``tid`` takes (the kernel's
    de_thread); None when it is gone. A pidfd of a whole process opens only for its leader
    (no /proc needed); for another thread, ``status()`` reads its /proc status (default:
    directly, with the caller's standing)."""
    try:
        os.close(os.pidfd_open(tid, 0))
        return tid
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return None
    fields = status() if status is not None else read_status(tid)
    return status_number(fields, b"Tgid", 10, 0) or None


def open_task(tid: int) -> Task:
    pidfd = thread_pidfd(tid)
    try:
        return Task(ProcessMemory(tid), tid, pidfd)
    except BaseException:
        if pidfd >= 0:
            os.close(pidfd)
        raise


def open_status(tid: int) -> int:
    return os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)


class Unrestricted(Protocol):
    """Runs a call with the supervisor's own standing (see perform.broker)."""

    def __call__(self, fn: Callable[[], T]) -> T: ...


class ThreadContexts:
    """Per-thread readers and context caches. ``unrestricted`` runs a call with the
    supervisor's own standing: a restricted thread may not open the child's /proc."""

    def __init__(self, unrestricted: Unrestricted) -> None:
        self._unrestricted = unrestricted
        #: The memory readers and unsettled threads, as the compiled loop sees them: each
        #: reader opened here is lent to it, and taken back when closed here.
        self.readers = Readers()
        self._tasks: TaskCache[Task] = TaskCache(self._open_task, MAX_TASKS, Task.exited)
        #: Threads whose cwd/umask-changing syscall may still be running: while any is, what
        #: is read about a thread's context is not cached (it may be from before the change).
        #: Each with a pidfd of that thread (-1: none), which tells when it has exited: a
        #: thread that exits right after its call is never heard from again.
        self._unsettled: dict[int, int] = {}
        #: Our user namespace: a thread in another has no credentials we act with.
        self._user_namespace = user_namespace("self")
        #: Threads execing that are not their group's leader, each with that leader's id,
        #: which the exec gives them (see exec_begins); unsettled until the exec is over.
        #: (None: the leader could not be found, and every thread's is dropped instead.)
        self._exec_leaders: dict[int, int | None] = {}

    def _open_task(self, tid: int) -> Task:
        task = self._unrestricted(lambda: open_task(tid))
        task.readers = self.readers
        self.readers.remember(tid, task.memory.fileno(), task.pidfd)
        return task

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def heard_from(self, *tids: int) -> None:
        """Each of ``tids`` made a new syscall: its previous one has returned; so has that of
        every unsettled thread that has exited since."""
        if not self._unsettled:
            return
        done = self._exited()
        done += [tid for tid in set(tids) if tid in self._unsettled and tid not in done]
        for each in done:
            fd = self._unsettled.pop(each)
            if fd >= 0:
                os.close(fd)
            if each in self._exec_leaders:
                # What was kept for either id meanwhile may be of the old image (see exec_begins).
                leader = self._exec_leaders.pop(each)
                self._drop(each)
                if leader is None:
                    self._drop_all()
                else:
                    self._drop(leader)
        if self._unsettled:
            for each in done:
                self.readers.settle(each)
        elif done:
            self.readers.settle_all()  # also past the threads it can list one by one

    def _exited(self) -> list[int]:
        """The unsettled threads that have exited (their pidfd is readable)."""
        watched = {fd: tid for tid, fd in self._unsettled.items() if fd >= 0}
        return [watched[fd] for fd in readable(watched)] if watched else []

    def decode(self, n: Notification, name: str) -> tuple[FsRequest, Task] | None:
        """Read the request from the task's memory; None when the task is gone.

        The memory reader is opened BEFORE id_valid so that pid reuse is caught; the result
        is not yet known to be the task's: check ``id_valid`` before acting on it other than
        by CONTINUE (which is safe whatever was read)."""
        return self._tasks.read(
            n.pid, lambda task: decode(n, name, task.memory.read_cstring, task.memory.read)
        )

    def _drop(self, tid: int) -> None:
        """Forget all that is kept for ``tid``, here and in the compiled loop."""
        self._tasks.forget(tid)
        self.readers.forget(tid)

    def _drop_all(self) -> None:
        for task in list(self._tasks):
            self._drop(task.tid)

    def exec_begins(self, tid: int) -> None:
        """``tid`` execs: its address space and its credentials (capabilities are computed
        afresh) are about to be replaced. What is kept for it is dropped. A thread that is
        not its group's leader takes the leader's id as it execs (the kernel's de_thread):
        what is kept for that id is dropped too, and since the old leader may still be heard
        from (and kept afresh) until the exec kills it, ``tid`` is unsettled, so that
        nothing is cached or vouched for until the exec is over, when both ids are dropped
        again (see heard_from; a successful exec leaves ``tid``'s own id to the dead)."""
        self._drop(tid)
        leader = self._leader_of(tid)
        if leader == tid:
            return
        if leader is None:
            # Gone (then unsettle does nothing), or its leader could not be read (short of
            # descriptors, say): every thread's kept state goes, now and once it is over.
            self._drop_all()
        else:
            self._drop(leader)
        self._exec_leaders[tid] = leader
        self.unsettle(tid)
        if tid not in self._unsettled:  # gone meanwhile: its exec will not run
            self._exec_leaders.pop(tid, None)

    def _leader_of(self, tid: int) -> int | None:
        return group_leader(tid, lambda: self._unrestricted(lambda: read_status(tid)))

    def catch_up(self) -> None:
        """Catch up with the compiled loop (see engine.loop): forget the threads whose exec it
        answered, so that nothing kept from before an exec is used after, and settle those
        it heard from. Called before any request is read."""
        execd = self.readers.take_execs()
        for tid in [task.tid for task in self._tasks] if execd is None else execd:
            self._tasks.forget(tid)
        heard = self.readers.take_heard()
        if heard:
            self.heard_from(*heard)

    def decode_exec(self, n: Notification, name: str) -> FsRequest | None:
        """An exec's request, read once: the address space is about to be replaced, so no
        reader is kept for the thread (a kept one is dropped). None when the task is gone."""
        task = self._tasks.pop(n.pid)
        try:
            if task is not None:
                try:
                    return decode(n, name, task.memory.read_cstring, task.memory.read)
                except MemoryReadError:
                    pass  # stale (an earlier exec of another thread): read afresh
            try:
                memory = self._unrestricted(lambda: ProcessMemory(n.pid))
            except (OSError, SeccompError):
                return None
            try:
                return decode(n, name, memory.read_cstring, memory.read)
            finally:
                memory.close()
        finally:
            if task is not None:
                task.close()

    def unsettle(self, tid: int) -> None:
        """``tid`` may change its cwd, root or umask (shared with other threads and even
        processes): drop every cached context, and cache none until ``tid`` is heard from
        again, which proves its syscall has returned."""
        self.readers.forget_cwds()
        for task in self._tasks:
            task.forget_context()
        if tid in self._unsettled:
            return
        try:
            fd = thread_pidfd(tid)  # -1: not known when it exits, only hearing from it settles it
        except OSError:
            return  # gone already: its call will not run
        self._unsettled[tid] = fd
        self.readers.unsettle(tid)  # its next request comes here, to settle it

    def cwd(self, tid: int, task: Task | None) -> int:
        """An O_PATH fd (ours to close) of the thread's current working directory."""
        if task is not None and task.cwd is not None:
            return os.dup(task.cwd)
        fd = self._unrestricted(lambda: os.open(f"/proc/{tid}/cwd", os.O_PATH | os.O_CLOEXEC))
        if task is None or self._unsettled:
            return fd
        task.cwd = fd
        self.readers.remember_cwd(tid, fd)  # its cwd-relative opens are judged there too
        return os.dup(fd)

    def status(self, task: Task) -> dict[bytes, bytes]:
        """The task's status fields now, its status file opened on first use (during one
        of its requests, before that request's id_valid, like its memory reader); none when
        it is gone."""
        if task.status is None:
            tid = task.tid
            try:
                task.status = self._unrestricted(lambda: open_status(tid))
            except OSError:
                return {}
        return task.read_status()

    def credentials(self, task: Task) -> Credentials | None:
        """The thread's access credentials; None when unknown (it is gone)."""
        if task.cached_credentials is not None:
            return task.cached_credentials
        credentials = access_credentials(self.status(task))
        if credentials is not None and not self._in_our_user_namespace(task.tid):
            credentials = None
        if not self._unsettled:
            task.cached_credentials = credentials
        return credentials

    def _in_our_user_namespace(self, tid: int) -> bool:
        """Whether ``tid`` is in our user namespace. Its status shows ids and capabilities as
        our namespace sees them; in a namespace of its own, its capabilities hold only over
        objects whose ids are mapped there: that is neither our access nor one a thread of
        ours can take, so the kernel judges its call (a thread that made a namespace of its
        own shows a full capability set, and was served with ours)."""
        theirs = self._unrestricted(lambda: user_namespace(tid))
        return theirs is not None and theirs == self._user_namespace

    def vouch(self, task: Task) -> None:
        """The task's credentials, cached, are ours: the compiled loop may perform its
        opens (see engine.grants); it forgets that whenever we drop what we cached."""
        if task.cached_credentials is not None and not self._unsettled:
            self.readers.vouch(task.tid)

    def umask(self, task: Task) -> int:
        if task.cached_umask is not None:
            return task.cached_umask
        # Unknown: the narrowest usual umask, never a wider mode.
        umask = status_number(self.status(task), b"Umask", 8, 0o077)
        if not self._unsettled:
            task.cached_umask = umask
        return umask

    def close(self) -> None:
        self._tasks.close()
        self.readers.close()
        for fd in self._unsettled.values():
            if fd >= 0:
                os.close(fd)
        self._unsettled.clear()
