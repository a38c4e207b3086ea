"""Commit generations as the serving threads see them: the broker slot and a server."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from llsupervise.landlock import LandlockRuleset
from llsupervise.supervisor.engine._fastpath import Receiver
from llsupervise.supervisor.engine.offload import Offload
from llsupervise.supervisor.perform.broker import Broker
from llsupervise.supervisor.perform.stalls import Busy, check_not_abandoned


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


class Server:
    """One generation's serving thread: restricted like that generation's broker, so the
    requests it performs are judged by the kernel with no hand-off to another thread.

    A server that takes the place of a stalled one (same generation) shares its offload."""

    def __init__(
        self,
        kernel: LandlockRuleset,
        generation: int,
        receiver: Receiver,
        offload: Offload | None = None,
    ) -> None:
        #: The generation's ruleset (its broker's, open until the server has restricted).
        self.kernel = kernel
        self.generation = generation
        #: Its compiled receive loop, which answers static opens itself (see engine.loop).
        self.receiver = receiver
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
