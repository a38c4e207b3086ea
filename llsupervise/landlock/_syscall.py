"""Raw Landlock system calls through libc's ``syscall(2)``, with the kernel's structs and constants.

Nothing here masks or checks access rights; ``ruleset`` does that. The ``*_raw`` calls return
``(result, errno)`` for probing; the others raise :class:`LandlockError` carrying the errno.
"""

from __future__ import annotations

import ctypes
import enum
import errno as errnos
import functools
import os
from collections.abc import Iterable

from llsupervise.errors import LLSuperviseError
from llsupervise.libc import libc as _libc
from llsupervise.libc import syscall as _syscall


class LandlockError(LLSuperviseError):
    """A Landlock request failed; ``errno`` is the kernel's answer when there was one."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class LandlockUnsupported(LandlockError):
    """The running kernel (or this architecture) lacks what was asked for."""


# --- Constants: include/uapi/linux/landlock.h and prctl.h -------------------------------------

#: (landlock_create_ruleset, landlock_add_rule, landlock_restrict_self) per machine (uname).
#: Both use the asm-generic numbers; listing them keeps an unknown arch from guessing.
SYSCALL_NUMBERS: dict[str, tuple[int, int, int]] = {
    "x86_64": (444, 445, 446),
    "aarch64": (444, 445, 446),
}
CREATE_RULESET_VERSION = 1 << 0
CREATE_RULESET_ERRATA = 1 << 1
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39


class RestrictFlag(enum.IntFlag):
    """Flags of ``landlock_restrict_self``; which ones a kernel accepts is probed, not assumed."""

    LOG_SAME_EXEC_OFF = 1 << 0  # ABI 7
    LOG_NEW_EXEC_ON = 1 << 1  # ABI 7
    LOG_SUBDOMAINS_OFF = 1 << 2  # ABI 7
    TSYNC = 1 << 3  # newer than ABI 7


# --- Structs ------------------------------------------------------------------------------------


class RulesetAttr(ctypes.Structure):
    """``struct landlock_ruleset_attr``; older kernels get a prefix of it (8, 16 or 24 bytes)."""

    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


#: Bytes of ``RulesetAttr`` that cover fs only (ABI 1-3), fs+net (ABI 4-5), and all fields.
RULESET_ATTR_SIZE_FS = 8
RULESET_ATTR_SIZE_NET = 16
RULESET_ATTR_SIZE_SCOPED = 24


class PathBeneathAttr(ctypes.Structure):
    """``struct landlock_path_beneath_attr``: packed in the kernel header, hence 12 bytes."""

    _pack_ = 1
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


class NetPortAttr(ctypes.Structure):
    """``struct landlock_net_port_attr``; the port is in host byte order."""

    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("port", ctypes.c_uint64),
    )


# --- Calls --------------------------------------------------------------------------------------

_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def syscall_numbers(machine: str | None = None) -> tuple[int, int, int]:
    """Landlock syscall numbers for ``machine`` (default: this one)."""
    machine = os.uname().machine if machine is None else machine  # platform costs ~2 ms
    try:
        return SYSCALL_NUMBERS[machine]
    except KeyError:
        raise LandlockUnsupported(
            f"Landlock syscall numbers are unknown for architecture {machine!r} "
            f"(known: {', '.join(sorted(SYSCALL_NUMBERS))})"
        ) from None


@functools.cache
def _numbers() -> tuple[int, int, int]:
    return syscall_numbers()


def _call(index: int, *args: object) -> tuple[int, int]:
    nr = _numbers()[index]
    result = int(_syscall(ctypes.c_long(nr), *args))
    return result, (ctypes.get_errno() if result < 0 else 0)


def error(call: str, err: int, hint: str = "") -> LandlockError:
    """The exception for ``call`` failing with ``err``; ENOSYS/EOPNOTSUPP mean no Landlock."""
    name = errnos.errorcode.get(err, str(err))
    message = f"{call} failed: {name} ({os.strerror(err)})"
    if hint:
        message += f"; {hint}"
    if err in (errnos.ENOSYS, errnos.EOPNOTSUPP):
        return LandlockUnsupported(message + "; Landlock is not available", err)
    return LandlockError(message, err)


def create_ruleset_raw(attr: RulesetAttr | None, size: int, flags: int) -> tuple[int, int]:
    pointer = None if attr is None else ctypes.byref(attr)
    return _call(0, pointer, ctypes.c_size_t(size), ctypes.c_uint32(flags))


def create_ruleset(attr: RulesetAttr, size: int) -> int:
    """A new ruleset fd; the kernel always makes it O_CLOEXEC."""
    fd, err = create_ruleset_raw(attr, size, 0)
    if fd < 0:
        raise error("landlock_create_ruleset", err)
    return fd


def add_rule(ruleset_fd: int, rule_type: int, attr: PathBeneathAttr | NetPortAttr) -> None:
    args = (ctypes.c_int(ruleset_fd), ctypes.c_int(rule_type), ctypes.byref(attr))
    result, err = _call(1, *args, ctypes.c_uint32(0))
    if result < 0:
        raise error("landlock_add_rule", err)


def add_path_rules(ruleset_fd: int, rules: Iterable[tuple[int, int]]) -> None:
    """``add_rule`` for many path_beneath rules ``(parent_fd, allowed_access)``: one struct
    reused and no per-rule conversions, for rulesets of thousands of rules."""
    attr = PathBeneathAttr()
    pointer = ctypes.byref(attr)
    nr = ctypes.c_long(_numbers()[1])
    fd, kind, flags = ctypes.c_int(ruleset_fd), ctypes.c_int(RULE_PATH_BENEATH), ctypes.c_uint32(0)
    for parent_fd, access in rules:
        attr.parent_fd = parent_fd
        attr.allowed_access = access
        if _syscall(nr, fd, kind, pointer, flags) < 0:
            raise error("landlock_add_rule", ctypes.get_errno())


def restrict_self_raw(ruleset_fd: int, flags: int) -> tuple[int, int]:
    return _call(2, ctypes.c_int(ruleset_fd), ctypes.c_uint32(flags))


def restrict_self(ruleset_fd: int, flags: int) -> None:
    result, err = restrict_self_raw(ruleset_fd, flags)
    if result < 0:
        hint = ""
        if err == errnos.EPERM:
            hint = "the calling thread needs no_new_privs (set_no_new_privs()) or CAP_SYS_ADMIN"
        elif err == errnos.EINVAL:
            hint = f"flags {flags:#x} not accepted by this kernel"
        raise error("landlock_restrict_self", err, hint)


def prctl(option: int, arg2: int = 0) -> int:
    result = int(_prctl(option, arg2, 0, 0, 0))
    if result < 0:
        raise error(f"prctl({option})", ctypes.get_errno())
    return result
