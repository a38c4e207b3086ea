"""Policy files: parsing, validation, variable expansion and error locations."""

from __future__ import annotations

import os
import pickle
import textwrap
import tomllib
from pathlib import Path

import pytest

from llsupervise.policy.document import Location, PolicyDocument, PolicyError, SupervisorSection
from llsupervise.policy.loader import load_policy, parse_policy
from llsupervise.policy.locate import LineIndex, locate
from llsupervise.rights import (
    LATEST_ABI,
    AccessFs,
    AccessNet,
    Scope,
    fs_all,
    fs_read_execute,
    fs_read_write,
    net_all,
    scope_all,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.toml"
ENV = {"HOME": "/home/ada", "PWD": "/src/project", "USER": "ada"}

# The sample of DESIGN.md section 6, verbatim: the contract every policy reader honours.
DESIGN_SAMPLE = """\
abi = 7                                   # best-effort target; optional

[[ruleset]]                               # handled rights of the supervised layer
handled_access_fs = ["abi.all"]
handled_access_net = ["bind_tcp", "connect_tcp"]
scoped = ["abi.all"]

[[variable]]                              # ${work} below; HOME, PWD, TMPDIR, USER are predefined
name = "work"
literal = ["${PWD}/build"]

[[path_beneath]]                          # static (supervisee) rules: fixed for the whole run
allowed_access = ["abi.read_execute"]
parent = ["/usr", "/lib", "/etc", "/proc", "/dev"]

[[net_port]]
allowed_access = ["connect_tcp"]
port = [443]

[supervisor]                              # the mutable layer: reloaded and committed on save
mode = "interactive"                      # interactive | enforce (deny without asking) | permissive
prompt_timeout = 30                       # seconds before `default` applies
default = "deny"

[[supervisor.path_beneath]]
allowed_access = ["abi.read_write"]
parent = ["${work}"]

[[supervisor.net_port]]
allowed_access = ["bind_tcp"]
port = [8080]

[[supervisor.quiet]]                      # denied without a prompt (the kernel series' quiet flag)
parent = ["${HOME}/.ssh"]
"""

RX = '["abi.read_execute"]'


def parse(text: str, env: dict[str, str] | None = None) -> PolicyDocument:
    return parse_policy(textwrap.dedent(text), "p.toml", ENV if env is None else env)


def parse_error(text: str, env: dict[str, str] | None = None) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse(text, env)
    return info.value


# -- documents that load ---------------------------------------------------------------------------


def test_example_config_loads_on_this_machine() -> None:
    document = load_policy(EXAMPLE)
    assert document.abi == 7
    assert document.handled_fs == fs_all(7)
    assert document.supervisor.mode == "interactive"
    assert document.supervisor.quiet
    for entry in (*document.path_beneath, *document.supervisor.path_beneath):
        if not entry.optional:
            for path in entry.paths:
                assert os.path.exists(path), path


def test_design_sample_loads() -> None:
    document = parse(DESIGN_SAMPLE)
    assert document.abi == 7
    assert document.handled_fs == fs_all(7)
    assert document.handled_net == AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
    assert document.scoped == scope_all(7)
    (static,) = document.path_beneath
    assert static.access == fs_read_execute(7)
    assert static.paths == ("/usr", "/lib", "/etc", "/proc", "/dev")
    assert document.net_port[0].ports == (443,)
    supervisor = document.supervisor
    assert (supervisor.mode, supervisor.prompt_timeout, supervisor.default) == (
        "interactive",
        30.0,
        "deny",
    )
    assert supervisor.path_beneath[0].paths == ("/src/project/build",)
    assert supervisor.path_beneath[0].access == fs_read_write(7)
    assert supervisor.net_port[0].access == AccessNet.BIND_TCP
    assert supervisor.quiet[0].paths == ("/home/ada/.ssh",)
    assert document.variables["work"] == ("/src/project/build",)
    assert document.variables["TMPDIR"] == ("/tmp",)


def test_locations_point_at_entries_and_strings() -> None:
    document = parse(DESIGN_SAMPLE)
    entry = document.supervisor.path_beneath[0]
    assert entry.location == Location("p.toml", 25, "supervisor.path_beneath[0]")
    assert entry.path_locations == (Location("p.toml", 27, "supervisor.path_beneath[0].parent[0]"),)
    assert str(entry.location) == "p.toml:25: supervisor.path_beneath[0]"
    assert document.supervisor.quiet[0].location.line == 33
    assert document.net_port[0].location.line == 16


def test_supervisor_defaults() -> None:
    document = parse(f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/usr']\n")
    assert document.supervisor == SupervisorSection()
    assert document.supervisor.mode == "interactive"
    assert document.supervisor.prompt_timeout == 30.0
    assert document.supervisor.default == "deny"
    assert parse("[supervisor]\n").supervisor == SupervisorSection()


def test_supervisor_settings() -> None:
    document = parse(
        """
        [supervisor]
        mode = "permissive"
        prompt_timeout = 2.5
        default = "allow_once"
        path_beneath = []
        """
    )
    assert document.supervisor == SupervisorSection("permissive", 2.5, "allow_once")


def test_inline_and_dotted_forms() -> None:
    document = parse(
        """
        path_beneath = [ { allowed_access = ["read_file"], parent = ["/etc"] } ]
        supervisor.mode = "enforce"
        supervisor.net_port = [{ allowed_access = ["connect_tcp"], port = [80, 80, 443] }]
        """
    )
    assert document.path_beneath[0].access == AccessFs.READ_FILE
    assert document.path_beneath[0].location.line == 2
    assert document.supervisor.mode == "enforce"
    assert document.supervisor.net_port[0].ports == (80, 443)
    assert document.supervisor.net_port[0].location.line == 4


# -- rights --------------------------------------------------------------------------------------


def test_v1_read_write_lacks_refer() -> None:
    document = parse("[[path_beneath]]\nallowed_access = ['v1.read_write']\nparent = ['/tmp']\n")
    access = document.path_beneath[0].access
    assert AccessFs.REFER not in access
    assert AccessFs.EXECUTE not in access
    assert AccessFs.WRITE_FILE in access
    assert AccessFs.MAKE_SYM in access


@pytest.mark.parametrize("abi", range(1, LATEST_ABI + 1))
def test_abi_groups_follow_the_abi_key(abi: int) -> None:
    document = parse(
        f"""
        abi = {abi}
        [[ruleset]]
        handled_access_fs = ["abi.all"]
        handled_access_net = ["abi.all"]
        scoped = ["abi.all"]
        [[path_beneath]]
        allowed_access = ["abi.read_execute"]
        parent = ["/usr"]
        """
    )
    assert document.handled_fs == fs_all(abi)
    assert document.handled_net == net_all(abi)
    assert document.scoped == scope_all(abi)
    assert (AccessFs.REFER in document.path_beneath[0].access) == (abi >= 2)


def test_abi_groups_without_abi_use_the_latest() -> None:
    document = parse("[[ruleset]]\nhandled_access_fs = ['abi.all']\n")
    assert document.abi is None
    assert document.handled_fs == fs_all(LATEST_ABI)


def test_rule_without_any_right_at_its_abi_is_dropped() -> None:
    document = parse("abi = 3\n[[net_port]]\nallowed_access = ['abi.all']\nport = [1]\n")
    assert document.net_port == ()
    assert document.handled_net == AccessNet(0)


def test_handled_rights_inferred_from_all_rules_without_ruleset() -> None:
    document = parse(
        """
        [[path_beneath]]
        allowed_access = ["read_file"]
        parent = ["/etc"]
        [[supervisor.path_beneath]]
        allowed_access = ["write_file"]
        parent = ["/tmp"]
        [[supervisor.net_port]]
        allowed_access = ["bind_tcp"]
        port = [8080]
        """
    )
    assert document.handled_fs == AccessFs.READ_FILE | AccessFs.WRITE_FILE
    assert document.handled_net == AccessNet.BIND_TCP
    assert document.scoped == Scope.SIGNAL  # the default: the supervisor out of reach
    assert not document.scoped_stated


@pytest.mark.parametrize(
    ("text", "scoped", "stated"),
    [
        ("[[ruleset]]\nhandled_access_fs = ['read_file']\n", Scope.SIGNAL, False),
        ("abi = 6\n[[ruleset]]\nhandled_access_fs = ['read_file']\n", Scope.SIGNAL, False),
        ("abi = 5\n[[ruleset]]\nhandled_access_fs = ['read_file']\n", Scope(0), False),
        (
            "[[ruleset]]\nhandled_access_fs = ['read_file']\n"
            "[[ruleset]]\nscoped = ['abstract_unix_socket']\n",
            Scope.ABSTRACT_UNIX_SOCKET,
            True,
        ),
        ("abi = 5\n[[ruleset]]\nscoped = ['abi.all']\n", Scope(0), True),
    ],
)
def test_signal_is_scoped_unless_the_policy_states_its_scopes(
    text: str, scoped: Scope, stated: bool
) -> None:
    document = parse(text)
    assert document.scoped == scoped
    assert document.scoped_stated == stated


def test_static_rules_add_to_an_explicit_ruleset() -> None:
    document = parse(
        """
        [[ruleset]]
        handled_access_fs = ["read_file"]
        [[ruleset]]
        scoped = ["signal"]
        [[path_beneath]]
        allowed_access = ["execute"]
        parent = ["/usr"]
        [[net_port]]
        allowed_access = ["connect_tcp"]
        port = [443]
        """
    )
    assert document.handled_fs == AccessFs.READ_FILE | AccessFs.EXECUTE
    assert document.handled_net == AccessNet.CONNECT_TCP
    assert document.scoped == Scope.SIGNAL


def test_supervisor_rule_beyond_explicit_ruleset_is_rejected() -> None:
    error = parse_error(
        """
        [[ruleset]]
        handled_access_fs = ["read_file"]
        [[supervisor.path_beneath]]
        allowed_access = ["read_file", "write_file"]
        parent = ["/tmp"]
        """
    )
    assert error.location == Location("p.toml", 5, "supervisor.path_beneath[0].allowed_access")
    assert "write_file not handled" in error.message
    assert "handled_access_fs" in error.message


def test_supervisor_net_rule_beyond_explicit_ruleset_is_rejected() -> None:
    error = parse_error(
        """
        [[ruleset]]
        handled_access_fs = ["read_file"]
        [[supervisor.net_port]]
        allowed_access = ["bind_tcp"]
        port = [1]
        """
    )
    assert error.location.key == "supervisor.net_port[0].allowed_access"
    assert "handled_access_net" in error.message


# -- variables and paths -------------------------------------------------------------------------


def test_variables_expand_to_cartesian_products() -> None:
    document = parse(
        """
        [[variable]]
        name = "foo"
        literal = ["a", "b"]
        [[variable]]
        name = "bar"
        literal = ["X", "Y", "Z"]
        [[path_beneath]]
        allowed_access = ["execute"]
        parent = ["/before/${foo}/${bar}/after", "/${foo}"]
        """
    )
    entry = document.path_beneath[0]
    assert entry.paths == (
        "/before/a/X/after",
        "/before/a/Y/after",
        "/before/a/Z/after",
        "/before/b/X/after",
        "/before/b/Y/after",
        "/before/b/Z/after",
        "/a",
        "/b",
    )
    keys = [loc.key for loc in entry.path_locations]
    assert keys == ["path_beneath[0].parent[0]"] * 6 + ["path_beneath[0].parent[1]"] * 2


def test_variable_redefinition_unions_literals() -> None:
    document = parse(
        """
        [[variable]]
        name = "d"
        literal = ["/a", "/b"]
        [[variable]]
        name = "d"
        literal = ["/b", "/c"]
        [[variable]]
        name = "empty"
        [[path_beneath]]
        allowed_access = ["execute"]
        parent = ["${d}", "${empty}/x"]
        """
    )
    assert document.variables["d"] == ("/a", "/b", "/c")
    assert document.variables["empty"] == ()
    assert document.path_beneath[0].paths == ("/a", "/b", "/c")


def test_variables_may_be_used_before_definition_and_in_literals() -> None:
    document = parse(
        """
        [[path_beneath]]
        allowed_access = ["execute"]
        parent = ["${outer}"]
        [[variable]]
        name = "outer"
        literal = ["${inner}/o"]
        [[variable]]
        name = "inner"
        literal = ["${HOME}", "/i"]
        """
    )
    assert document.path_beneath[0].paths == ("/home/ada/o", "/i/o")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/x/$$", "/x/$"),
        ("/x/$${foo}", "/x/${foo}"),
        ("/x/$${${foo}", "/x/${bar"),
        ("/x/{${foo}", "/x/{bar"),
        ("/x/$foo", "/x/$foo"),
        ("/x/$", "/x/$"),
        ("/x/$$$", "/x/$$"),
    ],
)
def test_dollar_escapes(template: str, expected: str) -> None:
    document = parse(
        f"""
        [[variable]]
        name = "foo"
        literal = ["bar"]
        [[path_beneath]]
        allowed_access = ["execute"]
        parent = ['{template}']
        """
    )
    assert document.path_beneath[0].paths == (expected,)


