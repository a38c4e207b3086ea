"""The Output pane as a terminal: the command's pty drawn through a terminal emulator (pyte),
and, when the user gives it the keyboard, every key sent to the command.

What the program writes only ever reaches the screen as characters in a grid: escape
sequences are interpreted by pyte (:mod:`~llsupervise.tui.terminal.emulator`), never passed
on to our terminal, and a character that could still move or hide text (controls, bidi
overrides, zero widths) is shown as "?"."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.strip import Strip
from textual.widget import Widget

from llsupervise.tui.terminal.emulator import Screen, Stream

#: pyte's private mode numbers are shifted by 5; DECCKM (1): cursor keys in application mode.
_DECCKM = 1 << 5

#: Keys that are not characters, as a VT220-like terminal sends them.
_KEYS = {
    "enter": "\r", "tab": "\t", "shift+tab": "\x1b[Z", "backspace": "\x7f", "escape": "\x1b",
    "delete": "\x1b[3~", "insert": "\x1b[2~", "home": "\x1b[H", "end": "\x1b[F",
    "pageup": "\x1b[5~", "pagedown": "\x1b[6~",
    "f1": "\x1bOP", "f2": "\x1bOQ", "f3": "\x1bOR", "f4": "\x1bOS", "f5": "\x1b[15~",
    "f6": "\x1b[17~", "f7": "\x1b[18~", "f8": "\x1b[19~", "f9": "\x1b[20~", "f10": "\x1b[21~",
    "f11": "\x1b[23~", "f12": "\x1b[24~",
}  # fmt: skip
_ARROWS = {"up": "A", "down": "B", "right": "C", "left": "D"}
_CTRL = re.compile(r"^ctrl\+([a-z])$")

#: pyte's colour names, as rich names them.
_COLOURS = {"brown": "yellow", "brightbrown": "bright_yellow"}
_HEX = re.compile(r"^[0-9a-fA-F]{6}$")
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def key_bytes(key: str, character: str | None, application_cursor: bool = False) -> bytes:
    """What a terminal sends for a textual key event; b"" for a key it has no code for."""
    if key in _ARROWS:
        return ("\x1bO" if application_cursor else "\x1b[").encode() + _ARROWS[key].encode()
    if key in _KEYS:
        return _KEYS[key].encode()
    if match := _CTRL.match(key):
        return bytes([ord(match.group(1)) - ord("a") + 1])
    if character:
        return character.encode("utf-8", "surrogateescape")
    return b""


def _colour(name: str) -> str | None:
    if name == "default":
        return None
    if _HEX.match(name):
        return f"#{name}"
    name = _COLOURS.get(name, name)
    if name.startswith("bright") and not name.startswith("bright_"):
        name = "bright_" + name[len("bright") :]
    return name


def _shown(char: str) -> str:
    return "?" if unicodedata.category(char) in _HIDDEN else char


class TerminalPane(Widget, can_focus=True):
    """The command's terminal. ``typing``: the keyboard goes to the command."""

    DEFAULT_CSS = """
    TerminalPane { height: 1fr; border: round $secondary; }
    TerminalPane.-typing { border: heavy $success; }
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        resize: Callable[[int, int], None],
        **kwargs: object,
    ) -> None:
        """``write``: keys for the command; ``resize(rows, columns)``: the pane's new size,
        for the command's terminal."""
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._write = write
        self._resize = resize
        self.screen_ = Screen(80, 24)
        self.screen_.write_process_input = self._answer  # type: ignore[method-assign]
        self.stream = Stream(self.screen_)
        self.typing = False
        self._title()

    def _answer(self, data: str) -> None:
        """Replies the emulator owes the program (cursor position, device status)."""
        self._write(data.encode())

    def _title(self) -> None:
        if self.typing:
            self.border_title = "the command has the keyboard · ctrl+t takes it back"
        else:
            self.border_title = "the command's terminal · ctrl+t (or enter) gives it the keyboard"

    def set_typing(self, typing: bool) -> None:
        if typing == self.typing:
            return
        self.typing = typing
        self.set_class(typing, "-typing")
        self._title()
        if typing:
            self.focus()
        self.app.refresh_bindings()  # the keys the interface keeps, or gives up
        self.refresh()

    # -- output --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.stream.feed(data)
        self.refresh()

    @property
    def lines(self) -> list[str]:
        """The screen's text, trailing blanks removed (for tests and copying)."""
        return [line.rstrip() for line in self.screen_.display]

    def on_resize(self, event: events.Resize) -> None:
        size = self.content_size
        if size.width > 0 and size.height > 0:
            self.screen_.resize(size.height, size.width)
            self._resize(size.height, size.width)

    def render_line(self, y: int) -> Strip:
        screen = self.screen_
        if y >= screen.lines:
            return Strip.blank(self.content_size.width)
        row = screen.buffer[y]
        segments = []
        cursor = (
            (screen.cursor.x if y == screen.cursor.y else -1)
            if self.has_focus and not screen.cursor.hidden
            else -1
        )  # fmt: skip
        for x in range(screen.columns):
            char = row[x]
            if char.data == "":  # the second cell of a wide character
                continue
            style = Style(
                color=_colour(char.fg), bgcolor=_colour(char.bg), bold=char.bold,
                italic=char.italics, underline=char.underscore, strike=char.strikethrough,
                reverse=char.reverse != (x == cursor),
            )  # fmt: skip
            segments.append(Segment(_shown(char.data), style))
        return Strip(segments).crop(0, self.content_size.width)

    # -- input ---------------------------------------------------------------------------

    async def on_key(self, event: events.Key) -> None:
        if not self.typing:
            if event.key == "enter":
                event.stop()
                self.set_typing(True)
            return
        if event.key == "ctrl+t":
            return  # the app's binding takes the keyboard back
        data = key_bytes(event.key, event.character, _DECCKM in self.screen_.mode)
        event.stop()
        event.prevent_default()
        if data:
            self._write(data)

    def on_blur(self) -> None:
        self.set_typing(False)
