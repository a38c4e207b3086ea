"""bench/bench.py runs end to end: one tiny workload, --quick, every runner this machine has.

No timing is asserted: only that each runner produced a figure (or, for the peers a machine may
lack, said why it was skipped) and that the table and the targets are laid out as documented.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench.py"
ROW = re.compile(r"^  (\S+)\s+(\d+\.\d\d)((?:\s+(?:\d+\.\d\d|-)){4})\s+\d+\.\d\d-\d+\.\d\d$")


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=240)  # fmt: skip


@pytest.mark.kernel
def test_quick_run_of_one_workload_has_a_row_per_runner() -> None:
    done = bench("--quick", "--workloads", "open-abs")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    heading = lines.index("open, absolute path  (µs/open, median of 1)")
    rows = {}
    for line in lines[heading + 1 :]:
        match = ROW.match(line)
        if match is None:
            break
        rows[match[1]] = (float(match[2]), match[3].split())
    expected = ["bare", "landlock", "ll-static", "ll-granted"]
    for peer in ("sandlock", "floor", "floor-cont"):
        skipped = [line for line in lines if line.startswith(f"{peer}: skipped, ")]
        assert bool(skipped) != (peer in rows), (peer, done.stdout)
        if not skipped:
            expected.append(peer)
    assert list(rows) == expected, done.stdout
    assert all(median > 0 for median, _ in rows.values())
    bare_ratios = rows["bare"][1]
    assert bare_ratios[0] == "1.00"  # ×bare of bare itself
    assert all(rows[name][1][0] != "-" for name in rows)  # every row has its ratio to bare
    if "sandlock" in rows:
        assert rows["sandlock"][1][2] == "1.00"
    targets = lines.index("targets of issue 19, from this run:")
    static_abs = [line for line in lines[targets + 1 :]
                  if line.startswith("  static-path open, absolute ≤ 0.5× sandlock")]  # fmt: skip
    assert len(static_abs) == 1
    verdicts = ("met", "NOT met") if "sandlock" in rows else ("not measured",)
    assert static_abs[0].rsplit("   ", 1)[1] in verdicts


def test_unknown_workload_is_one_line_error() -> None:
    done = bench("--quick", "--workloads", "no-such-workload")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "unknown workload(s): no-such-workload (see --list)"
    ]
    assert "runner" not in done.stdout


def test_list_names_every_workload() -> None:
    done = bench("--list")
    assert done.returncode == 0, done.stderr
    keys = [line.split()[0] for line in done.stdout.splitlines()]
    assert keys == ["open-abs", "open-rel", "open-first", "open-granted", "open-2", "startup",
                    "procs", "make", "git-status", "git-log", "find", "tar"]  # fmt: skip
