"""The program that runs in the child between spawn and exec.

The supervisor is a multi-threaded trio process, where ``preexec_fn`` is unsafe, so the
child is a fresh interpreter running this file. Everything that can fail for a reason worth
explaining (the Landlock ruleset, the BPF program) is prepared by the supervisor; this file
reads the result from an inherited pipe (marshalled; it may be started before the supervisor
has it, see helper) and only makes the calls that must come from the child, in this order:
the parent-death signal, no_new_privs, ``landlock_restrict_self`` on the ruleset it receives
over an inherited socket, the seccomp filter (whose listener fd goes back to the supervisor
over that socket), and finally exec. At the end of an empty pipe it exits: not needed.

It runs in a bare interpreter (``python -I -S``) and imports nothing but the standard
library: that start-up is paid by every supervised command. The supervisor passes the
syscall numbers and flags from its own bindings, so none are repeated here.
"""

from __future__ import annotations

import _socket  # the C module under socket: socket itself imports enum and selectors
import ctypes
import errno
import marshal
import os
import sys

# os.execvp imports it lazily (os.get_exec_path), when this process is already confined and
# may not read the standard library any more: load it while it still can.
import warnings  # noqa: F401

TYPE_CHECKING = False  # typing itself is not imported: it would slow start-up
if TYPE_CHECKING:
    from typing import Any

#: First byte of the message on the handover socket.
MSG_LISTENER = b"L"
MSG_ERROR = b"E"

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9  # signal is not imported: it would slow start-up


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``: the filter's length in instructions and where they are."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _read_spec(fd: int) -> dict[str, Any]:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    if not chunks:  # abandoned: the run failed before it had a command for us
        os._exit(0)
    # marshal: built in, nothing to import; the supervisor runs this same interpreter.
    spec: dict[str, Any] = marshal.loads(b"".join(chunks))
    return spec


def _receive_ruleset(sock: _socket.socket) -> int:
    """The static ruleset's descriptor, sent with the spec (SCM_RIGHTS)."""
    _data, ancillary, _flags, _address = sock.recvmsg(1, _socket.CMSG_SPACE(4))
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    raise OSError(errno.EPROTO, "no ruleset came with the spec")


def _user_limits(nofile: tuple[int, int]) -> None:
    """The descriptor limits the user ran the supervisor with (it raised its own)."""
    import resource

    soft, hard = nofile
    if resource.getrlimit(resource.RLIMIT_NOFILE) != (soft, hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _take_terminal() -> None:
    """Lead a new session whose controlling terminal is stdin: /dev/tty is then that
    terminal (the supervisor's pane), not the supervisor's own."""
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _call(libc: ctypes.CDLL, what: str, nr: int, *args: object) -> int:
    result = int(libc.syscall(ctypes.c_long(nr), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _confine(spec: dict[str, Any], ruleset_fd: int) -> int:
    """Restrict this process as prepared by the supervisor (``ruleset_fd``: negative when
    the policy allowed running with nothing enforced); return the listener fd."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if ruleset_fd >= 0:
        _call(libc, "landlock_restrict_self", spec["nr_restrict"], ctypes.c_int(ruleset_fd),
              ctypes.c_uint32(spec["restrict_flags"]))  # fmt: skip
        os.close(ruleset_fd)
    program = ctypes.create_string_buffer(spec["filter"])
    fprog = _SockFprog(spec["filter_len"], ctypes.addressof(program))
    *preferred, fallback = spec["filter_flags"]
    for flags in preferred:  # e.g. WAIT_KILLABLE_RECV, refused with EINVAL before 5.19
        try:
            return _seccomp_filter(libc, spec, flags, fprog)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return _seccomp_filter(libc, spec, fallback, fprog)


def _seccomp_filter(libc: ctypes.CDLL, spec: dict[str, Any], flags: int, fprog: _SockFprog) -> int:
    return _call(libc, "seccomp(SET_MODE_FILTER)", spec["nr_seccomp"],
                 ctypes.c_ulong(spec["set_mode_filter"]), ctypes.c_ulong(flags),
                 ctypes.byref(fprog))  # fmt: skip


def _die_with_supervisor(libc: ctypes.CDLL, supervisor: int) -> None:
    """SIGKILL when the supervisor dies: the command would otherwise run on with every trapped
    call failing (ENOSYS). It survives the exec (with no_new_privs a set-uid file changes no
    ids, which would clear it). The command's children do not inherit it, and a command that
    changes its uid, or clears it itself, loses it: only fail-closed ENOSYS is left then."""
    if libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != supervisor:  # it died before the line above: no signal will come
        os._exit(126)


def main() -> None:
    spec_fd, sock_fd = int(sys.argv[1]), int(sys.argv[2])
    sock = _socket.socket(fileno=sock_fd)
    try:
        spec = _read_spec(spec_fd)
        _die_with_supervisor(ctypes.CDLL(None, use_errno=True), spec["supervisor_pid"])
        if spec["nofile"] is not None:
            _user_limits(spec["nofile"])
        if spec["new_session"]:
            _take_terminal()
        ruleset_fd = _receive_ruleset(sock) if spec["ruleset"] else -1
        listener = _confine(spec, ruleset_fd)
    except Exception as exc:  # reported to the supervisor, which explains it to the user
        sock.sendall(MSG_ERROR + f"{type(exc).__name__}: {exc}".encode())
        sock.close()
        os._exit(126)
    # The listener's number, with write(2): send calls may be trapped now (connect_unix), and
    # nobody serves them until the supervisor has the listener. It takes the descriptor with
    # pidfd_getfd and says so; only then may it close.
    os.write(sock_fd, MSG_LISTENER + listener.to_bytes(4, sys.byteorder))
    os.read(sock_fd, 1)
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
