"""Passing the signals a supervisor gets on to the command it runs."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


async def forward(send: Callable[[int], None], on_hangup: Callable[[], None]) -> None:
    """Pass each forwarded signal on (see :func:`pass_on`), in trio."""
    import trio  # imported here: a run starts before trio (supervisor.door)

    with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        async for signum in signals:
            pass_on(signum, send, on_hangup)


@contextlib.contextmanager
def forwarding(send: Callable[[int], None], on_hangup: Callable[[], None]) -> Iterator[None]:
    """Pass each forwarded signal on (see :func:`pass_on`) from plain handlers, before trio
    runs. Trio's receiver (:func:`forward`) takes them over while it is open, and gives them
    back when it closes: no signal finds the default action (our death) in between."""
    previous = {
        signum: signal.signal(signum, lambda signum, _frame: pass_on(signum, send, on_hangup))
        for signum in FORWARDED_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def pass_on(signum: int, send: Callable[[int], None], on_hangup: Callable[[], None]) -> None:
    """Send ``signum`` on to the command; SIGHUP also calls ``on_hangup`` (our terminal is
    gone). A Ctrl-C is not sent again: the command, in our process group, got it too."""
    if signum == signal.SIGINT and _terminal_sent_it():
        return
    if signum == signal.SIGHUP:
        on_hangup()
    send(signum)


def _terminal_sent_it() -> bool:
    """True when our process group is the terminal's foreground group (Ctrl-C reached all)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)
