"""The retry matrix: for each kind of filesystem request, each answer ("once", "for a while",
"always") and each offered scope, the request asked about succeeds, and a rule from the answer
makes the same request succeed again without a question.

One supervised run per (request, answer): the child acts on one target per scope, each in a
subtree of its own (``s<i>/d/d/d/d/d/d``), deep enough that every offered scope but the
broadest of a change (the test root) lies inside that subtree, so a rule at scope ``i`` covers
no other target. Scopes above the test root (up to ``/``) are covered for "always" by
``test_every_offered_scope_makes_the_retry_succeed`` in test_answer_binding.py, one run each.

Not here: TCP bind/connect (tests/test_supervisor_network.py), and ioctl, which the supervisor
does not trap (the seccomp filter sends no ioctl to the supervisor, so there is nothing to
answer: the kernel's ``ioctl_dev`` decides alone).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from supervised import PUBLIC, policy_text

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.supervisor.questions.scopes import MAX_SCOPES
from llsupervise.supervisor.rules.binding import resolve_at_launch
from llsupervise.supervisor.rules.objects import ObjectTable, findings

# For each pair of names: the operation on the first, then the same on the second (the
# retry); one line each, "<name> ok" or "<name> errno N".
OPERATIONS = r"""
import os, sys
op = sys.argv[1]
def do(name):
    if op == "read":
        os.close(os.open(name, os.O_RDONLY))
    elif op == "write":
        os.close(os.open(name, os.O_WRONLY))
    elif op == "o_trunc":
        os.close(os.open(name, os.O_WRONLY | os.O_TRUNC))
    elif op == "truncate":
        os.truncate(name, 0)
    elif op == "creat":
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    elif op == "mkdir":
        os.mkdir(name)
    elif op == "mknod":
        os.mkfifo(name)
    elif op == "symlink":
        os.symlink("elsewhere", name)
    elif op == "link":
        os.link(os.path.join(os.path.dirname(name), "src"), name)
    elif op == "unlink":
        os.unlink(name)
    elif op == "rmdir":
        os.rmdir(name)
    elif op == "rename":
        os.rename(name, name + ".moved")
    elif op == "rename_refer":
        os.rename(name, os.path.join(os.path.dirname(name), "sub", os.path.basename(name)))
for name in sys.argv[2:]:
    try:
        do(name)
    except OSError as e:
        print(name, "errno", e.errno, flush=True)
    else:
        print(name, "ok", flush=True)
"""

#: Requests checked on the object itself: the retry is the same request on the same file.
ON_THE_OBJECT = ("read", "write", "o_trunc", "truncate")
#: Requests checked on the directory where a name changes: the retry acts on a sibling.
IN_A_DIRECTORY = (
    "creat", "mkdir", "mknod", "symlink", "link", "unlink", "rmdir", "rename", "rename_refer",
)  # fmt: skip
DEPTH = ("d",) * 6


def targets(root: Path, op: str) -> list[tuple[Path, Path]]:
    """One (request, retry) pair of names per offered scope, each in a subtree of its own,
    with what ``op`` acts on made."""
    pairs = []
    for i in range(MAX_SCOPES):
        directory = root.joinpath(f"s{i}", *DEPTH)
        directory.mkdir(parents=True)
        if op in ON_THE_OBJECT:
            (directory / "f").write_bytes(PUBLIC)
            pairs.append((directory / "f", directory / "f"))
            continue
        first, second = directory / "a", directory / "b"
        if op in ("unlink", "rename", "rename_refer"):
            first.write_bytes(PUBLIC)
            second.write_bytes(PUBLIC)
        elif op == "rmdir":
            first.mkdir()
            second.mkdir()
        elif op == "link":
            (directory / "src").write_bytes(PUBLIC)
        if op == "rename_refer":
            (directory / "sub").mkdir()
        pairs.append((first, second))
    return pairs


def expected_scopes(first: Path, op: str) -> list[str]:
    """What should be offered: the object and its ancestors for an open or truncate; the
    changed directory and its ancestors otherwise; the narrowest MAX_SCOPES."""
    start = first if op in ON_THE_OBJECT else first.parent
    return [str(p) for p in [start, *start.parents]][:MAX_SCOPES]


class Answering:
    """Answers question ``k`` with ``answer`` at scope ``k``. With "once", every retry is a
    question of its own (nothing was remembered): it is denied, and the next target's
    question gets the next scope."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[Denial] = []
        self.answered: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        self.asked.append(denial)
        if self.answer == Answer.ALLOW_ONCE and len(self.asked) % 2 == 0:
            return Decision(Answer.DENY)
        self.answered.append(denial)
        return Decision(self.answer, duration=600.0, scope=len(self.answered) - 1)


