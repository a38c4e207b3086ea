"""Landlock enforcement against the real kernel.

Sandboxing is irreversible, so each case runs ``landlock_child.py`` in a child process that builds
its ruleset through ``llsupervise.landlock``, restricts itself and reports what it could do.
Operations also run before restricting, so a denial is known to come from Landlock (we are root).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llsupervise.landlock import probe_abi
from llsupervise.rights import (
    FILE_ACCESS,
    AccessFs,
    AccessNet,
    Scope,
    fs_all,
    fs_read_write,
)

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().with_name("landlock_child.py")
ABI = probe_abi()


def needs_abi(abi: int) -> pytest.MarkDecorator:
    return pytest.mark.skipif(abi > ABI, reason=f"needs Landlock ABI {abi}, kernel has {ABI}")


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("ro", "rw", "none", "filerule"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text("data")
    (tmp_path / "filerule" / "other.txt").write_text("data")
    return tmp_path


def fs_ops(base: Path) -> list[list[Any]]:
    return [
        ["read", str(base / "f.txt")],
        ["write", str(base / "f.txt")],
        ["mkdir", str(base / "newdir")],
        ["listdir", str(base)],
    ]


@needs_abi(1)
@pytest.mark.parametrize("bulk", [False, True], ids=["add_path", "add_paths"])
def test_directory_rules_allow_and_deny(tree: Path, bulk: bool) -> None:
    read_only = AccessFs.READ_FILE | AccessFs.READ_DIR
    ops = fs_ops(tree / "ro") + fs_ops(tree / "rw") + fs_ops(tree / "none")
    out = run_child(
        {
            "handled_fs": fs_all(ABI),
            "paths": [[str(tree / "ro"), read_only], [str(tree / "rw"), fs_read_write(ABI)]],
            "before": ops,
            "after": ops,
            "bulk": bulk,
        }
    )
    if not bulk:
        assert out["added_paths"] == [read_only, fs_read_write(ABI)]
    assert out["before"] == ["ok"] * len(ops)
    assert out["after"] == [
        *["ok", "EACCES", "EACCES", "ok"],  # ro: read, write, mkdir, listdir
        *["ok", "ok", "ok", "ok"],  # rw
        *["EACCES"] * 4,  # no rule
    ]


@needs_abi(1)
@pytest.mark.parametrize("bulk", [False, True], ids=["add_path", "add_paths"])
def test_directory_rights_on_a_file_rule_are_masked(tree: Path, bulk: bool) -> None:
    base = tree / "filerule"
    ops = [
        ["read", str(base / "f.txt")],
        ["write", str(base / "f.txt")],
        ["read", str(base / "other.txt")],
        ["listdir", str(base)],
    ]
    out = run_child(
        {
            "handled_fs": fs_all(ABI),
            "paths": [[str(base / "f.txt"), fs_read_write(ABI)]],
            "before": ops,
            "after": ops,
            "bulk": bulk,
        }
    )
    # No EINVAL: only the file rights of the read_write group went to the kernel.
    if not bulk:
        assert out["added_paths"] == [fs_read_write(ABI) & FILE_ACCESS]
    assert out["before"] == ["ok"] * 4
    assert out["after"] == ["ok", "ok", "EACCES", "EACCES"]


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    """Two loopback listeners in this (unrestricted) process: (allowed, denied) ports."""
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        socks.append(sock)
    yield socks[0].getsockname()[1], socks[1].getsockname()[1]
    for sock in socks:
        sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@needs_abi(4)
def test_tcp_bind_and_connect_follow_port_rules(listeners: tuple[int, int]) -> None:
    bind_ok, bind_denied = free_port(), free_port()
    connect_ok, connect_denied = listeners
    ops = [
        ["bind", bind_ok],
        ["bind", bind_denied],
        ["connect", connect_ok],
        ["connect", connect_denied],
    ]
    out = run_child(
        {
            "handled_net": AccessNet.BIND_TCP | AccessNet.CONNECT_TCP,
            # connect rights on the bind port must not allow binding, and vice versa.
            "ports": [
                [bind_ok, AccessNet.BIND_TCP],
                [connect_ok, AccessNet.CONNECT_TCP],
                [bind_denied, AccessNet.CONNECT_TCP],
                [connect_denied, AccessNet.BIND_TCP],
            ],
            "before": ops,
            "after": ops,
        }
    )
    bind, connect = AccessNet.BIND_TCP, AccessNet.CONNECT_TCP
    assert out["added_ports"] == [bind, connect, connect, bind]
    assert out["before"] == ["ok"] * 4
    assert out["after"] == ["ok", "EACCES", "ok", "EACCES"]


@needs_abi(6)
def test_signal_scope_blocks_signals_leaving_the_domain() -> None:
    # The parent (this process) is outside the child's domain; the child itself is inside.
    ops = [["kill", os.getpid()], ["kill", None]]
    out = run_child({"scopes": Scope.SIGNAL, "before": ops, "after": ops})
    assert out["before"] == ["ok", "ok"]
    assert out["after"] == ["EPERM", "ok"]


@needs_abi(6)
def test_abstract_unix_scope_blocks_sockets_from_outside_the_domain() -> None:
    outer, inner = f"llsupervise-outer-{uuid.uuid4()}", f"llsupervise-inner-{uuid.uuid4()}"
    out = run_child(
        {
            "scopes": Scope.ABSTRACT_UNIX_SOCKET,
            # Created before restricting: owned by no domain, hence outside the child's.
            "before": [["unix_listen", outer], ["unix_connect", outer]],
            "after": [["unix_connect", outer], ["unix_listen", inner], ["unix_connect", inner]],
        }
    )
    assert out["before"] == ["ok", "ok"]
    assert out["after"] == ["EPERM", "ok", "ok"]


@needs_abi(1)
def test_restrict_self_restricts_only_the_calling_thread(tree: Path) -> None:
    ops = [["read", str(tree / "ro" / "f.txt")], ["read", str(tree / "none" / "f.txt")]]
    out = run_child(
        {
            "thread": True,
            "handled_fs": fs_all(ABI),
            "paths": [[str(tree / "ro"), AccessFs.READ_FILE]],
            "before": ops,
            "after": ops,
        }
    )
    assert out["before"] == ["ok", "ok"]
    assert out["after"] == ["ok", "EACCES"]  # the worker that restricted itself
    assert out["inherited"] == ["ok", "EACCES"]  # a thread the worker started afterwards
    assert out["main"] == ["ok", "ok"]  # the main thread, still unrestricted
    # no_new_privs is per-thread too: the worker set it, the main thread kept what it had.
    assert out["worker_nnp"] is True
    assert out["main_nnp"] is out["nnp_at_start"]
