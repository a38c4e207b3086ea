"""The messages llsupervise's parts exchange, typed once: events (the JSON-lines log, the
hub's broadcasts, the interface's feed) and the ``--listen`` protocol between the hub and its
clients (``attach`` and the interface).

Each is a :class:`~typing.TypedDict`, so what goes on the wire is a plain JSON object and
what a reader may take from it is checked: an event is told by its ``event`` key, a protocol
message by its ``type`` key. Strings that the supervised program chose (paths, names) are
carried as they are and escaped where they are written (``supervisor.events.encode``) or
shown (``display.escape``).
"""

from __future__ import annotations

from typing import Literal, NotRequired, Required, TypedDict

# -- parts of events ---------------------------------------------------------------------


class KeptRule(TypedDict, total=False):
    """A rule an answer kept (``always``/``for a while``) or a quiet object: as persisted."""

    path: str
    access: list[str]
    port: int
    quiet: str
    #: For an ``allow_for`` rule: seconds it lasts.
    seconds: float


class UnboundRule(KeptRule):
    """A rule an answer asked for that was not written, and why (e.g. its label no longer
    leads to the object that was checked)."""

    reason: Required[str]


class SymlinkedPath(TypedDict):
    path: str
    leads_to: str


class KeptBinding(TypedDict):
    path: str
    reason: str


class RuleUse(TypedDict):
    path: str
    count: int
    last: float


# -- events ------------------------------------------------------------------------------


class PolicyEvent(TypedDict):
    """Which policy is in force (first record of a run)."""

    event: Literal["policy"]
    source: str


class StartEvent(TypedDict):
    event: Literal["start"]
    pid: int
    argv: list[str]
    #: Rule paths through symlinks, with where they lead (as ``check`` shows).
    through_symlinks: NotRequired[list[SymlinkedPath]]
    #: Supervisor rules left out: through a symlink the program may have planted.
    redirectable: NotRequired[list[str]]
    #: Supervisor rules that bind when the program creates their path.
    pending_creation: NotRequired[list[str]]


class ExitEvent(TypedDict):
    event: Literal["exit"]
    pid: int
    status: int


class CommitEvent(TypedDict):
    event: Literal["commit"]
    generation: int
    rules: int


class ReloadEvent(TypedDict):
    event: Literal["reload"]
    ok: bool
    generation: int
    error: NotRequired[str]
    static_changed: NotRequired[bool]
    message: NotRequired[str]
    kept_bindings: NotRequired[list[KeptBinding]]


class PersistEvent(TypedDict):
    event: Literal["persist"]
    ok: bool
    rules: list[KeptRule]
    error: NotRequired[str]


class RuleUseEvent(TypedDict):
    event: Literal["rule_use"]
    uses: list[RuleUse]


class CreatedPathEvent(TypedDict):
    """A pending created-path rule met the object the program created (or did not bind)."""

    event: Literal["created_path"]
    path: str
    bound: bool
    generation: NotRequired[int]
    object: NotRequired[str]
    reason: NotRequired[str]
    anchored: NotRequired[str]
    waiting_for: NotRequired[str]


class StallEvent(TypedDict):
    """A request not done by its deadline (a filesystem whose server did not answer): the
    program was told ``EIO`` (or, for an exec, the kernel decided). ``outcome`` "done late"
    tells of one that took effect after all, once the program had been told."""

    event: Literal["stall"]
    ts: float
    pid: int
    syscall: str
    #: Empty when the request was never read (the kernel held the thread reading it).
    path: str
    outcome: str


class OwnLayerEvent(TypedDict):
    """The program restricted itself with a Landlock layer of its own: from then on the
    supervisor performs nothing for it (it would act with its own domain, which knows nothing
    of that layer); the static layer and the program's own decide, without questions."""

    event: Literal["own_layer"]
    ts: float
    pid: int


