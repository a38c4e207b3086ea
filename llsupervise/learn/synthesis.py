"""From a recording to least-privilege rules. Pure: the filesystem is consulted only through
the :class:`FsView` the caller passes in.

How each recorded access becomes a rule:

1. **Anchor.** A rule binds to an object that exists when the policy is loaded. Objects created
   or removed during a run (temporary files, build outputs, ``.git``) do not qualify, nor do
   names a policy file cannot hold (not UTF-8), so their accesses go to the nearest directory
   above them that existed throughout: that directory gets the make/remove rights that created
   them and the rights used on them. This is a widening; the rule lists the existing entries it
   also exposes.
2. **System hierarchies** (``/usr``, ``/etc``, ``/proc``, the Python prefix, ...) get one static
   read-only rule each, with ``execute`` where programs and libraries live as soon as anything
   was executed: ELF and ``#!`` interpreters are executed by the kernel without a trapped call.
   Writes beneath them are never widened: they stay on the object (``/dev/null``).
3. **Static or supervisor.** Exec and what the kernel judges in the caller's own context
   (``/dev/stdout``, ``/proc/self/fd/N``) can only come from the static layer; every other access
   goes into ``[supervisor]``, where it stays revocable while the program runs.
4. **Complete directories.** A directory every entry of which got a rule with read rights in
   common gets those rights itself (nothing more is exposed), so reading a whole tree is one
   rule. Write rights are never merged this way.
5. **Protected places** (``/``, ``$HOME``, ``~/.ssh``, ``~/.gnupg``, ``~/.aws``, the system
   hierarchies and their parents, ...) never get write rights nor widened rights: those are
   refused and listed, and the program will be denied there.
6. **Nothing twice.** Rights a rule above already grants are dropped from the rule below.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

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

#: Beneath ``$HOME``: secrets. Touching them is reported; no rule is ever widened into them.
HOME_SECRETS = (".ssh", ".gnupg", ".aws", ".azure", ".kube", ".docker", ".netrc",
                ".git-credentials", ".pgpass", ".password-store", ".config/gcloud",
                ".local/share/keyrings")  # fmt: skip
SYSTEM_SECRETS = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh")
#: Places no write right and no widened right may land on (nor on their parents).
PROTECTED = ("/", "/etc", "/usr", "/var", "/boot", "/root", "/home", "/srv", "/mnt", "/media",
             "/run", "/opt", "/snap", "/proc", "/sys", "/dev")  # fmt: skip
#: Entries listed in a comment before "and N more".
EXAMPLES = 3


class FsView(Protocol):
    """What synthesis may know of the filesystem (paths are absolute; symlinks followed)."""

    def kind(self, path: str) -> Kind: ...

    def entries(self, path: str) -> Sequence[str] | None:
        """Names in a directory, None if it cannot be listed."""
        ...


@dataclass(frozen=True)
class Context:
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
        home = self.home
        found = [posixpath.join(home, s) for s in HOME_SECRETS] if home else []
        return found + list(SYSTEM_SECRETS)

    def protected_points(self) -> list[str]:
        """Places that, with every directory above them, never get write or widened rights.

        System hierarchies outside :data:`PROTECTED` (a Python prefix) are protected
        themselves but not their parents: a virtual environment inside a project must not
        make the whole project read-only."""
        points = [*PROTECTED, *self.secrets()]
        if self.home:
            points.append(self.home)
        return points


@dataclass(frozen=True)
class Rule:
    part: Part
    #: What the rule is for: system, exec, kernel (judged in the caller's context), read,
    #: write, device (ioctl on opened devices).
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

    @property
    def widened(self) -> bool:
        return bool(self.transient or self.complete)


@dataclass(frozen=True)
class PortRule:
    port: int
    access: AccessNet
    count: int
    runs: int
    exes: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """Rights the runs used that the policy does not grant, and why."""

    path: str
    access: AccessFs
    reason: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Sensitive:
    path: str
    access: AccessFs
    exes: tuple[str, ...]


@dataclass(frozen=True)
class LearnedPolicy:
    runs: int
    commands: tuple[tuple[str, ...], ...]
    rules: tuple[Rule, ...]
    ports: tuple[PortRule, ...]
    #: Whether the runs recorded network use: only then is the network handled.
    handle_net: bool
    refused: tuple[Refusal, ...]
    sensitive: tuple[Sensitive, ...]
    #: Recorded paths no rule can name here: (template, why).
    unplaced: tuple[tuple[str, str], ...]
    variables: Mapping[str, str]
    abi: int


@dataclass
class _Bucket:
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


def _expressible(path: str) -> bool:
    """Whether a policy file can name ``path``: TOML is UTF-8, file names need not be."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Synthesis:
    def __init__(self, recording: Recording, context: Context) -> None:
        self.rec = recording
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
        self.unplaced: list[tuple[str, str]] = []
        self.transient = self._expand_all(recording.created.keys() | recording.removed.keys())
        self.system: dict[str, _Bucket] = {}
        self.buckets: dict[tuple[Part, str], _Bucket] = {}
        self.refused: list[Refusal] = []
        self._kinds: dict[str, Kind] = {}
        #: Every recorded path that could be expanded, with its use.
        self.placed: list[tuple[str, PathUse]] = []

    # -- helpers ----------------------------------------------------------------------------

    def _expand(self, template: str) -> str | None:
        try:
            path = posixpath.normpath(expand(template, self.ctx.variables))
        except TemplateError as exc:
            self.unplaced.append((template, str(exc)))
            return None
        if not path.startswith("/"):
            self.unplaced.append((template, "not an absolute path"))
            return None
        return path

    def _expand_all(self, templates: Iterable[str]) -> set[str]:
        expanded = (self._expand(t) for t in sorted(templates))
        return {p for p in expanded if p is not None}

    def _kind(self, path: str) -> Kind:
        kind = self._kinds.get(path)
        if kind is None:
            kind = self._kinds[path] = self.fs.kind(path)
        return kind

    def _anchor(self, path: str) -> str:
        """The nearest object at or above ``path`` that exists now and was neither created
        nor removed during the runs (nor lies beneath something that was)."""
        chain = list(ancestors(path))
        start = 0
        for i, p in enumerate(chain):
            if p in self.transient or not _expressible(p):
                start = i + 1
        for p in chain[start:]:
            if self._kind(p) != "missing":
                return p
        return "/"

    def _root_of(self, path: str) -> str | None:
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
        return any(is_beneath(path, s) for s in self.secrets)

    def _bucket(self, part: Part, path: str) -> _Bucket:
        bucket = self.buckets.get((part, path))
        if bucket is None:
            bucket = self.buckets[(part, path)] = _Bucket(part, path)
        return bucket

    # -- steps ------------------------------------------------------------------------------

    def place(self) -> None:
        """Steps 1-3: every recorded access to its anchor, part and system hierarchy."""
        for template, use in sorted(self.rec.paths.items()):
            path = self._expand(template)
            if path is None:
                continue
            self.placed.append((path, use))
            anchor = self._anchor(path)
            transient = anchor != path
            static = use.static | (use.access & AccessFs.EXECUTE)
            dynamic = use.access & ~static
            root = self._root_of(anchor)
            if root is not None:
                read = (static | dynamic) & READ_RIGHTS
                if read:
                    system = self.system.get(root)
                    if system is None:
                        system = self.system[root] = _Bucket("static", root)
                    system.add(path, read, use, transient=False)  # wide by design
                static &= ~READ_RIGHTS
                dynamic &= ~READ_RIGHTS
            if static:
                self._bucket("static", anchor).add(path, static, use, transient)
            if dynamic:
                self._bucket("supervisor", anchor).add(path, dynamic, use, transient)
        executed = any(use.access & AccessFs.EXECUTE for use in self.rec.paths.values())
        for root, bucket in self.system.items():
            if root in self.code_roots and executed:
                bucket.access |= AccessFs.EXECUTE

    def collapse(self) -> None:
        """Step 4: a directory whose every entry has a rule gets their common rights."""
        candidates: set[str] = set()
        for _, path in self.buckets:
            for parent in list(ancestors(path))[1:]:
                if self._root_of(parent) is not None or self.protected(parent):
                    break
                candidates.add(parent)
        for directory in sorted(candidates, key=lambda p: (-depth(p), p)):
            if self.secret(directory) or self._anchor(directory) != directory:
                continue
            names = self.fs.entries(directory)
            if not names:
                continue
            for part in PARTS:
                children = [self.buckets.get((part, posixpath.join(directory, n))) for n in names]
                present = [c for c in children if c is not None]
                if len(present) != len(children):
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
            if self.protected(bucket.path):
                keep = bucket.own & ~WRITE_RIGHTS
                reason = "protected place: no write or widened rights are granted here"
            elif self.secret(bucket.path):
                keep = bucket.own
                reason = "inside a place holding secrets: rules are never widened here"
            else:
                continue
            refused = bucket.access & ~keep
            # What is left was recorded on the place itself: the rule is not a widening.
            bucket.transient.clear()
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
        if not bucket.transient:
            return ()
        names = self.fs.entries(bucket.path) or ()
        touched = {
            p[len(bucket.path) :].lstrip("/").split("/", 1)[0]
            for p in (*bucket.examples, *self.transient)
            if is_beneath(p, bucket.path) and p != bucket.path
        }
        return tuple(posixpath.join(bucket.path, n) for n in sorted(names) if n not in touched)

    def _rule(self, bucket: _Bucket, kind: str, paths: tuple[str, ...] | None = None) -> Rule:
        examples = sorted(bucket.examples, key=lambda p: (p != bucket.path, p))
        return Rule(
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
        )

    def rules(self) -> list[Rule]:
        rules = [self._rule(b, "system") for _, b in sorted(self.system.items())]
        for (part, _), bucket in sorted(self.buckets.items()):
            rules.append(self._rule(bucket, _kind_of(part, bucket.access)))
        return rules

    def sensitive(self) -> list[Sensitive]:
        return [
            Sensitive(path, use.access, tuple(sorted(use.exes)))
            for path, use in self.placed
            if self.secret(path)
        ]


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
        unplaced=tuple(sorted(set(s.unplaced))),
        variables=dict(context.variables),
        abi=context.abi,
    )
