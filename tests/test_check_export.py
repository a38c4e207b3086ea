"""``check``'s findings (redundant rules, quiet overlaps) and ``export`` to landlockconfig."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from landlockconfig_schema import landlockconfig_errors

from llsupervise.policy.analysis import (
    Finding,
    PolicyRule,
    QuietObject,
    analyse,
    covered_by_static,
    ineffective,
    quiet_overlaps,
    redundant,
    redundant_ports,
)
from llsupervise.policy.conditions import Condition
from llsupervise.policy.export import ExportError, to_landlockconfig, toml_string
from llsupervise.policy.loader import load_policy, parse_policy
from llsupervise.policy.model import ObjectId
from llsupervise.rights import FILE_ACCESS, NO_FS, AccessFs, AccessNet, Scope
from llsupervise.supervisor.rules.objects import ObjectTable, resolve

EXAMPLE = Path(__file__).parent.parent / "config" / "example.toml"
R, W, D = AccessFs.READ_FILE, AccessFs.WRITE_FILE, AccessFs.READ_DIR

# A small tree: 0 is the root; 1, 2 under it; 3 under 1; 4 under 3.
PARENT = {1: 0, 2: 0, 3: 1, 4: 3}


def obj(n: int) -> ObjectId:
    return ObjectId(1, n)


def chain(n: int) -> tuple[ObjectId, ...]:
    out = [obj(n)]
    while n in PARENT:
        n = PARENT[n]
        out.append(obj(n))
    return tuple(out)


CHAINS = {obj(n): chain(n) for n in range(5)}


def r(layer: str, n: int, access: AccessFs, condition: Condition | None = None) -> PolicyRule:
    return PolicyRule(layer, obj(n), access, f"/o{n}", f"p.toml:{n}", condition)  # type: ignore[arg-type]


# -- analysis: plain cases -----------------------------------------------------------------------


def test_a_rule_beneath_a_broader_one_is_redundant() -> None:
    parent, child, other = r("static", 1, R | W), r("static", 4, R), r("static", 2, R)
    [finding] = redundant([child, parent, other], CHAINS)
    assert finding.rule is child and finding.other is parent
    assert "covered by static rule /o1" in finding.message()


def test_narrower_parent_or_sibling_does_not_cover() -> None:
    assert (
        redundant([r("static", 1, R), r("static", 4, R | W), r("static", 2, R | W)], CHAINS) == []
    )


def test_of_identical_rules_the_later_is_redundant() -> None:
    first, second = r("supervisor", 3, R), r("supervisor", 3, R)
    [finding] = redundant([first, second], CHAINS)
    assert finding.rule is second and finding.other is first


def test_layers_do_not_cover_each_other_except_static_over_supervisor() -> None:
    static, supervisor = r("static", 1, R | W), r("supervisor", 3, R)
    assert redundant([static, supervisor], CHAINS) == []
    [finding] = covered_by_static([static, supervisor], CHAINS)
    assert finding.rule is supervisor and "already granted by the static rules" in finding.message()


def test_static_rules_add_up_on_the_chain() -> None:
    rules = [r("static", 0, R), r("static", 1, W), r("supervisor", 4, R | W), r("supervisor", 2, W)]
    assert [f.rule.obj for f in covered_by_static(rules, CHAINS)] == [obj(4)]


def test_conditional_rules_are_covered_by_plain_ones_not_the_reverse() -> None:
    git = Condition(frozenset({"/usr/bin/git"}))
    plain, conditional = r("supervisor", 1, R), r("supervisor", 3, R, git)
    assert [f.rule for f in redundant([plain, conditional], CHAINS)] == [conditional]
    broad_conditional = r("supervisor", 0, R | W, git)
    assert redundant([broad_conditional, r("supervisor", 3, R)], CHAINS) == []
    other = Condition(cgroup="/x")
    assert redundant([r("supervisor", 0, R, other), conditional], CHAINS) == []


def test_quiet_overlaps_both_ways() -> None:
    rule = r("supervisor", 1, R)
    below, above, aside = (QuietObject(obj(n), f"/o{n}", f"q:{n}") for n in (4, 0, 2))
    found = quiet_overlaps([rule, r("static", 1, R)], [below, above, aside], CHAINS)
    assert [(f.quiet, f.quiet_beneath) for f in found] == [(below, True), (above, False)]
    assert "lies beneath" in found[0].message() and "inside the quiet tree" in found[1].message()


def on_file(layer: str, n: int, stated: AccessFs) -> PolicyRule:
    """A rule on a file: only the rights that apply to a file are enforced."""
    rule = r(layer, n, stated & FILE_ACCESS)
    return PolicyRule(rule.layer, rule.obj, rule.access, rule.label, rule.where, None, stated)


def test_directory_rights_on_a_file_are_ineffective_never_redundant() -> None:
    """remove_file on a file (what "allow always" once wrote for a removal) grants nothing:
    Landlock checks it on the file's directory. It is ineffective, not covered by anything."""
    removal = on_file("supervisor", 4, AccessFs.REMOVE_FILE)
    mixed = on_file("supervisor", 3, R | AccessFs.MAKE_REG)
    broad = r("supervisor", 0, R | W | AccessFs.REMOVE_FILE | AccessFs.MAKE_REG)
    found = analyse([broad, removal, mixed], [QuietObject(obj(4), "/o4", "q")], CHAINS)
    assert [(f.kind, f.rule) for f in found if f.rule is removal] == [("ineffective", removal)]
    # The part that applies (read_file) is judged as usual: covered, and it meets the quiet o4.
    kinds = [f.kind for f in found if f.rule is mixed]
    assert kinds == ["ineffective", "redundant", "quiet_overlap"]
    assert found[0].message().startswith(
        "ineffective: remove_file on /o4 (a file: Landlock checks these on its directory)"
    )
    assert "make_reg on /o3" in found[1].message()
    assert covered_by_static([r("static", 0, R), removal], CHAINS) == []


