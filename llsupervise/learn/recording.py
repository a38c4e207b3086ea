"""What learning runs saw: every access Landlock would mediate, with counts. Pure data.

Paths are templates (``llsupervise.learn.paths``): ``${PWD}/src/main.c`` rather than a literal
working directory, so runs made in different directories merge. Each run has an id; a path
keeps the ids of the runs that used it, so a merge of several runs says how many of them
needed each rule, and merging the same run twice is refused instead of counted twice.

The side file ``learn`` writes next to a policy (``POLICY.recording.json``) is
:meth:`Recording.to_json`; ``learn --merge POLICY`` reads it back with :meth:`Recording.from_json`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from msgspec import Struct, field

from llsupervise.errors import LLSuperviseError
from llsupervise.learn.paths import to_template
from llsupervise.rights import (
    NO_FS,
    NO_NET,
    AccessFs,
    AccessNet,
    UnknownAccessName,
    names,
    parse_fs,
    parse_net,
)

FORMAT = "llsupervise-recording"
VERSION = 1


class RecordingError(LLSuperviseError):
    """A recording file that cannot be used, or two recordings that cannot be merged."""


class PathUse(Struct):
    """Everything the runs did to one object (or, for creations, to its directory)."""

    access: AccessFs = NO_FS
    #: The part of ``access`` only the static layer can give: exec, and accesses the kernel
    #: judges in the caller's own context (``/dev/stdout``, ``/proc/self/fd/N``).
    static: AccessFs = NO_FS
    count: int = 0
    runs: set[str] = field(default_factory=set)
    exes: set[str] = field(default_factory=set)
    is_dir: bool = False

    def merged(self, other: PathUse) -> PathUse:
        return PathUse(
            self.access | other.access,
            self.static | other.static,
            self.count + other.count,
            self.runs | other.runs,
            self.exes | other.exes,
            self.is_dir or other.is_dir,
        )


class PortUse(Struct):
    """TCP ports bound or connected to (``record_port``)."""

    access: AccessNet = NO_NET
    count: int = 0
    runs: set[str] = field(default_factory=set)
    exes: set[str] = field(default_factory=set)

    def merged(self, other: PortUse) -> PortUse:
        return PortUse(
            self.access | other.access,
            self.count + other.count,
            self.runs | other.runs,
            self.exes | other.exes,
        )


class Recording(Struct):
    #: Run id -> the command line of that run.
    runs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    paths: dict[str, PathUse] = field(default_factory=dict)
    #: Objects that did not exist when a run began, or were gone when it ended (created,
    #: removed or renamed during the run): no rule can bind to them, only to a directory above.
    #: Path -> ids of the runs that created or removed it.
    created: dict[str, set[str]] = field(default_factory=dict)
    removed: dict[str, set[str]] = field(default_factory=dict)
    ports: dict[int, PortUse] = field(default_factory=dict)
    #: Whether TCP bind/connect were observed at all. Without it the ports say nothing, and a
    #: policy must leave the network unhandled.
    net_observed: bool = False

    @classmethod
    def new_run(cls, argv: Iterable[str], run_id: str | None = None) -> Recording:
        return cls(runs={run_id or uuid.uuid4().hex[:12]: tuple(argv)})

    @property
    def run_id(self) -> str:
        """The id of a single-run recording (the one being recorded)."""
        if len(self.runs) != 1:
            raise RecordingError(f"a recording of {len(self.runs)} runs has no single run id")
        return next(iter(self.runs))

    # -- recording (one run) ----------------------------------------------------------------

    def record_path(
        self,
        path: str,
        access: AccessFs,
        exe: str | None,
        *,
        is_dir: bool = False,
        static: AccessFs = NO_FS,
    ) -> None:
        """One access needing ``access`` on ``path`` by program ``exe`` (None: not one of the
        command's programs, such as llsupervise's launcher)."""
        use = self.paths.get(path)
        if use is None:
            use = self.paths[path] = PathUse(runs={self.run_id})
        use.access |= access | static
        use.static |= static
        use.count += 1
        if exe is not None:
            use.exes.add(exe)
        use.is_dir = use.is_dir or is_dir

    def record_created(self, path: str) -> None:
        self.created.setdefault(path, set()).add(self.run_id)

    def record_removed(self, path: str) -> None:
        self.removed.setdefault(path, set()).add(self.run_id)

    def record_port(self, port: int, access: AccessNet, exe: str) -> None:
        """One TCP bind or connect. Recording network use also sets ``net_observed``."""
        use = self.ports.get(port)
        if use is None:
            use = self.ports[port] = PortUse(runs={self.run_id})
        use.access |= access
        use.count += 1
        use.exes.add(exe)
        self.net_observed = True

    def templated(self, variables: Mapping[str, str]) -> Recording:
        """The same recording with literal paths turned into ``${VAR}`` templates."""

        def t(path: str) -> str:
            return to_template(path, variables)

        paths: dict[str, PathUse] = {}
        for path, use in self.paths.items():
            use = PathUse(use.access, use.static, use.count, set(use.runs),
                          {t(e) for e in use.exes}, use.is_dir)  # fmt: skip
            key = t(path)
            paths[key] = paths[key].merged(use) if key in paths else use
        ports = {
            port: PortUse(u.access, u.count, set(u.runs), {t(e) for e in u.exes})
            for port, u in self.ports.items()
        }
        return Recording(
            dict(self.runs),
            paths,
            _template_keys(self.created, t),
            _template_keys(self.removed, t),
            ports,
            self.net_observed,
        )

    # -- merging ------------------------------------------------------------------------------

    def merged(self, other: Recording) -> Recording:
        """Both recordings in one: counts add up, run sets unite. Commutative."""
        shared = self.runs.keys() & other.runs.keys()
        if shared:
            raise RecordingError(
                f"both recordings contain run {sorted(shared)[0]}: merging it twice would "
                "count it twice"
            )
        return Recording(
            {**self.runs, **other.runs},
            _merge_uses(self.paths, other.paths),
            _merge_sets(self.created, other.created),
            _merge_sets(self.removed, other.removed),
            _merge_uses(self.ports, other.ports),
            self.net_observed or other.net_observed,
        )

    # -- files --------------------------------------------------------------------------------

    def to_json(self) -> str:
        document = {
            "format": FORMAT,
            "version": VERSION,
            "runs": {run: list(argv) for run, argv in sorted(self.runs.items())},
            "net_observed": self.net_observed,
            "paths": {path: _use_json(use) for path, use in sorted(self.paths.items())},
            "created": {p: sorted(r) for p, r in sorted(self.created.items())},
            "removed": {p: sorted(r) for p, r in sorted(self.removed.items())},
            "ports": {str(port): _port_json(use) for port, use in sorted(self.ports.items())},
        }
        return json.dumps(document, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> Recording:
        """Parse a recording file; RecordingError names the file and the key at fault."""
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise RecordingError(f"{source}: not a recording (invalid JSON: {exc})") from None
        return _Reader(source).recording(document)


def _template_keys(
    sets: Mapping[str, set[str]], template: Callable[[str], str]
) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for path, runs in sets.items():
        result.setdefault(template(path), set()).update(runs)
    return result


def _merge_uses(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> dict[Any, Any]:
    result = dict(a)
    for key, use in b.items():
        result[key] = result[key].merged(use) if key in result else use
    return result


def _merge_sets(a: Mapping[str, set[str]], b: Mapping[str, set[str]]) -> dict[str, set[str]]:
    result = {key: set(runs) for key, runs in a.items()}
    for key, runs in b.items():
        result.setdefault(key, set()).update(runs)
    return result


def _use_json(use: PathUse) -> dict[str, Any]:
    return {
        "access": names(use.access),
        "static": names(use.static),
        "count": use.count,
        "runs": sorted(use.runs),
        "exes": sorted(use.exes),
        "dir": use.is_dir,
    }


def _port_json(use: PortUse) -> dict[str, Any]:
    return {
        "access": names(use.access),
        "count": use.count,
        "runs": sorted(use.runs),
        "exes": sorted(use.exes),
    }


class _Reader:
    """Validates a decoded recording file, naming the key of the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, message: str) -> RecordingError:
        return RecordingError(f"{self.source}: {key}: {message}" if key else
                              f"{self.source}: {message}")  # fmt: skip

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected an object, found {type(value).__name__}")
        return value

    def strings(self, value: object, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return value

    def count(self, value: object, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(key, "expected a non-negative integer")
        return value

    def flag(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, "expected true or false")
        return value

    def fs(self, value: object, key: str) -> AccessFs:
        try:
            return parse_fs(self.strings(value, key))
        except UnknownAccessName as exc:
            raise self.error(key, str(exc)) from None

    def runs(self, value: object, key: str, known: Mapping[str, object]) -> set[str]:
        runs = set(self.strings(value, key))
        unknown = runs - known.keys()
        if unknown:
            raise self.error(key, f"unknown run {sorted(unknown)[0]!r} (not in 'runs')")
        return runs

    def keys(self, table: dict[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        for name in table:
            if name not in allowed:
                raise self.error(f"{key}.{name}" if key else name, "unknown key")
        for name in allowed:
            if name not in table:
                raise self.error(key or "(top)", f"missing key {name!r}")

    def recording(self, document: object) -> Recording:
        top = self.table(document, "")
        if top.get("format") != FORMAT:
            raise self.error("format", f"expected {FORMAT!r}: this is not a recording")
        if top.get("version") != VERSION:
            raise self.error("version", f"unsupported version {top.get('version')!r}")
        allowed = ("format", "version", "runs", "net_observed", "paths", "created", "removed",
                   "ports")  # fmt: skip
        self.keys(top, "", allowed)
        runs = {
            run: tuple(self.strings(argv, f"runs.{run}"))
            for run, argv in self.table(top["runs"], "runs").items()
        }
        paths = {}
        for path, raw in self.table(top["paths"], "paths").items():
            key = f"paths[{path!r}]"
            use = self.table(raw, key)
            self.keys(use, key, ("access", "static", "count", "runs", "exes", "dir"))
            paths[path] = PathUse(
                self.fs(use["access"], f"{key}.access"),
                self.fs(use["static"], f"{key}.static"),
                self.count(use["count"], f"{key}.count"),
                self.runs(use["runs"], f"{key}.runs", runs),
                set(self.strings(use["exes"], f"{key}.exes")),
                self.flag(use["dir"], f"{key}.dir"),
            )
        created = {
            path: self.runs(r, f"created[{path!r}]", runs)
            for path, r in self.table(top["created"], "created").items()
        }
        removed = {
            path: self.runs(r, f"removed[{path!r}]", runs)
            for path, r in self.table(top["removed"], "removed").items()
        }
        ports = {}
        for port_text, raw in self.table(top["ports"], "ports").items():
            key = f"ports[{port_text!r}]"
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise self.error(key, "expected a TCP port number")
            use = self.table(raw, key)
            self.keys(use, key, ("access", "count", "runs", "exes"))
            try:
                access = parse_net(self.strings(use["access"], f"{key}.access"))
            except UnknownAccessName as exc:
                raise self.error(f"{key}.access", str(exc)) from None
            ports[int(port_text)] = PortUse(
                access,
                self.count(use["count"], f"{key}.count"),
                self.runs(use["runs"], f"{key}.runs", runs),
                set(self.strings(use["exes"], f"{key}.exes")),
            )
        net_observed = self.flag(top["net_observed"], "net_observed")
        return Recording(runs, paths, created, removed, ports, net_observed)
