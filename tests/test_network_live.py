"""Live TCP bind/connect grants: a real supervised child, the real kernel, loopback only.

The child (net_child.py client) runs under a static Landlock layer handling bind_tcp and
connect_tcp, with bind/connect trapped; the mediator serves its listener in a thread, the way
the notification loop does, and the test drives the child one command at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from net_child import serve

from llsupervise.landlock import LandlockRuleset, set_no_new_privs
from llsupervise.policy.model import Ruleset
from llsupervise.rights import LATEST_ABI, NO_FS, NO_SCOPE, AccessNet, fs_all
from llsupervise.supervisor.events.model import Answer
from llsupervise.supervisor.launch.launcher import StaticLayer, launch
from llsupervise.supervisor.net.mediator import NetMediator, PendingNet, once

pytestmark = pytest.mark.kernel

CHILD = Path(__file__).with_name("net_child.py")
HANDLED = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
BIND, CONNECT = AccessNet.BIND_TCP, AccessNet.CONNECT_TCP
TIMEOUT = 30.0  # only reached when something is broken
EACCES, ENOSYS = "err 13", "err 38"

#: What a test answers to a denial: a grant, None (deny), or HOLD (keep it unanswered).
Decide = Callable[[PendingNet], Ruleset | str | None]
HOLD = "hold"


def ruleset(ports: dict[int, AccessNet]) -> Ruleset:
    return Ruleset(NO_FS, HANDLED, NO_SCOPE, net=ports)


def deny(pending: PendingNet) -> Ruleset | str | None:
    return None


@contextlib.contextmanager
def server(host: str = "127.0.0.1", backlog: int = 64) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        sock.listen(backlog)
        sock.settimeout(TIMEOUT)
        yield sock


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def free_port() -> int:
    """A loopback port nothing listens on (the kernel's choice, released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return port_of(sock)


class Lines:
    """Line-at-a-time reads from a pipe, with a limit that only a broken test reaches."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def readline(self) -> str:
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError("no answer from the child in time")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise AssertionError(f"the child closed its output after {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


class Session:
    """A supervised client: commands in, one result each out, denials recorded."""

    def __init__(self, to_child: int, from_child: int, static: Ruleset, decide: Decide) -> None:
        self.to_child = to_child
        self.lines = Lines(from_child)
        self.static = static
        self.decide = decide
        self.denials: list[PendingNet] = []
        self.events: list[Mapping[str, object]] = []
        self.mediator: NetMediator | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 1

    @property
    def net(self) -> NetMediator:
        assert self.mediator is not None
        return self.mediator

    def send(self, line: str) -> None:
        os.write(self.to_child, line.encode() + b"\n")

    def __call__(self, line: str) -> str:
        self.send(line)
        return self.lines.readline()

    def commit(self, granted: dict[int, AccessNet]) -> None:
        """A new generation: static ∪ ``granted``."""
        self.generation += 1
        self.net.update(self.static | ruleset(granted), self.generation)

    def on_denial(self, pending: PendingNet) -> None:
        self.denials.append(pending)
        grant = self.decide(pending)
        if isinstance(grant, str):
            return  # held: the test answers it
        self.events.append(pending.event(Answer.DENY if grant is None else Answer.ALLOW_ONCE))
        self.net.answer(pending, grant)

    def seen(self) -> list[tuple[str, str, str, int]]:
        return [(p.direction, p.family, p.address, p.port) for p in self.denials]


@contextlib.contextmanager
def supervised(
    static: dict[int, AccessNet] | None = None,
    granted: dict[int, AccessNet] | None = None,
    decide: Decide = deny,
    max_threads: int = 64,
    confined_loop: bool = False,
) -> Iterator[Session]:
    """A supervised client; ``confined_loop``: the loop thread that receives notifications
    and calls the mediator is itself restricted by Landlock (it may not touch the child's
    /proc, bind or connect anything), as the supervisor's serving threads are."""
    fds_before = open_fds()
    static_rules = ruleset(static or {})
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    layer = StaticLayer(NO_FS, HANDLED, NO_SCOPE, ports=list((static or {}).items()))
    try:
        launched = launch(
            [sys.executable, str(CHILD), "client"], layer, ("bind", "connect"),
            stdio=(in_r, out_w, None),
        )  # fmt: skip
    finally:
        os.close(in_r)
        os.close(out_w)
    session = Session(in_w, out_r, static_rules, decide)
    session.process = launched.process
    mediator = session.mediator = NetMediator(
        launched.listener, static_rules, static_rules | ruleset(granted or {}), 1,
        session.on_denial, max_threads=max_threads,
    )  # fmt: skip
    stop_r, stop_w = os.pipe()

    def loop() -> None:
        if confined_loop:
            set_no_new_privs()
            with LandlockRuleset(fs_all(LATEST_ABI), HANDLED, NO_SCOPE) as nothing:
                nothing.restrict_self()
        serve(launched.listener, mediator, stop_r)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield session
    finally:
        with contextlib.suppress(OSError):
            session.send("exit")
        try:
            launched.process.wait(TIMEOUT)
        finally:
            if launched.process.poll() is None:
                launched.process.kill()
                launched.process.wait()
            os.write(stop_w, b"x")
            thread.join(TIMEOUT)
            mediator.close()
            launched.listener.close()
            for fd in (in_w, out_r, stop_r, stop_w):
                os.close(fd)
    assert mediator.failure is None
    assert open_fds() == fds_before  # every duplicated socket was released


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def unsupervised(commands: list[str]) -> list[str]:
    """The same commands run by the same client without any confinement."""
    done = subprocess.run(
        [sys.executable, str(CHILD), "client"],
        input="".join(c + "\n" for c in [*commands, "exit"]),
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    return done.stdout.splitlines()


@pytest.mark.parametrize(("kind", "host"), [("tcp", "127.0.0.1"), ("tcp6", "::1")])
def test_connect_follows_committed_rules(kind: str, host: str) -> None:
    with server(host) as srv, supervised() as s:
        port = port_of(srv)
        addr = f"[{host}]:{port}" if kind == "tcp6" else f"{host}:{port}"
        assert s(f"socket a {kind}") == "ok"
        assert s(f"connect a {addr}") == EACCES
        assert s.seen() == [("connect", "inet6" if kind == "tcp6" else "inet", host, port)]

        s.commit({port: CONNECT})
        assert s(f"socket b {kind}") == "ok"
        assert s(f"connect b {addr}") == "ok"
        conn, peer = srv.accept()
        conn.close()
        assert s("port b") == f"ok {peer[1]}"  # the accepted connection is the child's socket

        s.commit({})
        assert s(f"socket c {kind}") == "ok"
        assert s(f"connect c {addr}") == EACCES
        assert len(s.denials) == 2
        assert s.net.stats["performed"] == 3


def test_a_confined_notification_thread_still_grants() -> None:
    """The mediator does its /proc and socket work in its own unrestricted helper, so the
    thread that hands it notifications may be confined (the supervisor's serving threads
    are, like their generation's broker)."""
    with server() as srv, supervised(confined_loop=True) as s:
        port = port_of(srv)
        assert s("socket a tcp") == "ok"
        assert s(f"connect a 127.0.0.1:{port}") == EACCES
        s.commit({port: CONNECT})
        assert s(f"connect a 127.0.0.1:{port}") == "ok"
        srv.accept()[0].close()
        assert s.seen() == [("connect", "inet", "127.0.0.1", port)]
        assert s.denials[0].exe == os.path.realpath(sys.executable)  # read with our standing


def test_bind_follows_committed_rules() -> None:
    port = free_port()
    with supervised() as s:
        assert s("socket a tcp") == "ok"
        assert s(f"bind a 127.0.0.1:{port}") == EACCES
        assert s.seen() == [("bind", "inet", "127.0.0.1", port)]

        s.commit({port: BIND})
        assert s("socket b tcp") == "ok"
        assert s(f"bind b 127.0.0.1:{port}") == "ok"
        assert s("port b") == f"ok {port}"
        with socket.socket() as rival, pytest.raises(OSError, match="in use"):
            rival.bind(("127.0.0.1", port))  # the child's socket really holds the port
        assert s("close b") == "ok"

        s.commit({})
        assert s("socket c tcp") == "ok"
        assert s(f"bind c 127.0.0.1:{port}") == EACCES
        assert len(s.denials) == 2


def test_denied_connect_leaves_the_socket_usable() -> None:
    with server() as srv, supervised() as s:
        port = port_of(srv)
        assert s("socket a tcp") == "ok"
        assert s(f"connect a 127.0.0.1:{port}") == EACCES
        s.commit({port: CONNECT})
        assert s(f"connect a 127.0.0.1:{port}") == "ok"  # the same socket, after the denial
        conn, _ = srv.accept()
        with conn:
            assert s("send a hello") == "ok"
            assert conn.recv(100) == b"hello\n"


def test_allow_once_grants_that_request_only() -> None:
    answers: list[bool] = [True]

    def first_once(pending: PendingNet) -> Ruleset | str | None:
        return once(s.net.rules, pending) if answers and answers.pop() else None

    with server() as srv, supervised(decide=first_once) as s:
        port = port_of(srv)
        assert s("socket a tcp") == "ok"
        assert s(f"connect a 127.0.0.1:{port}") == "ok"
        srv.accept()[0].close()
        assert s("socket b tcp") == "ok"
        assert s(f"connect b 127.0.0.1:{port}") == EACCES
        assert len(s.denials) == 2
        assert s.net.rules.net_rights_on(port) == AccessNet(0)


def test_an_answer_for_a_dead_child_is_not_performed() -> None:
    with server() as srv, supervised(decide=lambda p: HOLD) as s:
        port = port_of(srv)
        assert s("socket a tcp") == "ok"
        s.send(f"connect a 127.0.0.1:{port}")
        deadline = time.monotonic() + TIMEOUT
        while not s.denials:
            assert time.monotonic() < deadline, "no denial"
            time.sleep(0.01)
        assert s.process is not None
        s.process.kill()
        s.process.wait()
        pending = s.denials[0]
        s.net.answer(pending, once(s.net.rules, pending))
        while not pending.closed:
            assert time.monotonic() < deadline, "the answer was never finished"
            time.sleep(0.01)
        srv.setblocking(False)
        with pytest.raises(BlockingIOError):
            srv.accept()  # nothing was connected on behalf of the dead child


def test_allow_always_commits_then_performs() -> None:
    def always(pending: PendingNet) -> Ruleset | str | None:
        s.commit({pending.port: pending.access})
        return s.net.rules

    with server() as srv, supervised(decide=always) as s:
        port = port_of(srv)
        for name in "ab":
            assert s(f"socket {name} tcp") == "ok"
            assert s(f"connect {name} 127.0.0.1:{port}") == "ok"
            srv.accept()[0].close()
        assert len(s.denials) == 1  # the second connect found the rule committed
        event = s.events[0]
        assert {k: event[k] for k in ("event", "syscall", "path", "access", "direction")} == {
            "event": "denial",
            "syscall": "connect",
            "path": f"tcp://127.0.0.1:{port}",
            "access": ["connect_tcp"],
            "direction": "connect",
        }
        assert (event["address"], event["port"], event["family"]) == ("127.0.0.1", port, "inet")


def test_nonblocking_connect_behaves_as_without_supervisor() -> None:
    with server() as srv:
        port = port_of(srv)
        commands = [
            "socket a tcp nonblock",
            f"connect a 127.0.0.1:{port}",
            "wait a",
            "peer a",
        ]
        with supervised(granted={port: CONNECT}) as s:
            supervised_out = [s(c) for c in commands]
            assert s.net.stats["performed"] == 1  # the grant path, not the static layer
        assert supervised_out == ["ok", "err 115", "ok 0", f"ok {port}"]  # EINPROGRESS
        assert unsupervised(commands) == supervised_out


def test_real_errnos() -> None:
    with server() as srv:
        port, closed = port_of(srv), free_port()
        granted = {port: BIND | CONNECT, closed: CONNECT}
        commands = [
            "socket a tcp",
            f"connect a 127.0.0.1:{closed}",
            "socket b tcp",
            f"bind b 127.0.0.1:{port}",
            "socket c tcp",
            f"connect c 127.0.0.1:{port}",
            f"connect c 127.0.0.1:{port}",
        ]
        with supervised(granted=granted) as s:
            supervised_out = [s(c) for c in commands]
            assert s.net.stats["performed"] == 4
            assert s.denials == []
        # ECONNREFUSED, EADDRINUSE, then EISCONN on a connected socket.
        assert supervised_out == ["ok", "err 111", "ok", "err 98", "ok", "ok", "err 106"]
        assert unsupervised(commands) == supervised_out


def test_unix_udp_and_static_ports_go_to_the_kernel(tmp_path: Path) -> None:
    path = str(tmp_path / "srv.sock")
    with server() as srv, socket.socket(socket.AF_UNIX) as unix_srv:
        unix_srv.bind(path)
        unix_srv.listen(8)
        port, other = port_of(srv), free_port()

        def commands(tag: str) -> list[str]:
            return [
                "socket u unix",
                f"connect u {path}",
                "socket v unix",
                f"connect v {tmp_path}/missing.sock",
                "socket w unix",
                f"bind w {tmp_path}/{tag}.sock",
                "socket d udp",
                "bind d 127.0.0.1:0",
                f"connect d 127.0.0.1:{other}",
                "socket t tcp",
                f"connect t 127.0.0.1:{port}",
                "disconnect t",
            ]

        with supervised(static={port: CONNECT}) as s:
            supervised_out = [s(c) for c in commands("supervised")]
            assert s.net.stats["kernel"] == 7  # every bind/connect above
            assert s.net.stats["performed"] == 0
            assert s.denials == []
        assert supervised_out == unsupervised(commands("unsupervised"))
        assert supervised_out[3] == "err 2"  # ENOENT: the kernel's own answers
        assert supervised_out.count("ok") == len(supervised_out) - 1


def test_malformed_addresses_get_the_kernels_errors() -> None:
    port = free_port()  # neither static nor granted: mediated if it were readable
    commands = [
        "socket a tcp",
        f"rawconnect a {port} 8",  # shorter than sockaddr_in
        f"rawconnect a {port} 2",  # a family and nothing else
        f"rawconnect a {port} 200",  # longer than sockaddr_storage
        f"rawconnect a {port} -1",
        "badpointer a",
    ]
    with supervised() as s:
        supervised_out = [s(c) for c in commands]
        assert s.net.stats["kernel"] == 5
        assert s.net.stats["performed"] == 0
    assert supervised_out == ["ok", "err 22", "err 22", "err 22", "err 22", "err 14"]
    assert unsupervised(commands) == supervised_out


def syn_sent_to(port: int) -> bool:
    """Whether some socket is in SYN_SENT towards ``port`` (/proc/net/tcp, state 02)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(row[2].endswith(f":{port:04X}") and row[3] == "02" for row in rows)


def test_a_blocked_connect_does_not_hold_other_requests() -> None:
    """A connect that waits for its peer waits in its own thread: other requests are served."""
    with server() as fast, server(backlog=0) as slow:
        slow_port, fast_port = port_of(slow), port_of(fast)
        filler = socket.create_connection(("127.0.0.1", slow_port))  # fills slow's queue
        granted = {slow_port: CONNECT, fast_port: CONNECT}
        with supervised(granted=granted) as s:
            assert s(f"spawn bg 127.0.0.1:{slow_port}") == "ok"
            deadline = time.monotonic() + TIMEOUT
            while not syn_sent_to(slow_port):  # the grant's connect is waiting for the peer
                assert time.monotonic() < deadline, "the connect never started"
                time.sleep(0.01)
            assert s("socket f tcp") == "ok"
            assert s(f"connect f 127.0.0.1:{fast_port}") == "ok"
            assert s("poll bg") == "running"
            slow.accept()[0].close()  # room in the queue: the next SYN gets through
            assert s("join bg") == "ok"
        filler.close()


def test_requests_beyond_the_thread_limit_wait_their_turn() -> None:
    """With one performing thread busy, the next request waits, even under new rules."""
    with server() as fast, server(backlog=0) as slow:
        slow_port, fast_port = port_of(slow), port_of(fast)
        filler = socket.create_connection(("127.0.0.1", slow_port))
        granted = {slow_port: CONNECT, fast_port: CONNECT}
        with supervised(granted=granted, max_threads=1) as s:
            assert s(f"spawn bg 127.0.0.1:{slow_port}") == "ok"
            deadline = time.monotonic() + TIMEOUT
            while not syn_sent_to(slow_port):
                assert time.monotonic() < deadline, "the connect never started"
                time.sleep(0.01)
            s.commit({**granted, fast_port + 1: BIND})  # the waiting request needs a new thread
            assert s("socket f tcp") == "ok"
            s.send(f"connect f 127.0.0.1:{fast_port}")
            while s.net.stats["performed"] < 2:
                assert time.monotonic() < deadline, "the second connect never arrived"
                time.sleep(0.01)
            assert s.net.threads == 1 and syn_sent_to(slow_port)  # so it is queued
            slow.accept()[0].close()
            assert s.lines.readline() == "ok"  # the queued connect, served after the slow one
            assert s("join bg") == "ok"
            fast.accept()[0].close()
        filler.close()


def privileged_free_port() -> int:
    """A free loopback port below 1024 (binding it needs CAP_NET_BIND_SERVICE)."""
    for port in range(1023, 512, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free privileged port on loopback")


def test_grants_carry_the_childs_capabilities_not_the_supervisors() -> None:
    """A child without CAP_NET_BIND_SERVICE gets the kernel's EACCES for a privileged port,
    even when the port is granted: the supervisor's own capabilities never leak into a grant."""
    cap_net_bind_service = 10
    port = privileged_free_port()
    commands = [f"dropcap {cap_net_bind_service}", "socket a tcp", f"bind a 127.0.0.1:{port}"]
    with supervised(granted={port: BIND}) as s:
        assert [s(c) for c in commands] == ["ok", "ok", EACCES]
        assert s.denials == []  # not a Landlock denial: granting could not help
        assert s.net.stats["performed"] == 1
        assert s("socket b tcp") == "ok"
    assert unsupervised(commands) == ["ok", "ok", EACCES]
    with supervised(granted={port: BIND}) as s:  # with the capability, the grant works
        assert [s(c) for c in commands[1:]] == ["ok", "ok"]


def test_rewriting_the_address_after_the_check_cannot_reach_a_denied_port() -> None:
    """The grant connects to the address that was checked, not to what the child's memory
    says by the time the kernel would re-read it."""
    with server(backlog=4096) as good, server() as bad:
        good_port, bad_port = port_of(good), port_of(bad)
        with supervised(granted={good_port: CONNECT}) as s:
            out = s(f"race {good_port} {bad_port}").split()
        assert out[0] == "ok"
        connected, denied, wrong = map(int, out[1:])
        assert connected >= 20 and denied >= 20  # both outcomes happened: the race was run
        assert wrong == 0
        assert {p.port for p in s.denials} >= {bad_port}
        assert good_port not in {p.port for p in s.denials}
        bad.setblocking(False)
        with pytest.raises(BlockingIOError):
            bad.accept()  # nothing ever reached the denied port


def test_killed_supervisor_fails_closed() -> None:
    """Killing the supervisor never turns into an allow: bind/connect of a descendant still
    running then fail (ENOSYS), the pending one included. (The command itself dies with the
    supervisor.)"""
    with server() as srv:
        port, denied = port_of(srv), free_port()
        status_r, status_w = os.pipe()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        config = {
            "static": [],
            "granted": [[port, int(CONNECT)]],
            "status_fd": status_w,
            "stdin": in_r,
            "stdout": out_w,
            "in_child": True,
        }
        supervisor = subprocess.Popen(
            [sys.executable, str(CHILD), "supervise", json.dumps(config)],
            pass_fds=[status_w, in_r, out_w], start_new_session=True,
        )  # fmt: skip
        for fd in (status_w, in_r, out_w):
            os.close(fd)
        status, lines = Lines(status_r), Lines(out_r)

        def cmd(line: str) -> str:
            os.write(in_w, line.encode() + b"\n")
            return lines.readline()

        try:
            assert status.readline().startswith("ready ")
            assert cmd("socket a tcp") == "ok"
            assert cmd(f"connect a 127.0.0.1:{port}") == "ok"  # granted by the supervisor
            srv.accept()[0].close()
            assert cmd("socket b tcp") == "ok"
            os.write(in_w, f"connect b 127.0.0.1:{denied}\n".encode())
            assert status.readline() == f"denial {denied}"  # pending, never answered
            supervisor.send_signal(signal.SIGKILL)
            supervisor.wait()
            assert lines.readline() == ENOSYS
            assert cmd("socket c tcp") == "ok"
            assert cmd(f"connect c 127.0.0.1:{port}") == ENOSYS  # granted before, not now
            assert cmd("socket d tcp") == "ok"
            assert cmd("bind d 127.0.0.1:0") == ENOSYS
            srv.setblocking(False)
            with pytest.raises(BlockingIOError):
                srv.accept()
            os.write(in_w, b"exit\n")
            with pytest.raises(AssertionError, match="closed its output"):
                lines.readline()  # the child ended
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
            for fd in (status_r, in_w, out_r):
                os.close(fd)
