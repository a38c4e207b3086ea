"""The supervisor: trio owns the policy state, the answers and the child's lifetime.

Usage::

    policy = load_policy("policy.toml")
    async with Supervisor.open(policy, decisions=ModeDecisions("enforce")) as sup:
        status = await sup.run(["make"])

``Supervisor`` wires the rooms together: the rule state (:mod:`.rules`), the serving threads
(:mod:`.engine`), questions and answers (:mod:`.questions`), network mediation (:mod:`.net`),
the launcher (:mod:`.launch`) and, with ``open(document, watch=True)``, the policy file
(:mod:`.policyfile`): each save is reloaded and "always" / "deny quietly" answers are written
back into it.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from msgspec import Struct

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError
from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs
from llsupervise.seccomp import (
    CONTEXT_SYSCALLS,
    MEDIATED_FS_SYSCALLS,
    NET_CALLS,
    SELF_RESTRICT_SYSCALLS,
    UNIX_SYSCALLS,
    Listener,
    Notification,
    SeccompError,
)
from llsupervise.supervisor.door import Door
from llsupervise.supervisor.engine.created import CreatedBinder
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.handler import EXEC_SYSCALLS
from llsupervise.supervisor.engine.loop import NotificationLoop
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.events.decisions import DecisionSource, ModeDecisions
from llsupervise.supervisor.events.model import EventLog
from llsupervise.supervisor.launch import signals
from llsupervise.supervisor.launch.helper import Helper
from llsupervise.supervisor.launch.launcher import (
    Launched,
    LaunchError,
    StaticLayer,
    Stdio,
    exit_status,
    launch,
)
from llsupervise.supervisor.launch.lifeline import Lifeline
from llsupervise.supervisor.perform.guard import Guard
from llsupervise.supervisor.questions.fs import FsQuestions
from llsupervise.supervisor.questions.handover import Handover
from llsupervise.supervisor.questions.net import NetQuestions
from llsupervise.supervisor.rules.binding import resolve_at_launch, symlinked_paths
from llsupervise.supervisor.rules.controlplane import (
    ControlFile,
    control_files,
    devices,
    guard_for,
    refuse_static,
)
from llsupervise.supervisor.rules.objects import (
    ObjectTable,
    ResolvedPolicy,
    raise_nofile_limit,
    user_nofile_limit,
)
from llsupervise.supervisor.rules.state import RuleState
from llsupervise.supervisor.rules.uses import RuleUses

if TYPE_CHECKING:
    from typing import TypedDict, Unpack

    from llsupervise.messages import Event, OwnLayerEvent, StallEvent, StartEvent
    from llsupervise.supervisor.net.mediator import NetMediator
    from llsupervise.supervisor.policyfile.watch import PolicyFile

    class OpenOptions(TypedDict, total=False):
        """What :meth:`Supervisor.opened` takes beside the document."""

        decisions: DecisionSource | None
        log: EventLog | None
        watch: bool
        control: Sequence[ControlFile] | None
        terminal: int | None


TRAPPED_SYSCALLS = (
    *MEDIATED_FS_SYSCALLS, *EXEC_SYSCALLS, *CONTEXT_SYSCALLS, *SELF_RESTRICT_SYSCALLS,
)  # fmt: skip

#: Seconds a run goes without trio at most when nothing needs it (see run_trio_on_demand);
#: tests set it to see both sides.
PLAIN_FOR_S = math.inf
#: Seconds between two looks at the policy file's status (a save is then reloaded), and at
#: most between two counts of rule uses, while a run goes without trio.
PLAIN_STEP_S = 0.2


class ServingFailed(LLSuperviseError):
    """The serving loop failed: nothing answered the command any more, so it was killed
    (never allowed anything). The loop's exception is the cause."""


