"""The descriptor-swap race of UNIX socket mediation, and what must keep working around it.

With ``connect_unix`` handled, a trapped connect/sendto/sendmsg is judged on the socket the
supervisor takes from the program. Were any of them given back to the kernel (CONTINUE), the
kernel would act on whatever the descriptor NUMBER means by then: another thread of the
program can dup2() a UNIX socket onto it, and the kernel would reach a pathname socket nobody
judged. So the supervisor performs every such call itself, on the socket it took.
"""

from __future__ import annotations

import errno
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from supervised import policy_text, run_collecting

from llsupervise.policy.loader import parse_policy

pytestmark = pytest.mark.kernel

# argv: stream socket path, datagram socket path, rounds. Descriptor N is flipped by one thread
# between a UNIX socket and an inet one, while the main thread connects / sends on N to the
# pathname sockets. Prints how many calls ended in each errno (0: done).
SWAP_FD = r"""
import collections, ctypes, os, socket, sys, threading
sys.setswitchinterval(1e-5)
libc = ctypes.CDLL(None, use_errno=True)
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]
def sockaddr(path):
    return b"\x01\x00" + path.encode() + b"\0"
stream_addr, dgram_addr, rounds = sockaddr(sys.argv[1]), sockaddr(sys.argv[2]), int(sys.argv[3])
data = b"escaped"
iov = iovec(data, len(data))
msg = msghdr(dgram_addr, len(dgram_addr), ctypes.addressof(iov), 1, None, 0, 0)
N = 200
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
unix_dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
mode = ["dgram"]
done = threading.Event()
def swapper():
    while not done.is_set():
        if mode[0] == "stream":
            fresh = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            os.dup2(fresh.fileno(), N)
            fresh.close()
            os.dup2(tcp.fileno(), N)
        else:
            os.dup2(unix_dgram.fileno(), N)
            os.dup2(udp.fileno(), N)
os.dup2(udp.fileno(), N)
flipper = threading.Thread(target=swapper)
flipper.start()
errors = collections.Counter()
def count(ret):
    errors[0 if ret >= 0 else ctypes.get_errno()] += 1
for i in range(rounds):
    mode[0] = "dgram"
    count(libc.sendto(N, data, len(data), socket.MSG_DONTWAIT, dgram_addr, len(dgram_addr)))
    count(libc.sendmsg(N, ctypes.byref(msg), socket.MSG_DONTWAIT))
    mode[0] = "stream"
    count(libc.connect(N, stream_addr, len(stream_addr)))
done.set()
flipper.join()
print(sorted(errors.items()), flush=True)
"""


