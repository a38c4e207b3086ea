"""A fixed session (no live pids or times) for screenshots and snapshot tests."""

from __future__ import annotations

from pathlib import PurePosixPath

from llsupervise.messages import (
    DenialEvent,
    EventMessage,
    KeptRule,
    RulesInfo,
    ServerMessage,
    State,
)
from llsupervise.tui.session import ReplaySession

#: A fixed moment (2025-01-02 03:04:05 UTC) the demo's events are dated from.
T0 = 1735787045.0
#: What the model's clock reads in a demo: questions expire 27 s after it.
CLOCK = 1000.0
#: The wall clock in a demo (temporary grants' time left).
WALL = T0 + 20

_READ_EXEC = ["execute", "read_file", "read_dir"]


def _rules(
    fs: list[tuple[str, list[str]]], net: list[tuple[int, list[str]]] | None = None
) -> RulesInfo:
    return {
        "fs": [{"path": p, "access": a} for p, a in fs],
        "net": [{"port": port, "access": a} for port, a in net or ()],
    }


def state(*, generation: int = 3, exit_status: int | None = None) -> State:
    supervisor = _rules(
        [
            ("/home/ada/project", ["write_file", "read_file", "read_dir", "make_reg"]),
            ("/home/ada/.cache/pip", ["read_file", "read_dir"]),
        ],
        [(8080, ["bind_tcp"])],
    )
    pending = _rules(
        [
            ("/home/ada/project", ["write_file", "read_file", "read_dir", "make_reg"]),
            ("/home/ada/.cache/pip", ["read_file", "read_dir"]),
            ("/home/ada/.config/git", ["read_file", "read_dir"]),
        ],
        [(8080, ["bind_tcp"])],
    )
    return {
        "policy": "/home/ada/project/policy.toml",
        "argv": ["make", "test"],
        "pid": 4242,
        "running": exit_status is None,
        "exit_status": exit_status,
        "mode": "interactive",
        "policy_mode": "interactive",
        "default": "deny",
        "prompt_timeout": 30.0,
        "generation": generation,
        "handled_fs": ["execute", "write_file", "read_file", "read_dir"],
        "static": _rules(
            [(d, _READ_EXEC) for d in ("/dev", "/etc", "/lib", "/proc", "/usr")]
            + [("/tmp", ["write_file", "read_file", "read_dir", "make_reg", "remove_file"])],
            [(443, ["connect_tcp"])],
        ),
        "committed": supervisor,
        "pending": pending,
        "quiet": ["/home/ada/.ssh"],
        "kernel": {
            "abi": 7,
            "lines": [
                "Landlock ABI 7",
                "enforced filesystem access: execute, write_file, read_file, read_dir, ...",
                "enforced network access: bind_tcp, connect_tcp",
                "enforced scopes: abstract_unix_socket, signal",
            ],
            "missing": [],
        },
        "reload": None,
    }


def _up(path: str) -> list[str]:
    """``path`` and each directory above it: the scopes offered for an object there."""
    return [path, *(str(p) for p in PurePosixPath(path).parents)]


def _denial(
    i: int, exe: str, path: str, access: list[str], decision: str, *, count: int = 1,
    syscall: str = "openat", rules: list[KeptRule] | None = None, next_run_only: bool = False,
) -> EventMessage:  # fmt: skip
    event: DenialEvent = {
        "event": "denial", "ts": T0 + i, "pid": 4243, "tid": 4243, "exe": exe,
        "syscall": syscall, "path": path, "access": access, "decision": decision,
        "generation": 3, "count": count,
    }  # fmt: skip
    if rules is not None:
        event["rules"] = rules
    if next_run_only:
        event["next_run_only"] = True
    return {"type": "event", "event": event}


def messages() -> list[ServerMessage]:
    """A session some minutes in: denials answered in several ways, one question open."""
    return [
        {"type": "hello", "version": 1, "state": state()},
        _denial(1, "/usr/bin/python3.11", "/home/ada/.netrc", ["read_file"], "deny", count=4),
        _denial(
            2,
            "/usr/bin/git",
            "/home/ada/.config/git/config",
            ["read_file"],
            "allow_always",
            rules=[{"path": "/home/ada/.config/git", "access": ["read_file", "read_dir"]}],
        ),
        _denial(
            3,
            "/usr/bin/cc",
            "/opt/toolchain/bin/ld",
            ["execute"],
            "timeout_deny",
            syscall="execve",
            next_run_only=True,
        ),
        _denial(
            4,
            "/usr/bin/python3.11",
            "/home/ada/.ssh/id_ed25519",
            ["read_file"],
            "deny_quiet",
            rules=[{"quiet": "/home/ada/.ssh"}],
        ),
        # A name with a terminal escape and a right-to-left override: shown escaped.
        _denial(
            5, "/usr/bin/cat", "/home/ada/Downloads/\x1b[31mred\u202egnp.exe", ["read_file"], "deny"
        ),
        _denial(6, "/usr/bin/python3.11", "/home/ada/.netrc", ["read_file"], "deny", count=2),
        _denial(6, "/usr/bin/python3.11", "/home/ada/.netrc", ["read_file"], "allow_once"),
        _denial(
            6,
            "/usr/bin/pip",
            "/home/ada/.cache/pip/http/index",
            ["read_file"],
            "allow_for",
            rules=[
                {
                    "path": "/home/ada/.cache/pip",
                    "access": ["read_file", "read_dir"],
                    "seconds": 900,
                }
            ],
        ),
        {
            "type": "event",
            "event": {
                "event": "rule_use",
                "uses": [
                    {"path": "/home/ada/project", "count": 1532, "last": T0 + 6},
                    {"path": "/home/ada/.cache/pip", "count": 48, "last": T0 + 5},
                ],
            },
        },
        {
            "type": "question",
            "id": 7,
            "timeout_in": 27.0,
            "denial": {
                "pid": 4243,
                "tid": 4243,
                "exe": "/usr/bin/python3.11",
                "cmdline": "python3 -m pytest tests/",
                "syscall": "openat",
                "path": "/home/ada/.local/share/virtualenvs/ci/pyvenv.cfg",
                "access": ["read_file"],
                "scopes": _up("/home/ada/.local/share/virtualenvs/ci/pyvenv.cfg"),
                "scope_kind": "file",
                "protected": "",
                "generation": 3,
                "next_run_only": False,
                "ts": T0 + 7,
                "count": 1,
            },
        },
        {
            "type": "question",
            "id": 8,
            "timeout_in": 29.0,
            "denial": {
                "pid": 4250,
                "tid": 4250,
                "exe": "/usr/bin/make",
                "cmdline": "make install",
                "syscall": "mkdirat",
                "path": "/usr/local/share",
                "access": ["make_dir"],
                "scopes": _up("/usr/local"),
                "scope_kind": "changed_directory",
                "protected": "",
                "generation": 3,
                "next_run_only": False,
                "ts": T0 + 8,
                "count": 1,
            },
        },
    ]


OUTPUT = (
    b"$ make test\r\n"
    b"python3 -m pytest tests/\r\n"
    b"\x1b[1m============ test session starts ============\x1b[0m\r\n"
    b"collected 42 items\r\n"
    b"tests/test_build.py \x1b[32m........\x1b[0m\r\n"
)


def session(*, attached: bool = False) -> ReplaySession:
    if attached:
        return ReplaySession(
            messages(), local=False, origin="attached to /run/user/1000/llsupervise/make.sock"
        )
    return ReplaySession(messages(), output=OUTPUT)