def test_a_group_on_a_file_is_not_ineffective_when_part_of_it_applies() -> None:
    """abi.read_execute on /etc/hosts is the landlockconfig idiom: read_dir is dropped there."""
    from llsupervise.rights import fs_all, fs_read_execute

    assert ineffective([on_file("static", 4, fs_read_execute(7))]) == []
    assert ineffective([on_file("static", 4, fs_all(3) & ~AccessFs.EXECUTE)]) == []
    # Nothing of it applies (read_dir alone on a file): ineffective all the same.
    [finding] = ineffective([on_file("static", 4, D)])
    assert finding.message().startswith("ineffective: read_dir on /o4")


def test_redundant_ports() -> None:
    static = {443: AccessNet.CONNECT_TCP | AccessNet.BIND_TCP, 80: AccessNet.CONNECT_TCP}
    supervisor = {443: AccessNet.CONNECT_TCP, 80: AccessNet.BIND_TCP, 8080: AccessNet.BIND_TCP}
    assert [f.port for f in redundant_ports(static, supervisor)] == [443]


# -- analysis: properties ------------------------------------------------------------------------

ACCESS = st.sampled_from([R, W, D, R | W, R | D, R | W | D])
RULES = st.lists(
    st.tuples(st.sampled_from(["static", "supervisor"]), st.integers(0, 4), ACCESS), max_size=12
).map(lambda items: [r(layer, n, access) for layer, n, access in items])


def granted(rules: Sequence[PolicyRule], layers: set[str]) -> dict[int, AccessFs]:
    """Rights on every object of the tree from the rules of ``layers`` (Landlock's walk)."""
    result = {}
    for n in range(5):
        rights = NO_FS
        for rule in rules:
            if rule.layer in layers and rule.obj in CHAINS[obj(n)]:
                rights |= rule.access
        result[n] = rights
    return result


@settings(max_examples=300, derandomize=True, database=None)
@given(RULES)
def test_dropping_every_redundant_rule_changes_no_right(rules: list[PolicyRule]) -> None:
    found = analyse(rules, [], CHAINS)
    dropped = {id(f.rule) for f in found if f.kind != "quiet_overlap"}
    kept = [rule for rule in rules if id(rule) not in dropped]
    assert granted(kept, {"static"}) == granted(rules, {"static"})
    assert granted(kept, {"static", "supervisor"}) == granted(rules, {"static", "supervisor"})
    for finding in found:
        assert finding.rule.access & ~_cover(finding, rules) == 0


