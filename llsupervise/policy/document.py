"""A parsed, validated but unresolved policy file.

Every value here comes straight from the TOML text after type checks, name resolution and variable
expansion. Nothing has touched the filesystem: paths are strings that a later step opens, reporting
the missing ones with the :class:`Location` recorded for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, NoReturn

from msgspec import Struct

from llsupervise.errors import LLSuperviseError
from llsupervise.rights import AccessFs, AccessNet, Scope

Mode = Literal["interactive", "enforce", "permissive"]
Default = Literal["deny", "allow_once"]

MODES: tuple[Mode, ...] = ("interactive", "enforce", "permissive")
DEFAULTS: tuple[Default, ...] = ("deny", "allow_once")


class Location:
    """Where a value came from: the file, its 1-based line when known, and its key path.

    ``key`` reads like ``supervisor.path_beneath[1].parent[0]``; it is empty for errors about the
    file as a whole (unreadable, not UTF-8, TOML syntax). Immutable; equal to, and hashed
    like, any location with the same file, line and key (lazy ones below included).

    Written out rather than a Struct: its subclasses work out ``line`` (and ``key``) only when
    asked for, which a Struct's fields cannot be.
    """

    file: str
    line: int | None
    key: str

    def __init__(self, file: str, line: int | None, key: str) -> None:
        # Straight into the instance dict, as __setattr__ refuses.
        self.__dict__.update(file=file, line=line, key=key)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"a location is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"a location is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Location):
            return NotImplemented
        return (self.file, self.line, self.key) == (other.file, other.line, other.key)

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.key))

    def __repr__(self) -> str:
        return f"Location(file={self.file!r}, line={self.line!r}, key={self.key!r})"

    def __reduce__(self) -> tuple[type[Location], tuple[str, int | None, str]]:
        return (Location, (self.file, self.line, self.key))

    def __str__(self) -> str:
        text = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{text}: {self.key}" if self.key else text


class LazyLocation(Location):
    """A :class:`Location` whose line is looked up only when asked for.

    Every rule of a policy carries its location, but lines are read only for messages:
    finding them lazily keeps loading (and reloading) a large policy fast."""

    def __init__(self, file: str, key: str, lines: Callable[[str], int | None]) -> None:
        self.__dict__.update(file=file, key=key, _lines=lines)

    # Read-only here: worked out when asked for.
    @property
    def line(self) -> int | None:  # type: ignore[override]
        line: int | None = self._lines(self.key)  # type: ignore[attr-defined]
        return line


class TableArray:
    """An array of tables of one policy text: what its elements' locations have in common."""

    __slots__ = ("file", "key", "lines")

    def __init__(self, file: str, key: str, lines: Callable[[str], int | None]) -> None:
        self.file = file
        self.key = key
        self.lines = lines


class ElementLocation(LazyLocation):
    """The location of table ``index`` of a :class:`TableArray`, or of its ``parent[n]`` string.

    Both the key and the line are worked out only when asked for: a large policy makes two of
    these per rule and hardly ever reads one."""

    _array: TableArray
    _index: int
    _parent: int

    def __init__(self, array: TableArray, index: int, parent: int = -1) -> None:
        # Item by item into the instance dict: the cheapest way to make one.
        state = self.__dict__
        state["_array"] = array
        state["_index"] = index
        state["_parent"] = parent

    @property
    def file(self) -> str:  # type: ignore[override]
        return self._array.file

    @property
    def key(self) -> str:  # type: ignore[override]
        key = f"{self._array.key}[{self._index}]"
        return key if self._parent < 0 else f"{key}.parent[{self._parent}]"

    @property
    def line(self) -> int | None:  # type: ignore[override]
        return self._array.lines(self.key)


class PathBeneathEntry(Struct, frozen=True):
    access: AccessFs
    #: Expanded paths, absolute (relative ones were joined to ``PWD``), duplicates removed.
    paths: tuple[str, ...]
    #: llsupervise extension: a missing path is skipped instead of failing the load.
    optional: bool
    location: Location
    #: One per entry of ``paths``: the ``parent[i]`` string it was expanded from.
    path_locations: tuple[Location, ...]
    #: llsupervise extension (supervisor rules only): the rule applies only to requests from
    #: these executables (absolute paths, as /proc/PID/exe shows them once resolved) ...
    exe: tuple[str, ...] = ()
    #: ... and/or from processes in this cgroup v2 subtree (an absolute cgroup path).
    cgroup: str | None = None

    @property
    def conditional(self) -> bool:
        """A rule that applies only to some requesters: kept out of the shared ruleset."""
        return bool(self.exe) or self.cgroup is not None


class NetPortEntry(Struct, frozen=True):
    access: AccessNet
    ports: tuple[int, ...]
    location: Location


class QuietEntry(Struct, frozen=True):
    """Objects whose denials are still denied but never prompted for."""

    paths: tuple[str, ...]
    optional: bool
    location: Location
    path_locations: tuple[Location, ...]


class SupervisorSection(Struct, frozen=True):
    """The ``[supervisor]`` table: the mutable layer, reloaded and committed on save."""

    mode: Mode = "interactive"
    prompt_timeout: float = 30.0
    default: Default = "deny"
    #: Whether the supervisor layer judges connect()/sendto() to pathname UNIX sockets
    #: (the ``connect_unix`` right): off unless the policy says so.
    handle_connect_unix: bool = False
    path_beneath: tuple[PathBeneathEntry, ...] = ()
    net_port: tuple[NetPortEntry, ...] = ()
    quiet: tuple[QuietEntry, ...] = ()


class PolicyDocument(Struct, frozen=True):
    source: str
    #: The ``abi`` key as written; ``abi.*`` groups were resolved with it, or with
    #: :data:`llsupervise.rights.LATEST_ABI` when it is absent.
    abi: int | None
    #: Handled rights of the supervised layer: ``[[ruleset]]`` plus every right a rule uses.
    handled_fs: AccessFs
    handled_net: AccessNet
    #: The ``scoped`` keys, or the signal scope when no ``[[ruleset]]`` states ``scoped``.
    scoped: Scope
    path_beneath: tuple[PathBeneathEntry, ...]
    net_port: tuple[NetPortEntry, ...]
    supervisor: SupervisorSection
    #: Every variable that was defined (predefined ones included), fully expanded.
    variables: Mapping[str, tuple[str, ...]]
    #: Whether a ``[[ruleset]]`` states ``scoped`` (its scopes are then exactly those).
    scoped_stated: bool = False

    def __hash__(self) -> int:
        # Without the variables (a mapping): they only explain the rules' paths.
        return hash(tuple(getattr(self, name) for name in self.__struct_fields__
                          if name != "variables"))  # fmt: skip


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
