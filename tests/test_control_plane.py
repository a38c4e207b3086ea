"""The supervised program cannot reach the supervisor's controls: terminals (TIOCSTI,
TIOCLINUX), its own identity (PR_SET_MM), MPTCP around the TCP rules, signals to the
supervisor, and life after the supervisor. Real kernel, the program in a child process.

Each attempt also runs unsupervised where that is harmless, to show the call works there and
the test can fail.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tty
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from supervised import SYSTEM_DIRS, policy_text, run_script

from llsupervise.policy.analysis import EXE_CONDITION_WARNING
from llsupervise.policy.loader import parse_policy
from llsupervise.seccomp import SYSCALLS, native_arch
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel

#: Only keeps a broken test from hanging.
LIMIT = 60.0
NR = SYSCALLS[native_arch()]
HIGH = 1 << 32


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llsupervise.cli", *args]


# --- terminals ------------------------------------------------------------------------------

#: Tries to push "x" into its stdin's terminal, then TIOCLINUX; one JSON line of errnos (0: done).
TYPE_INTO_STDIN = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p]
TIOCSTI, TIOCLINUX, TIOCGWINSZ = 0x5412, 0x541C, 0x5413
def ioctl(cmd, arg=b"x"):
    buf = ctypes.create_string_buffer(arg, 16)
    return 0 if libc.ioctl(0, cmd, buf) == 0 else ctypes.get_errno()
print(json.dumps({
    "isatty": os.isatty(0),
    "winsize": ioctl(TIOCGWINSZ, b""),
    "sti": ioctl(TIOCSTI),
    "sti_high": ioctl(TIOCSTI | 1 << 32),
    "sti_all_high": ioctl(TIOCSTI | 0xFFFFFFFF << 32),
    "linux": ioctl(TIOCLINUX, bytes([3])),
    "linux_high": ioctl(TIOCLINUX | 1 << 40, bytes([3])),
}), flush=True)
"""


@contextlib.contextmanager
def raw_pty() -> Iterator[tuple[int, int]]:
    """A pty in raw mode (no echo, no line buffering): what is pushed in is readable at once
    on the slave."""
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def pending_input(slave: int) -> bytes:
    """What is waiting to be read on the terminal (what a shell would read next)."""
    os.set_blocking(slave, False)
    try:
        return os.read(slave, 1024)
    except BlockingIOError:
        return b""
    finally:
        os.set_blocking(slave, True)


def test_unsupervised_tiocsti_types_into_the_terminal() -> None:
    """The control: the same program, unsupervised, does inject (legacy_tiocsti is on here)."""
    with raw_pty() as (_master, slave):
        done = subprocess.run(
            [sys.executable, "-c", TYPE_INTO_STDIN], stdin=slave, capture_output=True,
            timeout=LIMIT, check=True,
        )  # fmt: skip
        report = json.loads(done.stdout)
        assert report["sti"] == 0 and report["sti_high"] == 0
        assert pending_input(slave) == b"xxx"


def test_headless_program_cannot_type_into_its_terminal(tmp_path: Path) -> None:
    """Under ``run --headless`` on the user's terminal, TIOCSTI and TIOCLINUX fail with EPERM
    with or without high bits in the command, and nothing reaches the shell's input."""
    (tmp_path / "out").mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    with raw_pty() as (_master, slave):
        done = subprocess.run(
            cli("run", "--headless", "--policy", str(policy), "--",
                sys.executable, "-c", TYPE_INTO_STDIN),
            stdin=slave, capture_output=True, timeout=LIMIT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["isatty"] and report["winsize"] == 0  # its terminal, other ioctls work
        for name in ("sti", "sti_high", "sti_all_high", "linux", "linux_high"):
            assert report[name] == errno.EPERM, (name, report)
        assert pending_input(slave) == b""


# --- identity -------------------------------------------------------------------------------

#: prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &size) through syscall(2), so that the option can
#: carry high bits; prints "errno size" per attempt.
SET_MM = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr = int(sys.argv[1])
PR_SET_MM, PR_SET_MM_MAP_SIZE = 35, 15
for option in (PR_SET_MM, PR_SET_MM | 1 << 32):
    size = ctypes.c_uint(0)
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_ulong(option), ctypes.c_ulong(PR_SET_MM_MAP_SIZE),
                     ctypes.byref(size), ctypes.c_ulong(0), ctypes.c_ulong(0))
    print(0 if r == 0 else ctypes.get_errno(), size.value, flush=True)
