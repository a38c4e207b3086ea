"""The interface's screen: the status bar, the Denials, Rules and Output tabs, the question,
and the keys that act on them."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Static, TabbedContent, TabPane

from llsupervise.display import escape
from llsupervise.supervisor.events.model import Answer
from llsupervise.tui.model import FEED, RULES
from llsupervise.tui.screens import HelpScreen
from llsupervise.tui.terminal.pane import TerminalPane
from llsupervise.tui.widgets import FeedView, PromptPanel, RulesView, StatusBar

if TYPE_CHECKING:
    from llsupervise.tui.app import SupervisorApp


class MainScreen(Screen[None]):
    """Its keys dispatch to the app's parts: answering, the mode switch, saving, quitting."""

    # The answer keys are not in the footer: the question's buttons show them (underlined).
    BINDINGS: ClassVar[list[BindingType]] = [
        # The app's key (it works over every screen), shown here, first in the footer.
        Binding("ctrl+q", "app.quit", "quit", priority=True),
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
    ]

    def __init__(self, interface: SupervisorApp) -> None:
        super().__init__()
        self.interface = interface

    def compose(self) -> ComposeResult:
        session = self.interface.session
        yield StatusBar(id="status")
        with TabbedContent(initial="feed", id="tabs"):
            with TabPane("Denials [1]", id="feed"):
                yield FeedView(id="feed-view")
            with TabPane("Rules [2]", id="rules"):
                yield RulesView(id="rules-view")
            with TabPane("Output [3]", id="output"):
                if session.local:
                    yield TerminalPane(session.write_input, session.resize, id="terminal")
                else:
                    note = Text("The command's terminal is where it was started; this interface ")
                    note.append(f"is {escape(session.origin)}.")
                    yield Static(note, id="output-note")
        yield PromptPanel(self.interface.clock, id="prompt", classes="-hidden")
        yield Footer()

    def on_mount(self) -> None:
        # The command's terminal gets its size before the command starts: a size set after
        # it has read one reaches it only as a SIGWINCH, lost if it comes before the command
        # has a handler for it (less, under load, then drew a page of the wrong height).
        self.on_resize()
        self.interface.start()

    def on_resize(self) -> None:
        session = self.interface.session
        pane = self.query_one(TerminalPane) if session.local else None
        if pane is not None and not pane.content_size.area:
            # The pane is not shown (another tab): its size once shown is the screen less
            # the header, the tabs, the footer and its border.
            size = self.app.size  # the screen's own is not known yet when mounted
            rows, cols = max(size.height - 7, 2), max(size.width - 2, 10)
            pane.screen_.resize(rows, cols)
            session.resize(rows, cols)
        self.interface.redraw.mark(FEED, RULES)  # columns are cut to the width

    @property
    def typing(self) -> bool:
        """The command's terminal has the keyboard."""
        return self.interface.session.local and self.query_one(TerminalPane).typing

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        interface = self.interface
        if action == "keyboard":
            return interface.session.local
        if self.typing:
            return False  # every other key goes to the command, Ctrl+Q and Ctrl+C included
        if action == "answer":
            return interface.answering.offered(str(parameters[0]))
        if action == "broader":
            return interface.model.prompts.current is not None
        if action == "save_answers":
            return interface.saving.possible
        return True

    def action_answer(self, answer: str) -> None:
        self.interface.answering.answer(answer)

    def action_broader(self) -> None:
        self.interface.answering.broader()

    def action_toggle_mode(self) -> None:
        self.interface.mode_switch.toggle()

    def action_save_answers(self) -> None:
        self.interface.saving.ask_for_a_file()

    def action_help(self) -> None:
        if not isinstance(self.app.screen, HelpScreen):
            self.app.push_screen(HelpScreen())

    def action_keyboard(self) -> None:
        """Give the keyboard to the command's terminal, or take it back."""
        if not self.interface.session.local:
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

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.interface.redraw.mark(FEED)

    @on(Button.Pressed, "PromptPanel Button")
    def _button(self, event: Button.Pressed) -> None:
        if event.button.id in {a.value for a in Answer}:
            self.interface.answering.answer(str(event.button.id), by_button=True)
