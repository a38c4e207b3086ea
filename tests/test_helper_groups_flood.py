"""The helper groups under a flood from the supervised program: threads on every
CPU (each pinned to one, where it may) mixing static opens, granted opens (our open and the
injection: a lent turn), creations (Python's), new processes (the readers' opener: a lent
turn) and execs (answer_exec), with the supervisor's affinity all CPUs, its first CPU only,
or its last CPU only (a sparse set: one group, not on CPU 0). Every call must get its own
answer, the run must end, and no stall may be logged. Assertions are outcomes only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from fuse_server import MAPPED_NAME, hanging_fuse
from supervised import PUBLIC, kept_to, lines, policy, policy_text, wait_until
from test_compiled_grants import Drained, rw
from test_serving_stalls import (
    RULES,
    STATIC_FUSE,
    held_call_script,
    run_over_hung_fuse,
    stall_tree,
)

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel

CPUS = sorted(os.sched_getaffinity(0))

FLOOD = r"""
import json, os, subprocess, sys, threading
out, static, granted, work, rounds = sys.argv[1:6]
rounds = int(rounds)
cpus = sorted(os.sched_getaffinity(0))
bad = []
counts = {"static": 0, "granted": 0, "created": 0, "spawned": 0, "forked": 0}
lock = threading.Lock()
def note(kind, ok, what=None):
    with lock:
        if ok:
            counts[kind] += 1
        else:
            bad.append([kind, repr(what)])
def worker(i):
    try:
        os.sched_setaffinity(0, {cpus[i % len(cpus)]})
    except OSError:
        pass
    for r in range(rounds):
        try:
            with open(static) as f:
                note("static", f.read() == "static", "static")
            with open(granted) as f:
                note("granted", f.read() == "granted", "granted")
            name = os.path.join(work, f"c{i}")
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            os.write(fd, b"x")
            os.close(fd)
            note("created", True)
            if r % 10 == 0:
                p = subprocess.run(["/bin/cat", static, granted], capture_output=True)
                note("spawned", p.returncode == 0 and p.stdout == b"staticgranted", p)
            if r % 15 == 0:
                pid = os.fork()
                if pid == 0:
                    try:
                        with open(granted) as f:
                            ok = f.read() == "granted"
                        with open(static) as f:
                            ok = ok and f.read() == "static"
                    except BaseException:
                        ok = False
                    os._exit(0 if ok else 3)
                _, st = os.waitpid(pid, 0)
                note("forked", os.waitstatus_to_exitcode(st) == 0, st)
        except BaseException as e:
            note("error", False, e)
threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out, "w") as f:
    json.dump({"bad": bad, "counts": counts}, f)
"""

ROUNDS = 60


@pytest.mark.trio
@pytest.mark.parametrize(
    "affinity", [CPUS, CPUS[:1], CPUS[-1:]], ids=["all-cpus", "first-cpu", "last-cpu-only"]
)
async def test_a_mixed_flood_on_every_cpu_is_served_whatever_the_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, affinity: list[int]
) -> None:
    granted, out = tmp_path / "granted", tmp_path / "out"
    granted.mkdir()
    (out / "work").mkdir(parents=True)
    (granted / "g").write_text("granted")
    (out / "s").write_text("static")
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rw(granted)))
    drained = Drained(monkeypatch)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    events: list[Any] = []
    with kept_to(affinity):
        async with Supervisor.open(doc) as sup:
            sup.listeners.append(events.append)
            argv = [sys.executable, "-c", FLOOD, str(out / "r.json"), str(out / "s"),
                    str(granted / "g"), str(out / "work"), str(ROUNDS)]  # fmt: skip
            status = await sup.run(argv, forward_signals=False)
    assert status == 0
    r = json.loads((out / "r.json").read_text())
    assert r["bad"] == []
    assert r["counts"]["static"] == 8 * ROUNDS
    assert r["counts"]["granted"] == 8 * ROUNDS
    assert r["counts"]["created"] == 8 * ROUNDS
    assert [e for e in events if e.get("event") == "stall"] == []
    assert len(drained.paths) > 0  # the granted opens were the helpers' (a lent turn each)


# -- both helpers of the only group held ---------------------------------------------------


#: As test_serving_stalls.held_call_script, with two threads whose calls name paths in the
#: hung page, the second once the first is in its call: on one CPU (one group) the first
#: holds the receiving helper, keep_receiving gives the spare its turn, and the second holds
#: that one too: no helper receives any more until the watch gives up.
TWO_HELD = r"""
import ctypes, mmap, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
log = os.open("out/log", os.O_WRONLY | os.O_APPEND)
def note(line):
    os.write(log, line.encode() + b"\n")
