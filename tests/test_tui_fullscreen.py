"""Full-screen programs in the Output pane, under a real supervisor: vi and top.

They draw on the alternate screen (vi) or over the whole pane (top); keys typed in the pane
reach them, a resize reaches them (SIGWINCH), and the shell's screen comes back after vi."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from pilot_wait import until
from supervised import PUBLIC, make_tree, policy

from llsupervise.policies import DEFAULT_SOURCE, default_text, load_default
from llsupervise.policy.loader import parse_policy
from llsupervise.tui.app import SupervisorApp, build_app
from llsupervise.tui.session import LocalSession
from llsupervise.tui.terminal.pane import TerminalPane
from llsupervise.tui.widgets import PromptPanel

pytestmark = [pytest.mark.anyio, pytest.mark.kernel]

VI = shutil.which("vi")
TOP = shutil.which("top")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tree of supervised.make_tree as the working directory; HOME is out/ (read-write),
    so that vi's own files need no question; the pane is an xterm-like terminal."""
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(paths["out"]))
    monkeypatch.setenv("TERM", "xterm")
    return tmp_path


def app_for(root: Path, argv: list[str], mode: str = "interactive") -> SupervisorApp:
    # vi lists the working directory when it starts: that alone is given, not data/x.
    listing = f'[[path_beneath]]\nallowed_access = ["read_dir"]\nparent = ["{root}"]\n'
    doc = policy(root, mode=mode, extra_static=listing)
    return build_app(LocalSession(doc, argv, forward_signals=False))


def in_shell(command: str) -> list[str]:
    """``command`` between two lines of shell output; the shell then waits for a line."""
    return ["/bin/sh", "-c", f"echo shell before; {command}; echo shell after $?; read x"]


def vi_screen(pane: TerminalPane) -> bool:
    return pane.screen_.alternate and pane.lines[1:3] == ["~", "~"]


@pytest.mark.skipif(VI is None, reason="vi is not installed")
async def test_vi_edits_and_saves_a_file_and_the_shell_comes_back(work: Path) -> None:
    notes = work / "out" / "notes.txt"
    app = app_for(work, in_shell(f"{VI} -i NONE out/notes.txt"))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(TerminalPane)
        await pilot.press("ctrl+t")
        await until(pilot, lambda: vi_screen(pane), "vi's screen")
        assert "shell before" not in pane.lines  # vi has the whole pane
        # Its message or ruler line on the pane's last row: it knows the pane's size.
        await until(pilot, lambda: pane.lines[-1].rstrip().endswith("All"), "vi's ruler")
        assert len(pane.lines) == pane.content_size.height
        await pilot.press("i", *"hello from vi", "escape")
        await until(pilot, lambda: pane.lines[0] == "hello from vi", "the typed text")
        await pilot.press(*":wq", "enter")
        await until(pilot, lambda: "shell after 0" in pane.lines, "vi's exit")
        # The shell's screen as it was before vi, and nothing of vi's left on it.
        assert not pane.screen_.alternate
        assert pane.lines[:2] == ["shell before", "shell after 0"]
        assert not any(line.startswith("~") for line in pane.lines)
        await pilot.press("enter")
        await until(pilot, lambda: app.model.status.exit_status is not None, "the shell's exit")
    assert notes.read_text() == "hello from vi\n"
    assert app.model.status.exit_status == 0


@pytest.mark.skipif(VI is None, reason="vi is not installed")
async def test_a_question_while_vi_runs_appears_and_vi_gets_the_answer(work: Path) -> None:
    app = app_for(work, in_shell(f"{VI} -i NONE out/notes.txt"))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(TerminalPane)
        await pilot.press("ctrl+t")
        await until(pilot, lambda: vi_screen(pane), "vi's screen")
        await pilot.press(*":r data/x", "enter")  # data/x: not granted, so asked
        await until(pilot, lambda: app.model.prompts.current is not None, "the question")
        question = app.model.prompts.current
        assert question is not None and question.denial.path == str(work / "data" / "x")
        assert not app.query_one(PromptPanel).has_class("-hidden")
        await pilot.press("o")  # vi's key while it has the keyboard: not an answer
        assert app.model.prompts.current is question and pane.typing
        # The keyboard back, to the question: allowed for good (vi opens the file twice).
        await pilot.press("ctrl+t", "1", "a")
        await until(pilot, lambda: len(app.model.rules.committed) == 1, "the rule")
        assert app.model.prompts.current is None
        await pilot.press("ctrl+t")  # vi again: the read went through, then the "o" above
        await until(pilot, lambda: PUBLIC.decode().strip() in pane.lines, "the file's text")
        await pilot.press("escape", *":wq", "enter")
        await until(pilot, lambda: "shell after 0" in pane.lines, "vi's exit")
        await pilot.press("enter")
        await until(pilot, lambda: app.model.status.exit_status is not None, "the shell's exit")
    assert PUBLIC.decode() in (work / "out" / "notes.txt").read_text()
    [entry] = app.model.feed.entries()
    assert entry.decision == "allow_always"


