"""Attacks on the early exec helper (its ruleset handed over with its spec), the lifeline
removing an empty cgroup itself, the plain phase's policy reload, and signals at the
threads that inject descriptors: the command is never less confined, no descendant outlives
the run, a reload applies whole or not at all, and no injection is lost."""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised import events_of, make_tree, policy_file, policy_text, wait_for

from llsupervise.landlock import syscall_numbers
from llsupervise.supervisor.launch import exec_helper
from llsupervise.supervisor.launch.helper import Helper
from llsupervise.supervisor.launch.lifeline import Lifeline

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "llsupervise"]

#: Runs the CLI with core.PLAIN_FOR_S set (argv[1]) and reports whether trio was imported.
PROBE = """
import contextlib, io, json, sys
from llsupervise.supervisor import core
core.PLAIN_FOR_S = float(sys.argv.pop(1))
from llsupervise.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main(sys.argv[1:])
print(json.dumps({"status": status, "trio": "trio" in sys.modules}))
"""


def headless(
    root: Path, policy_path: Path, argv: list[str], pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, "600", "run", "--headless", "--policy", str(policy_path),
         "--", *argv],
        cwd=root, env=ENV, capture_output=True, text=True, timeout=60, check=False,
        pass_fds=pass_fds,
    )  # fmt: skip


# -- 1. the early helper and the SCM_RIGHTS hand-over ----------------------------------------

#: Reports its descriptors (what each is), its seccomp/no_new_privs state and a read of argv[2].
INSPECT = r"""
import json, os, sys
fds = {}
d = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
for name in os.listdir(d):
    if int(name) != d:
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
with open("/proc/self/status") as f:
    status = {l.split(":")[0]: l.split(":")[1].strip() for l in f
              if l.startswith(("Seccomp:", "NoNewPrivs:"))}
try:
    open(sys.argv[2], "rb").read()
    secret = "read"
except OSError as e:
    secret = e.errno
with open(sys.argv[1], "w") as f:
    json.dump({"fds": fds, "status": status, "secret": secret}, f)
"""


@pytest.mark.parametrize("passed", [False, True], ids=["nothing passed", "a pipe passed"])
def test_the_command_has_only_stdio_and_what_we_pass_and_is_confined(
    tmp_path: Path, passed: bool
) -> None:
    """Only stdio, and a descriptor the user passes on (a transparent wrapper's): nothing of
    ours (no ruleset, no listener), with seccomp, no_new_privs and the static layer on."""
    root = Path(os.path.realpath(tmp_path))
    paths = make_tree(root)
    policy_path = policy_file(root)
    out = paths["out"] / "inspect.json"
    r, w = os.pipe()
    try:
        done = headless(root, policy_path, [sys.executable, "-I", "-c", INSPECT, str(out),
                                            str(paths["secret"] / "s")],
                        pass_fds=(w,) if passed else ())  # fmt: skip
    finally:
        os.close(r)
        os.close(w)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    expected = ["0", "1", "2", str(w)] if passed else ["0", "1", "2"]
    assert sorted(report["fds"], key=int) == expected, report["fds"]
    if passed:
        assert report["fds"][str(w)].startswith("pipe:")
    assert not any("landlock" in t or "seccomp" in t for t in report["fds"].values())
    assert report["status"] == {"Seccomp": "2", "NoNewPrivs": "1"}
    assert report["secret"] == 13  # EACCES: the static layer is there


def _spec(marker: Path) -> dict[str, object]:
    return {"argv": ["/bin/sh", "-c", f"echo ran > {marker}"], "new_session": False,
            "nofile": None, "ruleset": True, "supervisor_pid": os.getpid(),
            "nr_restrict": syscall_numbers()[2], "restrict_flags": 0}


def _helper_outcome(
    helper: Helper, spec: dict[str, object], fds: list[int]
) -> tuple[bytes, int]:
    socket.send_fds(helper.sock, [b"R"], fds) if fds else helper.sock.sendall(b"R")
    spec_w, helper.spec_w = helper.spec_w, None
    assert spec_w is not None
    with os.fdopen(spec_w, "wb") as pipe:
        pipe.write(marshal.dumps(spec))
    msg = b""
    helper.sock.settimeout(20)
    while chunk := helper.sock.recv(4096):
        msg += chunk
        if msg.startswith(exec_helper.MSG_LISTENER):
            helper.process.kill()  # confined enough to hand a listener over: never expected
            break
    helper.sock.close()
    return msg, helper.process.wait(timeout=20)


