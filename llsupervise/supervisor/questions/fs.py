"""Questions about filesystem denials: one per distinct (program, operation, objects), which
every identical request waits on; the answer is remembered as rules or quiet objects and
carried out for each waiting request."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from msgspec import Struct, field
from msgspec.structs import replace

from llsupervise.policy.model import ObjectId
from llsupervise.rights import NO_FS, AccessFs, names
from llsupervise.seccomp import Listener
from llsupervise.supervisor.engine.denials import CheckedObject
from llsupervise.supervisor.engine.pending import Pending
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.events.decisions import DecisionSource
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.supervisor.net.unix import UnixPending
from llsupervise.supervisor.perform.procfs import read_status, status_number
from llsupervise.supervisor.questions import scopes as scoping
from llsupervise.supervisor.questions.answering import (
    ONCE,
    carry_out,
    carry_out_in_thread,
    once_broker,
)
from llsupervise.supervisor.questions.conditional import ConditionalGrants
from llsupervise.supervisor.questions.limits import QuestionLimits
from llsupervise.supervisor.questions.scopes import Scope
from llsupervise.supervisor.rules.binding import leads_to
from llsupervise.supervisor.rules.state import RuleState, Temporary

if TYPE_CHECKING:  # imported where used: a run starts before trio (supervisor.door)
    import trio

    from llsupervise.messages import Event, KeptRule, UnboundRule


class QuestionKey(NamedTuple):
    """What makes two denials the same question: the same process (its threads share one
    answer), never two processes, whose command lines may tell different stories."""

    pid: int
    exe: str
    op: str
    objects: tuple[tuple[ObjectId, AccessFs], ...]


class Question(Struct):
    """Identical concurrent denials share one question."""

    denial: Denial
    #: The first request's checked objects: what a rule from the answer binds to.
    objects: list[CheckedObject]
    #: Requests to answer (none for exec: the static layer has already answered it).
    waiting: list[Pending | UnixPending] = field(default_factory=list)
    count: int = 1
    #: Where a rule for the first object may go, held open since the question was raised.
    scopes: list[Scope] = field(default_factory=list)


class FsQuestions:
    def __init__(
        self,
        rules: RuleState,
        decisions: DecisionSource,
        listener: Callable[[], Listener | None],
        emit: Callable[[Event], None],
    ) -> None:
        self.rules = rules
        self.decisions = decisions
        self._listener = listener
        self._emit = emit
        self.conditional = ConditionalGrants(rules, listener, emit)
        self._open: dict[QuestionKey, Question] = {}
        self.limits = QuestionLimits()

    def ask(
        self,
        exe: str,
        cmdline: str,
        tid: int,
        request: FsRequest,
        objects: list[CheckedObject],
        generation: int,
        pending: Pending | UnixPending | None,
        nursery: trio.Nursery,
    ) -> None:
        """Raise one question per distinct (process, exe, operation, objects); others wait.
        ``pending`` None: an exec, reported only (the static layer has answered it)."""
        denial = make_denial(exe, cmdline, tid, request, objects, generation)
        if isinstance(pending, Pending) and pending.protected:
            # Already refused: the control plane is never reached, whatever the answer.
            denial = replace(denial, protected=pending.protected)
            pending.close()
            self._emit(denial.event(Answer.DENY))
            return
        if isinstance(pending, Pending) and self.conditional.grant(pending, denial, nursery):
            return
        key = QuestionKey(denial.pid, exe, request.op, tuple((o.obj, o.access) for o in objects))
        question = self._open.get(key)
        if question is not None and (pending is None or self.limits.may_wait()):
            question.count += 1
            if pending is None:
                for o in objects:
                    o.close()
            else:
                self.limits.joined()
                question.waiting.append(pending)
            return
        if question is not None or not self.limits.may_open(denial.pid):
            self._refuse(denial, objects, pending)
            return
        waiting: list[Pending | UnixPending] = [] if pending is None else [pending]
        kind, offered = scoping.offer(objects[0]) if objects else ("", [])
        denial = replace(
            denial, scopes=tuple(s.label for s in offered), scope_kind=kind
        )
        self._open[key] = Question(denial, objects, waiting, scopes=offered)
        self.limits.opened(denial.pid, len(waiting))
        nursery.start_soon(self._resolve, key, nursery)

    def _refuse(
        self,
        denial: Denial,
        objects: list[CheckedObject],
        pending: Pending | UnixPending | None,
    ) -> None:
        """Over a bound (see :mod:`.limits`): refused at once, without asking."""
        self.limits.refused += 1
        self._emit(denial.event(Answer.DENY) | {"over_limit": True})
        if isinstance(pending, UnixPending):
            pending.answer(False)  # refused; the pending owns its objects and closes them
            return
        if pending is None:
            for o in objects:
                o.close()
            return
        slot = self.rules.slot
        assert slot is not None
        carry_out(self._listener(), slot, pending, Decision(Answer.DENY), None)  # no wait

    def _is_quiet(self, objects: list[CheckedObject]) -> bool:
        return any(obj in self.rules.quiet for o in objects for obj in o.chain)

    async def _resolve(self, key: QuestionKey, nursery: trio.Nursery) -> None:

        question = self._open[key]
        if question.denial.protected:
            decision = Decision(Answer.DENY)  # nothing to ask: it could not be allowed
            kept: list[KeptRule] = []
            unbound: list[UnboundRule] = []
        elif self._is_quiet(question.objects):
            decision = Decision(Answer.DENY_QUIET)
            kept = []
            unbound = []
        else:
            decision = await self.decisions.decide(question.denial)
            kept, unbound = self._remember(question, decision, nursery)
        del self._open[key]
        scoping.close(question.scopes)
        denial = question.denial
        self.limits.closed(denial.pid, len(question.waiting))
        event = denial.event(decision.answer) | {"count": question.count}
        if denial.next_run_only:
            event["next_run_only"] = True
        if kept:
            event["rules"] = kept
        if unbound:
            event["unbound"] = unbound
        self._emit(event)
        if not question.waiting:  # exec: nothing to answer, only the objects to release
            for o in question.objects:
                o.close()
        slot = self.rules.slot
        assert slot is not None
        for pending in question.waiting:
            if isinstance(pending, UnixPending):
                pending.answer(decision.answer.allows)  # performed on the checked socket
                continue
            once = None
            if decision.answer in ONCE:
                for o in pending.objects:
                    self.rules.note_granted(o.obj, o.access)
                once = once_broker(self.rules.in_force, pending, self.rules.table)
            await carry_out_in_thread(self._listener(), slot, pending, decision, once)

    def _remember(
        self, question: Question, decision: Decision, nursery: trio.Nursery
    ) -> tuple[list[KeptRule], list[UnboundRule]]:
        """Keep what an answer says beyond this request: rules (always, for a while) and
        quiet objects, each bound to an object held since the check. Returns the rules kept
        as the event log reports them (what the policy file gets), and those in force whose
        path no longer leads to their object (reported, never written: a load would bind
        them elsewhere)."""
        if decision.answer not in (Answer.ALLOW_ALWAYS, Answer.ALLOW_FOR, Answer.DENY_QUIET):
            return [], []
        import trio

        rules = self.rules
        objects = question.objects
        kept: list[KeptRule] = []
        unbound: list[UnboundRule] = []
        permanent, quiet = rules.permanent, rules.quiet
        for o in objects:
            access = o.access
            if o is objects[0] and decision.access is not None:
                access |= decision.access & rules.static.handled_fs
            elif rules.static.fs_rights_on(o.chain) & access == access:
                continue  # e.g. the other end of a rename: the static rules already allow it
            scope = _chosen(question.scopes, decision.scope) if o is objects[0] else None
            if scope is not None:
                access = scope.rights(access)
                obj = rules.table.adopt(os.dup(scope.fd))
                label, holds = scope.label, scope.label_holds()
            else:
                obj = rules.table.adopt(os.dup(o.fd))
                label = rules.table.label(obj)
                holds = leads_to(label, obj)
            if decision.answer == Answer.DENY_QUIET:
                quiet = quiet | {obj}
                entry: KeptRule = {"quiet": label}
            elif decision.answer == Answer.ALLOW_ALWAYS:
                permanent = permanent.with_fs(obj, access, label)
                entry = {"path": label, "access": names(access)}
            else:
                seconds = decision.duration or 60.0
                deadline = trio.current_time() + seconds
                rules.grant_temporarily(Temporary(deadline, obj, access), seconds, nursery)
                kept.append({"path": label, "access": names(access), "seconds": seconds})
                continue  # never written: nothing resolves its path again
            if not holds:
                unbound.append({**entry, "reason": UNBOUND})
            elif not _writable(label):
                unbound.append({**entry, "reason": NOT_UTF8})
            else:
                kept.append(entry)
        if decision.answer != Answer.ALLOW_FOR:
            rules.replace(permanent, quiet)
        return kept, unbound

    def drop(self) -> None:
        """The run is over: close every waiting request (its listener closes: fails closed)."""
        for question in self._open.values():
            scoping.close(question.scopes)
            if not question.waiting:
                for o in question.objects:
                    o.close()
            for pending in question.waiting:
                pending.close()
        self._open.clear()
        self.limits.clear()


#: Why a kept rule is not written to the policy file.
UNBOUND = (
    "in force for this run, bound to the object that was checked, but not written to the "
    "policy file: its path no longer leads to that object (it was moved, or a symlink "
    "replaced a directory on the way)"
)


#: Why a kept rule whose path is not UTF-8 is not written to the policy file.
NOT_UTF8 = (
    "in force for this run, bound to the object that was checked, but not written to the "
    "policy file: its path is not valid UTF-8, which a TOML file cannot hold"
)


def _writable(label: str) -> bool:
    """Whether a policy file (UTF-8 TOML) can hold ``label`` (a byte that was not UTF-8 is
    a lone surrogate here)."""
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _chosen(offered: list[Scope], choice: str | int | None) -> Scope | None:
    """The offered scope ``choice`` names (label or index); the narrowest for anything else."""
    if not offered:
        return None
    if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(offered):
        return offered[choice]
    if isinstance(choice, str):
        for scope in offered:
            if scope.label == choice:
                return scope
    return offered[0]


def make_denial(
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
        pid=status_number(read_status(tid), b"Tgid", 10, tid),
        tid=tid,
        exe=exe,
        cmdline=cmdline,
        syscall=request.syscall,
        path=objects[0].label if objects else os.fsdecode(request.path),
        access=tuple(names(access)),
        generation=generation,
        next_run_only=request.op == "execute",
    )
