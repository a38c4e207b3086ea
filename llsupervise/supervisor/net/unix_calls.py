"""Trapped calls that may reach a UNIX socket by a name: connect, sendto, sendmsg, sendmmsg.

A call on a UNIX socket that names an address in the program's memory is never given back to
the kernel: another thread of the program may change that memory after the supervisor read it,
and the kernel would read a pathname nobody judged. So the supervisor reads it once, and
performs the call itself on the child's socket (see unix): to the checked object for a
pathname, as read for anything else (abstract, unnamed, no address at all in a msghdr). Only
what reaches no name goes back to the kernel: ``sendto`` without an address (a register), and
sends on stream and seqpacket sockets, which the kernel never sends to a ``msg_name``.

``sendmmsg`` sends one message per call (the first), as the kernel may: the program's loop
sends the rest, each one judged. Control messages (descriptors, credentials) on a datagram are
refused with an event: the supervisor would have to forge them as its own.

Abstract addresses, when the static layer scopes abstract sockets, are refused (EPERM): a send
performed by the supervisor would escape the scope, which only the program's own domain can
apply. Left to the kernel is the residue that no reading can pin: a program that swaps the
*descriptor* number to another socket after the check.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from llsupervise.rights import AccessFs, Scope
from llsupervise.seccomp import MemoryReadError, Notification, ProcessMemory, SeccompError
from llsupervise.supervisor.net.msghdr import MSG_LEN_OFFSET, read_message
from llsupervise.supervisor.net.pool import NetRules, PerformerPool, ThreadKey
from llsupervise.supervisor.net.refusals import CONTROL_REFUSED, RefusalHandler, refusal_event
from llsupervise.supervisor.net.replies import Replies, RulesInForce
from llsupervise.supervisor.net.sockaddr import c_int
from llsupervise.supervisor.net.sockets import (
    AF_UNIX,
    SOCK_DGRAM,
    child_status,
    open_pidfd,
    pidfd_getfd,
    socket_kind,
)
from llsupervise.supervisor.net.unix import (
    MAX_SEND,
    SOCKADDR_UN_SIZE,
    SUN_PATH_OFFSET,
    UnixPending,
    is_abstract,
    perform,
    resolve_socket,
    unix_path,
)
from llsupervise.supervisor.perform.credentials import access_credentials, own_credentials
from llsupervise.supervisor.perform.procfs import read_proc, read_status

UnixDenialHandler = Callable[[UnixPending], None]


@dataclass(frozen=True, slots=True)
class _Call:
    """A trapped call's registers: which socket, and where its address or msghdr is."""

    name: str
    fd: int
    #: connect/sendto: the sockaddr; sendmsg/sendmmsg: the (first) msghdr.
    addr: int
    addrlen: int = 0

    @property
    def message(self) -> bool:
        return self.name in ("sendmsg", "sendmmsg")


def _call(name: str, args: tuple[int, ...]) -> _Call | None:
    """What to read for ``name``; None when no name can be reached whatever memory holds."""
    if name == "connect":
        call = _Call(name, c_int(args[0]), args[1], c_int(args[2]))
    elif name == "sendto":
        if args[4] == 0:
            return None  # a send on a connected socket: the address is a register
        call = _Call(name, c_int(args[0]), args[4], c_int(args[5]))
    elif name == "sendmsg":
        return _Call(name, c_int(args[0]), args[1])
    elif name == "sendmmsg":
        return _Call(name, c_int(args[0]), args[1]) if args[2] & 0xFFFFFFFF else None
    else:
        return None
    # A UNIX socket refuses other lengths (EINVAL) or disconnects (AF_UNSPEC) before reading
    # any name: nothing the memory holds then reaches a socket.
    return call if SUN_PATH_OFFSET < call.addrlen <= SOCKADDR_UN_SIZE else None


