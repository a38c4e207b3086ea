"""Tying the lives of the command and of all its descendants to the supervisor's.

The command runs in a cgroup v2 of its own, made beside ours. A watchdog process, started
outside that cgroup and in a session of its own, waits for the supervisor to end, however it
ends (its pipe from us reaches end of file when our last descriptor of it closes, a SIGKILL
included), then kills everything left in the cgroup (``cgroup.kill``) and removes it. A
descendant cannot leave the cgroup (that takes write access to another cgroup's
``cgroup.procs``, which Landlock's static layer does not grant), cannot clear anything (as it
could a parent-death signal), and cannot signal the watchdog (the signal scope).

Without a writable cgroup v2 (an unprivileged user without a delegated subtree) the command
has only its parent-death signal (see the exec helper), and its descendants may outlive a
killed supervisor, failing every trapped call (ENOSYS).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from itertools import count

#: The watchdog: waits for end of file on its descriptor, then empties and removes the cgroup.
WATCHDOG = r"""
import os, sys, time
path, fd = sys.argv[1], int(sys.argv[2])
while os.read(fd, 1):
    pass
for attempt in range(200):
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
        os.rmdir(path)
        break
    except FileNotFoundError:
        break
    except OSError:
        time.sleep(0.01)  # the killed processes take a moment to leave the cgroup
"""

_names = count()
#: How long the end of a run waits for the watchdog to have emptied and removed the cgroup.
_WATCHDOG_WAIT_S = 0.5


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(" - ")
            if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
                return fields[0].split()[4]
    return None


def _own_cgroup() -> str | None:
    with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


class Lifeline:
    """A cgroup for one run and the watchdog that empties it once the supervisor is gone."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._write: int | None = None
        self._watchdog: int | None = None
        self._adopted: set[int] = set()

    @classmethod
    def create(cls) -> Lifeline | None:
        """A new cgroup beside ours; None where none can be made."""
        try:
            mount, own = _cgroup2_mount(), _own_cgroup()
            if mount is None or own is None:
                return None
            path = os.path.join(mount, own.lstrip("/"), f"llsupervise-{os.getpid()}-{next(_names)}")
            os.mkdir(path, 0o755)
        except OSError:
            return None
        lifeline = cls(path)
        try:
            lifeline._start_watchdog()
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            if isinstance(exc, OSError):
                return None
            raise
        return lifeline

    def _start_watchdog(self) -> None:
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            os.set_inheritable(read, True)
            devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                # posix_spawn, not subprocess: a bare pid to reap when it is done, and no
                # object to warn about it if the run is abandoned first.
                self._watchdog = os.posix_spawn(
                    sys.executable,
                    [sys.executable, "-I", "-S", "-c", WATCHDOG, self.path, str(read)],
                    {},  # it needs none (and a malformed entry of ours would stop it)
                    file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)],
                    setsid=True,
                    # Not the spawning thread's mask (an Adoption's blocks every signal).
                    setsigmask=(),
                )
            finally:
                os.close(devnull)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._write = write

    def adopt(self, pid: int) -> None:
        """Move ``pid`` (the helper, before it execs the command) into the cgroup; nothing
        when it was moved already (see Adoption)."""
        if pid in self._adopted:
            return
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        self._adopted.add(pid)

    def close(self) -> None:
        """The run is over: the cgroup is removed here when nothing is left in it (rmdir
        refuses a populated one, and only we move processes in); otherwise the watchdog
        kills what is left and removes it."""
        try:
            os.rmdir(self.path)
            emptied = True
        except OSError:
            emptied = False
        if self._write is not None:
            os.close(self._write)
            self._write = None
        _reap_watchdogs()
        if self._watchdog is not None and emptied:
            # It finds the cgroup gone and exits (it may not even have started yet, ~10 ms
            # that a short command's run would otherwise wait): reaped later.
            _watchdogs.append(self._watchdog)
            self._watchdog = None
        if self._watchdog is not None:
            # A few ms (kill, the cgroup empties, rmdir): waited for (half a second at most)
            # on a pidfd, which wakes as it exits, then reaped if done by then.
            pid, self._watchdog = self._watchdog, None
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
                try:
                    # poll, not select: the run may hold more than FD_SETSIZE descriptors.
                    poller = select.poll()
                    poller.register(pidfd, select.POLLIN)
                    poller.poll(_WATCHDOG_WAIT_S * 1000)
                finally:
                    os.close(pidfd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


class Adoption:
    """A lifeline made, and ``pid`` moved into it, in a thread of its own.

    Moving a process into a cgroup waits in the kernel for a grace period (~10 ms here, at
    0.2 ms of CPU): an early exec helper is moved while the supervisor goes on loading.
    Started once it is kept where :meth:`close` will find it (:meth:`start`), then taken once
    (:meth:`take`: a failure to make it is raised there, and the run fails); what nobody took
    is closed by :meth:`close`."""

    def __init__(self, pid: int) -> None:
        self._lifeline: Lifeline | None = None
        self._failure: BaseException | None = None
        self._started = False
        self._taken = False
        self._thread = threading.Thread(target=self._make, args=(pid,), name="lifeline")

    def start(self) -> None:
        # No signal meanwhile: an interrupt raised inside Thread.start would leave a thread
        # making a lifeline that nobody waits for, nor closes.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._thread.start()
            self._started = True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _make(self, pid: int) -> None:
        try:
            lifeline = Lifeline.create()
        except BaseException as exc:  # told by take(): the run must not go on without it
            self._failure = exc
            return
        if lifeline is not None:
            # Refused (see the launcher), it is tried again at launch, and refused again.
            with contextlib.suppress(OSError):
                lifeline.adopt(pid)
        self._lifeline = lifeline

    def join(self) -> None:
        """Wait until it is made (or failed)."""
        if self._started:
            self._thread.join()

    def take(self) -> Lifeline | None:
        """The lifeline, ``pid`` in it (None where none can be made, as Lifeline.create)."""
        self.join()
        assert self._started and not self._taken, "an adoption is started, then taken once"
        self._taken = True
        if self._failure is not None:
            raise self._failure
        return self._lifeline

    def close(self) -> None:
        """Close the lifeline unless it was taken: what is in it is killed."""
        self.join()
        if not self._taken:
            self._taken = True
            if self._lifeline is not None:
                self._lifeline.close()


#: Watchdogs of runs whose cgroup was removed without them, not yet reaped.
_watchdogs: list[int] = []


def _reap_watchdogs() -> None:
    for pid in list(_watchdogs):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # reaped by someone else (a wait for any child)
        if done:
            _watchdogs.remove(pid)
