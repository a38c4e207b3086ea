"""Trapped calls that may reach a UNIX socket by a name: connect, sendto, sendmsg, sendmmsg.

While ``connect_unix`` is handled, none of them is given back to the kernel (CONTINUE): the
kernel would act on whatever the program's memory and descriptor table say by then. Another
thread of the program may change the address after the supervisor read it, or dup2() a UNIX
socket onto the descriptor number after the supervisor looked at the socket, and the kernel
would reach a pathname socket nobody judged. So the supervisor takes the socket once
(``pidfd_getfd``), reads the address, data and control messages once, and performs the call
itself on that socket (see unix):

- on a UNIX socket, a connect or send naming a pathname goes to the checked object; anything
  else (abstract, unnamed, no address) is performed as read;
- a TCP connect is performed in a thread restricted like any TCP grant (see tcp), a port the
  static layer allows included, so Landlock still judges the port;
- everything else (UDP, sends on stream sockets, sends with no address...) is performed as
  read, its control messages made the supervisor's (see control).

Only a ``sendmmsg`` of no message goes back to the kernel: it sends nothing.

``sendmmsg`` sends one message per call (the first), as the kernel may: the program's loop
sends the rest, each one judged. A send on a stream socket sends at most ``MAX_SEND`` bytes,
as the kernel may too. Control messages (descriptors, credentials) on a UNIX datagram are
refused with an event: a datagram's peer is a name, judged per message.

Abstract addresses, when the static layer scopes abstract sockets, are refused (EPERM): a send
performed by the supervisor would escape the scope, which only the program's own domain can
apply.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Callable

from msgspec import Struct

from llsupervise.rights import AccessFs, Scope
from llsupervise.seccomp import MemoryReadError, Notification, ProcessMemory, SeccompError
from llsupervise.supervisor.net.control import Refused, forward, identity
from llsupervise.supervisor.net.msghdr import MSG_LEN_OFFSET, read_message
from llsupervise.supervisor.net.pool import NetRules, PerformerPool, ThreadKey
from llsupervise.supervisor.net.refusals import CONTROL_REFUSED, RefusalHandler, refusal_event
from llsupervise.supervisor.net.replies import Replies, RulesInForce
from llsupervise.supervisor.net.sockaddr import SOCKADDR_MAX, c_int
from llsupervise.supervisor.net.sockets import (
    AF_UNIX,
    SOCK_DGRAM,
    SOCK_STREAM,
    SocketKind,
    child_status,
    open_pidfd,
    pidfd_getfd,
    socket_kind,
    user_namespace,
)
from llsupervise.supervisor.net.unix import (
    MAX_SEND,
    UnixPending,
    is_abstract,
    perform,
    resolve_socket,
    unix_path,
)
from llsupervise.supervisor.perform.credentials import access_credentials, own_credentials
from llsupervise.supervisor.perform.procfs import read_proc, read_status
from llsupervise.supervisor.perform.stalls import check_not_abandoned

UnixDenialHandler = Callable[[UnixPending], None]
#: A send that asks for no SIGPIPE on a broken stream.
MSG_NOSIGNAL = 0x4000
#: TcpPorts.take_over: perform a TCP connect already taken (True), or leave it (False).
TcpTakeOver = Callable[[Notification, int, int, bytes, int], bool]


class _Call(Struct, frozen=True):
    """A trapped call's registers: which socket, and where its address or msghdr is."""

    name: str
    fd: int
    #: connect/sendto: the sockaddr (0: none); sendmsg/sendmmsg: the (first) msghdr.
    addr: int
    addrlen: int = 0

    @property
    def message(self) -> bool:
        return self.name in ("sendmsg", "sendmmsg")


def _call(name: str, args: tuple[int, ...]) -> _Call | None:
    """What to read for ``name``; None: a sendmmsg of no message, which sends nothing."""
    if name == "connect":
        return _Call(name, c_int(args[0]), args[1], c_int(args[2]))
    if name == "sendto":
        # A NULL address or a zero length: a send to the connected peer, as for send().
        named = args[4] != 0 and c_int(args[5]) != 0
        return _Call(name, c_int(args[0]), args[4] if named else 0, c_int(args[5]) if named else 0)
    if name == "sendmsg":
        return _Call(name, c_int(args[0]), args[1])
    if name == "sendmmsg" and args[2] & 0xFFFFFFFF:
        return _Call(name, c_int(args[0]), args[1])
    return None


