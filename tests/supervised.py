"""Helpers for tests that supervise a real child: policies over a temp tree, waiting on files."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.loader import parse_policy
from llsupervise.supervisor.core import Supervisor

#: What any program here needs to start: the system and this Python installation.
SYSTEM_DIRS = sorted(
    {"/usr", "/lib", "/etc", "/proc", "/dev", os.path.realpath(sys.base_prefix), sys.prefix}
)
SECRET = b"top secret\n"
PUBLIC = b"public data\n"


def make_tree(root: Path) -> dict[str, Path]:
    """data/x (readable only once granted), secret/s (never granted), out/ (static rw)."""
    paths = {"data": root / "data", "secret": root / "secret", "out": root / "out"}
    for p in paths.values():
        p.mkdir()
    (paths["data"] / "x").write_bytes(PUBLIC)
    (paths["secret"] / "s").write_bytes(SECRET)
    return paths


def policy_text(
    root: Path | str,
    *,
    mode: str = "enforce",
    supervisor_rules: str = "",
    extra_static: str = "",
    settings: str = "",
) -> str:
    """The test policy as file text: the system read-only, ``root/out`` read-write, every
    filesystem right handled; ``settings`` go in the ``[supervisor]`` table."""
    system = ", ".join(f'"{d}"' for d in SYSTEM_DIRS)
    return f"""# test policy
[[ruleset]]
handled_access_fs = ["abi.all"]

[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = [{system}]

[[path_beneath]]
allowed_access = ["abi.read_write"]
parent = ["{root}/out"]
{extra_static}
[supervisor]
mode = "{mode}"
{settings}
{supervisor_rules}
"""



def policy_file(root: Path) -> Path:
    """``root/policy.toml``, holding the test policy (policy_text) of ``root``."""
    path = root / "policy.toml"
    path.write_text(policy_text(root))
    return path


def policy(
    root: Path,
    *,
    mode: str = "enforce",
    supervisor_rules: str = "",
    extra_static: str = "",
) -> PolicyDocument:
    text = policy_text(
        root, mode=mode, supervisor_rules=supervisor_rules, extra_static=extra_static
    )
    return parse_policy(text, "test-policy.toml", {"HOME": str(root), "PWD": str(root)})


@contextmanager
def kept_to(cpus: Iterable[int]) -> Iterator[None]:
    """This (main) thread kept to ``cpus`` meanwhile: so are the threads and processes it
    starts (a run's helpers are grouped by the CPUs the main thread may use)."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll ``predicate``; the limit only keeps a broken test from hanging."""
    with trio.move_on_after(limit):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"gave up waiting for {what}")


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    limit: float = 10.0,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """:func:`wait_until` outside trio; fails at once when ``proc`` (the run) has ended."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert proc is None or proc.poll() is None, f"{what} (the run ended)"
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


#: For a program that starts a thread ``t`` and waits until that thread is in one of the
#: syscalls (numbers, as /proc/PID/task/TID/syscall prints them) given to ``wait_in``:
#: waiting for an answer, or in the kernel. A thread that is gone, or going (EIO once past
#: its last syscall), is in none.
WAIT_IN_SYSCALL = r"""
def wait_in(t, *numbers):
    def inside():
        try:
            with open(f"/proc/self/task/{t.native_id}/syscall") as f:
                return f.read().split()[0] in numbers
        except OSError:
            return False
    while t.is_alive() and not inside():
        pass
"""

# Reads data/x once per iteration and logs the outcome through an fd opened before the loop.
READ_LOOP = r"""
import os, sys, time
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
stop = sys.argv[2]
while not os.path.exists(stop):
    try:
        with open("data/x", "rb") as f:
            os.write(log, b"ok " + f.read())
    except OSError as e:
        os.write(log, b"err %d\n" % e.errno)
    time.sleep(0.005)
"""
#: A read-loop line for a read of data/x that worked.
READ_OK = "ok " + PUBLIC.decode().strip()


class ReadLoop:
    """A supervised child (cwd: the test tree) reading data/x until stopped, each outcome a
    line of out/log: ``ok <content>`` or ``err <errno>``."""

    def __init__(self, root: Path) -> None:
        self.log, self.stop_file = root / "out" / "log", root / "out" / "stop"
        self.log.touch()
        self.status: list[int] = []

    def lines(self) -> list[str]:
        return lines(self.log)

    def start(self, sup: Supervisor, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._run, sup)

    async def _run(self, sup: Supervisor) -> None:
        argv = [sys.executable, "-c", READ_LOOP, str(self.log), str(self.stop_file)]
        self.status.append(await sup.run(argv, forward_signals=False))

    def stop(self) -> None:
        self.stop_file.touch()


async def run_collecting(
    doc: PolicyDocument, script: str, *args: str
) -> tuple[int, list[Mapping[str, Any]]]:
    """Run a Python script as the supervised child under ``doc``: its status and the events."""
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(doc) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", script, *args], forward_signals=False)
    return status, events


async def run_script(root: Path, script: str, *args: str, supervisor_rules: str = "") -> int:
    """Run a Python script as the supervised child in ``root`` (cwd); return its status."""
    doc = policy(root, supervisor_rules=supervisor_rules)
    async with Supervisor.open(doc) as sup:
        return await sup.run([sys.executable, "-c", script, *args], forward_signals=False)


class TimedLines:
    """Lines from a pipe's read end, each read waiting at most until one overall deadline:
    a child that stops writing fails the test instead of hanging it."""

    def __init__(self, fd: int, limit: float = 30.0) -> None:
        self._fd = fd
        self._deadline = time.monotonic() + limit
        self._buffer = b""

    def readline(self) -> bytes:
        """The next line with its newline; b"" at the end of the pipe."""
        while b"\n" not in self._buffer:
            left = self._deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no line from the child in time (so far {self._buffer!r})")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        os.close(self._fd)


#: Renames work/pub away and puts a symlink to secret/ in its place (each asked about where
#: work/ gives no such rights), then, once out/go appears, reads through both names: one line
#: each, "<name> ok", "<name> LEAK" (a secret byte read) or "<name> errno N".
SWAP_THEN_READ = r"""
import os, sys, time
SECRET = sys.argv[1].encode()
os.rename("work/pub", "work/pub-old")
os.symlink(os.path.abspath("secret"), "work/pub")
open("out/swapped", "w").close()
while not os.path.exists("out/go"):
    time.sleep(0.01)
for path in ("work/pub/f", "work/pub-old/f"):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(path, "errno", e.errno, flush=True)
    else:
        print(path, "LEAK" if SECRET in data else "ok", flush=True)
"""


def events_of(log: Path) -> list[dict[str, Any]]:
    """The events of a run's ``--log`` file (none while it does not exist)."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
