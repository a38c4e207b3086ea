"""The control plane of a run, and the static rules that would hand it to the program.

The control plane: the policy file (and its learn recording beside it), the event log, the
listen socket and its token, and, when the program has a terminal of its own, ours. The
supervisor layer never performs an operation on them for the program (see perform.guard);
the static layer is the kernel's alone, so ``run`` and ``check`` refuse a policy whose static
rules would let the program:

- write or truncate a control file (read a secret one, open our terminal at all): a rule on
  it or on any directory above it;
- remove, rename or replace an entry in a control file's directory, or rename a directory
  above it (``remove_file``, ``remove_dir``, ``refer`` on the directory or above). Making a
  name alone replaces nothing; making a protected name is refused by the supervisor layer.

Each is computed on objects: the rules are on held fds, and a control object's ancestry is
its chain of (dev, ino) from the object up (``..``), never a path prefix. A right the policy
does not handle is not mediated at all: ``check`` warns about it.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Iterable, Sequence

from msgspec import Struct

from llsupervise.errors import LLSuperviseError
from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.model import ObjectId
from llsupervise.rights import NO_FS, AccessFs, names
from llsupervise.supervisor.perform.guard import Guard, build_guard
from llsupervise.supervisor.rules.objects import (
    ObjectTable,
    ResolvedPolicy,
    ancestry,
    object_id,
    raise_nofile_limit,
    resolve,
)

#: Rights on a control file's directory (or above) that replace, remove or move its entry.
DIRECTORY_RIGHTS = AccessFs.REMOVE_FILE | AccessFs.REMOVE_DIR | AccessFs.REFER
FILE_RIGHTS = AccessFs.WRITE_FILE | AccessFs.TRUNCATE
SECRET_RIGHTS = FILE_RIGHTS | AccessFs.READ_FILE
DEVICE_RIGHTS = SECRET_RIGHTS | AccessFs.IOCTL_DEV


class ControlFile(Struct, frozen=True):
    """One control-plane file: it need not exist yet (its directory must)."""

    path: str
    #: What it is, as a denial says: "llsupervise's policy file".
    what: str
    #: Not even read by the program (the listen token, our terminal).
    secret: bool = False
    #: A terminal device: protected by identity only (its directory is /dev/pts).
    device: bool = False


class ControlPlaneError(LLSuperviseError):
    """A static rule would hand the program a control-plane object."""


def token_path(socket_path: str) -> str:
    """Where the secret ``attach`` proves itself with lives: beside the listen socket, in
    its private directory."""
    return os.path.abspath(socket_path) + ".token"


def control_files(
    source: str | None,
    *,
    log: str | None = None,
    listen: str | None = None,
    terminals: Iterable[int] = (),
) -> list[ControlFile]:
    """The control plane of a run: ``terminals`` are our descriptors whose terminal is not
    the program's (the TUI's; in headless mode the program shares ours)."""
    files = policy_files(source) if source is not None and os.path.isfile(source) else []
    if log is not None:
        files.append(ControlFile(log, "llsupervise's event log"))
    if listen is not None:
        files.append(ControlFile(listen, "llsupervise's listen socket"))
        files.append(ControlFile(token_path(listen), "llsupervise's attach token", secret=True))
    for fd in terminals:
        tty = terminal(fd, "llsupervise's terminal")
        if tty is not None and tty not in files:
            files.append(tty)
    return files


def policy_files(source: str) -> list[ControlFile]:
    """The policy file and the learn recording beside it."""
    return [
        ControlFile(source, "llsupervise's policy file"),
        ControlFile(source + ".recording.json", "llsupervise's learn recording"),
    ]


_TIOCGDEV = 0x80045432


def terminal(fd: int, what: str) -> ControlFile | None:
    """The terminal on ``fd``, if it is one, by its own device node: an fd opened through
    ``/dev/tty`` names that node, which means each process's own terminal, not ours."""
    try:
        if not os.isatty(fd):
            return None
        return ControlFile(device_node(fd), what, secret=True, device=True)
    except OSError:
        return None


def device_node(fd: int) -> str:
    """The device node of the terminal on ``fd`` (the real one behind ``/dev/tty``)."""
    name = os.ttyname(fd)
    if name != "/dev/tty":
        return name
    # The terminal behind /dev/tty: TIOCGDEV gives its real device number.
    (rdev,) = struct.unpack("I", fcntl.ioctl(fd, _TIOCGDEV, b"\0" * 4))
    major, minor = os.major(rdev), os.minor(rdev)
    if 136 <= major <= 143:  # a pseudo-terminal: devpts has no sysfs entry
        return f"/dev/pts/{(major - 136) * 256 + minor}"
    with open(f"/sys/dev/char/{major}:{minor}/uevent", encoding="utf-8") as f:
        for line in f:
            if line.startswith("DEVNAME="):
                return "/dev/" + line.split("=", 1)[1].strip()
    raise OSError(f"no device node for terminal {major}:{minor}")