def test_a_spec_whose_ruleset_never_came_is_never_executed(tmp_path: Path) -> None:
    """The 'R' arrives without SCM_RIGHTS: the helper must report and not exec."""
    marker = tmp_path / "ran"
    msg, status = _helper_outcome(Helper.start(), _spec(marker), [])
    assert msg.startswith(exec_helper.MSG_ERROR), msg
    assert status == 126
    time.sleep(0.2)
    assert not marker.exists()


def test_a_descriptor_that_is_no_ruleset_is_never_executed(tmp_path: Path) -> None:
    """Any other descriptor in place of the ruleset: landlock_restrict_self fails, no exec."""
    marker = tmp_path / "ran"
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        msg, status = _helper_outcome(Helper.start(), _spec(marker), [fd])
    finally:
        os.close(fd)
    assert msg.startswith(exec_helper.MSG_ERROR), msg
    assert status == 126
    time.sleep(0.2)
    assert not marker.exists()


def test_a_helper_whose_supervisor_died_before_its_spec_never_execs(tmp_path: Path) -> None:
    """An early helper outlives a supervisor killed while loading the policy: it reaches
    the end of its spec pipe and exits, never running anything."""
    marker = tmp_path / "ran"
    code = """
import os, sys, time
from llsupervise.supervisor.launch.helper import Helper
h = Helper.start()
print(h.process.pid, flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            if stat.split(") ")[1][0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.05)
    assert time.monotonic() < deadline, "the orphaned helper lives on"
    assert not marker.exists()


# -- 2. the lifeline: descendants must not survive -------------------------------------------

#: Started in the background by the command, which then exits: argv[1] a token, argv[2] a
#: heartbeat file. "hop": fork, the parent exits, forever (pids change under the kill).
#: "zombie-leader": the main thread exits alone (SYS_exit), a thread beats on.
SURVIVOR = r"""
import ctypes, os, sys, threading, time
token, beat, how = sys.argv[1], sys.argv[2], sys.argv[3]
def beating():
    while True:
        with open(beat, "a") as f:
            f.write(".")
        time.sleep(0.01)
if how == "hop":
    os.setsid()
    while True:
        if os.fork():
            os._exit(0)
        with open(beat, "a") as f:
            f.write(".")
elif how == "zombie-leader":
    threading.Thread(target=beating).start()
    time.sleep(0.05)
    ctypes.CDLL(None).syscall(60, 0)  # SYS_exit: this thread only
"""


def _lives(token: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        pids.append(int(name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("how", ["hop", "zombie-leader"])
def test_no_descendant_outlives_the_run(tmp_path: Path, how: str) -> None:
    lifeline = Lifeline.create()
    if lifeline is None:
        pytest.skip("no writable cgroup v2")
    lifeline.close()
    root = Path(os.path.realpath(tmp_path))
    paths = make_tree(root)
    policy_path = policy_file(root)
    token = f"lltoken{os.getpid()}{how}"
    beat = paths["out"] / "beat"
    script = paths["out"] / "survivor.py"
    script.write_text(SURVIVOR)
    shell = (f"{sys.executable} -I {script} {token} {beat} {how} </dev/null >>{beat}.log 2>&1 & "
             f"while [ ! -s {beat} ]; do sleep 0.01; done; sleep 0.1")
    done = headless(root, policy_path, ["/bin/sh", "-c", shell])
    try:
        assert done.returncode == 0, done.stderr
        time.sleep(0.5)
        size = beat.stat().st_size
        time.sleep(0.5)
        assert beat.stat().st_size == size, "a descendant still beats after the run"
        assert _lives(token) == []
    finally:
        for pid in _lives(token):
            os.kill(pid, signal.SIGKILL)


# -- 3. the plain phase's policy reload --------------------------------------------------------

#: Reads argv[3] once, says so (argv[1]), waits for argv[2], reads again; results to argv[4].
READ_TWICE = r"""
import os, sys, time
ready, go, path, out = sys.argv[1:5]
def read():
    try:
        open(path, "rb").read()
        return "ok"
    except OSError as e:
        return "err %d" % e.errno
