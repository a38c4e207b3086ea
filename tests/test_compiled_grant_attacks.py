"""Attacks on the supervisor-granted opens the compiled loop performs (engine.grants), each
made by the supervised program itself, on the real kernel."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from supervised import policy_text, wait_until
from test_compiled_grants import READER, Drained, rw, someone_elses

from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor

pytestmark = pytest.mark.kernel


async def run(
    tmp_path: Path, rules: str, script: str, *args: str, events: list[Any] | None = None
) -> Any:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rules))
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    async with Supervisor.open(doc) as sup:
        if events is not None:
            sup.listeners.append(events.append)
        status = await sup.run(
            [sys.executable, "-c", script, str(out / "r.json"), *args], forward_signals=False
        )
    assert status == 0
    return json.loads((out / "r.json").read_text())


#: Reads a file owned by another user (mode 0600) before and after entering a user namespace
#: of its own, where its capabilities hold over no object of the host.
NEW_USERNS = READER + r"""
r = {"before": [read() for _ in range(5)]}
assert libc.unshare(0x10000000) == 0, ctypes.get_errno()  # CLONE_NEWUSER
r["inside"] = [read() for _ in range(5)]
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_a_thread_in_a_user_namespace_of_its_own_is_not_served_with_our_capabilities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    granted = tmp_path / "granted"
    theirs = someone_elses(granted)
    drained = Drained(monkeypatch)
    result = await run(tmp_path, rw(granted), NEW_USERNS, str(theirs))
    assert result["before"] == ["someone else's"] * 5
    assert drained.paths.count(os.fsencode(theirs)) >= 1
    # In its own namespace, CAP_DAC_OVERRIDE covers only the ids mapped there (none).
    assert result["inside"] == [errno.EACCES] * 5


#: Reads, then writes, the policy file by every absolute name the program can give it; one
#: errno per (name, way) (0: done).
POLICY_NAMES = r"""
import json, os, sys
out, work, policy, ours = open(sys.argv[1], "w"), sys.argv[2], sys.argv[3], sys.argv[4]
os.symlink(policy, os.path.join(work, "sl"))
os.symlink(f"/proc/{ours}/root{policy}", os.path.join(work, "proc-sl"))
names = {
    "plain": policy, "hard link": os.path.join(work, "hl"), "symlink": os.path.join(work, "sl"),
    "bind mount": os.path.join(work, "bm"),
    "dot-dot": os.path.join(work, "sub", "..", "policy.toml"),
    "double slash": "/" + policy, "dot": policy.replace("/work/", "/work/./"),
    "trailing dot-dot": os.path.join(work, "policy.toml", ".."),
    # Through the supervisor's /proc: its root, and its held directory of the policy file.
    "proc root": f"/proc/{ours}/root{policy}", "proc root symlink": os.path.join(work, "proc-sl"),
    "proc fd": f"/proc/{ours}/fd/{sys.argv[5]}/policy.toml",
}
def attempt(path, flags):
    try:
        os.close(os.open(path, flags))
        return 0
    except OSError as e:
        return e.errno
for _ in range(20):  # the loop is vouched for it, and learns the mounts, first
    with open(os.path.join(work, "other.txt")) as f:
        f.read()
r = {}
for way, flags in (("read", os.O_RDONLY), ("write", os.O_WRONLY),
                   ("append", os.O_WRONLY | os.O_APPEND), ("rdwr", os.O_RDWR)):
    for name, path in names.items():
        r[f"{name} {way}"] = [attempt(path, flags) for _ in range(3)]
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_the_policy_file_by_any_absolute_name_is_never_opened_for_writing_in_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link made before the run, a symlink made by the program, a bind mount of the
    file, '..', '//' and '/./': the loop checks the object the name leads to, so each name
    of the policy file is refused for writing, and read as it may be. Through the
    supervisor's /proc (its root, its held directory, a symlink to them): not even read
    (left to the kernel, which keeps a sandboxed program out of another domain's /proc)."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "other.txt").write_text("other")
    policy = work / "policy.toml"
    original = policy_text(tmp_path, supervisor_rules=rw(work))
    policy.write_text(original)
    os.link(policy, work / "hl")
    (work / "bm").write_text("")
    subprocess.run(["mount", "--bind", str(policy), str(work / "bm")], check=True)
    try:
        doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(work)})
        drained = Drained(monkeypatch)
        out = tmp_path / "out"
        out.mkdir()
        async with Supervisor.open(doc) as sup:
            status = await sup.run(
                [sys.executable, "-c", POLICY_NAMES, str(out / "r.json"), str(work),
                 str(policy), str(os.getpid()), str(sup.guard.entries[0].dirfd)],
                forward_signals=False,
            )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(work / "bm")], check=True)
    assert status == 0
    result = json.loads((out / "r.json").read_text())
    for key, errnos in result.items():
        if key == "trailing dot-dot read":
            assert errnos == [errno.ENOTDIR] * 3, key
        elif key.startswith("trailing dot-dot"):
            assert errnos in ([errno.ENOTDIR] * 3, [errno.EISDIR] * 3), key
        elif key.startswith("proc"):
            assert errnos == [errno.EACCES] * 3, key  # another domain's /proc: not even read
        elif key.endswith(" read"):
            assert errnos == [0] * 3, key
        else:
            assert errnos == [errno.EACCES] * 3, key
    assert policy.read_text() == original
    assert drained.paths.count(os.fsencode(work / "other.txt")) >= 10


#: Fills its descriptor table (RLIMIT_NOFILE lowered), then opens a granted file: the fd the
#: loop injects has no room. Then frees one and opens again.
FULL_TABLE = r"""
import json, os, resource, sys
out, path = open(sys.argv[1], "w"), sys.argv[2]
def read():
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return e.errno
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)
r = {"before": [read() for _ in range(10)]}
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.dup(0))
except OSError:
    pass
