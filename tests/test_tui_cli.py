"""``llsupervise run`` (interface) and ``attach`` as a user starts them: real terminal (pty)."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

EXAMPLE = Path(__file__).parent.parent / "config" / "example.toml"


class Terminal:
    """A program on a pseudo-terminal; what it writes is collected as raw bytes."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = dict(os.environ, TERM="xterm-256color", PWD=str(cwd))
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: straight to exec
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 130, 0, 0))
        self.screen = b""
        self.status: int | None = None

    def read_until(self, marker: bytes, limit: float = 60.0, start: int = 0) -> None:
        """Collect output until ``marker`` appears (after ``start``); the limit only stops a
        broken test."""
        deadline = time.monotonic() + limit
        while marker not in self.screen[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker!r} never appeared; got {self.screen[-2000:]!r}")
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"ended before {marker!r}: {self.screen[-2000:]!r}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return False
                raise
            if not data:
                return False
            self.screen += data
        return True

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait(self, limit: float = 60.0) -> int:
        deadline = time.monotonic() + limit
        while self._read(deadline - time.monotonic()) and time.monotonic() < deadline:
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def kill(self) -> None:
        """Stop a program that a failed test left running."""
        if self.status is None:
            os.kill(self.pid, 9)
            self.wait()


@pytest.fixture
def secret() -> Iterator[Path]:
    # The example policy grants /tmp and the working directory, not /var/tmp.
    directory = Path(tempfile.mkdtemp(dir="/var/tmp"))
    (directory / "secret").write_text("s\n")
    yield directory / "secret"
    shutil.rmtree(directory)


def test_run_shows_a_question_and_d_denies(tmp_path: Path, secret: Path) -> None:
    cli = [sys.executable, "-m", "llsupervise.cli", "run", "--policy", str(EXAMPLE), "--",
           "sh", "-c", f"cat {secret}; echo done$((6*7))"]  # fmt: skip
    term = Terminal(cli, tmp_path)
    try:
        term.read_until(b"deny in")
        term.read_until(b"was denied")
        asked = term.screen.rfind(b"was denied")
        term.read_until(b"read_file")
        term.read_until(str(secret).encode(), start=asked)  # not the one in the command line
        term.type(b"d")
        term.read_until(b"exited with status 0")
        term.type(b"3")  # the command's terminal
        term.read_until(b"done42")  # its output, not its command line
        assert b"Permission denied" in term.screen
        term.type(b"\x11")  # ctrl+q
        assert term.wait() == 0
    finally:
        term.kill()


def test_attach_from_another_terminal_answers(tmp_path: Path, secret: Path) -> None:
    """``run --headless --listen`` keeps the terminal for the command; ``attach`` answers.
    The socket is not under /tmp, which the example grants statically."""
    sock_parent = Path(tempfile.mkdtemp(dir="/var/tmp"))
    sock = sock_parent / "run" / "sock"
    script = f"while [ ! -e go ]; do sleep 0.05; done; cat {secret}; echo status=$?"
    runner = subprocess.Popen(
        [sys.executable, "-m", "llsupervise.cli", "run", "--headless", "--listen", str(sock),
         "--policy", str(EXAMPLE), "--", "sh", "-c", script],
        cwd=tmp_path, env=dict(os.environ, PWD=str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    term: Terminal | None = None
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
            time.sleep(0.02)
        term = Terminal([sys.executable, "-m", "llsupervise.cli", "attach", str(sock)], tmp_path)
        term.read_until(b"attached to")
        (tmp_path / "go").touch()
        term.read_until(b"deny in")
        term.type(b"o")  # allow once
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 0, err
        assert out.strip() == "s\nstatus=0"
        term.read_until(b"closed the connection")
        term.type(b"\x11")
        assert term.wait() == 0
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        if term is not None:
            term.kill()
        shutil.rmtree(sock_parent)


def test_interface_draws_on_the_terminal_when_stdout_and_stderr_are_files(
    tmp_path: Path, secret: Path
) -> None:
    # The log (--log /dev/stderr, so err) is the control plane: not where the example
    # policy lets the program write (/tmp, the working directory).
    files = Path(tempfile.mkdtemp(dir="/var/tmp"))
    out, err = files / "out", files / "err"
    cli = ["/bin/sh", "-c", f'exec "$0" "$@" >{out} 2>{err}', sys.executable, "-m",
           "llsupervise.cli", "run", "--log", "/dev/stderr", "--policy", str(EXAMPLE), "--",
           "cat", str(secret)]  # fmt: skip
    term = Terminal(cli, tmp_path)
    try:
        term.read_until(b"deny in")  # the question, on the terminal
        term.type(b"d")
        term.read_until(b"exited with status 1")
        term.type(b"\x11")  # ctrl+q
        assert term.wait() == 1
    finally:
        term.kill()
    log, output = err.read_bytes(), out.read_bytes()
    shutil.rmtree(files)
    assert b"\x1b[" not in log and b"deny in" not in log  # nothing of the interface
    assert b'"event": "policy"' in log and b'"decision": "deny"' in log  # --log /dev/stderr
    assert output == b""


def test_run_without_a_terminal_says_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", "run", "--policy", str(EXAMPLE), "--", "true"],
        capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, check=False,
        start_new_session=True,  # no controlling terminal, even when the tests have one
    )  # fmt: skip
    assert result.returncode == 2
    assert "needs a terminal" in result.stderr and "--headless" in result.stderr


def test_listen_goes_with_headless(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", "run", "--policy", str(EXAMPLE), "--listen",
         str(tmp_path / "s" / "sock"), "--", "true"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--listen goes with --headless" in result.stderr


def test_a_hung_up_terminal_ends_the_interface_and_the_command(tmp_path: Path) -> None:
    """Closing the terminal (a closed ssh session, a killed tmux pane) passes SIGHUP on to
    the command, and the interface exits instead of lingering with nobody to see it."""
    marker = tmp_path / "alive"
    cli = [sys.executable, "-m", "llsupervise.cli", "run", "--policy", str(EXAMPLE), "--",
           "sh", "-c", f"touch {marker}; sleep 60"]  # fmt: skip
    term = Terminal(cli, tmp_path)
    try:
        term.read_until(b"running")
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.close(term.fd)  # the terminal goes away: the kernel sends SIGHUP
        term.fd = os.open("/dev/null", os.O_RDONLY)  # what wait() reads and closes
        deadline = time.monotonic() + 30  # only keeps a regression from hanging the suite
        while time.monotonic() < deadline:
            pid, status = os.waitpid(term.pid, os.WNOHANG)
            if pid:
                term.status = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
        assert term.status == 128 + 1, "the interface is still running"  # the command's SIGHUP
    finally:
        term.kill()
