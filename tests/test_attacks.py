"""Attacks on answers bound to the checked object, on reloads, and on the seccomp filter's
refusals. The supervised program is the adversary (same uid: root here); each test runs it
under the real kernel and asserts that the secret stays unread, nothing outside the grants was
written, or the supervisor survived.

Attacks the code holds stay here as regression guards; a hole the code does not hold yet is
marked ``xfail(strict=True)`` with the reason "HOLE: ...".
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from grant_paths import grant_path  # noqa: F401 (the fixture, used by pytestmark)
from supervised import PUBLIC, SECRET, SWAP_THEN_READ, policy_text, wait_until

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.supervisor.questions.fs import NOT_UTF8

#: On both implementations of a granted open (see grant_paths).
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("grant_path")]

WORKTREE = str(Path(__file__).resolve().parent.parent)
#: Only keeps a broken test from hanging.
LIMIT = 60.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "llsupervise.cli", *args]


def child_env() -> dict[str, str]:
    """The environment of a ``python -m llsupervise`` child: this tree's package."""
    return os.environ | {"PYTHONPATH": WORKTREE}


class Answers:
    """Answers the questions about the test's tree in order with ``answers`` (then denies),
    recording each; a question about anything else (e.g. a directory on the interpreter's
    path) is denied."""

    def __init__(self, *answers: Callable[[Denial], Decision]) -> None:
        self.answers = list(answers)
        self.asked: list[Denial] = []

    async def ask(self, denial: Denial) -> Decision:
        if not denial.path.startswith(os.path.realpath(os.getcwd())):
            return Decision(Answer.DENY)
        self.asked.append(denial)
        if len(self.asked) > len(self.answers):
            return Decision(Answer.DENY)
        return self.answers[len(self.asked) - 1](denial)


def swap_tree(root: Path) -> None:
    """work/sub/f (public), secret/f (never granted), out/ (static rw)."""
    (root / "work" / "sub").mkdir(parents=True)
    (root / "secret").mkdir()
    (root / "out").mkdir()
    (root / "work" / "sub" / "f").write_bytes(PUBLIC)
    (root / "secret" / "f").write_bytes(SECRET)


#: Static rights with which the program may make, remove and move names in work/.
CHANGING_WORK = (
    '\n[[path_beneath]]\nallowed_access = ["make_dir", "make_sym", "remove_dir", "refer"]\n'
    'parent = ["{root}/work"]\n'
)

# Reads work/sub/f (asked about), swaps work/sub for a symlink to secret/, says so in
# out/swapped, waits for out/go, then reads through the name and the moved directory. Each
# read prints "<path> ok", "<path> LEAK" or "<path> errno N".
ASK_SWAP_READ = r"""
import os, sys, time
SECRET = sys.argv[1].encode()
def read(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(path, "errno", e.errno, flush=True)
    else:
        print(path, "LEAK" if SECRET in data else "ok", flush=True)
read("work/sub/f")
os.rename("work/sub", "work/sub-moved")
os.symlink(os.path.abspath("secret"), "work/sub")
open("out/swapped", "w").close()
while not os.path.exists("out/go"):
    time.sleep(0.01)
read("work/sub/f")
read("work/sub-moved/f")
"""


async def run_with_reload(
    root: Path,
    text: str,
    frontend: Answers,
    script: str,
    before_reload: Callable[[Path], None] = lambda _: None,
) -> tuple[list[int], list[Mapping[str, Any]]]:
    """Run ``script`` under the policy file ``text`` (watched, answers persisted); once it
    has made out/swapped, call ``before_reload``, add a comment to the file, wait for the
    reload, and let the program go on (out/go)."""
    policy_file = root / "policy.toml"
    policy_file.write_text(text)
    doc = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})
    decisions = ModeDecisions("interactive", "deny", 300.0, frontend)
    events: list[Mapping[str, Any]] = []
    statuses: list[int] = []
    argv = [sys.executable, "-c", script, SECRET.decode()]
    async with (
        Supervisor.open(doc, decisions=decisions, watch=True) as sup,
        trio.open_nursery() as nursery,
    ):
        sup.listeners.append(events.append)

        async def run() -> None:
            statuses.append(await sup.run(argv, forward_signals=False))

        nursery.start_soon(run)
        await wait_until(lambda: (root / "out" / "swapped").exists(), "the swap")
        before_reload(policy_file)
        reloads = len([e for e in events if e["event"] == "reload"])
        policy_file.write_text(policy_file.read_text() + "# an unrelated comment\n")
        await wait_until(
            lambda: len([e for e in events if e["event"] == "reload"]) > reloads, "the reload"
        )
        (root / "out" / "go").touch()
    return statuses, events


