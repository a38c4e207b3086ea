"""Spawn the supervised command: the parent side of ``exec_helper``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llsupervise.errors import LLSuperviseError
from llsupervise.rights import AccessFs, AccessNet, Scope
from llsupervise.seccomp import Listener
from llsupervise.supervisor import exec_helper

Stdio = tuple[int | None, int | None, int | None]


class LaunchError(LLSuperviseError):
    """The command could not be started under the requested confinement."""


@dataclass(frozen=True)
class StaticLayer:
    """What the child enforces on itself before exec: the floor of security."""

    handled_fs: AccessFs
    handled_net: AccessNet
    scopes: Scope
    #: (O_PATH fd owned by the caller, rights); the fds are inherited by the helper only.
    paths: Sequence[tuple[int, AccessFs]] = ()
    ports: Sequence[tuple[int, AccessNet]] = ()
    restrict_flags: int = 0
    strict: bool = False
    allow_nothing: bool = False


@dataclass
class Launched:
    process: subprocess.Popen[bytes]
    listener: Listener

    @property
    def pid(self) -> int:
        return self.process.pid


def launch(
    argv: Sequence[str],
    layer: StaticLayer,
    syscalls: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdio: Stdio = (None, None, None),
    cpu: int | None = None,
) -> Launched:
    """Start ``argv`` confined by ``layer`` with ``syscalls`` trapped; return its listener.

    ``stdio`` gives descriptors for the command's stdin, stdout and stderr (None: ours).
    ``cpu``: keep the command and its descendants on that CPU."""
    if not argv:
        raise LaunchError("no command given")
    spec = {
        "handled_fs": int(layer.handled_fs),
        "handled_net": int(layer.handled_net),
        "scopes": int(layer.scopes),
        "paths": [[fd, int(access)] for fd, access in layer.paths],
        "ports": [[port, int(access)] for port, access in layer.ports],
        "restrict_flags": layer.restrict_flags,
        "strict": layer.strict,
        "allow_nothing": layer.allow_nothing,
        "syscalls": list(syscalls),
        "argv": list(argv),
    }
    spec_r, spec_w = os.pipe()
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    rule_fds = [fd for fd, _ in layer.paths]
    passed = inherited_fds()
    child_fd = child_sock.fileno()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-m",
                exec_helper.__name__,
                str(spec_r),
                str(child_sock.fileno()),
            ],
            pass_fds=[spec_r, child_fd, *rule_fds, *passed],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
        )
    except OSError as exc:
        raise LaunchError(f"cannot start the launcher: {exc}") from exc
    finally:
        os.close(spec_r)
        child_sock.close()
    if cpu is not None:
        # Set while the helper starts up, before it confines itself and execs: the command and
        # everything it starts inherit it.
        os.sched_setaffinity(process.pid, {cpu})
    try:
        with os.fdopen(spec_w, "wb") as pipe:
            pipe.write(json.dumps(spec).encode())
        return Launched(process, _receive_listener(parent_sock, process))
    finally:
        parent_sock.close()


def exit_status(returncode: int) -> int:
    """The shell's convention: 128+N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def inherited_fds() -> list[int]:
    """Descriptors this process inherited without CLOEXEC: passed on to the command, as a
    transparent wrapper should. The supervisor's own descriptors are all CLOEXEC."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    fds.append(fd)
            except OSError:
                pass  # the listing's own descriptor, closed since
    return fds


def _receive_listener(sock: socket.socket, process: subprocess.Popen[bytes]) -> Listener:
    msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    if msg.startswith(exec_helper.MSG_LISTENER) and len(fds) == 1:
        os.set_inheritable(fds[0], False)
        return Listener(fds[0])
    for fd in fds:
        os.close(fd)
    # Collect the whole error message; the helper closes its end after sending it.
    while chunk := sock.recv(4096):
        msg += chunk
    process.wait()
    if msg.startswith(exec_helper.MSG_ERROR):
        raise LaunchError(f"cannot confine the command: {msg[1:].decode(errors='replace')}")
    raise LaunchError(f"the launcher exited with status {process.returncode} before confining")
