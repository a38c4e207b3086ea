"""The loader's shortcut for plain ``path_beneath`` rules gives what the general path gives.

A table of exactly ``allowed_access`` (an array already parsed) and ``parent`` (absolute paths
without ``$`` or NUL) skips the general checks, and its locations build their key and line only
when read. Generated policies mixing plain and other rules, valid and not, are loaded both ways
and must give equal documents (down to every location's file, line and key) or the same error.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import tomlkit
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import astuple
from policy_strategies import many_examples

from llsupervise.policy.document import (
    ElementLocation,
    LazyLocation,
    Location,
    PathBeneathEntry,
    PolicyDocument,
    PolicyError,
    TableArray,
)
from llsupervise.policy.loader import _parse, parse_policy
from llsupervise.policy.locate import LineIndex

SOURCE = "p.toml"
ENV = {"HOME": "/home/h", "PWD": "/pwd", "USER": "u"}

PROPERTY = many_examples(600)

VALID_ACCESS = [["read_file"], ["read_file", "read_dir"], ["abi.read_execute"], ["execute"]]
BAD_ACCESS: list[Any] = [
    ["no_such_right"],
    [],
    "read_file",
    [1],
    [["read_file"]],  # unhashable as an array key
    ["read_file", {"a": 1}],
    ["read_file", 2],
    ["make_sock"],  # valid, but not handled when a [[ruleset]] omits it
]
PLAIN_PATHS = ["/a", "/b", "/a/b", "/é", "/sp ace"]
# Valid, but not for the shortcut: relative, with variables, with an escaped $.
OTHER_VALID_PATHS = ["rel", ".", "${HOME}/h", "/v/${v}", "/c$$"]
BAD_PATHS: list[Any] = ["", "/x\0y", "/${nope}", "/${", "${v", 7, ["/a"], True]
VALID_EXTRAS: list[dict[str, Any]] = [
    {"optional": True},
    {"optional": False},
    {"exe": ["/bin/sh"]},
    {"cgroup": "/user.slice"},
]
BAD_EXTRAS: list[dict[str, Any]] = [
    {"optional": "yes"},
    {"exe": ["rel"]},
    {"cgroup": 3},
    {"unknown": 1},
]


def plain_paths() -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(PLAIN_PATHS), min_size=1, max_size=3)


@st.composite
def path_beneath_tables(draw: st.DrawFn) -> Any:
    """Mostly plain tables, some valid ones of other shapes, a few wrong in one way or more."""
    kind = draw(st.integers(0, 19))
    if kind <= 13:
        return {
            "allowed_access": draw(st.sampled_from(VALID_ACCESS)),
            "parent": draw(plain_paths()),
        }
    if kind <= 16:
        path = st.one_of(st.sampled_from(PLAIN_PATHS), st.sampled_from(OTHER_VALID_PATHS))
        table = {
            "allowed_access": draw(st.sampled_from(VALID_ACCESS)),
            "parent": draw(st.lists(path, min_size=1, max_size=3)),
        }
        if draw(st.booleans()):
            table.update(draw(st.sampled_from(VALID_EXTRAS)))
        return table
    if kind == 19:
        return draw(st.sampled_from([1, "x", ["/a"]]))
    table = {}
    if draw(st.integers(0, 9)) != 9:
        table["allowed_access"] = draw(
            st.one_of(st.sampled_from(VALID_ACCESS), st.sampled_from(BAD_ACCESS))
        )
    if draw(st.integers(0, 9)) != 9:
        table["parent"] = draw(
            st.one_of(
                plain_paths(),
                st.lists(
                    st.one_of(st.sampled_from(PLAIN_PATHS), st.sampled_from(BAD_PATHS)),
                    max_size=3,
                ),
                st.sampled_from(["/a", 3, {"p": "/a"}]),
            )
        )
    if draw(st.booleans()):
        table.update(draw(st.sampled_from(BAD_EXTRAS + VALID_EXTRAS)))
    return table


@st.composite
def policies(draw: st.DrawFn) -> str:
    document: dict[str, Any] = {}
    if draw(st.booleans()):
        document["abi"] = draw(st.sampled_from([1, 3, 6]))
    if draw(st.booleans()):
        document["ruleset"] = [
            {"handled_access_fs": draw(st.sampled_from([["abi.all"], ["read_file", "read_dir"]]))}
        ]
    if draw(st.booleans()):
        document["variable"] = [{"name": "v", "literal": ["1", "2"]}]
    if draw(st.booleans()):
        document["path_beneath"] = draw(st.lists(path_beneath_tables(), min_size=1, max_size=4))
    supervisor: dict[str, Any] = {"mode": "enforce"}
    if draw(st.booleans()):
        supervisor["path_beneath"] = draw(st.lists(path_beneath_tables(), max_size=12))
    if draw(st.integers(0, 19)) == 19:
        supervisor["path_beneath"] = draw(st.sampled_from([1, "x", {"parent": ["/a"]}]))
    document["supervisor"] = supervisor
    return tomlkit.dumps(document)


def load(text: str, shortcuts: bool, env: dict[str, str] = ENV) -> PolicyDocument | PolicyError:
    try:
        return _parse(text, SOURCE, env, shortcuts=shortcuts)
    except PolicyError as error:
        return error


def where(location: Location) -> tuple[str, int | None, str]:
    return (location.file, location.line, location.key)


def assert_same_entries(
    fast: tuple[PathBeneathEntry, ...], general: tuple[PathBeneathEntry, ...]
) -> None:
    assert len(fast) == len(general)
    for a, b in zip(fast, general, strict=True):
        assert type(a) is type(b) is PathBeneathEntry
        assert astuple(a) == astuple(b)
        assert a == b
        assert hash(a) == hash(b)
        assert where(a.location) == where(b.location)
        assert [where(loc) for loc in a.path_locations] == [where(loc) for loc in b.path_locations]


def assert_same_outcome(text: str, env: dict[str, str] = ENV) -> PolicyDocument | PolicyError:
    fast, general = load(text, True, env), load(text, False, env)
    if isinstance(general, PolicyError):
        assert isinstance(fast, PolicyError), (text, general)
        assert str(fast) == str(general)
        assert fast.message == general.message
        assert where(fast.location) == where(general.location)
        return fast
    assert isinstance(fast, PolicyDocument), (text, fast)
    assert fast == general
    assert repr(fast) == repr(general)
    assert_same_entries(fast.path_beneath, general.path_beneath)
    assert_same_entries(fast.supervisor.path_beneath, general.supervisor.path_beneath)
    assert pickle.loads(pickle.dumps(fast)) == general
    return fast


# --- generated policies ---------------------------------------------------------------------------


@PROPERTY
@given(policies())
def test_generated_policies_load_the_same_both_ways(text: str) -> None:
    assert_same_outcome(text)


@PROPERTY
@given(policies())
def test_without_pwd_both_ways_report_the_same(text: str) -> None:
    assert_same_outcome(text, {"HOME": "/home/h"})


@PROPERTY
@given(st.lists(path_beneath_tables(), min_size=1, max_size=12), st.integers(0, 11))
def test_one_wrong_rule_among_plain_ones_is_reported_the_same(
    tables: list[Any], wrong: int
) -> None:
    """The first error wins on both paths, whichever rule (plain or not) comes first."""
    tables = [
        {"allowed_access": ["read_file"], "parent": [f"/p{i}"]} if i != wrong else table
        for i, table in enumerate(tables)
    ]
    text = tomlkit.dumps({"supervisor": {"path_beneath": tables}})
    assert_same_outcome(text)


# --- the shortcut is taken where it should be ---------------------------------------------------


def test_plain_rules_take_the_shortcut_and_others_do_not() -> None:
    text = """