@pytest.mark.trio
async def test_a_persisted_answer_is_not_rebound_by_a_reload_after_a_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """ "Allow always" on the directory work/sub: the label held when it was written. Then the
    program (which may make and remove names in work/) swaps work/sub for a symlink to
    secret/, and the person saves an unrelated edit. The reload must keep the rule on the
    directory that was granted, not follow the symlink to secret/."""
    root = Path(os.path.realpath(tmp_path))
    swap_tree(root)
    monkeypatch.chdir(root)
    sub = str(root / "work" / "sub")
    frontend = Answers(lambda _: Decision(Answer.ALLOW_ALWAYS, scope=sub))
    text = policy_text(root, mode="interactive", extra_static=CHANGING_WORK.format(root=root))
    statuses, events = await run_with_reload(root, text, frontend, ASK_SWAP_READ)
    out = capfd.readouterr().out.splitlines()
    assert statuses == [0]
    assert [e["ok"] for e in events if e["event"] == "persist"] == [True]
    assert f'"{sub}"' in (root / "policy.toml").read_text()  # the answer was written
    assert not [line for line in out if "LEAK" in line], out
    assert out == ["work/sub/f ok", "work/sub/f errno 13", "work/sub-moved/f ok"]
    reload = [e for e in events if e["event"] == "reload"][-1]
    assert reload["ok"] is True
    assert [k["path"] for k in reload["kept_bindings"]] == [sub]


@pytest.mark.trio
async def test_an_unpersisted_answer_is_not_rebound_by_a_reload_after_a_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The same swap while the answer could not be written (the file did not parse when the
    answer came): the answer is applied again at every reload until written. It must stay on
    the directory that was granted."""
    root = Path(os.path.realpath(tmp_path))
    swap_tree(root)
    monkeypatch.chdir(root)
    sub = str(root / "work" / "sub")
    policy_file = root / "policy.toml"
    text = policy_text(root, mode="interactive", extra_static=CHANGING_WORK.format(root=root))

    def break_file_then_allow(_: Denial) -> Decision:
        policy_file.write_text(text + "\n[[[ not toml\n")  # the person is mid-edit
        return Decision(Answer.ALLOW_ALWAYS, scope=sub)

    def mend_file(path: Path) -> None:
        path.write_text(text)

    frontend = Answers(break_file_then_allow)
    statuses, events = await run_with_reload(root, text, frontend, ASK_SWAP_READ, mend_file)
    out = capfd.readouterr().out.splitlines()
    assert statuses == [0]
    assert next(e["ok"] for e in events if e["event"] == "persist") is False  # not written
    assert not [line for line in out if "LEAK" in line], out
    assert out == ["work/sub/f ok", "work/sub/f errno 13", "work/sub-moved/f ok"]
    assert str(root / "secret") not in policy_file.read_text()


def test_a_swap_made_with_allow_once_answers_does_not_redirect_a_rule_at_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A supervisor rule grants read on work/pub. The program asks to rename work/pub and to
    make a symlink in work/; the person allows each once (each is harmless by itself). An
    unrelated edit reloads the file: the rule must stay on the directory it named."""
    root = Path(os.path.realpath(tmp_path))
    (root / "work" / "pub").mkdir(parents=True)
    (root / "work" / "pub" / "f").write_bytes(PUBLIC)
    (root / "secret").mkdir()
    (root / "secret" / "f").write_bytes(SECRET)
    (root / "out").mkdir()
    monkeypatch.chdir(root)
    rule = (
        '\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\n'
        f'parent = ["{root}/work/pub"]\n'
    )
    text = policy_text(root, mode="interactive", supervisor_rules=rule)
    once = Answers(lambda _: Decision(Answer.ALLOW_ONCE), lambda _: Decision(Answer.ALLOW_ONCE))
    # trio.run, not the trio marker: its nursery would wrap the AssertionError that the
    # xfail expects in an ExceptionGroup.
    statuses, _events = trio.run(run_with_reload, root, text, once, SWAP_THEN_READ)
    out = capfd.readouterr().out.splitlines()
    assert statuses == [0]
    assert [d.syscall for d in once.asked][:2] == ["rename", "symlink"]
    assert not [line for line in out if "LEAK" in line], out
    assert out == ["work/pub/f errno 13", "work/pub-old/f ok"]


