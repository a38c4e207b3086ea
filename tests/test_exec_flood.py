"""An exec flood with a listener attached (issue: 20,000 refused execs left ~20,000 open
questions and reached the fd limit; the next attach connection crashed the supervisor)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import make_tree, policy_text, wait_until

from llsupervise.policy.loader import parse_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.frontends.hub import Hub, LineReader, connect, decode, listening
from llsupervise.supervisor.questions.limits import TOTAL

pytestmark = pytest.mark.kernel

#: The issue's flood was 20,000; this many keeps the test near 20 s on a loaded machine.
EXECS = 12_000
EXIT = 7
#: Beyond the fds before the run: brokers, workers, the clients, contexts of the program's
#: one thread, the open questions' held objects (at most TOTAL, one object each), and exec
#: reports on their way to trio. One held per exec would pass it many times over.
FD_BOUND = TOTAL + 100

#: Execs data/true (no static rule lets anything execute there) EXECS times; each is
#: refused. Prints how many were refused with EACCES, then exits with EXIT.
FLOOD = r"""
import os, sys
refused = 0
for _ in range(int(sys.argv[1])):
    try:
        os.execv("data/true", ["true"])
    except PermissionError:
        refused += 1
print("refused", refused, flush=True)
sys.exit(int(sys.argv[2]))
"""


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class SilentClient:
    """Attached, reading everything, answering nothing: every question waits."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.questions = 0
        self.exit_seen = False

    async def serve(self) -> None:
        lines = LineReader(self.stream)
        while (line := await lines.next()) is not None:
            message = decode(line)
            if message["type"] == "question":
                self.questions += 1
            elif message["type"] == "event" and message["event"]["event"] == "exit":
                self.exit_seen = True


@pytest.mark.trio
async def test_an_exec_flood_with_a_listener_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    root = Path(os.path.realpath(tmp_path))
    monkeypatch.chdir(root)
    make_tree(root)
    shutil.copy("/bin/true", root / "data" / "true")
    (root / "private").mkdir(mode=0o700)
    sock = str(root / "private" / "sock")
    doc = parse_policy(policy_text(root, mode="interactive"), "flood.toml",
                       {"HOME": str(root), "PWD": str(root)})  # fmt: skip
    # Questions wait far longer than the flood lasts: nothing is settled by a timeout.
    decisions = ModeDecisions("interactive", "deny", 3600.0)
    fds_before = _fds()
    most_fds = most_questions = 0
    greeting: list[dict[str, Any]] = []
    async with Supervisor.open(doc, decisions=decisions) as sup:
        hub = Hub(sup, decisions)
        async with listening(hub, sock), trio.open_nursery() as nursery:
            client = SilentClient(await connect(sock))
            nursery.start_soon(client.serve)

            async def sample() -> None:
                nonlocal most_fds, most_questions
                while True:
                    most_fds = max(most_fds, _fds())
                    most_questions = max(most_questions, len(sup.questions._open))
                    await trio.sleep(0.01)

            nursery.start_soon(sample)
            await wait_until(lambda: hub.clients != [], "the client")
            with trio.fail_after(300):  # only keeps a broken supervisor from hanging
                argv = [sys.executable, "-I", "-c", FLOOD, str(EXECS), str(EXIT)]
                status = await sup.run(argv, forward_signals=False)
            # After the flood, with every question it left still open: a new connection
            # is greeted, as the first one was.
            late = await connect(sock)
            line = await LineReader(late).next()
            assert line is not None
            greeting.append(decode(line))
            await late.aclose()
            await wait_until(lambda: client.exit_seen, "the exit event at the client")
            nursery.cancel_scope.cancel()
        await client.stream.aclose()
    out = capfd.readouterr().out.splitlines()
    assert status == EXIT
    assert out == [f"refused {EXECS}"]
    assert greeting[0]["type"] == "hello"
    assert 0 < client.questions <= TOTAL
    assert most_questions <= TOTAL
    assert most_fds - fds_before < FD_BOUND, f"fds {fds_before} -> {most_fds}"
    assert _fds() <= fds_before
