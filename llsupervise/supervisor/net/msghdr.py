"""Decode what a trapped ``sendmsg``/``sendmmsg`` sends: its ``struct msghdr``, read once.

Pure: the caller supplies a reader for the child's memory. The layout is the 64-bit one (the
architectures the supervisor serves); a failure is an :class:`OSError` with the errno the
kernel gives the same message (a reader's own error, EFAULT, passes through).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Final

from msgspec import Struct

from llsupervise.supervisor.net.sockaddr import SOCKADDR_MAX, c_int

#: struct msghdr: name, namelen, iov, iovlen, control, controllen, flags.
MSGHDR: Final = struct.Struct("=QI4xQQQQi4x")
#: struct mmsghdr: a msghdr, then msg_len (what the kernel sets to the bytes sent).
MMSGHDR_SIZE: Final = 64
MSG_LEN: Final = struct.Struct("=I")
MSG_LEN_OFFSET: Final = MSGHDR.size
IOVEC: Final = struct.Struct("=QQ")
#: The most iovecs the kernel takes (EMSGSIZE beyond), and the most mmsghdrs per call.
UIO_MAXIOV: Final = 1024
#: The most control data read (the kernel's own limit, optmem_max, is of this order: ENOBUFS).
MAX_CONTROL: Final = 1 << 16
_INT_MAX: Final = (1 << 31) - 1
_SSIZE_MAX: Final = (1 << 63) - 1

ReadBytes = Callable[[int, int], bytes]


class Message(Struct, frozen=True):
    """One message as read: the address (None: none), the data joined, and its control
    messages as they lie in memory (b"": none; see control)."""

    name: bytes | None
    data: bytes
    control: bytes


def read_message(read: ReadBytes, addr: int, max_data: int, *, cut: bool = False) -> Message:
    """The message whose ``struct msghdr`` is at ``addr``; EMSGSIZE beyond ``max_data``, or
    (``cut``: a stream, which may send part of it) its first ``max_data`` bytes."""
    name_at, namelen, iov_at, iovlen, control_at, controllen, _ = MSGHDR.unpack(
        read(addr, MSGHDR.size)
    )
    namelen = c_int(namelen) if name_at else 0  # no name: its length is not looked at
    if namelen < 0:
        raise OSError(errno.EINVAL, "negative msg_namelen")
    # The kernel cuts a longer name to sizeof(struct sockaddr_storage).
    name = read(name_at, min(namelen, SOCKADDR_MAX)) if namelen else None
    if controllen > min(_INT_MAX, MAX_CONTROL):
        raise OSError(errno.ENOBUFS, "msg_controllen too large")
    if iovlen > UIO_MAXIOV:
        raise OSError(errno.EMSGSIZE, "too many iovecs")
    vectors = [IOVEC.unpack_from(read(iov_at, IOVEC.size * iovlen), IOVEC.size * i)
               for i in range(iovlen)] if iovlen else []  # fmt: skip
    if any(length > _SSIZE_MAX for _, length in vectors):
        raise OSError(errno.EINVAL, "iov_len too large")
    if sum(length for _, length in vectors) > max_data:
        if not cut:
            raise OSError(errno.EMSGSIZE, "message too long")
        vectors = _first_bytes(vectors, max_data)
    data = b"".join(read(base, length) for base, length in vectors if length)
    control = read(control_at, controllen) if controllen else b""
    return Message(name, data, control)


def _first_bytes(vectors: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The iovecs that hold the first ``limit`` bytes."""
    first: list[tuple[int, int]] = []
    for base, length in vectors:
        if limit <= 0:
            break
        first.append((base, min(length, limit)))
        limit -= length
    return first
