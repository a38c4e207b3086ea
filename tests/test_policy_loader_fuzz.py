"""Generated and mutated policy texts: rights round-trip, and nothing but PolicyError escapes.

Four tests of 2,500 examples each (10,000 policy texts in all), derandomized so CI is stable.
"""

from __future__ import annotations

import copy
import os
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from hypothesis import given
from hypothesis import strategies as st
from policy_strategies import many_examples

from llsupervise.policy.document import NetPortEntry, PolicyDocument, PolicyError
from llsupervise.policy.loader import load_policy, parse_policy
from llsupervise.policy.locate import LineIndex
from llsupervise.rights import (
    FS_NAMES,
    LATEST_ABI,
    NET_NAMES,
    SCOPE_NAMES,
    SUPERVISOR_ONLY_FS,
    Scope,
    parse_fs,
    parse_net,
    parse_scopes,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.toml"
ENV = {"HOME": "/home/h", "PWD": "/pwd", "USER": "u"}

FUZZ = many_examples(2500)

FS_CHOICES = [
    # connect_unix is llsupervise's own, allowed only where a policy turns it on (see
    # test_policy_connect_unix): not a landlockconfig right.
    *(name for name, right in FS_NAMES.items() if not right & SUPERVISOR_ONLY_FS),
    "abi.all",
    "abi.read_execute",
    "abi.read_write",
    "v1.read_write",
    "v2.read_execute",
    "v3.all",
]
NET_CHOICES = [*NET_NAMES, "abi.all"]
SCOPE_CHOICES = [*SCOPE_NAMES, "abi.all"]

# Template -> what it expands to with VARIABLES and ENV.
TEMPLATES = {
    "/usr": ["/usr"],
    "/a/${v}": ["/a/1", "/a/2"],
    "rel/${w}": ["/pwd/rel/x"],
    "${HOME}/x": ["/home/h/x"],
    "/d$$": ["/d$"],
    "/${v}/${v}": ["/1/1", "/1/2", "/2/1", "/2/2"],
    ".": ["/pwd/."],
}
VARIABLES = (
    '[[variable]]\nname = "v"\nliteral = ["1", "2"]\n[[variable]]\nname = "w"\nliteral = ["x"]\n'
)


def check_outcome(action: Callable[[], PolicyDocument], source: str, text_lines: int) -> None:
    """Run a load: it succeeds or raises a well-formed PolicyError, never anything else."""
    try:
        document = action()
    except PolicyError as error:
        assert error.location.file == source
        assert error.location.line is None or 1 <= error.location.line <= text_lines + 1
        assert str(error).startswith(source)
    else:
        assert isinstance(document, PolicyDocument)


# -- valid documents built from strategies --------------------------------------------------------


@dataclass
class Rendered:
    """TOML text built line by line, remembering the line of each entry."""

    lines: list[str] = field(default_factory=list)
    entry_lines: dict[str, int] = field(default_factory=dict)

    def add(self, *lines: str) -> int:
        self.lines.extend(lines)
        return len(self.lines) - len(lines) + 1

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def toml_list(items: list[Any], multiline: bool) -> str:
    rendered = [f'"{i}"' if isinstance(i, str) else str(i) for i in items]
    if multiline:
        return "[\n    " + ",\n    ".join(rendered) + ",  # trailing ]\n]"
    return "[" + ", ".join(rendered) + "]"


@st.composite
def rule_tables(draw: st.DrawFn, kind: str) -> list[dict[str, Any]]:
    tables: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        if kind == "path_beneath":
            table: dict[str, Any] = {
                "allowed_access": draw(
                    st.lists(st.sampled_from(FS_CHOICES), min_size=1, max_size=4)
                ),
                "parent": draw(st.lists(st.sampled_from(list(TEMPLATES)), min_size=1, max_size=3)),
            }
            if draw(st.booleans()):
                table["optional"] = draw(st.booleans())
        elif kind == "net_port":
            table = {
                "allowed_access": draw(
                    st.lists(st.sampled_from(NET_CHOICES), min_size=1, max_size=2)
                ),
                "port": draw(st.lists(st.integers(0, 65535), min_size=1, max_size=3)),
            }
        else:
            table = {
                "parent": draw(st.lists(st.sampled_from(list(TEMPLATES)), min_size=1, max_size=3))
            }
        tables.append(table)
    return tables


def render_table_lines(table: dict[str, Any], multiline: bool, spacing: str) -> list[str]:
    lines: list[str] = []
    for key, value in table.items():
        text = toml_list(value, multiline) if isinstance(value, list) else str(value).lower()
        lines.extend(f"{key}{spacing}={spacing}{text}".split("\n"))
    return lines


def render_section(
    out: Rendered, name: str, tables: list[dict[str, Any]], layout: int, spacing: str
) -> None:
    if layout == 2:  # inline tables, one per line, as a key of the current table
        out.add(f"{name.rpartition('.')[2]} = [  # inline")
        for i, table in enumerate(tables):
            items = ", ".join(render_table_lines(table, multiline=False, spacing=" "))
            out.entry_lines[f"{name}[{i}]"] = out.add(f"  {{ {items} }},")
        out.add("]")
        return
    for i, table in enumerate(tables):
        header = f"[[{name}]]" if layout == 0 else f"[[ {name} ]]  # [[not a header]]"
        out.entry_lines[f"{name}[{i}]"] = out.add(header)
        out.add(*render_table_lines(table, multiline=layout == 1, spacing=spacing))


@dataclass
class Spec:
    abi: int | None
    ruleset: list[dict[str, Any]]
    sections: dict[str, list[dict[str, Any]]]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    ruleset: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        entry = {
            key: draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3))
            for key, choices in (
                ("handled_access_fs", FS_CHOICES),
                ("handled_access_net", NET_CHOICES),
                ("scoped", SCOPE_CHOICES),
            )
            if draw(st.booleans())
        }
        ruleset.append(entry or {"scoped": ["signal"]})
    names = ["path_beneath", "net_port", "supervisor.path_beneath", "supervisor.net_port"]
    names.append("supervisor.quiet")
    sections = {
        name: draw(rule_tables(name.rpartition(".")[2])) for name in names if draw(st.booleans())
    }
    return Spec(draw(st.none() | st.integers(1, LATEST_ABI)), ruleset, sections)


