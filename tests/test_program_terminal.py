"""The program's own terminal under any name: rules on ${TTY} (/dev/tty) also apply to the
pty the supervisor was given for the program (the interface's), bound to that object; never
to another pty, nor, in headless mode, to the user's terminal the program shares with us.

Each test runs a real child on the real kernel: it opens terminals by name, with and without
O_NOCTTY (the child's own open, judged by its static layer, and one the supervisor performs
for it), and writes what each attempt gave into a file."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from supervised import SYSTEM_DIRS, lines, make_tree, policy_text, wait_until

from llsupervise.messages import Event, ReloadEvent
from llsupervise.policy.loader import parse_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.launch.launcher import LaunchError
from llsupervise.supervisor.rules.objects import ObjectTable, object_id, resolve

pytestmark = pytest.mark.kernel

PYTHON = ["env", "-u", "PYTHONPATH", sys.executable, "-I", "-S", "-c"]

#: argv: the result file, another terminal's name, a file to wait for before a second round
#: ("" for one round). Each attempt is a line "<what> ok" or "<what> errno N".
ATTEMPTS = r"""
import fcntl, os, sys, termios, time
result, other, go = sys.argv[1:4]
out = os.open(result, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
own = os.ttyname(0)

def attempt(what, path, flags, ioctl=False):
    try:
        fd = os.open(path, flags)
        try:
            if ioctl:
                fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
        finally:
            os.close(fd)
        outcome = "ok"
    except OSError as e:
        outcome = "errno %d" % e.errno
    os.write(out, ("%s %s\n" % (what, outcome)).encode())

def round(tag):
    for name, path in (("own", own), ("tty", "/dev/tty"), ("other", other)):
        for how, extra in (("", 0), (" noctty", os.O_NOCTTY)):
            attempt(f"{tag}{name} read{how}", path, os.O_RDONLY | extra)
            attempt(f"{tag}{name} write{how}", path, os.O_WRONLY | extra)
            attempt(f"{tag}{name} ioctl{how}", path, os.O_RDONLY | extra, ioctl=True)

round("")
if go:
    os.write(out, b"waiting\n")
    while not os.path.exists(go):
        time.sleep(0.01)
    round("after reload: ")
"""

DENIED = f"errno {errno.EACCES}"


def tty_rule(rights: str) -> str:
    return f'\n[[path_beneath]]\nallowed_access = [{rights}]\nparent = ["${{TTY}}"]\n'


def text_for(root: Path, rights: str, supervisor_rules: str = "") -> str:
    """The test policy without /dev (which would give every pty), plus ``rights`` on ${TTY}."""
    system = ", ".join(f'"{d}"' for d in SYSTEM_DIRS)
    without_dev = ", ".join(f'"{d}"' for d in SYSTEM_DIRS if d != "/dev")
    text = policy_text(root, extra_static=tty_rule(rights), supervisor_rules=supervisor_rules)
    return text.replace(system, without_dev)


def env(root: Path) -> dict[str, str]:
    return {"HOME": str(root), "PWD": str(root)}


@contextmanager
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def outcomes(result: Path) -> dict[str, str]:
    """Each attempt the child wrote, with what it gave ("ok" or "errno N")."""
    found = {}
    for line in lines(result):
        if line.endswith(" ok"):
            found[line[: -len(" ok")]] = "ok"
        elif " errno " in line:
            what, _, number = line.rpartition(" errno ")
            found[what] = f"errno {number}"
    return found


def table(own: tuple[str, str, str], other: str = DENIED, tag: str = "") -> dict[str, str]:
    """What each attempt should give: ``own`` for read, write and an ioctl on the program's
    terminal under both its names; ``other`` for each on the other terminal."""
    rows = {}
    for how in ("", " noctty"):
        for name in ("own", "tty"):
            for op, outcome in zip(("read", "write", "ioctl"), own, strict=True):
                rows[f"{tag}{name} {op}{how}"] = outcome
        for op in ("read", "write", "ioctl"):
            rows[f"{tag}other {op}{how}"] = other
    return rows


@pytest.mark.trio
@pytest.mark.parametrize(
    ("rights", "own"),
    [
        ('"read_file", "write_file", "ioctl_dev"', ("ok", "ok", "ok")),
        ('"read_file"', ("ok", DENIED, DENIED)),
    ],
    ids=["read-write-ioctl", "read-only"],
)
async def test_the_programs_pty_by_name_gets_exactly_the_tty_rights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rights: str, own: tuple[str, str, str]
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = paths["out"] / "result"
    doc = parse_policy(text_for(tmp_path, rights), str(tmp_path / "p.toml"), env(tmp_path))
    with pty() as (_, slave), pty() as (_, other_slave):
        other = os.ttyname(other_slave)
        async with Supervisor.open(doc, terminal=slave) as sup:
            status = await sup.run(
                [*PYTHON, ATTEMPTS, str(result), other, ""], forward_signals=False,
                stdio=(slave, slave, slave), new_session=True,
            )  # fmt: skip
    assert status == 0
    assert outcomes(result) == table(own)


@pytest.mark.trio
async def test_the_pty_is_mirrored_only_where_tty_is(tmp_path: Path) -> None:
    """The supervisor's view: one row per layer the ${TTY} rule is in, at the same place
    and with the same rights, for the pty it was given and not for another."""
    rights = '"read_file", "ioctl_dev"'
    supervisor_rule = (
        '\n[[supervisor.path_beneath]]\nallowed_access = ["write_file"]\nparent = ["${TTY}"]\n'
    )
    make_tree(tmp_path)
    text = text_for(tmp_path, rights, supervisor_rules=supervisor_rule)
    doc = parse_policy(text, "p.toml", env(tmp_path))
    with pty() as (_, slave), pty() as (_, other_slave), ObjectTable() as objects:
        objects.hold_terminal(slave)
        policy = resolve(doc, objects)
        ours, tty = object_id(os.fstat(slave)), object_id(os.stat("/dev/tty"))
        assert policy.static.fs[ours] == policy.static.fs[tty]
        assert policy.supervisor.fs[ours] == policy.supervisor.fs[tty]
        rows = {(r.layer, r.label, str(r.where), r.access) for r in policy.rules if r.obj == ours}
        tty_rows = {(r.layer, str(r.where), r.access) for r in policy.rules if r.obj == tty}
        assert len(tty_rows) == 2
        assert {(layer, where, access) for layer, _, where, access in rows} == tty_rows
        assert {row[1] for row in rows} == {os.ttyname(slave)}
        assert object_id(os.fstat(other_slave)) not in policy.objects()
        # Quiet entries too: silencing ${TTY} silences it under either name.
        quiet = parse_policy(text + '\n[[supervisor.quiet]]\nparent = ["${TTY}"]\n', "p.toml",
                             env(tmp_path))  # fmt: skip
        assert {ours, tty} <= resolve(quiet, objects).quiet
    # Without a terminal of ours, the rule is on /dev/tty alone.
    with ObjectTable() as objects:
        assert ours not in resolve(doc, objects).objects()


@pytest.mark.trio
async def test_in_headless_mode_the_users_terminal_by_name_stays_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headless, the program's terminal is the user's (a pty this test makes stands for it):
    ${TTY} is granted, but that terminal by its own name is not."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = paths["out"] / "result"
    rights = '"read_file", "write_file", "ioctl_dev"'
    doc = parse_policy(text_for(tmp_path, rights), str(tmp_path / "p.toml"), env(tmp_path))
    with pty() as (master, users), pty() as (_, other_slave):
        async with Supervisor.open(doc) as sup:
            status = await sup.run(
                [*PYTHON, ATTEMPTS, str(result), os.ttyname(other_slave), ""],
                forward_signals=False, stdio=(users, users, users),
            )  # fmt: skip
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):
            os.read(master, 100)  # nothing was written to it
    assert status == 0
    found = outcomes(result)
    for how in ("", " noctty"):
        for op in ("read", "write", "ioctl"):
            assert found[f"own {op}{how}"] == DENIED
            assert found[f"other {op}{how}"] == DENIED


@pytest.mark.trio
async def test_a_terminal_for_the_program_needs_a_session_of_its_own(tmp_path: Path) -> None:
    """Rules on ${TTY} apply to the terminal given: the command must have it as its own."""
    make_tree(tmp_path)
    doc = parse_policy(text_for(tmp_path, '"read_file"'), "p.toml", env(tmp_path))
    with pty() as (_, slave):
        async with Supervisor.open(doc, terminal=slave) as sup:
            with pytest.raises(LaunchError, match="no session of its own"):
                await sup.run(["true"], forward_signals=False, stdio=(slave, slave, slave))


@pytest.mark.trio
async def test_a_reload_keeps_the_pty_and_reports_no_static_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    result, go = paths["out"] / "result", paths["out"] / "go"
    source = tmp_path / "p.toml"
    text = text_for(tmp_path, '"read_file", "ioctl_dev"')
    source.write_text(text)
    doc = parse_policy(text, str(source), env(tmp_path))
    reloads: list[ReloadEvent] = []

    def on_event(event: Event) -> None:
        if event["event"] == "reload":
            reloads.append(event)

    with pty() as (_, slave), pty() as (_, other_slave):
        async with Supervisor.open(doc, watch=True, terminal=slave) as sup:
            sup.listeners.append(on_event)
            argv = [*PYTHON, ATTEMPTS, str(result), os.ttyname(other_slave), str(go)]
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    status.append(await sup.run(
                        argv, forward_signals=False, stdio=(slave, slave, slave),
                        new_session=True,
                    ))  # fmt: skip

                status: list[int] = []
                nursery.start_soon(run)
                await wait_until(lambda: "waiting" in lines(result), "the first round")
                before = sup.generation
                # The same policy saved again, with a supervisor rule added.
                source.write_text(text + '\n[[supervisor.path_beneath]]\nallowed_access = '
                                  f'["read_file"]\nparent = ["{paths["data"]}"]\n')  # fmt: skip
                await wait_until(lambda: bool(reloads), "the reload")
                go.touch()
    assert status == [0]
    [reload] = reloads
    assert reload["ok"] is True and "static_changed" not in reload
    assert reload["generation"] > before  # a new broker served the second round
    own = ("ok", DENIED, "ok")
    assert outcomes(result) == table(own) | table(own, tag="after reload: ")
