"""Parse and validate policy files into a :class:`PolicyDocument`.

The static part is landlockconfig's TOML format and follows its semantics:

* ``handled_*`` of all ``[[ruleset]]`` entries are unioned, and every right used by a top-level
  ``[[path_beneath]]`` or ``[[net_port]]`` rule is added to them ("keep the ruleset consistent").
  Without any ``[[ruleset]]`` the handled rights are therefore inferred from the rules alone.
* ``[[variable]]`` entries with the same name add up (their literals are unioned); a variable with
  no ``literal`` is empty, so a path using it expands to nothing. In strings ``${name}`` expands,
  ``$$`` is a ``$`` and any other ``$`` is kept as is. A string using a variable with several
  values expands to one path per value (the cartesian product when it uses several variables).
* A rule whose access resolves to no right (``abi.all`` for ``net_port`` at ABI < 4) is dropped.

Where llsupervise differs, and why:

* ``abi.*`` groups resolve with :data:`~llsupervise.rights.LATEST_ABI` when ``abi`` is absent
  (landlockconfig rejects them) so that a short hand-written policy means "everything this code
  knows about"; write ``abi = N`` to pin the meaning.
* ``HOME``, ``PWD``, ``TMPDIR`` (``/tmp`` when unset) and ``USER`` are predefined from the
  environment and may not be redefined; literals may use variables (landlockconfig keeps them
  verbatim) so that ``${PWD}/build`` works; relative paths are joined to ``PWD``. ``TTY`` is
  ``/dev/tty``: the program's own terminal (a pty of the TUI's, or in headless mode the terminal
  it shares with us), never the supervisor's or attach's.
* ``optional = true`` in a ``path_beneath`` table and the whole ``[supervisor]`` table are
  extensions; so are ``exe`` and ``cgroup`` in a ``[[supervisor.path_beneath]]`` table, which make
  the rule conditional (it applies only to requests from those executables or that cgroup
  subtree, and is never part of the shared supervisor ruleset). Supervisor rules do not change a
  layer's handled rights once it runs, so with an explicit ``[[ruleset]]`` a supervisor rule using
  a right that is not handled is an error; without one, supervisor rules take part in the
  inference like static rules.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeGuard, TypeVar

import tomli

from llsupervise.policy.document import (
    DEFAULTS,
    MODES,
    ElementLocation,
    Location,
    NetPortEntry,
    PathBeneathEntry,
    PolicyDocument,
    PolicyError,
    QuietEntry,
    SupervisorSection,
    TableArray,
)
from llsupervise.policy.fields import FieldReader
from llsupervise.policy.tomlcheck import (
    Context,
    checked_choice,
    checked_strings,
    checked_table,
    checked_tables,
    is_int,
    parse_access,
    required_value,
    type_name,
)
from llsupervise.policy.variables import PREDEFINED_VARIABLES, Variables, variable_name_error
from llsupervise.rights import (
    LATEST_ABI,
    NO_FS,
    NO_NET,
    NO_SCOPE,
    SUPERVISOR_ONLY_FS,
    AccessFs,
    AccessNet,
    Scope,
    names,
    parse_fs,
    parse_net,
    parse_scopes,
)

__all__ = ["PREDEFINED_VARIABLES", "load_policy", "parse_policy"]

_TOP_KEYS = ("abi", "ruleset", "variable", "path_beneath", "net_port", "supervisor")
_RULESET_KEYS = ("handled_access_fs", "handled_access_net", "scoped")
#: The first ABI with scopes.
_SCOPES_ABI = 6
_VARIABLE_KEYS = ("name", "literal")
_PATH_BENEATH_KEYS = ("allowed_access", "parent", "optional")
_SUPERVISOR_PATH_BENEATH_KEYS = (*_PATH_BENEATH_KEYS, "exe", "cgroup")
_NET_PORT_KEYS = ("allowed_access", "port")
_QUIET_KEYS = ("parent", "optional")
_SUPERVISOR_KEYS = (
    "mode", "prompt_timeout", "default", "handle_connect_unix", "path_beneath", "net_port", "quiet"
)  # fmt: skip

_MAX_ABI = 2**31 - 1  # landlockconfig's bound

_POSITION = re.compile(r" \(at line (\d+), column (\d+)\)$")
_END_OF_DOCUMENT = " (at end of document)"

_Flag = TypeVar("_Flag", AccessFs, AccessNet, Scope)


def load_policy(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> PolicyDocument:
    """Read and parse a policy file; ``PWD`` defaults to the current directory."""
    source = os.fspath(path)
    text = _read_text(source)
    environment = dict(os.environ if env is None else env)
    if not environment.get("PWD"):
        # A deleted working directory leaves PWD unset: relative paths are then reported.
        with contextlib.suppress(OSError):
            environment["PWD"] = os.getcwd()
    return parse_policy(text, source, environment)


def parse_policy(text: str, source: str, env: Mapping[str, str] | None = None) -> PolicyDocument:
    """Parse policy text; ``source`` names it in errors. Raises only :class:`PolicyError`."""
    return _parse(text, source, env, shortcuts=True)


def _parse(
    text: str, source: str, env: Mapping[str, str] | None, *, shortcuts: bool
) -> PolicyDocument:
    """``shortcuts=False`` takes the general path for every rule (tests compare the two)."""
    context = Context(source, text)
    document = _decode_toml(context, text)
    return _Builder(context, document, os.environ if env is None else env, shortcuts).build()


# -- reading ------------------------------------------------------------------------------------


def _read_text(source: str) -> str:
    try:
        data = Path(source).read_bytes()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(
            Location(source, None, ""), f"cannot read policy file: {reason}"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})"
        raise PolicyError(Location(source, line, ""), message) from None


def _decode_toml(context: Context, text: str) -> dict[str, object]:
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise _syntax_error(context.source, text, exc) from None
    except RecursionError:
        # The parser recurses once per nesting level of arrays and inline tables.
        raise PolicyError(Location(context.source, None, ""), "values nested too deeply") from None


def _syntax_error(source: str, text: str, exc: tomli.TOMLDecodeError) -> PolicyError:
    message = str(exc)
    line: int | None = None
    found = _POSITION.search(message)
    if found:
        line = int(found[1])
        message = f"{message[: found.start()]} (column {found[2]})"
    elif message.endswith(_END_OF_DOCUMENT):
        line = text.rstrip().count("\n") + 1
        message = message.removesuffix(_END_OF_DOCUMENT) + " (at end of file)"
    return PolicyError(Location(source, line, ""), f"TOML syntax error: {message}")


# -- shared validation helpers -------------------------------------------------------------------


# -- variables -----------------------------------------------------------------------------------


# -- the document --------------------------------------------------------------------------------


class _Builder:
    """Walks the decoded TOML in section order and builds the document."""

    def __init__(
        self,
        context: Context,
        document: dict[str, object],
        env: Mapping[str, str],
        shortcuts: bool = True,
    ) -> None:
        self.context = context
        self.shortcuts = shortcuts
        self.root = checked_table(context, document, "", _TOP_KEYS)
        self.abi_value = self._abi()
        self.abi = LATEST_ABI if self.abi_value is None else self.abi_value
        self.variables = Variables(context, env, self._variable_definitions())
        self.fields = FieldReader(context, self.variables)
        self._known_fs: dict[tuple[str, ...], AccessFs] = {}
        self._known_net: dict[tuple[str, ...], AccessNet] = {}
        self._known_scopes: dict[tuple[str, ...], Scope] = {}

    def build(self) -> PolicyDocument:
        self._require_content()
        self.variables.resolve_all()
        handled_fs, handled_net, scoped = self._rulesets()
        path_beneath = self._path_beneath_list(self.root.get("path_beneath"), "path_beneath")
        net_port = self._net_port_list(self.root.get("net_port"), "net_port")
        supervisor = self._supervisor()
        _check_supervisor_only(self.context, path_beneath, supervisor)
        if supervisor.handle_connect_unix:
            handled_fs |= SUPERVISOR_ONLY_FS
        # landlockconfig: every right a static rule uses becomes handled.
        handled_fs |= _union(e.access for e in path_beneath)
        handled_net |= _union(e.access for e in net_port)
        if "ruleset" in self.root:
            _check_handled(self.context, supervisor, handled_fs, handled_net)
        else:
            handled_fs |= _union(e.access for e in supervisor.path_beneath)
            handled_net |= _union(e.access for e in supervisor.net_port)
        return PolicyDocument(
            source=self.context.source,
            abi=self.abi_value,
            handled_fs=AccessFs(handled_fs),
            handled_net=AccessNet(handled_net),
            scoped=scoped,
            scoped_stated=_scoped_stated(self.root),
            path_beneath=path_beneath,
            net_port=net_port,
            supervisor=supervisor,
            variables=dict(self.variables.values),
        )

    def _require_content(self) -> None:
        if not any(name in self.root for name in _TOP_KEYS[1:]):
            raise PolicyError(
                Location(self.context.source, None, ""),
                "empty policy: expected at least one of [[ruleset]], [[variable]], "
                "[[path_beneath]], [[net_port]] or [supervisor]",
            )

    def _abi(self) -> int | None:
        value = self.root.get("abi")
        if value is None:
            return None
        if not is_int(value):
            raise self.context.error("abi", f"expected an integer, found {type_name(value)}")
        if not 1 <= value <= _MAX_ABI:
            raise self.context.error("abi", f"ABI version must be between 1 and {_MAX_ABI}")
        return value

    def _variable_definitions(self) -> dict[str, list[tuple[str, str]]]:
        definitions: dict[str, list[tuple[str, str]]] = {}
        if "variable" not in self.root:
            return definitions
        for key, table in checked_tables(
            self.context, self.root["variable"], "variable", _VARIABLE_KEYS, non_empty=True
        ):
            name_key = f"{key}.name"
            name = required_value(self.context, table, key, "name")
            if not isinstance(name, str):
                raise self.context.error(name_key, f"expected a string, found {type_name(name)}")
            problem = variable_name_error(name)
            if problem:
                raise self.context.error(name_key, problem)
            if name in PREDEFINED_VARIABLES:
                raise self.context.error(name_key, f"variable {name!r} is predefined")
            literals = definitions.setdefault(name, [])
            if "literal" in table:
                literals.extend(checked_strings(self.context, table["literal"], f"{key}.literal"))
        return definitions

    def _rulesets(self) -> tuple[AccessFs, AccessNet, Scope]:
        fs, net, scoped = NO_FS, NO_NET, NO_SCOPE
        if "ruleset" not in self.root:
            return fs, net, _default_scopes(self.abi)
        for key, table in checked_tables(
            self.context, self.root["ruleset"], "ruleset", _RULESET_KEYS, non_empty=True
        ):
            if not table:
                raise self.context.error(
                    key, f"empty ruleset: set one of {', '.join(_RULESET_KEYS)}"
                )
            if "handled_access_fs" in table:
                handled = self._fs(table["handled_access_fs"], f"{key}.handled_access_fs")
                if handled & SUPERVISOR_ONLY_FS:
                    raise self.context.error(
                        f"{key}.handled_access_fs",
                        "connect_unix is llsupervise's own right, which landlockconfig does "
                        "not know: handle it with [supervisor] handle_connect_unix = true",
                    )
                fs |= handled
            if "handled_access_net" in table:
                net |= self._net(table["handled_access_net"], f"{key}.handled_access_net")
            if "scoped" in table:
                scoped |= parse_access(
                    self.context,
                    table["scoped"],
                    f"{key}.scoped",
                    parse_scopes,
                    self.abi,
                    self._known_scopes,
                )
        if not _scoped_stated(self.root):
            scoped |= _default_scopes(self.abi)
        return fs, net, scoped

    def _fs(self, value: object, key: str) -> AccessFs:
        return parse_access(self.context, value, key, parse_fs, self.abi, self._known_fs)

    def _net(self, value: object, key: str) -> AccessNet:
        return parse_access(self.context, value, key, parse_net, self.abi, self._known_net)

    # -- rules --

    def _path_beneath_list(
        self, value: object, key: str, non_empty: bool = True, supervisor: bool = False
    ) -> tuple[PathBeneathEntry, ...]:
        if value is None:
            return ()
        allowed = _SUPERVISOR_PATH_BENEATH_KEYS if supervisor else _PATH_BENEATH_KEYS
        if self.shortcuts:
            entries = self._entries_with_shortcut(value, key, allowed, non_empty)
        else:
            entries = [
                self._path_beneath(table, entry_key)
                for entry_key, table in checked_tables(self.context, value, key, allowed, non_empty)
            ]
        # landlockconfig drops rules left without any right
        return tuple(entry for entry in entries if entry.access)

    def _path_beneath(self, table: dict[str, object], key: str) -> PathBeneathEntry:
        """One ``path_beneath`` table, already checked to be a table with allowed keys only."""
        access = self._fs(
            required_value(self.context, table, key, "allowed_access"), f"{key}.allowed_access"
        )
        paths, locations = self.fields.paths(table, key)
        optional = self.fields.optional(table, key)
        return PathBeneathEntry(
            access,
            paths,
            optional,
            self.context.loc(key),
            locations,
            exe=self.fields.executables(table, key),
            cgroup=self.fields.cgroup(table, key),
        )

    def _entries_with_shortcut(
        self, value: object, key: str, allowed: tuple[str, ...], non_empty: bool
    ) -> list[PathBeneathEntry]:
        """What the general path gives, with a shortcut for the rule most policies repeat.

        That rule is a table of exactly ``allowed_access`` (an array seen before, so known to be
        valid) and ``parent`` (absolute paths without ``$`` or NUL): it cannot be wrong. Every
        other table takes the general path, which makes all errors. As on the general path,
        every table's type and keys are checked before looking into any, so that the first error
        is the same.
        """
        if _all_tables_with(value, frozenset(allowed), non_empty):
            tables = value
        else:  # the general check, which reports what is wrong
            tables = [
                table for _, table in checked_tables(self.context, value, key, allowed, non_empty)
            ]
        array = self.context.array(key)
        known = self._known_fs
        entries: list[PathBeneathEntry] = []
        for index, table in enumerate(tables):
            if len(table) == 2:  # with the checks below: allowed_access and parent only
                names = table.get("allowed_access")
                parents = table.get("parent")
                if type(names) is list and type(parents) is list:
                    try:
                        access = known.get(tuple(names))
                    except TypeError:  # an unhashable item (array, table)
                        access = None
                    if access is not None and len(parents) == 1:
                        # The usual rule, inlined: one path, nothing to de-duplicate.
                        path = parents[0]
                        if _is_plain_path(path):
                            entries.append(
                                PathBeneathEntry(
                                    access,
                                    (path,),
                                    False,
                                    ElementLocation(array, index),
                                    (ElementLocation(array, index, 0),),
                                )
                            )
                            continue
                    elif access is not None:
                        entry = _plain_entry(access, parents, array, index)
                        if entry is not None:
                            entries.append(entry)
                            continue
            entries.append(self._path_beneath(table, f"{key}[{index}]"))
        return entries

    def _net_port_list(
        self, value: object, key: str, non_empty: bool = True
    ) -> tuple[NetPortEntry, ...]:
        if value is None:
            return ()
        entries = []
        for entry_key, table in checked_tables(self.context, value, key, _NET_PORT_KEYS, non_empty):
            access_key = f"{entry_key}.allowed_access"
            access = self._net(
                required_value(self.context, table, entry_key, "allowed_access"), access_key
            )
            ports = self.fields.ports(
                required_value(self.context, table, entry_key, "port"), f"{entry_key}.port"
            )
            if access:
                entries.append(NetPortEntry(access, ports, self.context.loc(entry_key)))
        return tuple(entries)

    def _quiet_list(self, value: object, key: str) -> tuple[QuietEntry, ...]:
        if value is None:
            return ()
        entries = []
        for entry_key, table in checked_tables(
            self.context, value, key, _QUIET_KEYS, non_empty=False
        ):
            paths, locations = self.fields.paths(table, entry_key)
            optional = self.fields.optional(table, entry_key)
            entries.append(QuietEntry(paths, optional, self.context.loc(entry_key), locations))
        return tuple(entries)

    # -- supervisor --

    def _supervisor(self) -> SupervisorSection:
        if "supervisor" not in self.root:
            return SupervisorSection()
        table = checked_table(self.context, self.root["supervisor"], "supervisor", _SUPERVISOR_KEYS)
        defaults = SupervisorSection()
        return SupervisorSection(
            mode=checked_choice(
                self.context, table.get("mode", defaults.mode), "supervisor.mode", MODES
            ),
            prompt_timeout=self.fields.timeout(
                table.get("prompt_timeout", defaults.prompt_timeout)
            ),
            handle_connect_unix=self.fields.boolean(table, "handle_connect_unix"),
            default=checked_choice(
                self.context, table.get("default", defaults.default), "supervisor.default", DEFAULTS
            ),
            path_beneath=self._path_beneath_list(
                table.get("path_beneath"),
                "supervisor.path_beneath",
                non_empty=False,
                supervisor=True,
            ),
            net_port=self._net_port_list(
                table.get("net_port"), "supervisor.net_port", non_empty=False
            ),
            quiet=self._quiet_list(table.get("quiet"), "supervisor.quiet"),
        )


def _all_tables_with(
    value: object, allowed: frozenset[str], non_empty: bool
) -> TypeGuard[list[dict[str, object]]]:
    """Whether ``value`` is an array of tables with allowed keys only (what _tables checks)."""
    if type(value) is not list or (non_empty and not value):
        return False
    only = allowed.issuperset
    return all(type(table) is dict and only(table) for table in value)


def _plain_entry(
    access: AccessFs, parents: list[object], array: TableArray, index: int
) -> PathBeneathEntry | None:
    """The entry for a non-empty array of plain ``parent`` strings, else None."""
    first: dict[str, int] = {}  # each path with the index of its first string
    for i, path in enumerate(parents):
        if not _is_plain_path(path):
            return None
        first.setdefault(path, i)
    if not first:
        return None  # an empty array: the general path reports it
    return PathBeneathEntry(
        access,
        tuple(first),
        False,
        ElementLocation(array, index),
        tuple(ElementLocation(array, index, i) for i in first.values()),
    )


def _is_plain_path(path: object) -> TypeGuard[str]:
    """A ``parent`` string that is its own path: absolute, no variable, no NUL."""
    return type(path) is str and path.startswith("/") and "$" not in path and "\0" not in path


def _union(flags: Iterable[_Flag]) -> int:
    result = 0
    for flag in flags:
        result |= int(flag)  # plain ints: a flag's own | is much slower
    return result


def _scoped_stated(root: dict[str, object]) -> bool:
    """Whether a ``[[ruleset]]`` states ``scoped`` (its scopes are then exactly those)."""
    rulesets = root.get("ruleset")
    return isinstance(rulesets, list) and any(
        isinstance(t, dict) and "scoped" in t for t in rulesets
    )


def _default_scopes(abi: int) -> Scope:
    """The signal scope unless the policy says otherwise (or targets an ABI without scopes):
    the program cannot signal outside its domain, so not the supervisor."""
    return Scope.SIGNAL if abi >= _SCOPES_ABI else NO_SCOPE


def _check_supervisor_only(
    context: Context, static: tuple[PathBeneathEntry, ...], supervisor: SupervisorSection
) -> None:
    """``connect_unix`` (the supervisor layer's own right) only in unconditional
    ``[[supervisor.path_beneath]]`` rules, and only when ``[supervisor]`` handles it."""
    for e in static:
        if e.access & SUPERVISOR_ONLY_FS:
            raise context.error(
                f"{e.location.key}.allowed_access",
                f"{', '.join(names(e.access & SUPERVISOR_ONLY_FS))} is judged by the "
                "supervisor layer only (landlockconfig does not know it): "
                "put it in a [[supervisor.path_beneath]]",
            )
    for e in supervisor.path_beneath:
        if not e.access & SUPERVISOR_ONLY_FS:
            continue
        if e.exe or e.cgroup is not None:
            raise context.error(
                f"{e.location.key}.allowed_access",
                "connect_unix cannot be granted conditionally (exe, cgroup): "
                "put it in a rule of its own without them",
            )
        if not supervisor.handle_connect_unix:
            raise context.error(
                f"{e.location.key}.allowed_access",
                "connect_unix not handled: add handle_connect_unix = true to [supervisor]",
            )


def _check_handled(
    context: Context, supervisor: SupervisorSection, handled_fs: AccessFs, handled_net: AccessNet
) -> None:
    """Supervisor rules cannot widen a running layer's handled rights: refuse extra ones."""
    # Plain ints: one check per rule, and a flag's own operators are slow.
    not_fs, not_net = ~int(handled_fs), ~int(handled_net)
    checks: list[tuple[str, AccessFs | AccessNet, str]] = [
        (e.location.key, AccessFs(int(e.access) & not_fs), "handled_access_fs")
        for e in supervisor.path_beneath
        if int(e.access) & not_fs
    ]
    checks += [
        (e.location.key, AccessNet(int(e.access) & not_net), "handled_access_net")
        for e in supervisor.net_port
        if int(e.access) & not_net
    ]
    for key, extra, ruleset_key in checks[:1]:
        raise context.error(
            f"{key}.allowed_access",
            f"{', '.join(names(extra))} not handled by the layer: add to [[ruleset]] {ruleset_key}",
        )
