"""A TOML file's text as statements and table entries, for edits that move nothing else.

tomlkit keeps a comment written above a table header with the table *before* it, and writes an
array of tables back in one piece, so appending through it moves comments and entries. Here the
text is split into statements (blank, comment, header, key/value, each one or more whole lines)
and the file's tables into entries: a header, the comment block directly above it (no blank line
between), and its own statements. Edits insert, replace or delete whole lines of one entry.
Pure: the caller checks that the edited text still loads to what it meant.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Literal

from msgspec import Struct

Kind = Literal["blank", "comment", "header", "keyvalue"]

_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


class LayoutError(ValueError):
    """The text is not TOML this module can take apart."""


class Statement(Struct, frozen=True):
    kind: Kind
    #: Lines ``first`` to ``last`` (inclusive, 0-based).
    first: int
    last: int
    #: A header's table path (``[[a.b]]`` -> ``("a", "b")``).
    key: tuple[str, ...] = ()
    #: ``[[header]]`` (an array-of-tables element).
    array: bool = False
    #: A ``#`` comment on one of the statement's lines.
    commented: bool = False


class Entry(Struct, frozen=True):
    """A table header with what belongs to it."""

    key: tuple[str, ...]
    array: bool
    #: Index of the header in the statement list.
    header: int
    #: Statement indexes of the comment block directly above the header.
    comments: range
    #: Statement indexes of its own content (sub-tables' headers included), after the header.
    body: range


def lines(text: str) -> list[str]:
    """The lines of ``text`` with their ``\\n`` (TOML's only line break; not ``splitlines``)."""
    return _LINE.findall(text)


def _string_end(text: str, pos: int) -> int:
    """Index after the string literal starting at ``pos``."""
    for quote in ('"""', "'''"):
        if text.startswith(quote, pos):
            i = pos + 3
            while True:
                if quote == '"""' and text.startswith("\\", i):
                    i += 2
                    continue
                if i >= len(text):
                    raise LayoutError("unterminated multi-line string")
                if text.startswith(quote, i):
                    end = i + 3
                    # Up to two quotes of the content may precede the closing delimiter.
                    while end < len(text) and end - i < 5 and text[end] == quote[0]:
                        end += 1
                    return end
                i += 1
    quote = text[pos]
    i = pos + 1
    while i < len(text) and text[i] != "\n":
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise LayoutError("unterminated string")


def _value_end(text: str, pos: int) -> tuple[int, bool]:
    """Index after the key/value statement starting at ``pos`` (its line break included),
    and whether it holds a comment."""
    depth = 0
    commented = False
    i = pos
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i = _string_end(text, i)
            continue
        if c == "#":
            commented = True
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        if c == "\n" and depth <= 0:
            return i + 1, commented
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return len(text), commented


def _header_key(line: str) -> tuple[tuple[str, ...], bool]:
    try:
        data: Any = tomllib.loads(line)
    except tomllib.TOMLDecodeError as exc:
        raise LayoutError(f"not a table header: {line.strip()!r}: {exc}") from None
    key: list[str] = []
    while isinstance(data, dict) and len(data) == 1:
        [(name, data)] = data.items()
        key.append(name)
    if isinstance(data, list):
        return tuple(key), True
    return tuple(key), False


def statements(text: str) -> list[Statement]:
    """``text`` as its statements, in order; every line belongs to exactly one."""
    all_lines = lines(text)
    starts = [0]
    for line in all_lines:
        starts.append(starts[-1] + len(line))
    result: list[Statement] = []
    n = 0
    while n < len(all_lines):
        stripped = all_lines[n].strip()
        if not stripped:
            result.append(Statement("blank", n, n))
        elif stripped.startswith("#"):
            result.append(Statement("comment", n, n))
        elif stripped.startswith("["):
            key, array = _header_key(all_lines[n])
            result.append(Statement("header", n, n, key, array, "#" in all_lines[n]))
        else:
            end, commented = _value_end(text, starts[n])
            last = n
            while starts[last + 1] < end:
                last += 1
            result.append(Statement("keyvalue", n, last, commented=commented))
            n = last
        n += 1
    return result


def entries(stmts: list[Statement]) -> list[Entry]:
    """Every table header of the file, in order, with its comment block and content.

    A comment block directly above a header belongs to that header; blank lines before it
    belong to no entry. Sub-table headers (``[a.b.c]`` after ``[[a.b]]``) are content."""
    headers = [i for i, s in enumerate(stmts) if s.kind == "header"]
    result: list[Entry] = []
    for h in headers:
        first = h
        while first > 0 and stmts[first - 1].kind == "comment":
            first -= 1
        result.append(Entry(stmts[h].key, stmts[h].array, h, range(first, h), range(h + 1, h + 1)))
    # Each entry's content runs to the next header's comment block, trailing blanks excluded.
    merged: list[Entry] = []
    for k, entry in enumerate(result):
        end = result[k + 1].comments.start if k + 1 < len(result) else len(stmts)
        while end > entry.header + 1 and stmts[end - 1].kind == "blank":
            end -= 1
        merged.append(
            Entry(
                entry.key, entry.array, entry.header, entry.comments, range(entry.header + 1, end)
            )
        )
    # Fold sub-tables into the entry they belong to.
    folded: list[Entry] = []
    for entry in merged:
        parent = folded[-1] if folded else None
        if (
            parent is not None
            and len(entry.key) > len(parent.key)
            and entry.key[: len(parent.key)] == parent.key
            and not (entry.array and entry.key == parent.key)
            and parent.array
        ):
            folded[-1] = Entry(parent.key, parent.array, parent.header, parent.comments,
                               range(parent.body.start, entry.body.stop))  # fmt: skip
        else:
            folded.append(entry)
    return folded
