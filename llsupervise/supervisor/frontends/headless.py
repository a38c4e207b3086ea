"""``llsupervise run --headless [--listen SOCKET]``: supervise without an interface here.

With ``--listen``, ``llsupervise attach SOCKET`` in another terminal answers the questions
while the command keeps this terminal; with no client attached the policy's default applies.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from llsupervise.display import escape
from llsupervise.policies import DEFAULT_SOURCE
from llsupervise.policy.document import PolicyDocument
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import (
    EventLog,
    own_layer_note,
    stall_note,
    symlink_notes,
)
from llsupervise.supervisor.launch.helper import Helper
from llsupervise.supervisor.rules.controlplane import check_document, control_files

if TYPE_CHECKING:
    from llsupervise.messages import Event


def run_headless(
    document: PolicyDocument,
    argv: Sequence[str],
    *,
    log_path: str | None = None,
    listen: str | None = None,
    watch: bool = False,
    cpu: int | None = None,
    listeners: Sequence[Callable[[Event], None]] = (),
    helper: Helper | None = None,
) -> int:
    """Run ``argv`` under the policy; the exit status is the command's (128+N on signal N).

    ``watch``: reload the policy file on each save (see ``Supervisor.open``); ``cpu``: run
    the command and the threads serving it on that one CPU (see ``Supervisor.run``);
    ``listeners`` see every event. The log's first line, and a line on stderr under the
    built-in policy, say which policy is in force."""
    # The program shares our terminal here: the control plane is our files.
    control = control_files(document.source, log=log_path, listen=listen)
    check_document(document, control)  # before anything is made
    log = EventLog.open(log_path)
    section = document.supervisor
    log.write({"event": "policy", "source": document.source})
    if document.source == DEFAULT_SOURCE:
        print("llsupervise: policy: built-in default (`llsupervise policy default` prints it)",
              file=sys.stderr, flush=True)  # fmt: skip
    token = None
    if listen is not None:
        from llsupervise.supervisor.frontends.hub import make_token

        token = make_token(listen)  # and its private directory: protected from the start

    decisions = ModeDecisions(section.mode, section.default, section.prompt_timeout)
    try:
        with Supervisor.opened(
            document, decisions=decisions, log=log, watch=watch, control=control
        ) as supervisor:
            supervisor.listeners.extend([*listeners, _say_notes])
            if listen is None:
                return supervisor.run_trio_on_demand(argv, cpu=cpu, helper=helper)
            import trio

            from llsupervise.supervisor.frontends.hub import Hub, listening

            async def listen_and_run() -> int:
                hub = Hub(supervisor, decisions)
                async with listening(hub, listen, token=token) as path:
                    print(f"llsupervise: answer from another terminal with: "
                          f"llsupervise attach {path}", file=sys.stderr, flush=True)  # fmt: skip
                    return await supervisor.run(argv, cpu=cpu)

            return trio.run(listen_and_run)
    finally:
        log.close()


def _say_notes(event: Event) -> None:
    """Rule paths through symlinks, said on stderr as the run starts (check says the same),
    and requests that no filesystem answered in time (the program got EIO)."""
    if event["event"] == "start":
        for note in symlink_notes(event):
            print(f"llsupervise: {escape(note)}", file=sys.stderr, flush=True)
    elif event["event"] == "stall":
        print(f"llsupervise: {escape(stall_note(event))}", file=sys.stderr, flush=True)
    elif event["event"] == "own_layer":
        print(f"llsupervise: {escape(own_layer_note(event))}", file=sys.stderr, flush=True)