@pytest.fixture
def srv() -> Iterator[Path]:
    """A directory outside the sandbox, short enough for socket names (sun_path: 108)."""
    path = Path(tempfile.mkdtemp(prefix="llsu-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


def unix_policy(root: Path, rules: str = "", extra_static: str = "") -> Any:
    (root / "out").mkdir(exist_ok=True)
    text = policy_text(
        root, settings="handle_connect_unix = true", supervisor_rules=rules,
        extra_static=extra_static,
    )  # fmt: skip
    return parse_policy(text, "fdswap-policy.toml", {"HOME": str(root), "PWD": str(root)})


def received(s: socket.socket) -> list[bytes]:
    got: list[bytes] = []
    while True:
        try:
            got.append(s.recv(100))
        except BlockingIOError:
            return got


def accepted(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.trio
async def test_a_descriptor_swapped_after_the_check_never_reaches_the_socket(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A same-uid UNIX socket outside the sandbox, which no rule allows, never hears from
    the program, whatever its descriptor meant when the supervisor looked."""
    stream = socket.socket(socket.AF_UNIX)
    stream.bind(str(srv / "stream"))
    stream.listen(4096)
    stream.setblocking(False)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(str(srv / "dgram"))
    dgram.setblocking(False)
    with stream, dgram:
        status, _ = await run_collecting(
            unix_policy(tmp_path), SWAP_FD, str(srv / "stream"), str(srv / "dgram"), "300"
        )
        assert received(dgram) == []
        assert accepted(stream) == 0
    assert status == 0
    out = capfd.readouterr().out
    results = dict(eval(out))
    assert sum(results.values()) == 900  # every call was made and answered
    assert errno.ENOSYS not in results


# What ordinary programs do on sockets while connect_unix is handled, now that the supervisor
# performs their connects and sends: argv: a TCP port the static layer allows, one it does
# not. Prints one line per step: its result.
ORDINARY = r"""
import hashlib, os, select, socket, struct, sys, threading
allowed, other = int(sys.argv[1]), int(sys.argv[2])
with socket.socket() as s:
    print("tcp", s.connect_ex(("127.0.0.1", allowed)), s.send(b"hi"), flush=True)
with socket.socket() as s:
    print("tcp other", s.connect_ex(("127.0.0.1", other)), flush=True)
with socket.socket() as s:
    s.setblocking(False)
    err = s.connect_ex(("127.0.0.1", allowed))
    select.select([], [s], [], 10)
    print("nonblocking", err in (0, 115), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 0))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    u.sendto(b"udp", receiver.getsockname())
    u.connect(receiver.getsockname())
    u.send(b"connected")
    u.sendmsg([b"by", b"msg"])
    print("udp", [receiver.recv(100).decode() for _ in range(3)], flush=True)
a, b = socket.socketpair()
big = os.urandom(3 << 20)
got = []
reader = threading.Thread(target=lambda: got.append(b"".join(iter(lambda: b.recv(1 << 16), b""))))
reader.start()
a.sendall(big)
a.shutdown(socket.SHUT_WR)
reader.join()
print("stream", hashlib.sha256(got[0]).digest() == hashlib.sha256(big).digest(), flush=True)
e, f = socket.socketpair()
e.setblocking(False)
try:
    while True:
        e.send(b"x" * 65536)
except BlockingIOError as e:
    print("full", e.errno, flush=True)
c, d = socket.socketpair()
d.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
mine = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
c.sendmsg([b"creds"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, mine)])
msg, anc, _, _ = d.recvmsg(10, 100)
pid, uid, gid = struct.unpack("iII", anc[0][2])
print("own credentials", msg.decode(), uid == os.getuid(), gid == os.getgid(), flush=True)
for what, control in [
    ("foreign credentials",
     (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("iII", 1, 0, 0))),
    ("unknown", (socket.SOL_SOCKET, 99, b"1234")),
]:
    try:
        c.sendmsg([b"x"], [control])
        print(what, "sent", flush=True)
    except OSError as e:
        print(what, e.errno, flush=True)
g, h = socket.socketpair()
r, w = os.pipe()
socket.send_fds(g, [b"fd"], [w])
msg, fds, _, _ = socket.recv_fds(h, 10, 1)
os.write(fds[0], b"through")
print("passed", msg.decode(), os.read(r, 100).decode(), flush=True)
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
h.close()
try:
    g.send(b"to nobody")
except BrokenPipeError as e:
    print("broken", e.errno, signal.sigtimedwait([signal.SIGPIPE], 30).si_signo, flush=True)
"""


@pytest.fixture
def tcp_ports() -> Iterator[tuple[int, int]]:
    """Two loopback listeners (connections complete in their backlog): their ports."""
    with socket.socket() as one, socket.socket() as two:
        for s in (one, two):
            s.bind(("127.0.0.1", 0))
            s.listen(64)
        yield one.getsockname()[1], two.getsockname()[1]


@pytest.mark.trio
async def test_ordinary_programs_keep_working(
    tmp_path: Path, tcp_ports: tuple[int, int], capfd: pytest.CaptureFixture[str]
) -> None:
    allowed, other = tcp_ports
    static = f"""
[[ruleset]]
handled_access_net = ["connect_tcp"]

[[net_port]]
allowed_access = ["connect_tcp"]
port = [{allowed}]
"""
    doc = unix_policy(tmp_path, extra_static=static)
    status, events = await run_collecting(doc, ORDINARY, str(allowed), str(other))
    out, err = capfd.readouterr()
    assert status == 0, out + err
    assert out.splitlines() == [
        "tcp 0 2",
        f"tcp other {errno.EACCES}",
        "nonblocking True 0",
        "udp ['udp', 'connected', 'bymsg']",
        "stream True",
        f"full {errno.EAGAIN}",
        "own credentials creds True True",
        f"foreign credentials {errno.EPERM}",
        f"unknown {errno.EPERM}",
        "passed fd through",
        f"broken {errno.EPIPE} {signal.SIGPIPE}",  # and the signal, as from the kernel
    ]
    # The interpreter may be denied other things (files), but of the network only this:
    net = [e for e in events if e["event"] == "denial" and e["path"].startswith("tcp://")]
    assert [e["path"] for e in net] == [f"tcp://127.0.0.1:{other}"]  # asked about, by port
    refused = [e["refused"] for e in events if e["event"] == "denial" and "refused" in e]
    assert len(refused) == 2
    assert "credentials" in refused[0] and "control message" in refused[1]
