"""With whose credentials the supervisor may act for a thread.

A broker performs a request with the supervisor's own credentials. That is the child's own
standing only while the credentials its access checks use (fs uid and gid, supplementary
groups, effective capabilities) are the supervisor's. A child that gave some up (a daemon
that drops root) would otherwise have the supervisor open root-only files for it. Such a
thread gets nothing performed: its requests are left to the kernel, judged with its own
credentials and the static layer. (Network grants need only capabilities, which their
performing threads lower to the child's: see netpool.)
"""

from __future__ import annotations

import os

from llsupervise.supervisor.procfs import read_status

Credentials = tuple[bytes, bytes, bytes, bytes]


def access_credentials(fields: dict[bytes, bytes]) -> Credentials | None:
    """From /proc/TID/status fields: fs uid, fs gid, supplementary groups (sorted), effective
    capabilities; None if any is missing (the thread is gone)."""
    try:
        fsuid = fields[b"Uid"].split()[3]
        fsgid = fields[b"Gid"].split()[3]
        groups = b" ".join(sorted(fields[b"Groups"].split(), key=int))
        return fsuid, fsgid, groups, fields[b"CapEff"]
    except (KeyError, IndexError, ValueError):
        return None


def own_credentials() -> Credentials | None:
    """The supervisor's, which every thread of it keeps. Read it before restricting a thread:
    a restricted thread may not be allowed to read /proc at all."""
    return access_credentials(read_status(os.getpid()))


def acts_as(fields: dict[bytes, bytes], ours: Credentials | None) -> bool:
    """Whether a thread with these status fields accesses files as ``ours`` do."""
    theirs = access_credentials(fields)
    return theirs is not None and theirs == ours