def last_row_drawn(pane: TerminalPane) -> bool:
    rows = pane.content_size.height
    return len(pane.lines) == rows and pane.lines[rows - 1] != ""


@pytest.mark.skipif(TOP is None, reason="top is not installed")
async def test_top_draws_follows_a_resize_and_quits_on_q(work: Path) -> None:
    # enforce: what top reads beyond the test policy (/sys) is denied without a question.
    app = app_for(work, [str(TOP), "-d", "1"], mode="enforce")
    async with app.run_test(size=(100, 24)) as pilot:
        pane = app.query_one(TerminalPane)
        await pilot.press("ctrl+t")
        await until(pilot, lambda: pane.lines[0].startswith("top - "), "top's summary")
        await until(pilot, lambda: any(line.lstrip().startswith("PID") for line in pane.lines),
                    "the process list")  # fmt: skip
        await until(pilot, lambda: last_row_drawn(pane), "a full pane")
        rows = pane.content_size.height
        await pilot.resize_terminal(120, 40)
        await until(pilot, lambda: pane.content_size.height > rows, "the pane's new size")
        # Process rows down to the new last row: top was told the new size (SIGWINCH).
        await until(pilot, lambda: last_row_drawn(pane), "top to fill the taller pane")
        assert pane.lines[0].startswith("top - ")
        await pilot.press("q")
        await until(pilot, lambda: app.model.status.exit_status is not None, "top to quit")
    assert app.model.status.exit_status == 0


#: Opens its terminal by the name every process has for its own (/dev/tty), reads its modes
#: and size there, and writes on it.
OWN_TERMINAL = r"""
import fcntl, os, struct, termios
fd = os.open("/dev/tty", os.O_RDWR)
termios.tcgetattr(fd)
rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
os.write(fd, b"own terminal %dx%d\n" % (cols, rows))
"""


async def test_the_default_policy_gives_the_program_its_own_terminal(work: Path) -> None:
    """${TTY}: what less, vim or ssh open to talk to the user. The interpreter is the
    system's, which the default policy gives (this test's Python may live elsewhere)."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no system Python")
    doc = load_default({"HOME": str(work / "out"), "PWD": str(work)})
    argv = [str(python), "-I", "-S", "-c", OWN_TERMINAL]
    app = build_app(LocalSession(doc, argv, forward_signals=False))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(TerminalPane)
        await until(pilot, lambda: app.model.status.exit_status is not None, "the exit")
        # Its size came through the ioctl (which size: the pane's, or the terminal's first
        # size if the command started before the pane was laid out).
        await until(pilot, lambda: any(re.fullmatch(r"own terminal [1-9]\d*x[1-9]\d*", line)
                                       for line in pane.lines), "the output")  # fmt: skip
    assert app.model.status.exit_status == 0
    assert app.model.feed.total == 0  # nothing was asked nor denied


LESS = shutil.which("less")


@pytest.mark.skipif(LESS is None, reason="less is not installed")
async def test_less_under_the_default_policy_opens_its_terminal_without_a_question(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LESSHISTFILE", "-")
    text = work / "out" / "long.txt"
    text.write_text("".join(f"line {i}\n" for i in range(200)))
    # The default policy, and the file to read (the working directory is asked about).
    readable = f'[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{text}"]\n'
    env = {"HOME": str(work / "out"), "PWD": str(work)}
    doc = parse_policy(default_text() + readable, DEFAULT_SOURCE, env)
    assert LESS is not None
    app = build_app(LocalSession(doc, [LESS, str(text)], forward_signals=False))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(TerminalPane)
        await pilot.press("ctrl+t")
        await until(pilot, lambda: pane.lines[0] == "line 0" or app.model.prompts.current
                    is not None, "the first page or a question")  # fmt: skip
        asked = app.model.prompts.current
        if asked is not None:  # answer it, so that less runs and quits
            await pilot.press("ctrl+t", "1", "d", "ctrl+t")
            await until(pilot, lambda: pane.lines[0] == "line 0", "the first page")
        await pilot.press("q")
        await until(pilot, lambda: app.model.status.exit_status is not None, "less to quit")
    assert asked is None, f"asked about {asked.denial.path}"