class Supervisor:
    def __init__(
        self,
        policy: ResolvedPolicy,
        table: ObjectTable,
        decisions: DecisionSource,
        log: EventLog,
    ) -> None:
        self.policy = policy
        self.decisions = decisions
        self.log = log
        self.listeners: list[Callable[[Event], None]] = []
        self.net: NetMediator | None = None
        self.rules = RuleState(policy, table, self._committed)
        self.questions = FsQuestions(self.rules, decisions, self._listener, self.emit)
        self.net_questions = NetQuestions(self.rules, decisions, lambda: self.net, self.emit)
        self.rule_uses = RuleUses(self.rules, self.emit)
        #: Binds pending created-path rules to what the program creates (rules.created).
        self.created = CreatedBinder(self.rules, self.emit)
        #: Watches and rewrites the policy file (``open(..., watch=True)``).
        self.policy_file: PolicyFile | None = None  # its module loads only when watched
        self.handover = Handover(
            self.questions,
            self.net_questions,
            self.rules.static,
            lambda: self.generation,
            self.emit,
        )
        self.launched: Launched | None = None
        #: The control plane: what is never performed for the program (see perform.guard).
        self.guard = Guard()
        #: Set when SIGHUP came (and was passed on): our terminal is gone.
        self.hung_up = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls, document: PolicyDocument, **options: Unpack[OpenOptions]
    ) -> AsyncIterator[Supervisor]:
        """:meth:`opened`, in trio."""
        with cls.opened(document, **options) as sup:
            yield sup

    @classmethod
    @contextlib.contextmanager
    def opened(
        cls,
        document: PolicyDocument,
        *,
        decisions: DecisionSource | None = None,
        log: EventLog | None = None,
        watch: bool = False,
        control: Sequence[ControlFile] | None = None,
        terminal: int | None = None,
    ) -> Iterator[Supervisor]:
        """``watch``: reload ``document.source`` on each save while :meth:`run` runs, and
        write "always" answers back into it. ``control``: the control plane of the run
        (default: the policy file and its learn recording), never reached for the program:
        a policy whose static rules hand it over is refused (ControlPlaneError).
        ``terminal``: the slave of a pty of the caller's that the command will run on (see
        ``run(new_session=True)``); rules on ``${TTY}`` apply to it as well, for the whole
        run (see rules.objects.resolve). Never the caller's own terminal."""
        raise_nofile_limit()
        table = ObjectTable()
        if terminal is not None:
            table.hold_terminal(terminal)
        if control is None:
            control = control_files(document.source, log=log.path if log else None)
        try:
            policy = resolve_at_launch(document, table)
            refuse_static(policy, control)
            section = document.supervisor
            sup = cls(
                policy,
                table,
                decisions or ModeDecisions(section.mode, section.default, section.prompt_timeout),
                log or EventLog(None),
            )
            sup.guard = guard_for(control)
            try:
                if watch:
                    from llsupervise.supervisor.policyfile.watch import PolicyFile

                    sup.policy_file = PolicyFile(sup, document.source)
                yield sup
            finally:
                sup.rules.close()
                sup.guard.close()
        finally:
            table.close()

    # -- state the frontends read ---------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.rules.generation

    @property
    def static(self) -> Ruleset:
        return self.rules.static

    @property
    def table(self) -> ObjectTable:
        return self.rules.table

    def _listener(self) -> Listener | None:
        return self.launched.listener if self.launched else None

    def _committed(self, generation: int, committed: Ruleset) -> None:
        if self.net is not None:
            self.net.update(self.static | committed, generation)
        self.emit({"event": "commit", "generation": generation, "rules": len(committed)})

    def emit(self, event: Event) -> None:
        self.log.write(event)
        for listener in self.listeners:
            listener(event)

    # -- running --------------------------------------------------------------------------

    def static_layer(self) -> StaticLayer:
        return StaticLayer(
            self.static.handled_fs,
            self.static.handled_net,
            self.static.scopes,
            paths=self.table.path_rules(self.static.fs),
            ports=list(self.static.net.items()),
        )

    async def run(
        self,
        argv: Sequence[str],
        *,
        forward_signals: bool = True,
        stdio: Stdio = (None, None, None),
        cpu: int | None = None,
        new_session: bool = False,
    ) -> int:
        """Run ``argv`` under supervision until it exits; return its exit status.

        ``stdio``: descriptors for the command's stdin, stdout, stderr (None: inherit ours).
        ``new_session``: the command leads a new session whose controlling terminal is its
        stdin (a pty of ours): what it writes to ``/dev/tty`` goes there, not to our terminal.
        ``cpu``: run the command, its descendants and the threads that serve it on that one
        CPU, at the price of the command's own parallelism. Without it the serving threads
        still share one CPU, and a child thread is brought there only while a descriptor is
        injected (see placement)."""
        running = self._start(argv, stdio, cpu, new_session)
        try:
            return await self._serve(running, forward_signals)
        finally:
            # Here, whatever ended the run (a cancellation may cut _serve's cleanup short):
            # what the command left running goes with the run.
            running.cut_lifeline()

    def run_trio_on_demand(
        self, argv: Sequence[str], *, cpu: int | None = None, helper: Helper | None = None
    ) -> int:
        """:meth:`run`, with our signals forwarded, starting trio only when something needs
        it: a question, or an event from a serving thread (see door). Until then this
        thread does what trio would (see _served_plainly). A command that asks nothing never
        loads trio: its import costs more than a short command's whole run, and its CPU
        time is taken from the command's (a parallel build's) while it runs. Called from
        the main thread (signals). ``helper``: an exec helper started earlier, with our
        stdio, environment and cwd (see launch.helper)."""
        running = self._start(argv, (None, None, None), cpu, False, helper)
        try:
            with signals.forwarding(running.launched.process.send_signal, self._hang_up):
                if self._served_plainly(running):
                    self._release(running)
                    status = self._exited(running)
                    _raise_if_serving_failed(running.loop)
                    return status
                import trio

                return trio.run(self._serve, running, True)
        finally:
            running.cut_lifeline()

    def _served_plainly(self, running: _Running) -> bool:
        """Serve without trio until the command exits (True: served; nothing waits for
        trio) or something needs trio (False). Meanwhile: the policy file is looked at by
        its status every PLAIN_STEP_S and reloaded when saved, and rule uses are counted."""
        give_up = time.monotonic() + PLAIN_FOR_S
        while True:
            ended = _ended_first(running, min(PLAIN_STEP_S, give_up - time.monotonic()))
            if ended is None or time.monotonic() >= give_up:
                return False
            _end_if_failed(running)
            if ended:
                running.loop.stop()
                running.thread.join()
                # Checked once the serving thread is done: what it handed over to the last
                # (an exec report, a stall) still starts trio, and is told.
                return running.door.close_if_idle()
            if self.policy_file is not None:
                self.policy_file.check(force=False)
            self.rule_uses.count(running.loop.performed)

    def _start(
        self,
        argv: Sequence[str],
        stdio: Stdio,
        cpu: int | None,
        new_session: bool,
        helper: Helper | None = None,
    ) -> _Running:
        """Launch ``argv`` and start serving it: what needs no trio."""
        slot = self.rules.slot
        assert slot is not None
        if self.table.has_terminal and not new_session:
            # Rules on ${TTY} apply to that terminal: it must be the command's own.
            raise LaunchError("a terminal for the command was given, but no session of its own")
        if new_session:
            # The command has a terminal of its own: ours is the control plane's.
            terminals = control_files(None, terminals=(0, 1, 2))
            refuse_static(self.policy, terminals)
            self.guard.add_devices(devices(terminals))
        unix = bool(self.static.handled_fs & AccessFs.CONNECT_UNIX)
        syscalls = TRAPPED_SYSCALLS + (NET_CALLS if self.static.handled_net else ())
        syscalls += UNIX_SYSCALLS if unix else ()
        if helper is not None and helper.adoption is not None:
            lifeline = helper.adoption.take()  # made, and the helper moved in, meanwhile
        else:
            lifeline = Lifeline.create()
        try:
            launched = self.launched = launch(
                argv, self.static_layer(), syscalls, stdio=stdio, cpu=cpu,
                new_session=new_session, lifeline=lifeline, helper=helper,
                nofile=user_nofile_limit(),
            )  # fmt: skip
            # Opened now, before anything can reap the command (a forwarded signal's poll):
            # its exit is then always seen, and its pid never names another process.
            pidfd = os.pidfd_open(launched.pid)
        except BaseException:
            if lifeline is not None:
                lifeline.close()
            raise
        thread: threading.Thread | None = None
        try:
            try:
                launched.listener.set_sync_wakeup()
            except SeccompError:
                pass  # older kernels: slower wake-ups, same behaviour
            door = self.handover.door = self.created.door = Door()
            if self.static.handled_net or unix:  # made here: its helper needs our standing
                from llsupervise.supervisor.net.mediator import NetMediator

                self.net = NetMediator(
                    launched.listener, self.static, self.rules.in_force, self.generation,
                    self.handover.net_denial, on_unix_denial=self.handover.unix_denial,
                    on_refusal=self.handover.refusal,
                    on_stall=lambda n, outcome: self._stalled(n, None, outcome),
                )  # fmt: skip
            loop = NotificationLoop(
                launched.listener,
                slot,
                self.static.handled_fs,
                self.handover.denial,
                on_exec=self.handover.exec,
                fast=StaticPrefixes(self.static, self.table),
                net=self.net,
                cpu=cpu,
                guard=self.guard,
                created=lambda: self.rules.created_index,
                on_created=self.created.created,
                on_stall=self._stalled,
            )
            loop.on_own_layer = self._own_layer
            self.created.listener = launched.listener
            slot.on_swap.insert(0, loop.handler.moves.swapped)  # before the servers' hand-over
            thread = threading.Thread(
                target=_serving, args=(loop,), name="notifications", daemon=True
            )
            thread.start()
            self.emit(self._start_event(launched.pid, argv))
        except BaseException:
            # What was made goes with the failure, and the command (never served) with it.
            launched.process.kill()
            launched.process.wait()
            if thread is not None:
                loop.stop()
                thread.join()
            if self.net is not None:
                self.net.close()
                self.net = None
            if lifeline is not None:
                lifeline.close()
            os.close(pidfd)
            launched.listener.close()
            raise
        return _Running(launched, loop, thread, lifeline, door, pidfd)

    def _start_event(self, pid: int, argv: Sequence[str]) -> StartEvent:
        start: StartEvent = {"event": "start", "pid": pid, "argv": list(argv)}
        symlinked = symlinked_paths(self.policy)
        if symlinked:
            # Rules whose paths pass through symlinks, with where they lead: as check shows.
            start["through_symlinks"] = [{"path": p, "leads_to": to} for p, to in symlinked]
        if self.policy.redirectable:
            # Left out: through a symlink in a directory the program may change, so possibly
            # planted by an earlier run (see rules.binding.resolve_at_launch).
            start["redirectable"] = list(self.policy.redirectable)
        if self.rules.created:
            # Rules that bind when the program creates their path (see rules.created).
            start["pending_creation"] = [escape(rule.path) for rule in self.rules.created]
        return start

    async def _serve(self, running: _Running, forward_signals: bool) -> int:
        """In trio, until the command exits: questions, signals, the policy file's watch."""
        import trio

        launched = running.launched
        try:
            async with trio.open_nursery() as nursery:
                self.handover.nursery = nursery
                running.door.open(trio.lowlevel.current_trio_token())
                if forward_signals:
                    nursery.start_soon(signals.forward, launched.process.send_signal, self._hang_up)
                if self.policy_file is not None:
                    nursery.start_soon(self.policy_file.watch)
                nursery.start_soon(self._report_rule_uses, running.loop)
                nursery.start_soon(self._end_if_serving_failed, running)
                await trio.lowlevel.wait_readable(running.pidfd)
                nursery.cancel_scope.cancel()
        finally:
            self.handover.nursery = None
            running.loop.stop()
            await trio.to_thread.run_sync(running.thread.join)
            self._release(running)
        status = self._exited(running)
        _raise_if_serving_failed(running.loop)
        return status

    async def _end_if_serving_failed(self, running: _Running) -> None:
        import trio

        await trio.to_thread.run_sync(running.thread.join, abandon_on_cancel=True)
        _end_if_failed(running)

    def _release(self, running: _Running) -> None:
        """Once the serving thread has returned, however the run ended: what it held."""
        loop = running.loop
        loop.close()
        self.rule_uses.count(loop.performed)
        self.questions.drop()
        self.net_questions.drop()
        if self.net is not None:
            self.net.close()
            self.net = None
        running.door.close()
        self.created.listener = None
        assert self.rules.slot is not None
        self.rules.slot.on_swap.remove(loop.handler.moves.swapped)
        running.launched.listener.close()
        os.close(running.pidfd)

    def _exited(self, running: _Running) -> int:
        """The command's exit status, logged."""
        launched = running.launched
        status = exit_status(launched.process.wait())
        self.emit({"event": "exit", "pid": launched.pid, "status": status})
        return status

    def _stalled(self, n: Notification, request: FsRequest | None, outcome: str) -> None:
        """A request answered at its deadline (a filesystem that did not answer; or, with no
        request, one whose serving thread the kernel held): logged. Called from a plain
        thread."""
        event: StallEvent = {
            "event": "stall", "ts": time.time(), "pid": n.pid,
            "syscall": request.syscall if request is not None else n.syscall or str(n.nr),
            "path": os.fsdecode(request.path) if request is not None else "",
            "outcome": outcome,
        }  # fmt: skip
        self._emit_soon(event)

    def _own_layer(self, pid: int) -> None:
        """The program restricted itself: logged and told (see OwnLayerEvent). Called from a
        serving thread."""
        event: OwnLayerEvent = {"event": "own_layer", "ts": time.time(), "pid": pid}
        self._emit_soon(event)

    def _emit_soon(self, event: Event) -> None:
        """Emit ``event`` in trio's thread (called from another), unless the run is over."""
        door = self.handover.door
        if door is not None:
            door.call_soon(self.emit, event)

    def _hang_up(self) -> None:
        self.hung_up = True

    async def _report_rule_uses(self, loop: NotificationLoop) -> None:
        """Once a second, count the requests performed since against the supervisor rules."""
        import trio

        while True:
            await trio.sleep(1.0)
            self.rule_uses.count(loop.performed)


