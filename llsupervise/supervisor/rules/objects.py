"""Turn a policy document into model rulesets bound to file objects.

Landlock rules bind to inodes, not path strings, so each rule object is opened once
(``O_PATH``) and the descriptor kept for as long as the rule may be used, exactly like the
kernel's inode reference. That costs one descriptor per object: the soft ``RLIMIT_NOFILE``
is raised to the hard one and a policy that needs more fails with a clear message.
"""

from __future__ import annotations

import functools
import os
import resource
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from msgspec import Struct, field

from llsupervise.errors import LLSuperviseError
from llsupervise.policy.analysis import (
    Finding,
    Layer,
    PolicyRule,
    PolicyWarning,
    PortFinding,
    QuietObject,
    analyse,
    exe_condition_warnings,
    redundant_ports,
    signal_scope_warning,
)
from llsupervise.policy.conditions import Condition, ConditionalRule
from llsupervise.policy.document import (
    Location,
    NetPortEntry,
    PathBeneathEntry,
    PolicyDocument,
    PolicyError,
    QuietEntry,
)
from llsupervise.policy.model import ObjectId, Ruleset
from llsupervise.policy.variables import TTY
from llsupervise.rights import FILE_ACCESS, NO_NET, AccessFs, AccessNet, Scope

if TYPE_CHECKING:
    from llsupervise.supervisor.rules.created import CreatedResolver, PendingCreation

#: Descriptors left for everything but rule objects (listener, logs, memory fds, brokers).
RESERVED_FDS = 256


