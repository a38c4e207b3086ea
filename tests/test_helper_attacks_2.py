"""Guards for the compiled helper threads (engine._fastpath Receiver/Hand/Handoff,
engine.loop), from an attack review: reader slots shared by two threads, and what many runs
in one process leave behind. Assertions are outcomes, never durations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio
from supervised import policy_text, wait_until
from test_compiled_grants import Drained, rw
from test_ondemand_attacks import fds, leaked
from test_receiver_helpers import tasks

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel

#: Makes threads (each only notes its id) until one's id equals the main thread's modulo
#: 1024 (the Readers slot they then share), then both open their own granted file, in
#: turns and at once, many times: each must read its own file.
SLOT_TWINS = r"""
import json, os, sys, threading
out, granted = sys.argv[1], sys.argv[2]
main = threading.get_native_id()
twin_ready = threading.Event()
go = threading.Barrier(2)
results = {"main": [], "twin": [], "tries": 0}
def open_own(name, n):
    path = os.path.join(granted, name)
    got = []
    for _ in range(n):
        try:
            with open(path) as f:
                got.append(f.read())
        except OSError as e:
            got.append(-e.errno)
    return got
def twin():
    results["twin_tid"] = threading.get_native_id()
    go.wait()
    results["twin"] = open_own("twin", 300)
while True:
    ids = []
    t = threading.Thread(target=lambda: ids.append(threading.get_native_id()))
    t.start(); t.join()
    results["tries"] += 1
    if (ids[0] + 1) % 1024 == main % 1024 or results["tries"] > 5000:
        break
t = threading.Thread(target=twin)
t.start()
go.wait()
results["main"] = open_own("main", 300)
t.join()
results["main_tid"] = main
with open(out, "w") as f:
    json.dump(results, f)
"""


@pytest.mark.trio
async def test_two_threads_sharing_a_reader_slot_each_get_their_own_granted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads whose ids are equal modulo 1024 share one Readers slot; several helpers
    serve them at once, each replacing the other's reader. Every granted open must still be
    of the path the thread named (its own memory read, never the other's)."""
    granted, out = tmp_path / "granted", tmp_path / "out"
    granted.mkdir()
    out.mkdir()
    (granted / "main").write_text("main")
    (granted / "twin").write_text("twin")
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rw(granted)))
    Drained(monkeypatch)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    async with Supervisor.open(doc) as sup:
        argv = [sys.executable, "-c", SLOT_TWINS, str(out / "r.json"), str(granted)]
        status = await sup.run(argv, forward_signals=False)
    assert status == 0
    r = json.loads((out / "r.json").read_text())
    assert r["twin_tid"] % 1024 == r["main_tid"] % 1024, "the program made no such twin"
    assert set(r["main"]) == {"main"}
    assert set(r["twin"]) == {"twin"}


#: Threads opening static and granted files at once; a child that keeps creating
#: (Python's, queued by the helpers) after the command has exited.
BUSY_THEN_EXIT = r"""
import os, sys, threading, time
static, granted, work = sys.argv[1:4]
if os.fork() == 0:
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            os.close(os.open(os.path.join(work, "c"), os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError:
            pass
    os._exit(0)
def spin(path):
    for _ in range(200):
        os.close(os.open(path, os.O_RDONLY))
threads = [threading.Thread(target=spin, args=(p,)) for p in [static, granted] * 4]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.trio
async def test_many_runs_in_one_process_leave_no_thread_and_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run starts helper threads (per serving thread) and the readers' opener; each
    run's end must end them all and close what they held, though a descendant keeps the
    helpers receiving (late receipts) as the command exits."""
    granted, out = tmp_path / "granted", tmp_path / "out"
    granted.mkdir()
    (granted / "g").write_text("g")
    (out / "work").mkdir(parents=True)
    (out / "s").write_text("s")
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rw(granted)))
    Drained(monkeypatch)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    argv = [sys.executable, "-c", BUSY_THEN_EXIT, str(out / "s"), str(granted / "g"),
            str(out / "work")]  # fmt: skip
    # One run first: what is made once per process (trio's own threads) is there by then.
    async with Supervisor.open(doc) as sup:
        assert await sup.run(argv, forward_signals=False) == 0
    await trio.sleep(1.5)  # the first run's descendant is gone
    before_fds, before_tasks = fds(), tasks()
    for _ in range(4):
        async with Supervisor.open(doc) as sup:
            assert await sup.run(argv, forward_signals=False) == 0
    await trio.sleep(1.5)  # each descendant has ended (its helpers then see every task gone)
    await wait_until(lambda: tasks() <= before_tasks, "the runs' threads to end", 30)
    assert not leaked(before_fds)
