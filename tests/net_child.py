"""Both sides of the network mediation tests, as one helper module.

``net_child.py client``: the supervised program. It reads one command per line on stdin and
writes one result line per command on stdout, so a test drives it step by step:

    socket NAME tcp|tcp6|udp|unix [nonblock]   -> ok
    connect NAME ADDR | bind NAME ADDR         -> ok | err ERRNO     (ADDR: host:port, [v6]:port,
                                                                      or /path for unix)
    disconnect NAME                            -> ok | err ERRNO     (connect to AF_UNSPEC)
    dropcap BIT                                -> ok                 (from the effective set)
    rawconnect NAME PORT LEN / badpointer NAME -> err ERRNO          (malformed connects)
    wait NAME                                  -> ok SO_ERROR        (non-blocking connect done)
    port NAME | peer NAME                      -> ok PORT | err ERRNO
    send NAME TEXT                             -> ok
    spawn NAME ADDR / poll NAME / join NAME    -> connect in a thread; running|done; its result
    race GOOD BAD                              -> ok CONNECTED DENIED WRONG
    close NAME | exit

``net_child.py supervise CONFIG_JSON``: a supervisor process (launch + :func:`serve`) whose
denials are never answered, so a test can kill it with a request pending.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llsupervise.seccomp import Listener
    from llsupervise.supervisor.net.mediator import NetMediator

KINDS = {
    "tcp": (socket.AF_INET, socket.SOCK_STREAM),
    "tcp6": (socket.AF_INET6, socket.SOCK_STREAM),
    "udp": (socket.AF_INET, socket.SOCK_DGRAM),
    "unix": (socket.AF_UNIX, socket.SOCK_STREAM),
}


def address(text: str) -> tuple[str, int] | str:
    if text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def sockaddr_in(port: int) -> bytes:
    """struct sockaddr_in for 127.0.0.1:port."""
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack(">H", port)
        + bytes([127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    )


class Client:
    def __init__(self) -> None:
        self.sockets: dict[str, socket.socket] = {}
        self.threads: dict[str, tuple[threading.Thread, list[str]]] = {}
        self.libc = ctypes.CDLL(None, use_errno=True)

    def run(self, words: list[str]) -> str:
        verb, *args = words
        handler: Callable[..., str] = getattr(self, "do_" + verb)
        try:
            return handler(*args)
        except OSError as exc:
            return f"err {exc.errno}"

    def do_socket(self, name: str, kind: str, mode: str = "") -> str:
        sock = socket.socket(*KINDS[kind])
        if mode == "nonblock":
            sock.setblocking(False)
        self.sockets[name] = sock
        return "ok"

    def do_connect(self, name: str, addr: str) -> str:
        err = self.sockets[name].connect_ex(address(addr))
        return "ok" if err == 0 else f"err {err}"

    def do_bind(self, name: str, addr: str) -> str:
        self.sockets[name].bind(address(addr))
        return "ok"

    def do_disconnect(self, name: str) -> str:
        unspec = struct.pack("=H", socket.AF_UNSPEC) + bytes(14)
        return self._raw_connect(self.sockets[name].fileno(), unspec)

    def _raw_connect(self, fd: int, raw: bytes | ctypes.Array[ctypes.c_char]) -> str:
        if self.libc.connect(fd, raw, len(raw)) == 0:
            return "ok"
        return f"err {ctypes.get_errno()}"

    def do_dropcap(self, bit: str) -> str:
        """Drop one capability from this thread's effective set (capset, version 3)."""
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        if self.libc.capget(header, data) != 0:
            return f"err {ctypes.get_errno()}"
        index, mask = divmod(int(bit), 32)
        data[index * 3] &= ~(1 << mask)  # effective word of the right half
        if self.libc.capset(header, data) != 0:
            return f"err {ctypes.get_errno()}"
        return "ok"

    def do_rawconnect(self, name: str, port: str, length: str) -> str:
        """connect() with 127.0.0.1:PORT and an address length of LENGTH (any int)."""
        raw = ctypes.create_string_buffer(sockaddr_in(int(port)), 256)
        fd = self.sockets[name].fileno()
        if self.libc.connect(fd, raw, ctypes.c_int(int(length))) == 0:
            return "ok"
        return f"err {ctypes.get_errno()}"

    def do_badpointer(self, name: str) -> str:
        """connect() with an address pointer into nothing (the kernel says EFAULT)."""
        fd = self.sockets[name].fileno()
        if self.libc.connect(fd, ctypes.c_void_p(8), 16) == 0:
            return "ok"
        return f"err {ctypes.get_errno()}"

    def do_wait(self, name: str) -> str:
        sock = self.sockets[name]
        select.select([], [sock], [], 30)
        return f"ok {sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}"

    def do_port(self, name: str) -> str:
        return f"ok {self.sockets[name].getsockname()[1]}"

    def do_peer(self, name: str) -> str:
        return f"ok {self.sockets[name].getpeername()[1]}"

    def do_send(self, name: str, text: str) -> str:
        self.sockets[name].sendall(text.encode() + b"\n")
        return "ok"

    def do_close(self, name: str) -> str:
        self.sockets.pop(name).close()
        return "ok"

    def do_spawn(self, name: str, addr: str) -> str:
        result: list[str] = []
        self.sockets[name] = socket.socket()

        def connect() -> None:
            result.append(self.run(["connect", name, addr]))

        thread = threading.Thread(target=connect)
        thread.start()
        self.threads[name] = (thread, result)
        return "ok"

    def do_poll(self, name: str) -> str:
        return "running" if self.threads[name][0].is_alive() else "done"

    def do_join(self, name: str) -> str:
        thread, result = self.threads.pop(name)
        thread.join()
        return result[0]

    def do_race(self, good: str, bad: str) -> str:
        """Connect to GOOD while another thread keeps rewriting the address to BAD and back.

        Goes on until both outcomes were seen (some connects read GOOD, some BAD), then
        reports how many connected, were denied, and connected to BAD (must be none)."""
        good_port, bad_port = int(good), int(bad)
        buf = ctypes.create_string_buffer(sockaddr_in(good_port), 16)
        port_at = ctypes.addressof(buf) + 2
        patterns = [struct.pack(">H", good_port), struct.pack(">H", bad_port)]
        stop = threading.Event()

        def flip() -> None:
            while not stop.is_set():
                for pattern in patterns:
                    ctypes.memmove(port_at, pattern, 2)

        flipper = threading.Thread(target=flip)
        sys.setswitchinterval(1e-5)
        flipper.start()
        connected = denied = wrong = 0
        try:
            for _ in range(20000):
                with socket.socket() as sock:
                    outcome = self._raw_connect(sock.fileno(), buf)
                    if outcome == "ok":
                        connected += 1
                        wrong += sock.getpeername()[1] == bad_port
                    elif outcome == f"err {errno.EACCES}":
                        denied += 1
                if connected >= 20 and denied >= 20:
                    break
        finally:
            stop.set()
            flipper.join()
        return f"ok {connected} {denied} {wrong}"


