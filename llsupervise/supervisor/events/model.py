"""Events the supervisor emits (denials, reloads) and the JSON-lines log they go to."""

from __future__ import annotations

import enum
import json
import os
import time
from typing import TYPE_CHECKING, TextIO

from msgspec import Struct, field

from llsupervise.rights import AccessFs
from llsupervise.supervisor.events.encode import escaped
from llsupervise.supervisor.events.fold import DenialFolder

if TYPE_CHECKING:
    from llsupervise.messages import DenialEvent, Event, OwnLayerEvent, StallEvent, StartEvent


class Answer(enum.StrEnum):
    ALLOW_ONCE = "allow_once"
    ALLOW_FOR = "allow_for"
    ALLOW_ALWAYS = "allow_always"
    DENY = "deny"
    DENY_QUIET = "deny_quiet"
    TIMEOUT_DENY = "timeout_deny"
    PERMISSIVE = "permissive"
    #: Granted without asking by a conditional rule of the policy (not a person's answer).
    CONDITIONAL = "conditional"

    @property
    def allows(self) -> bool:
        return self in (
            Answer.ALLOW_ONCE, Answer.ALLOW_FOR, Answer.ALLOW_ALWAYS, Answer.PERMISSIVE,
            Answer.CONDITIONAL,
        )  # fmt: skip


class Decision(Struct, frozen=True):
    answer: Answer
    #: Seconds, for ALLOW_FOR.
    duration: float | None = None
    #: Where an ALLOW_ALWAYS / ALLOW_FOR rule (or a quiet object) goes: one of the denial's
    #: offered ``scopes``, by label or index. Default, or not offered: the narrowest, the first.
    scope: str | int | None = None
    #: Rights of that rule (default: those that were asked). Only widens: what was asked is
    #: always included.
    access: AccessFs | None = None


class Denial(Struct, frozen=True):
    """A request the kernel refused under the current policy, before anyone answered it."""

    pid: int
    tid: int
    exe: str
    cmdline: str
    syscall: str
    #: Absolute display path of the first object the request needed rights on.
    path: str
    access: tuple[str, ...]
    generation: int
    #: True for exec: a grant only takes effect on the next run.
    next_run_only: bool = False
    #: Where a rule may go (labels, narrowest first): only places where a rule makes this
    #: request work, each bound to an object held since the check (see questions.scopes).
    scopes: tuple[str, ...] = ()
    #: What ``scopes[0]`` is: "file" or "directory" (the object itself), or
    #: "changed_directory" (where a name is made or removed); the others are directories above.
    scope_kind: str = ""
    #: Non-empty when the request reaches llsupervise's control plane (e.g. "llsupervise's
    #: policy file"): it is never performed, and no "allow" is offered.
    protected: str = ""
    ts: float = field(default_factory=time.time)
    count: int = 1

    def event(self, decision: Answer) -> DenialEvent:
        event: DenialEvent = {
            "event": "denial",
            "ts": self.ts,
            "pid": self.pid,
            "tid": self.tid,
            "exe": self.exe,
            "syscall": self.syscall,
            "path": self.path,
            "access": list(self.access),
            "decision": str(decision),
            "generation": self.generation,
            "count": self.count,
        }
        if self.protected:
            event["protected"] = self.protected
        return event


class EventLog:
    """Appends one JSON object per line; flushed per event so a crash loses nothing.

    Strings are written escaped (see :mod:`.encode`): a name that is not UTF-8 is a record
    like any other, never an error. Repeated identical denials are folded into one record
    with their number (see :mod:`.fold`)."""

    def __init__(
        self, stream: TextIO | None, path: str | None = None, folder: DenialFolder | None = None
    ) -> None:
        self._stream = stream
        #: The file it appends to (part of the control plane), when opened by path.
        self.path = path
        self._folder = folder or DenialFolder()

    @classmethod
    def open(cls, path: str | None) -> EventLog:
        if path is None:
            return cls(None)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        # The file opened, by its own name (``/dev/stderr`` names whatever fd 2 is later).
        opened = os.readlink(f"/proc/self/fd/{fd}")
        return cls(os.fdopen(fd, "a", encoding="utf-8"), opened if opened[:1] == "/" else path)

    def write(self, event: Event) -> None:
        if self._stream is not None:
            self._write(self._folder.take(event))

    def _write(self, records: list[Event]) -> None:
        if self._stream is not None and records:
            self._stream.write(
                "".join(json.dumps(escaped(r), ensure_ascii=False) + "\n" for r in records)
            )
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._write(self._folder.flush())
            self._stream.close()


def symlink_notes(start: StartEvent) -> list[str]:
    """What a ``start`` event says a person must know of rule paths through symlinks: the
    supervisor rules left out (not escaped). Every path through a symlink is in the event
    (``through_symlinks``) and in ``check``; most are harmless (``/lib`` on merged-usr)."""
    return [
        f"supervisor rule on {path} left out: it passes through a symlink in a directory the "
        "program may change (an earlier run may have planted it); name the real path"
        for path in start.get("redirectable", ())
    ]


def own_layer_note(event: OwnLayerEvent) -> str:
    """What a person must hear of an ``own_layer`` event (not escaped)."""
    return (f"the program (pid {event['pid']}) restricted itself with a Landlock layer of its "
            "own: from now on the supervisor grants nothing more and asks nothing; the static "
            "rules and the program's own decide")  # fmt: skip


def stall_note(stall: StallEvent) -> str:
    """What a person must hear of a ``stall`` event (not escaped): the program was told EIO
    for a request no filesystem answered in time, and whether it was done after all."""
    what = f"{stall['syscall']} {stall['path']}" if stall["path"] else stall["syscall"]
    if stall["outcome"] == "done late":
        return (f"{what} (pid {stall['pid']}) was done after all, after its filesystem's "
                "deadline: the program was told EIO, but the change is made")  # fmt: skip
    told = "EIO" if stall["outcome"] == "refused" else "nothing (the kernel decided)"
    return (f"{what} (pid {stall['pid']}) got no answer from its filesystem in time: the "
            f"program was told {told}")  # fmt: skip
