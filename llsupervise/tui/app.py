"""The terminal interface: live denial feed, questions, rules, status, the command's output.

:func:`build_app` is the one factory, used by the command line, the tests and the screenshot
script; what is shown comes from a :class:`~llsupervise.tui.session.Session`.

The app takes the session's messages. The main screen (:mod:`~llsupervise.tui.main_screen`)
holds the layout and the keys; :mod:`~llsupervise.tui.controllers` what they do, one concern
each; :mod:`~llsupervise.tui.terminal` the command's terminal pane.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import outcome
from textual.app import App
from textual.message import Message

from llsupervise.errors import LLSuperviseError
from llsupervise.messages import ServerMessage
from llsupervise.policies.answers import KeptAnswers
from llsupervise.policy.document import PolicyDocument
from llsupervise.supervisor.events.model import EventLog
from llsupervise.tui.controllers.answering import Answering
from llsupervise.tui.controllers.confirmations import ModeSwitch, Quitting
from llsupervise.tui.controllers.notices import Notices
from llsupervise.tui.controllers.redraw import Redrawer
from llsupervise.tui.controllers.saving import AnswerSaving
from llsupervise.tui.main_screen import MainScreen
from llsupervise.tui.model import PROMPT, STATUS, SessionModel
from llsupervise.tui.session import LocalSession, RemoteSession, Session
from llsupervise.tui.terminal.pane import TerminalPane
from llsupervise.tui.tty import on_terminal, open_terminal


class Incoming(Message):
    """A protocol message from the session."""

    def __init__(self, message: ServerMessage) -> None:
        super().__init__()
        self.message = message


class Output(Message):
    """Bytes from the command's terminal, as it wrote them."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


class Ended(Message):
    def __init__(self, result: outcome.Outcome[Any]) -> None:
        super().__init__()
        self.result = result


class SupervisorApp(App[int]):
    """The session's side: protocol messages into the model, the command's output into its
    terminal pane, the end of the session; the parts below do the rest."""

    TITLE = "llsupervise"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    TabbedContent { height: 1fr; }
    /* The views size themselves to the pane: a scrollbar here would only come and go. */
    TabPane { overflow: hidden hidden; }
    #output-note { padding: 1 2; }
    """
    # Ctrl+Q: textual's own binding (quit), here over every screen; shown by the main screen.

    def __init__(
        self,
        session: Session,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` times questions; ``wall`` (epoch seconds) the temporary grants' time left."""
        super().__init__()
        self.session = session
        self.clock = clock
        self.wall = wall
        self.model = SessionModel(clock)
        #: The exception that ended the session, if it failed.
        self.failure: BaseException | None = None
        self.main = MainScreen(self)
        self.redraw = Redrawer(self)
        self.notices = Notices(self, self.model)
        self.saving = AnswerSaving(self, self.model)
        self.answering = Answering(self)
        self.mode_switch = ModeSwitch(self)
        self.quitting = Quitting(self)

    def get_default_screen(self) -> MainScreen:
        return self.main

    # -- the session's side (called in this thread: trio is a guest here) -------------------

    def receive(self, message: ServerMessage) -> None:
        self.post_message(Incoming(message))

    def terminal_output(self, data: bytes) -> None:
        self.post_message(Output(data))

    def session_ended(self, result: outcome.Outcome[Any]) -> None:
        self.post_message(Ended(result))

    def start(self) -> None:
        """Once the main screen is composed: messages may be shown from now on."""
        self.set_interval(0.5, self.redraw.tick)
        self.session.start(self)

    async def on_unmount(self) -> None:
        await self.session.stop()

    def on_incoming(self, event: Incoming) -> None:
        message = event.message
        self.saving.on_message(message)
        self.notices.before(message)
        changed = self.model.apply(message)
        self.notices.after()
        if PROMPT in changed and self.is_running:
            self.answering.show()
        self.redraw.mark(*(changed - {PROMPT}))

    def on_output(self, event: Output) -> None:
        if self.session.local and self.is_running:
            self.main.query_one(TerminalPane).feed(event.data)

    def on_ended(self, event: Ended) -> None:
        if isinstance(event.result, outcome.Error):
            self.failure = event.result.error
            self.exit(None, return_code=2)
            return
        self.redraw.mark(STATUS)
        if self.session.hung_up:
            # Our terminal is gone: nobody can see or answer the interface, and restoring a
            # terminal that no longer exists hangs the interface's own shutdown. The log is
            # flushed per event and the supervisor has closed; the status is the command's.
            os._exit(self.exit_status if self.exit_status is not None else 1)
        if self.quitting.requests:
            self.exit(self.exit_status)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "quit" and self.main.is_mounted:
            return not self.main.typing  # Ctrl+Q goes to the command while it has the keyboard
        return True

    async def action_quit(self) -> None:
        self.quitting.request()

    @property
    def exit_status(self) -> int | None:
        return self.model.status.exit_status

    @property
    def kept(self) -> KeptAnswers:
        """This run's "always" answers that no file keeps (under the built-in policy)."""
        return self.saving.kept


def build_app(
    session: Session,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> SupervisorApp:
    """The interface over ``session`` (local supervisor, attached socket, or fixed data)."""
    return SupervisorApp(session, clock=clock, wall=wall)


def _finish(app: SupervisorApp, status: int | None) -> int:
    if app.failure is not None:
        if isinstance(app.failure, LLSuperviseError):
            raise app.failure
        raise LLSuperviseError(f"the supervisor failed: {app.failure!r}") from app.failure
    return 0 if status is None else status


def run_tui(
    document: PolicyDocument,
    argv: Sequence[str],
    *,
    log_path: str | None = None,
    watch: bool = False,
    save_answers: str | None = None,
) -> int:
    """``llsupervise run``: the command's exit status once the user quits. ``save_answers``:
    under the built-in policy, the new file its "always" answers are saved into at the end."""
    terminal = open_terminal()
    try:
        log = EventLog.open(log_path)  # before the terminal takes stderr: --log /dev/stderr
    except BaseException:
        os.close(terminal)
        raise
    log.write({"event": "policy", "source": document.source})
    try:
        session = LocalSession(document, argv, log=log, watch=watch)
        app = build_app(session)
        app.saving.save_path = save_answers
        with on_terminal(terminal):
            app.run()
        status = _finish(app, session.exit_status)
    finally:
        log.close()
    app.saving.at_exit()
    return status


def run_attach(path: str) -> int:
    """``llsupervise attach SOCKET``: 0 once the user detaches."""
    terminal = open_terminal()
    app = build_app(RemoteSession(path))
    with on_terminal(terminal):
        app.run()
    return _finish(app, 0)