class _Taken(Struct):
    """The child's socket, its memory, a pidfd for the thread (to take the descriptors a
    message passes), and (sendmmsg) its memory opened for writing; the socket and ``out``
    pass to a request (``handed``), or :meth:`close` closes them."""

    sock: int
    mem: ProcessMemory
    out: int = -1
    pidfd: int = -1
    handed: bool = False

    def close(self) -> None:
        self.mem.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
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
            if exc.errno == errno.EPIPE and p.stream and not p.flags & MSG_NOSIGNAL:
                self._broken_pipe(p)
            else:
                self.replies.reply(p, exc.errno or errno.EIO)
        except BaseException:
            # E.g. the thread could not give back a child's credentials (SystemExit: it
            # ends). The program must not wait forever for an answer nobody will give.
            self.replies.reply(p, errno.EACCES)
            raise
        else:
            self.replies.reply(p, 0, result)

    def _broken_pipe(self, p: UnixPending) -> None:
        """EPIPE, and the SIGPIPE the kernel sends the thread with it (the performing
        thread got it instead). Sent after the reply: a handler would otherwise interrupt
        the waiting call, which would be made again, and fail again. The pidfd, opened
        while the thread is surely in the call, names no other thread by then."""
        try:
            pidfd = open_pidfd(p.tid)
        except OSError:
            pidfd = -1
        self.replies.reply(p, errno.EPIPE)
        if pidfd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGPIPE)
            os.close(pidfd)

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
        tcp: TcpTakeOver | None = None,
    ) -> None:
        """``tcp``: performs a TCP connect judged by port (None: performed as read)."""
        self.replies = replies
        self.tcp = tcp
        self.pool = pool
        self.in_force = in_force
        self.on_denial = on_denial
        self.on_refusal = on_refusal
        self._scoped = bool(scopes & Scope.ABSTRACT_UNIX_SOCKET)
        self._own_credentials = own_credentials()
        self._user_namespace = user_namespace("self")

    def handle(self, n: Notification, name: str) -> bool:
        """Answer ``n`` if it is a call of the module's description (True: now or later);
        False: a sendmmsg of no message, nothing was done (the caller decides).

        Once it is one, it fails closed: nothing but this judges a UNIX socket's name."""
        call = _call(name, n.args)
        if call is None:
            return False
        if call.addrlen < 0 or call.addrlen > SOCKADDR_MAX:
            self.replies.error(n, errno.EINVAL)  # what the kernel says before any socket
            return True
        taken = self._take(n, call)
        if taken is None:
            return True
        try:
            try:
                kind = socket_kind(taken.sock)
            except OSError:
                self.replies.error(n, errno.ENOTSOCK)  # what the kernel says of a non-socket
                return True
            self._judge(n, call, taken, kind)
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
        taken.pidfd = pidfd
        try:
            if self.replies.listener.id_valid(n.id):
                taken.sock = pidfd_getfd(pidfd, call.fd)
        except OSError as exc:
            err = errno.ENOTSOCK if exc.errno == errno.ENOTSOCK else errno.EBADF
            self.replies.error(n, err)
        except SeccompError:
            pass  # the listener is gone: nobody waits
        if taken.sock < 0:
            taken.close()
            return None
        return taken

    def _judge(self, n: Notification, call: _Call, taken: _Taken, kind: SocketKind) -> None:
        """Read the call's address (and data) once, and perform, ask or refuse; the socket
        and the memory handle pass to the request (or are closed)."""
        data: bytes | None = None
        flags = 0
        control = b""
        cut = kind.type == SOCK_STREAM  # a stream may send part of what it is given
        try:
            if call.message:
                message = read_message(taken.mem.read, call.addr, MAX_SEND, cut=cut)
                address, data, control = message.name or b"", message.data, message.control
                flags = c_int(n.args[3] if call.name == "sendmmsg" else n.args[2])
            else:
                address = taken.mem.read(call.addr, call.addrlen) if call.addrlen else b""
                if call.name == "sendto":
                    size = n.args[2]
                    if size > MAX_SEND and not cut:
                        raise OSError(errno.EMSGSIZE, "message too long")
                    size = min(size, MAX_SEND)
                    data = taken.mem.read(n.args[1], size) if size else b""
                    flags = c_int(n.args[3])
        except (OSError, MemoryReadError) as exc:
            self.replies.error(n, exc.errno or errno.EFAULT)
            return
        finally:
            taken.mem.close()
        unix = kind.domain == AF_UNIX
        stream = data is not None and kind.type == SOCK_STREAM
        if unix and (not call.message or kind.type == SOCK_DGRAM):
            # What may reach a UNIX socket by a name: judged by it.
            if control:
                self._refuse(n, call, address, errno.EPERM, CONTROL_REFUSED)
                return
            path = unix_path(address) if address else None
            if path is None and self._scoped and is_abstract(address):
                self.replies.error(n, errno.EPERM)  # what the scope says to a socket outside
                return
            self._request(n, call, taken, address, path, data, flags, stream=stream)
            return
        tcp = call.name == "connect" and kind.is_tcp and self.tcp is not None
        if tcp and self.tcp is not None and self.tcp(n, call.fd, call.addr, address, taken.sock):
            taken.handed = True
            return
        self._as_read(n, call, taken, kind, address, data, flags, control, stream)

    def _as_read(
        self,
        n: Notification,
        call: _Call,
        taken: _Taken,
        kind: SocketKind,
        address: bytes,
        data: bytes | None,
        flags: int,
        control: bytes,
        stream: bool,
    ) -> None:
        """Perform a call that reaches no UNIX socket by a name on the socket taken, with
        what was read, its control messages made the supervisor's (see control)."""
        passed: list[int] = []
        unix = kind.domain == AF_UNIX
        if control:
            who = identity(read_status(n.pid), child_status(n.pid)[0])
            if who is None:
                self.replies.error(n, errno.EACCES)  # gone, or not known: not acted for
                return
            try:
                control, passed = forward(
                    control, unix, lambda fd: pidfd_getfd(taken.pidfd, fd), who
                )
            except Refused as refused:
                label = None if unix else "(a socket's peer)"
                self._refuse(n, call, address, errno.EPERM, refused.why, label)
                return
            except OSError as exc:
                err = exc.errno if exc.errno == errno.EINVAL else errno.EBADF
                self.replies.error(n, err)
                return
        try:
            self._request(n, call, taken, address, None, data, flags, control, passed,
                          stream=stream)  # fmt: skip
        except BaseException:
            if not taken.handed:  # no request owns them
                for fd in passed:
                    os.close(fd)
            raise

    def _request(
        self,
        n: Notification,
        call: _Call,
        taken: _Taken,
        address: bytes,
        path: bytes | None,
        data: bytes | None,
        flags: int,
        control: bytes = b"",
        passed: list[int] | None = None,
        *,
        stream: bool = False,
    ) -> None:
        theirs = access_credentials(read_status(n.pid))
        credentials = None if theirs == self._own_credentials else theirs
        target = None
        if path is not None and theirs is not None:
            try:
                target = resolve_socket(n.pid, path, credentials)
            except OSError as exc:
                self.replies.error(n, exc.errno or errno.EACCES)
                return
        tgid, caps = child_status(n.pid)
        if user_namespace(n.pid) != self._user_namespace:
            caps = 0  # capability bits only mean the same within one user namespace
        rules, generation = self.in_force.current
        pending = UnixPending(
            notification=n, tid=n.pid, pid=tgid, syscall=call.name, path=path or b"",
            sock=taken.sock, target=target, generation=generation,
            credentials=credentials,
            caps=caps, data=data, flags=flags, address=address,
            msg_len_at=call.addr + MSG_LEN_OFFSET if call.name == "sendmmsg" else 0,
            mem=taken.out, on_answer=self.answer, control=control, passed=passed or [],
            stream=stream,
        )  # fmt: skip
        taken.handed = True
        if theirs is None:
            self.replies.reply(pending, errno.EACCES)  # not knowing them, we may not act for it
        elif target is None or rules.fs_rights_on(target.chain) & AccessFs.CONNECT_UNIX:
            self.replies.count("performed")
            key = ThreadKey(NetRules.of(rules), caps, pending.credentials)
            self.pool.submit(key, _UnixJob(self.replies, pending))
        else:
            self.replies.count("denied")
            self._report(pending)

    def _report(self, pending: UnixPending) -> None:
        check_not_abandoned()  # a helper given up on (see pool) asks no one about it
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

    def _refuse(
        self, n: Notification, call: _Call, address: bytes, err: int, why: str,
        label: str | None = None,
    ) -> None:  # fmt: skip
        """Refuse ``n`` with ``err``, and say ``why`` in an event like a denial's (``label``
        where a path would stand: by default the address's path, or a UNIX socket's peer)."""
        self.replies.count("refused")
        path = unix_path(address) if address else None
        if label is None:
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
        key = ThreadKey(NetRules.of(self.in_force.rules), pending.caps, pending.credentials)
        self.pool.submit(key, _UnixJob(self.replies, pending))
