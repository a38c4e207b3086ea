"""The notification loop: plain threads that answer every trapped syscall.

Requests are served without trio by a thread restricted like the current generation's
broker, which performs them itself (or, for what only the child's own context can name,
lets the kernel decide through CONTINUE): see :mod:`.handler`. Only denials cross over to
trio, through ``on_denial``; the loop then goes on serving other requests while the denied
one waits. This module holds the threads' lifetime and the hand-over between generations.

The wait, the receipt and the answer of an open or an exec the static layer alone allows
(CONTINUE) are compiled (``_fastpath.Receiver``): they run without the interpreter lock, so
such a request is answered while trio or another thread holds it, and costs no Python; a
thread we keep no memory reader for gets one from a compiled unrestricted thread (the
readers' opener), so a new process costs no Python either. Every other request comes back
here as a :class:`Notification`.

The receiving itself is done by compiled helper threads, two per CPU (see
:func:`helper_groups`), started by the serving thread once its turn has come, so they inherit
its restriction (not its one CPU: each pair keeps to its own): two of the program's threads
trapped at once on two CPUs are answered at once, each on its own CPU, and a request Python
handles holds up no other. What they hand
to Python waits in one queue (``_fastpath.Handoff``) for whichever serving thread is current;
a serving thread stops its helpers, and waits until they have ended, before it hands over
its turn.

A serving thread never waits on purpose, but the kernel can make it: reading the path a
program passes from its memory faults in that page, and a page of a file on a FUSE mount
whose server hangs never comes (nor does a dead NFS server answer a revalidation). So a
watch gives up on a serving thread that holds one request longer than ``STALL_SECONDS``: it
answers that request without it (``EIO``, an exec ``CONTINUE``), logs a ``stall`` event, and
starts another thread of the same generation in its place. The stuck thread, if the kernel
ever lets it go, acts no more (see ``generations.check_not_abandoned``) and ends.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from llsupervise.rights import AccessFs
from llsupervise.seccomp import (
    AUDIT_ARCH,
    SYSCALLS,
    Listener,
    Notification,
    NotificationGone,
    native_arch,
    refuse_signals,
)
from llsupervise.supervisor.engine import _fastpath
from llsupervise.supervisor.engine.childfds import SWEEP_SECONDS, ChildFds, open_child_fd
from llsupervise.supervisor.engine.contexts import ThreadContexts
from llsupervise.supervisor.engine.created import Creation
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.generations import BrokerSlot, Server
from llsupervise.supervisor.engine.grants import compiled_grants, take_performed
from llsupervise.supervisor.engine.handler import RequestHandler, answer_unread
from llsupervise.supervisor.engine.pending import Pending
from llsupervise.supervisor.engine.reports import OnExec, OnStall
from llsupervise.supervisor.perform import stalls
from llsupervise.supervisor.perform.blocking import serve_inline
from llsupervise.supervisor.perform.broker import Broker, BrokerClosed, restrict_thread
from llsupervise.supervisor.perform.guard import Guard
from llsupervise.supervisor.perform.operations import Target
from llsupervise.supervisor.perform.placement import home_cpu, pin_self
from llsupervise.supervisor.perform.stalls import (
    Abandoned,
    check_not_abandoned,
    note_performed,
    watched_as,
)
from llsupervise.supervisor.rules.created import CreatedIndex
from llsupervise.supervisor.rules.uses import PerformedLog

if TYPE_CHECKING:  # loaded only when the policy handles the network (see core)
    from llsupervise.supervisor.net.mediator import NetMediator

T = TypeVar("T")

#: At most this many helper threads receive for a serving thread.
#: How soon the helpers of a CPU held up where they lent no turn get another receiving (see
#: ``Receiver.keep_receiving``): the watch looks at least this often.
KEEP_RECEIVING_SECONDS = 0.25


def helper_groups(cpu: int | None) -> int:
    """How many groups of helper threads receive for a serving thread (two threads each, one
    group per CPU, the compiled side caps it): none when the loop keeps to one CPU
    (``--same-cpu``: the calling thread receives itself), else one per CPU we may use.
    Measured on a 2-vCPU VM against three helpers on any CPU: two concurrent openers of a
    static file took 20-22 µs an open, against 35-37 (one opener 19-20 against 21); of a
    granted file 39-45 µs against 39-47 (one opener 36-38 against 28); make -j2 0.2-0.3 s
    less."""
    if cpu is not None:
        return 0
    return len(os.sched_getaffinity(0))


class WatchedPerformedLog(PerformedLog):
    """The handler's log of performed requests, which also tells the serving thread's watch
    (see generations.note_performed)."""

    def note(self, target: Target) -> None:
        super().note(target)
        note_performed(target.request)



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
        # Tells each serving thread what it performed (a held one may perform late).
        self.handler.performed = WatchedPerformedLog()
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._stopping = False
        self._done = threading.Event()
        self._unrestricted: Broker | None = None
        #: Told of each request answered without its stalled serving thread.
        self.on_stall = on_stall
        #: Servers whose thread runs and may still receive (at most two: the one whose turn
        #: it is, and a newer one waiting for it).
        self._live: list[Server] = []
        #: Given up on while stalled (their threads may never end); unrestricted workers
        #: replaced while stalled likewise.
        self._abandoned: list[Server] = []
        #: The unrestricted worker each abandoned server was stuck in, replaced; closed when
        #: that server's thread ends, if it is idle by then (else left, like the thread).
        self._stalled_workers: dict[Server, Broker] = {}
        self._left_workers: list[Broker] = []
        #: Why :meth:`run` stopped early, if it did; the supervisor reports it.
        self.failure: BaseException | None = None
        self._table = fast.table if fast is not None else None
        #: Granted opens performed by the compiled loop (see engine.grants).
        self._guard = guard
        self._grants = compiled_grants(guard)
        #: What the helper threads of every generation hand to Python.
        self._handoff = _fastpath.Handoff()
        # With nothing the compiled loop answers, helpers would only pass every request on.
        answers = self._table is not None or self._grants is not None
        self._helper_groups = helper_groups(cpu) if answers else 0
        #: Told (with the pid) when the program adds a Landlock layer of its own.
        self.on_own_layer: Callable[[int], None] | None = None
        self.handler.on_own_layer = self._own_layer

    def _receiver(self) -> _fastpath.Receiver:
        """A serving thread's compiled receive loop."""
        arch = native_arch()
        numbers = SYSCALLS[arch]
        return _fastpath.Receiver(
            self.listener.fileno(), AUDIT_ARCH[arch], numbers.get("open", -1),
            numbers["openat"], self._table, self._contexts.readers, self._grants,
            numbers["execve"], self._handoff,
        )  # fmt: skip

    def _own_layer(self, pid: int) -> None:
        """Nothing is performed for the program any more: the compiled loop first."""
        if self._grants is not None:
            self._grants.disable()
        if self.handler.net is not None:
            self.handler.net.own_layer()
        if self.on_own_layer is not None:
            self.on_own_layer(pid)

    @property
    def performed(self) -> collections.deque[tuple[bytes, float]]:
        """(path as the child named it, absolute; time) of each request a server performed:
        the supervisor counts them against its rules."""
        entries = self.handler.performed.entries
        take_performed(self._grants, entries)
        return entries

    # -- lifetime -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until every supervisee is gone or :meth:`stop` is called. The calling thread
        takes no signal from then on (see seccomp.refuse_signals): never the main thread."""
        refuse_signals()
        self._unrestricted = Broker(None, "supervisor-proc", self.cpu)
        # From this thread, which has our own standing, like the worker above.
        self._contexts.readers.start_opener(self.cpu)
        self.slot.on_swap.append(self._switch)
        with self.slot.lock:
            self._start(self.slot.broker, self.slot.generation)
        threading.Thread(target=self._watch_stalls, name="stall-watch", daemon=True).start()
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
        if self._grants is not None and self._guard is not None:
            with contextlib.suppress(ValueError):
                self._guard.followers.remove(self._grants.protect)
        with contextlib.suppress(ValueError):
            self.slot.on_swap.remove(self._switch)
        server = self._server
        stuck = False
        if server is not None and server.thread is not None:
            server.wake()
            server.turn.set()
            if not server.busy.abandoned:  # given up on while stopping: no use waiting
                server.thread.join(stalls.STALL_SECONDS)
            stuck = server.thread.is_alive()  # held by the kernel: left as abandoned ones are
            if not stuck and not server.busy.abandoned:
                server.close()  # else its thread does, when (if) it ends
        if server is not None:
            server.offload.close()
        if stuck or any(
            (s.thread is not None and s.thread.is_alive()) or s.receiver.holding
            for s in self._abandoned
        ):
            return  # a stuck thread may still use the caches and the worker when let go
        self._handoff.close()
        self._contexts.close()
        self._child_fds.close()
        if self._grants is not None:
            take_performed(self._grants, self.handler.performed.entries)  # still to count
            self._grants.close()
        if self._unrestricted is not None:
            self._unrestricted.close()

    def _start(self, broker: Broker, generation: int) -> Server | None:
        """Start a server for ``generation``; it waits for its turn before receiving."""
        assert broker.kernel is not None
        server = Server(broker.kernel, generation, self._receiver())
        server.offload.cpu = self.cpu
        with self._lock:
            previous = self._register(server)
        self._launch(server, previous)
        return previous

    def _register(self, server: Server) -> Server | None:
        """Make ``server`` the newest; called with ``self._lock`` held. Its turn comes from
        the previous server, or at once when there is none (or it was given up on)."""
        previous, self._server = self._server, server
        self._live.append(server)
        if previous is None or previous.busy.abandoned:
            server.turn.set()
        else:
            previous.successor = server
        return previous

    def _launch(self, server: Server, previous: Server | None) -> None:
        ready: threading.Event = threading.Event()
        server.thread = threading.Thread(
            target=self._serve, args=(server, ready),
            name=f"notifications-g{server.generation}", daemon=True,
        )  # fmt: skip
        server.thread.start()
        ready.wait()
        if previous is not None:
            previous.wake()  # it sees a newer server, and hands over its turn

    def _switch(self, broker: Broker, generation: int) -> None:
        """A commit: the new generation's server takes over once the old one has finished
        the request in flight, so no request is served with revoked rules after this."""
        with self._lock:
            if self._stopping or self._done.is_set() or self._server is None:
                return
        previous = self._start(broker, generation)
        if previous is not None and previous.thread is not None:
            previous.released.wait()
            # What it handed over and no worker has started is performed under the new
            # rules; what a worker has started is, like a call in flight, not waited for.
            with self._lock:
                current = self._server
                abandoned = previous.busy.abandoned
            if current is not None and current.offload is not previous.offload:
                previous.offload.hand_over(current.offload)
                previous.offload.close()
            if not abandoned:
                previous.thread.join()
                previous.close()

    def _serve(self, server: Server, ready: threading.Event) -> None:
        try:
            refuse_signals()  # it injects descriptors (also in the compiled loop's send_fd)
            pin_self(self.cpu)
            restrict_thread(server.kernel)
            serve_inline()
            watched_as(server.busy)
        except BaseException as exc:
            self.failure = exc
            ready.set()
            self._done.set()
            return
        ready.set()
        server.turn.wait()
        failure: BaseException | None = None
        try:
            handed_over = self._receive(server)
        except Abandoned:
            handed_over = True
        except BaseException as exc:
            failure = exc
            handed_over = False
        with self._lock:
            abandoned = server.busy.abandoned
            if server in self._live:
                self._live.remove(server)
        server.released.set()
        if abandoned:
            server.close()  # no one else does: no one waits for this thread
            self._forget(server)
            return
        if failure is not None:
            self.failure = failure
        if not handed_over:
            self._done.set()
            with self._lock:
                successor = self._server
            if successor is not server and successor is not None:
                # A commit raced with the end: let the newer server see it and end too.
                successor.wake()
                successor.turn.set()

    def _receive(self, server: Server) -> bool:
        """Serve until stopped; True when stopped to hand over to a newer generation. The
        helpers receive from now on, and have stopped when it returns.

        None start when the server is woken already: a stalled server's replacement, launched
        after a commit had registered a newer one (that commit did not wait for it), would
        otherwise let them serve with the old rules before it sees the wake."""
        if not _readable(server.wake_r):
            server.receiver.start_helpers(self._helper_groups)
        try:
            return self._receive_handed(server)
        finally:
            server.receiver.stop_helpers()

    def _receive_handed(self, server: Server) -> bool:
        receiver = server.receiver
        sweep_ms = int(SWEEP_SECONDS * 1000)
        busy = server.busy
        while True:
            # Idle while keeping child dirfds: let go of those no longer named.
            got = receiver.next(server.wake_r, sweep_ms if self._child_fds else -1)
            if got == _fastpath.TIMEOUT:
                self._child_fds.sweep()
                continue
            if got == _fastpath.WOKEN:
                with self._lock:
                    successor = self._server
                    stopping = self._stopping
                if stopping or successor is server or successor is None:
                    return False
                receiver.stop_helpers()  # none of ours receives once the next one's turn comes
                successor.turn.set()
                return True
            if got == _fastpath.HUNG_UP:
                return False  # every supervisee is gone
            if not isinstance(got, bytes):
                raise Abandoned  # held in the compiled loop, and given up on meanwhile
            n = Notification.unpack(got)
            with busy.lock:  # the watch gives up under it: it has n, or we have, never neither
                if not receiver.taken():
                    raise Abandoned  # given up on meanwhile: n was queued again, or answered
                busy.begin(n)
            try:
                self.handler.handle(n, server.generation, server.offload)
            except NotificationGone:
                pass
            finally:
                abandoned = busy.finish()
            if abandoned:
                if busy.performed is not None:
                    self.handler.report_late(n, busy.performed)
                return True

    def _call_unrestricted(self, fn: Callable[[], T]) -> T:
        while True:
            worker = self._unrestricted
            assert worker is not None
            try:
                result = worker.call(fn)
            except BrokerClosed:
                if worker is self._unrestricted:
                    raise
                continue  # a stalled worker, replaced and closed since we took it: not run
            check_not_abandoned()  # it may have waited long: a stalled thread acts no more
            return result

    # -- stalls ---------------------------------------------------------------------------

    def _watch_stalls(self) -> None:
        """Give up on a serving thread that holds one request too long (see the module)."""
        refuse_signals()  # they go to the main thread, where Python handles them
        # Watching on while stopping: a stalled newest server would otherwise keep run()
        # (and the supervisor's exit) waiting for as long as the kernel holds it.
        while not self._done.wait(min(stalls.STALL_SECONDS / 4, KEEP_RECEIVING_SECONDS)):
            now = time.monotonic()
            with self._lock:
                live = list(self._live)
            for server in live:
                since = _held_since(server)
                if not since:
                    continue
                # One held up: the others of its group serve meanwhile (also while a stall is
                # not given up on, the budget spent).
                server.receiver.keep_receiving()
                if now - since > stalls.STALL_SECONDS:
                    self._abandon(server)

    def _abandon(self, server: Server) -> None:
        busy = server.busy
        with self._lock, busy.lock:
            since = _held_since(server)
            stopping = self._stopping
            # No thread replaces it when stopping, or when a newer generation's waits for
            # its turn (a commit, which waits for it in trio's thread): the budget is not
            # spent then, so a commit is never held for longer than a stall.
            free = stopping or server.successor is not None
            if (not since or time.monotonic() - since <= stalls.STALL_SECONDS or busy.abandoned
                    or (len(self._abandoned) >= stalls.MAX_ABANDONED and not free)):  # fmt: skip
                return
            busy.abandoned = True
            # Whatever its threads hold, they act no more: what its Python thread holds, and
            # what its compiled threads have held too long, is answered here; what they
            # held for less is queued again for the thread that takes its place.
            held = [Notification.unpack(got) for got in server.receiver.abandon(
                stalls.STALL_SECONDS)]  # fmt: skip
            if busy.notification is not None:
                held.append(busy.notification)
            self._abandoned.append(server)
            self._live.remove(server)
            successor = server.successor
            replacement = None
            if successor is None and not stopping:
                # It was the newest: another thread of its generation takes its place (its
                # broker, and so its ruleset, lives until a newer server has taken over).
                replacement = Server(
                    server.kernel, server.generation, self._receiver(), server.offload
                )
                self._register(replacement)
            worker = self._unrestricted
            if worker is not None and worker.busy() and not stopping:
                # Stalled inside the unrestricted worker: the others get a new one.
                self._stalled_workers[server] = worker
                self._unrestricted = Broker(None, "supervisor-proc", self.cpu)
        server.released.set()
        server.wake()
        if successor is not None:
            successor.turn.set()
        if replacement is not None:
            self._launch(replacement, None)
        for n in held:
            self._answer_stalled(n)
        if stopping and successor is None:
            self._done.set()  # it was the newest: nothing serves any more, as stop() asked

    def _forget(self, server: Server) -> None:
        """An abandoned server's thread ended (the kernel let it go): it counts no more."""
        with self._lock:
            if server in self._abandoned:
                self._abandoned.remove(server)
            worker = self._stalled_workers.pop(server, None)
        if worker is not None:
            if worker.busy():
                self._left_workers.append(worker)  # held for another caller: left behind
            else:
                worker.close()

    def _answer_stalled(self, n: Notification) -> None:
        try:
            outcome = answer_unread(self.listener, n)
        except NotificationGone:
            return
        if self.on_stall is not None:
            self.on_stall(n, None, outcome)


def _readable(fd: int) -> bool:
    poller = select.poll()  # not select(): our descriptors may number more than 1024
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _held_since(server: Server) -> float:
    """Since when ``server``'s threads hold the oldest request in hand, in Python or in its
    compiled loop (time.monotonic); 0.0 while they hold none. The oldest: a Python thread
    kept busy with new requests must not hide a helper held for long."""
    return min(filter(None, (server.busy.since, server.receiver.held_since())), default=0.0)
