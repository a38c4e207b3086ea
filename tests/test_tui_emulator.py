"""The Output pane's emulator: the alternate screen pyte lacks, and input pyte chokes on."""

from __future__ import annotations

import pyte
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llsupervise.tui.terminal.emulator import Screen, Stream


def terminal(columns: int = 20, lines: int = 5) -> tuple[Screen, Stream]:
    screen = Screen(columns, lines)
    return screen, Stream(screen)


def shown(screen: Screen) -> list[str]:
    return [line.rstrip() for line in screen.display]


def test_1049_shows_a_blank_alternate_screen_and_brings_the_shell_back() -> None:
    screen, stream = terminal()
    stream.feed(b"$ vi f\r\n")
    cursor = (screen.cursor.x, screen.cursor.y)
    stream.feed(b"\x1b[?1049h")
    assert screen.alternate and shown(screen) == [""] * 5
    stream.feed(b'\x1b[H~\r\n~\r\n\x1b[5;1H"f" 1L')
    assert shown(screen) == ["~", "~", "", "", '"f" 1L']
    stream.feed(b"\x1b[?1049l")
    assert not screen.alternate
    assert shown(screen) == ["$ vi f", "", "", "", ""]
    assert (screen.cursor.x, screen.cursor.y) == cursor  # saved on entering, restored
    stream.feed(b"$ ")
    assert shown(screen)[1] == "$"


@pytest.mark.parametrize("mode", [47, 1047])
def test_47_and_1047_switch_screens_without_moving_the_cursor(mode: int) -> None:
    screen, stream = terminal()
    stream.feed(b"shell")
    stream.feed(b"\x1b[?%dh" % mode)
    stream.feed(b"\x1b[3;1Hfull")
    stream.feed(b"\x1b[?%dl" % mode)
    assert shown(screen)[0] == "shell"
    assert (screen.cursor.x, screen.cursor.y) == (4, 2)  # where the program left it
    stream.feed(b"\x1b[?%dh" % mode)
    # 1047 clears the alternate screen on leaving it; 47 keeps what was there.
    assert shown(screen)[2] == ("" if mode == 1047 else "full")


def test_entering_twice_and_leaving_twice_keep_the_normal_screen() -> None:
    screen, stream = terminal()
    stream.feed(b"keep\x1b[?1049h\x1b[?1049hx\x1b[?1049l\x1b[?1049l")
    assert shown(screen)[0] == "keep" and not screen.alternate


def test_other_private_modes_in_the_same_sequence_still_apply() -> None:
    screen, stream = terminal()
    stream.feed(b"\x1b[?1049;25l\x1b[?25;1049h")
    assert screen.alternate and not screen.cursor.hidden
    stream.feed(b"\x1b[?25;1049l")
    assert not screen.alternate and screen.cursor.hidden


def test_a_reset_leaves_the_alternate_screen() -> None:
    screen, stream = terminal()
    stream.feed(b"\x1b[?1049hx\x1bc")
    assert not screen.alternate and shown(screen) == [""] * 5
    stream.feed(b"\x1b[?1049l")  # nothing to restore: no change
    assert shown(screen) == [""] * 5


def test_a_resize_while_in_the_alternate_screen_cuts_the_normal_one_alike() -> None:
    screen, stream = terminal(columns=10, lines=5)
    stream.feed(b"0123456789\r\nline 1\r\nline 2\r\nline 3\r\nline 4")
    stream.feed(b"\x1b[?1049h")
    screen.resize(3, 4)
    stream.feed(b"\x1b[?1049l")
    assert shown(screen) == ["line", "line", "line"]  # the top two rows went, as pyte does
    assert screen.cursor.y == 2


@pytest.mark.parametrize(
    "sequence",
    [
        b"\x1b[?4m",  # vim: query xterm's modifyOtherKeys
        b"\x1b[1;2;3A",  # more parameters than pyte's handler takes
        b"\x1b[?5n",
        b"\x1b[?1;2r",
    ],
)
def test_a_sequence_pyte_raises_on_is_dropped(sequence: bytes) -> None:
    with pytest.raises(TypeError):  # what pyte alone does: the interface would end
        pyte.ByteStream(pyte.Screen(20, 5)).feed(sequence)
    screen, stream = terminal()
    stream.feed(b"a" + sequence + b"b")
    assert shown(screen)[0] == "ab"


@given(st.binary(max_size=200), st.binary(max_size=50))
@example(b"", b"\xc2\x9d")  # an OSC (C1, in UTF-8) left open: CAN ends it
def test_any_output_is_taken_and_text_after_it_is_still_drawn(noise: bytes, more: bytes) -> None:
    screen, stream = terminal()
    stream.feed(noise)
    stream.feed(more)
    # Whatever state the noise left, a reset and plain text draw as on a fresh terminal.
    stream.feed(b"\x18\x1bc\x1b[?1049lhello")
    assert shown(screen)[0] == "hello" and not screen.alternate
