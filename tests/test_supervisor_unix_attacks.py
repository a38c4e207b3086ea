"""Attacks on the UNIX socket mediation by the supervised program, against the real kernel."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from supervised import policy_text, run_collecting

from llsupervise.policy.loader import parse_policy

pytestmark = pytest.mark.kernel

NOBODY = 65534

# Becomes an unprivileged user, then connects to argv[1]; prints the errno (0: connected).
CONNECT_AS_NOBODY = rf"""
import os, socket, sys
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
s = socket.socket(socket.AF_UNIX)
err = s.connect_ex(sys.argv[1])
if err == 0:
    s.sendall(b"hello")
print(err, flush=True)
"""


@pytest.fixture
def srv() -> Iterator[Path]:
    """A directory outside the sandbox, short enough for socket names (sun_path: 108)."""
    path = Path(tempfile.mkdtemp(prefix="llsu-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def unix_policy(root: Path, directory: Path) -> Any:
    (root / "out").mkdir(exist_ok=True)
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["connect_unix"]
parent = ["{directory}"]
"""
    text = policy_text(root, settings="handle_connect_unix = true", supervisor_rules=rules)
    return parse_policy(text, "unix-policy.toml", {"HOME": str(root), "PWD": str(root)})


@pytest.mark.trio
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
async def test_a_rule_does_not_lend_the_supervisors_permissions_on_the_way(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A socket open to all, in a directory its user may not search: the program, as another
    user, cannot reach it without the supervisor, and a rule on the tree does not change that
    (the name is resolved with the program's credentials, not the supervisor's)."""
    private = srv / "private"
    private.mkdir(mode=0o700)
    server = socket.socket(socket.AF_UNIX)
    with server:
        server.bind(str(private / "sock"))
        (private / "sock").chmod(0o777)
        server.listen(4)
        server.setblocking(False)
        status, _ = await run_collecting(
            unix_policy(tmp_path, srv), CONNECT_AS_NOBODY, str(private / "sock")
        )
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    assert status == 0
    assert capfd.readouterr().out.split() == ["13"]  # EACCES: the kernel's own answer


# Sends one byte with 20 SCM_RIGHTS messages naming descriptor 0 two hundred times each
# (4000 in all, beyond the kernel's 253 per message); prints the errno (0: sent) and what
# the other end received.
RIGHTS_FLOOD = r"""
import array, socket
a, b = socket.socketpair()
fds = array.array("i", [0] * 200).tobytes()
try:
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] * 20)
    print(0, flush=True)
except OSError as e:
    print(e.errno, flush=True)
b.setblocking(False)
try:
    print(repr(b.recv(10)), flush=True)
except BlockingIOError:
    print("nothing", flush=True)
"""


@pytest.mark.trio
async def test_a_message_naming_more_descriptors_than_the_kernel_takes_sends_nothing(
    tmp_path: Path, srv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Performed by the supervisor, the send still refuses what the kernel refuses (EINVAL),
    having taken no more descriptors than one message may pass."""
    status, _ = await run_collecting(unix_policy(tmp_path, srv), RIGHTS_FLOOD)
    assert status == 0
    assert capfd.readouterr().out.split() == ["22", "nothing"]
