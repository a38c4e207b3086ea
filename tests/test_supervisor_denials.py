"""Denial events name every object the kernel checked, with the rights it needed there."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from supervised import make_tree, policy

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial

RENAME = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
src, dst, flags = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.exit(0 if libc.renameat2(-100, src.encode(), -100, dst.encode(), flags) == 0 else 1)
"""


class Always:
    async def ask(self, denial: Denial) -> Decision:
        return Decision(Answer.ALLOW_ALWAYS)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("src", "dst", "flags", "data_rights", "status"),
    [
        # data/x replaced: make_reg for what arrives, remove_file for what it replaces; with
        # that rule kept, the kernel performs the rename.
        ("out/a", "data/x", 0, ["remove_file", "make_reg", "refer"], 0),
        # out/a exchanged with data/x: the same rights on data/. The kernel still refuses the
        # exchange (EXDEV): in out/, x would gain rights it has not in data/.
        ("out/a", "data/x", 2, ["remove_file", "make_reg", "refer"], 1),
    ],
)
async def test_rename_denials_name_every_right_the_kernel_checks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    src: str,
    dst: str,
    flags: int,
    data_rights: list[str],
    status: int,
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    (paths["out"] / "a").write_text("a")
    events: list[dict[str, Any]] = []
    decisions = ModeDecisions("interactive", "deny", 30.0, Always())
    doc = policy(tmp_path, mode="interactive")
    async with Supervisor.open(doc, decisions=decisions) as sup:
        sup.listeners.append(events.append)
        argv = [sys.executable, "-c", RENAME, src, dst, str(flags)]
        got = await sup.run(argv, forward_signals=False)
    [denial] = [e for e in events if e["event"] == "denial" and e["syscall"].startswith("rename")]
    assert denial["rules"] == [{"path": str(paths["data"]), "access": data_rights}]
    # With the kept rule the kernel judged the rename again, with its own refer semantics.
    assert got == status


class OnceThenAlways:
    def __init__(self) -> None:
        self.answers = [Answer.ALLOW_ONCE, Answer.ALLOW_ALWAYS]

    async def ask(self, denial: Denial) -> Decision:
        return Decision(self.answers.pop(0))


@pytest.mark.trio
async def test_a_kept_rule_names_the_directory_a_creation_was_checked_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Allow once for data/a, then always for data/b: the rule is on data/, by that name."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    events: list[dict[str, Any]] = []
    decisions = ModeDecisions("interactive", "deny", 30.0, OnceThenAlways())
    script = "for name in ('a', 'b'): open(f'data/{name}', 'w').close()"
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", script], forward_signals=False)
    assert status == 0
    kept = [e["rules"] for e in events if e["event"] == "denial" and "rules" in e]
    assert kept == [[{"path": str(paths["data"]), "access": ["write_file", "make_reg"]}]]
