"""Exec denials: reported (the static layer already refused them), never granted live."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from supervised import make_tree, policy

from llsupervise.rights import AccessFs
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial

pytestmark = pytest.mark.kernel

EXEC = r"""
import os, sys
try:
    os.execv(sys.argv[1], [sys.argv[1]])
except OSError as e:
    sys.exit(e.errno)
"""


class AlwaysAllow:
    def __init__(self) -> None:
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        self.asked.append(denial)
        return Decision(Answer.ALLOW_ALWAYS)


@pytest.mark.trio
async def test_exec_denial_is_reported_and_always_keeps_a_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    tool = paths["data"] / "true"
    shutil.copy(shutil.which("true") or "/bin/true", tool)
    frontend = AlwaysAllow()
    events: list[Mapping[str, Any]] = []
    doc = policy(tmp_path, mode="interactive")
    decisions = ModeDecisions("interactive", "deny", 30.0, frontend)
    async with Supervisor.open(doc, decisions=decisions) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", EXEC, "data/true"], forward_signals=False)
        rules = {sup.table.label(obj): access for obj, access in sup.rules.permanent.fs.items()}
    assert status == 13  # EACCES: a grant cannot reach a running exec
    [asked] = frontend.asked
    assert asked.next_run_only and asked.path == str(tool) and asked.access == ("execute",)
    [denial] = [e for e in events if e["event"] == "denial"]
    assert denial["syscall"] == "execve" and denial["next_run_only"] is True
    assert denial["decision"] == "allow_always"
    assert denial["rules"] == [{"path": str(tool), "access": ["execute"]}]
    assert rules[str(tool)] == AccessFs.EXECUTE


@pytest.mark.trio
async def test_allowed_exec_raises_no_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(policy(tmp_path)) as sup:
        sup.listeners.append(events.append)
        true = shutil.which("true") or "/bin/true"
        status = await sup.run([sys.executable, "-c", EXEC, true], forward_signals=False)
    assert status == 0
    assert [e for e in events if e["event"] == "denial"] == []
