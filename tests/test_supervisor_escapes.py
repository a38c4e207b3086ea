"""Escape attempts against a supervised child on the real kernel: no denied byte gets through.

Each child prints one line per attempt; "LEAK" marks a secret byte read or written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from grant_paths import grant_path  # noqa: F401 (the fixture, used by pytestmark)
from supervised import PUBLIC, SECRET, SYSTEM_DIRS, TimedLines, make_tree, policy, run_script

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Decision, Denial

#: On both implementations of a granted open (see grant_paths).
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("grant_path")]

DATA_RW = """
[[supervisor.path_beneath]]
allowed_access = ["abi.read_write"]
parent = ["{data}"]
"""


async def run_granted_data(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    script: str,
    *args: str,
    prepare: Callable[[dict[str, Path]], None] | None = None,
) -> tuple[int, str]:
    """Run ``script`` supervised with the test tree (after ``prepare``) as its cwd and
    data/ granted read-write by a supervisor rule; its exit status and output."""
    paths = make_tree(tmp_path)
    if prepare is not None:
        prepare(paths)
    monkeypatch.chdir(tmp_path)
    rules = DATA_RW.format(data=paths["data"])
    status = await run_script(tmp_path, script, *args, supervisor_rules=rules)
    return status, capfd.readouterr().out


ATTEMPTS = r"""
import os, sys
SECRET = sys.argv[1].encode()

def attempt(name, fn):
    try:
        result = fn()
    except OSError as e:
        print(name, "errno", e.errno, flush=True)
        return
    leaked = isinstance(result, bytes) and SECRET in result
    print(name, "LEAK" if leaked else "ok", flush=True)

def read(path, flags=os.O_RDONLY, dir_fd=None):
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)

attempt("dotdot", lambda: read("data/../secret/s"))
attempt("dirfd_dotdot", lambda: read("../secret/s", dir_fd=os.open("data", os.O_PATH)))
os.symlink("../secret/s", "data/link")
attempt("symlink", lambda: read("data/link"))
attempt("hardlink", lambda: os.link("secret/s", "data/hl"))
attempt("read_hardlink", lambda: read("data/hl"))
attempt("rename_in", lambda: os.rename("secret/s", "data/moved"))
attempt("read_moved", lambda: read("data/moved"))
opath = os.open("secret/s", os.O_PATH)
attempt("opath_reopen", lambda: read(f"/proc/self/fd/{opath}"))
attempt("dev_fd_reopen", lambda: read(f"/dev/fd/{opath}"))
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def link_empty_path(fd, to):  # linkat(fd, "", AT_FDCWD, to, AT_EMPTY_PATH)
    if libc.linkat(fd, b"", -100, to, 0x1000) != 0:
        raise OSError(ctypes.get_errno(), "linkat")
attempt("empty_path_link", lambda: link_empty_path(opath, b"data/stolen"))
attempt("read_stolen", lambda: read("data/stolen"))
attempt("write_secret", lambda: os.open("secret/s", os.O_WRONLY | os.O_TRUNC))
attempt("granted", lambda: read("data/x"))
"""


@pytest.mark.trio
async def test_path_tricks_never_reach_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_granted_data(tmp_path, monkeypatch, capfd, ATTEMPTS, SECRET.decode())
    out = dict(line.split(" ", 1) for line in output.splitlines())
    assert status == 0
    assert "LEAK" not in out.values()
    for name in ("dotdot", "dirfd_dotdot", "symlink", "read_hardlink", "read_moved",
                 "opath_reopen", "dev_fd_reopen", "empty_path_link", "read_stolen",
                 "write_secret"):  # fmt: skip
        assert out[name].startswith("errno"), (name, out[name])
    assert out["hardlink"].startswith("errno")  # refer: a link may not widen access
    assert out["rename_in"].startswith("errno")
    assert out["granted"] == "ok"  # the grant itself works
    assert (tmp_path / "secret" / "s").read_bytes() == SECRET


RACE = r"""
import ctypes, os, sys, threading
SECRET = sys.argv[1].encode()
libc = ctypes.CDLL(None, use_errno=True)
good, bad = b"data/x\0\0\0\0\0", b"secret/s\0\0\0"
buf = ctypes.create_string_buffer(good, len(good))
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, bad, len(bad))
        ctypes.memmove(buf, good, len(good))
