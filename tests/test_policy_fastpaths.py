"""The shortcuts that keep a 10,000-rule policy fast give what the plain computations give.

Rulesets: ``union``, ``apply``, ``MutableRuleset.replace`` and ``diff`` skip re-checking rules
that are valid by construction; each is compared here with the plain computation (every rule
through the public constructor), including iteration order, labels (not part of equality),
value types and errors. The loader remembers parsed access arrays and skips tokenising strings
without ``$``; the object table hands out one ObjectId instance per object.
"""

from __future__ import annotations

import re
import tomllib
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_strategies import FS_POOL, NET_POOL, object_ids, ports, rulesets

from llsupervise.policy.document import PolicyError
from llsupervise.policy.loader import parse_policy
from llsupervise.policy.model import (
    AddFs,
    AddNet,
    IntersectFs,
    IntersectNet,
    ModelError,
    MutableRuleset,
    ObjectId,
    Op,
    Ruleset,
    apply,
    diff,
)
from llsupervise.rights import NO_FS, NO_NET, AccessFs, AccessNet, Scope
from llsupervise.supervisor.rules.objects import ObjectTable

PROPERTY = settings(max_examples=150, deadline=None)


# --- plain computations ---------------------------------------------------------------------------


def plain_union(a: Ruleset, b: Ruleset) -> Ruleset:
    """Every key of both sides ORed, through the public constructor."""
    return Ruleset(
        a.handled_fs | b.handled_fs,
        a.handled_net | b.handled_net,
        a.scopes | b.scopes,
        {k: a.fs.get(k, NO_FS) | b.fs.get(k, NO_FS) for k in a.fs.keys() | b.fs.keys()},
        {k: a.net.get(k, NO_NET) | b.net.get(k, NO_NET) for k in a.net.keys() | b.net.keys()},
        {**b.labels, **a.labels},
    )


def plain_apply(ruleset: Ruleset, ops: Iterable[Op]) -> Ruleset:
    """The operations on plain dicts, then the public constructor checks everything."""
    fs, net, labels = dict(ruleset.fs), dict(ruleset.net), dict(ruleset.labels)
    for op in ops:
        match op:
            case AddFs(obj, access, label):
                if not access:
                    raise ModelError(f"a rule added on {obj} must grant at least one right")
                fs[obj] = fs[obj] | access if obj in fs else access
                if label is not None:
                    labels[obj] = label
            case IntersectFs(obj, access):
                if obj in fs:
                    fs[obj] &= access
                    if not fs[obj]:
                        del fs[obj]
                if obj not in fs:
                    labels.pop(obj, None)
            case AddNet(port, net_access):
                if not net_access:
                    raise ModelError(f"a rule added on {port} must grant at least one right")
                net[port] = net[port] | net_access if port in net else net_access
            case IntersectNet(port, net_access):
                if port in net:
                    net[port] &= net_access
                    if not net[port]:
                        del net[port]
    return ruleset.with_rules(fs, net, labels)


def plain_diff(current: Ruleset, target: Ruleset) -> list[Op]:
    ops: list[Op] = []
    for obj in sorted(current.fs.keys() | target.fs.keys()):
        have, want = current.fs.get(obj, NO_FS), target.fs.get(obj, NO_FS)
        if have & ~want:
            ops.append(IntersectFs(obj, want))
        if want & ~have:
            ops.append(AddFs(obj, want, target.labels.get(obj)))
    for port in sorted(current.net.keys() | target.net.keys()):
        have_net, want_net = current.net.get(port, NO_NET), target.net.get(port, NO_NET)
        if have_net & ~want_net:
            ops.append(IntersectNet(port, want_net))
        if want_net & ~have_net:
            ops.append(AddNet(port, want_net))
    return ops


def assert_same(fast: Ruleset, plain: Ruleset) -> None:
    """Equal, and alike in everything equality ignores: order, labels, types, read-only."""
    assert fast == plain
    assert list(fast.fs.items()) == list(plain.fs.items())
    assert list(fast.net.items()) == list(plain.net.items())
    assert list(fast.labels.items()) == list(plain.labels.items())
    assert list(fast.fs) == sorted(fast.fs) and list(fast.net) == sorted(fast.net)
    assert list(fast.labels) == sorted(fast.labels)
    for mapping in (fast.fs, fast.net, fast.labels):
        assert isinstance(mapping, types.MappingProxyType)
    assert all(type(v) is AccessFs for v in fast.fs.values())
    assert all(type(v) is AccessNet for v in fast.net.values())
    assert (type(fast.handled_fs), type(fast.handled_net), type(fast.scopes)) == (
        AccessFs,
        AccessNet,
        Scope,
    )


