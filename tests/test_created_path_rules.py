"""Rules on paths the run creates, on the real kernel (issue 17, supervisor side).

A supervisor rule marked ``optional`` whose path does not exist at load is pending: it binds to
the object the program creates there through the supervisor, in a generation committed before
the creating call returns, and never to an object that existed before. Each attack test says
which naive implementation it catches.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from created_rules import bindings, created_rule
from supervised import make_tree, policy, policy_text, wait_until

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.rules.created import birth_time_ns, coarse_now_ns, why_not_new

pytestmark = pytest.mark.kernel



def make_dir_rule(path: Path) -> str:
    return f"""
[[supervisor.path_beneath]]
allowed_access = ["make_dir", "make_reg", "make_sym", "remove_dir", "remove_file", "refer"]
parent = ["{path}"]
"""


#: The child: runs each step, printing "name ok" or "name err N" to out/log.
CHILD = r"""
import os, sys
log = open("out/log", "w", buffering=1)
def step(name, fn):
    try:
        fn()
        log.write(f"{name} ok\n")
    except OSError as exc:
        log.write(f"{name} err {exc.errno}\n")
def write(path, data=b"made\n"):
    with open(path, "wb") as f:
        f.write(data)
def read(path):
    with open(path, "rb") as f:
        f.read()
"""


async def supervise(
    root: Path, script: str, rules: str
) -> tuple[dict[str, str], list[Mapping[str, Any]], Supervisor]:
    """Run CHILD + ``script`` in ``root``; (its log by step, events, the supervisor)."""
    doc = policy(root, supervisor_rules=rules)
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(doc) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", CHILD + script], forward_signals=False)
    assert status == 0
    steps = dict(line.split(" ", 1) for line in (root / "out" / "log").read_text().splitlines())
    return steps, events, sup



@pytest.mark.trio
async def test_the_rule_binds_to_the_directory_made_and_the_program_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    made = tmp_path / "made"
    script = """
step("mkdir", lambda: os.mkdir("made"))
step("write", lambda: write("made/f"))
step("read", lambda: read("made/f"))
step("sibling", lambda: read("secret/s"))
step("beside", lambda: write("beside.txt"))
"""
    rules = make_dir_rule(tmp_path) + created_rule(made)
    steps, events, _ = await supervise(tmp_path, script, rules)
    assert steps == {"mkdir": "ok", "write": "ok", "read": "ok", "sibling": "err 13",
                     "beside": "err 13"}  # fmt: skip
    [start] = [e for e in events if e["event"] == "start"]
    assert start["pending_creation"] == [str(made)]
    [bound] = bindings(events)
    assert bound["bound"] is True and bound["path"] == str(made)
    assert (made / "f").read_bytes() == b"made\n"


@pytest.mark.trio
async def test_a_symlink_planted_at_the_name_gets_no_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caught: binding by resolving the rule's path once a creation of its name is seen (it
    would follow the symlink to secret/), or binding what a non-exclusive O_CREAT opened."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = """
