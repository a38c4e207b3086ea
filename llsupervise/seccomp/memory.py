"""Reading a trapped task's memory (syscall arguments that are pointers, such as paths)."""

from __future__ import annotations

import errno
import mmap
import os

from llsupervise.fdowner import FdOwner
from llsupervise.seccomp.constants import SeccompError

#: Longest path the kernel accepts, terminating NUL included.
PATH_MAX = 4096

_MAX_OFFSET = (1 << 63) - 1  # pread's offset is a signed off_t


class MemoryReadError(SeccompError):
    """The task's memory could not be read, or held no NUL-terminated string where expected.

    errno is the failed call's, EFAULT for a range that is not (entirely) mapped, and
    ENAMETOOLONG for a string without a NUL in reach: what the syscall itself would have said.
    """


class ProcessMemory(FdOwner):
    """A read-only handle on /proc/PID/mem.

    Open it *before* checking Listener.id_valid(): if the notification is still valid after the
    read, the pid had not been reused and the bytes were the trapped task's. The fd is bound to
    the address space it was opened on, so it goes stale once the task execs: open a new one.
    pid may be a thread id (a notification's pid is one).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise MemoryReadError(e.errno or 0, f"open /proc/{pid}/mem") from None
        super().__init__(fd)

    def fileno(self) -> int:
        return self._fd

    def read(self, addr: int, size: int) -> bytes:
        """Exactly size bytes at addr; MemoryReadError if any of them is unreadable."""
        if size < 0 or addr < 0 or addr + size > _MAX_OFFSET:
            raise MemoryReadError(errno.EFAULT, f"address range {addr:#x}+{size} out of bounds")
        if self._fd < 0:
            raise MemoryReadError(errno.EBADF, "memory handle is closed")
        try:
            data = os.pread(self._fd, size, addr)
        except OSError as e:
            # /proc/PID/mem says EIO for an unmapped address; the syscall would say EFAULT.
            err = errno.EFAULT if e.errno == errno.EIO else e.errno or 0
            raise MemoryReadError(err, f"read pid {self.pid} at {addr:#x}") from None
        if len(data) != size:
            # A short read means an unmapped page in the range, or the task has exited.
            raise MemoryReadError(
                errno.EFAULT, f"read pid {self.pid} at {addr:#x}: got only {len(data)} bytes"
            )
        return data

    def read_cstring(self, addr: int, max_len: int = PATH_MAX) -> bytes:
        """The NUL-terminated string at addr, without its NUL; max_len counts the NUL.

        Reads page by page, so a short string at the end of a mapping never touches the
        (possibly unmapped) page after it.
        """
        chunks: list[bytes] = []
        remaining = max_len
        while remaining > 0:
            chunk = self.read(addr, min(mmap.PAGESIZE - addr % mmap.PAGESIZE, remaining))
            end = chunk.find(b"\0")
            if end >= 0:
                chunks.append(chunk[:end])
                return b"".join(chunks)
            chunks.append(chunk)
            addr += len(chunk)
            remaining -= len(chunk)
        raise MemoryReadError(
            errno.ENAMETOOLONG, f"no NUL within {max_len} bytes at {addr - max_len:#x}"
        )
