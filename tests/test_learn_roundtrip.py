"""Learn a policy from a real program, then enforce it on a fresh copy of the same work.

Each workload is built twice, under ``learn/`` and ``enforce/`` (so the policy must be portable:
``${PWD}``, ``${HOME}``, ``${TMPDIR}``), with its own home and temporary directory. The enforced
run (``run --headless``: the learned mode is interactive, whose headless default denies) must
see no denial and produce the same output; then children under the learned policy try to read
a decoy secret that the program never read, and to write outside the workload's directories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

DECOY = b"-----BEGIN DECOY PRIVATE KEY-----\n"
APPENDED = b"probe\n"

MAKEFILE = """\
build/prog: build/main.o build/util.o
\tcc -o $@ $^
build/%.o: src/%.c src/util.h
\tcc -c -o $@ $<
"""
MAIN_C = '#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%d\\n", add(2, 3)); }\n'
UTIL_C = '#include "util.h"\nint add(int a, int b) { return a + b; }\n'

REPORT_PY = """\
import collections, csv, hashlib, json, pathlib, statistics
rows = list(csv.DictReader(open("data/input.csv")))
values = [int(r["value"]) for r in rows]
digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
result = {"n": len(rows), "mean": statistics.mean(values), "sha": digest,
          "top": collections.Counter(r["name"] for r in rows).most_common(1)}
