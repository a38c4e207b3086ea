"""Seccomp user notification: install a filter with a listener, then serve its notifications.

The listener's ioctls go through fcntl.ioctl with a mutable buffer: it drops the GIL while
the kernel blocks (NOTIF_RECV and NOTIF_ADDFD can) and returns the ioctl's result alongside
the mutated buffer, at a third of the cost of a ctypes call (these run on every request).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import threading

from msgspec import Struct

from llsupervise.fdowner import FdOwner
from llsupervise.libc import syscall as _syscall
from llsupervise.seccomp.constants import (
    NOTIF_ID,
    SECCOMP_ADDFD_FLAG_SEND,
    SECCOMP_ADDFD_FLAG_SETFD,
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_GET_NOTIF_SIZES,
    SECCOMP_IOCTL_NOTIF_ADDFD,
    SECCOMP_IOCTL_NOTIF_ID_VALID,
    SECCOMP_IOCTL_NOTIF_RECV,
    SECCOMP_IOCTL_NOTIF_SEND,
    SECCOMP_IOCTL_NOTIF_SET_FLAGS,
    SECCOMP_NOTIF,
    SECCOMP_NOTIF_ADDFD,
    SECCOMP_NOTIF_RESP,
    SECCOMP_NOTIF_SIZES,
    SECCOMP_SET_MODE_FILTER,
    SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
    SECCOMP_USER_NOTIF_FLAG_CONTINUE,
    SOCK_FILTER,
    SOCK_FPROG,
    SYSCALLS,
    NotificationGone,
    SeccompError,
    SuperviseesGone,
    arch_from_audit,
    native_arch,
    syscall_name,
)


def _seccomp(operation: int, flags: int, arg: ctypes.Array[ctypes.c_char]) -> int:
    """The raw seccomp(2) call (glibc has no wrapper). Returns its result or -errno."""
    nr = SYSCALLS[native_arch()]["seccomp"]
    ret = int(
        _syscall(
            ctypes.c_long(nr),
            ctypes.c_ulong(operation),
            ctypes.c_ulong(flags),
            ctypes.c_void_p(ctypes.addressof(arg)),
        )
    )
    return -ctypes.get_errno() if ret < 0 else ret


def install_filter(prog: bytes, *, wait_killable: bool = True) -> int:
    """Install prog on the calling thread and return the new listener fd (always CLOEXEC).

    The caller must have set no_new_privs (or hold CAP_SYS_ADMIN). wait_killable keeps a
    notification already received from being restarted by every signal the task gets; kernels
    before 5.19 refuse the flag with EINVAL, and then the filter is installed without it.
    """
    if not prog or len(prog) % SOCK_FILTER.size:
        raise SeccompError(errno.EINVAL, "empty or truncated BPF program")
    code = ctypes.create_string_buffer(prog, len(prog))
    fprog = ctypes.create_string_buffer(
        SOCK_FPROG.pack(len(prog) // SOCK_FILTER.size, ctypes.addressof(code)), SOCK_FPROG.size
    )
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER
    if wait_killable:
        ret = _seccomp(
            SECCOMP_SET_MODE_FILTER, flags | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, fprog
        )
        if ret != -errno.EINVAL:
            return _checked(ret, "seccomp(SET_MODE_FILTER)")
    return _checked(_seccomp(SECCOMP_SET_MODE_FILTER, flags, fprog), "seccomp(SET_MODE_FILTER)")


def notif_sizes() -> tuple[int, int, int]:
    """Kernel sizes of struct seccomp_notif, seccomp_notif_resp and seccomp_data."""
    buf = ctypes.create_string_buffer(SECCOMP_NOTIF_SIZES.size)
    _checked(_seccomp(SECCOMP_GET_NOTIF_SIZES, 0, buf), "seccomp(GET_NOTIF_SIZES)")
    notif, resp, data = SECCOMP_NOTIF_SIZES.unpack(buf.raw)
    return int(notif), int(resp), int(data)


def _checked(ret: int, what: str) -> int:
    if ret < 0:
        raise SeccompError(-ret, what)
    return ret


#: Threads that take no signal (see refuse_signals).
_deaf = threading.local()


def refuse_signals() -> None:
    """The calling thread takes no signal from now on: the kernel gives process-directed
    ones to another (Python runs its handlers in the main thread anyway). For the threads
    that inject descriptors: see :meth:`Listener.addfd`. Never the main thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    _deaf.refused = True


class Notification(Struct, frozen=True):
    """One trapped syscall, waiting for an answer. pid is the thread id of the caller."""

    id: int
    pid: int
    flags: int
    nr: int
    arch: int
    ip: int
    args: tuple[int, int, int, int, int, int]

    @property
    def syscall(self) -> str | None:
        """The syscall's name, None when its architecture or number is not in our tables."""
        arch = arch_from_audit(self.arch)
        return None if arch is None else syscall_name(arch, self.nr)

    @classmethod
    def unpack(cls, buf: bytes | bytearray) -> Notification:
        """A notification from its struct seccomp_notif, as NOTIF_RECV fills it."""
        nid, pid, flags, nr, arch, ip, a0, a1, a2, a3, a4, a5 = SECCOMP_NOTIF.unpack(buf)
        return cls(nid, pid, flags, nr, arch, ip, (a0, a1, a2, a3, a4, a5))

    def arg_int(self, index: int) -> int:
        """Argument index as a C int (dirfds such as AT_FDCWD are signed 32-bit)."""
        value = self.args[index] & 0xFFFFFFFF
        return value - (1 << 32) if value >= 1 << 31 else value


