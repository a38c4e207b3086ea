"""The keys that ask first: permissive mode (``m``) and quitting while the command runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llsupervise.tui.controllers.notices import notify
from llsupervise.tui.screens import ConfirmScreen

if TYPE_CHECKING:
    from llsupervise.tui.app import SupervisorApp


class ModeSwitch:
    """``m``: permissive mode, once confirmed and only with no question open; and back."""

    def __init__(self, app: SupervisorApp) -> None:
        self.app = app

    def toggle(self) -> None:
        app, status = self.app, self.app.model.status
        if status.mode == "permissive":
            mode = status.policy_mode if status.policy_mode != "permissive" else "interactive"
            app.session.send({"type": "mode", "mode": mode})
            return
        if app.model.prompts.current is not None:
            # Permissive mode would allow the open questions at once: answer them yourself.
            notify(app, "Answer the open question(s) first: permissive mode would allow them.",
                   title="still permissive: no", severity="warning")  # fmt: skip
            return
        app.push_screen(
            ConfirmScreen(
                "Permissive mode?",
                "Every denied access will be ALLOWED without asking, and recorded, until you "
                "press m again. Quiet objects stay denied.",
                yes="allow everything", no="stay",
            ),
            self._confirmed,
        )  # fmt: skip

    def _confirmed(self, yes: bool | None) -> None:
        if yes and self.app.model.prompts.current is None:
            self.app.session.send({"type": "mode", "mode": "permissive"})
        elif yes:
            notify(self.app, "A question came meanwhile: answer it first.", severity="warning")


class Quitting:
    """Ctrl+Q: asks first while the command runs, then ends it (SIGTERM); again: kills it.
    The interface closes once the command has exited."""

    def __init__(self, app: SupervisorApp) -> None:
        self.app = app
        self.requests = 0

    def request(self) -> None:
        app = self.app
        if not app.session.local or app.exit_status is not None or app.failure is not None:
            app.exit(app.exit_status)
            return
        if not self.requests:
            if not isinstance(app.screen, ConfirmScreen):
                app.push_screen(
                    ConfirmScreen(
                        "Quit?",
                        "The command is still running. End it (SIGTERM) and quit?",
                        yes="end it and quit", no="keep running",
                    ),
                    self._confirmed,
                )  # fmt: skip
            return
        self.requests += 1
        force = self.requests > 1
        app.session.terminate(force)
        notify(app, "killing the command" if force
               else "ending the command (SIGTERM); ctrl+q again kills it")  # fmt: skip

    def _confirmed(self, yes: bool | None) -> None:
        if yes and self.app.exit_status is None:
            self.requests = 1
            self.app.session.terminate(False)
            notify(self.app, "ending the command (SIGTERM); ctrl+q again kills it")
        elif yes:
            self.app.exit(self.app.exit_status)
