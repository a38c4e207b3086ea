"""Decode a trapped syscall into what it asks of the filesystem.

A :class:`FsRequest` keeps the raw arguments (paths as bytes, read once from the child's
memory) so that a broker can replay exactly that syscall, relative to a directory the
supervisor obtained, and so that the object checked is the object acted on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from msgspec import Struct

from llsupervise.errors import LLSuperviseError
from llsupervise.libc import AT_FDCWD, OPEN_HOW
from llsupervise.rights import NO_FS, AccessFs
from llsupervise.seccomp import Notification

AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_EXCHANGE = 1 << 1
O_ACCMODE = 0o3
#: struct open_how { u64 flags; u64 mode; u64 resolve; } (openat2), in native byte order.

#: Paths that, opened on the child's behalf, would name the supervisor's own objects instead
#: of the child's; they are left to the kernel in the child's context. (The same objects
#: reached through symlinks are caught when performing: see operations.)
SELF_REFERENTIAL = (
    b"/proc", b"/dev/fd", b"/dev/stdin", b"/dev/stdout", b"/dev/stderr", b"/dev/tty",
)  # fmt: skip


class DecodeError(LLSuperviseError):
    """A trapped syscall whose arguments could not be read."""


class FsRequest(Struct, frozen=True):
    """One filesystem operation asked for by the child."""

    syscall: str
    #: open, mkdir, mknod, unlink, rmdir, rename, link, symlink, truncate, execute
    op: str
    dirfd: int
    path: bytes
    #: open flags (open family), rename flags, link flags.
    flags: int = 0
    #: creation mode (open/mkdir/mknod), or truncate length.
    mode: int = 0
    dev: int = 0
    #: The second path of rename/link (destination), with its dirfd.
    dirfd2: int = AT_FDCWD
    path2: bytes = b""
    #: The content of a symlink to create.
    target: bytes = b""

    @property
    def creates(self) -> bool:
        return self.op in ("mkdir", "mknod", "symlink", "link", "rename") or bool(
            self.op == "open" and self.flags & os.O_CREAT
        )

    def leave_to_kernel(self) -> bool:
        """True when the static layer alone must decide (see SELF_REFERENTIAL)."""
        if self.op == "open" and self.flags & os.O_PATH:
            return True  # Landlock does not check O_PATH opens
        return _self_referential(self.path) or bool(self.path2 and _self_referential(self.path2))


_SELF_EXACT = frozenset(SELF_REFERENTIAL)
_SELF_BENEATH = tuple(p + b"/" for p in SELF_REFERENTIAL)


def _self_referential(path: bytes) -> bool:
    return path in _SELF_EXACT or path.startswith(_SELF_BENEATH)


def signed_fd(value: int) -> int:
    """dirfd arguments are signed 32-bit (AT_FDCWD is -100)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


ReadString = Callable[[int], bytes]
ReadBytes = Callable[[int, int], bytes]


def decode(n: Notification, name: str, read_str: ReadString, read: ReadBytes) -> FsRequest:
    """Build the request for syscall ``name`` from its arguments."""
    a = n.args
    match name:
        case "open":
            return FsRequest(name, "open", AT_FDCWD, read_str(a[0]), a[1] & 0xFFFFFFFF, a[2])
        case "creat":
            flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
            return FsRequest(name, "open", AT_FDCWD, read_str(a[0]), flags, a[1])
        case "openat":
            return FsRequest(name, "open", signed_fd(a[0]), read_str(a[1]), a[2] & 0xFFFFFFFF, a[3])
        case "openat2":
            if a[3] < OPEN_HOW.size:
                raise DecodeError("openat2 with a short open_how")
            flags, mode, resolve = OPEN_HOW.unpack(read(a[2], OPEN_HOW.size))
            if resolve:
                # RESOLVE_* constraints cannot be replayed faithfully by os.open.
                raise DecodeError("openat2 with RESOLVE_* flags")
            return FsRequest(name, "open", signed_fd(a[0]), read_str(a[1]), flags, mode)
        case "mkdir":
            return FsRequest(name, "mkdir", AT_FDCWD, read_str(a[0]), mode=a[1])
        case "mkdirat":
            return FsRequest(name, "mkdir", signed_fd(a[0]), read_str(a[1]), mode=a[2])
        case "mknod":
            return FsRequest(name, "mknod", AT_FDCWD, read_str(a[0]), mode=a[1], dev=a[2])
        case "mknodat":
            return FsRequest(name, "mknod", signed_fd(a[0]), read_str(a[1]), mode=a[2], dev=a[3])
        case "unlink":
            return FsRequest(name, "unlink", AT_FDCWD, read_str(a[0]))
        case "rmdir":
            return FsRequest(name, "rmdir", AT_FDCWD, read_str(a[0]))
        case "unlinkat":
            op = "rmdir" if a[2] & AT_REMOVEDIR else "unlink"
            return FsRequest(name, op, signed_fd(a[0]), read_str(a[1]))
        case "rename":
            return FsRequest(name, "rename", AT_FDCWD, read_str(a[0]), path2=read_str(a[1]))
        case "renameat" | "renameat2":
            flags = a[4] & 0xFFFFFFFF if name == "renameat2" else 0
            return FsRequest(
                name, "rename", signed_fd(a[0]), read_str(a[1]), flags=flags,
                dirfd2=signed_fd(a[2]), path2=read_str(a[3]),
            )  # fmt: skip
        case "link":
            return FsRequest(name, "link", AT_FDCWD, read_str(a[0]), path2=read_str(a[1]))
        case "linkat":
            return FsRequest(
                name, "link", signed_fd(a[0]), read_str(a[1]), flags=a[4] & 0xFFFFFFFF,
                dirfd2=signed_fd(a[2]), path2=read_str(a[3]),
            )  # fmt: skip
        case "symlink":
            return FsRequest(name, "symlink", AT_FDCWD, read_str(a[1]), target=read_str(a[0]))
        case "symlinkat":
            return FsRequest(
                name, "symlink", signed_fd(a[1]), read_str(a[2]), target=read_str(a[0])
            )
        case "truncate":
            return FsRequest(name, "truncate", AT_FDCWD, read_str(a[0]), mode=a[1])
        case "execve":
            return FsRequest(name, "execute", AT_FDCWD, read_str(a[0]))
        case "execveat":
            flags = a[4] & 0xFFFFFFFF
            return FsRequest(name, "execute", signed_fd(a[0]), read_str(a[1]), flags=flags)
    raise DecodeError(f"syscall {name} is not a filesystem request")


