"""Findings about a policy's rules: ineffective and redundant ones, and supervisor rules that
meet quiet objects.

Works on file objects and their *chains* (the object, then each ancestor up to the root), the
way Landlock evaluates a path: a ``path_beneath`` rule on a directory covers everything beneath
it, and the rights of the rules on a chain add up. Pure: the caller opens the paths.

* A rule is **ineffective** when it states directory-only rights (read_dir, remove_*, make_*,
  refer) on a file: Landlock checks them on the file's directory, so on the file they grant
  nothing. A rule that grants nothing at all is reported so, and never as redundant. Groups
  (``abi.read_execute``, ``vN.read_write``...) are broad on purpose and bring directory rights onto
  files (landlockconfig drops them there): a rule whose directory-only part is exactly a group's
  is reported only when nothing else of it applies either.
* A rule is **redundant** when another rule of the same layer, on the same object or on an
  ancestor, grants a superset of its rights (of two identical rules, the later one is reported).
  A conditional rule is also redundant when an unconditional supervisor rule covers it.
* A supervisor rule (conditional or not) is **covered by static rules** when the static rules on
  its chain already grant all its rights: the layer allows static OR supervisor.
* A supervisor rule **overlaps a quiet object** when the quiet object lies beneath the rule (the
  rule grants there, so only the rights it lacks are denied quietly) or the rule lies beneath the
  quiet object (the rule carves an exception out of a quiet tree).
* Rights and scopes the policy does not **handle** are not restricted at all (a policy without
  ``[[ruleset]]`` handles only the rights its rules use): they are listed, and leaving every
  removal or every creation right open is a finding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from msgspec import Struct

from llsupervise.policy.conditions import Condition
from llsupervise.policy.model import ObjectId
from llsupervise.rights import (
    FILE_ACCESS,
    LATEST_ABI,
    NO_FS,
    NO_NET,
    AccessFs,
    AccessNet,
    Scope,
    fs_all,
    fs_read_execute,
    fs_read_write,
    names,
    net_all,
    scope_all,
)

Layer = Literal["static", "supervisor"]
Kind = Literal["ineffective", "redundant", "covered_by_static", "quiet_overlap"]
Chains = Mapping[ObjectId, Sequence[ObjectId]]


class PolicyRule(Struct, frozen=True):
    """One path of one ``path_beneath`` entry, resolved to its object."""

    layer: Layer
    obj: ObjectId
    #: The rights the kernel enforces on the object (directory-only rights dropped on files).
    access: AccessFs
    label: str
    #: Where it was written, for messages (printed: ``file:line: key``). Kept as given (a
    #: Location looks its line up only when printed).
    where: object
    #: Set for conditional supervisor rules (``exe`` / ``cgroup``).
    condition: Condition | None = None
    #: The rights the entry states (None: the same as ``access``).
    stated: AccessFs | None = None

    @property
    def ineffective(self) -> AccessFs:
        """Stated rights that do not apply to the object (directory-only rights on a file)."""
        return NO_FS if self.stated is None else self.stated & ~self.access


class QuietObject(Struct, frozen=True):
    obj: ObjectId
    label: str
    where: object


class Finding(Struct, frozen=True):
    kind: Kind
    rule: PolicyRule
    #: The covering rule (redundant), or None when the static rules together cover it.
    other: PolicyRule | None = None
    quiet: QuietObject | None = None
    #: For quiet overlaps: True when the quiet object lies beneath the rule.
    quiet_beneath: bool = False

    def message(self) -> str:
        if self.kind == "ineffective":
            return (
                f"ineffective: {', '.join(names(self.rule.ineffective))} on {self.rule.label} "
                f"(a file: Landlock checks these on its directory) ({self.rule.layer} rule, "
                f"{self.rule.where})"
            )
        rule = f"{_describe(self.rule)} ({self.rule.where})"
        if self.kind == "redundant":
            assert self.other is not None
            return f"redundant: {rule} is covered by {_describe(self.other)} ({self.other.where})"
        if self.kind == "covered_by_static":
            return f"redundant: {rule} is already granted by the static rules"
        assert self.quiet is not None
        where = f"{self.quiet.label} ({self.quiet.where})"
        if self.quiet_beneath:
            return (
                f"overlap: quiet {where} lies beneath {rule}: the rule grants there, only "
                "the rights it lacks are denied quietly"
            )
        return f"overlap: {rule} lies beneath quiet {where}: it grants inside the quiet tree"


class PortFinding(Struct, frozen=True):
    port: int
    access: AccessNet

    def message(self) -> str:
        return (
            f"redundant: supervisor tcp port {self.port} ({', '.join(names(self.access))}) "
            "is already granted by the static rules"
        )


#: What an ``exe`` condition is worth; the README says the same.
EXE_CONDITION_WARNING = (
    "an exe condition is a program identity, not a boundary for programs that read files they "
    "are told to (git, interpreters, shells)"
)


class PolicyWarning(Struct, frozen=True):
    """A property of the policy worth a line in ``check``, not about one rule's redundancy."""

    text: str

    def message(self) -> str:
        return f"warning: {self.text}"


