"""Child program for the Landlock enforcement tests: sandbox itself, try operations, print JSON.

Usage: ``python landlock_child.py SPEC_JSON``. The spec names the handled rights, the rules, the
operations to try before and after ``restrict_self``, and whether a worker thread (instead of the
main thread) restricts itself. Each operation yields "ok" or the errno name it failed with.
Everything is imported before restricting: a sandboxed import could itself be denied.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
import threading
from typing import Any

from llsupervise.landlock import LandlockRuleset, no_new_privs, set_no_new_privs
from llsupervise.rights import AccessFs, AccessNet, Scope

_listeners: dict[str, socket.socket] = {}


def _tcp(port: int, connect: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if connect:
            sock.connect(("127.0.0.1", port))
        else:
            sock.bind(("127.0.0.1", port))


def _abstract(name: str, listen: bool) -> None:
    address = "\0" + name
    if listen:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address)
        sock.listen(4)
        _listeners[name] = sock
    else:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(address)


def _read(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)


def _write(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"w")
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    os.mkdir(path)
    os.rmdir(path)


def _run(op: str, arg: Any) -> None:
    if op == "read":
        _read(arg)
    elif op == "write":
        _write(arg)
    elif op == "mkdir":
        _mkdir(arg)
    elif op == "listdir":
        os.listdir(arg)
    elif op in ("bind", "connect"):
        _tcp(arg, connect=op == "connect")
    elif op == "kill":
        os.kill(os.getpid() if arg is None else arg, 0)
    elif op in ("unix_listen", "unix_connect"):
        _abstract(arg, listen=op == "unix_listen")
    else:
        raise ValueError(f"unknown op {op!r}")


def run_ops(ops: list[list[Any]]) -> list[str]:
    results = []
    for op, arg in ops:
        try:
            _run(op, arg)
        except OSError as exc:
            results.append(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
        else:
            results.append("ok")
    return results


def sandbox(spec: dict[str, Any], out: dict[str, Any]) -> None:
    """Build the ruleset, set no_new_privs and restrict the calling thread."""
    ruleset = LandlockRuleset(
        AccessFs(spec.get("handled_fs", 0)),
        AccessNet(spec.get("handled_net", 0)),
        Scope(spec.get("scopes", 0)),
    )
    with ruleset:
        if spec.get("bulk"):  # add_paths: O_PATH fds, all at once
            fds = [os.open(p, os.O_PATH | os.O_CLOEXEC) for p, _ in spec["paths"]]
            rights = [AccessFs(a) for _, a in spec["paths"]]
            dirs = [stat.S_ISDIR(os.fstat(fd).st_mode) for fd in fds]
            ruleset.add_paths(zip(fds, rights, dirs, strict=True))
            for fd in fds:
                os.close(fd)
        else:
            out["added_paths"] = [int(ruleset.add_path(p, AccessFs(a))) for p, a in spec["paths"]]
        out["added_ports"] = [int(ruleset.add_port(p, AccessNet(a))) for p, a in spec["ports"]]
        set_no_new_privs()
        ruleset.restrict_self()


def in_worker(spec: dict[str, Any], out: dict[str, Any]) -> None:
    """Restrict only a worker thread; it and a thread it starts afterwards try the ops."""
    sandbox(spec, out)
    out["after"] = run_ops(spec["after"])
    out["worker_nnp"] = no_new_privs()
    inherited = threading.Thread(target=lambda: out.update(inherited=run_ops(spec["after"])))
    inherited.start()
    inherited.join()


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    spec.setdefault("paths", [])
    spec.setdefault("ports", [])
    out: dict[str, Any] = {
        "before": run_ops(spec.get("before", [])),
        "nnp_at_start": no_new_privs(),
    }
    if spec.get("thread"):
        worker = threading.Thread(target=in_worker, args=(spec, out))
        worker.start()
        worker.join()
        out["main"] = run_ops(spec["after"])
        out["main_nnp"] = no_new_privs()
    else:
        sandbox(spec, out)
        out["after"] = run_ops(spec["after"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
