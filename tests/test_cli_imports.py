"""Each subcommand imports only what it needs: start-up time is mostly imports.

The subcommand runs in a child interpreter (this tree's llsupervise), which then lists the
modules it imported; what a subcommand must not import is checked by top-level package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from supervised import events_of, make_tree, policy_text, wait_for

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

#: Runs the command line given as arguments, then prints the modules imported, as JSON.
PROBE = """
import contextlib, io, json, sys
from llsupervise.cli import main
plain_for = sys.argv.pop(1)
if plain_for != "-":
    from llsupervise.supervisor import core
    core.PLAIN_FOR_S = float(plain_for)
with contextlib.redirect_stdout(io.StringIO()):
    status = main(sys.argv[1:])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""

#: The interface, the async runtime, the policy file's watch, and the learning code.
HEAVY = {"textual", "trio", "watchfiles", "anyio", "tomlkit", "rich"}
#: ``llsupervise.learn.arguments`` is imported by every subcommand: it registers ``learn``.
LEARN_CODE = "llsupervise.learn."


def imported(tmp_path: Path, *argv: str, plain_for: float | None = None) -> set[str]:
    """``plain_for``: seconds a run may go without trio (core.PLAIN_FOR_S; None: as it is)."""
    setting = "-" if plain_for is None else str(plain_for)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, setting, *argv], cwd=tmp_path, env=ENV, capture_output=True,
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
    """The built-in policy, a command that asks nothing: no async runtime (see
    Supervisor.run_trio_on_demand), no interface, no learning, no watch, no TOML writer
    (answers are only written when saved), and no ``dataclasses``: a run's records are
    msgspec Structs, built without compiling code at import (about 1 ms a frozen dataclass
    here)."""
    modules = imported(tmp_path, "run", "--headless", "--", "true", plain_for=60)
    assert "llsupervise.supervisor.engine.loop" in modules  # the probe did supervise it
    assert not tops(modules) & HEAVY
    assert not learn_code(modules)
    assert not {m for m in modules if m.startswith("llsupervise.tui")}
    assert "dataclasses" not in modules
    assert "shutil" not in modules  # argparse's way to the terminal's width (cli._Formatter)


@pytest.mark.parametrize("columns", [50, 120])
def test_help_fits_the_terminal_width(tmp_path: Path, columns: int) -> None:
    """Help is wrapped to ``COLUMNS`` (as shutil.get_terminal_size tells argparse)."""
    done = subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", "run", "--help"], cwd=tmp_path,
        env={**ENV, "COLUMNS": str(columns)}, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    widths = [len(line) for line in done.stdout.splitlines()]
    assert max(widths) <= columns - 2
    assert max(widths) > columns - 30  # wrapped at that width, not at a narrower one


def test_run_headless_starts_trio_for_a_question(tmp_path: Path, policy: Path) -> None:
    """A denial needs trio (questions are asked there): it is started for it, at once (the
    run would otherwise go on without it for a minute), and answers."""
    log = tmp_path / "log.jsonl"
    secret = tmp_path / "secret"
    secret.write_text("s")
    modules = imported(
        tmp_path, "run", "--headless", "--policy", str(policy), "--log", str(log), "--",
        "sh", "-c", f"cat {secret}; exit 0", plain_for=60,
    )  # fmt: skip
    assert "trio" in modules
    events = [json.loads(line) for line in log.read_text().splitlines()]
    denied = [e for e in events if e.get("path") == str(secret)]
    assert denied and denied[0]["decision"] == "deny", events


def test_run_headless_policy_file(tmp_path: Path, policy: Path) -> None:
    """With --policy the file is watched, from a moment into the run (so whether watchfiles
    was imported by the end depends on how long ``true`` took: not asserted)."""
    modules = imported(tmp_path, "run", "--headless", "--policy", str(policy), "--", "true")
    assert not tops(modules) & {"textual", "rich", "tomlkit"}
    assert not learn_code(modules)
    assert not {m for m in modules if m.startswith("llsupervise.tui")}


#: Says it is ready (argv[1] appears), waits for argv[2], then reads argv[3]: "ok" or
#: "err N" into argv[4].
READ_WHEN_TOLD = r"""
import os, sys, time
ready, go, target, out = sys.argv[1:5]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
try:
    with open(target, "rb") as f:
        f.read()
    result = "ok"
except OSError as e:
    result = "err %d" % e.errno
with open(out, "w") as f:
    f.write(result)
"""


def test_a_save_is_applied_without_trio(tmp_path: Path) -> None:
    """A run that asks nothing looks at its policy file without trio: a rule saved while
    the command runs is reloaded and grants (the command's read is performed), and trio
    is never imported."""
    root = Path(os.path.realpath(tmp_path))
    make_tree(root)
    policy_path, log = root / "policy.toml", root / "log.jsonl"
    policy_path.write_text(policy_text(root))
    ready, go, out = root / "out" / "ready", root / "out" / "go", root / "out" / "result"
    argv = ["run", "--headless", "--policy", str(policy_path), "--log", str(log), "--",
            sys.executable, "-I", "-c", READ_WHEN_TOLD, str(ready), str(go),
            str(root / "data" / "x"), str(out)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, "600", *argv], cwd=root, env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # both waits together, as one limit
        wait_for(ready.exists, "the command never ran", 60, proc)
        rule = ('\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\n'
                f'parent = ["{root}/data"]\n')  # fmt: skip
        policy_path.write_text(policy_text(root, supervisor_rules=rule))
        wait_for(
            lambda: any(e["event"] == "reload" for e in events_of(log)),
            "never reloaded", deadline - time.monotonic(), proc,
        )  # fmt: skip
    finally:
        go.touch()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert [e["ok"] for e in events_of(log) if e["event"] == "reload"] == [True]
    assert out.read_text() == "ok"
    result = json.loads(stdout.splitlines()[-1])
    assert result["status"] == 0, stderr
    assert "trio" not in result["modules"]
