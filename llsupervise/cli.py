"""Command line: ``llsupervise abi | check | run``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from llsupervise.errors import LLSuperviseError
from llsupervise.landlock import KernelSupport, detect_support
from llsupervise.landlock import Ruleset as KernelRuleset
from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.loader import load_policy
from llsupervise.policy.model import Ruleset
from llsupervise.rights import FILE_ACCESS, Scope, names
from llsupervise.supervisor.rules.objects import (
    ObjectTable,
    ResolvedPolicy,
    findings,
    merged_rules,
    raise_nofile_limit,
    resolve,
)


def _listed(flags: object) -> str:
    return ", ".join(names(flags)) or "none"  # type: ignore[arg-type]


def cmd_abi(args: argparse.Namespace) -> int:
    support = detect_support()
    if args.json:
        print(json.dumps(support.to_json()))
        return 0
    if support.abi == 0:
        print("Landlock is not available on this kernel (disabled or not built in)")
        return 1
    print(f"Landlock ABI {support.abi} (errata {support.errata:#x})")
    print(f"filesystem access: {_listed(support.fs)}")
    print(f"network access: {_listed(support.net)}")
    print(f"scopes: {_listed(support.scopes)}")
    print(f"restrict_self flags: {', '.join(support.restrict_flags) or 'none'}")
    return 0


def _rules(title: str, rules: Ruleset, table: ObjectTable) -> list[str]:
    lines = [f"{title} ({len(rules)}):"]
    for obj, access in sorted(rules.fs.items(), key=lambda item: table.label(item[0])):
        enforced = access if table.is_dir(obj) else access & FILE_ACCESS
        note = "" if enforced == access else f"  (file: {_listed(access & ~enforced)} do not apply)"
        lines.append(f"  {table.label(obj)}: {_listed(enforced)}{note}")
    for port, net_access in sorted(rules.net.items()):
        lines.append(f"  tcp port {port}: {_listed(net_access)}")
    return lines


def check_report(policy: ResolvedPolicy, table: ObjectTable, support: KernelSupport) -> list[str]:
    """What this kernel will enforce for the policy: handled rights and rules, best effort."""
    doc: PolicyDocument = policy.document
    with KernelRuleset(
        doc.handled_fs, doc.handled_net, doc.scoped, support=support, allow_nothing=True
    ) as ruleset:
        report = ruleset.report
    target = "newest known" if doc.abi is None else str(doc.abi)
    lines = [f"policy: {doc.source} (access groups resolved for ABI {target})"]
    lines += [f"kernel: {line}" for line in report.lines()]
    if not doc.scoped_stated and Scope.SIGNAL in doc.scoped:
        lines.append("signal scoped by default (no scoped key): the program cannot signal "
                     "processes outside its sandbox, llsupervise included")  # fmt: skip
    lines += _rules("static rules, fixed for the run", policy.static, table)
    sup = doc.supervisor
    lines += _rules(
        f"supervisor rules, reloadable (mode {sup.mode}, prompt timeout {sup.prompt_timeout:g}s, "
        f"default {sup.default})",
        policy.supervisor,
        table,
    )
    lines.append(f"conditional supervisor rules, reloadable ({len(policy.conditional)}):")
    for rule in sorted(policy.conditional, key=lambda r: r.label):
        when = [f"exe {', '.join(sorted(rule.condition.exe))}"] if rule.condition.exe else []
        when += [f"cgroup {rule.condition.cgroup}"] if rule.condition.cgroup else []
        lines.append(f"  {rule.label}: {_listed(rule.access)}  (only for {'; '.join(when)})")
    lines.append(f"quiet objects ({len(policy.quiet)}):")
    lines += [f"  {table.label(obj)}" for obj in sorted(policy.quiet, key=table.label)]
    for path, location in policy.skipped:
        lines.append(f"skipped optional path {path!r} ({location}): it does not exist")
    found = findings(policy, table)
    lines.append(f"findings ({len(found)}):" if found else "findings: none")
    lines += [f"  {finding.message()}" for finding in found]
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    raise_nofile_limit()
    document = load_policy(args.file)
    with ObjectTable() as table:
        policy = resolve(document, table)
        print("\n".join(check_report(policy, table, detect_support())))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the policy as a plain landlockconfig file (static ∪ supervisor rules)."""
    from llsupervise.policy.export import to_landlockconfig
    from llsupervise.supervisor.policyfile.persist import write_atomically

    raise_nofile_limit()
    document = load_policy(args.policy)
    with ObjectTable() as table:
        policy = resolve(document, table)
        comment = [f"landlockconfig policy exported by llsupervise from {document.source}:",
                   "static and supervisor rules merged, variables resolved."]  # fmt: skip
        if policy.conditional:
            comment.append(f"{len(policy.conditional)} conditional rule(s) left out.")
        text = to_landlockconfig(
            document.handled_fs, document.handled_net, document.scoped,
            merged_rules(policy, table), (policy.static | policy.supervisor).net, comment,
        )  # fmt: skip
    try:
        write_atomically(args.landlockconfig, text)
    except OSError as exc:
        raise LLSuperviseError(f"{args.landlockconfig}: {exc.strerror}") from None
    for path, location in policy.skipped:
        print(f"skipped optional path {path!r} ({location}): it does not exist")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from llsupervise.supervisor.frontends.headless import run_headless

    if not args.command:
        raise LLSuperviseError("no command given: llsupervise run [options] -- CMD [ARGS...]")
    if args.headless:
        cpu = min(os.sched_getaffinity(0)) if args.same_cpu else None
        return run_headless(
            args.policy, args.command, log_path=args.log, listen=args.listen, watch=True, cpu=cpu
        )
    if args.same_cpu:
        raise LLSuperviseError("--same-cpu goes with --headless")
    if args.listen:
        raise LLSuperviseError(
            "--listen goes with --headless: the command keeps this terminal and "
            "`llsupervise attach SOCKET` answers from another one"
        )
    from llsupervise.tui.app import run_tui

    return run_tui(args.policy, args.command, log_path=args.log, watch=True)


