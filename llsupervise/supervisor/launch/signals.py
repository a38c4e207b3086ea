"""Passing the signals a supervisor gets on to the command it runs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import trio

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


async def forward(send: Callable[[int], None], on_hangup: Callable[[], None]) -> None:
    """Send each forwarded signal on; SIGHUP also calls ``on_hangup`` (our terminal is gone)."""
    with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        async for signum in signals:
            if signum == signal.SIGINT and _terminal_sent_it():
                continue  # the child, in our process group, got it too
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
