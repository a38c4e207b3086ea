"""Time from saving a large policy to its commit, while a supervised command runs.

    python bench/reload.py [--rules 10000] [--saves 5]

Writes a policy with N supervisor rules (one directory each), runs a command that waits,
then saves the file several times by rename (as editors do), each save changing one rule's
rights, and prints for each how long it took from the rename to the ``commit`` event (the
watcher's debounce included), then the same for a save that changes every rule. Also prints
the cost of the reload itself (parse, resolve, diff, commit; no watcher) for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from llsupervise.messages import Event
from llsupervise.policy.loader import load_policy
from llsupervise.supervisor.core import Supervisor

SYSTEM = sorted({"/usr", "/lib", "/etc", "/proc", "/dev", os.path.realpath(sys.base_prefix),
                 sys.prefix})  # fmt: skip


def policy_text(root: Path, count: int, odd: int, access: str = "read_file") -> str:
    system = ", ".join(f'"{d}"' for d in SYSTEM)
    parts = [
        f'[[ruleset]]\nhandled_access_fs = ["abi.all"]\n\n[[path_beneath]]\n'
        f'allowed_access = ["abi.read_execute"]\nparent = [{system}]\n\n'
        '[supervisor]\nmode = "enforce"\n'
    ]
    for i in range(count):
        rights = '"read_file", "read_dir"' if i == odd else f'"{access}"'
        parts.append(
            f"\n[[supervisor.path_beneath]]\nallowed_access = [{rights}]\n"
            f'parent = ["{root}/d{i}"]\n'
        )
    return "".join(parts)


def save(path: Path, text: str) -> float:
    temporary = path.with_name(".policy.toml.swp")
    temporary.write_text(text)
    started = time.perf_counter()
    os.replace(temporary, path)
    return started


async def measure(root: Path, count: int, saves: int) -> None:
    policy = root / "policy.toml"
    policy.write_text(policy_text(root, count, odd=-1))
    document = load_policy(policy, {"PWD": str(root), "HOME": str(root)})
    commits: list[tuple[float, Event]] = []
    read, write = os.pipe()
    async with Supervisor.open(document, watch=True) as sup, trio.open_nursery() as nursery:
        sup.listeners.append(lambda e: commits.append((time.perf_counter(), e)))

        async def child() -> None:
            # cat waits on its stdin until we close the pipe.
            await sup.run(["cat"], forward_signals=False, stdio=(read, None, None))

        nursery.start_soon(child)
        await trio.sleep(0.5)  # the watcher is up

        async def one(text: str) -> float:
            mark = len(commits)
            started = save(policy, text)
            while not any(e["event"] == "reload" for _, e in commits[mark:]):
                await trio.sleep(0.001)
            [(done, event)] = [(t, e) for t, e in commits[mark:] if e["event"] == "reload"]
            assert event["ok"], event
            return (done - started) * 1000

        small = [await one(policy_text(root, count, odd=i)) for i in range(saves)]
        print(f"{count} rules, one rule changed: save -> commit "
              f"median {statistics.median(small):.0f} ms, max {max(small):.0f} ms")  # fmt: skip
        full = await one(policy_text(root, count, odd=-1, access="read_dir"))
        print(f"{count} rules, every rule changed: save -> commit {full:.0f} ms")

        assert sup.policy_file is not None
        policy.write_text(policy_text(root, count, odd=0))
        started = time.perf_counter()
        event = sup.policy_file.check()
        direct = (time.perf_counter() - started) * 1000
        assert event is not None and event["ok"], event
        print(f"{count} rules, the reload alone (no watcher, one rule changed): {direct:.0f} ms")
        os.close(write)
    os.close(read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--saves", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.rules):
            (root / f"d{i}").mkdir()
        trio.run(measure, root, args.rules, args.saves)


if __name__ == "__main__":
    main()
