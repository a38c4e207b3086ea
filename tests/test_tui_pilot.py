"""The real interface driving a real supervised child (textual's pilot; asyncio tests)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from pilot_wait import until
from rich.text import Text
from supervised import PUBLIC, lines, make_tree, policy
from textual.widgets import DataTable, SelectionList, Static

from llsupervise.tui.app import SupervisorApp, build_app
from llsupervise.tui.session import LocalSession
from llsupervise.tui.terminal.pane import TerminalPane
from llsupervise.tui.widgets import FeedView, PromptPanel

# These run on asyncio (textual), not trio: each is marked, trio mode stays off.
pytestmark = [pytest.mark.anyio, pytest.mark.kernel]

OK = "ok " + PUBLIC.decode().strip()
#: Wide enough that no cell the tests read is cut to fit (temporary paths are long).
WIDE = (240, 50)

#: Reads data/x N times; each outcome goes to the log file and to the terminal.
READS = r"""
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
for _ in range(int(sys.argv[2])):
    try:
        with open("data/x", "rb") as f:
            line = b"ok " + f.read()
    except OSError as e:
        line = b"err %d\n" % e.errno
    os.write(log, line)
    print(line.decode().strip(), flush=True)
"""

#: Denied opens as fast as it can, then waits to be told to stop.
FLOOD = r"""
import os, sys, time
for _ in range(int(sys.argv[2])):
    try:
        open("data/x", "rb")
    except OSError:
        pass
with open(sys.argv[1], "w") as log:
    log.write("flooded\n")
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def app_for(
    root: Path, script: str, *args: str, rules: str = "", mode: str = "interactive"
) -> SupervisorApp:
    doc = policy(root, mode=mode, supervisor_rules=rules)
    argv = [sys.executable, "-c", script, *args]
    return build_app(LocalSession(doc, argv, forward_signals=False))


def cells(app: SupervisorApp, table_id: str) -> list[list[str]]:
    table: DataTable[Text] = app.query_one(table_id, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def drawn(app: SupervisorApp) -> bool:
    """The tables show what the model holds (redraws are throttled)."""
    model = app.model
    rules = len(model.rules.supervisor_rows()) + len(model.rules.committed_net)
    return (
        len(cells(app, "#feed-table"))
        == len(model.feed.entries(app.query_one(FeedView).filter_text))
        and len(cells(app, "#supervisor-rules")) == rules
    )


def status_of(app: SupervisorApp) -> int | None:
    return app.model.status.exit_status


@dataclass
class Seen:
    """What the screen showed once the command had exited."""

    app: SupervisorApp
    log: list[str]
    feed: list[list[str]]
    rules: list[list[str]]
    output: list[str]


async def answer_first_question(root: Path, key: str, reads: int = 1) -> Seen:
    log = root / "out" / "log"
    log.touch()
    app = app_for(root, READS, str(log), str(reads))
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.model.prompts.current is not None, "a question")
        question = app.model.prompts.current
        assert question is not None
        assert question.denial.path == str(root / "data" / "x")
        assert question.denial.access == ("read_file",)
        assert not app.query_one(PromptPanel).has_class("-hidden")
        await pilot.press(key)
        await until(pilot, lambda: status_of(app) is not None, "the command's exit")
        await until(pilot, lambda: len(cells(app, "#feed-table")) > 0, "the feed")
        await until(pilot, lambda: drawn(app), "the screen to catch up")
        assert app.query_one(PromptPanel).has_class("-hidden")
        return Seen(app, lines(log), cells(app, "#feed-table"), cells(app, "#supervisor-rules"),
                    app.query_one(TerminalPane).lines)  # fmt: skip


