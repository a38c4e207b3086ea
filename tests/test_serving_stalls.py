"""A serving thread the kernel holds stalls no one else (issue: a program that passes a path
from a page of a file on a hung FUSE mount made the supervisor's read of its memory wait for
ever, and with it every trapped call of every supervised process)."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from fuse_server import MAPPED_NAME, HangingFuse, hanging_fuse
from supervised import PUBLIC, lines, make_tree, policy, policy_text, wait_until

from llsupervise.policy.loader import load_policy, parse_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.perform import stalls as stall_watch

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="root, FUSE"),
]

#: What process B does once the test touches out/go: open data/x (granted by a supervisor
#: rule: the supervisor performs it).
OPEN_DATA = """with open("data/x", "rb") as f:
    note("other process: " + f.read().decode().strip())"""


def held_call_script(other: str, call: str, setup: str = "") -> str:
    """The program: it forks a second process (B), which waits for out/go and then runs
    ``other`` (which notes "other process: ..."). The first (A) maps a file of the FUSE mount
    (argv[1]), whose page never comes (the server does not answer reads), and in one thread
    makes ``call``, whose argument ``page`` points into that page: the supervisor must read
    the page to know the call, and the kernel holds that read (and with it A's memory map)
    until the server answers (A can then do little: an munmap waits for that lock). The test
    touches out/go once the supervisor gives up on the read."""
    indented = "\n".join("    " + line for line in other.splitlines())
    return (
        "import ctypes, mmap, os, socket, sys, threading, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        'log = os.open("out/log", os.O_WRONLY | os.O_APPEND)\n'
        "def note(line):\n"
        '    os.write(log, line.encode() + b"\\n")\n'
        "b = os.fork()\n"
        "if b == 0:\n"
        '    while not os.path.exists("out/go"):\n'
        "        time.sleep(0.01)\n"
        f"{indented}\n"
        "    os._exit(0)\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)\n"
        "page = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m)))\n"
        f"{setup}\n"
        "def stuck():\n"
        f"    r = {call}\n"
        '    note(f"stuck call: {r} errno {ctypes.get_errno()}")\n'
        "t = threading.Thread(target=stuck)\n"
        "t.start()\n"
        "t.join()\n"
        "_, status = os.waitpid(b, 0)\n"
        "os._exit(os.waitstatus_to_exitcode(status))\n"
    )


#: A opens the path "written" in the hung page.
SCRIPT = held_call_script(OPEN_DATA, "libc.open(page, os.O_RDONLY)")

RULES = """
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{data}"]
"""

STATIC_FUSE = """
[[path_beneath]]
allowed_access = ["read_file"]
parent = ["{fuse}"]
"""


def stall_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, dict[str, Path], list[Mapping[str, Any]]]:
    """The test tree (with an empty out/log) as cwd, held threads given up on after half a
    second, and the list the run's events go to."""
    monkeypatch.setattr(stall_watch, "STALL_SECONDS", 0.5)
    root = Path(os.path.realpath(tmp_path))
    monkeypatch.chdir(root)
    paths = make_tree(root)
    (paths["out"] / "log").touch()
    return root, paths, []


async def go_then_abort(
    events: list[Mapping[str, Any]],
    paths: dict[str, Path],
    server: HangingFuse,
    then: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Once the stall is logged, let process B go (out/go); once B is through, ``then``,
    and abort the server. Not timing bounds: without the watch, the program (and the
    supervisor's serving) waits for ever; the limits only end a test that has failed."""
    try:
        await wait_until(lambda: any(e["event"] == "stall" for e in events), "the stall", 60)
        (paths["out"] / "go").touch()
        await wait_until(
            lambda: any(x.startswith("other process:") for x in lines(paths["out"] / "log")),
            "the other process", 60,
        )  # fmt: skip
        if then is not None:
            await then()
    finally:
        await trio.to_thread.run_sync(server.close)


async def run_over_hung_fuse(
    root: Path,
    paths: dict[str, Path],
    events: list[Mapping[str, Any]],
    script: str,
    then: Callable[[HangingFuse], Awaitable[None]] | None = None,
    drive: Callable[[HangingFuse], Awaitable[None]] | None = None,
) -> tuple[int, HangingFuse]:
    """Run ``script`` (its argument: the mapped file of a hung FUSE mount, under a static
    rule) supervised with read rights on data/, driven by go_then_abort (``then``: given the
    server), or by ``drive`` (given the server; it closes it); the exit status, and the
    server (closed by then) for what it was asked."""
    with hanging_fuse(root / "fuse") as server:
        doc = policy(
            root,
            supervisor_rules=RULES.format(data=paths["data"]),
            extra_static=STATIC_FUSE.format(fuse=server.mountpoint),
        )
        after = None if then is None else lambda: then(server)
        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            if drive is None:
                nursery.start_soon(go_then_abort, events, paths, server, after)
            else:
                nursery.start_soon(drive, server)
            argv = [sys.executable, "-c", script, str(server.mountpoint / MAPPED_NAME.decode())]
            status = await sup.run(argv, forward_signals=False)
    return status, server


@pytest.mark.trio
async def test_a_memory_read_held_by_a_hung_fuse_page_stalls_no_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    log_path = paths["out"] / "log"
    public = PUBLIC.decode().strip()
    status, server = await run_over_hung_fuse(root, paths, events, SCRIPT)
    assert server.reads > 0, f"the supervisor never asked for the page: {server.received}"
    log = lines(log_path)
    assert status == 0, log
    # The stalled call was answered without its thread (EIO); the other process was served
    # while the read was held.
    assert sorted(log) == sorted([f"other process: {public}", "stuck call: -1 errno 5"]), log
    stalls = [e for e in events if e["event"] == "stall"]
    assert [(e["syscall"], e["path"], e["outcome"]) for e in stalls] == [
        ("openat", "", "refused")
    ]
    assert events[-1]["event"] == "exit"


#: The program forks B, which opens the path "written" in the FUSE page (the supervisor's
#: read of it is held); the program itself exits once the test says the read is held.
EXIT_WHILE_HELD = r"""
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if os.fork() == 0:
    fd = os.open(sys.argv[1], os.O_RDONLY)
    m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
    libc.open(ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(m))), os.O_RDONLY)
    os._exit(0)
while not os.path.exists("out/go"):
    time.sleep(0.01)
os._exit(7)
"""


@pytest.mark.trio
async def test_the_supervisor_exits_while_a_serving_thread_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The program ends while the newest serving thread is held (here: while the watch may
    give up on no thread, its budget spent): stopping gives up on it, and the run ends
    with the server still hung, not once it answers (that may be never)."""
    monkeypatch.setattr(stall_watch, "MAX_ABANDONED", 0)
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    hung_at_exit: list[bool] = []
    with hanging_fuse(root / "fuse") as server:
        doc = policy(root, extra_static=STATIC_FUSE.format(fuse=server.mountpoint))

        async def go_then_abort_after_the_run() -> None:
            try:
                await wait_until(lambda: server.reads > 0, "the held read", 60)
                (paths["out"] / "go").touch()
                await wait_until(lambda: bool(hung_at_exit), "the run's end", 60)
            finally:
                await trio.to_thread.run_sync(server.close)

        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(go_then_abort_after_the_run)
            argv = [sys.executable, "-c", EXIT_WHILE_HELD,
                    str(server.mountpoint / MAPPED_NAME.decode())]  # fmt: skip
            status = await sup.run(argv, forward_signals=False)
            hung_at_exit.append(server._fd >= 0)
    assert status == 7
    assert hung_at_exit == [True], "the run ended only once the server was aborted"
    stalls = [e for e in events if e["event"] == "stall"]
    assert [(e["syscall"], e["outcome"]) for e in stalls] == [("openat", "refused")]


#: Two calls, each from the FUSE page, one after the other: the server answers each read
#: (with an error) only after the supervisor gave up on it.
TWO_STALLS = r"""
import ctypes, mmap, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
log = os.open("out/log", os.O_WRONLY | os.O_APPEND)
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
address = ctypes.addressof(ctypes.c_char.from_buffer(m))
for go in ("out/go1", "out/go2"):
    while not os.path.exists(go):
        time.sleep(0.01)
    r = libc.open(ctypes.c_void_p(address), os.O_RDONLY)
    os.write(log, f"{go}: {r} errno {ctypes.get_errno()}\n".encode())
"""


@pytest.mark.trio
async def test_a_thread_the_kernel_let_go_no_longer_counts_against_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for one stuck thread: a first stall whose read the server then answers
    (late) frees that room, so a second stall is given up on too, not waited for."""
    monkeypatch.setattr(stall_watch, "MAX_ABANDONED", 1)
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    log_path = paths["out"] / "log"

    def stalls() -> int:
        return sum(e["event"] == "stall" for e in events)

    def serving_threads() -> int:
        return sum(t.name.startswith("notifications-g") for t in threading.enumerate())

    with hanging_fuse(root / "fuse") as server:
        doc = policy(root, extra_static=STATIC_FUSE.format(fuse=server.mountpoint))

        async def drive() -> None:
            try:
                for n in (1, 2):
                    server.fail_reads(failing=False)
                    (paths["out"] / f"go{n}").touch()
                    await wait_until(lambda: stalls() == n, f"stall {n}", 60)  # noqa: B023 (awaited here)
                    server.fail_reads()
                    # The thread given up on ends, as the kernel lets it go (after the second,
                    # the program ends, and with it the loop's last thread).
                    await wait_until(lambda: serving_threads() <= 1, "the stuck thread's end", 60)
            finally:
                await trio.to_thread.run_sync(server.close)

        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(drive)
            argv = [sys.executable, "-c", TWO_STALLS, str(server.mountpoint / MAPPED_NAME.decode())]
            status = await sup.run(argv, forward_signals=False)
    log = lines(log_path)
    assert status == 0, log
    assert log == ["out/go1: -1 errno 5", "out/go2: -1 errno 5"]
    assert stalls() == 2


#: One thread lists data/ into the FUSE page (getdents holds data/'s inode lock while the
#: kernel faults that page in, which waits for the server); once the test saw the read held,
#: the program makes data/late: the supervisor's mkdir there waits for that lock.
LATE_MKDIR = r"""
import ctypes, mmap, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
log = os.open("out/log", os.O_WRONLY | os.O_APPEND)
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
address = ctypes.addressof(ctypes.c_char.from_buffer(m))
data = os.open("data", os.O_RDONLY | os.O_DIRECTORY)
def hold():
    r = libc.syscall(217, data, ctypes.c_void_p(address), 4096)  # getdents64
    os.write(log, f"getdents: {r} errno {ctypes.get_errno()}\n".encode())
threading.Thread(target=hold).start()
while not os.path.exists("out/go"):
    time.sleep(0.01)
r = libc.mkdir(b"data/late", 0o755)
os.write(log, f"mkdir: {r} errno {ctypes.get_errno()}\n".encode())
while not os.path.exists("out/end"):
    time.sleep(0.01)
"""


@pytest.mark.trio
@pytest.mark.parametrize("granted", [True, False], ids=["granted", "refused"])
async def test_a_creation_the_kernel_held_past_its_stall_is_logged_as_done_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, granted: bool
) -> None:
    """The serving thread's own mkdir waits for data/'s lock, which the program holds: the
    watch answers EIO, and the grant is revoked meanwhile. When the lock comes free the mkdir
    is done all the same (the kernel checks it against the thread's Landlock domain, made
    before the commit, and offers no way to call it back), so the log must say so. Never
    granted, the late mkdir is refused: that refusal is no one's to analyse or ask about,
    since the program was answered already."""
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    log_path = paths["out"] / "log"
    rights = '"read_dir", "make_dir"' if granted else '"read_dir"'
    grant = RULES.replace('"read_file"', rights).format(data=paths["data"])
    with hanging_fuse(root / "fuse") as server:
        static = STATIC_FUSE.format(fuse=server.mountpoint)
        policy_file = root / "policy.toml"
        policy_file.write_text(policy_text(root, supervisor_rules=grant, extra_static=static))
        doc = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})

        async def drive() -> None:
            try:
                await wait_until(lambda: server.reads > 0, "the held read", 60)
                (paths["out"] / "go").touch()
                await wait_until(lambda: any(e["event"] == "stall" for e in events),
                                 "the stall", 60)  # fmt: skip
                # Revoked while the mkdir is held; then the lock holder is let go.
                policy_file.write_text(policy_text(root, extra_static=static))
                await wait_until(lambda: any(e["event"] == "reload" for e in events),
                                 "the reload", 60)  # fmt: skip
                server.fail_reads()
                await wait_until(lambda: len(lines(log_path)) == 2, "both calls", 60)
                await wait_until(lambda: serving_threads() == 1, "the stuck thread's end", 60)
                (paths["out"] / "end").touch()
            finally:
                await trio.to_thread.run_sync(server.close)

        def serving_threads() -> int:
            return sum(t.name.startswith("notifications-g") for t in threading.enumerate())

        async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(drive)
            argv = [sys.executable, "-c", LATE_MKDIR, str(server.mountpoint / MAPPED_NAME.decode())]
            status = await sup.run(argv, forward_signals=False)
    log = lines(log_path)
    assert status == 0, log
    assert sorted(log) == ["getdents: -1 errno 14", "mkdir: -1 errno 5"]
    stalls = [(e["syscall"], e["path"], e["outcome"]) for e in events if e["event"] == "stall"]
    if granted:
        assert (paths["data"] / "late").exists()
        assert stalls == [("mkdir", "", "refused"), ("mkdir", "data/late", "done late")]
    else:
        assert not (paths["data"] / "late").exists()
        assert stalls == [("mkdir", "", "refused")]
    assert not [e for e in events if e["event"] == "denial" and e["syscall"] == "mkdir"]


