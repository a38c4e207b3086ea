"""Replay a child's filesystem syscall in the calling (broker) thread.

Each function returns the syscall's result (an fd for opens, 0 otherwise) or raises
OSError with the kernel's errno; Landlock denials surface as EACCES.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat

from msgspec import Struct

from llsupervise.libc import AT_FDCWD, openat2
from llsupervise.libc import libc as _libc
from llsupervise.supervisor.engine.requests import (
    AT_EMPTY_PATH,
    AT_SYMLINK_FOLLOW,
    FsRequest,
    split_last,
)
from llsupervise.supervisor.perform.blocking import (
    BLOCKING,
    INLINE,
    PROCFS,
    RESOLVE_CACHED,
    RESOLVE_NO_XDEV,
    MayBlock,
    inline,
    on_blocking_mount,
    status,
)
from llsupervise.supervisor.perform.credentials import Credentials, CredentialsError, acting_as
from llsupervise.supervisor.perform.guard import Guard, ProtectedError
from llsupervise.supervisor.perform.procfs import read_whole

_libc.renameat2.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
]  # fmt: skip


class KernelDecides(Exception):
    """The operation cannot be performed on the child's behalf; CONTINUE instead.
    Never reported to a user (see llsupervise.errors)."""


# What names its caller must never be reached by the broker on the child's behalf: the broker
# would get ITS OWN object (the supervisor's memory, descriptors, terminal). Paths that say so
# lexically are left to the kernel before this point (requests.SELF_REFERENTIAL); these
# checks catch the same objects reached through the child's symlinks.
_RESOLVE_NO_MAGICLINKS = 0x02
_PROC_SUPER_MAGIC = 0x9FA0
_DEV_TTY = os.makedev(5, 0)
#: Bytes enough for struct statfs on every architecture; f_type is its first field, a long.
_STATFS_SIZE = 256
#: st_dev of a block device -> its filesystem's magic number. Only block devices: an
#: anonymous device number (major 0: procfs, tmpfs, overlayfs...) is reused by whatever is
#: mounted next, so a procfs could come to carry the number a tmpfs had.
_magic_by_device: dict[int, int] = {}


def filesystem_magic(fd: int, dev: int | None = None) -> int:
    """The type (``f_type`` of statfs) of the filesystem ``fd`` is on; ``dev`` its st_dev
    (taken with a stat when the caller has none at hand)."""
    if dev is None:
        dev = os.fstat(fd).st_dev
    magic = _magic_by_device.get(dev)
    if magic is None:
        buf = ctypes.create_string_buffer(_STATFS_SIZE)
        if _libc.fstatfs(fd, buf) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        magic = ctypes.c_long.from_buffer(buf).value
        if os.major(dev) != 0:
            _magic_by_device[dev] = magic
    return magic


def _names_caller(fd: int, st: os.stat_result) -> bool:
    """A procfs object (any procfs mount: /proc/self/..., reached through a symlink) or
    /dev/tty."""
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_TTY:
        return True
    return filesystem_magic(fd, st.st_dev) == _PROC_SUPER_MAGIC


# No argtypes: converting declared arguments costs a third of the call, and every argument
# here is a small int (sign-extended to a register by libffi) or bytes (a pointer).


def _openat2(dirfd: int | None, path: bytes, flags: int, mode: int) -> int:
    """openat without following magic links (/proc/PID/fd/N, cwd, root, exe): they would
    resolve in the broker's process. Refused (ELOOP, or EINVAL for flags openat2 is stricter
    about) means: let the kernel decide in the child's own context."""
    return _openat2_stat(dirfd, path, flags, mode)[0]


def _openat2_stat(
    dirfd: int | None, path: bytes, flags: int, mode: int
) -> tuple[int, os.stat_result]:
    """:func:`_openat2`, and the status of what it opened.

    On a serving thread (see blocking) the walk stays on ``dirfd``'s mount; otherwise
    :class:`MayBlock`. (A directory reached across mounts: :func:`_directory_inline`.)"""
    if not flags & (os.O_CREAT | os.O_TMPFILE):
        mode = 0  # openat2 refuses a mode it would not use
    resolve = _RESOLVE_NO_MAGICLINKS
    serving = inline()
    if serving:
        resolve |= RESOLVE_NO_XDEV
    try:
        fd = openat2(AT_FDCWD if dirfd is None else dirfd, path, flags, mode, resolve)
    except OSError as exc:
        if serving and exc.errno == errno.EXDEV:
            raise MayBlock("off the mount") from exc
        if exc.errno in (errno.ELOOP, errno.EINVAL):
            raise KernelDecides("magic link, or flags openat2 refuses") from exc
        raise
    try:
        st = os.fstat(fd)
        caller = _names_caller(fd, st)
    except BaseException:
        os.close(fd)
        raise
    if caller:
        os.close(fd)
        raise KernelDecides("an object that names its caller")
    return int(fd), st


