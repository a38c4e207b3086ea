"""Checking decoded TOML values against what a policy allows, with errors that name the file,
line and key of the value at fault."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from typing import TypeGuard, TypeVar

from llsupervise.policy.document import LazyLocation, Location, PolicyError, TableArray
from llsupervise.policy.locate import LineIndex, join_key
from llsupervise.rights import AccessFs, AccessNet, Scope, UnknownAccessName

_Flag = TypeVar("_Flag", AccessFs, AccessNet, Scope)
_Choice = TypeVar("_Choice", bound=str)


class Context:
    """The source name plus a lazily built line index, to make locations and errors."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self._text = text
        self._index: LineIndex | None = None
        self._lines = self._line  # one bound method for every location

    def loc(self, key: str) -> Location:
        return LazyLocation(self.source, key, self._lines)

    def array(self, key: str) -> TableArray:
        """Shared by the :class:`ElementLocation` of every table of the array at ``key``."""
        return TableArray(self.source, key, self._lines)

    def _line(self, key: str) -> int | None:
        if self._index is None:
            self._index = LineIndex(self._text)
        return self._index.line(key)

    def error(self, key: str, message: str) -> PolicyError:
        return PolicyError(self.loc(key), message)


def type_name(value: object) -> str:
    # bool before int: True is an int to Python but not to TOML.
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
    )
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def checked_table(
    context: Context, value: object, key: str, allowed: tuple[str, ...]
) -> dict[str, object]:
    if not isinstance(value, dict):
        raise context.error(key, f"expected a table, found {type_name(value)}")
    for name in value:
        if name not in allowed:
            expected = ", ".join(allowed)
            raise context.error(join_key(key, name), f"unknown key {name!r} (expected {expected})")
    return value


def checked_array(
    context: Context, value: object, key: str, what: str, non_empty: bool
) -> list[object]:
    if not isinstance(value, list):
        raise context.error(key, f"expected an array of {what}, found {type_name(value)}")
    if non_empty and not value:
        raise context.error(key, f"expected a non-empty array of {what}")
    return value


def checked_tables(
    context: Context, value: object, key: str, allowed: tuple[str, ...], non_empty: bool
) -> list[tuple[str, dict[str, object]]]:
    """Each table of an array of tables, with its key (``key[i]``)."""
    items = checked_array(context, value, key, "tables", non_empty)
    keyed = [(f"{key}[{i}]", item) for i, item in enumerate(items)]
    return [(k, checked_table(context, item, k, allowed)) for k, item in keyed]


def checked_strings(context: Context, value: object, key: str) -> list[tuple[str, str]]:
    """Each string of a non-empty array of strings, with its key (``key[i]``)."""
    items = checked_array(context, value, key, "strings", non_empty=True)
    result = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise context.error(f"{key}[{i}]", f"expected a string, found {type_name(item)}")
        result.append((f"{key}[{i}]", item))
    return result


def required_value(context: Context, table: dict[str, object], key: str, name: str) -> object:
    if name not in table:
        raise context.error(key, f"missing required key {name!r}")
    return table[name]


def checked_choice(
    context: Context, value: object, key: str, choices: tuple[_Choice, ...]
) -> _Choice:
    for choice in choices:
        if value == choice:
            return choice
    expected = ", ".join(repr(c) for c in choices)
    found = repr(value) if isinstance(value, str) else type_name(value)
    raise context.error(key, f"expected one of {expected}, found {found}")


def parse_access(
    context: Context,
    value: object,
    key: str,
    parse: Callable[[Iterable[str], int], _Flag],
    abi: int,
    known: dict[tuple[str, ...], _Flag],
) -> _Flag:
    """The rights an array of names grants; ``known`` holds the arrays already parsed.

    Policies repeat the same few arrays thousands of times, and parsing names into flags is
    slow. Only valid arrays of strings are ever stored, so a hit needs no further check.
    """
    if isinstance(value, list):
        try:
            return known[tuple(value)]
        except (KeyError, TypeError):  # TypeError: an unhashable item (array, table)
            pass
    items = checked_strings(context, value, key)
    for item_key, name in items:
        try:
            parse([name], abi)
        except UnknownAccessName as exc:
            raise context.error(item_key, str(exc)) from None
    names = tuple(name for _, name in items)
    known[names] = rights = parse(names, abi)
    return rights
