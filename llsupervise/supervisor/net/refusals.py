"""Refusals the supervisor answers itself and reports: the call fails with an errno, and the
log and the interface show an event like a denial's, with ``refused`` saying why and what to
do. No question is asked: no answer could allow them."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Final

from llsupervise.messages import Event
from llsupervise.rights import AccessFs, AccessNet, names
from llsupervise.seccomp import Notification
from llsupervise.supervisor.events.model import Answer, Denial
from llsupervise.supervisor.net.replies import Replies
from llsupervise.supervisor.net.sockets import child_status
from llsupervise.supervisor.perform.procfs import read_proc

RefusalHandler = Callable[[Event], None]

#: Where a path would stand, for an MPTCP socket.
MPTCP_LABEL: Final = "mptcp socket (refused while TCP is handled)"
MPTCP_REFUSED: Final = (
    "MPTCP sockets are refused while the policy handles TCP: Landlock does not see them, so "
    "they would go around the port rules. The program gets EPROTONOSUPPORT, as from a kernel "
    "without MPTCP; most fall back to plain TCP, which is judged. Otherwise make it use TCP "
    "(e.g. turn MPTCP off in its settings)"
)
#: Why a control message is refused on a datagram to a UNIX socket.
CONTROL_REFUSED: Final = (
    "descriptors or credentials sent on a datagram are refused while connect_unix is handled "
    "(the supervisor would send them as its own); send them on a connected stream socket"
)


def refusal_event(
    n: Notification, syscall: str, label: str, access: AccessFs | AccessNet, why: str,
    generation: int,
) -> Event:  # fmt: skip
    """A refusal as the log shows it: a denial of ``access`` on ``label`` (where a path would
    stand), answered "deny", with ``refused`` = ``why``."""
    denial = Denial(
        pid=child_status(n.pid)[0], tid=n.pid, exe=read_proc(n.pid, "exe"),
        cmdline=read_proc(n.pid, "cmdline"), syscall=syscall, path=label,
        access=tuple(names(access)), generation=generation,
    )  # fmt: skip
    event = denial.event(Answer.DENY)
    event["refused"] = why
    return event


class MptcpRefusals:
    """Answers the ``socket()`` calls for MPTCP that the seccomp filter hands over while TCP
    is handled (see seccomp.bpf.MPTCP_REFUSED): EPROTONOSUPPORT, and an event."""

    def __init__(
        self, replies: Replies, generation: Callable[[], int], on_refusal: RefusalHandler | None
    ) -> None:
        self.replies = replies
        self._generation = generation
        self.on_refusal = on_refusal

    def handle(self, n: Notification) -> None:
        self.replies.count("refused")
        # Read before the reply, while the thread is still in the call (and surely alive).
        event = refusal_event(
            n, "socket", MPTCP_LABEL, AccessNet.CONNECT_TCP | AccessNet.BIND_TCP, MPTCP_REFUSED,
            self._generation(),
        )  # fmt: skip
        self.replies.error(n, errno.EPROTONOSUPPORT)
        if self.on_refusal is not None:
            self.on_refusal(event)