step("plant", lambda: os.symlink("secret", "made"))
step("mkdir", lambda: os.mkdir("made"))
step("plant_file", lambda: os.symlink("secret/s", "file"))
step("create", lambda: os.close(os.open("file", os.O_CREAT | os.O_RDONLY)))
step("read", lambda: read("made/s"))
step("read_file", lambda: read("file"))
"""
    rules = make_dir_rule(tmp_path) + created_rule(tmp_path / "made")
    rules += created_rule(tmp_path / "file", '"read_file"')
    steps, events, sup = await supervise(tmp_path, script, rules)
    assert steps == {"plant": "ok", "mkdir": "err 17", "plant_file": "ok", "create": "err 13",
                     "read": "err 13", "read_file": "err 13"}  # fmt: skip
    assert bindings(events) == []
    assert {rule.path for rule in sup.rules.created} == {
        str(tmp_path / "made"),
        str(tmp_path / "file"),
    }


@pytest.mark.trio
async def test_a_directory_renamed_into_the_name_gets_no_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caught: binding on a rename (or link) into the name: the object existed before."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = """
step("move", lambda: os.rename("secret", "made"))
step("read", lambda: read("made/s"))
"""
    rules = make_dir_rule(tmp_path) + created_rule(tmp_path / "made")
    steps, events, _ = await supervise(tmp_path, script, rules)
    assert steps == {"move": "ok", "read": "err 13"}
    assert bindings(events) == []


@pytest.mark.trio
async def test_a_creation_the_static_layer_allows_still_binds_and_only_the_new_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Static rights to make directories and symlinks in the work tree: the mkdir still binds
    (creations are performed by the supervisor, whatever layer allows them), and a name the
    static layer lets the program plant never binds. Caught: re-resolving the pending paths
    when a creation binds one of them (``other`` would lead to secret/)."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    static = f"""
[[path_beneath]]
allowed_access = ["make_dir", "make_sym"]
parent = ["{tmp_path}"]
"""
    script = """
