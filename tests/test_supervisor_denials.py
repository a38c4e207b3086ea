"""Denial events name every object the kernel checked, with the rights it needed there."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import make_tree, policy

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial

pytestmark = pytest.mark.kernel

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
    events: list[Mapping[str, Any]] = []
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
    events: list[Mapping[str, Any]] = []
    decisions = ModeDecisions("interactive", "deny", 30.0, OnceThenAlways())
    script = "for name in ('a', 'b'): open(f'data/{name}', 'w').close()"
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", script], forward_signals=False)
    assert status == 0
    kept = [e["rules"] for e in events if e["event"] == "denial" and "rules" in e]
    assert kept == [[{"path": str(paths["data"]), "access": ["write_file", "make_reg"]}]]


class HoldUntilBoth:
    """Answers allow-once, but only once two questions are open at the same time."""

    def __init__(self) -> None:
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        self.asked.append(denial)
        while sum(d.path.endswith("data/x") for d in self.asked) < 2:
            await trio.sleep(0.01)
        return Decision(Answer.ALLOW_ONCE)


#: Two processes of one executable, told apart only by their command lines, read the same
#: denied file at the same time.
TWO_READERS = r"""
import subprocess, sys
reader = "import sys; print(open('data/x').read().strip(), sys.argv[1])"
procs = [subprocess.Popen([sys.executable, "-c", reader, name]) for name in ("docs", "exfil")]
sys.exit(max(p.wait() for p in procs))
"""


@pytest.mark.trio
async def test_two_processes_never_share_one_question(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person answering for "make docs" must not thereby answer for another process."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    frontend = HoldUntilBoth()
    decisions = ModeDecisions("interactive", "deny", 30.0, frontend)
    doc = policy(tmp_path, mode="interactive")
    async with Supervisor.open(doc, decisions=decisions) as sup:
        with trio.fail_after(60):  # a question per process, or none answered: fail, not hang
            status = await sup.run([sys.executable, "-c", TWO_READERS], forward_signals=False)
    assert status == 0
    asked = [d for d in frontend.asked if d.path.endswith("data/x")]
    assert sorted(d.cmdline.split()[-1] for d in asked) == ["docs", "exfil"]
    assert len({d.pid for d in asked}) == 2