r["full"] = [read() for _ in range(5)]
os.close(held.pop())
r["one free"] = [read() for _ in range(5)]
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_an_open_the_loop_cannot_inject_for_a_full_table_is_told_emfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    f = granted / "f"
    f.write_text("granted")
    drained = Drained(monkeypatch)
    result = await run(tmp_path, rw(granted), FULL_TABLE, str(f))
    assert result == {
        "before": ["granted"] * 10, "full": [errno.EMFILE] * 5, "one free": ["granted"] * 5,
    }  # fmt: skip
    assert drained.paths.count(os.fsencode(f)) >= 10


#: Opens a granted file again and again; each result goes to one of two lists, by whether the
#: marker "after" existed before that open began (stat: not trapped). Ends at "stop".
KEEP_OPENING = r"""
import json, os, sys
out, path, marks = sys.argv[1], sys.argv[2], sys.argv[3]
r = {"before": [], "after": []}
while not os.path.exists(os.path.join(marks, "stop")):
    after = os.path.exists(os.path.join(marks, "after"))
    try:
        os.close(os.open(path, os.O_RDONLY))
        got = 0
    except OSError as e:
        got = e.errno
    r["after" if after else "before"].append(got)
    done = r["after" if after else "before"]
    if len(done) == 50:
        with open(os.path.join(marks, "after done" if after else "progress"), "w") as f:
            f.write("50")
with open(out, "w") as f:
    json.dump(r, f)
"""


