"""An answer binds to the object that was checked, and offers only scopes that work.

The supervised program is the adversary: between a question and its answer it may rename a
directory and put a symlink in its place. Here the test itself makes that swap (from inside
the front-end's ``ask``, while the child waits in its syscall): the child could do the same
with its own rights, and the test controls the moment exactly. Every check runs a real child
under the real kernel and looks at what it could read, write, make and remove.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import PUBLIC, SECRET, SWAP_THEN_READ, policy, policy_text, wait_until

from llsupervise.policy.loader import load_policy
from llsupervise.policy.model import ObjectId
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.tui.prompts import Question

pytestmark = pytest.mark.kernel


class SwapThenAnswer:
    """The first question: run ``swap`` (the attacker's move), then answer with ``answer``.
    Every later question is denied."""

    def __init__(
        self, answer: Callable[[Denial], Decision], swap: Callable[[], None] = lambda: None
    ) -> None:
        self.answer, self.swap = answer, swap
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        self.asked.append(denial)
        if len(self.asked) > 1:
            return Decision(Answer.DENY)
        self.swap()
        return self.answer(denial)


async def supervise(
    root: Path, frontend: SwapThenAnswer, script: str, *args: str
) -> tuple[int, list[Mapping[str, Any]], set[ObjectId]]:
    """Run ``script`` in ``root`` (cwd) with ``frontend`` answering; its status, the events,
    and the objects of the supervisor rules committed at the end."""
    decisions = ModeDecisions("interactive", "deny", 300.0, frontend)
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(policy(root, mode="interactive"), decisions=decisions) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", script, *args], forward_signals=False)
        return status, events, set(sup.rules.mutable.committed.fs)


def denials(events: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in events if e["event"] == "denial"]


def object_of(path: Path) -> ObjectId:
    st = os.stat(path)
    return ObjectId(st.st_dev, st.st_ino)


# Each read prints one line: "<name> ok", "<name> LEAK" (a secret byte read), or an errno.
READS = r"""
import os, sys
SECRET = sys.argv[1].encode()
for path in sys.argv[2:]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(path, "errno", e.errno, flush=True)
    else:
        print(path, "LEAK" if SECRET in data else "ok", flush=True)
"""


def swap_for_symlink(directory: Path, target: Path) -> Callable[[], None]:
    """The attacker's move: rename ``directory`` away, put a symlink to ``target`` there."""

    def swap() -> None:
        directory.rename(directory.with_name(directory.name + "-moved"))
        directory.symlink_to(target)

    return swap


def swap_tree(root: Path) -> dict[str, Path]:
    """work/sub/f (public), secret/f (never granted), out/ (static rw)."""
    work, secret = root / "work", root / "secret"
    (work / "sub").mkdir(parents=True)
    secret.mkdir()
    (root / "out").mkdir()
    (work / "sub" / "f").write_bytes(PUBLIC)
    (secret / "f").write_bytes(SECRET)
    (secret / "new").write_bytes(SECRET)
    return {"sub": work / "sub", "secret": secret}


@pytest.mark.trio
@pytest.mark.parametrize("answer", [Answer.ALLOW_ALWAYS, Answer.ALLOW_FOR])
async def test_a_directory_swapped_for_a_symlink_before_the_answer_gains_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    answer: Answer,
) -> None:
    """The person grants "its directory" work/sub; by then work/sub is a symlink to secret/.
    The rule binds to the directory that was checked (now work/sub-moved), never to secret/."""
    root = Path(os.path.realpath(tmp_path))
    paths = swap_tree(root)
    original = object_of(paths["sub"])
    monkeypatch.chdir(root)
    directory = str(paths["sub"])
    frontend = SwapThenAnswer(
        lambda _: Decision(answer, duration=300.0, scope=directory),
        swap_for_symlink(paths["sub"], paths["secret"]),
    )
    status, events, committed = await supervise(
        root, frontend, READS, SECRET.decode(), "work/sub/f", "work/sub/f", "work/sub-moved/f"
    )
    out = capfd.readouterr().out.splitlines()
    assert status == 0
    assert not [line for line in out if "LEAK" in line], out
    assert out[0] == "work/sub/f errno 13"  # carried out through the symlink: not granted
    assert out[1] == "work/sub/f errno 13"
    assert out[2] == "work/sub-moved/f ok"  # the directory that was checked is granted
    assert frontend.asked[0].scopes[:2] == (str(paths["sub"] / "f"), directory)
    assert original in committed
    assert object_of(paths["secret"]) not in committed
    first = denials(events)[0]
    if answer == Answer.ALLOW_ALWAYS:
        # The label no longer leads to the object: said so, and nothing to write to the file.
        assert "rules" not in first
        assert [u["path"] for u in first["unbound"]] == [directory]
    else:
        assert first["rules"] == [{"path": directory, "access": ["read_file"], "seconds": 300.0}]


