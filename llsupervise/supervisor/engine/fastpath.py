"""A cheap test for opens the static layer alone allows, answered with CONTINUE.

CONTINUE is always safe: the kernel then judges the child's own open against the static
layer. The test is lexical (absolute paths without ``..`` under a static rule's canonical path),
so a symlink leading out of a static tree is judged by the static layer only and raises no
denial event; everything else goes through a broker. Relative paths are not taken lexically:
programs keep symlinks beside their files, and the differential tests showed one in a static
directory leading into a supervisor-granted one refused where the kernel would allow it. A
serving thread resolves a cwd-relative open instead (see engine.handler) and asks
:meth:`StaticPrefixes.allows_open_of` about the canonical path of what it leads to.

The symlinks directly in ``/`` (``/lib``, ``/bin`` ... on a merged-/usr system) are taken as
their targets: every dynamically linked program opens ``/lib/.../libc.so.6`` and is often
run as ``/bin/...``, and these would otherwise each take the slow path. They are read once,
at start; only a root whose static or supervisor rules let the program replace them could make
one lead elsewhere later, and then the kernel still judges the open by the static layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from llsupervise.libc import AT_FDCWD
from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs
from llsupervise.supervisor.engine.requests import AT_EMPTY_PATH, FsRequest, open_rights
from llsupervise.supervisor.rules.objects import ObjectTable, fd_path

#: The open flags ``open_rights`` looks at.
_RELEVANT_FLAGS = os.O_ACCMODE | os.O_TRUNC
_KNOWN_MAX = 4096
#: Stands for "exec" among the open flags in the cache key (not an open flag).
_EXECUTE = -1
_EXECUTE_RIGHT = int(AccessFs.EXECUTE)


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


class StaticPrefixes:
    def __init__(
        self, static: Ruleset, table: ObjectTable, links: Mapping[bytes, bytes] | None = None
    ) -> None:
        """``links``: symlinks in ``/`` taken as their targets (default: :func:`root_links`)."""
        self._known: dict[tuple[bytes, int], bool] = {}
        self._links = dict(root_links() if links is None else links)
        # Plain ints: a flag's own operators cost microseconds on every uncached check.
        self._dirs: dict[bytes, int] = {}
        for obj, access in static.fs.items():
            if table.is_dir(obj):
                path = os.fsencode(fd_path(table.fd(obj))).rstrip(b"/")
                self._dirs[path] = self._dirs.get(path, 0) | int(access)
        # The directories by the rights they grant: a path is tested against each group in
        # one call (bytes.startswith with a tuple), not component by component.
        groups: dict[int, list[bytes]] = {}
        for path, rights in self._dirs.items():
            groups.setdefault(rights, []).append(path)
        self._groups = [
            (rights, frozenset(paths), tuple(p + b"/" for p in paths))
            for rights, paths in groups.items()
        ]
        #: The rights an open with these (relevant) flags needs, by the flags.
        self._needs: dict[int, int] = {}

    def allows(self, r: FsRequest) -> bool:
        """Whether the static layer alone allows ``r`` (an open or an exec by absolute path)."""
        if r.op == "execute":
            if r.flags & AT_EMPTY_PATH or r.dirfd != AT_FDCWD:
                return False
            flags = _EXECUTE
        elif r.op != "open" or r.flags & os.O_CREAT:
            return False
        else:
            flags = r.flags & _RELEVANT_FLAGS
        return self._known_allows(r.path, flags)

    def allows_open_of(self, path: bytes, flags: int) -> bool:
        """Whether the static layer alone allows an open with ``flags`` of the object whose
        canonical path is ``path`` (see engine.handler: a relative open, resolved)."""
        if flags & os.O_CREAT:
            return False
        return self._known_allows(path, flags & _RELEVANT_FLAGS)

    def _known_allows(self, path: bytes, flags: int) -> bool:
        if not path.startswith(b"/"):
            return False
        # The answer depends only on the path and the flags, and static rules never change:
        # programs open the same files again and again.
        key = (path, flags)
        known = self._known.get(key)
        if known is None:
            known = self._allows(path, flags)
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            self._known[key] = known
        return known

    def _allows(self, path: bytes, flags: int) -> bool:
        if b"/.." in path:
            return False
        end = path.find(b"/", 1)
        target = self._links.get(path if end < 0 else path[:end])
        if target is not None:
            path = target if end < 0 else target + path[end:]
        need = self._needs.get(flags)
        if need is None:
            if flags == _EXECUTE:
                need = _EXECUTE_RIGHT
            else:
                # Either a file or a directory may be behind the path: both kinds of read.
                need = int(open_rights(flags, False) | open_rights(flags, True))
            self._needs[flags] = need
        path = path.rstrip(b"/")
        granted = 0
        for access, exact, beneath in self._groups:
            # A rule on "/" is b"" here, and b"/" beneath: every absolute path.
            if path in exact or path.startswith(beneath):
                granted |= access
                if not need & ~granted:
                    return True
        return False
