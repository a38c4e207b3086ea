"""Whatever the supervised program does, the supervisor survives it: names that are not
UTF-8, floods of denials, permissive runs that touch thousands of files."""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import make_tree, policy, policy_text, wait_until

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.encode import unescape
from llsupervise.supervisor.frontends.hub import (
    Hub,
    LineReader,
    connect,
    decode,
    encode,
    listening,
    read_token,
)
from llsupervise.supervisor.questions import limits, scopes

pytestmark = pytest.mark.kernel

#: Names no UTF-8 decoder takes, and one that reads like an escape of the first.
ODD_NAMES = (b"\xff\xfe", b"\\xff\\xfe", b"caf\xe9")

#: Opens each name given (bytes, as hex) under data/; prints what each got.
OPEN_NAMES = r"""
import sys
import time
for name in sys.argv[1:]:
    try:
        with open(b"data/" + bytes.fromhex(name), "rb") as f:
            print("ok", f.read().decode())
    except OSError as e:
        print("err", e.errno)
"""


def _odd_files(data: Path) -> list[str]:
    """Create data/NAME for each odd name (content: its index); return the names in hex."""
    for i, name in enumerate(ODD_NAMES):
        with open(os.fsencode(data) + b"/" + name, "wb") as f:
            f.write(str(i).encode())
    return [name.hex() for name in ODD_NAMES]


#: The supervisor in a subprocess imports this checkout's llsupervise, not an installed one.
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def _cli(tmp_path: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", "run", "--headless", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV, **kwargs,
    )  # fmt: skip


def test_names_that_are_not_utf8_are_logged_escaped_and_distinct(tmp_path: Path) -> None:
    """``--log``: each denied open of an odd name is one record, its path escaped so that
    it reads back as exactly the name the program used."""
    paths = make_tree(tmp_path)
    hexes = _odd_files(paths["data"])
    (tmp_path / "p.toml").write_text(policy_text(tmp_path))
    log = tmp_path / "log.jsonl"
    done = _cli(tmp_path, "--policy", "p.toml", "--log", str(log), "--",
                sys.executable, "-c", OPEN_NAMES, *hexes)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["err 13"] * len(ODD_NAMES)
    assert "Traceback" not in done.stderr
    records = [json.loads(line) for line in log.read_bytes().decode("utf-8").splitlines()]
    # (The child inherits PYTHONPATH: its look at this checkout is denied too.)
    data = str(paths["data"]) + "/"
    denied = [r["path"] for r in records if r["event"] == "denial" and r["path"].startswith(data)]
    expected = [os.fsdecode(os.fsencode(paths["data"]) + b"/" + name) for name in ODD_NAMES]
    assert [unescape(p) for p in denied] == expected
    assert len(set(denied)) == len(ODD_NAMES)
    assert any(r["event"] == "exit" and r["status"] == 0 for r in records)


@pytest.mark.trio
async def test_a_client_sees_and_answers_names_that_are_not_utf8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the attach socket the name crosses escaped and comes back as it was: a rule
    scoped on it ("always") is put on that very file."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    hexes = _odd_files(paths["data"])
    sock = str(tmp_path / "private" / "sock")
    decisions = ModeDecisions("interactive", "deny", 60.0)
    argv = [sys.executable, "-c", OPEN_NAMES, hexes[0], hexes[1], hexes[0]]
    out = paths["out"] / "stdout"
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock), trio.open_nursery() as nursery:
            stream = await connect(sock)
            lines = LineReader(stream)
            status: list[int] = []

            async def child() -> None:
                with open(out, "wb") as f:
                    status.append(
                        await sup.run(argv, forward_signals=False, stdio=(None, f.fileno(), None))
                    )

            async def next_question() -> dict[str, Any]:
                with trio.fail_after(60):  # only keeps a broken test from hanging
                    while (line := await lines.next()) is not None:
                        message = decode(line)
                        if message["type"] == "question":
                            return dict(message)
                raise AssertionError("the connection closed")

            await wait_until(lambda: hub.clients != [], "the client")
            nursery.start_soon(child)
            answers = ("allow_always", "deny")
            for name, answer in zip(ODD_NAMES[:2], answers, strict=True):
                question = await next_question()
                path = question["denial"]["path"]
                assert path == os.fsdecode(os.fsencode(paths["data"]) + b"/" + name)
                message = {"type": "answer", "id": question["id"], "answer": answer}
                if answer == "allow_always":
                    message["scope"] = path
                await stream.send_all(encode(message))
            await wait_until(lambda: bool(status), "the child's exit")
            await stream.aclose()
    assert status == [0]
    # Granted always on the first name; the look-alike second name stays refused.
    assert out.read_text().splitlines() == ["ok 0", "err 13", "ok 0"]


