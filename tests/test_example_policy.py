"""config/example.toml runs everyday tools in a git checkout, headless, with no surprise denial.

Real runs: ``llsupervise run --headless --policy config/example.toml --log L -- TOOL`` in a fresh
checkout with its own home. The only events allowed besides the tool's success are the grants the
example's comments announce (git reading ~/.gitconfig through the conditional rule).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llsupervise

pytestmark = pytest.mark.kernel

EXAMPLE = Path(__file__).parent.parent / "config" / "example.toml"
#: This llsupervise, whatever the current directory, without a PYTHONPATH the tools would see.
LLSUPERVISE = [
    sys.executable, "-c",
    f"import sys; sys.path.insert(0, {str(Path(llsupervise.__file__).parent.parent)!r}); "
    "from llsupervise.cli import main; sys.exit(main(sys.argv[1:]))",
]  # fmt: skip
PATH = "/usr/local/bin:/usr/bin:/bin"

TOOLS = {
    "git log": ["git", "log", "-1"],
    "git status": ["git", "status"],
    "python3": ["python3", "-c", "import ssl, json; ssl.create_default_context()"],
    "make": ["make"],
    "ls": ["ls", "-la"],
}


def expected(event: dict[str, Any], home: Path) -> bool:
    """A grant the example announces: git reading the global git configuration."""
    return (
        event["path"] == str(home / ".gitconfig")
        and event["exe"].endswith("/git")
        and "conditional" in (event.get("decision"), event.get("rule"))
    )


@pytest.fixture
def place() -> Iterator[Path]:
    """Outside /tmp: the example's static rules grant /tmp read-write."""
    root = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root)


def setup(root: Path) -> tuple[Path, Path, Path, dict[str, str]]:
    home, checkout = root / "home", root / "checkout"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Example\n\temail = e@example.org\n")
    env = {"HOME": str(home), "PATH": PATH, "LANG": "C.UTF-8"}
    checkout.mkdir()
    (checkout / "Makefile").write_text("all:\n\t@echo made > built.txt\n\t@cat built.txt\n")
    (checkout / "README").write_text("hello\n")
    for argv in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "first"]):
        subprocess.run(argv, cwd=checkout, env=env, check=True)
    (checkout / "README").write_text("changed\n")  # something for git status to report
    policy = root / "policy.toml"
    shutil.copyfile(EXAMPLE, policy)
    return home, checkout, policy, env


def run(
    policy: Path, log: Path, argv: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLSUPERVISE, "run", "--headless", "--policy", str(policy),
         "--log", str(log), "--", *argv],
        cwd=cwd, env={**env, "PWD": str(cwd)}, capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip


def denials(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in events if e["event"] == "denial"]


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_the_example_policy_runs_the_tool(place: Path, tool: str) -> None:
    argv = TOOLS[tool]
    if shutil.which(argv[0], path=PATH) is None:
        pytest.skip(f"{argv[0]} is not installed")
    home, checkout, policy, env = setup(place)
    log = place / "events.jsonl"
    result = run(policy, log, argv, checkout, env)
    assert result.returncode == 0, result.stderr
    assert [e for e in denials(log) if not expected(e, home)] == []
    if tool == "git status":
        assert "modified:   README" in result.stdout
    if tool == "make":
        assert result.stdout == "made\n" and (checkout / "built.txt").exists()
    if tool == "git log":
        assert "first" in result.stdout and "Example" in result.stdout  # ~/.gitconfig was read


def test_the_program_cannot_write_the_policy_file(place: Path) -> None:
    """Outside the working directory, the policy file is not writable under the example."""
    _, checkout, policy, env = setup(place)
    before = policy.read_bytes()
    log = place / "events.jsonl"
    result = run(policy, log, ["sh", "-c", f"echo 'mode = \"permissive\"' >> {policy}"],
                 checkout, env)  # fmt: skip
    assert result.returncode != 0
    assert policy.read_bytes() == before
    assert [(e["path"], e["decision"]) for e in denials(log)] == [(str(policy), "deny")]
    assert os.access(policy, os.W_OK)  # the test itself could: only the sandbox stopped it
