"""Bounds on what the program can make the supervisor hold: open questions (per process and
in all) and requests waiting on them.

Each open question holds the checked objects' fds and a front-end prompt; each waiting
request holds its own fds. A program that floods distinct denials (execs, which never wait,
or opens from many threads) must not make the supervisor run out of descriptors or memory:
beyond a bound, a new denial is refused at once, without asking (never granted: a flood
must not become a way past the question), and the event says so.
"""

from __future__ import annotations

from collections import Counter

from msgspec import Struct, field

#: Open questions one process (thread group) may have.
PER_PROCESS = 32
#: Open questions in all.
TOTAL = 256
#: Requests waiting on open questions, in all (each holds a few fds until answered).
WAITING = 1024


class QuestionLimits(Struct):
    per_process: int = PER_PROCESS
    total: int = TOTAL
    waiting: int = WAITING
    _by_pid: Counter[int] = field(default_factory=Counter)
    _open: int = 0
    _waiting: int = 0
    #: Denials refused for being over a bound, since the start.
    refused: int = 0

    def may_open(self, pid: int) -> bool:
        """Whether ``pid`` may have one more question open (then :meth:`opened`)."""
        return self._by_pid[pid] < self.per_process and self._open < self.total

    def may_wait(self) -> bool:
        return self._waiting < self.waiting

    def opened(self, pid: int, waiting: int) -> None:
        self._by_pid[pid] += 1
        self._open += 1
        self._waiting += waiting

    def joined(self) -> None:
        """One more request waits on an open question."""
        self._waiting += 1

    def closed(self, pid: int, waiting: int) -> None:
        """A question of ``pid`` with ``waiting`` requests was answered."""
        self._by_pid[pid] -= 1
        self._open -= 1
        if self._by_pid[pid] <= 0:
            del self._by_pid[pid]
        self._waiting -= waiting

    def clear(self) -> None:
        self._by_pid.clear()
        self._open = self._waiting = 0