async def test_allow_once_key_lets_the_pending_open_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    seen = await answer_first_question(tmp_path, "o")
    assert seen.log == [OK]
    assert status_of(seen.app) == 0
    [row] = seen.feed
    assert row[1:3] == ["1", "allow_once"]
    assert row[4:] == ["read_file", str(tmp_path / "data" / "x")]
    assert Path(sys.executable).resolve().name.startswith(row[3])
    # The command's own output went to its terminal pane.
    assert OK in seen.output


async def test_deny_key_makes_the_open_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    seen = await answer_first_question(tmp_path, "d")
    assert seen.log == ["err 13"]
    assert seen.feed[0][2] == "deny"


async def test_allow_always_commits_a_rule_and_the_next_access_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    seen = await answer_first_question(tmp_path, "a", reads=2)
    assert seen.log == [OK, OK]
    assert [(e.count, e.decision) for e in seen.app.model.feed.entries()] == [
        (1, "allow_always")  # one question only
    ]
    [rule] = seen.rules
    assert rule[:3] == [str(tmp_path / "data" / "x"), "committed", "1"]
    assert rule[5] == "read_file"


async def test_broader_scope_and_extra_rights_go_on_the_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    (paths["data"] / "y").write_bytes(PUBLIC)
    monkeypatch.chdir(tmp_path)
    log = paths["out"] / "log"
    log.touch()
    script = READS + "\nprint(sorted(os.listdir('data')), open('data/y').read().strip())\n"
    app = app_for(tmp_path, script, str(log), "1")
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.model.prompts.current is not None, "a question")
        await pilot.press("s")  # this file → its directory
        question = app.model.prompts.current
        assert question is not None and question.scope.path == str(paths["data"])
        await pilot.pause()
        # Tick read_dir in the rights list: highlight it, then the list's own key.
        rights = app.query_one("#rights", SelectionList)
        rights.focus()
        rights.highlighted = question.scope.rights().index("read_dir")
        await pilot.press("space")
        await until(pilot, lambda: "read_dir" in question.rights, "the ticked right")
        await pilot.press("a")
        await until(pilot, lambda: status_of(app) is not None, "the command's exit")
        await until(pilot, lambda: drawn(app), "the screen to catch up")
        output = app.query_one(TerminalPane).lines
        [row] = cells(app, "#supervisor-rules")
    assert lines(log) == [OK]
    assert "['x', 'y'] public data" in output  # listing and the sibling file: no more questions
    assert len(app.model.feed) == 1
    assert row[0] == str(paths["data"]) and row[5] == "read_file, read_dir"


async def test_timeout_applies_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "out" / "log"
    log.touch()
    # The question is shown only until its timeout: long enough for a loaded machine to
    # draw it (at 0.5 s, a busy CPU let the timeout pass before the test saw the question).
    app = app_for(tmp_path, READS, str(log), "1", rules="prompt_timeout = 3")
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.model.prompts.current is not None, "a question")
        assert "deny in" in str(app.query_one(PromptPanel).border_title)
        await until(pilot, lambda: status_of(app) is not None, "the command's exit")
        await until(pilot, lambda: drawn(app), "the screen to catch up")
        assert app.model.prompts.current is None
        assert cells(app, "#feed-table")[0][2] == "timeout_deny"
    assert lines(log) == ["err 13"]


async def test_a_flood_of_denials_coalesces_and_keys_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    log, stop = tmp_path / "out" / "log", tmp_path / "out" / "stop"
    app = app_for(tmp_path, FLOOD, str(log), "1000", str(stop), mode="enforce")
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.model.feed.total >= 1, "the first denial")
        # Keys are handled while denials pour in (each press waits until it was processed).
        await pilot.press("2")
        assert app.query_one("#tabs").active == "rules"  # type: ignore[attr-defined]
        await pilot.press("slash", "d", "a", "t", "a")
        assert app.query_one("#filter").value == "data"  # type: ignore[attr-defined]
        await until(pilot, lambda: app.model.feed.total >= 1000, "1000 denials")
        await until(pilot, lambda: lines(log) == ["flooded"], "the end of the flood")
        await until(pilot, lambda: cells(app, "#feed-table")[:1] != [] and
                    cells(app, "#feed-table")[0][1] == "1000", "the coalesced row")  # fmt: skip
        [row] = cells(app, "#feed-table")
        assert row[2] == "deny×1000" and row[4] == "read_file"
        await pilot.press("escape", "m", "y")  # permissive, once confirmed
        await until(pilot, lambda: app.model.status.mode == "permissive", "permissive mode")
        stop.touch()
        await until(pilot, lambda: status_of(app) == 0, "the command's exit")
    assert app.model.feed.total == 1000 and len(app.model.feed) == 1