def test_relative_paths_join_pwd() -> None:
    document = parse(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['.', 'sub/dir', '/abs']\n"
    )
    assert document.path_beneath[0].paths == ("/src/project/.", "/src/project/sub/dir", "/abs")


def test_duplicate_paths_are_merged() -> None:
    document = parse(f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/a', '/a', '/b']\n")
    assert document.path_beneath[0].paths == ("/a", "/b")
    assert [loc.key[-9:] for loc in document.path_beneath[0].path_locations] == [
        "parent[0]",
        "parent[2]",
    ]


def test_optional_flag() -> None:
    document = parse(
        f"""
        [[path_beneath]]
        allowed_access = {RX}
        parent = ["/maybe"]
        optional = true
        [[path_beneath]]
        allowed_access = {RX}
        parent = ["/surely"]
        [[supervisor.quiet]]
        parent = ["/q"]
        optional = true
        """
    )
    assert [e.optional for e in document.path_beneath] == [True, False]
    assert document.supervisor.quiet[0].optional


def test_tmpdir_comes_from_env_or_defaults() -> None:
    text = f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['${{TMPDIR}}']\n"
    assert parse(text).path_beneath[0].paths == ("/tmp",)
    assert parse(text, {"TMPDIR": "/var/tmp"}).path_beneath[0].paths == ("/var/tmp",)


# -- errors --------------------------------------------------------------------------------------

ERRORS = [
    pytest.param(
        'abi = 7\ncolour = "blue"\n',
        2,
        "colour",
        "unknown key 'colour'",
        id="unknown-top-level-key",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\n\n"
        f"[[path_beneath]]\nallowed_acces = {RX}\nparent = ['/b']\n",
        6,
        "path_beneath[1].allowed_acces",
        "unknown key 'allowed_acces'",
        id="unknown-nested-key",
    ),
    pytest.param(
        "[supervisor]\nmode = 'enforce'\ncolour = 1\n",
        3,
        "supervisor.colour",
        "unknown key 'colour'",
        id="unknown-supervisor-key",
    ),
    pytest.param(
        "[[ruleset]]\nhandled_access_fs = ['abi.all']\n"
        "[[supervisor.path_beneath]]\nallowed_access = [\n  'read_file',\n  'raed_file',\n]\n"
        "parent = ['/a']\n",
        6,
        "supervisor.path_beneath[0].allowed_access[1]",
        "unknown filesystem access 'raed_file'",
        id="bad-access-name",
    ),
    pytest.param(
        "[[net_port]]\nallowed_access = ['connect_tpc']\nport = [1]\n",
        2,
        "net_port[0].allowed_access[0]",
        "unknown network access 'connect_tpc'",
        id="bad-net-access-name",
    ),
    pytest.param(
        "[[ruleset]]\nscoped = ['signals']\n",
        2,
        "ruleset[0].scoped[0]",
        "unknown scope 'signals'",
        id="bad-scope-name",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = '/usr'\n",
        3,
        "path_beneath[0].parent",
        "expected an array of strings, found a string",
        id="string-instead-of-list",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/usr', 3]\n",
        3,
        "path_beneath[0].parent[1]",
        "expected a string, found an integer",
        id="integer-in-string-list",
    ),
    pytest.param(
        "path_beneath = 'nope'\n",
        1,
        "path_beneath",
        "expected an array of tables, found a string",
        id="string-instead-of-tables",
    ),
    pytest.param(
        "[[supervisor]]\nmode = 'enforce'\n",
        1,
        "supervisor",
        "expected a table, found an array",
        id="array-of-supervisors",
    ),
    pytest.param(
        "[[net_port]]\nallowed_access = ['bind_tcp']\nport = [\n  80,\n  65536,\n]\n",
        5,
        "net_port[0].port[1]",
        "port 65536 is out of range 0..65535",
        id="port-out-of-range",
    ),
    pytest.param(
        "[[net_port]]\nallowed_access = ['bind_tcp']\nport = [-1]\n",
        3,
        "net_port[0].port[0]",
        "out of range",
        id="negative-port",
    ),
    pytest.param(
        "[[net_port]]\nallowed_access = ['bind_tcp']\nport = [true]\n",
        3,
        "net_port[0].port[0]",
        "expected an integer, found a boolean",
        id="boolean-port",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/a', '${{nope}}/x']\n",
        3,
        "path_beneath[0].parent[1]",
        "unknown variable 'nope'",
        id="unknown-variable",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['${{HOME']\n",
        3,
        "path_beneath[0].parent[0]",
        "unclosed '${'",
        id="unclosed-reference",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['${{1st}}']\n",
        3,
        "path_beneath[0].parent[0]",
        "must start with an ASCII letter",
        id="bad-reference-name",
    ),
    pytest.param(
        "[[variable]]\nname = 'foo-bar'\nliteral = ['x']\n",
        2,
        "variable[0].name",
        "only ASCII letters, digits and '_'",
        id="bad-variable-name",
    ),
    pytest.param(
        "[[variable]]\nname = 'HOME'\nliteral = ['/x']\n",
        2,
        "variable[0].name",
        "variable 'HOME' is predefined",
        id="predefined-redefined",
    ),
    pytest.param(
        "[[variable]]\nname = 'a'\nliteral = ['${b}']\n"
        "[[variable]]\nname = 'b'\nliteral = ['${a}']\n",
        6,
        "variable[1].literal[0]",
        "refers to itself (a -> b -> a)",
        id="variable-cycle",
    ),
    pytest.param(
        "[[variable]]\nliteral = ['x']\n",
        1,
        "variable[0]",
        "missing required key 'name'",
        id="variable-without-name",
    ),
    pytest.param(
        "[[path_beneath]]\nallowed_access = []\nparent = ['/a']\n",
        2,
        "path_beneath[0].allowed_access",
        "expected a non-empty array of strings",
        id="empty-access",
    ),
    pytest.param(
        "path_beneath = []\n",
        1,
        "path_beneath",
        "expected a non-empty array of tables",
        id="empty-rule-list",
    ),
    pytest.param(
        f"\n\n[[path_beneath]]\nallowed_access = {RX}\n",
        3,
        "path_beneath[0]",
        "missing required key 'parent'",
        id="missing-parent",
    ),
    pytest.param(
        "[[ruleset]]\n",
        1,
        "ruleset[0]",
        "empty ruleset",
        id="empty-ruleset",
    ),
    pytest.param("abi = 0\n[[ruleset]]\nscoped = ['signal']\n", 1, "abi", "between 1", id="abi-0"),
    pytest.param(
        "abi = true\n[[ruleset]]\nscoped = ['signal']\n",
        1,
        "abi",
        "expected an integer, found a boolean",
        id="abi-bool",
    ),
    pytest.param(
        "abi = 2147483648\n[[ruleset]]\nscoped = ['signal']\n", 1, "abi", "between", id="abi-big"
    ),
    pytest.param(
        "[supervisor]\nmode = 'interactve'\n",
        2,
        "supervisor.mode",
        "expected one of 'interactive', 'enforce', 'permissive', found 'interactve'",
        id="bad-mode",
    ),
    pytest.param(
        "[supervisor]\ndefault = 1\n",
        2,
        "supervisor.default",
        "found an integer",
        id="bad-default",
    ),
    pytest.param(
        "[supervisor]\nprompt_timeout = 0\n",
        2,
        "supervisor.prompt_timeout",
        "greater than 0",
        id="zero-timeout",
    ),
    pytest.param(
        "[supervisor]\nprompt_timeout = nan\n",
        2,
        "supervisor.prompt_timeout",
        "greater than 0",
        id="nan-timeout",
    ),
    pytest.param(
        "[supervisor]\nprompt_timeout = '30'\n",
        2,
        "supervisor.prompt_timeout",
        "expected a number of seconds, found a string",
        id="string-timeout",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\noptional = 'yes'\n",
        4,
        "path_beneath[0].optional",
        "expected a boolean, found a string",
        id="bad-optional",
    ),
    pytest.param(
        "[supervisor]\n[[supervisor.quiet]]\nparent = ['/a']\naccess = ['read_file']\n",
        4,
        "supervisor.quiet[0].access",
        "unknown key 'access'",
        id="quiet-has-no-access",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['']\n",
        3,
        "path_beneath[0].parent[0]",
        "empty path",
        id="empty-path",
    ),
    pytest.param(
        f'[[path_beneath]]\nallowed_access = {RX}\nparent = ["/a\\u0000b"]\n',
        3,
        "path_beneath[0].parent[0]",
        "NUL",
        id="nul-in-path",
    ),
    pytest.param(
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\nexe = ['/usr/bin/git']\n",
        4,
        "path_beneath[0].exe",
        "unknown key 'exe'",
        id="static-rule-cannot-be-conditional",
    ),
    pytest.param(
        f"[[supervisor.path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\nexe = ['git']\n",
        4,
        "supervisor.path_beneath[0].exe[0]",
        "executable 'git' must be an absolute path",
        id="relative-exe",
    ),
    pytest.param(
        f"[[supervisor.path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\nexe = '/bin/x'\n",
        4,
        "supervisor.path_beneath[0].exe",
        "expected an array of strings, found a string",
        id="exe-not-a-list",
    ),
    pytest.param(
        f"[[supervisor.path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\ncgroup = 3\n",
        4,
        "supervisor.path_beneath[0].cgroup",
        "expected a string, found an integer",
        id="cgroup-not-a-string",
    ),
    pytest.param(
        f"[[supervisor.path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\n\n"
        "cgroup = 'user.slice'\n",
        5,
        "supervisor.path_beneath[0].cgroup",
        "must be an absolute path",
        id="relative-cgroup",
    ),
    pytest.param(
        f"[[supervisor.path_beneath]]\nallowed_access = {RX}\nparent = ['/a']\n"
        "cgroup = '/a/../b'\n",
        4,
        "supervisor.path_beneath[0].cgroup",
        "not a plain cgroup path",
        id="cgroup-dotdot",
    ),
    pytest.param(
        "[[variable]]\nname = 'v'\nliteral = ['/a', '/b']\n[[supervisor.path_beneath]]\n"
        f"allowed_access = {RX}\nparent = ['/a']\ncgroup = '${{v}}'\n",
        7,
        "supervisor.path_beneath[0].cgroup",
        "must expand to one cgroup, not 2",
        id="cgroup-several-values",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "message"), ERRORS)
def test_errors_name_file_line_and_key(text: str, line: int, key: str, message: str) -> None:
    error = parse_error(text)
    assert error.location == Location("p.toml", line, key)
    assert message in error.message
    assert str(error) == f"p.toml:{line}: {key}: {error.message}"


def test_bad_access_name_message_reads_well() -> None:
    error = parse_error(
        """
        [[supervisor.path_beneath]]
        allowed_access = ["read_file", "raed_file"]
        parent = ["/a"]
        """
    )
    assert str(error).startswith(
        "p.toml:3: supervisor.path_beneath[0].allowed_access[1]: "
        "unknown filesystem access 'raed_file' (expected one of execute, write_file"
    )


def test_relative_path_without_pwd() -> None:
    error = parse_error(f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/a', 'rel']\n", {})
    assert error.location == Location("p.toml", 3, "path_beneath[0].parent[1]")
    assert "relative path 'rel' needs PWD" in error.message


def test_predefined_variable_missing_from_env() -> None:
    error = parse_error(f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['${{HOME}}']\n", {})
    assert error.message == "variable 'HOME' is not set in the environment"


def test_cartesian_explosion_is_refused() -> None:
    literals = ", ".join(f"'{i}'" for i in range(20))
    refs = "${v}" * 4
    error = parse_error(
        f"[[variable]]\nname = 'v'\nliteral = [{literals}]\n"
        f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['/{refs}']\n"
    )
    assert error.location.key == "path_beneath[0].parent[0]"
    assert "too many" in error.message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("abi = 7\n[[ruleset]\nscoped = ['signal']\n", 2, "column"),
        ("abi = 7\nabi = 8\n", 2, "TOML syntax error"),
        ("[[path_beneath]]\nparent = ['/a',\n", 2, "TOML syntax error"),
        ("a = \n", 1, "Invalid value"),
    ],
)
def test_syntax_error_line(text: str, line: int, fragment: str) -> None:
    error = parse_error(text)
    assert error.location.line == line
    assert error.location.key == ""
    assert fragment in error.message
    assert str(error).startswith(f"p.toml:{line}: TOML syntax error")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "abi = 7\n"])
