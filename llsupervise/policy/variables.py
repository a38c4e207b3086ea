"""Policy variables: the predefined ones and ``[[variable]]`` definitions, and ``${name}``
expansion in strings (one string per value; the cartesian product for several variables)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

from msgspec import Struct

from llsupervise.policy.tomlcheck import Context

#: Variables taken from the environment (TTY is not); a policy cannot redefine them.
PREDEFINED_VARIABLES = ("HOME", "PWD", "TMPDIR", "USER", "TTY")
#: The program's own terminal, whichever it is: /dev/tty is its controlling terminal (the
#: TUI's pty, or in headless mode the terminal it shares with us), never another one.
TTY = "/dev/tty"
# Cartesian products grow fast: refuse a string or variable expanding to more values than this.
_MAX_EXPANSION = 4096
_MAX_VARIABLE_DEPTH = 64


def variable_name_error(name: str) -> str | None:
    """Why ``name`` is not a valid variable name (landlockconfig's rules), or None."""
    if not name:
        return "variable name cannot be empty"
    if not (name[0].isascii() and name[0].isalpha()):
        return f"invalid variable name {name!r}: must start with an ASCII letter"
    if not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        return f"invalid variable name {name!r}: only ASCII letters, digits and '_' are allowed"
    return None


class Ref(Struct, frozen=True):
    """A ``${name}`` inside a template string."""

    name: str


def tokenize(context: Context, template: str, key: str) -> list[str | Ref]:
    tokens: list[str | Ref] = []
    text: list[str] = []
    i = 0
    while i < len(template):
        pair = template[i : i + 2]
        if pair == "$$":
            text.append("$")
            i += 2
        elif pair == "${":
            end = template.find("}", i + 2)
            if end < 0:
                raise context.error(key, f"unclosed '${{' at position {i} in {template!r}")
            name = template[i + 2 : end]
            problem = variable_name_error(name)
            if problem:
                raise context.error(key, f"{problem} (at position {i} in {template!r})")
            tokens.extend(["".join(text), Ref(name)])
            text.clear()
            i = end + 1
        else:
            text.append(template[i])
            i += 1
    tokens.append("".join(text))
    return tokens


class Variables:
    """Predefined and ``[[variable]]`` values, each expanded once on first use."""

    def __init__(
        self,
        context: Context,
        env: Mapping[str, str],
        definitions: dict[str, list[tuple[str, str]]],
    ) -> None:
        self._context = context
        self._definitions = definitions
        self._resolving: list[str] = []
        self.values: dict[str, tuple[str, ...]] = {}
        for name in PREDEFINED_VARIABLES:
            default = "/tmp" if name == "TMPDIR" else ""
            value = TTY if name == "TTY" else env.get(name) or default
            if value:
                self.values[name] = (value,)

    def resolve_all(self) -> None:
        for name, literals in self._definitions.items():
            self.resolve(name, literals[0][0] if literals else "variable")

    def resolve(self, name: str, key: str) -> tuple[str, ...]:
        if name in self.values:
            return self.values[name]
        if name in self._resolving:
            cycle = " -> ".join([*self._resolving[self._resolving.index(name) :], name])
            raise self._context.error(key, f"variable {name!r} refers to itself ({cycle})")
        if name not in self._definitions:
            if name in PREDEFINED_VARIABLES:
                raise self._context.error(key, f"variable {name!r} is not set in the environment")
            raise self._context.error(key, f"unknown variable {name!r}")
        if len(self._resolving) >= _MAX_VARIABLE_DEPTH:
            raise self._context.error(key, "variables refer to each other too deeply")
        self._resolving.append(name)
        values: dict[str, None] = {}  # ordered set
        for literal_key, literal in self._definitions[name]:
            values.update(dict.fromkeys(self.expand(literal, literal_key)))
            if len(values) > _MAX_EXPANSION:
                raise self._context.error(key, f"variable {name!r} has too many values")
        self._resolving.pop()
        self.values[name] = tuple(values)
        return self.values[name]

    def expand(self, template: str, key: str) -> list[str]:
        if "$" not in template:
            return [template]  # most paths: nothing to tokenise
        choices = [
            (token,) if isinstance(token, str) else self.resolve(token.name, key)
            for token in tokenize(self._context, template, key)
        ]
        if math.prod(len(c) for c in choices) > _MAX_EXPANSION:
            raise self._context.error(key, f"{template!r} expands to too many values")
        return ["".join(parts) for parts in itertools.product(*choices)]
