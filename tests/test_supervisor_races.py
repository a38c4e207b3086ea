"""Swapping what a granted path names while the supervised child uses it: no secret gets through.

The child opens ``zone/link`` (a symlink that another process keeps exchanging between one to
``zone/ok`` and one to ``secret/s``), opens ``zone/sub/f`` (``zone/sub`` keeps being exchanged
between a real directory and a symlink to ``secret/``), and creates files in ``zone/sub``, in a
loop. The swapper is a separate, unrestricted process using ``renameat2(RENAME_EXCHANGE)``, so
both names always exist and only what they point to changes. The secret is outside every rule.

Two ways of granting ``zone``: a supervisor rule on it (the generation's broker serves the
child), and no rule at all with a front-end that answers ALLOW_ONCE to every denial outside the
secret (a one-shot broker serves each answer, and must grant only the object that was checked,
whatever the path names by the time it is replayed).
"""

from __future__ import annotations

import collections
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised import PUBLIC, SECRET, policy

from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import Answer, Decision, Denial

pytestmark = pytest.mark.kernel

SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
zone, ready = os.fsencode(sys.argv[1]), int(sys.argv[2])
pairs = [(zone + b"/link", zone + b"/alt"), (zone + b"/sub", zone + b"/sub_alt")]
first = True
while True:
    for a, b in pairs:
        if libc.renameat2(-100, a, -100, b, 2) != 0:  # RENAME_EXCHANGE
            raise OSError(ctypes.get_errno(), "renameat2")
    if first:
        os.write(ready, b"r")
        os.close(ready)
        first = False
"""

# Counts outcomes per operation: "public" (the legitimate content), "other" (anything else,
# which would be a leak), or the errno name.
CHILD = r"""
import errno, json, os, sys
zone, rounds = sys.argv[1], int(sys.argv[4])
public, secret = sys.argv[2].encode(), sys.argv[3].encode()
counts = {}
def count(key):
    counts[key] = counts.get(key, 0) + 1
def read(name):
    try:
        fd = os.open(os.path.join(zone, name), os.O_RDONLY)
    except OSError as e:
        return errno.errorcode[e.errno]
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if data == public:
        return "public"
    return "secret" if data == secret else "other"
for i in range(rounds):
    count("link " + read("link"))
    count("sub/f " + read("sub/f"))
    try:
        os.close(os.open(os.path.join(zone, "sub", f"n{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        count("create ok")
    except OSError as e:
        count("create " + errno.errorcode[e.errno])
print(json.dumps(counts))
"""


def make_zone(root: Path) -> tuple[Path, Path]:
    """zone/{ok, link -> ok, alt -> ../secret/s, sub/f, sub_alt -> ../secret}, secret/{s, f}."""
    zone, secret = root / "zone", root / "secret"
    (root / "out").mkdir()
    (zone / "sub").mkdir(parents=True)
    secret.mkdir()
    (zone / "ok").write_bytes(PUBLIC)
    (zone / "sub" / "f").write_bytes(PUBLIC)
    (secret / "s").write_bytes(SECRET)
    (secret / "f").write_bytes(SECRET)
    (zone / "link").symlink_to("ok")
    (zone / "alt").symlink_to("../secret/s")
    (zone / "sub_alt").symlink_to("../secret")
    return zone, secret


@pytest.fixture
def swapping(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The zone, with a swapper process already exchanging its names."""
    zone, secret = make_zone(tmp_path)
    ready_r, ready_w = os.pipe()
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(zone), str(ready_w)], pass_fds=[ready_w]
    )
    os.close(ready_w)
    try:
        readable, _, _ = select.select([ready_r], [], [], 60)  # only against a hang
        assert readable and os.read(ready_r, 1) == b"r", "the swapper did not start"
        yield zone, secret
        assert swapper.poll() is None, "the swapper stopped early"
    finally:
        os.close(ready_r)
        swapper.kill()
        swapper.wait()


class AllowOnceOutsideSecret:
    """Answers ALLOW_ONCE to every denial, except those about the secret directory."""

    def __init__(self, secret: Path) -> None:
        self.secret = f"{secret}/"
        self.asked: collections.Counter[str] = collections.Counter()

    async def ask(self, denial: Denial) -> Decision:
        if denial.path.startswith(self.secret):
            self.asked["secret"] += 1
            return Decision(Answer.DENY)
        self.asked["zone"] += 1
        return Decision(Answer.ALLOW_ONCE)


async def run_child(root: Path, sup: Supervisor, zone: Path, rounds: int) -> dict[str, int]:
    out = root / "out" / "counts.json"
    with out.open("wb") as stdout:
        argv = [sys.executable, "-c", CHILD, str(zone), PUBLIC.decode(), SECRET.decode()]
        status = await sup.run(
            [*argv, str(rounds)], forward_signals=False, stdio=(None, stdout.fileno(), None)
        )
    assert status == 0
    counts: dict[str, int] = json.loads(out.read_bytes())
    return counts


def assert_nothing_leaked(counts: dict[str, int], secret: Path) -> None:
    for name in ("link", "sub/f"):
        assert counts.get(f"{name} secret", 0) == 0, counts
        assert counts.get(f"{name} other", 0) == 0, counts
        assert counts.get(f"{name} public", 0) >= 1, counts  # the legitimate file was read
        assert counts.get(f"{name} EACCES", 0) >= 1, counts  # and the swaps were seen
    assert counts.get("create ok", 0) >= 1, counts
    assert counts.get("create EACCES", 0) >= 1, counts
    # Nothing was created in, or taken from, the secret directory.
    assert sorted(p.name for p in secret.iterdir()) == ["f", "s"]
    assert (secret / "s").read_bytes() == SECRET


@pytest.mark.trio
async def test_swaps_during_a_grant_never_reach_the_secret(
    tmp_path: Path, swapping: tuple[Path, Path]
) -> None:
    zone, secret = swapping
    rules = f"""
[[supervisor.path_beneath]]
allowed_access = ["read_file", "write_file", "make_reg"]
parent = ["{zone}"]
"""
    async with Supervisor.open(policy(tmp_path, supervisor_rules=rules)) as sup:
        counts = await run_child(tmp_path, sup, zone, 2000)
    assert_nothing_leaked(counts, secret)


@pytest.mark.trio
async def test_allow_once_grants_only_the_checked_object(
    tmp_path: Path, swapping: tuple[Path, Path]
) -> None:
    zone, secret = swapping
    frontend = AllowOnceOutsideSecret(secret)
    decisions = ModeDecisions("interactive", "deny", 600, frontend)
    async with Supervisor.open(policy(tmp_path, mode="interactive"), decisions=decisions) as sup:
        counts = await run_child(tmp_path, sup, zone, 1000)
    assert_nothing_leaked(counts, secret)
    assert frontend.asked["zone"] >= 1  # answered ALLOW_ONCE
    assert frontend.asked["secret"] >= 1  # and some checks found the secret (denied)
