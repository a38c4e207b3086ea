"""Notifications about what the session reports: reloads, rules through symlinks, a command
that could not be executed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llsupervise.display import escape
from llsupervise.messages import ReloadEvent, ServerMessage
from llsupervise.supervisor.events.model import own_layer_note, stall_note, symlink_notes

if TYPE_CHECKING:
    from textual.app import App

    from llsupervise.tui.model import SessionModel


def notify(app: App[Any], message: str, **kwargs: Any) -> None:
    """A notification; never markup: it may quote paths and policy errors."""
    app.notify(message, markup=False, **kwargs)


class Notices:
    """Turns protocol messages into notifications; :meth:`before` and :meth:`after` are
    called around the model's taking each message."""

    def __init__(self, app: App[Any], model: SessionModel) -> None:
        self.app = app
        self.model = model
        self._refused = model.refused_exec

    def before(self, message: ServerMessage) -> None:
        if message["type"] == "event":
            event = message["event"]
            if event["event"] == "reload":
                self._reload(event)
            elif event["event"] == "start":
                notes = symlink_notes(event)
                if notes:
                    notify(self.app, escape("\n".join(notes)), title="rules through symlinks",
                           severity="warning", timeout=15)  # fmt: skip
            elif event["event"] == "stall":
                notify(self.app, escape(stall_note(event)), title="a filesystem did not answer",
                       severity="warning", timeout=15)  # fmt: skip
            elif event["event"] == "own_layer":
                notify(self.app, escape(own_layer_note(event)), title="the program sandboxed "
                       "itself", severity="warning", timeout=30)  # fmt: skip
        self._refused = self.model.refused_exec

    def after(self) -> None:
        denial = self.model.refused_exec
        if denial is not self._refused and denial is not None:
            notify(
                self.app,
                f"{escape(denial.path)} could not be executed: no static rule gives "
                f"{', '.join(denial.access)} on it. Add that to the policy (or answer its "
                "question with always): exec rules take effect on the next run.",
                title="the command was not run (status 126)", severity="error", timeout=30,
            )  # fmt: skip

    def _reload(self, reload: ReloadEvent) -> None:
        if reload["ok"]:
            note = f"{self.model.status.policy}: generation {reload['generation']} in force"
            if "message" in reload:
                note += f"; {reload['message']}"
            notify(self.app, escape(note), title="policy reloaded")
        else:
            error = escape(reload.get("error", ""))
            notify(self.app, f"{error}\nThe rules in force are unchanged.",
                   title="policy reload REJECTED", severity="error", timeout=15)  # fmt: skip
