"""Control messages of a send the supervisor performs for the program, made its own.

A ``sendmsg`` performed by the supervisor carries the program's control messages, but the
kernel reads them as the supervisor's: descriptor numbers in ``SCM_RIGHTS`` would name the
supervisor's files, and ``SCM_CREDENTIALS`` would be checked against the supervisor. So each
control message is decoded once, as it was read from the program's memory, and rebuilt:

- ``SCM_RIGHTS``: each descriptor is taken from the program (``pidfd_getfd``, the same open
  file) and passed on; the caller closes them after the send;
- ``SCM_CREDENTIALS``: passed on only if they are the program's own (its pid, one of its user
  and group ids), naming the supervisor's pid, which is the sender the peer sees anyway;
  other credentials are refused (EPERM) with an event;
- other ``SOL_SOCKET`` messages that are plain data for an inet socket (mark, priority,
  timestamping, txtime): passed on, judged by the kernel with the program's capabilities;
  the rest are refused (EPERM) with an event;
- messages of other levels (IP, IPv6, UDP options): plain data, passed on as they are.

Pure but for ``take``: the caller supplies how a descriptor is taken from the program. The
layout is the 64-bit one (``struct cmsghdr``: a size_t length, level, type).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import Final

from msgspec import Struct

#: struct cmsghdr: cmsg_len, cmsg_level, cmsg_type; data follows, 8-byte aligned.
CMSGHDR: Final = struct.Struct("=Qii")
_ALIGN: Final = 8
SOL_SOCKET: Final = 1
SCM_RIGHTS: Final = 1
SCM_CREDENTIALS: Final = 2
#: SOL_SOCKET messages that only carry data for an inet socket's send.
_DATA_ONLY: Final = frozenset({
    12,  # SO_PRIORITY
    36,  # SO_MARK
    37,  # SO_TIMESTAMPING_OLD
    61,  # SCM_TXTIME
})  # fmt: skip
#: The most descriptors one message passes (the kernel's SCM_MAX_FD: EINVAL beyond).
SCM_MAX_FD: Final = 253
_INT: Final = struct.Struct("=i")
#: struct ucred: pid, uid, gid.
UCRED: Final = struct.Struct("=iII")

#: Why a control message is refused, for the event.
UNKNOWN_REFUSED: Final = (
    "a control message the supervisor does not know how to pass on for the program was "
    "refused while connect_unix is handled (type {level}/{type})"
)
CREDENTIALS_REFUSED: Final = (
    "credentials that are not the program's own were refused: the supervisor sends for the "
    "program, and would vouch for them"
)


class Refused(Exception):
    """A control message the supervisor will not pass on: the call fails with EPERM, and
    ``why`` goes in the event."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Identity(Struct, frozen=True):
    """Whose credentials the program may send: its thread group, and its real, effective
    and saved user and group ids."""

    pid: int
    uids: frozenset[int]
    gids: frozenset[int]


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def messages(control: bytes) -> list[tuple[int, int, bytes]]:
    """(level, type, data) of each control message, as the kernel walks them; OSError
    EINVAL for a malformed one."""
    found: list[tuple[int, int, bytes]] = []
    at = 0
    while len(control) - at >= CMSGHDR.size:
        length, level, kind = CMSGHDR.unpack_from(control, at)
        if length < CMSGHDR.size or length > len(control) - at:
            raise OSError(errno.EINVAL, "malformed control message")
        found.append((level, kind, control[at + CMSGHDR.size : at + length]))
        at += _align(length)
    return found


def pack(level: int, kind: int, data: bytes) -> bytes:
    """One control message, padded to the next one's alignment."""
    length = CMSGHDR.size + len(data)
    return CMSGHDR.pack(length, level, kind) + data + b"\0" * (_align(length) - length)


def forward(
    control: bytes, unix: bool, take: Callable[[int], int], identity: Identity
) -> tuple[bytes, list[int]]:
    """The program's ``control`` rebuilt as the supervisor's (see the module), and the
    descriptors taken for it, which the caller closes after the send.

    ``unix``: whether the socket is a UNIX one. ``take``: the program's descriptor taken into
    the supervisor (OSError: EBADF and the like). Raises :class:`Refused`, or OSError with the
    errno the kernel gives the same message; on either, no descriptor stays taken."""
    taken: list[int] = []
    rebuilt = b""
    try:
        for level, kind, data in messages(control):
            if level != SOL_SOCKET:
                rebuilt += pack(level, kind, data)
            elif kind == SCM_RIGHTS:
                count = len(data) // _INT.size
                # The kernel's limit is for the whole message, not each SCM_RIGHTS in it:
                # checked before any is taken, so that one send cannot make the supervisor
                # hold thousands of descriptors (the same one named again and again).
                if len(taken) + count > SCM_MAX_FD:
                    raise OSError(errno.EINVAL, "too many descriptors")
                ours = []
                for i in range(count):
                    (fd,) = _INT.unpack_from(data, i * _INT.size)
                    ours.append(take(fd))
                    taken.append(ours[-1])
                rebuilt += pack(level, kind, b"".join(_INT.pack(fd) for fd in ours))
            elif kind == SCM_CREDENTIALS:
                if len(data) != UCRED.size:
                    raise OSError(errno.EINVAL, "malformed credentials")
                pid, uid, gid = UCRED.unpack(data)
                if pid != identity.pid or uid not in identity.uids or gid not in identity.gids:
                    raise Refused(CREDENTIALS_REFUSED)
                rebuilt += pack(level, kind, UCRED.pack(os.getpid(), uid, gid))
            elif not unix and kind in _DATA_ONLY:
                rebuilt += pack(level, kind, data)
            else:
                raise Refused(UNKNOWN_REFUSED.format(level=level, type=kind))
    except BaseException:
        for fd in taken:
            os.close(fd)
        raise
    return rebuilt, taken


def identity(status: dict[bytes, bytes], tgid: int) -> Identity | None:
    """The program's :class:`Identity` from /proc/TID/status; None if it is gone."""
    try:
        uids = frozenset(int(v) for v in status[b"Uid"].split()[:3])
        gids = frozenset(int(v) for v in status[b"Gid"].split()[:3])
    except (KeyError, ValueError):
        return None
    return Identity(tgid, uids, gids)