first = read()
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
with open(out, "w") as f:
    f.write(first + "," + read())
"""


GRANT_DATA = '\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{}/data"]\n'


@contextlib.contextmanager
def reading_twice(root: Path, policy: str) -> Iterator[tuple[Path, Path, Path, list[str]]]:
    """A headless run (no trio: nothing is asked) of READ_TWICE on data/x under ``policy``,
    once it has read the first time: (the policy file, its log, the result file, and, once
    the block is left and the run is over, [stdout, stderr]). Leaving the block lets the
    command read again and end."""
    make_tree(root)
    policy_path, log = root / "policy.toml", root / "log.jsonl"
    policy_path.write_text(policy)
    ready, go, out = root / "out" / "ready", root / "out" / "go", root / "out" / "result"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, "600", "run", "--headless", "--policy", str(policy_path),
         "--log", str(log), "--", sys.executable, "-I", "-c", READ_TWICE, str(ready), str(go),
         str(root / "data" / "x"), str(out)],
        cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    outputs: list[str] = []
    try:
        wait_for(ready.exists, "the command never ran", 60, proc)
        yield policy_path, log, out, outputs
    finally:
        go.touch()
        outputs.extend(proc.communicate(timeout=60))


def test_a_revocation_saved_during_the_plain_phase_takes_effect(tmp_path: Path) -> None:
    """A saved policy that withdraws a grant must deny the next use, without trio."""
    root = Path(os.path.realpath(tmp_path))
    with reading_twice(root, policy_text(root, supervisor_rules=GRANT_DATA.format(root))) as (
        policy_path, log, out, outputs,
    ):
        new = root / "policy.toml.new"  # an editor's save: write aside, rename over
        new.write_text(policy_text(root))
        os.rename(new, policy_path)
        while not any(e["event"] == "reload" for e in events_of(log)):
            time.sleep(0.01)
    assert [e["ok"] for e in events_of(log) if e["event"] == "reload"] == [True], outputs
    assert out.read_text() == "ok,err 13"


def test_a_reload_storm_of_bad_saves_changes_nothing_and_the_run_ends(tmp_path: Path) -> None:
    """Saves that do not load (half-written files, many) leave the grant as it was: no
    partial apply; and the run ends when the command does."""
    root = Path(os.path.realpath(tmp_path))
    good = policy_text(root, supervisor_rules=GRANT_DATA.format(root))
    with reading_twice(root, good) as (policy_path, log, out, outputs):
        for i in range(8):  # truncated saves, each a different size
            policy_path.write_text(good[: len(good) // 2 + i] + "\n[[[")
            time.sleep(0.25)
        while sum(e["event"] == "reload" for e in events_of(log)) < 2:
            time.sleep(0.01)
    reloads = [e for e in events_of(log) if e["event"] == "reload"]
    assert reloads and not any(e["ok"] for e in reloads)
    assert out.read_text() == "ok,ok"
    assert json.loads(outputs[0].splitlines()[-1])["status"] == 0


# -- 4. signals -------------------------------------------------------------------------------


def test_forwarded_signals_still_reach_the_command_in_the_plain_phase(tmp_path: Path) -> None:
    """Every other thread refuses signals: SIGTERM at the supervisor must still be handled
    (main thread) and passed on, ending the command; nothing is left behind."""
    root = Path(os.path.realpath(tmp_path))
    paths = make_tree(root)
    policy_path = policy_file(root)
    ready = paths["out"] / "ready"
    code = f"import time; open({str(ready)!r}, 'w').close(); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, "600", "run", "--headless", "--policy", str(policy_path),
         "--", sys.executable, "-I", "-c", code],
        cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(20):  # a burst, as a busy terminal may send
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=10)
    result = json.loads(stdout.splitlines()[-1])
    assert result["status"] == 128 + signal.SIGTERM, stderr