def devices(files: Iterable[ControlFile]) -> list[tuple[os.stat_result, str]]:
    """The terminal devices among ``files``, by status (they are protected by identity)."""
    found: list[tuple[os.stat_result, str]] = []
    for f in files:
        if f.device:
            try:
                found.append((os.stat(f.path), f.what))
            except OSError:
                pass
    return found


def guard_for(files: Sequence[ControlFile]) -> Guard:
    return build_guard(((f.path, f.what, f.secret) for f in files if not f.device), devices(files))


def _directory_chain(directory: str) -> list[ObjectId]:
    """A directory's chain; one not made yet (the listen socket's) has its parent's: a rule
    there will hold for it."""
    try:
        fd = os.open(directory, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        return [] if parent == directory else _directory_chain(parent)
    except OSError:
        return []
    try:
        return ancestry(fd)
    finally:
        os.close(fd)


def _chain(path: str, directory_only: bool) -> list[ObjectId]:
    """``path``'s (dev, ino) chain as Landlock walks it (from where the file really is);
    its directory's only, when ``directory_only`` or when the file does not exist yet."""
    if not directory_only:
        try:
            st = os.stat(path)
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                return _directory_chain(path)
            real_directory = os.path.dirname(os.path.realpath(path))
            return [object_id(st), *_directory_chain(real_directory)]
    return _directory_chain(os.path.dirname(os.path.abspath(path)))


def static_violations(policy: ResolvedPolicy, files: Iterable[ControlFile]) -> list[str]:
    """One line per (static rule, control file) the rule would hand to the program."""
    return _static(policy, files)[0]


def unhandled_warnings(policy: ResolvedPolicy, files: Iterable[ControlFile]) -> list[str]:
    """One line per control file on which the program may use a right the policy does not
    handle (not mediated at all: neither layer sees it). A warning, not a refusal: a policy
    that handles only what its rules grant (no [[ruleset]]) is a usual one."""
    return _static(policy, files)[1]


def _static(policy: ResolvedPolicy, files: Iterable[ControlFile]) -> tuple[list[str], list[str]]:
    static = policy.static
    rows = [rule for rule in policy.rules if rule.layer == "static" and rule.condition is None]
    found: list[str] = []
    unmediated: list[str] = []
    for f in files:
        rights = DEVICE_RIGHTS if f.device else SECRET_RIGHTS if f.secret else FILE_RIGHTS
        checks = [(_chain(f.path, False), rights, f"{f.what} {f.path}")]
        if not f.device:
            directory = os.path.dirname(os.path.abspath(f.path))
            checks.append(
                (_chain(f.path, True), DIRECTORY_RIGHTS, f"the directory of {f.what} {directory}")
            )
        for chain, dangerous, target in checks:
            if not chain:
                continue
            unhandled = dangerous & ~static.handled_fs
            if unhandled:
                unmediated.append(
                    f"{', '.join(names(unhandled))} not handled by the policy's [[ruleset]]: "
                    f'the program may use them on {target}; handle them (e.g. "abi.all")'
                )
            on_chain = set(chain)
            for rule in rows:
                if rule.obj not in on_chain:
                    continue
                granted = rule.access & dangerous
                if granted != NO_FS:
                    listed = ", ".join(names(granted))
                    found.append(
                        f"static rule {rule.label} ({rule.where}) grants {listed} "
                        f"on {target}: move the file out of the rule's reach, or narrow the rule "
                        f"(or grant it under [supervisor], where llsupervise keeps it protected)"
                    )
    return list(dict.fromkeys(found)), list(dict.fromkeys(unmediated))


def refuse_static(policy: ResolvedPolicy, files: Iterable[ControlFile]) -> None:
    """Raise :class:`ControlPlaneError` naming the first rule that hands the program a
    control-plane object (``run`` refuses such a policy)."""
    found = static_violations(policy, files)
    if found:
        more = f" (and {len(found) - 1} more: see llsupervise check)" if len(found) > 1 else ""
        raise ControlPlaneError(f"control plane: {found[0]}{more}")


def check_document(document: PolicyDocument, files: Sequence[ControlFile]) -> None:
    """:func:`refuse_static` for a document not resolved yet (``run``, before it starts).
    The descriptor limit is raised first, as the run will: a policy is refused only for
    needing more descriptors than the hard limit."""
    raise_nofile_limit()
    with ObjectTable() as table:
        refuse_static(resolve(document, table), files)