SWAP_ONLY = r"""
import os
os.rename("work/pub", "work/pub-old")
os.symlink(os.path.abspath("secret"), "work/pub")
"""

READ_THROUGH = r"""
import sys
SECRET = sys.argv[1].encode()
try:
    with open("work/pub/f", "rb") as f:
        print("LEAK" if SECRET in f.read() else "ok", flush=True)
except OSError as e:
    print("errno", e.errno, flush=True)
"""


def test_a_symlink_planted_by_one_run_does_not_redirect_the_next_runs_rule(
    tmp_path: Path,
) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "work" / "pub").mkdir(parents=True)
    (root / "work" / "pub" / "f").write_bytes(PUBLIC)
    (root / "secret").mkdir()
    (root / "secret" / "f").write_bytes(SECRET)
    (root / "out").mkdir()
    rule = (
        '\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\n'
        f'parent = ["{root}/work/pub"]\n'
    )
    policy_file = root / "policy.toml"
    policy_file.write_text(
        policy_text(root, supervisor_rules=rule, extra_static=CHANGING_WORK.format(root=root))
    )
    outputs = []
    for script in (SWAP_ONLY, READ_THROUGH):
        done = subprocess.run(
            cli("run", "--headless", "--policy", str(policy_file), "--",
                sys.executable, "-c", script, SECRET.decode()),
            cwd=root, env=child_env(), capture_output=True, text=True, timeout=LIMIT,
            check=False,
        )  # fmt: skip
        outputs.append(done.stdout)
    assert (root / "work" / "pub").is_symlink()  # the first run made its move
    assert "LEAK" not in outputs[1], outputs
    assert outputs[1].split() == ["errno", str(errno.EACCES)]


@pytest.mark.trio
@pytest.mark.parametrize("choice", [99, -1, True, 1.0, "", "../../secret", "/nonexistent"])
async def test_a_scope_outside_the_offered_list_binds_the_narrowest(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    choice: int | str,
) -> None:
    """An answer naming a scope that was not offered (an index past the list, negative, a
    bool, a float, a path not among the labels) grants the narrowest scope: the file itself,
    never its directory or an ancestor."""
    root = Path(os.path.realpath(tmp_path))
    swap_tree(root)
    (root / "work" / "sub" / "g").write_bytes(PUBLIC)
    monkeypatch.chdir(root)
    frontend = Answers(lambda _: Decision(Answer.ALLOW_FOR, duration=300.0, scope=choice))
    decisions = ModeDecisions("interactive", "deny", 300.0, frontend)
    text = policy_text(root, mode="interactive")
    policy_file = root / "policy.toml"
    policy_file.write_text(text)
    doc = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})
    script = r"""
import sys
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            print(path, "LEAK" if b"secret" in f.read() else "ok", flush=True)
    except OSError as e:
        print(path, "errno", e.errno, flush=True)
"""
    async with Supervisor.open(doc, decisions=decisions) as sup:
        status = await sup.run(
            [sys.executable, "-c", script, "work/sub/f", "work/sub/g", "secret/f"],
            forward_signals=False,
        )
    out = capfd.readouterr().out.splitlines()
    assert status == 0
    assert out == ["work/sub/f ok", "work/sub/g errno 13", "secret/f errno 13"]
    assert frontend.asked[0].scopes[0] == str(root / "work" / "sub" / "f")


