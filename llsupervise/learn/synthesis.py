"""From a recording to least-privilege rules. Pure: the filesystem is consulted only through
the :class:`FsView` the caller passes in.

How each recorded access becomes a rule:

1. **Anchor.** A rule binds to an object that exists when the policy is loaded.
   - A directory the run created and left behind (``out/``, ``.git``), or a file it created
     directly in ``${PWD}``, gets a rule of its own **marked as created by the run** (``optional``,
     so today's loader skips it while the path does not exist; see :mod:`render` for the marker):
     its parent gets only the rights really used on it (``make_dir``), never read or write for
     everything beside the new object.
   - Other objects created or removed during a run (temporaries, files created in an existing
     subdirectory), and names a policy file cannot hold (not UTF-8), go to the nearest directory
     above them that existed throughout. That is a widening; the rule lists the existing entries
     it also exposes.
   - Churning names (:func:`places.churn`: git objects, lock and swap files, compiler
     temporaries) go to their directory, with a comment saying why.
2. **System hierarchies.** Where programs and libraries live (``/usr``, ``/lib``, the Python
   prefix, ...) gets one static read-only rule each, with ``execute`` as soon as anything was
   executed: ELF and ``#!`` interpreters are executed by the kernel without a trapped call. In
   system data (``/etc``, ``/dev``, ``/proc``, ``/sys``) the files and directories actually read
   get a rule each; a directory gets one instead only when many of its entries were read and
   nothing sensitive is in it, and the hierarchies themselves are never opened whole. A
   process's own ``/proc/PID`` entries cannot be named by any rule: they are reported.
   Writes beneath system hierarchies are never widened: they stay on the object (``/dev/null``).
3. **Static or supervisor.** Exec and what the kernel judges in the caller's own context
   (``/dev/stdout``, ``/proc/self/fd/N``) can only come from the static layer; every other access
   goes into ``[supervisor]``, where it stays revocable while the program runs.
4. **Complete directories.** A directory every entry of which got a rule with read rights in
   common gets those rights itself (nothing more is exposed), so reading a whole tree is one
   rule. Never above ``${PWD}`` (or another variable's directory), never onto a directory holding
   an object the run created. Write rights are never merged this way.
5. **Protected places** (``/``, ``$HOME``, the system hierarchies and their parents, and the
   sensitive places of :mod:`places`) never get write rights nor widened rights: those are
   refused and listed, and the program will be denied there.
6. **Nothing twice.** Rights a rule above already grants are dropped from the rule below.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

from msgspec import Struct, field

from llsupervise.learn import places
from llsupervise.learn.paths import TemplateError, ancestors, depth, expand, is_beneath
from llsupervise.learn.recording import PathUse, Recording
from llsupervise.rights import LATEST_ABI, NO_FS, AccessFs, AccessNet

Kind = Literal["dir", "file", "missing"]
Part = Literal["static", "supervisor"]
PARTS: tuple[Part, ...] = ("static", "supervisor")

READ_RIGHTS = AccessFs.READ_FILE | AccessFs.READ_DIR | AccessFs.EXECUTE
#: Rights that change the filesystem: never granted on a protected place.
WRITE_RIGHTS = (
    AccessFs.WRITE_FILE
    | AccessFs.REMOVE_DIR
    | AccessFs.REMOVE_FILE
    | AccessFs.MAKE_CHAR
    | AccessFs.MAKE_DIR
    | AccessFs.MAKE_REG
    | AccessFs.MAKE_SOCK
    | AccessFs.MAKE_FIFO
    | AccessFs.MAKE_BLOCK
    | AccessFs.MAKE_SYM
    | AccessFs.REFER
    | AccessFs.TRUNCATE
)

#: Rights a directory takes over from entries that all have them.
COLLAPSIBLE = AccessFs.READ_FILE | AccessFs.READ_DIR

#: Kept for callers that list them: see :mod:`places` for every sensitive place.
HOME_SECRETS = places.HOME_SECRETS
SYSTEM_SECRETS = places.SYSTEM_SECRETS
#: Places no write right and no widened right may land on (nor on their parents).
PROTECTED = ("/", "/etc", "/usr", "/var", "/boot", "/root", "/home", "/srv", "/mnt", "/media",
             "/run", "/opt", "/snap", "/proc", "/sys", "/dev")  # fmt: skip
#: Entries listed in a comment before "and N more".
EXAMPLES = 3
#: A directory of system data gets one rule for its entries when at least this many of them,
#: and at least half of them, were read.
MANY_ENTRIES = 4
#: A process's own /proc entries: named after a pid, so no rule can name the next run's.
_PROC_PID = re.compile(r"/proc/[0-9]+(?:/.*)?")


class FsView(Protocol):
    """What synthesis may know of the filesystem (paths are absolute; symlinks followed)."""

    def kind(self, path: str) -> Kind: ...

    def entries(self, path: str) -> Sequence[str] | None:
        """Names in a directory, None if it cannot be listed."""
        ...


class Context(Struct, frozen=True):
    #: Variable -> absolute, symlink-free directory (PWD, HOME, TMPDIR).
    variables: Mapping[str, str]
    #: Read-only system hierarchies (absolute, symlink-free).
    system_roots: Sequence[str]
    #: Those of ``system_roots`` where programs and libraries live.
    code_roots: Sequence[str]
    fs: FsView
    abi: int = LATEST_ABI

    @property
    def home(self) -> str | None:
        home = self.variables.get("HOME")
        return posixpath.normpath(home) if home and home.startswith("/") else None

    def secrets(self) -> list[str]:
        return places.secret_points(self.home)

    def protected_points(self) -> list[str]:
        """Places that, with every directory above them, never get write or widened rights.

        System hierarchies outside :data:`PROTECTED` (a Python prefix) are protected
        themselves but not their parents: a virtual environment inside a project must not
        make the whole project read-only."""
        points = [*PROTECTED, *self.secrets()]
        if self.home:
            points.append(self.home)
        return points


class LearnedRule(Struct, frozen=True):
    part: Part
    #: What the rule is for: system (a whole hierarchy of programs and libraries), sysdata
    #: (files and directories of system data read), exec, kernel (judged in the caller's
    #: context), read, write, device (ioctl on opened devices).
    kind: str
    paths: tuple[str, ...]
    access: AccessFs
    count: int
    runs: int
    exes: tuple[str, ...]
    #: Accessed paths this rule covers (the rule's own path first when it was accessed).
    examples: tuple[str, ...]
    #: Objects created or removed during the runs that this rule covers.
    transient: tuple[str, ...] = ()
    #: Existing entries the rule covers although no run touched them (a widening's price).
    exposes: tuple[str, ...] = ()
    #: Entries of a directory whose every entry was accessed (collapsed into this rule).
    complete: int = 0
    #: A system data directory given one rule because many of its entries were read:
    #: (entries read, entries in all).
    many: tuple[int, int] | None = None
    #: Why names beneath this directory churn (one rule for them instead of one per name).
    churn: tuple[str, ...] = ()
    #: The run created this object: the rule names a path that need not exist at load.
    created: bool = False

    @property
    def widened(self) -> bool:
        return bool(self.transient or self.complete or self.many or self.churn)


class PortRule(Struct, frozen=True):
    port: int
    access: AccessNet
    count: int
    runs: int
    exes: tuple[str, ...]


class Refusal(Struct, frozen=True):
    """Rights the runs used that the policy does not grant, and why."""

    path: str
    access: AccessFs
    reason: str
    examples: tuple[str, ...]


class Sensitive(Struct, frozen=True):
    path: str
    access: AccessFs
    exes: tuple[str, ...]
    #: The rights a rule of its own grants there (rules are never widened into it).
    granted: AccessFs = NO_FS


class LearnedPolicy(Struct, frozen=True):
    runs: int
    commands: tuple[tuple[str, ...], ...]
    rules: tuple[LearnedRule, ...]
    ports: tuple[PortRule, ...]
    #: Whether the runs recorded network use: only then is the network handled.
    handle_net: bool
    refused: tuple[Refusal, ...]
    sensitive: tuple[Sensitive, ...]
    #: Recorded paths no rule can name here: (template, why).
    unplaced: tuple[tuple[str, str], ...]
    variables: Mapping[str, str]
    abi: int


class _Bucket(Struct):
    """A rule under construction."""

    part: Part
    path: str
    access: AccessFs = NO_FS
    #: Rights recorded on this very path, as opposed to widened onto it.
    own: AccessFs = NO_FS
    count: int = 0
    runs: set[str] = field(default_factory=set)
    exes: set[str] = field(default_factory=set)
    examples: set[str] = field(default_factory=set)
    transient: set[str] = field(default_factory=set)
    complete: int = 0
    many: tuple[int, int] | None = None
    churn: set[str] = field(default_factory=set)
    created: bool = False

    def add(self, path: str, access: AccessFs, use: PathUse, transient: bool) -> None:
        self.access |= access
        if path == self.path:
            self.own |= access
        elif transient:
            self.transient.add(path)
        self.count += use.count
        self.runs |= use.runs
        self.exes |= use.exes
        self.examples.add(path)

    def absorb(self, other: _Bucket, access: AccessFs, *, widening: bool = True) -> None:
        """Take over ``other``'s accesses, granting ``access`` for them; ``widening`` says
        whether that widens this rule (else it only counts accesses it already covers)."""
        self.access |= access
        self.count += other.count
        self.runs |= other.runs
        self.exes |= other.exes
        self.examples |= other.examples
        if widening:
            self.transient |= other.transient
            self.churn |= other.churn


def _expressible(path: str) -> bool:
    """Whether a policy file can name ``path``: TOML is UTF-8, file names need not be."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_PROC_PID_WHY = (
    "a process's own /proc entry: its name changes with every process (only a rule on all of "
    "/proc covers it)"
)


