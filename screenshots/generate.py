"""Regenerate the interface's screenshots (SVG) in this directory from fixed demo data.

    python screenshots/generate.py

Uses the same app factory as ``llsupervise run`` and ``attach``, over
``llsupervise.tui.demo`` (no live pids or times), so the pictures only change when the
interface does.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from llsupervise.tui import demo
from llsupervise.tui.app import build_app
from llsupervise.tui.session import ReplaySession

HERE = Path(__file__).resolve().parent
#: The size the README's pictures are taken at (the interface also fits 80x24).
SIZE = (120, 36)

#: One run of text in a rich SVG export: each is drawn on its own, stretched to textLength.
_TEXT = re.compile(
    r'(<text [^>]*?x=")([0-9.]+)("[^>]*?textLength=")([0-9.]+)("[^>]*>)(.*?)(</text>)'
)
_NBSP = "&#160;"


def _run_without_edge_spaces(match: re.Match[str]) -> str:
    start, x, middle, length, tag_end, body, end = match.groups()
    cells = len(html.unescape(body))
    stripped = body
    lead = 0
    while stripped.startswith(_NBSP):
        stripped, lead = stripped[len(_NBSP) :], lead + 1
    trail = 0
    while stripped.endswith(_NBSP):
        stripped, trail = stripped[: -len(_NBSP)], trail + 1
    if not (lead or trail) or not stripped or not cells:
        return match.group(0)
    cell = float(length) / cells
    return (
        f"{start}{float(x) + lead * cell:g}{middle}{float(length) - (lead + trail) * cell:g}"
        f"{tag_end}{stripped}{end}"
    )


def keep_spaces(svg: str) -> str:
    """Move the spaces at either end of each run of text into its position and length.

    Many SVG viewers drop a run's leading and trailing spaces, non-breaking ones included:
    "llsupervise" then "  pid 4242" was shown as "llsupervisepid 4242", and a run whose
    trailing spaces were dropped was stretched over their cells."""
    return _TEXT.sub(_run_without_edge_spaces, svg)


async def shoot(session: ReplaySession, name: str, keys: Sequence[str] = ()) -> Path:
    app = build_app(session, clock=lambda: demo.CLOCK, wall=lambda: demo.WALL)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.3)  # past the throttled redraw
        path = Path(app.save_screenshot(f"{name}.svg", str(HERE)))
    path.write_text(keep_spaces(path.read_text()))
    return path


def without_questions() -> list[dict[str, object]]:
    return [m for m in demo.messages() if m["type"] != "question"]


async def main() -> None:
    written = [
        await shoot(demo.session(), "feed-and-prompt"),
        await shoot(ReplaySession(without_questions()), "rules", ["2"]),
        await shoot(ReplaySession(without_questions(), output=demo.OUTPUT), "output", ["3"]),
        await shoot(demo.session(attached=True), "attach"),
    ]
    for path in written:
        print(path.relative_to(HERE.parent))


if __name__ == "__main__":
    os.environ["TZ"] = "UTC"  # the demo's times, as the snapshots show them
    time.tzset()
    asyncio.run(main())
