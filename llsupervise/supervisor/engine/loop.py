"""The notification loop: plain threads that answer every trapped syscall.

Requests are served without trio by a thread restricted like the current generation's
broker, which performs them itself (or, for what only the child's own context can name,
lets the kernel decide through CONTINUE): see :mod:`.handler`. Only denials cross over to
trio, through ``on_denial``; the loop then goes on serving other requests while the denied
one waits. This module holds the threads' lifetime and the hand-over between generations.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import select
import threading
from collections.abc import Callable
from typing import TypeVar

from llsupervise.rights import AccessFs
from llsupervise.seccomp import Listener, NotificationGone, SeccompError, SuperviseesGone
from llsupervise.supervisor.engine.childfds import SWEEP_SECONDS, ChildFds, open_child_fd
from llsupervise.supervisor.engine.contexts import ThreadContexts
from llsupervise.supervisor.engine.created import Creation
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.generations import BrokerSlot, Server
from llsupervise.supervisor.engine.handler import RequestHandler
from llsupervise.supervisor.engine.pending import Pending
from llsupervise.supervisor.engine.reports import OnExec, OnStall
from llsupervise.supervisor.net.mediator import NetMediator
from llsupervise.supervisor.perform.blocking import serve_inline
from llsupervise.supervisor.perform.broker import Broker, restrict_thread
from llsupervise.supervisor.perform.guard import Guard
from llsupervise.supervisor.perform.placement import home_cpu, pin_self
from llsupervise.supervisor.rules.created import CreatedIndex

T = TypeVar("T")


class NotificationLoop:
    """Receives and answers every trapped syscall, in a thread per commit generation.

    Each generation's thread restricts itself with that generation's rules (static ∪
    committed), then receives, decodes and performs requests itself. What needs the
    supervisor's own standing — opening the child's /proc entries (its memory, cwd and
    dirfds) — is handed to one unrestricted worker: a restricted thread may not open the
    /proc entries of a process outside its Landlock domain.
    """

    def __init__(
        self,
        listener: Listener,
        slot: BrokerSlot,
        handled_fs: AccessFs,
        on_denial: Callable[[Pending], None],
        on_exec: OnExec | None = None,
        fast: StaticPrefixes | None = None,
        net: NetMediator | None = None,
        cpu: int | None = None,
        guard: Guard | None = None,
        created: Callable[[], CreatedIndex] | None = None,
        on_created: Callable[[Creation], None] | None = None,
        on_stall: OnStall | None = None,
    ) -> None:
        #: The CPU the loop's threads run on (see placement).
        self.cpu = home_cpu(cpu)
        self.listener = listener
        self.slot = slot
        self._child_fds = ChildFds(
            lambda tid, fd: self._call_unrestricted(lambda: open_child_fd(tid, fd))
        )
        self._contexts = ThreadContexts(self._call_unrestricted)
        self.handler = RequestHandler(
            listener, handled_fs, self._contexts, self._child_fds, on_denial, on_exec, fast,
            net, self.cpu, guard, created, on_created, on_stall,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._stopping = False
        self._done = threading.Event()
        self._unrestricted: Broker | None = None
        #: Why :meth:`run` stopped early, if it did; the supervisor reports it.
        self.failure: BaseException | None = None

    @property
    def performed(self) -> collections.deque[tuple[bytes, float]]:
        """(path as the child named it, absolute; time) of each request a server performed:
        the supervisor counts them against its rules."""
        return self.handler.performed.entries

    # -- lifetime -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until every supervisee is gone or :meth:`stop` is called."""
        self._unrestricted = Broker(None, "supervisor-proc", self.cpu)
        self.slot.on_swap.append(self._switch)
        with self.slot.lock:
            self._start(self.slot.broker, self.slot.generation)
        self._done.wait()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe to call from any thread, any number of times."""
        with self._lock:
            self._stopping = True
            server = self._server
        if server is not None:
            server.wake()
            server.turn.set()  # a server still waiting for its turn sees the stop at once
        else:
            self._done.set()

    def close(self) -> None:
        """Release the loop's own fds once :meth:`run` has returned."""
        with contextlib.suppress(ValueError):
            self.slot.on_swap.remove(self._switch)
        server = self._server
        if server is not None and server.thread is not None:
            server.wake()
            server.turn.set()
            server.thread.join()
            server.close()
        if server is not None:
            server.offload.close()
        self._contexts.close()
        self._child_fds.close()
        if self._unrestricted is not None:
            self._unrestricted.close()

    def _start(self, broker: Broker, generation: int) -> Server | None:
        """Start a server for ``generation``; it waits for its turn before receiving."""
        assert broker.kernel is not None
        server = Server(broker.kernel, generation)
        server.offload.cpu = self.cpu
        ready: threading.Event = threading.Event()
        server.thread = threading.Thread(
            target=self._serve, args=(server, ready), name=f"notifications-g{generation}",
            daemon=True,
        )  # fmt: skip
        with self._lock:
            previous, self._server = self._server, server
        server.thread.start()
        ready.wait()
        if previous is None:
            server.turn.set()
        else:
            previous.wake()
        return previous

    def _switch(self, broker: Broker, generation: int) -> None:
        """A commit: the new generation's server takes over once the old one has finished
        the request in flight, so no request is served with revoked rules after this."""
        with self._lock:
            if self._stopping or self._done.is_set() or self._server is None:
                return
        previous = self._start(broker, generation)
        if previous is not None and previous.thread is not None:
            previous.thread.join()
            # What it handed over and no worker has started is performed under the new
            # rules; what a worker has started is, like a call in flight, not waited for.
            with self._lock:
                current = self._server
            if current is not None:
                previous.offload.hand_over(current.offload)
            previous.offload.close()
            previous.close()

    def _serve(self, server: Server, ready: threading.Event) -> None:
        try:
            pin_self(self.cpu)
            restrict_thread(server.kernel)
            serve_inline()
        except BaseException as exc:
            self.failure = exc
            ready.set()
            self._done.set()
            return
        ready.set()
        server.turn.wait()
        try:
            handed_over = self._receive(server)
        except BaseException as exc:
            self.failure = exc
            handed_over = False
        if not handed_over:
            self._done.set()
            with self._lock:
                successor = self._server
            if successor is not server and successor is not None:
                # A commit raced with the end: let the newer server see it and end too.
                successor.wake()
                successor.turn.set()

    def _receive(self, server: Server) -> bool:
        """Serve until stopped; True when stopped to hand over to a newer generation."""
        poller = select.poll()
        listener_fd = self.listener.fileno()
        poller.register(listener_fd, select.POLLIN)
        poller.register(server.wake_r, select.POLLIN)
        sweep_ms = int(SWEEP_SECONDS * 1000)
        while True:
            # Idle while keeping child dirfds: let go of those no longer named.
            events = poller.poll(sweep_ms if self._child_fds else None)
            if not events:
                self._child_fds.sweep()
                continue
            if len(events) > 1 or events[0][0] == server.wake_r:
                with self._lock:
                    successor = self._server
                    stopping = self._stopping
                if stopping or successor is server or successor is None:
                    return False
                successor.turn.set()
                return True
            mask = events[0][1]
            if not mask & select.POLLIN:
                return False  # POLLHUP without input: every supervisee is gone
            try:
                n = self.listener.recv()
            except SuperviseesGone:
                return False
            except SeccompError as exc:
                if exc.errno in (errno.EINTR, errno.ENOENT):
                    continue  # the task died between poll and recv
                raise
            try:
                self.handler.handle(n, server.generation, server.offload)
            except NotificationGone:
                pass

    def _call_unrestricted(self, fn: Callable[[], T]) -> T:
        assert self._unrestricted is not None
        return self._unrestricted.call(fn)