def exe_condition_warnings(
    labels_and_exes: Iterable[tuple[str, Iterable[str]]],
) -> list[PolicyWarning]:
    """One warning per conditional rule with an ``exe`` condition."""
    return [
        PolicyWarning(
            f"rule {label} is only for exe {', '.join(sorted(exes))}: {EXE_CONDITION_WARNING}"
        )
        for label, exes in labels_and_exes
        if exes
    ]


def signal_scope_warning(scoped_stated: bool, signal_scoped: bool) -> list[PolicyWarning]:
    """A warning when the policy states its scopes and leaves out ``signal``: the program can
    then signal the supervisor (stop it, and with it every trapped call)."""
    if not scoped_stated or signal_scoped:
        return []
    return [
        PolicyWarning(
            '[[ruleset]] states scoped without "signal": the program can signal processes '
            "outside its domain, the supervisor included (without a scoped key, signal is scoped)"
        )
    ]


def _describe(rule: PolicyRule) -> str:
    text = f"{rule.layer} rule {rule.label}: {', '.join(names(rule.access)) or 'none'}"
    if rule.condition is not None:
        text += " (conditional)"
    return text


def _index(rules: Iterable[PolicyRule]) -> dict[ObjectId, list[tuple[int, PolicyRule]]]:
    by_obj: dict[ObjectId, list[tuple[int, PolicyRule]]] = {}
    for i, rule in enumerate(rules):
        by_obj.setdefault(rule.obj, []).append((i, rule))
    return by_obj


def _chain(chains: Chains, obj: ObjectId) -> Sequence[ObjectId]:
    return chains.get(obj, (obj,))


def _may_cover(other: PolicyRule, rule: PolicyRule) -> bool:
    """Whether ``other`` counts for ``rule``'s layer (see the module docstring)."""
    if other.layer != rule.layer:
        return False
    if other.condition is None:
        return True
    return rule.condition == other.condition


#: The directory-only rights a group brings onto a file, for each group and ABI.
_GROUP_TAILS = frozenset(
    group(abi) & ~FILE_ACCESS
    for group in (fs_all, fs_read_execute, fs_read_write)
    for abi in range(1, LATEST_ABI + 1)
)


def ineffective(rules: Sequence[PolicyRule]) -> list[Finding]:
    """Rules stating rights that do not apply to their object (see the module docstring)."""
    return [
        Finding("ineffective", rule)
        for rule in rules
        if rule.ineffective and (rule.access == NO_FS or rule.ineffective not in _GROUP_TAILS)
    ]


def _grants(rule: PolicyRule) -> bool:
    """Whether any of the rule's rights applies: one that grants nothing is only ineffective."""
    return rule.access != NO_FS


def redundant(rules: Sequence[PolicyRule], chains: Chains) -> list[Finding]:
    """Rules covered by one other rule of the same layer on the same object or an ancestor."""
    by_obj = _index(rules)
    findings = []
    for i, rule in enumerate(rules):
        if not _grants(rule):
            continue
        for depth, obj in enumerate(_chain(chains, rule.obj)):
            cover = next(
                (
                    other
                    for j, other in by_obj.get(obj, [])
                    if j != i
                    and _may_cover(other, rule)
                    and rule.access & ~other.access == NO_FS
                    # Same object and same rights: only the later one is redundant.
                    and not (depth == 0 and other.access == rule.access and j > i
                             and other.condition == rule.condition)
                ),
                None,
            )  # fmt: skip
            if cover is not None:
                findings.append(Finding("redundant", rule, cover))
                break
    return findings