class DenialEvent(TypedDict):
    """A request the policy did not allow, with what was decided."""

    event: Literal["denial"]
    ts: float
    pid: int
    tid: int
    exe: str
    syscall: str
    path: str
    access: list[str]
    decision: str
    generation: int
    count: int
    #: The control-plane object it reached: never performed.
    protected: NotRequired[str]
    #: An exec: a grant takes effect on the next run.
    next_run_only: NotRequired[bool]
    #: Denied without asking: the program has too many questions open.
    over_limit: NotRequired[bool]
    #: The conditional rule that granted it.
    granted_by: NotRequired[list[str]]
    #: Refused without a question (e.g. MPTCP while TCP is handled): why, and what to do.
    refused: NotRequired[str]
    rules: NotRequired[list[KeptRule]]
    unbound: NotRequired[list[UnboundRule]]
    #: Network requests: what the request names.
    direction: NotRequired[str]
    family: NotRequired[str]
    address: NotRequired[str]
    port: NotRequired[int]


class FoldedEvent(TypedDict):
    """Repeats of one denial within a window, folded into their number."""

    event: Literal["folded"]
    ts: float
    pid: int
    exe: str
    syscall: str
    path: str
    access: list[str]
    decision: str
    folded: int
    count: int


Event = (
    PolicyEvent | StartEvent | ExitEvent | CommitEvent | ReloadEvent | PersistEvent
    | RuleUseEvent | CreatedPathEvent | StallEvent | OwnLayerEvent | DenialEvent | FoldedEvent
)  # fmt: skip

# -- the --listen protocol ---------------------------------------------------------------


class DenialInfo(TypedDict):
    """A question's denial, field for field (``supervisor.events.model.Denial``)."""

    pid: int
    tid: int
    exe: str
    cmdline: str
    syscall: str
    path: str
    access: list[str]
    generation: int
    next_run_only: bool
    scopes: list[str]
    scope_kind: str
    protected: str
    ts: float
    count: int


class RulesInfo(TypedDict):
    fs: list[KeptRule]
    net: list[KeptRule]


class KernelInfo(TypedDict):
    """What this kernel enforces of the policy's handled rights."""

    abi: int
    lines: list[str]
    missing: NotRequired[list[str]]


class State(TypedDict):
    """What the hub knows of the run, sent on connect and on every change."""

    policy: str
    argv: list[str]
    pid: int | None
    running: bool
    exit_status: int | None
    mode: str
    policy_mode: str
    default: str
    prompt_timeout: float
    generation: int
    handled_fs: list[str]
    static: RulesInfo
    committed: RulesInfo
    pending: RulesInfo
    quiet: list[str]
    kernel: KernelInfo | None
    reload: ReloadEvent | None


class Hello(TypedDict):
    type: Literal["hello"]
    version: int
    state: State


class EventMessage(TypedDict):
    type: Literal["event"]
    event: Event


class StateMessage(TypedDict):
    type: Literal["state"]
    state: State


class QuestionMessage(TypedDict):
    type: Literal["question"]
    id: int
    denial: DenialInfo
    timeout_in: float


class ResolvedMessage(TypedDict):
    type: Literal["resolved"]
    id: int
    #: None: the question ended unanswered (the run ended).
    answer: str | None


class ErrorMessage(TypedDict):
    type: Literal["error"]
    message: str
    #: The ``id`` of the client message it answers, as the client sent it.
    id: NotRequired[object]


class ClosedMessage(TypedDict):
    """Not on the wire: the interface's session ended (the hub or the socket went away)."""

    type: Literal["closed"]
    reason: str


#: What a hub sends a client (and the interface's session delivers).
ServerMessage = (
    Hello | EventMessage | StateMessage | QuestionMessage | ResolvedMessage | ErrorMessage
    | ClosedMessage
)  # fmt: skip
#: The ``type`` of each.
SERVER_TYPES = frozenset({"hello", "event", "state", "question", "resolved", "error", "closed"})


class AnswerMessage(TypedDict):
    type: Literal["answer"]
    id: int
    answer: str
    duration: NotRequired[float]
    scope: NotRequired[str | int]
    rights: NotRequired[list[str]]


class ModeMessage(TypedDict):
    type: Literal["mode"]
    mode: str


class TokenMessage(TypedDict):
    """A client's first line: the secret that proves it is outside the sandbox."""

    type: Literal["token"]
    token: str
    terminals: list[str]


#: What a client sends the hub (checked field by field there: a client is not trusted).
ClientMessage = AnswerMessage | ModeMessage | TokenMessage
