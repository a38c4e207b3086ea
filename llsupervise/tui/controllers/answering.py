"""Answering the question shown: which answers apply now, where an answer key may act, and
sending the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.widgets import TabbedContent

from llsupervise.supervisor.events.model import Answer
from llsupervise.tui.controllers.notices import notify
from llsupervise.tui.widgets import PromptPanel

if TYPE_CHECKING:
    from llsupervise.tui.app import SupervisorApp


class Answering:
    """The answer keys (o t a d q), the question's buttons, and ``s`` (a broader scope)."""

    def __init__(self, app: SupervisorApp) -> None:
        self.app = app

    def offered(self, answer: str) -> bool | None:
        """For ``check_action``: False with no question; None (shown, greyed out) for an
        answer the question cannot take."""
        question = self.app.model.prompts.current
        if question is None:
            return False
        if answer in (Answer.ALLOW_ONCE, Answer.ALLOW_FOR) and question.denial.next_run_only:
            return None  # an exec was refused already: only a rule for the next run helps
        return True

    def in_reach(self) -> bool:
        """Answer keys act on the Denials tab or with the question focused: a key typed on
        another tab (meant for something else) must not answer, let alone write a rule."""
        main = self.app.main
        if main.query_one(TabbedContent).active == "feed":
            return True
        focused = self.app.focused
        return focused is not None and main.query_one(PromptPanel) in focused.ancestors_with_self

    def answer(self, answer: str, *, by_button: bool = False) -> None:
        question = self.app.model.prompts.current
        if question is None or self.offered(answer) is not True:
            return
        if not by_button and not self.in_reach():
            notify(
                self.app,
                "Answer keys work on the Denials tab (1) or with the question focused "
                "(click it, or Tab to it).",
                title="not answered",
                severity="warning",
            )
            return
        if answer == Answer.ALLOW_ALWAYS and question.missing_rights():
            self.app.model.prompts.error = (
                f"the rule must grant what was asked ({', '.join(question.missing_rights())})"
            )
            self.show()
            return
        self.app.session.send(question.answer(Answer(answer)))

    def broader(self) -> None:
        self.app.main.query_one(PromptPanel).broader()

    def show(self) -> None:
        """The panel shows the current question (or hides)."""
        prompts = self.app.model.prompts
        self.app.main.query_one(PromptPanel).show(
            prompts.current, prompts.waiting, self.app.model.status.default, prompts.error
        )
        self.app.refresh_bindings()
