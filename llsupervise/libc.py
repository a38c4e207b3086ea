"""The C library, bound once: every ctypes call of llsupervise goes through :data:`libc`.

(The exec helper runs in a bare interpreter with the standard library only, so it binds its
own.)"""

from __future__ import annotations

import ctypes
import os
import struct

libc = ctypes.CDLL(None, use_errno=True)

#: The dirfd that means "the current working directory" (a signed 32-bit syscall argument).
AT_FDCWD = -100

#: ``syscall(2)``, returning a C long (an fd, an id, -1).
syscall = libc.syscall
syscall.restype = ctypes.c_long

#: ``struct open_how`` of openat2: flags, mode, resolve (u64 each).
OPEN_HOW = struct.Struct("=QQQ")
_SYS_OPENAT2 = 437  # one number on every architecture since the unified table (not alpha)


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """``openat2(dirfd, path, {flags, mode, resolve})``: the fd, or OSError with the errno."""
    how = OPEN_HOW.pack(flags, mode, resolve)
    fd = syscall(_SYS_OPENAT2, dirfd, path, how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)
