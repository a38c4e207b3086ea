"""Seccomp filter programs: their logic (run through a small BPF interpreter) and the kernel's
verdicts on them in child processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llsupervise.seccomp import (
    ALWAYS_REFUSED,
    AUDIT_ARCH,
    MEDIATED_FS_SYSCALLS,
    MPTCP_REFUSED,
    NET_SYSCALLS,
    SYSCALLS,
    UNADDRESSED_SENDS,
    UNIX_SYSCALLS,
    SeccompError,
    build_filter,
    disassemble,
    native_arch,
    resolve_syscalls,
    syscall_name,
)
from llsupervise.seccomp import constants as c
from llsupervise.seccomp.bpf import TIOCLINUX, TIOCSTI

CHILD = Path(__file__).with_name("seccomp_child.py")
ROOT = Path(__file__).resolve().parents[1]
ALLOW, NOTIFY, KILL = c.SECCOMP_RET_ALLOW, c.SECCOMP_RET_USER_NOTIF, c.SECCOMP_RET_KILL_PROCESS


def run_bpf(prog: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Evaluate the instructions build_filter emits against seccomp_data (nr, arch, args)."""
    data = {c.SECCOMP_DATA_NR_OFFSET: nr, c.SECCOMP_DATA_ARCH_OFFSET: arch}
    for i in range(6):
        arg = args[i] if i < len(args) else 0
        offset = c.SECCOMP_DATA_ARGS_OFFSET + 8 * i
        data[offset], data[offset + 4] = arg & 0xFFFFFFFF, arg >> 32  # little-endian halves
    insns = disassemble(prog)
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == c.BPF_LD_W_ABS:
            acc = data[k]
        elif code == c.BPF_RET_K:
            return k
        elif code in (c.BPF_JEQ_K, c.BPF_JGE_K, c.BPF_JSET_K):
            taken = {c.BPF_JEQ_K: acc == k, c.BPF_JGE_K: acc >= k, c.BPF_JSET_K: bool(acc & k)}
            pc += jt if taken[code] else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_program_shape_on_x86_64() -> None:
    insns = disassemble(build_filter(["openat", "mkdir", "openat"], arch="x86_64"))
    assert insns[0] == (c.BPF_LD_W_ABS, 0, 0, c.SECCOMP_DATA_ARCH_OFFSET)
    assert insns[1][0] == c.BPF_JEQ_K and insns[1][3] == AUDIT_ARCH["x86_64"]
    assert insns[2] == (c.BPF_LD_W_ABS, 0, 0, c.SECCOMP_DATA_NR_OFFSET)
    assert insns[3][0] == c.BPF_JSET_K and insns[3][3] == c.X32_SYSCALL_BIT
    trapped = insns[-5:-3]
    assert [insn[3] for insn in trapped] == [83, 257]  # de-duplicated, sorted, last
    assert all(insn[0] == c.BPF_JEQ_K for insn in trapped)
    assert insns[-3:] == [(c.BPF_RET_K, 0, 0, ret) for ret in (ALLOW, NOTIFY, KILL)]


def test_aarch64_has_no_x32_check_and_skips_legacy_names() -> None:
    prog = build_filter(["open", "mkdir", "openat", "socketcall"], arch="aarch64", refusals=())
    insns = disassemble(prog)
    assert all(code != c.BPF_JSET_K for code, *_ in insns)
    assert [k for code, _, _, k in insns if code == c.BPF_JEQ_K] == [AUDIT_ARCH["aarch64"], 56]


ERRNO = c.SECCOMP_RET_ERRNO
IOCTL_CMDS = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([TIOCSTI, TIOCLINUX, 0x5401]).flatmap(
        lambda low: st.integers(0, 2**32 - 1).map(lambda high: high << 32 | low)
    ),
)


