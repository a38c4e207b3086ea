"""Live network grants: the trapped socket calls, sent where they are judged.

A trapped ``bind``/``connect`` that Landlock does not judge by port (Unix, UDP and raw sockets,
disconnects, malformed addresses) or whose port the static layer allows goes back to the kernel
(CONTINUE: the static layer decides, in the child's own context). Otherwise the supervisor takes
the child's socket with ``pidfd_getfd`` (the same open file description) and a thread restricted
by Landlock with the static ∪ committed ``net_port`` rules performs the call on it, with the
address exactly as it was read: the kernel judges the port, the child's own socket is bound or
connected, and the child's syscall returns the real result (0, ECONNREFUSED, EINPROGRESS for a
non-blocking socket, ...). A Landlock EACCES is a denial: :class:`PendingNet` goes to
``on_denial``, and :meth:`NetMediator.answer` later performs it with the rules the answer grants,
or refuses it (see tcp).

With ``connect_unix`` handled, the calls that may reach a pathname UNIX socket are judged by the
supervisor layer (see unix_calls), and no connect or send goes back to the kernel any more: a
TCP connect to a port the static layer allows is performed too, in a restricted thread, for
the kernel would otherwise connect whatever socket the descriptor names by then. While TCP is
handled, MPTCP sockets are refused with an event (see refusals).

Performing threads come from a small pool (``netpool``), so that a blocking connect to a slow
host holds only its own thread, never the notification loop. A performing thread also keeps no
capability the child lacks (binding a privileged port is judged with the child's capabilities).
"""

from __future__ import annotations

import collections
import contextlib
import errno
from collections.abc import Callable

from llsupervise.landlock.support import KernelSupport, detect_support
from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs
from llsupervise.seccomp import (
    NET_CALLS,
    UNIX_SYSCALLS,
    Listener,
    Notification,
    NotificationGone,
    SeccompError,
    native_arch,
    syscall_name,
)
from llsupervise.supervisor.net.pool import NetRules, PerformerPool
from llsupervise.supervisor.net.refusals import MptcpRefusals, RefusalHandler
from llsupervise.supervisor.net.replies import Replies, RulesInForce
from llsupervise.supervisor.net.sockets import open_pidfd, pidfd_getfd, socket_kind
from llsupervise.supervisor.net.tcp import DenialHandler, PendingNet, TcpPorts, once
from llsupervise.supervisor.net.unix import UnixPending
from llsupervise.supervisor.net.unix_calls import UnixDenialHandler, UnixSockets

__all__ = [
    "NET_CALLS", "NetMediator", "PendingNet", "UnixPending", "once", "open_pidfd",
    "pidfd_getfd", "socket_kind",
]  # fmt: skip


