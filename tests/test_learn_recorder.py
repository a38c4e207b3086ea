"""The recorder against the real kernel: a child does one of each mediated thing, nothing is
denied, and the recording names each object Landlock would check with the rights it needs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from llsupervise.learn.recorder import LAUNCHER, MAX_CACHED_TASKS, record
from llsupervise.learn.recording import Recording
from llsupervise.rights import NO_FS, AccessFs, AccessNet

pytestmark = pytest.mark.kernel

R, W, X = AccessFs.READ_FILE, AccessFs.WRITE_FILE, AccessFs.EXECUTE

# Run in the tree's root, with stdout redirected to a file; exits 3.
WORKLOAD = r"""
import os, subprocess, sys

os.close(os.open("data/x", os.O_RDONLY))                       # relative to the cwd
d = os.open("data", os.O_RDONLY | os.O_DIRECTORY)
os.close(os.open("y", os.O_RDONLY, dir_fd=d))                  # relative to a dirfd
os.close(os.open("link", os.O_RDONLY))                         # through a symlink
os.close(os.open("out/new", os.O_WRONLY | os.O_CREAT, 0o644))  # a creation
os.close(os.open("data/x2", os.O_WRONLY | os.O_TRUNC))         # truncating an existing file
os.makedirs("data", exist_ok=True)                             # mkdir of something that exists
os.mkdir("out/d")
os.unlink("out/new")
os.rename("out/a", "data2/b")                                  # across directories
os.rename("out/c", "out/e")                                    # over an existing file
os.truncate("data/t", 0)
f = os.open("data/f", os.O_WRONLY)
os.ftruncate(f, 0)
os.symlink("x", "out/sym")
os.link("data/x", "out/hard")
os.close(os.open("/dev/null", os.O_WRONLY))
with open("/dev/stdout", "w") as out:                          # judged in the caller's context
    out.write("through /dev/stdout\n")
with open("/proc/self/status") as status:
    status.read()
os.close(os.open("data/opath", os.O_PATH))                     # not checked by Landlock
try:
    open("missing")
except FileNotFoundError:
    pass
subprocess.run(["data/true"], check=True)
sys.exit(3)
"""


def make_tree(root: Path) -> None:
    for d in ("data", "data2", "out"):
        (root / d).mkdir()
    for name in ("x", "y", "z", "x2", "t", "f", "opath"):
        (root / "data" / name).write_text(name)
    for name in ("a", "c", "e"):
        (root / "out" / name).write_text(name)
    (root / "link").symlink_to("data/z")
    shutil.copy(shutil.which("true") or "/bin/true", root / "data" / "true")


def access(rec: Recording, path: Path | str) -> AccessFs:
    use = rec.paths.get(str(path))
    return NO_FS if use is None else use.access


def static(rec: Recording, path: Path | str) -> AccessFs:
    use = rec.paths.get(str(path))
    return NO_FS if use is None else use.static


def test_each_mediated_access_is_recorded_as_landlock_checks_it(tmp_path: Path) -> None:
    make_tree(tmp_path)
    stdout = tmp_path / "stdout.txt"
    with open(stdout, "wb") as redirected:
        status, rec = record(
            [sys.executable, "-c", WORKLOAD],
            cwd=str(tmp_path),
            stdio=(None, redirected.fileno(), None),
        )
    assert status == 3
    assert stdout.read_text() == "through /dev/stdout\n"  # nothing was denied
    t = tmp_path
    assert access(rec, t / "data/x") == R
    assert access(rec, t / "data") & AccessFs.READ_DIR
    assert access(rec, t / "data/y") == R
    assert access(rec, t / "data/z") == R and str(t / "link") not in rec.paths
    assert access(rec, t / "out/new") == W
    assert access(rec, t / "data/x2") == W | AccessFs.TRUNCATE
    # makedirs of an existing directory creates nothing (the cwd is only listed, by imports)
    assert access(rec, t) & ~AccessFs.READ_DIR == NO_FS
    out = access(rec, t / "out")
    make = AccessFs.MAKE_REG | AccessFs.MAKE_DIR | AccessFs.MAKE_SYM
    assert out == make | AccessFs.REMOVE_FILE | AccessFs.REFER
    assert access(rec, t / "data2") == AccessFs.MAKE_REG | AccessFs.REFER
    assert access(rec, t / "data/t") == AccessFs.TRUNCATE
    assert access(rec, t / "data/f") == W | AccessFs.TRUNCATE
    assert access(rec, "/dev/null") == W | AccessFs.IOCTL_DEV
    assert static(rec, "/dev/null") == AccessFs.IOCTL_DEV
    assert static(rec, stdout) == W | AccessFs.TRUNCATE  # opened through /dev/stdout
    proc = [p for p in rec.paths if p.startswith("/proc/") and p.endswith("/status")]
    assert proc and all(static(rec, p) == R for p in proc)
    assert str(t / "data/opath") not in rec.paths
    assert str(t / "missing") not in rec.paths
    assert access(rec, t / "data/true") == X and static(rec, t / "data/true") == X
    assert rec.paths[str(t / "data/true")].exes == {os.path.realpath(sys.executable)}
    # The launcher's exec of the command is the command's: llsupervise is never a program.
    assert rec.paths[os.path.realpath(sys.executable)].exes == {os.path.realpath(sys.executable)}
    assert not any(LAUNCHER in use.exes for use in rec.paths.values())
    for created in ("out/new", "out/d", "data2/b", "out/e", "out/sym", "out/hard"):
        assert str(t / created) in rec.created, created
    for removed in ("out/new", "out/a", "out/c"):
        assert str(t / removed) in rec.removed, removed


def test_the_command_killed_by_a_signal_reports_128_plus_n(tmp_path: Path) -> None:
    status, rec = record(
        [sys.executable, "-c", "import os, signal; open('f', 'w'); os.kill(os.getpid(), 9)"],
        cwd=str(tmp_path),
    )
    assert status == 128 + 9
    assert access(rec, tmp_path) & AccessFs.MAKE_REG


def test_children_and_threads_are_recorded_too(tmp_path: Path) -> None:
    script = r"""
