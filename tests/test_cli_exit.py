"""``llsupervise run --headless`` as the program ends its process itself, skipping the
interpreter's teardown: its status, its stderr and its log must all be there regardless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_status_output_and_log_survive_the_quick_exit(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "llsupervise", "run", "--headless", "--explain", "--log",
         str(log), "--", "sh", "-c", "echo out; exit 3"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stdout == "out\n"
    assert done.stderr.splitlines()[-1].startswith("llsupervise: exit status 3;")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1]["event"] == "exit" and events[-1]["status"] == 3


def test_a_command_killed_by_a_signal_gives_128_plus_n(tmp_path: Path) -> None:
    """128+N, as the shell says, through the quick exit too."""
    done = subprocess.run(
        [sys.executable, "-m", "llsupervise", "run", "--headless", "--", "sh", "-c",
         "kill -TERM $$"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 128 + 15
