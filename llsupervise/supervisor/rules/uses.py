"""Counting the requests performed against the supervisor rules that let them through: the
serving threads note each one performed (:class:`PerformedLog`), and :class:`RuleUses` counts
them."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable

from llsupervise.messages import Event, RuleUse
from llsupervise.supervisor.perform.blocking import cached_identity
from llsupervise.supervisor.perform.operations import Target
from llsupervise.supervisor.rules.objects import fd_path
from llsupervise.supervisor.rules.state import RuleState

#: Directories whose paths are remembered at once (one per thread's cwd, mostly).
_MAX_DIRECTORIES = 1024


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
            if path.startswith("//"):
                path = "/" + path.lstrip("/")  # "//": dirname's fixed point, and no rule's
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
