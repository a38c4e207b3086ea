"""Each subcommand imports only what it needs: start-up time is mostly imports.

The subcommand runs in a child interpreter (this tree's llsupervise), which then lists the
modules it imported; what a subcommand must not import is checked by top-level package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

#: Runs the command line given as arguments, then prints the modules imported, as JSON.
PROBE = """
import contextlib, io, json, sys
from llsupervise.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main(sys.argv[1:])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""

#: The interface, the async runtime, the policy file's watch, and the learning code.
HEAVY = {"textual", "trio", "watchfiles", "anyio", "tomlkit", "rich"}
#: ``llsupervise.learn.arguments`` is imported by every subcommand: it registers ``learn``.
LEARN_CODE = "llsupervise.learn."


def imported(tmp_path: Path, *argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=tmp_path, env=ENV, capture_output=True,
        text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == 0, done.stderr
    return set(result["modules"])


def tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def learn_code(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith(LEARN_CODE) and m != "llsupervise.learn.arguments"}


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(
        '[[ruleset]]\nhandled_access_fs = ["abi.all"]\n'
        '[[path_beneath]]\nallowed_access = ["abi.read_execute"]\nparent = ["/usr", "/etc"]\n'
        '[supervisor]\nmode = "enforce"\n'
    )
    return path


@pytest.mark.parametrize("argv", [("abi",), ("policy", "default")], ids=" ".join)
def test_light_subcommands_import_nothing_heavy(tmp_path: Path, argv: tuple[str, ...]) -> None:
    modules = imported(tmp_path, *argv)
    assert not tops(modules) & HEAVY
    assert not learn_code(modules)
    assert "llsupervise.supervisor.core" not in modules


def test_check_imports_no_runtime(tmp_path: Path, policy: Path) -> None:
    modules = imported(tmp_path, "check", str(policy))
    assert not tops(modules) & HEAVY
    assert not learn_code(modules)
    assert "llsupervise.supervisor.core" not in modules


def test_export_imports_no_runtime(tmp_path: Path, policy: Path) -> None:
    out = tmp_path / "out.json"
    modules = imported(tmp_path, "export", "--policy", str(policy), "--landlockconfig", str(out))
    assert out.exists()
    assert not tops(modules) & HEAVY


def test_run_headless_default_policy(tmp_path: Path) -> None:
    """The built-in policy: no interface, no learning, no watch, no TOML writer (answers are
    only written when saved)."""
    modules = imported(tmp_path, "run", "--headless", "--", "true")
    assert "trio" in modules  # the supervisor itself: the probe did run it
    assert not tops(modules) & (HEAVY - {"trio"})
    assert not learn_code(modules)
    assert not {m for m in modules if m.startswith("llsupervise.tui")}


def test_run_headless_policy_file(tmp_path: Path, policy: Path) -> None:
    """With --policy the file is watched, from a moment into the run (so whether watchfiles
    was imported by the end depends on how long ``true`` took: not asserted)."""
    modules = imported(tmp_path, "run", "--headless", "--policy", str(policy), "--", "true")
    assert not tops(modules) & {"textual", "rich", "tomlkit"}
    assert not learn_code(modules)
    assert not {m for m in modules if m.startswith("llsupervise.tui")}
