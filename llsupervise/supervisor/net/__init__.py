"""Network mediation: TCP bind/connect by port, sends and connects to UNIX sockets, MPTCP.

Nothing is imported here: a run whose policy handles no network never loads the mediator.
"""