"""


def test_unsupervised_pr_set_mm_answers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SET_MM, str(NR["prctl"])], capture_output=True, text=True,
        timeout=LIMIT, check=True,
    )  # fmt: skip
    results = [line.split() for line in done.stdout.splitlines()]
    assert len(results) == 2 and all(err == "0" and int(size) > 0 for err, size in results)


@pytest.mark.trio
async def test_pr_set_mm_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    status = await run_script(tmp_path, SET_MM, str(NR["prctl"]))
    out = capfd.readouterr().out
    assert status == 0, out
    assert out.splitlines() == [f"{errno.EPERM} 0"] * 2


def test_check_warns_on_exe_conditions_and_a_stated_scope_without_signal(
    tmp_path: Path,
) -> None:
    (tmp_path / "cond").mkdir()
    source = tmp_path / "policy.toml"
    source.write_text(f"""
[[ruleset]]
handled_access_fs = ["abi.all"]
scoped = ["abstract_unix_socket"]
[supervisor]
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{tmp_path}/cond"]
exe = ["{sys.executable}"]
""")
    done = subprocess.run(cli("check", str(source)), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    exe = os.path.realpath(sys.executable)  # conditions name the resolved executable
    assert f"warning: rule {tmp_path}/cond is only for exe {exe}" in done.stdout
    assert EXE_CONDITION_WARNING in done.stdout
    assert 'states scoped without "signal"' in done.stdout
    assert "signal scoped by default" not in done.stdout
    source.write_text(source.read_text().replace('scoped = ["abstract_unix_socket"]', ""))
    done = subprocess.run(cli("check", str(source)), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert 'without "signal"' not in done.stdout and EXE_CONDITION_WARNING in done.stdout
    assert "signal scoped by default (no scoped key)" in done.stdout


# --- MPTCP ----------------------------------------------------------------------------------

#: Connects to each port with plain TCP and with MPTCP (v4 and v6 families, protocol with and
#: without high bits, through syscall(2)); one JSON line: attempt -> "ok", "socket ERRNO" or
#: "connect ERRNO".
CONNECTS = r"""
import ctypes, json, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr_socket = int(sys.argv[1])
def attempt(port, family, protocol):
    fd = libc.syscall(ctypes.c_long(nr_socket), ctypes.c_ulong(family),
                      ctypes.c_ulong(socket.SOCK_STREAM), ctypes.c_ulong(protocol))
    if fd < 0:
        return f"socket {ctypes.get_errno()}"
    with socket.socket(fileno=fd) as s:
        host = "127.0.0.1" if family == socket.AF_INET else "::ffff:127.0.0.1"
        err = s.connect_ex((host, port))
    return "ok" if err == 0 else f"connect {err}"
report = {}
for port in map(int, sys.argv[2:]):
    for family in (socket.AF_INET, socket.AF_INET6):
        for name, protocol in (("tcp", 0), ("mptcp", 262), ("mptcp_high", 262 | 1 << 32)):
            report[f"{port} {family.name} {name}"] = attempt(port, family, protocol)
print(json.dumps(report), flush=True)
"""


def listener() -> socket.socket:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    s.listen(64)
    return s


def connect_policy(root: Path, allowed: int) -> Any:
    """Connects handled, the static layer allows port ``allowed`` only."""
    system = ", ".join(f'"{d}"' for d in SYSTEM_DIRS)
    text = f"""