class _PathFacts:
    """What is known of the paths a recording names: their expansion, what exists, the
    system hierarchies and protected or secret places they lie in."""

    def __init__(self, recording: Recording, context: Context) -> None:
        self.ctx = context
        self.fs = context.fs
        every_root = {posixpath.normpath(r) for r in context.system_roots}
        self.protected_roots = every_root
        # A hierarchy inside another one (/usr/bin when /bin leads there) is part of it.
        self.roots = sorted(
            (r for r in every_root if not any(r != o and is_beneath(r, o) for o in every_root)),
            key=len,
            reverse=True,
        )
        code = [posixpath.normpath(r) for r in context.code_roots]
        self.code_roots = {r for r in self.roots if any(is_beneath(c, r) for c in code)}
        self.protected_points = [posixpath.normpath(p) for p in context.protected_points()]
        self.secrets = context.secrets()
        self.home = context.home
        #: Variables' directories: complete directories never collapse above them.
        self.variable_dirs = [
            posixpath.normpath(v) for v in context.variables.values() if v.startswith("/")
        ]
        self.pwd = posixpath.normpath(context.variables.get("PWD") or "/")
        self.unplaced: list[tuple[str, str]] = []
        self.created = self.expand_all(recording.created.keys())
        self.removed = self.expand_all(recording.removed.keys())
        self.transient = self.created | self.removed
        self._kinds: dict[str, Kind] = {}

    def expand(self, template: str) -> str | None:
        try:
            path = posixpath.normpath(expand(template, self.ctx.variables))
        except TemplateError as exc:
            self.unplaced.append((template, str(exc)))
            return None
        if not path.startswith("/"):
            self.unplaced.append((template, "not an absolute path"))
            return None
        return path

    def expand_all(self, templates: Iterable[str]) -> set[str]:
        expanded = (self.expand(t) for t in sorted(templates))
        return {p for p in expanded if p is not None}

    def kind(self, path: str) -> Kind:
        kind = self._kinds.get(path)
        if kind is None:
            kind = self._kinds[path] = self.fs.kind(path)
        return kind

    def anchor(self, path: str) -> str:
        """The nearest object at or above ``path`` that exists now and was neither created
        nor removed during the runs (nor lies beneath something that was)."""
        chain = list(ancestors(path))
        start = 0
        for i, p in enumerate(chain):
            if p in self.transient or not _expressible(p):
                start = i + 1
        for p in chain[start:]:
            if self.kind(p) != "missing":
                return p
        return "/"

    def created_root(self, path: str, anchor: str) -> str | None:
        """The object the run created (and left behind) that ``path`` is or lies in, when it
        gets a rule of its own (module docstring, step 1): a directory, or a file created
        directly in ``${PWD}``, whose parent is the anchor and may be written to."""
        if anchor == path:
            return None
        top = next(p for p in ancestors(path) if posixpath.dirname(p) == anchor)
        if top not in self.created or not _expressible(top) or places.churn(top) is not None:
            return None
        kind = self.kind(top)
        if kind == "missing" or (kind == "file" and anchor != self.pwd):
            return None
        if self.root_of(anchor) is not None or self.protected(anchor) or self.secret(anchor):
            return None  # refused there anyway: step 5
        return top

    def churn(self, path: str, anchor: str) -> tuple[str, str | None]:
        """The anchor for a churning name (its directory, when that existed throughout) and
        why; otherwise ``anchor`` unchanged."""
        found = places.churn(path)
        if found is None:
            return anchor, None
        directory, why = found
        if anchor != path and is_beneath(directory, anchor):
            return anchor, why  # a temporary under ``anchor``: widened there anyway
        if anchor == path and self.anchor(directory) == directory:
            return directory, why
        return anchor, None

    def root_of(self, path: str) -> str | None:
        for root in self.roots:
            if is_beneath(path, root):
                return root
        return None

    def protected(self, path: str) -> bool:
        """``/``, ``$HOME``, ``~/.ssh``, ... and every directory above them; each system
        hierarchy itself."""
        return path in self.protected_roots or any(
            is_beneath(point, path) for point in self.protected_points
        )

    def secret(self, path: str) -> bool:
        """A sensitive place (:mod:`places`); not the code hierarchies llsupervise itself runs
        from (a Python installation may live in /root)."""
        if any(is_beneath(path, c) for c in self.code_roots):
            return False
        return places.is_secret(path, self.home, self.secrets)


