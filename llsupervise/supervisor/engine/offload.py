"""Requests a serving thread may not perform (they could wait for ever: see
perform.blocking) run here, in worker threads restricted like the generation's, each with a
deadline: past it the program is answered (an errno, and an event says why) and the
worker, still stuck in the kernel, is left behind; later requests go to other workers.

A job is answered once: by its worker, which claims it after performing and before
replying, or by the watchdog at the deadline. A worker that finishes after the deadline
drops what it got (closes an opened fd); what it did stays done (a directory made late on a
FUSE mount exists, though the program was told EIO): the kernel offers no way to take back
an operation a filesystem finished late, so the handler logs it ("done late").
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from llsupervise.landlock import LandlockRuleset
from llsupervise.seccomp import refuse_signals
from llsupervise.supervisor.perform.broker import restrict_thread
from llsupervise.supervisor.perform.placement import pin_self

#: Seconds a request may take on a filesystem that may block before the program is answered
#: without it. A slow network filesystem gets this long; a dead one costs this much per call.
DEADLINE_SECONDS = 10.0
#: Workers per generation. When every one is busy (stuck, or slow), requests queue, and those
#: not started by their deadline are answered then.
MAX_WORKERS = 8


class Job:
    """One request handed over: ``run(job)`` performs it and answers it if ``job.claim()``;
    ``expire(started)`` answers it at the deadline (and, not ``started``, releases it)."""

    __slots__ = ("_offload", "claimed", "deadline", "expire", "run", "started")

    def __init__(self, run: Callable[[Job], None], expire: Callable[[bool], None]) -> None:
        self.run = run
        self.expire = expire
        self.deadline = 0.0
        self.claimed = False
        self.started = False
        self._offload: Offload | None = None

    def claim(self) -> bool:
        """True for the one caller that may answer the request."""
        assert self._offload is not None
        return self._offload._claim(self)


class Offload:
    """The workers of one generation, and a watchdog for their deadlines."""

    def __init__(
        self,
        kernel: LandlockRuleset | None,
        cpu: int | None = None,
        deadline: float | None = None,
        workers: int | None = None,
        admit: Callable[[], None] | None = None,
    ) -> None:
        self.kernel = kernel
        #: Called by :meth:`submit` before anything: may raise to refuse the job.
        self.admit = admit
        self.cpu = cpu
        self.deadline = DEADLINE_SECONDS if deadline is None else deadline
        self.limit = MAX_WORKERS if workers is None else workers
        self._cond = threading.Condition()
        self._queued: collections.deque[Job] = collections.deque()
        #: Every job not yet answered, in deadline order (deadlines grow with submission).
        self._timed: collections.deque[Job] = collections.deque()
        self._workers = 0
        self._idle = 0
        self._closed = False
        self._watchdog: threading.Thread | None = None
        #: Jobs answered at their deadline (the watchdog's count).
        self.expired = 0

    def submit(self, job: Job) -> None:
        """Queue ``job``; called by the serving thread, while its generation's ruleset is open
        (a new worker restricts itself with it before this returns).

        ``admit`` may refuse by raising: a serving thread the stall watch gave up on (its
        request answered without it) hands nothing over once the kernel lets it go, or a
        worker would perform it, or ask the person about it, long after."""
        if self.admit is not None:
            try:
                self.admit()
            except BaseException:
                job.expire(False)  # released; its answer fails: it was answered without it
                raise
        with self._cond:
            if self._closed:
                raise RuntimeError("offload closed")
            job._offload = self
            job.deadline = time.monotonic() + self.deadline
            self._queued.append(job)
            self._timed.append(job)
            spawn = len(self._queued) > self._idle and self._workers < self.limit
            if spawn:
                self._workers += 1
            self._cond.notify_all()
        if spawn:
            self._spawn()
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        with self._cond:
            if self._watchdog is not None:
                return
            self._watchdog = threading.Thread(
                target=self._watch, name="offload-watchdog", daemon=True
            )
        self._watchdog.start()

    def _spawn(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                refuse_signals()  # it may inject descriptors (see seccomp.refuse_signals)
                pin_self(self.cpu)
                restrict_thread(self.kernel)
            except BaseException as exc:  # reported to the submitter
                failure.append(exc)
                ready.set()
                with self._cond:
                    self._workers -= 1
                return
            ready.set()
            self._work()

        threading.Thread(target=main, name="offload-worker", daemon=True).start()
        ready.wait()
        if failure:
            raise failure[0]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queued:
                    if self._closed:
                        self._workers -= 1
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                job = self._queued.popleft()
                if job.claimed:
                    continue  # answered at its deadline before it started
                job.started = True
            job.run(job)

    def _claim(self, job: Job) -> bool:
        with self._cond:
            if job.claimed:
                return False
            job.claimed = True
            self._cond.notify_all()
            return True

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._timed and self._timed[0].claimed:
                    self._timed.popleft()
                if self._closed and not self._timed:
                    return
                if not self._timed:
                    self._cond.wait()
                    continue
                job = self._timed[0]
                wait = job.deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._timed.popleft()
                job.claimed = True
                started = job.started
                if not started:
                    self._queued.remove(job)
                self.expired += 1
                self._cond.notify_all()
            job.expire(started)

    def hand_over(self, successor: Offload) -> int:
        """A commit: jobs not started yet go to ``successor`` (the new generation's, whose
        workers are restricted with the rules now in force), with their deadlines; the count.

        Jobs already started are not waited for: each is in the kernel, like a call the
        program made itself just before the commit (waiting could take a whole deadline,
        in whatever thread commits)."""
        with self._cond:
            moved = [job for job in self._queued if not job.claimed]
            self._queued.clear()
            for job in moved:
                self._timed.remove(job)
            self._cond.notify_all()
        if not moved:
            return 0
        with successor._cond:
            for job in moved:
                job._offload = successor
            successor._queued.extendleft(reversed(moved))
            successor._timed.extendleft(reversed(moved))  # deadlines earlier than its own
            spawn = min(len(successor._queued) - successor._idle,
                        successor.limit - successor._workers)  # fmt: skip
            spawn = max(spawn, 0)
            successor._workers += spawn
            successor._cond.notify_all()
        for _ in range(spawn):
            successor._spawn()
        successor._start_watchdog()
        return len(moved)

    def close(self) -> None:
        """Let idle workers end; workers stuck in the kernel end when (if) it lets them go.
        Jobs not answered yet are still answered at their deadline."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
