"""Keys over fixed data (llsupervise.tui.demo): what each sends to the session, and when a
key must do nothing. The live counterparts are in test_tui_pilot.py."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from textual.widgets import Button, Static, TabbedContent

from llsupervise.messages import ServerMessage
from llsupervise.policies import DEFAULT_SOURCE
from llsupervise.tui import demo
from llsupervise.tui.app import SupervisorApp, build_app
from llsupervise.tui.main_screen import MainScreen
from llsupervise.tui.screens import ConfirmScreen, FileNameScreen, HelpScreen, all_keys
from llsupervise.tui.session import ReplaySession

pytestmark = pytest.mark.anyio

SIZES = [(80, 24), (160, 45)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def app_over(
    messages: Sequence[ServerMessage] | None = None,
) -> tuple[SupervisorApp, ReplaySession]:
    session = ReplaySession(demo.messages() if messages is None else messages)
    return build_app(session, clock=lambda: demo.CLOCK, wall=lambda: demo.WALL), session


def answers(session: ReplaySession) -> list[str]:
    return [m["answer"] for m in session.sent if m["type"] == "answer"]


@pytest.mark.parametrize("size", SIZES)
async def test_every_answer_button_and_the_footer_fit(size: tuple[int, int]) -> None:
    app, _ = app_over()
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.3)
        width, height = size
        for answer in ("allow_once", "allow_for", "allow_always", "deny", "deny_quiet"):
            region = app.query_one(f"#{answer}", Button).region
            assert region.width > 0 and region.right <= width - 2, answer  # inside the border
            assert region.bottom <= height - 1, answer  # above the footer
        footer = app.query_one("Footer").region
        assert footer.y == height - 1 and footer.height == 1


@pytest.mark.parametrize("size", SIZES)
async def test_question_mark_shows_every_key(size: tuple[int, int]) -> None:
    app, session = app_over()
    async with app.run_test(size=size) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        shown = str(app.screen.query_one("#help-keys", Static).render())
        for key in all_keys():
            assert key in shown
        await pilot.press("a")  # an answer key under the help: not an answer
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
    assert answers(session) == []


async def test_the_help_lists_every_bound_key() -> None:
    keys = " ".join(all_keys()).lower()
    for binding in MainScreen.BINDINGS:  # the app's keys; Ctrl+Q is textual's, shown here
        for key in binding.key.split(","):  # type: ignore[union-attr]
            shown = {"question_mark": "?", "slash": "/", "escape": "esc"}.get(key, key)
            assert shown in keys, key


async def test_answer_keys_act_only_where_the_question_is_in_reach() -> None:
    app, session = app_over()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        for tab in ("2", "3"):
            await pilot.press(tab, "a", "o", "d", "q", "t")
        assert answers(session) == []  # a stray key on another tab answers nothing
        await pilot.press("1", "d")
        assert answers(session) == ["deny"]


async def test_a_focused_question_answers_from_any_tab() -> None:
    app, session = app_over()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("2")
        app.query_one("#deny", Button).focus()
        await pilot.press("o")
        assert answers(session) == ["allow_once"]


async def test_permissive_asks_first_and_not_while_a_question_is_open() -> None:
    app, session = app_over()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("m")
        assert not isinstance(app.screen, ConfirmScreen)  # a question is open: refused
        assert session.sent == []
    quiet = [m for m in demo.messages() if m["type"] != "question"]
    app, session = app_over(quiet)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("m")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert session.sent == []
        await pilot.press("m", "y")
        assert session.sent == [{"type": "mode", "mode": "permissive"}]


async def test_digits_in_the_filter_are_text_not_tabs() -> None:
    app, _ = app_over()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash", "2", "3")
        assert app.query_one("#filter").value == "23"  # type: ignore[attr-defined]
        assert app.query_one(TabbedContent).active == "feed"


def _under_default_policy() -> list[ServerMessage]:
    messages = [m for m in demo.messages() if m["type"] != "question"]
    state = demo.state()
    state["policy"] = DEFAULT_SOURCE
    return [{"type": "hello", "version": 1, "state": state}, *messages[1:]]


async def test_answers_under_the_built_in_policy_are_saved_only_into_a_new_file(
    tmp_path: object,
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    app, _ = app_over(_under_default_policy())
    (tmp_path / "taken.toml").write_text("mine\n")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        assert len(app.kept) == 2  # the demo's "always" and its "deny quietly"
        await pilot.press("w")
        assert isinstance(app.screen, FileNameScreen)
        await pilot.press(*str(tmp_path / "taken.toml"), "enter")
        assert isinstance(app.screen, FileNameScreen)  # refused: it exists
        assert "already exists" in str(app.screen.query_one("#file-error", Static).render())
        await pilot.press("escape", "w")
        await pilot.press(*str(tmp_path / "new.toml"), "enter")
        assert not isinstance(app.screen, FileNameScreen)
    assert (tmp_path / "taken.toml").read_text() == "mine\n"
    saved = (tmp_path / "new.toml").read_text()
    assert "/home/ada/.config/git" in saved and "/home/ada/.ssh" in saved
    assert saved.startswith("# llsupervise's built-in default policy")
