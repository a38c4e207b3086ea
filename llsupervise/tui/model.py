"""Everything the interface shows, as plain data fed by protocol messages (no widgets here).

The same messages arrive whether the supervisor runs in this process or the interface is
attached to one over a socket (see :mod:`llsupervise.supervisor.frontends.hub` for the protocol).
"""

from __future__ import annotations

from collections.abc import Callable

from msgspec import Struct, field

from llsupervise.messages import (
    DenialEvent,
    Event,
    ReloadEvent,
    RulesInfo,
    RuleUseEvent,
    ServerMessage,
    State,
)
from llsupervise.supervisor.events.model import Answer, Denial
from llsupervise.supervisor.frontends.hub import denial_from_json
from llsupervise.tui.feed import Feed
from llsupervise.tui.prompts import PromptQueue

#: Parts of the screen a message can change.
FEED, PROMPT, RULES, STATUS = "feed", "prompt", "rules", "status"


class RuleRow(Struct, frozen=True):
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


class RuleUse(Struct):
    """What the event log tells about a rule: answers that kept it, requests it let
    through (``rule_use`` events), and when it was last answered or used."""

    answers: int = 0
    used: int = 0
    last: float | None = None


def _fs_rules(part: RulesInfo) -> dict[str, tuple[str, ...]]:
    return {r["path"]: tuple(r.get("access", ())) for r in part["fs"] if "path" in r}


def _net_rules(part: RulesInfo) -> dict[int, tuple[str, ...]]:
    return {r["port"]: tuple(r.get("access", ())) for r in part["net"] if "port" in r}


class Rules(Struct):
    static: dict[str, tuple[str, ...]] = field(default_factory=dict)
    static_net: dict[int, tuple[str, ...]] = field(default_factory=dict)
    committed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pending: dict[str, tuple[str, ...]] = field(default_factory=dict)
    committed_net: dict[int, tuple[str, ...]] = field(default_factory=dict)
    quiet: list[str] = field(default_factory=list)
    generation: int = 0
    #: The last ``reload`` event, if any.
    reload: ReloadEvent | None = None
    uses: dict[str, RuleUse] = field(default_factory=dict)
    #: Temporary grants: path -> when it expires (epoch seconds).
    temporary: dict[str, float] = field(default_factory=dict)

    def apply_state(self, state: State) -> None:
        self.static = _fs_rules(state["static"])
        self.static_net = _net_rules(state["static"])
        self.committed = _fs_rules(state["committed"])
        self.pending = _fs_rules(state["pending"])
        self.committed_net = _net_rules(state["committed"])
        self.quiet = list(state["quiet"])
        self.generation = state["generation"]
        if state["reload"] is not None:
            self.reload = state["reload"]

    def note_answer(self, event: DenialEvent) -> None:
        """A denial whose answer kept rules: count it against each of them."""
        for rule in event.get("rules", ()):
            path = rule.get("path") or rule.get("quiet")
            if path is None:
                continue
            use = self.uses.setdefault(path, RuleUse())
            use.answers += 1
            use.last = event["ts"]
            if "seconds" in rule:
                self.temporary[path] = event["ts"] + rule["seconds"]
            else:
                self.temporary.pop(path, None)

    def note_uses(self, event: RuleUseEvent) -> None:
        """A ``rule_use`` event: running totals of requests performed beneath rules."""
        for entry in event["uses"]:
            use = self.uses.setdefault(entry["path"], RuleUse())
            use.used = entry["count"]
            use.last = max(use.last or 0.0, entry["last"])

    def supervisor_rows(self) -> list[RuleRow]:
        paths = sorted(set(self.committed) | set(self.pending))
        return [RuleRow(p, self.committed.get(p, ()), self.pending.get(p, ())) for p in paths]

    @property
    def has_pending(self) -> bool:
        return self.committed != self.pending


class Status(Struct):
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

    def apply_state(self, state: State) -> None:
        self.argv = list(state["argv"])
        self.pid = state["pid"]
        self.running = state["running"]
        self.exit_status = state["exit_status"]
        self.mode = state["mode"]
        self.policy_mode = state["policy_mode"]
        self.default = state["default"]
        self.prompt_timeout = state["prompt_timeout"]
        self.policy = state["policy"]
        kernel = state["kernel"]
        if kernel is not None:
            self.kernel_abi = kernel["abi"]
            self.kernel_lines = list(kernel["lines"])
            self.kernel_missing = list(kernel.get("missing", ()))

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

    def apply(self, message: ServerMessage) -> set[str]:
        """Apply one message; return the parts of the screen it changed."""
        if message["type"] == "hello" or message["type"] == "state":
            self.rules.apply_state(message["state"])
            self.status.apply_state(message["state"])
            return {RULES, STATUS}
        if message["type"] == "event":
            return self._event(message["event"])
        if message["type"] == "question":
            denial = denial_from_json(message["denial"])
            if denial.next_run_only:
                self._execs[message["id"]] = denial
            self.prompts.add(message["id"], denial, message["timeout_in"], self.clock())
            return {PROMPT}
        if message["type"] == "resolved":
            self.prompts.resolve(message["id"])
            return {PROMPT}
        if message["type"] == "error":
            qid = message.get("id")
            if isinstance(qid, int) and self.prompts.get(qid) is not None:
                self.prompts.error = message["message"]
            self.notices.append(message["message"])
            return {PROMPT, STATUS}
        # closed
        self.status.gone = message["reason"]
        self.status.running = False
        self.prompts.clear()
        return {PROMPT, STATUS}

    def _exec_refused(self) -> set[str]:
        """The run ended with 126 while its exec denials were still open: the command itself
        could not be executed. Each becomes a feed row, as a denial with no answer."""
        for denial in self._execs.values():
            event = denial.event(Answer.DENY)
            event["next_run_only"] = True
            self.feed.add(event)
            self.refused_exec = denial
        self._execs.clear()
        return {FEED}

    def _event(self, event: Event) -> set[str]:
        if event["event"] == "denial":
            if event.get("next_run_only"):
                self._execs = {
                    k: d for k, d in self._execs.items()
                    if (d.path, d.pid) != (event["path"], event["pid"])
                }  # fmt: skip
            self.feed.add(event)
            if event.get("rules"):
                self.rules.note_answer(event)
                return {FEED, RULES}
            return {FEED}
        if event["event"] == "reload":
            self.rules.reload = event
            return {RULES, STATUS}
        if event["event"] == "rule_use":
            self.rules.note_uses(event)
            return {RULES}
        if event["event"] == "start":
            self.status.pid = event["pid"]
            self.status.running = True
            return {STATUS}
        if event["event"] == "exit":
            self.status.exit_status = event["status"]
            self.status.running = False
            if event["status"] == 126 and self._execs:
                return {STATUS, *self._exec_refused()}
            return {STATUS}
        return set()
