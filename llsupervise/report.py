"""``llsupervise abi``, ``check`` and ``export``: what the kernel supports, and what it will
enforce for a policy."""

from __future__ import annotations

import argparse
import json

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError
from llsupervise.landlock import KernelSupport, LandlockRuleset, detect_support
from llsupervise.policy.analysis import unrestricted
from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.loader import load_policy
from llsupervise.policy.model import Ruleset
from llsupervise.rights import FILE_ACCESS, LATEST_ABI, Scope, names
from llsupervise.supervisor.rules.binding import resolve_at_launch, symlinked_paths
from llsupervise.supervisor.rules.controlplane import (
    control_files,
    static_violations,
    unhandled_warnings,
)
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
        # Directory-only rights on a file: Landlock checks them on its directory (see findings).
        dropped = access & ~enforced
        note = f"  (ineffective on a file: {_listed(dropped)})" if dropped else ""
        lines.append(f"  {table.label(obj)}: {_listed(enforced)}{note}")
    for port, net_access in sorted(rules.net.items()):
        lines.append(f"  tcp port {port}: {_listed(net_access)}")
    return lines


def check_report(policy: ResolvedPolicy, table: ObjectTable, support: KernelSupport) -> list[str]:
    """What this kernel will enforce for the policy: handled rights and rules, best effort."""
    doc: PolicyDocument = policy.document
    with LandlockRuleset(
        doc.handled_fs, doc.handled_net, doc.scoped, support=support, allow_nothing=True
    ) as ruleset:
        report = ruleset.report
    target = "newest known" if doc.abi is None else str(doc.abi)
    lines = [f"policy: {doc.source} (access groups resolved for ABI {target})"]
    lines += [f"kernel: {line}" for line in report.lines()]
    if not doc.scoped_stated and Scope.SIGNAL in doc.scoped:
        lines.append("signal scoped by default (no scoped key): the program cannot signal "
                     "processes outside its sandbox, llsupervise included")  # fmt: skip
    open_rights = unrestricted(
        doc.handled_fs, doc.handled_net, doc.scoped, LATEST_ABI if doc.abi is None else doc.abi
    )
    lines.append(open_rights.line())
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
        lines.append(f"skipped optional path '{path}' ({location}): it does not exist")
    for pending in policy.created:
        lines.append(f"pending on creation: '{pending.path}' ({pending.location}): "
                     f"{_listed(pending.access)}, bound to what the run creates there")  # fmt: skip
    lines += _through_symlinks(policy)
    control = control_files(doc.source)
    found = [f"error: {line}" for line in static_violations(policy, control)]
    found += [f"warning: {line}" for line in unhandled_warnings(policy, control)]
    found += [*open_rights.messages(), *(finding.message() for finding in findings(policy, table))]
    found += [
        f"supervisor rule on '{path}' left out: it passes through a symlink in a directory "
        "the program may change (an earlier run may have planted it); name the real path"
        for path in policy.redirectable
    ]
    lines.append(f"findings ({len(found)}):" if found else "findings: none")
    lines += [f"  {message}" for message in found]
    # Labels and paths may hold any byte a file name can (one persisted by "allow always"
    # was named by the supervised program): each line is shown escaped.
    return [escape(line) for line in lines]


def _through_symlinks(policy: ResolvedPolicy) -> list[str]:
    return [
        f"rule path '{path}' passes through a symlink: it leads to '{target}'"
        for path, target in symlinked_paths(policy)
    ]


def cmd_check(args: argparse.Namespace) -> int:
    raise_nofile_limit()
    document = load_policy(args.file)
    with ObjectTable() as table:
        policy = resolve_at_launch(document, table)
        print("\n".join(check_report(policy, table, detect_support())))
        # An error finding: `run` would refuse this policy (see rules.controlplane).
        return 2 if static_violations(policy, control_files(document.source)) else 0


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
        print(escape(f"skipped optional path '{path}' ({location}): it does not exist"))
    return 0
