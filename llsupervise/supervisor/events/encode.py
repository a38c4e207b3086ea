"""Names the program chose, written as text: JSON lines of the event log and the attach socket.

Paths are bytes; the supervisor carries them as ``str`` decoded with ``surrogateescape``
(``os.fsdecode``), so a byte that is not UTF-8 is a lone surrogate, which no UTF-8 writer
accepts. :func:`escape` writes such a byte as ``\\xNN`` and a literal backslash as ``\\\\``:
the result is valid text, and distinct names stay distinct (:func:`unescape` inverts it).
"""

from __future__ import annotations

import re
from typing import Any

#: What must be escaped: a backslash, or any surrogate (an undecodable byte is one of
#: U+DC80..U+DCFF; others cannot come from ``fsdecode``, but must not crash a writer either).
_SPECIAL = re.compile("[\\\\\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|(\\))")


def _one(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with backslashes doubled and undecodable bytes as ``\\xNN``: valid UTF-8."""
    return _SPECIAL.sub(_one, text) if _SPECIAL.search(text) else text


class EscapeError(ValueError):
    """A string that :func:`escape` cannot have written."""


def unescape(text: str) -> str:
    """The name :func:`escape` wrote as ``text``; raises EscapeError on a stray backslash."""
    if "\\" not in text:
        return text
    out: list[str] = []
    at = 0
    for match in _ESCAPE.finditer(text):
        if "\\" in text[at : match.start()]:
            break
        out.append(text[at : match.start()])
        byte, surrogate, backslash = match.groups()
        if backslash:
            out.append("\\")
        elif byte is not None:
            value = int(byte, 16)
            if value < 0x80:
                raise EscapeError(f"\\x{byte} is not an undecodable byte: {text!r}")
            out.append(chr(0xDC00 + value))
        else:
            value = int(surrogate, 16)
            if not 0xD800 <= value <= 0xDFFF or 0xDC80 <= value <= 0xDCFF:
                raise EscapeError(f"\\u{surrogate} is not an escaped surrogate: {text!r}")
            out.append(chr(value))
        at = match.end()
    rest = text[at:]
    if "\\" in rest:
        raise EscapeError(f"a backslash that starts no escape (\\\\, \\xNN): {text!r}")
    out.append(rest)
    return "".join(out)


def escaped(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, tuples, scalars) with every string escaped."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escaped(k): escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escaped(v) for v in value]
    return value


def unescaped(value: Any) -> Any:
    """:func:`escaped` undone; raises EscapeError on a string it cannot have written."""
    if isinstance(value, str):
        return unescape(value)
    if isinstance(value, dict):
        return {unescaped(k): unescaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescaped(v) for v in value]
    return value
