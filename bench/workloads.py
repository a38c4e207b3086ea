"""The benchmark's workloads: what each runs, where, how often, and what it measures.

Every workload is one command, run under each runner as ``runner prefix + command``. Per-open
workloads are measured by the command itself (a Python loop prints µs per open on its last
line); the others by the wall time of the whole wrapped command, its runner's start-up included.
Files a workload needs are generated once, under the layout's ``data`` directory (static for
``llsupervise static``, supervisor-granted for ``llsupervise granted``) or ``granted``
(supervisor-granted under both llsupervise runners).
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

OPEN_LOOP = r"""
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter_ns()
for _ in range(n):
    os.close(os.open(path, os.O_RDONLY))
print((time.perf_counter_ns() - t0) / n / 1000)
"""

#: Each path once: what a supervisor pays for a path it has not seen (nothing cached for it).
OPEN_EACH = r"""
import os, sys, time
paths = open(sys.argv[1]).read().split("\n")
t0 = time.perf_counter_ns()
for path in paths:
    os.close(os.open(path, os.O_RDONLY))
print((time.perf_counter_ns() - t0) / len(paths) / 1000)
"""

#: Two processes run OPEN_LOOP's loop at once (released together); prints their mean µs/open.
TWO_OPENERS = r"""
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
go_r, go_w = os.pipe()
res_r, res_w = os.pipe()
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        os.read(go_r, 1)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            os.close(os.open(path, os.O_RDONLY))
        os.write(res_w, b"%f\n" % ((time.perf_counter_ns() - t0) / n / 1000))
        os._exit(0)
    pids.append(pid)
os.write(go_w, b"go")
for pid in pids:
    os.waitpid(pid, 0)
os.close(res_w)
times = [float(line) for line in os.read(res_r, 4096).split()]
print(sum(times) / len(times))
"""

#: Starts /bin/true n times, one after the other; prints ms per process. Child-measured, so the
#: runner's own start-up is not in it.
SHORT_PROCESSES = r"""
import os, sys, time
n = int(sys.argv[1])
t0 = time.perf_counter_ns()
for _ in range(n):
    os.waitpid(os.posix_spawn("/bin/true", ["true"], os.environ), 0)