def cmd_attach(args: argparse.Namespace) -> int:
    from llsupervise.tui.app import run_attach

    return run_attach(args.socket)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llsupervise", description="Interactive supervisor for mutable Landlock domains."
    )
    sub = parser.add_subparsers(dest="subcommand", required=True)
    abi = sub.add_parser("abi", help="show the kernel's Landlock ABI and what it supports")
    abi.add_argument("--json", action="store_true", help="machine-readable output")
    abi.set_defaults(func=cmd_abi)
    check = sub.add_parser("check", help="validate a policy; show what this kernel enforces")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)
    export = sub.add_parser("export", help="write a policy as a plain landlockconfig file")
    export.add_argument("--policy", required=True, help="policy file (TOML)")
    export.add_argument("--landlockconfig", required=True, help="landlockconfig file to write")
    export.set_defaults(func=cmd_export)
    run = sub.add_parser("run", help="run a command under supervision")
    run.add_argument("--policy", required=True, help="policy file (TOML)")
    run.add_argument("--headless", action="store_true", help="no interface: mode/default apply")
    run.add_argument("--log", help="append events to this JSON-lines file")
    run.add_argument(
        "--listen", metavar="SOCKET", help="with --headless: answer via `llsupervise attach SOCKET`"
    )
    run.add_argument(
        "--same-cpu",
        action="store_true",
        help="with --headless: keep the command and the supervisor on one CPU (a little "
        "faster per trapped call; the command loses its parallelism)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_run)
    attach = sub.add_parser("attach", help="open the interface of a `run --listen` supervisor")
    attach.add_argument("socket", help="the SOCKET given to --listen")
    attach.set_defaults(func=cmd_attach)
    from llsupervise.learn.command import add_parser as add_learn_parser

    add_learn_parser(sub)  # learn [-o FILE] [--merge FILE] [--runs N] -- CMD
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    try:
        status: int = args.func(args)
    except LLSuperviseError as exc:
        print(f"llsupervise: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
