"""Denials handed over from the serving threads (plain threads) to trio, where questions are
asked. Once the run is over, a request handed over is dropped: its listener closes with the
run, so it fails closed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from llsupervise.policy.model import Ruleset
from llsupervise.seccomp import Notification
from llsupervise.supervisor.door import Door
from llsupervise.supervisor.engine.denials import CheckedObject
from llsupervise.supervisor.engine.pending import Pending
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.perform.procfs import read_proc
from llsupervise.supervisor.questions.fs import FsQuestions
from llsupervise.supervisor.questions.net import NetQuestions

if TYPE_CHECKING:  # trio: imported where used, a run starts before it (supervisor.door)
    import trio

    from llsupervise.messages import Event
    from llsupervise.supervisor.net.tcp import PendingNet  # the network: see core
    from llsupervise.supervisor.net.unix import UnixPending

    _P = TypeVar("_P", Pending, PendingNet, UnixPending)

#: Exec reports handed to trio and not yet taken there. An exec does not wait for its
#: report (the static layer has answered it), so an exec loop outruns trio: past this many,
#: a report is dropped (its object released at once) and counted, never queued.
MAX_EXEC_BACKLOG = 64


class Handover:
    """Called from the serving threads; asks in trio, within the run's nursery."""

    def __init__(
        self,
        questions: FsQuestions,
        net_questions: NetQuestions,
        static: Ruleset,
        generation: Callable[[], int],
        emit: Callable[[Event], None] | None = None,
    ) -> None:
        """``emit``: where refusals go (see :meth:`refusal`)."""
        self.questions = questions
        self._emit = emit
        self.net_questions = net_questions
        self.static = static
        self._generation = generation
        #: Into trio's thread, while a run lasts.
        self.door: Door | None = None
        #: The run's nursery, while the run lasts.
        self.nursery: trio.Nursery | None = None
        self._exec_lock = threading.Lock()
        self._exec_backlog = 0
        #: Exec reports dropped over MAX_EXEC_BACKLOG.
        self.execs_dropped = 0

    def _post(self, handler: Callable[[_P], None], pending: _P) -> None:
        if self.door is None or not self.door.call_soon(handler, pending):
            pending.close()

    def denial(self, pending: Pending) -> None:
        self._post(self._on_denial, pending)

    def unix_denial(self, pending: UnixPending) -> None:
        self._post(self._on_unix_denial, pending)

    def net_denial(self, pending: PendingNet) -> None:
        self._post(self._on_net_denial, pending)

    def refusal(self, event: Event) -> None:
        """A call the network mediator refused without a question (MPTCP, say): logged."""
        if self.door is not None and self._emit is not None:
            self.door.call_soon(self._emit, event)

    def _on_denial(self, pending: Pending) -> None:
        if self.nursery is None:
            pending.close()
            return
        n = pending.notification
        pending.exe, pending.cmdline = read_proc(n.pid, "exe"), read_proc(n.pid, "cmdline")
        self.questions.ask(
            pending.exe, pending.cmdline, n.pid, pending.request, pending.objects,
            pending.generation, pending, self.nursery,
        )  # fmt: skip

    def exec(self, n: Notification, request: FsRequest, obj: CheckedObject) -> None:
        """Each executable the child asks to run. The static layer alone decides exec (the
        call is already on its way with CONTINUE); a refusal is reported so that "always"
        can persist a rule for the next run."""
        if self.door is None or self.static.fs_rights_on(obj.chain) & obj.access == obj.access:
            obj.close()
            return
        with self._exec_lock:
            full = self._exec_backlog >= MAX_EXEC_BACKLOG
            if full:
                self.execs_dropped += 1
            else:
                self._exec_backlog += 1
        if full:
            obj.close()
        elif not self.door.call_soon(self._on_exec, n, request, obj):
            with self._exec_lock:
                self._exec_backlog -= 1
            obj.close()

    def _on_exec(self, n: Notification, request: FsRequest, obj: CheckedObject) -> None:
        with self._exec_lock:
            self._exec_backlog -= 1
        if self.nursery is None:
            obj.close()
            return
        # A refused exec leaves the process as it was: exe and cmdline are still the caller's.
        exe, cmdline = read_proc(n.pid, "exe"), read_proc(n.pid, "cmdline")
        self.questions.ask(
            exe, cmdline, n.pid, request, [obj], self._generation(), None, self.nursery
        )

    def _on_unix_denial(self, pending: UnixPending) -> None:
        """A connect or send to a UNIX socket no rule allows: asked like a file request."""
        if self.nursery is None:
            pending.close()
            return
        assert pending.target is not None, "only a checked pathname socket is denied"
        self.questions.ask(
            pending.exe, pending.cmdline, pending.tid, pending.request, [pending.target],
            pending.generation, pending, self.nursery,
        )  # fmt: skip

    def _on_net_denial(self, pending: PendingNet) -> None:
        if self.nursery is None:
            pending.close()
            return
        self.net_questions.ask(pending, self.nursery)