@pytest.mark.trio
async def test_no_open_is_performed_in_the_loop_under_a_rule_a_reload_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit of a reload returns only once the old generation's serving thread has
    stopped (engine.loop._switch): every open that begins after it is judged by the new
    rules, though the loop was performing that very open a moment before."""
    granted, marks, out = tmp_path / "granted", tmp_path / "out" / "marks", tmp_path / "out"
    granted.mkdir()
    marks.mkdir(parents=True)
    f = granted / "f"
    f.write_text("granted")
    policy = tmp_path / "p.toml"
    policy.write_text(policy_text(tmp_path, supervisor_rules=rw(granted)))
    drained = Drained(monkeypatch)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(tmp_path)})
    status: list[int] = []
    async with Supervisor.open(doc, watch=True) as sup, trio.open_nursery() as nursery:

        async def run_it() -> None:
            argv = [sys.executable, "-c", KEEP_OPENING, str(out / "r.json"), str(f), str(marks)]
            status.append(await sup.run(argv, forward_signals=False))

        nursery.start_soon(run_it)
        await wait_until(lambda: (marks / "progress").exists(), "opens in the loop")
        generation = sup.generation
        replacement = policy.with_name("p.toml.new")
        replacement.write_text(policy_text(tmp_path))
        os.replace(replacement, policy)
        await wait_until(lambda: sup.generation > generation, "the reload's commit")
        (marks / "after").write_text("")
        await wait_until(lambda: (marks / "after done").exists(), "opens after the commit")
        (marks / "stop").write_text("")
    assert status == [0]
    result = json.loads((out / "r.json").read_text())
    assert set(result["before"]) <= {0, errno.EACCES} and 0 in result["before"]
    assert len(result["after"]) >= 50 and set(result["after"]) == {errno.EACCES}
    assert os.fsencode(f) in drained.paths


#: Opens (and closes, unread) one file again and again.
OPEN_AGAIN = r"""
import json, os, sys
out, path = open(sys.argv[1], "w"), sys.argv[2]
r = []
for _ in range(10):
    try:
        os.close(os.open(path, os.O_RDONLY))
        r.append(0)
    except OSError as e:
        r.append(e.errno)
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_an_open_on_an_overlay_with_a_fuse_lower_layer_is_not_performed_in_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overlay opens the files of its layers: one with a FUSE layer may block as FUSE
    does (perform.blocking), and its opens are Python's, which hands them to a worker. It
    was known by its own type alone, and the loop performed them in the serving thread."""
    from fuse_server import hanging_fuse

    root = Path(os.path.realpath(tmp_path))
    for name in ("fuse", "up", "work", "ov"):
        (root / name).mkdir()
    with hanging_fuse(root / "fuse", entry_valid=60):  # names cached, as most servers let
        options = f"lowerdir={root}/fuse,upperdir={root}/up,workdir={root}/work"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(root / "ov")], check=True
        )
        try:
            drained = Drained(monkeypatch)
            mapped = root / "ov" / "mapped"  # opened by the FUSE server, read never
            result = await run(root, rw(root / "ov"), OPEN_AGAIN, str(mapped))
        finally:
            subprocess.run(["umount", "-l", str(root / "ov")], check=True)
    assert result == [0] * 10
    assert os.fsencode(mapped) not in drained.paths


#: Reads a granted file, then restricts itself with a Landlock layer of its own that lets it
#: read nothing but its output directory, and reads it again.
OWN_SANDBOX = READER + r"""
def create(name):
    try:
        os.close(os.open(os.path.join(os.path.dirname(path), name), os.O_CREAT | os.O_WRONLY))
        return 0
    except OSError as e:
        return e.errno
r = {"before": [read() for _ in range(5)], "create before": create("a")}
READ_FILE = 1 << 2
attr = ctypes.create_string_buffer(struct.pack("=Q", READ_FILE))
ruleset = libc.syscall(444, attr, 8, 0)  # landlock_create_ruleset
assert ruleset >= 0, ctypes.get_errno()
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.syscall(446, ruleset, 0) == 0, ctypes.get_errno()  # landlock_restrict_self
r["sandboxed"] = [read() for _ in range(5)]
r["create sandboxed"] = create("b")  # its layer allows it; nothing performs it for it any more
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_a_landlock_layer_the_program_adds_itself_still_holds_for_granted_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor acts with its own domain, which knows nothing of a layer the program
    adds to itself: once it does (landlock_restrict_self, trapped), nothing more is performed
    for it, in the loop or in Python; the kernel decides in its context, and the user is
    told."""
    granted = tmp_path / "granted"
    granted.mkdir()
    f = granted / "f"
    f.write_text("granted")
    drained = Drained(monkeypatch)
    events: list[Any] = []
    result = await run(tmp_path, rw(granted), OWN_SANDBOX, str(f), events=events)
    assert result["before"] == ["granted"] * 5
    assert result["create before"] == 0
    assert drained.paths.count(os.fsencode(f)) >= 1
    assert result["sandboxed"] == [errno.EACCES] * 5
    assert result["create sandboxed"] == errno.EACCES  # the static layer does not grant it
    assert not (granted / "b").exists()
    own = [e for e in events if e["event"] == "own_layer"]
    assert len(own) == 1 and own[0]["pid"] > 0


#: A second thread drops root for itself alone (raw setresuid, keeping root as its saved
#: id) and takes it back, twenty times, reading a root-only file each time; the first
#: thread reads it before, meanwhile and after.
TOGGLE_ROOT = READER + r"""
SETRESUID = 117
r = {"main": [read() for _ in range(5)], "dropped": [], "root again": []}
def toggle():
    for _ in range(20):
        assert libc.syscall(SETRESUID, 65534, 65534, 0) == 0
        r["dropped"].append(read())
        assert libc.syscall(SETRESUID, 0, 0, 0) == 0
        r["root again"].append(read())
