"""Classic-BPF seccomp filters that hand chosen syscalls to a user-space supervisor."""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence

from msgspec import Struct

from llsupervise.seccomp.constants import (
    AUDIT_ARCH,
    BPF_JEQ_K,
    BPF_JSET_K,
    BPF_LD_W_ABS,
    BPF_RET_K,
    FOREIGN_SYSCALLS,
    SECCOMP_DATA_ARCH_OFFSET,
    SECCOMP_DATA_ARGS_OFFSET,
    SECCOMP_DATA_NR_OFFSET,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
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

# Terminal ioctls that push input or act on the console (asm-generic/ioctls.h, same numbers on
# x86_64 and aarch64).
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
PR_SET_MM = 35
AF_INET, AF_INET6 = 2, 10
IPPROTO_MPTCP = 262


class ArgIs(Struct, frozen=True):
    """Argument ``index`` is one of ``values``, compared on its low 32 bits only: the kernel
    reads these arguments as ``int`` / ``unsigned int``, so high bits a program sets are
    ignored by the call and must be ignored by the test too, or they would slip past it."""

    index: int
    values: tuple[int, ...]


class Refusal(Struct, frozen=True):
    """A call that fails with ``errno`` when every condition holds, whatever else the filter
    does with that syscall.

    ``reported``: the filter hands the call to the supervisor (USER_NOTIF) instead, which
    answers ``errno`` and says why in its log: for a refusal a person must hear about."""

    syscall: str
    when: tuple[ArgIs, ...]
    errno: int
    reported: bool = False


#: Always refused: typing into a terminal (TIOCSTI, and TIOCLINUX's paste), and repointing
#: /proc/PID/exe and the other identity fields of the mm (PR_SET_MM, root only).
ALWAYS_REFUSED: tuple[Refusal, ...] = (
    Refusal("ioctl", (ArgIs(1, (TIOCSTI, TIOCLINUX)),), errno.EPERM),
    Refusal("prctl", (ArgIs(0, (PR_SET_MM,)),), errno.EPERM),
)

#: Refused while TCP bind/connect is handled: Landlock does not mediate MPTCP sockets. The
#: errno is what a kernel without MPTCP answers, so programs fall back to plain TCP; the
#: supervisor answers it (``reported``) and logs the refusal, or the person would never learn
#: why the program's socket failed. io_uring
#: makes sockets without the socket syscall (IORING_OP_SOCKET), so it is refused too, with the
#: errno of a kernel whose io_uring is switched off (``kernel.io_uring_disabled``).
IO_URING_REFUSED: tuple[Refusal, ...] = (Refusal("io_uring_setup", (), errno.EPERM),)
MPTCP_REFUSED: tuple[Refusal, ...] = (
    Refusal(
        "socket",
        (ArgIs(0, (AF_INET, AF_INET6)), ArgIs(2, (IPPROTO_MPTCP,))),
        errno.EPROTONOSUPPORT,
        reported=True,
    ),
    *IO_URING_REFUSED,
)


class PassWhenNull(Struct, frozen=True):
    """A trapped call let through when its argument ``index`` (a pointer: all 64 bits are
    compared) is NULL: what only that argument could make worth judging is absent."""

    syscall: str
    index: int


#: sendto() with no address sends on the socket's connection (glibc's send() is this call),
#: as write() does: nothing to judge. Trapped while ``connect_unix`` is handled, it would
#: otherwise cost every send of every socket a round trip to the supervisor, which would
#: then perform it. With an address, it is still judged (a datagram to a path).
UNADDRESSED_SENDS: tuple[PassWhenNull, ...] = (PassWhenNull("sendto", 4),)


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


def _refusal_block(refusal: Refusal, nr: int) -> list[Instruction]:
    """Instructions that return the refusal's errno when the call (accumulator: nr) matches,
    and otherwise leave nr in the accumulator and fall through to what follows.

    Layout: JEQ nr; per condition LD arg, one JEQ per value; RET ERRNO; LD nr (the miss)."""
    length = 1 + sum(1 + len(cond.values) for cond in refusal.when) + 2
    ret, miss = length - 2, length - 1
    block: list[Instruction] = [(BPF_JEQ_K, 0, length - 1, nr)]  # not this syscall: past it all
    for cond in refusal.when:
        if not cond.values:
            raise SeccompError(errno.EINVAL, f"{refusal.syscall}: a condition has no values")
        block.append((BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARGS_OFFSET + 8 * cond.index))
        next_cond = len(block) + len(cond.values)
        for value in cond.values[:-1]:
            block.append((BPF_JEQ_K, next_cond - len(block) - 1, 0, value & 0xFFFFFFFF))
        block.append((BPF_JEQ_K, 0, miss - len(block) - 1, cond.values[-1] & 0xFFFFFFFF))
    assert len(block) == ret
    action = SECCOMP_RET_USER_NOTIF if refusal.reported else SECCOMP_RET_ERRNO | refusal.errno
    block.append((BPF_RET_K, 0, 0, action))
    block.append((BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR_OFFSET))
    return block


def _null_pass_block(passing: PassWhenNull, nr: int) -> list[Instruction]:
    """Instructions that allow the call (accumulator: nr) when its argument is NULL, and
    otherwise leave nr in the accumulator and fall through.

    Layout: JEQ nr; LD low half; JEQ 0; LD high half; JEQ 0; RET ALLOW; LD nr (the miss)."""
    offset = SECCOMP_DATA_ARGS_OFFSET + 8 * passing.index
    return [
        (BPF_JEQ_K, 0, 6, nr),  # not this syscall: past it all
        (BPF_LD_W_ABS, 0, 0, offset),  # little-endian: the low half first
        (BPF_JEQ_K, 0, 3, 0),
        (BPF_LD_W_ABS, 0, 0, offset + 4),
        (BPF_JEQ_K, 0, 1, 0),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR_OFFSET),
    ]


