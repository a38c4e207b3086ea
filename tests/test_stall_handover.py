"""A request the serving thread's Receiver.next() has taken from the Handoff
queue, but not yet noted in its Busy (busy.begin), was lost when the stall watch gave up on
that server in between: the watch answered only busy.notification (None yet) and what the
helpers hold, and the thread, finding itself abandoned, dropped the request
(handler.handle -> check_not_abandoned -> Abandoned). The program's thread waited for ever
and no stall was logged for it. Now Receiver.taken() hands it over under busy.lock.

The window is the serving thread's way back from next() (its GIL re-acquisition: the watch
holds the GIL while it gives up) until busy.begin(); the test widens it by having next()
return late, once, while a helper's read is held (what makes the watch give up). Seen
without any widening under a creation flood (test_helper_groups_flood's
test_a_held_helper_is_given_up_on_though_python_is_kept_busy, about one run in three)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from fuse_server import MAPPED_NAME, hanging_fuse
from supervised import lines, policy, wait_until
from test_serving_stalls import RULES, STATIC_FUSE, held_call_script, stall_tree

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.engine import _fastpath
from llsupervise.supervisor.engine import loop as loop_module

pytestmark = pytest.mark.kernel

#: A forks B; A's thread names a path in the hung page (a helper's read of it is held); once
#: the test says so (out/go), B creates a file (Python's: through the queue).
HELD_THEN_CREATE = held_call_script(
    'os.close(os.open("out/new", os.O_CREAT | os.O_WRONLY, 0o600))\nnote("created")',
    '(os.close(os.open("/usr", os.O_RDONLY)), libc.open(page, os.O_RDONLY))[1]',
)


class LateNext:
    """A Receiver whose next() returns one request late (after ``delay``), once ``armed``."""

    def __init__(self, receiver: _fastpath.Receiver, armed: list[bool], delay: float) -> None:
        self._r = receiver
        self._armed = armed
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._r, name)

    def next(self, wake_fd: int, timeout_ms: int) -> bytes | int:
        got = self._r.next(wake_fd, timeout_ms)
        if isinstance(got, bytes) and self._armed and self._armed[0]:
            self._armed[0] = False
            time.sleep(self._delay)  # as a thread waiting for the GIL the watch holds
        return got


@pytest.mark.trio
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="root, FUSE")
async def test_a_request_taken_from_the_queue_as_the_watch_gives_up_is_still_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths, events = stall_tree(tmp_path, monkeypatch)  # STALL_SECONDS = 0.5
    armed: list[bool] = []
    make = loop_module.NotificationLoop._receiver
    monkeypatch.setattr(
        loop_module.NotificationLoop, "_receiver", lambda self: LateNext(make(self), armed, 1.5)
    )
    created: list[bool] = []
    with hanging_fuse(root / "fuse") as server:
        doc = policy(
            root,
            supervisor_rules=RULES.format(data=paths["data"]),
            extra_static=STATIC_FUSE.format(fuse=server.mountpoint),
        )

        async def drive() -> None:
            try:
                await wait_until(lambda: server.reads > 0, "the held read", 60)
                armed.append(True)
                (paths["out"] / "go").touch()
                try:
                    await wait_until(lambda: "created" in lines(paths["out"] / "log"),
                                     "B's creation", 20)  # fmt: skip
                    created.append(True)
                except AssertionError:
                    created.append(False)
                    nursery.cancel_scope.cancel()  # B waits for ever: end the run
            finally:
                await trio.to_thread.run_sync(server.close)

        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(drive)

            async def run() -> None:
                argv = [sys.executable, "-c", HELD_THEN_CREATE,
                        str(server.mountpoint / MAPPED_NAME.decode())]  # fmt: skip
                await sup.run(argv, forward_signals=False)

            nursery.start_soon(run)
    stalls = [(e["syscall"], e.get("outcome")) for e in events if e["event"] == "stall"]
    assert created == [True], (
        f"B's creation was never answered; stalls logged: {stalls}; log: "
        f"{lines(paths['out'] / 'log')}"
    )