t = threading.Thread(target=toggle)
t.start()
while t.is_alive():  # meanwhile: its vouch withdrawn and given again, again and again
    r["main"].append(read())
t.join()
r["main"] += [read() for _ in range(5)]
json.dump(r, out)
out.close()
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="raw syscall numbers of x86_64")
@pytest.mark.trio
async def test_a_thread_that_drops_and_retakes_root_is_served_with_what_it_has_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials are per thread: a thread's setresuid withdraws every vouch, and the next
    request of each thread is judged with its own."""
    granted = tmp_path / "granted"
    granted.mkdir()
    secret = granted / "root-only"
    secret.write_text("root")
    secret.chmod(0o600)
    drained = Drained(monkeypatch)
    result = await run(tmp_path, rw(granted), TOGGLE_ROOT, str(secret))
    assert result["dropped"] == [errno.EACCES] * 20
    assert result["root again"] == ["root"] * 20
    assert len(result["main"]) >= 10 and set(result["main"]) == {"root"}
    assert drained.paths.count(os.fsencode(secret)) >= 5


#: Opens a granted file more times than the loop keeps records of opens between two counts.
FLOOD = r"""
import json, os, sys
out, path, n = open(sys.argv[1], "w"), sys.argv[2], int(sys.argv[3])
failed = 0
for _ in range(n):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        failed += 1
json.dump(failed, out)
out.close()
"""


@pytest.mark.trio
async def test_a_flood_of_opens_past_the_ring_of_performed_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 65536 opens between two counts the oldest records go (as in PerformedLog): every
    open is still answered, the records kept are whole, and the count goes on."""
    granted = tmp_path / "granted"
    granted.mkdir()
    f = granted / "f"
    f.write_text("granted")
    drained = Drained(monkeypatch)
    n = 70_000
    assert await run(tmp_path, rw(granted), FLOOD, str(f), str(n)) == 0
    assert drained.paths and set(drained.paths) == {os.fsencode(f)}
    assert n - 65_536 <= len(drained.paths) <= n


