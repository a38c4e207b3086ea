"""Attacks on a headless run that starts trio only when needed (Supervisor.run_trio_on_demand,
supervisor.door): the plain phase before trio, the hand-over to trio, signals in between.

In-process tests widen a race window by holding the run once it has seen the command exit
(the kernel, the child and the serving threads are real); command-line tests run
llsupervise as a subprocess with core.PLAIN_FOR_S set, and may slow trio's import down (a
cold cache) to widen the gap between the plain signal handlers and trio's receiver.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from supervised import SECRET, events_of, make_tree, policy, policy_file, wait_for
from test_supervisor_signals import caught_signals, finish

from llsupervise.supervisor import core
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.door import Door

pytestmark = pytest.mark.kernel

#: Only keeps a broken test from hanging.
LIMIT = 60.0

#: The command line with core.PLAIN_FOR_S set (argv[1]) and trio's import slowed down by
#: argv[2] seconds (a finder that sleeps, then lets the usual ones import it).
CLI = """
import sys, time
from llsupervise.supervisor import core
core.PLAIN_FOR_S = float(sys.argv.pop(1))
delay = float(sys.argv.pop(1))
class SlowTrio:
    def find_spec(self, name, path=None, target=None):
        if name == "trio" and delay:
            time.sleep(delay)
        return None
sys.meta_path.insert(0, SlowTrio())
from llsupervise.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: The direct child forks a grandchild and exits 5 at once. The
#: grandchild waits for that exit (and for argv[3] to exist, if given), then tries to read
#: argv[1] for a while: each outcome a line of argv[2] ("READ <bytes>" or "ERR <errno>"),
#: through a descriptor opened before.
ORPHAN_READER = r"""
import os, sys, time
secret, report = sys.argv[1], sys.argv[2]
go = sys.argv[3] if len(sys.argv) > 3 else None
fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
parent = os.getpid()
if os.fork() == 0:
    while os.getppid() == parent or (go and not os.path.exists(go)):
        time.sleep(0.001)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        try:
            f = open(secret, "rb")
            os.write(fd, b"READ " + f.read() + b"\n")
        except OSError as e:
            os.write(fd, b"ERR %d\n" % e.errno)
    os._exit(0)
os._exit(5)
"""


