"""Decoding trapped bind/connect calls and their addresses (pure), and the denial's fields."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llsupervise.rights import AccessNet
from llsupervise.seccomp import Notification
from llsupervise.supervisor.events.model import Answer
from llsupervise.supervisor.net.mediator import PendingNet, once
from llsupervise.supervisor.net.sockaddr import (
    AF_INET,
    AF_INET6,
    AF_UNSPEC,
    SOCKADDR_MAX,
    Direction,
    Endpoint,
    NetCall,
    decode_call,
    parse_sockaddr,
)
from llsupervise.supervisor.net.sockets import SocketKind

ports = st.integers(0, 65535)
directions = st.sampled_from(["bind", "connect"])


def sin(port: int, addr: str = "127.0.0.1", family: int = AF_INET) -> bytes:
    return (
        struct.pack("=H", family)
        + struct.pack(">H", port)
        + socket.inet_pton(socket.AF_INET, addr)
        + bytes(8)
    )


def sin6(port: int, addr: str = "::1", scope: bool = True) -> bytes:
    raw = struct.pack("=H", AF_INET6) + struct.pack(">HI", port, 0)
    raw += socket.inet_pton(socket.AF_INET6, addr)
    return raw + (bytes(4) if scope else b"")


def no_memory(addr: int, size: int) -> bytes:
    raise AssertionError("direct bind/connect arguments need no memory read")


def test_direct_calls_decode_their_registers() -> None:
    args = (5, 0x7FFF1000, 16, 0, 0, 0)
    assert decode_call("connect", args, no_memory) == NetCall(
        "connect", "connect", 5, 0x7FFF1000, 16
    )
    assert decode_call("bind", args, no_memory) == NetCall("bind", "bind", 5, 0x7FFF1000, 16)
    # fd and socklen_t are C ints: the upper half of the register is ignored, the sign kept.
    call = decode_call("connect", (0xFFFF_FFFF_FFFF_FFFF, 1, 0x1_FFFF_FFFF, 0, 0, 0), no_memory)
    assert call is not None and (call.fd, call.addrlen, call.readable) == (-1, -1, False)
    assert decode_call("openat", args, no_memory) is None


@pytest.mark.parametrize(("word", "fmt"), [(4, "=III"), (8, "=QQQ")])
def test_socketcall_reads_its_argument_block(word: int, fmt: str) -> None:
    block = {0x5000: struct.pack(fmt, 7, 0x6000, 28)}

    def read(addr: int, size: int) -> bytes:
        assert size == 3 * word
        return block[addr]

    calls: list[tuple[int, Direction]] = [(2, "bind"), (3, "connect")]
    for number, direction in calls:
        call = decode_call("socketcall", (number, 0x5000, 0, 0, 0, 0), read, word)
        assert call == NetCall("socketcall", direction, 7, 0x6000, 28)
        assert call.access == (AccessNet.BIND_TCP if direction == "bind" else AccessNet.CONNECT_TCP)
    assert decode_call("socketcall", (1, 0x5000, 0, 0, 0, 0), read, word) is None  # socket()
    with pytest.raises(ValueError, match="4 or 8"):
        decode_call("socketcall", (2, 0x5000, 0, 0, 0, 0), read, 2)


@given(ports, st.ip_addresses(v=4), directions)
def test_inet_addresses_round_trip(port: int, addr: ipaddress.IPv4Address, direction: str) -> None:
    endpoint = parse_sockaddr(sin(port, str(addr)), "bind" if direction == "bind" else "connect")
    assert endpoint == Endpoint(AF_INET, str(addr), port)
    assert endpoint.label == f"tcp://{addr}:{port}"
    assert endpoint.family_name == "inet"


@given(ports, st.ip_addresses(v=6), st.booleans())
def test_inet6_addresses_round_trip(port: int, addr: ipaddress.IPv6Address, scope: bool) -> None:
    endpoint = parse_sockaddr(sin6(port, str(addr), scope), "connect")
    assert endpoint == Endpoint(AF_INET6, str(addr), port)
    assert endpoint.label == f"tcp://[{addr}]:{port}"
    assert endpoint.family_name == "inet6"


def test_what_landlock_does_not_judge_by_port_is_left_to_the_kernel() -> None:
    assert parse_sockaddr(sin(80)[:15], "connect") is None  # short: EINVAL
    assert parse_sockaddr(sin6(80, scope=False)[:23], "connect") is None
    assert parse_sockaddr(b"\x02", "connect") is None
    assert parse_sockaddr(sin(80) + bytes(SOCKADDR_MAX), "connect") is None  # too long
    assert parse_sockaddr(sin(80, "0.0.0.0", AF_UNSPEC), "connect") is None  # disconnect
    unix = struct.pack("=H", socket.AF_UNIX) + b"/tmp/x\0"
    assert parse_sockaddr(unix, "connect") is None
    assert parse_sockaddr(unix, "bind") is None
    # An IPv4 bind to AF_UNSPEC is checked like AF_INET (the kernel maps INADDR_ANY).
    assert parse_sockaddr(sin(8080, "0.0.0.0", AF_UNSPEC), "bind") == Endpoint(
        AF_INET, "0.0.0.0", 8080
    )


@given(st.binary(max_size=SOCKADDR_MAX + 8), directions)
def test_any_bytes_decode_or_are_left_to_the_kernel(raw: bytes, direction: str) -> None:
    endpoint = parse_sockaddr(raw, "bind" if direction == "bind" else "connect")
    if endpoint is not None:
        assert 16 <= len(raw) <= SOCKADDR_MAX
        assert endpoint.port == int.from_bytes(raw[2:4], "big")
        assert endpoint.family in (AF_INET, AF_INET6)


def test_tcp_is_what_landlock_restricts() -> None:
    tcp, stream = socket.IPPROTO_TCP, socket.SOCK_STREAM
    assert SocketKind(socket.AF_INET, stream, tcp).is_tcp
    assert SocketKind(socket.AF_INET6, stream, tcp).is_tcp
    assert not SocketKind(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP).is_tcp
    assert not SocketKind(socket.AF_INET, stream, 262).is_tcp  # MPTCP
    assert not SocketKind(socket.AF_UNIX, stream, 0).is_tcp
    assert not SocketKind(socket.AF_INET, socket.SOCK_RAW, tcp).is_tcp


def pending(direction: str = "connect") -> PendingNet:
    r, w = os.pipe()
    os.close(w)
    n = Notification(9, 1234, 0, 42, 0xC000003E, 0, (3, 0, 16, 0, 0, 0))
    return PendingNet(
        notification=n, tid=1234, pid=1200, exe="/usr/bin/curl", cmdline="curl x",
        syscall="connect", direction="connect" if direction == "connect" else "bind",
        family="inet6", address="::1", port=8443, sock=r, sockaddr=sin6(8443), generation=4,
    )  # fmt: skip


def test_denial_event_has_the_contract_fields_and_the_endpoint() -> None:
    p = pending()
    try:
        denial = p.denial()
        assert (denial.pid, denial.tid, denial.path, denial.access) == (
            1200, 1234, "tcp://[::1]:8443", ("connect_tcp",)
        )  # fmt: skip
        event = p.event(Answer.DENY, count=3)
        assert event == {
            "event": "denial",
            "ts": p.ts,
            "pid": 1200,
            "tid": 1234,
            "exe": "/usr/bin/curl",
            "syscall": "connect",
            "path": "tcp://[::1]:8443",
            "access": ["connect_tcp"],
            "decision": "deny",
            "generation": 4,
            "count": 3,
            "direction": "connect",
            "family": "inet6",
            "address": "::1",
            "port": 8443,
        }
    finally:
        p.close()
    assert p.closed
    p.close()  # idempotent: the descriptor is not closed twice


def test_allow_once_adds_exactly_the_requested_port() -> None:
    from llsupervise.policy.model import Ruleset
    from llsupervise.rights import NO_FS

    handled = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
    rules = Ruleset(NO_FS, handled, net={80: AccessNet.BIND_TCP})
    p = pending("bind")
    try:
        granted = once(rules, p)
    finally:
        p.close()
    assert dict(granted.net) == {80: AccessNet.BIND_TCP, 8443: AccessNet.BIND_TCP}
