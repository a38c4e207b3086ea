"""Attacks on the compiled loop's opener and its exec answers (the readers' opener, the exec
ring Python drains through ``ThreadContexts.catch_up``), made by the supervised program.

The program runs as root, as the supervisor does, so its credentials are found to be ours and
the loop is vouched for it (it performs granted opens with the supervisor's own standing).
It then takes CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH out of its bounding set (prctl, not
trapped: its effective set, and so its credentials, stay ours) and execs: the exec'd program
has neither capability, so a granted file of another user (mode 0600) must be refused to it.
What was kept for it from before the exec (a memory reader vouched for, cached credentials)
must not serve it after. A process sharing its old address space (clone(CLONE_VM), sleeping)
keeps that address space alive, so a reader of it keeps reading; the page at ``A`` holds the
path in both address spaces.

The exec'd program is a tiny static binary (no libc, built here with cc): its first trapped
call is the open under test, and it writes one line per attempt to fd 9.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from catch_ups import record_catch_ups
from supervised import policy_text
from test_compiled_grants import Drained, rw, someone_elses

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel

A = 0x6F0000000000
B = 0x6E0000000000

#: openat(AT_FDCWD, A, O_RDONLY|O_CREAT) (Python's: a creation is never the loop's), then
#: openat(A) (the loop's), openat(B) (no mapping there in the old address space: what is
#: kept goes stale and is dropped), openat(A) again. One line each on fd 9.
STAGE2_C = r"""
static long sc(long n, long a, long b, long c, long d, long e, long f) {
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10),
                     "r"(r8), "r"(r9) : "rcx", "r11", "memory");
    return ret;
}
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call start_c\n hlt\n");
static void put(const char *s, long n) { sc(1, 9, (long)s, n, 0, 0, 0); }
static void attempt(char *at, long flags) {
    char buf[128];
    long fd = sc(257, -100, (long)at, flags, 0, 0, 0);
    if (fd >= 0) {
        long n = sc(0, fd, (long)buf, sizeof buf, 0, 0, 0);
        put("ok ", 3);
        if (n > 0) put(buf, n);
        put("\n", 1);
        sc(3, fd, 0, 0, 0, 0, 0);
        return;
    }
    char e[16];
    int i = 15;
    long v = -fd;
    e[i] = '\n';
    do { e[--i] = '0' + v % 10; v /= 10; } while (v);
    put("errno ", 6);
    put(e + i, 16 - i);
}
void start_c(long *sp) {
    char *path = (char *)sp[2]; /* argv[1] */
    char *a = (char *)0x6f0000000000L, *b = (char *)0x6e0000000000L;
    sc(9, (long)a, 4096, 3, 0x22 | 0x100000, -1, 0);
    sc(9, (long)b, 4096, 3, 0x22 | 0x100000, -1, 0);
    long i = 0;
    do { a[i] = b[i] = path[i]; } while (path[i++]);
    attempt(a, 0100); /* the first trapped call after the exec */
    attempt(a, 0);
    attempt(b, 0);
    attempt(a, 0);
    sc(231, 0, 0, 0, 0, 0, 0);
}
"""

#: argv: log, granted file (0600, another user's), the static binary, how to exec it
#: ("thread" or "main", "-execve" or "-execveat"), how many other processes exec first.
STAGE1 = r"""
import ctypes, os, sys, threading
log, path, stage2, how = sys.argv[1:5]
spawns = int(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
A = 0x6f0000000000
assert libc.mmap(A, 4096, 3, 0x22 | 0x100000, -1, 0) == A
ctypes.memmove(A, path.encode() + b"\0", len(path) + 1)
os.dup2(os.open(log, os.O_WRONLY | os.O_APPEND), 9, inheritable=True)
def note(line):
    os.write(9, line.encode() + b"\n")
def read_at():
    fd = libc.open(ctypes.c_void_p(A), os.O_RDONLY)
    if fd < 0:
        return "errno %d" % ctypes.get_errno()
    try:
        return "ok " + os.read(fd, 100).decode()
    finally:
        os.close(fd)
for _ in range(5):  # served as ours: the loop is vouched for this thread
    note("before " + read_at())
for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: out of the bounding set only
    assert libc.prctl(24, cap, 0, 0, 0) == 0, ctypes.get_errno()
note("dropped " + read_at())
# A process sharing this address space, so that it outlives the exec (sleeps, then exits).
stack = ctypes.create_string_buffer(1 << 16)
top = (ctypes.addressof(stack) + (1 << 16) - 64) & ~15
libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
q = libc.clone(ctypes.cast(libc.sleep, ctypes.c_void_p), ctypes.c_void_p(top),
               0x100 | 17, ctypes.c_void_p(30))  # CLONE_VM | SIGCHLD
assert q > 0, ctypes.get_errno()
note("q %d" % q)
# Other processes' execs the loop answers, none of their requests Python's.
true = "/usr/bin/true"
for pid in [os.posix_spawn(true, [true], {}) for _ in range(spawns)]:
    os.waitpid(pid, 0)
def go():
    if how.endswith("execveat"):  # not the loop's: Python answers it
        d = os.open(os.path.dirname(stage2), os.O_PATH)
        argv = (ctypes.c_char_p * 3)(stage2.encode(), path.encode(), None)
        env = (ctypes.c_char_p * 1)(None)
        libc.syscall(322, d, os.path.basename(stage2).encode(), argv, env, 0)
    else:
        os.execv(stage2, [stage2, path])
    note("exec failed %d" % ctypes.get_errno())
    os._exit(1)
if how.startswith("thread"):  # de_thread: the exec'd program takes this thread's id
    threading.Thread(target=go).start()
    threading.Event().wait()
go()
"""

#: What the exec'd program must be told for each attempt: it may not read the file.
REFUSED = ["errno 13"] * 4


@pytest.fixture(scope="module")
def stage2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or platform.machine() != "x86_64":
        pytest.skip("needs cc on x86_64 for the static exec'd program")
    where = tmp_path_factory.mktemp("stage2")
    (where / "stage2.c").write_text(STAGE2_C)
    subprocess.run(
        [cc, "-static", "-nostdlib", "-O1", "-fno-stack-protector", "-fno-builtin",
         "-o", str(where / "stage2"), str(where / "stage2.c")],
        check=True,
    )  # fmt: skip
    return where / "stage2"


async def attack(
    tmp_path: Path, stage2: Path, how: str, spawns: int = 0
) -> tuple[list[str], list[str]]:
    """Run the attack; (lines before the exec, lines of the exec'd program)."""
    granted = tmp_path / "granted"
    theirs = someone_elses(granted)
    out = tmp_path / "out"
    out.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shutil.copy(stage2, bindir / "stage2")
    static_bin = (
        f'\n[[path_beneath]]\nallowed_access = ["abi.read_execute"]\nparent = ["{bindir}"]\n'
    )
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rw(granted), extra_static=static_bin))
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    log = out / "log"
    log.touch()
    argv = [sys.executable, "-c", STAGE1, str(log), str(theirs), str(bindir / "stage2"), how,
            str(spawns)]  # fmt: skip
    try:
        async with Supervisor.open(doc) as sup:
            status = await sup.run(argv, forward_signals=False)
    finally:
        lines = log.read_text().splitlines()
        for line in lines:
            if line.startswith("q "):
                try:
                    os.kill(int(line.split()[1]), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert status == 0, lines
    before = [line for line in lines if line.startswith(("before", "dropped"))]
    after = [line for line in lines if line.startswith(("ok", "errno", "exec failed"))]
    return before, after


def _preconditions(before: list[str]) -> None:
    # Served with our standing before the exec, as its credentials are ours.
    assert before == ["before ok someone else's"] * 5 + ["dropped ok someone else's"]


@pytest.mark.trio
@pytest.mark.parametrize("how", ["thread-execve", "thread-execveat"])
async def test_an_exec_from_a_thread_is_not_served_with_the_leaders_credentials(
    tmp_path: Path, stage2: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that is not the leader execs: de_thread gives it the leader's id. What was
    kept for that id (a reader vouched for, ``ours``, and Python's Task with its cached
    credentials) would survive: the pidfd names the new leader (not exited) and the old
    address space still reads (a CLONE_VM process keeps it). So the exec'd program, which
    lacks CAP_DAC_OVERRIDE, would be handed another user's 0600 file opened with the
    supervisor's capabilities. Only a leader's exec is answered in the loop; Python drops
    what is kept for both ids, and keeps nothing for either until the exec is over
    (engine.contexts.exec_begins). "-execve" would be the loop's, "-execveat" is Python's."""
    drained = Drained(monkeypatch)
    before, after = await attack(tmp_path, stage2, how)
    _preconditions(before)
    assert after == REFUSED, (after, drained.paths)


@pytest.mark.trio
@pytest.mark.parametrize("how", ["main-execve", "main-execveat"])
async def test_an_exec_from_the_leader_is_not_served_with_its_old_credentials(
    tmp_path: Path, stage2: Path, how: str
) -> None:
    """The leader execs itself. The loop drops its reader before
    answering (execve) or Python does (execveat), and Python drops its cached credentials
    (take_execs / decode_exec) before reading any later request: the exec'd program is
    refused the file, although its old address space still reads."""
    before, after = await attack(tmp_path, stage2, how)
    _preconditions(before)
    assert after == REFUSED


@pytest.mark.trio
async def test_an_overflowing_exec_ring_drops_every_kept_task(
    tmp_path: Path, stage2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 other processes exec (posix_spawn of /usr/bin/true, all answered in the loop,
    Python hears of none) before the vouched leader execs: the ring of 256 overflows,
    take_execs says None and Python drops every Task; the loop had dropped the leader's
    reader itself. The exec'd program is refused the file."""
    seen = record_catch_ups(monkeypatch, "take_execs")
    before, after = await attack(tmp_path, stage2, "main-execve", spawns=300)
    _preconditions(before)
    assert after == REFUSED
    assert None in seen  # the ring did overflow