CREATE_AND_READ = r"""
import os, sys
SECRET = sys.argv[1].encode()
try:
    fd = os.open("work/sub/new", os.O_RDWR | os.O_CREAT, 0o600)
except OSError as e:
    print("errno", e.errno, flush=True)
else:
    data = os.read(fd, 100)
    print("LEAK" if SECRET in data else "ok", os.fstat(fd).st_ino, flush=True)
"""


@pytest.mark.trio
async def test_allow_once_on_a_creation_whose_directory_was_swapped_reaches_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Creating work/sub/new, allowed once after work/sub became a symlink to secret/ (where
    a file "new" exists): no fd to that file, and nothing made there."""
    root = Path(os.path.realpath(tmp_path))
    paths = swap_tree(root)
    monkeypatch.chdir(root)
    frontend = SwapThenAnswer(
        lambda _: Decision(Answer.ALLOW_ONCE),
        swap_for_symlink(paths["sub"], paths["secret"]),
    )
    status, _events, _committed = await supervise(root, frontend, CREATE_AND_READ, SECRET.decode())
    out = capfd.readouterr().out.splitlines()
    assert status == 0
    assert out == ["errno 13"]
    assert (paths["secret"] / "new").read_bytes() == SECRET
    assert sorted(os.listdir(paths["secret"])) == ["f", "new"]


# Does one operation on each name given, one line each: "<name> ok" or "<name> errno N".
OPERATIONS = r"""
import os, sys
op = sys.argv[1]
def do(name):
    if op == "read":
        os.close(os.open(name, os.O_RDONLY))
    elif op == "write":
        os.close(os.open(name, os.O_WRONLY))
    elif op == "creat":
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    elif op == "mkdir":
        os.mkdir(name)
    elif op == "unlink":
        os.unlink(name)
    elif op == "rmdir":
        os.rmdir(name)
    elif op == "rename":
        os.rename(name, name + ".moved")
for name in sys.argv[2:]:
    try:
        do(name)
    except OSError as e:
        print(name, "errno", e.errno, flush=True)
    else:
        print(name, "ok", flush=True)
