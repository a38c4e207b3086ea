"""A denied request waiting for its answer, and replying with a performed result."""

from __future__ import annotations

import os
import time

from msgspec import Struct

from llsupervise.seccomp import Listener, Notification
from llsupervise.supervisor.engine.denials import CheckedObject
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.perform.operations import Target
from llsupervise.supervisor.perform.placement import CHOICE, borrow, give_back


class Pending(Struct):
    """A denied request waiting for an answer; owns its fds until :meth:`close`."""

    notification: Notification
    target: Target
    objects: list[CheckedObject]
    generation: int
    #: Filled in by the supervisor (reading them needs its standing, not the loop's).
    exe: str = ""
    cmdline: str = ""
    #: Set for a request refused (and already answered) because it reaches the control
    #: plane: what it would have reached. Reported, never asked about.
    protected: str = ""
    closed: bool = False

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
            if cpu is None:
                listener.addfd(n.id, result, send=True, cloexec=cloexec)
                return
            start = time.perf_counter_ns()
            original = borrow(n.pid, cpu) if CHOICE.borrowing() else None
            if original is None:
                listener.addfd(n.id, result, send=True, cloexec=cloexec)
            else:
                try:
                    # Not answered yet: the thread must not run its program while pinned.
                    # (Only a fatal signal can end the wait in between: WAIT_KILLABLE_RECV.)
                    injected = listener.addfd(n.id, result, cloexec=cloexec)
                finally:
                    give_back(n.pid, original)
                listener.send_value(n.id, injected)
            CHOICE.took(original is not None, time.perf_counter_ns() - start)
        finally:
            os.close(result)
    else:
        listener.send_value(n.id, result)


def kernel_decides(listener: Listener, n: Notification, moving: bool, err: int) -> None:
    """CONTINUE: the static layer decides in the child's context. A move is refused with
    ``err`` instead: the kernel's refer check knows only the static layer, so a file could
    land where a supervisor rule gives it more than it had (see engine.handler)."""
    if moving:
        listener.send_error(n.id, err)
    else:
        listener.send_continue(n.id)
