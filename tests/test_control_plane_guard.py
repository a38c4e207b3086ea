"""The control plane is out of the supervised program's reach (issue 15, items 1-3): the
policy file, its directory and ancestors, the listen socket and its token, our terminal.

Real kernel, the program in a child process; each test asserts that a secret no rule grants
stays unread and the control file untouched.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import SECRET, SYSTEM_DIRS, policy_text, wait_until

from llsupervise.policy.loader import load_policy, parse_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.frontends.hub import (
    Hub,
    connect,
    decode,
    encode,
    listening,
    make_token,
)
from llsupervise.supervisor.perform.guard import ProtectedError
from llsupervise.supervisor.rules.controlplane import (
    ControlFile,
    ControlPlaneError,
    control_files,
    token_path,
)

pytestmark = pytest.mark.kernel

WORKTREE = str(Path(__file__).resolve().parent.parent)
#: The supervised command: a Python script, without the PYTHONPATH the tests may run with.
PYTHON = ["env", "-u", "PYTHONPATH", sys.executable, "-c"]


def tree(root: Path) -> dict[str, Path]:
    """home/work (the policy's directory), secret/s (never granted), out/ (static rw)."""
    paths = {
        "home": root / "home",
        "work": root / "home" / "work",
        "secret": root / "secret",
        "out": root / "out",
    }
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    (paths["secret"] / "s").write_bytes(SECRET)
    return paths


def rw(path: Path | str) -> str:
    return (
        f'\n[[supervisor.path_beneath]]\nallowed_access = ["abi.read_write"]\nparent = ["{path}"]\n'
    )


# --- 1. the policy file, its directory and ancestors ----------------------------------------

#: Every way to change the policy file, then (once told to go) a read of the secret that an
#: appended rule would grant. One JSON object of errnos (0: done) in out/result.
ATTACK_POLICY = r"""
import errno, json, os, sys, time
out, secret = sys.argv[1], sys.argv[2]
rule = '\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = ["%s"]\n'
def attempt(f):
    try:
        f()
        return 0
    except OSError as e:
        return e.errno
def append(name):
    with open(name, "a") as f:
        f.write(rule % os.path.dirname(secret))
def write_new(name):
    with open(name, "w") as f:
        f.write(rule % os.path.dirname(secret))
r = {}
r["append"] = attempt(lambda: append("policy.toml"))
r["trunc_open"] = attempt(lambda: os.close(os.open("policy.toml", os.O_WRONLY | os.O_TRUNC)))
r["truncate"] = attempt(lambda: os.truncate("policy.toml", 0))
r["symlink"] = attempt(lambda: os.symlink("policy.toml", "alias"))
r["append_via_symlink"] = attempt(lambda: append("alias"))
r["replace"] = attempt(lambda: (write_new("evil.toml"), os.rename("evil.toml", "policy.toml")))
r["unlink"] = attempt(lambda: os.unlink("policy.toml"))
r["hard_link"] = attempt(lambda: os.link("policy.toml", "hard"))
r["rename_away"] = attempt(lambda: os.rename("policy.toml", "moved.toml"))
r["rename_directory"] = attempt(lambda: os.rename(os.getcwd(), os.getcwd() + ".moved"))
r["recording"] = attempt(lambda: write_new("policy.toml.recording.json"))
# Everything else in the work directory still works.
r["other_write"] = attempt(lambda: write_new("other.txt"))
r["other_rename"] = attempt(lambda: os.rename("other.txt", "other2.txt"))
r["other_unlink"] = attempt(lambda: os.unlink("other2.txt"))
r["read_policy"] = attempt(lambda: open("policy.toml").read())
open(os.path.join(out, "attempted"), "w").close()
while not os.path.exists(os.path.join(out, "go")):
    time.sleep(0.01)
r["read_secret"] = attempt(lambda: open(secret).read())
with open(os.path.join(out, "result"), "w") as f:
    json.dump(r, f)
"""


@pytest.mark.trio
async def test_the_program_cannot_change_its_own_policy_file(tmp_path: Path) -> None:
    """[supervisor] grants read-write on the work directory (and on its parent), where the
    policy file lives, as config/example.toml does: the file, its recording's name, its
    directory entry and its directory stay the supervisor's; the reload never grants the
    secret; everything else in the directory works."""
    paths = tree(tmp_path)
    policy = paths["work"] / "policy.toml"
    original = policy_text(tmp_path, supervisor_rules=rw(paths["home"]) + rw(paths["work"]))
    policy.write_text(original)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(paths["work"])})
    events: list[Mapping[str, Any]] = []
    status: list[int] = []
    cwd = os.getcwd()
    os.chdir(paths["work"])
    try:
        async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)

            async def child() -> None:
                argv = [*PYTHON, ATTACK_POLICY, str(paths["out"]), str(paths["secret"] / "s")]
                status.append(await sup.run(argv, forward_signals=False))

            nursery.start_soon(child)
            await wait_until(lambda: (paths["out"] / "attempted").exists(), "the attempts")
            # The user saves the file (a comment at its end): whatever it holds now is loaded.
            with policy.open("a") as f:
                f.write("# saved\n")
            await wait_until(
                lambda: any(e["event"] == "reload" and e["ok"] for e in events), "the reload"
            )
            (paths["out"] / "go").touch()
            await wait_until(lambda: bool(status), "the program's exit")
    finally:
        os.chdir(cwd)
    result = json.loads((paths["out"] / "result").read_text())
    refused = [
        "append", "trunc_open", "truncate", "append_via_symlink", "replace", "unlink",
        "hard_link", "rename_away", "rename_directory", "recording",
    ]  # fmt: skip
    assert {k: result[k] for k in refused} == dict.fromkeys(refused, errno.EACCES)
    worked = ["symlink", "other_write", "other_rename", "other_unlink", "read_policy"]
    assert {k: result[k] for k in worked} == dict.fromkeys(worked, 0)
    assert result["read_secret"] == errno.EACCES
    assert policy.read_text() == original + "# saved\n"
    assert not (paths["work"] / "policy.toml.recording.json").exists()
    protected = [e for e in events if e["event"] == "denial" and "protected" in e]
    assert protected and all(e["decision"] == "deny" for e in protected)
    assert {e["protected"] for e in protected} >= {
        "llsupervise's policy file", "llsupervise's learn recording",
    }  # fmt: skip


