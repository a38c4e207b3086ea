"""The short review ``learn`` prints: rules by kind, what was widened, what is sensitive."""

from __future__ import annotations

from collections import Counter

from llsupervise.learn.paths import to_template
from llsupervise.learn.render import listed
from llsupervise.learn.synthesis import LearnedPolicy
from llsupervise.rights import names

#: Kinds of rules in the order the summary lists them, with their labels.
KINDS = (
    ("system", "system hierarchies (read-only)"),
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

    lines = []
    for part, title in (("static", "static"), ("supervisor", "supervisor")):
        counts = Counter(r.kind for r in policy.rules if r.part == part)
        kinds = [f"{counts[kind]} {label}" for kind, label in KINDS if counts[kind]]
        lines.append(f"{title} rules: {', '.join(kinds) or 'none'}")
    system = [t(p) for r in policy.rules if r.kind == "system" for p in r.paths]
    if system:
        lines.append(f"  system hierarchies: {', '.join(system)}")
    if policy.ports:
        lines.append(f"  tcp ports: {', '.join(str(p.port) for p in policy.ports)}")
    widened = [r for r in policy.rules if r.widened and r.kind != "system"]
    if widened:
        lines.append("widened (review these):")
    for rule in widened:
        what = f"  {t(rule.paths[0])} [{', '.join(names(rule.access))}]"
        if rule.transient:
            exposes = [t(p) for p in rule.exposes]
            also = f"; also exposes {listed(exposes)}" if exposes else "; exposes nothing else"
            lines.append(f"{what}: for {len(rule.transient)} objects created/removed{also}")
        else:
            lines.append(f"{what}: all {rule.complete} entries were accessed")
    rare = [r for r in policy.rules if r.runs < policy.runs]
    if rare:
        lines.append(f"rare: {len(rare)} rules were needed by only some of the {policy.runs} runs")
    if policy.sensitive:
        lines.append("SENSITIVE places were touched:")
        for s in policy.sensitive:
            lines.append(f"  {', '.join(names(s.access))} {t(s.path)} by {listed(list(s.exes))}")
    if policy.refused:
        lines.append("NOT granted (the program will be denied these):")
        for refusal in policy.refused:
            lines.append(f"  {t(refusal.path)} [{', '.join(names(refusal.access))}]: "
                         f"{refusal.reason}")  # fmt: skip
    if policy.unplaced:
        lines.append(f"not expressible as rules: {listed([u for u, _ in policy.unplaced])}")
    return lines
