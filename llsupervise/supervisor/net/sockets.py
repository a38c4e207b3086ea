"""The child's socket, taken into the supervisor: pidfds, ``pidfd_getfd``, what a socket is,
and the child's thread group and capabilities (what a performing thread may keep)."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, Final

from msgspec import Struct

from llsupervise.libc import libc as _libc
from llsupervise.libc import syscall as _syscall
from llsupervise.seccomp import SYSCALLS, native_arch
from llsupervise.supervisor.net.sockaddr import AF_INET, AF_INET6, Direction
from llsupervise.supervisor.perform.procfs import read_status, status_number

#: pidfd_open flag for a pidfd naming one thread (Linux 6.9), whose fd table may be its own.
PIDFD_THREAD: Final = os.O_EXCL

AF_UNIX: Final = 1
SOCK_STREAM: Final = 1
SOCK_DGRAM: Final = 2
IPPROTO_TCP: Final = 6
_SOL_SOCKET, _SO_TYPE, _SO_PROTOCOL, _SO_DOMAIN = 1, 3, 38, 39

_getsockopt = _libc.getsockopt
_getsockopt.argtypes = [
    ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
]  # fmt: skip
_getsockopt.restype = ctypes.c_int
_SOCKET_CALLS: dict[Direction, Any] = {"bind": _libc.bind, "connect": _libc.connect}
for _call in _SOCKET_CALLS.values():
    _call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    _call.restype = ctypes.c_int


def checked(ret: int, what: str) -> int:
    """``ret`` of a libc call made with use_errno; OSError with its errno if it failed."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def open_pidfd(tid: int) -> int:
    """A pidfd for thread ``tid`` (a notification's pid), whose fd table its fds live in.

    Open it before checking that the notification is still valid: then it names the trapped
    thread and no reuse of its id.
    """
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    # Before Linux 6.9 only a thread group leader has a pidfd; threads share its fd table.
    return os.pidfd_open(child_status(tid)[0])


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """Duplicate the process's ``fd`` into ours (close-on-exec): the same open file description."""
    nr = SYSCALLS[native_arch()]["pidfd_getfd"]
    ret = _syscall(ctypes.c_long(nr), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
    return checked(int(ret), "pidfd_getfd")


class SocketKind(Struct, frozen=True):
    domain: int
    type: int
    protocol: int

    @property
    def is_tcp(self) -> bool:
        """What Landlock restricts (the kernel's sk_is_tcp): IPv4/IPv6 stream sockets of TCP."""
        return (
            self.domain in (AF_INET, AF_INET6)
            and self.type == SOCK_STREAM
            and self.protocol == IPPROTO_TCP
        )


def socket_kind(fd: int) -> SocketKind:
    """Domain, type and protocol of socket ``fd``; OSError (ENOTSOCK...) if it is none.

    Read with getsockopt only: wrapping the fd in a Python socket could change its blocking
    mode, which the child's descriptor shares.
    """

    def option(name: int) -> int:
        value = ctypes.c_int()
        size = ctypes.c_uint32(ctypes.sizeof(value))
        checked(
            _getsockopt(fd, _SOL_SOCKET, name, ctypes.byref(value), ctypes.byref(size)),
            "getsockopt",
        )
        return value.value

    return SocketKind(option(_SO_DOMAIN), option(_SO_TYPE), option(_SO_PROTOCOL))


def connect_or_bind(direction: Direction, fd: int, sockaddr: bytes) -> None:
    """bind/connect ``fd`` to ``sockaddr`` in the calling thread (OSError: the kernel's errno)."""
    checked(_SOCKET_CALLS[direction](fd, sockaddr, len(sockaddr)), direction)


def child_status(tid: int) -> tuple[int, int]:
    """Thread group id and effective capabilities of ``tid`` (/proc/TID/status)."""
    fields = read_status(tid)
    return status_number(fields, b"Tgid", 10, tid), status_number(fields, b"CapEff", 16, 0)


def user_namespace(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/user")
    except OSError:
        return None
    return st.st_dev, st.st_ino
