""" "Always" answers given under the built-in default policy: kept for the run, and saved only
into a new policy file the user names (the built-in policy itself is never written)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from llsupervise.errors import LLSuperviseError
from llsupervise.policies import DEFAULT_SOURCE, default_text
from llsupervise.supervisor.policyfile.kept import KeptAnswer, kept_from_event

if TYPE_CHECKING:
    from llsupervise.messages import Event


def check_new_file(path: str) -> None:
    """Refuse, before anything starts, a file to save answers in that exists (it would be
    replaced) or whose directory cannot take a new file."""
    if os.path.lexists(path):
        raise LLSuperviseError(f"{path}: already exists; name a new file to save the answers in")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise LLSuperviseError(f"{path}: no such directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise LLSuperviseError(f"{path}: cannot create a file in {directory}")


class KeptAnswers:
    """Collects the answers of a run that a policy file would keep ("always", "deny quietly")."""

    def __init__(self) -> None:
        self.kept: list[KeptAnswer] = []

    def __len__(self) -> int:
        return len(self.kept)

    def on_event(self, event: Event) -> None:
        self.kept.extend(kept_from_event(event))

    def text(self) -> str:
        """The built-in default policy with these answers added to its ``[supervisor]`` table."""
        # The writer loads when answers are saved: most runs never save.
        from llsupervise.supervisor.policyfile.persist import add_answers

        return add_answers(default_text(), self.kept, DEFAULT_SOURCE)

    def save(self, path: str) -> None:
        """Write the default policy plus the answers into ``path``, a new file (never replaced:
        it is created exclusively)."""
        text = self.text()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise LLSuperviseError(f"{path}: already exists; answers not saved") from None
        except OSError as exc:
            raise LLSuperviseError(f"{path}: {exc.strerror}; answers not saved") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