pathlib.Path("out/result.json").write_text(json.dumps(result, sort_keys=True) + "\\n")
print(json.dumps(result, sort_keys=True))
"""


@dataclass(frozen=True)
class Workload:
    #: Builds the work under a side directory; returns the working directory.
    build: Callable[[Path], Path]
    command: list[str]
    #: What must come out identical (relative path -> bytes), read after the run.
    outputs: Callable[[Path], dict[str, bytes]]
    #: Relative to the working directory: a decoy the program never reads.
    decoy: str
    #: Relative to the working directory: places outside its directories, and one inside.
    forbidden: tuple[str, ...]
    allowed: str


def _side(side: Path) -> None:
    for d in ("home", "tmp", "elsewhere"):
        (side / d).mkdir(parents=True)
    (side / "elsewhere" / "notes.txt").write_text("not for the program\n")


def build_c_project(side: Path) -> Path:
    _side(side)
    work = side / "project"
    (work / "src").mkdir(parents=True)
    (work / "build").mkdir()
    (work / "build" / ".keep").write_text("")
    (work / "Makefile").write_text(MAKEFILE)
    (work / "src" / "main.c").write_text(MAIN_C)
    (work / "src" / "util.c").write_text(UTIL_C)
    (work / "src" / "util.h").write_text("int add(int a, int b);\n")
    (work / "secret.key").write_bytes(DECOY)
    return work


def c_outputs(work: Path) -> dict[str, bytes]:
    ran = subprocess.run([work / "build" / "prog"], capture_output=True, check=True, timeout=60)
    return {"build/prog": (work / "build" / "prog").read_bytes(), "stdout": ran.stdout}


def build_repository(side: Path) -> Path:
    """The decoy sits beside the repository: ``git init`` creates ``.git`` inside it, so the
    repository directory itself is where created objects are anchored (see synthesis)."""
    _side(side)
    work = side / "repo"
    (work / "docs").mkdir(parents=True)
    for i in range(5):
        (work / f"file{i}.txt").write_text(f"content {i}\n" * (i + 1))
    (work / "docs" / "guide.md").write_text("# Guide\n")
    (side / "secret.key").write_bytes(DECOY)
    return work


def git_outputs(work: Path) -> dict[str, bytes]:
    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=work, capture_output=True, check=True,
                              timeout=60).stdout  # fmt: skip

    return {"head": git("rev-parse", "HEAD"), "tree": git("ls-tree", "-r", "HEAD")}


def build_python_program(side: Path) -> Path:
    _side(side)
    work = side / "analysis"
    (work / "data").mkdir(parents=True)
    (work / "out").mkdir()
    (work / "data" / "input.csv").write_text("name,value\nx,1\ny,2\nx,6\n")
    (work / "report.py").write_text(REPORT_PY)
    (work / "secret.key").write_bytes(DECOY)
    return work


def python_outputs(work: Path) -> dict[str, bytes]:
    return {"out/result.json": (work / "out" / "result.json").read_bytes()}


GIT_SCRIPT = "git init -q -b main && git add -A && git commit -q -m initial && git log --oneline"
OUTSIDE = ("../outside.txt", "../home/.profile", "../elsewhere/notes.txt", "../elsewhere/new.txt")

WORKLOADS = {
    "make": Workload(
        build_c_project, ["make"], c_outputs, "secret.key",
        (*OUTSIDE, "top-level.txt", "src/main.c", "Makefile"), "build/extra.o",
    ),
    "git": Workload(
        build_repository, ["sh", "-c", GIT_SCRIPT], git_outputs, "../secret.key",
        OUTSIDE, "new-file.txt",
    ),
    "python": Workload(
        build_python_program, [sys.executable, "report.py"], python_outputs, "secret.key",
        (*OUTSIDE, "top-level.txt", "data/input.csv", "report.py"), "out/extra.json",
    ),
}  # fmt: skip


def environment(work: Path) -> dict[str, str]:
    side = work.parent
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(side / "home"),
        "TMPDIR": str(side / "tmp"),
        "PWD": str(work),
        "LC_ALL": "C",
        "GIT_AUTHOR_NAME": "Learner",
        "GIT_AUTHOR_EMAIL": "learner@example.org",
        "GIT_COMMITTER_NAME": "Learner",
        "GIT_COMMITTER_EMAIL": "learner@example.org",
        "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    }


def cli(*args: str, work: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", *args],
        capture_output=True, cwd=work, env=environment(work), timeout=300, check=False,
    )  # fmt: skip


def denials(log: Path) -> list[dict[str, object]]:
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [e for e in events if e["event"] == "denial"]


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_learned_policy_runs_the_program_and_nothing_else(tmp_path: Path, name: str) -> None:
    workload = WORKLOADS[name]
    learn_work = workload.build(tmp_path / "learn")
    work = workload.build(tmp_path / "enforce")
    policy = tmp_path / "policy.toml"

    learned = cli("learn", "-o", str(policy), "--", *workload.command, work=learn_work)
    assert learned.returncode == 0, learned.stderr.decode()
    assert b"llsupervise learn: static rules:" in learned.stderr

    checked = cli("check", str(policy), work=work)
    assert checked.returncode == 0, checked.stderr.decode()
    assert b"findings: none" in checked.stdout

    log = tmp_path / "enforce.jsonl"
    run = ["run", "--headless", "--policy", str(policy), "--log", str(log), "--"]
    enforced = cli(*run, *workload.command, work=work)
    assert enforced.returncode == 0, enforced.stderr.decode()
    assert denials(log) == []
    assert enforced.stdout == learned.stdout and enforced.stdout
    assert workload.outputs(work) == workload.outputs(learn_work)

    decoy = (work / workload.decoy).resolve()
    log.unlink()
    read = cli(*run, "cat", str(decoy), work=work)
    assert read.returncode != 0 and DECOY not in read.stdout
    assert b"Permission denied" in read.stderr
    assert [d["path"] for d in denials(log)] == [str(decoy)]

    before = {t: _content(work / t) for t in (*workload.forbidden, workload.allowed)}
    script = 'for f; do printf probe\\\\n >> "$f" && echo "wrote $f"; done; exit 0'
    wrote = cli(*run, "sh", "-c", script, "sh", *workload.forbidden, workload.allowed, work=work)
    assert wrote.stdout.decode().splitlines() == [f"wrote {workload.allowed}"]
    for target in workload.forbidden:
        assert _content(work / target) == before[target], target
    assert _content(work / workload.allowed) == (before[workload.allowed] or b"") + APPENDED


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
