"""The control plane, out of the program's reach: operations never performed for it.

The supervisor's own files (the policy file, the learn recording, the event log, the listen
socket and its token, our terminal) are named by *entries*: a directory the supervisor holds
open and a name in it. Whatever the rules or answers say, a broker acting for the program
refuses, with :class:`ProtectedError`:

- writing or truncating a protected file (any name that leads to it, symlinks and hard links
  included), or opening a *secret* one (the listen token, our terminal) at all;
- making, removing or renaming a protected entry (the name: an editor's save gives the policy
  file a new inode, its entry stays), or linking a protected file elsewhere;
- renaming or removing a directory that holds a protected entry, or any of its ancestors.

Each check is made on the object the operation acts on (an opened fd, a held directory fd),
never on a path string. The identities of the entries are looked up live (one ``fstatat`` per
entry), so a file replaced since the last reload is still protected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

from msgspec import Struct, field

from llsupervise.policy.model import ObjectId


class ProtectedError(PermissionError):
    """The operation would reach the supervisor's control plane: refused with EACCES."""

    def __init__(self, what: str) -> None:
        super().__init__(13, f"protected: {what}")  # EACCES
        #: What the object is, e.g. "llsupervise's policy file".
        self.what = what


class Entry(Struct, frozen=True):
    """A name in a directory the supervisor holds (``dirfd``, ``O_PATH``)."""

    dirfd: int
    directory: ObjectId
    name: bytes
    what: str
    #: Not even read (a token, a terminal).
    secret: bool = False


def _id(st: os.stat_result) -> ObjectId:
    return ObjectId(st.st_dev, st.st_ino)


class Guard(Struct):
    """The protected objects of one run; shared by every serving and answering thread.

    Replaced as a whole (:meth:`replace`), never mutated in place: a thread reads one
    consistent snapshot."""

    entries: tuple[Entry, ...] = ()
    #: Objects protected by identity (a device, a file whose entry is outside our reach).
    objects: dict[ObjectId, tuple[str, bool]] = field(default_factory=dict)
    #: Directories holding an entry, and their ancestors: never renamed nor removed.
    directories: dict[ObjectId, str] = field(default_factory=dict)
    #: Told of each object protected later (dev, ino, secret): those that keep a copy.
    followers: list[Callable[[int, int, bool], None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.entries or self.objects)

    # -- what a broker asks -------------------------------------------------------------

    def entry(self, dirfd: int | None, name: bytes) -> str | None:
        """What the entry ``name`` in directory ``dirfd`` is, if protected."""
        if dirfd is None or not self.entries:
            return None
        name = name.rstrip(b"/")
        directory = _id(os.fstat(dirfd))
        for entry in self.entries:
            if entry.name == name and entry.directory == directory:
                return entry.what
        return None

    def object(self, st: os.stat_result, *, reading_only: bool) -> str | None:
        """What the object ``st`` describes is, if an open of it must be refused (a secret
        for any open; a protected file for one that writes)."""
        return self.object_by_id(st.st_dev, st.st_ino, reading_only=reading_only)

    def object_by_id(self, dev: int, ino: int, *, reading_only: bool) -> str | None:
        """:meth:`object` for the object of identity ``(dev, ino)``."""
        found = self.objects.get(ObjectId(dev, ino))
        if found is not None and (found[1] or not reading_only):
            return found[0]
        for entry in self.entries:
            if not entry.secret and reading_only:
                continue
            try:
                current = os.stat(entry.name, dir_fd=entry.dirfd, follow_symlinks=False)
            except OSError:
                continue
            if current.st_ino == ino and current.st_dev == dev:
                return entry.what
        return None

    def directory(self, st: os.stat_result) -> str | None:
        return self.directories.get(_id(st))

    def child(self, dirfd: int | None, name: bytes) -> str | None:
        """What the object at ``name`` in ``dirfd`` is (not following a last symlink), if it
        may be neither renamed, removed nor linked: a protected directory or file."""
        try:
            st = os.stat(name.rstrip(b"/") or b".", dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return None
        return self.directory(st) or self.object(st, reading_only=False)

    def add_devices(self, devices: Iterable[tuple[os.stat_result, str]]) -> None:
        """Protect devices (any open refused). Safe while threads read: one dict store each."""
        for st, what in devices:
            self.objects[_id(st)] = (what, True)
            for follower in self.followers:
                follower(st.st_dev, st.st_ino, True)

    # -- refusing -------------------------------------------------------------------------

    def refuse_entries(self, *places: tuple[int | None, bytes]) -> None:
        for dirfd, name in places:
            what = self.entry(dirfd, name)
            if what is not None:
                raise ProtectedError(what)

    def refuse_children(self, *places: tuple[int | None, bytes]) -> None:
        self.refuse_entries(*places)
        for dirfd, name in places:
            what = self.child(dirfd, name)
            if what is not None:
                raise ProtectedError(what)

    def refuse_open(self, st: os.stat_result, *, reading_only: bool) -> None:
        what = self.object(st, reading_only=reading_only)
        if what is not None:
            raise ProtectedError(what)

    def close(self) -> None:
        for entry in self.entries:
            os.close(entry.dirfd)
        self.entries = ()


def build_guard(
    files: Iterable[tuple[str, str, bool]],
    devices: Sequence[tuple[os.stat_result, str]] = (),
) -> Guard:
    """A guard for ``files`` (path, what, secret: whether reading is refused too) and
    ``devices`` (status, what: refused for any open). A file need not exist yet; its
    directory must."""
    from llsupervise.supervisor.rules.objects import ancestry

    entries: list[Entry] = []
    directories: dict[ObjectId, str] = {}
    seen: set[tuple[ObjectId, bytes]] = set()
    for path, what, secret in files:
        # The path as given and the file it leads to (a symlinked policy file): both names.
        for name in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
            directory, base = os.path.split(name)
            try:
                dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            dir_id = _id(os.fstat(dirfd))
            key = (dir_id, os.fsencode(base))
            if key in seen:
                os.close(dirfd)
                continue
            seen.add(key)
            entries.append(Entry(dirfd, dir_id, os.fsencode(base), what, secret))
            for obj in ancestry(dirfd):
                directories.setdefault(obj, f"a directory holding {what}")
    objects = {_id(st): (what, True) for st, what in devices}
    return Guard(tuple(entries), objects, directories)