def _cover(finding: Finding, rules: Sequence[PolicyRule]) -> AccessFs:
    if finding.other is not None:
        assert finding.other.obj in CHAINS[finding.rule.obj]
        return finding.other.access
    return granted([x for x in rules if x.layer == "static"], {"static"})[finding.rule.obj.ino]


@settings(max_examples=200, derandomize=True, database=None)
@given(RULES)
def test_no_rule_is_reported_twice_and_order_of_rules_changes_only_duplicates(
    rules: list[PolicyRule],
) -> None:
    found = [f for f in analyse(rules, [], CHAINS) if f.kind != "quiet_overlap"]
    assert len({id(f.rule) for f in found}) == len(found)
    reversed_found = analyse(list(reversed(rules)), [], CHAINS)
    assert len([f for f in reversed_found if f.kind != "quiet_overlap"]) == len(found)


# -- export ---------------------------------------------------------------------------------------


def test_the_schema_check_rejects_what_landlockconfig_rejects() -> None:
    """Our own policy file (supervisor table, optional key) is not a landlockconfig file."""
    errors = landlockconfig_errors(EXAMPLE.read_text())
    assert "$: unknown key 'supervisor'" in errors
    for bad in (
        '[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/a"]\noptional = true\n',
        '[[path_beneath]]\nallowed_access = []\nparent = ["/a"]\n',
        '[[path_beneath]]\nallowed_access = ["v2.read_file"]\nparent = ["/a"]\n',
        "[[ruleset]]\n",
        "abi = 0\n",
        "[[net_port]]\nallowed_access = ['bind_tcp']\nport = [-1]\n",
    ):
        assert landlockconfig_errors(bad), bad


def test_strings_are_escaped_for_toml_and_landlockconfig() -> None:
    text = to_landlockconfig(
        R, AccessNet(0), Scope(0), [('/a "b"\\c\t$d${e}\x7f', R)], {}, ["comment"]
    )
    [entry] = tomllib.loads(text)["path_beneath"]
    assert entry["parent"] == ['/a "b"\\c\t$$d$${e}\x7f']  # landlockconfig reads $$ as $
    assert toml_string("é") == '"é"'
    with pytest.raises(ExportError, match="not valid UTF-8"):
        toml_string("/a/\udcff")
    with pytest.raises(ExportError, match="nothing to export"):
        to_landlockconfig(NO_FS, AccessNet(0), Scope(0), [], {})


