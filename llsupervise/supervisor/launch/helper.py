"""The exec helper's process (``exec_helper``), started before it is needed.

The helper is a bare interpreter: its start-up (~10 ms here) would otherwise come between
the supervisor's set-up and the command. It can start first, while the supervisor imports
and loads the policy, because it does nothing until it has its spec: it then receives the
static ruleset over its socket (SCM_RIGHTS), confines itself and execs. A helper that never
gets a spec (the run failed first) exits at the end of its spec pipe.

Light on purpose (no module of ours): imported before anything else a run needs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llsupervise.supervisor.launch.lifeline import Adoption

Stdio = tuple[int | None, int | None, int | None]

#: Runs exec_helper as a module, from its directory (last on the path: the standard library's
#: names come first), so that its compiled bytecode is used; a script given by path is
#: compiled again on every start (~2-4 ms on the way to every command's exec).
_BOOT = "import sys; sys.path.append(sys.argv.pop(1)); import exec_helper; exec_helper.main()"
_ARGV = (sys.executable, "-I", "-S", "-c", _BOOT, os.path.dirname(__file__))


class HelperStartError(OSError):
    """The helper's interpreter could not be started."""


class Helper:
    """A started helper: its process, the write end of its spec pipe, our socket end."""

    def __init__(
        self, process: subprocess.Popen[bytes], spec_w: int, sock: socket.socket
    ) -> None:
        self.process = process
        self.spec_w: int | None = spec_w
        self.sock = sock
        #: Its lifeline, being made (see lifeline.Adoption): taken by the run that uses it.
        self.adoption: Adoption | None = None

    @classmethod
    def start(
        cls,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdio: Stdio = (None, None, None),
    ) -> Helper:
        """Start a helper that inherits what a transparent wrapper passes on: ``stdio``,
        ``env``, ``cwd`` and the descriptors we inherited without CLOEXEC."""
        spec_r, spec_w = os.pipe2(os.O_CLOEXEC)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fd = child_sock.fileno()
        # An interrupt (Ctrl-C) inside Popen may come after the fork, even before Popen has
        # kept the pid: the helper is then found among this thread's children, killed and
        # reaped, not left waiting for a spec (or a zombie).
        before = _children()
        process: subprocess.Popen[bytes] | None = None
        try:
            process = subprocess.Popen(
                [*_ARGV, str(spec_r), str(child_fd)],
                pass_fds=[spec_r, child_fd, *inherited_fds()],
                env=None if env is None else dict(env),
                cwd=cwd,
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
            )
            return cls(process, spec_w, parent_sock)
        except BaseException as exc:
            os.close(spec_w)
            parent_sock.close()
            if process is not None:
                process.kill()
                process.wait()
            else:
                for pid in _children() - before:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            if isinstance(exc, OSError):
                raise HelperStartError(exc.errno, f"cannot start the launcher: {exc}") from exc
            raise
        finally:
            os.close(spec_r)
            child_sock.close()

    def abandon(self) -> None:
        """Not needed after all: it reaches the end of its spec pipe and exits, reaped here,
        and its lifeline, unless a run took it, is closed. Nothing once the spec was sent."""
        if self.spec_w is None:
            return
        os.close(self.spec_w)
        self.spec_w = None
        self.sock.close()
        if self.adoption is not None:
            self.adoption.join()  # before the helper is reaped: until then its pid is its own
        self.process.wait()
        if self.adoption is not None:
            self.adoption.close()  # now that its cgroup is empty


def _children() -> set[int]:
    """The children of the calling thread (those it forked), zombies included."""
    with open(f"/proc/self/task/{threading.get_native_id()}/children") as f:
        return {int(pid) for pid in f.read().split()}


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