# --- the filter's refusals ---------------------------------------------------------------

#: Every way a program may try to signal (SIGSTOP) its parent, the supervisor: one JSON line,
#: attempt -> [errno (0: the call worked), the supervisor's state after the attempt]. The
#: attempts run in a forked child in a process group of its own, since signals to the
#: supervisor's group also stop the program itself (the child then wakes it up).
SIGNAL_SUPERVISOR = r"""
import ctypes, fcntl, json, os, signal, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
sup, program = os.getppid(), os.getpid()
if os.fork():
    while True:
        try:
            _, status = os.waitpid(-1, 0)
            break
        except InterruptedError:
            continue
    sys.exit(os.waitstatus_to_exitcode(status))
os.setpgid(0, 0)
NR = {"tgkill": 234, "rt_sigqueueinfo": 129, "pidfd_send_signal": 424, "pidfd_open": 434}
F_SETSIG, F_SETOWN_EX, F_OWNER_PGRP = 10, 15, 2
def state():
    with open(f"/proc/{sup}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
report = {}
def attempt(name, call):
    try:
        r = call()
        err = 0 if r is None or r >= 0 else ctypes.get_errno()
    except OSError as e:
        err = e.errno
    report[name] = [err, state()]
    os.kill(program, signal.SIGCONT)
    if state() == "T":  # it worked: try to let the supervisor go on
        with __import__("contextlib").suppress(OSError):
            os.kill(sup, signal.SIGCONT)
attempt("kill", lambda: os.kill(sup, signal.SIGSTOP))
attempt("tgkill", lambda: libc.syscall(NR["tgkill"], sup, sup, signal.SIGSTOP))
info = ctypes.create_string_buffer(128)
struct.pack_into("iii", info, 0, signal.SIGSTOP, 0, -1)  # SI_QUEUE
attempt("rt_sigqueueinfo", lambda: libc.syscall(NR["rt_sigqueueinfo"], sup, signal.SIGSTOP, info))
def pidfd_send():
    pidfd = libc.syscall(NR["pidfd_open"], sup, 0)
    if pidfd < 0:
        return pidfd
    return libc.syscall(NR["pidfd_send_signal"], pidfd, signal.SIGSTOP, None, 0)
attempt("pidfd_send_signal", pidfd_send)
attempt("killpg", lambda: os.killpg(os.getpgid(sup), signal.SIGSTOP))
attempt("kill_all", lambda: os.kill(-1, signal.SIGSTOP))
# The kernel signals the owner of a file when it becomes ready (O_ASYNC): make the
# supervisor (or its process group) the owner, choose SIGSTOP, and make the file ready.
def sigio(owner, pair=False):
    if pair:
        a, b = socket.socketpair()
        r, w = a.detach(), b.detach()
    else:
        r, w = os.pipe()
    try:
        fcntl.fcntl(r, F_SETSIG, signal.SIGSTOP)
        owner(r)
        fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)
        os.write(w, b"x")
        time.sleep(0.2)  # delivery is synchronous; only gives a stopped state time to show
    finally:
        os.close(r); os.close(w)
attempt("f_setown", lambda: sigio(lambda fd: fcntl.fcntl(fd, fcntl.F_SETOWN, sup)))
attempt("f_setown_socket", lambda: sigio(lambda fd: fcntl.fcntl(fd, fcntl.F_SETOWN, sup), True))
pgrp = struct.pack("ii", F_OWNER_PGRP, os.getpgid(sup))
attempt("f_setown_ex_pgrp", lambda: sigio(lambda fd: fcntl.fcntl(fd, F_SETOWN_EX, pgrp)))
print(json.dumps(report), flush=True)
"""


