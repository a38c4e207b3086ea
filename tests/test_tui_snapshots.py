"""Snapshots of the main screens over fixed data (llsupervise.tui.demo): no live pids or times.

After an intended change of the interface: ``pytest tests/test_tui_snapshots.py
--snapshot-update``, then look at the new SVGs before keeping them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot

from llsupervise.messages import QuestionMessage
from llsupervise.tui import demo
from llsupervise.tui.app import SupervisorApp, build_app
from llsupervise.tui.session import ReplaySession

#: Every screen at the smallest size it must fit, and at a large one.
SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 45)], ids=["80x24", "160x45"])
Compare = Callable[..., bool]


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Times are shown in local time: pin the zone."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if saved is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = saved
    time.tzset()


def demo_app(session: ReplaySession | None = None) -> SupervisorApp:
    return build_app(session or demo.session(), clock=lambda: demo.CLOCK, wall=lambda: demo.WALL)


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause(0.3)  # past the throttled redraw
    # Tables are cut to their width once laid out: let that second drawing happen too.
    for _ in range(3):
        await pilot.pause()


@SIZES
def test_feed_with_a_question(snap_compare: Compare, size: tuple[int, int]) -> None:
    assert snap_compare(demo_app(), terminal_size=size, run_before=settle)


@SIZES
def test_exec_question_and_a_broader_scope(snap_compare: Compare, size: tuple[int, int]) -> None:
    messages = demo.messages()
    exec_question: QuestionMessage = {
        "type": "question", "id": 9, "timeout_in": 12.0,
        "denial": {
            "pid": 4260, "tid": 4260, "exe": "/usr/bin/cc", "cmdline": "cc -o hello hello.c",
            "syscall": "execve", "path": "/opt/toolchain/bin/ld", "access": ["execute"],
            "scopes": ["/opt/toolchain/bin/ld", "/opt/toolchain/bin", "/opt/toolchain", "/opt",
                       "/"],
            "scope_kind": "file", "protected": "",
            "generation": 3, "next_run_only": True, "ts": demo.T0 + 9, "count": 1,
        },
    }  # fmt: skip
    session = ReplaySession([m for m in messages if m["type"] != "question"] + [exec_question])

    async def broaden(pilot: Pilot[Any]) -> None:
        await pilot.press("s")
        await settle(pilot)

    assert snap_compare(demo_app(session), terminal_size=size, run_before=broaden)


@SIZES
def test_rules_view(snap_compare: Compare, size: tuple[int, int]) -> None:
    messages = [m for m in demo.messages() if m["type"] != "question"]
    messages.append({"type": "event", "event": {
        "event": "reload", "ok": False, "generation": 3,
        "error": "/home/ada/project/policy.toml:14: supervisor.path_beneath[1].allowed_access[0]: "
                 "unknown access right 'raed_file'",
    }})  # fmt: skip

    async def rules(pilot: Pilot[Any]) -> None:
        await pilot.press("2")
        await settle(pilot)

    assert snap_compare(demo_app(ReplaySession(messages)), terminal_size=size, run_before=rules)


@SIZES
def test_filtered_feed_and_the_commands_output(
    snap_compare: Compare, size: tuple[int, int]
) -> None:
    hostile = b"\x1b[31mred?\x1b[0m \x1b]0;title\x07\x07bell\x00\xff\n"
    messages = [m for m in demo.messages() if m["type"] != "question"]
    session = ReplaySession(messages, output=demo.OUTPUT + hostile)

    async def filtered(pilot: Pilot[Any]) -> None:
        await pilot.press("slash", *"python", "escape", "3")
        await settle(pilot)

    assert snap_compare(demo_app(session), terminal_size=size, run_before=filtered)


@SIZES
def test_attached_and_exited(snap_compare: Compare, size: tuple[int, int]) -> None:
    messages = [m for m in demo.messages() if m["type"] != "question"]
    messages.append({"type": "state", "state": demo.state(exit_status=2)})
    messages.append({"type": "closed", "reason": "the supervisor closed the connection "
                     "(its command has ended)"})  # fmt: skip
    session = ReplaySession(messages, local=False, origin="attached to /run/llsupervise/s.sock")

    async def output(pilot: Pilot[Any]) -> None:
        await pilot.press("3")
        await settle(pilot)

    assert snap_compare(demo_app(session), terminal_size=size, run_before=output)


@SIZES
def test_help(snap_compare: Compare, size: tuple[int, int]) -> None:
    async def help_screen(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)

    assert snap_compare(demo_app(), terminal_size=size, run_before=help_screen)


@SIZES
def test_quit_while_running_asks(snap_compare: Compare, size: tuple[int, int]) -> None:
    async def quit_asked(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("ctrl+q")
        await settle(pilot)

    messages = [m for m in demo.messages() if m["type"] != "question"]
    session = ReplaySession(messages)
    assert snap_compare(demo_app(session), terminal_size=size, run_before=quit_asked)


@SIZES
def test_permissive_asks(snap_compare: Compare, size: tuple[int, int]) -> None:
    async def asked(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot)

    messages = [m for m in demo.messages() if m["type"] != "question"]
    assert snap_compare(demo_app(ReplaySession(messages)), terminal_size=size, run_before=asked)


@SIZES
def test_a_rejected_reload_is_a_notification_and_in_the_status_bar(
    snap_compare: Compare, size: tuple[int, int]
) -> None:
    messages = [m for m in demo.messages() if m["type"] != "question"]
    messages.append({"type": "event", "event": {
        "event": "reload", "ok": False, "generation": 3,
        "error": "/home/ada/project/policy.toml:14: supervisor.path_beneath[1].allowed_access[0]: "
                 "unknown access right 'raed_file'",
    }})  # fmt: skip
    assert snap_compare(demo_app(ReplaySession(messages)), terminal_size=size, run_before=settle)