async def test_permissive_mode_never_answers_an_open_question(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "out" / "log"
    log.touch()
    app = app_for(tmp_path, READS, str(log), "1")
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.model.prompts.current is not None, "a question")
        await pilot.press("m")
        await pilot.pause(0.3)  # the mode would have changed by now, and the question gone
        assert app.model.prompts.current is not None
        assert app.model.status.mode == "interactive"
        assert lines(log) == []  # the read still waits for its answer
        await pilot.press("d")
        await until(pilot, lambda: status_of(app) is not None, "the command's exit")
    assert lines(log) == ["err 13"]


async def test_exec_denial_says_a_grant_helps_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    tool = paths["data"] / "true"
    shutil.copy(shutil.which("true") or "/bin/true", tool)
    stop = paths["out"] / "stop"
    # The command outlives its refused exec, so that there is time to answer.
    script = (
        "import os, sys, time\n"
        "try:\n    os.execv(sys.argv[1], [sys.argv[1]])\n"
        "except OSError as e:\n    status = e.errno\n"
        "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.01)\n"
        "sys.exit(status)\n"
    )
    app = app_for(tmp_path, script, str(tool), str(stop))
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.model.prompts.current is not None, "a question")
        who = str(app.query_one("#prompt-who", Static).render())
        assert "takes effect on the next run" in who
        await pilot.press("a")
        await until(pilot, lambda: len(app.model.rules.committed) == 1, "the rule")
        stop.touch()
        await until(pilot, lambda: status_of(app) is not None, "the command's exit")
        await until(pilot, lambda: drawn(app), "the screen to catch up")
        assert cells(app, "#supervisor-rules")[0][0] == str(tool)
        assert cells(app, "#supervisor-rules")[0][5] == "execute"
    assert status_of(app) == 13


async def test_a_command_that_cannot_be_executed_is_a_denial_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    tool = paths["data"] / "true"
    shutil.copy(shutil.which("true") or "/bin/true", tool)
    doc = policy(tmp_path)
    app = build_app(LocalSession(doc, [str(tool)], forward_signals=False))
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: status_of(app) is not None, "the command's exit")
        await until(pilot, lambda: len(cells(app, "#feed-table")) == 1, "the denial row")
        [row] = cells(app, "#feed-table")
        assert (row[2], row[4], row[5]) == ("deny", "execute", str(tool))
    assert status_of(app) == 126


async def test_quitting_ends_the_command_and_returns_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    app = app_for(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(600)")
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: "up" in app.query_one(TerminalPane).lines, "start")
        await pilot.press("ctrl+q", "n")  # asked first: kept running
        await pilot.pause(0.3)
        assert status_of(app) is None and app.return_value is None
        await pilot.press("ctrl+q", "y")
        await until(pilot, lambda: app.return_value is not None, "the app's exit")
    assert app.return_value == 128 + 15  # SIGTERM


def test_the_guest_run_ends_with_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving the app while the command runs kills it and ends trio, so trio runs again."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    app = app_for(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(600)")

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.status.running, "the start")

    asyncio.run(scenario())
    session = app.session
    assert isinstance(session, LocalSession) and session.supervisor is not None
    launched = session.supervisor.launched
    assert launched is not None and launched.process.returncode == -9
    assert trio.run(trio.sleep, 0) is None


