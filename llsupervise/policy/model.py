"""Pure model of Landlock layers with a mutable supervisor ruleset ("mutable domains").

A *domain* is a stack of layers. Each layer has an immutable supervisee ruleset and, when made by a
supervisor, a mutable supervisor ruleset with the same handled rights and scopes. A layer allows an
access if its supervisee ruleset or its *committed* supervisor ruleset allows it; the domain allows
it only if every layer that handles the right does.

Nothing here touches the kernel: it is the reference the supervisor computes with (config reload is
``diff`` + ``commit``) and the oracle the kernel tests compare against. Rules bind to file objects
(``ObjectId``), not to path strings; a path is represented by its *chain*, the accessed object
followed by all its ancestors up to the root.

Deliberately out of scope: ``refer``'s cross-directory checks (a rename or link is judged here per
object, like any other right) and the implicit refusal of reparenting by layers that do not handle
``refer``; the kernel is the judge of those.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias, TypeVar, assert_never

from llsupervise.errors import LLSuperviseError
from llsupervise.rights import NO_FS, NO_NET, NO_SCOPE, AccessFs, AccessNet, Scope, names

__all__ = [
    "AddFs",
    "AddNet",
    "Domain",
    "IntersectFs",
    "IntersectNet",
    "Layer",
    "ModelError",
    "MutableRuleset",
    "ObjectId",
    "Op",
    "Ruleset",
    "apply",
    "denying_layers",
    "diff",
    "fs_allowed",
    "net_allowed",
    "net_denying_layers",
    "scope_allowed",
]

MAX_PORT = 65535


class ModelError(LLSuperviseError):
    """An operation the kernel would refuse (EINVAL/ENOMSG), caught before it gets there."""


@dataclass(frozen=True, order=True)
class ObjectId:
    """Identity of a file object: Landlock rules bind to inodes, not to path strings."""

    dev: int
    ino: int

    def __str__(self) -> str:
        return f"{self.dev}:{self.ino}"


_K = TypeVar("_K", ObjectId, int)
_R = TypeVar("_R", AccessFs, AccessNet)
_V = TypeVar("_V")


def _require_handled(what: str, key: object, access: _R, handled: _R) -> None:
    """The one check that rules only grant handled rights (the kernel answers EINVAL)."""
    extra = access & ~handled
    if extra:
        raise ModelError(
            f"{what} rule on {key} grants {', '.join(names(extra))}, "
            "which the ruleset does not handle"
        )


def _require_port(port: int) -> None:
    if not 0 <= port <= MAX_PORT:
        raise ModelError(f"port {port} is outside 0..{MAX_PORT}")


def _frozen(items: Iterable[tuple[_K, _V]]) -> Mapping[_K, _V]:
    # Sorted so iteration (and so diff's output) is deterministic; dict equality ignores order.
    return types.MappingProxyType(dict(sorted(items)))


@dataclass(frozen=True)
class Ruleset:
    """One Landlock ruleset: handled rights, scopes and rules, normalised and immutable.

    Normalisation drops rules without rights and labels of objects without a rule, and rejects
    rules granting unhandled rights. ``len()`` counts rules: an empty ruleset still denies every
    right it handles. ``labels`` (display paths) are not part of equality.
    """

    handled_fs: AccessFs
    handled_net: AccessNet = NO_NET
    scopes: Scope = NO_SCOPE
    fs: Mapping[ObjectId, AccessFs] = field(default_factory=dict)
    net: Mapping[int, AccessNet] = field(default_factory=dict)
    labels: Mapping[ObjectId, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        handled_fs, handled_net = AccessFs(self.handled_fs), AccessNet(self.handled_net)
        fs = {obj: AccessFs(access) for obj, access in self.fs.items() if access}
        net = {port: AccessNet(access) for port, access in self.net.items() if access}
        for obj, access in fs.items():
            _require_handled("filesystem", self.labels.get(obj, obj), access, handled_fs)
        for port, net_access in net.items():
            _require_port(port)
            _require_handled("network", f"port {port}", net_access, handled_net)
        labels = {obj: label for obj, label in self.labels.items() if obj in fs}
        object.__setattr__(self, "handled_fs", handled_fs)
        object.__setattr__(self, "handled_net", handled_net)
        object.__setattr__(self, "scopes", Scope(self.scopes))
        object.__setattr__(self, "fs", _frozen(fs.items()))
        object.__setattr__(self, "net", _frozen(net.items()))
        object.__setattr__(self, "labels", _frozen(labels.items()))

    def __hash__(self) -> int:
        # The mappings are read-only views, so hash their (sorted) items.
        return hash(
            (
                self.handled_fs,
                self.handled_net,
                self.scopes,
                tuple(self.fs.items()),
                tuple(self.net.items()),
            )
        )

    @classmethod
    def empty(
        cls, handled_fs: AccessFs, handled_net: AccessNet = NO_NET, scopes: Scope = NO_SCOPE
    ) -> Ruleset:
        return cls(handled_fs, handled_net, scopes)

    def __len__(self) -> int:
        return len(self.fs) + len(self.net)

    @property
    def handled(self) -> tuple[AccessFs, AccessNet, Scope]:
        """Handled filesystem and network rights and scopes, for comparing layers."""
        return self.handled_fs, self.handled_net, self.scopes

    def with_rules(
        self,
        fs: Mapping[ObjectId, AccessFs],
        net: Mapping[int, AccessNet],
        labels: Mapping[ObjectId, str] | None = None,
    ) -> Ruleset:
        """These handled rights and scopes with other rules."""
        return Ruleset(self.handled_fs, self.handled_net, self.scopes, fs, net, labels or {})

    def with_fs(self, obj: ObjectId, access: AccessFs, label: str | None = None) -> Ruleset:
        """Add a path_beneath rule; rights on an existing rule add up (landlock_add_rule)."""
        return apply(self, [AddFs(obj, access, label)])

    def with_net(self, port: int, access: AccessNet) -> Ruleset:
        return apply(self, [AddNet(port, access)])

    def union(self, other: Ruleset) -> Ruleset:
        """Handled rights, scopes and per-rule rights ORed; an absent rule counts as no rights."""
        return Ruleset(
            self.handled_fs | other.handled_fs,
            self.handled_net | other.handled_net,
            self.scopes | other.scopes,
            _union_rules(self.fs, other.fs, NO_FS),
            _union_rules(self.net, other.net, NO_NET),
            {**other.labels, **self.labels},
        )

    def intersection(self, other: Ruleset) -> Ruleset:
        """Handled rights, scopes and per-rule rights ANDed; rules left without rights vanish."""
        return Ruleset(
            self.handled_fs & other.handled_fs,
            self.handled_net & other.handled_net,
            self.scopes & other.scopes,
            _intersect_rules(self.fs, other.fs),
            _intersect_rules(self.net, other.net),
            {**other.labels, **self.labels},
        )

    def __or__(self, other: object) -> Ruleset:
        if not isinstance(other, Ruleset):
            return NotImplemented
        return self.union(other)

    def __and__(self, other: object) -> Ruleset:
        if not isinstance(other, Ruleset):
            return NotImplemented
        return self.intersection(other)

    def fs_rights_on(self, chain: Sequence[ObjectId]) -> AccessFs:
        """Rights granted on an object whose chain (itself, then its ancestors) is ``chain``."""
        rights = NO_FS
        for obj in chain:
            rights |= self.fs.get(obj, NO_FS)
        return rights

    def net_rights_on(self, port: int) -> AccessNet:
        return self.net.get(port, NO_NET)


def _union_rules(a: Mapping[_K, _R], b: Mapping[_K, _R], none: _R) -> dict[_K, _R]:
    return {key: a.get(key, none) | b.get(key, none) for key in a.keys() | b.keys()}


def _intersect_rules(a: Mapping[_K, _R], b: Mapping[_K, _R]) -> dict[_K, _R]:
    # A rule absent from one side has no rights there, so only common keys can survive.
    return {key: a[key] & b[key] for key in a.keys() & b.keys()}


# --- operations as data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AddFs:
    """Grant ``access`` beneath ``obj``, on top of any rights its rule already has."""

    obj: ObjectId
    access: AccessFs
    label: str | None = None


@dataclass(frozen=True)
class IntersectFs:
    """Reduce ``obj``'s rule to ``existing & access``; a rule left empty is removed."""

    obj: ObjectId
    access: AccessFs


