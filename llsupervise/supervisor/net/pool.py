"""Threads that perform network grants: confined by Landlock, limited to the child's
capabilities, pooled so that a slow connect holds only its own thread.

A thread's Landlock domain and capabilities are per thread and inherited by the threads it
starts, so every performing thread is started by the pool's helper, an unrestricted thread
started with the pool (whose creator must itself be unrestricted); see :meth:`PerformerPool.post`.

The helper reads each call's address from the child's memory, and the kernel can hold that
read (a page of a file on a hung FUSE mount): a watch then gives up on the helper, answers
its call without it, and starts another helper in its place (see perform.stalls). One given
up on hands no job over and asks about nothing once the kernel lets it go.
"""

from __future__ import annotations

import collections
import errno
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from msgspec import Struct

from llsupervise.landlock import LandlockRuleset, set_no_new_privs
from llsupervise.landlock.support import KernelSupport
from llsupervise.policy.model import Ruleset
from llsupervise.rights import NO_FS, NO_SCOPE, AccessNet
from llsupervise.supervisor.perform import stalls
from llsupervise.supervisor.perform.credentials import (
    Credentials,
    lower_capabilities,
    take_for_good,
)
from llsupervise.supervisor.perform.stalls import Abandoned, Busy, check_not_abandoned, watched_as


class NetRules(Struct, frozen=True):
    """The network part of a ruleset: all that bind/connect checks."""

    handled: AccessNet
    ports: tuple[tuple[int, AccessNet], ...]

    @classmethod
    def of(cls, rules: Ruleset) -> NetRules:
        return cls(rules.handled_net, tuple(rules.net.items()))


class ThreadKey(Struct, frozen=True):
    """What a performing thread is restricted to: rules, capabilities kept, and the child's
    credentials where they differ from ours (taken for good: once its capabilities are
    lowered, the thread could not give them back)."""

    rules: NetRules
    caps: int
    credentials: Credentials | None = None