def render(spec: Spec, layout: int, spacing: str) -> Rendered:
    out = Rendered()
    out.add("# generated policy")
    if spec.abi is not None:
        out.add(f"abi = {spec.abi}")
    static = [n for n in spec.sections if not n.startswith("supervisor.")]
    for name in static:  # before any header, so that inline arrays stay top-level keys
        render_section(out, name, spec.sections[name], layout, spacing)
    out.add(*VARIABLES.strip().split("\n"))
    for entry in spec.ruleset:
        out.add("[[ruleset]]", *render_table_lines(entry, multiline=False, spacing=spacing))
    out.add("[supervisor]", 'mode = "enforce"')
    for name in spec.sections:
        if name not in static:
            render_section(out, name, spec.sections[name], layout, spacing)
    return out


def expected_paths(parents: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for t in parents for p in TEMPLATES[t]))


def rule_names(spec: Spec, section: str) -> list[str]:
    return [n for t in spec.sections.get(section, []) for n in t["allowed_access"]]


def ruleset_names(spec: Spec, key: str) -> list[str]:
    return [n for entry in spec.ruleset for n in entry.get(key, [])]


def parsed_section(document: PolicyDocument, name: str) -> tuple[Any, ...]:
    owner: Any = document.supervisor if name.startswith("supervisor.") else document
    return tuple(getattr(owner, name.rpartition(".")[2]))


def check_rules(document: PolicyDocument, spec: Spec, out: Rendered, abi: int) -> None:
    """Each rule's rights, paths, ports and line match the spec."""
    for name, tables in spec.sections.items():
        parse = parse_net if name.endswith("net_port") else parse_fs
        expected = [
            (i, table, parse(table["allowed_access"], abi) if "allowed_access" in table else None)
            for i, table in enumerate(tables)
        ]
        # Rules left without any right at this ABI are dropped, as landlockconfig does.
        expected = [(i, table, access) for i, table, access in expected if access != 0]
        entries = parsed_section(document, name)
        assert len(entries) == len(expected)
        for entry, (i, table, access) in zip(entries, expected, strict=True):
            assert entry.location.key == f"{name}[{i}]"
            assert entry.location.line == out.entry_lines[f"{name}[{i}]"]
            if isinstance(entry, NetPortEntry):
                assert entry.ports == tuple(dict.fromkeys(table["port"]))
            else:
                assert entry.paths == expected_paths(table["parent"])
                assert entry.optional == table.get("optional", False)
            if access is not None:
                assert entry.access == access


@FUZZ
@given(spec=specs(), layout=st.integers(0, 2), spacing=st.sampled_from([" ", "", "   "]))
def test_generated_documents_round_trip_rights(spec: Spec, layout: int, spacing: str) -> None:
    out = render(spec, layout, spacing)
    abi = LATEST_ABI if spec.abi is None else spec.abi
    fs = parse_fs(ruleset_names(spec, "handled_access_fs") + rule_names(spec, "path_beneath"), abi)
    net = parse_net(ruleset_names(spec, "handled_access_net") + rule_names(spec, "net_port"), abi)
    supervisor_fs = parse_fs(rule_names(spec, "supervisor.path_beneath"), abi)
    supervisor_net = parse_net(rule_names(spec, "supervisor.net_port"), abi)
    if not spec.ruleset:
        fs, net = fs | supervisor_fs, net | supervisor_net
    elif supervisor_fs & ~fs or supervisor_net & ~net:
        # A supervisor rule cannot widen an explicit ruleset: the one error expected here.
        try:
            parse_policy(out.text, "gen.toml", ENV)
        except PolicyError as error:
            assert error.location.key.startswith("supervisor."), error
            assert error.location.key.endswith("].allowed_access"), error
            assert "not handled by the layer" in error.message
            return
        raise AssertionError(f"accepted a supervisor right beyond the ruleset:\n{out.text}")
    document = parse_policy(out.text, "gen.toml", ENV)
    check_rules(document, spec, out, abi)
    assert document.abi == spec.abi
    assert document.handled_fs == fs
    assert document.handled_net == net
    stated = any("scoped" in entry for entry in spec.ruleset)
    # Without a scoped key, signal is scoped (from ABI 6, the first with scopes).
    default = Scope.SIGNAL if not stated and abi >= 6 else Scope(0)
    assert document.scoped == parse_scopes(ruleset_names(spec, "scoped"), abi) | default
    assert document.scoped_stated == stated
    assert document.supervisor.mode == "enforce"
    assert document.variables["v"] == ("1", "2")


