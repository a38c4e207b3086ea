"""A FUSE server that never answers stalls no one but the call that waits on it (issue: an
operation on a hung FUSE or NFS filesystem ran on the one serving thread, and with it every
trapped call of the program waited)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from fuse_server import HangingFuse, hanging_fuse
from supervised import PUBLIC, WAIT_IN_SYSCALL, lines, make_tree, policy, wait_until

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.engine import offload
from llsupervise.supervisor.perform.blocking import (
    BLOCKING,
    INLINE,
    MOUNTS,
    Mounts,
    cached_identity,
    is_blocking_type,
    mount_id,
    overlay_layers,
)

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="root, FUSE"),
]

#: The program: one thread makes a call that waits on the hung FUSE lookup; once that thread
#: is in its call (and, given a third argument, once that file exists), another opens data/x
#: (granted by a supervisor rule, so performed by the supervisor). Each outcome is a line of
#: out/log.
SCRIPT = WAIT_IN_SYSCALL + r"""
import os, sys, threading, time
call, target = sys.argv[1], sys.argv[2]
go = sys.argv[3] if len(sys.argv) > 3 else None
log = os.open("out/log", os.O_WRONLY | os.O_APPEND)
def note(line):
    os.write(log, line.encode() + b"\n")
def stuck():
    try:
        if call == "open":
            os.close(os.open(target, os.O_RDONLY))
        else:
            os.mkdir(target + "/new")
        note("stuck call: done")
    except OSError as e:
        note(f"stuck call: err {e.errno}")
t = threading.Thread(target=stuck)
t.start()
wait_in(t, "257", "83", "258")  # openat, mkdir, mkdirat
while go is not None and not os.path.exists(go):
    time.sleep(0.01)
with open("data/x", "rb") as f:
    note("unrelated open: " + f.read().decode().strip())
t.join()
"""

RULES = """
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{data}"]
"""


async def _run(
    root: Path, call: str, server: HangingFuse, events: list[Mapping[str, Any]]
) -> tuple[int, list[str]]:
    """Run SCRIPT; once the unrelated open is served while the lookup hangs, or after a
    minute, the server is aborted (which ends the hung call in the kernel). The program
    makes the unrelated open only once the lookup hangs (out/go): a serving thread's
    helpers may otherwise serve it before Python has even begun the lookup."""
    paths = make_tree(root)
    (paths["out"] / "log").touch()
    doc = policy(root, supervisor_rules=RULES.format(data=paths["data"]))
    target = str(server.mountpoint / "stuck")
    served = f"unrelated open: {PUBLIC.decode().strip()}"
    seen_while_hung: list[bool] = []

    async def abort_when_served() -> None:
        # Not a timing bound: without a deadline the hung call waits for ever, so the
        # server is aborted once the other open was served (or the test has failed).
        try:
            await wait_until(lambda: server.hung > 0, "the hung lookup", 60)
            (paths["out"] / "go").touch()
            await wait_until(lambda: served in lines(paths["out"] / "log"), "the other open", 60)
            seen_while_hung.append(server.hung > 0)
        finally:
            await trio.to_thread.run_sync(server.close)

    async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
        sup.listeners.append(events.append)
        nursery.start_soon(abort_when_served)
        argv = [sys.executable, "-c", SCRIPT, call, target, str(paths["out"] / "go")]
        status = await sup.run(argv, forward_signals=False)
    assert seen_while_hung == [True], "the other open was not served while the lookup hung"
    return status, lines(paths["out"] / "log")


@pytest.mark.trio
@pytest.mark.parametrize("call", ["open", "mkdir"])
async def test_a_hung_fuse_lookup_leaves_other_requests_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """No deadline within the test: the other open is served while the call waits; the
    hung call ends when the kernel ends it (the server aborted), the supervisor unharmed."""
    monkeypatch.setattr(offload, "DEADLINE_SECONDS", 3600.0)
    root = Path(os.path.realpath(tmp_path))
    monkeypatch.chdir(root)
    events: list[Mapping[str, Any]] = []
    with hanging_fuse(root / "fuse") as server:
        status, log = await _run(root, call, server, events)
    assert status == 0, log
    assert log[0] == f"unrelated open: {PUBLIC.decode().strip()}"
    # Aborted: the worker's call failed, and its errno was passed on.
    assert log[1].startswith("stuck call: err "), log
    assert not [e for e in events if e["event"] == "stall"]
    assert events[-1]["event"] == "exit"


@pytest.mark.trio
async def test_a_hung_fuse_lookup_is_answered_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a deadline, the program gets EIO and an event says so; later requests are
    served, and the supervisor lives on to report the exit."""
    monkeypatch.setattr(offload, "DEADLINE_SECONDS", 1.0)
    root = Path(os.path.realpath(tmp_path))
    monkeypatch.chdir(root)
    paths = make_tree(root)
    (paths["out"] / "log").touch()
    events: list[Mapping[str, Any]] = []
    doc = policy(root, supervisor_rules=RULES.format(data=paths["data"]))
    with hanging_fuse(root / "fuse") as server:
        target = str(server.mountpoint / "stuck")
        async with Supervisor.open(doc) as sup:
            sup.listeners.append(events.append)
            status = await sup.run(
                [sys.executable, "-c", SCRIPT, "open", target], forward_signals=False
            )
        assert server.hung > 0
    log = lines(paths["out"] / "log")
    assert status == 0, log
    assert sorted(log) == ["stuck call: err 5", f"unrelated open: {PUBLIC.decode().strip()}"]
    stalls = [e for e in events if e["event"] == "stall"]
    assert [(e["syscall"], e["path"], e["outcome"]) for e in stalls] == [
        ("openat", target, "refused")
    ]
    assert events[-1]["event"] == "exit"


