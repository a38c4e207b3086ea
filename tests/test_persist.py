"""Answers written back into the policy file: layout kept, user edits kept, atomic."""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from event_records import denial_event
from hypothesis import given, settings
from hypothesis import strategies as st
from supervised import PUBLIC, make_tree, policy_text, wait_until
from test_reload import env, labels, reloads, rule, save

from llsupervise.policy.loader import load_policy, parse_policy
from llsupervise.rights import AccessFs
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.supervisor.policyfile.kept import KeptAnswer, kept_from_event
from llsupervise.supervisor.policyfile.persist import (
    PersistError,
    add_answers,
    persist,
    write_atomically,
)

ENV = {"HOME": "/home/u", "PWD": "/work"}

COMMENTED = """\
# My policy: keep this comment.
[[path_beneath]]
allowed_access = ["read_file"]   # trailing comment
parent = ["/usr"]

[supervisor]
mode = "interactive"  # ask me

# Project sources.
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["/srv/a"]

[[supervisor.net_port]]
allowed_access = ["bind_tcp"]
port = [8080]
"""


def supervisor_rules(text: str) -> dict[str, set[str]]:
    doc = parse_policy(text, "p.toml", ENV)
    found: dict[str, set[str]] = {}
    for entry in doc.supervisor.path_beneath:
        for path in entry.paths:
            found.setdefault(path, set()).update(
                name
                for name in ("read_file", "write_file", "read_dir")
                if entry.access & AccessFs[name.upper()]
            )
    return found


def test_answers_are_added_with_comments_and_layout_kept() -> None:
    text = add_answers(
        COMMENTED,
        [
            KeptAnswer("/srv/b", ("read_file",)),
            KeptAnswer("/srv/c", ("write_file",)),
            KeptAnswer("/home/u/.ssh"),
        ],
    )
    # Everything that was there is still there, in order, byte for byte.
    position = 0
    for line in COMMENTED.splitlines():
        position = text.index(line, position)
    assert supervisor_rules(text) == {
        "/srv/a": {"read_file"}, "/srv/b": {"read_file"}, "/srv/c": {"write_file"},
    }  # fmt: skip
    # Same rights as the person's "Project sources." entry, but that one is theirs: a new one.
    assert [e["parent"] for e in tomllib.loads(text)["supervisor"]["path_beneath"]] == [
        ["/srv/a"], ["/srv/b"], ["/srv/c"],
    ]  # fmt: skip
    doc = parse_policy(text, "p.toml", ENV)
    assert [e.paths for e in doc.supervisor.quiet] == [("/home/u/.ssh",)]
    assert doc.supervisor.net_port[0].ports == (8080,)


def test_adding_again_changes_nothing() -> None:
    answers = [KeptAnswer("/srv/a", ("read_file",)), KeptAnswer("/q")]
    once = add_answers(COMMENTED, answers)
    assert add_answers(once, answers) == once


def test_a_policy_without_supervisor_table_gets_one() -> None:
    text = add_answers('[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/usr"]\n',
                       [KeptAnswer("/srv/b", ("read_file", "read_dir"))])  # fmt: skip
    doc = parse_policy(text, "p.toml", ENV)
    [entry] = doc.supervisor.path_beneath
    assert entry.paths == ("/srv/b",) and entry.access == AccessFs.READ_FILE | AccessFs.READ_DIR


def test_inline_supervisor_table_stays_inline() -> None:
    text = add_answers(
        'supervisor = { mode = "enforce" }\n', [KeptAnswer("/srv/b", ("read_file",))]
    )
    doc = parse_policy(text, "p.toml", ENV)
    assert doc.supervisor.mode == "enforce"
    assert [e.paths for e in doc.supervisor.path_beneath] == [("/srv/b",)]


def test_conditional_and_optional_entries_are_not_extended() -> None:
    text = (
        '[supervisor]\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\n'
        'parent = ["/srv/a"]\nexe = ["/usr/bin/git"]\n'
    )
    doc = parse_policy(add_answers(text, [KeptAnswer("/srv/b", ("read_file",))]), "p.toml", ENV)
    assert [(e.paths, e.exe) for e in doc.supervisor.path_beneath] == [
        (("/srv/a",), ("/usr/bin/git",)), (("/srv/b",), ()),
    ]  # fmt: skip


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=20))
def test_any_path_reads_back_as_written(name: str) -> None:
    """``$`` and TOML's special characters survive: the loader expands to the same path."""
    path = "/srv/" + name.replace("/", "_")
    text = add_answers(COMMENTED, [KeptAnswer(path, ("read_file",)), KeptAnswer(path + "q")])
    doc = parse_policy(text, "p.toml", ENV)
    assert any(path in e.paths for e in doc.supervisor.path_beneath)
    assert any(path + "q" in e.paths for e in doc.supervisor.quiet)