# -- mutated example files -----------------------------------------------------------------------

EXAMPLE_BYTES = EXAMPLE.read_bytes()
EXAMPLE_KEYS = sorted(
    {k for line in EXAMPLE_BYTES.split(b"\n") for k in line.split() if k.isalnum()}
)


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    data = EXAMPLE_BYTES
    for _ in range(draw(st.integers(1, 4))):
        lines = data.split(b"\n")
        index = draw(st.integers(0, max(len(lines) - 1, 0)))
        operation = draw(st.sampled_from(["flip", "delete", "duplicate", "rename", "insert"]))
        if operation == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
            continue
        if operation == "delete":
            del lines[index]
        elif operation == "duplicate":
            lines.insert(index, lines[index] if lines else b"")
        elif operation == "rename":
            old = draw(st.sampled_from(EXAMPLE_KEYS))
            new = draw(st.sampled_from([*EXAMPLE_KEYS, b"x", b"", b"abi", b"[[", b"${", b"$$"]))
            lines[index] = lines[index].replace(old, new, 1)
        elif operation == "insert":
            lines.insert(index, draw(st.binary(max_size=20)))
        data = b"\n".join(lines)
    return data


@FUZZ
@given(data=mutated_bytes())
def test_mutated_example_files_only_raise_policy_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "policy.toml")
        Path(path).write_bytes(data)
        check_outcome(lambda: load_policy(path, ENV), path, data.count(b"\n") + 1)


# -- structurally mutated example documents ------------------------------------------------------

EXAMPLE_DATA: dict[str, Any] = tomllib.loads(EXAMPLE_BYTES.decode())

toml_values = st.recursive(
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet="/.$ {}abc_AZ0\\\"'", max_size=12)
    | st.sampled_from([*FS_CHOICES, *NET_CHOICES, "${HOME}", "${nope}", "interactive"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["parent", "port", "x_y", "allowed_access"]), children)
    ),
    max_leaves=6,
)


def containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every dict and list inside ``node``."""
    found = [path]
    children = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in children:
        if isinstance(child, dict | list):
            found += containers(child, (*path, key))
    return found


def mutate(document: dict[str, Any], data: st.DataObject) -> None:
    """Replace, add or delete one value somewhere in ``document``."""
    target: Any = document
    for key in data.draw(st.sampled_from(containers(document))):
        target = target[key]
    delete = data.draw(st.booleans())
    if isinstance(target, list):
        index = data.draw(st.integers(0, len(target)))
        if index == len(target):
            target.append(data.draw(toml_values))
        elif delete:
            del target[index]
        else:
            target[index] = data.draw(toml_values)
        return
    key = data.draw(st.sampled_from([*target, "extra_key", "optional", "port", "mode"]))
    if delete:
        target.pop(key, None)
    else:
        target[key] = data.draw(toml_values)


@FUZZ
@given(data=st.data())
def test_structurally_mutated_documents_locate_their_errors(data: st.DataObject) -> None:
    document = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(data.draw(st.integers(1, 3))):
        mutate(document, data)
    text = tomlkit.dumps(document)
    try:
        parse_policy(text, "mut.toml", ENV)
    except PolicyError as error:
        assert str(error).startswith("mut.toml")
        if error.location.key:
            # Every key the loader names can be found again in the text it came from.
            assert error.location.line is not None, (error, text)


# -- arbitrary text ------------------------------------------------------------------------------

FRAGMENTS = [
    "[[path_beneath]]",
    "[supervisor]",
    "[[supervisor.quiet]]",
    "parent = ",
    "allowed_access = ",
    "port = ",
    '"${HOME}"',
    "'''",
    '"""',
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    "#",
    "\n",
    "\r\n",
    ".",
    '"',
    "'",
    "\\",
    " ",
    "abi",
    "1",
    "true",
    '"abi.all"',
]


@FUZZ
@given(
    text=st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=40).map("".join),
    key=st.sampled_from(["abi", "path_beneath[0].parent[1]", "supervisor.quiet[0]", "a.b[2]"]),
)
def test_arbitrary_text_only_raises_policy_error(text: str, key: str) -> None:
    check_outcome(lambda: parse_policy(text, "any.toml", ENV), "any.toml", text.count("\n") + 1)
    line = LineIndex(text).line(key)
    assert line is None or 1 <= line <= text.count("\n") + 1
