"""A tiny FUSE server speaking the raw /dev/fuse protocol (no libfuse, no fusermount): a
root directory in which a lookup of one name is not answered, as by a server that hangs
(until :meth:`HangingFuse.release`, as by one that was only slow), and one file
(``mapped``) that opens but whose reads are never answered. Needs root (mount(2)).

Closing the server (its /dev/fuse descriptor, once its thread has stopped) aborts the
connection: every request still waiting fails (ENOTCONN), so no test leaves a call hanging;
the mount is detached first, so none leaves a hung mount either.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2

_LOOKUP, _FORGET, _GETATTR, _OPENDIR, _RELEASEDIR, _INIT, _INTERRUPT = 1, 2, 3, 27, 29, 26, 36
_MKDIR, _OPEN, _READ, _STATFS, _RELEASE, _FLUSH = 9, 14, 15, 17, 18, 25
_BATCH_FORGET, _DESTROY = 42, 38
_IN_HEADER = struct.Struct("=IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
_OUT_HEADER = struct.Struct("=IiQ")  # len error unique
# struct fuse_attr: ino size blocks atime mtime ctime (u64) atimensec mtimensec ctimensec
# mode nlink uid gid rdev blksize flags (u32)
_ATTR = struct.Struct("=QQQQQQIIIIIIIIII")
_ROOT, _MAPPED, _RELEASED, _MADE = 1, 2, 3, 4
#: The one file: a page of content the server never sends.
MAPPED_NAME, MAPPED_SIZE = b"mapped", 4096


def _attr(node: int, mode: int, size: int = 0) -> bytes:
    return _ATTR.pack(node, size, 0, 0, 0, 0, 0, 0, 0, mode, 1 if size else 2, 0, 0, 0, 4096, 0)


def _attr_out(mode: int) -> bytes:
    # attr_valid 0: every stat comes back to us (never cached past this answer)
    return struct.pack("=QII", 0, 0, 0) + _attr(_ROOT, mode)


def _entry(node: int, mode: int, size: int = 0, valid: int = 0) -> bytes:
    # nodeid generation entry_valid attr_valid (u64) entry_valid_nsec attr_valid_nsec (u32)
    return struct.pack("=QQQQII", node, 0, valid, 0, 0, 0) + _attr(node, mode, size)


def _init_out() -> bytes:
    # major minor max_readahead flags max_background congestion_threshold max_write
    # time_gran max_pages map_alignment flags2 max_stack_depth unused[6]
    return struct.pack("=IIIIHHIIHHII6I", 7, 31, 65536, 0, 16, 12, 65536, 1, 0, 0, 0, 0,
                       *([0] * 6))  # fmt: skip


class HangingFuse:
    """Serves ``mountpoint``: root answers getattr and opendir, a lookup of ``hang`` is
    never answered, any other name does not exist."""

    def __init__(self, mountpoint: Path, hang: bytes = b"stuck", entry_valid: int = 0) -> None:
        self.mountpoint = mountpoint
        self.hang = hang
        #: Seconds the kernel may keep the name ``mapped`` cached (0: looked up every time).
        self.entry_valid = entry_valid
        #: Lookups of the hanging name received (each left unanswered).
        self.hung = 0
        #: Reads of ``mapped`` received (each left unanswered, until :meth:`fail_reads`).
        self.reads = 0
        self._held_reads: list[int] = []
        #: Set by :meth:`fail_reads`: later reads fail at once too (a reader may retry).
        self.failing_reads = False
        #: Set by :meth:`serve_reads`: what a read of ``mapped`` gets from then on.
        self.content: bytes | None = None
        #: Lookups of the hanging name not answered yet; :meth:`release` answers them (a
        #: directory, in which a mkdir succeeds), as a server that was only slow.
        self._held: list[int] = []
        self.released = False
        self._release_lock = threading.Lock()
        #: Requests received, by opcode.
        self.received: dict[int, int] = {}
        #: Set: no request is answered any more, as by a server that hung.
        self.frozen = False
        #: Set once the kernel's INIT is answered (it comes after mount(2) returns).
        self.initialised = threading.Event()
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        options = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0".encode()
        if _libc.mount(b"hangingfuse", bytes(mountpoint), b"fuse", _MS_NOSUID | _MS_NODEV,
                       options) != 0:  # fmt: skip
            err = ctypes.get_errno()
            self._close_fds()
            raise OSError(err, f"mount fuse: {os.strerror(err)}")
        self._thread = threading.Thread(target=self._serve, name="hanging-fuse", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return
            try:
                request = os.read(self._fd, 1 << 20)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                return  # ENODEV: unmounted
            self._answer(request)

    def _answer(self, request: bytes) -> None:
        _, opcode, unique, nodeid, *_ = _IN_HEADER.unpack_from(request)
        body = request[_IN_HEADER.size :]
        self.received[opcode] = self.received.get(opcode, 0) + 1
        if opcode in (_FORGET, _BATCH_FORGET, _INTERRUPT) or self.frozen:
            return  # no answer expected (an interrupt of a hung lookup stays unanswered)
        if opcode == _INIT:
            self._reply(unique, 0, _init_out())
            self.initialised.set()
        elif opcode == _GETATTR and nodeid == _ROOT:
            self._reply(unique, 0, _attr_out(0o40755))
        elif opcode == _LOOKUP and body.split(b"\0", 1)[0] == self.hang:
            with self._release_lock:
                if not self.released:
                    self.hung += 1  # not answered (until released)
                    self._held.append(unique)
                    return
            self._reply(unique, 0, _entry(_RELEASED, 0o40755))
        elif opcode == _GETATTR and nodeid in (_RELEASED, _MADE):
            self._reply(unique, 0, struct.pack("=QII", 0, 0, 0) + _attr(nodeid, 0o40755))
        elif opcode == _MKDIR and nodeid == _RELEASED:
            self._reply(unique, 0, _entry(_MADE, 0o40755))
        elif opcode == _LOOKUP and body.split(b"\0", 1)[0] == MAPPED_NAME:
            self._reply(unique, 0, _entry(_MAPPED, 0o100644, MAPPED_SIZE, self.entry_valid))
        elif opcode == _GETATTR and nodeid == _MAPPED:
            self._reply(unique, 0, struct.pack("=QII", 0, 0, 0) + _attr(
                _MAPPED, 0o100644, MAPPED_SIZE))  # fmt: skip
        elif opcode == _OPEN:
            self._reply(unique, 0, struct.pack("=QII", 0, 0, 0))  # fh open_flags padding
        elif opcode == _READ:
            with self._release_lock:
                self.reads += 1  # not answered (until fail_reads or serve_reads)
                content = self.content
                if content is None and not self.failing_reads:
                    self._held_reads.append(unique)
                    return
            if content is None:
                self._reply(unique, -errno.EIO)
            else:
                self._reply(unique, 0, content)
        elif opcode in (_FLUSH, _RELEASE):
            self._reply(unique, 0)
        elif opcode == _STATFS:
            # blocks bfree bavail files ffree bsize namelen frsize padding spare[6], as
            # libfuse answers for a server that does not implement it
            self._reply(unique, 0, struct.pack("=QQQQQIIII6I", 0, 0, 0, 0, 0, 512, 255, 0, 0,
                                               *([0] * 6)))  # fmt: skip
        elif opcode == _LOOKUP:
            self._reply(unique, -errno.ENOENT)
        elif opcode == _OPENDIR:
            self._reply(unique, 0, struct.pack("=QII", 0, 0, 0))
        elif opcode in (_RELEASEDIR, _DESTROY):
            self._reply(unique, 0)
        else:
            self._reply(unique, -errno.ENOSYS)

    def release(self) -> None:
        """Answer the held lookups at last (and any later one at once)."""
        with self._release_lock:
            self.released = True
            held, self._held = self._held, []
        for unique in held:
            self._reply(unique, 0, _entry(_RELEASED, 0o40755))

    def fail_reads(self, failing: bool = True) -> None:
        """Answer the reads held so far with EIO, as a server that was slow, then failed, and
        later ones as they come while ``failing`` (a reader may retry); the page stays out of
        the cache, so an access after that asks (and, not ``failing``, waits) again."""
        with self._release_lock:
            self.failing_reads = failing
            held, self._held_reads = self._held_reads, []
        for unique in held:
            self._reply(unique, -errno.EIO)

    def serve_reads(self, content: bytes) -> None:
        """Answer the reads held so far, and later ones, with ``content`` (the whole page,
        zero-filled), as a server that was only slow."""
        page = content.ljust(MAPPED_SIZE, b"\0")[:MAPPED_SIZE]
        with self._release_lock:
            self.content = page
            held, self._held_reads = self._held_reads, []
        for unique in held:
            self._reply(unique, 0, page)

    def _reply(self, unique: int, error: int, payload: bytes = b"") -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, _OUT_HEADER.pack(_OUT_HEADER.size + len(payload), error,
                                                unique) + payload)  # fmt: skip

    def close(self) -> None:
        """Detach the mount, stop serving, and abort the connection (closing /dev/fuse)."""
        if self._fd < 0:
            return
        _libc.umount2(bytes(self.mountpoint), _MNT_DETACH)
        os.write(self._stop_w, b"x")
        self._thread.join()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1


@contextlib.contextmanager
def hanging_fuse(
    mountpoint: Path, hang: bytes = b"stuck", entry_valid: int = 0
) -> Iterator[HangingFuse]:
    mountpoint.mkdir(exist_ok=True)
    server = HangingFuse(mountpoint, hang, entry_valid)
    try:
        # What tests count of the server's requests starts after the kernel's own INIT.
        if not server.initialised.wait(30):
            raise AssertionError("the FUSE mount was never initialised")
        yield server
    finally:
        server.close()