def test_no_signal_reaches_the_supervisor(tmp_path: Path) -> None:
    """kill, tgkill, rt_sigqueueinfo, pidfd_send_signal, killpg, kill(-1), and SIGIO the
    kernel sends to a file's owner (F_SETOWN on a pipe and a socket, F_SETOWN_EX to the
    process group), each with SIGSTOP: the supervisor is never stopped, and the command ends
    normally."""
    (tmp_path / "out").mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    done = subprocess.run(
        cli("run", "--headless", "--policy", str(policy), "--", sys.executable, "-c",
            SIGNAL_SUPERVISOR),
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=LIMIT,
        check=False, start_new_session=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    stopped = {name: r for name, r in report.items() if r[1] == "T"}
    assert not stopped, report
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "pidfd_send_signal"):
        assert report[name][0] == errno.EPERM, (name, report)


#: Forks a grandchild that outlives its parent: it waits for the supervisor (its
#: grandparent) to die, then, more than a moment later, says so on stdout (inherited, a pipe
#: the test reads).
OUTLIVE_BY_FORK = r"""
import os, sys, time
sup = os.getppid()
if os.fork() == 0:
    os.setsid()
    while os.path.exists(f"/proc/{sup}"):
        time.sleep(0.01)
    time.sleep(2)  # more than a moment
    print("alive after the supervisor", os.getpid(), flush=True)
    os._exit(0)
print("forked", flush=True)
time.sleep(600)
"""

#: Clears its own parent-death signal, then does the same.
OUTLIVE_BY_PRCTL = r"""
import ctypes, os, sys, time
sup = os.getppid()
libc = ctypes.CDLL(None, use_errno=True)
print("cleared" if libc.prctl(1, 0, 0, 0, 0) == 0 else "refused", flush=True)
while os.path.exists(f"/proc/{sup}"):
    time.sleep(0.01)
time.sleep(2)  # more than a moment
print("alive after the supervisor", os.getpid(), flush=True)
"""


