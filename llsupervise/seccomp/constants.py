"""Every number the seccomp bindings use: struct layouts, ioctls, flags, architectures, syscalls.

Values are the kernel's uapi (linux/seccomp.h, linux/filter.h, linux/audit.h, the per-arch
unistd tables). Kept in one table so a kernel-side change is a one-line edit. The package's error
types live here too because this is the one module all the others import.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Final

from llsupervise.errors import LLSuperviseError


class SeccompError(LLSuperviseError):
    """A seccomp operation failed; errno says why (0 when no system call was involved)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, message)  # both in args, so the error pickles
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        if self.errno:
            return f"{self.message}: [Errno {self.errno}] {os.strerror(self.errno)}"
        return self.message


class NotificationGone(SeccompError):
    """The notification no longer exists: its task died or its syscall was interrupted.

    Nobody is waiting for an answer any more; callers drop it and carry on.
    """


class SuperviseesGone(SeccompError):
    """Every task that used the filter is gone: the listener will never deliver again."""


# --- seccomp(2) operations and filter flags -------------------------------------------------

SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_GET_NOTIF_SIZES: Final = 3

SECCOMP_FILTER_FLAG_NEW_LISTENER: Final = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5

# Filter return actions (the high 16 bits select the action).
SECCOMP_RET_KILL_PROCESS: Final = 0x80000000
SECCOMP_RET_USER_NOTIF: Final = 0x7FC00000
SECCOMP_RET_ALLOW: Final = 0x7FFF0000
#: The low 16 bits carry the errno the call fails with.
SECCOMP_RET_ERRNO: Final = 0x00050000

# Flags of struct seccomp_notif_resp and struct seccomp_notif_addfd.
SECCOMP_USER_NOTIF_FLAG_CONTINUE: Final = 1 << 0
SECCOMP_ADDFD_FLAG_SETFD: Final = 1 << 0
SECCOMP_ADDFD_FLAG_SEND: Final = 1 << 1
# Argument of SECCOMP_IOCTL_NOTIF_SET_FLAGS.
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: Final = 1 << 0

# --- struct layouts (little-endian on both supported architectures) -------------------------

#: struct sock_filter: code, jt, jf, k.
SOCK_FILTER: Final = struct.Struct("<HBBI")
#: struct sock_fprog: len, (padding), filter pointer.
SOCK_FPROG: Final = struct.Struct("<H6xQ")
#: struct seccomp_notif: id, pid, flags, then seccomp_data (nr, arch, instruction_pointer, args[6]).
SECCOMP_NOTIF: Final = struct.Struct("<QIIiIQ6Q")
#: struct seccomp_notif_resp: id, val, error, flags.
SECCOMP_NOTIF_RESP: Final = struct.Struct("<QqiI")
#: struct seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags.
SECCOMP_NOTIF_ADDFD: Final = struct.Struct("<QIIII")
#: struct seccomp_notif_sizes: seccomp_notif, seccomp_notif_resp, seccomp_data.
SECCOMP_NOTIF_SIZES: Final = struct.Struct("<HHH")
#: The u64 notification id passed by pointer to NOTIF_ID_VALID.
NOTIF_ID: Final = struct.Struct("<Q")

# Offsets into struct seccomp_data, as a BPF program sees it.
SECCOMP_DATA_NR_OFFSET: Final = 0
SECCOMP_DATA_ARCH_OFFSET: Final = 4
SECCOMP_DATA_SIZE: Final = 64
#: args[i] is at ARGS_OFFSET + 8 * i; its low 32 bits come first (both architectures are
#: little-endian).
SECCOMP_DATA_ARGS_OFFSET: Final = 16

# --- ioctls on the listener fd ('!' type, asm-generic encoding on x86_64 and aarch64) -------

_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


SECCOMP_IOCTL_NOTIF_RECV: Final = _ioc(_IOC_READ | _IOC_WRITE, 0, SECCOMP_NOTIF.size)
SECCOMP_IOCTL_NOTIF_SEND: Final = _ioc(_IOC_READ | _IOC_WRITE, 1, SECCOMP_NOTIF_RESP.size)
SECCOMP_IOCTL_NOTIF_ID_VALID: Final = _ioc(_IOC_WRITE, 2, NOTIF_ID.size)
SECCOMP_IOCTL_NOTIF_ADDFD: Final = _ioc(_IOC_WRITE, 3, SECCOMP_NOTIF_ADDFD.size)
SECCOMP_IOCTL_NOTIF_SET_FLAGS: Final = _ioc(_IOC_WRITE, 4, 8)

# --- classic BPF opcodes (linux/filter.h) ---------------------------------------------------

BPF_LD_W_ABS: Final = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K: Final = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K: Final = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K: Final = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K: Final = 0x06 | 0x00  # BPF_RET | BPF_K
BPF_MAXINSNS: Final = 4096

# --- architectures --------------------------------------------------------------------------

#: AUDIT_ARCH_* value a filter sees in seccomp_data.arch, per architecture name.
AUDIT_ARCH: Final[dict[str, int]] = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

#: x32 syscalls arrive with arch x86_64 and this bit set in nr.
X32_SYSCALL_BIT: Final = 0x40000000

_MACHINE_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