b = os.fork()
if b == 0:
    while not os.path.exists("out/go"):
        time.sleep(0.01)
    with open("data/x", "rb") as f:
        note("other process: " + f.read().decode().strip())
    os._exit(0)
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
page = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m)))
def stuck(i):
    r = libc.open(page, os.O_RDONLY)
    note(f"stuck call {i}: {r} errno {ctypes.get_errno()}")
os.close(os.open("/usr", os.O_RDONLY))  # the loop keeps this thread's reader
ts = [threading.Thread(target=stuck, args=(i,)) for i in range(2)]
ts[0].start()
time.sleep(0.6)
ts[1].start()
for t in ts:
    t.join()
_, status = os.waitpid(b, 0)
os._exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.trio
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="root, FUSE")
async def test_both_helpers_of_the_only_group_held_is_a_logged_stall_and_serving_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One CPU, one group of two helpers, each held in turn by a read the kernel holds:
    nothing receives until the watch gives up; that must be logged as a stall, both calls
    answered without their threads, and the rest served after (never a silent hang)."""
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    monkeypatch.setattr("llsupervise.supervisor.perform.stalls.STALL_SECONDS", 2.0)
    with kept_to({min(os.sched_getaffinity(0))}):  # one group
        status, _ = await run_over_hung_fuse(root, paths, events, TWO_HELD)
    log = lines(paths["out"] / "log")
    assert status == 0, log
    assert f"other process: {PUBLIC.decode().strip()}" in log
    stalls = [e for e in events if e["event"] == "stall"]
    assert len(stalls) >= 1
    # each stuck call answered: EIO (by the watch), or EFAULT (the page failed once the
    # server went, when the kernel or Python read it after)
    assert sorted(x.split(":")[0] for x in log if x.startswith("stuck")) == [
        "stuck call 0", "stuck call 1"]


#: A thread names a path in the hung page (a helper's read of it is held); other threads
#: create files (Python's requests, one after another) without pause for FLOOD seconds.
#: Notes when the stuck call returned and when the flood ended.
HELD_UNDER_FLOOD = held_call_script(
    """go = threading.Event()
flood = float(sys.argv[2])
def create(i):
    go.wait()
    while time.monotonic() < start + flood:
        os.close(os.open(f"out/c{i}", os.O_CREAT | os.O_WRONLY, 0o600))
cs = [threading.Thread(target=create, args=(i,)) for i in range(8)]
for c in cs:
    c.start()
start = time.monotonic()
note(f"flood started at {start}")
go.set()
for c in cs:
    c.join()
note(f"flood ended at {time.monotonic()}")""",
    '(os.close(os.open("/usr", os.O_RDONLY)), libc.open(page, os.O_RDONLY))[1]',
)


@pytest.mark.trio
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="root, FUSE")
async def test_a_held_helper_is_given_up_on_though_python_is_kept_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch gives up on a helper held past STALL_SECONDS (0.5 s here) even while the
    program keeps the Python thread busy with creations: the stall is logged, and the stuck
    call answered, before the 8 s flood ends (the oldest hold counts: a Python thread kept
    busy does not hide it)."""
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    flood = 8.0
    with hanging_fuse(root / "fuse") as server:
        doc = policy(
            root,
            supervisor_rules=RULES.format(data=paths["data"]),
            extra_static=STATIC_FUSE.format(fuse=server.mountpoint),
        )
        ran: list[int] = []

        async def drive() -> None:
            try:
                await wait_until(lambda: server.reads > 0, "the held read", 60)
                (paths["out"] / "go").touch()
                try:
                    await wait_until(
                        lambda: bool(ran) or any(
                            x.startswith("flood ended") for x in lines(paths["out"] / "log")),
                        "the flood's end", 25,
                    )  # fmt: skip
                except AssertionError:
                    nursery.cancel_scope.cancel()  # a lost creation: B waits for ever
                    return
                await trio.sleep(1.0)  # a stall the watch saw only once the flood ended
            finally:
                await trio.to_thread.run_sync(server.close)

        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(drive)
            argv = [sys.executable, "-c", HELD_UNDER_FLOOD,
                    str(server.mountpoint / MAPPED_NAME.decode()), str(flood)]  # fmt: skip
            ran.append(await sup.run(argv, forward_signals=False))
    log = lines(paths["out"] / "log")
    # The flood must end (a creation taken from the queue as the watch gave up was lost:
    # see test_stall_handover), and the stall be seen during it.
    assert any(x.startswith("flood ended") for x in log), log
    assert ran == [0], log
    order = [x.split(" at ")[0].split(":")[0] for x in log]
    assert order.index("stuck call") < order.index("flood ended"), log