class Target(Struct, frozen=True):
    """A request bound to directories the supervisor opened for the child (never changed
    once made: a changed copy is made with msgspec.structs.replace)."""

    request: FsRequest
    #: O_PATH fds standing for the child's dirfd (None: the path is absolute).
    dir1: int | None
    dir2: int | None
    #: The child's umask, applied to created objects.
    umask: int
    #: The child's access credentials, when they are not ours: taken to perform.
    credentials: Credentials | None = None
    #: The control plane: what is never performed for the child (see guard).
    guard: Guard | None = None


def _at(dirfd: int | None, path: bytes) -> tuple[bytes, int | None]:
    if dirfd is None or path.startswith(b"/"):
        return path, None
    return path, dirfd


def perform(t: Target) -> int:
    """Replay the request in the calling thread, with the child's credentials if they are
    not ours (KernelDecides when they cannot be taken)."""
    if t.credentials is None:
        return _perform(t)  # the usual case, on every grant: nothing around it
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(acting_as(t.credentials))
        except CredentialsError as exc:
            raise KernelDecides("the child's credentials cannot be taken") from exc
        return _perform(t)


def _perform(t: Target) -> int:
    r = t.request
    path, dir1 = _at(t.dir1, r.path)
    guard = t.guard if t.guard else None
    if r.op == "open":
        if inline():
            fd = _open_checked(guard, path, dir1, r.flags)
            if fd is not None:
                return fd
        if guard is not None:
            return _guarded_open(guard, path, dir1, r.flags, r.mode & ~t.umask & 0o7777)
        return _open(path, dir1, r.flags, r.mode & ~t.umask & 0o7777)
    with contextlib.ExitStack() as stack:
        # The directories the operation acts in, resolved as an open would (no magic link,
        # nothing of procfs): the last component is then looked up in them and nowhere else.
        dir1, name = _parent(stack, dir1, path)
        if guard is not None:
            _check_guard(guard, stack, t, dir1, name)
        match r.op:
            case "mkdir":
                os.mkdir(name, r.mode & ~t.umask & 0o7777, dir_fd=dir1)
            case "mknod":
                mode = (r.mode & ~0o7777) | (r.mode & ~t.umask & 0o7777)
                os.mknod(name, mode, r.dev, dir_fd=dir1)
            case "unlink":
                os.unlink(name, dir_fd=dir1)
            case "rmdir":
                os.rmdir(name, dir_fd=dir1)
            case "symlink":
                os.symlink(r.target, name, dir_fd=dir1)
            case "truncate":
                # truncate(2) has no *at form: resolve the object as an open would, then
                # truncate that very object.
                target = _openat2(dir1, name, os.O_PATH | os.O_CLOEXEC, 0)
                stack.callback(os.close, target)
                if _leased(os.fstat(target)):
                    # truncate(2) would wait for the holder to give the lease up (up to
                    # lease-break-time): the child's own call waits, not a serving thread.
                    raise KernelDecides("a leased file")
                os.truncate(b"/proc/self/fd/%d" % target, r.mode)
            case "rename" | "link":
                path2, dir2 = _at(t.dir2, r.path2)
                dir2, name2 = _parent(stack, dir2, path2)
                if r.op == "link" and r.flags & AT_EMPTY_PATH and not r.path:
                    # The object the child's dirfd names (our descriptor of it) is linked:
                    # a file made with O_TMPFILE gets its name this way.
                    if t.dir1 is None:
                        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
                    os.link(b"/proc/self/fd/%d" % t.dir1, name2, dst_dir_fd=dir2)
                elif r.op == "link" and r.flags & AT_SYMLINK_FOLLOW:
                    # Following the source could follow a magic link too: resolve it as an
                    # open would, then link that very object.
                    source = _openat2(dir1, name, os.O_PATH | os.O_CLOEXEC, 0)
                    stack.callback(os.close, source)
                    os.link(b"/proc/self/fd/%d" % source, name2, dst_dir_fd=dir2)
                elif r.op == "link":
                    os.link(name, name2, src_dir_fd=dir1, dst_dir_fd=dir2, follow_symlinks=False)
                elif r.flags:
                    _renameat2(dir1, name, dir2, name2, r.flags)
                else:
                    os.rename(name, name2, src_dir_fd=dir1, dst_dir_fd=dir2)
            case _:
                raise KernelDecides(r.op)
    return 0


