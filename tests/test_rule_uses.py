"""Counting performed requests against the rules that let them through (rules.uses)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, cast

from llsupervise.messages import Event
from llsupervise.supervisor.rules.state import RuleState
from llsupervise.supervisor.rules.uses import RuleUses


@dataclass
class _Committed:
    fs: list[str] = field(default_factory=list)


@dataclass
class _Mutable:
    committed: _Committed = field(default_factory=_Committed)


class _Table:
    def label(self, obj: str) -> str:
        return obj


@dataclass
class _Rules:
    """What RuleUses reads of a RuleState: the committed rules and their labels."""

    mutable: _Mutable = field(default_factory=_Mutable)
    table: _Table = field(default_factory=_Table)


def counted(uses: RuleUses, *paths: bytes) -> dict[str, int]:
    performed = collections.deque((p, 1.0) for p in paths)
    uses.count(performed)
    assert not performed
    return {path: count for path, (count, _) in uses.totals.items()}


def test_each_request_counts_against_the_deepest_rule_and_follows_rule_changes() -> None:
    rules = _Rules()
    rules.mutable.committed.fs = ["/a"]
    events: list[Event] = []
    uses = RuleUses(cast(RuleState, rules), events.append)
    assert counted(uses, b"/a/b/x", b"/a/b/x", b"/c/y", b"/ab") == {"/a": 2}
    # A deeper rule committed since: the same path now counts against it, not the one
    # remembered for it before.
    rules.mutable.committed.fs = ["/a", "/a/b"]
    assert counted(uses, b"/a/b/x", b"/a/z") == {"/a": 3, "/a/b": 1}
    rules.mutable.committed.fs = []
    assert counted(uses, b"/a/b/x") == {"/a": 3, "/a/b": 1}
    last: Any = events[-1]
    assert last["event"] == "rule_use" and [u["path"] for u in last["uses"]] == ["/a", "/a/b"]
    assert len(events) == 2  # nothing counted, nothing said
