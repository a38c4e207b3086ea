"""Attaching over the Unix socket: a client answers questions for a real supervised child."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import PUBLIC, lines, make_tree, policy, policy_text, wait_until

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.frontends.hub import (
    Hub,
    LineReader,
    RemoteError,
    bind_private,
    connect,
    decode,
    encode,
    listening,
)

pytestmark = pytest.mark.kernel

#: Waits for the go file (so the client is attached first), then reads data/x twice.
READ_AFTER_GO = r"""
import os, sys, time
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
for _ in range(int(sys.argv[3])):
    try:
        with open("data/x", "rb") as f:
            os.write(log, b"ok " + f.read())
    except OSError as e:
        os.write(log, b"err %d\n" % e.errno)
"""


class RawClient:
    """The protocol by hand: JSON lines over the socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._lines = LineReader(stream)
        self.seen: list[dict[str, Any]] = []

    async def next(self, kind: str) -> dict[str, Any]:
        with trio.fail_after(30):  # only keeps a broken test from hanging
            while (line := await self._lines.next()) is not None:
                message = decode(line)
                self.seen.append(message)
                if message["type"] == kind:
                    return dict(message)
        raise AssertionError(f"connection closed before a {kind!r} message")

    async def send(self, message: dict[str, Any]) -> None:
        await self.stream.send_all(encode(message))


async def _supervise_with_client(
    tmp_path: Path, answer: dict[str, Any], reads: int = 1
) -> tuple[int, list[str], RawClient]:
    """Run READ_AFTER_GO with a client attached that sends ``answer`` to the first question."""
    paths = make_tree(tmp_path)
    log, go = paths["out"] / "log", paths["out"] / "go"
    log.touch()
    sock = str(tmp_path / "private" / "sock")
    doc = policy(tmp_path, mode="interactive")
    decisions = ModeDecisions("interactive", "deny", 60.0)
    argv = [sys.executable, "-c", READ_AFTER_GO, str(log), str(go), str(reads)]
    async with Supervisor.open(doc, decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock), trio.open_nursery() as nursery:
            status: list[int] = []

            async def child() -> None:
                status.append(await sup.run(argv, forward_signals=False))

            stream = await connect(sock)
            client = RawClient(stream)
            hello = await client.next("hello")
            assert hello["version"] == 1 and hello["state"]["mode"] == "interactive"
            nursery.start_soon(child)
            await wait_until(lambda: hub.clients != [] and hub.pid is not None, "attach, start")
            go.touch()
            question = await client.next("question")
            assert question["denial"]["path"] == str(paths["data"] / "x")
            assert question["denial"]["access"] == ["read_file"]
            assert 0 < question["timeout_in"] <= 60
            await client.send({"id": question["id"], **answer})
            resolved = await client.next("resolved")
            assert resolved["id"] == question["id"]
            await wait_until(lambda: bool(status), "the child's exit")
            await client.next("state")
            await stream.aclose()
    return status[0], lines(log), client


@pytest.mark.trio
async def test_client_allows_once_and_the_open_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, client = await _supervise_with_client(
        tmp_path, {"type": "answer", "answer": "allow_once"}
    )
    assert status == 0
    assert out == ["ok " + PUBLIC.decode().strip()]
    [denial] = [m["event"] for m in client.seen if m["type"] == "event"
                and m["event"]["event"] == "denial"]  # fmt: skip
    assert denial["decision"] == "allow_once"


@pytest.mark.trio
async def test_client_denies_and_the_open_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, _ = await _supervise_with_client(tmp_path, {"type": "answer", "answer": "deny"})
    assert status == 0
    assert out == ["err 13"]


