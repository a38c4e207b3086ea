"""TCP connect/bind through the whole supervisor: live port rules, answers, persistence."""

from __future__ import annotations

import errno
import json
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from supervised import SYSTEM_DIRS, lines, wait_until

from llsupervise.messages import DenialEvent
from llsupervise.policy.loader import parse_policy
from llsupervise.rights import AccessNet
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.supervisor.policyfile.kept import KeptAnswer, kept_from_event
from llsupervise.supervisor.policyfile.persist import add_answers

pytestmark = pytest.mark.kernel

# Connects to 127.0.0.1:PORT once per iteration on a fresh socket; logs "ok" or "err ERRNO".
CONNECT_LOOP = r"""
import os, socket, sys, time
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
port, stop = int(sys.argv[2]), sys.argv[3]
while not os.path.exists(stop):
    with socket.socket() as s:
        err = s.connect_ex(("127.0.0.1", port))
    os.write(log, b"ok\n" if err == 0 else b"err %d\n" % err)
    time.sleep(0.005)
"""


def net_policy(
    root: Path, mode: str = "enforce", handled_fs: str = '"abi.all"', supervisor_rules: str = ""
) -> Any:
    system = ", ".join(f'"{d}"' for d in SYSTEM_DIRS)
    text = f"""
[[ruleset]]
handled_access_fs = [{handled_fs}]
handled_access_net = ["bind_tcp", "connect_tcp"]

[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = [{system}]

[[path_beneath]]
allowed_access = ["abi.read_write"]
parent = ["{root}"]

[supervisor]
mode = "{mode}"
{supervisor_rules}"""
    return parse_policy(text, "net-policy.toml", {"HOME": str(root), "PWD": str(root)})


@pytest.fixture
def server() -> Iterator[int]:
    """A loopback listener (connections complete in its backlog); yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(512)
        yield s.getsockname()[1]


@pytest.mark.trio
async def test_port_rule_added_then_removed_while_running(tmp_path: Path, server: int) -> None:
    log, stop = tmp_path / "log", tmp_path / "stop"
    log.touch()
    async with Supervisor.open(net_policy(tmp_path)) as sup, trio.open_nursery() as nursery:
        status: list[int] = []

        async def child() -> None:
            argv = [sys.executable, "-c", CONNECT_LOOP, str(log), str(server), str(stop)]
            status.append(await sup.run(argv, forward_signals=False))

        nursery.start_soon(child)
        await wait_until(lambda: "err 13" in lines(log), "a first denial")
        without = sup.rules.permanent
        sup.rules.replace(without.with_net(server, AccessNet.CONNECT_TCP))
        mark = len(lines(log))
        await wait_until(lambda: "ok" in lines(log)[mark:], "the grant")
        sup.rules.replace(without)
        mark = len(lines(log))
        await wait_until(lambda: "err 13" in lines(log)[mark:], "the revocation")
        stop.touch()
    assert status == [0]


class Answering:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        self.asked.append(denial)
        return Decision(self.answer)


CONNECT_TWICE = r"""
import socket, sys
for _ in range(2):
    with socket.socket() as s:
        print(s.connect_ex(("127.0.0.1", int(sys.argv[1]))), flush=True)
"""


@pytest.mark.trio
@pytest.mark.parametrize(
    ("answer", "results"),
    [(Answer.ALLOW_ALWAYS, ["0", "0"]), (Answer.DENY_QUIET, ["13", "13"]),
     (Answer.ALLOW_ONCE, ["0", "0"])],
)  # fmt: skip
async def test_answers_to_a_refused_connect(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: int,
    capfd: pytest.CaptureFixture[str],
    answer: Answer,
    results: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    frontend = Answering(answer)
    events: list[Mapping[str, Any]] = []
    decisions = ModeDecisions("interactive", "deny", 30.0, frontend)
    async with Supervisor.open(net_policy(tmp_path, "interactive"), decisions=decisions) as sup:
        sup.listeners.append(events.append)
        argv = [sys.executable, "-c", CONNECT_TWICE, str(server)]
        status = await sup.run(argv, forward_signals=False)
        committed = dict(sup.rules.mutable.committed.net)
    assert status == 0
    assert capfd.readouterr().out.split() == results
    denials = [e for e in events if e["event"] == "denial"]
    assert all("port" in d for d in denials)  # nothing else was refused
    assert denials[0]["path"] == f"tcp://127.0.0.1:{server}"
    assert denials[0]["port"] == server and denials[0]["direction"] == "connect"
    if answer == Answer.ALLOW_ALWAYS:
        # Asked once: the committed rule lets the second connect through by itself.
        assert len(frontend.asked) == 1
        assert committed == {server: AccessNet.CONNECT_TCP}
        assert denials[0]["rules"] == [{"port": server, "access": ["connect_tcp"]}]
        assert kept_from_event(cast(DenialEvent, denials[0])) == [
            KeptAnswer("", ("connect_tcp",), server)
        ]
    elif answer == Answer.DENY_QUIET:
        assert len(frontend.asked) == 1  # the second refusal was quiet
        assert [d["decision"] for d in denials] == ["deny_quiet", "deny_quiet"]
    else:
        assert len(frontend.asked) == 2 and committed == {}


def test_port_answers_are_written_as_net_port_rules() -> None:
    text = '[supervisor]\nmode = "interactive"\n'
    once = add_answers(text, [KeptAnswer("", ("connect_tcp",), 8080)])
    twice = add_answers(once, [KeptAnswer("", ("connect_tcp",), 9090)])
    doc = parse_policy(twice, "p.toml", {"HOME": "/", "PWD": "/"})
    [entry] = doc.supervisor.net_port
    assert entry.ports == (8080, 9090) and entry.access == AccessNet.CONNECT_TCP


# An MPTCP socket, then a plain TCP connect to the port; prints the errno of each (0: made).
MPTCP_THEN_TCP = r"""
import socket, sys
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()
    print(0, flush=True)
