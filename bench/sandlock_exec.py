"""Run a command under sandlock (Landlock + seccomp user notification), the nearest peer.

    python bench/sandlock_exec.py --ro DIR:DIR... --rw PATH:PATH... -- CMD [ARGS...]

Readable ``--ro`` paths and writable ``--rw`` paths, the command's stdio and working directory
inherited; exits with the command's status. sandlock is a bench-only dependency
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import importlib
import os
import sys


def main(argv: list[str]) -> int:
    ro: list[str] = []
    rw: list[str] = []
    while argv and argv[0] != "--":
        if len(argv) < 2 or argv[0] not in ("--ro", "--rw"):
            raise SystemExit("usage: sandlock_exec.py --ro DIR:... --rw PATH:... -- CMD [ARGS...]")
        (ro if argv[0] == "--ro" else rw).extend(p for p in argv[1].split(":") if p)
        argv = argv[2:]
    if len(argv) < 2:
        raise SystemExit("sandlock_exec.py: no command given")
    # Imported by name: sandlock ships no type information, and may be absent (bench/peers.py
    # checks before using this runner).
    sandlock = importlib.import_module("sandlock")
    sandbox = sandlock.Sandbox(fs_readable=ro, fs_writable=rw, cwd=os.getcwd())
    status: int = sandbox.run_interactive(argv[1:])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
