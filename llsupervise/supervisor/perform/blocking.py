"""Filesystems whose operations can block for ever, and serving without touching them.

A serving thread answers every trapped call of the program, one at a time: one operation
that waits for a FUSE server that never answers (or a dead NFS server) would stall all the
others. So a serving thread performs a request only when nothing it does can reach such a
filesystem ("inline"); the rest is handed to a worker with a deadline (engine.offload),
where the operation still runs with the generation's Landlock restriction, so a grant on a
network filesystem is performed as anywhere else.

Chosen over leaving those requests to the kernel (CONTINUE): CONTINUE is safe, but only
the static layer would then decide, so supervisor rules and questions would never apply
to a FUSE or NFS tree, and a walk that is merely not cached cannot be told from one that
will block without doing it.

How inline stays off such filesystems, race-free against the program renaming things:

- A plain open (no creation, no truncation) walks its whole path with ``RESOLVE_CACHED`` to an
  O_PATH descriptor (no lookup that needs the filesystem: a FUSE dentry past its timeout is
  not revalidated, it fails with EAGAIN); one ``statx`` of it (``AT_STATX_DONT_SYNC``: no
  filesystem call) gives its type and its mount, which must not block; that very object is
  then opened through its ``/proc/self/fd`` link (see operations._open_checked).
- Otherwise the directory a request acts in is resolved with ``RESOLVE_CACHED`` and its
  mount checked likewise; the last component is then reached from that directory with
  ``RESOLVE_NO_XDEV``: it can only be on the same mount, whatever the program puts in its
  place meanwhile.
- A mount's kind comes from ``/proc/self/mountinfo``, kept by the unique mount id statx gives
  (Linux 6.8; never reused, so no re-read is needed while the ids are known). An overlay
  opens the files of its layers: it blocks when the mount a layer's path leads to does
  (a layer whose path leads to no mount of ours, as a container's root overlay's, is not
  known, and not counted).
- Anything else (a walk not in the cache, another mount on the way, a blocking mount, a
  Landlock denial whose analysis walks the path again) raises :class:`MayBlock`.

``statfs`` is not used to tell the filesystem: FUSE answers it with a FUSE_STATFS request
to the server, which is exactly what must not be waited for.

The price: a statx per performed request, and a first walk that is not cached yet goes
through a worker.

Not avoided, only bounded: the child's cwd and dirfds are still opened (through their /proc
magic links, O_PATH, by the unrestricted helper the serving thread waits for). FUSE is not
asked then, and NFS revalidates the inode it jumps to over the wire only in rare cases (a
stale handle retried); and reading the path from the child's memory faults in its page,
which on a FUSE file waits for the server. A serving thread held there is given up on by the
loop's stall watch (see engine.loop), which serves on with another.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple

from llsupervise.libc import libc as _libc
from llsupervise.supervisor.perform.procfs import read_whole

#: Filesystem types (as /proc/self/mountinfo names them) whose operations wait for a
#: server, a network or a daemon that may never answer: FUSE (every ``fuse.*`` subtype,
#: virtiofs too), NFS, CIFS/SMB, 9p, Ceph, AFS, Coda, the cluster filesystems, and autofs
#: (an automount waits for its daemon). Their statfs magic numbers, for reference: FUSE
#: 0x65735546, NFS 0x6969, CIFS 0xFF534D42, SMB2 0xFE534D42, 9p 0x01021997, Ceph 0x00C36400,
#: AFS 0x5346414F, Coda 0x73757245, GFS2 0x01161970, OCFS2 0x7461636F, autofs 0x0187.
BLOCKING_TYPES = frozenset({
    "fuse", "fuseblk", "fusectl", "virtiofs", "nfs", "nfs4", "cifs", "smb3", "smbfs",
    "9p", "ceph", "afs", "kafs", "coda", "gfs2", "ocfs2", "orangefs", "lustre",
    "glusterfs", "autofs",
})  # fmt: skip


def is_blocking_type(fstype: str) -> bool:
    return fstype in BLOCKING_TYPES or fstype.startswith(("fuse.", "fuseblk."))


class MayBlock(Exception):
    """Performing this request could wait on a filesystem that may never answer: not on a
    serving thread (see the module)."""


RESOLVE_NO_XDEV = 0x01
RESOLVE_CACHED = 0x20

_AT_EMPTY_PATH = 0x1000
_AT_STATX_DONT_SYNC = 0x4000
_STATX_TYPE = 0x1
_STATX_MODE = 0x2
_STATX_INO = 0x100
_STATX_MNT_ID = 0x1000
_STATX_MNT_ID_UNIQUE = 0x4000
#: struct statx (256 bytes): stx_ino is the u64 at 0x20, stx_dev_major and _minor the u32s
#: at 0x88 and 0x8c, stx_mnt_id the u64 at 0x90.
_STATX_SIZE = 256
_STATX_INO_OFFSET = 0x20
_STATX_DEV_OFFSET = 0x88
_STATX_MNT_ID_OFFSET = 0x90


def _statx_cached(fd: int, mask: int) -> ctypes.Array[ctypes.c_char]:
    """statx of ``fd`` from what the kernel has (AT_STATX_DONT_SYNC: FUSE and NFS are not
    asked to refresh attributes)."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.statx(fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, mask, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf


