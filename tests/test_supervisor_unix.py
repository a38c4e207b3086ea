"""connect()/sendto() to pathname UNIX sockets, judged by the supervisor layer (connect_unix),
against real same-uid servers outside the sandbox."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from supervised import policy_text

from llsupervise.policy.loader import parse_policy
from llsupervise.rights import AccessFs
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial

pytestmark = pytest.mark.kernel

# Connects to each address in argv (a leading "@" names an abstract socket), sends "hello"
# on success, and prints the errno (0: connected) of each.
CONNECT = r"""
import socket, sys
for addr in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    err = s.connect_ex("\0" + addr[1:] if addr.startswith("@") else addr)
    if err == 0:
        s.sendall(b"hello")
    print(err, flush=True)
    s.close()
"""

# Sends one datagram to each path in argv; prints 0 or the errno.
SENDTO = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for path in sys.argv[1:]:
    try:
        s.sendto(b"datagram", path)
        print(0, flush=True)
    except OSError as e:
        print(e.errno, flush=True)
"""


@pytest.fixture
def srv() -> Iterator[Path]:
    """A directory outside the sandbox, short enough for socket names (sun_path: 108)."""
    path = Path(tempfile.mkdtemp(prefix="llsu-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


def listener(path: Path | str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(16)
    s.setblocking(False)
    return s


def accepted(server: socket.socket) -> list[bytes]:
    """What each connection waiting in ``server``'s backlog sent."""
    got: list[bytes] = []
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return got
        with conn:
            conn.settimeout(10)
            got.append(conn.recv(100))


def unix_policy(root: Path, rules: str = "", handled: bool = True, mode: str = "enforce") -> Any:
    (root / "out").mkdir(exist_ok=True)
    settings = "handle_connect_unix = true" if handled else ""
    text = policy_text(root, mode=mode, settings=settings, supervisor_rules=rules)
    return parse_policy(text, "unix-policy.toml", {"HOME": str(root), "PWD": str(root)})


def dir_rule(directory: Path) -> str:
    return f"""
[[supervisor.path_beneath]]
allowed_access = ["connect_unix"]
parent = ["{directory}"]
"""


async def supervise(
    doc: Any, script: str, *args: str, decisions: ModeDecisions | None = None
) -> tuple[int, list[Mapping[str, Any]], Supervisor]:
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(doc, decisions=decisions) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", script, *args], forward_signals=False)
    return status, events, sup


def denials(events: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Denials of UNIX socket requests (the interpreter may be refused other things)."""
    return [e for e in events if e["event"] == "denial" and e["access"] == ["connect_unix"]]


@pytest.mark.trio
async def test_connect_without_a_rule_is_denied(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with listener(srv / "sock") as server:
        status, events, _ = await supervise(unix_policy(tmp_path), CONNECT, str(srv / "sock"))
        assert accepted(server) == []  # the server never saw the program
    assert status == 0
    assert capfd.readouterr().out.split() == ["13"]
    (denial,) = denials(events)
    assert denial["path"] == str(srv / "sock")
    assert denial["access"] == ["connect_unix"] and denial["syscall"] == "connect"
    assert denial["decision"] == "deny"


@pytest.mark.trio
async def test_a_rule_on_the_directory_connects_the_programs_socket(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(srv)  # the relative name is resolved from the program's cwd
    with listener(srv / "sock") as server:
        doc = unix_policy(tmp_path, dir_rule(srv))
        status, events, _ = await supervise(doc, CONNECT, str(srv / "sock"), "sock")
        # What the program sent on its own socket arrived: that socket was connected.
        assert accepted(server) == [b"hello", b"hello"]
    assert status == 0
    assert capfd.readouterr().out.split() == ["0", "0"]
    assert denials(events) == []


@pytest.mark.trio
async def test_errors_of_a_connect_are_the_kernels(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (srv / "file").write_bytes(b"")
    doc = unix_policy(tmp_path, dir_rule(srv))
    status, events, _ = await supervise(doc, CONNECT, str(srv / "missing"), str(srv / "file"))
    assert status == 0
    assert capfd.readouterr().out.split() == ["2", "111"]  # ENOENT, ECONNREFUSED
    assert denials(events) == []


@pytest.mark.trio
async def test_an_abstract_socket_is_left_alone(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    name = f"llsupervise-test-{os.getpid()}"
    with listener("\0" + name) as server:
        status, events, _ = await supervise(unix_policy(tmp_path), CONNECT, "@" + name)
        assert accepted(server) == [b"hello"]
    assert status == 0
    assert capfd.readouterr().out.split() == ["0"]
    assert denials(events) == []


@pytest.mark.trio
async def test_a_policy_that_does_not_handle_it_connects_as_before(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with listener(srv / "sock") as server:
        doc = unix_policy(tmp_path, handled=False)
        assert not doc.handled_fs & AccessFs.CONNECT_UNIX
        status, events, _ = await supervise(doc, CONNECT, str(srv / "sock"))
        assert accepted(server) == [b"hello"]
    assert status == 0
    assert capfd.readouterr().out.split() == ["0"]
    assert denials(events) == []


class Answering:
    """Answers each question about a UNIX socket with ``answer``, after running ``before``
    (if any); refuses the others (the interpreter may ask for other things)."""

    def __init__(self, answer: Answer, before: Any = None) -> None:
        self.answer = answer
        self.before = before
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        if denial.access != ("connect_unix",):
            return Decision(Answer.DENY)
        self.asked.append(denial)
        if self.before is not None:
            self.before()
        return Decision(self.answer)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("answer", "results", "questions"),
    [(Answer.ALLOW_ALWAYS, ["0", "0"], 1), (Answer.ALLOW_ONCE, ["0", "0"], 2),
     (Answer.DENY_QUIET, ["13", "13"], 1), (Answer.DENY, ["13", "13"], 2)],
)  # fmt: skip
async def test_answers_to_a_denied_connect(
    tmp_path: Path,
    srv: Path,
    capfd: pytest.CaptureFixture[str],
    answer: Answer,
    results: list[str],
    questions: int,
) -> None:
    frontend = Answering(answer)
    decisions = ModeDecisions("interactive", "deny", 30.0, frontend)
    path = str(srv / "sock")
    with listener(path) as server:
        doc = unix_policy(tmp_path, mode="interactive")
        status, events, _ = await supervise(doc, CONNECT, path, path, decisions=decisions)
        got = accepted(server)
    assert status == 0
    assert capfd.readouterr().out.split() == results
    assert got == [b"hello"] * results.count("0")
    assert len(frontend.asked) == questions
    assert frontend.asked[0].access == ("connect_unix",) and frontend.asked[0].path == path
    if answer == Answer.ALLOW_ALWAYS:
        (denial, *_) = denials(events)
        assert denial["rules"] == [{"path": path, "access": ["connect_unix"]}]


@pytest.mark.trio
async def test_a_symlink_swapped_after_the_check_does_not_redirect(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The question is answered after the name was pointed elsewhere: the connect lands on
    the socket that was checked."""
    link = srv / "link"
    link.symlink_to(srv / "good")

    def swap() -> None:
        link.unlink()
        link.symlink_to(srv / "evil")

    frontend = Answering(Answer.ALLOW_ONCE, swap)
    decisions = ModeDecisions("interactive", "deny", 30.0, frontend)
    with listener(srv / "good") as good, listener(srv / "evil") as evil:
        doc = unix_policy(tmp_path, mode="interactive")
        status, _, _ = await supervise(doc, CONNECT, str(link), decisions=decisions)
        assert accepted(evil) == []
        assert accepted(good) == [b"hello"]
    assert status == 0
    assert capfd.readouterr().out.split() == ["0"]
    assert frontend.asked[0].path == str(srv / "good")


@pytest.mark.trio
async def test_sendto_a_datagram_socket(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    allowed, other = srv / "allowed", srv / "other"
    allowed.mkdir()
    other.mkdir()
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as b,
    ):
        a.bind(str(allowed / "d"))
        b.bind(str(other / "d"))
        a.setblocking(False)
        b.setblocking(False)
        doc = unix_policy(tmp_path, dir_rule(allowed))
        status, events, _ = await supervise(doc, SENDTO, str(allowed / "d"), str(other / "d"))
        assert a.recv(100) == b"datagram"
        with pytest.raises(BlockingIOError):
            b.recv(100)
    assert status == 0
    assert capfd.readouterr().out.split() == ["0", "13"]  # sent; EACCES
    (denial,) = denials(events)
    assert denial["path"] == str(other / "d") and denial["syscall"] == "sendto"