class ResourceLimitError(LLSuperviseError):
    """The policy needs more file descriptors than this process may hold."""


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit to the hard one; return the new soft limit. The
    command gets the limits as they were (see user_nofile_limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _user_nofile.setdefault("limits", (soft, hard))
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


#: The descriptor limits before raise_nofile_limit first raised them.
_user_nofile: dict[str, tuple[int, int]] = {}


def user_nofile_limit() -> tuple[int, int]:
    """The descriptor limits (soft, hard) the user ran us with: the command's."""
    return _user_nofile.get("limits") or resource.getrlimit(resource.RLIMIT_NOFILE)


def object_id(st: os.stat_result) -> ObjectId:
    return ObjectId(st.st_dev, st.st_ino)


class HeldObject(NamedTuple):
    """What the table holds for one object."""

    #: The instance the table hands out for the object, whichever path named it: rulesets
    #: built from it then find each other's keys by identity.
    obj: ObjectId
    fd: int
    label: str
    is_dir: bool


class ObjectTable(Struct):
    """One ``O_PATH`` descriptor per distinct file object, with a display path each."""

    _held: dict[ObjectId, HeldObject] = field(default_factory=dict)
    #: The object each path opened led to, last time: what a reload checks first.
    _by_path: dict[str, ObjectId] = field(default_factory=dict)
    #: An ``O_PATH`` fd on the program's own terminal when it is one of ours (the
    #: interface's pty slave): rules on ``${TTY}`` apply to it too (see :func:`resolve`).
    _terminal: int | None = None

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[ObjectId]:
        return iter(self._held)

    def __enter__(self) -> ObjectTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fd(self, obj: ObjectId) -> int:
        return self._held[obj].fd

    def held(self, obj: ObjectId) -> HeldObject:
        """All the table holds for ``obj`` in one lookup."""
        return self._held[obj]

    def label(self, obj: ObjectId) -> str:
        return self._held[obj].label

    def path_rules(self, fs: Mapping[ObjectId, AccessFs]) -> list[tuple[int, AccessFs, bool]]:
        """``fs`` rules as a kernel ruleset takes them: (our fd, rights, is a directory)."""
        rules = []
        for obj, access in fs.items():
            held = self._held[obj]
            rules.append((held.fd, access, held.is_dir))
        return rules

    def is_dir(self, obj: ObjectId) -> bool:
        return self._held[obj].is_dir

    def open(self, path: str, may_rebind: Callable[[str], bool] | None = None) -> ObjectId:
        """Open ``path`` (following symlinks, as Landlock rules do) and keep one fd per object.

        A path this table opened before is only stat'ed: if it still leads to the object
        held for it, that object is the answer (its inode cannot have been reused: we hold
        it open); otherwise the path is opened anew, so a replaced directory is followed,
        unless ``may_rebind(path)`` says no: the object held for it stays the answer."""
        known = self._by_path.get(path)  # only objects still held (see release)
        if known is not None:
            st = os.stat(path)
            if st.st_ino == known.ino and st.st_dev == known.dev:
                return known
            if may_rebind is not None and not may_rebind(path):
                return known
        _check_capacity(len(self._held) + 1)
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        st = os.fstat(fd)
        obj = object_id(st)
        held = self._held.get(obj)
        if held is not None:
            os.close(fd)
            self._by_path[path] = held.obj
            return held.obj
        self._held[obj] = HeldObject(obj, fd, path, stat.S_ISDIR(st.st_mode))
        self._by_path[path] = obj
        return obj

    def adopt(self, fd: int) -> ObjectId:
        """Keep an already opened ``O_PATH`` fd (the object a denial was checked on), named by
        the kernel: a creation is checked on the parent directory, not on the new name."""
        st = os.fstat(fd)
        obj = object_id(st)
        label = fd_path(fd)
        held = self._held.get(obj)
        if held is not None:
            os.close(fd)
            obj = held.obj
        else:
            _check_capacity(len(self._held) + 1)
            self._held[obj] = HeldObject(obj, fd, label, stat.S_ISDIR(st.st_mode))
        # The label is what an answer writes to the policy file: when a reload opens it, the
        # object held now is the binding it checks first (else a directory swapped for a
        # symlink since the answer would be followed with no question asked).
        self._by_path.setdefault(label, obj)
        return obj

    def hold_terminal(self, slave: int) -> None:
        """Make the pty slave ``slave`` (the caller's fd, left open) the program's terminal
        for the table's life. Held by an fd on the object the caller made, never by its name:
        /dev/pts names are reused. The magic link leads to the open file, not to a name."""
        if not os.isatty(slave):
            raise ValueError(f"fd {slave} is not a terminal")
        fd = os.open(f"/proc/self/fd/{slave}", os.O_PATH | os.O_CLOEXEC)
        if self._terminal is not None:
            os.close(self._terminal)
        self._terminal = fd

    @property
    def has_terminal(self) -> bool:
        return self._terminal is not None

    def terminal(self) -> ObjectId | None:
        """The program's own terminal held as a rule object (see :meth:`hold_terminal`),
        or None when the run has no terminal of ours."""
        if self._terminal is None:
            return None
        obj = object_id(os.fstat(self._terminal))
        held = self._held.get(obj)
        if held is not None:
            return held.obj
        _check_capacity(len(self._held) + 1)
        fd = os.dup(self._terminal)  # not inheritable: os.dup's default
        self._held[obj] = HeldObject(obj, fd, fd_path(fd), False)
        return obj

    def remember(self, path: str, obj: ObjectId) -> None:
        """``path`` led to the held ``obj`` when it was bound: what a reload checks first."""
        self._by_path[path] = self._held[obj].obj

    def release(self, keep: Iterable[ObjectId]) -> None:
        """Close the descriptors of objects no rule refers to any more."""
        keep = set(keep)
        released = [o for o in self._held if o not in keep]
        for obj in released:
            os.close(self._held.pop(obj).fd)
        if released:
            self._by_path = {p: o for p, o in self._by_path.items() if o in self._held}

    def close(self) -> None:
        self.release(())
        if self._terminal is not None:
            os.close(self._terminal)
            self._terminal = None


def _check_capacity(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed + RESERVED_FDS > soft:
        raise ResourceLimitError(
            f"the policy needs {needed} file descriptors to hold its rule objects, plus "
            f"{RESERVED_FDS} for the supervisor, but RLIMIT_NOFILE allows {soft} "
            f"(hard limit {hard}); raise the limit (ulimit -n) or use fewer, broader rules"
        )


#: A :class:`PolicyRule`'s fields, in order.
RuleRow = tuple[Layer, ObjectId, AccessFs, str, object, Condition | None, AccessFs]


class ResolvedPolicy(Struct, frozen=True, dict=True):
    """A policy whose paths were opened: the static layer, the supervisor target, quiet set."""

    document: PolicyDocument
    static: Ruleset
    supervisor: Ruleset
    quiet: frozenset[ObjectId]
    #: Optional paths that did not exist, with where they were written.
    skipped: tuple[tuple[str, Location], ...]
    #: Supervisor rules with ``exe`` / ``cgroup``: never in the shared ruleset.
    conditional: tuple[ConditionalRule, ...] = ()
    quiet_objects: tuple[QuietObject, ...] = ()
    #: What :attr:`rules` is made of, made only when asked for.
    rule_rows: tuple[RuleRow, ...] = ()
    #: Supervisor paths that now lead to another object but kept the one bound before.
    kept_bindings: tuple[str, ...] = ()
    #: Supervisor paths left out at launch: through a symlink the program may have planted.
    redirectable: tuple[str, ...] = ()
    #: Supervisor rules waiting for the run to create their path (see rules.created).
    created: tuple[PendingCreation, ...] = ()

    @functools.cached_property
    def rules(self) -> tuple[PolicyRule, ...]:
        """Every path of every rule entry, resolved (what ``check`` analyses)."""
        return tuple(PolicyRule(*row) for row in self.rule_rows)

    def objects(self) -> set[ObjectId]:
        """Every object a rule of this policy refers to (what the table must keep open)."""
        return {
            *self.static.fs, *self.supervisor.fs, *self.quiet,
            *(rule.obj for rule in self.conditional), *(rule.anchor for rule in self.created),
        }  # fmt: skip


def resolve(
    document: PolicyDocument,
    table: ObjectTable,
    may_rebind: Callable[[str], bool] | None = None,
    created: CreatedResolver | None = None,
) -> ResolvedPolicy:
    """Open every rule path of ``document`` into ``table`` and build the model rulesets.

    ``created``: missing optional unconditional supervisor paths become rules pending on
    their creation (and those pending before stay so, existing or not) instead of skipped.

    ``may_rebind``: whether a supervisor rule's or quiet object's path that ``table`` bound
    before, and that now leads to another object, may be bound to it (else it keeps its
    object, and the path is listed in :attr:`ResolvedPolicy.kept_bindings`).

    When ``table`` holds the program's terminal (the interface's pty), every rule and quiet
    entry on ``${TTY}``'s object applies to that terminal too, with the same rights and
    location: a program may open its terminal by its own name (less opens ttyname's
    /dev/pts/N), and ``/dev/tty`` is that same terminal to it. The table is the same for the
    whole run, so a reload mirrors it alike.

    On error nothing is returned, and the objects already opened stay in ``table``; callers
    that must not change anything resolve into a fresh table and swap it in on success.
    """
    mirror = _terminal_mirror(table)
    skipped: list[tuple[str, Location]] = []
    kept_bindings: list[str] = []
    supervisor_rebind: Callable[[str], bool] | None = None
    if may_rebind is not None:
        check = may_rebind

        def supervisor_rebind(path: str) -> bool:
            if check(path):
                return True
            kept_bindings.append(path)
            return False

    handled = (document.handled_fs, document.handled_net, document.scoped)
    rows: list[RuleRow] = []
    conditional: list[ConditionalRule] = []

    def layer(
        name: Literal["static", "supervisor"],
        entries: Iterable[PathBeneathEntry],
        ports: Iterable[NetPortEntry],
    ) -> Ruleset:
        fs: dict[ObjectId, AccessFs] = {}
        labels: dict[ObjectId, str] = {}
        rebind = supervisor_rebind if name == "supervisor" else None
        for entry in entries:
            condition = _condition(entry)
            access = entry.access
            pending = created if name == "supervisor" and condition is None else None
            for obj, location in mirror(_open_entry(table, entry, skipped, rebind, pending)):
                label, is_dir = table.held(obj)[2:]
                # A row, not a PolicyRule: most resolutions (reloads) never look at them.
                rows.append(
                    (name, obj, _enforced(access, is_dir), label, location, condition, access)
                )
                if condition is not None:
                    conditional.append(ConditionalRule(obj, access, condition, label))
                    continue
                # Rights on one object add up; most objects have one rule (no flag arithmetic).
                previous = fs.setdefault(obj, access)
                if previous is not access:
                    fs[obj] = previous | access
                labels.setdefault(obj, label)
        net: dict[int, AccessNet] = {}
        for port_entry in ports:
            for port in port_entry.ports:
                net[port] = net.get(port, NO_NET) | port_entry.access
        return Ruleset(*handled, fs=fs, net=net, labels=labels)

    static = layer("static", document.path_beneath, document.net_port)
    supervisor = layer("supervisor", document.supervisor.path_beneath, document.supervisor.net_port)
    quiet_objects = tuple(
        QuietObject(obj, table.label(obj), location)
        for entry in document.supervisor.quiet
        for obj, location in mirror(_open_entry(table, entry, skipped, supervisor_rebind))
    )
    return ResolvedPolicy(
        document,
        static,
        supervisor,
        frozenset(q.obj for q in quiet_objects),
        tuple(skipped),
        tuple(conditional),
        quiet_objects,
        tuple(rows),
        tuple(dict.fromkeys(kept_bindings)),
        created=tuple(created.pending) if created is not None else (),
    )


Opened = Iterator[tuple[ObjectId, Location]]


def _terminal_mirror(table: ObjectTable) -> Callable[[Opened], Opened]:
    """Each opened object, and after ``${TTY}``'s the program's terminal held in ``table``."""
    if not table.has_terminal:
        return lambda opened: opened
    try:
        tty: ObjectId | None = object_id(os.stat(TTY))
    except OSError:
        tty = None  # no /dev/tty here: no rule can be on it

    def mirror(opened: Opened) -> Opened:
        for obj, location in opened:
            yield obj, location
            if obj == tty:
                terminal = table.terminal()
                if terminal is not None:
                    yield terminal, location

    return mirror


def _open_entry(
    table: ObjectTable,
    entry: PathBeneathEntry | QuietEntry,
    skipped: list[tuple[str, Location]],
    may_rebind: Callable[[str], bool] | None = None,
    created: CreatedResolver | None = None,
) -> Iterator[tuple[ObjectId, Location]]:
    """Each object of an entry with the location of the string it came from."""
    for path, location in zip(entry.paths, entry.path_locations, strict=True):
        pending_before = created is not None and created.was_pending(path)
        if pending_before and created is not None and isinstance(entry, PathBeneathEntry):
            # Never bound by its path, which the program may have made lead anywhere.
            created.keep(path, entry.access, location)
            continue
        try:
            obj = table.open(path, may_rebind)
        except FileNotFoundError:
            if not entry.optional:
                raise PolicyError(
                    location, f"{path!r} does not exist (mark the rule optional = true to skip it)"
                ) from None
            if (
                created is not None
                and isinstance(entry, PathBeneathEntry)
                and created.anchor(table, path, entry.access, location)
            ):
                continue
            skipped.append((path, location))
            continue
        except OSError as exc:
            raise PolicyError(location, f"cannot open {path!r}: {exc.strerror}") from None
        yield obj, location


def _condition(entry: PathBeneathEntry) -> Condition | None:
    """The entry's requester condition; executables are resolved like /proc/PID/exe shows them."""
    if not entry.conditional:
        return None
    return Condition(frozenset(os.path.realpath(exe) for exe in entry.exe), entry.cgroup)


def enforced(table: ObjectTable, obj: ObjectId, access: AccessFs) -> AccessFs:
    """The rights the kernel applies on ``obj``: directory-only rights do not exist on files."""
    return _enforced(access, table.is_dir(obj))


def _enforced(access: AccessFs, is_dir: bool) -> AccessFs:
    return access if is_dir else access & FILE_ACCESS


def chain_of(table: ObjectTable, obj: ObjectId) -> tuple[ObjectId, ...]:
    """``obj`` and its ancestors, as Landlock walks them from the object's real location."""
    fd = table.fd(obj)
    if table.is_dir(obj):
        return tuple(ancestry(fd))
    parent_path = os.path.dirname(fd_path(fd))
    try:
        parent = os.open(parent_path, os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError:
        return (obj,)
    try:
        return (obj, *ancestry(parent))
    finally:
        os.close(parent)


def chains(table: ObjectTable, objs: Iterable[ObjectId]) -> Mapping[ObjectId, Sequence[ObjectId]]:
    return {obj: chain_of(table, obj) for obj in set(objs)}


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


def findings(
    policy: ResolvedPolicy, table: ObjectTable
) -> list[Finding | PortFinding | PolicyWarning]:
    """What ``check`` reports about the rules: redundant ones, overlaps with quiet objects,
    exe conditions (an identity, not a boundary) and a signal scope left out."""
    known = chains(table, [*(r.obj for r in policy.rules), *policy.quiet])
    found: list[Finding | PortFinding | PolicyWarning] = list(
        analyse(policy.rules, policy.quiet_objects, known)
    )
    found += redundant_ports(policy.static.net, policy.supervisor.net)
    conditional = sorted(policy.conditional, key=lambda rule: rule.label)
    found += exe_condition_warnings((rule.label, rule.condition.exe) for rule in conditional)
    document = policy.document
    found += signal_scope_warning(document.scoped_stated, Scope.SIGNAL in document.scoped)
    return found


def merged_rules(policy: ResolvedPolicy, table: ObjectTable) -> list[tuple[str, AccessFs]]:
    """Static ∪ unconditional supervisor rules as (path, enforced rights), for an export."""
    merged = policy.static | policy.supervisor
    return [(table.label(obj), enforced(table, obj, access)) for obj, access in merged.fs.items()]
