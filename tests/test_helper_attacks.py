"""Attacks on the compiled receive loop's helper threads (engine._fastpath: Receiver, Hand,
Handoff; engine.loop._receive_handed), made by the supervised program itself, on the real
kernel.

The floods below end by themselves after FLOOD_SECONDS: only so that a broken supervisor,
whose commit (in trio's thread) or stop the flood holds off, ends the test at all. What the
tests assert is an order (the commit, or the run's end, came while the flood still ran),
never a duration."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path

import pytest
import trio
from supervised import policy_text, wait_until
from test_compiled_grants import Drained, rw

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel

#: Threads that create (O_CREAT: always Python's, queued by the helpers) in the static
#: read-write directory, without pause, until told to stop (or for FLOOD seconds at most);
#: the main thread opens a granted file, as KEEP_OPENING in test_compiled_grant_attacks.
#: Records when the flood ended.
FLOOD_AND_OPEN = r"""
import json, os, sys, threading, time
out, path, marks, work, creators, flood = sys.argv[1:7]
creators, flood = int(creators), float(flood)
deadline = time.monotonic() + flood
stop = threading.Event()
counts = [0] * creators
def create(i):
    name = os.path.join(work, f"c{i}")
    while not stop.is_set() and time.monotonic() < deadline:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600))
        counts[i] += 1
threads = [threading.Thread(target=create, args=(i,)) for i in range(creators)]
for t in threads:
    t.start()
r = {"before": [], "after": []}
while not os.path.exists(os.path.join(marks, "stop")) and time.monotonic() < deadline:
    after = os.path.exists(os.path.join(marks, "after"))
    try:
        os.close(os.open(path, os.O_RDONLY))
        got = 0
    except OSError as e:
        got = e.errno
    r["after" if after else "before"].append(got)
    if len(r["before"]) == 50 and not after:
        with open(os.path.join(marks, "progress"), "w") as f:
            f.write("50")
    if after and len(r["after"]) == 50:
        with open(os.path.join(marks, "after done"), "w") as f:
            f.write("50")
    time.sleep(0.001)
stop.set()
for t in threads:
    t.join()
r["flood ended"] = time.time()
r["created"] = sum(counts)
with open(out, "w") as f:
    json.dump(r, f)
"""

FLOOD_SECONDS = 20.0


@pytest.mark.trio
async def test_a_commit_is_not_held_off_by_a_flood_of_requests_for_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload's commit waits for the old serving thread to see its wake
    (engine.loop._switch). Receiver.next looks at the wake pipe before it takes from the
    Handoff queue: a program that keeps creations queued at all times cannot hold the
    commit off (trio's thread, which commits, would be blocked meanwhile, and the revoked
    rule stay in force). Found when next() took from the queue first."""
    granted, out = tmp_path / "granted", tmp_path / "out"
    marks, work = out / "marks", out / "work"
    granted.mkdir()
    marks.mkdir(parents=True)
    work.mkdir()
    f = granted / "f"
    f.write_text("granted")
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rw(granted)))
    Drained(monkeypatch)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    status: list[int] = []
    committed: list[float] = []
    async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:

        async def run_it() -> None:
            argv = [
                sys.executable, "-c", FLOOD_AND_OPEN, str(out / "r.json"), str(f), str(marks),
                str(work), os.environ.get("CREATORS", "64"), str(FLOOD_SECONDS),
            ]  # fmt: skip
            status.append(await sup.run(argv, forward_signals=False))

        nursery.start_soon(run_it)
        await wait_until(lambda: (marks / "progress").exists(), "opens in the loop")
        await trio.sleep(0.5)  # the flood is well under way
        generation = sup.generation
        replacement = policy.with_name("p.toml.new")
        replacement.write_text(policy_text(tmp_path))
        os.replace(replacement, policy)
        await wait_until(lambda: sup.generation > generation, "the reload's commit", 90)
        committed.append(time.time())
        (marks / "after").write_text("")
        await wait_until(lambda: (marks / "after done").exists(), "opens after the commit", 90)
        (marks / "stop").write_text("")
    assert status == [0]
    result = json.loads((out / "r.json").read_text())
    assert result["created"] > 0
    assert set(result["after"]) == {errno.EACCES}
    # The commit came while the flood ran (it runs until told to stop, after the commit).
    assert committed[0] < result["flood ended"], "the commit waited for the flood's end"


