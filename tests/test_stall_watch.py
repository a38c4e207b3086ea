"""loop._watch_stalls as it drives the helper groups (keep_receiving): a unit
test with a stand-in loop and server, no kernel. The watch must keep every group served
(keep_receiving) whenever a server holds a request and has not been given up on, whether or
not it may give up on it yet."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from llsupervise.supervisor.engine import loop as loop_module
from llsupervise.supervisor.perform import stalls


class Receiver:
    def __init__(self, since: float) -> None:
        self.since = since
        self.kept = 0

    def held_since(self) -> float:
        return self.since

    def keep_receiving(self) -> None:
        self.kept += 1


def watch(server: Any, abandon: Any, seconds: float) -> None:
    fake = SimpleNamespace(
        _done=threading.Event(), _lock=threading.Lock(), _live=[server], _abandon=abandon
    )
    t = threading.Thread(target=loop_module.NotificationLoop._watch_stalls, args=(fake,))
    t.start()
    time.sleep(seconds)
    fake._done.set()
    t.join()


def test_a_helper_held_past_the_stall_time_that_is_not_given_up_on_still_has_its_group_served(
) -> None:
    """Past MAX_ABANDONED (or whenever _abandon declines), a request held longer than
    STALL_SECONDS is waited for; meanwhile the other groups' spares must still be given
    their turn (a group whose receiver is held afterwards, while the oldest hold is past
    the stall time, would otherwise never be served again: before the groups every idle
    helper was in the receive). The watch once skipped keep_receiving once the oldest hold
    was past STALL_SECONDS."""
    receiver = Receiver(time.monotonic() - 10 * stalls.STALL_SECONDS)
    server = SimpleNamespace(busy=SimpleNamespace(since=0.0), receiver=receiver)
    declined: list[object] = []
    watch(server, declined.append, 1.0)  # _abandon declines: the budget is spent
    assert declined  # it was asked to give up, and declined
    assert receiver.kept > 0


def test_a_busy_python_thread_does_not_hide_an_older_hold_in_a_helper() -> None:
    """While the Python thread holds a request (received just now, over and over, as under a
    flood of creations), a helper held for far longer than STALL_SECONDS is still seen, so
    given up on and logged (_held_since once preferred the Python thread's hold)."""
    receiver = Receiver(time.monotonic() - 10 * stalls.STALL_SECONDS)
    server = SimpleNamespace(busy=SimpleNamespace(since=time.monotonic()), receiver=receiver)
    stop = threading.Event()

    def keep_python_busy() -> None:  # a request taken every millisecond
        while not stop.is_set():
            server.busy.since = time.monotonic()
            time.sleep(0.001)

    t = threading.Thread(target=keep_python_busy)
    t.start()
    asked: list[object] = []
    try:
        watch(server, asked.append, 1.0)
    finally:
        stop.set()
        t.join()
    assert asked, "the helper held for 10 x STALL_SECONDS was never seen as stalled"
