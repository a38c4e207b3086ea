"""The terminal interface: live denial feed, questions, rules, status, the command's output.

:func:`build_app` is the one factory, used by the command line, the tests and the screenshot
script; what is shown comes from a :class:`~llsupervise.tui.session.Session`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import outcome
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import (
    Button,
    Footer,
    Input,
    RadioSet,
    Select,
    SelectionList,
    Static,
    TabbedContent,
    TabPane,
)

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError
from llsupervise.messages import Event, ReloadEvent, ServerMessage
from llsupervise.policies import DEFAULT_SOURCE
from llsupervise.policies.answers import KeptAnswers, check_new_file
from llsupervise.policy.document import PolicyDocument
from llsupervise.supervisor.events.model import Answer, EventLog, symlink_notes
from llsupervise.tui.model import FEED, PROMPT, RULES, STATUS, SessionModel
from llsupervise.tui.screens import ConfirmScreen, FileNameScreen, HelpScreen
from llsupervise.tui.session import LocalSession, RemoteSession, Session
from llsupervise.tui.terminal_pane import TerminalPane
from llsupervise.tui.tty import on_terminal, open_terminal
from llsupervise.tui.widgets import FeedView, PromptPanel, RulesView, StatusBar

#: Least time between two redraws of the feed and rules tables while denials pour in.
REDRAW_INTERVAL = 0.2


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
    TITLE = "llsupervise"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    TabbedContent { height: 1fr; }
    /* The views size themselves to the pane: a scrollbar here would only come and go. */
    TabPane { overflow: hidden hidden; }
    #output-note { padding: 1 2; }
    """
    # The answer keys are not in the footer: the question's buttons show them (underlined).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "answer('allow_once')", "once", show=False),
        Binding("t", "answer('allow_for')", "for a while", show=False),
        Binding("a", "answer('allow_always')", "always", show=False),
        Binding("d", "answer('deny')", "deny", show=False),
        Binding("q", "answer('deny_quiet')", "deny+quiet", show=False),
        Binding("s", "broader", "scope"),
        Binding("m", "toggle_mode", "permissive"),
        Binding("1", "show_tab('feed')", "denials", show=False),
        Binding("2", "show_tab('rules')", "rules", show=False),
        Binding("3", "show_tab('output')", "output", show=False),
        Binding("slash", "focus_filter", "filter"),
        Binding("w", "save_answers", "save answers"),
        Binding("escape", "leave_filter", "leave filter", show=False),
        Binding("question_mark,f1", "help", "help"),
        Binding("ctrl+t", "keyboard", "keyboard to command", priority=True),
        Binding("ctrl+q", "quit", "quit", priority=True),
    ]

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
        self._dirty: set[str] = set()
        self._redraw_scheduled = False
        self._last_redraw = 0.0
        self._quit_requests = 0
        #: Under the built-in policy: this run's "always" answers (no file keeps them) and the
        #: new file they are saved into at the end (``--save-answers``), if any.
        self.kept = KeptAnswers()
        self.save_path: str | None = None
        #: How many of them are saved in a file already (``w``).
        self.saved = 0

    # -- the session's side (called in this thread: trio is a guest here) -------------------

    def receive(self, message: ServerMessage) -> None:
        self.post_message(Incoming(message))

    def terminal_output(self, data: bytes) -> None:
        self.post_message(Output(data))

    def session_ended(self, result: outcome.Outcome[Any]) -> None:
        self.post_message(Ended(result))

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with TabbedContent(initial="feed", id="tabs"):
            with TabPane("Denials [1]", id="feed"):
                yield FeedView(id="feed-view")
            with TabPane("Rules [2]", id="rules"):
                yield RulesView(id="rules-view")
            with TabPane("Output [3]", id="output"):
                if self.session.local:
                    yield TerminalPane(self.session.write_input, id="terminal")
                else:
                    note = Text("The command's terminal is where it was started; this interface ")
                    note.append(f"is {escape(self.session.origin)}.")
                    yield Static(note, id="output-note")
        yield PromptPanel(self.clock, id="prompt", classes="-hidden")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(0.5, self._tick)
        self.session.start(self)

    async def on_unmount(self) -> None:
        await self.session.stop()

    def on_resize(self) -> None:
        pane = self.query_one(TerminalPane) if self.session.local else None
        if pane is not None and not pane.content_size.area:
            # The pane is not shown (another tab): its size once shown is the screen less
            # the header, the tabs, the footer and its border.
            rows, cols = max(self.size.height - 7, 2), max(self.size.width - 2, 10)
            pane.screen_.resize(rows, cols)
            self.session.resize(rows, cols)
        self._dirty |= {FEED, RULES}  # columns are cut to the width
        self._schedule_redraw()

    @on(TerminalPane.Resized)
    def _terminal_resized(self, event: TerminalPane.Resized) -> None:
        self.session.resize(event.size.height, event.size.width)

    @on(TerminalPane.Typing)
    def _typing(self) -> None:
        self.refresh_bindings()

    def _typing_pane(self) -> TerminalPane | None:
        if not self.session.local:
            return None
        pane = self.query_one(TerminalPane)
        return pane if pane.typing else None

    # -- rendering ------------------------------------------------------------------------

    def on_incoming(self, event: Incoming) -> None:
        message = event.message
        if message["type"] == "event":
            self._note_event(message["event"])
        refused = self.model.refused_exec
        changed = self.model.apply(message)
        if self.model.refused_exec is not refused and self.model.refused_exec is not None:
            denial = self.model.refused_exec
            self._notify(
                f"{escape(denial.path)} could not be executed: no static rule gives "
                f"{', '.join(denial.access)} on it. Add that to the policy (or answer its "
                "question with always): exec rules take effect on the next run.",
                title="the command was not run (status 126)", severity="error", timeout=30,
            )  # fmt: skip
        if PROMPT in changed and self.is_running:
            self._show_prompt()
        self._dirty |= changed - {PROMPT}
        self._schedule_redraw()

    def on_output(self, event: Output) -> None:
        if self.session.local and self.is_running:
            self.query_one(TerminalPane).feed(event.data)

    def on_ended(self, event: Ended) -> None:
        if isinstance(event.result, outcome.Error):
            self.failure = event.result.error
            self.exit(None, return_code=2)
            return
        self._dirty.add(STATUS)
        self._schedule_redraw()
        if self.session.hung_up:
            # Our terminal is gone: nobody can see or answer the interface, and restoring a
            # terminal that no longer exists hangs the interface's own shutdown. The log is
            # flushed per event and the supervisor has closed; the status is the command's.
            os._exit(self.exit_status if self.exit_status is not None else 1)
        if self._quit_requests:
            self.exit(self.exit_status)

    def _note_event(self, event: Event) -> None:
        """What an event tells the person beyond the tables: kept answers, reloads, rules
        through symlinks."""
        if self.model.status.policy == DEFAULT_SOURCE:
            before = len(self.kept)
            self.kept.on_event(event)
            if len(self.kept) > before and self.save_path is None:
                self._notify(
                    "Kept for this run only: the built-in policy is never written. "
                    "Press w to save this run's answers into a new policy file.",
                    title="answer kept", timeout=8,
                )  # fmt: skip
        if event["event"] == "reload":
            self._notify_reload(event)
        if event["event"] == "start":
            notes = symlink_notes(event)
            if notes:
                self._notify(escape("\n".join(notes)), title="rules through symlinks",
                             severity="warning", timeout=15)  # fmt: skip

    def _notify(self, message: str, **kwargs: Any) -> None:
        """A notification; never markup: it may quote paths and policy errors."""
        self.notify(message, markup=False, **kwargs)

    def _notify_reload(self, reload: ReloadEvent) -> None:
        if reload["ok"]:
            note = f"{self.model.status.policy}: generation {reload['generation']} in force"
            if "message" in reload:
                note += f"; {reload['message']}"
            self._notify(escape(note), title="policy reloaded")
        else:
            error = escape(reload.get("error", ""))
            self._notify(f"{error}\nThe rules in force are unchanged.",
                         title="policy reload REJECTED", severity="error", timeout=15)  # fmt: skip

    def _schedule_redraw(self) -> None:
        if not self._redraw_scheduled:
            self._redraw_scheduled = True
            delay = self._last_redraw + REDRAW_INTERVAL - time.monotonic()
            if delay > 0:
                self.set_timer(delay, self._redraw)
            else:
                self.call_later(self._redraw)

    def _redraw(self) -> None:
        self._redraw_scheduled = False
        if not self.is_running:
            return  # shutting down: the widgets are going away
        self._last_redraw = time.monotonic()
        dirty, self._dirty = self._dirty, set()
        model = self.model
        if FEED in dirty:
            self.query_one(FeedView).show(model.feed)
        if RULES in dirty:
            self.query_one(RulesView).show(model.rules, model.status, self.wall())
        if STATUS in dirty:
            attached = None if self.session.local else self.session.origin
            self.query_one(StatusBar).show(
                model.status, model.rules.generation, attached, model.rules.reload
            )
            self.refresh_bindings()

    def _show_prompt(self) -> None:
        prompts = self.model.prompts
        self.query_one(PromptPanel).show(
            prompts.current, prompts.waiting, self.model.status.default, prompts.error
        )
        self.refresh_bindings()

    def _tick(self) -> None:
        if self.is_running:
            self.query_one(PromptPanel).tick()
            if self.model.rules.temporary:  # their time left
                self._dirty.add(RULES)
                self._schedule_redraw()

    # -- actions --------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "keyboard":
            return self.session.local
        if self._typing_pane() is not None:
            return False  # every other key goes to the command, Ctrl+Q and Ctrl+C included
        question = self.model.prompts.current
        if action in ("answer", "broader") and question is None:
            return False
        if action == "save_answers":
            return bool(self.kept) and self.model.status.policy == DEFAULT_SOURCE
        if action == "answer" and parameters in (("allow_once",), ("allow_for",)):
            # An exec was refused already: shown, but greyed out.
            return None if question is not None and question.denial.next_run_only else True
        return True

    def _question_in_reach(self) -> bool:
        """Answer keys act on the Denials tab or with the question focused: a key typed on
        another tab (meant for something else) must not answer, let alone write a rule."""
        if self.query_one(TabbedContent).active == "feed":
            return True
        focused = self.focused
        return focused is not None and self.query_one(PromptPanel) in focused.ancestors_with_self

    def action_answer(self, answer: str, *, by_button: bool = False) -> None:
        question = self.model.prompts.current
        if question is None or self.check_action("answer", (answer,)) is not True:
            return
        if not by_button and not self._question_in_reach():
            self._notify(
                "Answer keys work on the Denials tab (1) or with the question focused "
                "(click it, or Tab to it).",
                title="not answered",
                severity="warning",
            )
            return
        if answer == Answer.ALLOW_ALWAYS and question.missing_rights():
            self.model.prompts.error = (
                f"the rule must grant what was asked ({', '.join(question.missing_rights())})"
            )
            self._show_prompt()
            return
        self.session.send(question.answer(Answer(answer)))

    def action_broader(self) -> None:
        question = self.model.prompts.current
        if question is not None:
            question.broader()
            panel = self.query_one(PromptPanel)
            panel.fill_scopes(question)
            panel.fill_rights(question)

    def action_toggle_mode(self) -> None:
        status = self.model.status
        if status.mode == "permissive":
            mode = status.policy_mode if status.policy_mode != "permissive" else "interactive"
            self.session.send({"type": "mode", "mode": mode})
            return
        if self.model.prompts.current is not None:
            # Permissive mode would allow the open questions at once: answer them yourself.
            self._notify("Answer the open question(s) first: permissive mode would allow them.",
                        title="still permissive: no", severity="warning")  # fmt: skip
            return

        def confirmed(yes: bool | None) -> None:
            if yes and self.model.prompts.current is None:
                self.session.send({"type": "mode", "mode": "permissive"})
            elif yes:
                self._notify("A question came meanwhile: answer it first.", severity="warning")

        self.push_screen(
            ConfirmScreen(
                "Permissive mode?",
                "Every denied access will be ALLOWED without asking, and recorded, until you "
                "press m again. Quiet objects stay denied.",
                yes="allow everything", no="stay",
            ),
            confirmed,
        )  # fmt: skip

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_save_answers(self) -> None:
        if not self.kept or self.model.status.policy != DEFAULT_SOURCE:
            return

        def check(name: str) -> str | None:
            try:
                check_new_file(name)
            except LLSuperviseError as exc:
                return str(exc)
            return None

        def chosen(name: str | None) -> None:
            if name is None:
                return
            try:
                self.kept.save(name)
            except LLSuperviseError as exc:
                self._notify(str(exc), title="not saved", severity="error")
                return
            self.saved = len(self.kept)
            self._notify(f"{len(self.kept)} answer(s) saved in {escape(name)}: run with "
                        f"--policy {escape(name)} to use them", title="saved")  # fmt: skip

        self.push_screen(
            FileNameScreen(
                "Save answers",
                f"The built-in policy is never written. Save it, with this run's "
                f"{len(self.kept)} answer(s), into a new policy file:",
                check,
            ),
            chosen,
        )  # fmt: skip

    def action_keyboard(self) -> None:
        """Give the keyboard to the command's terminal, or take it back."""
        if not self.session.local:
            return
        pane = self.query_one(TerminalPane)
        if pane.typing:
            pane.set_typing(False)
            self.set_focus(None)
        else:
            self.action_show_tab("output")
            pane.set_typing(True)

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_focus_filter(self) -> None:
        self.action_show_tab("feed")
        self.query_one("#filter", Input).focus()

    def action_leave_filter(self) -> None:
        self.set_focus(None)

    async def action_quit(self) -> None:
        status = self.model.status
        if self.session.local and status.exit_status is None and self.failure is None:
            if not self._quit_requests:
                if not isinstance(self.screen, ConfirmScreen):
                    self.push_screen(
                        ConfirmScreen(
                            "Quit?",
                            "The command is still running. End it (SIGTERM) and quit?",
                            yes="end it and quit", no="keep running",
                        ),
                        self._quit_confirmed,
                    )  # fmt: skip
                return
            self._quit_requests += 1
            force = self._quit_requests > 1
            self.session.terminate(force)
            self._notify(
                "killing the command" if force
                else "ending the command (SIGTERM); ctrl+q again kills it"
            )  # fmt: skip
            return
        self.exit(self.exit_status)

    def save_at_exit(self) -> None:
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

    def _quit_confirmed(self, yes: bool | None) -> None:
        if yes and self.model.status.exit_status is None:
            self._quit_requests = 1
            self.session.terminate(False)
            self._notify("ending the command (SIGTERM); ctrl+q again kills it")
        elif yes:
            self.exit(self.exit_status)

    @property
    def exit_status(self) -> int | None:
        return self.model.status.exit_status

    # -- widget events --------------------------------------------------------------------

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._dirty.add(FEED)
        self._schedule_redraw()

    @on(RadioSet.Changed, ".scope")
    def _scope_changed(self, event: RadioSet.Changed) -> None:
        question = self.model.prompts.current
        if question is not None and event.index != question.scope_index:
            question.choose_scope(event.index)
            self.query_one(PromptPanel).fill_rights(question)

    @on(SelectionList.SelectedChanged, "#rights")
    def _rights_changed(self, event: SelectionList.SelectedChanged[str]) -> None:
        question = self.model.prompts.current
        if question is not None:
            question.set_rights(list(event.selection_list.selected))

    @on(Select.Changed, "#duration")
    def _duration_changed(self, event: Select.Changed) -> None:
        question = self.model.prompts.current
        if question is not None and isinstance(event.value, float):
            question.duration = event.value

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        if event.button.id in {a.value for a in Answer}:
            self.action_answer(str(event.button.id), by_button=True)


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
        app.save_path = save_answers
        with on_terminal(terminal):
            app.run()
        status = _finish(app, session.exit_status)
    finally:
        log.close()
    app.save_at_exit()
    return status


def run_attach(path: str) -> int:
    """``llsupervise attach SOCKET``: 0 once the user detaches."""
    terminal = open_terminal()
    app = build_app(RemoteSession(path))
    with on_terminal(terminal):
        app.run()
    return _finish(app, 0)
