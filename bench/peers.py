"""The runners a workload is measured under: bare, the peers, llsupervise, and the floor.

A runner is an argv prefix: the workload's command is appended to it. All of them give the
command the same rights: read and execute on the system (/usr, /etc, /proc, /dev, the Python
installation), read and write on the bench's ``data`` and ``granted`` directories and /dev/null.
llsupervise runs as a user runs it, ``llsupervise run --headless --policy FILE -- CMD``, from this
checkout (not whichever llsupervise the interpreter would import).
"""

from __future__ import annotations

import compileall
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from workloads import Layout

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

#: The console script's body (``llsupervise = llsupervise.cli:main``), importing this checkout.
CLI = f"import sys; sys.path.insert(0, {str(REPO)!r}); from llsupervise.cli import main; " \
      "sys.exit(main())"  # fmt: skip

#: In table order; ratios are taken to bare, landlock, sandlock and floor.
NAMES = ("bare", "landlock", "ll-static", "ll-granted", "sandlock", "floor", "floor-cont")
#: Measured only when asked for by name (``--runners``).
OPTIONAL = ("ll-same-cpu",)


@dataclass(frozen=True)
class Runner:
    name: str
    description: str
    prefix: tuple[str, ...]


def system_paths() -> list[str]:
    """What every command may read and execute (symlinks to these, like /lib, are left out:
    a rule applies to where a path leads)."""
    candidates = ["/usr", "/etc", "/proc", "/dev", os.path.realpath(sys.base_prefix),
                  os.path.realpath(sys.prefix)]  # fmt: skip
    return sorted({p for p in candidates if os.path.isdir(p) and not os.path.islink(p)})


def policy_text(static_rw: list[str], supervisor_rw: list[str]) -> str:
    def listed(paths: list[str]) -> str:
        return "[" + ", ".join(f'"{p}"' for p in paths) + "]"

    return f"""\
[[ruleset]]
handled_access_fs = ["abi.all"]
[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = {listed(system_paths())}
[[path_beneath]]
allowed_access = ["abi.read_write"]
parent = {listed(static_rw)}
[supervisor]
mode = "enforce"
[[supervisor.path_beneath]]
allowed_access = ["abi.read_write"]
parent = {listed(supervisor_rw)}
"""


def build_floor(out: Path) -> Path | str:
    """bench/floor.c compiled into ``out``, or why not."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return "floor: skipped, no C compiler (gcc or cc) on PATH"
    binary = out / "floor"
    done = subprocess.run([compiler, "-O2", "-o", str(binary), str(BENCH / "floor.c")],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        return f"floor: skipped, {compiler} failed on bench/floor.c: {first}"
    return binary


def sandlock_version() -> str | None:
    if importlib.util.find_spec("sandlock") is None:
        return None
    return importlib.metadata.version("sandlock")


def compile_checkout() -> None:
    """Byte-compile this checkout's llsupervise, as an installed copy is: with
    PYTHONDONTWRITEBYTECODE set (as in some development environments) every run would
    otherwise compile each of its modules again (~0.1 s of each start-up), while the peers'
    installed packages are compiled already. Writes only ``__pycache__`` directories."""
    compileall.compile_dir(str(REPO / "llsupervise"), quiet=1)


def make_runners(layout: Layout, names: list[str], scratch: Path) -> tuple[list[Runner], list[str]]:
    """The runners asked for, in table order, and a message for each that cannot run here."""
    rw = [str(layout.data), str(layout.granted), "/dev/null"]
    paths = ["--ro", ":".join(system_paths()), "--rw", ":".join(rw), "--"]
    runners: list[Runner] = []
    skipped: list[str] = []
    floor: Path | str | None = None
    for name in [n for n in (*NAMES, *OPTIONAL) if n in names]:
        if name == "bare":
            runners.append(Runner(name, "the command alone", ()))
        elif name == "landlock":
            prefix = (sys.executable, "-I", "-S", str(BENCH / "landlock_exec.py"), *paths)
            runners.append(Runner(name, "plain Landlock wrapper (bench/landlock_exec.py: "
                                        "one static ruleset, then exec)", prefix))  # fmt: skip
        elif name.startswith("ll-"):
            compile_checkout()
            # static: data/ is a static rule; granted/ and same-cpu: only the supervisor
            # layer allows data/. granted/ is supervisor-only under all three.
            static = name == "ll-static"
            policy = scratch / f"{name}.toml"
            policy.write_text(policy_text(
                [str(layout.data), "/dev/null"] if static else ["/dev/null"],
                [str(layout.granted)] if static else [str(layout.data), str(layout.granted)]))
            flags = ("--same-cpu",) if name == "ll-same-cpu" else ()
            prefix = (sys.executable, "-c", CLI, "run", "--headless", *flags,
                      "--policy", str(policy), "--")  # fmt: skip
            what = "static rules" if static else "supervisor-layer rules"
            command = " ".join(("llsupervise run --headless", *flags))
            runners.append(Runner(name, f"{command}, data/ under {what}", prefix))
        elif name == "sandlock":
            version = sandlock_version()
            if version is None:
                skipped.append("sandlock: skipped, not installed (pip install -e '.[bench]')")
                continue
            prefix = (sys.executable, str(BENCH / "sandlock_exec.py"), *paths)
            runners.append(Runner(name, f"sandlock {version} (bench/sandlock_exec.py)", prefix))
        elif name in ("floor", "floor-cont"):
            floor = build_floor(scratch) if floor is None else floor
            if isinstance(floor, str):
                skipped.append(floor.replace("floor:", f"{name}:", 1))
                continue
            if name == "floor":
                runners.append(Runner(name, "bench/floor.c: a minimal seccomp-notify openat "
                                            "supervisor, no policy", (str(floor),)))  # fmt: skip
            else:
                runners.append(Runner(name, "bench/floor.c --continue: reads the path, then "
                                            "CONTINUE (the floor of a static-path answer)",
                                      (str(floor), "--continue")))  # fmt: skip
    return runners, skipped