async def test_a_hostile_name_is_shown_escaped_and_the_command_line_as_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    # A window title, a bell, a division slash, a right-to-left override, a blank filler.
    name = "\x1b]0;pwned\x07etc\u2215passwd\u202etxt\u3164"
    (paths["data"] / name).write_bytes(PUBLIC)
    shown = "\\x1b]0;pwned\\x07etc\\u2215passwd\\u202etxt\\u3164"
    stop = paths["out"] / "stop"
    script = (
        "import os, sys, time\n"
        "try:\n    open(os.path.join('data', sys.argv[1]), 'rb')\nexcept OSError:\n    pass\n"
        "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.01)\n"
    )
    app = app_for(tmp_path, script, name, str(stop), "\x1b[2Jmake docs")
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.model.prompts.current is not None, "a question")
        await pilot.pause(0.3)  # past the throttled redraw
        who = str(app.query_one("#prompt-who", Static).render())
        assert f"data/{shown}" in who
        assert "command line (claimed by the program): " in who
        assert "\\x1b[2Jmake docs" in who
        assert not any(c in who for c in "\x1b\x07\u2215\u202e\u3164")
        await pilot.press("d")
        stop.touch()
        await until(pilot, lambda: status_of(app) is not None, "the command's exit")
        await until(pilot, lambda: drawn(app), "the screen to catch up")
        assert cells(app, "#feed-table")[0][5] == f"{tmp_path}/data/{shown}"


#: A REPL-like loop on the terminal: says its size when started and on each SIGWINCH.
SIZED = r"""
import os, signal, sys
def size(*_):
    print("size %dx%d" % tuple(os.get_terminal_size()), flush=True)
signal.signal(signal.SIGWINCH, size)
size()
"""


def has_keyboard(pane: TerminalPane) -> bool:
    return pane.typing


async def test_the_output_pane_is_a_terminal_for_a_python_repl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    # -i: the REPL after the script; -I: nothing from the environment or the home directory.
    argv = [sys.executable, "-I", "-q", "-i", "-c", SIZED]
    app = build_app(LocalSession(policy(tmp_path), argv, forward_signals=False))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(TerminalPane)
        await until(pilot, lambda: any(line.startswith(">>>") for line in pane.lines), "a prompt")
        await pilot.press("1", "1")  # not the keyboard's yet: tabs
        assert app.query_one("#tabs").active == "feed"  # type: ignore[attr-defined]
        await pilot.press("ctrl+t")
        assert has_keyboard(pane) and app.query_one("#tabs").active == "output"  # type: ignore[attr-defined]
        width, height = pane.content_size
        assert f"size {width}x{height}" in pane.lines  # the size it started with
        await pilot.press(*"11*3", "enter")  # digits are the program's now
        await until(pilot, lambda: "33" in pane.lines, "the answer")
        assert app.query_one("#tabs").active == "output"  # type: ignore[attr-defined]
        # A loop that says it runs: Ctrl+C must interrupt it, not race the line being read.
        await pilot.press(*'print("spinning") or [0 for _ in iter(int, 1)]', "enter")
        await until(pilot, lambda: "spinning" in pane.lines, "the loop")
        await pilot.press("ctrl+c")
        await until(pilot, lambda: "KeyboardInterrupt" in pane.lines, "Ctrl+C reaching it")
        await pilot.resize_terminal(90, 26)
        await until(pilot, lambda: pane.content_size.width == 88, "the pane's new size")
        width, height = pane.content_size
        # Printed where the cursor was: after the prompt.
        await until(pilot, lambda: any(line.strip() == f"size {width}x{height}"
                                       for line in pane.lines), "SIGWINCH")  # fmt: skip
        await pilot.press("ctrl+t")  # the keyboard back: keys are the interface's again
        assert not has_keyboard(pane)
        await pilot.press("1")
        assert app.query_one("#tabs").active == "feed"  # type: ignore[attr-defined]
        await pilot.press("ctrl+t", *"raise SystemExit(5)", "enter")
        await until(pilot, lambda: status_of(app) is not None, "the REPL's exit")
    assert status_of(app) == 5