"""


def operation_tree(root: Path, op: str) -> tuple[str, str]:
    """work/ with what ``op`` acts on; the two names the child acts on (the retry is the same
    request: on the same file for an open, on a sibling for what changes a directory)."""
    work = root / "work"
    work.mkdir(parents=True)
    (root / "out").mkdir(exist_ok=True)
    if op in ("read", "write"):
        (work / "f").write_bytes(PUBLIC)
        return "work/f", "work/f"
    if op in ("unlink", "rename"):
        (work / "a").write_bytes(PUBLIC)
        (work / "b").write_bytes(PUBLIC)
    elif op == "rmdir":
        (work / "a").mkdir()
        (work / "b").mkdir()
    return "work/a", "work/b"


def tui_default(answer: Answer) -> Callable[[Denial], Decision]:
    """The answer as the terminal interface sends it with its default scope."""

    def decide(denial: Denial) -> Decision:
        message = Question.create(1, denial, 0.0).answer(answer)
        return Decision(answer, scope=message.get("scope"))

    return decide


@pytest.mark.trio
@pytest.mark.parametrize("op", ["creat", "mkdir", "unlink", "rmdir"])
async def test_always_with_the_default_scope_on_a_change_in_a_directory_works_on_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], op: str
) -> None:
    """The default scope of a creation or removal is the directory the kernel checks: no
    crash over a name that does not exist, no rule on the removed object itself."""
    root = Path(os.path.realpath(tmp_path))
    first, second = operation_tree(root, op)
    monkeypatch.chdir(root)
    frontend = SwapThenAnswer(tui_default(Answer.ALLOW_ALWAYS))
    status, events, _committed = await supervise(root, frontend, OPERATIONS, op, first, second)
    out = capfd.readouterr().out.splitlines()
    assert status == 0
    assert out == [f"{first} ok", f"{second} ok"]
    assert len(frontend.asked) == 1  # the retry passed on the kept rule
    [rule] = denials(events)[0]["rules"]
    assert rule["path"] == str(root / "work")


def always_at(index: int) -> Callable[[Denial], Decision]:
    return lambda _: Decision(Answer.ALLOW_ALWAYS, scope=index)


@pytest.mark.trio
@pytest.mark.parametrize("op", ["read", "write", "creat", "mkdir", "unlink", "rmdir", "rename"])
async def test_every_offered_scope_makes_the_retry_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], op: str
) -> None:
    """ "Always" with each offered scope in turn: the request, then the same one again, pass
    with one question only."""
    root = Path(os.path.realpath(tmp_path))
    probe = SwapThenAnswer(lambda _: Decision(Answer.DENY))
    first, second = operation_tree(root / "probe", op)
    monkeypatch.chdir(root / "probe")
    await supervise(root / "probe", probe, OPERATIONS, op, first)
    offered = len(probe.asked[0].scopes)
    expected_first = "work/f" if op in ("read", "write") else "work"
    assert probe.asked[0].scopes[0] == str(root / "probe" / expected_first)
    assert offered == len(Path(probe.asked[0].scopes[0]).parts)  # up to the root, no more
    capfd.readouterr()
    for index in range(offered):
        run = root / str(index)
        first, second = operation_tree(run, op)
        monkeypatch.chdir(run)
        frontend = SwapThenAnswer(always_at(index))
        status, _events, _committed = await supervise(run, frontend, OPERATIONS, op, first, second)
        out = capfd.readouterr().out.splitlines()
        assert (status, out) == (0, [f"{first} ok", f"{second} ok"]), (index, out)
        assert len(frontend.asked) == 1, index
        await trio.lowlevel.checkpoint()


@pytest.mark.trio
async def test_a_reload_keeps_a_rule_on_its_object_when_the_program_swapped_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The program may make and remove names in work/: it swaps work/pub (a supervisor rule's
    directory) for a symlink to secret/. A reload (a comment added) keeps the rule on the
    directory it named, and says so."""
    root = Path(os.path.realpath(tmp_path))
    (root / "work" / "pub").mkdir(parents=True)
    (root / "work" / "pub" / "f").write_bytes(PUBLIC)
    (root / "secret").mkdir()
    (root / "secret" / "f").write_bytes(SECRET)
    (root / "out").mkdir()
    monkeypatch.chdir(root)
    changing = (
        '\n[[path_beneath]]\nallowed_access = ["make_dir", "make_sym", "remove_dir", "refer"]\n'
        f'parent = ["{root}/work"]\n'
    )
    rule = (
        '\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\n'
        f'parent = ["{root}/work/pub"]\n'
    )
    text = policy_text(root, supervisor_rules=rule, extra_static=changing)
    policy_file = root / "policy.toml"
    policy_file.write_text(text)
    doc = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})
    events: list[Mapping[str, Any]] = []
    argv = [sys.executable, "-c", SWAP_THEN_READ, SECRET.decode()]
    async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
        sup.listeners.append(events.append)
        statuses: list[int] = []

        async def run() -> None:
            statuses.append(await sup.run(argv, forward_signals=False))

        nursery.start_soon(run)
        await wait_until(lambda: (root / "out" / "swapped").exists(), "the swap")
        policy_file.write_text(text + "# a comment\n")
        await wait_until(lambda: any(e["event"] == "reload" for e in events), "the reload")
        (root / "out" / "go").touch()
    out = capfd.readouterr().out.splitlines()
    assert statuses == [0]
    assert not [line for line in out if "LEAK" in line], out
    assert out == ["work/pub/f errno 13", "work/pub-old/f ok"]
    [reload] = [e for e in events if e["event"] == "reload"]
    assert reload["ok"] is True
    assert [k["path"] for k in reload["kept_bindings"]] == [f"{root}/work/pub"]


def test_a_deep_path_offers_a_bounded_number_of_scopes(tmp_path: Path) -> None:
    """Each offered scope holds a descriptor while its question is open: a program making a
    path as deep as it likes gets no more of them (the narrowest are offered)."""
    from llsupervise.rights import AccessFs as _Fs
    from llsupervise.supervisor.engine.denials import checked_objects
    from llsupervise.supervisor.engine.requests import FsRequest
    from llsupervise.supervisor.questions import scopes

    deep = tmp_path.joinpath(*["d"] * 60)
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    request = FsRequest("openat", "open", -100, os.fsencode(deep / "f"), os.O_RDONLY)
    [checked] = checked_objects(request, None, None, _Fs.READ_FILE)
    try:
        kind, offered = scopes.offer(checked)
        try:
            assert kind == scopes.FILE
            assert len(offered) == scopes.MAX_SCOPES
            assert offered[0].label == str(deep / "f")
            assert offered[1].label == str(deep)
        finally:
            scopes.close(offered)
    finally:
        checked.close()