class _Synthesis:
    def __init__(self, recording: Recording, context: Context) -> None:
        self.rec = recording
        self.facts = _PathFacts(recording, context)
        self.system: dict[str, _Bucket] = {}
        self.buckets: dict[tuple[Part, str], _Bucket] = {}
        self.refused: list[Refusal] = []
        #: Every recorded path that could be expanded, with its use.
        self.placed: list[tuple[str, PathUse]] = []

    def _bucket(self, part: Part, path: str) -> _Bucket:
        bucket = self.buckets.get((part, path))
        if bucket is None:
            bucket = self.buckets[(part, path)] = _Bucket(part, path)
        return bucket

    # -- steps ------------------------------------------------------------------------------

    def place(self) -> None:
        """Steps 1-3: every recorded access to its anchor, part and system hierarchy."""
        for template, use in sorted(self.rec.paths.items()):
            path = self.facts.expand(template)
            if path is None:
                continue
            if _PROC_PID.fullmatch(path):
                self.facts.unplaced.append((template, _PROC_PID_WHY))
                continue
            self.placed.append((path, use))
            anchor = self.facts.anchor(path)
            created = self.facts.created_root(path, anchor)
            anchor, why = self.facts.churn(path, anchor)
            widened = anchor != path
            static = use.static | (use.access & AccessFs.EXECUTE)
            dynamic = use.access & ~static
            root = self.facts.root_of(anchor)
            if root is not None:
                read = (static | dynamic) & READ_RIGHTS
                if read and root in self.facts.code_roots:
                    system = self.system.get(root)
                    if system is None:
                        system = self.system[root] = _Bucket("static", root)
                    system.add(path, read, use, transient=False)  # wide by design
                elif read:
                    self._system_data(root, anchor, path, read, use, widened)
                static &= ~READ_RIGHTS
                dynamic &= ~READ_RIGHTS
            if static:
                self._bucket("static", anchor).add(path, static, use, widened)
            if dynamic and created is not None:
                bucket = self._bucket("supervisor", created)
                bucket.created = True
                bucket.add(path, dynamic, use, transient=False)
            elif dynamic:
                bucket = self._bucket("supervisor", anchor)
                bucket.add(path, dynamic, use, widened)
                if why and widened:
                    bucket.churn.add(why)
            if static and why and widened:
                self._bucket("static", anchor).churn.add(why)
        executed = any(use.access & AccessFs.EXECUTE for use in self.rec.paths.values())
        for root, bucket in self.system.items():
            if root in self.facts.code_roots and executed:
                bucket.access |= AccessFs.EXECUTE

    def _system_data(
        self, root: str, anchor: str, path: str, read: AccessFs, use: PathUse, widened: bool
    ) -> None:
        """Reads in system data: a static rule on the object read, never on the hierarchy."""
        if anchor == root:
            # Only the listing of the hierarchy itself was recorded there, or objects beneath
            # it that no rule can name: the hierarchy is never opened whole.
            keep = read & AccessFs.READ_DIR if path == root else NO_FS
            if read & ~keep:
                self.refused.append(Refusal(
                    root, read & ~keep, "a system hierarchy is never opened whole: only the "
                    "objects read get rules", (path,),
                ))  # fmt: skip
            read = keep
        if read:
            self._bucket("static", anchor).add(path, read, use, widened)

    def widen_system_data(self) -> None:
        """Step 2's exception: a directory of system data many of whose entries were read, and
        with nothing sensitive in it, gets one read rule instead of a rule per entry."""
        candidates = {
            posixpath.dirname(path)
            for (part, path) in self.buckets
            if part == "static" and self.facts.root_of(path) not in (None, *self.facts.code_roots)
        }
        for directory in sorted(candidates, key=lambda p: (-depth(p), p)):
            if self.facts.root_of(directory) in (None, directory) or self.facts.protected(
                directory
            ):
                continue
            names = self.facts.fs.entries(directory)
            if not names or self.facts.secret(directory):
                continue
            entries = [posixpath.join(directory, n) for n in names]
            if any(self.facts.secret(e) for e in entries):
                continue
            read = [
                b for b in (self.buckets.get(("static", e)) for e in entries)
                if b is not None and b.access & COLLAPSIBLE
            ]  # fmt: skip
            if len(read) < MANY_ENTRIES or 2 * len(read) < len(names):
                continue
            common = NO_FS
            for child in read:
                common |= child.access & COLLAPSIBLE
            whole = self._bucket("static", directory)
            whole.many = (len(read), len(names))
            for child in read:
                whole.absorb(child, common)
                child.access &= ~common
                child.own &= ~common
                if not child.access:
                    del self.buckets[("static", child.path)]

    def collapse(self) -> None:
        """Step 4: a directory whose every entry has a rule gets their common rights."""
        candidates: set[str] = set()
        for _, path in self.buckets:
            for parent in list(ancestors(path))[1:]:
                if self.facts.root_of(parent) is not None or self.facts.protected(parent):
                    break
                if any(v != parent and is_beneath(v, parent) for v in self.facts.variable_dirs):
                    break  # above ${PWD}: a policy must not depend on what is beside it
                candidates.add(parent)
        for directory in sorted(candidates, key=lambda p: (-depth(p), p)):
            if self.facts.secret(directory) or self.facts.anchor(directory) != directory:
                continue
            names = self.facts.fs.entries(directory)
            if not names:
                continue
            for part in PARTS:
                children = [self.buckets.get((part, posixpath.join(directory, n))) for n in names]
                present = [c for c in children if c is not None]
                if len(present) != len(children) or any(c.created for c in present):
                    continue
                # Only reads: write rights stay as narrow as the runs showed.
                common = COLLAPSIBLE
                for child in present:
                    common &= child.access
                if not common:
                    continue
                whole = self._bucket(part, directory)
                whole.complete = len(present)
                for child in present:
                    whole.absorb(child, common)
                    child.access &= ~common
                    child.own &= ~common
                    if not child.access:
                        del self.buckets[(part, child.path)]

    def refuse(self) -> None:
        """Step 5: no write rights and no widened rights on protected places."""
        for key, bucket in list(self.buckets.items()):
            if self.facts.protected(bucket.path):
                keep = bucket.own & ~WRITE_RIGHTS
                reason = "protected place: no write or widened rights are granted here"
            elif self.facts.secret(bucket.path):
                keep = bucket.own
                reason = "inside a place holding secrets: rules are never widened here"
            else:
                continue
            refused = bucket.access & ~keep
            # What is left was recorded on the place itself: the rule is not a widening.
            bucket.transient.clear()
            bucket.churn.clear()
            bucket.complete = 0
            if not refused:
                continue
            examples = tuple(sorted(bucket.examples - {bucket.path})[:EXAMPLES]) or (bucket.path,)
            self.refused.append(Refusal(bucket.path, refused, reason, examples))
            bucket.access = keep
            if not keep:
                del self.buckets[key]

    def prune(self) -> None:
        """Step 6: rights a rule above already grants are dropped (rights on a path add up, and
        a supervisor access is also allowed by the static layer), and so are rules left empty:
        their counts go to the rule that covers them."""
        static = {path: b.access for (part, path), b in self.buckets.items() if part == "static"}
        for root, bucket in self.system.items():
            static[root] = static.get(root, NO_FS) | bucket.access
        for key in sorted(self.buckets, key=lambda k: (depth(k[1]), k)):
            part, path = key
            bucket = self.buckets[key]
            granted = static.get(path, NO_FS) if part == "supervisor" else NO_FS
            cover: _Bucket | None = None
            for above in list(ancestors(path))[1:]:
                same = self.buckets.get((part, above))
                if same is not None:
                    granted |= same.access
                    cover = cover or same
                if part == "supervisor":
                    granted |= static.get(above, NO_FS)
            bucket.access &= ~granted
            bucket.own &= ~granted
            if not bucket.access:
                del self.buckets[key]
                if cover is not None:
                    cover.absorb(bucket, NO_FS, widening=False)

    # -- results ----------------------------------------------------------------------------

    def _exposes(self, bucket: _Bucket) -> tuple[str, ...]:
        """Entries of a widened directory rule that no run touched."""
        if not (bucket.transient or bucket.churn or bucket.many):
            return ()
        names = self.facts.fs.entries(bucket.path) or ()
        touched = {
            p[len(bucket.path) :].lstrip("/").split("/", 1)[0]
            for p in (*bucket.examples, *self.facts.transient)
            if is_beneath(p, bucket.path) and p != bucket.path
        }
        return tuple(posixpath.join(bucket.path, n) for n in sorted(names) if n not in touched)

    def _rule(
        self, bucket: _Bucket, kind: str, paths: tuple[str, ...] | None = None
    ) -> LearnedRule:
        examples = sorted(bucket.examples, key=lambda p: (p != bucket.path, p))
        return LearnedRule(
            part=bucket.part,
            kind=kind,
            paths=paths or (bucket.path,),
            access=bucket.access,
            count=bucket.count,
            runs=len(bucket.runs),
            exes=tuple(sorted(bucket.exes)),
            examples=tuple(examples),
            transient=tuple(sorted(bucket.transient)),
            exposes=self._exposes(bucket),
            complete=bucket.complete,
            many=bucket.many,
            churn=tuple(sorted(bucket.churn)),
            created=bucket.created,
        )

    def rules(self) -> list[LearnedRule]:
        rules = [self._rule(b, "system") for _, b in sorted(self.system.items())]
        for (part, path), bucket in sorted(self.buckets.items()):
            kind = _kind_of(part, bucket.access)
            if part == "static" and self.facts.root_of(path) is not None and kind == "kernel":
                kind = "sysdata"  # read-only system data
            rules.append(self._rule(bucket, kind))
        return rules

    def sensitive(self) -> list[Sensitive]:
        found = []
        for path, use in self.placed:
            if not self.facts.secret(path):
                continue
            granted = NO_FS
            for part in PARTS:
                bucket = self.buckets.get((part, path))
                granted |= bucket.access if bucket is not None else NO_FS
            found.append(Sensitive(path, use.access, tuple(sorted(use.exes)), granted))
        return found


