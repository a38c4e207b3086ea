"""Answers written into a policy file land where a person would put them and move nothing else.

Generated policies mix a person's entries (with and without comments, conditional, optional,
arrays over several lines), entries llsupervise wrote before, and floating comments. Every add or
remove through the persistence code must leave each person's entry, comment block included, whole
and in order, keep each llsupervise comment line above the entry holding its path, and load to
the same policy plus exactly the change.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from event_records import denial_event
from hypothesis import given, settings
from hypothesis import strategies as st

from llsupervise.policy.layout import entries, lines, statements
from llsupervise.policy.loader import parse_policy
from llsupervise.rights import AccessFs, AccessNet, parse_fs, parse_net
from llsupervise.supervisor.policyfile.kept import KeptAnswer, kept_from_event
from llsupervise.supervisor.policyfile.persist import (
    MARK,
    PersistError,
    add_answers,
    remove_answers,
)

ENV = {"HOME": "/home/u", "PWD": "/work"}
EXAMPLE = Path(__file__).parent.parent / "config" / "example.toml"
PATHS = ("/srv/a", "/srv/b", "/srv/c", "/srv/d")
ACCESS = ("read_file", "read_dir", "write_file", "execute")
PORTS = (22, 80, 443)
KINDS = ("path_beneath", "quiet", "net_port")


# -- the policy as the loader sees it ----------------------------------------------------------

Model = tuple[
    dict[str, AccessFs],  # unconditional supervisor rules, by path
    frozenset[tuple[tuple[str, ...], AccessFs, tuple[str, ...]]],  # conditional rules
    frozenset[str],  # quiet paths
    dict[int, AccessNet],  # supervisor ports
    dict[str, object],  # everything but [supervisor]'s rule arrays, as loaded
]


def model(text: str) -> Model:
    doc = parse_policy(text, "p.toml", ENV)
    rules: dict[str, AccessFs] = {}
    conditional = set()
    for entry in doc.supervisor.path_beneath:
        if entry.conditional:
            conditional.add((entry.paths, entry.access, entry.exe))
            continue
        for path in entry.paths:
            rules[path] = rules.get(path, AccessFs(0)) | entry.access
    ports: dict[int, AccessNet] = {}
    for net in doc.supervisor.net_port:
        for port in net.ports:
            ports[port] = ports.get(port, AccessNet(0)) | net.access
    quiet = frozenset(p for q in doc.supervisor.quiet for p in q.paths)
    rest = tomllib.loads(text)
    sup = rest.get("supervisor", {})
    rest["supervisor"] = {k: v for k, v in sup.items() if k not in KINDS}
    return rules, frozenset(conditional), quiet, ports, rest


def changed(before: Model, kept: KeptAnswer, remove: bool) -> Model:
    rules, conditional, quiet, ports, rest = before
    rules, ports, paths = dict(rules), dict(ports), set(quiet)
    if kept.kind == "quiet":
        (paths.discard if remove else paths.add)(kept.path)
    elif kept.kind == "net_port":
        assert kept.port is not None
        if remove:
            ports.pop(kept.port, None)
        else:
            ports[kept.port] = ports.get(kept.port, AccessNet(0)) | parse_net(kept.access or ())
    elif remove:
        rules.pop(kept.path, None)
    else:
        rules[kept.path] = rules.get(kept.path, AccessFs(0)) | parse_fs(kept.access or ())
    return rules, conditional, frozenset(paths), ports, rest


# -- generated policies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    kind: str
    values: tuple[str | int, ...]
    access: tuple[str, ...]
    ours: bool
    comment: bool
    conditional: bool
    optional: bool
    multiline: bool
    blank_before: bool
    floating: bool


def _quote(values: tuple[str | int, ...]) -> list[str]:
    return [f'"{v}"' if isinstance(v, str) else str(v) for v in values]


def render(specs: list[Spec]) -> tuple[str, list[str]]:
    """The policy text, and each person's entry block (comment block through its last line)."""
    out = ['abi = 7\n\n[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/usr"]\n\n',
           '[supervisor]\nmode = "interactive"  # ask\n']  # fmt: skip
    blocks = []
    for n, spec in enumerate(specs):
        if spec.floating:
            out.append(f"\n# floating comment {n}\n")
        if spec.blank_before or spec.floating:
            out.append("\n")
        block = []
        if spec.comment:
            block += [f"# note {n}: a person's comment\n", "# over two lines\n"]
        if spec.ours:
            block += [f'{MARK} 2024-01-01 00:00:00 for {_quote((v,))[0]}: "allow always"\n'
                      if spec.kind != "net_port" else
                      f'{MARK} 2024-01-01 00:00:00 for port {v}: "allow always"\n'
                      for v in spec.values]  # fmt: skip
        block.append(f"[[supervisor.{spec.kind}]]\n")
        if spec.kind != "quiet":
            block.append(f"allowed_access = [{', '.join(_quote(spec.access))}]\n")
        key = "port" if spec.kind == "net_port" else "parent"
        if spec.multiline:
            items = "".join(f"    {v},\n" for v in _quote(spec.values))
            block.append(f"{key} = [\n{items}]\n")
        else:
            block.append(f"{key} = [{', '.join(_quote(spec.values))}]\n")
        if spec.conditional:
            block.append('exe = ["/usr/bin/git"]\n')
        if spec.optional:
            block.append("optional = true\n")
        out += block
        if not spec.ours:
            blocks.append("".join(block))
    return "".join(out), blocks


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    kind = draw(st.sampled_from(KINDS))
    ours = draw(st.booleans())
    pool: tuple[str | int, ...] = PORTS if kind == "net_port" else PATHS
    values = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)))
    access_pool = ("bind_tcp", "connect_tcp") if kind == "net_port" else ACCESS
    access = tuple(
        draw(st.lists(st.sampled_from(access_pool), min_size=1, max_size=2, unique=True))
    )
    return Spec(
        kind, values, access if kind != "quiet" else (), ours,
        comment=not ours and draw(st.booleans()),
        conditional=kind == "path_beneath" and not ours and draw(st.booleans()),
        optional=kind != "net_port" and not ours and draw(st.booleans()),
        multiline=draw(st.booleans()),
        blank_before=ours or draw(st.booleans()),
        floating=draw(st.booleans()),
    )  # fmt: skip


