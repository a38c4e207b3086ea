"""``llsupervise run --headless`` as a transparent wrapper: signals, exit status, stdio.

llsupervise runs as a real subprocess in a new session (no controlling terminal, so SIGINT is
forwarded too: no terminal sent it to the command already).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from supervised import policy_text

pytestmark = pytest.mark.kernel

#: Only keeps a broken test from hanging.
LIMIT = 60.0

#: Traps the forwarded signals; on one, writes its name to a file and exits with 100 + N.
TRAPPER = r"""
import os, signal, sys
got, ready = sys.argv[1], int(sys.argv[2])
def handler(signum, frame):
    with open(got, "w") as f:
        f.write(signal.Signals(signum).name)
    os._exit(100 + signum)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, handler)
os.write(ready, b"ready\n")
os.close(ready)
while True:
    signal.pause()
"""

#: Says it is ready, then waits without trapping anything.
WAITER = r"""
import os, signal, sys
ready = int(sys.argv[1])
os.write(ready, b"ready\n")
os.close(ready)
while True:
    signal.pause()
"""

#: Kills itself with the signal named on the command line.
SUICIDE = r"""
import os, signal, sys
os.kill(os.getpid(), signal.Signals[sys.argv[1]])
"""

#: Echoes stdin reversed to stdout, a prefix of it to stderr; reports which files fds 0-2 are.
ECHO = r"""
import os, sys
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(data[::-1])
sys.stdout.buffer.flush()
sys.stderr.buffer.write(b"err:" + data[:4096])
sys.stderr.buffer.flush()
with open(sys.argv[1], "w") as f:
    f.write(" ".join("%d:%d" % (os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (0, 1, 2)))
sys.exit(7)
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    path = tmp_path / "policy.toml"
    path.write_text(policy_text(tmp_path))
    return path


#: The command line, with core.PLAIN_FOR_S set first to the seconds given before it.
CLI = """
import sys
from llsupervise.supervisor import core
core.PLAIN_FOR_S = float(sys.argv.pop(1))
from llsupervise.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: A run's two phases (see Supervisor.run_trio_on_demand): before trio starts (our own
#: handlers forward), and in trio (its receiver does); by the seconds a run goes without it.
PHASES = {"before trio": 600.0, "in trio": 0.0}


def start(
    policy: Path, *command: str, pass_fds: tuple[int, ...] = (), plain_for: float = 0.1
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, str(plain_for), "run", "--headless", "--policy", str(policy),
         "--", sys.executable, "-I", "-c", *command],  # -I: nothing asked (cwd not read)
        pass_fds=pass_fds, start_new_session=True,
    )  # fmt: skip


def caught_signals(pid: int) -> set[signal.Signals]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                mask = int(line.split()[1], 16)
                return {s for s in signal.Signals if mask >> (s - 1) & 1}
    raise AssertionError(f"no SigCgt in /proc/{pid}/status")


def wait_ready(proc: subprocess.Popen[bytes], ready_r: int) -> None:
    """The command said it is ready, and llsupervise catches every signal it forwards.

    SIGTERM, SIGHUP and SIGQUIT are not caught by Python by default, so seeing them caught
    means the forwarding handlers are in place (SIGINT's is installed along with them)."""
    readable, _, _ = select.select([ready_r], [], [], LIMIT)
    assert readable and os.read(ready_r, 64) == b"ready\n", "the command did not start"
    forwarded = {signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
    deadline = time.monotonic() + LIMIT
    while not forwarded <= caught_signals(proc.pid):
        assert time.monotonic() < deadline, "llsupervise never caught the forwarded signals"
        time.sleep(0.01)


def finish(proc: subprocess.Popen[bytes]) -> int:
    """llsupervise's exit status; whatever is left of its process group is killed."""
    try:
        return proc.wait(timeout=LIMIT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: s.name
)
def test_signals_reach_the_command_and_its_status_is_returned(
    tmp_path: Path, policy_file: Path, signum: signal.Signals, phase: str
) -> None:
    got = tmp_path / "out" / "got"
    ready_r, ready_w = os.pipe()
    proc = start(
        policy_file, TRAPPER, str(got), str(ready_w), pass_fds=(ready_w,), plain_for=PHASES[phase]
    )
    os.close(ready_w)
    try:
        wait_ready(proc, ready_r)
        os.kill(proc.pid, signum)  # to llsupervise, not to the command
        status = finish(proc)
    finally:
        os.close(ready_r)
    assert got.read_text() == signum.name
    assert status == 100 + signum


@pytest.mark.parametrize("phase", PHASES)
def test_a_forwarded_signal_that_kills_the_command_gives_128_plus_n(
    tmp_path: Path, policy_file: Path, phase: str
) -> None:
    ready_r, ready_w = os.pipe()
    proc = start(policy_file, WAITER, str(ready_w), pass_fds=(ready_w,), plain_for=PHASES[phase])
    os.close(ready_w)
    try:
        wait_ready(proc, ready_r)
        os.kill(proc.pid, signal.SIGTERM)
        status = finish(proc)
    finally:
        os.close(ready_r)
    assert status == 128 + signal.SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGUSR1], ids=lambda s: s.name)
def test_command_killed_by_a_signal_gives_128_plus_n(
    policy_file: Path, signum: signal.Signals
) -> None:
    status = finish(start(policy_file, SUICIDE, signum.name))
    assert status == 128 + signum


def test_stdio_passes_through_untouched(tmp_path: Path, policy_file: Path) -> None:
    data = bytes(range(256)) * 4096 + b"\r\n\x00no newline at the end"
    report = tmp_path / "out" / "fds"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llsupervise.cli", "run", "--headless", "--policy",
         str(policy_file), "--", sys.executable, "-c", ECHO, str(report)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdin and proc.stdout and proc.stderr
    # Both ends of a pipe are the same inode: the command must hold our very pipes, no relay.
    ours = " ".join(
        f"{st.st_dev}:{st.st_ino}"
        for st in (os.fstat(f.fileno()) for f in (proc.stdin, proc.stdout, proc.stderr))
    )
    try:
        out, err = proc.communicate(data, timeout=LIMIT)
    finally:
        finish(proc)
    assert proc.returncode == 7
    assert out == data[::-1]
    assert err == b"err:" + data[:4096]  # llsupervise adds nothing of its own
    assert report.read_text() == ours