@dataclass(frozen=True)
class AddNet:
    port: int
    access: AccessNet


@dataclass(frozen=True)
class IntersectNet:
    port: int
    access: AccessNet


Op: TypeAlias = AddFs | IntersectFs | AddNet | IntersectNet


def apply(ruleset: Ruleset, ops: Iterable[Op]) -> Ruleset:
    """The ruleset after ``ops``, in order.

    Adding no rights raises ModelError (the kernel answers ENOMSG); intersecting an absent rule is
    a no-op; handled rights never change.
    """
    fs, net, labels = dict(ruleset.fs), dict(ruleset.net), dict(ruleset.labels)
    for op in ops:
        match op:
            case AddFs():
                _add(fs, op.obj, op.access)
                if op.label is not None:
                    labels[op.obj] = op.label
            case IntersectFs():
                if not _intersect(fs, op.obj, op.access):
                    labels.pop(op.obj, None)  # a rule added again later is a new rule
            case AddNet():
                _add(net, op.port, op.access)
            case IntersectNet():
                _intersect(net, op.port, op.access)
            case _:
                assert_never(op)
    return ruleset.with_rules(fs, net, labels)


def _add(rules: dict[_K, _R], key: _K, access: _R) -> None:
    if not access:
        raise ModelError(f"a rule added on {key} must grant at least one right")
    rules[key] = rules[key] | access if key in rules else access