@pytest.mark.trio
@pytest.mark.parametrize("answer", [Answer.ALLOW_ONCE, Answer.ALLOW_FOR, Answer.ALLOW_ALWAYS])
@pytest.mark.parametrize("op", [*ON_THE_OBJECT, *IN_A_DIRECTORY])
async def test_every_answer_at_every_offered_scope_makes_the_request_and_its_retry_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    op: str,
    answer: Answer,
) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "out").mkdir()
    pairs = targets(root / "t", op)
    policy_file = root / "policy.toml"
    policy_file.write_text(policy_text(root, mode="interactive"))
    document = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})
    monkeypatch.chdir(root)
    frontend = Answering(answer)
    decisions = ModeDecisions("interactive", "deny", 600.0, frontend)
    events: list[Mapping[str, Any]] = []
    argv = [sys.executable, "-c", OPERATIONS, op, *(str(n) for pair in pairs for n in pair)]
    async with Supervisor.open(document, decisions=decisions, watch=True) as sup:
        sup.listeners.append(events.append)
        status = await sup.run(argv, forward_signals=False)
    out = capfd.readouterr().out.splitlines()
    assert status == 0

    retried = answer != Answer.ALLOW_ONCE
    expected = []
    for first, second in pairs:
        expected.append(f"{first} ok")
        # "once" grants that request only: its retry is asked again (and denied here).
        expected.append(f"{second} ok" if retried else f"{second} errno {errno.EACCES}")
    assert out == expected
    assert len(frontend.answered) == MAX_SCOPES  # one question per target: retries passed
    assert len(frontend.asked) == MAX_SCOPES * (1 if retried else 2)
    for index, ((first, _second), denial) in enumerate(zip(pairs, frontend.answered, strict=True)):
        assert list(denial.scopes) == expected_scopes(first, op), index

    answered = [e for e in events if e["event"] == "denial" and e["decision"] != "deny"]
    assert len(answered) == MAX_SCOPES
    if answer == Answer.ALLOW_ONCE:
        assert not any("rules" in e for e in answered)
        return
    for index, event in enumerate(answered):
        # The rule of the first object goes where the person chose.
        assert event["rules"][0]["path"] == frontend.answered[index].scopes[index], index
    if answer == Answer.ALLOW_ALWAYS:
        persisted = [e for e in events if e["event"] == "persist"]
        assert persisted and all(e["ok"] for e in persisted), persisted
        chosen = {d.scopes[index] for index, d in enumerate(frontend.answered)}
        check_finds_nothing_ineffective(policy_file, root, chosen)


def check_finds_nothing_ineffective(policy_file: Path, root: Path, chosen: set[str]) -> None:
    """What ``check`` says about the policy file the "always" answers were written to."""
    document = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})
    written = {path for entry in document.supervisor.path_beneath for path in entry.paths}
    assert chosen <= written
    with ObjectTable() as table:
        policy = resolve_at_launch(document, table)
        found = findings(policy, table)
    assert [f.message() for f in found if getattr(f, "kind", "") == "ineffective"] == []
