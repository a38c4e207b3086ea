"""The supervised program attacking created-path rules (issue 17), on the real kernel.

Each test plays the program trying to make a created-path rule's rights land on an object it
did not just create, or on more than the rule names. The ones that found a hole say which;
the others document what holds.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from created_rules import bindings, created_rule
from supervised import make_tree, policy, policy_text, wait_until

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel



def work_rule(path: Path) -> str:
    """Make, remove and move things in the work tree, read nothing: what a learned policy
    gives ``${PWD}`` when the run only made its output directories there."""
    return f"""
[[supervisor.path_beneath]]
allowed_access = ["make_dir", "make_reg", "remove_dir", "remove_file", "refer"]
parent = ["{path}"]
"""


async def supervise(root: Path, script: str, rules: str, *args: str) -> list[Mapping[str, Any]]:
    """Run ``script`` (cwd ``root``) under the test policy plus ``rules``; its events."""
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(policy(root, supervisor_rules=rules)) as sup:
        sup.listeners.append(events.append)
        argv = [sys.executable, "-c", script, *args]
        assert await sup.run(argv, forward_signals=False) == 0
    return events



#: One thread hard-links secret/s into made<cur>/ without pause; the main thread makes each
#: made<i> while it does, and once one is bound (listable), reads all it holds. out/log: one
#: line per made<i>, "bound <i> <n entries>" plus "LEAK" for each secret read through it.
LINK_RACE = r"""
import os, sys, threading
n = int(sys.argv[1])
log = open("out/log", "w", buffering=1)
cur, stop, tried = 0, False, threading.Event()
def linker():
    k = 0
    while not stop:
        k += 1
        try:
            os.link("secret/s", f"made{cur}/s{k}")
        except OSError:
            pass
        tried.set()
thread = threading.Thread(target=linker)
thread.start()
try:
    for i in range(n):
        cur = i
        tried.clear()
        tried.wait()  # the linker is at it for this name
        for attempt in range(100):
            os.mkdir(f"made{i}")
            try:
                names = os.listdir(f"made{i}")
            except OSError:
                os.rename(f"made{i}", f"junk{i}.{attempt}")  # not bound: try again
                continue
            log.write(f"bound {i} {len(names)}\n")
            for name in names:
                with open(f"made{i}/{name}", "rb") as f:
                    log.write(f"LEAK {f.read()!r}\n")
            break
finally:
    stop = True
    thread.join()
"""


@pytest.mark.trio
async def test_nothing_is_linked_into_a_new_directory_between_its_check_and_its_commit(
    tmp_path: Path,
) -> None:
    """The hole: the new directory was checked empty in trio while the serving thread went on
    performing the program's other threads' links under the old generation, whose rules let a
    file be linked into it; the rule was then committed over what had been linked in, and
    secret/s read through it (6 to 25 links landed each time). Now moves wait until the
    binding is answered, and then run under the new generation, whose refer check refuses
    them."""
    make_tree(tmp_path)
    n = 8
    rules = work_rule(tmp_path) + "".join(created_rule(tmp_path / f"made{i}") for i in range(n))
    events = await supervise(tmp_path, f"import os; os.chdir({str(tmp_path)!r})\n" + LINK_RACE,
                             rules, str(n))  # fmt: skip
    log = (tmp_path / "out" / "log").read_text().splitlines()
    assert not [line for line in log if line.startswith("LEAK")], log
    assert log == [f"bound {i} 0" for i in range(n)]
    assert len([e for e in bindings(events) if e["bound"]]) == n


@pytest.mark.trio
async def test_a_rule_reloaded_away_while_its_creation_waits_is_not_bound(
    tmp_path: Path,
) -> None:
    """The hole: the serving thread hands over the pending rules it found when the creation
    was made; a reload done before trio binds them (the policy saved meanwhile, without the
    rule) did not stop them: the rule the person had just removed was bound and committed.
    Now the rules bound are those pending when trio binds. The trio thread is held (a plain
    loop, no checkpoint) from before the mkdir until after the reload, so the order is sure."""
    make_tree(tmp_path)
    made = tmp_path / "made"
    with_rule = policy_text(tmp_path, supervisor_rules=work_rule(tmp_path) + created_rule(made))
    without = policy_text(tmp_path, supervisor_rules=work_rule(tmp_path))
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(with_rule)
    script = f"""
import os, time
os.chdir({str(tmp_path)!r})
log = open("out/log", "w", buffering=1)
log.write("ready\\n")
while not os.path.exists("out/go"):
    time.sleep(0.01)