@pytest.mark.parametrize("arch", sorted(SYSCALLS))
@given(
    trap=st.booleans(),
    cmd=IOCTL_CMDS,
    option=st.one_of(st.integers(0, 2**64 - 1), st.just(35 | 7 << 32), st.just(35)),
)
def test_terminal_and_identity_refusals(arch: str, trap: bool, cmd: int, option: int) -> None:
    """TIOCSTI, TIOCLINUX and PR_SET_MM fail with EPERM whatever the high bits say, trapped
    or not; other commands and options are untouched."""
    names = ["ioctl", "prctl"] if trap else ["openat"]
    prog = build_filter(names, arch=arch)
    table, audit = SYSCALLS[arch], AUDIT_ARCH[arch]
    otherwise = NOTIFY if trap else ALLOW
    ioctl = run_bpf(prog, table["ioctl"], audit, (1, cmd, 0))
    assert ioctl == (ERRNO | errno.EPERM if cmd & 0xFFFFFFFF in (TIOCSTI, TIOCLINUX) else otherwise)
    prctl = run_bpf(prog, table["prctl"], audit, (option, 6, 0))
    assert prctl == (ERRNO | errno.EPERM if option & 0xFFFFFFFF == 35 else otherwise)
    # The command as an argument of another syscall means nothing.
    assert run_bpf(prog, table["socket"], audit, (1, TIOCSTI, 0)) == ALLOW


@pytest.mark.parametrize("arch", sorted(SYSCALLS))
@given(
    family=st.sampled_from([1, 2, 10, 16, 2 | 1 << 40]),
    kind=st.integers(0, 2**64 - 1),
    protocol=st.sampled_from([0, 6, 262, 262 | 1 << 33, 263]),
    handled=st.booleans(),
)
def test_mptcp_refusal(arch: str, family: int, kind: int, protocol: int, handled: bool) -> None:
    refusals = (*ALWAYS_REFUSED, *MPTCP_REFUSED) if handled else ALWAYS_REFUSED
    prog = build_filter(["connect"], arch=arch, refusals=refusals)
    table, audit = SYSCALLS[arch], AUDIT_ARCH[arch]
    verdict = run_bpf(prog, table["socket"], audit, (family, kind, protocol))
    inet = family & 0xFFFFFFFF in (2, 10)
    refused = handled and inet and protocol & 0xFFFFFFFF == 262
    # Handed to the supervisor, which answers EPROTONOSUPPORT and logs why.
    assert verdict == (NOTIFY if refused else ALLOW)
    uring = run_bpf(prog, table["io_uring_setup"], audit, (4, kind))
    assert uring == (ERRNO | errno.EPERM if handled else ALLOW)
    assert run_bpf(prog, table["connect"], audit, (3, 0, 16)) == NOTIFY


@pytest.mark.parametrize("arch", sorted(SYSCALLS))
@given(
    address=st.one_of(st.just(0), st.just(1 << 32), st.just(1), st.integers(0, 2**64 - 1)),
    passing=st.booleans(),
)
def test_sendto_without_an_address_passes(arch: str, address: int, passing: bool) -> None:
    """All 64 bits of the pointer are compared: one with a zero low half is an address."""
    prog = build_filter(UNIX_SYSCALLS, arch=arch, passing=UNADDRESSED_SENDS if passing else ())
    table, audit = SYSCALLS[arch], AUDIT_ARCH[arch]
    verdict = run_bpf(prog, table["sendto"], audit, (3, 0x1000, 5, 0, address, 16))
    assert verdict == (ALLOW if passing and address == 0 else NOTIFY)
    # The rest of what connect_unix traps is trapped whatever its arguments.
    for name in ("connect", "sendmsg", "sendmmsg"):
        assert run_bpf(prog, table[name], audit, (3, 0, 0, 0, 0, 0)) == NOTIFY


