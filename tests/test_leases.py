"""A leased file never stalls the threads that serve the program (issue: one truncate of a
file the program itself held a lease on stalled every trapped call for lease-break-time)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from supervised import WAIT_IN_SYSCALL, make_tree, policy

from llsupervise.supervisor.core import Supervisor

BREAK_TIME = Path("/proc/sys/fs/lease-break-time")

#: The program: a lease on data/x, a thread that truncates it, and, once that thread is in
#: its truncate, an unrelated open served by the supervisor; only then is the lease given up.
SCRIPT = WAIT_IN_SYSCALL + r"""
import fcntl, os, signal, sys, threading
F_SETLEASE = 1024
signal.signal(signal.SIGIO, lambda *_: None)  # a lease break is only noted
holder = os.open("data/x", os.O_RDONLY)
fcntl.fcntl(holder, F_SETLEASE, fcntl.F_RDLCK)
result = []
def truncate():
    try:
        if sys.argv[1] == "truncate":
            os.truncate("data/x", 0)
        else:
            os.close(os.open("data/x", os.O_WRONLY))
        result.append("done")
    except OSError as e:
        result.append(f"err {e.errno}")
t = threading.Thread(target=truncate)
t.start()
wait_in(t, "76", "257")  # truncate or openat
with open("data/y", "rb") as f:  # served while the truncate may still wait
    print("unrelated open served:", f.read().decode(), flush=True)
fcntl.fcntl(holder, F_SETLEASE, fcntl.F_UNLCK)
t.join()
print(result[0], flush=True)
"""


@contextlib.contextmanager
def long_lease_breaks() -> Iterator[None]:
    """A lease break that outlasts the test: a serving thread caught in one never returns."""
    before = BREAK_TIME.read_text()
    BREAK_TIME.write_text("1000\n")
    try:
        yield
    finally:
        BREAK_TIME.write_text(before)


@pytest.mark.kernel
@pytest.mark.trio
@pytest.mark.parametrize("call", ["truncate", "open-for-writing"])
async def test_a_leased_file_does_not_stall_other_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], call: str
) -> None:
    paths = make_tree(tmp_path)
    (paths["data"] / "y").write_text("other file")
    monkeypatch.chdir(tmp_path)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file", "write_file", "truncate"]
parent = ["{paths["data"]}"]
"""
    stalled = []

    async def watchdog(sup: Supervisor) -> None:
        # Not a timing bound: lease breaks last 1000 s here, so a stalled serving thread
        # never comes back by itself. Killing the program ends its lease (and the stall).
        await trio.sleep(60)
        stalled.append(True)
        assert sup.launched is not None
        sup.launched.process.kill()

    with long_lease_breaks():
        doc = policy(tmp_path, supervisor_rules=rules)
        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            nursery.start_soon(watchdog, sup)
            status = await sup.run([sys.executable, "-c", SCRIPT, call], forward_signals=False)
            nursery.cancel_scope.cancel()
    out = capfd.readouterr().out.splitlines()
    assert not stalled, "the unrelated open waited for the lease break"
    assert status == 0, out
    assert out[0] == "unrelated open served: other file"
    # Looked at while the lease is held: left to the kernel in the program's own context,
    # where only the static layer applies (data/ is granted by the supervisor only): refused,
    # as a blocking FIFO open is, rather than failing with EAGAIN (which the program did not
    # ask for) or stalling. Looked at once the lease is given up (the unrelated open, served
    # by another serving thread meanwhile, let the program go on): performed, as the rule
    # grants. Which comes first is the scheduler's choice.
    assert out[1] in ("err 13", "done")