os.mkdir("made")
try:
    open("made/f", "w").close()
    log.write("write ok\\n")
except OSError as exc:
    log.write(f"write err {{exc.errno}}\\n")
"""
    doc = load_policy(policy_file, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    events: list[Mapping[str, Any]] = []
    log = tmp_path / "out" / "log"
    async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:
        sup.listeners.append(events.append)

        async def run() -> None:
            argv = [sys.executable, "-c", script]
            assert await sup.run(argv, forward_signals=False) == 0

        nursery.start_soon(run)
        await wait_until(lambda: log.exists() and "ready" in log.read_text(), "the child")
        assert sup.policy_file is not None
        (tmp_path / "out" / "go").touch()
        hold_until(made.exists)  # made by the serving thread; its binding waits for trio
        assert sup.policy_file.apply(without)["ok"] is True
    assert log.read_text().splitlines() == ["ready", "write err 13"]
    assert not [e for e in bindings(events) if e["bound"]]
    assert sup.rules.created == ()


def hold_until(predicate: Callable[[], bool]) -> None:
    """Wait without letting trio run (the limit only keeps a broken test from hanging)."""
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.001)


#: At each pending name, something other than a new directory or file made by mkdir, mknod
#: or an exclusive open; then a read through the name. out/log: "<name>_make ok|err N" and
#: "<name>_read ok|err N".
OTHER_WAYS = r"""
import os, stat
log = open("out/log", "w", buffering=1)
def step(name, fn):
    try:
        fn()
        log.write(f"{name} ok\n")
    except OSError as exc:
        log.write(f"{name} err {exc.errno}\n")
def read(path):
    with open(path, "rb") as f:
        f.read()
def tmpfile_linked():
    fd = os.open("out", os.O_TMPFILE | os.O_RDWR, 0o600)
    os.link(f"/proc/self/fd/{fd}", "tmpf", follow_symlinks=True)
step("tmpf_make", tmpfile_linked)
step("hl_make", lambda: os.link("secret/s", "hl"))
step("hl_read", lambda: read("hl"))
step("sym_make", lambda: os.symlink("secret/s", "sym"))
step("sym_read", lambda: read("sym"))
step("dev_make", lambda: os.mknod("dev", stat.S_IFCHR | 0o600, os.makedev(1, 3)))
step("dev_read", lambda: read("dev"))
step("proc_make", lambda: os.mkdir("/proc/self/cwd/proc"))
"""


@pytest.mark.trio
async def test_objects_not_made_new_at_the_name_get_no_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link to secret/s, a linked O_TMPFILE, a symlink: the name's object was not
    created by a mkdir, mknod or exclusive open of it; a creation through /proc/self is left
    to the kernel (the static layer refuses it here). A device node is made new, but what it
    leads to is not: it never receives the rule (caught: binding the /dev/null twin here; the
    disk's would have been read whole). Each rule stays pending."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    names = ("tmpf", "hl", "sym", "dev", "proc")
    rules = work_rule(tmp_path).replace('"refer"', '"refer", "make_sym", "make_char"')
    rules += "".join(created_rule(tmp_path / name) for name in names)
    events = await supervise(tmp_path, OTHER_WAYS, rules)
    log = (tmp_path / "out" / "log").read_text().splitlines()
    steps = dict(line.split(" ", 1) for line in log)
    # The O_TMPFILE is made in out/, which grants more than the work tree: refer refuses it.
    assert steps == {"tmpf_make": "err 18", "hl_make": "ok", "hl_read": "err 13", "sym_make": "ok",
                     "sym_read": "err 13", "dev_make": "ok", "dev_read": "err 13",
                     "proc_make": "err 13"}  # fmt: skip
    [device] = bindings(events)
    assert device["bound"] is False and "device" in device["reason"]


@pytest.mark.trio
async def test_a_file_created_at_a_pending_name_binds_and_its_open_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A learned policy's rule on a file the run creates in ``${PWD}``: the work tree gives
    make_reg only. The gap: the exclusive open was performed under the old generation, where
    Landlock refuses to open the new file for reading or writing; it was left behind empty,
    the open failed (asked about), and the rule stayed pending for good. Now the file is made
    (mknod: make_reg only), bound, and opened under the new generation."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = """
import os
log = open("out/log", "w", buffering=1)
def step(name, fn):
    try:
        log.write(f"{name} ok {fn()!r}\\n")
    except OSError as exc:
        log.write(f"{name} err {exc.errno}\\n")
