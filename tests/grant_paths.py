"""Suites that run on both implementations of a supervisor-granted open: performed by the
serving threads' compiled loop (engine.grants), and by Python alone (its general path, which
the loop hands everything else to). Use with ``pytest.mark.usefixtures("grant_path")``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llsupervise.supervisor.engine import loop


@pytest.fixture(scope="module", params=["compiled", "python"])
def grant_path(request: pytest.FixtureRequest) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "python":
            patch.setattr(loop, "compiled_grants", lambda guard: None)
        yield str(request.param)
