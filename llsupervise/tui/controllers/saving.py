"""Under the built-in policy, no file keeps the "always" answers: they are kept for the run,
and saved into a new policy file that the user names (``w``, or ``--save-answers FILE``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError
from llsupervise.messages import ServerMessage
from llsupervise.policies import DEFAULT_SOURCE
from llsupervise.policies.answers import KeptAnswers, check_new_file
from llsupervise.tui.controllers.notices import notify
from llsupervise.tui.screens import FileNameScreen

if TYPE_CHECKING:
    from textual.app import App

    from llsupervise.tui.model import SessionModel


class AnswerSaving:
    """This run's kept answers, the file they go into at the end (if any), and ``w``."""

    def __init__(self, app: App[Any], model: SessionModel) -> None:
        self.app = app
        self.model = model
        self.kept = KeptAnswers()
        #: The new file they are saved into at the end (``--save-answers``), if any.
        self.save_path: str | None = None
        #: How many of them are saved in a file already (``w``).
        self.saved = 0

    @property
    def possible(self) -> bool:
        """There is something to save, and no policy file would keep it otherwise."""
        return bool(self.kept) and self.model.status.policy == DEFAULT_SOURCE

    def on_message(self, message: ServerMessage) -> None:
        if message["type"] != "event" or self.model.status.policy != DEFAULT_SOURCE:
            return
        before = len(self.kept)
        self.kept.on_event(message["event"])
        if len(self.kept) > before and self.save_path is None:
            notify(
                self.app,
                "Kept for this run only: the built-in policy is never written. "
                "Press w to save this run's answers into a new policy file.",
                title="answer kept", timeout=8,
            )  # fmt: skip

    def ask_for_a_file(self) -> None:
        """``w``: the file name dialog, then the saving."""
        if not self.possible:
            return

        def check(name: str) -> str | None:
            try:
                check_new_file(name)
            except LLSuperviseError as exc:
                return str(exc)
            return None

        self.app.push_screen(
            FileNameScreen(
                "Save answers",
                f"The built-in policy is never written. Save it, with this run's "
                f"{len(self.kept)} answer(s), into a new policy file:",
                check,
            ),
            self._chosen,
        )  # fmt: skip

    def _chosen(self, name: str | None) -> None:
        if name is None:
            return
        try:
            self.kept.save(name)
        except LLSuperviseError as exc:
            notify(self.app, str(exc), title="not saved", severity="error")
            return
        self.saved = len(self.kept)
        notify(self.app, f"{len(self.kept)} answer(s) saved in {escape(name)}: run with "
               f"--policy {escape(name)} to use them", title="saved")  # fmt: skip

    def at_exit(self) -> None:
        """After the interface closed: save or mention the answers no file keeps."""
        if len(self.kept) <= self.saved:
            return
        if self.save_path is not None:
            try:
                self.kept.save(self.save_path)
            except LLSuperviseError as exc:  # the command's status still comes through
                print(f"llsupervise: {escape(str(exc))}", file=sys.stderr, flush=True)
                return
            print(f"llsupervise: {len(self.kept)} answer(s) saved in {escape(self.save_path)}",
                  file=sys.stderr, flush=True)  # fmt: skip
        else:
            print(f"llsupervise: {len(self.kept)} answer(s) were kept for this run only (not "
                  "saved; press w in the interface, or run with --save-answers FILE)",
                  file=sys.stderr, flush=True)  # fmt: skip