def fds() -> dict[str, str]:
    """Our descriptors, each with what it is."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return found


def leaked(before: dict[str, str]) -> dict[str, str]:
    """Descriptors opened since ``before`` and still open (a directory's listing aside)."""
    return {fd: what for fd, what in fds().items() if before.get(fd) != what}


def secret_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    tmp_path.mkdir(exist_ok=True)
    root = Path(os.path.realpath(tmp_path))
    paths = make_tree(root)
    return root, paths["secret"] / "s", paths["out"] / "report"


def run_in_process(
    root: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch, hold: Any
) -> tuple[int, list[dict[str, Any]], dict[str, int]]:
    """run_trio_on_demand in this (main) thread, calling ``hold(running, counts)`` once it
    has seen the command exit; returns the status, the events, and how many calls the door
    accepted and refused."""
    counts = {"accepted": 0, "refused": 0}
    original_call, original_ended = Door.call_soon, core._ended_first

    def ended_first(running: Any, seconds: float) -> bool | None:
        ended = original_ended(running, seconds)
        if ended:
            hold(running, counts)
        return ended

    def call_soon(self: Door, fn: Any, *args: Any) -> bool:
        ok = original_call(self, fn, *args)
        counts["accepted" if ok else "refused"] += 1
        return ok

    monkeypatch.setattr(Door, "call_soon", call_soon)
    monkeypatch.setattr(core, "_ended_first", ended_first)
    monkeypatch.setattr(core, "PLAIN_FOR_S", 600.0)
    events: list[dict[str, Any]] = []
    with Supervisor.opened(policy(root)) as sup:
        sup.listeners.append(lambda event: events.append(dict(event)))
        status = sup.run_trio_on_demand(argv)
    return status, events, counts


# -- 1. a request the door refuses fails closed ----------------------------------------------


def test_a_request_after_serving_stopped_fails_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct child exits; serving stops (held: the grandchild asks only then). Nothing
    reads its request: it waits until the listener closes, never answered, never handed
    to trio (nothing reaches the door). Never the secret; the run ends; nothing leaked."""
    root, secret, report = secret_tree(tmp_path)
    go = root / "out" / "go"  # made once serving has stopped: only then does it ask

    def hold(running: Any, counts: dict[str, int]) -> None:
        running.loop.stop()
        running.thread.join()
        go.touch()
        time.sleep(0.3)  # the grandchild, asking every moment, now waits on a dead loop

    before = fds()
    started = time.monotonic()
    status, events, counts = run_in_process(
        root, [sys.executable, "-I", "-c", ORPHAN_READER, str(secret), str(report), str(go)],
        monkeypatch, hold,
    )  # fmt: skip
    assert time.monotonic() - started < LIMIT
    assert status == 5
    assert counts == {"accepted": 0, "refused": 0}  # serving had stopped: nothing came
    assert exit_logged(events, 5), events[-3:]
    time.sleep(0.2)  # the grandchild, if it survived the run, writes what it got
    got = report.read_bytes()
    assert SECRET not in got and b"READ" not in got, got
    assert not leaked(before)


def test_a_call_queued_as_the_command_exits_is_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between _ended_first (the command exited, the bell silent) and the serving
    thread's stop: a grandchild's denial is queued in between. The door stays open, trio is
    started for it: the denial is logged, refused, never performed; the run ends, and what
    the denial held (its descriptors) is released. Five rounds: trio's scheduling decides
    whether the question's task is cancelled before it answers."""

    def hold(running: Any, counts: dict[str, int]) -> None:
        wait_for(lambda: counts["accepted"] > 0, "the grandchild never asked")

    for round_ in range(5):
        root, secret, report = secret_tree(tmp_path / str(round_))
        before = fds()
        with monkeypatch.context() as patched:
            status, events, _counts = run_in_process(
                root, [sys.executable, "-I", "-c", ORPHAN_READER, str(secret), str(report)],
                patched, hold,
            )  # fmt: skip
        assert status == 5
        denials = [e for e in events if e["event"] == "denial" and e["path"] == str(secret)]
        assert denials and {e["decision"] for e in denials} == {"deny"}, events
        assert exit_logged(events, 5), events[-3:]
        time.sleep(0.2)
        got = report.read_bytes()
        assert SECRET not in got and b"READ" not in got, got
        assert not leaked(before), (round_, sorted(set(got.splitlines())))


@pytest.mark.parametrize("command", ["true", "asks"])
def test_a_run_leaks_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The plain path (nothing asked) and the trio path (a question) close what they opened:
    the bell, the listener, pidfds."""
    root, secret, _report = secret_tree(tmp_path)
    monkeypatch.setattr(core, "PLAIN_FOR_S", 600.0)
    argv = ["/bin/true"] if command == "true" else ["/bin/cat", str(secret)]
    before = fds()
    with Supervisor.opened(policy(root)) as sup:
        status = sup.run_trio_on_demand(argv)
    assert status == (0 if command == "true" else 1)
    assert not leaked(before)


@pytest.mark.parametrize("plain_for", [600.0, 0.0], ids=["before trio", "in trio"])
def test_descendants_asking_after_the_command_exited_get_nothing(
    tmp_path: Path, plain_for: float
) -> None:
    """The command exits at once; its orphan keeps asking for the secret. Whether the run
    is still before trio or in it: never the secret, the run ends with the command's status,
    the exit is logged."""
    root, secret, report = secret_tree(tmp_path)
    policy_path = policy_file(root)
    log = root / "log.jsonl"
    proc = cli(
        policy_path, log, sys.executable, "-I", "-c", ORPHAN_READER, str(secret), str(report),
        plain_for=plain_for,
    )  # fmt: skip
    assert finish(proc) == 5
    assert exit_logged(events_of(log), 5)
    time.sleep(0.3)
    got = report.read_bytes() if report.exists() else b""
    assert SECRET not in got and b"READ" not in got, got


# -- 2. floods before trio --------------------------------------------------------------------

#: N threads each open their own secret file at once, while the main thread execs a file it
#: may not execute M times: each outcome a line of argv[1]; exits 0.
FLOOD = r"""
import os, sys, threading
report, secret_dir, n, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
barrier = threading.Barrier(n + 1)
out = []
def reader(i):
    barrier.wait()
    try:
        with open(os.path.join(secret_dir, "s%d" % i), "rb") as f:
            out.append("READ %d" % i)
    except OSError as e:
        out.append("ERR %d %d" % (i, e.errno))
threads = [threading.Thread(target=reader, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
barrier.wait()
for _ in range(m):
    try:
        os.execv(os.path.join(secret_dir, "tool"), ["tool"])
    except OSError as e:
        assert e.errno == 13, e
for t in threads:
    t.join()
with open(report, "w") as f:
    f.write("\n".join(sorted(out)))
"""


def cli(
    policy_path: Path, log: Path, *command: str, plain_for: float, import_delay: float = 0.0,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, str(plain_for), str(import_delay), "run", "--headless",
         "--policy", str(policy_path), "--log", str(log), "--", *command],
        **{"start_new_session": True, **popen},
    )  # fmt: skip


def exit_logged(events: list[dict[str, Any]], status: int) -> bool:
    """The run's last event is its command's exit, with ``status``."""
    starts = [e for e in events if e["event"] == "start"]
    return bool(starts) and events[-1] == {
        "event": "exit", "pid": starts[0]["pid"], "status": status
    }


def test_a_flood_of_denials_and_exec_reports_before_trio_is_all_answered(
    tmp_path: Path,
) -> None:
    """Before trio (PLAIN_FOR_S: 10 minutes), 48 concurrent denials and 200 refused execs:
    the bell rings once, trio starts, every denial is logged and refused (EACCES), every
    thread returns, and the run ends with the command's status."""
    root, _secret, report = secret_tree(tmp_path)
    n, m = 48, 200
    for i in range(n):
        (root / "secret" / f"s{i}").write_bytes(SECRET)
    tool = root / "secret" / "tool"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    policy_path = policy_file(root)
    log = root / "log.jsonl"
    proc = cli(
        policy_path, log, sys.executable, "-I", "-c", FLOOD, str(report),
        str(root / "secret"), str(n), str(m), plain_for=600.0,
    )  # fmt: skip
    assert finish(proc) == 0
    assert report.read_text().splitlines() == sorted(f"ERR {i} 13" for i in range(n))
    events = events_of(log)
    denied = {e["path"] for e in events if e["event"] == "denial" and e["decision"] == "deny"}
    assert {str(root / "secret" / f"s{i}") for i in range(n)} <= denied
    assert str(tool) in denied  # the exec reports reached trio
    assert exit_logged(events, 0), events[-3:]


# -- 3. signals across the hand-over ---------------------------------------------------------


def wait_forwarding(proc: subprocess.Popen[bytes]) -> None:
    wait_for(
        lambda: {signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT} <= caught_signals(proc.pid),
        "llsupervise never caught the forwarded signals",
        LIMIT,
    )


#: Marks argv[1] and exits 3 after argv[2] seconds.
MARK_AND_EXIT = r"""
import sys, time
open(sys.argv[1], "w").close()
time.sleep(float(sys.argv[2]))
sys.exit(3)
"""


def test_a_signal_while_trio_imports_after_the_command_exited(tmp_path: Path) -> None:
    """trio is started by the timer (PLAIN_FOR_S), the command exits while trio imports, and
    a SIGTERM arrives then (a service manager stopping us, a closed terminal's SIGHUP). The
    plain handler forwards it with Popen.send_signal, whose poll() reaps the command: trio's
    _serve must still learn the exit (status 3, the exit event), not crash on a pid gone."""
    root, _secret, _report = secret_tree(tmp_path)
    policy_path = policy_file(root)
    log, mark = root / "log.jsonl", root / "out" / "mark"
    proc = cli(
        policy_path, log, sys.executable, "-I", "-c", MARK_AND_EXIT, str(mark), "0.2",
        plain_for=0.01, import_delay=3.0, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_forwarding(proc)
        wait_for(mark.exists, "the command did not start", LIMIT)
        time.sleep(1.0)  # the command has exited; trio is still importing
        proc.send_signal(signal.SIGTERM)
        status = finish(proc)
    finally:
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Traceback" not in err, err
    assert status == 3, err
    events = events_of(log)
    assert exit_logged(events, 3), events[-3:]


#: Counts the SIGINTs it gets for a while after saying it is ready (argv[1] appears), then
#: exits with 100 + their number.
COUNT_SIGINT = r"""
import os, signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda s, f: got.append(s))
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, lambda s, f: os._exit(50 + s))
open(sys.argv[1], "w").close()
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)
os._exit(100 + len(got))
"""

#: (PLAIN_FOR_S, seconds trio takes to import): before trio, while trio imports, in trio.
SIGNAL_PHASES = {"before trio": (600.0, 0.0), "trio importing": (0.0, 5.0), "in trio": (0.0, 0.0)}


def _controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.parametrize("phase", SIGNAL_PHASES)
def test_ctrl_c_on_a_terminal_reaches_the_command_once_and_spares_us(
    tmp_path: Path, phase: str
) -> None:
    """A Ctrl-C typed on our controlling terminal reaches the command (same process group)
    once: not forwarded again, and never our death (status 101, with the exit logged)."""
    root, _secret, _report = secret_tree(tmp_path)
    policy_path = policy_file(root)
    log, mark = root / "log.jsonl", root / "out" / "mark"
    master, slave = os.openpty()
    plain_for, delay = SIGNAL_PHASES[phase]
    proc = cli(
        policy_path, log, sys.executable, "-I", "-c", COUNT_SIGINT, str(mark),
        plain_for=plain_for, import_delay=delay, stdin=slave, stdout=slave, stderr=slave,
        preexec_fn=_controlling_terminal,
    )  # fmt: skip
    os.close(slave)
    drained: list[bytes] = []
    drain = threading.Thread(target=_drain, args=(master, drained), daemon=True)
    drain.start()
    try:
        wait_forwarding(proc)
        wait_for(mark.exists, "the command did not start", LIMIT)
        if phase == "in trio":
            time.sleep(1.0)  # trio's receiver has taken over
        os.write(master, b"\x03")
        status = finish(proc)
    finally:
        os.close(master)
    assert status == 101, b"".join(drained)
    events = events_of(log)
    assert exit_logged(events, 101), events[-3:]


def _drain(fd: int, into: list[bytes]) -> None:
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            into.append(chunk)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT])
def test_a_signal_during_trio_import_is_forwarded(tmp_path: Path, signum: int) -> None:
    """No terminal: a signal arriving while trio imports (the plain handlers' last moments)
    reaches the command, and we survive to return its status."""
    root, _secret, _report = secret_tree(tmp_path)
    policy_path = policy_file(root)
    log, mark = root / "log.jsonl", root / "out" / "mark"
    trap = r"""
import os, signal, sys
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, lambda s, f: os._exit(100 + s))
open(sys.argv[1], "w").close()
while True:
    signal.pause()
"""
    proc = cli(
        policy_path, log, sys.executable, "-I", "-c", trap, str(mark),
        plain_for=0.0, import_delay=3.0,
    )  # fmt: skip
    wait_forwarding(proc)
    wait_for(mark.exists, "the command did not start", LIMIT)
    proc.send_signal(signum)
    assert finish(proc) == 100 + signum
    assert events_of(log)[-1]["status"] == 100 + signum
