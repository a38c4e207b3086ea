"""Path strings for learned policies: ``${HOME}``-style templates and lexical ancestry.

Templates use the policy file's own syntax (``llsupervise.policy.loader``): ``${NAME}`` is a
variable and ``$$`` a literal ``$``, so a template can be written into a policy unchanged.
Variable values are absolute, symlink-free directories, because recorded paths are the
kernel's names for objects.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping

from llsupervise.errors import LLSuperviseError

#: Variables a learned policy uses instead of literal directories, most specific first when
#: their values nest (a working directory inside the home directory is ``${PWD}``).
VARIABLES = ("PWD", "HOME", "TMPDIR")

_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z][A-Za-z0-9_]*)\}")


class TemplateError(LLSuperviseError):
    """A path template names a variable that has no value here."""


def usable(variables: Mapping[str, str]) -> list[tuple[str, str]]:
    """(name, value) pairs worth substituting, longest value first; "/" and relative values
    are left out (they would turn every path, or none, into a variable)."""
    pairs = [
        (name, posixpath.normpath(value))
        for name, value in variables.items()
        if value.startswith("/") and posixpath.normpath(value) != "/"
    ]
    return sorted(pairs, key=lambda pair: (-len(pair[1]), pair[0]))


def to_template(path: str, variables: Mapping[str, str]) -> str:
    """``path`` with the most specific variable directory replaced by ``${NAME}``."""
    for name, value in usable(variables):
        if path == value or path.startswith(value + "/"):
            return "${" + name + "}" + path[len(value) :].replace("$", "$$")
    return path.replace("$", "$$")


def expand(template: str, variables: Mapping[str, str]) -> str:
    """The path a template stands for; TemplateError for a variable without a value."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        found = variables.get(name)
        if not found:
            raise TemplateError(f"{template!r} uses ${{{name}}}, which is not set")
        return posixpath.normpath(found)

    return _TOKEN.sub(value, template)


def ancestors(path: str) -> Iterator[str]:
    """``path`` itself, then each parent up to ``/``."""
    while True:
        yield path
        if path == "/":
            return
        path = posixpath.dirname(path) or "/"


def is_beneath(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies beneath it (lexically)."""
    return root == "/" or path == root or path.startswith(root + "/")


def depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")