#: Forks a child that floods creations (as above, for FLOOD seconds at most, then notes that
#: the whole flood ran, unless serving stopped under it) from many threads, waits until the
#: flood is under way, and exits: the run is over, and the supervisor is to stop serving
#: (NotificationLoop.stop) and end the rest.
FLOOD_THEN_EXIT = r"""
import os, sys, threading, time
work, creators, flood = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    # Opened now, written at the end (a write is not trapped: the note needs no serving).
    note = os.open(os.path.join(work, "flood ended"), os.O_CREAT | os.O_WRONLY, 0o600)
    deadline = time.monotonic() + flood
    cut = []
    def create(i):
        name = os.path.join(work, f"c{i}")
        while time.monotonic() < deadline:
            try:
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError:  # ENOSYS: the supervisor stopped serving (the run has ended)
                cut.append(i)
                return
    threads = [threading.Thread(target=create, args=(i,)) for i in range(creators)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    os.write(w, b"x")
    for t in threads:
        t.join()
    if not cut:
        os.write(note, b"the whole flood ran")
    os._exit(0)
os.close(w)
os.read(r, 1)
"""


@pytest.mark.trio
async def test_the_run_ends_when_the_command_exits_though_a_descendant_floods(
    tmp_path: Path,
) -> None:
    """When the command exits the supervisor stops its loop (loop.stop(): the serving
    thread's wake) and joins its thread, then ends what is left: a descendant that keeps
    creations queued for Python does not keep the serving thread from that wake, so the
    run ends, and the descendant with it, mid-flood. Found when next() took from the queue
    first (the run ended only once the descendant stopped of its own accord)."""
    out = tmp_path / "out"
    work = out / "work"
    work.mkdir(parents=True)
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path))
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    async with Supervisor.open(doc) as sup:
        argv = [sys.executable, "-c", FLOOD_THEN_EXIT, str(work), "64", str(FLOOD_SECONDS)]
        status = await sup.run(argv, forward_signals=False)
    assert status == 0
    assert (work / "flood ended").read_text() == "", "the run waited for the descendant's flood"


#: Sends the helpers' wake signal (SIGRTMIN+6) to the supervisor, process-wide and at each
#: of its threads, then opens a static file; one errno per attempt (0: sent).
WAKE_THE_SUPERVISOR = r"""
import json, os, signal, sys
out, sup, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sig = signal.SIGRTMIN + 6
def send(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno
r = {"process": send(lambda: os.kill(sup, sig)), "threads": []}
try:
    tids = [int(t) for t in os.listdir(f"/proc/{sup}/task")]
except OSError:
    tids = []
for tid in tids:
    r["threads"].append(send(lambda: os.kill(tid, sig)))
with open(path) as f:
    r["read"] = f.read()
with open(out, "w") as f:
    json.dump(r, f)
"""


@pytest.mark.trio
async def test_the_program_cannot_send_the_wake_signal_to_the_supervisor(tmp_path: Path) -> None:
    """WAKE_SIGNAL ends a helper's receive, and its handler is the process's: under the
    default signal scope the program cannot send it (nor any signal) to the supervisor, and
    the loop serves on."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("static")
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path))
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    async with Supervisor.open(doc) as sup:
        argv = [sys.executable, "-c", WAKE_THE_SUPERVISOR, str(out / "r.json"),
                str(os.getpid()), str(out / "f")]  # fmt: skip
        status = await sup.run(argv, forward_signals=False)
    assert status == 0
    result = json.loads((out / "r.json").read_text())
    assert result["process"] == errno.EPERM
    assert set(result["threads"]) <= {errno.EPERM}
    assert result["read"] == "static"
