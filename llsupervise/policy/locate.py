"""Map key paths such as ``supervisor.path_beneath[1].parent[0]`` to line numbers of a TOML text.

The TOML parser forgets where values were written, so this module re-reads the text with a small,
forgiving scanner that only understands TOML's structure: table headers, array-of-tables headers,
``key = value`` lines (bare, quoted and dotted keys), arrays and inline tables at any depth, strings
of all four kinds and comments. It records the line of every key, table and array element it meets.
It never raises: on text it does not understand it skips ahead and keeps what it has.
"""

from __future__ import annotations

import bisect
import string

_BARE_KEY = frozenset(string.ascii_letters + string.digits + "-_")
_SCALAR_END = frozenset(",]}#\n")
# Deeper values are skipped without recursion so that no text can exhaust the stack.
_MAX_DEPTH = 32


def parent_key(key: str) -> str:
    """Drop the last segment: ``a.b[1]`` -> ``a.b`` -> ``a`` -> ``""``."""
    if key.endswith("]") and "[" in key:
        return key[: key.rindex("[")]
    return key[: key.rindex(".")] if "." in key else ""


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class LineIndex:
    """Line numbers (1-based) of the keys, tables and array elements of one TOML text."""

    def __init__(self, text: str) -> None:
        self._lines = _Scanner(text).scan()

    def exact(self, key: str) -> int | None:
        return self._lines.get(key)

    def line(self, key: str) -> int | None:
        """The line of ``key``, else of its first descendant, else of the nearest ancestor.

        A table only created implicitly (``[a.b]`` creates ``a``) has no line of its own: its
        first descendant is where it appears.
        """
        found = self._lines.get(key)
        if found is None and key:
            found = self._first_descendant(key)
        while found is None and key:
            key = parent_key(key)
            found = self._lines.get(key) if key else None
        return found

    def _first_descendant(self, key: str) -> int | None:
        lines = [
            line
            for other, line in self._lines.items()
            if other.startswith(key) and other[len(key) : len(key) + 1] in (".", "[")
        ]
        return min(lines, default=None)


def locate(text: str, key: str) -> int | None:
    """One-off lookup; build a :class:`LineIndex` instead to look up many keys."""
    return LineIndex(text).line(key)


class _Cursor:
    """A position in TOML text, and skipping what holds no key: blanks, comments, strings,
    nested values, the rest of a line."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def line_of(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def skip_trivia(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def skip_nested(self) -> None:
        depth = 0
        while self.pos < len(self.text):
            c = self.peek()
            if c in ('"', "'"):
                self.string()
                continue
            self.pos += 1
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
                if depth == 0:
                    return

    def string(self) -> None:
        quote = self.peek()
        if self.text.startswith(quote * 3, self.pos):
            self.multiline_string(quote)
            return
        self.pos += 1
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "\n":
                return
            self.pos += 2 if c == "\\" and quote == '"' else 1
            if c == quote:
                return

    def multiline_string(self, quote: str) -> None:
        self.pos += 3
        while self.pos < len(self.text):
            if quote == '"' and self.text[self.pos] == "\\":
                self.pos += 2
            elif self.text.startswith(quote * 3, self.pos):
                self.pos += 3
                # Up to two quotes may sit right before the closing delimiter: """a""""".
                for _ in range(2):
                    if self.peek() == quote:
                        self.pos += 1
                return
            else:
                self.pos += 1


class _Scanner(_Cursor):
    """Finds the line of every key: tables, arrays of tables and their elements, keys."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: dict[str, int] = {}
        # Number of [[x]] headers met so far, per array path: gives the index of the next one.
        self._arrays: dict[str, int] = {}

    def record(self, key: str, pos: int) -> None:
        # First occurrence wins: a later duplicate is a TOML error anyway.
        self.lines.setdefault(key, self.line_of(pos))

    # -- document level -----------------------------------------------------------------------

    def scan(self) -> dict[str, int]:
        table = ""
        while True:
            self.skip_trivia(newlines=True)
            start = self.pos
            if start >= len(self.text):
                return self.lines
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table, depth=0)
            if self.pos == start:
                self.skip_line()

    def header(self) -> str:
        start = self.pos
        is_array = self.text.startswith("[[", start)
        self.pos += 2 if is_array else 1
        parts = self.key()
        self.skip_trivia(newlines=False)
        closing = "]]" if is_array else "]"
        if self.text.startswith(closing, self.pos):
            self.pos += len(closing)
        table = self.table_path(parts, is_array, start)
        self.record(table, start)
        return table

    def table_path(self, parts: list[str], is_array: bool, start: int) -> str:
        """Canonical path of a header, with the current index of every array of tables in it."""
        path = ""
        for i, part in enumerate(parts):
            path = join_key(path, part)
            if is_array and i == len(parts) - 1:
                self.record(path, start)  # the array itself starts at its first header
                index = self._arrays.get(path, 0)
                self._arrays[path] = index + 1
                path = f"{path}[{index}]"
            elif path in self._arrays:
                path = f"{path}[{self._arrays[path] - 1}]"
        return path

    # -- keys and values ----------------------------------------------------------------------

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_trivia(newlines=False)
            c = self.peek()
            if c in ('"', "'"):
                parts.append(self.quoted_key(c))
            elif c in _BARE_KEY:
                start = self.pos
                while self.peek() in _BARE_KEY:
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            else:
                return parts
            self.skip_trivia(newlines=False)
            if self.peek() != ".":
                return parts
            self.pos += 1

    def quoted_key(self, quote: str) -> str:
        start = self.pos + 1
        self.string()
        self.pos = min(self.pos, len(self.text))  # a trailing backslash steps past the end
        end = (
            self.pos - 1 if self.pos - 1 >= start and self.text[self.pos - 1] == quote else self.pos
        )
        return self.text[start:end]

    def key_value(self, table: str, depth: int) -> None:
        start = self.pos
        parts = self.key()
        self.skip_trivia(newlines=False)
        if not parts or self.peek() != "=":
            return
        self.pos += 1
        path = table
        for part in parts:
            path = join_key(path, part)
            self.record(path, start)
        self.skip_trivia(newlines=False)
        self.value(path, depth)

    def value(self, path: str, depth: int) -> None:
        c = self.peek()
        if c in ("[", "{") and depth >= _MAX_DEPTH:
            self.skip_nested()
        elif c == "[":
            self.array(path, depth)
        elif c == "{":
            self.inline_table(path, depth)
        elif c in ('"', "'"):
            self.string()
        else:
            while self.peek() and self.peek() not in _SCALAR_END:
                self.pos += 1

    def array(self, path: str, depth: int) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_trivia(newlines=True)
            c = self.peek()
            if c in ("", "]"):
                self.pos += len(c)
                return
            if c == ",":
                self.pos += 1
                continue
            start = self.pos
            element = f"{path}[{index}]"
            self.record(element, start)
            self.value(element, depth + 1)
            if self.pos == start:
                self.pos += 1
            index += 1

    def inline_table(self, path: str, depth: int) -> None:
        self.pos += 1
        while True:
            self.skip_trivia(newlines=True)
            c = self.peek()
            if c in ("", "}"):
                self.pos += len(c)
                return
            start = self.pos
            if c != ",":
                self.key_value(path, depth + 1)
            if self.pos == start:
                self.pos += 1