@pytest.mark.trio
async def test_allow_always_with_more_rights_keeps_one_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second read passes without a question: the rule was committed."""
    monkeypatch.chdir(tmp_path)
    answer = {"type": "answer", "answer": "allow_always", "scope": str(tmp_path / "data"),
              "rights": ["read_file", "read_dir"]}  # fmt: skip
    status, out, client = await _supervise_with_client(tmp_path, answer, reads=2)
    assert status == 0
    assert out == ["ok " + PUBLIC.decode().strip()] * 2
    assert [m["type"] for m in client.seen].count("question") == 1
    committed = client.seen[-1]["state"]["committed"]["fs"]
    assert {"path": str(tmp_path / "data"), "access": ["read_file", "read_dir"]} in committed


@pytest.mark.trio
async def test_bad_answers_are_refused_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    log, go = paths["out"] / "log", paths["out"] / "go"
    log.touch()
    sock = str(tmp_path / "private" / "sock")
    decisions = ModeDecisions("interactive", "deny", 60.0)
    argv = [sys.executable, "-c", READ_AFTER_GO, str(log), str(go), "1"]
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock), trio.open_nursery() as nursery:
            client = RawClient(await connect(sock))
            await client.next("hello")
            nursery.start_soon(lambda: sup.run(argv, forward_signals=False))
            await wait_until(lambda: hub.pid is not None, "the start")
            go.touch()
            question = await client.next("question")
            qid = question["id"]
            up = str(tmp_path / "data/../secret")
            refused = [
                b"not json\n",
                b"[1, 2]\n",
                encode({"type": "launch"}),
                encode({"type": "answer", "id": qid, "answer": "permissive"}),
                encode({"type": "answer", "id": qid + 100, "answer": "deny"}),
                encode({"type": "answer", "id": qid, "answer": "allow_always", "scope": "/etc"}),
                encode({"type": "answer", "id": qid, "answer": "allow_always", "scope": up}),
                encode({"type": "answer", "id": qid, "answer": "allow_for", "duration": -1}),
                encode({"type": "answer", "id": qid, "answer": "allow_always", "rights": []}),
                encode(
                    {
                        "type": "answer",
                        "id": qid,
                        "answer": "allow_once",
                        "rights": ["read_file", "write_file"],
                    }
                ),
                encode({"type": "mode", "mode": "yolo"}),
            ]
            for line in refused:
                await client.stream.send_all(line)
                error = await client.next("error")
                assert error["message"]
            generation = sup.generation
            await client.send({"type": "answer", "id": qid, "answer": "deny"})
            assert (await client.next("resolved"))["answer"] == "deny"
            await wait_until(lambda: lines(log) == ["err 13"], "the denied read")
            await client.stream.aclose()
    assert sup.generation == generation  # no refused answer committed anything
    assert all(m["type"] != "question" or m["id"] == qid for m in client.seen)


@pytest.mark.trio
async def test_switching_to_permissive_leaves_an_open_question_to_the_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permissive mode allows the denials to come, never the question already asked: it is
    still open, and the client's own answer (deny) is the one that applies."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    log, go = paths["out"] / "log", paths["out"] / "go"
    log.touch()
    sock = str(tmp_path / "private" / "sock")
    decisions = ModeDecisions("interactive", "deny", 60.0)
    argv = [sys.executable, "-c", READ_AFTER_GO, str(log), str(go), "2"]
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock), trio.open_nursery() as nursery:
            client = RawClient(await connect(sock))
            await client.next("hello")
            status: list[int] = []

            async def child() -> None:
                status.append(await sup.run(argv, forward_signals=False))

            nursery.start_soon(child)
            await wait_until(lambda: hub.pid is not None, "the start")
            go.touch()
            question = await client.next("question")
            await client.send({"type": "mode", "mode": "permissive"})
            while (await client.next("state"))["state"]["mode"] != "permissive":
                pass
            await client.send({"type": "answer", "id": question["id"], "answer": "deny"})
            resolved = await client.next("resolved")
            assert (resolved["id"], resolved["answer"]) == (question["id"], "deny")
            while (await client.next("event"))["event"].get("event") != "exit":
                pass
            await wait_until(lambda: bool(status), "the child's exit")
            await client.stream.aclose()
    # The asked read was denied as answered; the next one was allowed without a question.
    assert lines(log) == ["err 13", "ok " + PUBLIC.decode().strip()]
    assert [m["type"] for m in client.seen].count("question") == 1
    assert not any(m["type"] == "error" for m in client.seen)
    decisions_logged = [
        m["event"]["decision"]
        for m in client.seen
        if m["type"] == "event" and m["event"].get("event") == "denial"
    ]
    assert decisions_logged == ["deny", "permissive"]


@pytest.mark.trio
async def test_without_a_client_the_default_applies_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    log, go = paths["out"] / "log", paths["out"] / "go"
    log.touch()
    go.touch()
    decisions = ModeDecisions("interactive", "allow_once", 3600.0)
    argv = [sys.executable, "-c", READ_AFTER_GO, str(log), str(go), "1"]
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, str(tmp_path / "private" / "sock")):
            status = await sup.run(argv, forward_signals=False)
    assert status == 0
    assert lines(log) == ["ok " + PUBLIC.decode().strip()]


def _nobody_connects(path: str) -> str:
    """Fork, drop to ``nobody``, connect; report what happened."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked client: only plain syscalls, then _exit
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            try:
                s.connect(path)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                result = b"connected: " + data
            except OSError as exc:
                result = f"error {exc.errno}".encode()
            os.write(write_end, result)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            return pipe.read().decode()
    finally:
        os.waitpid(pid, 0)


