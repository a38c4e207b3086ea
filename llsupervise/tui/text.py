"""Untrusted text made safe to show: a command's terminal output, long paths cut to fit.

Names the supervised program controls (paths, its command line) are shown through
:func:`llsupervise.display.escape` and rendered as plain rich ``Text``, never as markup, so
that no byte sequence can move the cursor, recolour the screen or hide part of a line.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

from llsupervise.display import escape_char

#: Characters of a command's output shown escaped: controls, format characters (bidi
#: overrides, zero widths), surrogates, private use, unassigned, line/paragraph separators.
#: The output is the program's own text in its own pane, so accents and look-alikes stay.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


# -- a command's terminal output ------------------------------------------------------------

#: Terminal escape sequences, removed whole: CSI (colours, cursor moves), OSC (titles,
#: hyperlinks), DCS/SOS/PM/APC strings, and two-byte ESC sequences.
_SEQUENCE = re.compile(
    r"""
    \x1b\[ [0-?]* [ -/]* [@-~]                  # CSI
  | \x9b [0-?]* [ -/]* [@-~]                    # 8-bit CSI
  | \x1b\] .*? (?:\x07|\x1b\\|\x9c)             # OSC, ended by BEL or ST
  | \x1b[P_^X] .*? (?:\x1b\\|\x9c)              # DCS, APC, PM, SOS
  | \x1b [ -/]* [0-~]                           # other ESC sequences (charset, keypad...)
    """,
    re.VERBOSE | re.DOTALL,
)
#: A sequence that may still be completed by the next read.
_UNFINISHED = re.compile(
    r"""
    (?: \x1b\[ [0-?]* [ -/]*                     # CSI without its final byte
      | \x1b\] [^\x07\x9c\x1b]* \x1b?            # OSC without its terminator
      | \x1b[P_^X] [^\x9c\x1b]* \x1b?             # DCS, APC, PM, SOS likewise
      | \x1b [ -/]*                              # ESC, maybe with intermediates
      | \r                                       # may be the first half of CR LF
    )\Z
    """,
    re.VERBOSE,
)
#: Longest unfinished sequence kept for the next read; longer ones are dropped.
_MAX_PENDING = 4096


def _keep_output_char(char: str) -> str:
    if char in "\n\t ":
        return char
    if char == "\b" or char == "\x07":
        return ""  # backspace and bell have no meaning in a scrolling log
    category = unicodedata.category(char)
    return escape_char(char) if category in _HIDDEN_CATEGORIES or category == "Zs" else char


class TerminalText:
    """Turns a command's terminal output (bytes, in arbitrary chunks) into safe text lines.

    Escape sequences are removed, carriage returns become line breaks (a progress bar shows
    as successive lines), every other control or invisible character is shown escaped."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, *, final: bool = False) -> str:
        text = self._pending + self._decoder.decode(data, final)
        self._pending = ""
        if not final:
            unfinished = _UNFINISHED.search(text)
            if unfinished is not None and unfinished.start() < len(text):
                tail = text[unfinished.start() :]
                text = text[: unfinished.start()]
                if len(tail) <= _MAX_PENDING:
                    self._pending = tail
        text = _SEQUENCE.sub("", text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if text.isprintable():
            return text
        return "".join(_keep_output_char(c) for c in text)
