"""``llsupervise run --headless``: supervise without an interface."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events import EventLog


def run_headless(policy_path: str, argv: Sequence[str], *, log_path: str | None = None) -> int:
    """Run ``argv`` under the policy; the exit status is the command's (128+N on signal N)."""
    document = load_policy(policy_path)
    log = EventLog.open(log_path)

    async def main() -> int:
        async with Supervisor.open(document, log=log) as supervisor:
            return await supervisor.run(argv)

    try:
        return trio.run(main)
    finally:
        log.close()