t = threading.Thread(target=flip); t.start()
opened = leaked = 0
for _ in range(3000):
    fd = libc.openat(-100, buf, os.O_RDONLY)
    if fd >= 0:
        opened += 1
        if SECRET in os.read(fd, 100):
            leaked += 1
        os.close(fd)
stop = True; t.join()
print("opened", opened, "leaked", leaked)
"""


@pytest.mark.trio
async def test_rewriting_the_path_buffer_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Another thread swaps the path between a granted and a denied file during each open."""
    status, output = await run_granted_data(tmp_path, monkeypatch, capfd, RACE, SECRET.decode())
    words = output.split()
    assert status == 0
    assert words[0] == "opened" and int(words[1]) > 0  # the granted file did open
    assert words[2:] == ["leaked", "0"]


# Another thread moves fd 50 between the granted and the secret directory while the main
# thread opens names relative to it: what the supervisor keeps of a dirfd must follow.
DIRFD_FLIP = r"""
import os, sys, threading
SECRET, PUBLIC = sys.argv[1].encode(), sys.argv[2].encode()
data, secret = os.open("data", os.O_PATH), os.open("secret", os.O_PATH)
os.dup2(data, 50)
stop = False
def flip():
    while not stop:
        os.dup2(secret, 50)
        os.dup2(data, 50)
t = threading.Thread(target=flip); t.start()
opened = leaked = wrong = 0
for i in range(3000):
    try:
        fd = os.open("x" if i % 2 else "s", os.O_RDONLY, dir_fd=50)
    except OSError:
        continue
    opened += 1
    content = os.read(fd, 100)
    leaked += SECRET in content
    wrong += content != PUBLIC
    os.close(fd)
stop = True; t.join()
print("opened", opened, "leaked", leaked, "wrong", wrong)
"""


@pytest.mark.trio
async def test_a_dirfd_moved_between_directories_during_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_granted_data(
        tmp_path, monkeypatch, capfd, DIRFD_FLIP, SECRET.decode(), PUBLIC.decode()
    )
    words = output.split()
    assert status == 0, output
    assert words[0] == "opened" and int(words[1]) > 0, output  # data/x did open
    assert words[2:] == ["leaked", "0", "wrong", "0"], output


# Reads a root-only file in the granted directory as root, then again after giving up root:
# the second read must be judged with the child's own credentials.
DROPPED_ROOT = r"""
import os
def read(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return f"errno {e.errno}"
    try:
        return os.read(fd, 100).decode().strip()
    finally:
        os.close(fd)
print("as root:", read("data/root-only"))
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
print("as nobody:", read("data/root-only"))
print("world-readable, as nobody:", read("data/x"))
os.close(os.open("data/mine", os.O_WRONLY | os.O_CREAT, 0o644))
print("made as nobody: owned by", os.stat("data/mine").st_uid)
"""


@pytest.mark.trio
async def test_a_child_that_gave_up_root_gets_its_requests_performed_with_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The broker would act with the supervisor's credentials: for a thread whose
    credentials differ, it takes the thread's own for the operation."""

    def root_only(paths: dict[str, Path]) -> None:
        (paths["data"] / "root-only").write_bytes(SECRET)
        (paths["data"] / "root-only").chmod(0o600)
        paths["data"].chmod(0o777)
        paths["data"].parent.chmod(0o755)  # the cwd: searchable by anyone

    status, output = await run_granted_data(
        tmp_path, monkeypatch, capfd, DROPPED_ROOT, prepare=root_only
    )
    assert status == 0, output
    assert output.splitlines() == [
        "as root: " + SECRET.decode().strip(),
        "as nobody: errno 13",  # its own credentials refuse it
        "world-readable, as nobody: public data",  # the supervisor rule still grants it
        "made as nobody: owned by 65534",
    ]
    assert (tmp_path / "data" / "mine").stat().st_uid == 65534