def test_the_mount_table_knows_fuse_from_tmpfs(tmp_path: Path) -> None:
    """A FUSE mount is blocking and the test tree is not, told without asking FUSE (its
    server answers nothing but getattr here)."""
    with hanging_fuse(tmp_path / "fuse") as server:
        fd = os.open(server.mountpoint, os.O_PATH | os.O_CLOEXEC)
        here = os.open(tmp_path, os.O_PATH | os.O_CLOEXEC)
        try:
            asked = dict(server.received)
            assert MOUNTS.blocking(mount_id(fd))
            assert not MOUNTS.blocking(mount_id(here))
            identity = cached_identity(fd)
            assert server.received == asked  # FUSE was not asked, not even getattr
            st = os.fstat(fd)  # this one asks (its attributes are never cached here)
            assert identity == (st.st_dev, st.st_ino)
            assert server.received[3] > asked.get(3, 0)
            assert cached_identity(here) == (os.fstat(here).st_dev, os.fstat(here).st_ino)
        finally:
            os.close(fd)
            os.close(here)


def test_an_overlay_blocks_as_its_layers_do(tmp_path: Path) -> None:
    """An overlay opens the files of its layers: one with a FUSE layer (lower, or upper
    stacked on another overlay's) blocks, one on tmpfs layers does not."""
    root = Path(os.path.realpath(tmp_path))
    for name in ("up", "work", "up2", "work2", "plain", "on-fuse", "on-overlay", "lower"):
        (root / name).mkdir()
    mounts = [
        ("plain", f"lowerdir={root}/lower,upperdir={root}/up,workdir={root}/work"),
        ("on-fuse", f"lowerdir={root}/lower:{root}/fuse,upperdir={root}/up2,workdir={root}/work2"),
        ("on-overlay", f"lowerdir={root}/on-fuse:{root}/lower"),
    ]
    with hanging_fuse(root / "fuse"):
        made: list[Path] = []
        try:
            for point, options in mounts:
                subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options,
                                str(root / point)], check=True)  # fmt: skip
                made.append(root / point)
            kinds = {}
            for name in ("plain", "on-fuse", "on-overlay"):
                fd = os.open(root / name, os.O_PATH | os.O_CLOEXEC)
                try:
                    kinds[name] = MOUNTS.blocking(mount_id(fd))
                finally:
                    os.close(fd)
        finally:
            for made_point in reversed(made):
                subprocess.run(["umount", "-l", str(made_point)], check=True)
    assert kinds == {"plain": False, "on-fuse": True, "on-overlay": True}


def test_overlays_in_a_mount_table(tmp_path: Path) -> None:
    """A container's root overlay names directories of the host's, which lead to no mount
    here: not counted (it stays inline). An overlay on a FUSE layer blocks, and so does one
    on that overlay (listed first: found on a later pass)."""
    table = tmp_path / "mountinfo"
    table.write_bytes(
        b"1 0 0:1 / / rw - overlay overlay rw,lowerdir=/var/lib/docker/l/A:/var/lib/docker/l/B,"
        b"upperdir=/var/lib/docker/x/diff,workdir=/var/lib/docker/x/work\n"
        b"4 1 0:4 / /mnt/o\\040v2 rw - overlay overlay rw,lowerdir=/mnt/ov/x:/srv/b\n"
        b"2 1 0:2 / /mnt/fuse rw - fuse.sshfs host:/ rw\n"
        b"3 1 0:3 / /mnt/ov rw - overlay overlay rw,lowerdir=/mnt/fuse/a:/srv/b,upperdir=/srv/u,"
        b"workdir=/srv/w\n"
        b"5 1 0:5 / /srv rw - ext4 /dev/sda rw\n"
        b"6 1 0:6 / /mnt/plain rw - overlay overlay rw,lowerdir=/srv/a:/srv/b\n"
    )
    fd = os.open(table, os.O_RDONLY | os.O_CLOEXEC)
    try:
        kinds = Mounts(fd)._read()
    finally:
        os.close(fd)
    assert kinds == {1: INLINE, 2: BLOCKING, 3: BLOCKING, 4: BLOCKING, 5: INLINE, 6: INLINE}