@pytest.mark.parametrize("script", [OUTLIVE_BY_FORK, OUTLIVE_BY_PRCTL], ids=["fork", "prctl"])
def test_no_supervised_process_outlives_the_supervisor(tmp_path: Path, script: str) -> None:
    (tmp_path / "out").mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    with subprocess.Popen(
        cli("run", "--headless", "--policy", str(policy), "--", sys.executable, "-c", script),
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as supervisor:  # fmt: skip
        survivor = None
        try:
            assert supervisor.stdout is not None
            first = supervisor.stdout.readline()
            assert first.strip() in ("forked", "cleared", "refused"), first
            supervisor.send_signal(signal.SIGKILL)
            supervisor.wait()
            # EOF once every holder of the pipe is gone; a survivor writes first.
            rest = supervisor.stdout.read()
            if "alive" in rest:
                survivor = int(rest.split()[-1])
            assert "alive after the supervisor" not in rest, rest
        finally:
            if survivor is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(survivor, signal.SIGKILL)


#: TIOCSTI on its terminal through the x32 ABI (ioctl is 514 there) and through int 0x80
#: (i386 ioctl is 54): the filter's argument test is for the native number only.
FOREIGN_TIOCSTI = r"""
import ctypes, mmap, sys
which = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
char = ctypes.create_string_buffer(b"x")
if which == "x32":
    r = libc.syscall(ctypes.c_long(514 | 0x40000000), 0, 0x5412, char)
else:
    # mov eax, 54; xor ebx, ebx; mov ecx, 0x5412; mov edx, <char, below 4 GiB?>; int 0x80; ret
    buf = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,  # MAP_32BIT
                    prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf[2048:2049] = b"x"
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf, 2048))
    code = (b"\xb8\x36\x00\x00\x00" + b"\x31\xdb" + b"\xb9\x12\x54\x00\x00"
            + b"\xba" + address.to_bytes(4, "little") + b"\xcd\x80" + b"\xc3")
    buf[0:len(code)] = code
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    r = fn()
print("returned", r, flush=True)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 and int 0x80 are x86 only")
@pytest.mark.parametrize("which", ["x32", "int80"])
def test_tiocsti_through_a_foreign_abi_types_nothing(tmp_path: Path, which: str) -> None:
    """The foreign ABI call kills the program (the filter's default for foreign ABIs), and
    nothing reaches its terminal's input."""
    (tmp_path / "out").mkdir()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(tmp_path))
    master, slave = os.openpty()
    try:
        import tty

        tty.setraw(slave)
        done = subprocess.run(
            cli("run", "--headless", "--policy", str(policy), "--",
                sys.executable, "-c", FOREIGN_TIOCSTI, which),
            stdin=slave, cwd=tmp_path, env=child_env(), capture_output=True, text=True,
            timeout=LIMIT, check=False,
        )  # fmt: skip
        os.set_blocking(slave, False)
        try:
            pending = os.read(slave, 1024)
        except BlockingIOError:
            pending = b""
    finally:
        os.close(master)
        os.close(slave)
    assert pending == b""
    assert "returned" not in done.stdout, done.stdout
    assert done.returncode != 0


#: Directory names the program chose: control characters, quotes, a TOML injection, a
#: variable, bytes that are not UTF-8, a name like the kernel's " (deleted)" suffix.
WEIRD_NAMES = [
    b"new\nline",
    b'quote" , "',
    b'x"]\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = ["${HOME}',
    b"back\\slash\\",
    b"${HOME}",
    b"\xff\xfe not utf-8",
    b"esc\x1b[2Jape",
    b"gone (deleted)",
]

READ_EACH = r"""
import os, sys
for name in sys.argv[1:]:
    path = os.fsencode(name)
    try:
        with open(b"work/" + path + b"/f", "rb") as f:
            print("LEAK" if b"secret" in f.read() else "ok", flush=True)
    except OSError as e:
        print("errno", e.errno, flush=True)
"""


@pytest.mark.trio
async def test_answers_on_names_the_program_chose_write_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """ "Allow always" on directories with hostile names: the supervisor survives each (a
    name that is not UTF-8 crashed it, writing the policy file), and the policy file loads,
    names only those directories (each leading to the very object granted), and grants
    nothing on secret/ or above."""
    root = Path(os.path.realpath(tmp_path))
    swap_tree(root)
    names = WEIRD_NAMES
    objects = set()
    for name in names:
        directory = os.fsencode(root / "work") + b"/" + name
        os.mkdir(directory)
        with open(directory + b"/f", "wb") as f:
            f.write(PUBLIC)
        objects.add(os.stat(directory).st_ino)
    monkeypatch.chdir(root)
    frontend = Answers(*[lambda _: Decision(Answer.ALLOW_ALWAYS, scope=1)] * len(names))
    policy_file = root / "policy.toml"
    policy_file.write_text(policy_text(root, mode="interactive"))
    doc = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})
    decisions = ModeDecisions("interactive", "deny", 300.0, frontend)
    events: list[Mapping[str, Any]] = []
    argv = [sys.executable, "-c", READ_EACH, *map(os.fsdecode, names)]
    async with Supervisor.open(doc, decisions=decisions, watch=True) as sup:
        sup.listeners.append(events.append)
        status = await sup.run(argv, forward_signals=False)
    out = capfd.readouterr().out.splitlines()
    assert status == 0
    assert out == ["ok"] * len(names)
    assert len(frontend.asked) == len(names)
    after = load_policy(policy_file, {"HOME": str(root), "PWD": str(root)})
    written = [p for e in after.supervisor.path_beneath for p in e.paths]
    assert str(root / "secret") not in written and str(root) not in written
    for path in written:
        assert os.stat(path, follow_symlinks=False).st_ino in objects, path
    # Every name but the one that is not UTF-8 was written; that one is said to hold for
    # this run only (and does not stop the others from being written).
    assert len(written) == len(names) - 1
    unbound = [u for e in events if e["event"] == "denial" for u in e.get("unbound", ())]
    assert [u["reason"] for u in unbound] == [NOT_UTF8]
    assert all(e["ok"] for e in events if e["event"] == "persist")
