"""Classic-BPF seccomp filters that hand chosen syscalls to a user-space supervisor."""

from __future__ import annotations

import errno
from collections.abc import Iterable

from llsupervise.seccomp.constants import (
    AUDIT_ARCH,
    BPF_JEQ_K,
    BPF_JSET_K,
    BPF_LD_W_ABS,
    BPF_RET_K,
    FOREIGN_SYSCALLS,
    SECCOMP_DATA_ARCH_OFFSET,
    SECCOMP_DATA_NR_OFFSET,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_USER_NOTIF,
    SOCK_FILTER,
    SYSCALLS,
    X32_SYSCALL_BIT,
    SeccompError,
    native_arch,
)

Instruction = tuple[int, int, int, int]

# Conditional jump offsets are 8 bits wide; every syscall test jumps over the ones after it.
_MAX_TRAPPED = 250


def resolve_syscalls(syscalls: Iterable[str], arch: str) -> list[int]:
    """Sorted, de-duplicated numbers of syscalls on arch.

    A name the arch lacks but another table (or FOREIGN_SYSCALLS) knows is skipped: the legacy
    forms simply do not exist on aarch64. A name no table knows is a mistake and raises.
    """
    table = SYSCALLS.get(arch)
    if table is None:
        raise SeccompError(errno.EINVAL, f"no syscall table for architecture {arch!r}")
    numbers: set[int] = set()
    for name in syscalls:
        if name in table:
            numbers.add(table[name])
        elif name not in FOREIGN_SYSCALLS and not any(name in t for t in SYSCALLS.values()):
            raise SeccompError(errno.EINVAL, f"unknown syscall {name!r}")
    return sorted(numbers)


def build_filter(syscalls: Iterable[str], arch: str | None = None) -> bytes:
    """Packed struct sock_filter array: notify on syscalls, allow the rest, kill foreign ABIs.

    A syscall made through another ABI (i386 via int 0x80, x32) would carry numbers this filter
    does not test, so such calls kill the process instead of slipping past the supervisor.
    """
    arch = arch or native_arch()
    numbers = resolve_syscalls(syscalls, arch)
    if len(numbers) > _MAX_TRAPPED:
        raise SeccompError(errno.E2BIG, f"{len(numbers)} syscalls exceed one filter's jump range")

    head: list[Instruction] = [(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH_OFFSET)]
    # Layout: head, one JEQ per syscall, then ALLOW, NOTIFY, KILL. Jump offsets are relative
    # to the next instruction, so they are filled in once the length of the head is known.
    checks = len(numbers)
    arch_check = len(head)
    head.append((BPF_JEQ_K, 0, 0, AUDIT_ARCH[arch]))  # jf patched below
    head.append((BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR_OFFSET))
    x32_check = None
    if arch == "x86_64":
        x32_check = len(head)
        head.append((BPF_JSET_K, 0, 0, X32_SYSCALL_BIT))  # jt patched below

    allow = len(head) + checks
    notify, kill = allow + 1, allow + 2
    code, _, _, k = head[arch_check]
    head[arch_check] = (code, 0, kill - arch_check - 1, k)
    if x32_check is not None:
        code, _, _, k = head[x32_check]
        head[x32_check] = (code, kill - x32_check - 1, 0, k)

    prog = list(head)
    for nr in numbers:
        prog.append((BPF_JEQ_K, notify - len(prog) - 1, 0, nr))
    prog += [
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
    ]
    return b"".join(SOCK_FILTER.pack(*insn) for insn in prog)


def disassemble(prog: bytes) -> list[Instruction]:
    """The (code, jt, jf, k) tuples of a packed program."""
    if len(prog) % SOCK_FILTER.size:
        raise SeccompError(errno.EINVAL, "program length is not a multiple of 8 bytes")
    return [(code, jt, jf, k) for code, jt, jf, k in SOCK_FILTER.iter_unpack(prog)]