def covered_by_static(rules: Sequence[PolicyRule], chains: Chains) -> list[Finding]:
    """Supervisor rules whose rights the static rules on their chain already grant."""
    static: dict[ObjectId, AccessFs] = {}
    for rule in rules:
        if rule.layer == "static":
            static[rule.obj] = static.get(rule.obj, NO_FS) | rule.access
    findings = []
    for rule in rules:
        if rule.layer != "supervisor" or not _grants(rule):
            continue
        granted = NO_FS
        for obj in _chain(chains, rule.obj):
            granted |= static.get(obj, NO_FS)
        if rule.access & ~granted == NO_FS:
            findings.append(Finding("covered_by_static", rule))
    return findings


def quiet_overlaps(
    rules: Sequence[PolicyRule], quiet: Sequence[QuietObject], chains: Chains
) -> list[Finding]:
    findings = []
    for rule in rules:
        if rule.layer != "supervisor" or not _grants(rule):
            continue
        rule_chain = set(_chain(chains, rule.obj))
        for q in quiet:
            if q.obj in rule_chain:
                findings.append(Finding("quiet_overlap", rule, quiet=q))
            elif rule.obj in _chain(chains, q.obj):
                findings.append(Finding("quiet_overlap", rule, quiet=q, quiet_beneath=True))
    return findings


def redundant_ports(
    static: Mapping[int, AccessNet], supervisor: Mapping[int, AccessNet]
) -> list[PortFinding]:
    return [
        PortFinding(port, access)
        for port, access in sorted(supervisor.items())
        if access & ~static.get(port, NO_NET) == NO_NET
    ]


def analyse(
    rules: Sequence[PolicyRule], quiet: Sequence[QuietObject], chains: Chains
) -> list[Finding]:
    """Every finding: ineffective rights, then one per rule for redundancy (static coverage
    first), then overlaps."""
    by_static = covered_by_static(rules, chains)
    seen = {id(f.rule) for f in by_static}
    same_layer = [f for f in redundant(rules, chains) if id(f.rule) not in seen]
    return [*ineffective(rules), *by_static, *same_layer, *quiet_overlaps(rules, quiet, chains)]


# -- what the policy leaves open ---------------------------------------------------------------

_REMOVAL = AccessFs.REMOVE_DIR | AccessFs.REMOVE_FILE
_CREATION = (
    AccessFs.MAKE_CHAR | AccessFs.MAKE_DIR | AccessFs.MAKE_REG | AccessFs.MAKE_SOCK
    | AccessFs.MAKE_FIFO | AccessFs.MAKE_BLOCK | AccessFs.MAKE_SYM
)  # fmt: skip


class Unrestricted(Struct, frozen=True):
    """Rights and scopes of the target ABI that the policy does not handle: Landlock lets the
    program use them everywhere, whatever the rules say."""

    fs: AccessFs
    net: AccessNet
    scopes: Scope

    def line(self) -> str:
        parts = [
            f"filesystem {', '.join(names(self.fs)) or 'none'}",
            f"tcp {', '.join(names(self.net)) or 'none'}",
            f"scopes {', '.join(names(self.scopes)) or 'none'}",
        ]
        return f"not restricted: {'; '.join(parts)}"

    def messages(self) -> list[str]:
        """Findings: whole families of rights left open (deleting, creating files)."""
        found = []
        for family, what, rights in (
            ("removal", "delete files and directories", _REMOVAL),
            ("creation", "create files, directories, links and special files", _CREATION),
        ):
            if rights & self.fs == rights:
                found.append(
                    f"unrestricted: no {family} right is handled ({', '.join(names(rights))}): "
                    f"the program may {what} anywhere; add them to a [[ruleset]] "
                    '(handled_access_fs = ["abi.all"] handles every right)'
                )
        return found


def unrestricted(
    handled_fs: AccessFs, handled_net: AccessNet, scoped: Scope, abi: int
) -> Unrestricted:
    return Unrestricted(
        fs_all(abi) & ~handled_fs, net_all(abi) & ~handled_net, scope_all(abi) & ~scoped
    )