#: Opens a granted file (the loop performs its opens), then one whose open never comes
#: back, then the first again.
HELD_OPEN = r"""
import json, os, sys
out, first, held = open(sys.argv[1], "w"), sys.argv[2], sys.argv[3]
def attempt(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
        return 0
    except OSError as e:
        return e.errno
r = {"first": [attempt(first) for _ in range(5)], "held": attempt(held)}
r["after"] = [attempt(first) for _ in range(5)]
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_an_open_held_by_a_hung_fuse_layer_of_an_overlay_is_not_held_in_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open that never returns (an overlay on a FUSE server that has hung), of a name
    cached and by a thread the loop performs opens for: it is handed to a worker, answered
    (EIO) at its deadline, and the program served on; no serving thread is held (which the
    stall watch would report, with no path, only after STALL_SECONDS)."""
    from fuse_server import hanging_fuse

    from llsupervise.supervisor.engine import offload

    monkeypatch.setattr(offload, "DEADLINE_SECONDS", 0.5)
    root = Path(os.path.realpath(tmp_path))
    for name in ("fuse", "up", "work", "ov", "granted"):
        (root / name).mkdir()
    first = root / "granted" / "f"
    first.write_text("granted")
    events: list[Any] = []
    drained = Drained(monkeypatch)
    with hanging_fuse(root / "fuse", entry_valid=60) as server:
        options = f"lowerdir={root}/fuse,upperdir={root}/up,workdir={root}/work"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(root / "ov")], check=True
        )
        try:
            held = root / "ov" / "mapped"
            os.stat(held)  # its name cached: the loop's walk finds it
            server.frozen = True  # its open is never answered
            policy = root / "p.toml"
            policy.write_text(policy_text(root, supervisor_rules=rw(root / "granted")
                                          + rw(root / "ov")))  # fmt: skip
            doc = load_policy(policy, {"HOME": str(root), "PWD": str(root)})
            out = root / "out"
            out.mkdir()
            async with Supervisor.open(doc) as sup:
                sup.listeners.append(events.append)
                argv = [sys.executable, "-c", HELD_OPEN, str(out / "r.json"), str(first),
                        str(held)]  # fmt: skip
                status = await sup.run(argv, forward_signals=False)
        finally:
            subprocess.run(["umount", "-l", str(root / "ov")], check=True)
    assert status == 0
    result = json.loads((out / "r.json").read_text())
    assert result == {"first": [0] * 5, "held": errno.EIO, "after": [0] * 5}
    stalls_seen = [(e["path"], e["outcome"]) for e in events if e["event"] == "stall"]
    assert stalls_seen == [(str(held), "refused")]
    assert os.fsencode(held) not in drained.paths
    assert drained.paths.count(os.fsencode(first)) >= 5


#: Forks children that open a granted file without end, and kills each (SIGKILL) once it has
#: opened it a few times: some die with an open being performed or injected.
KILLED_MIDWAY = r"""
import json, os, signal, sys
out, path = open(sys.argv[1], "w"), sys.argv[2]
killed = 0
for _ in range(20):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        n = 0
        while True:
            os.close(os.open(path, os.O_RDONLY))
            n += 1
            if n == 20:
                os.write(w, b"x")
    os.close(w)
    os.read(r, 1)
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    killed += 1
with open(path) as f:
    json.dump({"killed": killed, "still": f.read()}, out)
out.close()
"""


@pytest.mark.trio
async def test_programs_killed_while_the_loop_performs_their_opens_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller gone between the open and the injection: the fd is closed, the loop goes on
    (the supervisor holds no more descriptors after the run than a run without kills)."""
    granted = tmp_path / "granted"
    granted.mkdir()
    f = granted / "f"
    f.write_text("granted")
    drained = Drained(monkeypatch)
    before = len(os.listdir("/proc/self/fd"))
    result = await run(tmp_path, rw(granted), KILLED_MIDWAY, str(f))
    assert result == {"killed": 20, "still": "granted"}
    assert drained.paths.count(os.fsencode(f)) >= 20 * 10
    assert len(os.listdir("/proc/self/fd")) <= before


#: Opens a file under a mount point again and again; once the marker "swapped" exists, opens
#: the file the new mount there serves.
ACROSS_A_SWAP = r"""
import json, os, sys, time
out, first, second, marks = open(sys.argv[1], "w"), sys.argv[2], sys.argv[3], sys.argv[4]
def attempt(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
        return 0
    except OSError as e:
        return e.errno
r = {"first": [attempt(first) for _ in range(10)]}
open(os.path.join(marks, "learnt"), "w").close()
while not os.path.exists(os.path.join(marks, "swapped")):
    time.sleep(0.01)
r["second"] = [attempt(second) for _ in range(5)]
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_a_mount_learnt_inline_then_replaced_by_fuse_is_not_opened_in_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop knows mounts by unique id, never reused: the tmpfs it learnt is gone, and
    the FUSE mount in its place (same path) is Python's, which finds it may block."""
    from fuse_server import hanging_fuse

    root = Path(os.path.realpath(tmp_path))
    point, marks = root / "point", root / "out" / "marks"
    point.mkdir()
    marks.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(point)], check=True)
    (point / "g").write_text("tmpfs")
    policy = root / "p.toml"
    # On the directory above: a rule holds the object it names, which the swap keeps alive.
    policy.write_text(policy_text(root, supervisor_rules=rw(root)))
    doc = load_policy(policy, {"HOME": str(root), "PWD": str(root)})
    drained = Drained(monkeypatch)
    status: list[int] = []
    try:
        async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:

            async def run_it() -> None:
                argv = [sys.executable, "-c", ACROSS_A_SWAP, str(root / "out" / "r.json"),
                        str(point / "g"), str(point / "mapped"), str(marks)]  # fmt: skip
                status.append(await sup.run(argv, forward_signals=False))

            nursery.start_soon(run_it)
            await wait_until(lambda: (marks / "learnt").exists(), "opens on the tmpfs")
            subprocess.run(["umount", "-l", str(point)], check=True)
            with hanging_fuse(point, entry_valid=60):
                os.stat(point / "mapped")  # cached: the loop's walk finds it
                (marks / "swapped").write_text("")
                await wait_until(lambda: bool(status), "the program's end")
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    assert status == [0]
    result = json.loads((root / "out" / "r.json").read_text())
    assert result == {"first": [0] * 10, "second": [0] * 5}
    assert os.fsencode(point / "g") in drained.paths
    assert os.fsencode(point / "mapped") not in drained.paths