@dataclass
class _Taken:
    """The child's socket, its memory, and (sendmmsg) its memory opened for writing; the
    descriptors pass to a request (``handed``), or :meth:`close` closes them."""

    sock: int
    mem: ProcessMemory
    out: int = -1
    handed: bool = False

    def close(self) -> None:
        self.mem.close()
        if not self.handed:
            self.handed = True
            if self.sock >= 0:
                os.close(self.sock)
            if self.out >= 0:
                os.close(self.out)


class _UnixJob:
    """A connect or send on a UNIX socket to perform; implements the pool's Job."""

    def __init__(self, replies: Replies, pending: UnixPending):
        self.replies = replies
        self.pending = pending

    def run(self) -> None:
        p = self.pending
        try:
            if not self.replies.listener.id_valid(p.notification.id):
                p.close()
                return
            result = perform(p)
        except SeccompError:
            p.close()
        except OSError as exc:
            self.replies.reply(p, exc.errno or errno.EIO)
        else:
            self.replies.reply(p, 0, result)

    def refuse(self, err: int) -> None:
        self.replies.reply(self.pending, err)

    @property
    def done(self) -> bool:
        return self.pending.closed


class UnixSockets:
    """Judges and performs the calls of the module's description (``connect_unix``)."""

    def __init__(
        self,
        replies: Replies,
        pool: PerformerPool,
        in_force: RulesInForce,
        scopes: Scope,
        on_denial: UnixDenialHandler | None,
        on_refusal: RefusalHandler | None = None,
    ) -> None:
        self.replies = replies
        self.pool = pool
        self.in_force = in_force
        self.on_denial = on_denial
        self.on_refusal = on_refusal
        self._scoped = bool(scopes & Scope.ABSTRACT_UNIX_SOCKET)
        self._own_credentials = own_credentials()

    def handle(self, n: Notification, name: str) -> bool:
        """Answer ``n`` if it is a call of the module's description on a UNIX socket (True:
        now or later); False: not one, nothing was done (the caller decides).

        Once it is one, it fails closed: nothing but this judges a UNIX socket's name."""
        call = _call(name, n.args)
        if call is None:
            return False
        taken = self._take(n, call)
        if taken is None:
            return True
        try:
            try:
                kind = socket_kind(taken.sock)
            except OSError:
                return False  # not a socket: the kernel says so
            if kind.domain != AF_UNIX or (call.message and kind.type != SOCK_DGRAM):
                return False  # the kernel (or the TCP mediation) answers what this does
            self._judge(n, call, taken)
            return True
        finally:
            taken.close()

    def _take(self, n: Notification, call: _Call) -> _Taken | None:
        """The child's socket and memory, opened before the notification is checked valid
        (so they are the trapped thread's); None: answered (an error) or gone."""
        try:
            taken = _Taken(-1, ProcessMemory(n.pid))
        except MemoryReadError:
            # Gone (the reply fails harmlessly), or short of descriptors: fail closed.
            self.replies.error(n, errno.EACCES)
            return None
        try:
            if call.name == "sendmmsg":
                taken.out = os.open(f"/proc/{n.pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
            pidfd = open_pidfd(n.pid)
        except OSError:
            taken.close()
            self.replies.error(n, errno.EACCES)
            return None
        try:
            if self.replies.listener.id_valid(n.id):
                taken.sock = pidfd_getfd(pidfd, call.fd)
        except OSError as exc:
            err = errno.ENOTSOCK if exc.errno == errno.ENOTSOCK else errno.EBADF
            self.replies.error(n, err)
        except SeccompError:
            pass  # the listener is gone: nobody waits
        finally:
            os.close(pidfd)
        if taken.sock < 0:
            taken.close()
            return None
        return taken

    def _judge(self, n: Notification, call: _Call, taken: _Taken) -> None:
        """Read the call's address (and data) once, and perform, ask or refuse; the socket
        and the memory handle pass to the request (or are closed)."""
        data: bytes | None = None
        flags = 0
        control = False
        try:
            if call.message:
                message = read_message(taken.mem.read, call.addr, MAX_SEND)
                address, data, control = message.name or b"", message.data, message.control
                flags = c_int(n.args[3] if call.name == "sendmmsg" else n.args[2])
            else:
                address = taken.mem.read(call.addr, call.addrlen)
                if call.name == "sendto":
                    if n.args[2] > MAX_SEND:
                        raise OSError(errno.EMSGSIZE, "message too long")
                    data, flags = taken.mem.read(n.args[1], n.args[2]), c_int(n.args[3])
        except (OSError, MemoryReadError) as exc:
            self.replies.error(n, exc.errno or errno.EFAULT)
            return
        finally:
            taken.mem.close()
        if control:
            self._refuse(n, call, address, errno.EPERM, CONTROL_REFUSED)
            return
        path = unix_path(address) if address else None
        if path is None and self._scoped and is_abstract(address):
            self.replies.error(n, errno.EPERM)  # what the scope says to a socket outside
            return
        self._request(n, call, taken, address, path, data, flags)

    def _request(
        self,
        n: Notification,
        call: _Call,
        taken: _Taken,
        address: bytes,
        path: bytes | None,
        data: bytes | None,
        flags: int,
    ) -> None:
        target = None
        if path is not None:
            try:
                target = resolve_socket(n.pid, path)
            except OSError as exc:
                self.replies.error(n, exc.errno or errno.EACCES)
                return
        tgid, caps = child_status(n.pid)
        theirs = access_credentials(read_status(n.pid))
        rules, generation = self.in_force.current
        pending = UnixPending(
            notification=n, tid=n.pid, pid=tgid, syscall=call.name, path=path or b"",
            sock=taken.sock, target=target, generation=generation,
            credentials=None if theirs == self._own_credentials else theirs,
            caps=caps, data=data, flags=flags, address=address,
            msg_len_at=call.addr + MSG_LEN_OFFSET if call.name == "sendmmsg" else 0,
            mem=taken.out, on_answer=self.answer,
        )  # fmt: skip
        taken.handed = True
        if theirs is None:
            self.replies.reply(pending, errno.EACCES)  # not knowing them, we may not act for it
        elif target is None or rules.fs_rights_on(target.chain) & AccessFs.CONNECT_UNIX:
            self.replies.count("performed")
            self.pool.submit(ThreadKey(NetRules.of(rules), caps), _UnixJob(self.replies, pending))
        else:
            self.replies.count("denied")
            self._report(pending)

    def _report(self, pending: UnixPending) -> None:
        pending.exe = read_proc(pending.tid, "exe")
        pending.cmdline = read_proc(pending.tid, "cmdline")
        if self.on_denial is None:
            self.replies.reply(pending, errno.EACCES)
            return
        try:
            self.on_denial(pending)
        except BaseException:
            self.replies.reply(pending, errno.EACCES)
            raise

    def _refuse(self, n: Notification, call: _Call, address: bytes, err: int, why: str) -> None:
        """Refuse ``n`` with ``err``, and say ``why`` in an event like a denial's."""
        self.replies.count("refused")
        path = unix_path(address) if address else None
        label = os.fsdecode(path) if path is not None else "(a UNIX socket's peer)"
        event = refusal_event(
            n, call.name, label, AccessFs.CONNECT_UNIX, why, self.in_force.generation
        )
        self.replies.error(n, err)
        if self.on_refusal is not None:
            self.on_refusal(event)

    def answer(self, pending: UnixPending, allowed: bool) -> None:
        """Answer a denied request: perform it on the checked socket, or refuse it (EACCES).
        Returns at once; the reply follows."""
        if pending.closed:
            return
        if not allowed:
            self.replies.reply(pending, errno.EACCES)
            return
        self.replies.count("answered")
        key = ThreadKey(NetRules.of(self.in_force.rules), pending.caps)
        self.pool.submit(key, _UnixJob(self.replies, pending))
