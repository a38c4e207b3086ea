"""The requests the serving threads performed, kept for counting them against rules."""

from __future__ import annotations

import collections
import os
import time

from llsupervise.supervisor.engine.contexts import MAX_TASKS
from llsupervise.supervisor.perform.blocking import cached_identity
from llsupervise.supervisor.perform.operations import Target
from llsupervise.supervisor.rules.objects import fd_path


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
            if len(self._dir_paths) >= MAX_TASKS:
                self._dir_paths.clear()
            path = self._dir_paths[key] = os.fsencode(fd_path(fd))
        return path