#: As SCRIPT: B, forked first, reads data/x once told (after the reload granting it); A's
#: open waits on the FUSE page (and with it A's memory map: B's read must come from another
#: process).
COMMIT_WHILE_HELD = SCRIPT.replace("other process: ", "after the commit: ")


@pytest.mark.trio
async def test_a_commit_during_a_stall_waits_no_longer_than_the_stall_with_no_budget_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room left for a stuck thread, a commit (here a reload granting data/) still
    gives up on the held one: the new generation's thread takes over, so no thread is added,
    and the commit (in trio's thread) is not held for as long as the kernel holds that one."""
    monkeypatch.setattr(stall_watch, "MAX_ABANDONED", 0)
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    log_path = paths["out"] / "log"
    with hanging_fuse(root / "fuse") as server:
        static = STATIC_FUSE.format(fuse=server.mountpoint)
        policy_file = root / "policy.toml"
        policy_file.write_text(policy_text(root, extra_static=static))
        doc = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})

        async def drive() -> None:
            try:
                await wait_until(lambda: server.reads > 0, "the held read", 60)
                grant = RULES.format(data=paths["data"])
                text = policy_text(root, supervisor_rules=grant, extra_static=static)
                policy_file.write_text(text)
                await wait_until(lambda: any(e["event"] == "reload" for e in events),
                                 "the reload", 60)  # fmt: skip
                (paths["out"] / "go").touch()
                await wait_until(lambda: len(lines(log_path)) == 2, "both calls", 60)
            finally:
                await trio.to_thread.run_sync(server.close)

        async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(drive)
            argv = [sys.executable, "-c", COMMIT_WHILE_HELD,
                    str(server.mountpoint / MAPPED_NAME.decode())]  # fmt: skip
            status = await sup.run(argv, forward_signals=False)
    log = lines(log_path)
    assert status == 0, log
    assert sorted(log) == sorted([f"after the commit: {PUBLIC.decode().strip()}",
                                  "stuck call: -1 errno 5"])  # fmt: skip
    stalls = [(e["syscall"], e["outcome"]) for e in events if e["event"] == "stall"]
    assert stalls == [("openat", "refused")]
    reload = next(e for e in events if e["event"] == "reload")
    assert reload["ok"] is True


