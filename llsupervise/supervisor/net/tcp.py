"""TCP bind/connect judged by port (see the package's mediator for the whole story).

A call the static layer decides (it does not restrict the access, or allows the port), or one
Landlock does not judge by port, goes back to the kernel. Otherwise the child's socket is
performed on by a pool thread restricted with the rules in force, with the address exactly as
it was read; a Landlock EACCES there is a denial (:class:`PendingNet`), asked about, and
:meth:`TcpPorts.answer` later performs or refuses it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from msgspec import Struct, field

from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessNet, names
from llsupervise.seccomp import (
    MemoryReadError,
    Notification,
    ProcessMemory,
    SeccompError,
)
from llsupervise.supervisor.events.model import Answer, Denial
from llsupervise.supervisor.net.pool import NetRules, PerformerPool, ThreadKey
from llsupervise.supervisor.net.replies import Replies, RulesInForce
from llsupervise.supervisor.net.sockaddr import (
    ACCESS,
    AF_INET,
    AF_INET6,
    Direction,
    Endpoint,
    NetCall,
    decode_call,
    parse_sockaddr,
)
from llsupervise.supervisor.net.sockets import (
    child_status,
    connect_or_bind,
    open_pidfd,
    pidfd_getfd,
    socket_kind,
    user_namespace,
)
from llsupervise.supervisor.perform.procfs import read_proc

if TYPE_CHECKING:
    from llsupervise.messages import DenialEvent

_WORD_SIZE: Final = ctypes.sizeof(ctypes.c_ulong)


class PendingNet(Struct, eq=False):
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
    sockaddr: bytes
    #: The generation whose rules refused it.
    generation: int
    #: Effective capabilities of the child, the most a performing thread keeps.
    caps: int = 0
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


def once(rules: Ruleset, pending: PendingNet) -> Ruleset:
    """``rules`` plus the one port ``pending`` asks for: an "allow once" grant."""
    return rules.with_net(pending.port, pending.access)


def _grants(rules: Ruleset, p: PendingNet) -> bool:
    """Whether ``rules`` allow the request: an EACCES despite them is not Landlock's."""
    access = p.access
    return not rules.handled_net & access or bool(rules.net_rights_on(p.port) & access)


DenialHandler = Callable[[PendingNet], None]


class TcpJob:
    """One bind/connect to perform for a child; :meth:`run` replies (or hands a denial over).
    Implements the pool's Job protocol."""

    def __init__(self, ports: TcpPorts, pending: PendingNet, rules: Ruleset, asked: bool):
        self.ports = ports
        self.pending = pending
        self.rules = rules
        #: True for an answer: a denial then is final, not a new question.
        self.asked = asked

    def run(self) -> None:
        p, replies = self.pending, self.ports.replies
        try:
            if not replies.listener.id_valid(p.notification.id):
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
                self.ports.denied(p)
                return
            replies.reply(p, err)
        else:
            replies.reply(p, 0)

    def refuse(self, err: int) -> None:
        self.ports.replies.reply(self.pending, err)

    @property
    def done(self) -> bool:
        return self.pending.closed