def outcome(compute: object) -> Ruleset | str:
    """The ruleset, or the ModelError's message."""
    assert callable(compute)
    try:
        result = compute()
    except ModelError as exc:
        return f"ModelError: {exc}"
    assert isinstance(result, Ruleset)
    return result


def relabelled(ruleset: Ruleset, prefix: str) -> Ruleset:
    """Other labels, so that a union must pick one side's."""
    labels = {obj: f"{prefix}{label}" for obj, label in ruleset.labels.items()}
    return ruleset.with_rules(ruleset.fs, ruleset.net, labels)


@st.composite
def labelled_rulesets(draw: st.DrawFn, max_rules: int = 8) -> Ruleset:
    ruleset = draw(rulesets(max_rules=max_rules))
    return relabelled(ruleset, draw(st.sampled_from(["a:", "b:", ""])))


# --- union ----------------------------------------------------------------------------------------


@PROPERTY
@given(labelled_rulesets(), labelled_rulesets())
def test_union_is_the_plain_union(a: Ruleset, b: Ruleset) -> None:
    assert_same(a | b, plain_union(a, b))
    assert_same(b | a, plain_union(b, a))


@PROPERTY
@given(labelled_rulesets())
def test_union_with_an_empty_ruleset_is_the_plain_union(a: Ruleset) -> None:
    empty = Ruleset.empty(AccessFs.READ_FILE, scopes=Scope.SIGNAL)
    assert_same(a | empty, plain_union(a, empty))
    assert_same(empty | a, plain_union(empty, a))


def test_union_keeps_its_operands_unchanged() -> None:
    a = Ruleset(FS_POOL, fs={ObjectId(1, 1): AccessFs.READ_FILE}, labels={ObjectId(1, 1): "/a"})
    b = Ruleset(FS_POOL, fs={ObjectId(1, 2): AccessFs.EXECUTE}, labels={ObjectId(1, 2): "/b"})
    union = a | b
    assert dict(a.fs) == {ObjectId(1, 1): AccessFs.READ_FILE}
    assert dict(b.fs) == {ObjectId(1, 2): AccessFs.EXECUTE}
    assert dict(union.labels) == {ObjectId(1, 1): "/a", ObjectId(1, 2): "/b"}
    with pytest.raises(TypeError):
        union.fs[ObjectId(1, 3)] = AccessFs.EXECUTE  # type: ignore[index]


# --- apply ----------------------------------------------------------------------------------------


def any_fs_access() -> st.SearchStrategy[AccessFs]:
    """Rights that a drawn ruleset may not handle, and no rights at all."""
    return st.sampled_from(
        [NO_FS, AccessFs.READ_FILE, AccessFs.EXECUTE | AccessFs.READ_DIR, AccessFs.REFER, FS_POOL]
    )


def any_net_access() -> st.SearchStrategy[AccessNet]:
    return st.sampled_from([NO_NET, AccessNet.BIND_TCP, AccessNet.CONNECT_TCP, NET_POOL])


def any_ports() -> st.SearchStrategy[int]:
    return st.one_of(ports(), st.sampled_from([-1, 0, 65535, 65536]))


def any_ops() -> st.SearchStrategy[list[Op]]:
    """Operations valid or not: unhandled rights, empty adds, ports out of range."""
    labels = st.one_of(st.none(), st.sampled_from(["/x", "/y"]))
    op: st.SearchStrategy[Op] = st.one_of(
        st.builds(AddFs, object_ids(), any_fs_access(), labels),
        st.builds(IntersectFs, object_ids(), any_fs_access()),
        st.builds(AddNet, any_ports(), any_net_access()),
        st.builds(IntersectNet, any_ports(), any_net_access()),
    )
    return st.lists(op, max_size=8)


@PROPERTY
@given(labelled_rulesets(), any_ops())
def test_apply_is_the_plain_apply(ruleset: Ruleset, ops: list[Op]) -> None:
    fast, plain = outcome(lambda: apply(ruleset, ops)), outcome(lambda: plain_apply(ruleset, ops))
    if isinstance(fast, str) or isinstance(plain, str):
        assert fast == plain
    else:
        assert_same(fast, plain)


