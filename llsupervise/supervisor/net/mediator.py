"""Live TCP bind/connect grants, judged by the kernel.

A trapped ``bind``/``connect`` that Landlock does not judge by port (Unix, UDP and raw sockets,
disconnects, malformed addresses) or whose port the static layer allows goes back to the kernel
(CONTINUE: the static layer decides, in the child's own context). Otherwise the supervisor takes
the child's socket with ``pidfd_getfd`` (the same open file description) and a thread restricted
by Landlock with the static ∪ committed ``net_port`` rules performs the call on it, with the
address exactly as it was read: the kernel judges the port, the child's own socket is bound or
connected, and the child's syscall returns the real result (0, ECONNREFUSED, EINPROGRESS for a
non-blocking socket, ...). A Landlock EACCES is a denial: :class:`PendingNet` goes to
``on_denial``, and :meth:`NetMediator.answer` later performs it with the rules the answer grants,
or refuses it.

Performing threads come from a small pool (``netpool``), so that a blocking connect to a slow
host holds only its own thread, never the notification loop. A performing thread also keeps no
capability the child lacks (binding a privileged port is judged with the child's capabilities).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from llsupervise.landlock.support import KernelSupport, detect_support
from llsupervise.libc import libc as _libc
from llsupervise.libc import syscall as _syscall
from llsupervise.messages import DenialEvent
from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs, AccessNet, names
from llsupervise.seccomp import (
    NET_SYSCALLS,
    SYSCALLS,
    UNIX_SYSCALLS,
    Listener,
    MemoryReadError,
    Notification,
    NotificationGone,
    ProcessMemory,
    SeccompError,
    native_arch,
    syscall_name,
)
from llsupervise.supervisor.events.model import Answer, Denial
from llsupervise.supervisor.net.pool import NetRules, PerformerPool, ThreadKey
from llsupervise.supervisor.net.sockaddr import (
    ACCESS,
    AF_INET,
    AF_INET6,
    Direction,
    Endpoint,
    NetCall,
    c_int,
    decode_call,
    parse_sockaddr,
)
from llsupervise.supervisor.net.unix import (
    MAX_SEND,
    SOCKADDR_UN_SIZE,
    SUN_PATH_OFFSET,
    UnixPending,
    perform,
    resolve_socket,
    unix_path,
)
from llsupervise.supervisor.perform.credentials import access_credentials, own_credentials
from llsupervise.supervisor.perform.procfs import read_proc, read_status, status_number

#: Trapped syscalls this module answers (socketcall exists only on other architectures).
NET_CALLS: Final = (*NET_SYSCALLS, "socketcall")

#: pidfd_open flag for a pidfd naming one thread (Linux 6.9), whose fd table may be its own.
PIDFD_THREAD: Final = os.O_EXCL
_WORD_SIZE: Final = ctypes.sizeof(ctypes.c_ulong)

_getsockopt = _libc.getsockopt
_getsockopt.argtypes = [
    ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
]  # fmt: skip
_getsockopt.restype = ctypes.c_int
_SOCKET_CALLS: dict[Direction, Any] = {"bind": _libc.bind, "connect": _libc.connect}
for _call in _SOCKET_CALLS.values():
    _call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    _call.restype = ctypes.c_int


def _checked(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


# --- the child's socket -----------------------------------------------------------------------


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
    return os.pidfd_open(_status(tid)[0])


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """Duplicate the process's ``fd`` into ours (close-on-exec): the same open file description."""
    nr = SYSCALLS[native_arch()]["pidfd_getfd"]
    ret = _syscall(ctypes.c_long(nr), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
    return _checked(int(ret), "pidfd_getfd")


@dataclass(frozen=True, slots=True)
class SocketKind:
    domain: int
    type: int
    protocol: int

    @property
    def is_tcp(self) -> bool:
        """What Landlock restricts (the kernel's sk_is_tcp): IPv4/IPv6 stream sockets of TCP."""
        return (
            self.domain in (AF_INET, AF_INET6)
            and self.type == _SOCK_STREAM
            and self.protocol == _IPPROTO_TCP
        )


_AF_UNIX = 1
_SOL_SOCKET, _SO_TYPE, _SO_PROTOCOL, _SO_DOMAIN = 1, 3, 38, 39
_SOCK_STREAM, _IPPROTO_TCP = 1, 6


def socket_kind(fd: int) -> SocketKind:
    """Domain, type and protocol of socket ``fd``; OSError (ENOTSOCK...) if it is none.

    Read with getsockopt only: wrapping the fd in a Python socket could change its blocking
    mode, which the child's descriptor shares.
    """

    def option(name: int) -> int:
        value = ctypes.c_int()
        size = ctypes.c_uint32(ctypes.sizeof(value))
        _checked(
            _getsockopt(fd, _SOL_SOCKET, name, ctypes.byref(value), ctypes.byref(size)),
            "getsockopt",
        )
        return value.value

    return SocketKind(option(_SO_DOMAIN), option(_SO_TYPE), option(_SO_PROTOCOL))


def connect_or_bind(direction: Direction, fd: int, sockaddr: bytes) -> None:
    """bind/connect ``fd`` to ``sockaddr`` in the calling thread (OSError: the kernel's errno)."""
    _checked(_SOCKET_CALLS[direction](fd, sockaddr, len(sockaddr)), direction)


class _Job:
    """One bind/connect to perform for a child; :meth:`run` replies (or hands a denial over).
    Implements the pool's Job protocol."""

    def __init__(self, mediator: NetMediator, pending: PendingNet, rules: Ruleset, asked: bool):
        self.mediator = mediator
        self.pending = pending
        self.rules = rules
        #: True for an answer: a denial then is final, not a new question.
        self.asked = asked

    def run(self) -> None:
        p, mediator = self.pending, self.mediator
        try:
            if not mediator.listener.id_valid(p.notification.id):
                p.close()  # the child gave up (died): do not act for it any more
                return
        except SeccompError:
            p.close()
            return
        try:
            connect_or_bind(p.direction, p.sock, p.sockaddr)
        except OSError as exc:
            err = exc.errno or errno.EIO
            if err == errno.EACCES and not self.asked and not _grants(self.rules, p):
                mediator._denied(p)
                return
            mediator._reply(p, err)
        else:
            mediator._reply(p, 0)

    def refuse(self, err: int) -> None:
        self.mediator._reply(self.pending, err)

    @property
    def done(self) -> bool:
        return self.pending.closed


def _grants(rules: Ruleset, p: PendingNet) -> bool:
    """Whether ``rules`` allow the request: an EACCES despite them is not Landlock's."""
    access = p.access
    return not rules.handled_net & access or bool(rules.net_rights_on(p.port) & access)


# --- the child --------------------------------------------------------------------------------


def _status(tid: int) -> tuple[int, int]:
    """Thread group id and effective capabilities of ``tid`` (/proc/TID/status)."""
    fields = read_status(tid)
    return status_number(fields, b"Tgid", 10, tid), status_number(fields, b"CapEff", 16, 0)


def _user_namespace(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/user")
    except OSError:
        return None
    return st.st_dev, st.st_ino


# --- requests and answers ---------------------------------------------------------------------


@dataclass(eq=False)
class PendingNet:
    """A bind/connect waiting to be performed or answered; owns ``sock`` until :meth:`close`.

    ``sock`` is the child's socket duplicated into the supervisor; ``sockaddr`` the address
    exactly as read from the child, the one that is checked and performed.
    """

    notification: Notification
    tid: int
    pid: int
    syscall: str
    direction: Direction
    #: "inet" or "inet6".
    family: str
    address: str
    port: int
    sock: int
    sockaddr: bytes = field(repr=False)
    #: The generation whose rules refused it.
    generation: int
    #: Effective capabilities of the child, the most a performing thread keeps.
    caps: int = field(default=0, repr=False)
    #: Read when the request is denied (a performing thread cannot read the child's /proc).
    exe: str = ""
    cmdline: str = ""
    ts: float = field(default_factory=time.time)
    closed: bool = False

    @property
    def access(self) -> AccessNet:
        return ACCESS[self.direction]

    @property
    def label(self) -> str:
        family = AF_INET6 if self.family == "inet6" else AF_INET
        return Endpoint(family, self.address, self.port).label

    def denial(self) -> Denial:
        """The denial as the decision flow sees it; ``path`` is :attr:`label` (tcp://host:port)."""
        return Denial(
            pid=self.pid,
            tid=self.tid,
            exe=self.exe,
            cmdline=self.cmdline,
            syscall=self.syscall,
            path=self.label,
            access=tuple(names(self.access)),
            generation=self.generation,
            ts=self.ts,
        )

    def event(self, decision: Answer, count: int = 1) -> DenialEvent:
        """The log event: a denial's fields, plus what a network request names."""
        event = self.denial().event(decision)
        event["count"] = count
        event["direction"] = self.direction
        event["family"] = self.family
        event["address"] = self.address
        event["port"] = self.port
        return event

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.sock)


DenialHandler = Callable[[PendingNet], None]
UnixDenialHandler = Callable[[UnixPending], None]


class _UnixJob:
    """A connect/sendto to a checked UNIX socket to perform; implements the pool's Job."""

    def __init__(self, mediator: NetMediator, pending: UnixPending):
        self.mediator = mediator
        self.pending = pending

    def run(self) -> None:
        p, mediator = self.pending, self.mediator
        try:
            if not mediator.listener.id_valid(p.notification.id):
                p.close()
                return
            result = perform(p)
        except SeccompError:
            p.close()
        except OSError as exc:
            mediator._reply(p, exc.errno or errno.EIO)
        else:
            mediator._reply(p, 0, result)

    def refuse(self, err: int) -> None:
        self.mediator._reply(self.pending, err)

    @property
    def done(self) -> bool:
        return self.pending.closed


class NetMediator:
    """Answers trapped bind/connect notifications; see the module's description.

    Threads: create it in an unrestricted thread (it starts its helper thread there).
    :meth:`handle`, :meth:`update`, :meth:`answer` and :meth:`close` may be called from any
    thread, a Landlock-restricted one included. ``on_denial`` is called in the helper thread
    and must return quickly (post the request elsewhere); the request then belongs to it
    until :meth:`answer` or its ``close``.
    """

    def __init__(
        self,
        listener: Listener,
        static: Ruleset,
        rules: Ruleset,
        generation: int,
        on_denial: DenialHandler,
        *,
        max_threads: int = 64,
        idle_threads: int = 2,
        support: KernelSupport | None = None,
        on_unix_denial: UnixDenialHandler | None = None,
    ) -> None:
        """``static``: the static layer's rules (its ports go straight to the kernel).
        ``rules``: static ∪ committed supervisor rules of ``generation``.
        ``on_unix_denial``: like ``on_denial``, for UNIX socket requests (see unix); it is
        called only when the static rules handle ``connect_unix``."""
        self.listener = listener
        self.on_denial = on_denial
        self.on_unix_denial = on_unix_denial
        #: Whether connect/sendto to pathname UNIX sockets are judged here.
        self._unix = bool(static.handled_fs & AccessFs.CONNECT_UNIX)
        self._own_credentials = own_credentials()
        self.arch = native_arch()
        support = detect_support() if support is None else support
        self._static = static
        #: What Landlock really restricts here: the rest is never mediated.
        self._enforced = static.handled_net & support.net
        self._user_namespace = _user_namespace("self")
        self._current = (rules, generation)
        self._pool = PerformerPool(support, NetRules.of(rules), max_threads, idle_threads)
        self._stats_lock = threading.Lock()
        #: How requests went: "kernel" (CONTINUE), "performed", "denied", "answered".
        self.stats: collections.Counter[str] = collections.Counter()

    @property
    def rules(self) -> Ruleset:
        return self._current[0]

    @property
    def generation(self) -> int:
        return self._current[1]

    @property
    def failure(self) -> BaseException | None:
        """What went wrong in a pool thread, if anything (its requests were refused)."""
        return self._pool.failure

    @property
    def threads(self) -> int:
        return self._pool.threads

    def update(self, rules: Ruleset, generation: int) -> None:
        """A commit: ``rules`` (static ∪ committed) judge every request from now on."""
        self._current = (rules, generation)
        self._pool.keep(NetRules.of(rules))

    def close(self) -> None:
        """Stop idle threads and refuse queued requests (those in flight finish)."""
        self._pool.close()

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    # -- the notification loop's side ----------------------------------------------------------

    def handle(self, n: Notification) -> bool:
        """Take ``n`` if it is a bind/connect (True; it is answered later, from the pool's
        helper thread); False: not ours, nothing was done.

        Returns at once, so the calling thread may be restricted: the work that needs the
        supervisor's own standing (the child's memory and socket) happens in the helper."""
        name = syscall_name(self.arch, n.nr)
        if name not in NET_CALLS and not (self._unix and name in UNIX_SYSCALLS):
            return False
        if not self._pool.post(lambda: self._dispatch(n, name)):
            with contextlib.suppress(SeccompError):
                self._kernel_decides(n)  # closed: the static layer alone decides
        return True

    def _dispatch(self, n: Notification, name: str) -> None:
        try:
            self._handle(n, name)
        except NotificationGone:
            pass
        except Exception:
            with contextlib.suppress(SeccompError):
                if self._unix:  # nothing but us judges a UNIX socket connect
                    self.listener.send_error(n.id, errno.EACCES)
                else:
                    self._kernel_decides(n)  # never less safe than the static layer
            raise

    def _kernel_decides(self, n: Notification) -> None:
        self._count("kernel")
        self.listener.send_continue(n.id)

    def _handle(self, n: Notification, name: str) -> None:
        if self._unix and self._handle_unix(n, name):
            return
        if name not in NET_CALLS:
            self._kernel_decides(n)  # a sendto that names no UNIX socket
            return
        try:
            mem = ProcessMemory(n.pid)
        except MemoryReadError:
            self._kernel_decides(n)
            return
        try:
            request = self._read(n, name, mem)
            if request is None or self._static_decides(request[0], request[1]):
                self._kernel_decides(n)
                return
            try:
                pidfd = open_pidfd(n.pid)  # before id_valid, like the memory
            except OSError:
                self._kernel_decides(n)
                return
        finally:
            mem.close()
        call, endpoint, raw = request
        try:
            if not self.listener.id_valid(n.id):
                return
            sock = pidfd_getfd(pidfd, call.fd)
        except OSError:
            self._kernel_decides(n)  # EBADF and the like: the kernel says so itself
            return
        finally:
            os.close(pidfd)
        try:
            kind = socket_kind(sock)
        except OSError:
            kind = None
        if kind is None or not kind.is_tcp:
            os.close(sock)
            self._kernel_decides(n)
            return
        self._perform(n, call, endpoint, raw, sock)

    # -- UNIX sockets (see unix) -------------------------------------------------------------

    def _handle_unix(self, n: Notification, name: str) -> bool:
        """Take a connect/sendto that names a pathname UNIX socket on an AF_UNIX socket (True:
        it is answered, now or later); False: not one, nothing was done.

        Once the address names a pathname, it fails closed: CONTINUE would let the kernel
        connect by a name that may have changed since it was read, and nothing judges it."""
        args = n.args
        data: bytes | None = None
        flags = 0
        try:
            mem = ProcessMemory(n.pid)
        except MemoryReadError:
            # Gone (the reply fails harmlessly), or short of descriptors: fail closed.
            self._send_error(n, errno.EACCES)
            return True
        try:
            if name == "connect":
                fd, addr, addrlen = c_int(args[0]), args[1], c_int(args[2])
            else:
                fd, addr, addrlen = c_int(args[0]), args[4], c_int(args[5])
                if addr == 0:
                    return False  # a send on a connected socket
            if not SUN_PATH_OFFSET < addrlen <= SOCKADDR_UN_SIZE:
                return False
            path = unix_path(mem.read(addr, addrlen))
            if path is None:
                return False
            if name == "sendto":
                if args[2] > MAX_SEND:
                    self._send_error(n, errno.EMSGSIZE)
                    return True
                data, flags = mem.read(args[1], args[2]), c_int(args[3])
            pidfd = open_pidfd(n.pid)
        except (MemoryReadError, OSError):
            self._send_error(n, errno.EFAULT)
            return True
        finally:
            mem.close()
        try:
            if not self.listener.id_valid(n.id):
                os.close(pidfd)
                return True
            sock = pidfd_getfd(pidfd, fd)
        except OSError as exc:
            self._send_error(n, errno.EBADF if exc.errno != errno.ENOTSOCK else errno.ENOTSOCK)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.close(pidfd)
        try:
            domain = socket_kind(sock).domain
        except OSError:
            domain = -1
        if domain != _AF_UNIX:
            os.close(sock)
            return False  # the kernel (or the TCP mediation) answers what this socket does
        try:
            target = resolve_socket(n.pid, path)
        except OSError as exc:
            os.close(sock)
            self._send_error(n, exc.errno or errno.EACCES)
            return True
        tgid, caps = _status(n.pid)
        theirs = access_credentials(read_status(n.pid))
        rules, generation = self._current
        pending = UnixPending(
            notification=n, tid=n.pid, pid=tgid, syscall=name, path=path, sock=sock,
            target=target, generation=generation,
            credentials=None if theirs == self._own_credentials else theirs,
            caps=caps, data=data, flags=flags, on_answer=self.answer_unix,
        )  # fmt: skip
        if theirs is None:
            self._reply(pending, errno.EACCES)  # not knowing them, we may not act for it
        elif rules.fs_rights_on(target.chain) & AccessFs.CONNECT_UNIX:
            self._count("performed")
            self._pool.submit(ThreadKey(NetRules.of(rules), caps), _UnixJob(self, pending))
        else:
            self._count("denied")
            self._report_unix(pending)
        return True

    def _send_error(self, n: Notification, err: int) -> None:
        with contextlib.suppress(SeccompError):
            self.listener.send_error(n.id, err)

    def _report_unix(self, pending: UnixPending) -> None:
        pending.exe = read_proc(pending.tid, "exe")
        pending.cmdline = read_proc(pending.tid, "cmdline")
        if self.on_unix_denial is None:
            self._reply(pending, errno.EACCES)
            return
        try:
            self.on_unix_denial(pending)
        except BaseException:
            self._reply(pending, errno.EACCES)
            raise

    def answer_unix(self, pending: UnixPending, allowed: bool) -> None:
        """Answer a denied UNIX socket request: perform it on the checked socket, or refuse
        it (EACCES). Returns at once; the reply follows."""
        if pending.closed:
            return
        if not allowed:
            self._reply(pending, errno.EACCES)
            return
        self._count("answered")
        key = ThreadKey(NetRules.of(self.rules), pending.caps)
        self._pool.submit(key, _UnixJob(self, pending))

    def _read(
        self, n: Notification, name: str, mem: ProcessMemory
    ) -> tuple[NetCall, Endpoint, bytes] | None:
        """The call and the address as read once from the child; None: not Landlock's to judge
        by port, or unreadable (the kernel then says EFAULT/EINVAL itself)."""
        try:
            call = decode_call(name, n.args, mem.read, _WORD_SIZE)
            if call is None or not call.readable:
                return None
            raw = mem.read(call.addr, call.addrlen)
        except MemoryReadError:
            return None
        endpoint = parse_sockaddr(raw, call.direction)
        return None if endpoint is None else (call, endpoint, raw)

    def _static_decides(self, call: NetCall, endpoint: Endpoint) -> bool:
        """Whether the static layer alone gives the answer: it does not restrict this access
        (then nothing does), or it allows the port (then the supervisor layer adds nothing)."""
        access = call.access
        if not self._enforced & access:
            return True
        return bool(self._static.net_rights_on(endpoint.port) & access)

    def _perform(
        self, n: Notification, call: NetCall, endpoint: Endpoint, raw: bytes, sock: int
    ) -> None:
        tgid, caps = _status(n.pid)
        if _user_namespace(n.pid) != self._user_namespace:
            caps = 0  # capability bits only mean the same within one user namespace
        rules, generation = self._current
        pending = PendingNet(
            notification=n,
            tid=n.pid,
            pid=tgid,
            syscall=call.syscall,
            direction=call.direction,
            family=endpoint.family_name,
            address=endpoint.address,
            port=endpoint.port,
            sock=sock,
            sockaddr=raw,
            generation=generation,
            caps=caps,
        )
        self._count("performed")
        self._pool.submit(ThreadKey(NetRules.of(rules), caps), _Job(self, pending, rules, False))

    # -- answers -------------------------------------------------------------------------------

    def answer(self, pending: PendingNet, grant: Ruleset | None) -> None:
        """Answer a denied request: refuse it (``grant`` None: EACCES), or perform it in a
        thread restricted with ``grant`` and reply with the kernel's result.

        ``grant`` is a whole static ∪ supervisor ruleset: for "allow once" the current rules
        plus the port (:func:`once`), for "allow always / for a while" the rules of the
        generation committed with the new rule. Returns at once; the reply follows.
        """
        if pending.closed:
            return
        if grant is None:
            self._reply(pending, errno.EACCES)
            return
        if not grant.handled_net & pending.access:
            raise ValueError(f"the grant does not handle {names(pending.access)}")
        self._count("answered")
        key = ThreadKey(NetRules.of(grant), pending.caps)
        self._pool.submit(key, _Job(self, pending, grant, True))

    def _denied(self, pending: PendingNet) -> None:
        self._count("denied")
        if not self._pool.post(lambda: self._report(pending)):
            self._reply(pending, errno.EACCES)  # closed: nobody would answer

    def _report(self, pending: PendingNet) -> None:
        pending.exe = read_proc(pending.tid, "exe")
        pending.cmdline = read_proc(pending.tid, "cmdline")
        try:
            self.on_denial(pending)
        except BaseException:
            self._reply(pending, errno.EACCES)
            raise

    def _reply(self, pending: PendingNet | UnixPending, err: int, value: int = 0) -> None:
        """Return ``value`` or -err to the child, and release the request."""
        try:
            if err:
                self.listener.send_error(pending.notification.id, err)
            else:
                self.listener.send_value(pending.notification.id, value)
        except SeccompError:
            pass  # the child is gone (NotificationGone) or so is the listener: nobody waits
        finally:
            pending.close()


def once(rules: Ruleset, pending: PendingNet) -> Ruleset:
    """``rules`` plus the one port ``pending`` asks for: an "allow once" grant."""
    return rules.with_net(pending.port, pending.access)
