"""Everything the interface shows, as plain data fed by protocol messages (no widgets here).

The same messages arrive whether the supervisor runs in this process or the interface is
attached to one over a socket (see :mod:`llsupervise.supervisor.frontends.hub` for the protocol).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llsupervise.supervisor.events.model import Answer, Denial
from llsupervise.supervisor.frontends.hub import denial_from_json
from llsupervise.tui.feed import Feed
from llsupervise.tui.prompts import PromptQueue

#: Parts of the screen a message can change.
FEED, PROMPT, RULES, STATUS = "feed", "prompt", "rules", "status"


@dataclass(frozen=True)
class RuleRow:
    path: str
    #: Rights committed (what the running program gets now) and pending (after the next commit).
    committed: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def status(self) -> str:
        if self.committed == self.pending:
            return "committed"
        if not self.committed:
            return "pending add"
        if not self.pending:
            return "pending removal"
        return "pending change"


@dataclass
class RuleUse:
    """What the event log tells about a rule: answers that kept it, requests it let
    through (``rule_use`` events), and when it was last answered or used."""

    answers: int = 0
    used: int = 0
    last: float | None = None


def _fs_rules(part: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(part, Mapping):
        return {}
    return {str(r["path"]): tuple(r["access"]) for r in part.get("fs", ())}


def _net_rules(part: Any) -> dict[int, tuple[str, ...]]:
    if not isinstance(part, Mapping):
        return {}
    return {int(r["port"]): tuple(r["access"]) for r in part.get("net", ())}


@dataclass
class Rules:
    static: dict[str, tuple[str, ...]] = field(default_factory=dict)
    static_net: dict[int, tuple[str, ...]] = field(default_factory=dict)
    committed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pending: dict[str, tuple[str, ...]] = field(default_factory=dict)
    committed_net: dict[int, tuple[str, ...]] = field(default_factory=dict)
    quiet: list[str] = field(default_factory=list)
    generation: int = 0
    #: The last ``reload`` event, if any.
    reload: Mapping[str, Any] | None = None
    uses: dict[str, RuleUse] = field(default_factory=dict)
    #: Temporary grants: path -> when it expires (epoch seconds).
    temporary: dict[str, float] = field(default_factory=dict)

    def apply_state(self, state: Mapping[str, Any]) -> None:
        self.static = _fs_rules(state.get("static"))
        self.static_net = _net_rules(state.get("static"))
        self.committed = _fs_rules(state.get("committed"))
        self.pending = _fs_rules(state.get("pending"))
        self.committed_net = _net_rules(state.get("committed"))
        self.quiet = [str(q) for q in state.get("quiet", ())]
        self.generation = int(state.get("generation", 0))
        if state.get("reload") is not None:
            self.reload = state["reload"]

    def note_answer(self, event: Mapping[str, Any]) -> None:
        """A denial whose answer kept rules: count it against each of them."""
        for rule in event.get("rules", ()):
            path = rule.get("path") or rule.get("quiet")
            if path is None:
                continue
            use = self.uses.setdefault(str(path), RuleUse())
            use.answers += 1
            use.last = float(event.get("ts", 0.0))
            if "seconds" in rule:
                self.temporary[str(path)] = float(event.get("ts", 0.0)) + float(rule["seconds"])
            else:
                self.temporary.pop(str(path), None)

    def note_uses(self, event: Mapping[str, Any]) -> None:
        """A ``rule_use`` event: running totals of requests performed beneath rules."""
        for entry in event.get("uses", ()):
            use = self.uses.setdefault(str(entry["path"]), RuleUse())
            use.used = int(entry["count"])
            use.last = max(use.last or 0.0, float(entry["last"]))

    def supervisor_rows(self) -> list[RuleRow]:
        paths = sorted(set(self.committed) | set(self.pending))
        return [RuleRow(p, self.committed.get(p, ()), self.pending.get(p, ())) for p in paths]

    @property
    def has_pending(self) -> bool:
        return self.committed != self.pending


@dataclass
class Status:
    argv: list[str] = field(default_factory=list)
    pid: int | None = None
    running: bool = False
    exit_status: int | None = None
    mode: str = ""
    policy_mode: str = ""
    default: str = "deny"
    prompt_timeout: float = 30.0
    policy: str = ""
    kernel_abi: int = 0
    kernel_lines: list[str] = field(default_factory=list)
    kernel_missing: list[str] = field(default_factory=list)
    #: Set when the supervisor went away (attach) or failed.
    gone: str | None = None

    def apply_state(self, state: Mapping[str, Any]) -> None:
        self.argv = [str(a) for a in state.get("argv", ())]
        self.pid = state.get("pid")
        self.running = bool(state.get("running"))
        self.exit_status = state.get("exit_status")
        self.mode = str(state.get("mode", ""))
        self.policy_mode = str(state.get("policy_mode", self.mode))
        self.default = str(state.get("default", "deny"))
        self.prompt_timeout = float(state.get("prompt_timeout", 30.0))
        self.policy = str(state.get("policy", ""))
        kernel = state.get("kernel") or {}
        self.kernel_abi = int(kernel.get("abi", 0))
        self.kernel_lines = [str(line) for line in kernel.get("lines", ())]
        self.kernel_missing = [str(line) for line in kernel.get("missing", ())]

    @property
    def state(self) -> str:
        if self.gone is not None:
            return self.gone
        if self.exit_status is not None:
            return f"exited with status {self.exit_status}"
        if self.running:
            return "running"
        return "starting"


class SessionModel:
    """Folds protocol messages into feed, questions, rules and status."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.feed = Feed()
        self.prompts = PromptQueue()
        self.rules = Rules()
        self.status = Status()
        #: Recent errors and notices for the user (newest last).
        self.notices: list[str] = []
        #: Exec denials asked about and not yet in the feed: the run may end (the command
        #: itself could not be executed, status 126) before anyone answers them.
        self._execs: dict[int, Denial] = {}
        #: The command itself could not be executed for want of these rights on this path.
        self.refused_exec: Denial | None = None

    def apply(self, message: Mapping[str, Any]) -> set[str]:
        """Apply one message; return the parts of the screen it changed."""
        kind = message.get("type")
        if kind in ("hello", "state"):
            state = message.get("state") or {}
            self.rules.apply_state(state)
            self.status.apply_state(state)
            return {RULES, STATUS}
        if kind == "event":
            return self._event(message.get("event") or {})
        if kind == "question":
            denial = denial_from_json(message.get("denial") or {})
            if denial.next_run_only:
                self._execs[int(message["id"])] = denial
            timeout_in = float(message.get("timeout_in", self.status.prompt_timeout))
            self.prompts.add(int(message["id"]), denial, timeout_in, self.clock())
            return {PROMPT}
        if kind == "resolved":
            self.prompts.resolve(int(message["id"]))
            return {PROMPT}
        if kind == "error":
            text = str(message.get("message", ""))
            if "id" in message and self.prompts.get(message["id"]) is not None:
                self.prompts.error = text
            self.notices.append(text)
            return {PROMPT, STATUS}
        if kind == "closed":
            self.status.gone = str(message.get("reason", "the supervisor went away"))
            self.status.running = False
            self.prompts.clear()
            return {PROMPT, STATUS}
        return set()

    def _exec_refused(self) -> set[str]:
        """The run ended with 126 while its exec denials were still open: the command itself
        could not be executed. Each becomes a feed row, as a denial with no answer."""
        for denial in self._execs.values():
            self.feed.add(denial.event(Answer.DENY) | {"next_run_only": True})
            self.refused_exec = denial
        self._execs.clear()
        return {FEED}

    def _event(self, event: Mapping[str, Any]) -> set[str]:
        kind = event.get("event")
        if kind == "denial":
            if event.get("next_run_only"):
                self._execs = {
                    k: d for k, d in self._execs.items()
                    if (d.path, d.pid) != (event.get("path"), event.get("pid"))
                }  # fmt: skip
            self.feed.add(event)
            if event.get("rules"):
                self.rules.note_answer(event)
                return {FEED, RULES}
            return {FEED}
        if kind == "reload":
            self.rules.reload = event
            return {RULES, STATUS}
        if kind == "rule_use":
            self.rules.note_uses(event)
            return {RULES}
        if kind in ("start", "exit"):
            if kind == "start":
                self.status.pid = event.get("pid")
                self.status.running = True
            else:
                self.status.exit_status = event.get("status")
                self.status.running = False
                if event.get("status") == 126 and self._execs:
                    return {STATUS, *self._exec_refused()}
            return {STATUS}
        return set()
