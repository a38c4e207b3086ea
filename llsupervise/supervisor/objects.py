"""Turn a policy document into model rulesets bound to file objects.

Landlock rules bind to inodes, not path strings, so each rule object is opened once
(``O_PATH``) and the descriptor kept for as long as the rule may be used, exactly like the
kernel's inode reference. That costs one descriptor per object: the soft ``RLIMIT_NOFILE``
is raised to the hard one and a policy that needs more fails with a clear message.
"""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from llsupervise.errors import LLSuperviseError
from llsupervise.policy.document import (
    Location,
    NetPortEntry,
    PathBeneathEntry,
    PolicyDocument,
    PolicyError,
)
from llsupervise.policy.model import ObjectId, Ruleset
from llsupervise.rights import NO_FS, NO_NET, AccessFs, AccessNet

#: Descriptors left for everything but rule objects (listener, logs, memory fds, brokers).
RESERVED_FDS = 256


class ResourceLimitError(LLSuperviseError):
    """The policy needs more file descriptors than this process may hold."""


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def object_id(st: os.stat_result) -> ObjectId:
    return ObjectId(st.st_dev, st.st_ino)


@dataclass
class ObjectTable:
    """One ``O_PATH`` descriptor per distinct file object, with a display path each."""

    _fds: dict[ObjectId, int] = field(default_factory=dict)
    _labels: dict[ObjectId, str] = field(default_factory=dict)
    _is_dir: dict[ObjectId, bool] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._fds)

    def __iter__(self) -> Iterator[ObjectId]:
        return iter(self._fds)

    def __enter__(self) -> ObjectTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fd(self, obj: ObjectId) -> int:
        return self._fds[obj]

    def label(self, obj: ObjectId) -> str:
        return self._labels[obj]

    def is_dir(self, obj: ObjectId) -> bool:
        return self._is_dir[obj]

    def open(self, path: str) -> ObjectId:
        """Open ``path`` (following symlinks, as Landlock rules do) and keep one fd per object."""
        _check_capacity(len(self._fds) + 1)
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        st = os.fstat(fd)
        obj = object_id(st)
        if obj in self._fds:
            os.close(fd)
        else:
            self._fds[obj] = fd
            self._labels[obj] = path
            self._is_dir[obj] = stat.S_ISDIR(st.st_mode)
        return obj

    def adopt(self, fd: int, label: str) -> ObjectId:
        """Keep an already opened ``O_PATH`` fd (the object a denial was checked on)."""
        st = os.fstat(fd)
        obj = object_id(st)
        if obj in self._fds:
            os.close(fd)
        else:
            _check_capacity(len(self._fds) + 1)
            self._fds[obj] = fd
            self._labels[obj] = label
            self._is_dir[obj] = stat.S_ISDIR(st.st_mode)
        return obj

    def release(self, keep: Iterable[ObjectId]) -> None:
        """Close the descriptors of objects no rule refers to any more."""
        keep = set(keep)
        for obj in [o for o in self._fds if o not in keep]:
            os.close(self._fds.pop(obj))
            del self._labels[obj], self._is_dir[obj]

    def close(self) -> None:
        self.release(())


def _check_capacity(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed + RESERVED_FDS > soft:
        raise ResourceLimitError(
            f"the policy needs {needed} file descriptors to hold its rule objects, plus "
            f"{RESERVED_FDS} for the supervisor, but RLIMIT_NOFILE allows {soft} "
            f"(hard limit {hard}); raise the limit (ulimit -n) or use fewer, broader rules"
        )


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy whose paths were opened: the static layer, the supervisor target, quiet set."""

    document: PolicyDocument
    static: Ruleset
    supervisor: Ruleset
    quiet: frozenset[ObjectId]
    #: Optional paths that did not exist, with where they were written.
    skipped: tuple[tuple[str, Location], ...]


def _open_paths(
    table: ObjectTable,
    paths: tuple[str, ...],
    locations: tuple[Location, ...],
    optional: bool,
    skipped: list[tuple[str, Location]],
) -> Iterator[ObjectId]:
    for path, location in zip(paths, locations, strict=True):
        try:
            yield table.open(path)
        except FileNotFoundError:
            if not optional:
                raise PolicyError(
                    location, f"{path!r} does not exist (mark the rule optional = true to skip it)"
                ) from None
            skipped.append((path, location))
        except OSError as exc:
            raise PolicyError(location, f"cannot open {path!r}: {exc.strerror}") from None


def resolve(document: PolicyDocument, table: ObjectTable) -> ResolvedPolicy:
    """Open every rule path of ``document`` into ``table`` and build the model rulesets.

    On error nothing is returned, and the objects already opened stay in ``table``; callers
    that must not change anything resolve into a fresh table and swap it in on success.
    """
    skipped: list[tuple[str, Location]] = []
    handled = (document.handled_fs, document.handled_net, document.scoped)

    def layer(entries: Iterable[PathBeneathEntry], ports: Iterable[NetPortEntry]) -> Ruleset:
        fs: dict[ObjectId, AccessFs] = {}
        labels: dict[ObjectId, str] = {}
        for entry in entries:
            for obj in _open_paths(
                table, entry.paths, entry.path_locations, entry.optional, skipped
            ):
                fs[obj] = fs.get(obj, NO_FS) | entry.access
                labels.setdefault(obj, table.label(obj))
        net: dict[int, AccessNet] = {}
        for port_entry in ports:
            for port in port_entry.ports:
                net[port] = net.get(port, NO_NET) | port_entry.access
        return Ruleset(*handled, fs=fs, net=net, labels=labels)

    static = layer(document.path_beneath, document.net_port)
    supervisor = layer(document.supervisor.path_beneath, document.supervisor.net_port)
    quiet = frozenset(
        obj
        for entry in document.supervisor.quiet
        for obj in _open_paths(table, entry.paths, entry.path_locations, entry.optional, skipped)
    )
    return ResolvedPolicy(document, static, supervisor, quiet, tuple(skipped))


def ancestry(fd: int) -> list[ObjectId]:
    """The object behind ``fd`` and each of its ancestors up to the root, as Landlock walks them."""
    chain = [object_id(os.fstat(fd))]
    current = os.open("..", os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY, dir_fd=fd)
    try:
        while True:
            obj = object_id(os.fstat(current))
            if obj == chain[-1]:
                return chain
            chain.append(obj)
            parent = os.open("..", os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY, dir_fd=current)
            os.close(current)
            current = parent
    finally:
        os.close(current)


def fd_path(fd: int) -> str:
    """The kernel's name for an open object (for display only, never for access)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"<fd {fd}>"
