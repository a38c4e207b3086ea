"""Cost of a learning run on a C build, against the bare build and strace.

    python bench/learn.py [--files 40] [--repeat 5]

Builds a generated C project with make (one gcc per file, then a link) from a clean tree,
and reports the median wall time of:

* bare: ``make``;
* record: the learning run alone (``llsupervise.learn.recorder.record``, in process);
* learn: the whole ``llsupervise learn -o FILE -- make`` command (interpreter start-up,
  recording, synthesis, and the check that the policy loads);
* strace: ``strace -f -e trace=%file -o /dev/null make``, which records the same kind of
  information (it says "strace not found" when strace is not installed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from workloads import clean_build, make_project

from llsupervise.learn.recorder import record


def measure(runs: dict[str, Callable[[], None]], root: Path, repeat: int) -> dict[str, float]:
    """Median wall time of each run from a clean build directory. The runs take turns, so
    that a busy moment on the machine does not land on one of them only."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            clean_build(root)
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def quiet(argv: list[str]) -> None:
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=40, help="C files in the project")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llsupervise-bench-") as tmp:
        root = Path(tmp) / "project"
        make_project(root, args.files)
        policy = Path(tmp) / "policy.toml"
        os.chdir(root)

        def recorded() -> None:
            status, _ = record(["make", "-s"])
            assert status == 0

        learn = [sys.executable, "-m", "llsupervise.cli", "learn", "-o", str(policy), "--"]
        runs: dict[str, Callable[[], None]] = {
            "bare": lambda: quiet(["make", "-s"]),
            "record": recorded,
            "learn (CLI)": lambda: quiet([*learn, "make", "-s"]),
        }
        strace = shutil.which("strace")
        if strace is not None:
            trace = [strace, "-f", "-e", "trace=%file", "-o", "/dev/null"]
            runs["strace -f -e trace=%file"] = lambda: quiet([*trace, "make", "-s"])
        print(f"workload: make, {args.files + 1} C files compiled and linked, "
              f"median of {args.repeat} clean builds each, taking turns")  # fmt: skip
        if strace is None:
            print("strace not found: install it (apt-get install strace) to compare")
        results = measure(runs, root, args.repeat)
        base = results["bare"]
        for name, seconds in results.items():
            print(f"  {name:<26} {seconds * 1000:8.1f} ms   x{seconds / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
