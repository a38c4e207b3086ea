"""The launcher: what the command inherits, and how a failed exec is reported."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from supervised import make_tree, policy, policy_text

from llsupervise.policy.loader import parse_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.launch.helper import inherited_fds

pytestmark = pytest.mark.kernel

# Lists the command's descriptors beyond stdio, each with what it is.
LIST_FDS = r"""
import os
for name in sorted(os.listdir("/proc/self/fd"), key=int):
    fd = int(name)
    if fd > 2:
        try:
            print(fd, os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor
"""


def run_supervised(root: Path, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` supervised under the test policy; its status and output."""

    async def main() -> tuple[int, bytes, bytes]:
        out, err = root / "out" / "stdout", root / "out" / "stderr"
        async with Supervisor.open(policy(root)) as sup:
            with out.open("wb") as o, err.open("wb") as e:
                stdio = (None, o.fileno(), e.fileno())
                status = await sup.run(argv, forward_signals=False, stdio=stdio)
        return status, out.read_bytes(), err.read_bytes()

    status, out, err = trio.run(main)
    return subprocess.CompletedProcess(argv, status, out, err)


def test_the_command_inherits_no_descriptor_of_the_supervisor(tmp_path: Path) -> None:
    make_tree(tmp_path)
    result = run_supervised(tmp_path, [sys.executable, "-c", LIST_FDS])
    assert result.returncode == 0, result.stderr
    # Only what this process itself inherited (a transparent wrapper passes it on): no rule
    # object, Landlock ruleset, listener, socket or pipe of the supervisor.
    passed_on = {int(line.split()[0]) for line in result.stdout.decode().splitlines()}
    assert passed_on == set(inherited_fds())


def test_a_descriptor_we_inherited_is_passed_on(tmp_path: Path) -> None:
    make_tree(tmp_path)
    read, write = os.pipe()
    os.set_inheritable(write, True)
    try:
        result = run_supervised(tmp_path, [sys.executable, "-c", LIST_FDS])
    finally:
        os.close(read)
        os.close(write)
    assert result.returncode == 0, result.stderr
    assert f"{write} pipe:" in result.stdout.decode()


@pytest.mark.parametrize(
    ("make", "status"),
    [(lambda p: None, 127), (lambda p: p.write_text("not executable"), 126)],
    ids=["missing", "not-executable"],
)
def test_a_command_that_cannot_run_gets_the_shells_status(
    tmp_path: Path, make: object, status: int
) -> None:
    make_tree(tmp_path)
    command = tmp_path / "out" / "cmd"
    assert callable(make)
    make(command)
    result = run_supervised(tmp_path, [str(command)])
    assert result.returncode == status
    assert b"llsupervise: cannot execute" in result.stderr


def test_a_command_is_found_on_path_even_when_python_itself_is_not_readable(
    tmp_path: Path,
) -> None:
    # The helper is confined before it looks the command up: what that lookup needs of the
    # standard library must be loaded before (here the interpreter's own tree is denied,
    # unless it lives under /usr).
    text = """
[[ruleset]]
handled_access_fs = ["abi.all"]
[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = ["/usr", "/bin", "/lib", "/etc"]
"""
    document = parse_policy(text, "p.toml", {"HOME": str(tmp_path), "PWD": str(tmp_path)})

    async def main() -> int:
        async with Supervisor.open(document) as sup:
            return await sup.run(["sh", "-c", "exit 3"], forward_signals=False)

    assert trio.run(main) == 3


@pytest.mark.parametrize("via_symlink", [False, True])
def test_a_new_session_has_the_pty_as_its_terminal(tmp_path: Path, via_symlink: bool) -> None:
    # What the terminal interface does: the command's /dev/tty is the pane's pty, so a
    # program that talks to its terminal directly does not write over the interface.
    # Through a symlink to it in a granted directory, the broker opens it unless it sees it
    # is /dev/tty, which is the child's to open (we may have no terminal at all). Non-blocking,
    # or the broker would leave it to the kernel as it does a blocking open of a FIFO.
    paths = make_tree(tmp_path)
    os.symlink("/dev/tty", paths["data"] / "tty")
    through = str(paths["data"] / "tty") if via_symlink else "/dev/tty"
    master, slave = os.openpty()
    script = (
        f"import os; fd = os.open({through!r}, os.O_WRONLY | os.O_NONBLOCK); "
        "os.write(fd, b'to my tty'); print('session', os.getsid(0) == os.getpid())"
    )
    rules = '[[path_beneath]]\nallowed_access = ["write_file"]\nparent = ["/dev/tty"]\n'
    data = paths["data"]
    granted = f'[[supervisor.path_beneath]]\nallowed_access = ["write_file"]\nparent = ["{data}"]\n'

    async def main() -> int:
        document = policy(tmp_path, extra_static=rules, supervisor_rules=granted)
        async with Supervisor.open(document) as sup:
            return await sup.run(
                [sys.executable, "-c", script], forward_signals=False,
                stdio=(slave, slave, slave), new_session=True,
            )  # fmt: skip

    try:
        status = trio.run(main)
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: no writer left
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    assert status == 0, output
    assert b"to my tty" in output
    assert b"session True" in output


#: Runs what follows "--" on its command line as the user would, with the descriptor soft
#: limit lowered first: headless (whose exec helper starts before the limit is raised), or
#: in trio (whose helper starts after). Prints the run's status.
LOWERED = r"""
import resource, sys, trio
mode, policy_path = sys.argv[1], sys.argv[2]
argv = sys.argv[sys.argv.index("--") + 1:]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
if mode == "headless":
    from llsupervise.cli import main
    print(main(["run", "--headless", "--policy", policy_path, "--", *argv]))
else:
    from llsupervise.policy.loader import load_policy
    from llsupervise.supervisor.core import Supervisor
    async def run():
        async with Supervisor.open(load_policy(policy_path)) as sup:
            return await sup.run(argv, forward_signals=False)
    print(trio.run(run))
"""

#: Prints its descriptor limits.
PRINT_NOFILE = "import resource; print(*resource.getrlimit(resource.RLIMIT_NOFILE))"


@pytest.mark.parametrize("mode", ["headless", "trio"])
def test_the_command_gets_the_users_descriptor_limits(tmp_path: Path, mode: str) -> None:
    """The supervisor raises its own soft limit (it holds a descriptor per rule object: 64
    here, which with its own reserve exceed the soft limit of 300, not the hard one); the
    command gets the limits it was run with, whichever way the run starts."""
    make_tree(tmp_path)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(64):
        (many / str(i)).mkdir()
    rules = "".join(
        f'[[path_beneath]]\nallowed_access = ["read_dir"]\nparent = ["{many / str(i)}"]\n'
        for i in range(64)
    )
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(policy_text(tmp_path, extra_static=rules))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    done = subprocess.run(
        [sys.executable, "-c", LOWERED, mode, str(policy_path), "--",
         sys.executable, "-I", "-c", PRINT_NOFILE],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"300 {hard}", "0"], done.stderr


#: A headless run whose policy does not load; then the processes left as our children.
FAILED_RUN = r"""
import os, sys, time
from llsupervise.cli import main
status = main(["run", "--headless", "--policy", sys.argv[1], "--", "true"])
left = []
for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/children") as f:
        for pid in f.read().split():
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                # An exited child (a zombie) has no command line any more: the lifeline's
                # watchdog is told by its session, its own.
                watchdog = fields[0] == "Z" and int(fields[3]) != os.getsid(0)
                left.append(b"cgroup.kill" if watchdog else cmd.read())
# The lifeline's watchdog, which finds its cgroup gone, may not have exited yet (or not been
# reaped): reaped by the next run, or gone with us.
print(status, [c for c in left if b"cgroup.kill" not in c])
"""


def test_a_run_that_fails_first_leaves_no_helper(tmp_path: Path) -> None:
    """The exec helper starts before the policy loads (see launch.helper): when the policy
    does not, it is told so (the end of its spec pipe), exits, and is reaped; its lifeline
    is removed (test_lifeline)."""
    bad = tmp_path / "policy.toml"
    bad.write_text("[[ruleset]]\nhandled_access_fs = [\"no_such_right\"]\n")
    done = subprocess.run(
        [sys.executable, "-c", FAILED_RUN, str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "[]"], done.stdout
    assert "no_such_right" in done.stderr


def test_a_run_that_fails_after_launch_takes_the_command_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something fails between the launch and the serving (here the serving loop cannot be
    made): the command, already started (waiting for its exec to be served), is killed and
    reaped, and the failure is told."""
    from llsupervise.supervisor import core

    make_tree(tmp_path)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("no loop today")

    monkeypatch.setattr(core, "NotificationLoop", broken)
    launched: list[int] = []

    async def main() -> None:
        async with Supervisor.open(policy(tmp_path)) as sup:
            try:
                await sup.run([sys.executable, "-I", "-c", "pass"], forward_signals=False)
            finally:
                assert sup.launched is not None
                launched.append(sup.launched.pid)

    with pytest.raises(RuntimeError, match="no loop today"):
        trio.run(main)
    assert not os.path.exists(f"/proc/{launched[0]}"), "the command outlived its failed run"