def test_a_broken_file_is_not_written(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("[supervisor\n")
    with pytest.raises(PersistError):
        persist(
            str(policy), [KeptAnswer("/srv", ("read_file",))], lambda t: parse_policy(t, "p", ENV)
        )
    assert policy.read_text() == "[supervisor\n"


def test_atomic_write_keeps_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("old")
    policy.chmod(0o640)
    inode = policy.stat().st_ino
    write_atomically(str(policy), "new")
    assert policy.read_text() == "new"
    assert stat.S_IMODE(policy.stat().st_mode) == 0o640
    assert policy.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert os.listdir(tmp_path) == ["p.toml"]


def test_temporary_grants_are_not_persisted() -> None:
    event = denial_event("/a/f", decision="allow_always", rules=[
        {"path": "/a", "access": ["read_file"], "seconds": 5.0},
        {"path": "/b", "access": ["read_file"]},
        {"quiet": "/c"},
    ])  # fmt: skip
    assert kept_from_event(event) == [KeptAnswer("/b", ("read_file",)), KeptAnswer("/c")]
    assert kept_from_event({"event": "commit", "generation": 1, "rules": 3}) == []


# -- with a real child ---------------------------------------------------------------------------

READ_BOTH = r"""
import sys, time
print(open("data/x").read().strip(), flush=True)
deadline = time.monotonic() + 30  # only keeps a broken run from hanging
while True:
    try:
        print(open("other/y").read().strip(), flush=True)
        break
    except OSError as e:
        if time.monotonic() > deadline:
            print("gave up", e.errno)
            break
        time.sleep(0.01)
"""


class UserEditsWhileAsked:
    """Answers "always" for data/x, but first the user saves an edit of the policy file."""

    def __init__(self, policy: Path, edit: str, data: Path) -> None:
        self.policy, self.edit, self.data = policy, edit, data
        self.asked: list[str] = []

    async def ask(self, denial: Denial) -> Decision:
        self.asked.append(denial.path)
        if denial.path == str(self.data / "x"):
            save(self.policy, self.edit)
            return Decision(Answer.ALLOW_ALWAYS)
        if denial.path.endswith("/secret/s"):
            return Decision(Answer.DENY_QUIET)
        return Decision(Answer.DENY)


@pytest.mark.kernel
@pytest.mark.trio
async def test_a_user_edit_made_while_an_answer_is_persisted_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    paths = make_tree(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "y").write_text("other data\n")
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "policy.toml"
    comment = "# the user's own comment\n"
    policy.write_text(policy_text(tmp_path, mode="interactive", supervisor_rules=comment))
    # The user's edit grants other/ and does not know about the answer being given.
    edit = policy_text(
        tmp_path, mode="interactive", supervisor_rules=comment + rule(tmp_path / "other")
    )
    frontend = UserEditsWhileAsked(policy, edit, paths["data"])
    events: list[Mapping[str, Any]] = []
    doc = load_policy(policy, env(tmp_path))
    decisions = ModeDecisions("interactive", "deny", 30.0, frontend)
    async with Supervisor.open(doc, decisions=decisions, watch=True) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", READ_BOTH], forward_signals=False)
        assert labels(sup) == {
            str(paths["data"] / "x"): AccessFs.READ_FILE,
            str(tmp_path / "other"): AccessFs.READ_FILE,
        }
    assert status == 0
    out = capfd.readouterr().out.splitlines()
    assert out == [PUBLIC.decode().strip(), "other data"]  # the kernel let both through
    text = policy.read_text()
    assert comment in text
    assert supervisor_rules(text.replace(str(tmp_path), "/t")) == {
        "/t/data/x": {"read_file"}, "/t/other": {"read_file"},
    }  # fmt: skip
    [persisted] = [e for e in events if e["event"] == "persist"]
    assert persisted["ok"] is True
    assert persisted["rules"] == [{"path": str(paths["data"] / "x"), "access": ["read_file"]}]
    # The merged file was reloaded once (the user's edit); the answer needed no reload.
    assert [e["ok"] for e in reloads(events)] == [True]


ALWAYS_THEN_QUIET = r"""
for name in ("data/x", "secret/s"):
    try:
        open(name).read()
        print("read", name)
    except OSError as e:
        print("denied", name, e.errno)
"""


class AlwaysForDataQuietForSecret:
    async def ask(self, denial: Denial) -> Decision:
        if denial.path.endswith("/data/x"):
            return Decision(Answer.ALLOW_ALWAYS)
        return Decision(Answer.DENY_QUIET)


@pytest.mark.kernel
@pytest.mark.trio
async def test_own_write_is_recognised_and_not_reloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path, mode="interactive"))
    events: list[Mapping[str, Any]] = []
    doc = load_policy(policy, env(tmp_path))
    decisions = ModeDecisions("interactive", "deny", 30.0, AlwaysForDataQuietForSecret())
    async with Supervisor.open(doc, decisions=decisions, watch=True) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", ALWAYS_THEN_QUIET], forward_signals=False)
        generation = sup.generation
        assert sup.policy_file is not None
        await wait_until(lambda: len([e for e in events if e["event"] == "persist"]) == 2, "writes")
        # The file now says what is in force: nothing to reload, no commit.
        assert sup.policy_file.check() is None
        assert sup.generation == generation
    assert status == 0
    assert capfd.readouterr().out.splitlines() == ["read data/x", "denied secret/s 13"]
    assert reloads(events) == []
    reread = load_policy(policy, env(tmp_path))
    assert [e.paths for e in reread.supervisor.quiet] == [(str(paths["secret"] / "s"),)]
    assert [e.paths for e in reread.supervisor.path_beneath] == [(str(paths["data"] / "x"),)]
    await trio.lowlevel.checkpoint()