class _Running(Struct):
    """A command launched and served (see Supervisor._start)."""

    launched: Launched
    loop: NotificationLoop
    thread: threading.Thread
    lifeline: Lifeline | None
    door: Door
    #: The command's, opened at launch (see _start).
    pidfd: int

    def cut_lifeline(self) -> None:
        """What the command left running goes with the run."""
        if self.lifeline is not None:
            self.lifeline.close()


def _serving(loop: NotificationLoop) -> None:
    """The serving thread. A failure of its loop is the run's error (ServingFailed), told
    once: not also printed here."""
    try:
        loop.run()
    except BaseException as exc:
        if exc is not loop.failure:
            raise


def _end_if_failed(running: _Running) -> None:
    """A serving loop that failed answers nothing more: its command, left waiting in a
    trapped call for ever, is killed, so that the run ends (never allowed anything)."""
    if running.loop.failure is not None and not running.thread.is_alive():
        running.launched.process.kill()


def _raise_if_serving_failed(loop: NotificationLoop) -> None:
    failure = loop.failure
    if failure is not None:
        what = escape(f"{type(failure).__name__}: {failure}")
        message = f"serving the command failed ({what}); the command was killed"
        raise ServingFailed(message) from failure


def _ended_first(running: _Running, seconds: float) -> bool | None:
    """Wait up to ``seconds`` until the command exits (True) or the door's bell rings
    (None: trio is needed); False when neither came."""
    poller = select.poll()
    poller.register(running.pidfd, select.POLLIN)
    poller.register(running.door.bell, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(max(seconds, 0) * 1000)}  # resumed after a signal
    if running.door.bell in ready:
        return None
    return running.pidfd in ready