_MAKE_BY_TYPE = {
    stat.S_IFREG: AccessFs.MAKE_REG,
    stat.S_IFDIR: AccessFs.MAKE_DIR,
    stat.S_IFCHR: AccessFs.MAKE_CHAR,
    stat.S_IFBLK: AccessFs.MAKE_BLOCK,
    stat.S_IFIFO: AccessFs.MAKE_FIFO,
    stat.S_IFSOCK: AccessFs.MAKE_SOCK,
    stat.S_IFLNK: AccessFs.MAKE_SYM,
}


def make_right(mode: int) -> AccessFs:
    """The make_* right for creating an object of the file type in ``mode``."""
    return _MAKE_BY_TYPE.get(stat.S_IFMT(mode) or stat.S_IFREG, AccessFs.MAKE_REG)


def remove_right(mode: int) -> AccessFs:
    return AccessFs.REMOVE_DIR if stat.S_ISDIR(mode) else AccessFs.REMOVE_FILE


def open_rights(flags: int, is_dir: bool) -> AccessFs:
    """Rights Landlock checks when opening an existing object with ``flags``."""
    rights = NO_FS
    accmode = flags & O_ACCMODE
    if accmode in (os.O_RDONLY, os.O_RDWR):
        rights |= AccessFs.READ_DIR if is_dir else AccessFs.READ_FILE
    if accmode in (os.O_WRONLY, os.O_RDWR):
        rights |= AccessFs.WRITE_FILE
    if flags & os.O_TRUNC:
        rights |= AccessFs.TRUNCATE
    return rights


def created_file_rights(flags: int) -> AccessFs:
    """Rights an ``O_CREAT`` open needs on the file it creates: they come from its directory
    (where the rule must be), and ``O_TRUNC`` does nothing to a new file."""
    return open_rights(flags & ~os.O_TRUNC, False)


def rename_rights(
    src_mode: int, dst_mode: int | None, exchange: bool, same_directory: bool
) -> tuple[AccessFs, AccessFs]:
    """Rights a rename (or an exchange) needs on the source's and the destination's
    directories: the moved object is removed from one and made in the other; an object
    renamed over is removed (or, exchanged, moved back); across directories, ``refer``."""
    source, destination = remove_right(src_mode), make_right(src_mode)
    if dst_mode is not None:
        destination |= remove_right(dst_mode)
        if exchange:
            source |= make_right(dst_mode)
    if not same_directory:
        source |= AccessFs.REFER
        destination |= AccessFs.REFER
    return source, destination


def split_last(path: bytes) -> tuple[bytes | None, bytes]:
    """``(directory part, last component)`` of ``path``; the last component keeps any
    trailing slashes (they keep their meaning). The directory part is None for a bare name,
    and for ``/``, which has none."""
    stripped = path.rstrip(b"/")
    slash = stripped.rfind(b"/")
    if slash < 0 or not stripped:
        return None, path
    return stripped[:slash] or b"/", path[slash + 1 :]