#: For the network: A connects a TCP socket to an address "written" in the hung page (the
#: network helper must read it); B connects to a port a supervisor rule grants (argv[2]).
CONNECT_SCRIPT = held_call_script(
    """s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[2])))
    note("other process: connected")
except OSError as e:
    note(f"other process: errno {e.errno}")""",
    "libc.connect(s.fileno(), page, 16)",
    setup="s = socket.socket()",
)


@pytest.mark.trio
async def test_a_connect_whose_address_read_is_held_stalls_no_other_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network helper reads every trapped connect's address: the kernel holding that
    read held every other connect too, until the helper is given up on."""
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    log_path = paths["out"] / "log"
    with socket.socket() as listening, hanging_fuse(root / "fuse") as server:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        port = listening.getsockname()[1]
        rules = f'[[supervisor.net_port]]\nallowed_access = ["connect_tcp"]\nport = [{port}]\n'
        text = policy_text(root, supervisor_rules=rules,
                           extra_static=STATIC_FUSE.format(fuse=server.mountpoint))  # fmt: skip
        text = text.replace('handled_access_fs = ["abi.all"]',
                            'handled_access_fs = ["abi.all"]\nhandled_access_net = ["connect_tcp"]')
        doc = parse_policy(text, "net-stall.toml", {"HOME": str(root), "PWD": str(root)})

        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:
            sup.listeners.append(events.append)
            nursery.start_soon(go_then_abort, events, paths, server)
            mapped = str(server.mountpoint / MAPPED_NAME.decode())
            argv = [sys.executable, "-c", CONNECT_SCRIPT, mapped, str(port)]
            status = await sup.run(argv, forward_signals=False)
        assert server.reads > 0, "the supervisor never asked for the page"
    log = lines(log_path)
    assert status == 0, log
    assert sorted(log) == ["other process: connected", "stuck call: -1 errno 5"], log
    stalls = [(e["syscall"], e["path"], e["outcome"]) for e in events if e["event"] == "stall"]
    assert stalls == [("connect", "", "refused")]


#: The held call is an execve of the path "written" in the hung page. The page then comes:
#: it names data/x, which the static layer does not let the program execute.
EXEC_SCRIPT = held_call_script(
    OPEN_DATA, "libc.execve(page, argv, argv)", setup='argv = (ctypes.c_char_p * 2)(b"x", None)'
)


@pytest.mark.trio
async def test_an_exec_held_in_its_read_goes_on_to_the_kernel_and_is_not_reported_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held exec is answered CONTINUE (the static layer judges it: here it refuses); once
    the page comes, the thread given up on reports nothing of it (no exec denial for a
    request answered without it), and another process was served meanwhile."""
    root, paths, events = stall_tree(tmp_path, monkeypatch)
    public = PUBLIC.decode().strip()

    async def serve_the_page(server: HangingFuse) -> None:
        server.serve_reads(str(paths["data"] / "x").encode())
        await wait_until(lambda: any(x.startswith("stuck call:")
                                     for x in lines(paths["out"] / "log")),
                         "the exec's end", 60)  # fmt: skip

    status, _ = await run_over_hung_fuse(root, paths, events, EXEC_SCRIPT, serve_the_page)
    log = lines(paths["out"] / "log")
    assert status == 0, log
    assert sorted(log) == [f"other process: {public}", "stuck call: -1 errno 13"], log
    stalls = [(e["syscall"], e["path"], e["outcome"]) for e in events if e["event"] == "stall"]
    assert stalls == [("execve", "", "continued unreported")]
    assert not [e for e in events if e["event"] == "denial" and e["syscall"] == "execve"]
