"""Fields of policy tables that need more than a type check: paths (expanded, absolute),
ports, executables, cgroups, ``optional`` and the prompt timeout."""

from __future__ import annotations

import os

from llsupervise.policy.document import Location
from llsupervise.policy.tomlcheck import (
    Context,
    checked_array,
    checked_strings,
    is_int,
    required_value,
    type_name,
)
from llsupervise.policy.variables import Variables

_MAX_PORT = 65535
_MAX_TIMEOUT = 1e9  # seconds; keeps timer arithmetic finite


class FieldReader:
    """Reads one kind of field at a time, expanding variables, with located errors."""

    def __init__(self, context: Context, variables: Variables) -> None:
        self.context = context
        self.variables = variables

    def ports(self, value: object, key: str) -> tuple[int, ...]:
        ports: list[int] = []
        for i, port in enumerate(
            checked_array(self.context, value, key, "integers", non_empty=True)
        ):
            if not is_int(port):
                raise self.context.error(
                    f"{key}[{i}]", f"expected an integer, found {type_name(port)}"
                )
            if not 0 <= port <= _MAX_PORT:
                raise self.context.error(
                    f"{key}[{i}]", f"port {port} is out of range 0..{_MAX_PORT}"
                )
            if port not in ports:
                ports.append(port)
        return tuple(ports)

    def executables(self, table: dict[str, object], key: str) -> tuple[str, ...]:
        """``exe``: absolute executable paths, variables expanded, duplicates removed."""
        if "exe" not in table:
            return ()
        found: dict[str, None] = {}
        for exe_key, template in checked_strings(self.context, table["exe"], f"{key}.exe"):
            for path in self.variables.expand(template, exe_key):
                if not path.startswith("/"):
                    raise self.context.error(
                        exe_key, f"executable {path!r} must be an absolute path"
                    )
                if "\0" in path:
                    raise self.context.error(exe_key, f"path {path!r} contains a NUL character")
                found[path] = None
        return tuple(found)

    def cgroup(self, table: dict[str, object], key: str) -> str | None:
        """``cgroup``: one absolute cgroup v2 path (as in /proc/PID/cgroup), normalised."""
        if "cgroup" not in table:
            return None
        cgroup_key = f"{key}.cgroup"
        value = table["cgroup"]
        if not isinstance(value, str):
            raise self.context.error(cgroup_key, f"expected a string, found {type_name(value)}")
        expanded = self.variables.expand(value, cgroup_key)
        if len(expanded) != 1:
            raise self.context.error(
                cgroup_key, f"{value!r} must expand to one cgroup, not {len(expanded)}"
            )
        path = expanded[0]
        if not path.startswith("/"):
            raise self.context.error(
                cgroup_key, f"cgroup {path!r} must be an absolute path such as /user.slice"
            )
        parts = [part for part in path.split("/") if part]
        if any(part in (".", "..") for part in parts) or "\0" in path:
            raise self.context.error(cgroup_key, f"cgroup {path!r} is not a plain cgroup path")
        return "/" + "/".join(parts)

    def optional(self, table: dict[str, object], key: str) -> bool:
        value = table.get("optional", False)
        if not isinstance(value, bool):
            raise self.context.error(
                f"{key}.optional", f"expected a boolean, found {type_name(value)}"
            )
        return value

    def paths(
        self, table: dict[str, object], key: str
    ) -> tuple[tuple[str, ...], tuple[Location, ...]]:
        """Expanded, absolute, de-duplicated ``parent`` paths, each with its string's location."""
        found: dict[str, Location] = {}
        parents = required_value(self.context, table, key, "parent")
        for parent_key, template in checked_strings(self.context, parents, f"{key}.parent"):
            location = self.context.loc(parent_key)
            for path in self.variables.expand(template, parent_key):
                found.setdefault(self.absolute(path, parent_key), location)
        return tuple(found), tuple(found.values())

    def absolute(self, path: str, key: str) -> str:
        if not path:
            raise self.context.error(key, "empty path")
        if "\0" in path:
            raise self.context.error(key, f"path {path!r} contains a NUL character")
        if path.startswith("/"):
            return path
        pwd = self.variables.values.get("PWD")
        if pwd is None:
            raise self.context.error(key, f"relative path {path!r} needs PWD, which is not set")
        return os.path.join(pwd[0], path)

    def timeout(self, value: object) -> float:
        key = "supervisor.prompt_timeout"
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.context.error(key, f"expected a number of seconds, found {type_name(value)}")
        # Written so that NaN fails too.
        if not 0 < value <= _MAX_TIMEOUT:
            raise self.context.error(key, f"must be greater than 0 and at most {_MAX_TIMEOUT:g}")
        return float(value)

    def boolean(self, table: dict[str, object], name: str) -> bool:
        """A ``[supervisor]`` switch (false when absent)."""
        value = table.get(name, False)
        if not isinstance(value, bool):
            raise self.context.error(
                f"supervisor.{name}", f"expected a boolean, found {type_name(value)}"
            )
        return value