class TcpPorts:
    """Trapped TCP bind/connect: left to the kernel, or performed in a restricted thread."""

    def __init__(
        self,
        replies: Replies,
        pool: PerformerPool,
        in_force: RulesInForce,
        static: Ruleset,
        enforced: AccessNet,
        on_denial: DenialHandler,
    ) -> None:
        """``static``: the static layer's rules (its ports go straight to the kernel);
        ``enforced``: what Landlock really restricts here (the rest is never mediated)."""
        self.replies = replies
        self.pool = pool
        self.in_force = in_force
        self.static = static
        self.enforced = enforced
        self.on_denial = on_denial
        self._user_namespace = user_namespace("self")
        #: Set once the program adds a Landlock layer of its own (see NetMediator.own_layer).
        self.own_layer = False

    def handle(self, n: Notification, name: str) -> None:
        """Answer ``n``, a bind/connect (or socketcall), now or from a pool thread."""
        kernel_decides = self.replies.kernel_decides
        try:
            mem = ProcessMemory(n.pid)
        except MemoryReadError:
            kernel_decides(n)
            return
        try:
            request = self._read(n, name, mem)
            if request is None or self.own_layer or self._static_decides(request[0], request[1]):
                # After the program's own layer: the kernel judges with it (and the static
                # layer); nothing more is granted. (A connect does not come here while
                # connect_unix is handled: see take_over.)
                kernel_decides(n)
                return
            try:
                pidfd = open_pidfd(n.pid)  # before id_valid, like the memory
            except OSError:
                kernel_decides(n)
                return
        finally:
            mem.close()
        call, endpoint, raw = request
        try:
            if not self.replies.listener.id_valid(n.id):
                return
            sock = pidfd_getfd(pidfd, call.fd)
        except OSError:
            kernel_decides(n)  # EBADF and the like: the kernel says so itself
            return
        finally:
            os.close(pidfd)
        try:
            is_tcp = socket_kind(sock).is_tcp
        except OSError:
            is_tcp = False
        if not is_tcp:
            os.close(sock)
            kernel_decides(n)
            return
        self._perform(n, call, endpoint, raw, sock)

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
        if not self.enforced & access:
            return True
        return bool(self.static.net_rights_on(endpoint.port) & access)

    def take_over(self, n: Notification, fd: int, addr: int, raw: bytes, sock: int) -> bool:
        """A connect whose socket ``sock`` (TCP) and address ``raw`` were already taken from
        the child (see unix_calls: with ``connect_unix`` handled nothing goes back to the
        kernel): perform it in a restricted thread, even on a port the static layer allows,
        so that Landlock still judges the port. True: it owns ``sock`` now; False: Landlock
        judges no port here, nothing was done."""
        endpoint = parse_sockaddr(raw, "connect")
        if endpoint is None or not self.enforced & AccessNet.CONNECT_TCP:
            return False
        self._perform(n, NetCall("connect", "connect", fd, addr, len(raw)), endpoint, raw, sock)
        return True

    def _perform(
        self, n: Notification, call: NetCall, endpoint: Endpoint, raw: bytes, sock: int
    ) -> None:
        tgid, caps = child_status(n.pid)
        if user_namespace(n.pid) != self._user_namespace:
            caps = 0  # capability bits only mean the same within one user namespace
        rules, generation = self.in_force.current
        own_layer = self.own_layer
        if own_layer:
            # A connect taken over (connect_unix handled, so it cannot go back to the kernel)
            # after the program added a layer of its own: performed with the static rules
            # alone, and a refusal is final. (The program's own layer is not ours to apply.)
            rules = self.static
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
        self.replies.count("performed")
        job = TcpJob(self, pending, rules, own_layer)
        self.pool.submit(ThreadKey(NetRules.of(rules), caps), job)

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
            self.replies.reply(pending, errno.EACCES)
            return
        if not grant.handled_net & pending.access:
            raise ValueError(f"the grant does not handle {names(pending.access)}")
        self.replies.count("answered")
        key = ThreadKey(NetRules.of(grant), pending.caps)
        self.pool.submit(key, TcpJob(self, pending, grant, True))

    def denied(self, pending: PendingNet) -> None:
        """A performing thread's EACCES: hand the request over to be asked about."""
        self.replies.count("denied")
        if not self.pool.post(lambda: self._report(pending)):
            self.replies.reply(pending, errno.EACCES)  # closed: nobody would answer

    def _report(self, pending: PendingNet) -> None:
        pending.exe = read_proc(pending.tid, "exe")
        pending.cmdline = read_proc(pending.tid, "cmdline")
        try:
            self.on_denial(pending)
        except BaseException:
            self.replies.reply(pending, errno.EACCES)
            raise
