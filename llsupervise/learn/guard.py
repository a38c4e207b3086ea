"""Where ``learn`` must not write its policy: anywhere the learned rules let the program change
the file (the program could then rewrite its own policy for the next run). Pure."""

from __future__ import annotations

import posixpath

from llsupervise.learn.paths import is_beneath
from llsupervise.learn.synthesis import LearnedPolicy, LearnedRule
from llsupervise.rights import AccessFs

#: Rights on the file itself (or a directory above it) that change its content.
CHANGE_FILE = AccessFs.WRITE_FILE | AccessFs.TRUNCATE
#: Rights on its directory (or above) that replace it: remove it and create another, or rename
#: one over it.
REPLACE_FILE = AccessFs.REMOVE_FILE | AccessFs.MAKE_REG | AccessFs.REFER | AccessFs.MAKE_SYM


def writers(policy: LearnedPolicy, path: str) -> list[LearnedRule]:
    """The learned rules that would let the program change or replace the file ``path``
    (absolute, symlinks resolved)."""
    directory = posixpath.dirname(path)
    found = []
    for rule in policy.rules:
        for parent in rule.paths:
            if (is_beneath(path, parent) and rule.access & CHANGE_FILE) or (
                is_beneath(directory, parent) and rule.access & REPLACE_FILE
            ):
                found.append(rule)
                break
    return found
