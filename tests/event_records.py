"""Event records as the supervisor writes them, for tests of what reads them."""

from __future__ import annotations

from llsupervise.messages import DenialEvent, KeptRule, UnboundRule


def denial_event(
    path: str, *, exe: str = "/usr/bin/cat", access: tuple[str, ...] = ("read_file",),
    ts: float = 0.0, count: int = 1, decision: str = "deny", syscall: str = "openat",
    rules: list[KeptRule] | None = None, unbound: list[UnboundRule] | None = None,
) -> DenialEvent:  # fmt: skip
    event: DenialEvent = {
        "event": "denial", "ts": ts, "pid": 7, "tid": 7, "exe": exe, "syscall": syscall,
        "path": path, "access": list(access), "decision": decision, "generation": 1,
        "count": count,
    }  # fmt: skip
    if rules is not None:
        event["rules"] = rules
    if unbound is not None:
        event["unbound"] = unbound
    return event
