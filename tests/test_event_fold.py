"""Folding repeated denials in the event log: fewer records, and every request accounted."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from llsupervise.messages import DenialEvent
from llsupervise.supervisor.events.fold import DenialFolder
from llsupervise.supervisor.events.model import EventLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def denial(path: str, count: int = 1, decision: str = "deny") -> DenialEvent:
    return {"event": "denial", "pid": 7, "tid": 7, "exe": "/bin/x", "syscall": "openat",
            "path": path, "access": ["read_file"], "decision": decision, "count": count,
            "ts": 1.0, "generation": 0}  # fmt: skip


def test_identical_denials_in_a_window_are_one_record_and_a_count() -> None:
    clock = Clock()
    folder = DenialFolder(1.0, clock)
    assert folder.take(denial("/a")) == [denial("/a")]
    assert folder.take(denial("/a", count=3)) == []
    assert folder.take(denial("/a", decision="allow_once")) != []  # another kind
    assert folder.take(denial("/b")) == [denial("/b")]
    clock.now = 1.5
    [summary, again] = folder.take(denial("/a"))
    assert summary["event"] == "folded" and summary["path"] == "/a"
    assert (summary["folded"], summary["count"]) == (1, 3)
    assert again == denial("/a")


def test_what_was_folded_is_told_before_the_exit() -> None:
    folder = DenialFolder(60.0, Clock())
    folder.take(denial("/a"))
    folder.take(denial("/a"))
    records = folder.take({"event": "exit", "pid": 7, "status": 0})
    assert [r["event"] for r in records] == ["folded", "exit"]


def test_the_kinds_followed_at_once_are_bounded() -> None:
    folder = DenialFolder(60.0, Clock(), max_kinds=2)
    for path in ("/a", "/a", "/b", "/c"):
        folder.take(denial(path))
    assert len(folder._open) == 2
    assert folder.flush() == []  # /a's window was closed when /c came: nothing left


KINDS = st.sampled_from(["/a", "/b", "/c"])


@given(st.lists(st.tuples(KINDS, st.integers(1, 5), st.floats(0, 3)), max_size=60))
def test_counts_add_up(events: list[tuple[str, int, float]]) -> None:
    clock = Clock()
    stream = io.StringIO()
    log = EventLog(stream, folder=DenialFolder(1.0, clock))
    for path, count, step in events:
        clock.now += step
        log.write(denial(path, count))
    log._write(log._folder.flush())
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    for path in ("/a", "/b", "/c"):
        mine = [r for r in records if r["path"] == path]
        assert sum(r["count"] for r in mine) == sum(c for p, c, _ in events if p == path)
        written = sum(1 for r in mine if r["event"] == "denial")
        assert written + sum(r.get("folded", 0) for r in mine) == sum(
            1 for p, _, _ in events if p == path
        )
