"""Decode a trapped ``bind``/``connect`` into what Landlock checks: a direction and a TCP port.

Pure: the caller supplies a reader for the child's memory. Anything Landlock would not judge by
port (another family, a disconnect, a length the kernel rejects) decodes to ``None``: the kernel
decides it in the child's own context, where only the static layer applies.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Literal

from msgspec import Struct

from llsupervise.rights import AccessNet

Direction = Literal["bind", "connect"]

#: What Landlock checks for each direction.
ACCESS: Final[dict[Direction, AccessNet]] = {
    "bind": AccessNet.BIND_TCP,
    "connect": AccessNet.CONNECT_TCP,
}

# linux/socket.h address families.
AF_UNSPEC: Final = 0
AF_INET: Final = 2
AF_INET6: Final = 10
FAMILY_NAMES: Final = {AF_INET: "inet", AF_INET6: "inet6"}

#: sizeof(struct sockaddr_storage): the kernel refuses longer addresses (EINVAL).
SOCKADDR_MAX: Final = 128
#: sizeof(sa_family_t): shorter addresses are refused before any family is known.
FAMILY_SIZE: Final = 2
#: sizeof(struct sockaddr_in), and SIN6_LEN_RFC2133 (a sockaddr_in6 without sin6_scope_id):
#: the shortest addresses of each family that Landlock and the stack accept.
SIN_SIZE: Final = 16
SIN6_MIN_SIZE: Final = 24

# Families and socketcall words are in the machine's byte order, ports big-endian.
# struct sockaddr_in: family, port, address.
_SIN: Final = struct.Struct("=H2s4s")
# struct sockaddr_in6: family, port, flowinfo, address (scope_id follows, optional).
_SIN6: Final = struct.Struct("=H2s4x16s")
_FAMILY: Final = struct.Struct("=H")
_PORT: Final = struct.Struct(">H")

#: linux/net.h: the socketcall(2) multiplexer's call numbers.
SOCKETCALL_CALLS: Final[dict[int, Direction]] = {2: "bind", 3: "connect"}

ReadBytes = Callable[[int, int], bytes]


class NetCall(Struct, frozen=True):
    """A trapped bind/connect: which socket, and where its address lies in the child."""

    syscall: str
    direction: Direction
    fd: int
    addr: int
    addrlen: int

    @property
    def access(self) -> AccessNet:
        return ACCESS[self.direction]

    @property
    def readable(self) -> bool:
        """Whether the address has a length the kernel accepts (otherwise it says EINVAL)."""
        return FAMILY_SIZE <= self.addrlen <= SOCKADDR_MAX


class Endpoint(Struct, frozen=True):
    """The address a bind/connect names, as Landlock sees it."""

    #: AF_INET or AF_INET6 (an IPv4 bind to AF_UNSPEC is checked as AF_INET).
    family: int
    address: str
    port: int

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]

    @property
    def label(self) -> str:
        """A display name that no one mistakes for a file: ``tcp://[::1]:8080``."""
        host = f"[{self.address}]" if self.family == AF_INET6 else self.address
        return f"tcp://{host}:{self.port}"


def c_int(value: int) -> int:
    """A syscall argument as a C int (fds and socklen_t lengths are 32-bit)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def decode_call(
    name: str, args: tuple[int, ...], read: ReadBytes, word_size: int = 8
) -> NetCall | None:
    """The bind/connect that syscall ``name`` asks for; None for any other call.

    ``socketcall`` (the multiplexer of architectures without direct socket syscalls) passes
    a call number and a pointer to its arguments as ``word_size``-byte words; ``read`` reads
    them from the child (and may raise whatever it raises for an unreadable address).
    """
    if name in ("bind", "connect"):
        direction: Direction = "bind" if name == "bind" else "connect"
        return NetCall(name, direction, c_int(args[0]), args[1], c_int(args[2]))
    if name != "socketcall":
        return None
    if word_size not in (4, 8):
        raise ValueError(f"socketcall arguments are 4 or 8 bytes wide, not {word_size}")
    socketcall = SOCKETCALL_CALLS.get(c_int(args[0]))
    if socketcall is None:
        return None
    words = struct.Struct("=" + ("Q" if word_size == 8 else "I") * 3)
    fd, addr, addrlen = words.unpack(read(args[1], words.size))
    return NetCall(name, socketcall, c_int(fd), addr, c_int(addrlen))


def parse_sockaddr(raw: bytes, direction: Direction) -> Endpoint | None:
    """The endpoint Landlock judges in ``raw`` (the whole address the child passed).

    None when Landlock would not check a port: another family, a disconnect (connect to
    AF_UNSPEC), or a length it refuses with EINVAL before looking at the port.
    """
    if not FAMILY_SIZE <= len(raw) <= SOCKADDR_MAX:
        return None
    import ipaddress  # here: every run imports this module, few connect (~2 ms of start-up)

    (family,) = _FAMILY.unpack_from(raw)
    if family == AF_UNSPEC and direction == "bind":
        # An IPv4 socket binds AF_UNSPEC + INADDR_ANY as AF_INET, and Landlock checks the
        # port the same way; on an IPv6 socket both refuse it, which the kernel reports.
        family = AF_INET
    if family == AF_INET and len(raw) >= SIN_SIZE:
        _, port, addr4 = _SIN.unpack_from(raw)
        return Endpoint(AF_INET, str(ipaddress.IPv4Address(addr4)), _PORT.unpack(port)[0])
    if family == AF_INET6 and len(raw) >= SIN6_MIN_SIZE:
        _, port, addr6 = _SIN6.unpack_from(raw)
        return Endpoint(AF_INET6, str(ipaddress.IPv6Address(addr6)), _PORT.unpack(port)[0])
    return None
