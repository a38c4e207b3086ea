"""A child's dirfd kept by the supervisor stands for it only while the child's fd names it."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised import PUBLIC, make_tree, policy

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.engine.childfds import ChildFds, KeptDir, open_child_fd

pytestmark = pytest.mark.kernel

# Holds fd 50 on argv[1]; on each line of input, moves it to the directory named there.
HOLDER = r"""
import os, sys
os.dup2(os.open(sys.argv[1], os.O_PATH), 50)
print("ready", flush=True)
for line in sys.stdin:
    fd = os.open(line.strip(), os.O_PATH)
    os.dup2(fd, 50)
    os.close(fd)
    print("moved", flush=True)
"""


class Counting:
    """open_child_fd, counting the hand-offs a real loop would make."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tid: int, fd: int) -> tuple[int, KeptDir | None]:
        self.calls += 1
        return open_child_fd(tid, fd)


@contextlib.contextmanager
def _holder(where: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child running HOLDER, ready; killed on the way out."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(where)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            yield child
        finally:
            child.kill()


def _ino(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_a_kept_fd_is_used_while_the_child_keeps_it_and_dropped_once_it_moves(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    opener = Counting()
    fds = ChildFds(opener)
    with _holder(a) as child:
        assert child.stdin is not None and child.stdout is not None
        assert _ino(fds.open(child.pid, 50)) == a.stat().st_ino
        assert _ino(fds.open(child.pid, 50)) == a.stat().st_ino
        assert opener.calls == 1  # the second came from what was kept
        child.stdin.write(f"{b}\n".encode())
        child.stdin.flush()
        assert child.stdout.readline() == b"moved\n"
        assert _ino(fds.open(child.pid, 50)) == b.stat().st_ino
        assert opener.calls == 2
        child.stdin.close()
        child.wait()
        with pytest.raises(OSError):
            fds.open(child.pid, 50)  # the thread is gone: nothing kept stands for it
    fds.close()


def test_nothing_is_kept_on_a_filesystem_that_reuses_inode_numbers_within_a_mount() -> None:
    # procfs stands for them: its inode numbers are not among those trusted.
    opener = Counting()
    fds = ChildFds(opener)
    with _holder(Path("/proc/self")) as child:
        for _ in range(3):
            os.close(fds.open(child.pid, 50))
        assert opener.calls == 3
    fds.close()


@pytest.mark.trio
async def test_requests_follow_the_dirfd_the_child_has_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Granted opens relative to one fd number, moved between directories between them:
    each is performed in the directory the fd names at that moment."""
    paths = make_tree(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_bytes(b"other data\n")
    monkeypatch.chdir(tmp_path)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{paths["data"]}", "{other}"]
"""
    script = r"""
import errno, os, sys
def read(name):
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=50)
    except OSError as e:
        return errno.errorcode[e.errno]
    with os.fdopen(fd, "rb") as f:
        return f.read().decode().strip()
seen = []
for where, name in [("data", "x"), ("data", "x"), ("other", "x"), ("other", "x"),
                    ("secret", "s"), ("data", "x"), ("secret", "s")]:
    fd = os.open(where, os.O_PATH)
    os.dup2(fd, 50)
    os.close(fd)
    seen += [read(name), read(name)]
print(seen)
"""
    out = tmp_path / "out" / "seen"
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        with out.open("wb") as sink:
            saved = os.dup(1)
            os.dup2(sink.fileno(), 1)
            try:
                status = await sup.run([sys.executable, "-c", script], forward_signals=False)
            finally:
                os.dup2(saved, 1)
                os.close(saved)
    assert status == 0
    public, other_data, denied = PUBLIC.decode().strip(), "other data", errno.errorcode[13]
    expected = [public] * 4 + [other_data] * 4 + [denied] * 2 + [public] * 2 + [denied] * 2
    assert out.read_text().strip() == repr(expected)