THREADS_AND_FORKS = r"""
import os, sys, threading
SECRET = sys.argv[1].encode()
results = []
def worker():
    for path in ("data/x", "secret/s"):
        try:
            with open(path, "rb") as f:
                results.append((path, SECRET in f.read()))
        except OSError as e:
            results.append((path, e.errno))
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
pid = os.fork()
if pid == 0:
    try:
        open("secret/s", "rb").read(); os._exit(1)
    except OSError as e:
        os._exit(0 if e.errno == 13 else 2)
_, st = os.waitpid(pid, 0)
print(sorted(set(map(str, results))), os.waitstatus_to_exitcode(st))
"""


@pytest.mark.trio
async def test_threads_and_forked_children_are_supervised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_granted_data(
        tmp_path, monkeypatch, capfd, THREADS_AND_FORKS, SECRET.decode()
    )
    out = output.strip()
    assert status == 0
    assert out == "[\"('data/x', False)\", \"('secret/s', 13)\"] 0"


class NeverAnswers:
    """A front-end that never answers: the child dies while its request is pending."""

    def __init__(self) -> None:
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        import trio

        self.asked.append(denial)
        os.kill(denial.pid, signal.SIGKILL)
        await trio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.trio
async def test_child_dying_while_its_request_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    frontend = NeverAnswers()
    decisions = ModeDecisions("interactive", "allow_once", 600, frontend)
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        status = await sup.run(["cat", "secret/s"], forward_signals=False)
    assert len(frontend.asked) == 1
    assert status == 128 + signal.SIGKILL


KILL_LOOP = r"""
import os, sys, time
log = int(sys.argv[1])
while True:
    try:
        with open("data/x", "rb") as f:
            f.read()
        os.write(log, b"ok\n")
    except OSError as e:
        os.write(log, b"err %d\n" % e.errno)
    time.sleep(0.01)
"""


#: The command: runs KILL_LOOP in a child of its own (which, unlike the command, does not die
#: with the supervisor) and waits for it.
KILL_LOOP_IN_CHILD = r"""
import subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], pass_fds=[int(sys.argv[2])])
"""


def test_sigkilled_supervisor_fails_closed(tmp_path: Path) -> None:
    """Killing the supervisor never turns into an allow: a descendant still running is
    killed with it (its cgroup, see launch.lifeline) or, where no cgroup could be made, its
    trapped syscalls fail (ENOSYS). Never another "ok"."""
    paths = make_tree(tmp_path)
    policy_file = tmp_path / "out" / "policy.toml"
    system = ", ".join(f'"{d}"' for d in SYSTEM_DIRS)
    policy_file.write_text(
        f'[[ruleset]]\nhandled_access_fs = ["abi.all"]\n'
        f'[[path_beneath]]\nallowed_access = ["abi.read_execute"]\nparent = [{system}]\n'
        f'[supervisor]\nmode = "enforce"\n' + DATA_RW.format(data=paths["data"])
    )
    read_end, write_end = os.pipe()
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "llsupervise.cli", "run", "--headless", "--policy",
         str(policy_file), "--", sys.executable, "-c", KILL_LOOP_IN_CHILD, KILL_LOOP,
         str(write_end)],
        cwd=tmp_path, pass_fds=[write_end], start_new_session=True,
    )  # fmt: skip
    os.close(write_end)
    reader = TimedLines(read_end)  # every read bounded by one deadline: never hangs
    try:
        assert reader.readline() == b"ok\n"  # the supervisor grants data/x
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        seen: list[bytes] = []
        while not seen or seen[-1].startswith(b"ok"):
            seen.append(reader.readline())
        after = [seen[-1]]
        while after[-1] and len(after) < 6:
            after.append(reader.readline())
        # ENOSYS (the listener is gone) until the descendant is killed with the supervisor
        # (the end of the pipe); without a cgroup, ENOSYS for good. Never another "ok".
        assert set(after) <= {b"err 38\n", b""}, seen + after
    finally:
        os.killpg(supervisor.pid, signal.SIGKILL)
        reader.close()