@pytest.mark.kernel
@pytest.mark.parametrize("passing", [True, False])
def test_unaddressed_sends_reach_the_kernel_and_addressed_ones_are_trapped(
    tmp_path: Path, passing: bool
) -> None:
    config = {"path": str(tmp_path / "d"), "syscalls": list(UNIX_SYSCALLS),
              "pass_unaddressed_sends": passing}  # fmt: skip
    done = run_child("sends", config, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    trapped = {"errno": errno.ENOSYS}  # no listener left to answer
    assert report["send"] == (1 if passing else trapped)
    assert report["received"] == ("x" if passing else {"errno": errno.EAGAIN})
    assert report["sendto_path"] == trapped
    assert report["sendmsg"] == trapped


def test_unknown_names_and_arches_raise() -> None:
    with pytest.raises(SeccompError) as info:
        build_filter(["openat", "opne"])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(SeccompError):
        build_filter(["openat"], arch="mips")


@pytest.mark.parametrize("arch", sorted(SYSCALLS))
@given(
    names=st.sets(st.sampled_from(sorted({n for t in SYSCALLS.values() for n in t}))),
    nr=st.integers(0, 0xFFFFFFFF),
)
def test_verdicts(arch: str, names: set[str], nr: int) -> None:
    prog = build_filter(names, arch=arch)
    trapped = set(resolve_syscalls(names, arch))
    other_arch = next(v for a, v in AUDIT_ARCH.items() if a != arch)
    assert run_bpf(prog, nr, other_arch) == KILL
    if arch == "x86_64" and nr & c.X32_SYSCALL_BIT:
        expected = KILL
    else:
        expected = NOTIFY if nr in trapped else ALLOW
    assert run_bpf(prog, nr, AUDIT_ARCH[arch]) == expected
    for number in trapped:
        assert run_bpf(prog, number, AUDIT_ARCH[arch]) == NOTIFY


def test_tables() -> None:
    x86, arm = SYSCALLS["x86_64"], SYSCALLS["aarch64"]
    assert x86["mkdir"] == 83 and x86["seccomp"] == 317 and arm["seccomp"] == 277
    assert set(arm) < set(x86) and "open" not in arm and "renameat" in arm
    assert set(MEDIATED_FS_SYSCALLS) <= set(x86)
    assert not {"ftruncate", "execve", "execveat"} & set(MEDIATED_FS_SYSCALLS)
    assert {"ftruncate", "execve", "execveat"} <= set(arm)
    assert set(NET_SYSCALLS) == {"bind", "connect"}
    assert syscall_name("x86_64", 257) == "openat"
    assert syscall_name("aarch64", 56) == "openat"
    assert syscall_name("x86_64", 100000) is None
    assert native_arch() in SYSCALLS


def test_ioctl_numbers() -> None:
    assert c.SECCOMP_IOCTL_NOTIF_RECV == 0xC0502100
    assert c.SECCOMP_IOCTL_NOTIF_SEND == 0xC0182101
    assert c.SECCOMP_IOCTL_NOTIF_ID_VALID == 0x40082102
    assert c.SECCOMP_IOCTL_NOTIF_ADDFD == 0x40182103
    assert c.SECCOMP_IOCTL_NOTIF_SET_FLAGS == 0x40082104


def run_child(mode: str, config: dict[str, Any], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(CHILD), mode, json.dumps(config)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.kernel
@pytest.mark.parametrize("wait_killable", [True, False])
def test_fail_closed_without_listener(tmp_path: Path, wait_killable: bool) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    config = {"dir": str(tmp_path / "d"), "file": str(target), "wait_killable": wait_killable}
    done = run_child("closed", config, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout itself proves write() still works
    assert report["listener_cloexec"] is True
    assert report["mkdir"] == {"errno": errno.ENOSYS}
    assert report["open"] == {"errno": errno.ENOSYS}
    assert report["getpid_same"] is True
    assert not (tmp_path / "d").exists()


@pytest.mark.kernel
@pytest.mark.skipif(native_arch() != "x86_64", reason="x32 exists only on x86_64")
def test_x32_syscall_kills(tmp_path: Path) -> None:
    done = run_child("x32", {"syscalls": ["mkdir"]}, tmp_path)
    assert done.returncode == -signal.SIGSYS, (done.returncode, done.stdout, done.stderr)


@pytest.mark.kernel
@pytest.mark.skipif(native_arch() != "x86_64", reason="int 0x80 exists only on x86")
def test_foreign_arch_syscall_kills(tmp_path: Path) -> None:
    unfiltered = run_child("int80", {"filter": False}, tmp_path)
    if unfiltered.returncode != 0:
        pytest.skip(f"kernel without i386 emulation ({unfiltered.returncode})")
    report = json.loads(unfiltered.stdout)
    assert report["ret"] == report["pid"]  # the probe really made an i386 getpid
    done = run_child("int80", {"filter": True, "syscalls": ["mkdir"]}, tmp_path)
    assert done.returncode == -signal.SIGSYS, (done.returncode, done.stdout, done.stderr)