def mount_id(fd: int) -> int:
    """The id of the mount ``fd`` is on, asked of the VFS only (never of the filesystem)."""
    buf = _statx_cached(fd, _STATX_MNT_ID)
    return ctypes.c_uint64.from_buffer(buf, _STATX_MNT_ID_OFFSET).value


def cached_identity(fd: int) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of ``fd``, without asking its filesystem (as fstat may)."""
    buf = _statx_cached(fd, _STATX_INO)
    major, minor = struct.unpack_from("=II", buf, _STATX_DEV_OFFSET)
    return os.makedev(major, minor), ctypes.c_uint64.from_buffer(buf, _STATX_INO_OFFSET).value


#: What a mount is, for serving inline: safe, on a filesystem that may block, or procfs
#: (never reached for the child: its objects name their caller, see operations).
INLINE, BLOCKING, PROCFS = 0, 1, 2


class Mounts:
    """What each mount (by id) is, read from a mountinfo opened while the process was
    unrestricted; re-read when the mount table changes (poll says so).

    Kinds are also kept by *unique* mount id (``STATX_MNT_ID_UNIQUE``, Linux 6.8): those
    ids are never reused, so what was learnt of one holds for ever, and a request whose
    mount is known costs one statx and no poll."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._kinds: dict[int, int] = {}
        #: Unique mount id -> kind; only kinds found in the table (see kind_of).
        self._by_unique: dict[int, int] = {}
        #: Told each unique mount id found INLINE (see :meth:`follow_inline`).
        self._inline_followers: list[Callable[[int], None]] = []
        self._poll = select.poll()
        if fd is not None:
            self._poll.register(fd, select.POLLPRI)
            self._poll.poll(0)  # the first poll reports the table as changed

    def blocking(self, mnt_id: int) -> bool:
        """Whether mount ``mnt_id`` is on a blocking filesystem; unknown counts as blocking."""
        return self.kind(mnt_id) == BLOCKING

    def kind(self, mnt_id: int) -> int:
        """What mount ``mnt_id`` (the reusable id) is; unknown counts as BLOCKING."""
        with self._lock:
            return self._kind_locked(mnt_id)

    def _kind_locked(self, mnt_id: int) -> int:
        if self._fd is None:
            return BLOCKING
        if self._poll.poll(0):
            self._kinds.clear()  # mounted or unmounted since: ids may be reused
        known = self._kinds.get(mnt_id)
        if known is None:
            self._kinds = self._read()
            known = self._kinds.get(mnt_id)
        return BLOCKING if known is None else known

    def kind_of(self, fd: int, unique: int) -> int:
        """What the mount of ``fd`` is, ``unique`` its unique mount id (taken of ``fd``,
        which keeps that mount, and so its reusable id, alive while it is looked up)."""
        known = self._by_unique.get(unique)
        if known is not None:
            return known
        with self._lock:
            try:
                old = mount_id(fd)
            except OSError:
                return BLOCKING
            known = self._kind_locked(old)
            if old in self._kinds:  # listed; unlisted is not kept (an unreadable table)
                if len(self._by_unique) >= _UNIQUE_KEPT:
                    self._by_unique.clear()
                self._by_unique[unique] = known
                if known == INLINE:
                    for follower in self._inline_followers:
                        follower(unique)
        return known

    def follow_inline(self, follower: Callable[[int], None]) -> None:
        """Tell ``follower`` the unique id of each mount found not to block, those known
        already first (a unique id is never reused, so what it is told holds for ever)."""
        with self._lock:
            self._inline_followers.append(follower)
            for unique, kind in list(self._by_unique.items()):
                if kind == INLINE:
                    follower(unique)

    def _read(self) -> dict[int, int]:
        assert self._fd is not None
        try:
            text = read_whole(self._fd)
        except OSError:
            return {}
        table = {}
        points: list[tuple[bytes, int]] = []  # (mount point, id), in the table's order
        stacked: dict[int, list[bytes]] = {}  # an overlay's id -> its layers' paths
        for line in text.splitlines():
            fields = line.split()
            with contextlib.suppress(ValueError, IndexError):
                # id parent maj:min root point options [optional...] - fstype source super
                dash = fields.index(b"-")
                fstype = fields[dash + 1].decode(errors="replace")
                kind = BLOCKING if is_blocking_type(fstype) else INLINE
                table[int(fields[0])] = PROCFS if fstype == "proc" else kind
                points.append((_unescape(fields[4]), int(fields[0])))
                if fstype == "overlay":
                    stacked[int(fields[0])] = overlay_layers(fields[dash + 3])
        # An overlay opens its layers' files: it blocks as any of them does (a layer on
        # another overlay: as that one, hence a pass per level, the deepest last found).
        for _ in range(len(stacked)):
            changed = False
            for mnt_id, layers in stacked.items():
                # A layer that leads to no other mount of ours is not counted: its path is
                # another namespace's (a container's root overlay names the host's
                # directories), or was under the overlay's own mount point, now hidden.
                found = [_mount_of(layer, points) for layer in layers]
                known = [on for on in found if on is not None and on != mnt_id]
                if table[mnt_id] == INLINE and any(table.get(on) != INLINE for on in known):
                    table[mnt_id] = BLOCKING
                    changed = True
            if not changed:
                break
        return table


