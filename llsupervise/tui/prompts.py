"""Questions waiting for an answer, and what an answer may say (scope, rights, duration)."""

from __future__ import annotations

from msgspec import Struct, field

from llsupervise.messages import AnswerMessage
from llsupervise.rights import FILE_ACCESS, AccessFs, names, parse_fs
from llsupervise.supervisor.events.model import Answer, Denial

#: Rights that only make sense on a directory: a denial asking one was checked on a directory.
DIRECTORY_ONLY = names(AccessFs(~FILE_ACCESS & sum(AccessFs)))
ALL_FS = names(AccessFs(sum(AccessFs)))
FILE_ONLY = names(FILE_ACCESS)

#: Choices offered for "allow for", in seconds.
DURATIONS = (60.0, 300.0, 900.0, 3600.0, 8 * 3600.0)
DEFAULT_DURATION = 300.0


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ScopeChoice(Struct, frozen=True):
    """Where a rule may go: one of the places the supervisor offered for the denial."""

    path: str
    title: str
    is_dir: bool
    #: The rights of a port rule (a network denial), which has no other scope.
    port_rights: tuple[str, ...] = ()
    #: False for the stand-in shown when the supervisor offered no scope: no scope is sent.
    offered: bool = True

    def rights(self) -> list[str]:
        """Rights that a rule on this object can carry (the kernel refuses the others)."""
        if self.port_rights:
            return list(self.port_rights)
        return ALL_FS if self.is_dir else FILE_ONLY


def is_directory_request(access: tuple[str, ...]) -> bool:
    return any(a in DIRECTORY_ONLY for a in access)


def is_network(denial: Denial) -> bool:
    """A bind/connect denial: its path is ``tcp://host:port``, its rule is on the port."""
    return denial.path.startswith("tcp://")


#: What the first offered scope covers, by the denial's ``scope_kind`` (file and directory:
#: the object itself; changed_directory: where a name is made or removed, which is what the
#: kernel checks for a creation, removal, rename or link).
FIRST_SCOPE = {
    "file": ("only this file", False),
    "directory": ("this dir and all below", True),
    "changed_directory": ("the dir it changes in, all below", True),
}


def scope_choices(denial: Denial) -> list[ScopeChoice]:
    """The scopes the supervisor offered, narrowest first (a port: itself)."""
    if is_network(denial):
        return [ScopeChoice(denial.path, "this port", False, denial.access)]
    if not denial.scopes:
        own_dir = is_directory_request(denial.access)
        return [ScopeChoice(denial.path, "as asked", own_dir, offered=False)]
    first, first_is_dir = FIRST_SCOPE.get(denial.scope_kind, ("this object", True))
    choices = [ScopeChoice(denial.scopes[0], first, first_is_dir)]
    for i, path in enumerate(denial.scopes[1:]):
        title = "its dir and all below" if i == 0 and not first_is_dir else "all below"
        choices.append(ScopeChoice(path, title, True))
    return choices


class Question(Struct):
    """One open question and the answer being prepared for it."""

    id: int
    denial: Denial
    #: Monotonic time (the model's clock) at which the default applies.
    deadline: float
    scopes: list[ScopeChoice] = field(default_factory=list)
    scope_index: int = 0
    rights: list[str] = field(default_factory=list)
    duration: float = DEFAULT_DURATION

    @classmethod
    def create(cls, qid: int, denial: Denial, deadline: float) -> Question:
        return cls(qid, denial, deadline, scope_choices(denial), 0, list(denial.access))

    @property
    def scope(self) -> ScopeChoice:
        return self.scopes[self.scope_index]

    def choose_scope(self, index: int) -> None:
        self.scope_index = max(0, min(index, len(self.scopes) - 1))
        allowed = self.scope.rights()
        kept = [r for r in self.rights if r in allowed]
        # What was asked stays ticked: a rule that does not grant it does not answer it.
        self.rights = [r for r in allowed if r in kept or r in self.denial.access]

    def broader(self) -> None:
        """Next scope up, wrapping around to the object itself."""
        self.choose_scope((self.scope_index + 1) % len(self.scopes))

    def set_rights(self, rights: list[str]) -> None:
        allowed = self.scope.rights()
        self.rights = [r for r in allowed if r in rights]

    def missing_rights(self) -> list[str]:
        return [a for a in self.denial.access if a not in self.rights]

    def answer(self, answer: Answer) -> AnswerMessage:
        """The protocol message for ``answer`` with the scope, rights and duration chosen."""
        message: AnswerMessage = {"type": "answer", "id": self.id, "answer": str(answer)}
        if is_network(self.denial):
            # A port rule has no scope to choose and exactly the rights that were asked.
            if answer == Answer.ALLOW_FOR:
                message["duration"] = self.duration
            return message
        kept = answer in (Answer.ALLOW_FOR, Answer.ALLOW_ALWAYS, Answer.DENY_QUIET)
        if kept and self.scope.offered:
            message["scope"] = self.scope.path
        if answer == Answer.ALLOW_FOR:
            message["duration"] = self.duration
        if answer == Answer.ALLOW_ALWAYS:
            message["rights"] = names(parse_fs(self.rights))
        return message


class PromptQueue:
    """Open questions in the order they were asked; the first one is shown."""

    def __init__(self) -> None:
        self._questions: dict[int, Question] = {}
        #: The last error the supervisor gave for an answer (cleared by the next question).
        self.error: str | None = None

    def __len__(self) -> int:
        return len(self._questions)

    def add(self, qid: int, denial: Denial, timeout_in: float, now: float) -> Question:
        question = Question.create(qid, denial, now + timeout_in)
        self._questions[qid] = question
        return question

    def resolve(self, qid: int) -> Question | None:
        question = self._questions.pop(qid, None)
        if question is not None:
            self.error = None
        return question

    def get(self, qid: int) -> Question | None:
        return self._questions.get(qid)

    @property
    def current(self) -> Question | None:
        return next(iter(self._questions.values()), None)

    @property
    def waiting(self) -> int:
        """Questions behind the one shown."""
        return max(0, len(self._questions) - 1)

    def clear(self) -> None:
        self._questions.clear()
