"""Screens over the interface: the key help, a yes/no confirmation, a file name prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from llsupervise.display import escape

#: Every key of the interface, by where it works: (key, what it does).
KEYS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Anywhere", (
        ("?  F1", "this help"),
        ("1 2 3", "the Denials, Rules, Output tab"),
        ("/", "filter the denials"),
        ("Esc", "leave the filter; close this help or a question window"),
        ("m", "permissive mode and back (asks first; not while a question is open)"),
        ("w", "save this run's answers into a new policy file (built-in policy)"),
        ("Ctrl+Q", "quit (asks first while the command runs; twice: kill it)"),
    )),
    ("A question (on the Denials tab, or with the question focused)", (
        ("o", "allow once"),
        ("t", "allow for the chosen duration"),
        ("a", "allow always (a rule; written into the policy file, if any)"),
        ("d", "deny"),
        ("q", "deny, and stop asking about it (quiet)"),
        ("s", "a broader scope for the rule: its directory, a parent"),
        ("Tab", "move between scope, rights, duration and the buttons"),
    )),
    ("Output tab", (
        ("Ctrl+T  Enter", "give the keyboard to the command (its terminal)"),
        ("Ctrl+T", "take the keyboard back (while the command has it)"),
    )),
)  # fmt: skip


def key_text() -> Text:
    """The help: a heading per place, then one key per line."""
    width = max(len(key) for _, keys in KEYS for key, _ in keys) + 2
    text = Text()
    for title, keys in KEYS:
        text.append(title + "\n", style="bold underline")
        for key, what in keys:
            text.append(key.ljust(width), style="bold yellow")
            text.append(what + "\n")
        text.append("\n")
    return text


class HelpScreen(ModalScreen[None]):
    """Every key, by where it works. Any of Esc, q, ? closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%; border: heavy $accent;
        background: $panel; padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "dismiss_help", "close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            scroll.border_title = "Keys (Esc closes)"
            yield Static(key_text(), id="help-keys")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A question with yes (y, Enter on the button) and no (n, Esc)."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 70; max-width: 95%; height: auto; border: heavy $warning;
        background: $panel; padding: 0 1;
    }
    ConfirmScreen #confirm-text { height: auto; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: 1; }
    ConfirmScreen Button { margin: 0 2 0 0; width: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, title: str, text: str, yes: str = "yes", no: str = "no") -> None:
        super().__init__()
        self.title_text, self.text, self.yes, self.no = title, text, yes, no

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self.title_text
            yield Static(Text(self.text), id="confirm-text")
            with Horizontal():
                # Text, not a string: "[y]" would be read as markup.
                yield Button(Text(f"[y] {self.yes}"), id="yes", variant="warning", compact=True)
                yield Button(Text(f"[n] {self.no}"), id="no", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class FileNameScreen(ModalScreen[str | None]):
    """Asks for a file name; ``check`` says why a name will not do (None: it will)."""

    DEFAULT_CSS = """
    FileNameScreen { align: center middle; }
    FileNameScreen > Vertical {
        width: 76; max-width: 98%; height: auto; border: heavy $accent;
        background: $panel; padding: 0 1;
    }
    FileNameScreen Static { height: auto; }
    FileNameScreen #file-error { color: $error; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str, text: str, check: Callable[[str], str | None]) -> None:
        super().__init__()
        self.title_text, self.text, self.check = title, text, check

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self.title_text
            yield Static(Text(self.text))
            yield Input(placeholder="new file, e.g. my-policy.toml", id="file-name")
            yield Static(id="file-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        problem = "name a file" if not name else self.check(name)
        if problem is not None:
            self.query_one("#file-error", Static).update(Text(escape(problem)))
            return
        self.dismiss(name)

    def action_cancel(self) -> None:
        self.dismiss(None)


def all_keys() -> Sequence[str]:
    """Every key the help lists (for tests: each must be bound somewhere)."""
    return [key for _, keys in KEYS for key, _ in keys]
