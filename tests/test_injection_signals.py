"""A signal that reaches a thread while it injects a descriptor (SECCOMP_IOCTL_NOTIF_ADDFD
with SEND) must not cost the program its answer.

The kernel marks the request answered before it waits for the program to take the
descriptor; a signal that ends that wait makes it withdraw the descriptor, and the program's
call then returns 0 (its stdin) while the retried ioctl fails (EINPROGRESS). Signals reach
our threads as any process-directed signal may (a terminal's SIGWINCH, a forwarded SIGINT):
the threads that inject must not take them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest
from supervised import PUBLIC, make_tree, policy

from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel

#: Opens argv[1] (granted by the supervisor layer) many times; exits 3 if one open returned
#: a descriptor that is not that file, 4 on an error, 0 otherwise.
OPENER = r"""
import os, sys
path, times = sys.argv[1], int(sys.argv[2])
want = os.stat(path)
for _ in range(times):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        print("error", e, file=sys.stderr)
        sys.exit(4)
    st = os.fstat(fd)
    if fd <= 2 or (st.st_dev, st.st_ino) != (want.st_dev, want.st_ino):
        print("wrong descriptor", fd, file=sys.stderr)
        sys.exit(3)
    os.close(fd)
"""



def _late_signal(_signum: int, _frame: object) -> None:
    """A SIGUSR1 sent by a pester below that arrives after its test: nothing to do."""


@pytest.mark.trio
@pytest.mark.parametrize("aim", ["serving threads", "every thread and the process"])
async def test_signals_to_the_serving_threads_never_cost_an_injection(
    tmp_path: Path, aim: str
) -> None:
    """``aim``: the serving threads, which must never take the signal; or every thread but
    the main one (offload workers, brokers, the opener, trio's workers) and the process as
    a whole, as a burst of process-directed signals would."""
    paths = make_tree(tmp_path)
    granted = (
        '\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\n'
        f'parent = ["{paths["data"]}"]\n'
    )
    hits = 0

    def count(_signum: int, _frame: object) -> None:
        nonlocal hits
        hits += 1

    previous = signal.signal(signal.SIGUSR1, count)
    stop = threading.Event()

    main, everything = threading.main_thread().ident, aim != "serving threads"

    def aimed_at(thread: threading.Thread) -> bool:
        if thread.ident in (None, main, threading.get_ident()):
            return False
        return everything or thread.name.startswith("notifications")

    def pester() -> None:
        """SIGUSR1 at the threads aimed at, all the time."""
        while not stop.is_set():
            for thread in filter(aimed_at, threading.enumerate()):
                assert thread.ident is not None
                try:
                    signal.pthread_kill(thread.ident, signal.SIGUSR1)
                except (ProcessLookupError, OSError):
                    pass
            if everything:
                os.kill(os.getpid(), signal.SIGUSR1)
            stop.wait(0.0002)

    sender = threading.Thread(target=pester, daemon=True)
    try:
        async with Supervisor.open(policy(tmp_path, supervisor_rules=granted)) as sup:
            sender.start()
            status = await sup.run(
                [sys.executable, "-I", "-c", OPENER, str(paths["data"] / "x"), "3000"],
                forward_signals=False,
            )
    finally:
        stop.set()
        sender.join()
        # Not the default action back: a SIGUSR1 aimed at a thread while it blocked signals
        # (a worker inside Listener.addfd, a subprocess's vfork) is delivered when it
        # unblocks, which may be after this test, and would kill the test process.
        signal.signal(signal.SIGUSR1, previous if callable(previous) else _late_signal)
    assert (paths["data"] / "x").read_bytes() == PUBLIC
    assert status == 0
    if not everything:
        assert hits == 0  # blocked in the serving threads: never delivered there
