"""Commit generations as the serving threads see them: the broker slot and a server, and
how long a server has been busy with its request (see engine.loop's stall watch)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

from llsupervise.landlock import LandlockRuleset
from llsupervise.seccomp import Notification
from llsupervise.supervisor.engine.offload import Offload
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.perform.broker import Broker


class BrokerSlot:
    """The current generation's broker; swapping waits for the operation in flight."""

    def __init__(self, broker: Broker, generation: int) -> None:
        self.lock = threading.Lock()
        self.broker = broker
        self.generation = generation
        #: Called with each new (broker, generation) before the old broker goes away.
        self.on_swap: list[Callable[[Broker, int], None]] = []

    def swap(self, broker: Broker, generation: int) -> None:
        with self.lock:
            old, self.broker, self.generation = self.broker, broker, generation
        for callback in self.on_swap:
            callback(broker, generation)
        old.close()


class Abandoned(Exception):
    """The serving thread was given up on while it waited (its request was answered
    without it, and another thread serves in its place): it must not act any more."""


class Busy:
    """What a serving thread is doing, as its stall watch sees it."""

    __slots__ = ("abandoned", "lock", "notification", "performed", "since")

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
        #: The request in hand, once performed (see :func:`note_performed`): one
        #: performed after the watch answered it is reported as done late.
        self.performed: FsRequest | None = None


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


class Server:
    """One generation's serving thread: restricted like that generation's broker, so the
    requests it performs are judged by the kernel with no hand-off to another thread.

    A server that takes the place of a stalled one (same generation) shares its offload."""

    def __init__(
        self, kernel: LandlockRuleset, generation: int, offload: Offload | None = None
    ) -> None:
        #: The generation's ruleset (its broker's, open until the server has restricted).
        self.kernel = kernel
        self.generation = generation
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)
        self._pipes = threading.Lock()
        #: Set once the previous server has stopped: one server receives at a time.
        self.turn = threading.Event()
        #: Set once it receives no more: it stopped, or was abandoned while stalled.
        self.released = threading.Event()
        self.thread: threading.Thread | None = None
        #: The server registered after this one, which this one hands the turn to.
        self.successor: Server | None = None
        self.busy = Busy()
        #: Where it hands what could block (see perform.blocking).
        self.offload = Offload(kernel, admit=check_not_abandoned) if offload is None else offload

    def wake(self) -> None:
        # Under the lock: an abandoned server closes its own pipes whenever the kernel lets
        # its thread go, and a write after that could reach whatever reused the number.
        with self._pipes, contextlib.suppress(OSError):
            if self.wake_w >= 0:
                os.write(self.wake_w, b"x")

    def close(self) -> None:
        """Close the wake pipe, once: the thread given up on and the loop may both end
        with it, and a number closed twice may be another file's by then."""
        with self._pipes:
            fds, self.wake_r, self.wake_w = (self.wake_r, self.wake_w), -1, -1
            for fd in fds:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
