"""The one escaping function for every string a person reads that a program could choose.

File names, command lines, executable paths and policy labels reach a person through the
terminal interface, ``llsupervise check`` and error messages. The supervised program chooses
many of them, so each is shown through :func:`escape`, which makes the shown form say exactly
which characters are there:

- control characters (C0, DEL) become ``\\n``, ``\\t``, ``\\r`` or ``\\xNN``;
- bytes that are not UTF-8 (paths are bytes; a ``str`` path carries them as surrogateescape)
  become ``\\xNN`` with NN >= 80, a form no character takes;
- C1 controls, characters that pass for a separator or a dot (U+2215, U+FF0F, U+2024...),
  blank fillers (U+3164, U+2800...), combining marks standing on their own, bidi controls
  and everything without a visible glyph become ``\\uXXXX`` (``\\UXXXXXXXX`` beyond U+FFFF);
- a backslash becomes ``\\\\``, so an escape can never be forged by a name that spells one.

The form is unambiguous: ``escape(x) == escape(y)`` only if ``x == y``. Pure: no terminal,
no textual; widgets still put the result in as plain text, never as markup.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories never shown as themselves: controls, format characters (bidi, zero
#: widths), surrogates, private use, unassigned, line and paragraph separators, and the
#: combining marks that would draw over the character before them.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Mn", "Me"})

#: Characters that pass for a path separator, a backslash or a dot.
LOOK_ALIKES = frozenset(
    "\u2044\u2215\u2571\u27cb\u29f8\uff0f\u1735"  # slashes: fraction, division, box, big...
    "\u2216\u2572\u27cd\u29f5\u29f9\ufe68\uff3c"  # backslashes
    "\u2024\u2025\u2026\ufe52\uff0e\u0701\u0702\ua4f8"  # dots: one/two dot leaders, small...
)
#: Letters and symbols that draw as nothing (fillers, braille blank). Zero widths and
#: the like are format characters (Cf), hidden by category already.
BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5\u180e")

_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(char: str) -> bool:
    """``char`` shows as itself: a glyph nothing else looks like (ASCII space included)."""
    if " " <= char <= "~":
        return char != "\\"
    if char in LOOK_ALIKES or char in BLANKS:
        return False
    category = unicodedata.category(char)
    # Spaces other than U+0020 (no-break, em, ideographic...) could disguise a path.
    return category not in _HIDDEN_CATEGORIES and category != "Zs"


def escape_char(char: str) -> str:
    """The escape for one character that is not :func:`visible`."""
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str | bytes) -> str:
    """``text`` with every character that is not plainly itself written as an escape."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")  # each bad byte: one U+DC80..U+DCFF
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # the common case, without a look at each character
    return "".join(char if visible(char) else escape_char(char) for char in text)


__all__ = ["BLANKS", "LOOK_ALIKES", "escape", "escape_char", "visible"]
