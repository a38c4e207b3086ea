"""Chaos: a seeded random program makes 1500 trapped calls on hostile names under each mode,
with an attach client answering at random. The supervisor lives, its run returns the
program's status, its fds and memory stay bounded, the secret is never read, and the event
log is JSON lines. A failure names its seed: ``CHAOS_SEED=N`` replays it."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from chaos_program import DEEP, DIRS, HOSTILE_NAMES, PROGRAM, operations
from supervised import make_tree, policy_text, wait_until

from llsupervise.policy.loader import parse_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.encode import unescape
from llsupervise.supervisor.events.model import EventLog
from llsupervise.supervisor.frontends.hub import Hub, LineReader, connect, decode, encode, listening

pytestmark = pytest.mark.kernel

OPERATIONS = 1500
EXIT = 23
#: Fds the supervisor may keep per thread or process the program made (a memory reader, its
#: status, a cwd; kept for up to contexts.MAX_TASKS threads, as nothing says when one exits).
FDS_PER_TASK = 3
#: Beyond those: open questions, brokers, the client, the log. Far above what a healthy run
#: holds at once, far below the fd that a leak per operation would leave per operation.
FD_GROWTH_BOUND = 300
RSS_GROWTH_BOUND = 100 << 20
#: An unanswered question waits this long before its default (deny) applies.
PROMPT_TIMEOUT = 0.5


def _seed() -> int:
    value = os.environ.get("CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _tree(root: Path) -> bytes:
    """The test tree: files under every hostile name in data/ and work/; a secret with a
    token of its own; a copy of /bin/true where nothing may execute."""
    make_tree(root)
    (root / "work").mkdir()
    token = f"SECRET-{random.SystemRandom().getrandbits(64):016x}"
    (root / "secret" / "s").write_text(token + "\n")
    base = os.fsencode(root)
    for directory in DIRS:
        if directory:
            os.makedirs(base + b"/" + directory, exist_ok=True)
    for directory in (b"data", b"data/sub", b"work", DEEP):
        for name in HOSTILE_NAMES:
            if len(name) > 255:  # past NAME_MAX: no such file can exist
                continue
            with open(base + b"/" + directory + b"/" + name, "wb") as f:
                f.write(b"public " + name)
    shutil.copy("/bin/true", root / "data" / "true")
    return token.encode()


def _policy_text(root: Path, mode: str, allowed_port: int) -> str:
    # glibc reads the CPU count when a thread needs a new malloc arena.
    extra = (
        '[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/sys/devices/system/cpu"]\n'
        f'[[net_port]]\nallowed_access = ["connect_tcp"]\nport = [{allowed_port}]\n'
    )
    rules = (
        '[[supervisor.path_beneath]]\nallowed_access = ["abi.read_write"]\n'
        f'parent = ["{root}/work"]\n'
    )
    if mode != "enforce":
        # Permissive runs and answers grant what the static layer refuses; the secret is
        # refused without a question in every mode.
        rules += f'[[supervisor.quiet]]\nparent = ["{root}/secret"]\n'
    return policy_text(root, mode=mode, extra_static=extra, supervisor_rules=rules)


class RandomClient:
    """Attached over the real socket; answers each question at random (sometimes not at
    all, sometimes twice, sometimes with a malformed message). Grants that outlive the
    request (always, for, quiet) go only on places under data/, work/ or out/: elsewhere a
    person would be granting the secret's directory, which no static layer can refuse."""

    def __init__(self, stream: trio.SocketStream, rng: random.Random, root: Path) -> None:
        self.stream = stream
        self.rng = rng
        self.places = tuple(f"{root}/{d}/" for d in ("data", "work", "out"))
        self.questions = 0
        self.errors: list[dict[str, Any]] = []
        #: Messages sent that must be refused (an unknown question).
        self.bogus = 0
        self.exit_seen = False

    def _answer(self, question: dict[str, Any]) -> dict[str, Any] | None:
        denial = question["denial"]
        answer = self.rng.choices(
            ("allow_once", "deny", "allow_for", "allow_always", "deny_quiet", None),
            weights=(40, 30, 10, 10, 8, 2),
        )[0]  # fmt: skip
        if answer is None:
            return None
        lasting = answer in ("allow_for", "allow_always", "deny_quiet")
        place = unescape(denial["scopes"][0]) if denial["scopes"] else unescape(denial["path"])
        single = denial["syscall"] in ("open", "openat", "openat2", "creat", "mkdir", "mkdirat")
        if lasting and not (single and place.startswith(self.places)):
            answer = "allow_once"
        message: dict[str, Any] = {"type": "answer", "id": question["id"], "answer": answer}
        if answer == "allow_for":
            message["duration"] = self.rng.uniform(0.1, 3.0)
        return message

    async def serve(self) -> None:
        lines = LineReader(self.stream)
        while (line := await lines.next()) is not None:
            message = decode(line)
            if message["type"] == "error":
                self.errors.append(message)
            elif message["type"] == "event" and message["event"]["event"] == "exit":
                self.exit_seen = True
            elif message["type"] == "question":
                self.questions += 1
                answer = self._answer(message)
                if answer is not None:
                    await self.stream.send_all(encode(answer))
                    if self.rng.random() < 0.02:  # a second answer: refused, nothing else
                        await self.stream.send_all(encode(answer))
                if self.rng.random() < 0.02:
                    self.bogus += 1
                    await self.stream.send_all(
                        encode({"type": "answer", "id": -1, "answer": "allow_always"})
                    )


