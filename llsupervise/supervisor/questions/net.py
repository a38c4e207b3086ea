"""Questions about network denials: one per (program, direction, port); the answer is
remembered as a port rule (always, for a while) or a quiet port, and carried out by the
network mediator for every waiting request."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessNet, names
from llsupervise.supervisor.events.decisions import DecisionSource
from llsupervise.supervisor.events.model import Answer, Decision
from llsupervise.supervisor.questions.answering import ONCE
from llsupervise.supervisor.rules.state import RuleState, Temporary

if TYPE_CHECKING:  # imported where used: a run starts before trio (supervisor.door), and
    import trio  # loads the network mediator only when the policy handles the network

    from llsupervise.messages import Event, KeptRule
    from llsupervise.supervisor.net.mediator import NetMediator
    from llsupervise.supervisor.net.tcp import PendingNet


class NetQuestionKey(NamedTuple):
    exe: str
    direction: str
    port: int


class NetQuestions:
    def __init__(
        self,
        rules: RuleState,
        decisions: DecisionSource,
        mediator: Callable[[], NetMediator | None],
        emit: Callable[[Event], None],
    ) -> None:
        self.rules = rules
        self.decisions = decisions
        self._mediator = mediator
        self._emit = emit
        self._open: dict[NetQuestionKey, list[PendingNet]] = {}
        #: Ports answered "deny quietly" during this run (the policy format has no quiet port).
        self.quiet_ports: set[tuple[int, AccessNet]] = set()

    def ask(self, pending: PendingNet, nursery: trio.Nursery) -> None:
        key = NetQuestionKey(pending.exe, pending.direction, pending.port)
        waiting = self._open.get(key)
        if waiting is not None:
            waiting.append(pending)
            return
        self._open[key] = [pending]
        nursery.start_soon(self._resolve, key, nursery)

    async def _resolve(self, key: NetQuestionKey, nursery: trio.Nursery) -> None:
        from llsupervise.supervisor.net.tcp import once  # asked only with a mediator

        first = self._open[key][0]
        if (first.port, first.access) in self.quiet_ports:
            decision = Decision(Answer.DENY_QUIET)
        else:
            decision = await self.decisions.decide(first.denial())
        waiting = self._open.pop(key)
        kept = self._remember(first, decision, nursery)
        event = first.event(decision.answer, len(waiting))
        if kept:
            event["rules"] = kept
        self._emit(event)
        for pending in waiting:
            grant: Ruleset | None = None
            if decision.answer in ONCE:
                grant = once(self.rules.in_force, pending)
            elif decision.answer in (Answer.ALLOW_ALWAYS, Answer.ALLOW_FOR):
                grant = self.rules.in_force
            mediator = self._mediator()
            if mediator is None:
                pending.close()
            else:
                mediator.answer(pending, grant)

    def _remember(
        self, first: PendingNet, decision: Decision, nursery: trio.Nursery
    ) -> list[KeptRule]:
        answer = decision.answer
        if answer == Answer.DENY_QUIET:
            self.quiet_ports.add((first.port, first.access))
        elif answer == Answer.ALLOW_ALWAYS:
            self.rules.replace(self.rules.permanent.with_net(first.port, first.access))
            return [{"port": first.port, "access": names(first.access)}]
        elif answer == Answer.ALLOW_FOR:
            import trio

            seconds = decision.duration or 60.0
            temporary = Temporary(
                trio.current_time() + seconds, port=first.port, net_access=first.access
            )
            self.rules.grant_temporarily(temporary, seconds, nursery)
            return [{"port": first.port, "access": names(first.access), "seconds": seconds}]
        return []

    def drop(self) -> None:
        for waiting in self._open.values():
            for pending in waiting:
                pending.close()
        self._open.clear()
