"""A parsed, validated but unresolved policy file.

Every value here comes straight from the TOML text after type checks, name resolution and variable
expansion. Nothing has touched the filesystem: paths are strings that a later step opens, reporting
the missing ones with the :class:`Location` recorded for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from llsupervise.errors import LLSuperviseError
from llsupervise.rights import AccessFs, AccessNet, Scope

Mode = Literal["interactive", "enforce", "permissive"]
Default = Literal["deny", "allow_once"]

MODES: tuple[Mode, ...] = ("interactive", "enforce", "permissive")
DEFAULTS: tuple[Default, ...] = ("deny", "allow_once")


@dataclass(frozen=True)
class Location:
    """Where a value came from: the file, its 1-based line when known, and its key path.

    ``key`` reads like ``supervisor.path_beneath[1].parent[0]``; it is empty for errors about the
    file as a whole (unreadable, not UTF-8, TOML syntax).
    """

    file: str
    line: int | None
    key: str

    def __str__(self) -> str:
        text = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{text}: {self.key}" if self.key else text


@dataclass(frozen=True)
class PathBeneathEntry:
    access: AccessFs
    #: Expanded paths, absolute (relative ones were joined to ``PWD``), duplicates removed.
    paths: tuple[str, ...]
    #: llsupervise extension: a missing path is skipped instead of failing the load.
    optional: bool
    location: Location
    #: One per entry of ``paths``: the ``parent[i]`` string it was expanded from.
    path_locations: tuple[Location, ...]


@dataclass(frozen=True)
class NetPortEntry:
    access: AccessNet
    ports: tuple[int, ...]
    location: Location


@dataclass(frozen=True)
class QuietEntry:
    """Objects whose denials are still denied but never prompted for."""

    paths: tuple[str, ...]
    optional: bool
    location: Location
    path_locations: tuple[Location, ...]


@dataclass(frozen=True)
class SupervisorSection:
    """The ``[supervisor]`` table: the mutable layer, reloaded and committed on save."""

    mode: Mode = "interactive"
    prompt_timeout: float = 30.0
    default: Default = "deny"
    path_beneath: tuple[PathBeneathEntry, ...] = ()
    net_port: tuple[NetPortEntry, ...] = ()
    quiet: tuple[QuietEntry, ...] = ()


@dataclass(frozen=True)
class PolicyDocument:
    source: str
    #: The ``abi`` key as written; ``abi.*`` groups were resolved with it, or with
    #: :data:`llsupervise.rights.LATEST_ABI` when it is absent.
    abi: int | None
    #: Handled rights of the supervised layer: ``[[ruleset]]`` plus every right a rule uses.
    handled_fs: AccessFs
    handled_net: AccessNet
    scoped: Scope
    path_beneath: tuple[PathBeneathEntry, ...]
    net_port: tuple[NetPortEntry, ...]
    supervisor: SupervisorSection
    #: Every variable that was defined (predefined ones included), fully expanded.
    variables: Mapping[str, tuple[str, ...]] = field(hash=False)


class PolicyError(LLSuperviseError):
    """A policy file that cannot be used, with the place to fix it."""

    location: Location
    message: str

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def __reduce__(self) -> tuple[type[PolicyError], tuple[Location, str]]:
        # Keeps the error picklable although __init__ takes two arguments.
        return (PolicyError, (self.location, self.message))
