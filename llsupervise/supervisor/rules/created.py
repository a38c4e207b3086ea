"""Rules on paths the run creates: kept pending until the program creates the object.

A supervisor ``[[supervisor.path_beneath]]`` marked ``optional`` whose path does not exist
when the policy is loaded (or reloaded) is not skipped: it becomes a :class:`PendingCreation`,
anchored on the object of its nearest existing ancestor directory (held fd, found without
following any symlink, so nothing the program planted), plus the missing name components.

When a serving thread creates the first missing name in the anchor directory object for the
program (``mkdir``, ``open`` with ``O_CREAT`` (made by ``mknod``), ``mknod``), the new object is
verified and:

- if names remain (``${PWD}/build/out`` with neither existing), the rule is anchored anew on
  the directory just made, and waits for the next name; no rights are granted on the
  intermediate directory;
- otherwise the rule binds to that object, and a new generation is committed before the
  creating call's reply goes back to the program.

Nothing can be moved or linked into the new object between its check and the commit (see
:class:`~llsupervise.supervisor.engine.created.MoveGate`); a device node never binds (its
node is new, the device is not).

A rename or link into the name never binds (it would bind an object that existed before),
and neither does a creation the kernel was left to do (a static-layer CONTINUE) or one asked
about and allowed (answers do their own binding). A reload never binds a pending rule by its
path, even when the path exists by then: it stays pending on its anchor.
"""

from __future__ import annotations

import ctypes
import os
import stat
import time
from collections.abc import Iterable, Mapping

from msgspec import Struct

from llsupervise.libc import libc
from llsupervise.policy.document import Location
from llsupervise.policy.model import ObjectId
from llsupervise.rights import AccessFs
from llsupervise.supervisor.rules.objects import ObjectTable, object_id

_O_DIR = os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY
_RESOLVE_NO_SYMLINKS = 0x04
_AT_EMPTY_PATH = 0x1000
_STATX_BTIME = 0x800
_STATX_SIZE = 256
_BTIME_OFFSET = 80  # struct statx: stx_btime (tv_sec s64, tv_nsec u32)
_CLOCK_REALTIME_COARSE = 5


class PendingCreation(Struct, frozen=True):
    """A supervisor rule waiting for the program to create its object."""

    #: The rule's path, expanded, as written in the policy (what events show).
    path: str
    #: The directory object the next missing name is created in (held by the table).
    anchor: ObjectId
    #: The missing components, first to last; ``names[0]`` is looked up in ``anchor``.
    names: tuple[bytes, ...]
    access: AccessFs
    location: Location

    @property
    def key(self) -> tuple[ObjectId, bytes]:
        return (self.anchor, self.names[0])


class CreatedIndex(Struct, frozen=True):
    """What a serving thread looks pending rules up by: an immutable snapshot, swapped whole."""

    by_key: Mapping[tuple[ObjectId, bytes], tuple[PendingCreation, ...]]
    #: The names any pending rule waits for: a creation naming another skips the lookup.
    names: frozenset[bytes]

    @classmethod
    def of(cls, pending: Iterable[PendingCreation]) -> CreatedIndex:
        by_key: dict[tuple[ObjectId, bytes], tuple[PendingCreation, ...]] = {}
        for rule in pending:
            by_key[rule.key] = (*by_key.get(rule.key, ()), rule)
        return cls(by_key, frozenset(name for _, name in by_key))


EMPTY_INDEX = CreatedIndex({}, frozenset())


class CreatedResolver:
    """Used by :func:`~llsupervise.supervisor.rules.objects.resolve`: turns missing optional
    supervisor paths into pending rules, and keeps those pending before pending."""

    def __init__(self, before: Iterable[PendingCreation] = ()) -> None:
        self._before: dict[str, list[PendingCreation]] = {}
        for rule in before:
            self._before.setdefault(rule.path, []).append(rule)
        self.pending: list[PendingCreation] = []

    def was_pending(self, path: str) -> bool:
        return path in self._before

    def keep(self, path: str, access: AccessFs, location: Location) -> None:
        """A path pending before: it stays on its anchor (with the rights written now)."""
        rule = self._before[path][0]
        self.pending.append(PendingCreation(path, rule.anchor, rule.names, access, location))

    def anchor(self, table: ObjectTable, path: str, access: AccessFs, location: Location) -> bool:
        """Anchor the missing ``path`` on its nearest existing directory; False when that
        cannot be done safely (a symlink or a non-directory on the way)."""
        found = nearest_directory(path)
        if found is None:
            return False
        fd, names = found
        obj = table.adopt(fd)
        self.pending.append(PendingCreation(path, obj, names, access, location))
        return True


def nearest_directory(path: str) -> tuple[int, tuple[bytes, ...]] | None:
    """``(O_PATH fd of the deepest existing directory on path, missing names)``, walked from
    ``/`` one name at a time without following any symlink; None when the path exists, a
    symlink or a non-directory is on the way, or it names ``..``."""
    if not path.startswith("/"):
        return None
    parts = [os.fsencode(p) for p in path.split("/") if p not in ("", ".")]
    if not parts or b".." in parts:
        return None
    current = os.open("/", _O_DIR)
    try:
        for i, name in enumerate(parts):
            try:
                nxt = os.open(name, _O_DIR | os.O_NOFOLLOW, dir_fd=current)
            except FileNotFoundError:
                fd, current = current, -1
                return fd, tuple(parts[i:])
            except OSError:
                return None  # a symlink (ELOOP), a file (ENOTDIR), no permission
            os.close(current)
            current = nxt
        return None  # it exists
    finally:
        if current >= 0:
            os.close(current)


def coarse_now_ns() -> int:
    """The clock file timestamps are taken from (or later): read before a creation, an
    object's birth time at least this proves it was born after."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def birth_time_ns(fd: int) -> int | None:
    """The object's birth time (statx ``STATX_BTIME``); None where the filesystem has none."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if libc.statx(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, buf) != 0:
        return None
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & _STATX_BTIME:
        return None
    raw = buf.raw[_BTIME_OFFSET : _BTIME_OFFSET + 12]
    seconds = int.from_bytes(raw[:8], "little", signed=True)
    return seconds * 1_000_000_000 + int.from_bytes(raw[8:], "little")


def why_not_new(
    fd: int, anchor_fd: int, name: bytes, before_ns: int, kind: int | None
) -> str | None:
    """Why the object ``fd`` is not the one just created as ``name`` in ``anchor_fd`` (None:
    it is). ``kind``: the file type it must have (``stat.S_IFDIR`` must also be empty)."""
    st = os.fstat(fd)
    try:
        there = os.stat(name.rstrip(b"/"), dir_fd=anchor_fd, follow_symlinks=False)
    except OSError:
        there = None
    if there is None or object_id(there) != object_id(st):
        return "the name no longer leads to the object created"
    if kind is not None and stat.S_IFMT(st.st_mode) != kind:
        return "the object is not of the type created"
    born = birth_time_ns(fd)
    if born is None:
        return "the filesystem does not record creation times: the object cannot be told new"
    if born < before_ns:
        return "the object existed before the creation (moved into place)"
    if stat.S_ISDIR(st.st_mode):
        listing = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(listing) as entries:
                if next(entries, None) is not None:  # one is enough (there may be many)
                    return "the directory is not empty"
        finally:
            os.close(listing)
    return None