def protected(t: Target) -> str | None:
    """What of the control plane ``t`` would reach, if anything, found without performing it
    (for a request Landlock refused: it is then refused as protected, not asked about)."""
    if not t.guard:
        return None
    r = t.request
    path, dir1 = _at(t.dir1, r.path)
    try:
        with contextlib.ExitStack() as stack:
            if r.op == "open":
                writes = r.flags & os.O_ACCMODE != os.O_RDONLY or bool(
                    r.flags & (os.O_TRUNC | os.O_CREAT)
                )
                if r.flags & os.O_CREAT:
                    parent, name = _parent(stack, dir1, path)
                    t.guard.refuse_entries((parent, name))
                nofollow = r.flags & os.O_NOFOLLOW
                fd = _openat2(dir1, path, os.O_PATH | os.O_CLOEXEC | nofollow, 0)
                stack.callback(os.close, fd)
                t.guard.refuse_open(os.fstat(fd), reading_only=not writes)
            else:
                parent, name = _parent(stack, dir1, path)
                _check_guard(t.guard, stack, t, parent, name)
    except ProtectedError as exc:
        return exc.what
    except (OSError, KernelDecides):
        return None
    return None


def _check_guard(
    guard: Guard, stack: contextlib.ExitStack, t: Target, dir1: int | None, name: bytes
) -> None:
    """Refuse (ProtectedError) an operation on the control plane, checked on the directory
    it acts in and the object it names there (see guard)."""
    r = t.request
    match r.op:
        case "mkdir" | "mknod" | "symlink":
            guard.refuse_entries((dir1, name))
        case "unlink" | "rmdir":
            guard.refuse_children((dir1, name))
        case "truncate":
            target = _openat2(dir1, name, os.O_PATH | os.O_CLOEXEC, 0)
            try:
                guard.refuse_open(os.fstat(target), reading_only=False)
            finally:
                os.close(target)
        case "rename" | "link":
            path2, dir2 = _at(t.dir2, r.path2)
            dir2, name2 = _parent(stack, dir2, path2)
            if r.op == "rename":
                # Either end: what moves away, and what is replaced (or exchanged).
                guard.refuse_children((dir1, name), (dir2, name2))
                return
            guard.refuse_entries((dir2, name2))
            if r.flags & AT_EMPTY_PATH and not r.path and t.dir1 is not None:
                guard.refuse_open(os.fstat(t.dir1), reading_only=False)
            elif r.flags & AT_SYMLINK_FOLLOW:
                source = _openat2(dir1, name, os.O_PATH | os.O_CLOEXEC, 0)
                try:
                    guard.refuse_open(os.fstat(source), reading_only=False)
                finally:
                    os.close(source)
            else:
                guard.refuse_children((dir1, name))


def _guarded_open(guard: Guard, path: bytes, dirfd: int | None, flags: int, mode: int) -> int:
    """:func:`_open` that refuses the control plane: a creation of a protected entry, a
    write to a protected file, any open of a secret one. The object is checked on the fd
    opened, before anything is written: ``O_TRUNC`` is applied only after the check, by
    reopening that very file."""
    writes = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & (os.O_TRUNC | os.O_CREAT))
    st: os.stat_result | None = None
    if flags & os.O_CREAT and inline():
        # The entry checked is the entry opened: its directory is resolved once.
        parent, name, owned = _parent_fd(dirfd, path)
        try:
            guard.refuse_entries((parent, name))
            fd, st = _open_in_stat(name, parent, flags & ~os.O_TRUNC, mode)
        finally:
            if owned is not None:
                os.close(owned)
    else:
        if flags & os.O_CREAT:
            with contextlib.ExitStack() as stack:
                parent, name = _parent(stack, dirfd, path)
                guard.refuse_entries((parent, name))
        fd = _open(path, dirfd, flags & ~os.O_TRUNC, mode)
    try:
        if st is None:
            st = os.fstat(fd)
        guard.refuse_open(st, reading_only=not writes)
        if not flags & os.O_TRUNC or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return fd
        # The very object checked (our fd's magic link), now truncated as asked: Landlock
        # judges the truncate as it would have judged O_TRUNC.
        reopen = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
        truncated = os.open(b"/proc/self/fd/%d" % fd, reopen | os.O_CLOEXEC | os.O_NOCTTY)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return truncated