[[ruleset]]
handled_access_fs = ["abi.all"]
handled_access_net = ["connect_tcp"]
[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = [{system}]
[[net_port]]
allowed_access = ["connect_tcp"]
port = [{allowed}]
[supervisor]
mode = "enforce"
"""
    return parse_policy(text, "mptcp.toml", {"HOME": str(root), "PWD": str(root)})


@pytest.mark.trio
async def test_mptcp_cannot_go_around_the_tcp_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Only port ``allowed`` may be connected to: MPTCP sockets are refused (the errno of a
    kernel without MPTCP), plain TCP is judged as before."""
    monkeypatch.chdir(tmp_path)
    with listener() as allowed_sock, listener() as other_sock:
        allowed, other = allowed_sock.getsockname()[1], other_sock.getsockname()[1]
        events: list[Mapping[str, Any]] = []
        async with Supervisor.open(connect_policy(tmp_path, allowed)) as sup:
            sup.listeners.append(events.append)
            argv = [sys.executable, "-c", CONNECTS, str(NR["socket"]), str(allowed), str(other)]
            status = await sup.run(argv, forward_signals=False)
    out = capfd.readouterr().out
    assert status == 0, out
    report = json.loads(out)
    refused = f"socket {errno.EPROTONOSUPPORT}"
    for family in ("AF_INET", "AF_INET6"):
        assert report[f"{allowed} {family} tcp"] == "ok"
        assert report[f"{other} {family} tcp"] == f"connect {errno.EACCES}"
        for port in (allowed, other):
            assert report[f"{port} {family} mptcp"] == refused
            assert report[f"{port} {family} mptcp_high"] == refused
    ports = {e["port"] for e in events if e["event"] == "denial" and "port" in e}
    assert ports == {other}  # the plain TCP connects, nothing else


#: An MPTCP socket made and connected through io_uring (IORING_OP_SOCKET, IORING_OP_CONNECT),
#: where no socket or connect syscall is made; prints "setup ERRNO" or "PROTOCOL RESULT".
URING_MPTCP = r"""
import ctypes, mmap, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr_setup, nr_enter, port = map(int, sys.argv[1:])
params = ctypes.create_string_buffer(120)  # struct io_uring_params
ring = libc.syscall(ctypes.c_long(nr_setup), 4, params)
if ring < 0:
    print("setup", ctypes.get_errno()); sys.exit()
sq_entries, cq_entries = struct.unpack_from("<II", params.raw, 0)
sq_off = struct.unpack_from("<8IQ", params.raw, 40)  # head, tail, mask, ..., array (6)
cq_off = struct.unpack_from("<8IQ", params.raw, 80)  # head, tail, mask, ..., cqes (5)
sq = mmap.mmap(ring, sq_off[6] + sq_entries * 4, offset=0)
cq = mmap.mmap(ring, cq_off[5] + cq_entries * 16, offset=0x8000000)
sqes = mmap.mmap(ring, sq_entries * 64, offset=0x10000000)
def word(m, off, value=None):
    if value is None:
        return struct.unpack_from("<I", m, off)[0]
    struct.pack_into("<I", m, off, value)
def submit(opcode, fd, off, addr, length):
    tail = word(sq, sq_off[1])
    i = tail & word(sq, sq_off[2])
    entry = bytearray(64)
    struct.pack_into("<BBHiQQII", entry, 0, opcode, 0, 0, fd, off, addr, length, 0)
    sqes[i * 64:(i + 1) * 64] = bytes(entry)
    word(sq, sq_off[6] + 4 * i, i)
    word(sq, sq_off[1], tail + 1)
    libc.syscall(ctypes.c_long(nr_enter), ring, 1, 1, 1, None, 8)  # GETEVENTS
    head = word(cq, cq_off[0])
    _, res, _ = struct.unpack_from("<QiI", cq, cq_off[5] + 16 * (head & word(cq, cq_off[2])))
    word(cq, cq_off[0], head + 1)
    return res
fd = submit(45, socket.AF_INET, socket.SOCK_STREAM, 0, 262)  # IORING_OP_SOCKET
addr = ctypes.create_string_buffer(
    struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton("127.0.0.1")
    + bytes(8)
)
result = submit(16, fd, 16, ctypes.addressof(addr), 0)  # IORING_OP_CONNECT
print(socket.socket(fileno=fd).getsockopt(socket.SOL_SOCKET, 38), result)  # SO_PROTOCOL
"""
URING_NR = {"io_uring_setup": 425, "io_uring_enter": 426}  # asm-generic: the same on both


def test_unsupervised_io_uring_makes_mptcp_sockets() -> None:
    """The control: io_uring makes and connects an MPTCP socket with no socket syscall."""
    with listener() as server:
        argv = [sys.executable, "-c", URING_MPTCP, *map(str, URING_NR.values())]
        argv.append(str(server.getsockname()[1]))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT, check=True)
    assert done.stdout.split() == ["262", "0"]