def test_overlay_layers_from_its_options() -> None:
    assert overlay_layers(
        rb"rw,lowerdir=/a/b:/c\040d:/e\:f::/data,upperdir=/u,workdir=/w,uuid=on"
    ) == [b"/a/b", b"/c d", b"/e:f", b"/data", b"/u"]
    assert overlay_layers(rb"ro,lowerdir+=/a,lowerdir+=/b\054c,datadir+=/d") == [
        b"/a", b"/b,c", b"/d",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fstype", "blocking"),
    [("fuse", True), ("fuse.sshfs", True), ("nfs4", True), ("cifs", True), ("9p", True),
     ("ceph", True), ("tmpfs", False), ("ext4", False), ("proc", False), ("overlay", False)],
)  # fmt: skip
def test_blocking_types(fstype: str, blocking: bool) -> None:
    assert is_blocking_type(fstype) is blocking


#: The program takes a dirfd of the FUSE root while its server answers, waits until the
#: server hangs altogether, then opens a name relative to that dirfd in one thread, and
#: data/x in another once the first is in its call.
DIRFD_SCRIPT = WAIT_IN_SYSCALL + r"""
import os, sys, threading, time
log = os.open("out/log", os.O_WRONLY | os.O_APPEND)
def note(line):
    os.write(log, line.encode() + b"\n")
d = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
note("have the dirfd")
while not os.path.exists("out/frozen"):
    time.sleep(0.01)
def stuck():
    try:
        os.close(os.open("anything", os.O_RDONLY, dir_fd=d))
        note("stuck call: done")
    except OSError as e:
        note(f"stuck call: err {e.errno}")
t = threading.Thread(target=stuck)
t.start()
wait_in(t, "257")  # openat
with open("data/x", "rb") as f:
    note("unrelated open: " + f.read().decode().strip())
t.join()
"""


@pytest.mark.trio
async def test_a_dirfd_on_a_hung_fuse_mount_stalls_no_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even looking at the child's dirfd (what filesystem, which inode) would ask the hung
    server: the serving thread must not."""
    monkeypatch.setattr(offload, "DEADLINE_SECONDS", 3600.0)
    root = Path(os.path.realpath(tmp_path))
    monkeypatch.chdir(root)
    paths = make_tree(root)
    log_path = paths["out"] / "log"
    log_path.touch()
    doc = policy(root, supervisor_rules=RULES.format(data=paths["data"]))
    served = f"unrelated open: {PUBLIC.decode().strip()}"
    seen_while_hung: list[bool] = []
    with hanging_fuse(root / "fuse") as server:

        async def freeze_then_abort() -> None:
            try:
                await wait_until(lambda: "have the dirfd" in lines(log_path), "the dirfd", 60)
                server.frozen = True
                (paths["out"] / "frozen").touch()
                await wait_until(lambda: served in lines(log_path), "the other open", 60)
                seen_while_hung.append(True)
            finally:
                await trio.to_thread.run_sync(server.close)

        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            nursery.start_soon(freeze_then_abort)
            argv = [sys.executable, "-c", DIRFD_SCRIPT, str(server.mountpoint)]
            status = await sup.run(argv, forward_signals=False)
    log = lines(log_path)
    assert seen_while_hung == [True], log
    assert status == 0, log
    assert log[:2] == ["have the dirfd", served]
    assert log[2].startswith("stuck call: err "), log


@pytest.mark.trio
async def test_a_creation_done_after_its_deadline_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that was only slow: the mkdir is answered EIO at its deadline, then done
    once the server answers. The program cannot be told any more, but the log must not say
    "refused" alone: a second stall event says the directory was made after all."""
    monkeypatch.setattr(offload, "DEADLINE_SECONDS", 0.5)
    root = Path(os.path.realpath(tmp_path))
    monkeypatch.chdir(root)
    paths = make_tree(root)
    (paths["out"] / "log").touch()
    events: list[Mapping[str, Any]] = []
    with hanging_fuse(root / "fuse") as server:
        target = str(server.mountpoint / "stuck")
        mountpoint = server.mountpoint
        static = f'[[path_beneath]]\nallowed_access = ["make_dir"]\nparent = ["{mountpoint}"]\n'
        doc = policy(root, supervisor_rules=RULES.format(data=paths["data"]), extra_static=static)

        async def release_after_the_deadline() -> None:
            await wait_until(lambda: any(e["event"] == "stall" for e in events), "the stall", 60)
            server.release()
            await wait_until(lambda: len([e for e in events if e["event"] == "stall"]) > 1,
                             "the late report", 60)  # fmt: skip

        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(release_after_the_deadline)
            status = await sup.run(
                [sys.executable, "-c", SCRIPT, "mkdir", target], forward_signals=False
            )
        assert server.received.get(9) == 1  # one MKDIR, made once the lookup was answered
    log = lines(paths["out"] / "log")
    assert status == 0, log
    assert sorted(log) == ["stuck call: err 5", f"unrelated open: {PUBLIC.decode().strip()}"]
    stalls = [(e["syscall"], e["path"], e["outcome"]) for e in events if e["event"] == "stall"]
    made = f"{target}/new"
    assert stalls == [("mkdir", made, "refused"), ("mkdir", made, "done late")]