step("plant", lambda: os.symlink("secret", "other"))
step("mkdir", lambda: os.mkdir("made"))
step("write", lambda: write("made/f"))
step("read_other", lambda: read("other/s"))
"""
    rules = created_rule(tmp_path / "made") + created_rule(tmp_path / "other")
    doc = policy(tmp_path, supervisor_rules=rules, extra_static=static)
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(doc) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", CHILD + script], forward_signals=False)
    assert status == 0
    steps = dict(line.split(" ", 1) for line in (tmp_path / "out" / "log").read_text().splitlines())
    assert steps == {"plant": "ok", "mkdir": "ok", "write": "ok", "read_other": "err 13"}
    assert [e["path"] for e in bindings(events)] == [str(tmp_path / "made")]


@pytest.mark.trio
async def test_a_replaced_anchor_directory_gets_no_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule waits in the anchor object, not its path. Caught: matching creations by path
    string (the new sub/ would receive the rule)."""
    make_tree(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    script = """
step("move", lambda: os.rename("sub", "sub_old"))
step("remake", lambda: os.mkdir("sub"))
step("mkdir_new", lambda: os.mkdir("sub/made"))
step("write_new", lambda: write("sub/made/f"))
step("mkdir_old", lambda: os.mkdir("sub_old/made"))
step("write_old", lambda: write("sub_old/made/f"))
"""
    rules = make_dir_rule(tmp_path) + created_rule(tmp_path / "sub" / "made")
    steps, events, _ = await supervise(tmp_path, script, rules)
    assert steps == {"move": "ok", "remake": "ok", "mkdir_new": "ok", "write_new": "err 13",
                     "mkdir_old": "ok", "write_old": "ok"}  # fmt: skip
    [bound] = bindings(events)
    assert bound["bound"] is True and bound["object"] == str(tmp_path / "sub_old" / "made")


@pytest.mark.trio
async def test_missing_components_bind_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``build/out`` with neither existing: the rule is anchored anew on build/ when it is
    made (no rights there), and binds on build/out."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = """
step("build", lambda: os.mkdir("build"))
step("in_build", lambda: write("build/f"))
step("out", lambda: os.mkdir("build/out"))
step("in_out", lambda: write("build/out/f"))
"""
    rules = make_dir_rule(tmp_path) + created_rule(tmp_path / "build" / "out")
    steps, events, _ = await supervise(tmp_path, script, rules)
    assert steps == {"build": "ok", "in_build": "err 13", "out": "ok", "in_out": "ok"}
    first, second = bindings(events)
    assert first["bound"] is False and first["waiting_for"] == "out"
    assert second["bound"] is True


def test_a_directory_older_than_the_creation_is_not_taken_for_the_new_one(
    tmp_path: Path,
) -> None:
    """What a program racing the mkdir (rename the new directory away, an old empty one in)
    leaves under the name. Caught: a check that the object is an empty directory only."""
    anchor = tmp_path / "anchor"
    anchor.mkdir()
    old = tmp_path / "old"
    old.mkdir()
    fd = os.open(old, os.O_PATH)
    try:
        born = birth_time_ns(fd)
        assert born is not None
        while coarse_now_ns() <= born:
            time.sleep(0.001)  # the next clock tick: "before" must come after the old birth
        before = coarse_now_ns()
        (anchor / "made").mkdir()  # what the supervisor made...
        (anchor / "made").rename(tmp_path / "away")  # ...moved away, and the old one put in
        old.rename(anchor / "made")
        anchor_fd = os.open(anchor, os.O_PATH | os.O_DIRECTORY)
        try:
            reason = why_not_new(fd, anchor_fd, b"made", before, None)
            assert reason == "the object existed before the creation (moved into place)"
            new = os.open(tmp_path / "away", os.O_PATH)
            try:
                assert why_not_new(new, anchor_fd, b"made", before, None) is not None
            finally:
                os.close(new)
        finally:
            os.close(anchor_fd)
    finally:
        os.close(fd)


@pytest.mark.trio
async def test_a_reload_keeps_a_bound_rule_on_its_object_and_a_pending_one_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After binding, the program moves made/ away and plants symlinks at both rule paths, then
    the policy is reloaded. Caught: a reload that resolves rule paths anew (made and later
    would lead to secret/)."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    rules = make_dir_rule(tmp_path) + created_rule(tmp_path / "made")
    rules += created_rule(tmp_path / "later")
    text = policy_text(tmp_path, supervisor_rules=rules)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(text)
    script = """
import time
step("mkdir", lambda: os.mkdir("made"))
step("write", lambda: write("made/f"))
step("move", lambda: os.rename("made", "made2"))
step("plant", lambda: os.symlink("secret", "made"))
step("plant_later", lambda: os.symlink("secret", "later"))
step("waiting", lambda: None)
while not os.path.exists("out/go"):
    time.sleep(0.01)
step("read_moved", lambda: read("made2/f"))
step("read_made", lambda: read("made/s"))
step("read_later", lambda: read("later/s"))
"""
    doc = load_policy(policy_file, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    events: list[Mapping[str, Any]] = []
    log = tmp_path / "out" / "log"
    async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
        sup.listeners.append(events.append)

        async def run() -> None:
            argv = [sys.executable, "-c", CHILD + script]
            assert await sup.run(argv, forward_signals=False) == 0

        nursery.start_soon(run)
        await wait_until(lambda: log.exists() and "waiting ok" in log.read_text(), "planting")
        assert sup.policy_file is not None
        reloaded = sup.policy_file.apply(text)
        assert reloaded["ok"] is True, reloaded
        assert {rule.path for rule in sup.rules.created} == {str(tmp_path / "later")}
        (tmp_path / "out" / "go").touch()
    steps = dict(line.split(" ", 1) for line in log.read_text().splitlines())
    assert steps["read_moved"] == "ok"
    assert steps["read_made"] == "err 13"
    assert steps["read_later"] == "err 13"


def test_check_lists_the_rules_pending_on_creation(tmp_path: Path) -> None:
    from llsupervise.landlock import detect_support
    from llsupervise.report import check_report
    from llsupervise.supervisor.rules.binding import resolve_at_launch
    from llsupervise.supervisor.rules.objects import ObjectTable

    make_tree(tmp_path)
    made = tmp_path / "made"
    doc = policy(tmp_path, supervisor_rules=created_rule(made))
    with ObjectTable() as table:
        resolved = resolve_at_launch(doc, table)
        lines = check_report(resolved, table, detect_support())
    assert [rule.path for rule in resolved.created] == [str(made)]
    assert any(line.startswith(f"pending on creation: '{made}'") for line in lines), lines
    assert not any("skipped optional path" in line for line in lines)
