"""Supervisor-granted opens performed by the serving threads' compiled loop.

Python performs a granted open inline in one shape (``perform.operations._open_checked``): the
object the path leads to, through the dentry cache alone, is held, checked (a regular file or
a directory, on a mount that cannot block, not the control plane), then reopened in the
serving thread, whose Landlock domain is its generation's rules, so the kernel judges it. The
compiled loop (``_fastpath.Receiver``) performs that same shape, for an absolute path or one
relative to the cwd Python lent it, for a thread whose credentials Python found to be ours
(``Readers.vouch``), and hands anything else to Python untouched. This module gives it what
it checks against and takes back what it did:

- the control plane's entries and objects (``perform.guard``), and those protected later;
- the mounts found not to block (``perform.blocking``: a unique mount id never changes kind);
- the opens it performed, for the rule-use counts (``rules.uses``).
"""

from __future__ import annotations

import collections

from llsupervise.supervisor.engine._fastpath import Grants, inline_mount
from llsupervise.supervisor.engine.requests import SELF_REFERENTIAL
from llsupervise.supervisor.perform.blocking import MOUNTS
from llsupervise.supervisor.perform.guard import Guard
from llsupervise.supervisor.perform.operations import NOT_CHECKED, proc_fd

_following_mounts = False


def compiled_grants(guard: Guard | None) -> Grants | None:
    """What a loop's serving threads need to perform granted opens; None where they cannot
    (no /proc/self/fd to reopen through)."""
    global _following_mounts
    fd = proc_fd()
    if fd is None:
        return None
    if not _following_mounts:
        MOUNTS.follow_inline(inline_mount)
        _following_mounts = True
    guard = guard if guard is not None else Guard()
    grants = Grants(
        fd,
        [(entry.dirfd, entry.name, entry.secret) for entry in guard.entries],
        [(obj.dev, obj.ino, secret) for obj, (_, secret) in guard.objects.items()],
        NOT_CHECKED,
        list(SELF_REFERENTIAL),
    )
    guard.followers.append(grants.protect)
    return grants


def take_performed(grants: Grants | None, into: collections.deque[tuple[bytes, float]]) -> None:
    """Move the opens ``grants``' loop performed into ``into`` (see rules.uses)."""
    if grants is not None:
        into.extend(grants.drain())
