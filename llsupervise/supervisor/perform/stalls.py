"""Threads that serve the program's requests and that the kernel may hold: what each is
doing, as a stall watch sees it, and how one given up on knows to act no more.

A serving thread never waits on purpose, but the kernel can make it: reading the path or
address a program passes faults in the page that holds it, and a page of a file on a FUSE
mount whose server hangs never comes. A watch (engine.loop's for the serving threads,
net.pool's for the network helper) gives up on a thread that holds one request longer than
``STALL_SECONDS``, answers that request without it, and starts another in its place.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from llsupervise.seccomp import Notification
from llsupervise.supervisor.engine.requests import FsRequest

#: Seconds one request may hold a serving thread before its watch gives up on the thread.
#: A request is served in microseconds, or handed over (to a worker, or to trio), so this
#: long means the kernel holds the thread.
STALL_SECONDS = 5.0
#: Threads given up on (by one watch) and still stuck in the kernel, at most: each holds a thread
#: and two pipes. Past it, a stalled thread is waited for, as the kernel would (unless a
#: commit or the loop's end waits for it: giving up on it then adds no thread). One the
#: kernel lets go counts no more (else a program whose slow server answers, each time
#: after the watch gave up, would use the budget up in 32 stalls, and stall everyone after).
MAX_ABANDONED = 32


class Abandoned(Exception):
    """The serving thread was given up on while it waited (its request was answered
    without it, and another thread serves in its place): it must not act any more."""


class Busy:
    """What a serving thread is doing, as its stall watch sees it."""

    __slots__ = ("abandoned", "answer", "lock", "notification", "performed", "since")

    def __init__(self) -> None:
        #: Held by the thread as it finishes a request, and by the watch as it gives up on
        #: one: so the watch never answers a request the thread has moved past.
        self.lock = threading.Lock()
        #: When the request in hand was received (monotonic), 0.0 while idle or waiting on
        #: purpose (see :func:`waiting_on_purpose`).
        self.since = 0.0
        self.notification: Notification | None = None
        #: Set by the watch: the request was answered without this thread.
        self.abandoned = False
        #: How the watch answers the request in hand, where the thread's owner has no
        #: notification to give (the network helper's calls).
        self.answer: Callable[[], None] | None = None
        #: The request in hand, once performed (see :func:`note_performed`): one
        #: performed after the watch answered it is reported as done late.
        self.performed: FsRequest | None = None

    def begin(
        self, notification: Notification | None = None, answer: Callable[[], None] | None = None
    ) -> None:
        """The thread takes a request in hand (what the watch answers it with, if it must)."""
        self.notification = notification
        self.answer = answer
        self.performed = None
        self.since = time.monotonic()

    def finish(self) -> bool:
        """The thread is done with its request; whether it was given up on meanwhile (then
        it must act no more, and end)."""
        with self.lock:
            self.since = 0.0
            self.notification = None
            self.answer = None
            return self.abandoned


_thread = threading.local()


def watched_as(busy: Busy) -> None:
    """The calling thread is a serving thread described by ``busy``."""
    _thread.busy = busy


def check_not_abandoned() -> None:
    """After a call that may have waited long: raise :class:`Abandoned` if this serving
    thread was given up on meanwhile (a no-op in any other thread)."""
    busy: Busy | None = getattr(_thread, "busy", None)
    if busy is not None and busy.abandoned:
        raise Abandoned


def note_performed(request: FsRequest) -> None:
    """The calling serving thread performed ``request`` (a no-op in any other thread): the
    kernel may have held the operation itself (a mkdir waits for its directory's lock, which
    a program can keep held by listing that directory into a page of a hung FUSE file), and
    an operation cannot be called back once the watch has answered the program without it."""
    busy: Busy | None = getattr(_thread, "busy", None)
    if busy is not None:
        busy.performed = request


@contextlib.contextmanager
def waiting_on_purpose() -> Iterator[None]:
    """A wait the design asks for (a move held back while trio commits a binding), not a
    stall: the watch does not count it."""
    busy: Busy | None = getattr(_thread, "busy", None)
    if busy is None:
        yield
        return
    since, busy.since = busy.since, 0.0
    try:
        yield
    finally:
        if since:
            busy.since = time.monotonic()
    check_not_abandoned()
