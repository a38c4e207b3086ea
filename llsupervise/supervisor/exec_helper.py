"""The program that runs in the child between spawn and exec.

The supervisor is a multi-threaded trio process, where ``preexec_fn`` is unsafe, so the
child is a fresh interpreter running this module. It reads a JSON spec from an inherited fd,
then, in this order: no_new_privs, the static Landlock layer, the seccomp filter (whose
listener fd goes back to the supervisor over an inherited socket), and finally exec.
It imports only the thin kernel bindings so that start-up stays short.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from llsupervise.landlock import Ruleset, set_no_new_privs
from llsupervise.rights import AccessFs, AccessNet, Scope
from llsupervise.seccomp import build_filter, install_filter

#: First byte of the message on the handover socket.
MSG_LISTENER = b"L"
MSG_ERROR = b"E"


def _read_spec(fd: int) -> dict[str, Any]:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    spec: dict[str, Any] = json.loads(b"".join(chunks))
    return spec


def _confine(spec: dict[str, Any]) -> int:
    """Apply the static layer and the seccomp filter; return the listener fd."""
    set_no_new_privs()
    with Ruleset.create(
        AccessFs(spec["handled_fs"]),
        AccessNet(spec["handled_net"]),
        Scope(spec["scopes"]),
        strict=spec["strict"],
        allow_nothing=spec["allow_nothing"],
    ) as ruleset:
        for fd, access in spec["paths"]:
            ruleset.add_path(fd, AccessFs(access))
        for port, access in spec["ports"]:
            ruleset.add_port(port, AccessNet(access))
        ruleset.restrict_self(spec["restrict_flags"])
    for fd, _ in spec["paths"]:
        os.close(fd)
    return install_filter(build_filter(spec["syscalls"]))


def main() -> None:
    spec_fd, sock_fd = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(fileno=sock_fd)
    try:
        spec = _read_spec(spec_fd)
        listener = _confine(spec)
    except Exception as exc:  # reported to the supervisor, which explains it to the user
        sock.sendall(MSG_ERROR + f"{type(exc).__name__}: {exc}".encode())
        sock.close()
        os._exit(126)
    socket.send_fds(sock, [MSG_LISTENER], [listener])
    os.close(listener)
    sock.close()
    argv: list[str] = spec["argv"]
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        # Mirrors the shell: 127 when not found, 126 when found but not executable/allowed.
        print(f"llsupervise: cannot execute {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    main()
