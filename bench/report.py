"""The bench's table (median per workload and runner, with ratios) and issue 19's targets."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

#: The runners every row is also given as a ratio to.
REFERENCES = ("bare", "landlock", "sandlock", "floor")


@dataclass
class Samples:
    """One workload's figures under one runner, or why it failed."""

    values: list[float] = field(default_factory=list)
    failure: str | None = None

    @property
    def median(self) -> float | None:
        if self.failure is not None or not self.values:
            return None
        return statistics.median(self.values)


#: results[workload key][runner name]
Results = dict[str, dict[str, Samples]]


def header() -> str:
    ratios = "".join(f"{'×' + ref:>11}" for ref in REFERENCES)
    return f"  {'runner':<12}{'median':>10}{ratios}   range"


def block(label: str, unit: str, repeat: int, row: dict[str, Samples]) -> Iterator[str]:
    """One workload's lines: its heading, then one line per runner."""
    yield f"{label}  ({unit}, median of {repeat})"
    for name, samples in row.items():
        median = samples.median
        if median is None:
            yield f"  {name:<12}{'failed':>10}  {samples.failure}"
            continue
        ratios = ""
        for ref in REFERENCES:
            base = row[ref].median if ref in row else None
            ratios += f"{median / base:>11.2f}" if base else f"{'-':>11}"
        spread = f"{min(samples.values):.2f}-{max(samples.values):.2f}"
        yield f"  {name:<12}{median:>10.2f}{ratios}   {spread}"


def ratio(results: Results, workload: str, runner: str, ref_workload: str,
          ref_runner: str) -> float | None:  # fmt: skip
    mine = results.get(workload, {}).get(runner)
    ref = results.get(ref_workload, {}).get(ref_runner)
    if mine is None or ref is None or mine.median is None or not ref.median:
        return None
    return mine.median / ref.median


def per_extra_process_ms(results: Results, runner: str) -> float | None:
    """What a runner adds per process: its ms per short process less bare's."""
    mine = results.get("procs", {}).get(runner)
    bare = results.get("procs", {}).get("bare")
    if mine is None or bare is None or mine.median is None or bare.median is None:
        return None
    return mine.median - bare.median


@dataclass(frozen=True)
class Target:
    text: str
    runner: str
    value: float | None
    limit: float
    unit: str = "×"


def targets(results: Results) -> list[Target]:
    """Issue 19's targets, each as this run measured it, in the issue's order."""
    both = ("ll-static", "ll-granted")
    specs: list[tuple[str, tuple[str, ...], Callable[[str], float | None], float, str]] = [
        ("`run --headless -- true` ≤ 1.5× sandlock's start-up", both,
         lambda r: ratio(results, "startup", r, "startup", "sandlock"), 1.5, "×"),
        ("static-path open, absolute ≤ 0.5× sandlock", ("ll-static",),
         lambda r: ratio(results, "open-abs", r, "open-abs", "sandlock"), 0.5, "×"),
        ("static-path open, relative ≤ 0.5× sandlock", ("ll-static",),
         lambda r: ratio(results, "open-rel", r, "open-rel", "sandlock"), 0.5, "×"),
        ("granted open ≤ 1.0× sandlock", ("ll-granted",),
         lambda r: ratio(results, "open-granted", r, "open-granted", "sandlock"), 1.0, "×"),
        ("two concurrent openers ≤ 1.3× one opener (per open)", both,
         lambda r: ratio(results, "open-2", r, "open-abs", r), 1.3, "×"),
        ("per extra process ≤ 0.3 ms (over bare)", both,
         lambda r: per_extra_process_ms(results, r), 0.3, " ms"),
        ("make -j2 ≤ 1.3× Landlock only", both,
         lambda r: ratio(results, "make", r, "make", "landlock"), 1.3, "×"),
    ]  # fmt: skip
    return [Target(text, runner, measure(runner), limit, unit)
            for text, runners, measure, limit, unit in specs for runner in runners]  # fmt: skip


def target_lines(results: Results) -> Iterator[str]:
    yield "targets of issue 19, from this run:"
    for t in targets(results):
        if t.value is None:
            verdict = "not measured"
            shown = f"{'-':>8}"
        else:
            verdict = "met" if t.value <= t.limit else "NOT met"
            shown = f"{t.value:>7.2f}{t.unit}" if t.unit == "×" else f"{t.value:>6.3f}{t.unit}"
        yield f"  {t.text:<54}{t.runner:<12}{shown:>10}   {verdict}"
    floors = [(name, ratio(results, "open-2", name, "open-abs", name))
              for name in ("floor", "floor-cont")]  # fmt: skip
    own = [f"{name} {value:.2f}×" for name, value in floors if value is not None]
    if own:
        yield f"  (two concurrent openers against one, the floors' own: {', '.join(own)})"
