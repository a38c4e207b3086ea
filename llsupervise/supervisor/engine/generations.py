"""Commit generations as the serving threads see them: the broker slot and a server."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from llsupervise.landlock import LandlockRuleset
from llsupervise.supervisor.engine.offload import Offload
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


class Server:
    """One generation's serving thread: restricted like that generation's broker, so the
    requests it performs are judged by the kernel with no hand-off to another thread."""

    def __init__(self, kernel: LandlockRuleset, generation: int) -> None:
        #: The generation's ruleset (its broker's, open until the server has restricted).
        self.kernel = kernel
        self.generation = generation
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC)
        #: Set once the previous server has stopped: one server receives at a time.
        self.turn = threading.Event()
        self.thread: threading.Thread | None = None
        #: Where it hands what could block (see perform.blocking).
        self.offload = Offload(kernel)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    def close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