def test_empty_policy_is_refused(text: str) -> None:
    error = parse_error(text)
    assert error.location == Location("p.toml", None, "")
    assert "empty policy" in error.message
    assert str(error).startswith("p.toml: empty policy")


def test_deeply_nested_values_are_a_policy_error() -> None:
    with pytest.raises(PolicyError):
        parse("x = " + "[" * 5000 + "]" * 5000 + "\n")


# -- files ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "absent.toml")
    assert info.value.location == Location(str(tmp_path / "absent.toml"), None, "")
    assert "cannot read policy file" in info.value.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert info.value.location.line is None


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"abi = 7\n# caf\xe9\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.location.line == 2
    assert "UTF-8" in info.value.message


def test_load_policy_defaults_pwd_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"[[path_beneath]]\nallowed_access = {RX}\nparent = ['.']\n")
    monkeypatch.chdir(tmp_path)
    document = load_policy(path, env={})
    assert document.source == str(path)
    assert document.path_beneath[0].paths == (os.path.join(os.getcwd(), "."),)


def test_policy_error_pickles() -> None:
    error = parse_error("abi = 7\ncolour = 1\n")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.location, copy.message, str(copy)) == (error.location, error.message, str(error))


# -- locate --------------------------------------------------------------------------------------

TRICKY = """\
# [[path_beneath]] in a comment does not count
abi = 7 # [[supervisor.path_beneath]]

[ other ]   # spaces inside the brackets
x = 1

[[ path_beneath ]]   # comment with ] and [
  allowed_access   =   [ "read_file" ]
parent = [
    # "/commented" , is skipped
    "/first", # trailing [ comment
    '''/multi
line''',
    "/with \\" quote ]",
]

[[path_beneath]]
"quoted key" = { inner = [1, { deep = 2 }] }
text = \"\"\"
[[path_beneath]]
\"\"\"
parent.dotted = 1

[supervisor]
[[supervisor.path_beneath]]
parent = ["/s"]
[[supervisor.path_beneath]]
[supervisor.path_beneath.sub]
parent = ["/t"]
"""


