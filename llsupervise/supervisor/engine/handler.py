"""Handling one trapped syscall in a serving thread: decode it, bind it to the objects it
names, perform it (judged by the kernel, since the thread is restricted), and reply; a
Landlock denial is handed over as a :class:`Pending`."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from llsupervise.libc import AT_FDCWD
from llsupervise.rights import AccessFs
from llsupervise.seccomp import (
    CONTEXT_SYSCALLS,
    SELF_RESTRICT_SYSCALLS,
    Listener,
    MemoryReadError,
    Notification,
    NotificationGone,
    native_arch,
    syscall_name,
)
from llsupervise.supervisor.engine.childfds import ChildFds
from llsupervise.supervisor.engine.contexts import Task, ThreadContexts
from llsupervise.supervisor.engine.created import (
    MOVES,
    Creation,
    MoveGate,
    anchored,
    made_by,
    names_pending,
    open_created,
)
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.offload import Job, Offload
from llsupervise.supervisor.engine.pending import Pending, close_dirs, kernel_decides, reply
from llsupervise.supervisor.engine.reports import ExecReports, OnExec, OnStall, Refusals
from llsupervise.supervisor.engine.requests import DecodeError, FsRequest
from llsupervise.supervisor.perform.blocking import MayBlock, inline
from llsupervise.supervisor.perform.credentials import Credentials, own_credentials
from llsupervise.supervisor.perform.guard import Guard, ProtectedError
from llsupervise.supervisor.perform.operations import KernelDecides, Target, perform
from llsupervise.supervisor.perform.stalls import check_not_abandoned
from llsupervise.supervisor.rules.created import (
    EMPTY_INDEX,
    CreatedIndex,
    PendingCreation,
    coarse_now_ns,
)
from llsupervise.supervisor.rules.uses import PerformedLog

if TYPE_CHECKING:  # loaded only when the policy handles the network (see core)
    from llsupervise.supervisor.net.mediator import NetMediator

EXEC_SYSCALLS = ("execve", "execveat")
#: Calls that move or link a name. Never left to the kernel (CONTINUE): the kernel would judge
#: the move by the static layer alone, whose refer check does not know the supervisor's rules,
#: so a file the static layer lets the program move could land where a supervisor rule gives
#: it more than it had (read a secret through a granted directory). Refused instead.
MOVE_SYSCALLS = frozenset({"rename", "renameat", "renameat2", "link", "linkat"})


#: The open flags the static judgement of a relative open depends on (see fastpath).
_JUDGED_FLAGS = os.O_ACCMODE | os.O_TRUNC | os.O_CREAT | os.O_NOFOLLOW | os.O_DIRECTORY
#: Relative opens remembered as not static at most (then forgotten all at once).
_NOT_STATIC_KEPT = 4096

#: What a program is told when its request was not done by the deadline (see offload): an
#: I/O error, as from a filesystem whose server is gone.
STALLED_ERRNO = errno.EIO


def changes_filesystem(request: FsRequest) -> bool:
    """Whether performing ``request`` may have changed the filesystem."""
    if request.op != "open":
        return request.op != "execute"
    return bool(request.flags & (os.O_CREAT | os.O_TRUNC))


def answer_unread(listener: Listener, n: Notification) -> str:
    """Answer ``n`` without reading it (a serving thread was held reading it, see
    engine.loop): ``EIO``, or for an exec CONTINUE (the static layer's to judge); the outcome
    as a stall event tells it."""
    if (n.syscall or "") in EXEC_SYSCALLS:
        listener.send_continue(n.id)
        return "continued unreported"
    listener.send_error(n.id, STALLED_ERRNO)
    return "refused"


class RequestHandler:
    """Answers each notification a serving thread receives."""

    def __init__(
        self,
        listener: Listener,
        handled_fs: AccessFs,
        contexts: ThreadContexts,
        child_fds: ChildFds,
        on_denial: Callable[[Pending], None],
        on_exec: OnExec | None,
        fast: StaticPrefixes | None,
        net: NetMediator | None,
        cpu: int | None,
        guard: Guard | None = None,
        created: Callable[[], CreatedIndex] | None = None,
        on_created: Callable[[Creation], None] | None = None,
        on_stall: OnStall | None = None,
    ) -> None:
        self.listener = listener
        self.on_stall = on_stall
        self.handled_fs = handled_fs
        self.contexts = contexts
        self.child_fds = child_fds
        self.on_denial = on_denial
        self.on_exec = on_exec
        self.fast = fast
        self.net = net
        self.cpu = cpu
        #: The control plane, never reached for the child (see perform.guard).
        self.guard = guard
        #: Pending created-path rules (see rules.created), and where their creations go.
        self.created = created or (lambda: EMPTY_INDEX)
        self.on_created = on_created
        #: Moves wait while a creation is being bound (see engine.created).
        self.moves = MoveGate()
        self.arch = native_arch()
        #: Read here: the serving threads, restricted, may not read /proc.
        self._our_credentials = own_credentials()
        self.served = 0
        self.performed = PerformedLog()
        self.execs = ExecReports(
            listener, contexts, fast, on_exec, handled_fs,
            lambda tid, dirfd, path: self._dirfd(tid, dirfd, path, None), on_stall,
        )  # fmt: skip
        self.refusals = Refusals(listener, handled_fs, on_denial)
        #: cwd-relative opens found not allowed by the static layer (see _static_allows_here).
        self._not_static: set[tuple[int, int, bytes, int]] = set()
        #: Set once the program adds a Landlock layer of its own (see SELF_RESTRICT_SYSCALLS):
        #: every filesystem request is then the kernel's to judge, in the program's context.
        self.own_layer = False
        #: Told (with the pid) when that happens; set by the loop.
        self.on_own_layer: Callable[[int], None] | None = None

    def handle(self, n: Notification, generation: int, offload: Offload | None = None) -> None:
        """Answer ``n``; what could block is handed to ``offload`` (a serving thread's)."""
        self.served += 1
        self.contexts.catch_up()
        self.contexts.heard_from(n.pid)
        if self.net is not None and self.net.handle(n):
            return  # bind/connect: the mediator answers it from its own threads
        name = syscall_name(self.arch, n.nr) or ""
        if name in CONTEXT_SYSCALLS:
            self.contexts.unsettle(n.pid)
            self.listener.send_continue(n.id)  # not mediated: only observed
            return
        if name in SELF_RESTRICT_SYSCALLS:
            self._own_layer(n)
            return
        if name in EXEC_SYSCALLS:
            self.execs.handle(n, name, offload)
            return
        moving = name in MOVE_SYSCALLS
        if self.own_layer:
            # We would act with our own domain, which knows nothing of the program's layer.
            kernel_decides(self.listener, n, moving, errno.EXDEV)
            return
        try:
            decoded = self.contexts.decode(n, name)
            check_not_abandoned()  # reading its memory may have waited (see engine.loop)
        except (DecodeError, MemoryReadError):
            # The static layer decides (a move: refused, see MOVE_SYSCALLS).
            kernel_decides(self.listener, n, moving, errno.EFAULT)
            return
        if decoded is None:
            # Its memory could not be opened: the task is gone (then this reply fails
            # harmlessly), or we are short of descriptors. The static layer decides.
            kernel_decides(self.listener, n, moving, errno.ENOMEM)
            return
        request, task = decoded
        if request.leave_to_kernel():
            # A path that names the caller (/proc/self/cwd/...): a move is refused as a move
            # across mounts would be, so programs copy instead, through the supervisor.
            kernel_decides(self.listener, n, moving, errno.EXDEV)
            return
        if self._static_allows(request) or self._static_allows_here(request, task):
            self.listener.send_continue(n.id)  # never a creation: those are performed here
            return
        index = self.created()
        creating = self.on_created is not None and names_pending(request, index)
        credentials = self.contexts.credentials(task)
        if credentials is None:
            # Not knowing them, we may not act for it.
            kernel_decides(self.listener, n, moving, errno.EPERM)
            return
        # Still waiting, so the memory read (through a fd opened before) was the task's.
        if not self.listener.id_valid(n.id):
            return
        # Not ours: the operation is performed with the thread's own (see credentials).
        theirs = None if credentials == self._our_credentials else credentials
        if theirs is None:
            self.contexts.vouch(task)
        target = self._bind(n, request, task, theirs)
        if target is None:
            return
        found = anchored(target, index) if creating else None
        if found is not None:
            self._create(n, *found, generation)
            return
        if offload is not None and inline():
            self._serve_inline(n, target, generation, offload)
        else:
            self.serve(n, target, generation)

    def _own_layer(self, n: Notification) -> None:
        """The program restricts itself (``landlock_restrict_self``): from now on nothing is
        performed for it, before the call goes on (it may fail: then we are merely stricter).
        Threads it forks later inherit the layer and cannot be told apart: the whole run."""
        first = not self.own_layer
        self.own_layer = True
        if first and self.on_own_layer is not None:
            self.on_own_layer(n.pid)
        self.listener.send_continue(n.id)

    def _create(
        self, n: Notification, target: Target, rules: tuple[PendingCreation, ...], generation: int
    ) -> None:
        """Perform a creation in a pending rule's anchor, and hand it to ``on_created``
        unanswered; anything but a successful creation is served as usual (an open that
        finds the name taken is then the program's own open)."""
        before = coarse_now_ns()
        made = made_by(target)
        try:
            result = perform(made)
        except (KernelDecides, ProtectedError, OSError):
            self.serve(n, target, generation)
            return
        self.performed.note(target)
        assert target.dir1 is not None and self.on_created is not None
        created = open_created(target.dir1, made.request)
        self.moves.begin()
        self.on_created(Creation(
            n, target.request, result, rules, target.dir1, created, before, self.cpu, self.moves,
            target.credentials,
        ))  # fmt: skip

    def _static_allows(self, r: FsRequest) -> bool:
        """The lexical fast path (see fastpath): CONTINUE is safe whatever it says."""
        return self.fast is not None and self.fast.allows(r)

    def _static_allows_here(self, r: FsRequest, task: Task) -> bool:
        """The fast path for an open relative to the thread's cwd (while we hold that one:
        see contexts): judged by the canonical path of what it leads to now, found by a walk
        of the dentry cache, so a symlink beside the file is followed as the kernel will.
        CONTINUE is safe whatever this says. A path found not static is not looked up again
        while that cwd is held (by the same fd): if it has become static since, it takes the
        general path, as every relative open did before, which is correct too."""
        if (
            self.fast is None
            or r.op != "open"
            or r.dirfd != AT_FDCWD
            or task.cwd is None
            or r.path.startswith(b"/")
        ):
            return False
        # What was not static stays so, or only costs the general path: not looked up again.
        key = (task.tid, task.cwd, r.path, r.flags & _JUDGED_FLAGS)
        if key in self._not_static:
            return False
        if self.fast.table.allows_at(task.cwd, r.path, r.flags):
            return True
        if len(self._not_static) >= _NOT_STATIC_KEPT:
            self._not_static.clear()
        self._not_static.add(key)
        return False

    def _dirfd(self, tid: int, dirfd: int, path: bytes, task: Task | None) -> int | None:
        if path.startswith(b"/"):
            return None
        if dirfd == AT_FDCWD:
            return self.contexts.cwd(tid, task)
        return self.child_fds.open(tid, dirfd)

    def _bind(
        self, n: Notification, r: FsRequest, task: Task, credentials: Credentials | None
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
        umask = self.contexts.umask(task) if r.creates else 0
        return Target(r, dir1, dir2, umask, credentials, self.guard)

    def _reply_errno(self, n: Notification, err: int) -> None:
        # /proc/TID/fd/N missing means the child passed a bad fd.
        self.listener.send_error(n.id, errno.EBADF if err == errno.ENOENT else err)

    def _serve_inline(
        self, n: Notification, target: Target, generation: int, offload: Offload
    ) -> None:
        """Perform on this serving thread what stays off filesystems that may block; hand
        the rest to ``offload``: performed there (MayBlock comes before any effect), or,
        for a refusal, only its analysis, which walks the path again (the refused call may
        have had an effect: a file made, then refused opening for writing)."""
        try:
            newer = self.moves.wait(generation) if target.request.op in MOVES else None
            result = perform(target) if newer is None else newer.call(lambda: perform(target))
            self.performed.note(target)
        except KernelDecides:
            result = None
        except MayBlock:
            offload.submit(self._job(n, target, generation, self.serve))
            return
        except ProtectedError as exc:
            what = exc.what

            def report(n: Notification, t: Target, g: int, job: Job | None) -> None:
                self.refusals.protected(n, t, g, what, job)

            offload.submit(self._job(n, target, generation, report, errno.EACCES))
            return
        except OSError as exc:
            if exc.errno == errno.EACCES:
                refused = self.refusals.refused
                offload.submit(self._job(n, target, generation, refused, errno.EACCES))
                return
            close_dirs(target)
            self.listener.send_error(n.id, exc.errno or errno.EIO)
            return
        close_dirs(target)
        if result is None:
            # A magic link on the way, say: the kernel decides in the child's context.
            kernel_decides(self.listener, n, target.request.op in MOVES, errno.EXDEV)
        else:
            reply(self.listener, n, target.request, result, self.cpu)

    def _job(
        self,
        n: Notification,
        target: Target,
        generation: int,
        work: Callable[[Notification, Target, int, Job | None], object],
        stalled: int = STALLED_ERRNO,
    ) -> Job:
        """``work`` for an offload worker; answered ``stalled`` at the deadline."""

        def run(job: Job) -> None:
            try:
                work(n, target, generation, job)
            except NotificationGone:
                pass

        def expire(started: bool) -> None:
            if not started:
                close_dirs(target)  # else the worker closes them when (if) it returns
            try:
                self.listener.send_error(n.id, stalled)
            except NotificationGone:
                return
            if self.on_stall is not None:
                self.on_stall(n, target.request, "refused")

        return Job(run, expire)

    def report_late(self, n: Notification, request: FsRequest) -> None:
        """``request`` was performed after ``n`` had been answered without it (EIO, at a
        deadline or by a stall watch): the program cannot be told any more, so the log says
        what changed, lest it say "refused" alone."""
        if changes_filesystem(request) and self.on_stall is not None:
            self.on_stall(n, request, "done late")

    def serve(
        self, n: Notification, target: Target, generation: int, job: Job | None = None
    ) -> None:
        """Perform in this (restricted) thread; a Landlock denial goes to ``on_denial``.

        ``job``: run by an offload worker, which answers only if it claims the job (it
        was not answered at its deadline meanwhile)."""
        try:
            newer = self.moves.wait(generation) if target.request.op in MOVES else None
            result = perform(target) if newer is None else newer.call(lambda: perform(target))
            self.performed.note(target)
        except KernelDecides:
            result = None
        except ProtectedError as exc:
            self.refusals.protected(n, target, generation, exc.what, job)
            return
        except OSError as exc:
            self.refusals.refusal(n, target, generation, exc, job)
            return
        close_dirs(target)
        if job is not None and not job.claim():
            # Done after its deadline: the program was told EIO, and cannot be told
            # otherwise now; what changed is logged, so the log does not say "refused" alone.
            request = target.request
            if result is not None and request.op == "open":
                os.close(result)
            if result is not None:
                self.report_late(n, request)
            return
        if result is None:
            # A magic link on the way, say: the kernel decides in the child's context.
            kernel_decides(self.listener, n, target.request.op in MOVES, errno.EXDEV)
        else:
            reply(self.listener, n, target.request, result, self.cpu)