def _kind_of(part: Part, access: AccessFs) -> str:
    if part == "static":
        if access & AccessFs.EXECUTE:
            return "exec"
        return "device" if access == AccessFs.IOCTL_DEV else "kernel"
    if access & WRITE_RIGHTS:
        return "write"
    return "device" if access & AccessFs.IOCTL_DEV and not access & READ_RIGHTS else "read"


def synthesize(recording: Recording, context: Context) -> LearnedPolicy:
    """The least-privilege rules for everything ``recording`` saw (see the module docstring)."""
    s = _Synthesis(recording, context)
    s.place()
    s.widen_system_data()
    s.collapse()
    s.refuse()
    s.prune()
    ports = tuple(
        PortRule(port, use.access, use.count, len(use.runs), tuple(sorted(use.exes)))
        for port, use in sorted(recording.ports.items())
        if use.access
    )
    return LearnedPolicy(
        runs=len(recording.runs),
        commands=tuple(sorted(set(recording.runs.values()))),
        rules=tuple(s.rules()),
        ports=ports,
        handle_net=recording.net_observed,
        refused=tuple(s.refused),
        sensitive=tuple(s.sensitive()),
        unplaced=tuple(sorted(set(s.facts.unplaced))),
        variables=dict(context.variables),
        abi=context.abi,
    )
