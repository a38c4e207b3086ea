"""A policy as a plain landlockconfig file, for tools that read only that format.

The result has the static and the (unconditional) supervisor rules merged into one layer,
every variable resolved, explicit right names instead of ``abi.*`` groups (so its meaning does
not depend on an ``abi`` key), ``$`` escaped, and none of llsupervise's extensions: no
``[supervisor]`` table, no ``optional`` key (skipped optional paths are simply absent), no
conditional rules (landlockconfig cannot express them), no ``connect_unix`` right (the
supervisor layer's own). Its keys are landlockconfig's TOML
keys: ``[[ruleset]]`` ``handled_access_fs`` / ``handled_access_net`` / ``scoped``,
``[[path_beneath]]`` ``allowed_access`` / ``parent``, ``[[net_port]]`` ``allowed_access`` /
``port``, each array non-empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from llsupervise.errors import LLSuperviseError
from llsupervise.rights import SUPERVISOR_ONLY_FS, AccessFs, AccessNet, Scope, names


class ExportError(LLSuperviseError):
    """The policy cannot be written as a landlockconfig file."""


def toml_string(text: str) -> str:
    """A TOML basic string; control characters escaped, undecodable names refused."""
    out = ['"']
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise ExportError(f"path {text!r} is not valid UTF-8: TOML cannot hold it")
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _array(items: Iterable[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _names(flags: AccessFs | AccessNet | Scope) -> str:
    return _array(toml_string(name) for name in names(flags))


def to_landlockconfig(
    handled_fs: AccessFs,
    handled_net: AccessNet,
    scoped: Scope,
    fs_rules: Sequence[tuple[str, AccessFs]],
    net_rules: Mapping[int, AccessNet],
    comment: Sequence[str] = (),
) -> str:
    """landlockconfig TOML for one layer; ``fs_rules`` are (absolute path, rights) pairs."""
    lines = [f"# {line}" if line else "#" for line in comment]
    # landlockconfig has no right for the supervisor layer's own (connect_unix): left out.
    handled_fs &= ~SUPERVISOR_ONLY_FS
    fs_rules = [(path, access & ~SUPERVISOR_ONLY_FS) for path, access in fs_rules]
    ruleset = [
        f"{key} = {_names(flags)}"
        for key, flags in (
            ("handled_access_fs", handled_fs),
            ("handled_access_net", handled_net),
            ("scoped", scoped),
        )
        if flags
    ]
    if ruleset:
        lines += ["", "[[ruleset]]", *ruleset]
    by_access: dict[AccessFs, list[str]] = {}
    for path, access in sorted(fs_rules):
        if access:
            # landlockconfig expands ${...} and $$ in paths: keep a literal $.
            by_access.setdefault(access, []).append(path.replace("$", "$$"))
    for access, paths in by_access.items():
        lines += [
            "",
            "[[path_beneath]]",
            f"allowed_access = {_names(access)}",
            f"parent = {_array(toml_string(p) for p in paths)}",
        ]
    ports: dict[AccessNet, list[int]] = {}
    for port, net_access in sorted(net_rules.items()):
        if net_access:
            ports.setdefault(net_access, []).append(port)
    for net_access, numbers in ports.items():
        lines += [
            "",
            "[[net_port]]",
            f"allowed_access = {_names(net_access)}",
            f"port = {_array(str(n) for n in numbers)}",
        ]
    if not (ruleset or by_access or ports):
        raise ExportError("nothing to export: the policy handles no right and has no rule")
    return "\n".join(lines).lstrip("\n") + "\n"
