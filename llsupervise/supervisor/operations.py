"""Replay a child's filesystem syscall in the calling (broker) thread.

Each function returns the syscall's result (an fd for opens, 0 otherwise) or raises
OSError with the kernel's errno; Landlock denials surface as EACCES.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from dataclasses import dataclass

from llsupervise.supervisor.requests import AT_SYMLINK_FOLLOW, FsRequest

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
]  # fmt: skip


class KernelDecides(Exception):
    """The operation cannot be performed on the child's behalf; CONTINUE instead."""


@dataclass(frozen=True, slots=True)
class Target:
    """A request bound to directories the supervisor opened for the child."""

    request: FsRequest
    #: O_PATH fds standing for the child's dirfd (None: the path is absolute).
    dir1: int | None
    dir2: int | None
    #: The child's umask, applied to created objects.
    umask: int


def _at(dirfd: int | None, path: bytes) -> tuple[bytes, int | None]:
    if dirfd is None or path.startswith(b"/"):
        return path, None
    return path, dirfd


def perform(t: Target) -> int:
    r = t.request
    path, dir1 = _at(t.dir1, r.path)
    match r.op:
        case "open":
            return _open(path, dir1, r.flags, r.mode & ~t.umask & 0o7777)
        case "mkdir":
            os.mkdir(path, r.mode & ~t.umask & 0o7777, dir_fd=dir1)
        case "mknod":
            mode = (r.mode & ~0o7777) | (r.mode & ~t.umask & 0o7777)
            os.mknod(path, mode, r.dev, dir_fd=dir1)
        case "unlink":
            os.unlink(path, dir_fd=dir1)
        case "rmdir":
            os.rmdir(path, dir_fd=dir1)
        case "symlink":
            os.symlink(r.target, path, dir_fd=dir1)
        case "truncate":
            # truncate(2) has no *at form; reach the dirfd through our own fd table.
            where = path if dir1 is None else b"/proc/self/fd/%d/%s" % (dir1, path)
            os.truncate(where, r.mode)
        case "rename" | "link":
            path2, dir2 = _at(t.dir2, r.path2)
            if r.op == "link":
                os.link(
                    path, path2, src_dir_fd=dir1, dst_dir_fd=dir2,
                    follow_symlinks=bool(r.flags & AT_SYMLINK_FOLLOW),
                )  # fmt: skip
            elif r.flags:
                _renameat2(dir1, path, dir2, path2, r.flags)
            else:
                os.rename(path, path2, src_dir_fd=dir1, dst_dir_fd=dir2)
        case _:
            raise KernelDecides(r.op)
    return 0


def _open(path: bytes, dirfd: int | None, flags: int, mode: int) -> int:
    # O_NONBLOCK keeps a FIFO or device from blocking the broker; the child's own flags are
    # restored on the open file description afterwards. O_NOCTTY: never adopt a terminal.
    extra = os.O_CLOEXEC | os.O_NOCTTY | (0 if flags & os.O_NONBLOCK else os.O_NONBLOCK)
    try:
        fd = os.open(path, (flags & ~os.O_CLOEXEC) | extra, mode, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno == 6 and not flags & os.O_NONBLOCK:  # ENXIO: FIFO without a reader
            raise KernelDecides("blocking FIFO open") from exc
        raise
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _renameat2(dir1: int | None, p1: bytes, dir2: int | None, p2: bytes, flags: int) -> None:
    at_fdcwd = -100
    d1 = at_fdcwd if dir1 is None else dir1
    d2 = at_fdcwd if dir2 is None else dir2
    if _libc.renameat2(d1, p1, d2, p2, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
