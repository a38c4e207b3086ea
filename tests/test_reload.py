"""Saving the policy file while a command runs: its rights follow, all at once or not at all."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from supervised import READ_OK, ReadLoop, make_tree, policy_text, wait_until

from llsupervise.policy.loader import load_policy
from llsupervise.rights import AccessFs
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.policyfile.watch import PolicyFile

pytestmark = pytest.mark.kernel


def rule(path: Path | str, access: str = '"read_file"') -> str:
    return f'\n[[supervisor.path_beneath]]\nallowed_access = [{access}]\nparent = ["{path}"]\n'


def save(path: Path, text: str, style: str = "rename") -> None:
    """Save like an editor: in place, or (vim, most editors) a new file renamed over."""
    if style == "rename":
        temporary = path.with_name(f".{path.name}.swp")
        temporary.write_text(text)
        os.replace(temporary, path)
    else:
        path.write_text(text)


def env(root: Path) -> dict[str, str]:
    return {"HOME": str(root), "PWD": str(root)}


def labels(sup: Supervisor) -> dict[str, AccessFs]:
    return {sup.table.label(obj): access for obj, access in sup.rules.permanent.fs.items()}


def reloads(events: list[Mapping[str, Any]], start: int = 0) -> list[Mapping[str, Any]]:
    return [e for e in events[start:] if e["event"] == "reload"]


@pytest.mark.trio
async def test_saving_the_policy_grants_revokes_and_a_broken_save_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    reader = ReadLoop(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    events: list[Mapping[str, Any]] = []
    doc = load_policy(policy, env(tmp_path))
    async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
        sup.listeners.append(events.append)
        reader.start(sup, nursery)
        await wait_until(lambda: "err 13" in reader.lines(), "a first denial")

        save(policy, policy_text(tmp_path, supervisor_rules=rule(paths["data"])))
        mark = len(reader.lines())
        await wait_until(lambda: READ_OK in reader.lines()[mark:], "the saved rule to grant")
        [event] = reloads(events)
        assert event == {"event": "reload", "ok": True, "generation": sup.generation}
        assert labels(sup) == {str(paths["data"]): AccessFs.READ_FILE}

        save(policy, policy_text(tmp_path), style="in place")
        await wait_until(lambda: not sup.rules.permanent.fs, "the rule to go")
        mark = len(reader.lines())
        await wait_until(lambda: "err 13" in reader.lines()[mark:], "the kernel to deny again")

        # Broken: the data rule is back, but one access name is wrong. Nothing may change.
        generation, count = sup.generation, len(reloads(events))
        broken = policy_text(
            tmp_path, supervisor_rules=rule(paths["data"]) + rule(paths["secret"], '"raed_file"')
        )
        save(policy, broken)
        await wait_until(lambda: len(reloads(events)) > count, "the broken save's event")
        event = reloads(events)[-1]
        line = broken.splitlines().index('allowed_access = ["raed_file"]') + 1
        assert event["ok"] is False and event["generation"] == generation
        assert event["error"].startswith(
            f"{policy}:{line}: supervisor.path_beneath[1].allowed_access[0]: "
        )
        assert "raed_file" in event["error"]
        assert sup.generation == generation and not sup.rules.permanent.fs
        mark = len(reader.lines())
        await wait_until(lambda: len(reader.lines()) > mark + 20, "more reads")
        assert READ_OK not in reader.lines()[mark:]
        reader.stop()
    assert reader.status == [0]


@pytest.mark.trio
async def test_rapid_saves_end_with_the_last_files_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 saves, in place and by rename, from another thread: the last one wins, whole."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    dirs = [tmp_path / f"d{i}" for i in range(5)]
    for d in dirs:
        d.mkdir()
    reader = ReadLoop(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    rng = random.Random(4)
    accesses = ['"read_file"', '"read_dir"', '"read_file", "read_dir"', '"abi.read_write"']
    texts = []
    for _ in range(99):
        chosen = rng.sample(dirs, rng.randint(0, len(dirs)))
        texts.append(
            policy_text(
                tmp_path, supervisor_rules="".join(rule(d, rng.choice(accesses)) for d in chosen)
            )
        )
    # The last save grants data/ (the kernel can tell) and d1 with read_dir only.
    texts.append(
        policy_text(tmp_path, supervisor_rules=rule(paths["data"]) + rule(dirs[1], '"read_dir"'))
    )

    def save_all() -> None:
        for i, text in enumerate(texts):
            save(policy, text, "rename" if i % 3 else "in place")

    events: list[Mapping[str, Any]] = []
    doc = load_policy(policy, env(tmp_path))
    async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
        sup.listeners.append(events.append)
        reader.start(sup, nursery)
        await wait_until(lambda: "err 13" in reader.lines(), "a first denial")
        await trio.to_thread.run_sync(save_all)
        expected = {str(paths["data"]): AccessFs.READ_FILE, str(dirs[1]): AccessFs.READ_DIR}
        await wait_until(lambda: labels(sup) == expected, "the last save's rules")
        mark = len(reader.lines())
        await wait_until(lambda: READ_OK in reader.lines()[mark:], "the kernel to allow data/x")
        assert reloads(events) and reloads(events)[-1]["ok"] is True
        # Nothing left to apply: the file's text is the one in force.
        assert sup.policy_file is not None and sup.policy_file.check() is None
        reader.stop()


@pytest.mark.timeout(30)
@pytest.mark.trio
async def test_cancelling_the_watch_ends_its_thread_without_waiting_for_a_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run ends by cancelling the watch: the watching thread must stop then, not at
    its next timeout (which here would be ten minutes away: the test would time out)."""
    from llsupervise.supervisor.policyfile import watch as reload

    monkeypatch.setattr(reload, "RUST_TIMEOUT_MS", 600_000)
    paths = make_tree(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(load_policy(policy, env(tmp_path)), watch=True) as sup:
        assert sup.policy_file is not None
        sup.listeners.append(events.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.policy_file.watch)
            # A reload proves the thread watches; it then waits for the next change.
            save(policy, policy_text(tmp_path, supervisor_rules=rule(paths["data"])))
            await wait_until(lambda: bool(reloads(events)), "the save to be seen")
            nursery.cancel_scope.cancel()
    assert reloads(events)[0]["ok"] is True


def test_static_changes_are_reported_and_the_supervisor_part_applied(tmp_path: Path) -> None:
    paths = make_tree(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    events: list[Mapping[str, Any]] = []
    with _supervisor(policy) as (sup, policy_file):
        sup.listeners.append(events.append)
        static = (
            f'\n[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{paths["secret"]}"]\n'
        )
        save(
            policy, policy_text(tmp_path, supervisor_rules=rule(paths["data"]), extra_static=static)
        )
        event = policy_file.check()
        assert event is not None and event["ok"] is True and event["static_changed"] is True
        assert "next run" in event["message"]
        assert labels(sup) == {str(paths["data"]): AccessFs.READ_FILE}
        assert str(paths["secret"]) not in {sup.table.label(o) for o in sup.static.fs}


def test_supervisor_rules_beyond_the_running_layer_are_rejected(tmp_path: Path) -> None:
    """The running layer handles what it handled at start: a rule it cannot enforce is an
    error, even if the saved file's own [[ruleset]] now handles the right."""
    paths = make_tree(tmp_path)
    policy = tmp_path / "policy.toml"
    narrow = '[[ruleset]]\nhandled_access_fs = ["read_file", "read_dir"]\n[supervisor]\n'
    policy.write_text(narrow)
    with _supervisor(policy) as (sup, policy_file):
        generation = sup.generation
        text = narrow.replace('"read_dir"', '"read_dir", "make_reg"') + rule(
            paths["data"], '"make_reg"'
        )
        save(policy, text)
        event = policy_file.check()
        assert event is not None and event["ok"] is False
        line = text.splitlines().index('allowed_access = ["make_reg"]') + 1
        assert event["error"].startswith(
            f"{policy}:{line}: supervisor.path_beneath[0].allowed_access: "
        )
        assert "make_reg not handled by the running layer" in event["error"]
        assert sup.generation == generation and not sup.rules.permanent.fs


def test_a_missing_path_or_a_deleted_file_changes_nothing(tmp_path: Path) -> None:
    paths = make_tree(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rule(paths["data"])))
    with _supervisor(policy) as (sup, policy_file):
        before = labels(sup)
        text = policy_text(tmp_path, supervisor_rules=rule(tmp_path / "nope"))
        save(policy, text)
        event = policy_file.check()
        assert event is not None and event["ok"] is False
        line = text.splitlines().index(f'parent = ["{tmp_path}/nope"]') + 1
        assert event["error"].startswith(f"{policy}:{line}: supervisor.path_beneath[0].parent[0]")
        assert labels(sup) == before
        policy.unlink()
        assert policy_file.check() is None
        assert labels(sup) == before


def test_same_text_again_is_not_reloaded(tmp_path: Path) -> None:
    paths = make_tree(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    with _supervisor(policy) as (sup, policy_file):
        assert policy_file.check() is None
        text = policy_text(tmp_path, supervisor_rules=rule(paths["data"]))
        save(policy, text)
        event = policy_file.check()
        assert event is not None and event["ok"] is True
        generation = sup.generation
        save(policy, text, style="in place")
        assert policy_file.check() is None
        # A comment-only edit: an event, but no commit.
        save(policy, text + "# comment\n")
        event = policy_file.check()
        assert event == {"event": "reload", "ok": True, "generation": generation}
        assert sup.generation == generation


class _supervisor:
    """A supervisor without a child (no trio needed) and its policy file, for direct reloads."""

    def __init__(self, policy: Path) -> None:
        from llsupervise.supervisor.events.decisions import ModeDecisions
        from llsupervise.supervisor.events.model import EventLog
        from llsupervise.supervisor.rules.objects import ObjectTable, resolve

        root = policy.parent
        self.table = ObjectTable()
        doc = load_policy(policy, env(root))
        self.sup = Supervisor(
            resolve(doc, self.table), self.table, ModeDecisions("enforce"), EventLog(None)
        )
        self.policy_file = PolicyFile(self.sup, str(policy))

    def __enter__(self) -> tuple[Supervisor, PolicyFile]:
        return self.sup, self.policy_file

    def __exit__(self, *exc: object) -> None:
        self.sup.rules.close()
        self.table.close()


# -- property: an invalid file never changes the committed policy -----------------------------

PB = "[[supervisor.path_beneath]]\n"
BREAKAGES = (
    ("syntax", "[[supervisor.path_beneath\n"),
    ("syntax", "= 3\n"),
    ("unknown key", 'colour = "red"\n'),
    ("bad access", PB + 'allowed_access = ["raed_file"]\nparent = ["/"]\n'),
    ("bad access", PB + 'allowed_access = ["v0.read_write"]\nparent = ["/"]\n'),
    ("missing path", PB + 'allowed_access = ["read_file"]\nparent = ["/nonexistent/x"]\n'),
    ("unhandled", '[[supervisor.net_port]]\nallowed_access = ["connect_tcp"]\nport = [1]\n'),
    ("bad type", '[[supervisor.quiet]]\nparent = "/"\n'),
    ("relative exe", PB + 'allowed_access = ["read_file"]\nparent = ["/"]\nexe = ["cat"]\n'),
    ("unknown variable", '[[supervisor.quiet]]\nparent = ["${nope}/x"]\n'),
)


def _random_rules(data: st.DataObject, dirs: list[Path]) -> str:
    chosen = data.draw(st.lists(st.sampled_from(dirs), unique=True, max_size=len(dirs)))
    access = st.sampled_from(['"read_file"', '"read_dir"', '"abi.read_write"', '"make_reg"'])
    text = "".join(rule(d, data.draw(access)) for d in chosen)
    quiet = data.draw(st.lists(st.sampled_from(dirs), unique=True, max_size=2))
    if quiet:
        text += "\n[[supervisor.quiet]]\nparent = [" + ", ".join(f'"{q}"' for q in quiet) + "]\n"
    return text


def _state(sup: Supervisor) -> tuple[object, ...]:
    rules = sup.rules
    return (
        sup.generation, rules.mutable.committed, rules.permanent, rules.quiet, rules.conditional,
        len(sup.table),
    )  # fmt: skip


def test_an_invalid_file_never_changes_the_committed_policy(tmp_path: Path) -> None:
    make_tree(tmp_path)
    dirs = [tmp_path / f"d{i}" for i in range(4)]
    for d in dirs:
        d.mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    with _supervisor(policy) as (sup, policy_file):

        @settings(max_examples=300, derandomize=True, database=None, deadline=None)
        @given(st.data())
        def property(data: st.DataObject) -> None:
            valid = policy_text(tmp_path, supervisor_rules=_random_rules(data, dirs))
            save(policy, valid)
            event = policy_file.check()
            assert event is None or event["ok"] is True, event
            before = _state(sup)
            kind, breakage = data.draw(st.sampled_from(BREAKAGES))
            lines_of = policy_text(tmp_path, supervisor_rules=_random_rules(data, dirs)).split("\n")
            where = data.draw(st.integers(0, len(lines_of)))
            if kind in ("syntax", "unknown key"):
                lines_of.insert(where, breakage.rstrip("\n"))
                broken = "\n".join(lines_of)
            else:
                broken = "\n".join(lines_of) + "\n" + breakage
            if data.draw(st.booleans()):
                broken = (
                    broken.encode("utf-8")
                    .replace(b"# test", b"# \xff test", 1)
                    .decode("utf-8", "surrogateescape")
                )
                policy.write_bytes(broken.encode("utf-8", "surrogateescape"))
            else:
                save(policy, broken)
            event = policy_file.check()
            assert event is not None and event["ok"] is False, (kind, broken)
            assert event["error"].startswith(f"{policy}:"), event
            assert _state(sup) == before

        property()


@pytest.mark.trio
async def test_watching_a_policy_that_is_not_a_file_fails_clearly(tmp_path: Path) -> None:
    from supervised import policy

    from llsupervise.policy.document import PolicyError

    make_tree(tmp_path)
    document = policy(tmp_path)  # parsed from text: its source names no file
    with pytest.raises(PolicyError, match="cannot read the policy file to watch"):
        async with Supervisor.open(document, watch=True):
            pass  # pragma: no cover