class NetMediator:
    """Answers trapped network notifications; see the module's description.

    Threads: create it in an unrestricted thread (it starts its helper thread there).
    :meth:`handle`, :meth:`update`, :meth:`answer` and :meth:`close` may be called from any
    thread, a Landlock-restricted one included. ``on_denial`` (and ``on_unix_denial``,
    ``on_refusal``) are called in the helper thread and must return quickly (post the request
    elsewhere); a request then belongs to its handler until it is answered or closed.
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
        on_refusal: RefusalHandler | None = None,
        on_stall: Callable[[Notification, str], None] | None = None,
    ) -> None:
        """``static``: the static layer's rules (its ports go straight to the kernel).
        ``rules``: static ∪ committed supervisor rules of ``generation``.
        ``on_unix_denial``: like ``on_denial``, for UNIX socket requests (see unix); it is
        called only when the static rules handle ``connect_unix``. ``on_refusal``: an event
        for a call refused without a question (see refusals). ``on_stall``: a call answered
        EIO because the kernel held the helper reading it (see pool)."""
        self.listener = listener
        self.on_stall = on_stall
        self.arch = native_arch()
        support = detect_support() if support is None else support
        self.replies = Replies(listener)
        self.in_force = RulesInForce(rules, generation)
        self._pool = PerformerPool(support, NetRules.of(rules), max_threads, idle_threads)
        #: What Landlock really restricts here: the rest is never mediated.
        enforced = static.handled_net & support.net
        self.tcp = TcpPorts(self.replies, self._pool, self.in_force, static, enforced, on_denial)
        #: Whether the calls that reach pathname UNIX sockets are judged here.
        self.unix: UnixSockets | None = None
        if static.handled_fs & AccessFs.CONNECT_UNIX:
            self.unix = UnixSockets(
                self.replies, self._pool, self.in_force, static.scopes, on_unix_denial,
                on_refusal, self.tcp.take_over,
            )  # fmt: skip
        self.mptcp = MptcpRefusals(self.replies, lambda: self.in_force.generation, on_refusal)

    @property
    def rules(self) -> Ruleset:
        return self.in_force.rules

    @property
    def generation(self) -> int:
        return self.in_force.generation

    @property
    def stats(self) -> collections.Counter[str]:
        """How requests went: "kernel" (CONTINUE), "performed", "denied", "answered",
        "refused"."""
        return self.replies.stats

    @property
    def failure(self) -> BaseException | None:
        """What went wrong in a pool thread, if anything (its requests were refused)."""
        return self._pool.failure

    @property
    def threads(self) -> int:
        return self._pool.threads

    def update(self, rules: Ruleset, generation: int) -> None:
        """A commit: ``rules`` (static ∪ committed) judge every request from now on."""
        self.in_force.current = (rules, generation)
        self._pool.keep(NetRules.of(rules))

    def close(self) -> None:
        """Stop idle threads and refuse queued requests (those in flight finish)."""
        self._pool.close()

    def handle(self, n: Notification) -> bool:
        """Take ``n`` if it is a network call of ours (True; it is answered later, from the
        pool's helper thread); False: not ours, nothing was done.

        Returns at once, so the calling thread may be restricted: the work that needs the
        supervisor's own standing (the child's memory and socket) happens in the helper."""
        name = syscall_name(self.arch, n.nr)
        if name is None or not (
            name in NET_CALLS
            or name == "socket"  # only MPTCP ones are handed over (see seccomp.bpf)
            or (self.unix is not None and name in UNIX_SYSCALLS)
        ):
            return False
        if not self._pool.post(lambda: self._dispatch(n, name), lambda: self._stalled(n)):
            # Closed: the static layer alone decides what it can; the rest fails closed.
            if name == "socket":
                self.replies.error(n, errno.EPROTONOSUPPORT)
            elif self.unix is not None and name in UNIX_SYSCALLS:
                self.replies.error(n, errno.EACCES)
            else:
                with contextlib.suppress(SeccompError):
                    self.replies.kernel_decides(n)
        return True

    def own_layer(self) -> None:
        """The program added a Landlock layer of its own: nothing more is granted to it; a
        TCP call goes to the kernel, which applies that layer, where nothing else needs us
        (see TcpPorts)."""
        self.tcp.own_layer = True

    def _stalled(self, n: Notification) -> None:
        """The kernel held the helper reading ``n`` (see pool): EIO, as for a request the
        serving threads were held on, with its event."""
        try:
            self.replies.listener.send_error(n.id, errno.EIO)
        except SeccompError:
            return  # gone, or answered meanwhile
        if self.on_stall is not None:
            self.on_stall(n, "refused")

    def _dispatch(self, n: Notification, name: str) -> None:
        try:
            if name == "socket":
                self.mptcp.handle(n)
            elif self.unix is not None and self.unix.handle(n, name):
                pass
            elif name in NET_CALLS:
                self.tcp.handle(n, name)
            else:
                self.replies.kernel_decides(n)  # a sendmmsg of no message: nothing is sent
        except NotificationGone:
            pass
        except Exception:
            with contextlib.suppress(SeccompError):
                if self.unix is not None or name == "socket":
                    # Nothing but us judges a UNIX socket's name, or refuses MPTCP.
                    self.listener.send_error(n.id, errno.EACCES)
                else:
                    self.replies.kernel_decides(n)  # never less safe than the static layer
            raise

    def answer(self, pending: PendingNet, grant: Ruleset | None) -> None:
        """Answer a denied TCP request (see :meth:`TcpPorts.answer`)."""
        self.tcp.answer(pending, grant)

    def answer_unix(self, pending: UnixPending, allowed: bool) -> None:
        """Answer a denied UNIX socket request (see :meth:`UnixSockets.answer`)."""
        if self.unix is None:
            raise ValueError("connect_unix is not handled")
        self.unix.answer(pending, allowed)
