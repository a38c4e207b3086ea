"""connect()/sendto() to pathname UNIX sockets, judged by the supervisor layer (connect_unix),
against real same-uid servers outside the sandbox."""

from __future__ import annotations

import errno
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


# --- sendmsg / sendmmsg -------------------------------------------------------------------

# Sends one datagram to each path in argv with sendmsg, from an unconnected socket; prints 0
# or the errno.
SENDMSG = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for path in sys.argv[1:]:
    try:
        s.sendmsg([b"data", b"gram"], [], 0, path)
        print(0, flush=True)
    except OSError as e:
        print(e.errno, flush=True)
"""

# sendmmsg(2) of two datagrams to argv[1] through libc, until both are sent or one fails;
# prints what each call returned (or -errno) and the msg_len of each message.
SENDMMSG = r"""
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
name = b"\x01\x00" + sys.argv[1].encode() + b"\0"
addr = ctypes.create_string_buffer(name, len(name))
bufs = [ctypes.create_string_buffer(b"one", 3), ctypes.create_string_buffer(b"two!", 4)]
iovs = [iovec(ctypes.addressof(b), len(b)) for b in bufs]
msgs = (mmsghdr * 2)()
for m, iov in zip(msgs, iovs):
    m.hdr.name, m.hdr.namelen = ctypes.addressof(addr), len(name)
    m.hdr.iov, m.hdr.iovlen = ctypes.pointer(iov), 1
done = 0
while done < 2:
    n = libc.sendmmsg(s.fileno(), ctypes.byref(msgs[done]), 2 - done, 0)
    print(n if n >= 0 else -ctypes.get_errno(), flush=True)
    if n <= 0:
        break
    done += n
print("len", *[m.len for m in msgs], flush=True)
"""

# Another process flips an unconnected socket's msghdr, in memory it shares, between no
# address and argv[1] while this one sends: the supervisor reads one, the kernel may read the
# other. Prints how many sends ended in each errno (0: sent).
SWAP = r"""
import collections, ctypes, mmap, os, signal, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
shared = mmap.mmap(-1, 4096)
base = ctypes.addressof(ctypes.c_char.from_buffer(shared))
name = b"\x01\x00" + sys.argv[1].encode() + b"\0"
shared[1024:1024 + len(name)] = name
shared[2048:2055] = b"swapped"
iov = iovec.from_buffer(shared, 512)
iov.base, iov.len = base + 2048, 7
msg = msghdr.from_buffer(shared, 0)
msg.iov, msg.iovlen = base + 512, 1
with_name = bytes(msghdr(base + 1024, len(name), base + 512, 1, None, 0, 0))
without = bytes(msghdr(None, 0, base + 512, 1, None, 0, 0))
flipper = os.fork()
if flipper == 0:
    size = len(with_name)
    shared[4000] = 1  # flipping
    while True:
        shared[0:size] = with_name
        shared[0:size] = without
while shared[4000] == 0:
    os.sched_yield()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
errors = collections.Counter()
for _ in range(int(sys.argv[2])):
    os.sched_yield()  # on one CPU too, the flipper runs between two sends
    n = libc.sendmsg(s.fileno(), ctypes.c_void_p(base), socket.MSG_DONTWAIT)
    errors[0 if n >= 0 else ctypes.get_errno()] += 1
