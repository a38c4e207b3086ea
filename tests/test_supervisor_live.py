"""A running child's rights follow the supervisor layer, judged by the real kernel."""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import PUBLIC, READ_OK, ReadLoop, make_tree, policy, wait_until

from llsupervise.rights import AccessFs
from llsupervise.seccomp import NotificationGone, SeccompError
from llsupervise.supervisor import core
from llsupervise.supervisor.core import TRAPPED_SYSCALLS, ServingFailed, Supervisor
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.generations import Server
from llsupervise.supervisor.engine.loop import NotificationLoop
from llsupervise.supervisor.engine.pending import Pending
from llsupervise.supervisor.launch.launcher import launch

pytestmark = pytest.mark.kernel


@pytest.mark.trio
async def test_grant_and_revoke_while_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    reader = ReadLoop(tmp_path)
    async with Supervisor.open(policy(tmp_path)) as sup, trio.open_nursery() as nursery:
        reader.start(sup, nursery)
        await wait_until(lambda: "err 13" in reader.lines(), "a first denial")
        without = sup.rules.permanent
        data = str(paths["data"])
        generation = sup.rules.replace(
            without.with_fs(sup.table.open(data), AccessFs.READ_FILE, data)
        )
        mark = len(reader.lines())
        await wait_until(lambda: READ_OK in reader.lines()[mark:], "grant")
        assert sup.generation == generation
        sup.rules.replace(without)
        mark = len(reader.lines())
        await wait_until(lambda: "err 13" in reader.lines()[mark:], "revocation")
        reader.stop()
    assert reader.status == [0]


FD_RIGHTS = r"""
import os, sys
fd = os.open("data/x", os.O_WRONLY)
try:
    os.ftruncate(fd, 0)
    print("truncated")
except OSError as e:
    print("ftruncate", e.errno)
try:
    os.open("data/x", os.O_WRONLY | os.O_TRUNC)
    print("o_trunc ok")
except OSError as e:
    print("o_trunc", e.errno)
"""