def client() -> None:
    commands = Client()
    for line in sys.stdin:
        words = line.split()
        if words == ["exit"]:
            return
        print(commands.run(words), flush=True)


def serve(listener: Listener, mediator: NetMediator, stop_fd: int) -> None:
    """The notification loop of these tests: poll, receive, let the mediator answer.

    Anything the mediator does not take is left to the kernel. Returns when ``stop_fd`` is
    readable or every supervisee is gone."""
    from llsupervise.seccomp import NotificationGone, SeccompError, SuperviseesGone

    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if stop_fd in events or not events.get(listener.fileno(), 0) & select.POLLIN:
            return
        try:
            n = listener.recv()
        except SuperviseesGone:
            return
        except SeccompError:
            continue  # the task died between poll and recv
        try:
            if not mediator.handle(n):
                listener.send_continue(n.id)
        except NotificationGone:
            pass


def supervise(config: dict[str, Any]) -> None:
    """Launch the client under a static layer and mediate its network calls; denials are
    reported on the status fd and never answered. Runs until killed."""
    from llsupervise.policy.model import Ruleset
    from llsupervise.rights import NO_FS, NO_SCOPE, AccessNet
    from llsupervise.supervisor.launch.launcher import StaticLayer, launch
    from llsupervise.supervisor.net.mediator import NetMediator, PendingNet

    handled = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
    static_ports = {port: AccessNet(access) for port, access in config["static"]}
    granted = {port: AccessNet(access) for port, access in config["granted"]}
    static = Ruleset(NO_FS, handled, NO_SCOPE, net=static_ports)
    rules = static | Ruleset(NO_FS, handled, NO_SCOPE, net=granted)
    status = config["status_fd"]
    held: list[PendingNet] = []

    def on_denial(pending: PendingNet) -> None:
        held.append(pending)
        os.write(status, f"denial {pending.port}\n".encode())

    # "in_child": the client runs as a child of the command, which (unlike the command) does
    # not die with the supervisor.
    mode = "client-in-child" if config.get("in_child") else "client"
    launched = launch(
        [sys.executable, __file__, mode],
        StaticLayer(NO_FS, handled, NO_SCOPE, ports=list(static_ports.items())),
        ("bind", "connect"),
        stdio=(config["stdin"], config["stdout"], None),
    )
    mediator = NetMediator(launched.listener, static, rules, 1, on_denial)
    os.write(status, f"ready {launched.pid}\n".encode())
    stop_r, _stop_w = os.pipe()
    serve(launched.listener, mediator, stop_r)
    launched.process.wait()


if __name__ == "__main__":
    if sys.argv[1] == "client":
        client()
    elif sys.argv[1] == "client-in-child":
        import subprocess

        sys.exit(subprocess.run([sys.executable, __file__, "client"]).returncode)
    elif sys.argv[1] == "supervise":
        supervise(json.loads(sys.argv[2]))
