"""trio as a guest on the interface's asyncio loop.

Textual only runs on asyncio; the supervisor is trio. ``start_guest_run`` lets trio's
scheduler run inside the asyncio loop's thread, so trio code can post messages to the app
directly, and the app hands work back with ``TrioToken.run_sync_soon``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio


class GuestRun:
    """One trio run inside the running asyncio loop; :meth:`stop` must be awaited before the
    loop ends, or the next ``trio.run`` in this process fails."""

    def __init__(self) -> None:
        self.token: trio.lowlevel.TrioToken | None = None
        self.result: outcome.Outcome[Any] | None = None
        self._scope: trio.CancelScope | None = None
        self._done: asyncio.Future[outcome.Outcome[Any]] | None = None

    @property
    def running(self) -> bool:
        return self._done is not None and not self._done.done()

    def start(
        self,
        main: Callable[[], Awaitable[Any]],
        on_done: Callable[[outcome.Outcome[Any]], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[outcome.Outcome[Any]] = loop.create_future()
        self._done = done

        async def guest() -> Any:
            self.token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                return await main()
            return None

        def finished(result: outcome.Outcome[Any]) -> None:
            self.result = result
            if not done.done():
                done.set_result(result)
            if on_done is not None:
                on_done(result)

        trio.lowlevel.start_guest_run(
            guest,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=finished,
            host_uses_signal_set_wakeup_fd=_wakeup_fd_in_use(),
        )

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` in trio soon (from the app)."""
        if self.token is None or not self.running:
            return
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def cancel(self) -> None:
        if self._scope is not None:
            self.call(self._scope.cancel)

    async def stop(self) -> outcome.Outcome[Any] | None:
        """Cancel the run and wait until trio has finished."""
        if self._done is None:
            return None
        if not self._done.done():
            while self._scope is None and not self._done.done():
                await asyncio.sleep(0)  # not started yet: cancel as soon as it has
            self.cancel()
        return await self._done


def _wakeup_fd_in_use() -> bool:
    """asyncio claims the signal wakeup fd only once asked to handle a signal; trio must
    not take it over then."""
    previous = signal.set_wakeup_fd(-1)
    if previous != -1:
        signal.set_wakeup_fd(previous)
    return previous != -1
