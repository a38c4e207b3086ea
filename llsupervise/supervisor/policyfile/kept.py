"""An answer a policy file keeps ("always", "deny quietly"), as a denial event says it.

Apart from the writer (:mod:`.persist`): every run listens for these, and most never write.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from msgspec import Struct

if TYPE_CHECKING:
    from llsupervise.messages import Event, KeptRule



class KeptAnswer(Struct, frozen=True):
    """One answer to write: a rule on ``path`` (``access`` names), a quiet path (``access``
    None), or, with ``port`` given, a ``net_port`` rule."""

    path: str
    access: tuple[str, ...] | None = None
    port: int | None = None
    #: Which answer to which request, for the comment above the entry (one line, any text).
    reason: str = ""
    #: When it was answered (epoch seconds; None: when written).
    when: float | None = None

    # Equal and hashed by what is written as a rule: reason and time only annotate it.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeptAnswer):
            return NotImplemented
        return (self.path, self.access, self.port) == (other.path, other.access, other.port)

    def __hash__(self) -> int:
        return hash((self.path, self.access, self.port))

    def event(self) -> KeptRule:
        if self.port is not None:
            return {"port": self.port, "access": list(self.access or ())}
        if self.access is None:
            return {"quiet": self.path}
        return {"path": self.path, "access": list(self.access)}

    @property
    def kind(self) -> str:
        """The ``[[supervisor.KIND]]`` array it is written to."""
        if self.port is not None:
            return "net_port"
        return "quiet" if self.access is None else "path_beneath"

    @property
    def value(self) -> str | int:
        """What goes into the entry's ``parent`` (literal path) or ``port`` list."""
        return self.port if self.port is not None else _literal(self.path)


def quoted(text: object) -> str:
    """Text from the supervised program, as one printable ASCII line."""
    return json.dumps(str(text), ensure_ascii=True)


def kept_from_event(event: Event) -> list[KeptAnswer]:
    """What a denial event says to persist: its kept rules, temporary grants excepted."""
    if event["event"] != "denial":
        return []
    answer = event["decision"].replace("_", " ")
    request = f"{event['syscall']}: {', '.join(event['access'])}"
    reason = f"{quoted(answer)} to {quoted(event['exe'])} ({request} on {quoted(event['path'])})"
    when = event["ts"]
    kept = []
    for rule in event.get("rules", ()):
        if "quiet" in rule:
            kept.append(KeptAnswer(rule["quiet"], reason=reason, when=when))
        elif "seconds" in rule:
            continue
        elif "port" in rule:
            access = tuple(rule.get("access", ()))
            kept.append(KeptAnswer("", access, rule["port"], reason=reason, when=when))
        elif "path" in rule:
            access = tuple(rule.get("access", ()))
            kept.append(KeptAnswer(rule["path"], access, reason=reason, when=when))
    return kept


def _literal(path: str) -> str:
    """A path as a policy string: ``$`` would start a variable reference."""
    return path.replace("$", "$$")