def restrict_thread(key: ThreadKey, support: KernelSupport) -> None:
    """Make the calling thread a performing thread: no signals (a connect must not end in
    EINTR), the child's capabilities at most, and Landlock with ``key.rules``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    if key.credentials is not None:
        take_for_good(key.credentials)
    lower_capabilities(key.caps)
    set_no_new_privs()
    if not key.rules.handled:
        return  # only UNIX sockets are mediated: Landlock has nothing to judge here
    with LandlockRuleset(NO_FS, key.rules.handled, NO_SCOPE, support=support) as ruleset:
        for port, access in key.rules.ports:
            ruleset.add_port(port, access)
        ruleset.restrict_self()


class Job(Protocol):
    """A request to perform in a thread of the pool."""

    def run(self) -> None:
        """Perform and reply; runs in a performing thread and must not raise."""

    def refuse(self, err: int) -> None:
        """Reply ``err`` without performing (no thread, or it could not be confined)."""

    @property
    def done(self) -> bool:
        """Whether the request has been answered or handed on."""


#: Where an idle thread waits for its next job (None: end).
_Inbox = queue.SimpleQueue["Job | None"]
#: A call for the helper, and how to answer it should the kernel hold the helper in it.
_Posted = tuple[Callable[[], None], "Callable[[], None] | None"]


class PerformerPool:
    """Threads restricted per rule set, started on demand, at most ``max_threads`` at once.

    A few idle threads of the current rules wait for the next request; the others end after
    their job. Requests beyond the limit queue until a thread is free.
    """

    def __init__(
        self, support: KernelSupport, current: NetRules, max_threads: int, idle_threads: int
    ) -> None:
        if max_threads < 1:
            raise ValueError("the pool needs at least one thread")
        self.support = support
        self._lock = threading.Lock()
        self._current = current
        self._idle: dict[ThreadKey, list[_Inbox]] = {}
        self._backlog: collections.deque[tuple[ThreadKey, Job]] = collections.deque()
        self._threads = 0
        self._max = max_threads
        self._idle_max = idle_threads
        self._closed = False
        # Unrestricted: started here, by the pool's (unrestricted) creator.
        self._helper: queue.SimpleQueue[_Posted | None] = queue.SimpleQueue()
        self._busy = Busy()
        #: Helpers given up on and still held by the kernel.
        self._abandoned = 0
        self._helper_thread = self._start_helper(self._busy)
        self._watch_ended = threading.Event()
        threading.Thread(target=self._watch, name="net-stall-watch", daemon=True).start()
        #: What went wrong in a pool thread, if anything did (its requests were refused).
        self.failure: BaseException | None = None

    @property
    def threads(self) -> int:
        with self._lock:
            return self._threads

    def submit(self, key: ThreadKey, job: Job) -> None:
        check_not_abandoned()  # a helper given up on performs nothing once let go
        with self._lock:
            if self._closed:
                refused = True
            else:
                refused = False
                idle = self._idle.get(key)
                if idle:
                    idle.pop().put(job)
                    return
                if self._threads >= self._max:
                    self._backlog.append((key, job))
                    return
                self._threads += 1
        if refused:
            job.refuse(errno.EACCES)
        else:
            self._start(key, job)

    def keep(self, current: NetRules) -> None:
        """New current rules: idle threads restricted otherwise end."""
        with self._lock:
            self._current = current
            self._retire(lambda key: key.rules != current)

    def close(self) -> None:
        """End idle threads and refuse queued requests; running jobs finish on their own."""
        with self._lock:
            self._closed = True
            self._retire(lambda key: True)
            backlog = list(self._backlog)
            self._backlog.clear()
            self._helper.put(None)  # after whatever was posted before
        self._watch_ended.set()
        for _key, job in backlog:
            job.refuse(errno.EACCES)

    def _retire(self, stale: Callable[[ThreadKey], bool]) -> None:
        for key in [k for k in self._idle if stale(k)]:
            for inbox in self._idle.pop(key):
                inbox.put(None)
                self._threads -= 1

    def post(self, fn: Callable[[], None], answer: Callable[[], None] | None = None) -> bool:
        """Run ``fn`` in the helper thread, which has the supervisor's own standing (no
        Landlock domain, every capability): it may read the child's /proc entries, and the
        threads it starts are confined only as they confine themselves. Calls run one at a
        time, in order; an exception is kept in :attr:`failure`. ``answer``: how to answer
        the call if the kernel holds the helper in it (see the module).

        False when ``fn`` will not run: the pool is closed."""
        if threading.current_thread() is self._helper_thread:
            self._run(fn)
            return True
        with self._lock:
            if self._closed:
                return False
            self._helper.put((fn, answer))
            return True

    def _start_helper(self, busy: Busy) -> threading.Thread:
        thread = threading.Thread(target=self._help, args=(busy,), name="net-helper", daemon=True)
        thread.start()
        return thread

    def _help(self, busy: Busy) -> None:
        watched_as(busy)
        while (posted := self._helper.get()) is not None:
            fn, answer = posted
            busy.begin(answer=answer)
            try:
                self._run(fn)
            finally:
                abandoned = busy.finish()
            if abandoned:
                with self._lock:
                    self._abandoned -= 1  # let go by the kernel: its place is free again
                return

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Abandoned:
            pass  # answered without it, by the watch
        except Exception as exc:
            self.failure = exc

    def _watch(self) -> None:
        """Give up on a helper that holds one call too long (see the module)."""
        while not self._watch_ended.wait(stalls.STALL_SECONDS / 4):
            busy = self._busy
            with self._lock, busy.lock:
                since = busy.since
                if (not since or time.monotonic() - since <= stalls.STALL_SECONDS
                        or self._abandoned >= stalls.MAX_ABANDONED):  # fmt: skip
                    continue
                busy.abandoned = True
                answer = busy.answer
                self._abandoned += 1
                self._busy = Busy()
                self._helper_thread = self._start_helper(self._busy)
            if answer is not None:
                answer()

    def _start(self, key: ThreadKey, job: Job) -> None:
        if not self.post(lambda: self._spawn(key, job)):
            with self._lock:
                self._threads -= 1
            job.refuse(errno.EACCES)

    def _spawn(self, key: ThreadKey, job: Job) -> None:
        try:
            threading.Thread(
                target=self._work, args=(key, job), name="net-grant", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had: the call fails as the kernel's would
            with self._lock:
                self._threads -= 1
            job.refuse(errno.EAGAIN)

    def _work(self, key: ThreadKey, first: Job) -> None:
        job: Job | None = first
        try:
            restrict_thread(key, self.support)
        except BaseException as exc:
            self.failure = exc
            while job is not None:
                job.refuse(errno.EACCES)  # never performed unrestricted
                job = self._next(key, None)
            return
        inbox: _Inbox = queue.SimpleQueue()
        while job is not None:
            try:
                job.run()
            except Exception as exc:  # a bug: fail closed, keep serving
                self.failure = exc
                if not job.done:
                    job.refuse(errno.EACCES)
            job = self._next(key, inbox)

    def _next(self, key: ThreadKey, inbox: _Inbox | None) -> Job | None:
        """The next job for a thread restricted by ``key``; None: the thread ends."""
        handoff = None
        with self._lock:
            for i, (queued_key, job) in enumerate(self._backlog):
                if queued_key == key:
                    del self._backlog[i]
                    return job
            if self._backlog:
                handoff = self._backlog.popleft()  # this thread's place goes to that job
            elif (
                inbox is not None
                and not self._closed
                and key.rules == self._current
                and len(self._idle.get(key, ())) < self._idle_max
            ):
                self._idle.setdefault(key, []).append(inbox)
            else:
                self._threads -= 1
                return None
        if handoff is not None:
            self._start(*handoff)
            return None
        return inbox.get() if inbox is not None else None