# Symlinks the child makes to objects that name their caller. Whoever performs the request
# must not resolve them as itself: the child would get the supervisor's /proc entries (its
# memory!) and descriptors. Each line reports whose object the child got.
CALLER_RELATIVE = r"""
import os
me = os.getpid()
victim = os.open("out/victim", os.O_RDWR | os.O_CREAT, 0o600)
os.write(victim, b"keep me?")
for name, target in (("status", "/proc/self/status"), ("mem", "/proc/self/mem"),
                     ("fd", f"/proc/self/fd/{victim}"), ("self", "/proc/self")):
    os.symlink(target, f"out/{name}")
    os.symlink(target, f"data/{name}")

def whose(where, what, is_mine):
    try:
        fd = os.open(f"{where}/{what}", os.O_RDONLY)
        try:
            print(where, what, "mine" if is_mine(fd) else "NOT MINE")
        finally:
            os.close(fd)
    except OSError as e:
        print(where, what, "errno", e.errno)

def pid_in(fd):
    status = os.read(fd, 4096).decode()
    return int(status.split("Pid:")[1].split()[0]) == me

for where in ("out", "data"):
    whose(where, "status", pid_in)
    whose(where, "mem", lambda fd: os.fstat(fd).st_ino == os.stat(f"/proc/{me}/mem").st_ino)
    own_cmdline = open(f"/proc/{me}/cmdline", "rb").read()
    whose(where, "self/cmdline", lambda fd: os.read(fd, 4096) == own_cmdline)
    whose(where, "fd", lambda fd: os.fstat(fd).st_ino == os.fstat(victim).st_ino)
os.truncate("out/fd", 3)
print("truncated", "mine" if os.fstat(victim).st_size == 3 else "NOT MINE")
"""


@pytest.mark.trio
async def test_symlinks_to_caller_relative_objects_reach_the_childs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_granted_data(tmp_path, monkeypatch, capfd, CALLER_RELATIVE)
    out = output
    assert status == 0, out
    results = [line.split(" ", 2) for line in out.splitlines()]
    assert len(results) == 9, out
    for line in results:
        # The child's own object, or a refusal; never the supervisor's.
        assert line[-1] == "mine" or line[-1].startswith("errno"), out
    assert "truncated mine" in out


# A directory named through the supervisor's /proc/self/cwd instead of the child's.
CWD_THROUGH_PROC = r"""
import os, sys
root = sys.argv[1]
os.symlink("/proc/self", f"{root}/data/self")
os.chdir(f"{root}/out")
for name, act in (("mkdir", lambda: os.mkdir(f"{root}/data/self/cwd/made")),
                  ("rename", lambda: os.rename(f"{root}/data/self/cwd/made",
                                               f"{root}/data/self/cwd/moved"))):
    try:
        act()
        print(name, "ok")
    except OSError as e:
        print(name, "errno", e.errno)
print("in my cwd", sorted(os.listdir(".")))
"""


@pytest.mark.trio
async def test_a_symlink_to_proc_self_names_the_childs_own_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    status, output = await run_granted_data(
        tmp_path, monkeypatch, capfd, CWD_THROUGH_PROC, str(tmp_path)
    )  # the supervisor's cwd: not where the child works
    out = output
    assert status == 0, out
    # The mkdir is the child's own, in its cwd; the rename is refused (EXDEV), never left to
    # the kernel (see test_moves_never_left_to_kernel), and never done in our cwd.
    assert "mkdir ok" in out and "rename errno 18" in out, out
    assert (tmp_path / "out" / "made").is_dir()
    assert not (tmp_path / "made").exists() and not (tmp_path / "moved").exists()
