"""Counting the requests performed against the supervisor rules that let them through."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable

from llsupervise.messages import Event, RuleUse
from llsupervise.supervisor.rules.state import RuleState


class RuleUses:
    """Supervisor rule path -> (requests performed beneath it, time of the last one)."""

    def __init__(self, rules: RuleState, emit: Callable[[Event], None]) -> None:
        self.rules = rules
        self._emit = emit
        self.totals: dict[str, tuple[int, float]] = {}

    def count(self, performed: collections.deque[tuple[bytes, float]]) -> None:
        """Count ``performed`` (emptying it) against the deepest rule whose path leads to
        each request's, as the child named it; emit ``rule_use`` with the running totals of
        the rules that were used."""
        if not performed:
            return  # nothing performed: spare rebuilding the map of every rule
        table = self.rules.table
        by_path = {table.label(obj): obj for obj in self.rules.mutable.committed.fs}
        used: set[str] = set()
        while performed:
            raw, ts = performed.popleft()
            path = os.fsdecode(raw)
            while path not in by_path and path not in ("/", ""):
                path = os.path.dirname(path)
            if path in by_path:
                count, _ = self.totals.get(path, (0, 0.0))
                self.totals[path] = (count + 1, ts)
                used.add(path)
        if used:
            uses: list[RuleUse] = [
                {"path": p, "count": self.totals[p][0], "last": self.totals[p][1]}
                for p in sorted(used)
            ]
            self._emit({"event": "rule_use", "uses": uses})
