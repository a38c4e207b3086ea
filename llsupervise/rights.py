"""Landlock access rights and scopes: bit values, landlockconfig names, and what each ABI knows.

Pure data shared by the policy model (which must not touch the kernel) and the kernel bindings.
Bit values are the kernel's (include/uapi/linux/landlock.h); names are landlockconfig's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from llsupervise.errors import LLSuperviseError

#: The newest Landlock ABI this code knows about.
LATEST_ABI = 7


class AccessFs(enum.IntFlag):
    EXECUTE = 1 << 0
    WRITE_FILE = 1 << 1
    READ_FILE = 1 << 2
    READ_DIR = 1 << 3
    REMOVE_DIR = 1 << 4
    REMOVE_FILE = 1 << 5
    MAKE_CHAR = 1 << 6
    MAKE_DIR = 1 << 7
    MAKE_REG = 1 << 8
    MAKE_SOCK = 1 << 9
    MAKE_FIFO = 1 << 10
    MAKE_BLOCK = 1 << 11
    MAKE_SYM = 1 << 12
    REFER = 1 << 13  # ABI 2
    TRUNCATE = 1 << 14  # ABI 3
    IOCTL_DEV = 1 << 15  # ABI 5
    #: llsupervise's own right, judged by the supervisor layer alone (Landlock has no right for
    #: connecting to a pathname UNIX socket): connect() and sendto()/sendmsg() to the socket.
    #: A bit far above the kernel's, which a kernel ruleset masks out (see KERNEL_FS).
    CONNECT_UNIX = 1 << 40


class AccessNet(enum.IntFlag):
    BIND_TCP = 1 << 0  # ABI 4
    CONNECT_TCP = 1 << 1  # ABI 4


class Scope(enum.IntFlag):
    ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
    SIGNAL = 1 << 1  # ABI 6


NO_FS = AccessFs(0)
NO_NET = AccessNet(0)
NO_SCOPE = Scope(0)

#: Rights that make sense on a non-directory; the kernel answers EINVAL to the others.
FILE_ACCESS = (
    AccessFs.EXECUTE
    | AccessFs.WRITE_FILE
    | AccessFs.READ_FILE
    | AccessFs.TRUNCATE
    | AccessFs.IOCTL_DEV
    | AccessFs.CONNECT_UNIX
)

#: Filesystem rights only the supervisor layer knows: never in a kernel ruleset, a static rule,
#: a ``[[ruleset]]`` or an exported landlockconfig file.
SUPERVISOR_ONLY_FS = AccessFs.CONNECT_UNIX
#: Every filesystem right a Landlock kernel may know of.
KERNEL_FS = AccessFs((1 << 40) - 1)


def fs_all(abi: int) -> AccessFs:
    """Every filesystem right the given ABI handles."""
    if abi < 1:
        return NO_FS
    rights = AccessFs((1 << 13) - 1)
    if abi >= 2:
        rights |= AccessFs.REFER
    if abi >= 3:
        rights |= AccessFs.TRUNCATE
    if abi >= 5:
        rights |= AccessFs.IOCTL_DEV
    return rights


def net_all(abi: int) -> AccessNet:
    return AccessNet.BIND_TCP | AccessNet.CONNECT_TCP if abi >= 4 else NO_NET


def scope_all(abi: int) -> Scope:
    return Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL if abi >= 6 else NO_SCOPE


def fs_read_execute(abi: int) -> AccessFs:
    """landlockconfig's ``read_execute`` group: read and execute, plus ``refer`` where known."""
    return fs_all(abi) & (
        AccessFs.EXECUTE | AccessFs.READ_FILE | AccessFs.READ_DIR | AccessFs.REFER
    )


def fs_read_write(abi: int) -> AccessFs:
    """landlockconfig's ``read_write`` group: everything but ``execute``."""
    return fs_all(abi) & ~AccessFs.EXECUTE


FS_NAMES: dict[str, AccessFs] = {m.name.lower(): m for m in AccessFs if m.name is not None}
NET_NAMES: dict[str, AccessNet] = {m.name.lower(): m for m in AccessNet if m.name is not None}
SCOPE_NAMES: dict[str, Scope] = {m.name.lower(): m for m in Scope if m.name is not None}


class UnknownAccessName(LLSuperviseError):
    """An access-right or scope name that landlockconfig does not define."""


def _group_abi(name: str, default_abi: int) -> tuple[str, int] | None:
    """Split ``abi.X`` / ``vN.X`` group names into (X, abi); None for plain names."""
    prefix, dot, rest = name.partition(".")
    if not dot:
        return None
    if prefix == "abi":
        return rest, default_abi
    if prefix.startswith("v") and prefix[1:].isdigit() and int(prefix[1:]) >= 1:
        return rest, int(prefix[1:])
    raise UnknownAccessName(f"unknown access group {name!r}")


def parse_fs(names: Iterable[str], abi: int = LATEST_ABI) -> AccessFs:
    """Resolve landlockconfig filesystem names and groups (``abi.*``, ``vN.*``) to rights."""
    rights = NO_FS
    for name in names:
        group = _group_abi(name, abi)
        if group is None:
            if name not in FS_NAMES:
                raise UnknownAccessName(
                    f"unknown filesystem access {name!r} (expected one of "
                    f"{', '.join(FS_NAMES)}, abi.all, abi.read_execute, abi.read_write)"
                )
            rights |= FS_NAMES[name]
            continue
        kind, group_abi = group
        if kind == "all":
            rights |= fs_all(group_abi)
        elif kind == "read_execute":
            rights |= fs_read_execute(group_abi)
        elif kind == "read_write":
            rights |= fs_read_write(group_abi)
        else:
            raise UnknownAccessName(f"unknown filesystem access group {name!r}")
    return rights


def parse_net(names: Iterable[str], abi: int = LATEST_ABI) -> AccessNet:
    rights = NO_NET
    for name in names:
        group = _group_abi(name, abi)
        if group is None:
            if name not in NET_NAMES:
                raise UnknownAccessName(
                    f"unknown network access {name!r} (expected bind_tcp, connect_tcp or abi.all)"
                )
            rights |= NET_NAMES[name]
        elif group[0] == "all":
            rights |= net_all(group[1])
        else:
            raise UnknownAccessName(f"unknown network access group {name!r}")
    return rights


def parse_scopes(names: Iterable[str], abi: int = LATEST_ABI) -> Scope:
    scopes = NO_SCOPE
    for name in names:
        group = _group_abi(name, abi)
        if group is None:
            if name not in SCOPE_NAMES:
                raise UnknownAccessName(
                    f"unknown scope {name!r} (expected abstract_unix_socket, signal or abi.all)"
                )
            scopes |= SCOPE_NAMES[name]
        elif group[0] == "all":
            scopes |= scope_all(group[1])
        else:
            raise UnknownAccessName(f"unknown scope group {name!r}")
    return scopes


def names(flags: AccessFs | AccessNet | Scope) -> list[str]:
    """landlockconfig names of the bits set in ``flags``, in bit order."""
    return [m.name.lower() for m in type(flags) if m.name is not None and m in flags]