#: Reads data/0 .. data/N-1, checking each; pauses at each count named in argv (writes
#: out/paused-K, waits for out/go-K) so that the test can count the supervisor's fds.
READ_MANY = r"""
import os, sys, time
count, pauses = int(sys.argv[1]), {int(k) for k in sys.argv[2:]}
for i in range(count):
    if i in pauses:
        open(f"out/paused-{i}", "w").close()
        while not os.path.exists(f"out/go-{i}"):
            time.sleep(0.01)
    with open(f"data/{i}") as f:
        assert f.read() == str(i), i
print("read", count)
"""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_NOFILE, LOW_NOFILE))


#: Hard and soft: the supervisor keeps 256 for itself, so rule objects get ~140.
LOW_NOFILE = 400


def test_a_permissive_run_holds_nothing_for_its_grants(tmp_path: Path) -> None:
    """Each permissive grant is served by a one-shot broker and then forgotten: 2000
    distinct files read under a descriptor limit of 400, and the supervisor holds as many
    fds after the last as after the first hundred."""
    paths = make_tree(tmp_path)
    count = 2000
    for i in range(count):
        (paths["data"] / str(i)).write_text(str(i))
    (tmp_path / "p.toml").write_text(policy_text(tmp_path, mode="permissive"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llsupervise.cli", "run", "--headless", "--policy", "p.toml",
         "--", sys.executable, "-c", READ_MANY, str(count), "100", str(count - 1)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        preexec_fn=_low_nofile,
    )  # fmt: skip
    try:
        first = _fds_when_paused(proc, paths["out"], 100)
        (paths["out"] / "go-100").touch()
        _fds_settle(proc, paths["out"], count - 1, first)
        (paths["out"] / f"go-{count - 1}").touch()
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"read {count}"]


def _fds_when_paused(proc: subprocess.Popen[str], out: Path, at: int) -> int:
    _wait_for(proc, lambda: (out / f"paused-{at}").exists(), f"the pause at {at}")
    return _fds(proc.pid)


def _fds_settle(proc: subprocess.Popen[str], out: Path, at: int, bound: int) -> None:
    """Wait for the pause at ``at``, then for the supervisor's fd count to come back to
    ``bound`` (a grant's broker closes just after its reply)."""
    _wait_for(proc, lambda: (out / f"paused-{at}").exists(), f"the pause at {at}")
    _wait_for(proc, lambda: _fds(proc.pid) <= bound, f"fds back to {bound} (first pause)")


def _wait_for(proc: subprocess.Popen[str], predicate: Any, what: str) -> None:
    """Poll ``predicate`` while the supervisor lives; the limit only keeps a broken test
    from hanging."""
    deadline = time.monotonic() + 120
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the supervisor exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")  # fmt: skip
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


#: Starts N threads, each opening its own denied file data/I, and waits for the N - CAP
#: that must be refused at once (the others wait for an answer that never comes); then
#: opens FLOOD more distinct denied files, each refused at once too, and exits 7.
THREAD_FLOOD = r"""
import os, sys, threading, time
count, cap, flood = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
done, lock = [], threading.Lock()

def one(i):
    try:
        open(f"data/{i}").close()
        result = "ok"
    except OSError as e:
        result = e.errno
    with lock:
        done.append(result)

for i in range(count):
    threading.Thread(target=one, args=(i,), daemon=True).start()
deadline = time.monotonic() + 120  # only keeps a broken supervisor from hanging the test
while len(done) < count - cap:
    if time.monotonic() > deadline:
        print("stuck", len(done), flush=True)
        os._exit(99)
    time.sleep(0.01)
with lock:
    print("refused", len(done), set(done), flush=True)
errors = set()
for i in range(count, count + flood):
    try:
        open(f"data/{i}").close()
    except OSError as e:
        errors.add(e.errno)
print("flood", errors, flush=True)
os._exit(7)
"""


