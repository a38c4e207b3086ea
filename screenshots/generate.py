"""Regenerate the interface's screenshots (SVG) in this directory from fixed demo data.

    python screenshots/generate.py

Uses the same app factory as ``llsupervise run`` and ``attach``, over
``llsupervise.tui.demo`` (no live pids or times), so the pictures only change when the
interface does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path

from llsupervise.tui import demo
from llsupervise.tui.app import build_app
from llsupervise.tui.session import ReplaySession

HERE = Path(__file__).resolve().parent
SIZE = (120, 36)


async def shoot(session: ReplaySession, name: str, keys: Sequence[str] = ()) -> Path:
    app = build_app(session, clock=lambda: demo.CLOCK)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.3)  # past the throttled redraw
        path = app.save_screenshot(f"{name}.svg", str(HERE))
    return Path(path)


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
