"""Where a rule from an answer may go: only places where a rule makes the same request work,
each held open from the checked object (never found again by path).

- A creation, removal, rename, link or mknod is checked by Landlock on the directory where
  the name changes: that directory and its ancestors are offered, never the name itself.
- An open, truncate, ioctl or execute is checked on the object: the object itself, the
  directory holding it, and that directory's ancestors.

The narrowest scope comes first and is the default. Ancestors are reached with
``openat(fd, "..")``, which follows the inode, so renaming or replacing a directory by a
symlink between the question and the answer changes nothing about what a scope binds to.
"""

from __future__ import annotations

import os
import stat

from msgspec import Struct

from llsupervise.policy.model import ObjectId
from llsupervise.rights import FILE_ACCESS, AccessFs
from llsupervise.supervisor.engine.denials import CheckedObject
from llsupervise.supervisor.rules.binding import leads_to, parent_of
from llsupervise.supervisor.rules.objects import fd_path, object_id

#: Scopes offered at most, narrowest first: each holds a descriptor while its question is
#: open, and a program can make a path as deep as it likes.
MAX_SCOPES = 8
#: What the first offered scope is (every later one is a directory above it).
FILE, DIRECTORY, CHANGED_DIRECTORY = "file", "directory", "changed_directory"


class Scope(Struct):
    """One offered place for a rule: an ``O_PATH`` fd owned by the question, and its label."""

    fd: int
    obj: ObjectId
    label: str
    is_dir: bool

    def rights(self, access: AccessFs) -> AccessFs:
        """``access`` as a rule here carries it: directory-only rights do not apply to a file."""
        return access if self.is_dir else access & FILE_ACCESS

    def label_holds(self) -> bool:
        """Whether the label still leads to this object without following a symlink: only
        then may it be written where it is resolved again (the policy file)."""
        return leads_to(self.label, self.obj)


def _scope(fd: int) -> Scope:
    st = os.fstat(fd)
    return Scope(fd, object_id(st), fd_path(fd), stat.S_ISDIR(st.st_mode))


def offer(checked: CheckedObject) -> tuple[str, list[Scope]]:
    """The kind of the first scope and every scope offered for ``checked``, narrowest first.
    The fds are duplicates or new: the caller closes them (:func:`close`)."""
    scopes: list[Scope] = []
    try:
        if checked.in_directory:
            kind, start = CHANGED_DIRECTORY, os.dup(checked.fd)
        elif checked.is_dir:
            kind, start = DIRECTORY, os.dup(checked.fd)
        else:
            kind = FILE
            scopes.append(_scope(os.dup(checked.fd)))
            if checked.directory is None:
                return kind, scopes
            start = os.dup(checked.directory)
        current: int | None = start
        while current is not None:
            scopes.append(_scope(current))
            if len(scopes) == MAX_SCOPES:
                break  # (``current`` is held by the scope just added)
            current = parent_of(current)
    except OSError:
        pass  # a directory above went away: offer what was reached
    return kind, scopes


def close(scopes: list[Scope]) -> None:
    for s in scopes:
        os.close(s.fd)