# Numbers from arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
# (aarch64 has only the *at forms, plus renameat). Neither architecture has socketcall.
_X86_64 = {
    "open": 2,
    "openat": 257,
    "openat2": 437,
    "creat": 85,
    "mkdir": 83,
    "mkdirat": 258,
    "mknod": 133,
    "mknodat": 259,
    "unlink": 87,
    "unlinkat": 263,
    "rmdir": 84,
    "rename": 82,
    "renameat": 264,
    "renameat2": 316,
    "link": 86,
    "linkat": 265,
    "symlink": 88,
    "symlinkat": 266,
    "truncate": 76,
    "ftruncate": 77,
    "execve": 59,
    "execveat": 322,
    "bind": 49,
    "connect": 42,
    "sendto": 44,
    "sendmsg": 46,
    "sendmmsg": 307,
    "seccomp": 317,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "chdir": 80,
    "fchdir": 81,
    "umask": 95,
    "chroot": 161,
    "pivot_root": 155,
    "unshare": 272,
    "setns": 308,
    "setuid": 105,
    "setgid": 106,
    "setreuid": 113,
    "setregid": 114,
    "setgroups": 116,
    "setresuid": 117,
    "setresgid": 119,
    "setfsuid": 122,
    "setfsgid": 123,
    "capset": 126,
    "ioctl": 16,
    "prctl": 157,
    "socket": 41,
    "io_uring_setup": 425,
    "landlock_restrict_self": 446,
}
_AARCH64 = {
    "openat": 56,
    "openat2": 437,
    "mkdirat": 34,
    "mknodat": 33,
    "unlinkat": 35,
    "renameat": 38,
    "renameat2": 276,
    "linkat": 37,
    "symlinkat": 36,
    "truncate": 45,
    "ftruncate": 46,
    "execve": 221,
    "execveat": 281,
    "bind": 200,
    "connect": 203,
    "sendto": 206,
    "sendmsg": 211,
    "sendmmsg": 269,
    "seccomp": 277,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "chdir": 49,
    "fchdir": 50,
    "umask": 166,
    "chroot": 51,
    "pivot_root": 41,
    "unshare": 97,
    "setns": 268,
    "capset": 91,
    "setregid": 143,
    "setgid": 144,
    "setreuid": 145,
    "setuid": 146,
    "setresuid": 147,
    "setresgid": 149,
    "setfsuid": 151,
    "setfsgid": 152,
    "setgroups": 159,
    "ioctl": 29,
    "prctl": 167,
    "socket": 198,
    "io_uring_setup": 425,
    "landlock_restrict_self": 446,
}

#: Architecture name -> {syscall name -> number}.
SYSCALLS: Final[dict[str, dict[str, int]]] = {"x86_64": _X86_64, "aarch64": _AARCH64}

#: Real syscall names that none of the supported architectures has (32-bit multiplexers).
#: Filters skip them instead of rejecting them as typos.
FOREIGN_SYSCALLS: Final = frozenset({"socketcall"})

_BY_NUMBER = {arch: {nr: name for name, nr in table.items()} for arch, table in SYSCALLS.items()}

#: Filesystem syscalls Landlock mediates and the supervisor traps. ftruncate is left out (it acts
#: on an fd whose rights were fixed at open) and so are execve/execveat (exec cannot be granted
#: while the program runs).
MEDIATED_FS_SYSCALLS: Final = (
    "open",
    "openat",
    "openat2",
    "creat",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "unlink",
    "unlinkat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "truncate",
)

#: Syscalls that change a thread's credentials: what the kernel checks its access with.
CREDENTIAL_SYSCALLS: Final = (
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
    "setfsgid", "setgroups", "capset",
)  # fmt: skip

#: Syscalls that change how a task's relative paths resolve (cwd, root, namespaces), which
#: mode its new files get (umask) or with whose credentials it acts: the supervisor forgets
#: what it cached about the task.
CONTEXT_SYSCALLS: Final = (
    "chdir", "fchdir", "chroot", "pivot_root", "unshare", "setns", "umask",
    *CREDENTIAL_SYSCALLS,
)  # fmt: skip

#: A Landlock layer the program adds to itself: from then on nothing is performed for it (the
#: supervisor acts with its own domain, which knows nothing of that layer).
SELF_RESTRICT_SYSCALLS: Final = ("landlock_restrict_self",)

#: Network syscalls Landlock mediates (TCP bind/connect).
NET_SYSCALLS: Final = ("bind", "connect")
#: What the network mediator answers (socketcall exists only on other architectures).
NET_CALLS: Final = (*NET_SYSCALLS, "socketcall")
#: What reaches a pathname UNIX socket by its name (the supervisor's connect_unix right).
UNIX_SYSCALLS: Final = ("connect", "sendto", "sendmsg", "sendmmsg")


def native_arch() -> str:
    """Name of the running kernel's architecture, as used as a key of SYSCALLS."""
    machine = os.uname().machine  # platform.machine() says the same: its import costs ~2 ms
    arch = _MACHINE_ALIASES.get(machine.lower())
    if arch is None:
        raise SeccompError(errno.ENOSYS, f"no syscall table for architecture {machine!r}")
    return arch


def arch_from_audit(audit_arch: int) -> str | None:
    """Architecture name for an AUDIT_ARCH_* value (seccomp_data.arch), None if unknown."""
    for name, value in AUDIT_ARCH.items():
        if value == audit_arch:
            return name
    return None


def syscall_name(arch: str, nr: int) -> str | None:
    """Name of syscall number nr on arch, None if it is not in our table."""
    return _BY_NUMBER.get(arch, {}).get(nr)