class Listener(FdOwner):
    """Owner of a seccomp listener fd.

    NOTIF_RECV blocks even on an O_NONBLOCK fd: wait until the fd is readable first. When the
    fd reports POLLHUP every supervisee is gone and recv() raises SuperviseesGone forever.
    """

    def fileno(self) -> int:
        if self._fd < 0:
            raise SeccompError(errno.EBADF, "listener is closed")
        return self._fd

    def close(self) -> None:
        """Close the fd. Once every listener of a filter is closed, trapped syscalls fail
        with ENOSYS: the supervisor failing never means the supervisee is let through."""
        super().close()

    def _ioctl(self, request: int, arg: bytearray | int, what: str) -> int:
        fd = self.fileno()
        while True:
            try:
                return fcntl.ioctl(fd, request, arg, True)
            except InterruptedError:
                continue
            except OSError as e:
                raise SeccompError(e.errno or errno.EIO, what) from None

    def _reply_ioctl(self, request: int, arg: bytearray, what: str) -> int:
        try:
            return self._ioctl(request, arg, what)
        except SeccompError as e:
            # ENOENT: the task died or was interrupted. ESRCH: it died while an ADDFD waited.
            if e.errno in (errno.ENOENT, errno.ESRCH):
                raise NotificationGone(e.errno, what) from None
            raise

    def recv(self) -> Notification:
        """Take the next notification, blocking until there is one.

        Raises SuperviseesGone when no task uses the filter any more, and NotificationGone
        when the notification that woke us vanished first (its task was killed or its syscall
        interrupted): then simply call recv() again.
        """
        # The buffer must be all zeroes (the kernel checks, to keep the struct extensible);
        # a fresh one is, and a fresh one per call keeps threads from sharing it.
        buf = bytearray(SECCOMP_NOTIF.size)
        try:
            self._ioctl(SECCOMP_IOCTL_NOTIF_RECV, buf, "NOTIF_RECV")
        except SeccompError as e:
            if e.errno != errno.ENOENT:
                raise
            if self._hung_up():
                raise SuperviseesGone(errno.ENOENT, "NOTIF_RECV: no supervisee left") from None
            raise NotificationGone(errno.ENOENT, "NOTIF_RECV") from None
        return Notification.unpack(buf)

    def _hung_up(self) -> bool:
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def id_valid(self, notif_id: int) -> bool:
        """Whether the notification still waits for an answer. Check it after reading the
        task's memory (through a mem fd opened before) to know the memory was that task's."""
        buf = bytearray(NOTIF_ID.pack(notif_id))
        try:
            self._ioctl(SECCOMP_IOCTL_NOTIF_ID_VALID, buf, "NOTIF_ID_VALID")
        except SeccompError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def _send(self, notif_id: int, val: int, error: int, flags: int) -> None:
        buf = bytearray(SECCOMP_NOTIF_RESP.pack(notif_id, val, error, flags))
        self._reply_ioctl(SECCOMP_IOCTL_NOTIF_SEND, buf, "NOTIF_SEND")

    def send_continue(self, notif_id: int) -> None:
        """Let the kernel run the syscall as if it had not been trapped.

        The task's memory may change before the kernel reads it again, so this is never a
        grant by itself: it only hands the decision back to the rest of the security stack.
        """
        self._send(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def send_error(self, notif_id: int, err: int) -> None:
        """Fail the syscall with errno err (positive, e.g. errno.EACCES)."""
        if err <= 0:
            raise ValueError(f"errno must be positive, got {err}")
        self._send(notif_id, 0, -err, 0)

    def send_value(self, notif_id: int, val: int) -> None:
        """Make the syscall return val without running it."""
        self._send(notif_id, val, 0, 0)

    def addfd(
        self,
        notif_id: int,
        srcfd: int,
        *,
        send: bool = False,
        cloexec: bool = False,
        newfd: int | None = None,
    ) -> int:
        """Copy srcfd into the task's fd table and return its number there.

        With send=True the same number becomes the syscall's return value and the notification
        is answered (atomically: no window in which the task holds an fd it was never told of).
        newfd picks the number in the task (replacing whatever is there).
        """
        flags = (SECCOMP_ADDFD_FLAG_SEND if send else 0) | (
            SECCOMP_ADDFD_FLAG_SETFD if newfd is not None else 0
        )
        buf = bytearray(
            SECCOMP_NOTIF_ADDFD.pack(
                notif_id, flags, srcfd, newfd or 0, os.O_CLOEXEC if cloexec else 0
            )
        )
        # No signal may end the kernel's wait for the program to take the descriptor: it
        # would withdraw the descriptor with the request already marked answered (so the
        # program's call returns 0, its stdin) and the retried ioctl fail (EINPROGRESS).
        if getattr(_deaf, "refused", False):  # the serving threads: see refuse_signals
            return self._reply_ioctl(SECCOMP_IOCTL_NOTIF_ADDFD, buf, "NOTIF_ADDFD")
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            return self._reply_ioctl(SECCOMP_IOCTL_NOTIF_ADDFD, buf, "NOTIF_ADDFD")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def set_sync_wakeup(self) -> None:
        """Ask the kernel to wake the supervisor and the task on the same CPU.

        Without it every round trip pays a cross-CPU wakeup, several times the cost of
        handling the notification itself.
        """
        # The flag word is passed by value, not through a pointer.
        self._ioctl(
            SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, "NOTIF_SET_FLAGS"
        )