def _unescape(field: bytes) -> bytes:
    """A mountinfo field: space, tab, newline, backslash (and, in an option, ',' and '=')
    are written as a backslash and three octal digits."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)


def overlay_layers(options: bytes) -> list[bytes]:
    """The paths of an overlay's layers, from its super options (``lowerdir=a:b``, or one
    ``lowerdir+=``/``datadir+=`` per layer, ``upperdir=``); its lower layers are split on
    ':' (one in a name is escaped)."""
    layers = []
    for option in options.split(b","):
        key, _, value = option.partition(b"=")
        if key == b"lowerdir":
            layers += [_unescape(v) for v in re.split(rb"(?<!\\):", value) if v]
        elif key in (b"lowerdir+", b"datadir+", b"upperdir"):
            layers.append(_unescape(value))
    return [layer.replace(b"\\:", b":") for layer in layers]


def _mount_of(path: bytes, points: list[tuple[bytes, int]]) -> int | None:
    """The id of the mount ``path`` is on, as the table lists them: the deepest mount point
    that leads to it, the last listed of those stacked on one point."""
    found, depth = None, -1
    for point, mnt_id in points:
        prefix = point.rstrip(b"/") + b"/"
        if (path == point or path.startswith(prefix)) and len(point) >= depth:
            found, depth = mnt_id, len(point)
    return found


#: Unique mount ids whose kind is kept (a bound; dropped all at once past it).
_UNIQUE_KEPT = 4096


def _open_mountinfo() -> int | None:
    try:
        return os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


#: Opened while the process is unrestricted: a serving thread, restricted, may not open it.
MOUNTS = Mounts(_open_mountinfo())


class Status(NamedTuple):
    """What one statx tells of an object, from what the kernel has (see :func:`status`)."""

    mode: int
    dev: int
    ino: int
    #: What its mount is (INLINE, BLOCKING or PROCFS).
    mount: int


#: stx_mask, stx_mode, stx_ino, stx_dev_major/minor, stx_mnt_id.
_STATX_FIELDS = struct.Struct("=I24xH2xQ96xIIQ")
_STATX_WANTED = _STATX_TYPE | _STATX_MODE | _STATX_INO | _STATX_MNT_ID_UNIQUE


def status(fd: int) -> Status | None:
    """Type, identity and mount kind of ``fd`` in one statx that asks the VFS only (never
    the filesystem); None where the kernel gives no unique mount id (before Linux 6.8)."""
    buf = getattr(_thread, "statx", None)
    if buf is None:
        buf = _thread.statx = ctypes.create_string_buffer(_STATX_SIZE)
    if _libc.statx(fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, _STATX_WANTED, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    mask, mode, ino, major, minor, unique = _STATX_FIELDS.unpack_from(buf)
    if not mask & _STATX_MNT_ID_UNIQUE:
        return None
    return Status(mode, os.makedev(major, minor), ino, MOUNTS.kind_of(fd, unique))


def on_blocking_mount(fd: int) -> bool:
    try:
        found = status(fd)
        if found is not None:
            return found.mount == BLOCKING
        return MOUNTS.blocking(mount_id(fd))
    except OSError:
        return True


_thread = threading.local()


def serve_inline() -> None:
    """Mark the calling thread as a serving thread: what it performs stays off blocking
    filesystems (operations raise :class:`MayBlock` instead)."""
    _thread.inline = True


def inline() -> bool:
    return getattr(_thread, "inline", False)
