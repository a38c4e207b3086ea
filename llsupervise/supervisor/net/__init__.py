"""Network mediation: TCP bind/connect by port, sends and connects to UNIX sockets, MPTCP."""

from llsupervise.supervisor.net.mediator import NET_CALLS, NetMediator
from llsupervise.supervisor.net.tcp import PendingNet, once
from llsupervise.supervisor.net.unix import UnixPending

__all__ = ["NET_CALLS", "NetMediator", "PendingNet", "UnixPending", "once"]
