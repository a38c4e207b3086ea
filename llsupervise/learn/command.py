"""``llsupervise learn [-o FILE] [--merge FILE] [--runs N] -- CMD``.

Without ``-o`` the policy goes to standard output, and the command's own standard output is sent
to standard error so the two never mix. With ``-o FILE`` the recording is kept beside the policy
(``FILE.recording.json``) so that later runs can be merged into it with ``--merge FILE``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError
from llsupervise.learn.arguments import RECORDING_SUFFIX
from llsupervise.learn.context import live_context, live_variables
from llsupervise.learn.guard import writers
from llsupervise.learn.paths import to_template
from llsupervise.learn.recorder import CommandNotStarted, record
from llsupervise.learn.recording import Recording, RecordingError
from llsupervise.learn.render import render
from llsupervise.learn.summary import summary
from llsupervise.learn.synthesis import LearnedPolicy, synthesize
from llsupervise.policy.loader import parse_policy
from llsupervise.rights import names
from llsupervise.supervisor.policyfile.persist import write_atomically
from llsupervise.supervisor.rules.objects import ObjectTable, raise_nofile_limit, resolve


class LearnError(LLSuperviseError):
    """``learn`` could not produce a policy."""


def recording_path(policy_path: str) -> str:
    """Where the recording of a policy lives: ``--merge`` takes either file."""
    return policy_path if policy_path.endswith(".json") else policy_path + RECORDING_SUFFIX


def load_recording(path: str) -> Recording:
    source = recording_path(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise LearnError(
            f"{source}: no recording to merge (`llsupervise learn -o FILE` writes "
            f"FILE{RECORDING_SUFFIX}; pass that policy file or the recording itself)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{source}: cannot read the recording: {exc}") from None
    return Recording.from_json(text, source)


def check_output_place(output: str) -> None:
    """Before anything runs: the policy (and its recording) can be written there."""
    directory = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise LearnError(f"-o {output}: is a directory; name the policy file to write")
    if not os.path.isdir(directory):
        raise LearnError(f"-o {output}: no such directory {directory}; nothing was run")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise LearnError(f"-o {output}: cannot write in {directory}; nothing was run")


def check_out_of_reach(learned: LearnedPolicy, files: Sequence[str], cwd: str) -> None:
    """The learned rules must not let the program change the policy it will run under."""
    variables = learned.variables
    for file in files:
        real = os.path.realpath(file)
        found = writers(learned, real)
        if not found:
            continue
        rule = found[0]
        how = f"{to_template(rule.paths[0], variables)} [{', '.join(names(rule.access))}]"
        name = os.path.basename(real)
        places = [os.path.join(os.path.dirname(cwd), name)]
        if variables.get("HOME"):
            places.append(os.path.join(variables["HOME"], name))
        outside = [p for p in places if not writers(learned, p)]
        suggestion = f"; e.g. -o {outside[0]}" if outside else ""
        raise LearnError(
            f"not writing {file}: the learned rule on {how} would let the program change its "
            f"own policy; nothing was written. Pass -o a place outside its rules{suggestion}"
        )


def check_loads(text: str, source: str, env: Mapping[str, str]) -> None:
    """The policy must load and resolve here, or nothing is written."""
    raise_nofile_limit()
    try:
        document = parse_policy(text, source, env)
        with ObjectTable() as table:
            resolve(document, table)
    except LLSuperviseError as exc:
        raise LearnError(f"the learned policy does not load ({exc}); nothing was written") \
            from exc  # fmt: skip


def learn(
    argv: Sequence[str],
    *,
    output: str | None,
    merge: str | None = None,
    runs: int = 1,
    env: Mapping[str, str] | None = None,
) -> tuple[int, LearnedPolicy]:
    """Record ``runs`` runs of ``argv`` (plus ``merge``), write the policy; return the last
    run's exit status and the learned rules."""
    environment = dict(os.environ if env is None else env)
    cwd = os.getcwd()
    if output:
        check_output_place(output)
    previous = load_recording(merge) if merge else None  # bad input changes nothing
    variables = live_variables(environment, cwd)
    stdio = (None, None, None) if output else (None, sys.stderr.fileno(), None)
    recording = previous
    status = 0
    for _ in range(runs):
        try:
            status, run = record(argv, stdio=stdio)
        except CommandNotStarted as exc:
            raise LearnError(f"{exc}; no policy was written") from None
        run = run.templated(variables)
        recording = run if recording is None else recording.merged(run)
    assert recording is not None
    learned = synthesize(recording, live_context(variables))
    side = recording_path(output) if output else None
    text = render(learned, recording_file=os.path.basename(side) if side else None)
    check_loads(text, output or "<stdout>", {**environment, "PWD": variables["PWD"]})
    if output and side:
        check_out_of_reach(learned, [output, side], variables["PWD"])
        write_atomically(side, recording.to_json())
        write_atomically(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return status, learned


def cmd_learn(args: argparse.Namespace) -> int:
    if not args.command:
        raise LearnError("no command given: llsupervise learn [options] -- CMD [ARGS...]")
    status, learned = learn(args.command, output=args.output, merge=args.merge, runs=args.runs)
    lines = summary(learned)
    if status:
        lines.insert(0, f"the command exited with status {status}: the policy covers only what "
                        "it did before")  # fmt: skip
    if args.output:
        lines.append(f"written: {args.output} (recording: {recording_path(args.output)})")
        run = shlex.join(["llsupervise", "run", "--policy", args.output, "--", *args.command])
        lines.append(f"review it, then: {run}")
    else:
        lines.append("no recording kept (pass -o FILE to keep one for --merge)")
    # The review names what the program touched: escaped, as everywhere a person reads it.
    print("\n".join(f"llsupervise learn: {escape(line)}" for line in lines), file=sys.stderr)
    return status
