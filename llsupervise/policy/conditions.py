"""Conditional supervisor rules: grants that apply only to some requesters.

A ``[[supervisor.path_beneath]]`` entry with ``exe`` and/or ``cgroup`` grants its rights only to
requests from one of those executables and/or from a process in that cgroup v2 subtree (both
must match when both are given). Such rules are never part of the shared supervisor ruleset: a
denied request whose requester matches is performed by a one-shot broker restricted with the
matching rules added, so the kernel still judges it.

Pure: the requester's executable and cgroup are read by the supervisor and passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from msgspec import Struct

from llsupervise.policy.model import ObjectId
from llsupervise.rights import NO_FS, AccessFs


class Condition(Struct, frozen=True):
    #: Resolved executable paths; empty: any executable.
    exe: frozenset[str] = frozenset()
    #: Normalised cgroup v2 path (``/a/b``); None: any cgroup.
    cgroup: str | None = None


class Requester(Struct, frozen=True):
    """Who made a request: its executable (resolved) and cgroup v2 path, when known."""

    exe: str | None
    cgroup: str | None


class ConditionalRule(Struct, frozen=True):
    obj: ObjectId
    access: AccessFs
    condition: Condition
    label: str


def cgroup_v2_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path in the text of /proc/PID/cgroup (its ``0::/path`` line)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def in_cgroup(subtree: str, cgroup: str) -> bool:
    """Whether ``cgroup`` is ``subtree`` or beneath it, comparing whole path components."""
    want = [part for part in subtree.split("/") if part]
    have = [part for part in cgroup.split("/") if part]
    return have[: len(want)] == want


def matches(condition: Condition, requester: Requester) -> bool:
    if condition.exe and requester.exe not in condition.exe:
        return False
    if condition.cgroup is not None:
        return requester.cgroup is not None and in_cgroup(condition.cgroup, requester.cgroup)
    return True


def matching(rules: Iterable[ConditionalRule], requester: Requester) -> list[ConditionalRule]:
    return [rule for rule in rules if matches(rule.condition, requester)]


def covers(
    rules: Iterable[ConditionalRule],
    base: AccessFs,
    chain: Sequence[ObjectId],
    needed: AccessFs,
) -> bool:
    """Whether ``base`` (what the shared rules grant on the object) plus ``rules`` on its
    ``chain`` (the object, then its ancestors) grant every right in ``needed``."""
    granted = base
    on_chain = set(chain)
    for rule in rules:
        if rule.obj in on_chain:
            granted |= rule.access
    return needed & ~granted == NO_FS
