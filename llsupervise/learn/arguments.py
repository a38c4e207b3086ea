"""The ``learn`` subcommand's arguments: registered without importing the learning code,
which ``llsupervise run`` never needs (start-up time)."""

from __future__ import annotations

import argparse
from typing import Any

RECORDING_SUFFIX = ".recording.json"


def _runs(value: str) -> int:
    try:
        runs = int(value)
    except ValueError:
        runs = 0
    if runs < 1:
        raise argparse.ArgumentTypeError(f"expected a number of runs of at least 1, not {value!r}")
    return runs


def _learn(args: argparse.Namespace) -> int:
    from llsupervise.learn.command import cmd_learn

    return cmd_learn(args)


def add_parser(subparsers: Any) -> None:
    """Register ``learn`` on the CLI's subparsers."""
    learn_parser = subparsers.add_parser(
        "learn", help="run a command with nothing denied; write a least-privilege policy"
    )
    learn_parser.add_argument("-o", "--output", metavar="FILE",
                              help="policy file to write (default: standard output)")  # fmt: skip
    learn_parser.add_argument(
        "--merge", metavar="FILE",
        help=f"add the runs recorded for this policy (FILE{RECORDING_SUFFIX}, or a recording)",
    )  # fmt: skip
    learn_parser.add_argument("--runs", type=_runs, default=1, metavar="N",
                              help="run the command N times (default 1)")  # fmt: skip
    learn_parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    learn_parser.set_defaults(func=_learn)
