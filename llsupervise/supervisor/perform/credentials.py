"""With whose credentials the supervisor acts for a thread.

A broker performs a request with its own thread's credentials, the supervisor's. That is the
child's own standing only while the credentials its access checks use (fs uid and gid,
supplementary groups, effective capabilities) are the supervisor's. A child that gave some
up (a daemon that drops root) would otherwise have the supervisor open root-only files for
it. So such a request is performed with the child's credentials: the performing thread takes
them (fs ids, groups and capabilities are per thread in the kernel) for that operation
alone. Where it cannot (a supervisor that may not change ids), the kernel judges the request
with the child's credentials and the static layer. (Network grants need only capabilities,
which their performing threads lower to the child's: see netpool.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from typing import Final

from llsupervise.libc import libc as _libc
from llsupervise.libc import syscall as _syscall
from llsupervise.seccomp import SYSCALLS, native_arch
from llsupervise.supervisor.perform.procfs import read_status

#: fs uid, fs gid, supplementary groups (sorted), effective capabilities, as in
#: /proc/TID/status.
Credentials = tuple[bytes, bytes, bytes, bytes]

_CAPABILITY_VERSION_3: Final = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class CredentialsError(OSError):
    """The calling thread could not take, or give back, a set of credentials."""


def access_credentials(fields: dict[bytes, bytes]) -> Credentials | None:
    """From /proc/TID/status fields; None if any is missing (the thread is gone)."""
    try:
        fsuid = fields[b"Uid"].split()[3]
        fsgid = fields[b"Gid"].split()[3]
        groups = b" ".join(sorted(fields[b"Groups"].split(), key=int))
        return fsuid, fsgid, groups, fields[b"CapEff"]
    except (KeyError, IndexError, ValueError):
        return None


def own_credentials() -> Credentials | None:
    """The supervisor's, which every thread of it keeps. Read it before restricting a thread:
    a restricted thread may not be allowed to read /proc at all."""
    return access_credentials(read_status(os.getpid()))


def _checked(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise CredentialsError(err, f"{what}: {os.strerror(err)}")


def _capabilities() -> tuple[_CapHeader, ctypes.Array[_CapData]]:
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _checked(_libc.capget(ctypes.byref(header), data), "capget")
    return header, data


def effective_capabilities() -> int:
    data = _capabilities()[1]
    return int(data[0].effective | data[1].effective << 32)


def set_effective_capabilities(effective: int) -> None:
    """The calling thread's (only its: capset acts on the caller) effective set, within its
    permitted set."""
    header, data = _capabilities()
    permitted = data[0].permitted | data[1].permitted << 32
    effective &= permitted
    data[0].effective = effective & 0xFFFFFFFF
    data[1].effective = effective >> 32
    _checked(_libc.capset(ctypes.byref(header), data), "capset")


def lower_capabilities(keep: int) -> None:
    """Drop from the calling thread's effective set every capability not in ``keep``."""
    effective = effective_capabilities()
    if effective & keep != effective:
        set_effective_capabilities(effective & keep)


def _fs_id(name: str, value: int) -> None:
    """setfsuid/setfsgid (per thread); they say nothing of failure: read back to know."""
    nr = SYSCALLS[native_arch()][name]
    _syscall(nr, ctypes.c_long(value))  # ids go up to 2**32 - 2: wider than a C int
    if _syscall(nr, ctypes.c_long(-1)) != value:
        raise CredentialsError(1, f"{name}({value}) refused")


def _set_groups(groups: list[int]) -> None:
    # The raw syscall: glibc's setgroups changes every thread of the process.
    array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    _checked(_syscall(SYSCALLS[native_arch()]["setgroups"], len(groups), array), "setgroups")


@contextlib.contextmanager
def acting_as(theirs: Credentials) -> Iterator[None]:
    """The calling thread, and only it, accesses files with ``theirs`` inside the block.

    CredentialsError when they cannot be taken (nothing is then left changed). Giving ours
    back cannot fail while we hold the capabilities we had; if it ever did, the thread must
    not serve again, and the error says so."""
    fsuid, fsgid, groups, capeff = theirs
    our_groups = os.getgroups()
    our_fsuid, our_fsgid = os.geteuid(), os.getegid()
    our_effective = effective_capabilities()
    try:
        _set_groups([int(g) for g in groups.split()])
        _fs_id("setfsgid", int(fsgid))
        _fs_id("setfsuid", int(fsuid))
        # After the ids: changing the fs uid from 0 clears the file capabilities it implies.
        set_effective_capabilities(int(capeff, 16))
    except BaseException:
        _give_back(our_fsuid, our_fsgid, our_groups, our_effective)
        raise
    try:
        yield
    finally:
        _give_back(our_fsuid, our_fsgid, our_groups, our_effective)


def take_for_good(theirs: Credentials) -> None:
    """The calling thread accesses files with ``theirs`` from now on: for a thread that
    then gives up the capabilities it would need to give them back (CredentialsError when
    they cannot be taken)."""
    fsuid, fsgid, groups, capeff = theirs
    _set_groups([int(g) for g in groups.split()])
    _fs_id("setfsgid", int(fsgid))
    _fs_id("setfsuid", int(fsuid))
    set_effective_capabilities(int(capeff, 16))


def _give_back(fsuid: int, fsgid: int, groups: list[int], effective: int) -> None:
    try:
        set_effective_capabilities(effective)  # first: setting ids and groups needs them
        _fs_id("setfsuid", fsuid)
        _fs_id("setfsgid", fsgid)
        _set_groups(groups)
    except OSError as exc:
        raise SystemExit(f"llsupervise: a broker thread kept a child's credentials: {exc}") from exc