except OSError as e:
    print(e.errno, flush=True)
with socket.socket() as s:
    print(s.connect_ex(("127.0.0.1", int(sys.argv[1]))), flush=True)
"""


@pytest.mark.trio
async def test_an_mptcp_socket_is_refused_with_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: int, capfd: pytest.CaptureFixture[str]
) -> None:
    """The program's socket() fails as on a kernel without MPTCP, and the log says why; plain
    TCP is still judged (no rule: denied)."""
    monkeypatch.chdir(tmp_path)
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(net_policy(tmp_path)) as sup:
        sup.listeners.append(events.append)
        argv = [sys.executable, "-c", MPTCP_THEN_TCP, str(server)]
        status = await sup.run(argv, forward_signals=False)
    assert status == 0
    assert capfd.readouterr().out.split() == [str(errno.EPROTONOSUPPORT), str(errno.EACCES)]
    (refused,) = [e for e in events if e["event"] == "denial" and e["syscall"] == "socket"]
    assert refused["decision"] == "deny" and "MPTCP" in refused["refused"]
    assert "plain TCP" in refused["refused"]  # what to do
    assert refused["pid"] > 0 and refused["exe"]
    (tcp,) = [e for e in events if e["event"] == "denial" and "port" in e]
    assert tcp["port"] == server and tcp["decision"] == "deny"


@pytest.mark.trio
async def test_mptcp_is_left_alone_when_tcp_is_not_handled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    text = f"""
[[ruleset]]
handled_access_fs = ["abi.all"]
[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = [{", ".join(f'"{d}"' for d in SYSTEM_DIRS)}]
[supervisor]
mode = "enforce"
"""
    doc = parse_policy(text, "fs-only.toml", {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(doc) as sup:
        sup.listeners.append(events.append)
        status = await sup.run([sys.executable, "-c", MPTCP_THEN_TCP, "1"], forward_signals=False)
    assert status == 0
    assert capfd.readouterr().out.split()[0] == "0"  # made: nothing to go around
    assert not [e for e in events if e["event"] == "denial" and e["syscall"] == "socket"]


#: Connects to 127.0.0.1:PORT three times, restricts itself with a Landlock layer of its own
#: that handles connect_tcp and allows no port, and connects three times more.
OWN_NET_LAYER = r"""
import ctypes, json, socket, struct, sys
port, out = int(sys.argv[1]), open(sys.argv[2], "w")
libc = ctypes.CDLL(None, use_errno=True)
def connect():
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port))
r = {"before": [connect() for _ in range(3)]}
CONNECT_TCP = 1 << 1
attr = ctypes.create_string_buffer(struct.pack("=QQ", 0, CONNECT_TCP))  # fs, net
ruleset = libc.syscall(444, attr, 16, 0)  # landlock_create_ruleset
assert ruleset >= 0, ctypes.get_errno()
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.syscall(446, ruleset, 0) == 0, ctypes.get_errno()  # landlock_restrict_self
r["sandboxed"] = [connect() for _ in range(3)]
json.dump(r, out)
out.close()
"""


@pytest.mark.parametrize("connect_unix", [True, False], ids=["connect_unix", "tcp-only"])
@pytest.mark.trio
async def test_a_port_granted_by_the_supervisor_is_not_reached_past_the_programs_own_layer(
    tmp_path: Path, server: int, connect_unix: bool
) -> None:
    """The supervisor performs a granted connect with its own domain, which knows nothing of
    a layer the program adds to itself: once it does, nothing more is granted (the call goes
    to the kernel, or, where connect_unix keeps connects from going back to it, is performed
    with the static rules alone)."""
    fs = '"abi.all"' if connect_unix else '"abi.read_execute", "abi.read_write"'
    granted = f"""
[[supervisor.net_port]]
allowed_access = ["connect_tcp"]
port = [{server}]
"""
    doc = net_policy(tmp_path, handled_fs=fs, supervisor_rules=granted)
    events: list[Any] = []
    out = tmp_path / "r.json"
    async with Supervisor.open(doc) as sup:
        sup.listeners.append(events.append)
        status = await sup.run(
            [sys.executable, "-c", OWN_NET_LAYER, str(server), str(out)], forward_signals=False
        )
    assert status == 0
    result = json.loads(out.read_text())
    assert result == {"before": [0, 0, 0], "sandboxed": [errno.EACCES] * 3}
    assert [e["event"] for e in events].count("own_layer") == 1
