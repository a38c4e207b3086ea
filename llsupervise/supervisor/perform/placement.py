"""Where the threads that serve the child run, so that answering it stays cheap.

Every trapped syscall is a round trip between a child thread and a serving thread. With
``SYNC_WAKE_UP`` the notification and a plain reply wake the other side on the waker's own
CPU. Injecting a descriptor (``SECCOMP_IOCTL_NOTIF_ADDFD``) does not: it wakes the child
with an ordinary wake-up, the scheduler picks an idle CPU for it, and on a virtual machine
waking an idle CPU costs tens of µs, more than all the rest of a grant.

So the serving threads live on one CPU (:func:`home_cpu`), and while a descriptor is
injected the child's thread is pinned there too (:func:`borrow`). The injection then
does not answer the syscall: the thread installs the descriptor and waits again, its own
affinity is restored, and only then does the reply (a synchronous wake-up, on our CPU) let
it return to its program, which never sees the borrowed affinity.

Borrowing has its own price: three affinity calls and a second wake-up of the child (the
injection, then the reply), about 10 µs on a busy 2-CPU VM, where no CPU is idle and the
plain injection (``SECCOMP_ADDFD_FLAG_SEND``) costs only its own wake-up. So which way a
descriptor is injected is chosen by what each has cost lately (:class:`Choice`); either
way is correct, placement only affects speed.
"""

from __future__ import annotations

import contextlib
import os


def home_cpu(requested: int | None = None) -> int:
    """The CPU the serving threads use: ``requested`` (``run --same-cpu``), else the first
    one this process may use."""
    if requested is not None:
        return requested
    return min(os.sched_getaffinity(0))


def pin_self(cpu: int | None) -> None:
    """Keep the calling thread (only it) on ``cpu``, if it may run there at all."""
    if cpu is not None:
        with contextlib.suppress(OSError):  # placement only affects speed
            os.sched_setaffinity(0, {cpu})


def borrow(tid: int, cpu: int | None) -> set[int] | None:
    """Let ``tid`` run only on ``cpu``; return its own affinity, for :func:`give_back`, or
    None when nothing was changed.

    Nothing is changed when ``cpu`` is None, when the thread may not run there anyway (its
    own choice is respected), or when it is already bound to one CPU. Every failure (the
    thread exited, a cpuset forbids the CPU) leaves the thread as it was: placement only
    affects speed. The thread must not return to its program before :func:`give_back`:
    what it did then (read its affinity, start a thread that inherits it) would see the
    borrowed one. (Plain functions, not a context manager: this is on every grant.)"""
    if cpu is None:
        return None
    original = _affinity(tid)
    if original is None or cpu not in original or len(original) == 1:
        return None
    try:
        os.sched_setaffinity(tid, (cpu,))
    except OSError:
        return None
    return original


def give_back(tid: int, original: set[int]) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(tid, original)


def _affinity(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except OSError:
        return None


class Choice:
    """Whether to borrow for the next injection: the way that has cost the serving thread
    less lately (a moving average of each one's time, waiting for the child included), and
    one injection in :data:`EXPLORE` the other way, so that a change of load is noticed.
    Shared by the serving threads: a lost update only blurs the averages."""

    #: One injection in this many goes the way that looked dearer.
    EXPLORE = 16

    def __init__(self) -> None:
        #: Recent cost in ns of [injecting directly, borrowing]; 0 until measured.
        self.cost = [0, 0]
        self._count = 0

    def borrowing(self) -> bool:
        self._count += 1
        direct, borrowed = self.cost
        return (borrowed <= direct) != (self._count % self.EXPLORE == 0)

    def took(self, borrowed: bool, ns: int) -> None:
        """An injection took ``ns`` (``borrowed``: with the thread borrowed)."""
        old = self.cost[borrowed]
        self.cost[borrowed] = ns if old == 0 else old + (ns - old) // 8


#: The choice of this process's serving threads (they share one CPU: see home_cpu).
CHOICE = Choice()
