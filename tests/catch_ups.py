"""What Python's catch-ups take from the compiled loop (engine.contexts.ThreadContexts.
catch_up), recorded for tests: the threads whose exec the loop answered (``take_execs``)
or that it heard from and settled (``take_heard``)."""

from __future__ import annotations

from typing import Any

import pytest

from llsupervise.supervisor.engine import contexts as contexts_module


def record_catch_ups(monkeypatch: pytest.MonkeyPatch, method: str) -> list[Any]:
    """Each result of the readers' ``method`` as catch-ups call it, in order."""
    taken: list[Any] = []
    catch_up = contexts_module.ThreadContexts.catch_up

    class Spy:
        def __init__(self, readers: Any) -> None:
            self.readers = readers

        def __getattr__(self, name: str) -> Any:
            found = getattr(self.readers, name)
            if name != method:
                return found

            def recorded() -> Any:
                result = found()
                taken.append(result)
                return result

            return recorded

    def spied(self: contexts_module.ThreadContexts) -> None:
        readers = self.readers
        self.readers = Spy(readers)  # type: ignore[assignment]
        try:
            catch_up(self)
        finally:
            self.readers = readers

    monkeypatch.setattr(contexts_module.ThreadContexts, "catch_up", spied)
    return taken
