"""What the program is refused, reported: a request Landlock refused is handed over as a
denial (to be asked about), one that reaches the control plane is refused as protected, and
an exec (which the static layer alone judges) is reported on its way to the kernel."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from llsupervise.rights import AccessFs
from llsupervise.seccomp import Listener, MemoryReadError, Notification, NotificationGone
from llsupervise.supervisor.engine.contexts import ThreadContexts
from llsupervise.supervisor.engine.created import MOVES
from llsupervise.supervisor.engine.denials import CheckedObject, checked_objects
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.offload import Job, Offload
from llsupervise.supervisor.engine.pending import Pending, close_dirs, kernel_decides
from llsupervise.supervisor.engine.requests import DecodeError, FsRequest
from llsupervise.supervisor.perform.operations import Target, protected, refused_by_procfs

OnExec = Callable[[Notification, FsRequest, CheckedObject], None]
#: Told of a request answered at its deadline: (notification, request, what was done).
#: A request answered at a deadline: (its notification, what it asked if read, outcome).
OnStall = Callable[[Notification, FsRequest | None, str], None]
#: The directory a request's relative path starts from: (tid, dirfd, path) -> fd or None.
DirectoryOf = Callable[[int, int, bytes], "int | None"]


class ExecReports:
    """Exec cannot be granted live (Landlock checks it in the child's context): the static
    layer decides (CONTINUE), and ``on_exec`` hears of the executable so that a denial can be
    reported and an answer kept for the next run."""

    def __init__(
        self,
        listener: Listener,
        contexts: ThreadContexts,
        fast: StaticPrefixes | None,
        on_exec: OnExec | None,
        handled_fs: AccessFs,
        directory_of: DirectoryOf,
        on_stall: OnStall | None,
    ) -> None:
        self.listener = listener
        self.contexts = contexts
        self.fast = fast
        self.on_exec = on_exec
        self.handled_fs = handled_fs
        self.directory_of = directory_of
        self.on_stall = on_stall

    def handle(self, n: Notification, name: str, offload: Offload | None) -> None:
        if self.on_exec is None:
            self.contexts.exec_begins(n.pid)
            self.listener.send_continue(n.id)
            return
        try:
            request: FsRequest | None = self.contexts.decode_exec(n, name)
        except (DecodeError, MemoryReadError):
            request = None
        self.contexts.exec_begins(n.pid)
        if request is not None and not self.listener.id_valid(n.id):
            request = None
        if request is not None and self.fast is not None and self.fast.allows(request):
            request = None  # a static rule allows it: nothing to report
        if request is not None:
            try:
                dir1 = self.directory_of(n.pid, request.dirfd, request.path)
            except OSError:
                dir1 = None
            if offload is not None:
                # What it names is looked up, which could block (see perform.blocking).
                offload.submit(self._job(n, request, dir1))
                return
            self._report(n, request, self._objects(request, dir1))
        self.listener.send_continue(n.id)

    def _objects(self, request: FsRequest, dir1: int | None) -> list[CheckedObject]:
        """What the exec needs rights on; closes ``dir1``."""
        try:
            return checked_objects(request, dir1, None, self.handled_fs)
        except OSError:
            return []
        finally:
            if dir1 is not None:
                os.close(dir1)

    def _report(self, n: Notification, request: FsRequest, objects: list[CheckedObject]) -> None:
        assert self.on_exec is not None
        for obj in objects:
            self.on_exec(n, request, obj)  # takes ownership of obj

    def _job(self, n: Notification, request: FsRequest, dir1: int | None) -> Job:
        def run(job: Job) -> None:
            objects = self._objects(request, dir1)
            if not job.claim():
                for obj in objects:
                    obj.close()
                return
            self._report(n, request, objects)
            self._continue(n)

        def expire(started: bool) -> None:
            if not started and dir1 is not None:
                os.close(dir1)
            self._continue(n)  # the exec itself is the static layer's to judge
            if self.on_stall is not None:
                self.on_stall(n, request, "continued unreported")

        return Job(run, expire)

    def _continue(self, n: Notification) -> None:
        try:
            self.listener.send_continue(n.id)
        except NotificationGone:
            pass


class Refusals:
    """A request Landlock refused, reported: a denial handed to ``on_denial`` (to be asked
    about, or answered by mode), or refused as protected (never performed, whatever the
    rules or answers say). ``job``: the request was served by an offload worker, which
    answers only if it claims the job (it was not answered at its deadline meanwhile)."""

    def __init__(
        self, listener: Listener, handled_fs: AccessFs, on_denial: Callable[[Pending], None]
    ) -> None:
        self.listener = listener
        self.handled_fs = handled_fs
        self.on_denial = on_denial

    def refused(self, n: Notification, target: Target, generation: int, job: Job | None) -> None:
        """Refused on a serving thread: reported (or left to the kernel, for what procfs
        refused; a move is refused instead, see engine.handler.MOVE_SYSCALLS)."""
        if refused_by_procfs(target):
            close_dirs(target)
            if job is None or job.claim():
                kernel_decides(self.listener, n, target.request.op in MOVES, errno.EXDEV)
            return
        self.refusal(n, target, generation, OSError(errno.EACCES, "refused"), job)

    def refusal(
        self, n: Notification, target: Target, generation: int, exc: OSError, job: Job | None
    ) -> None:
        if exc.errno == errno.EACCES:
            # Refused by Landlock; one that reaches the control plane is not asked about.
            what = protected(target)
            if what is not None:
                self.protected(n, target, generation, what, job)
                return
        if exc.errno == errno.EACCES and self._deny(n, target, generation, job):
            return
        close_dirs(target)
        if job is None or job.claim():
            self.listener.send_error(n.id, exc.errno or errno.EIO)

    def protected(
        self, n: Notification, target: Target, generation: int, what: str, job: Job | None
    ) -> None:
        """Never performed, whatever the rules or answers say: refused now, reported. Reported
        first: refused, the program may exit at once, and a run that ends finds no report
        on its way (one handed over only after the run has closed its door was lost)."""
        pending = Pending(n, target, self._objects(target), generation, protected=what)
        if job is not None and not job.claim():
            pending.close()
            return
        self.on_denial(pending)
        self.listener.send_error(n.id, errno.EACCES)

    def _deny(self, n: Notification, target: Target, generation: int, job: Job | None) -> bool:
        """Hand a denial over; False when it was not Landlock's (no handled right missing)."""
        objects = self._objects(target)
        if not objects:
            return False
        pending = Pending(n, target, objects, generation)
        if job is not None and not job.claim():
            pending.close()
            return True
        self.on_denial(pending)
        return True

    def _objects(self, target: Target) -> list[CheckedObject]:
        try:
            return checked_objects(target.request, target.dir1, target.dir2, self.handled_fs)
        except OSError:
            return []
