"""The interface draws on the controlling terminal (``/dev/tty``), whatever stdin, stdout and
stderr are: ``llsupervise run -- CMD 2>log`` still shows it, and its questions can be answered.

textual reads keys from standard input and draws on standard error; while the interface runs,
both descriptors are the terminal, and they are put back afterwards, so that what llsupervise
prints once the interface has closed goes where the user sent it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from llsupervise.errors import LLSuperviseError

NEEDS_TERMINAL = (
    "the terminal interface needs a terminal; pass --headless, or --listen SOCKET and "
    "attach from a terminal"
)


def open_terminal() -> int:
    """A descriptor on the controlling terminal, or the one-line error saying what to do."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise LLSuperviseError(NEEDS_TERMINAL) from None
    if not os.isatty(fd):
        os.close(fd)
        raise LLSuperviseError(NEEDS_TERMINAL)
    return fd


@contextlib.contextmanager
def on_terminal(fd: int) -> Iterator[None]:
    """Standard input and error are the terminal ``fd`` inside; as they were afterwards."""
    sys.stderr.flush()
    saved = {target: os.dup(target) for target in (0, 2)}
    try:
        for target in saved:
            os.dup2(fd, target)
        yield
    finally:
        sys.stderr.flush()
        for target, copy in saved.items():
            os.dup2(copy, target)
            os.close(copy)
        os.close(fd)