def _intersect(rules: dict[_K, _R], key: _K, access: _R) -> bool:
    """Intersect ``key``'s rule, removing it if left empty; whether a rule remains."""
    if key in rules:
        rules[key] &= access
        if not rules[key]:
            del rules[key]
    return key in rules


def diff(current: Ruleset, target: Ruleset) -> list[Op]:
    """The fewest rule operations taking ``current``'s rules to ``target``'s.

    Per changed object or port: an Intersect only when rights must go, an Add only when rights
    must come; unchanged rules get nothing. Each op carries the target rights, so the two ops of
    one rule give the same result in either order. Handled rights and scopes are not part of the
    diff: a supervisor layer's are fixed for its life.
    """
    ops: list[Op] = []
    for obj in sorted(current.fs.keys() | target.fs.keys()):
        have, want = current.fs.get(obj, NO_FS), target.fs.get(obj, NO_FS)
        if have & ~want:
            ops.append(IntersectFs(obj, want))
        if want & ~have:
            ops.append(AddFs(obj, want, target.labels.get(obj)))
    for port in sorted(current.net.keys() | target.net.keys()):
        have_net, want_net = current.net.get(port, NO_NET), target.net.get(port, NO_NET)
        if have_net & ~want_net:
            ops.append(IntersectNet(port, want_net))
        if want_net & ~have_net:
            ops.append(AddNet(port, want_net))
    return ops


# --- the supervisor ruleset -----------------------------------------------------------------------