# --- 2. the static layer --------------------------------------------------------------------


def test_a_static_rule_over_the_policy_directory_is_refused(tmp_path: Path) -> None:
    """By object: a rule on an ancestor (named through a symlink) hands the directory over;
    a sibling whose name shares the prefix does not."""
    paths = tree(tmp_path)
    (tmp_path / "link").symlink_to(paths["home"])
    sibling = tmp_path / "home" / "work2"  # "…/work2" starts with "…/work"
    sibling.mkdir()
    policy = paths["work"] / "policy.toml"

    def refusal(static: str) -> str | None:
        policy.write_text(policy_text(tmp_path, extra_static=static))
        doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(paths["work"])})

        async def main() -> None:
            async with Supervisor.open(doc):
                pass

        try:
            trio.run(main)
        except ControlPlaneError as exc:
            return str(exc)
        return None

    def static_rule(path: Path, access: str) -> str:
        return f'\n[[path_beneath]]\nallowed_access = [{access}]\nparent = ["{path}"]\n'

    message = refusal(static_rule(tmp_path / "link", '"remove_dir"'))
    assert message is not None
    assert "static rule" in message and "remove_dir" in message and "policy file" in message
    message = refusal(static_rule(policy, '"write_file"'))
    assert message is not None and "write_file" in message
    assert refusal(static_rule(sibling, '"abi.read_write"')) is None
    assert refusal(static_rule(paths["work"], '"read_file", "make_reg"')) is None