#: Reads the policy file (the loop is vouched for it), waits for it to be replaced (an
#: editor's save: a new file renamed over it), then tries to write the new one.
AFTER_A_SAVE = r"""
import json, os, sys, time
out, policy, marks = open(sys.argv[1], "w"), sys.argv[2], sys.argv[3]
def attempt(flags):
    try:
        os.close(os.open(policy, flags))
        return 0
    except OSError as e:
        return e.errno
r = {"read": [attempt(os.O_RDONLY) for _ in range(10)]}
open(os.path.join(marks, "ready"), "w").close()
while not os.path.exists(os.path.join(marks, "saved")):
    time.sleep(0.01)
r["read again"] = [attempt(os.O_RDONLY) for _ in range(3)]
r["write"] = [attempt(os.O_WRONLY) for _ in range(3)]
r["rdwr"] = [attempt(os.O_RDWR) for _ in range(3)]
json.dump(r, out)
out.close()
"""


@pytest.mark.trio
async def test_the_policy_file_saved_as_a_new_file_during_the_run_stays_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop looks the guard's entries up live: the file now at the policy's name (a new
    inode, never seen when the loop was built) is refused for writing."""
    work, marks = tmp_path / "work", tmp_path / "out" / "marks"
    work.mkdir()
    marks.mkdir(parents=True)
    policy = work / "policy.toml"
    text = policy_text(tmp_path, supervisor_rules=rw(work))
    policy.write_text(text)
    doc = load_policy(policy, {"HOME": str(tmp_path), "PWD": str(work)})
    drained = Drained(monkeypatch)
    status: list[int] = []
    async with Supervisor.open(doc) as sup, trio.open_nursery() as nursery:

        async def run_it() -> None:
            argv = [sys.executable, "-c", AFTER_A_SAVE, str(tmp_path / "out" / "r.json"),
                    str(policy), str(marks)]  # fmt: skip
            status.append(await sup.run(argv, forward_signals=False))

        nursery.start_soon(run_it)
        await wait_until(lambda: (marks / "ready").exists(), "reads of the policy file")
        saved = work / ".policy.toml.swp"
        saved.write_text(text + "# saved\n")
        os.replace(saved, policy)
        (marks / "saved").write_text("")
        await wait_until(lambda: bool(status), "the program's end")
    assert status == [0]
    result = json.loads((tmp_path / "out" / "r.json").read_text())
    assert result == {
        "read": [0] * 10, "read again": [0] * 3, "write": [errno.EACCES] * 3,
        "rdwr": [errno.EACCES] * 3,
    }  # fmt: skip
    assert policy.read_text() == text + "# saved\n"
    assert drained.paths.count(os.fsencode(policy)) >= 5  # the loop served the reads
