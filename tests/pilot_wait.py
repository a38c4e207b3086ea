"""Waiting in pilot tests for what the interface shows, with what it showed when a wait
gives up (a failure under load must say what the program had drawn, and what it was
refused)."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot

from llsupervise.tui.app import SupervisorApp
from llsupervise.tui.terminal.pane import TerminalPane


async def until(pilot: Pilot[int], predicate: Callable[[], bool], what: str) -> None:
    """Let the app run until ``predicate``; the limit only keeps a broken test from hanging."""
    deadline = time.monotonic() + 30
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; {_shown(pilot.app)}")
        await pilot.pause(0.02)


def _shown(app: object) -> str:
    if not isinstance(app, SupervisorApp):
        return "not the supervisor's app"
    panes = list(app.query(TerminalPane))
    lines = panes[0].lines if panes else "no terminal pane"
    denials = [(e.syscall, e.path, e.access) for e in app.model.feed.entries()]
    return f"the pane shows {lines}; denials: {denials}; exit: {app.model.status.exit_status}"