class SilentClient:
    """Attached, reads everything, answers nothing."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.seen: list[dict[str, Any]] = []

    async def read(self) -> None:
        lines = LineReader(self.stream)
        while (line := await lines.next()) is not None:
            self.seen.append(decode(line))


@pytest.mark.trio
async def test_a_flood_of_distinct_denials_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 threads each wait on a distinct question nobody answers: the process gets
    PER_PROCESS open questions, the other denials (8, then 5000 in a loop) are refused at
    once and the events say so; the supervisor's fds stay bounded and the exit status
    comes through."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    count, flood = limits.PER_PROCESS + 8, 5000
    for i in range(count + flood):
        (paths["data"] / str(i)).write_text(str(i))
    out = paths["out"] / "stdout"
    sock = str(tmp_path / "private" / "sock")
    decisions = ModeDecisions("interactive", "deny", 3600.0)
    argv = [sys.executable, "-I", "-c", THREAD_FLOOD, str(count), str(limits.PER_PROCESS),
            str(flood)]  # fmt: skip
    # glibc reads the CPU count when a thread needs a new malloc arena.
    cpus = '[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/sys/devices/system/cpu"]'
    doc = policy(tmp_path, mode="interactive", extra_static=cpus + "\n")
    async with Supervisor.open(doc, decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock), trio.open_nursery() as nursery:
            client = SilentClient(await connect(sock))
            nursery.start_soon(client.read)
            await wait_until(lambda: hub.clients != [], "the client")
            before = _fds(os.getpid())
            most = 0

            async def count_fds() -> None:
                nonlocal most
                while True:
                    most = max(most, _fds(os.getpid()))
                    await trio.sleep(0.005)

            nursery.start_soon(count_fds)
            with open(out, "wb") as f:
                status = await sup.run(argv, forward_signals=False, stdio=(None, f.fileno(), None))
            await wait_until(
                lambda: any(m["type"] == "event" and m["event"]["event"] == "exit"
                            for m in client.seen), "the exit event",
            )  # fmt: skip
            nursery.cancel_scope.cancel()
        await client.stream.aclose()
    assert status == 7
    assert out.read_text().splitlines() == ["refused 8 {13}", "flood {13}"]
    over = [m["event"] for m in client.seen
            if m["type"] == "event" and m["event"].get("over_limit")]  # fmt: skip
    assert len(over) == 8 + flood
    assert all(e["decision"] == "deny" for e in over)
    # Each open question holds its checked objects and the scopes it offers, each thread of
    # the program a few fds; refusals none.
    assert most - before < (8 + scopes.MAX_SCOPES) * count


@pytest.mark.trio
async def test_the_listener_survives_running_out_of_fds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """accept() failing with EMFILE is waited out: the connection is served once fds are
    free again."""
    make_tree(tmp_path)
    sock = str(tmp_path / "private" / "sock")
    decisions = ModeDecisions("interactive", "deny", 60.0)
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            fillers: list[int] = []
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (_fds(os.getpid()) + 16, hard))
                with pytest.raises(OSError) as full:
                    while True:
                        fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
                assert full.value.errno == errno.EMFILE
                client.connect(sock)  # waits in the backlog: accept() has no fd for it
                err = ""

                def refused() -> bool:
                    nonlocal err
                    err += capsys.readouterr().err
                    return "cannot accept an attach connection now" in err

                await wait_until(refused, "an accept() refused for want of fds")
            finally:
                for fd in fillers:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
            # What attach sends first (see hub: the token proves it is not the program).
            await stream.send_all(
                encode({"type": "token", "token": read_token(sock), "terminals": []})
            )
            with trio.fail_after(30):  # only keeps a broken test from hanging
                hello = await LineReader(stream).next()
            assert hello is not None and decode(hello)["type"] == "hello"
            await stream.aclose()


def test_a_denial_loop_is_folded_in_the_log(tmp_path: Path) -> None:
    """5000 identical refused opens: a handful of log records, whose counts add up."""
    make_tree(tmp_path)
    (tmp_path / "p.toml").write_text(policy_text(tmp_path))
    log = tmp_path / "log.jsonl"
    loop = (
        "n = 0\n"
        "for _ in range(5000):\n"
        "    try: open('secret/s').close()\n"
        "    except PermissionError: n += 1\n"
        "print(n)\n"
    )
    done = _cli(tmp_path, "--policy", "p.toml", "--log", str(log), "--",
                sys.executable, "-c", loop)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5000"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    secret = str(tmp_path / "secret" / "s")
    mine = [r for r in records if r.get("path") == secret]
    assert sum(r["count"] for r in mine) == 5000
    folded = [r for r in mine if r["event"] == "folded"]
    assert folded and all(r["decision"] == "deny" for r in folded)
    assert len(mine) < 5000 // 10
    assert records[-1]["event"] == "exit"
