"""Overhead of supervision, child-measured, in one run.

    python bench/bench.py [--opens 20000] [--files 2000] [--repeat 5]

Prints µs per open for: bare, Landlock only (the static layer, no supervision), supervised
static path (a file the static layer allows), supervised grant path (a file only a
committed supervisor rule allows), the last two again with the command and the supervisor
on one CPU (``run --same-cpu``); then a whole workload (extracting a tarball of small files
into a granted directory) for the same set-ups, several times interleaved, with the median's
ratios against bare and Landlock only and what supervision adds per file (the supervised
median less the Landlock-only one); and the start-up cost (a supervised ``true``).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from llsupervise.policy.loader import parse_policy
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.launch.launcher import launch

OPEN_LOOP = r"""
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter_ns()
for _ in range(n):
    os.close(os.open(path, os.O_RDONLY))
print((time.perf_counter_ns() - t0) / n / 1000)
"""


def policy_text(root: Path, granted_static: bool = False) -> str:
    """Static: the system and static/; supervisor: granted/ (static too for Landlock only)."""
    extra = [str(root / "granted")] if granted_static else []
    system = sorted({"/usr", "/lib", "/etc", "/proc", "/dev", os.path.realpath(sys.base_prefix),
                     sys.prefix, str(root / "static")})  # fmt: skip
    rw = (
        f'[[path_beneath]]\nallowed_access = ["abi.read_write"]\nparent = {extra!r}'
        if extra
        else ""
    )
    return f"""
[[ruleset]]
handled_access_fs = ["abi.all"]
[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = {system!r}
{rw}
[supervisor]
mode = "enforce"
[[supervisor.path_beneath]]
allowed_access = ["abi.read_write"]
parent = ["{root}/granted"]
""".replace("'", '"')


def run_capture(argv: Sequence[str], how: str, root: Path) -> tuple[str, float]:
    """Run argv bare, Landlock-only or supervised; return (stdout, wall seconds)."""
    out = root / "stdout"
    with out.open("wb") as sink:
        start = time.perf_counter()
        if how == "bare":
            subprocess.run(argv, stdout=sink, check=True, cwd=root)
        else:
            trio.run(_supervised, argv, how, root, sink.fileno())
        wall = time.perf_counter() - start
    return out.read_text().strip(), wall


async def _supervised(argv: Sequence[str], how: str, root: Path, stdout: int) -> None:
    text = policy_text(root, granted_static=how == "landlock")
    document = parse_policy(text, "bench", {"PWD": str(root), "HOME": str(root)})
    saved = os.dup(1)
    os.dup2(stdout, 1)
    try:
        async with Supervisor.open(document) as sup:
            if how == "landlock":
                # The same static layer, no syscall trapped: Landlock's own cost.
                launched = launch(argv, sup.static_layer(), [], cwd=str(root))
                await trio.to_thread.run_sync(launched.process.wait)
                launched.listener.close()
            else:
                os.chdir(root)
                cpu = min(os.sched_getaffinity(0)) if how == "one-cpu" else None
                status = await sup.run(argv, forward_signals=False, cpu=cpu)
                assert status == 0, status
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def make_tarball(root: Path, files: int) -> Path:
    tar_path = root / "static" / "tree.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(files):
            data = b"x" * 512
            info = tarfile.TarInfo(f"tree/d{i // 100}/f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tar_path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opens", type=int, default=20000)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="llsupervise-bench-"))
    try:
        for sub in ("static", "granted"):
            (root / sub).mkdir()
            (root / sub / "f").write_bytes(b"data")
        print(f"per open, child-measured over {args.opens} opens (µs)")
        cases = [("bare", "bare", "static"), ("landlock only", "landlock", "static"),
                 ("supervised, static path", "supervised", "static"),
                 ("supervised, grant path", "supervised", "granted"),
                 ("  same, --same-cpu: static", "one-cpu", "static"),
                 ("  same, --same-cpu: grant", "one-cpu", "granted")]  # fmt: skip
        base: dict[str, float] = {}
        for label, how, where in cases:
            argv = [sys.executable, "-c", OPEN_LOOP, str(root / where / "f"), str(args.opens)]
            per_open = float(run_capture(argv, how, root)[0].splitlines()[-1])
            base.setdefault(how, per_open)
            extra = per_open - base["bare"]
            print(f"  {label:26s} {per_open:8.2f}  (+{extra:6.2f} over bare)")
        tarball = make_tarball(root, args.files)
        print(f"workload: tar -xf of {args.files} files into a granted directory "
              f"(s, median of {args.repeat} interleaved runs)")  # fmt: skip
        setups = (("bare", "bare"), ("landlock only", "landlock"), ("supervised", "supervised"),
                  ("supervised, --same-cpu", "one-cpu"))  # fmt: skip
        runs: dict[str, list[float]] = {how: [] for _, how in setups}
        for _ in range(args.repeat):
            # Interleaved, so a slow spell of the machine (its disk) hits every set-up alike.
            for _, how in setups:
                shutil.rmtree(root / "granted" / "tree", ignore_errors=True)
                argv = ["tar", "-xf", str(tarball), "-C", str(root / "granted")]
                runs[how].append(run_capture(argv, how, root)[1])
        walls = {how: statistics.median(times) for how, times in runs.items()}
        for label, how in setups:
            ratio = walls[how] / walls["bare"]
            vs_ll = walls[how] / walls["landlock"]
            spread = f"{min(runs[how]):.3f}-{max(runs[how]):.3f}"
            # Supervision's own cost per file: the disk's mood moves bare and Landlock-only
            # runs several-fold, and both sides of this difference alike.
            if how == "bare":
                per_file = f"  {walls[how] / args.files * 1e6:6.1f} µs/file"
            elif how in ("supervised", "one-cpu"):
                per_file = f"  +{(walls[how] - walls['landlock']) / args.files * 1e6:5.1f} µs/file"
            else:
                per_file = ""
            print(f"  {label:26s} {walls[how]:8.3f}  ×{ratio:5.2f} bare  ×{vs_ll:5.2f} landlock"
                  f"   (runs {spread}){per_file}")  # fmt: skip
        start = [run_capture(["true"], "supervised", root)[1] for _ in range(args.repeat)]
        print(f"start-up: supervised `true`, median {statistics.median(start) * 1000:.1f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
