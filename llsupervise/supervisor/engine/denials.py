"""What a denied request was about: the objects the kernel checked, and the rights it refused."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from msgspec import Struct

from llsupervise.policy.model import ObjectId
from llsupervise.rights import NO_FS, AccessFs
from llsupervise.supervisor.engine.requests import (
    AT_EMPTY_PATH,
    AT_SYMLINK_NOFOLLOW,
    RENAME_EXCHANGE,
    FsRequest,
    created_file_rights,
    make_right,
    open_rights,
    remove_right,
    rename_rights,
    split_last,
)
from llsupervise.supervisor.rules.binding import directory_of_file
from llsupervise.supervisor.rules.objects import ancestry, fd_path, object_id

_O_DIR = os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY


class CheckedObject(Struct):
    """An object a denied request needed rights on, held open so a grant binds to it."""

    fd: int
    label: str
    access: AccessFs
    chain: tuple[ObjectId, ...]
    #: ``fd`` is the directory where a name is made or removed (what Landlock checks for a
    #: creation, removal, rename or link), not the object the request names.
    in_directory: bool = False
    #: ``fd`` is a directory (the request's own object, or the directory it changes in).
    is_dir: bool = False
    #: For a non-directory object: the directory holding it (an ``O_PATH`` fd), verified to
    #: hold that very object; None when that could not be verified.
    directory: int | None = None

    @property
    def obj(self) -> ObjectId:
        return self.chain[0]

    def close(self) -> None:
        os.close(self.fd)
        if self.directory is not None:
            os.close(self.directory)


def _split(path: bytes) -> tuple[bytes, bytes]:
    """The directory to open for ``path``'s parent (``.``: the dirfd itself), and the name."""
    head, tail = split_last(path)
    if head is None:
        head = b"/" if path.startswith(b"/") else b"."
    return head, tail.rstrip(b"/")


def _open_dir(dirfd: int | None, path: bytes) -> int:
    return os.open(path, _O_DIR, dir_fd=None if path.startswith(b"/") else dirfd)


def _parent(dirfd: int | None, path: bytes, access: AccessFs) -> CheckedObject:
    head, tail = _split(path)
    fd = _open_dir(dirfd, head)
    chain = tuple(ancestry(fd))
    label = os.path.join(fd_path(fd), os.fsdecode(tail))
    return CheckedObject(fd, label, access, chain, in_directory=True, is_dir=True)


def _existing(
    dirfd: int | None, path: bytes, access_of: Callable[[bool], AccessFs], follow: bool
) -> CheckedObject | None:
    flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=None if path.startswith(b"/") else dirfd)
    except OSError:
        return None
    st = os.fstat(fd)
    is_dir = stat.S_ISDIR(st.st_mode)
    access = access_of(is_dir)
    if is_dir:
        return CheckedObject(fd, fd_path(fd), access, tuple(ancestry(fd)), is_dir=True)
    parent = _holding_directory(dirfd, path, fd, st)
    chain: tuple[ObjectId, ...] = (object_id(st),)
    if parent is not None:
        chain += tuple(ancestry(parent))
    return CheckedObject(fd, fd_path(fd), access, chain, directory=parent)


def socket_object(dirfd: int | None, path: bytes, access: AccessFs) -> CheckedObject:
    """The UNIX socket a connect to ``path`` reaches, held open (O_PATH, following symlinks as
    connect does), with its ancestry; OSError with the errno connect would give otherwise
    (ECONNREFUSED for a file that is no socket)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC, dir_fd=None if path.startswith(b"/") else dirfd)
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode):
        os.close(fd)
        raise OSError(errno.ECONNREFUSED, "not a socket")
    parent = _holding_directory(dirfd, path, fd, st)
    chain: tuple[ObjectId, ...] = (object_id(st),)
    if parent is not None:
        chain += tuple(ancestry(parent))
    return CheckedObject(fd, fd_path(fd), access, chain, directory=parent)


def _holding_directory(dirfd: int | None, path: bytes, fd: int, st: os.stat_result) -> int | None:
    """The directory that holds the file ``fd`` (opened from ``path``): the path's own
    directory when it still holds that file under the last name, else the one the fd's name
    says, verified; None if neither can be verified (never a directory by path alone)."""
    head, tail = _split(path)
    try:
        parent = _open_dir(dirfd, head)
    except OSError:
        return directory_of_file(fd)
    try:
        named = os.stat(tail, dir_fd=parent, follow_symlinks=False)
    except OSError:
        named = None
    if named is not None and object_id(named) == object_id(st):
        return parent
    os.close(parent)
    return directory_of_file(fd)


def _mode_or_none(dirfd: int | None, path: bytes) -> int | None:
    """The file type and mode of what ``path`` names (not following a last symlink)."""
    try:
        return os.stat(
            path, dir_fd=None if path.startswith(b"/") else dirfd, follow_symlinks=False
        ).st_mode
    except OSError:
        return None


def _mode_of(dirfd: int | None, path: bytes) -> int:
    mode = _mode_or_none(dirfd, path)
    return stat.S_IFREG if mode is None else mode


def checked_objects(
    r: FsRequest, dir1: int | None, dir2: int | None, handled: AccessFs
) -> list[CheckedObject]:
    """Open (O_PATH) each object ``r`` needs rights on, with the rights it needs there."""
    objects: list[CheckedObject] = []
    if r.op == "open":
        follow = not r.flags & os.O_NOFOLLOW
        found = _existing(dir1, r.path, lambda is_dir: open_rights(r.flags, is_dir), follow)
        if found is not None:
            objects.append(found)
        elif r.flags & os.O_CREAT:
            rights = AccessFs.MAKE_REG | created_file_rights(r.flags)
            objects.append(_parent(dir1, r.path, rights))
    elif r.op in ("mkdir", "mknod", "symlink"):
        mode = stat.S_IFLNK if r.op == "symlink" else r.mode
        if r.op == "mkdir":
            mode = stat.S_IFDIR
        objects.append(_parent(dir1, r.path, make_right(mode)))
    elif r.op in ("unlink", "rmdir"):
        objects.append(_parent(dir1, r.path, remove_right(_mode_of(dir1, r.path))))
    elif r.op == "truncate":
        found = _existing(dir1, r.path, lambda _: AccessFs.TRUNCATE, True)
        if found is not None:
            objects.append(found)
    elif r.op == "execute":
        path = r.path
        if not path and r.flags & AT_EMPTY_PATH and dir1 is not None:
            path, dir1 = os.fsencode(fd_path(dir1)), None  # execveat(fd, "", AT_EMPTY_PATH)
        follow = not r.flags & AT_SYMLINK_NOFOLLOW
        found = _existing(dir1, path, lambda _: AccessFs.EXECUTE, follow)
        if found is not None:
            objects.append(found)
    elif r.op == "rename":
        src = _parent(dir1, r.path, NO_FS)
        dst = _parent(dir2, r.path2, NO_FS)
        src.access, dst.access = rename_rights(
            _mode_of(dir1, r.path), _mode_or_none(dir2, r.path2),
            bool(r.flags & RENAME_EXCHANGE), src.obj == dst.obj,
        )  # fmt: skip
        objects += [src, dst]
    elif r.op == "link":
        src = _parent(dir1, r.path, NO_FS)
        dst = _parent(dir2, r.path2, make_right(_mode_of(dir1, r.path)))
        if src.obj != dst.obj:
            src.access |= AccessFs.REFER
            dst.access |= AccessFs.REFER
        objects += [src, dst]
    for o in objects:
        o.access &= handled
    kept = [o for o in objects if o.access]
    for o in objects:
        if not o.access:
            o.close()
    return kept