def _parent(
    stack: contextlib.ExitStack, dirfd: int | None, path: bytes
) -> tuple[int | None, bytes]:
    """``(directory fd, last component)`` for ``path`` relative to ``dirfd``: the directory
    is opened (O_PATH, closed by ``stack``) through :func:`_openat2` when the path has one.
    Trailing slashes stay with the last component, which keeps their meaning."""
    fd, name, owned = _parent_fd(dirfd, path)
    if owned is not None:
        stack.callback(os.close, owned)
    return fd, name


def _parent_fd(dirfd: int | None, path: bytes) -> tuple[int | None, bytes, int | None]:
    """:func:`_parent` without a stack: also the directory fd if it is ours to close."""
    parent, name = split_last(path)
    if parent is None:
        if inline() and dirfd is not None and on_blocking_mount(dirfd):
            raise MayBlock("acts in a directory on a filesystem that may block")
        return dirfd, path, None  # a bare name (in the child's own directory fd), or "/"
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    fd = _directory_inline(dirfd, parent, flags) if inline() else _openat2(dirfd, parent, flags, 0)
    return fd, name, fd


def _directory_inline(dirfd: int | None, path: bytes, flags: int) -> int:
    """On a serving thread, the directory ``path`` names, by a walk of the dentry cache,
    on a mount that cannot block; it names its caller if it is on procfs (KernelDecides)."""
    try:
        fd = openat2(AT_FDCWD if dirfd is None else dirfd, path, flags, 0,
                     _RESOLVE_NO_MAGICLINKS | RESOLVE_CACHED)  # fmt: skip
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            raise MayBlock("a walk the dentry cache cannot answer") from exc
        if exc.errno in (errno.ELOOP, errno.EINVAL):
            raise KernelDecides("magic link, or flags openat2 refuses") from exc
        raise
    try:
        found = status(fd)
        if found is None:  # before Linux 6.8: the mount table, and the directory's statfs
            if on_blocking_mount(fd):
                raise MayBlock("on a filesystem that may block")
            if _names_caller(fd, os.fstat(fd)):
                raise KernelDecides("an object that names its caller")
        elif found.mount == BLOCKING:
            raise MayBlock("on a filesystem that may block")
        elif found.mount == PROCFS:
            raise KernelDecides("an object that names its caller")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_proc_fd() -> int | None:
    try:
        return os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


#: Our own /proc/PID/fd, opened while the process is unrestricted (every thread shares the
#: descriptor table): :func:`_open_checked` reopens the object it checked through it.
_PROC_FD = _open_proc_fd()


def _proc_fd_after_fork() -> None:
    """A forked child's own: the parent's would reopen the parent's descriptors."""
    global _PROC_FD
    if _PROC_FD is not None:
        os.close(_PROC_FD)
    _PROC_FD = _open_proc_fd()


os.register_at_fork(after_in_child=_proc_fd_after_fork)
#: What :func:`_open_checked` leaves to the general path: creations, truncation (checked
#: against the control plane before it is applied, see _guarded_open), O_PATH, and
#: O_NOFOLLOW (a reopen through a magic link would not keep it in the file's flags).
NOT_CHECKED = (
    os.O_CREAT | os.O_TRUNC | (os.O_TMPFILE & ~os.O_DIRECTORY) | os.O_PATH | os.O_NOFOLLOW
)


def proc_fd() -> int | None:
    """Our /proc/self/fd (see _PROC_FD), through which a checked object is reopened."""
    return _PROC_FD


