"""The fast path for cwd-relative opens (engine.handler._static_allows_here): judged by the
canonical path of what the path leads to (operations.cached_real_path), never lexically, so a
symlink in a static directory that leads into a supervisor-granted one is still granted, and
one that leads nowhere granted is still a denial the supervisor sees."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from supervised import policy

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.engine import handler, loop
from llsupervise.supervisor.engine._fastpath import real_path as cached_real_path
from llsupervise.supervisor.engine.grants import take_performed
from llsupervise.supervisor.perform import operations
from llsupervise.supervisor.perform.operations import Target

NAMES = [b"f", b"d", b"d/g", b"to-f", b"to-d", b"to-d/g", b"abs-f", b"dangling", b"loop",
         b"d/../f", b"to-d/../f", b"./f", b"f/", b"d/", b"missing", b"to-proc", b".",
         b""]  # fmt: skip
FLAGS = [0, os.O_NOFOLLOW, os.O_DIRECTORY, os.O_WRONLY]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = Path(os.path.realpath(tmp_path_factory.mktemp("relative")))
    (root / "f").write_bytes(b"data")
    (root / "d").mkdir()
    (root / "d" / "g").write_bytes(b"data")
    for name, target in [("to-f", "f"), ("to-d", "d"), ("abs-f", str(root / "f")),
                         ("dangling", "nowhere"), ("loop", "loop"),
                         ("to-proc", "/proc/self/status")]:  # fmt: skip
        (root / name).symlink_to(target)
    for each in NAMES:
        with contextlib.suppress(OSError):
            os.stat(root / os.fsdecode(each))
    return root


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), flags=st.sampled_from(FLAGS))
def test_the_resolved_path_is_where_the_open_leads(tree: Path, name: bytes, flags: int) -> None:
    """None, or the canonical path of the object the open would reach (what O_PATH with the
    same flags reaches, named by realpath)."""
    dirfd = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found = cached_real_path(dirfd, name, flags)
        try:
            fd = os.open(name, os.O_PATH | os.O_CLOEXEC | (flags & ~os.O_WRONLY), dir_fd=dirfd)
        except OSError:
            assert found is None  # nothing there: never a path
            event("nothing there")
            return
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        event("left" if found is None else "resolved")
        if found is not None:
            assert os.path.isabs(found)
            parent, last = os.path.split(found)
            assert os.path.join(os.path.realpath(parent), last) == found  # no symlink on the way
            there = os.stat(found, follow_symlinks=False)
            assert (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino)
    finally:
        os.close(dirfd)


OPENS = r"""
import json, os, sys
os.chdir("static")
out = {}
for name in ("f", "to-f", "to-g", "to-s", "../granted/g", "../secret/s"):
    results = []
    for _ in range(3):
        try:
            os.close(os.open(name, os.O_RDONLY))
            results.append("ok")
        except OSError as e:
            results.append(e.errno)
    out[name] = results
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"""


@pytest.mark.kernel
@pytest.mark.trio
async def test_a_relative_open_is_judged_where_it_leads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(os.path.realpath(tmp_path))
    for d in ("static", "granted", "secret", "out"):
        (root / d).mkdir()
    (root / "static" / "f").write_bytes(b"data")
    (root / "granted" / "g").write_bytes(b"data")
    (root / "secret" / "s").write_bytes(b"secret")
    (root / "static" / "to-f").symlink_to("f")
    (root / "static" / "to-g").symlink_to("../granted/g")
    (root / "static" / "to-s").symlink_to("../secret/s")
    monkeypatch.chdir(root)
    doc = policy(
        root,
        extra_static=f"""
[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = ["{root}/static"]
""",
        supervisor_rules=f"""
[[supervisor.path_beneath]]
allowed_access = ["abi.read_execute"]
parent = ["{root}/granted"]
""",
    )
    events: list[Mapping[str, Any]] = []
    performed: list[bytes] = []

    def perform(target: Target) -> int:
        performed.append(target.request.path)
        return operations.perform(target)

    monkeypatch.setattr(handler, "perform", perform)
    # What the compiled loop performs (see engine.grants) is counted too, named as the child
    # named it (it is recorded under the cwd's path).
    cwd = os.fsencode(root / "static") + b"/"

    def take(grants: Any, into: collections.deque[tuple[bytes, float]]) -> None:
        before = len(into)
        take_performed(grants, into)
        performed.extend(p.removeprefix(cwd) for p, _ in list(into)[before:])

    monkeypatch.setattr(loop, "take_performed", take)
    async with Supervisor.open(doc) as sup:
        sup.listeners.append(events.append)
        status = await sup.run(
            [sys.executable, "-c", OPENS, str(root / "out" / "result")], forward_signals=False
        )
    assert status == 0
    result = json.loads((root / "out" / "result").read_text())
    assert result == {
        "f": ["ok"] * 3,
        "to-f": ["ok"] * 3,
        # In a static directory, leading into a supervisor-granted one: granted, as the
        # supervisor layer says (a lexical CONTINUE would have left it to the static layer).
        "to-g": ["ok"] * 3,
        "to-s": [13] * 3,
        "../granted/g": ["ok"] * 3,
        "../secret/s": [13] * 3,
    }
    # The static ones were answered CONTINUE, the others performed by the supervisor. (The
    # first relative open goes the general way, as it opens the cwd; so does the first
    # through a new symlink, whose access time is then updated: a walk of the cache does not.)
    assert performed.count(b"f") <= 1 and performed.count(b"to-f") <= 1, performed
    assert performed.count(b"to-g") == performed.count(b"../granted/g") == 3, performed
    denied = {str(e.get("path", "")) for e in events if e.get("event") == "denial"}
    assert any(p.endswith("secret/s") or p.endswith("to-s") for p in denied), events


RETARGET = r"""
import os, sys
os.chdir("static")
out = []
for target in ("../secret/s", "f", "../secret/s", "f"):
    os.symlink(target, "x.new")
    os.rename("x.new", "x")
    try:
        os.close(os.open("x", os.O_RDONLY))
        out.append("ok")
    except OSError as e:
        out.append(str(e.errno))
with open(sys.argv[1], "w") as f:
    f.write(" ".join(out))
"""


@pytest.mark.kernel
@pytest.mark.trio
async def test_a_name_found_not_static_is_judged_afresh_when_it_leads_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative name once found not static (remembered so) that comes to lead to a static
    file is opened all the same (through the general path), and back again denied."""
    root = Path(os.path.realpath(tmp_path))
    for d in ("static", "secret", "out"):
        (root / d).mkdir()
    (root / "static" / "f").write_bytes(b"data")
    (root / "secret" / "s").write_bytes(b"secret")
    monkeypatch.chdir(root)
    doc = policy(
        root,
        extra_static=f"""
[[path_beneath]]
allowed_access = ["abi.read_write"]
parent = ["{root}/static"]
""",
    )
    async with Supervisor.open(doc) as sup:
        status = await sup.run(
            [sys.executable, "-c", RETARGET, str(root / "out" / "result")], forward_signals=False
        )
    assert status == 0
    assert (root / "out" / "result").read_text() == "13 ok 13 ok"
