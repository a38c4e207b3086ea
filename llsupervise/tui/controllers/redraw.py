"""Redrawing the main screen's tables and status bar from the model, at a bounded rate."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from llsupervise.tui.model import FEED, RULES, STATUS
from llsupervise.tui.widgets import FeedView, PromptPanel, RulesView, StatusBar

if TYPE_CHECKING:
    from llsupervise.tui.app import SupervisorApp

#: Least time between two redraws of the feed and rules tables while denials pour in.
REDRAW_INTERVAL = 0.2


class Redrawer:
    """What changed is marked; it is drawn at most every :data:`REDRAW_INTERVAL` seconds, so
    that a flood of denials leaves the interface time for keys."""

    def __init__(self, app: SupervisorApp) -> None:
        self.app = app
        self._dirty: set[str] = set()
        self._scheduled = False
        self._last = 0.0

    def mark(self, *parts: str) -> None:
        """``parts`` (FEED, RULES, STATUS) are to be drawn again soon."""
        self._dirty.update(parts)
        if not self._scheduled:
            self._scheduled = True
            delay = self._last + REDRAW_INTERVAL - time.monotonic()
            if delay > 0:
                self.app.set_timer(delay, self._redraw)
            else:
                self.app.call_later(self._redraw)

    def _redraw(self) -> None:
        self._scheduled = False
        app = self.app
        if not app.is_running:
            return  # shutting down: the widgets are going away
        self._last = time.monotonic()
        dirty, self._dirty = self._dirty, set()
        model, main = app.model, app.main
        if FEED in dirty:
            main.query_one(FeedView).show(model.feed)
        if RULES in dirty:
            main.query_one(RulesView).show(model.rules, model.status, app.wall())
        if STATUS in dirty:
            attached = None if app.session.local else app.session.origin
            main.query_one(StatusBar).show(
                model.status, model.rules.generation, attached, model.rules.reload
            )
            app.refresh_bindings()

    def tick(self) -> None:
        """Every half second: the question's countdown, the temporary grants' time left."""
        if self.app.is_running:
            self.app.main.query_one(PromptPanel).tick()
            if self.app.model.rules.temporary:
                self.mark(RULES)