def _open_checked(guard: Guard | None, path: bytes, dirfd: int | None, flags: int) -> int | None:
    """A serving thread's open in one walk, of the dentry cache alone: the object ``path``
    leads to is held (O_PATH, no magic link), checked on that fd by one statx (a regular
    file or a directory, on a mount that cannot block and is not procfs, not the control
    plane), then that very object is opened, through its /proc/self/fd magic link (Landlock
    judges the open on the object's own path, as it judges the child's).

    None: not taken (other flags, a walk the cache cannot answer, anything else found): the
    general path (:func:`_open`) decides, with its own errors and checks."""
    if flags & NOT_CHECKED or _PROC_FD is None:
        return None
    try:
        held = openat2(AT_FDCWD if dirfd is None else dirfd, path,
                       os.O_PATH | os.O_CLOEXEC | (flags & os.O_DIRECTORY), 0,
                       _RESOLVE_NO_MAGICLINKS | RESOLVE_CACHED)  # fmt: skip
    except OSError:
        return None
    try:
        try:
            found = status(held)
        except OSError:
            return None
        if (
            found is None
            or found.mount != INLINE
            or not (stat.S_ISREG(found.mode) or stat.S_ISDIR(found.mode))
        ):
            return None
        if guard is not None:
            what = guard.object_by_id(
                found.dev, found.ino, reading_only=flags & os.O_ACCMODE == os.O_RDONLY
            )
            if what is not None:
                raise ProtectedError(what)
        # O_NONBLOCK: a lease makes the open fail rather than wait (see _open_in).
        opened = (flags & ~os.O_CLOEXEC) | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        try:
            fd = os.open(b"%d" % held, opened, dir_fd=_PROC_FD)
        except BlockingIOError as exc:
            if flags & os.O_NONBLOCK:
                raise
            raise KernelDecides("a leased file") from exc
    finally:
        os.close(held)
    if not flags & os.O_NONBLOCK:
        _set_blocking(fd, opened)
    return fd




