"""Connects and sends to pathname UNIX sockets, judged by the supervisor layer (``connect_unix``).

Landlock does not mediate ``connect()`` to a pathname UNIX socket on this kernel, so a program
could run commands outside its sandbox through a same-uid tmux, docker or ssh-agent socket.
With the right handled, a trapped ``connect``/``sendto``/``sendmsg``/``sendmmsg`` naming such a
socket is judged like a file: the supervisor opens (O_PATH) the socket the name leads to from
the child's cwd, a rule on it or on an ancestor directory allows it, otherwise it is a denial
that is asked about.

It is performed on the object that was checked: the supervisor takes the child's socket
(``pidfd_getfd``) and connects it, or sends on it, to ``/proc/self/fd/N`` of the O_PATH fd it
holds, so a name swapped after the check cannot redirect it. Any other address the call names
on a UNIX socket (abstract, unnamed, none at all in a msghdr) is performed as it was read, for
the same reason: given back to the kernel, memory the program changes meanwhile could name a
pathname by the time the kernel reads it again (see unix_calls).

The peer sees the connection made by the supervisor's process: ``SO_PEERCRED`` names its pid
(and its uid and gid, which are the child's unless the child changed its own).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import time
from typing import Any, Final

from msgspec import Struct, field

from llsupervise.libc import libc as _libc
from llsupervise.rights import AccessFs, names
from llsupervise.seccomp import Notification
from llsupervise.supervisor.engine.denials import CheckedObject, socket_object
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.events.model import Denial
from llsupervise.supervisor.perform.credentials import Credentials, acting_as

AF_UNIX: Final = 1
#: offsetof(struct sockaddr_un, sun_path), and sizeof(struct sockaddr_un): the kernel refuses
#: longer addresses (EINVAL), which it is then left to say.
SUN_PATH_OFFSET: Final = 2
SOCKADDR_UN_SIZE: Final = 110
#: The most a trapped sendto may carry (a datagram the kernel would refuse anyway beyond it).
MAX_SEND: Final = 1 << 20

_FAMILY: Final = struct.Struct("=H")
_MSG_LEN: Final = struct.Struct("=I")
_sendto = _libc.sendto
_sendto.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32
]  # fmt: skip
_sendto.restype = ctypes.c_ssize_t
_connect = _libc.connect
_connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_connect.restype = ctypes.c_int


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_char_p), ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int),
    ]  # fmt: skip


_sendmsg = _libc.sendmsg
_sendmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Msghdr), ctypes.c_int]
_sendmsg.restype = ctypes.c_ssize_t


def _send_with_control(
    sock: int, data: bytes, flags: int, address: bytes | None, control: bytes
) -> int:
    iov = _Iovec(data, len(data))
    msg = _Msghdr(
        address, 0 if address is None else len(address), ctypes.pointer(iov), 1,
        control, len(control), 0,
    )  # fmt: skip
    return int(_sendmsg(sock, ctypes.byref(msg), flags))


def unix_path(raw: bytes) -> bytes | None:
    """The pathname a ``sockaddr_un`` names; None for any other address (another family,
    abstract or unnamed, or a length the kernel refuses): the kernel decides those."""
    if not SUN_PATH_OFFSET < len(raw) <= SOCKADDR_UN_SIZE:
        return None
    if _FAMILY.unpack_from(raw)[0] != AF_UNIX or raw[SUN_PATH_OFFSET] == 0:
        return None
    # The kernel ends the name at the first NUL, or at the address length.
    return raw[SUN_PATH_OFFSET:].split(b"\0", 1)[0]


def sockaddr_un(path: bytes) -> bytes:
    return _FAMILY.pack(AF_UNIX) + path + b"\0"


def resolve_socket(tid: int, path: bytes, credentials: Credentials | None) -> CheckedObject:
    """The socket ``path`` leads to for thread ``tid`` (relative to its cwd), held open.

    Looked up with the thread's ``credentials`` (None: ours): the connect through the fd
    held skips the directories on the way, so their permissions are checked here.
    OSError: the errno the connect fails with (ENOENT, ECONNREFUSED for a non-socket...);
    EACCES for a thread whose root is not ours (a chroot), which is not resolved for it."""
    if os.stat(f"/proc/{tid}/root") != os.stat("/"):
        raise OSError(errno.EACCES, "the program's root is not the supervisor's")
    cwd = os.open(f"/proc/{tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with acting_as(credentials) if credentials is not None else contextlib.nullcontext():
            return socket_object(cwd, path, AccessFs.CONNECT_UNIX)
    finally:
        os.close(cwd)


def is_abstract(raw: bytes) -> bool:
    """Whether ``raw`` names an abstract socket (Landlock's ``abstract_unix_socket`` scope)."""
    return (
        SUN_PATH_OFFSET < len(raw) <= SOCKADDR_UN_SIZE
        and _FAMILY.unpack_from(raw)[0] == AF_UNIX
        and raw[SUN_PATH_OFFSET] == 0
    )


class UnixPending(Struct, eq=False):
    """A connect or a send on a UNIX socket, to perform for the child; owns ``sock``,
    ``target`` and ``mem`` until :meth:`close`.

    ``target``: the pathname socket that was checked (None: ``address`` is used as read, b""
    for none). ``data`` and ``flags``: what a send sends (None for a connect).
    ``msg_len_at``: for a sendmmsg, where the bytes sent go in the child (through ``mem``, its
    memory opened for writing); the call then returns 1, one message sent."""

    notification: Notification
    tid: int
    pid: int
    syscall: str
    path: bytes
    sock: int
    target: CheckedObject | None
    generation: int
    #: The child's credentials where they differ from ours (the connect is made with them).
    credentials: Credentials | None = None
    caps: int = 0
    data: bytes | None = None
    flags: int = 0
    address: bytes = b""
    msg_len_at: int = 0
    mem: int = -1
    #: Control messages made the supervisor's (see control), and the descriptors they pass.
    control: bytes = b""
    passed: list[int] = field(default_factory=list)
    #: On a stream socket: a broken one also sends the thread SIGPIPE.
    stream: bool = False
    exe: str = ""
    cmdline: str = ""
    ts: float = field(default_factory=time.time)
    closed: bool = False
    #: Set by the mediator: performs (True) or refuses (False) the request and replies.
    on_answer: Any = None

    @property
    def request(self) -> FsRequest:
        """The request as the questions see it (an operation on the socket object)."""
        return FsRequest(self.syscall, "connect_unix", -100, self.path)

    def denial(self) -> Denial:
        assert self.target is not None, "only a checked pathname socket is asked about"
        return Denial(
            pid=self.pid,
            tid=self.tid,
            exe=self.exe,
            cmdline=self.cmdline,
            syscall=self.syscall,
            path=self.target.label,
            access=tuple(names(AccessFs.CONNECT_UNIX)),
            generation=self.generation,
            ts=self.ts,
        )

    def answer(self, allowed: bool) -> None:
        """The question's answer: perform it (allowed) or refuse it with EACCES."""
        self.on_answer(self, allowed)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.sock)
            if self.target is not None:
                self.target.close()
            if self.mem >= 0:
                os.close(self.mem)
            for fd in self.passed:
                os.close(fd)


def perform(p: UnixPending) -> int:
    """Connect the child's socket, or send on it, to the checked socket object (or the
    address as read); the result (0, the bytes sent, 1 for a sendmmsg). OSError: the
    kernel's errno."""
    if p.target is not None:
        address: bytes | None = sockaddr_un(f"/proc/self/fd/{p.target.fd}".encode())
    else:
        address = p.address or None
    size = 0 if address is None else len(address)
    # The performing thread holds the child's credentials (see pool.ThreadKey).
    if p.data is None:
        ret = _connect(p.sock, address, size)
    elif p.control:
        ret = _send_with_control(p.sock, p.data, p.flags, address, p.control)
    else:
        ret = _sendto(p.sock, p.data, len(p.data), p.flags, address, size)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if p.msg_len_at:
        # Sent, so one message went: say so even if the program unmapped its msg_len.
        with contextlib.suppress(OSError):
            os.pwrite(p.mem, _MSG_LEN.pack(ret), p.msg_len_at)
        return 1
    return int(ret)