@pytest.mark.trio
async def test_io_uring_cannot_make_mptcp_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with listener() as allowed_sock, listener() as other_sock:
        allowed, other = allowed_sock.getsockname()[1], other_sock.getsockname()[1]
        async with Supervisor.open(connect_policy(tmp_path, allowed)) as sup:
            argv = [sys.executable, "-c", URING_MPTCP, *map(str, URING_NR.values()), str(other)]
            status = await sup.run(argv, forward_signals=False)
    out = capfd.readouterr().out
    assert status == 0, out
    assert out.split() == ["setup", str(errno.EPERM)]


def test_unsupervised_mptcp_connects() -> None:
    """The control: MPTCP works on this kernel (otherwise the refusal above proves nothing)."""
    with listener() as server:
        port = server.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", CONNECTS, str(NR["socket"]), str(port)], capture_output=True,
            text=True, timeout=LIMIT, check=True,
        )  # fmt: skip
    report = json.loads(done.stdout)
    assert report[f"{port} AF_INET mptcp"] == "ok" and report[f"{port} AF_INET mptcp_high"] == "ok"


# --- signals and the supervisor's death -----------------------------------------------------

#: SIGSTOPs its parent (the supervisor: the exec helper's parent) and, should that work,
#: SIGCONTs it again; prints the errno (0: it worked).
STOP_SUPERVISOR = r"""
import os, signal
try:
    os.kill(os.getppid(), signal.SIGSTOP)
except OSError as e:
    print(e.errno, flush=True)
else:
    os.kill(os.getppid(), signal.SIGCONT)
    print(0, flush=True)
"""


def test_program_cannot_stop_the_supervisor(tmp_path: Path) -> None:
    """No ``scoped`` key in the policy: the signal scope is on, and SIGSTOP gets EPERM."""
    (tmp_path / "out").mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    assert "scoped" not in policy.read_text()
    supervisor = subprocess.Popen(
        cli("run", "--headless", "--policy", str(policy), "--", sys.executable, "-c",
            STOP_SUPERVISOR),
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = supervisor.communicate(timeout=LIMIT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
    assert out.split() == [str(errno.EPERM)]
    assert supervisor.returncode == 0


#: Says its pid, then sleeps.
SLEEPER = r"""
import os, sys, time
print(os.getpid(), flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """The process exited (a zombie waiting for its new parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped between the open and the read
        return True


def test_command_dies_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    with subprocess.Popen(
        cli("run", "--headless", "--policy", str(policy), "--", sys.executable, "-c", SLEEPER),
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    ) as supervisor:  # fmt: skip
        try:
            assert supervisor.stdout is not None
            command = int(supervisor.stdout.readline())
            assert not gone(command)
            supervisor.send_signal(signal.SIGKILL)
            supervisor.wait()
            deadline = time.monotonic() + LIMIT
            while not gone(command) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gone(command)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor.pid, signal.SIGKILL)