class MutableRuleset:
    """The supervisor ruleset of one layer: pending changes, published by ``commit``.

    Handled rights and scopes are fixed at construction (they are the layer's, shared with the
    supervisee ruleset). Before the first commit the committed ruleset is empty and the generation
    is 0; each commit publishes every pending change at once and adds 1. Evaluation only ever sees
    ``committed``.
    """

    def __init__(
        self, handled_fs: AccessFs, handled_net: AccessNet = NO_NET, scopes: Scope = NO_SCOPE
    ) -> None:
        self._committed = Ruleset.empty(handled_fs, handled_net, scopes)
        self._pending = self._committed
        self._generation = 0

    @classmethod
    def for_layer(cls, supervisee: Ruleset) -> MutableRuleset:
        """An empty supervisor ruleset handling what ``supervisee`` handles."""
        return cls(supervisee.handled_fs, supervisee.handled_net, supervisee.scopes)

    def __repr__(self) -> str:
        return (
            f"MutableRuleset(generation={self._generation}, committed={self._committed!r}, "
            f"pending={self._pending!r})"
        )

    @property
    def handled_fs(self) -> AccessFs:
        return self._committed.handled_fs

    @property
    def handled_net(self) -> AccessNet:
        return self._committed.handled_net

    @property
    def scopes(self) -> Scope:
        return self._committed.scopes

    @property
    def pending(self) -> Ruleset:
        return self._pending

    @property
    def committed(self) -> Ruleset:
        return self._committed

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def has_pending(self) -> bool:
        return self._pending != self._committed

    def pending_ops(self) -> list[Op]:
        """What a commit would publish, as the fewest rule operations."""
        return diff(self._committed, self._pending)

    def apply(self, ops: Iterable[Op]) -> None:
        """Apply ``ops`` to the pending ruleset, all or none (a refused op changes nothing)."""
        self._pending = apply(self._pending, ops)

    def add_fs(self, obj: ObjectId, access: AccessFs, label: str | None = None) -> None:
        self.apply([AddFs(obj, access, label)])

    def add_net(self, port: int, access: AccessNet) -> None:
        self.apply([AddNet(port, access)])

    def intersect_fs(self, obj: ObjectId, access: AccessFs) -> None:
        self.apply([IntersectFs(obj, access)])

    def intersect_net(self, port: int, access: AccessNet) -> None:
        self.apply([IntersectNet(port, access)])

    def replace(self, target: Ruleset) -> None:
        """Make ``target``'s rules (and labels) pending.

        Only rules are taken: the layer keeps its own handled rights and scopes, whatever
        ``target`` says; a target rule granting a right the layer does not handle raises ModelError.
        """
        self._pending = self._committed.with_rules(target.fs, target.net, target.labels)

    def commit(self) -> int:
        """Publish the pending ruleset atomically; return the new generation."""
        self._committed = self._pending
        self._generation += 1
        return self._generation

    def discard(self) -> None:
        """Forget pending changes."""
        self._pending = self._committed


# --- layers and evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer of a domain: a supervisee ruleset, plus a supervisor ruleset if supervised."""

    supervisee: Ruleset
    supervisor: MutableRuleset | None = None

    def __post_init__(self) -> None:
        if (
            self.supervisor is not None
            and self.supervisor.committed.handled != self.supervisee.handled
        ):
            raise ModelError(
                "a layer's supervisor and supervisee rulesets must handle the same rights "
                "and scopes"
            )

    def granting(self) -> Iterator[Ruleset]:
        """The rulesets whose rules count: the supervisee's and the committed supervisor's."""
        yield self.supervisee
        if self.supervisor is not None:
            yield self.supervisor.committed

    def denies_fs(self, chain: Sequence[ObjectId], access: AccessFs) -> bool:
        needed = access & self.supervisee.handled_fs
        granted = NO_FS
        for ruleset in self.granting():
            granted |= ruleset.fs_rights_on(chain)
        return bool(needed & ~granted)

    def denies_net(self, port: int, access: AccessNet) -> bool:
        needed = access & self.supervisee.handled_net
        granted = NO_NET
        for ruleset in self.granting():
            granted |= ruleset.net_rights_on(port)
        return bool(needed & ~granted)


#: Layers in the order they were stacked; a stack of several layers is a nested domain.
Domain: TypeAlias = tuple[Layer, ...]


def denying_layers(domain: Domain, chain: Sequence[ObjectId], access: AccessFs) -> list[int]:
    """Indexes of the layers that deny ``access`` on the object whose chain is ``chain``."""
    return [i for i, layer in enumerate(domain) if layer.denies_fs(chain, access)]


def fs_allowed(domain: Domain, chain: Sequence[ObjectId], access: AccessFs) -> bool:
    """Every requested right is allowed by every layer that handles it."""
    return not denying_layers(domain, chain, access)


def net_denying_layers(domain: Domain, port: int, access: AccessNet) -> list[int]:
    return [i for i, layer in enumerate(domain) if layer.denies_net(port, access)]


def net_allowed(domain: Domain, port: int, access: AccessNet) -> bool:
    return not net_denying_layers(domain, port, access)


def scope_allowed(domain: Domain, scope: Scope, target_in_domain: bool) -> bool:
    """Whether scoped IPC (signal, abstract unix socket) to a target is allowed.

    ``target_in_domain``: the target runs in this domain or one nested in it. A layer scoping a
    requested scope denies it to any other target; scopes have no rules, so supervisor rulesets
    play no part.
    """
    return target_in_domain or not any(scope & layer.supervisee.scopes for layer in domain)