[supervisor]
mode = "enforce"

[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["/a"]

[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["/b", "/c", "/b"]

[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["${HOME}/d"]

[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["/e"]
optional = true
"""
    document = assert_same_outcome(text)
    assert isinstance(document, PolicyDocument)
    first, second, variable, optional = document.supervisor.path_beneath
    # The first sight of an access array takes the general path: it checks every name.
    assert type(first.location) is LazyLocation
    assert type(second.location) is ElementLocation
    assert second.paths == ("/b", "/c")
    assert [loc.key for loc in second.path_locations] == [
        "supervisor.path_beneath[1].parent[0]",
        "supervisor.path_beneath[1].parent[1]",
    ]
    assert [loc.line for loc in second.path_locations] == [11, 11]
    assert type(variable.location) is LazyLocation
    assert variable.paths == ("/home/h/d",)
    assert type(optional.location) is LazyLocation
    assert optional.optional


def test_a_bad_rule_after_plain_ones_is_reported_at_its_own_line() -> None:
    rules = "".join(
        f'\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/p{i}"]\n'
        for i in range(50)
    )
    text = f'{rules}\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = [""]\n'
    error = assert_same_outcome(text)
    assert isinstance(error, PolicyError)
    assert where(error.location) == (SOURCE, 204, "supervisor.path_beneath[50].parent[0]")
    assert error.message == "empty path"


def test_a_later_unknown_key_is_reported_before_an_earlier_bad_rule() -> None:
    """Every table's keys are checked before any rule is read, on both paths."""
    text = """
[[path_beneath]]
allowed_access = ["read_file"]
parent = ["rel/${nope}"]

[[path_beneath]]
allowed_access = ["read_file"]
parent = ["/a"]
exe = ["/bin/sh"]
"""
    error = assert_same_outcome(text)
    assert isinstance(error, PolicyError)
    assert where(error.location) == (SOURCE, 9, "path_beneath[1].exe")
    assert error.message.startswith("unknown key 'exe'")


# --- the pieces ---------------------------------------------------------------------------------


def test_an_element_location_is_the_plain_location_it_names() -> None:
    text = '[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/a", "/b"]\n'
    array = TableArray(SOURCE, "path_beneath", LineIndex(text).line)
    entry, parent = ElementLocation(array, 0), ElementLocation(array, 0, 1)
    assert entry == Location(SOURCE, 1, "path_beneath[0]")
    assert parent == Location(SOURCE, 3, "path_beneath[0].parent[1]")
    assert Location(SOURCE, 3, "path_beneath[0].parent[1]") == parent
    assert parent != Location(SOURCE, 3, "path_beneath[0].parent[0]")
    assert hash(parent) == hash(Location(SOURCE, 3, "path_beneath[0].parent[1]"))
    assert str(parent) == "p.toml:3: path_beneath[0].parent[1]"
    assert repr(entry) == repr(Location(SOURCE, 1, "path_beneath[0]"))
    copied = pickle.loads(pickle.dumps(parent))
    assert type(copied) is Location
    assert copied == parent


@pytest.mark.parametrize("kind", ["plain", "element"])
def test_a_location_cannot_be_changed(kind: str) -> None:
    array = TableArray(SOURCE, "path_beneath", LineIndex("[[path_beneath]]\n").line)
    location = Location(SOURCE, 1, "k") if kind == "plain" else ElementLocation(array, 0)
    before = (location.file, location.line, location.key)
    for name in ("file", "line", "key", "other"):
        with pytest.raises(AttributeError):
            setattr(location, name, "x")
        with pytest.raises(AttributeError):
            delattr(location, name)
    assert (location.file, location.line, location.key) == before


def test_parse_policy_takes_the_shortcuts() -> None:
    text = "".join(
        f'[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/p{i}"]\n'
        for i in range(3)
    )
    document = parse_policy(text, SOURCE, ENV)
    assert document == _parse(text, SOURCE, ENV, shortcuts=False)
    assert [type(e.location) for e in document.supervisor.path_beneath] == [
        LazyLocation,
        ElementLocation,
        ElementLocation,
    ]
