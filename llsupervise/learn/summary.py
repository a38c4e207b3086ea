"""The short review ``learn`` prints: rules by kind, what was widened, what is sensitive."""

from __future__ import annotations

import posixpath
from collections import Counter

from llsupervise.learn.paths import to_template
from llsupervise.learn.render import listed
from llsupervise.learn.synthesis import LearnedPolicy
from llsupervise.rights import names

#: Kinds of rules in the order the summary lists them, with their labels.
KINDS = (
    ("system", "system hierarchies (read-only)"),
    ("sysdata", "system files (read-only)"),
    ("exec", "executables"),
    ("kernel", "judged in the caller's context"),
    ("device", "device ioctl"),
    ("read", "read"),
    ("write", "write/create/remove"),
)


def summary(policy: LearnedPolicy) -> list[str]:
    """Lines to show before the policy is used."""

    def t(path: str) -> str:
        return to_template(path, policy.variables)

    def by(exes: tuple[str, ...]) -> str:
        return listed(sorted({posixpath.basename(e) or e for e in exes}))

    lines = []
    for part, title in (("static", "static"), ("supervisor", "supervisor")):
        counts = Counter(r.kind for r in policy.rules if r.part == part)
        kinds = [f"{counts[kind]} {label}" for kind, label in KINDS if counts[kind]]
        lines.append(f"{title} rules: {', '.join(kinds) or 'none'}")
    whole = [t(r.paths[0]) for r in policy.rules if r.kind == "system"]
    if whole:
        lines.append(f"  system hierarchies: {', '.join(whole)}")
    if policy.ports:
        lines.append(f"  tcp ports: {', '.join(str(p.port) for p in policy.ports)}")
    widened = [r for r in policy.rules if r.widened]
    if widened:
        lines.append("widened (review these):")
    for rule in widened:
        what = f"  {t(rule.paths[0])} [{', '.join(names(rule.access))}]"
        exposes = [t(p) for p in rule.exposes]
        also = f"; also exposes {listed(exposes)}" if exposes else "; exposes nothing else"
        if rule.many:
            lines.append(f"{what}: {rule.many[0]} of its {rule.many[1]} entries were read{also}")
        elif rule.churn:
            lines.append(f"{what}: names churn ({'; '.join(rule.churn)}){also}")
        elif rule.transient:
            lines.append(f"{what}: for {len(rule.transient)} objects created/removed{also}")
        else:
            lines.append(f"{what}: all {rule.complete} entries were accessed")
    created = [r for r in policy.rules if r.created]
    if created:
        lines.append("created by the run (a rule for the new object only):")
        lines += [f"  {t(r.paths[0])} [{', '.join(names(r.access))}]" for r in created]
    rare = [r for r in policy.rules if r.runs < policy.runs]
    if rare:
        lines.append(f"rare: {len(rare)} rules were needed by only some of the {policy.runs} runs")
    granted = [s for s in policy.sensitive if s.granted]
    if granted:
        lines.append("SENSITIVE places were read and have a rule of their own (review these):")
        for s in granted:
            lines.append(f"  {t(s.path)} [{', '.join(names(s.granted))}] by {by(s.exes)}")
    touched = [s for s in policy.sensitive if not s.granted]
    if touched:
        lines.append("SENSITIVE places were touched (no rule of their own):")
        for s in touched:
            lines.append(f"  {', '.join(names(s.access))} {t(s.path)} by {by(s.exes)}")
    if policy.refused:
        lines.append("NOT granted (the program will be denied these):")
        for refusal in policy.refused:
            lines.append(f"  {t(refusal.path)} [{', '.join(names(refusal.access))}]: "
                         f"{refusal.reason}")  # fmt: skip
    if policy.unplaced:
        lines.append(f"not expressible as rules: {listed([u for u, _ in policy.unplaced])}")
    return lines
