"""What a child's descriptor names, kept for as long as the child keeps it there.

A request relative to a child's dirfd needs that directory in the supervisor: opening
``/proc/TID/fd/N`` takes the supervisor's own standing, which the serving thread (restricted
by Landlock) lacks, so it costs a hand-off to another thread. Programs use one dirfd for
many requests (``tar -C``, ``rm -r``, ``find``), so the directory is kept, with the child's
``/proc/TID/fdinfo/N`` opened alongside: read again (which any thread may do), that file
says which object fd N names *now* (its mount id and inode number). While they are the
kept object's, the kept descriptor stands for fd N with no hand-off.

Mount id and inode number name one object only where inode numbers are unique within a
mount while the inode lives (we hold it): ext2/3/4, tmpfs and xfs. Elsewhere (btrfs
subvolumes share a mount and reuse numbers; overlayfs, FUSE and network filesystems make
their own) nothing is kept.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from msgspec import Struct

from llsupervise.supervisor.perform.blocking import on_blocking_mount
from llsupervise.supervisor.perform.operations import filesystem_magic

#: ext2/3/4, tmpfs, xfs.
UNIQUE_INODE_FILESYSTEMS = frozenset({0xEF53, 0x01021994, 0x58465342})
#: Kept child descriptors (two of ours each); past it the oldest goes.
MAX_KEPT = 64
#: Seconds between looks for kept objects the child no longer names: until then we keep
#: them in use (a filesystem cannot be unmounted while we hold a directory on it).
SWEEP_SECONDS = 0.25


class KeptDir(Struct):
    """Our O_PATH descriptor of what the child's fd named, and the child's fdinfo file."""

    fd: int
    info: int
    #: The fdinfo lines that name the object: ``\nmnt_id:\tM\nino:\tI\n``.
    identity: bytes

    def still_named(self) -> bool:
        """Whether the child's fd names the kept object now (False once the thread is gone)."""
        try:
            fdinfo = os.pread(self.info, 4096, 0)
        except OSError:
            return False
        # Anchored at the first mount id line: later lines (an epoll's, an inotify's) are
        # of the child's making.
        start = fdinfo.find(b"\nmnt_id:\t")
        return start >= 0 and fdinfo.startswith(self.identity, start)

    def close(self) -> None:
        for fd in (self.fd, self.info):
            with contextlib.suppress(OSError):
                os.close(fd)


def _identity(fdinfo: bytes) -> bytes | None:
    """The mount id and inode lines of an fdinfo file (printed one after the other)."""
    start = fdinfo.find(b"\nmnt_id:\t")
    if start < 0:
        return None
    ino = fdinfo.find(b"\nino:\t", start + 1)
    end = fdinfo.find(b"\n", ino + 1)
    if ino < 0 or end < 0 or fdinfo.find(b"\n", start + 1) != ino:
        return None
    return fdinfo[start : end + 1]


def open_child_fd(tid: int, fd: int) -> tuple[int, KeptDir | None]:
    """Our O_PATH descriptor of what thread ``tid``'s fd ``fd`` names, and what to keep of it
    (None where it cannot stand for the child's fd later). Needs the supervisor's standing."""
    ours = os.open(f"/proc/{tid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    try:
        # Told by the mount first: statfs (and fstat) on FUSE ask its server, which may hang.
        if on_blocking_mount(ours) or filesystem_magic(ours) not in UNIQUE_INODE_FILESYSTEMS:
            return ours, None
        # Ours is read for the identity: the child's fd may have changed since we opened it.
        with open(f"/proc/self/fdinfo/{ours}", "rb", buffering=0) as own:
            identity = _identity(own.read())
        if identity is None:
            return ours, None
        info = os.open(f"/proc/{tid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ours, None
    try:
        kept = os.dup(ours)
    except OSError:
        os.close(info)
        return ours, None
    return ours, KeptDir(kept, info, identity)


class ChildFds:
    """Kept child descriptors by (thread id, fd number); ``open_unrestricted`` runs
    :func:`open_child_fd` with the supervisor's standing."""

    def __init__(self, open_unrestricted: Callable[[int, int], tuple[int, KeptDir | None]]) -> None:
        self._open = open_unrestricted
        self._kept: dict[tuple[int, int], KeptDir] = {}
        self._swept = time.monotonic()

    def __len__(self) -> int:
        return len(self._kept)

    def open(self, tid: int, fd: int) -> int:
        """An O_PATH descriptor (ours to close) of what the thread's ``fd`` names; OSError as
        opening ``/proc/TID/fd/N`` raises it (ENOENT: no such descriptor)."""
        key = (tid, fd)
        kept = self._kept.get(key)
        if kept is not None:
            if kept.still_named():
                return os.dup(kept.fd)
            del self._kept[key]
            kept.close()
        ours, kept = self._open(tid, fd)
        if time.monotonic() - self._swept >= SWEEP_SECONDS:
            self.sweep()
        if kept is not None:
            if len(self._kept) >= MAX_KEPT:
                self._kept.pop(next(iter(self._kept))).close()
            self._kept[key] = kept
        return ours

    def sweep(self) -> None:
        """Let go of what the children's descriptors no longer name."""
        for key, kept in list(self._kept.items()):
            if not kept.still_named():
                del self._kept[key]
                kept.close()
        self._swept = time.monotonic()

    def close(self) -> None:
        while self._kept:
            self._kept.popitem()[1].close()
