"""Spawn the supervised command: the parent side of ``exec_helper``."""

from __future__ import annotations

import contextlib
import marshal
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from msgspec import Struct

from llsupervise.errors import LLSuperviseError
from llsupervise.landlock import LandlockError, LandlockRuleset
from llsupervise.landlock import syscall_numbers as landlock_syscall_numbers
from llsupervise.rights import AccessFs, AccessNet, Scope
from llsupervise.seccomp import (
    ALWAYS_REFUSED,
    IO_URING_REFUSED,
    MPTCP_REFUSED,
    SYSCALLS,
    UNADDRESSED_SENDS,
    Listener,
    SeccompError,
    build_filter,
    native_arch,
)
from llsupervise.seccomp.constants import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_SET_MODE_FILTER,
    SOCK_FILTER,
)
from llsupervise.supervisor.launch import exec_helper
from llsupervise.supervisor.launch.helper import Helper, HelperStartError, Stdio
from llsupervise.supervisor.launch.lifeline import Lifeline
from llsupervise.supervisor.net.sockets import pidfd_getfd

__all__ = ["LaunchError", "Launched", "StaticLayer", "Stdio", "exit_status", "launch"]


class LaunchError(LLSuperviseError):
    """The command could not be started under the requested confinement."""


class StaticLayer(Struct, frozen=True):
    """What the child enforces on itself before exec: the floor of security."""

    handled_fs: AccessFs
    handled_net: AccessNet
    scopes: Scope
    #: (O_PATH fd owned by the caller, rights, is a directory).
    paths: Sequence[tuple[int, AccessFs, bool]] = ()
    ports: Sequence[tuple[int, AccessNet]] = ()
    restrict_flags: int = 0
    strict: bool = False
    allow_nothing: bool = False


class Launched(Struct):
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
    new_session: bool = False,
    lifeline: Lifeline | None = None,
    helper: Helper | None = None,
    nofile: tuple[int, int] | None = None,
) -> Launched:
    """Start ``argv`` confined by ``layer`` with ``syscalls`` trapped; return its listener.

    ``stdio`` gives descriptors for the command's stdin, stdout and stderr (None: ours).
    ``cpu``: keep the command and its descendants on that CPU. ``new_session``: the command
    leads a new session with its stdin (a terminal) as controlling terminal. ``lifeline``:
    the cgroup the command and its descendants live in (see lifeline). ``helper``: one
    started earlier, with ``env``, ``cwd`` and ``stdio`` (see helper); it is used up.
    ``nofile``: the command's descriptor limits (soft, hard), where ours were raised."""
    if not argv:
        raise LaunchError("no command given")
    try:
        if helper is None:
            helper = Helper.start(env, cwd, stdio)
    except HelperStartError as exc:
        raise LaunchError(str(exc.strerror)) from exc
    try:
        spec = {"argv": list(argv), "new_session": new_session, "nofile": nofile}
        return _confine_and_exec(helper, spec, layer, syscalls, cpu, lifeline)
    finally:
        helper.abandon()  # when it never got its spec (nothing once it did)


def _confine_and_exec(
    helper: Helper,
    spec: dict[str, Any],
    layer: StaticLayer,
    syscalls: Sequence[str],
    cpu: int | None,
    lifeline: Lifeline | None,
) -> Launched:
    ruleset = _static_ruleset(layer)
    try:
        spec |= {
            "ruleset": ruleset is not None,
            "restrict_flags": layer.restrict_flags,
            # The helper's parent: the thread that spawns it must live as long as the command
            # (PR_SET_PDEATHSIG fires when that thread exits); the supervisor spawns from its
            # main thread, which lasts until the run is over.
            "supervisor_pid": os.getpid(),
            "nr_restrict": landlock_syscall_numbers()[2],
            **_filter_spec(
                syscalls,
                refuse_mptcp=bool(layer.handled_net),
                # io_uring connects without the connect syscall (IORING_OP_CONNECT).
                refuse_io_uring=bool(layer.handled_fs & AccessFs.CONNECT_UNIX),
                pass_unaddressed_sends=bool(layer.handled_fs & AccessFs.CONNECT_UNIX),
            ),
        }
        if ruleset is not None:  # before the spec: the helper takes it once the spec is whole
            socket.send_fds(helper.sock, [b"R"], [ruleset.fileno()])
    finally:
        if ruleset is not None:
            ruleset.close()  # the helper has its own copy
    process = helper.process
    if cpu is not None:
        # Set while the helper starts up, before it confines itself and execs: the command and
        # everything it starts inherit it.
        os.sched_setaffinity(process.pid, {cpu})
    if lifeline is not None:
        # Before the helper has its spec: it execs nothing, and forks nothing, until then.
        # A cgroup that refuses it (one whose controllers forbid processes beside children)
        # leaves the command with its parent-death signal only, as without a cgroup.
        with contextlib.suppress(OSError):
            lifeline.adopt(process.pid)
    spec_w, helper.spec_w = helper.spec_w, None
    assert spec_w is not None, "a helper is used once"
    try:
        with os.fdopen(spec_w, "wb") as pipe:
            pipe.write(marshal.dumps(spec))
        return Launched(process, _receive_listener(helper.sock, process))
    finally:
        helper.sock.close()