@pytest.mark.trio
async def test_another_uid_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    # Outside pytest's own (private) temporary tree, so that ``nobody`` can reach it.
    base = Path(tempfile.mkdtemp(prefix="llsupervise-test-"))
    base.chmod(0o711)
    directory = base / "private"
    sock = str(directory / "sock")
    decisions = ModeDecisions("interactive", "deny", 60.0)
    try:
        async with Supervisor.open(
            policy(tmp_path, mode="interactive"), decisions=decisions
        ) as sup:
            hub = Hub(sup, decisions)
            async with listening(hub, sock):
                assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
                assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
                # The file system keeps others out...
                assert await trio.to_thread.run_sync(_nobody_connects, sock) == "error 13"
                # ...and the peer check stands behind it when the modes are opened up.
                directory.chmod(0o755)
                os.chmod(sock, 0o777)
                result = await trio.to_thread.run_sync(_nobody_connects, sock)
                assert result.startswith("connected: ")
                [line] = result.removeprefix("connected: ").splitlines()
                refusal = json.loads(line)
                assert refusal["type"] == "error" and "refused" in refusal["message"]
                assert hub.clients == []
                # The owner still gets in.
                client = RawClient(await connect(sock))
                assert (await client.next("hello"))["type"] == "hello"
                await client.stream.aclose()
        assert not os.path.exists(sock)
    finally:
        shutil.rmtree(base)


def test_socket_directory_must_be_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RemoteError, match="must be private"):
        bind_private(str(shared / "sock"))
    (tmp_path / "p").mkdir(mode=0o700)
    (tmp_path / "p" / "file").write_text("x")
    with pytest.raises(RemoteError, match="not a socket"):
        bind_private(str(tmp_path / "p" / "file"))


@pytest.mark.trio
async def test_attach_to_nothing_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="cannot attach"):
        await connect(str(tmp_path / "none"))


@pytest.mark.trio
async def test_cli_listen_keeps_the_terminal_and_serves_answers(tmp_path: Path) -> None:
    """``run --headless --listen``: the command's output stays on the terminal; a client
    attached over the socket answers."""
    paths = make_tree(tmp_path)
    go = paths["out"] / "go"
    text = policy_text(tmp_path, mode="interactive", settings="prompt_timeout = 60")
    (tmp_path / "p.toml").write_text(text)
    sock = str(tmp_path / "run" / "sock")
    script = (
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
        "print(open('data/x').read().strip(), flush=True)\n"
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "llsupervise.cli", "run", "--headless", "--policy", "p.toml",
         "--listen", sock, "--", "env", "-u", "PYTHONPATH", sys.executable, "-c", script],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until(lambda: os.path.exists(sock), "the socket")
        client = RawClient(await connect(sock))
        await client.next("hello")
        go.touch()
        question = await client.next("question")
        await client.send({"type": "answer", "id": question["id"], "answer": "allow_once"})
        exit_event = None
        while exit_event is None:
            event = (await client.next("event"))["event"]
            exit_event = event if event["event"] == "exit" else None
        assert exit_event["status"] == 0
        await client.stream.aclose()
        with trio.fail_after(30):
            assert await proc.wait() == 0
        assert proc.stdout is not None and proc.stderr is not None
        out = (await proc.stdout.receive_some(65536)).decode()
        err = (await proc.stderr.receive_some(65536)).decode()
        assert out.strip() == PUBLIC.decode().strip()
        assert f"llsupervise attach {sock}" in err
        assert not os.path.exists(sock)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
