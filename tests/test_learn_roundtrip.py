"""Learn a policy from a real program, then enforce it.

Each workload is built twice, under ``learn/`` and ``enforce/`` (so the policy must be portable:
``${PWD}``, ``${HOME}``, ``${TMPDIR}``), with its own home and temporary directory.

- The enforced run (``run --headless``: the learned mode is interactive, whose headless default
  denies) must see no denial and produce the same output.
- Under the learned policy, in the tree the learning run left behind (so the directories it
  created exist), decoys the program never read stay unreadable: beside each created directory,
  in ``$HOME`` and under ``/etc``; and nothing outside the work tree becomes writable.

Workloads that create directories rely on rules that bind to a path the run creates (the
supervisor-side part of issue 17: see llsupervise.supervisor.rules.created).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import llsupervise

pytestmark = pytest.mark.kernel

ROOT = Path(llsupervise.__file__).resolve().parent.parent
DECOY = b"decoy: never read by the program\n"


MAKEFILE = """\
build/prog: build/main.o build/util.o
\tcc -o $@ $^
build/%.o: src/%.c src/util.h | build
\tcc -c -o $@ $<
build:
\tmkdir -p build
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
pathlib.Path("out/summary.txt").write_text(f"{len(rows)} rows\\n")
print(json.dumps(result, sort_keys=True))
"""

MKTEMP_SH = """\
set -e
scratch=$(mktemp)
dir=$(mktemp -d)
sort words.txt > "$scratch"
uniq -c "$scratch" > "$dir/counts"
cp "$dir/counts" out/result.txt
cat out/result.txt
rm -r "$scratch" "$dir"
"""

GIT_SCRIPT = "git init -q -b main && git add -A && git commit -q -m initial && git log --oneline"
TAR_SCRIPT = "mkdir extracted && tar -xf archive.tar -C extracted && cat extracted/pkg/README"


@dataclass(frozen=True)
class Workload:
    #: Builds the work under a side directory; returns the working directory.
    build: Callable[[Path], Path]
    command: list[str]
    #: What must come out identical (relative path -> bytes), read after the run.
    outputs: Callable[[Path], dict[str, bytes]]
    #: Directories the run creates, relative to the working directory.
    created: tuple[str, ...] = ()


def _side(side: Path) -> None:
    for d in ("home", "tmp", "elsewhere"):
        (side / d).mkdir(parents=True)
    (side / "elsewhere" / "notes.txt").write_text("not for the program\n")


def build_c_project(side: Path) -> Path:
    _side(side)
    work = side / "project"
    (work / "src").mkdir(parents=True)
    (work / "Makefile").write_text(MAKEFILE)
    (work / "src" / "main.c").write_text(MAIN_C)
    (work / "src" / "util.c").write_text(UTIL_C)
    (work / "src" / "util.h").write_text("int add(int a, int b);\n")
    return work


def c_outputs(work: Path) -> dict[str, bytes]:
    ran = subprocess.run([work / "build" / "prog"], capture_output=True, check=True, timeout=60)
    return {"stdout": ran.stdout}


def build_repository(side: Path) -> Path:
    _side(side)
    work = side / "repo"
    (work / "docs").mkdir(parents=True)
    for i in range(5):
        (work / f"file{i}.txt").write_text(f"content {i}\n" * (i + 1))
    (work / "docs" / "guide.md").write_text("# Guide\n")
    return work


def git_outputs(work: Path) -> dict[str, bytes]:
    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=work, capture_output=True, check=True,
                              timeout=60).stdout  # fmt: skip

    return {"head": git("rev-parse", "HEAD"), "tree": git("ls-tree", "-r", "HEAD")}


def build_archive(side: Path) -> Path:
    _side(side)
    work = side / "unpack"
    work.mkdir()
    source = side / "source"
    (source / "pkg" / "lib").mkdir(parents=True)
    (source / "pkg" / "README").write_text("the package\n")
    (source / "pkg" / "lib" / "code.txt").write_text("code\n")
    with tarfile.open(work / "archive.tar", "w") as archive:
        archive.add(source / "pkg", arcname="pkg")
    return work


def tar_outputs(work: Path) -> dict[str, bytes]:
    return {p: (work / "extracted" / p).read_bytes() for p in ("pkg/README", "pkg/lib/code.txt")}


def build_mktemp_script(side: Path) -> Path:
    _side(side)
    work = side / "words"
    work.mkdir()
    (work / "out").mkdir()
    (work / "words.txt").write_text("b\na\nb\nc\na\nb\n")
    (work / "count.sh").write_text(MKTEMP_SH)
    return work


def mktemp_outputs(work: Path) -> dict[str, bytes]:
    return {"out/result.txt": (work / "out" / "result.txt").read_bytes()}


def build_python_program(side: Path) -> Path:
    _side(side)
    work = side / "analysis"
    (work / "data").mkdir(parents=True)
    (work / "out").mkdir()
    (work / "data" / "input.csv").write_text("name,value\nx,1\ny,2\nx,6\n")
    (work / "report.py").write_text(REPORT_PY)
    return work


def python_outputs(work: Path) -> dict[str, bytes]:
    return {p: (work / p).read_bytes() for p in ("out/result.json", "out/summary.txt")}


WORKLOADS = {
    "make": Workload(build_c_project, ["make"], c_outputs, ("build",)),
    "git": Workload(build_repository, ["sh", "-c", GIT_SCRIPT], git_outputs, (".git",)),
    "tar": Workload(build_archive, ["sh", "-c", TAR_SCRIPT], tar_outputs, ("extracted",)),
    "mktemp": Workload(build_mktemp_script, ["sh", "count.sh"], mktemp_outputs),
    "python": Workload(build_python_program, [sys.executable, "report.py"], python_outputs),
}


def environment(work: Path) -> dict[str, str]:
    side = work.parent
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(side / "home"),
        "TMPDIR": str(side / "tmp"),
        "PWD": str(work),
        "LC_ALL": "C",
        "PYTHONPATH": str(ROOT),  # for llsupervise itself; the workloads do not import
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


def learn(
    tmp_path: Path, workload: Workload
) -> tuple[Path, Path, subprocess.CompletedProcess[bytes]]:
    """The learning run: (its work tree, the policy, the run)."""
    work = workload.build(tmp_path / "learn")
    policy = tmp_path / "policy.toml"
    learned = cli("learn", "-o", str(policy), "--", *workload.command, work=work)
    assert learned.returncode == 0, learned.stderr.decode()
    assert b"llsupervise learn: static rules:" in learned.stderr
    checked = cli("check", str(policy), work=work)
    assert checked.returncode == 0, checked.stderr.decode()
    assert b"findings: none" in checked.stdout
    return work, policy, learned


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_the_learned_policy_runs_the_same_workload_without_a_denial(
    tmp_path: Path, name: str
) -> None:
    workload = WORKLOADS[name]
    learn_work, policy, learned = learn(tmp_path, workload)
    work = workload.build(tmp_path / "enforce")
    log = tmp_path / "enforce.jsonl"
    run = ["run", "--headless", "--policy", str(policy), "--log", str(log), "--"]
    enforced = cli(*run, *workload.command, work=work)
    assert denials(log) == []
    assert enforced.returncode == 0, enforced.stderr.decode()
    assert enforced.stdout == learned.stdout and enforced.stdout
    assert workload.outputs(work) == workload.outputs(learn_work)


@pytest.fixture
def etc_decoy() -> Iterator[Path]:
    """A file under /etc no program needs (the tests run as root, as the project's CI does)."""
    decoy = Path(f"/etc/llsupervise-decoy-{uuid.uuid4().hex[:8]}.conf")
    try:
        decoy.write_bytes(DECOY)
    except PermissionError:
        pytest.skip("needs to write a decoy under /etc")
    try:
        yield decoy
    finally:
        decoy.unlink()


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_the_learned_policy_exposes_nothing_the_workload_did_not_use(
    tmp_path: Path, name: str, etc_decoy: Path
) -> None:
    workload = WORKLOADS[name]
    work, policy, _ = learn(tmp_path, workload)
    side = work.parent
    decoys = [side / "home" / "decoy.txt", etc_decoy]
    for created in workload.created:
        assert (work / created).is_dir(), created
        decoys.append((work / created).parent / f"decoy-beside-{created.lstrip('.')}.txt")
    for decoy in decoys:
        decoy.write_bytes(DECOY)

    log = tmp_path / "probe.jsonl"
    run = ["run", "--headless", "--policy", str(policy), "--log", str(log), "--"]
    read = cli(*run, "sh", "-c", 'for f; do cat "$f"; done; exit 0', "sh", *map(str, decoys),
               work=work)  # fmt: skip
    assert DECOY not in read.stdout, read.stdout
    assert read.stderr.count(b"Permission denied") == len(decoys), read.stderr
    assert {d["path"] for d in denials(log)} == {str(d) for d in decoys}

    outside = [side / "outside.txt", side / "home" / ".profile", side / "elsewhere" / "notes.txt",
               side / "elsewhere" / "new.txt", etc_decoy]  # fmt: skip
    before = {p: p.read_bytes() if p.exists() else None for p in outside}
    script = 'for f; do printf probe >> "$f" && echo "wrote $f"; done; exit 0'
    wrote = cli(*run, "sh", "-c", script, "sh", *map(str, outside), work=work)
    assert wrote.stdout == b"", wrote.stdout
    assert {p: p.read_bytes() if p.exists() else None for p in outside} == before