print((time.perf_counter_ns() - t0) / n / 1e6)
"""

MAKEFILE = """\
SOURCES := $(wildcard src/*.c)
OBJECTS := $(patsubst src/%.c,build/%.o,$(SOURCES))
build/prog: $(OBJECTS)
\tcc -o $@ $^
build/%.o: src/%.c src/common.h
\tcc -O1 -c -o $@ $<
"""


@dataclass(frozen=True)
class Layout:
    """The bench's directory tree. ``data``: the workloads' files, HOME and TMPDIR;
    ``granted``: a file only llsupervise's supervisor layer allows."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def granted(self) -> Path:
        return self.root / "granted"

    def create(self) -> None:
        for sub in (self.data, self.granted, self.data / "home", self.data / "tmp"):
            sub.mkdir(parents=True, exist_ok=True)
        (self.data / "f").write_bytes(b"data")
        (self.granted / "f").write_bytes(b"data")

    def environment(self) -> dict[str, str]:
        """The environment of every run, runners alike: HOME and TMPDIR inside ``data`` (so
        git and gcc write nowhere else), and the C locale."""
        env = dict(os.environ, HOME=str(self.data / "home"), TMPDIR=str(self.data / "tmp"))
        env["LC_ALL"] = "C"
        return env


@dataclass(frozen=True)
class Workload:
    key: str  # the name --workloads selects it by
    label: str  # the table's heading for it
    unit: str  # "ms" (wall time) or another (the command's own figure: "µs/open", ...)
    argv: Sequence[str]
    cwd: Path
    repeat: int
    setup: Callable[[], None] = field(default=lambda: None)  # once, before its first run
    prepare: Callable[[], None] = field(default=lambda: None)  # before each run, untimed

    @property
    def child_measured(self) -> bool:
        return self.unit != "ms"


def sh_loop(times: int, command: str) -> list[str]:
    return ["sh", "-c", f"i=0; while [ $i -lt {times} ]; do {command}; i=$((i+1)); done"]


def first_seen_files(count: int) -> list[str]:
    """Regular files under /usr, sorted: static for every runner, and never opened before by a
    fresh supervisor."""
    found: list[str] = []
    for top in ("/usr/share", "/usr/lib"):
        for directory, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(directory, name)
                if os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.R_OK):
                    found.append(path)
                    if len(found) == count:
                        return found
    return found


def make_project(root: Path, files: int) -> None:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "build").mkdir(exist_ok=True)
    (root / "Makefile").write_text(MAKEFILE)
    (root / "src" / "common.h").write_text(
        "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
        + "".join(f"int f{i}(int);\n" for i in range(files))
    )
    for i in range(files):
        (root / "src" / f"f{i}.c").write_text(
            f'#include "common.h"\nint f{i}(int x) {{ char b[32]; snprintf(b, sizeof b, "%d", x);'
            f" return (int)strlen(b) + {i}; }}\n"
        )
    calls = " + ".join(f"f{i}(argc)" for i in range(files))
    (root / "src" / "main.c").write_text(
        f'#include "common.h"\nint main(int argc, char **argv) {{ (void)argv; '
        f'printf("%d\\n", {calls}); return 0; }}\n'
    )


def clean_build(root: Path) -> None:
    for entry in (root / "build").iterdir():
        entry.unlink()


def make_repo(root: Path, env: dict[str, str], files: int, commits: int) -> None:
    """A git repository of ``files`` small files over ``commits`` commits, packed, plus one modified
    and one untracked file, so that status and log have something to say."""
    if (root / ".git").exists():
        return  # made for the other git workload
    root.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)

    git("init", "-q")
    git("config", "user.email", "bench@example.invalid")
    git("config", "user.name", "bench")
    for c in range(commits):
        for i in range(c % 5, files, 5):
            sub = root / f"d{i % 10}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i}.txt").write_text(f"file {i}, commit {c}\n" * 5)
        git("add", "-A")
        git("commit", "-q", "-m", f"commit {c}")
    git("gc", "-q")  # packed, as a cloned repository is: not one loose file per object
    (root / "d0" / "f0.txt").write_text("changed\n")
    (root / "untracked.txt").write_text("new\n")


def make_tarball(path: Path, files: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            data = b"x" * 512
            info = tarfile.TarInfo(f"tree/d{i // 100}/f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def all_workloads(layout: Layout, quick: bool) -> list[Workload]:
    """Sizes and repetitions keep a full run under ten minutes on 2 CPUs (``quick``: about one
    minute, for a smoke run)."""
    python = sys.executable
    data, env = layout.data, layout.environment()
    opens = 2000 if quick else 20000
    rep = 1 if quick else 5
    seen = 300 if quick else 2000
    c_files = 6 if quick else 30
    git_times = 3 if quick else 20
    tar_files = 200 if quick else 2000
    seen_list = data / "first-seen.txt"
    project, repo, tarball, out = data / "project", data / "repo", data / "tree.tar", data / "out"

    def write_seen() -> None:
        seen_list.write_text("\n".join(first_seen_files(seen)))

    def fresh_out() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    finds = sorted(glob.glob("/usr/lib/python3*"))
    return [
        Workload("open-abs", "open, absolute path", "µs/open",
                 [python, "-c", OPEN_LOOP, str(data / "f"), str(opens)], data, rep),
        Workload("open-rel", "open, relative path (cwd)", "µs/open",
                 [python, "-c", OPEN_LOOP, "f", str(opens // 2)], data, rep),
        Workload("open-first", f"open, first-seen file under /usr ({seen} files)", "µs/open",
                 [python, "-c", OPEN_EACH, str(seen_list)], data, rep, setup=write_seen),
        Workload("open-granted", "open, supervisor-granted file", "µs/open",
                 [python, "-c", OPEN_LOOP, str(layout.granted / "f"), str(opens // 2)], data, rep),
        Workload("open-2", "open, two concurrent openers (each)", "µs/open",
                 [python, "-c", TWO_OPENERS, str(data / "f"), str(opens // 2)], data, rep),
        Workload("startup", "start-up: `true`", "ms", ["true"], data, 2 if quick else 10),
        Workload("procs", "100 short processes (/bin/true, one after the other)", "ms/process",
                 [python, "-c", SHORT_PROCESSES, "100"], data, rep),
        Workload("make", f"make -j2 ({c_files + 1} C files)", "ms", ["make", "-s", "-j2"],
                 project, 1 if quick else 3, setup=lambda: make_project(project, c_files),
                 prepare=lambda: clean_build(project)),
        Workload("git-status", f"git status ×{git_times}", "ms",
                 sh_loop(git_times, "git status >/dev/null"), repo, rep,
                 setup=lambda: make_repo(repo, env, 200, 2 if quick else 40)),
        Workload("git-log", f"git log --stat ×{git_times}", "ms",
                 sh_loop(git_times, "git log --stat >/dev/null"), repo, rep,
                 setup=lambda: make_repo(repo, env, 200, 2 if quick else 40)),
        Workload("find", "find /usr/lib/python3* ×1", "ms", ["find", *finds], data, rep),
        Workload("tar", f"tar -xf of {tar_files} files", "ms",
                 ["tar", "-xf", str(tarball), "-C", str(out)], data, rep,
                 setup=lambda: make_tarball(tarball, tar_files), prepare=fresh_out),
    ]  # fmt: skip
