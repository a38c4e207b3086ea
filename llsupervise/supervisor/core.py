"""The supervisor: trio owns the policy state, the answers and the child's lifetime.

Usage::

    policy = load_policy("policy.toml")
    async with Supervisor.open(policy, decisions=ModeDecisions("enforce")) as sup:
        status = await sup.run(["make"])

State: the static rules (fixed for the run), the *permanent* supervisor rules (from the
policy file and "always" answers) and temporary grants. The committed supervisor ruleset is
always permanent ∪ live temporaries; every change is one ``replace`` + ``commit``, after
which a new broker serves the new generation. Quiet objects and conditional rules (granted
only to some requesters, by a one-shot broker) sit beside it and are swapped with it on reload.

``Supervisor.open(document, watch=True)`` also watches the policy file while a command runs:
each save is reloaded (see :mod:`llsupervise.supervisor.policyfile.watch`) and "always" / "deny
quietly" answers are written back into it.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from llsupervise.policy.conditions import (
    ConditionalRule,
    Requester,
    cgroup_v2_path,
    covers,
    matching,
)
from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.model import IntersectNet, MutableRuleset, ObjectId, Ruleset, apply
from llsupervise.rights import NO_FS, NO_NET, AccessFs, AccessNet, names
from llsupervise.seccomp import (
    CONTEXT_SYSCALLS,
    MEDIATED_FS_SYSCALLS,
    Notification,
    NotificationGone,
    SeccompError,
)
from llsupervise.supervisor.engine.denials import CheckedObject
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.loop import (
    EXEC_SYSCALLS,
    BrokerSlot,
    NotificationLoop,
    Pending,
    reply,
)
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.events.decisions import DecisionSource, ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial, EventLog
from llsupervise.supervisor.launch.launcher import Launched, StaticLayer, Stdio, exit_status, launch
from llsupervise.supervisor.net.mediator import NET_CALLS, NetMediator, PendingNet, once
from llsupervise.supervisor.perform.broker import Broker, kernel_ruleset
from llsupervise.supervisor.perform.operations import KernelDecides, perform
from llsupervise.supervisor.perform.procfs import read_proc, read_status, status_number
from llsupervise.supervisor.policyfile.watch import PolicyFile
from llsupervise.supervisor.rules.objects import (
    ObjectTable,
    ResolvedPolicy,
    raise_nofile_limit,
    resolve,
)

TRAPPED_SYSCALLS = (*MEDIATED_FS_SYSCALLS, *EXEC_SYSCALLS, *CONTEXT_SYSCALLS)
_ONCE = (Answer.ALLOW_ONCE, Answer.PERMISSIVE)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class _Closeable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closeable)


@dataclass
class _Temporary:
    """A grant "for a while": a file rule (``obj``) or a port rule (``port``)."""

    deadline: float
    obj: ObjectId | None = None
    access: AccessFs = NO_FS
    port: int | None = None
    net_access: AccessNet = NO_NET


@dataclass
class _Question:
    """Identical concurrent denials share one question."""

    denial: Denial
    #: The first request's checked objects: what a rule from the answer binds to.
    objects: list[CheckedObject]
    #: Requests to answer (none for exec: the static layer has already answered it).
    waiting: list[Pending] = field(default_factory=list)
    count: int = 1


class Supervisor:
    def __init__(
        self,
        policy: ResolvedPolicy,
        table: ObjectTable,
        decisions: DecisionSource,
        log: EventLog,
    ) -> None:
        self.policy = policy
        self.table = table
        self.decisions = decisions
        self.log = log
        self.static = policy.static
        self.permanent = policy.supervisor
        self.quiet = policy.quiet
        self.conditional: tuple[ConditionalRule, ...] = policy.conditional
        #: Watches and rewrites the policy file (``open(..., watch=True)``).
        self.policy_file: PolicyFile | None = None
        self.mutable = MutableRuleset.for_layer(policy.static)
        self._temporaries: dict[int, _Temporary] = {}
        self._next_temporary = 0
        self._questions: dict[tuple[Any, ...], _Question] = {}
        self._net_questions: dict[tuple[Any, ...], list[PendingNet]] = {}
        #: Ports answered "deny quietly" during this run (the policy format has no quiet port).
        self.quiet_ports: set[tuple[int, AccessNet]] = set()
        self.net: NetMediator | None = None
        #: Supervisor rule path -> (requests performed beneath it, time of the last one).
        self.rule_uses: dict[str, tuple[int, float]] = {}
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.slot: BrokerSlot | None = None
        self.launched: Launched | None = None
        #: Set when SIGHUP came (and was passed on): our terminal is gone.
        self.hung_up = False
        self._commit_rules()

    # -- construction -------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        document: PolicyDocument,
        *,
        decisions: DecisionSource | None = None,
        log: EventLog | None = None,
        watch: bool = False,
    ) -> AsyncIterator[Supervisor]:
        """``watch``: reload ``document.source`` on each save while :meth:`run` runs, and
        write "always" answers back into it."""
        raise_nofile_limit()
        table = ObjectTable()
        try:
            policy = resolve(document, table)
            sup = cls(
                policy,
                table,
                decisions
                or ModeDecisions(
                    document.supervisor.mode,
                    document.supervisor.default,
                    document.supervisor.prompt_timeout,
                ),
                log or EventLog(None),
            )
            try:
                if watch:
                    sup.policy_file = PolicyFile(sup, document.source)
                yield sup
            finally:
                sup.close()
        finally:
            table.close()

    def close(self) -> None:
        if self.slot is not None:
            self.slot.broker.close()

    # -- rules ----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.mutable.generation

    def _target(self) -> Ruleset:
        target = self.permanent
        for temp in self._temporaries.values():
            if temp.obj is not None:
                target = target.with_fs(temp.obj, temp.access)
            if temp.port is not None:
                target = target.with_net(temp.port, temp.net_access)
        return target

    def _commit_rules(self) -> int:
        """Publish permanent ∪ temporaries atomically; the next request sees it.

        The new generation's broker is made before the commit: if that fails, nothing
        changed."""
        self.mutable.replace(self._target())
        try:
            broker = Broker(
                kernel_ruleset(self.static | self.mutable.pending, self.table),
                f"broker-g{self.mutable.generation + 1}",
            )  # fmt: skip
        except BaseException:
            self.mutable.discard()
            raise
        generation = self.mutable.commit()
        if self.net is not None:
            self.net.update(self.static | self.mutable.committed, generation)
        if self.slot is None:
            self.slot = BrokerSlot(broker, generation)
        else:
            self.slot.swap(broker, generation)
        self.release_objects()
        self.emit(
            {"event": "commit", "generation": generation, "rules": len(self.mutable.committed)}
        )
        return generation

    def add_rule(self, path: str, access: AccessFs) -> int:
        """Add a supervisor rule (rights OR-ed with an existing rule) and commit it."""
        obj = self.table.open(path)
        self.permanent = self.permanent.with_fs(obj, access & self.static.handled_fs, path)
        return self._commit_rules()

    def remove_rule(self, path: str, access: AccessFs | None = None) -> int:
        """Intersect a supervisor rule with the complement of ``access`` (all: remove it)."""
        obj = self.table.open(path)
        kept = NO_FS if access is None else self.permanent.fs.get(obj, NO_FS) & ~access
        fs = dict(self.permanent.fs)
        fs[obj] = kept
        self.permanent = Ruleset(
            self.permanent.handled_fs, self.permanent.handled_net, self.permanent.scopes,
            fs=fs, net=self.permanent.net, labels=self.permanent.labels,
        )  # fmt: skip
        return self._commit_rules()

    def release_objects(self) -> None:
        """Close the descriptors of objects no rule refers to any more."""
        self.table.release(
            [*self.static.fs, *self.permanent.fs, *self.quiet,
             *(rule.obj for rule in self.conditional),
             *(t.obj for t in self._temporaries.values() if t.obj is not None)]
        )  # fmt: skip

    def replace_rules(
        self,
        rules: Ruleset,
        quiet: frozenset[ObjectId] | None = None,
        conditional: tuple[ConditionalRule, ...] | None = None,
    ) -> int:
        """Make ``rules`` the permanent supervisor rules, and swap the quiet objects and
        conditional rules when given, in one step (a reload); return the generation.

        Commits once, and only if the committed ruleset changes. On error nothing changed."""
        previous = (self.permanent, self.quiet, self.conditional)
        self.permanent = rules
        self.quiet = self.quiet if quiet is None else quiet
        self.conditional = self.conditional if conditional is None else conditional
        try:
            target, committed = self._target(), self.mutable.committed
            if target.fs != committed.fs or target.net != committed.net:
                return self._commit_rules()
            self.release_objects()
            return self.generation
        except BaseException:
            self.permanent, self.quiet, self.conditional = previous
            raise

    def _grant_temporarily(self, temporary: _Temporary, seconds: float) -> None:
        key = self._next_temporary
        self._next_temporary += 1
        self._temporaries[key] = temporary
        self._commit_rules()
        assert self._nursery is not None
        self._nursery.start_soon(self._expire, key, seconds)

    async def _expire(self, key: int, seconds: float) -> None:
        await trio.sleep(seconds)
        del self._temporaries[key]
        self._commit_rules()

    # -- events ---------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
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
        assert self.slot is not None
        self._token = trio.lowlevel.current_trio_token()
        syscalls = TRAPPED_SYSCALLS + (NET_CALLS if self.static.handled_net else ())
        launched = self.launched = launch(
            argv, self.static_layer(), syscalls, stdio=stdio, cpu=cpu, new_session=new_session
        )
        try:
            launched.listener.set_sync_wakeup()
        except SeccompError:
            pass  # older kernels: slower wake-ups, same behaviour
        if self.static.handled_net:  # made here: its helper thread needs our standing
            self.net = NetMediator(
                launched.listener, self.static, self.static | self.mutable.committed,
                self.generation, self._post_net_denial,
            )  # fmt: skip
        loop = NotificationLoop(
            launched.listener,
            self.slot,
            self.static.handled_fs,
            self._post_denial,
            on_exec=self._post_exec,
            fast=StaticPrefixes(self.static, self.table),
            net=self.net,
            cpu=cpu,
        )
        thread = threading.Thread(target=loop.run, name="notifications", daemon=True)
        thread.start()
        self.emit({"event": "start", "pid": launched.pid, "argv": list(argv)})
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if forward_signals:
                    nursery.start_soon(self._forward_signals, launched)
                if self.policy_file is not None:
                    nursery.start_soon(self.policy_file.watch)
                nursery.start_soon(self._report_rule_uses, loop)
                pidfd = os.pidfd_open(launched.pid)
                try:
                    await trio.lowlevel.wait_readable(pidfd)
                finally:
                    os.close(pidfd)
                status = exit_status(launched.process.wait())
                nursery.cancel_scope.cancel()
        finally:
            loop.stop()
            await trio.to_thread.run_sync(thread.join)
            loop.close()
            self._count_rule_uses(loop)
            self._drop_questions()
            if self.net is not None:
                self.net.close()
                self.net = None
            launched.listener.close()
            self._nursery = None
        self.emit({"event": "exit", "pid": launched.pid, "status": status})
        return status

    async def _report_rule_uses(self, loop: NotificationLoop) -> None:
        """Once a second, count the requests performed since against the supervisor rules
        (the deepest rule whose path leads to the request's, as the child named it) and
        emit ``rule_use`` with the running totals of the rules that were used."""
        while True:
            await trio.sleep(1.0)
            self._count_rule_uses(loop)

    def _count_rule_uses(self, loop: NotificationLoop) -> None:
        if not loop.performed:
            return  # nothing performed: spare rebuilding the map of every rule
        by_path = {self.table.label(obj): obj for obj in self.mutable.committed.fs}
        used: set[str] = set()
        while loop.performed:
            raw, ts = loop.performed.popleft()
            path = os.fsdecode(raw)
            while path not in by_path and path not in ("/", ""):
                path = os.path.dirname(path)
            if path in by_path:
                count, _ = self.rule_uses.get(path, (0, 0.0))
                self.rule_uses[path] = (count + 1, ts)
                used.add(path)
        if used:
            uses = [{"path": p, "count": self.rule_uses[p][0], "last": self.rule_uses[p][1]}
                    for p in sorted(used)]  # fmt: skip
            self.emit({"event": "rule_use", "uses": uses})

    async def _forward_signals(self, launched: Launched) -> None:
        with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
            async for signum in signals:
                if signum == signal.SIGINT and _terminal_sent_it():
                    continue  # the child, in our process group, got it too
                self.hung_up |= signum == signal.SIGHUP
                launched.process.send_signal(signum)

    # -- denials --------------------------------------------------------------------------

    def _post(self, handler: Callable[[_C], None], pending: _C) -> None:
        """Hand a request over from a worker thread to trio; once the run is over, it is
        dropped (its listener closes with the run: it fails closed)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(handler, pending)
        except trio.RunFinishedError:
            pending.close()

    def _post_denial(self, pending: Pending) -> None:
        """Called from the notification thread."""
        self._post(self._on_denial, pending)

    def _on_denial(self, pending: Pending) -> None:
        if self._nursery is None:
            pending.close()  # the listener closes with the run: fails closed
            return
        n = pending.notification
        pending.exe, pending.cmdline = read_proc(n.pid, "exe"), read_proc(n.pid, "cmdline")
        self._ask(
            pending.exe, pending.cmdline, n.pid, pending.request, pending.objects,
            pending.generation, pending,
        )  # fmt: skip

    def _post_exec(self, n: Notification, request: FsRequest, obj: CheckedObject) -> None:
        """Called from the notification thread for each executable the child asks to run.

        The static layer alone decides exec (the call is already on its way with CONTINUE);
        a refusal is reported so that "always" can persist a rule for the next run."""
        if self._token is None or self.static.fs_rights_on(obj.chain) & obj.access == obj.access:
            obj.close()
            return
        try:
            self._token.run_sync_soon(self._on_exec, n, request, obj)
        except trio.RunFinishedError:
            obj.close()

    def _on_exec(self, n: Notification, request: FsRequest, obj: CheckedObject) -> None:
        if self._nursery is None:
            obj.close()
            return
        # A refused exec leaves the process as it was: exe and cmdline are still the caller's.
        exe, cmdline = read_proc(n.pid, "exe"), read_proc(n.pid, "cmdline")
        self._ask(exe, cmdline, n.pid, request, [obj], self.generation, None)

    def _ask(
        self,
        exe: str,
        cmdline: str,
        tid: int,
        request: FsRequest,
        objects: list[CheckedObject],
        generation: int,
        pending: Pending | None,
    ) -> None:
        """Raise one question per distinct (exe, operation, objects); others wait on it."""
        assert self._nursery is not None
        if pending is not None and self.conditional and self._grant_conditionally(pending):
            return
        key = (exe, request.op, tuple((o.obj, o.access) for o in objects))
        question = self._questions.get(key)
        if question is not None:
            question.count += 1
            if pending is None:
                for o in objects:
                    o.close()
            else:
                question.waiting.append(pending)
            return
        denial = _denial(exe, cmdline, tid, request, objects, generation)
        waiting = [] if pending is None else [pending]
        self._questions[key] = _Question(denial, objects, waiting)
        self._nursery.start_soon(self._resolve, key)

    # -- conditional rules ----------------------------------------------------------------

    def _grant_conditionally(self, pending: Pending) -> bool:
        """Serve a denied request without asking when conditional rules matching its
        requester cover every checked object; the kernel judges it in a one-shot broker."""
        n = pending.notification
        exe = pending.exe
        requester = Requester(None if exe == "?" else exe, _cgroup(n.pid))
        rules = matching(self.conditional, requester)
        if not rules:
            return False
        base = self.static | self.mutable.committed
        if not all(covers(rules, base.fs_rights_on(o.chain), o.chain, o.access)
                   for o in pending.objects):  # fmt: skip
            return False
        listener = self.launched.listener if self.launched else None
        if listener is None or listener.closed or not listener.id_valid(n.id):
            pending.close()  # the requester is gone: what was read of it may be another's
            return True
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_conditionally, pending, rules)
        return True

    async def _serve_conditionally(self, pending: Pending, rules: list[ConditionalRule]) -> None:
        extra = self.static | self.mutable.committed
        for rule in rules:
            extra = extra.with_fs(rule.obj, rule.access)
        try:
            broker: Broker | None = Broker(kernel_ruleset(extra, self.table), "broker-conditional")
        except Exception:
            broker = None  # the answer below then fails closed
        denial = _denial(
            pending.exe, pending.cmdline, pending.notification.pid, pending.request,
            pending.objects, pending.generation,
        )  # fmt: skip
        granted_by = sorted({rule.label for rule in rules})
        self.emit(
            denial.event(Answer.ALLOW_ONCE) | {"rule": "conditional", "granted_by": granted_by}
        )
        await trio.to_thread.run_sync(self._answer, pending, Decision(Answer.ALLOW_ONCE), broker)

    def _is_quiet(self, objects: list[CheckedObject]) -> bool:
        return any(obj in self.quiet for o in objects for obj in o.chain)

    async def _resolve(self, key: tuple[Any, ...]) -> None:
        question = self._questions[key]
        if self._is_quiet(question.objects):
            decision = Decision(Answer.DENY_QUIET)
            rules: list[dict[str, Any]] = []
        else:
            decision = await self.decisions.decide(question.denial)
            rules = self._remember(question.objects, decision)
        del self._questions[key]
        denial = question.denial
        event = denial.event(decision.answer) | {"count": question.count}
        if denial.next_run_only:
            event["next_run_only"] = True
        if rules:
            event["rules"] = rules
        self.emit(event)
        if not question.waiting:  # exec: nothing to answer, only the objects to release
            for o in question.objects:
                o.close()
        for pending in question.waiting:
            once = self._once_broker(pending) if decision.answer in _ONCE else None
            await trio.to_thread.run_sync(self._answer, pending, decision, once)

    def _once_broker(self, pending: Pending) -> Broker | None:
        """A one-shot broker whose only extra rules are on the checked objects, so that a
        path swapped since the check is judged without them."""
        rules = self.static | self.mutable.committed
        for o in pending.objects:
            obj = self.table.adopt(os.dup(o.fd))
            rules = rules.with_fs(obj, o.access)
        try:
            return Broker(kernel_ruleset(rules, self.table), "broker-once")
        except Exception:
            return None

    def _remember(self, objects: list[CheckedObject], decision: Decision) -> list[dict[str, Any]]:
        """Keep what an answer says beyond this request: rules (always, for a while) and
        quiet objects. Returns the rules kept, as the event log reports them."""
        if decision.answer not in (Answer.ALLOW_ALWAYS, Answer.ALLOW_FOR, Answer.DENY_QUIET):
            return []
        kept: list[dict[str, Any]] = []
        for o in objects:
            access = o.access
            if o is objects[0] and decision.access is not None:
                access |= decision.access & self.static.handled_fs
            elif self.static.fs_rights_on(o.chain) & access == access:
                continue  # e.g. the other end of a rename: the static rules already allow it
            if decision.scope is not None and o is objects[0]:
                obj = self.table.open(decision.scope)
            else:
                obj = self.table.adopt(os.dup(o.fd))
            label = self.table.label(obj)
            if decision.answer == Answer.DENY_QUIET:
                self.quiet = self.quiet | {obj}
                kept.append({"quiet": label})
            elif decision.answer == Answer.ALLOW_ALWAYS:
                self.permanent = self.permanent.with_fs(obj, access, label)
                kept.append({"path": label, "access": names(access)})
            else:
                seconds = decision.duration or 60.0
                deadline = trio.current_time() + seconds
                self._grant_temporarily(_Temporary(deadline, obj, access), seconds)
                kept.append({"path": label, "access": names(access), "seconds": seconds})
        if decision.answer == Answer.ALLOW_ALWAYS:
            self._commit_rules()
        return kept

    def _answer(self, pending: Pending, decision: Decision, once: Broker | None) -> None:
        """Runs in a worker thread: perform the request as decided and reply to the child."""
        n = pending.notification
        listener = self.launched.listener if self.launched else None
        try:
            if listener is None or listener.closed:
                return
            if not decision.answer.allows or (decision.answer in _ONCE and once is None):
                listener.send_error(n.id, errno.EACCES)
                return
            try:
                result = self._perform(pending, once)
            except KernelDecides:
                listener.send_continue(n.id)
            except OSError as exc:
                listener.send_error(n.id, exc.errno or errno.EIO)
            else:
                reply(listener, n, pending.request, result)
        except NotificationGone:
            pass
        finally:
            if once is not None:
                once.close()
            pending.close()

    def _perform(self, pending: Pending, once: Broker | None) -> int:
        if once is not None:
            return once.call(lambda: perform(pending.target))
        assert self.slot is not None
        with self.slot.lock:
            return self.slot.broker.call(lambda: perform(pending.target))

    # -- network denials --------------------------------------------------------------------

    def _post_net_denial(self, pending: PendingNet) -> None:
        """Called from the network mediator's helper thread."""
        self._post(self._on_net_denial, pending)

    def _on_net_denial(self, pending: PendingNet) -> None:
        if self._nursery is None or self.net is None:
            pending.close()
            return
        key = (pending.exe, pending.direction, pending.port)
        waiting = self._net_questions.get(key)
        if waiting is not None:
            waiting.append(pending)
            return
        self._net_questions[key] = [pending]
        self._nursery.start_soon(self._resolve_net, key)

    async def _resolve_net(self, key: tuple[Any, ...]) -> None:
        first = self._net_questions[key][0]
        if (first.port, first.access) in self.quiet_ports:
            decision = Decision(Answer.DENY_QUIET)
        else:
            decision = await self.decisions.decide(first.denial())
        waiting = self._net_questions.pop(key)
        rules: list[dict[str, Any]] = []
        answer = decision.answer
        if answer == Answer.DENY_QUIET:
            self.quiet_ports.add((first.port, first.access))
        elif answer == Answer.ALLOW_ALWAYS:
            self.permanent = self.permanent.with_net(first.port, first.access)
            self._commit_rules()
            rules.append({"port": first.port, "access": names(first.access)})
        elif answer == Answer.ALLOW_FOR:
            seconds = decision.duration or 60.0
            temporary = _Temporary(
                trio.current_time() + seconds, port=first.port, net_access=first.access
            )
            self._grant_temporarily(temporary, seconds)
            rules.append({"port": first.port, "access": names(first.access), "seconds": seconds})
        event = first.event(answer, len(waiting))
        if rules:
            event["rules"] = rules
        self.emit(event)
        for pending in waiting:
            grant: Ruleset | None = None
            if answer in _ONCE:
                grant = once(self.static | self.mutable.committed, pending)
            elif answer in (Answer.ALLOW_ALWAYS, Answer.ALLOW_FOR):
                grant = self.static | self.mutable.committed
            if self.net is None:
                pending.close()
            else:
                self.net.answer(pending, grant)

    def add_port_rule(self, port: int, access: AccessNet) -> int:
        """Add a supervisor ``net_port`` rule (rights OR-ed) and commit it."""
        self.permanent = self.permanent.with_net(port, access & self.static.handled_net)
        return self._commit_rules()

    def remove_port_rule(self, port: int, access: AccessNet | None = None) -> int:
        """Intersect a supervisor ``net_port`` rule with the complement of ``access``."""
        kept = NO_NET if access is None else self.permanent.net.get(port, NO_NET) & ~access
        self.permanent = apply(self.permanent, [IntersectNet(port, kept)])
        return self._commit_rules()

    def _drop_questions(self) -> None:
        for waiting in self._net_questions.values():
            for net_pending in waiting:
                net_pending.close()
        self._net_questions.clear()
        for question in self._questions.values():
            if not question.waiting:
                for o in question.objects:
                    o.close()
            for pending in question.waiting:
                pending.close()  # the listener closes with the run: fails closed
        self._questions.clear()


def _tgid(tid: int) -> int:
    return status_number(read_status(tid), b"Tgid", 10, tid)


def _cgroup(tid: int) -> str | None:
    """The thread's cgroup v2 path, None when unknown (the thread is gone, no cgroup v2)."""
    try:
        with open(f"/proc/{tid}/cgroup", encoding="utf-8", errors="replace") as f:
            return cgroup_v2_path(f.read())
    except OSError:
        return None


def _denial(
    exe: str,
    cmdline: str,
    tid: int,
    request: FsRequest,
    objects: list[CheckedObject],
    generation: int,
) -> Denial:
    access: AccessFs = NO_FS
    for o in objects:
        access |= o.access
    return Denial(
        pid=_tgid(tid),
        tid=tid,
        exe=exe,
        cmdline=cmdline,
        syscall=request.syscall,
        path=objects[0].label,
        access=tuple(names(access)),
        generation=generation,
        next_run_only=request.op == "execute",
    )


def _terminal_sent_it() -> bool:
    """True when our process group is the terminal's foreground group (Ctrl-C reached all)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)
