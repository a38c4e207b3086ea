"""``run --headless --explain``: each decision as one readable line on stderr, and a summary.

What the policy's static rules allow is judged by the kernel alone and never reported; only
what they do not allow reaches the supervisor, and so these lines."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TextIO

from llsupervise.display import escape
from llsupervise.policy.document import PolicyDocument
from llsupervise.rights import LATEST_ABI, AccessFs, fs_read_execute, fs_read_write, names

_ALLOWS = {"allow_once", "allow_for", "allow_always", "permissive", "conditional"}


def _home(path: str) -> str:
    home = os.environ.get("HOME", "")
    if home and home != "/" and (path == home or path.startswith(home + "/")):
        return "~" + path[len(home) :]
    return path


def why(event: Mapping[str, Any], *, asking: bool) -> str:
    """The reason for a denial event's decision, in words. ``asking``: someone could answer."""
    decision = str(event.get("decision", ""))
    person = "answered" if asking else "nobody to ask"
    if decision == "deny_quiet":
        if event.get("rules"):
            return "denied quietly: answered, and not asked again"
        return "denied quietly: the policy lists it as a secret (supervisor.quiet)"
    if decision == "deny":
        return (
            "denied: answered"
            if asking
            else ("denied: no rule allows it and nobody was asked (supervisor.default)")
        )
    if decision == "timeout_deny":
        return "denied: no answer in time"
    if decision == "allow_once":
        return (
            f"allowed once: {person}"
            if asking
            else ("allowed once: nobody was asked (supervisor.default)")
        )
    if decision == "allow_for":
        return "allowed for a while: answered"
    if decision == "allow_always":
        return "allowed always: answered"
    if decision == "permissive":
        return "allowed: permissive mode records it"
    if decision == "conditional":
        return "allowed: a conditional rule of the policy (exe or cgroup)"
    return escape(decision)


def line(event: Mapping[str, Any], *, asking: bool) -> str:
    """One denial event as ``ALLOWED|DENIED  ACCESS  PATH  by PROGRAM (pid N): WHY``."""
    verdict = "ALLOWED" if event.get("decision") in _ALLOWS else "DENIED "
    access = ",".join(str(a) for a in event.get("access", ())) or "?"
    text = (
        f"{verdict} {escape(access)} {escape(_home(str(event.get('path', '?'))))}"
        f"  by {escape(os.path.basename(str(event.get('exe', '?'))))} (pid {event.get('pid')},"
        f" {escape(str(event.get('syscall', '?')))}): {why(event, asking=asking)}"
    )
    count = event.get("count", 1)
    if isinstance(count, int) and count > 1:
        text += f" [{count} requests]"
    if event.get("next_run_only"):
        text += "; an exec refused by the kernel: a grant takes effect on the next run"
    return text


def _rights(access: AccessFs, abi: int) -> str:
    if access == fs_read_execute(abi):
        return "read and execute"
    if access == fs_read_write(abi):
        return "read and write"
    return "+".join(names(access))


def allowed_without_asking(document: PolicyDocument, *, shown: int = 6) -> str:
    """What the static rules allow (paths this system has), in one line: the decision for
    everything that never reaches the supervisor."""
    parts = []
    for entry in document.path_beneath:
        paths = [p for p in entry.paths if os.path.lexists(p)]
        if not paths:
            continue
        listed = ", ".join(escape(_home(p)) for p in paths[:shown])
        if len(paths) > shown:
            listed += f" and {len(paths) - shown} more"
        parts.append(f"{_rights(entry.access, document.abi or LATEST_ABI)} {listed}")
    for net in document.net_port:
        ports = ", ".join(map(str, net.ports))
        parts.append(f"{'+'.join(names(net.access))} tcp port(s) {ports}")
    return "; ".join(parts) or "nothing"


class Explainer:
    """Prints each decision as it comes, then a summary; counts allowed and denied."""

    def __init__(self, out: TextIO, document: PolicyDocument, *, asking: bool = False) -> None:
        self.out = out
        self.document = document
        self.asking = asking
        self.allowed = 0
        self.denied = 0

    def _say(self, text: str) -> None:
        print(f"llsupervise: {text}", file=self.out, flush=True)

    def on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("event") == "start":
            self._say(f"ALLOWED without asking (static rules): "
                      f"{allowed_without_asking(self.document)}")  # fmt: skip
            self._say(
                "anything else is asked about (supervisor.mode), or denied when nobody "
                "can answer (supervisor.default), or denied quietly (supervisor.quiet)"
            )
            return
        if event.get("event") != "denial":
            return
        if event.get("decision") in _ALLOWS:
            self.allowed += 1
        else:
            self.denied += 1
        self._say(line(event, asking=self.asking))

    def summary(self, status: int) -> str:
        return (
            f"llsupervise: exit status {status}; {self.allowed} request(s) allowed and "
            f"{self.denied} denied beyond the static rules (what those allow, the kernel "
            "allows without a word)"
        )
