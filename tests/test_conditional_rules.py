"""Conditional supervisor rules (``exe``, ``cgroup``): granted only to matching requesters."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from supervised import PUBLIC, make_tree, policy

from llsupervise.policy.conditions import (
    Condition,
    ConditionalRule,
    Requester,
    cgroup_v2_path,
    covers,
    in_cgroup,
    matches,
)
from llsupervise.policy.model import ObjectId
from llsupervise.rights import AccessFs
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel

# -- pure matching -------------------------------------------------------------------------------


def test_cgroup_v2_line_is_found() -> None:
    assert cgroup_v2_path("0::/user.slice/user-0.slice/session-1.scope\n") == (
        "/user.slice/user-0.slice/session-1.scope"
    )
    hybrid = "12:cpu,cpuacct:/x\n1:name=systemd:/y\n0::/z\n"
    assert cgroup_v2_path(hybrid) == "/z"
    assert cgroup_v2_path("12:cpu:/x\n") is None


@pytest.mark.parametrize(
    ("subtree", "cgroup", "inside"),
    [
        ("/user.slice", "/user.slice", True),
        ("/user.slice", "/user.slice/user-0.slice", True),
        ("/user.slice", "/user.slice-2", False),
        ("/user.slice/a", "/user.slice", False),
        ("/", "/anything/at/all", True),
        ("/a/", "/a/b", True),
    ],
)
def test_cgroup_subtree_compares_whole_components(subtree: str, cgroup: str, inside: bool) -> None:
    assert in_cgroup(subtree, cgroup) is inside


COMPONENT = st.text(st.sampled_from("abc.-_"), min_size=1, max_size=4)
CGROUP = st.lists(COMPONENT, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(CGROUP, CGROUP, CGROUP)
def test_cgroup_subtrees_nest(a: str, b: str, c: str) -> None:
    assert in_cgroup(a, a) and in_cgroup(a, a.rstrip("/") + "/x")
    if in_cgroup(a, b) and in_cgroup(b, c):
        assert in_cgroup(a, c)
    if in_cgroup(a, b) and in_cgroup(b, a):
        assert a.strip("/") == b.strip("/")


def test_both_conditions_must_match() -> None:
    both = Condition(frozenset({"/usr/bin/git"}), "/user.slice")
    assert matches(both, Requester("/usr/bin/git", "/user.slice/x"))
    assert not matches(both, Requester("/usr/bin/git", "/system.slice"))
    assert not matches(both, Requester("/usr/bin/cat", "/user.slice"))
    assert not matches(both, Requester(None, None))
    assert matches(Condition(frozenset({"/usr/bin/git"})), Requester("/usr/bin/git", None))
    assert matches(Condition(cgroup="/a"), Requester(None, "/a/b"))


RIGHTS = st.integers(0, 0xFFFF).map(AccessFs)


@given(RIGHTS, RIGHTS, RIGHTS, st.integers(0, 3))
def test_covers_adds_rules_on_the_chain_only(
    base: AccessFs, rule_access: AccessFs, needed: AccessFs, depth: int
) -> None:
    chain = [ObjectId(1, i) for i in range(4)]
    condition = Condition(cgroup="/")
    on_chain = ConditionalRule(chain[depth], rule_access, condition, "on")
    elsewhere = ConditionalRule(ObjectId(2, 0), ~AccessFs(0), condition, "off")
    assert covers([on_chain, elsewhere], base, chain, needed) == (
        needed & ~(base | rule_access) == 0
    )
    assert covers([], base, chain, needed) == (needed & ~base == 0)


# -- with real children --------------------------------------------------------------------------

PYTHON_READS = r"""
import sys
for mode in ("rb", "ab"):
    try:
        open("data/x", mode).close()
        print(mode, "ok")
    except OSError as e:
        print(mode, e.errno)
"""


def conditional(data: Path, condition: str, access: str = '"read_file"') -> str:
    return f"""
[[supervisor.path_beneath]]
allowed_access = [{access}]
parent = ["{data}"]
{condition}
"""


async def run(
    root: Path, rules: str, argv: list[str], events: list[Mapping[str, Any]] | None = None
) -> int:
    async with Supervisor.open(policy(root, supervisor_rules=rules)) as sup:
        assert not sup.rules.mutable.committed.fs  # never part of the shared ruleset
        if events is not None:
            sup.listeners.append(events.append)
        return await sup.run(argv, forward_signals=False)


@pytest.mark.trio
async def test_the_same_file_is_granted_to_a_matching_executable_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    cat = os.path.realpath(shutil.which("cat") or "/bin/cat")
    rules = conditional(paths["data"], f'exe = ["{cat}"]')
    events: list[Mapping[str, Any]] = []
    assert await run(tmp_path, rules, [cat, "data/x"], events) == 0
    assert capfd.readouterr().out == PUBLIC.decode()
    [granted] = [e for e in events if e["event"] == "denial"]
    assert granted["decision"] == "conditional" and granted["granted_by"]
    assert granted["exe"] == cat and granted["granted_by"] == [str(paths["data"])]

    events.clear()
    assert await run(tmp_path, rules, [sys.executable, "-c", PYTHON_READS], events) == 0
    assert capfd.readouterr().out.split("\n")[:2] == ["rb 13", "ab 13"]
    assert {e["decision"] for e in events if e["event"] == "denial"} == {"deny"}


@pytest.mark.trio
async def test_a_conditional_grant_covers_only_its_rights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Read is granted to this Python; append is not: the kernel judges the granted open."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    python = os.path.realpath(sys.executable)
    rules = conditional(paths["data"], f'exe = ["{python}"]')
    assert await run(tmp_path, rules, [sys.executable, "-c", PYTHON_READS]) == 0
    assert capfd.readouterr().out.split("\n")[:2] == ["rb ok", "ab 13"]
    assert (paths["data"] / "x").read_bytes() == PUBLIC


def _own_cgroup() -> str:
    with open("/proc/self/cgroup") as f:
        found = cgroup_v2_path(f.read())
    assert found is not None, "cgroup v2 is needed"
    return found


@pytest.mark.trio
async def test_a_cgroup_rule_grants_inside_the_subtree_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    own = _own_cgroup()  # the child starts in our cgroup
    inside = conditional(paths["data"], f'cgroup = "{own}"')
    assert await run(tmp_path, inside, [sys.executable, "-c", PYTHON_READS]) == 0
    assert capfd.readouterr().out.split("\n")[0] == "rb ok"
    elsewhere = conditional(paths["data"], f'cgroup = "{own.rstrip("/")}/no-such-child"')
    assert await run(tmp_path, elsewhere, [sys.executable, "-c", PYTHON_READS]) == 0
    assert capfd.readouterr().out.split("\n")[0] == "rb 13"