def test_tricky_layout_is_valid_toml() -> None:
    data = tomllib.loads(TRICKY)
    assert len(data["path_beneath"]) == 2
    assert data["path_beneath"][0]["parent"][2] == '/with " quote ]'


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("abi", 2),
        ("other", 4),
        ("other.x", 5),
        ("path_beneath", 7),
        ("path_beneath[0]", 7),
        ("path_beneath[0].allowed_access", 8),
        ("path_beneath[0].allowed_access[0]", 8),
        ("path_beneath[0].parent", 9),
        ("path_beneath[0].parent[0]", 11),
        ("path_beneath[0].parent[1]", 12),
        ("path_beneath[0].parent[2]", 14),
        ("path_beneath[0].parent[3]", 9),  # no such element: falls back to the key
        ("path_beneath[0].optional", 7),  # no such key: falls back to the table
        ("path_beneath[1]", 17),
        ("path_beneath[1].quoted key", 18),
        ("path_beneath[1].quoted key.inner[1].deep", 18),
        ("path_beneath[1].text", 19),
        ("path_beneath[1].parent.dotted", 22),
        ("path_beneath[2]", 7),  # no such table: falls back to the array
        ("supervisor", 24),
        ("supervisor.path_beneath[0].parent[0]", 26),
        ("supervisor.path_beneath[1]", 27),
        ("supervisor.path_beneath[1].sub.parent", 29),
        ("nowhere", None),
    ],
)
def test_locate_tricky_layouts(key: str, line: int | None) -> None:
    assert locate(TRICKY, key) == line