def _set_blocking(fd: int, opened: int) -> None:
    """Clear O_NONBLOCK, which we added, from a file opened with the flags ``opened``: the
    status flags F_SETFL sets are the ones open kept from those flags (F_GETFL would only
    read them back)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, opened & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise


def _open(path: bytes, dirfd: int | None, flags: int, mode: int) -> int:
    if not inline():
        return _open_in(path, dirfd, flags, mode)
    # A serving thread opens the last component from its directory, on that one's mount.
    parent, name, owned = _parent_fd(dirfd, path)
    try:
        return _open_in(name, parent, flags, mode)
    finally:
        if owned is not None:
            os.close(owned)


def _open_in(path: bytes, dirfd: int | None, flags: int, mode: int) -> int:
    return _open_in_stat(path, dirfd, flags, mode)[0]


def _open_in_stat(
    path: bytes, dirfd: int | None, flags: int, mode: int
) -> tuple[int, os.stat_result]:
    """The open of ``path`` in ``dirfd``, and the status of what it opened."""
    # O_NONBLOCK keeps a FIFO or device from blocking the broker; the child's own flags are
    # restored on the open file description afterwards. O_NOCTTY: never adopt a terminal.
    blocking = not flags & os.O_NONBLOCK
    if blocking and flags & os.O_ACCMODE == os.O_RDONLY:
        kind = _kind(dirfd, path)
        if kind is not None and stat.S_ISFIFO(kind.st_mode):
            # It waits for a writer, which only the child's own open may do. Not opened
            # first: a reader of ours, even for a moment, lets a writer waiting in its open
            # through, and the child's open would then wait for one that came and went.
            raise KernelDecides("blocking FIFO open for reading")
    extra = os.O_CLOEXEC | os.O_NOCTTY | (os.O_NONBLOCK if blocking else 0)
    opened = (flags & ~os.O_CLOEXEC) | extra
    try:
        fd, st = _openat2_stat(dirfd, path, opened, mode)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            kind = _kind(dirfd, path)
            if blocking and kind is not None and stat.S_ISFIFO(kind.st_mode):
                # A FIFO without a reader: the child's own open waits for one.
                raise KernelDecides("blocking FIFO open") from exc
            if kind is not None and stat.S_ISCHR(kind.st_mode) and kind.st_rdev == _DEV_TTY:
                # We have no terminal; the child may well have one.
                raise KernelDecides("/dev/tty") from exc
        elif exc.errno == errno.EWOULDBLOCK and blocking:
            # A lease on the file (our O_NONBLOCK open started breaking it): the child's own
            # open waits for the holder, in its own context; a serving thread never does.
            raise KernelDecides("a leased file") from exc
        elif exc.errno == errno.EACCES and not inline() and _in_procfs(dirfd, path):
            # (A serving thread leaves the look to a worker: refused_by_procfs.)
            # Refused by procfs, not Landlock: /proc/PID/fd/, cwd and the like need ptrace
            # standing over PID, which our restricted thread lacks and the child has over
            # itself. The kernel judges it in the child's context.
            raise KernelDecides("the child's own /proc") from exc
        raise
    if blocking and stat.S_ISFIFO(st.st_mode) and flags & os.O_ACCMODE == os.O_RDONLY:
        os.close(fd)  # made a FIFO since the look above (the child racing itself)
        raise KernelDecides("blocking FIFO open for reading")
    if not flags & os.O_NOCTTY and stat.S_ISCHR(st.st_mode) and os.isatty(fd):
        # A terminal the child may adopt as its controlling terminal (a session leader
        # without one): only its own open can make it so.
        os.close(fd)
        raise KernelDecides("a terminal opened without O_NOCTTY")
    if blocking:
        _set_blocking(fd, opened)
    return fd, st


def _open_locks() -> int | None:
    try:
        return os.open("/proc/locks", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


#: Opened while the process is unrestricted: a serving thread, restricted, may not open it.
_LOCKS = _open_locks()


def _leased(st: os.stat_result) -> bool:
    """Whether a lease is held on the object (``/proc/locks``: ``LEASE ... MAJ:MIN:INODE``)."""
    if _LOCKS is None:
        return False
    needle = b" %02x:%02x:%d " % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    try:
        text = read_whole(_LOCKS)
    except OSError:
        return False
    return any(b"LEASE" in line and needle in line for line in text.splitlines())


def refused_by_procfs(t: Target) -> bool:
    """For an open refused on a serving thread (EACCES): whether procfs refused it, not
    Landlock (see _open_in); then the kernel decides. Walks the path: not on a serving
    thread."""
    if t.request.op != "open":
        return False
    path, dirfd = _at(t.dir1, t.request.path)
    return _in_procfs(dirfd, path)


def _in_procfs(dirfd: int | None, path: bytes) -> bool:
    """Whether ``path`` leads into procfs: relative to a dirfd there, through a directory
    there, or as a symlink into /proc (the child's own entries, reached through its
    symlinks), each resolved as an open would."""
    if dirfd is not None and not path.startswith(b"/") and _on_procfs(dirfd):
        return True
    with contextlib.ExitStack() as stack:
        try:
            parent, name = _parent(stack, dirfd, path)
        except KernelDecides:
            return True  # procfs (or a magic link on the way)
        except OSError as exc:
            # Landlock does not judge O_PATH opens: refused on the way is procfs's doing
            # (the child's own /proc/PID/cwd, root or fd/N, reached through its symlink).
            return exc.errno == errno.EACCES
        try:
            target = os.readlink(name.rstrip(b"/"), dir_fd=parent)
        except OSError:
            return False  # not a symlink
    return target == b"/proc" or target.startswith(b"/proc/")


def _on_procfs(fd: int) -> bool:
    return filesystem_magic(fd) == _PROC_SUPER_MAGIC


def _kind(dirfd: int | None, path: bytes) -> os.stat_result | None:
    """What ``path`` leads to, for deciding whether to open it at all: a stat, which answers
    this whichever links it follows (ours included) and gives the child nothing."""
    if inline():
        # Not stat, which could walk anywhere: the same walk as the open's, on the same
        # mount. Magic links are left out (None): the open itself refuses them anyway.
        resolve = _RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
        try:
            fd = openat2(AT_FDCWD if dirfd is None else dirfd, path,
                         os.O_PATH | os.O_CLOEXEC, 0, resolve)  # fmt: skip
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise MayBlock("off the mount") from exc
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)
    try:
        return os.stat(path, dir_fd=dirfd)
    except OSError:
        return None


def _renameat2(dir1: int | None, p1: bytes, dir2: int | None, p2: bytes, flags: int) -> None:
    d1 = AT_FDCWD if dir1 is None else dir1
    d2 = AT_FDCWD if dir2 is None else dir2
    if _libc.renameat2(d1, p1, d2, p2, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
