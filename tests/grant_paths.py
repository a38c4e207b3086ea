"""Suites that run on both implementations of a supervisor-granted open: performed by the
serving threads' compiled loop (engine.grants), and by Python alone (its general path, which
the loop hands everything else to); and on both ways of receiving: by helper threads (as
usual), and by the serving thread alone (as with ``--same-cpu``: "alone"). Use with
``pytest.mark.usefixtures("grant_path")``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llsupervise.supervisor.engine import loop


@pytest.fixture(scope="module", params=["compiled", "python", "alone"])
def grant_path(request: pytest.FixtureRequest) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "python":
            patch.setattr(loop, "compiled_grants", lambda guard: None)
        if request.param == "alone":
            patch.setattr(loop, "helper_groups", lambda cpu: 0)
        yield str(request.param)