@st.composite
def answers(draw: st.DrawFn) -> tuple[KeptAnswer, bool]:
    kind = draw(st.sampled_from(KINDS))
    remove = draw(st.booleans())
    if kind == "quiet":
        return KeptAnswer(draw(st.sampled_from(PATHS))), remove
    if kind == "net_port":
        access = tuple(draw(st.lists(st.sampled_from(("bind_tcp", "connect_tcp")), min_size=1,
                                     max_size=2, unique=True)))  # fmt: skip
        return KeptAnswer("", access, draw(st.sampled_from(PORTS))), remove
    access = tuple(draw(st.lists(st.sampled_from(ACCESS), min_size=1, max_size=3, unique=True)))
    return KeptAnswer(draw(st.sampled_from(PATHS)), access), remove


def check_marks(text: str) -> None:
    """Every llsupervise comment line sits above an entry holding what it names, and every
    value of an llsupervise entry is named by one."""
    stmts, all_lines = statements(text), lines(text)
    data = tomllib.loads(text).get("supervisor", {})
    seen: dict[str, int] = {}
    for entry in entries(stmts):
        if entry.key[:1] != ("supervisor",) or not entry.array:
            continue
        kind = entry.key[1]
        index = seen.get(kind, 0)
        seen[kind] = index + 1
        table = data[kind][index]
        marks = [all_lines[stmts[i].first] for i in entry.comments
                 if all_lines[stmts[i].first].startswith(MARK)]  # fmt: skip
        if not marks:
            continue
        held = table["port" if kind == "net_port" else "parent"]
        named = {m.split(" for ", 1)[1].split(":", 1)[0] for m in marks}
        assert named == {f"port {v}" if kind == "net_port" else f'"{v}"' for v in held}


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.lists(specs(), max_size=7), st.lists(answers(), min_size=1, max_size=4))
def test_answers_move_nothing_and_change_exactly_what_they_say(
    policy: list[Spec], steps: list[tuple[KeptAnswer, bool]]
) -> None:
    text, person_blocks = render(policy)
    for kept, remove in steps:
        before = model(text)
        try:
            after = remove_answers(text, [kept]) if remove else add_answers(text, [kept], now=0)
        except PersistError:
            # Only a removal is refused, and only for what a person's entry holds.
            assert remove
            key = "port" if kept.kind == "net_port" else "parent"
            assert any(
                not s.ours and s.kind == kept.kind and kept.value in s.values for s in policy
            ), key
            continue
        assert model(after) == changed(before, kept, remove)
        # Each person's entry is still there, whole, and they keep their order.
        position = 0
        for block in person_blocks:
            found = after.find(block, position)
            assert found >= 0 and (found == 0 or after[found - 1] == "\n"), block
            position = found + len(block)
        check_marks(after)
        if not remove:
            # Lines added, and an llsupervise entry's lists rewritten: no comment goes.
            diff = difflib.ndiff(lines(text), lines(after))
            assert not [d for d in diff if d.startswith("- ") and "#" in d]
            assert add_answers(after, [kept], now=0) == after  # added once
        text = after


# -- examples ----------------------------------------------------------------------------------


