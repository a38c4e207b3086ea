"""llsupervise beside bare runs, a plain Landlock wrapper, sandlock and a compiled floor.

    python bench/bench.py [--quick] [--workloads KEY,...] [--runners NAME,...] [--repeat N]

Each workload (per-open loops, start-up, short processes, make -j2, git, find, tar) runs under
each runner (bare; ``landlock``, a plain Landlock wrapper; ``ll-static`` and ``ll-granted``,
``llsupervise run --headless`` with the workload's files under static or supervisor-layer rules;
``sandlock``; ``floor``, bench/floor.c, the least a seccomp-notify supervisor costs). Runs are
interleaved: every repetition takes each runner in turn (starting one further along each time),
so a slow spell of the machine or its disk lands on all of them alike; the table gives the median
with ratios to bare, Landlock, sandlock and the floor, then issue 19's targets met or not.
``--quick`` is a smoke run of about a minute (fewer, smaller runs: its figures are rough).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peers import NAMES, OPTIONAL, Runner, make_runners
from report import Results, Samples, block, header, target_lines
from workloads import Layout, Workload, all_workloads


def run_once(runner: Runner, workload: Workload, env: dict[str, str]) -> float | str:
    """The workload's figure under the runner (its own µs/open, or wall ms), or why it
    failed."""
    argv = [*runner.prefix, *workload.argv]
    workload.prepare()
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=workload.cwd, env=env, capture_output=True,
                              timeout=600)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timed out after 600 s"
    wall = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return f"exit status {done.returncode}: {last}"
    if not workload.child_measured:
        return wall * 1000
    try:
        return float(done.stdout.split()[-1])
    except (IndexError, ValueError):
        return f"no figure in its output: {done.stdout[-80:]!r}"


def measure(workload: Workload, runners: list[Runner], repeat: int,
            env: dict[str, str]) -> dict[str, Samples]:  # fmt: skip
    row = {runner.name: Samples() for runner in runners}
    for rep in range(repeat):
        # Round-robin, starting one runner further along each repetition.
        turn = rep % len(runners)
        for runner in runners[turn:] + runners[:turn]:
            samples = row[runner.name]
            if samples.failure is not None:
                continue
            result = run_once(runner, workload, env)
            if isinstance(result, str):
                samples.failure = result
            else:
                samples.values.append(result)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    parser.add_argument("--workloads", help="comma-separated keys (default: all; see --list)")
    parser.add_argument("--runners", help=f"comma-separated, of {', '.join(NAMES + OPTIONAL)} "
                                          f"(default: {','.join(NAMES)})")  # fmt: skip
    parser.add_argument("--repeat", type=int, help="runs per workload and runner (default: "
                                                   "each workload's own)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="llsupervise-bench-"))
    try:
        layout = Layout(root)
        layout.create()
        env = layout.environment()
        workloads = all_workloads(layout, args.quick)
        if args.list:
            for w in workloads:
                print(f"{w.key:<14}{w.label}")
            return 0
        if args.workloads:
            keys = args.workloads.split(",")
            unknown = set(keys) - {w.key for w in workloads}
            if unknown:
                sys.exit(f"unknown workload(s): {', '.join(sorted(unknown))} (see --list)")
            workloads = [w for w in workloads if w.key in keys]
        names = args.runners.split(",") if args.runners else list(NAMES)
        unknown = set(names) - set(NAMES + OPTIONAL)
        if unknown:
            sys.exit(f"unknown runner(s): {', '.join(sorted(unknown))}")
        runners, skipped = make_runners(layout, names, root)
        if not runners:
            sys.exit("no runner can run here")
        print("runners:")
        for runner in runners:
            print(f"  {runner.name:<12}{runner.description}")
        for message in skipped:
            print(message)
        print("workloads interleaved: each repetition runs every runner in turn")
        print(header())
        results: Results = {}
        for workload in workloads:
            workload.setup()
            repeat = args.repeat or workload.repeat
            results[workload.key] = measure(workload, runners, repeat, env)
            for line in block(workload.label, workload.unit, repeat, results[workload.key]):
                print(line, flush=True)
        for line in target_lines(results):
            print(line)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
