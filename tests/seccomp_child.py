"""Supervisee side of the seccomp tests, run as a separate process.

A seccomp filter can never be removed, so it is installed here and never in the test process.
Usage: seccomp_child.py MODE CONFIG_JSON. Results are one JSON object on stdout.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import resource
import socket
import sys
from typing import Any

from llsupervise.seccomp import (
    MEDIATED_FS_SYSCALLS,
    UNADDRESSED_SENDS,
    build_filter,
    install_filter,
)

PR_SET_NO_NEW_PRIVS = 38
X86_64_GETPID = 39
I386_GETPID = 20

libc = ctypes.CDLL(None, use_errno=True)


def install(config: dict[str, Any]) -> int:
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    syscalls = config.get("syscalls", MEDIATED_FS_SYSCALLS)
    passing = UNADDRESSED_SENDS if config.get("pass_unaddressed_sends") else ()
    prog = build_filter(syscalls, passing=passing)
    return install_filter(prog, wait_killable=config.get("wait_killable", True))


def spawn(argv: list[str]) -> dict[str, Any]:
    """Run a program (posix_spawn: a vfork and an exec), with its output."""
    r, w = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, {}, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
    except OSError as e:
        return {"errno": e.errno}
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as out:
        stdout = out.read().decode(errors="replace")
    status = os.waitpid(pid, 0)[1]
    return {"pid": pid, "status": os.waitstatus_to_exitcode(status), "stdout": stdout}


def run_op(op: dict[str, Any]) -> dict[str, Any]:
    if op["op"] == "spawn":
        return spawn(op["argv"])
    if op["op"] == "exec":  # what the program prints is the report
        sys.stdout.flush()
        os.execv(op["argv"][0], op["argv"])
    path = op["path"]
    if op["op"] == "mkdir":
        try:
            os.mkdir(path)
        except OSError as e:
            return {"errno": e.errno}
        return {"ok": True, "exists": os.path.isdir(path)}
    flags = os.O_RDONLY
    for name in op.get("flags", []):  # e.g. ["O_WRONLY", "O_NOFOLLOW"]
        flags |= getattr(os, name)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return {"errno": e.errno}
    result: dict[str, Any] = {"fd": fd}
    try:
        result["cloexec"] = not os.get_inheritable(fd)
        result["content"] = os.read(fd, 100).decode()
        os.close(fd)
    except OSError as e:
        result["read_errno"] = e.errno
    return result


def serve(config: dict[str, Any]) -> dict[str, Any]:
    """Hand the listener to the test, wait for its go, then run the operations it asked for."""
    sock = socket.socket(fileno=config["sock"])
    listener = install(config)
    socket.send_fds(sock, [b"L"], [listener])
    os.close(listener)  # the test's copy is the only one left
    if sock.recv(1) != b"g":
        raise SystemExit("no go from the test")
    return {"results": [run_op(op) for op in config["ops"]]}


def closed(config: dict[str, Any]) -> dict[str, Any]:
    """Install, drop the only listener, then try trapped and untrapped syscalls."""
    pid = os.getpid()
    listener = install(config)
    report: dict[str, Any] = {"listener_cloexec": not os.get_inheritable(listener)}
    os.close(listener)
    report["mkdir"] = run_op({"op": "mkdir", "path": config["dir"]})
    report["open"] = run_op({"op": "open", "path": config["file"]})
    report["getpid_same"] = os.getpid() == pid
    return report


def _errno_or(fn: Any) -> Any:
    try:
        return fn()
    except OSError as e:
        return {"errno": e.errno}


def sends(config: dict[str, Any]) -> dict[str, Any]:
    """Install (sends trapped), drop the only listener: a trapped send fails with ENOSYS."""
    a, b = socket.socketpair()
    b.setblocking(False)
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d.bind(config["path"])
    os.close(install(config))
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    return {
        "send": _errno_or(lambda: a.send(b"x")),
        "received": _errno_or(lambda: b.recv(1).decode()),
        "sendto_path": _errno_or(lambda: out.sendto(b"x", config["path"])),
        "sendmsg": _errno_or(lambda: a.sendmsg([b"y"])),
    }


def x32(config: dict[str, Any]) -> dict[str, Any]:
    """An x32 getpid: same arch value as x86_64, different numbering."""
    os.close(install(config))  # a wrongly trapped call then fails fast with ENOSYS
    libc.syscall.restype = ctypes.c_long
    return {"ret": libc.syscall(ctypes.c_long(0x40000000 | X86_64_GETPID))}


def int80(config: dict[str, Any]) -> dict[str, Any]:
    """An i386 getpid through int 0x80, which reaches seccomp with AUDIT_ARCH_I386."""
    if config["filter"]:
        os.close(install(config))
    # mov eax, I386_GETPID; int 0x80; ret
    code = bytes([0xB8, I386_GETPID, 0, 0, 0, 0xCD, 0x80, 0xC3])
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    func = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return {"ret": func(), "pid": os.getpid()}


MODES = {"serve": serve, "closed": closed, "sends": sends, "x32": x32, "int80": int80}


def main() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # killed runs must not leave core files
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    report = MODES[mode](config)
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
