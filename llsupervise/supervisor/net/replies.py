"""How a network request ends: the reply to the child, and a count of how requests went."""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Protocol

from llsupervise.policy.model import Ruleset
from llsupervise.seccomp import Listener, Notification, SeccompError


class Answerable(Protocol):
    """A request held until it is answered; ``close`` releases what it holds."""

    @property
    def notification(self) -> Notification: ...

    def close(self) -> None: ...


class Replies:
    """Replies to trapped network calls, safe from any thread; ``stats`` counts them:
    "kernel" (CONTINUE), "performed", "denied", "answered", "refused"."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self._lock = threading.Lock()
        self.stats: collections.Counter[str] = collections.Counter()

    def count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def kernel_decides(self, n: Notification) -> None:
        """CONTINUE: the kernel performs the call in the child's context (the static layer)."""
        self.count("kernel")
        self.listener.send_continue(n.id)

    def error(self, n: Notification, err: int) -> None:
        """Fail ``n`` with ``err``; a child that is gone has nobody waiting."""
        with contextlib.suppress(SeccompError):
            self.listener.send_error(n.id, err)

    def reply(self, pending: Answerable, err: int, value: int = 0) -> None:
        """Return ``value`` or -err to the child, and release the request."""
        try:
            if err:
                self.listener.send_error(pending.notification.id, err)
            else:
                self.listener.send_value(pending.notification.id, value)
        except SeccompError:
            pass  # the child is gone (NotificationGone) or so is the listener: nobody waits
        finally:
            pending.close()


class RulesInForce:
    """Static ∪ committed supervisor rules and their generation: replaced whole on a commit,
    read by any thread."""

    def __init__(self, rules: Ruleset, generation: int) -> None:
        self.current = (rules, generation)

    @property
    def rules(self) -> Ruleset:
        return self.current[0]

    @property
    def generation(self) -> int:
        return self.current[1]