def write():
    with open("result.txt", "w") as f:
        return f.write("made here")
def read(path):
    with open(path) as f:
        return f.read()
step("write", write)
step("read", lambda: read("result.txt"))
step("again", lambda: os.close(os.open("result.txt", os.O_CREAT | os.O_WRONLY)))
step("other", lambda: os.close(os.open("other.txt", os.O_CREAT | os.O_WRONLY)))
step("secret", lambda: read("secret/s"))
"""
    rules = work_rule(tmp_path) + created_rule(tmp_path / "result.txt")
    events = await supervise(tmp_path, script, rules)
    steps = dict(line.split(" ", 1) for line in (tmp_path / "out" / "log").read_text().splitlines())
    assert steps == {"write": "ok 9", "read": "ok 'made here'", "again": "ok None",
                     "other": "err 13", "secret": "err 13"}  # fmt: skip
    [bound] = bindings(events)
    assert bound["bound"] is True and bound["object"] == str(tmp_path / "result.txt")
    assert (tmp_path / "result.txt").read_text() == "made here"


@pytest.mark.trio
async def test_a_creation_repeated_that_never_binds_is_told_once_and_holds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule names ``a/b``; the program makes ``a`` a file, 300 times, from 3 threads at
    once (removing it each time). Each creation goes through trio and is refused; the gap: each
    wrote an event (a program could fill the log). Now the refusal is told once, the rule stays
    pending, and the supervisor holds no more descriptors than before."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = """
import os, threading
def make():
    for _ in range(100):
        try:
            os.close(os.open("a", os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink("a")
        except OSError:
            pass
threads = [threading.Thread(target=make) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""
    rules = work_rule(tmp_path).replace('"refer"', '"refer", "write_file"')
    rules += created_rule(tmp_path / "a" / "b")
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        sup.listeners.append(events.append)
        before = len(os.listdir("/proc/self/fd"))
        argv = [sys.executable, "-c", script]
        assert await sup.run(argv, forward_signals=False) == 0
        assert len(os.listdir("/proc/self/fd")) == before
        assert [rule.names for rule in sup.rules.created] == [(b"a", b"b")]
    refused = [e for e in bindings(events) if "created as a file" in e.get("reason", "")]
    assert len(refused) == 1, len(refused)


@pytest.mark.trio
async def test_spellings_of_the_name_bind_in_the_anchor_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pending names matched by the directory object they are made in, however the path is
    spelled (``..``, ``.``, ``//``, a trailing slash, a dirfd, an absolute path); the same name
    made in another directory (out/, named directly or through ``..``) gets no rule, and a
    creation through /proc/self/fd is left to the kernel. Caught: matching by the last name
    alone, or by the path string."""
    make_tree(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    script = f"""
import os
log = open("out/log", "w", buffering=1)
def step(name, fn):
    try:
        fn()
        log.write(f"{{name}} ok\\n")
    except OSError as exc:
        log.write(f"{{name}} err {{exc.errno}}\\n")
here = os.open(".", os.O_PATH | os.O_DIRECTORY)
step("decoy_out", lambda: os.mkdir("out/m1"))
step("decoy_dotdot", lambda: os.mkdir("sub/../out/m2"))
step("proc_fd", lambda: os.mkdir(f"/proc/self/fd/{{here}}/m1"))
step("m1", lambda: os.mkdir("sub/../m1/"))
step("m2", lambda: os.mkdir("./m2", dir_fd=here))
step("m3", lambda: os.mkdir({str(tmp_path)!r} + "//m3//"))
for name in ("m1", "m2", "m3", "out/m1", "out/m2"):
    step("write_" + name, lambda: open(name + "/f", "w").close())
"""
    names = ("m1", "m2", "m3")
    rules = work_rule(tmp_path) + "".join(created_rule(tmp_path / name) for name in names)
    events = await supervise(tmp_path, script, rules)
    steps = dict(line.split(" ", 1) for line in (tmp_path / "out" / "log").read_text().splitlines())
    assert steps == {"decoy_out": "ok", "decoy_dotdot": "ok", "proc_fd": "err 13", "m1": "ok",
                     "m2": "ok", "m3": "ok", "write_m1": "ok", "write_m2": "ok", "write_m3": "ok",
                     "write_out/m1": "ok", "write_out/m2": "ok"}  # fmt: skip
    assert sorted(e["object"] for e in bindings(events)) == [str(tmp_path / n) for n in names]