def _policy(root: Path) -> str:
    for name in ("ro", "rw", "cond", "quiet"):
        (root / name).mkdir()
    (root / "rw" / "file").write_text("x")
    (root / "d$ollar").mkdir()
    return f"""
abi = 7
[[ruleset]]
handled_access_fs = ["abi.all"]
handled_access_net = ["bind_tcp", "connect_tcp"]
scoped = ["signal"]

[[variable]]
name = "top"
literal = ["{root}"]

[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = ["${{top}}/ro", "/usr"]

[[path_beneath]]
allowed_access = ["read_file"]
parent = ["${{top}}/missing"]
optional = true

[[net_port]]
allowed_access = ["connect_tcp", "bind_tcp"]
port = [443]

[supervisor]
mode = "enforce"

[[supervisor.path_beneath]]
allowed_access = ["abi.read_write"]
parent = ["${{top}}/rw", "${{top}}/rw/file", "${{top}}/ro", "${{top}}/d$$ollar"]

[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["${{top}}/cond"]
exe = ["/usr/bin/git"]

[[supervisor.net_port]]
allowed_access = ["bind_tcp"]
port = [8080, 443]

[[supervisor.quiet]]
parent = ["${{top}}/quiet", "${{top}}/rw/file"]
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", *args], capture_output=True, text=True,
        check=False,
    )  # fmt: skip


def test_export_is_landlockconfig_and_enforces_the_same_rules(tmp_path: Path) -> None:
    source = tmp_path / "policy.toml"
    source.write_text(_policy(tmp_path))
    out = tmp_path / "exported.toml"
    result = _cli("export", "--policy", str(source), "--landlockconfig", str(out))
    assert result.returncode == 0, result.stderr
    assert "skipped optional path" in result.stdout
    text = out.read_text()
    assert landlockconfig_errors(text) == []
    assert "supervisor" not in tomllib.loads(text) and "optional" not in text

    env = {"PWD": str(tmp_path), "HOME": str(tmp_path)}
    with ObjectTable() as table:
        original = resolve(load_policy(source, env), table)
        exported = resolve(parse_policy(text, str(out), env), table)
        merged = original.static | original.supervisor
        # Rights on files are what the kernel applies there (directory-only ones dropped).
        enforced = {o: a if table.is_dir(o) else a & FILE_ACCESS for o, a in merged.fs.items()}
        assert dict(exported.static.fs) == {o: a for o, a in enforced.items() if a}
        assert exported.static.net == merged.net
        assert exported.static.handled == original.static.handled
        assert not exported.supervisor.fs and not exported.conditional
        assert exported.skipped == ()
        assert str(tmp_path / "d$ollar") in {table.label(o) for o in exported.static.fs}
    assert "1 conditional rule(s) left out" in text


def test_check_reports_conditional_rules_redundancy_and_quiet_overlaps(tmp_path: Path) -> None:
    source = tmp_path / "policy.toml"
    source.write_text(_policy(tmp_path))
    result = _cli("check", str(source))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"  {tmp_path}/cond: read_file  (only for exe /usr/bin/git)" in out
    assert f"redundant: supervisor rule {tmp_path}/rw/file: write_file, read_file" in out
    assert f"is covered by supervisor rule {tmp_path}/rw:" in out
    assert "redundant: supervisor tcp port 443 (bind_tcp) is already granted by the static" in out
    assert f"overlap: quiet {tmp_path}/rw/file" in out and "lies beneath supervisor rule" in out
    # Static read of ro/ does not cover the supervisor's write there: not reported.
    assert f"supervisor rule {tmp_path}/ro:" not in out


def test_check_reports_a_removal_right_on_a_file_as_ineffective(tmp_path: Path) -> None:
    """The rule "allow always" once wrote for ``rm file``: ineffective, and not redundant."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "f").write_text("x")
    source = tmp_path / "policy.toml"
    source.write_text(
        '[[ruleset]]\nhandled_access_fs = ["abi.all"]\n'
        f'[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{tmp_path}"]\n'
        "[supervisor]\n"
        '[[supervisor.path_beneath]]\nallowed_access = ["remove_file"]\n'
        f'parent = ["{tmp_path}/work/f"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", "check", str(source)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"  {tmp_path}/work/f: none  (ineffective on a file: remove_file)" in out
    assert (
        f"ineffective: remove_file on {tmp_path}/work/f (a file: Landlock checks these on its "
        "directory)"
    ) in out
    assert "redundant" not in out
    assert "findings (1):" in out


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["static", "supervisor"]), st.integers(0, 3), ACCESS),
        min_size=1,
        max_size=8,
    ),
    st.sets(st.integers(1, 65535), max_size=3),
)
def test_any_exported_policy_validates_and_loads_back_the_same(
    rules: list[tuple[str, int, AccessFs]], ports: set[int]
) -> None:
    fs = [(f"/srv/p{n}", access) for _, n, access in rules]
    net = dict.fromkeys(sorted(ports), AccessNet.BIND_TCP)
    text = to_landlockconfig(AccessFs(0xFFFF), AccessNet(3), Scope(0), fs, net)
    assert landlockconfig_errors(text) == []
    doc = parse_policy(text, "x.toml", {"PWD": "/"})
    loaded: dict[str, AccessFs] = {}
    for entry in doc.path_beneath:
        for path in entry.paths:
            loaded[path] = loaded.get(path, NO_FS) | entry.access
    expected: dict[str, AccessFs] = {}
    for path, access in fs:
        expected[path] = expected.get(path, NO_FS) | access
    assert loaded == expected
    assert {p for e in doc.net_port for p in e.ports} == ports
