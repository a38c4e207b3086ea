"""The denial feed: denials coalesced by (program, access, object), newest first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from msgspec import Struct, field

from llsupervise.messages import DenialEvent

FeedKey = tuple[str, tuple[str, ...], str]

#: Answer runs a feed row remembers.
HISTORY = 8


class FeedEntry(Struct):
    exe: str
    access: tuple[str, ...]
    path: str
    syscall: str
    pid: int
    #: How many requests were denied (a denial event may stand for several).
    count: int
    first_seen: float
    last_seen: float
    #: The answer the last one got (``deny``, ``allow_once``, ...).
    decision: str
    next_run_only: bool = False
    #: Every answer the row was given, oldest first, as [answer, how many in a row] runs
    #: (at most HISTORY runs: the oldest are dropped).
    history: list[list[Any]] = field(default_factory=list)

    def answers(self) -> str:
        """The answers, newest first: ``allow_once ‹ deny×5``."""
        return " ‹ ".join(
            f"{answer}×{n}" if n > 1 else str(answer) for answer, n in reversed(self.history)
        )

    @property
    def key(self) -> FeedKey:
        return (self.exe, self.access, self.path)

    def matches(self, words: list[str]) -> bool:
        haystack = " ".join(
            (self.exe, self.path, " ".join(self.access), self.decision, self.syscall)
        ).lower()
        return all(word in haystack for word in words)


class Feed:
    """Bounded: beyond ``limit`` distinct entries the least recently seen is forgotten."""

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self._entries: OrderedDict[FeedKey, FeedEntry] = OrderedDict()
        #: Denied requests seen in all, forgotten entries included.
        self.total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, event: DenialEvent) -> FeedEntry:
        """Fold one ``denial`` event in; return its entry."""
        access = tuple(event["access"])
        key: FeedKey = (event["exe"], access, event["path"])
        count, ts = event["count"], event["ts"]
        self.total += count
        entry = self._entries.pop(key, None)
        if entry is None:
            entry = FeedEntry(
                exe=key[0], access=access, path=key[2], syscall=event["syscall"],
                pid=event["pid"], count=0, first_seen=ts, last_seen=ts, decision="",
            )  # fmt: skip
        entry.count += count
        entry.last_seen = max(entry.last_seen, ts)
        entry.pid = event["pid"]
        entry.syscall = event["syscall"]
        entry.decision = event["decision"]
        if event.get("unbound"):
            # In force for this run, but its path now leads elsewhere: not in the policy file.
            entry.decision += ", path moved: not saved"
        if entry.history and entry.history[-1][0] == entry.decision:
            entry.history[-1][1] += count
        else:
            entry.history.append([entry.decision, count])
            del entry.history[:-HISTORY]
        entry.next_run_only = event.get("next_run_only", False)
        self._entries[key] = entry  # most recently seen last
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
        return entry

    def entries(self, filter_text: str = "", limit: int | None = None) -> list[FeedEntry]:
        """Newest first; ``filter_text``: every word must occur (case-insensitive)."""
        words = filter_text.lower().split()
        out: list[FeedEntry] = []
        for entry in reversed(self._entries.values()):
            if not words or entry.matches(words):
                out.append(entry)
                if limit is not None and len(out) >= limit:
                    break
        return out