def _static_ruleset(layer: StaticLayer) -> LandlockRuleset | None:
    """The static layer as a kernel ruleset, which the helper restricts itself with; None
    when the layer allows running with nothing enforced and nothing would be."""
    try:
        ruleset = LandlockRuleset(
            layer.handled_fs, layer.handled_net, layer.scopes,
            strict=layer.strict, allow_nothing=layer.allow_nothing,
        )  # fmt: skip
        if ruleset.report.enforced_nothing:
            ruleset.close()
            return None
        ruleset.fill(layer.paths, layer.ports)
    except LandlockError as exc:
        raise LaunchError(f"cannot confine the command: {exc}") from exc
    return ruleset


def _filter_spec(
    syscalls: Sequence[str],
    *,
    refuse_mptcp: bool,
    refuse_io_uring: bool = False,
    pass_unaddressed_sends: bool = False,
) -> dict[str, Any]:
    """The seccomp filter and what the helper needs to install it, from our bindings.

    ``refuse_mptcp``: TCP bind/connect is handled, and Landlock does not see MPTCP sockets.
    ``pass_unaddressed_sends``: sends are trapped (``connect_unix``), but not those with no
    address (see seccomp.bpf.UNADDRESSED_SENDS)."""
    refusals = ALWAYS_REFUSED
    if refuse_mptcp:
        refusals = (*refusals, *MPTCP_REFUSED)
    elif refuse_io_uring:
        refusals = (*refusals, *IO_URING_REFUSED)
    try:
        passing = UNADDRESSED_SENDS if pass_unaddressed_sends else ()
        program = build_filter(syscalls, refusals=refusals, passing=passing)
    except SeccompError as exc:
        raise LaunchError(f"cannot confine the command: {exc}") from exc
    return {
        "filter": program,
        "filter_len": len(program) // SOCK_FILTER.size,
        "nr_seccomp": SYSCALLS[native_arch()]["seccomp"],
        "set_mode_filter": SECCOMP_SET_MODE_FILTER,
        # Preferred first: WAIT_KILLABLE_RECV (5.19) keeps a received notification from
        # being restarted by every signal; older kernels refuse it with EINVAL.
        "filter_flags": [
            SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
        ],
    }


def exit_status(returncode: int) -> int:
    """The shell's convention: 128+N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _receive_listener(sock: socket.socket, process: subprocess.Popen[bytes]) -> Listener:
    """The helper's listener, taken from it by number (it waits until we say we have it)."""
    msg = sock.recv(4096)
    if msg.startswith(exec_helper.MSG_LISTENER) and len(msg) == 5:
        number = int.from_bytes(msg[1:], sys.byteorder)
        # Our child, not yet waited for: its pid names it.
        try:
            pidfd = os.pidfd_open(process.pid)
            try:
                listener = Listener(pidfd_getfd(pidfd, number))  # close-on-exec
            finally:
                os.close(pidfd)
        except OSError as exc:
            process.kill()
            process.wait()
            raise LaunchError(f"cannot take the command's seccomp listener: {exc}") from exc
        sock.sendall(b"k")
        return listener
    # Collect the whole error message; the helper closes its end after sending it.
    while chunk := sock.recv(4096):
        msg += chunk
    process.wait()
    if msg.startswith(exec_helper.MSG_ERROR):
        raise LaunchError(f"cannot confine the command: {msg[1:].decode(errors='replace')}")
    raise LaunchError(f"the launcher exited with status {process.returncode} before confining")