@pytest.mark.trio
async def test_granted_fd_carries_the_kernels_rights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A write grant without truncate gives an fd that refuses ftruncate: the kernel judged it."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file", "write_file"]
parent = ["{paths["data"]}"]
"""
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        status = await sup.run([sys.executable, "-c", FD_RIGHTS], forward_signals=False)
    out = capfd.readouterr().out.split("\n")
    assert status == 0
    assert "ftruncate 13" in out
    assert "o_trunc 13" in out
    assert (paths["data"] / "x").read_bytes() == PUBLIC


CREATE_WITH_UMASKS = r"""
import os
for umask, name in ((0o027, "a"), (0o077, "b"), (0o002, "c")):
    os.umask(umask)
    os.close(os.open(f"data/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    os.mkdir(f"data/d{name}", 0o777)
"""


@pytest.mark.trio
async def test_created_objects_get_the_childs_current_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects created on the child's behalf get the umask it has at that moment."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["make_reg", "make_dir", "write_file"]
parent = ["{paths["data"]}"]
"""
    ours = os.umask(0o022)
    os.umask(ours)
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        status = await sup.run([sys.executable, "-c", CREATE_WITH_UMASKS], forward_signals=False)
    assert status == 0
    assert os.umask(ours) == ours  # the brokers' umask of 0 stayed theirs
    modes = {p.name: p.stat().st_mode & 0o777 for p in paths["data"].iterdir()}
    assert modes == {
        "x": modes["x"], "a": 0o640, "b": 0o600, "c": 0o664,
        "da": 0o750, "db": 0o700, "dc": 0o775,
    }  # fmt: skip


CHDIR_LOOP = r"""
import os
top = os.open(".", os.O_PATH | os.O_DIRECTORY)
seen = []
for i in range(100):
    os.chdir("data/one")
    with open("f", "rb") as f:
        seen.append(f.read())
    os.chdir("../two")
    with open("f", "rb") as f:
        seen.append(f.read())
    os.fchdir(top)
    with open("data/one/f", "rb") as f:
        seen.append(f.read())
assert seen == [b"1", b"2", b"1"] * 100, seen[:6]
"""


@pytest.mark.trio
async def test_relative_paths_follow_every_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths relative to the cwd resolve against the cwd the child has at that moment."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name, content in (("one", b"1"), ("two", b"2")):
        (paths["data"] / name).mkdir()
        (paths["data"] / name / "f").write_bytes(content)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{paths["data"]}"]
"""
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        status = await sup.run([sys.executable, "-c", CHDIR_LOOP], forward_signals=False)
    assert status == 0


@pytest.mark.trio
async def test_a_server_started_as_the_command_ends_still_stops(tmp_path: Path) -> None:
    """A commit racing with the end of the command starts a server that never gets its turn
    from the one that ended: stopping and closing the loop must not wait for it forever."""
    make_tree(tmp_path)
    async with Supervisor.open(policy(tmp_path)) as sup:
        assert sup.rules.slot is not None
        launched = launch([sys.executable, "-c", "pass"], sup.static_layer(), TRAPPED_SYSCALLS)

        def refuse(pending: Pending) -> None:
            """A denied request is answered (EACCES), never left waiting."""
            try:
                launched.listener.send_error(pending.notification.id, errno.EACCES)
            except (NotificationGone, SeccompError):
                pass  # the requester is gone, or the listener closed with the run
            finally:
                pending.close()

        loop = NotificationLoop(launched.listener, sup.rules.slot, sup.static.handled_fs, refuse)
        await trio.to_thread.run_sync(loop.run)  # returns once the command is gone
        launched.process.wait()
        loop._start(sup.rules.slot.broker, sup.generation + 1)  # what such a commit does
        loop.stop()
        closing = threading.Thread(target=loop.close, daemon=True)
        closing.start()
        closing.join(30)  # the limit only keeps a regression from hanging the suite
        assert not closing.is_alive()
        launched.listener.close()


@pytest.mark.trio
async def test_a_server_woken_before_its_turn_starts_no_helper(tmp_path: Path) -> None:
    """A stalled server's replacement can be launched after a commit registered a newer
    one (a commit that did not wait for it: it had no thread yet), its wake already
    written. It must serve nothing with its (old) rules: no helper is started to answer
    the open already waiting (a static one), which the loop that runs afterwards answers."""
    make_tree(tmp_path)
    async with Supervisor.open(policy(tmp_path)) as sup:
        assert sup.rules.slot is not None
        broker = sup.rules.slot.broker
        assert broker.kernel is not None
        # Only opens are trapped: the interpreter's first one (static) waits, unanswered,
        # from the start.
        launched = launch([sys.executable, "-c", "pass"], sup.static_layer(), ("openat",))

        def refuse(pending: Pending) -> None:
            """Nothing here is denied: a denial would fail the test, never wait."""
            try:
                launched.listener.send_error(pending.notification.id, errno.EACCES)
            except (NotificationGone, SeccompError):
                pass
            finally:
                pending.close()

        loop = NotificationLoop(
            launched.listener, sup.rules.slot, sup.static.handled_fs, refuse,
            fast=StaticPrefixes(sup.static, sup.table),
        )  # fmt: skip
        assert loop._helper_groups > 0
        served: list[int] = []

        def waiting_in_open() -> bool:
            with open(f"/proc/{launched.process.pid}/syscall") as f:
                return f.read().split()[0] == "257"  # trapped in its first openat

        await wait_until(waiting_in_open, "the command's open")
        loop._contexts.readers.start_opener(-1)  # as run() does: a helper could answer it
        server = Server(broker.kernel, sup.generation, loop._receiver())
        server.wake()
        handed_over = await trio.to_thread.run_sync(loop._receive, server)
        served.append(server.receiver.answered)
        assert not handed_over
        assert served == [0]  # nothing answered the open meanwhile
        assert loop._handoff.pending() == 0  # nor received it: it waits in the kernel
        await trio.to_thread.run_sync(loop.run)  # serves it, then returns once it is gone
        assert launched.process.wait() == 0
        server.close()
        loop.close()
        launched.listener.close()


def _broken(self: NotificationLoop, server: Server) -> bool:
    raise RuntimeError("serving failed")


def _thread_tracebacks(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """What threads' uncaught exceptions would print (threading.excepthook)."""
    printed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    return printed


@pytest.mark.trio
async def test_a_serving_loop_that_fails_ends_the_run_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing answers the command once its serving loop has failed: left waiting in its
    first trapped call, it would keep the run waiting for ever. It is killed instead, and
    the run fails with the loop's error (told once: the serving thread prints nothing)."""
    make_tree(tmp_path)
    monkeypatch.setattr(NotificationLoop, "_receive_handed", _broken)
    printed = _thread_tracebacks(monkeypatch)
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(policy(tmp_path)) as sup:
        sup.listeners.append(events.append)
        with pytest.raises(ServingFailed, match="RuntimeError: serving failed") as failed:
            await sup.run([sys.executable, "-c", "pass"], forward_signals=False)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert "the command was killed" in str(failed.value)
    assert [e["status"] for e in events if e["event"] == "exit"] == [128 + signal.SIGKILL]
    assert printed == []


def test_a_serving_loop_that_fails_ends_a_run_without_trio_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same where the run goes without trio until something needs it (a headless run):
    there the run waited for ever."""
    make_tree(tmp_path)
    monkeypatch.setattr(NotificationLoop, "_receive_handed", _broken)
    monkeypatch.setattr(core, "PLAIN_FOR_S", 600.0)
    printed = _thread_tracebacks(monkeypatch)
    events: list[Mapping[str, Any]] = []
    failed = pytest.raises(ServingFailed, match="RuntimeError: serving failed")
    with Supervisor.opened(policy(tmp_path)) as sup, failed:
        sup.listeners.append(events.append)
        sup.run_trio_on_demand([sys.executable, "-c", "pass"])
    assert [e["status"] for e in events if e["event"] == "exit"] == [128 + signal.SIGKILL]
    assert printed == []


@pytest.mark.trio
async def test_serving_works_with_our_descriptors_numbered_past_1024(tmp_path: Path) -> None:
    """The supervisor raises its descriptor limit and may hold many: its serving threads'
    own descriptors (wake pipes, the listener) may then number more than select() takes."""
    paths = make_tree(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        async with Supervisor.open(policy(tmp_path)) as sup:
            (paths["out"] / "x").write_text("static")
            script = f"assert open({str(paths['out'] / 'x')!r}).read() == 'static'"
            status = await sup.run([sys.executable, "-c", script], forward_signals=False)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert status == 0


@pytest.mark.trio
async def test_requests_a_rule_let_through_are_counted_against_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    (paths["data"] / "sub").mkdir()
    (paths["data"] / "sub" / "y").write_bytes(PUBLIC)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{paths["data"]}", "{paths["data"]}/sub"]
"""
    # The last open is relative to a directory fd: the rule is found through that
    # directory's path.
    script = (
        "import os\n"
        "for p in ('data/x', 'data/x', 'data/sub/y'): open(p).read()\n"
        "d = os.open('data', os.O_PATH)\n"
        "os.close(os.open('sub/y', os.O_RDONLY, dir_fd=d))\n"
    )
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", script], forward_signals=False)
    assert status == 0
    totals = {u["path"]: u["count"] for e in events if e["event"] == "rule_use" for u in e["uses"]}
    # The deepest rule on the way to each file gets it.
    assert totals == {str(paths["data"]): 2, str(paths["data"] / "sub"): 2}


@pytest.mark.trio
async def test_more_threads_than_kept_readers_are_all_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers of threads are evicted oldest first and reopened when the thread comes back."""
    from llsupervise.supervisor.engine import contexts

    monkeypatch.setattr(contexts, "MAX_TASKS", 2)
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{paths["data"]}"]
"""
    script = r"""
import threading
reads = []
def read():
    for _ in range(3):
        reads.append(open("data/x", "rb").read())
threads = [threading.Thread(target=read) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
read()
assert reads == [b"public data\n"] * 21, reads
"""
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        status = await sup.run([sys.executable, "-c", script], forward_signals=False)
    assert status == 0
