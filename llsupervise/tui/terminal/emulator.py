"""The terminal emulator behind the Output pane: pyte, with the alternate screen it lacks, and
a parser that survives any input.

Full-screen programs (vi, less, top) switch to the alternate screen (private modes 1049, 1047
and 47) and back when they quit, so that the shell's screen reappears as it was. pyte knows
no alternate screen: the program's last screen would stay, with the shell's output drawn over
it. :class:`Screen` keeps the normal screen's cells aside while the alternate one is shown.

pyte raises on some well-formed sequences it has no handler arguments for (``CSI ? 4 m``,
which vim sends to query xterm's key modes; ``CSI 1;2;3 A``); the program is the adversary,
and one such sequence must not end the interface. :class:`Stream` drops it instead.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import pyte
from pyte.screens import Char, StaticDefaultDict

#: Private modes that show the alternate screen; pyte shifts private mode numbers by 5.
#: 1049 also saves the cursor first (restored on leaving) and clears the alternate screen;
#: 1047 clears the alternate screen when leaving it; 47 only switches.
ALT_SAVE_CURSOR = 1049 << 5
ALT_CLEAR_ON_LEAVE = 1047 << 5
ALT_PLAIN = 47 << 5
_ALTERNATE = frozenset({ALT_SAVE_CURSOR, ALT_CLEAR_ON_LEAVE, ALT_PLAIN})

Buffer = defaultdict[int, StaticDefaultDict[int, Char]]


class Screen(pyte.Screen):
    """pyte's screen with an alternate screen. ``alternate``: it is the one shown."""

    def __init__(self, columns: int, lines: int) -> None:
        self._normal: Buffer | None = None  # the normal screen's cells, while hidden
        self._normal_cursor: pyte.screens.Cursor | None = None
        self._alternate: Buffer | None = None  # the alternate screen's cells, while hidden
        super().__init__(columns, lines)

    @property
    def alternate(self) -> bool:
        return self._normal is not None

    def _blank_buffer(self) -> Buffer:
        return defaultdict(lambda: StaticDefaultDict[int, Char](self.default_char))

    def reset(self) -> None:
        """RIS: one screen again, the normal one, blank."""
        self._normal = self._alternate = self._normal_cursor = None
        super().reset()

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private"):
            alternate = max({mode << 5 for mode in modes} & _ALTERNATE, default=None)
            if alternate is not None:
                self._enter_alternate(alternate)
            modes = tuple(m for m in modes if m << 5 not in _ALTERNATE)
        super().set_mode(*modes, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private"):
            alternate = max({mode << 5 for mode in modes} & _ALTERNATE, default=None)
            if alternate is not None:
                self._leave_alternate(alternate)
            modes = tuple(m for m in modes if m << 5 not in _ALTERNATE)
        super().reset_mode(*modes, **kwargs)

    def _enter_alternate(self, mode: int) -> None:
        if self._normal is not None:
            if mode == ALT_SAVE_CURSOR:
                self.erase_in_display(2)
            return
        if mode == ALT_SAVE_CURSOR:
            self._normal_cursor = copy.copy(self.cursor)
        self._normal = self.buffer  # type: ignore[assignment]
        self.buffer = self._alternate or self._blank_buffer()
        self._alternate = None
        if mode == ALT_SAVE_CURSOR:
            self.erase_in_display(2)
        self.dirty.update(range(self.lines))

    def _leave_alternate(self, mode: int) -> None:
        if self._normal is None:
            return
        if mode == ALT_CLEAR_ON_LEAVE:
            self.erase_in_display(2)  # what the alternate screen shows next time
        self._alternate = self.buffer  # type: ignore[assignment]
        self.buffer = self._normal
        self._normal = None
        if mode == ALT_SAVE_CURSOR and self._normal_cursor is not None:
            self.cursor = self._normal_cursor
            self.ensure_hbounds()
            self.ensure_vbounds()
        self._normal_cursor = None
        self.dirty.update(range(self.lines))

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        """The hidden normal screen is cut as pyte cuts the shown one: the top rows and the
        right columns go."""
        before_lines, before_columns = self.lines, self.columns
        super().resize(lines, columns)
        normal = self._normal
        if normal is None:
            return
        dropped = max(before_lines - self.lines, 0)
        if dropped:
            shifted: Buffer = self._blank_buffer()
            for y, line in normal.items():
                if y >= dropped:
                    shifted[y - dropped] = line
            normal = self._normal = shifted
            if self._normal_cursor is not None:
                self._normal_cursor.y = max(self._normal_cursor.y - dropped, 0)
        if self.columns < before_columns:
            for line in normal.values():
                for x in range(self.columns, before_columns):
                    line.pop(x, None)


#: CAN and SUB.
_CANCEL = frozenset("\x18\x1a")


class Stream(pyte.ByteStream):
    """pyte's byte stream; a sequence pyte cannot handle is dropped, not raised."""

    def _send_to_parser(self, data: str) -> bool | None:
        if data in _CANCEL:
            # CAN and SUB abort any sequence, a string (OSC) too, as on a VT100; pyte would
            # keep an OSC open through them, and all text after it would stay unseen.
            self._initialize_parser()
            return self._taking_plain_text
        try:
            return super()._send_to_parser(data)
        except Exception:  # any input the parser chokes on: it is the program's
            # pyte has started its parser afresh: the rest of the output is read as usual.
            return self._taking_plain_text
