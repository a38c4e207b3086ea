"""A cheap test for opens the static layer alone allows, answered with CONTINUE.

CONTINUE is always safe: the kernel then judges the child's own open against the static
layer. The test is lexical (absolute paths without ``..`` under a static rule's canonical path),
so a symlink leading out of a static tree is judged by the static layer only and raises no
denial event; everything else goes through a broker. Relative paths are not taken lexically:
programs keep symlinks beside their files, and the differential tests showed one in a static
directory leading into a supervisor-granted one refused where the kernel would allow it. A
serving thread resolves a cwd-relative open instead (``StaticTable.allows_at``): it judges the
canonical path of what the open leads to, found by a walk of the dentry cache alone.

The symlinks directly in ``/`` (``/lib``, ``/bin`` ... on a merged-/usr system) are taken as
their targets: every dynamically linked program opens ``/lib/.../libc.so.6`` and is often
run as ``/bin/...``, and these would otherwise each take the slow path. They are read once,
at start; only a root whose static or supervisor rules let the program replace them could make
one lead elsewhere later, and then the kernel still judges the open by the static layer.

The check itself is compiled (``_fastpath.StaticTable``): the serving threads' receive loop
answers these opens without the interpreter (see engine.loop), and this module asks the same
table, so there is one implementation of it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llsupervise.libc import AT_FDCWD
from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs
from llsupervise.supervisor.engine._fastpath import EXEC_KEY, StaticTable
from llsupervise.supervisor.engine.requests import AT_EMPTY_PATH, FsRequest, open_rights
from llsupervise.supervisor.rules.objects import ObjectTable, fd_path


def root_links() -> dict[bytes, bytes]:
    """The symlinks directly in ``/`` that lead to a directory: their path, and where they
    lead (canonical)."""
    links: dict[bytes, bytes] = {}
    try:
        names = os.listdir(b"/")
    except OSError:
        return links
    for name in names:
        path = b"/" + name
        if os.path.islink(path) and os.path.isdir(path):
            links[path] = os.path.realpath(path)
    return links


def flag_key(flags: int) -> int:
    """The table's key for an open with ``flags``: what the rights it needs depend on."""
    return (flags & os.O_ACCMODE) | (4 if flags & os.O_TRUNC else 0)


def _needs() -> list[int]:
    """The rights each key needs: either a file or a directory may be behind the path, so
    both kinds of read; the last key is an exec's."""
    needs = []
    for key in range(EXEC_KEY):
        flags = (key & os.O_ACCMODE) | (os.O_TRUNC if key & 4 else 0)
        needs.append(int(open_rights(flags, False) | open_rights(flags, True)))
    return [*needs, int(AccessFs.EXECUTE)]


class StaticPrefixes:
    def __init__(
        self, static: Ruleset, table: ObjectTable, links: Mapping[bytes, bytes] | None = None
    ) -> None:
        """``links``: symlinks in ``/`` taken as their targets (default: :func:`root_links`)."""
        dirs: dict[bytes, int] = {}
        for obj, access in static.fs.items():
            if table.is_dir(obj):
                path = os.fsencode(fd_path(table.fd(obj))).rstrip(b"/")
                dirs[path] = dirs.get(path, 0) | int(access)
        links = root_links() if links is None else links
        #: Read by the serving threads' compiled loop without the interpreter lock.
        self.table = StaticTable(list(dirs.items()), list(links.items()), _needs())

    def allows(self, r: FsRequest) -> bool:
        """Whether the static layer alone allows ``r`` (an open or an exec by absolute path)."""
        if r.op == "execute":
            if r.flags & AT_EMPTY_PATH or r.dirfd != AT_FDCWD:
                return False
            return self.table.allows(r.path, EXEC_KEY)
        if r.op != "open" or r.flags & os.O_CREAT:
            return False
        return self.table.allows(r.path, flag_key(r.flags))