os.kill(flipper, signal.SIGKILL)
os.waitpid(flipper, 0)
print(sorted(errors.items()), flush=True)
"""


def datagram_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.setblocking(False)
    return s


def received(s: socket.socket) -> list[bytes]:
    got: list[bytes] = []
    while True:
        try:
            got.append(s.recv(100))
        except BlockingIOError:
            return got


@pytest.mark.trio
async def test_sendmsg_to_a_socket_outside_is_denied_without_a_rule(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with datagram_socket(srv / "d") as outside:
        status, events, _ = await supervise(unix_policy(tmp_path), SENDMSG, str(srv / "d"))
        assert received(outside) == []
    assert status == 0
    assert capfd.readouterr().out.split() == ["13"]
    (denial,) = denials(events)
    assert denial["path"] == str(srv / "d") and denial["syscall"] == "sendmsg"


@pytest.mark.trio
async def test_sendmsg_with_a_rule_sends_from_the_programs_socket(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    allowed, other = srv / "allowed", srv / "other"
    allowed.mkdir()
    other.mkdir()
    with datagram_socket(allowed / "d") as a, datagram_socket(other / "d") as b:
        doc = unix_policy(tmp_path, dir_rule(allowed))
        status, events, _ = await supervise(doc, SENDMSG, str(allowed / "d"), str(other / "d"))
        # One datagram, the iovecs joined, as the kernel would have sent it.
        assert received(a) == [b"datagram"]
        assert received(b) == []
    assert status == 0
    assert capfd.readouterr().out.split() == ["0", "13"]
    (denial,) = denials(events)
    assert denial["path"] == str(other / "d") and denial["syscall"] == "sendmsg"


@pytest.mark.trio
async def test_sendmmsg_is_judged_message_by_message(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    allowed, other = srv / "allowed", srv / "other"
    allowed.mkdir()
    other.mkdir()
    with datagram_socket(allowed / "d") as a, datagram_socket(other / "d") as b:
        doc = unix_policy(tmp_path, dir_rule(allowed))
        status, events, _ = await supervise(doc, SENDMMSG, str(other / "d"))
        assert received(b) == []
        assert denials(events)[0]["syscall"] == "sendmmsg"
        status, events, _ = await supervise(doc, SENDMMSG, str(allowed / "d"))
        assert received(a) == [b"one", b"two!"]
        assert denials(events) == []
    assert status == 0
    lines = capfd.readouterr().out.splitlines()
    split = lines.index("len 0 0") + 1
    denied, sent = lines[:split], lines[split:]
    assert denied == ["-13", "len 0 0"]
    assert sent[-1] == "len 3 4"  # msg_len of each message, as the kernel sets it
    assert sum(int(n) for n in sent[:-1]) == 2


@pytest.mark.trio
async def test_a_message_address_swapped_after_the_check_never_reaches_the_socket(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The address is read from the program's memory, which another of its threads changes:
    what the supervisor read as "no address" is never left to the kernel to read again."""
    with datagram_socket(srv / "d") as outside:
        status, _, _ = await supervise(unix_policy(tmp_path), SWAP, str(srv / "d"), "400")
        assert received(outside) == []
    assert status == 0
    out = capfd.readouterr().out
    # Only refusals: ENOTCONN (no address, an unconnected socket) or EACCES (the address).
    assert set(dict(eval(out)).keys()) <= {errno.ENOTCONN, errno.EACCES}


# What ordinary programs do on UNIX sockets: syslog-style logging to a connected datagram
# socket (argv[1]), and traffic on socketpairs, descriptors passed on a stream one. Prints one
# line per step: its result.
ORDINARY = r"""
import array, logging, logging.handlers, os, socket, sys
handler = logging.handlers.SysLogHandler(address=sys.argv[1])  # connects a datagram socket
log = logging.getLogger("t")
log.addHandler(handler)
log.warning("logged")
print("logged", flush=True)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.sendmsg([b"pair", b"ed"])
print(b.recv(100).decode(), flush=True)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
r, w = os.pipe()
socket.send_fds(c, [b"fd"], [w])
msg, fds, _, _ = socket.recv_fds(d, 10, 1)
os.write(fds[0], b"through the passed fd")
print(msg.decode(), os.read(r, 100).decode(), flush=True)
try:
    socket.send_fds(a, [b"fd"], [w])  # on a datagram: refused
    print("sent", flush=True)
except OSError as e:
    print("refused", e.errno, flush=True)
"""


@pytest.mark.trio
async def test_ordinary_programs_keep_working(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with datagram_socket(srv / "log") as syslog:
        doc = unix_policy(tmp_path, dir_rule(srv))
        status, events, _ = await supervise(doc, ORDINARY, str(srv / "log"))
        assert [m.endswith(b"logged\x00") for m in received(syslog)] == [True]
    assert status == 0, capfd.readouterr()
    assert capfd.readouterr().out.splitlines() == [
        "logged", "paired", "fd through the passed fd", f"refused {errno.EPERM}",
    ]  # fmt: skip
    (refused,) = denials(events)  # nothing asked: one refusal, which says why
    assert refused["decision"] == "deny"
    assert refused["syscall"] == "sendmsg" and "descriptors" in refused["refused"]
    assert refused["path"] == "(a UNIX socket's peer)"


@pytest.mark.trio
async def test_the_abstract_scope_holds_for_what_the_supervisor_performs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Abstract addresses on a UNIX socket are no longer left to the kernel (its memory may
    change): with the abstract scope on, the supervisor must not connect for the program."""
    name = f"llsupervise-scope-{os.getpid()}"
    scope = '[[ruleset]]\nscoped = ["abstract_unix_socket"]\n'
    (tmp_path / "out").mkdir()
    text = policy_text(tmp_path, settings="handle_connect_unix = true", extra_static=scope)
    doc = parse_policy(text, "scoped.toml", {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    with listener("\0" + name) as server:
        status, events, _ = await supervise(doc, CONNECT, "@" + name)
        assert accepted(server) == []
    assert status == 0
    assert capfd.readouterr().out.split() == [str(errno.EPERM)]
    assert denials(events) == []
