"""Binding to objects, not path strings: directories reached from a held fd by ``..``, and
labels (the kernel's name for a held fd) checked without following symlinks.

The supervised program can rename a directory and put a symlink in its place at any moment,
so a path is only ever a label: it is computed from an fd and, before anyone relies on it
naming that fd's object (a policy file read on the next load), resolved again with
``RESOLVE_NO_SYMLINKS`` and compared by ``(st_dev, st_ino)``.
"""

from __future__ import annotations

import errno
import os
import stat

from msgspec.structs import replace

from llsupervise.libc import AT_FDCWD, openat2
from llsupervise.policy.document import PathBeneathEntry, PolicyDocument
from llsupervise.policy.model import ObjectId, Ruleset
from llsupervise.rights import AccessFs
from llsupervise.supervisor.rules.created import CreatedResolver
from llsupervise.supervisor.rules.objects import (
    ObjectTable,
    ResolvedPolicy,
    ancestry,
    fd_path,
    object_id,
    resolve,
)

_RESOLVE_NO_SYMLINKS = 0x04
_O_DIR = os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY


def open_no_symlinks(path: str, flags: int = os.O_PATH | os.O_CLOEXEC) -> int:
    """Open the absolute ``path`` refusing every symlink on the way (ELOOP)."""
    if not path.startswith("/"):
        raise OSError(errno.EINVAL, f"not an absolute path: {path!r}")
    try:
        return openat2(AT_FDCWD, os.fsencode(path), flags, 0, _RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None


def leads_to(path: str, obj: ObjectId) -> bool:
    """Whether ``path``, resolved without following any symlink, is ``obj`` now."""
    try:
        fd = open_no_symlinks(path)
    except OSError:
        return False
    try:
        return object_id(os.fstat(fd)) == obj
    finally:
        os.close(fd)


def parent_of(fd: int) -> int | None:
    """An ``O_PATH`` fd of the directory ``..`` of the directory ``fd`` (None at the root)."""
    parent = os.open("..", _O_DIR, dir_fd=fd)
    if object_id(os.fstat(parent)) == object_id(os.fstat(fd)):
        os.close(parent)
        return None
    return parent


def directory_of_file(fd: int) -> int | None:
    """The directory holding the non-directory ``fd``, found from the fd's own name and
    verified to hold that very object under that name; None when it cannot be verified
    (unlinked, or the name changed since)."""
    label = fd_path(fd)
    if not label.startswith("/") or label.endswith(" (deleted)"):
        return None
    head, name = os.path.split(label)
    try:
        parent = open_no_symlinks(head or "/", _O_DIR)
    except OSError:
        return None
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        st = None
    if st is None or object_id(st) != object_id(os.fstat(fd)):
        os.close(parent)
        return None
    return parent


#: Rights with which the program can change what a name in a directory leads to.
NAME_CHANGING = (
    AccessFs.REMOVE_DIR | AccessFs.REMOVE_FILE | AccessFs.MAKE_CHAR | AccessFs.MAKE_DIR
    | AccessFs.MAKE_REG | AccessFs.MAKE_SOCK | AccessFs.MAKE_FIFO | AccessFs.MAKE_BLOCK
    | AccessFs.MAKE_SYM | AccessFs.REFER
)  # fmt: skip
#: Symlinks followed at most while walking a path (the kernel's own limit).
_MAX_SYMLINKS = 40


def could_be_changed(path: str, in_force: Ruleset) -> bool:
    """Whether the program, with the rights ``in_force`` gives it, may have changed where
    ``path`` leads: some directory in which the walk of ``path`` looks a name up (through
    symlinks too) lets it make, remove or move names. Unknown (a name missing, too many
    symlinks) counts as changeable."""
    unhandled = ~in_force.handled_fs & NAME_CHANGING
    if unhandled:
        return True
    parts = path.split("/")
    if not path.startswith("/"):
        return True
    current = os.open("/", _O_DIR)
    followed = 0
    try:
        while parts:
            name = parts.pop(0)
            if name in ("", "."):
                continue
            if in_force.fs_rights_on(ancestry(current)) & NAME_CHANGING:
                return True
            if name == "..":
                parent = parent_of(current)
                if parent is not None:
                    os.close(current)
                    current = parent
                continue
            st = os.stat(name, dir_fd=current, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                followed += 1
                if followed > _MAX_SYMLINKS:
                    return True
                target = os.readlink(name, dir_fd=current)
                parts = target.split("/") + parts
                if target.startswith("/"):
                    os.close(current)
                    current = os.open("/", _O_DIR)
                continue
            if not parts:
                return False  # the last name, looked up in a directory checked above
            if not stat.S_ISDIR(st.st_mode):
                return True
            nxt = os.open(name, _O_DIR | os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = nxt
        return False
    except OSError:
        return True
    finally:
        os.close(current)


def through_symlink(path: str) -> bool:
    """Whether resolving ``path`` follows a symlink (on any component)."""
    try:
        os.close(open_no_symlinks(path))
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def resolve_at_launch(document: PolicyDocument, table: ObjectTable) -> ResolvedPolicy:
    """:func:`resolve`, refusing what an earlier run may have planted: a supervisor rule path
    that passes through a symlink in a directory the program may change (by the policy's own
    static and supervisor rules) is left out, and listed in ``redirectable``. Its next-run
    twin of a reload's kept binding: there is no earlier binding to keep at launch."""
    policy = resolve(document, table, created=CreatedResolver())
    may_change = policy.static | policy.supervisor
    redirectable = [
        path
        for entry in document.supervisor.path_beneath
        for path in entry.paths
        if through_symlink(path) and could_be_changed(path, may_change)
    ]
    if not redirectable:
        return policy
    left_out = set(redirectable)

    def without(entry: PathBeneathEntry) -> PathBeneathEntry:
        kept = [(p, loc) for p, loc in zip(entry.paths, entry.path_locations, strict=True)
                if p not in left_out]  # fmt: skip
        return replace(
            entry,
            paths=tuple(p for p, _ in kept),
            path_locations=tuple(loc for _, loc in kept),
        )

    section = replace(
        document.supervisor,
        path_beneath=tuple(without(e) for e in document.supervisor.path_beneath),
    )
    policy = resolve(
        replace(document, supervisor=section), table, created=CreatedResolver()
    )
    return replace(policy, redirectable=tuple(dict.fromkeys(redirectable)))


def symlinked_paths(policy: ResolvedPolicy) -> list[tuple[str, str]]:
    """Every rule path (static, supervisor, and those left out at launch) that passes
    through a symlink, with where it leads now: what ``check`` and the start of a run show."""
    document = policy.document
    entries = [*document.path_beneath, *document.supervisor.path_beneath]
    paths = [path for entry in entries for path in entry.paths]
    return [
        (path, os.path.realpath(path))
        for path in dict.fromkeys([*paths, *policy.redirectable])
        if through_symlink(path)
    ]