import os, threading, subprocess, sys
def worker():
    os.close(os.open("from-thread", os.O_WRONLY | os.O_CREAT, 0o600))
t = threading.Thread(target=worker); t.start(); t.join()
subprocess.run(["sh", "-c", "cd sub && echo x > from-child"], check=True)
"""
    (tmp_path / "sub").mkdir()
    status, rec = record([sys.executable, "-c", script], cwd=str(tmp_path))
    assert status == 0
    assert str(tmp_path / "from-thread") in rec.created
    assert str(tmp_path / "sub/from-child") in rec.created  # relative to the child's own cwd
    assert access(rec, tmp_path / "sub") == AccessFs.MAKE_REG


def test_templated_recording_names_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "in").write_text("x")
    _, rec = record(["cat", "in"], cwd=str(tmp_path))
    templated = rec.templated({"PWD": str(tmp_path), "HOME": "/nonexistent", "TMPDIR": "/tmp"})
    assert templated.paths["${PWD}/in"].access == R


def test_more_processes_than_cached_memory_handles_are_all_recorded(tmp_path: Path) -> None:
    count = MAX_CACHED_TASKS + 44
    status, rec = record(
        ["sh", "-c", f'i=0; while [ $i -lt {count} ]; do touch "f$i"; i=$((i+1)); done'],
        cwd=str(tmp_path),
    )
    assert status == 0
    assert {str(tmp_path / f"f{i}") for i in range(count)} <= rec.created.keys()
    assert rec.paths[str(tmp_path)].count >= count


def test_tcp_ports_are_recorded_and_other_sockets_are_not(tmp_path: Path) -> None:
    """TCP bind/connect give ports (with their direction); UDP and Unix sockets give none."""
    script = r"""
import socket
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
port = server.getsockname()[1]
with socket.socket() as c:
    c.connect(("127.0.0.1", port))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    u.connect(("127.0.0.1", 9))
with socket.socket(socket.AF_UNIX) as x:
    x.bind("\0llsupervise-learn-test")
print(port)
"""
    out = tmp_path / "out"
    with out.open("w") as sink:
        status, rec = record([sys.executable, "-c", script], cwd=str(tmp_path),
                             stdio=(None, sink.fileno(), None))  # fmt: skip
    assert status == 0
    port = int(out.read_text())
    assert rec.net_observed
    assert rec.ports[0].access == AccessNet.BIND_TCP  # bind to port 0: an ephemeral port
    assert rec.ports[port].access == AccessNet.CONNECT_TCP
    assert set(rec.ports) == {0, port}  # nothing from the UDP or Unix sockets
