"""Conditional rules: a denied request whose requester matches them is served without
asking, by a one-shot broker restricted with the rules in force plus the matching ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llsupervise.policy.conditions import (
    ConditionalRule,
    Requester,
    cgroup_v2_path,
    covers,
    matching,
)
from llsupervise.seccomp import Listener
from llsupervise.supervisor.engine.pending import Pending
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.supervisor.perform.broker import Broker, kernel_ruleset
from llsupervise.supervisor.questions.answering import carry_out_in_thread
from llsupervise.supervisor.rules.state import RuleState

if TYPE_CHECKING:  # imported where used: a run starts before trio (supervisor.door)
    import trio

    from llsupervise.messages import Event


class ConditionalGrants:
    def __init__(
        self,
        rules: RuleState,
        listener: Callable[[], Listener | None],
        emit: Callable[[Event], None],
    ) -> None:
        self.rules = rules
        self._listener = listener
        self._emit = emit

    def grant(self, pending: Pending, denial: Denial, nursery: trio.Nursery) -> bool:
        """Serve ``pending`` without asking when conditional rules matching its requester
        cover every checked object; False when they do not (it is asked about)."""
        if not self.rules.conditional:
            return False
        n = pending.notification
        requester = Requester(None if pending.exe == "?" else pending.exe, _cgroup(n.pid))
        matched = matching(self.rules.conditional, requester)
        if not matched:
            return False
        base = self.rules.in_force
        if not all(covers(matched, base.fs_rights_on(o.chain), o.chain, o.access)
                   for o in pending.objects):  # fmt: skip
            return False
        listener = self._listener()
        if listener is None or listener.closed or not listener.id_valid(n.id):
            pending.close()  # the requester is gone: what was read of it may be another's
            return True
        nursery.start_soon(self._serve, pending, denial, matched)
        return True

    async def _serve(
        self, pending: Pending, denial: Denial, matched: list[ConditionalRule]
    ) -> None:
        extra = self.rules.in_force
        for rule in matched:
            extra = extra.with_fs(rule.obj, rule.access)
            self.rules.note_granted(rule.obj, rule.access)
        try:
            broker: Broker | None = Broker(
                kernel_ruleset(extra, self.rules.table), "broker-conditional"
            )
        except Exception:
            broker = None  # the answer below then fails closed
        granted_by = sorted({rule.label for rule in matched})
        # Not a person's answer: the event says which rule granted it.
        event = denial.event(Answer.CONDITIONAL)
        event["granted_by"] = granted_by
        self._emit(event)
        slot = self.rules.slot
        assert slot is not None
        await carry_out_in_thread(
            self._listener(), slot, pending, Decision(Answer.CONDITIONAL), broker
        )


def _cgroup(tid: int) -> str | None:
    """The thread's cgroup v2 path, None when unknown (the thread is gone, no cgroup v2)."""
    try:
        with open(f"/proc/{tid}/cgroup", encoding="utf-8", errors="replace") as f:
            return cgroup_v2_path(f.read())
    except OSError:
        return None