def test_an_answer_to_the_example_policy_is_only_inserted_after_its_kind() -> None:
    """The report's case: nothing moves, the new entry follows the conditional rule with a blank
    line and its comment, and the quiet entry keeps its comment."""
    text = EXAMPLE.read_text()
    reason = '"allow always" to "/usr/bin/ls" (openat: read_dir on "/root")'
    kept = KeptAnswer("/root", ("read_dir",), reason=reason, when=0)
    after = add_answers(text, [kept])
    old, new = lines(text), lines(after)
    at = old.index("# Denied without asking (and without a notification): secrets nothing should "
                   "read.\n")  # fmt: skip
    assert old[at - 2 : at] == ["optional = true\n", "\n"]  # the conditional rule's last line
    added = new[at - 1 : at + 4]
    assert new[: at - 1] + new[at + 4 :] == old
    assert added[0] == "\n"
    assert added[1].startswith(MARK) and added[1].endswith(
        'for "/root": "allow always" to "/usr/bin/ls" (openat: read_dir on "/root")\n'
    )
    assert added[2:] == [
        "[[supervisor.path_beneath]]\n", 'allowed_access = ["read_dir"]\n', 'parent = ["/root"]\n',
    ]  # fmt: skip
    assert new[at + 4 : at + 6] == ["\n", old[at]]  # the quiet entry's comment, still above it


def test_a_persons_entry_is_never_extended() -> None:
    text = ('[supervisor]\n\n# the a directory\n[[supervisor.path_beneath]]\n'
            'allowed_access = ["read_file"]\nparent = ["/srv/a"]\n')  # fmt: skip
    after = add_answers(text, [KeptAnswer("/srv/b", ("read_file",))], now=0)
    assert after.startswith(text)
    assert tomllib.loads(after)["supervisor"]["path_beneath"][0]["parent"] == ["/srv/a"]


def test_an_entry_llsupervise_wrote_is_extended_then_widened() -> None:
    text = add_answers("[supervisor]\n", [KeptAnswer("/srv/a", ("read_file",))], now=0)
    text = add_answers(text, [KeptAnswer("/srv/b", ("read_file",))], now=0)
    [entry] = tomllib.loads(text)["supervisor"]["path_beneath"]
    assert entry["parent"] == ["/srv/a", "/srv/b"]
    # One path only: its own entry widens instead of a second entry for the same path.
    text = add_answers("[supervisor]\n", [KeptAnswer("/srv/a", ("read_file",))], now=0)
    text = add_answers(text, [KeptAnswer("/srv/a", ("read_dir",))], now=0)
    [entry] = tomllib.loads(text)["supervisor"]["path_beneath"]
    assert entry == {"allowed_access": ["read_file", "read_dir"], "parent": ["/srv/a"]}
    marked = [line.startswith(MARK) for line in lines(text)]
    assert marked == [False, False, True, True, False, False, False]


@pytest.mark.parametrize("edit", ["# mine: keep it\n", "inline"])
def test_an_entry_a_person_commented_on_is_no_longer_extended(edit: str) -> None:
    text = add_answers("[supervisor]\n", [KeptAnswer("/srv/a", ("read_file",))], now=0)
    if edit == "inline":
        text = text.replace('parent = ["/srv/a"]', 'parent = ["/srv/a"]  # only a')
    else:
        text = text.replace(MARK, edit + MARK)
    after = add_answers(text, [KeptAnswer("/srv/b", ("read_file",))], now=0)
    assert after.startswith(text)
    assert [e["parent"] for e in tomllib.loads(after)["supervisor"]["path_beneath"]] == [
        ["/srv/a"], ["/srv/b"],
    ]  # fmt: skip
    with pytest.raises(PersistError, match="did not write"):
        remove_answers(after, [KeptAnswer("/srv/a", ("read_file",))])


def test_removing_the_last_path_takes_the_entry_and_its_comment() -> None:
    text = '[supervisor]\nmode = "enforce"\n'
    added = add_answers(
        text, [KeptAnswer("/srv/a", ("read_file",)), KeptAnswer("/srv/b", ("read_file",))]
    )
    once = remove_answers(added, [KeptAnswer("/srv/a", ("read_file",))])
    assert '"/srv/a"' not in once and '"/srv/b"' in once
    assert remove_answers(once, [KeptAnswer("/srv/b", ("read_file",))]) == text


def test_the_reason_cannot_break_out_of_its_comment_line() -> None:
    """The program chooses its own name: a line break in it must not become TOML."""
    event = denial_event("/srv/a\n#", exe='/tmp/x\n[supervisor]\nmode = "permissive"\u2028',
                         decision="allow_always",
                         rules=[{"path": "/srv/a", "access": ["read_file"]}])  # fmt: skip

    after = add_answers('[supervisor]\nmode = "enforce"\n', kept_from_event(event))
    assert tomllib.loads(after)["supervisor"]["mode"] == "enforce"
    [mark] = [line for line in lines(after) if line.startswith(MARK)]
    assert mark.isascii() and mark.count("\n") == 1