def build_filter(
    syscalls: Iterable[str],
    arch: str | None = None,
    refusals: Sequence[Refusal] = ALWAYS_REFUSED,
    passing: Sequence[PassWhenNull] = (),
) -> bytes:
    """Packed struct sock_filter array: refuse ``refusals``, let ``passing`` through, notify
    on syscalls, allow the rest, kill foreign ABIs.

    A syscall made through another ABI (i386 via int 0x80, x32) would carry numbers this filter
    does not test, so such calls kill the process instead of slipping past the supervisor.
    Refusals come before the notifications: a refused call is never asked about.
    """
    arch = arch or native_arch()
    numbers = resolve_syscalls(syscalls, arch)
    if len(numbers) > _MAX_TRAPPED:
        raise SeccompError(errno.E2BIG, f"{len(numbers)} syscalls exceed one filter's jump range")

    head: list[Instruction] = [(BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH_OFFSET)]
    # Layout: head (ending in the refusals), one JEQ per syscall, then ALLOW, NOTIFY, KILL.
    # Jump offsets are relative to the next instruction, so they are filled in once the
    # length of the head is known.
    checks = len(numbers)
    arch_check = len(head)
    head.append((BPF_JEQ_K, 0, 0, AUDIT_ARCH[arch]))  # jf patched below
    head.append((BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR_OFFSET))
    x32_check = None
    if arch == "x86_64":
        x32_check = len(head)
        head.append((BPF_JSET_K, 0, 0, X32_SYSCALL_BIT))  # jt patched below

    for refusal in refusals:
        (refused_nr,) = resolve_syscalls([refusal.syscall], arch)
        head += _refusal_block(refusal, refused_nr)
    for allowance in passing:
        (passing_nr,) = resolve_syscalls([allowance.syscall], arch)
        head += _null_pass_block(allowance, passing_nr)

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
    if any(jt > 255 or jf > 255 for _, jt, jf, _ in prog):
        raise SeccompError(errno.E2BIG, f"{len(numbers)} syscalls exceed one filter's jump range")
    return b"".join(SOCK_FILTER.pack(*insn) for insn in prog)


def disassemble(prog: bytes) -> list[Instruction]:
    """The (code, jt, jf, k) tuples of a packed program."""
    if len(prog) % SOCK_FILTER.size:
        raise SeccompError(errno.EINVAL, "program length is not a multiple of 8 bytes")
    return [(code, jt, jf, k) for code, jt, jf, k in SOCK_FILTER.iter_unpack(prog)]
