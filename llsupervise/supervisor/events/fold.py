"""Folding repeated denial records of the event log: a program that repeats one refused
request in a loop must not write a log line each time.

The first denial of a kind (same exe, syscall, path, access, decision) is written as it
comes; identical ones within the next ``window`` seconds are only counted, and when the
window closes (seen on a later write, or at the end) one ``folded`` record says how many
there were and how many requests they stood for (their ``count``s added up).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec import Struct

if TYPE_CHECKING:
    from llsupervise.messages import DenialEvent, Event, FoldedEvent


#: Seconds during which identical denials are counted rather than written.
WINDOW = 1.0
#: Kinds of denial followed at once; beyond, the oldest window is closed early.
MAX_KINDS = 4096
#: What makes two denial records the same kind: exe, syscall, path, access, decision.
_Kind = tuple[str, str, str, tuple[str, ...], str]


class _Window(Struct):
    opened: float
    first: DenialEvent
    folded: int = 0
    count: int = 0
    last_ts: float = 0.0


class DenialFolder:
    """Decides which records reach the log; :meth:`take` returns those to write now."""

    def __init__(
        self,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = MAX_KINDS,
    ) -> None:
        self.window = window
        self._clock = clock
        self._max_kinds = max_kinds
        #: Open windows, oldest first.
        self._open: OrderedDict[_Kind, _Window] = OrderedDict()

    def take(self, event: Event) -> list[Event]:
        """The records to write for ``event``: closed windows' summaries, then ``event``
        unless it is folded into an open window."""
        now = self._clock()
        out = self._close_expired(now)
        if event["event"] == "exit":
            out += self.flush()  # what the run folded is told before its end
        if event["event"] != "denial":
            return [*out, event]
        kind = (event["exe"], event["syscall"], event["path"], tuple(event["access"]),
                event["decision"])  # fmt: skip
        window = self._open.get(kind)
        if window is not None:
            window.folded += 1
            window.count += event["count"]
            window.last_ts = event["ts"]
            return out
        if len(self._open) >= self._max_kinds:
            _, oldest = self._open.popitem(last=False)
            out += _summary(oldest)
        self._open[kind] = _Window(now, event)
        return [*out, event]

    def flush(self) -> list[Event]:
        """Close every window (the end of the log)."""
        out = [record for window in self._open.values() for record in _summary(window)]
        self._open.clear()
        return out

    def _close_expired(self, now: float) -> list[Event]:
        out: list[Event] = []
        while self._open:
            kind, window = next(iter(self._open.items()))
            if now - window.opened < self.window:
                break
            del self._open[kind]
            out += _summary(window)
        return out


def _summary(window: _Window) -> list[Event]:
    if not window.folded:
        return []
    first = window.first
    record: FoldedEvent = {
        "event": "folded", "ts": window.last_ts, "pid": first["pid"], "exe": first["exe"],
        "syscall": first["syscall"], "path": first["path"], "access": first["access"],
        "decision": first["decision"], "folded": window.folded, "count": window.count,
    }  # fmt: skip
    return [record]