async def test_the_output_pane_runs_less(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full-screen program that opens /dev/tty by name sets its terminal modes there: the
    policy must give it its terminal (here all of /dev/pts, which a real policy should not)."""
    less = shutil.which("less")
    if less is None:
        pytest.skip("less is not installed")
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LESSHISTFILE", "-")  # no history file to write
    text = paths["out"] / "long.txt"
    text.write_text("".join(f"line {i}\n" for i in range(200)))
    terminal = (
        '[[path_beneath]]\nallowed_access = ["read_file", "write_file", "ioctl_dev"]\n'
        'parent = ["/dev/tty", "/dev/pts"]\n'
    )
    doc = policy(tmp_path, extra_static=terminal)
    app = build_app(LocalSession(doc, [less, str(text)], forward_signals=False))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(TerminalPane)
        await pilot.press("ctrl+t")
        await until(pilot, lambda: pane.lines[0] == "line 0", "the first page")
        rows = pane.content_size.height
        assert pane.lines[rows - 2] == f"line {rows - 2}"  # a page of the pane's height
        await pilot.press("space")
        await until(pilot, lambda: pane.lines[0] == f"line {rows - 1}", "the next page")
        await pilot.press("q")
        await until(pilot, lambda: status_of(app) is not None, "less to quit")
    assert status_of(app) == 0


async def test_a_question_over_the_typing_pane_takes_no_key_until_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = "input()\nopen('data/x').read()\nprint('was read', flush=True)\ninput()\n"
    app = app_for(tmp_path, script, mode="interactive")
    async with app.run_test(size=WIDE) as pilot:
        pane = app.query_one(TerminalPane)
        await pilot.press("ctrl+t", "enter")
        await until(pilot, lambda: app.model.prompts.current is not None, "the question")
        assert not app.query_one(PromptPanel).has_class("-hidden")
        await pilot.press("o")  # the program's key, not an answer
        assert app.model.prompts.current is not None and has_keyboard(pane)
        await pilot.press("ctrl+t", "1", "o")  # the keyboard back, to the question: answered
        # After the "o" the program got (echoed by its terminal).
        await until(pilot, lambda: "owas read" in pane.lines, "the read")
        await pilot.press("ctrl+t", "enter")
        await until(pilot, lambda: status_of(app) is not None, "the exit")
    assert status_of(app) == 0


async def test_the_command_starts_with_its_panes_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The terminal has the pane's size before the command runs: a size set later reaches it
    only as a SIGWINCH, which a program with no handler for it yet loses (under load, less
    drew a page of 24 rows in a pane of 23). The size the session has when it starts the
    command is recorded (the race itself is lost only under load), and the command says
    what it got."""
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    script = "import os\nprint('size', *os.get_terminal_size(1), flush=True)\ninput()\n"
    app = app_for(tmp_path, script)
    session = app.session
    assert isinstance(session, LocalSession)
    at_start: list[tuple[int, int]] = []
    start = session.start

    def recording_start(app: SupervisorApp) -> None:
        at_start.append(session._size)
        start(app)

    monkeypatch.setattr(session, "start", recording_start)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(TerminalPane)
        await until(pilot, lambda: any(line.startswith("size") for line in pane.lines), "size")
        await pilot.press("ctrl+t")
        await until(pilot, lambda: pane.content_size.area > 0, "the pane shown")
        rows, cols = pane.content_size.height, pane.content_size.width
        assert at_start == [(rows, cols)]
        assert f"size {cols} {rows}" in pane.lines
        await pilot.press("enter")
        await until(pilot, lambda: status_of(app) is not None, "the exit")