def test_apply_reports_the_first_unhandled_rule_as_the_constructor_does() -> None:
    a, b = ObjectId(1, 2), ObjectId(1, 1)
    ruleset = Ruleset(AccessFs.READ_FILE, fs={ObjectId(1, 3): AccessFs.READ_FILE})
    ops: list[Op] = [AddFs(a, AccessFs.EXECUTE, "/a"), AddFs(b, AccessFs.EXECUTE, "/b")]
    with pytest.raises(ModelError, match="rule on /a grants execute"):
        apply(ruleset, ops)
    assert outcome(lambda: apply(ruleset, ops)) == outcome(lambda: plain_apply(ruleset, ops))


def test_a_rule_removed_and_added_again_goes_back_in_order() -> None:
    objs = [ObjectId(1, n) for n in range(5)]
    ruleset = Ruleset(FS_POOL, fs=dict.fromkeys(objs, AccessFs.READ_FILE))
    ops: list[Op] = [IntersectFs(objs[1], NO_FS), AddFs(objs[1], AccessFs.EXECUTE, "/one")]
    result = apply(ruleset, ops)
    assert list(result.fs) == objs
    assert result.fs[objs[1]] == AccessFs.EXECUTE and dict(result.labels) == {objs[1]: "/one"}


def test_constructor_reports_the_first_unhandled_rule_in_the_order_given() -> None:
    first, second = ObjectId(2, 1), ObjectId(1, 1)
    fs = {first: AccessFs.EXECUTE, second: AccessFs.EXECUTE}
    with pytest.raises(ModelError, match="rule on /first grants"):
        Ruleset(AccessFs.READ_FILE, fs=fs, labels={first: "/first", second: "/second"})
    bad_port = {70000: AccessNet.BIND_TCP, 80: AccessNet.CONNECT_TCP}
    with pytest.raises(ModelError, match="port 70000 is outside"):
        Ruleset(NO_FS, AccessNet.BIND_TCP, net=bad_port)
    with pytest.raises(ModelError, match="rule on port 80 grants connect_tcp"):
        Ruleset(NO_FS, AccessNet.BIND_TCP, net=dict(reversed(bad_port.items())))


def test_constructor_converts_plain_integers_and_drops_empty_rules() -> None:
    obj, other = ObjectId(1, 1), ObjectId(1, 2)
    plain: Any = int  # what a caller may pass: plain integers, not flags
    fs = {other: plain(0), obj: plain(4)}
    ruleset = Ruleset(plain(7), plain(3), plain(2), fs, {80: plain(2)}, {obj: "/o", other: "/x"})
    assert list(ruleset.fs.items()) == [(obj, AccessFs.READ_FILE)]
    assert type(ruleset.fs[obj]) is AccessFs and type(ruleset.net[80]) is AccessNet
    assert dict(ruleset.labels) == {obj: "/o"}
    assert (type(ruleset.handled_fs), type(ruleset.scopes)) == (AccessFs, Scope)


# --- replace and diff -----------------------------------------------------------------------------


@PROPERTY
@given(labelled_rulesets(), labelled_rulesets())
def test_replace_takes_the_rules_as_the_plain_constructor_would(
    layer: Ruleset, target: Ruleset
) -> None:
    supervisor = MutableRuleset.for_layer(layer)
    plain = outcome(lambda: supervisor.committed.with_rules(target.fs, target.net, target.labels))
    try:
        supervisor.replace(target)
    except ModelError as exc:
        assert plain == f"ModelError: {exc}"
        assert supervisor.pending is supervisor.committed  # a refused replace changes nothing
        return
    assert not isinstance(plain, str)
    assert_same(supervisor.pending, plain)
    assert supervisor.pending.handled == layer.handled  # the layer's, whatever target says
    supervisor.commit()
    assert_same(supervisor.committed, plain)


@PROPERTY
@given(labelled_rulesets(), labelled_rulesets())
def test_diff_is_the_plain_diff(current: Ruleset, target: Ruleset) -> None:
    assert diff(current, target) == plain_diff(current, target)


# --- loader ---------------------------------------------------------------------------------------


