"""Counting the requests performed against the supervisor rules that let them through: the
serving threads note each one performed (:class:`PerformedLog`), and :class:`RuleUses` counts
them."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llsupervise.supervisor.perform.blocking import cached_identity
from llsupervise.supervisor.perform.operations import Target
from llsupervise.supervisor.rules.objects import fd_path
from llsupervise.supervisor.rules.state import RuleState

if TYPE_CHECKING:
    from llsupervise.messages import Event, RuleUse

#: Directories whose paths are remembered at once (one per thread's cwd, mostly).
_MAX_DIRECTORIES = 1024
#: Paths whose rule is remembered at once (then forgotten all at once).
_MAX_REMEMBERED = 65536


class RuleUses:
    """Supervisor rule path -> (requests performed beneath it, time of the last one)."""

    def __init__(self, rules: RuleState, emit: Callable[[Event], None]) -> None:
        self.rules = rules
        self._emit = emit
        self.totals: dict[str, tuple[int, float]] = {}
        #: Path as the child named it -> the rule it counts against (None: none), for the
        #: rule paths in ``_memo_for``: a program names the same few paths again and again,
        #: and this runs in the thread that also answers the interface.
        self._rule_of: dict[bytes, str | None] = {}
        self._memo_for: frozenset[str] = frozenset()

    def count(self, performed: collections.deque[tuple[bytes, float]]) -> None:
        """Count ``performed`` (emptying it) against the deepest rule whose path leads to
        each request's, as the child named it; emit ``rule_use`` with the running totals of
        the rules that were used."""
        if not performed:
            return  # nothing performed: spare rebuilding the map of every rule
        table = self.rules.table
        rule_paths = frozenset(table.label(obj) for obj in self.rules.mutable.committed.fs)
        if rule_paths != self._memo_for:
            self._rule_of.clear()
            self._memo_for = rule_paths
        rule_of = self._rule_of
        counts: dict[str, tuple[int, float]] = {}
        while performed:
            raw, ts = performed.popleft()
            try:
                path = rule_of[raw]
            except KeyError:
                path = _deepest_rule(raw, rule_paths)
                if len(rule_of) >= _MAX_REMEMBERED:
                    rule_of.clear()
                rule_of[raw] = path
            if path is not None:
                counts[path] = (counts.get(path, (0, 0.0))[0] + 1, ts)
        for path, (added, last) in counts.items():
            self.totals[path] = (self.totals.get(path, (0, 0.0))[0] + added, last)
        if counts:
            uses: list[RuleUse] = [
                {"path": p, "count": self.totals[p][0], "last": self.totals[p][1]}
                for p in sorted(counts)
            ]
            self._emit({"event": "rule_use", "uses": uses})


def _deepest_rule(raw: bytes, rule_paths: frozenset[str]) -> str | None:
    """The deepest of ``rule_paths`` that leads to ``raw`` (lexically), if any."""
    path = os.fsdecode(raw)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")  # "//": dirname's fixed point, and no rule's
    while path not in rule_paths and path not in ("/", ""):
        path = os.path.dirname(path)
    return path if path in rule_paths else None


class PerformedLog:
    """(path as the child named it, absolute; time) of each request performed. Bounded:
    under a flood the oldest go."""

    def __init__(self) -> None:
        self.entries: collections.deque[tuple[bytes, float]] = collections.deque(maxlen=65536)
        self._dir_paths: dict[tuple[int, int], bytes] = {}

    def note(self, target: Target) -> None:
        path = target.request.path
        if target.dir1 is not None and not path.startswith(b"/"):
            path = self._dir_path(target.dir1) + b"/" + path
        self.entries.append((path, time.time()))

    def _dir_path(self, fd: int) -> bytes:
        """The path of the directory ``fd`` names, remembered by the directory's identity:
        a program works in the same few directories, and a stat is cheaper than a readlink.
        (Only rule-use counts read it: a directory renamed since counts under its old path.)"""
        key = cached_identity(fd)  # not fstat: the directory may be on FUSE (see blocking)
        path = self._dir_paths.get(key)
        if path is None:
            if len(self._dir_paths) >= _MAX_DIRECTORIES:
                self._dir_paths.clear()
            path = self._dir_paths[key] = os.fsencode(fd_path(fd))
        return path
