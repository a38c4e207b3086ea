"""The one way from a plain thread (a serving thread, the network mediator's) into trio's.

A run may start before trio does (see ``Supervisor.run_trio_on_demand``): importing trio
costs more than a short command's whole run, and the serving threads answer what the static
rules decide without it. Until trio runs, calls wait here in the order they came, and the
first one rings :attr:`Door.bell` (an eventfd the run waits on) so that trio is started for
them. Once the run is over, calls are refused and the caller falls back (fails closed).

Imports no trio: this module is loaded before it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import trio

_Call = tuple[Callable[..., object], tuple[Any, ...]]


class Door:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._waiting: list[_Call] = []
        self._closed = False
        #: Readable once a call waits for trio (never reset: trio starts once).
        self.bell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` in trio's thread soon; False (not run, not to be) once the run is
        over. Thread-safe; never blocks on trio."""
        with self._lock:
            if self._closed:
                return False
            token = self._token
            if token is None:
                self._waiting.append((fn, args))
                if len(self._waiting) == 1:
                    os.eventfd_write(self.bell, 1)
                return True
        import trio  # loaded: a token exists

        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def open(self, token: trio.lowlevel.TrioToken) -> None:
        """From trio's thread: pass on what waited, in order, then each call as it comes."""
        with self._lock:  # a call made meanwhile waits for the lock: the order holds
            if self._closed:
                return
            self._token = token
            waiting, self._waiting = self._waiting, []
            for fn, args in waiting:
                token.run_sync_soon(fn, *args)

    def close_if_idle(self) -> bool:
        """Refuse every call from now on, unless one waits for trio (then False: trio must
        start for it). True once closed."""
        with self._lock:
            if self._waiting:
                return False
            self._closed = True
            return True

    def close(self) -> None:
        """The run is over. Without trio, every call is refused from now on, and one still
        waiting (only when the run failed before trio took over) is dropped: the listener
        closes with the run, so a request in it fails. With trio, calls still reach it
        while it runs (a late report of a slow filesystem is still logged; a handler finds
        the run over and fails a request closed), and are refused once it has ended."""
        with self._lock:
            if self.bell < 0:
                return
            if self._token is None:
                self._closed = True
            self._waiting.clear()
            os.close(self.bell)
            self.bell = -1