@pytest.mark.trio
@pytest.mark.parametrize("mode", ["enforce", "permissive", "interactive"])
async def test_chaos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    seed = _seed()
    why = f"(mode {mode}, seed {seed}: CHAOS_SEED={seed} replays it)"
    monkeypatch.chdir(tmp_path)
    token = _tree(tmp_path)
    ops = operations(seed, OPERATIONS)
    (tmp_path / "out" / "chaos.py").write_text(PROGRAM)
    (tmp_path / "out" / "ops.txt").write_text(repr(ops))
    stdout, stderr = tmp_path / "out" / "stdout", tmp_path / "out" / "stderr"
    log_path = tmp_path / "log.jsonl"
    sock = str(tmp_path / "private" / "sock")
    allowed, denied = trio.socket.socket(), trio.socket.socket()
    for listener in (allowed, denied):
        await listener.bind(("127.0.0.1", 0))
        listener.listen(512)
    allowed_port, denied_port = allowed.getsockname()[1], denied.getsockname()[1]
    text = _policy_text(tmp_path, mode, allowed_port)
    doc = parse_policy(text, "chaos.toml", {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    decisions = ModeDecisions(doc.supervisor.mode, "deny", PROMPT_TIMEOUT)
    argv = [sys.executable, "-I", "out/chaos.py", str(tmp_path), token.decode(),
            str(allowed_port), str(denied_port), str(EXIT), "out/ops.txt"]  # fmt: skip
    fds_before, rss_before = _fds(), _rss()
    most_fds, most_rss = fds_before, rss_before
    log = EventLog.open(str(log_path))
    try:
        async with Supervisor.open(doc, decisions=decisions, log=log) as sup:
            hub = Hub(sup, decisions)
            async with listening(hub, sock), trio.open_nursery() as nursery:
                client = RandomClient(await connect(sock), random.Random(seed + 1), tmp_path)
                nursery.start_soon(client.serve)

                async def drain(listener: trio.socket.SocketType) -> None:
                    while True:
                        conn, _ = await listener.accept()
                        conn.close()

                async def sample() -> None:
                    nonlocal most_fds, most_rss
                    while True:
                        most_fds, most_rss = max(most_fds, _fds()), max(most_rss, _rss())
                        await trio.sleep(0.005)

                for listener in (allowed, denied):
                    nursery.start_soon(drain, listener)
                nursery.start_soon(sample)
                await wait_until(lambda: hub.clients != [], "the client")
                with (
                    open(stdout, "wb") as out,
                    open(stderr, "wb") as err,
                    open(os.devnull, "rb") as null,
                    trio.fail_after(240),  # only keeps a broken supervisor from hanging
                ):
                    stdio = (null.fileno(), out.fileno(), err.fileno())
                    status = await sup.run(argv, forward_signals=False, stdio=stdio)
                await wait_until(lambda: client.exit_seen, "the exit event at the client")
                nursery.cancel_scope.cancel()
            await client.stream.aclose()
    finally:
        log.close()
        allowed.close()
        denied.close()
    fds_after = _fds()
    report = stdout.read_bytes().splitlines()
    errors = stderr.read_bytes()[-2000:]
    assert status == EXIT, f"{why} status {status}; stderr {errors!r}"
    assert report[-1:] == [b"done %d" % len(ops)], f"{why} {report[-5:]!r} stderr {errors!r}"
    assert [r for r in report if r.startswith(b"LEAK")] == [], why
    assert [r for r in report if r.startswith(b"ERROR")] == [], why
    tasks = 1 + sum(op[0] in ("exec", "thread", "fork") for op in ops)
    fd_bound = fds_before + FDS_PER_TASK * tasks + FD_GROWTH_BOUND
    assert fd_bound < fds_before + len(ops)  # a leak of one per operation would show
    assert most_fds < fd_bound, f"{why} fds {fds_before} -> {most_fds} (bound {fd_bound})"
    assert fds_after <= fds_before, f"{why} fds {fds_before} -> {fds_after} after the run"
    assert most_rss - rss_before < RSS_GROWTH_BOUND, f"{why} rss {rss_before} -> {most_rss}"
    records = [json.loads(line) for line in log_path.read_bytes().decode("utf-8").splitlines()]
    assert all(isinstance(r, dict) and "event" in r for r in records), why
    assert [r["status"] for r in records if r["event"] == "exit"] == [EXIT], why
    denials = [r for r in records if r["event"] in ("denial", "folded")]
    # Hostile names reach the log escaped, and read back as the very bytes the program used.
    hostile = [n for n in HOSTILE_NAMES if n != b"plain"]
    assert any(os.fsencode(unescape(r["path"])).endswith(b"/" + n)
               for r in denials for n in hostile), why  # fmt: skip
    # Nothing moved, replaced or wrote the secret either.
    assert (tmp_path / "secret" / "s").read_bytes() == token + b"\n", why
    if mode == "interactive":
        assert client.questions > 0, why
    # The client's answers to no open question were refused, each with an error.
    assert len(client.errors) >= client.bogus, why
    assert all("message" in e for e in client.errors), why