def test_locate_matches_loader_on_crlf_text() -> None:
    text = "abi = 7\r\n[[path_beneath]]\r\nallowed_access = ['read_file']\r\nparent = ['/a']\r\n"
    document = parse_policy(text, "p.toml", ENV)
    assert document.path_beneath[0].path_locations[0].line == 4
    assert LineIndex(text).exact("path_beneath[0]") == 2


def test_conditional_supervisor_rules() -> None:
    document = parse(
        """
        [[variable]]
        name = "tools"
        literal = ["/usr/bin/git", "/usr/bin/make"]

        [[supervisor.path_beneath]]
        allowed_access = ["read_file"]
        parent = ["/src"]
        exe = ["${tools}", "/usr/bin/git"]

        [[supervisor.path_beneath]]
        allowed_access = ["read_file"]
        parent = ["/src"]
        cgroup = "/user.slice//app.slice/"

        [[supervisor.path_beneath]]
        allowed_access = ["read_file"]
        parent = ["/src"]
        """
    )
    exe, cgroup, plain = document.supervisor.path_beneath
    assert exe.exe == ("/usr/bin/git", "/usr/bin/make") and exe.cgroup is None and exe.conditional
    assert cgroup.cgroup == "/user.slice/app.slice" and cgroup.exe == () and cgroup.conditional
    assert not plain.conditional