def rules_policy(*accesses: str) -> str:
    """A policy with one supervisor rule per ``allowed_access`` value (TOML text)."""
    rules = "".join(
        f'\n[[supervisor.path_beneath]]\nallowed_access = {access}\nparent = ["/p{i}"]\n'
        for i, access in enumerate(accesses)
    )
    return '[[ruleset]]\nhandled_access_fs = ["abi.all"]\n\n[supervisor]\n' + rules


@pytest.mark.parametrize(
    ("access", "key", "message"),
    [
        ('["read_file", 1]', "[1]", "expected a string, found an integer"),
        ('["read_file", ["read_file"]]', "[1]", "expected a string, found an array"),
        ('["read_file", "nope"]', "[1]", "unknown filesystem access 'nope'"),
        ('"read_file"', "", "expected an array of strings, found a string"),
        ("[]", "", "expected a non-empty array of strings"),
    ],
)
def test_an_access_array_seen_before_does_not_hide_a_bad_one(
    access: str, key: str, message: str
) -> None:
    text = rules_policy('["read_file"]', '["read_file"]', access)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml", {})
    assert info.value.location.key == f"supervisor.path_beneath[2].allowed_access{key}"
    assert message in info.value.message
    assert info.value.location.line == 15


def test_repeated_access_arrays_mean_the_same_rights() -> None:
    text = rules_policy(
        '["read_file"]', '["read_file", "read_dir"]', '["read_file"]', '["abi.read_execute"]'
    )
    entries = parse_policy(text, "p.toml", {}).supervisor.path_beneath
    assert [e.access for e in entries] == [
        AccessFs.READ_FILE,
        AccessFs.READ_FILE | AccessFs.READ_DIR,
        AccessFs.READ_FILE,
        AccessFs.EXECUTE | AccessFs.READ_FILE | AccessFs.READ_DIR | AccessFs.REFER,
    ]
    assert all(type(e.access) is AccessFs for e in entries)


def test_the_same_names_resolve_per_abi() -> None:
    for abi, truncate in ((2, False), (3, True)):
        text = f"abi = {abi}\n" + rules_policy('["abi.read_write"]', '["abi.read_write"]')
        entries = parse_policy(text, "p.toml", {}).supervisor.path_beneath
        assert {bool(e.access & AccessFs.TRUNCATE) for e in entries} == {truncate}


@pytest.mark.parametrize(
    ("parent", "paths"),
    [
        ("/plain/path", ["/plain/path"]),
        ("/a$$b", ["/a$b"]),
        ("/a$b", ["/a$b"]),
        ("${HOME}/x", ["/home/u/x"]),
        ("relative", ["/work/relative"]),
    ],
)
def test_paths_with_and_without_variables(parent: str, paths: list[str]) -> None:
    text = f'[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{parent}"]\n'
    document = parse_policy(text, "p.toml", {"HOME": "/home/u", "PWD": "/work"})
    assert list(document.path_beneath[0].paths) == paths


@pytest.mark.parametrize(
    "text",
    [
        'x = "a\\nb"\nabi = \n',
        "[[path_beneath]]\nparent = ['/a',\n",
        "abi = 7\nabi = 8\n",
        '[supervisor]\nmode = "enforce\n',
        # TOML 1.1 only: refused, as by tomllib (policies are TOML 1.0).
        "[supervisor]\nx = {a = 1,}\n",
        "[supervisor]\nx = {\n  a = 1\n}\n",
        '[supervisor]\nx = "\\e"\n',
        "[supervisor]\nx = 12:30\n",
    ],
)
def test_toml_syntax_errors_are_the_standard_parsers(text: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as expected:
        tomllib.loads(text)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml", {})
    reference = str(expected.value)
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", reference)
    if found:
        assert info.value.message == f"TOML syntax error: {found[1]} (column {found[3]})"
        assert info.value.location.line == int(found[2])
    else:
        message = reference.removesuffix(" (at end of document)")
        assert info.value.message == f"TOML syntax error: {message} (at end of file)"
        assert info.value.location.line == text.rstrip().count("\n") + 1


# --- the object table -----------------------------------------------------------------------------


def test_one_object_is_one_instance_whatever_names_it(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    with ObjectTable() as table:
        first = table.open(str(tmp_path / "d"))
        again = table.open(str(tmp_path / "link"))
        assert again is first and len(table) == 1
        assert table.label(first) == str(tmp_path / "d") and table.is_dir(first)
        other = table.open(str(tmp_path))
        assert other != first and len(table) == 2
        table.release([other])
        assert list(table) == [other]
