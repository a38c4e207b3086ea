"""Where answers to denials come from: the policy's mode, and optionally a front-end."""

from __future__ import annotations

from typing import Protocol

from llsupervise.policy.document import Default, Mode
from llsupervise.supervisor.events.model import Answer, Decision, Denial


class Frontend(Protocol):
    """Something that can ask a person (the TUI, an attached client)."""

    async def ask(self, denial: Denial) -> Decision: ...


class DecisionSource(Protocol):
    async def decide(self, denial: Denial) -> Decision: ...


class ModeDecisions:
    """``enforce`` denies, ``permissive`` grants and records, ``interactive`` asks.

    Without a front-end (headless) an interactive policy applies its ``default`` at once;
    with one, the default applies when ``prompt_timeout`` passes without an answer.
    """

    def __init__(
        self,
        mode: Mode,
        default: Default = "deny",
        prompt_timeout: float = 30.0,
        frontend: Frontend | None = None,
    ) -> None:
        self.mode = mode
        self.default = default
        self.prompt_timeout = prompt_timeout
        self.frontend = frontend

    async def decide(self, denial: Denial) -> Decision:
        if denial.protected:
            # The control plane: denied in every mode (permissive and allow_once included).
            return Decision(Answer.DENY)
        if self.mode == "enforce":
            return Decision(Answer.DENY)
        if self.mode == "permissive":
            return Decision(Answer.PERMISSIVE)
        if self.frontend is None:
            return Decision(Answer.ALLOW_ONCE if self.default == "allow_once" else Answer.DENY)
        import trio  # imported here: a run starts before trio (supervisor.door)

        with trio.move_on_after(self.prompt_timeout):
            return await self.frontend.ask(denial)
        if self.default == "allow_once":
            return Decision(Answer.ALLOW_ONCE)
        return Decision(Answer.TIMEOUT_DENY)
