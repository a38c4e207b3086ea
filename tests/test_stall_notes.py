"""What a person is told of a request no filesystem answered in time: the program got EIO
(or, later, the change was made after all). Said on stderr by a headless run, as a
notification by the interface; the path is the program's to choose, so it is escaped."""

from __future__ import annotations

import pytest

from llsupervise.messages import StallEvent
from llsupervise.supervisor.events.model import stall_note
from llsupervise.supervisor.frontends.headless import _say_notes


def stall(path: str, outcome: str, syscall: str = "mkdir") -> StallEvent:
    return {"event": "stall", "ts": 0.0, "pid": 42, "syscall": syscall, "path": path,
            "outcome": outcome}  # fmt: skip


def test_a_refused_request_says_the_program_got_eio() -> None:
    assert stall_note(stall("/mnt/fuse/new", "refused")) == (
        "mkdir /mnt/fuse/new (pid 42) got no answer from its filesystem in time: the program "
        "was told EIO"
    )


def test_a_request_done_late_says_the_change_is_made() -> None:
    note = stall_note(stall("/mnt/fuse/new", "done late"))
    assert note.startswith("mkdir /mnt/fuse/new (pid 42) was done after all")
    assert "told EIO, but the change is made" in note


def test_a_request_never_read_names_the_call_alone() -> None:
    assert stall_note(stall("", "refused", "openat")).startswith("openat (pid 42) got no answer")


def test_an_exec_left_to_the_kernel_is_not_said_to_get_eio() -> None:
    note = stall_note(stall("", "continued unreported", "execve"))
    assert "EIO" not in note and "the kernel decided" in note


def test_headless_says_it_on_stderr_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    _say_notes(stall("/mnt/fuse/\x1b]0;owned\x07\u2215x", "refused"))
    err = capsys.readouterr().err
    assert err.startswith("llsupervise: mkdir /mnt/fuse/")
    assert "\x1b" not in err and "\x07" not in err and "\u2215" not in err
    assert err.count("\n") == 1


def test_headless_says_when_the_program_sandboxed_itself(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _say_notes({"event": "own_layer", "ts": 0.0, "pid": 42})
    err = capsys.readouterr().err
    assert err.startswith("llsupervise: the program (pid 42) restricted itself")
    assert "grants nothing more and asks nothing" in err and err.count("\n") == 1
