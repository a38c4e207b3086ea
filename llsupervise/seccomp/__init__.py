"""Typed bindings for seccomp user notification: filters, listeners, the trapped task's memory."""

from llsupervise.seccomp.bpf import (
    ALWAYS_REFUSED,
    IO_URING_REFUSED,
    MPTCP_REFUSED,
    ArgIs,
    Refusal,
    build_filter,
    disassemble,
    resolve_syscalls,
)
from llsupervise.seccomp.constants import (
    AUDIT_ARCH,
    CONTEXT_SYSCALLS,
    MEDIATED_FS_SYSCALLS,
    NET_SYSCALLS,
    SYSCALLS,
    UNIX_SYSCALLS,
    NotificationGone,
    SeccompError,
    SuperviseesGone,
    arch_from_audit,
    native_arch,
    syscall_name,
)
from llsupervise.seccomp.memory import PATH_MAX, MemoryReadError, ProcessMemory
from llsupervise.seccomp.notify import Listener, Notification, install_filter, notif_sizes

__all__ = [
    "ALWAYS_REFUSED",
    "AUDIT_ARCH",
    "CONTEXT_SYSCALLS",
    "IO_URING_REFUSED",
    "MEDIATED_FS_SYSCALLS",
    "MPTCP_REFUSED",
    "NET_SYSCALLS",
    "PATH_MAX",
    "SYSCALLS",
    "UNIX_SYSCALLS",
    "ArgIs",
    "Listener",
    "MemoryReadError",
    "Notification",
    "NotificationGone",
    "ProcessMemory",
    "Refusal",
    "SeccompError",
    "SuperviseesGone",
    "arch_from_audit",
    "build_filter",
    "disassemble",
    "install_filter",
    "native_arch",
    "notif_sizes",
    "resolve_syscalls",
    "syscall_name",
]