def test_check_reports_the_control_plane_as_an_error(tmp_path: Path) -> None:
    paths = tree(tmp_path)
    policy = paths["work"] / "policy.toml"
    static = (
        f'\n[[path_beneath]]\nallowed_access = ["abi.read_write"]\nparent = ["{paths["work"]}"]\n'
    )
    policy.write_text(policy_text(tmp_path, extra_static=static))
    result = subprocess.run(
        [sys.executable, "-m", "llsupervise", "check", str(policy)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": WORKTREE},
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stdout.splitlines() if "error: static rule" in line]
    assert errors and "llsupervise's policy file" in errors[0]
    policy.write_text(policy_text(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "llsupervise", "check", str(policy)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": WORKTREE},
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout


# --- 3. attach: a token the program cannot read ---------------------------------------------

#: Reads the secret in one thread (asked about: it waits for an answer) while the other
#: connects to the listen socket and answers allow_once to every question it hears of.
ATTACK_SOCKET = r"""
import json, os, socket, sys, threading
sock_path, token_path, secret, out = sys.argv[1:5]
r = {}
def read_secret():
    try:
        open(secret).read()
        r["read_secret"] = 0
    except OSError as e:
        r["read_secret"] = e.errno
reader = threading.Thread(target=read_secret)
reader.start()
try:
    token = open(token_path).read()
    r["token"] = 0
except OSError as e:
    token, r["token"] = "guess", e.errno
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)
f = s.makefile("rwb")
f.write(json.dumps({"type": "token", "token": token}).encode() + b"\n")
f.flush()
heard = []
for line in f:
    m = json.loads(line)
    heard.append(m["type"])
    if m["type"] == "question":
        answer = {"type": "answer", "id": m["id"], "answer": "allow_once"}
        f.write(json.dumps(answer).encode() + b"\n")
        f.flush()
        break
    if m["type"] == "error":
        break
r["heard"] = heard
open(os.path.join(out, "talked"), "w").close()
reader.join()
with open(os.path.join(out, "result"), "w") as f2:
    json.dump(r, f2)
"""


@pytest.mark.trio
async def test_the_program_cannot_answer_its_own_question(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same uid, and Landlock does not mediate UNIX connects: the program reaches the
    socket, but without the token (which it cannot read) it is refused; attach answers."""
    paths = tree(tmp_path)
    monkeypatch.chdir(paths["out"])
    sock = str(tmp_path / "private" / "sock")
    text = policy_text(tmp_path).replace('mode = "enforce"', 'mode = "interactive"')
    doc = parse_policy(text, str(tmp_path / "nowhere.toml"), {"PWD": str(tmp_path)})
    decisions = ModeDecisions("interactive", "deny", 60.0)
    control = control_files(None, listen=sock)
    token = make_token(sock)  # as run does: the directory and token exist, then are guarded
    status: list[int] = []
    async with Supervisor.open(doc, decisions=decisions, control=control) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock, token=token), trio.open_nursery() as nursery:
            stream = await connect(sock)  # the real attach: it sends the token
            argv = [*PYTHON, ATTACK_SOCKET, sock, token_path(sock),
                    str(paths["secret"] / "s"), str(paths["out"])]  # fmt: skip

            async def child() -> None:
                status.append(await sup.run(argv, forward_signals=False))

            nursery.start_soon(child)
            buffer = b""
            question = None
            while question is None:
                chunk = await stream.receive_some(65536)
                assert chunk, "the real client was disconnected"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = decode(line)
                    if message["type"] == "question":
                        question = message
            assert question["denial"]["path"] == str(paths["secret"] / "s")
            await wait_until(lambda: (paths["out"] / "talked").exists(), "the program's try")
            await stream.send_all(
                encode({"type": "answer", "id": question["id"], "answer": "deny"})
            )
            await wait_until(lambda: bool(status), "the program's exit")
            await stream.aclose()
    result = json.loads((paths["out"] / "result").read_text())
    assert result["token"] == errno.EACCES
    assert result["heard"] == ["error"]
    assert result["read_secret"] == errno.EACCES


def test_the_token_is_protected_like_the_policy_file(tmp_path: Path) -> None:
    """A supervisor rule reaching the socket's directory grants nothing there."""
    from llsupervise.supervisor.perform.guard import build_guard

    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    token = directory / "sock.token"
    token.write_text("t")
    guard = build_guard([(str(token), "llsupervise's attach token", True)])
    try:
        with pytest.raises(ProtectedError, match="attach token"):
            guard.refuse_open(os.stat(token), reading_only=True)
        guard.refuse_open(os.stat(directory), reading_only=True)  # the directory is readable
    finally:
        guard.close()


def test_control_files_name_the_run(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("")
    files = control_files(str(policy), log=str(tmp_path / "log"), listen=str(tmp_path / "s"))
    assert [(f.what, f.secret) for f in files] == [
        ("llsupervise's policy file", False),
        ("llsupervise's learn recording", False),
        ("llsupervise's event log", False),
        ("llsupervise's listen socket", False),
        ("llsupervise's attach token", True),
    ]
    assert ControlFile(str(tmp_path / "s.token"), "llsupervise's attach token", True) in files


# --- terminals ------------------------------------------------------------------------------

#: Opens the terminal at argv[1] to write into it (as a supervisor rule on /dev/pts allows).
OPEN_TERMINAL = r"""
import os, sys
try:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_NOCTTY)
    os.write(fd, b"painted over\n")
    print(0)
except OSError as e:
    print(e.errno)
"""


@pytest.mark.trio
async def test_the_supervisors_terminal_is_not_the_programs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """In the TUI the program runs on a pty of ours; our real terminal is protected by its
    device identity, whatever [supervisor] grants (here all of /dev/pts)."""
    paths = tree(tmp_path)
    monkeypatch.chdir(paths["out"])
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        system = [d for d in SYSTEM_DIRS if d != "/dev"]
        text = policy_text(tmp_path, supervisor_rules=rw("/dev/pts")).replace(
            ", ".join(f'"{d}"' for d in SYSTEM_DIRS), ", ".join(f'"{d}"' for d in system)
        )
        doc = parse_policy(text, str(tmp_path / "nowhere.toml"), {"PWD": str(tmp_path)})
        ours = ControlFile(name, "llsupervise's terminal", secret=True, device=True)
        async with Supervisor.open(doc, control=[ours]) as sup:
            status = await sup.run([*PYTHON, OPEN_TERMINAL, name], forward_signals=False)
        assert status == 0
        assert capfd.readouterr().out.split() == [str(errno.EACCES)]
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):
            os.read(master, 100)  # nothing was written to it
        # A static rule over it is refused before anything runs.
        static = '\n[[path_beneath]]\nallowed_access = ["write_file"]\nparent = ["/dev/pts"]\n'
        doc = parse_policy(
            policy_text(tmp_path, extra_static=static), str(tmp_path / "nowhere.toml"),
            {"PWD": str(tmp_path)},
        )  # fmt: skip
        with pytest.raises(ControlPlaneError, match="llsupervise's terminal"):
            async with Supervisor.open(doc, control=[ours]):
                pass
    finally:
        os.close(master)
        os.close(slave)


def test_tty_is_the_programs_own_terminal(tmp_path: Path) -> None:
    text = '[[path_beneath]]\nallowed_access = ["write_file"]\nparent = ["${TTY}"]\n'
    doc = parse_policy(text, "p.toml", {"PWD": str(tmp_path)})
    assert doc.path_beneath[0].paths == ("/dev/tty",)


@pytest.mark.trio
async def test_a_protected_denial_is_denied_whatever_the_mode_or_default() -> None:
    from llsupervise.supervisor.events.model import Answer, Denial

    denial = Denial(1, 1, "/bin/x", "x", "openat", "/p.toml", ("write_file",), 1,
                    protected="llsupervise's policy file")  # fmt: skip
    for mode in ("permissive", "interactive", "enforce"):
        decision = await ModeDecisions(mode, "allow_once").decide(denial)
        assert decision.answer == Answer.DENY
    assert denial.event(Answer.DENY)["protected"] == "llsupervise's policy file"


@pytest.mark.trio
async def test_the_terminal_of_attach_is_not_the_programs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """attach names its terminals with its token; from then on they are protected like ours."""
    paths = tree(tmp_path)
    monkeypatch.chdir(paths["out"])
    sock = str(tmp_path / "private" / "sock")
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        system = [d for d in SYSTEM_DIRS if d != "/dev"]
        text = policy_text(tmp_path, supervisor_rules=rw("/dev/pts")).replace(
            ", ".join(f'"{d}"' for d in SYSTEM_DIRS), ", ".join(f'"{d}"' for d in system)
        )
        doc = parse_policy(text, str(tmp_path / "nowhere.toml"), {"PWD": str(tmp_path)})
        decisions = ModeDecisions("enforce")
        token = make_token(sock)
        control = control_files(None, listen=sock)
        async with Supervisor.open(doc, decisions=decisions, control=control) as sup:
            hub = Hub(sup, decisions)
            async with listening(hub, sock, token=token):
                stream = await trio.open_unix_socket(sock)
                first = {"type": "token", "token": token, "terminals": [name]}
                await stream.send_all(encode(first))
                await wait_until(lambda: bool(hub.clients), "the client")
                status = await sup.run([*PYTHON, OPEN_TERMINAL, name], forward_signals=False)
                await stream.aclose()
        assert status == 0
        assert capfd.readouterr().out.split() == [str(errno.EACCES)]
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):
            os.read(master, 100)
    finally:
        os.close(master)
        os.close(slave)
