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

import copy
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeAlias, TypeVar, assert_never

from msgspec import Struct, field
from msgspec.structs import force_setattr

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


class ObjectId(Struct, frozen=True, order=True):
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


def _object_order(item: tuple[ObjectId, object]) -> tuple[int, int]:
    # ObjectId's own order, as plain ints: comparing ObjectIds runs Python code each time.
    return item[0].dev, item[0].ino


def _sorted_fs(items: Iterable[tuple[ObjectId, _V]]) -> Mapping[ObjectId, _V]:
    # Sorted so iteration (and so diff's output) is deterministic; dict equality ignores order.
    return types.MappingProxyType(dict(sorted(items, key=_object_order)))


def _sorted_net(items: Iterable[tuple[int, _V]]) -> Mapping[int, _V]:
    return types.MappingProxyType(dict(sorted(items)))


def _copy(mapping: Mapping[_K, _V]) -> dict[_K, _V]:
    # A read-only view copies its dict, which keeps every key's hash: no key is hashed again.
    return mapping.copy() if isinstance(mapping, types.MappingProxyType) else dict(mapping)


def _as_flags(rules: Mapping[_K, _R], kind: type[_R]) -> list[tuple[_K, _R]]:
    """Rules with rights, each as a ``kind`` flag (a flag already of that kind is kept as is)."""
    return [
        (key, access if type(access) is kind else kind(access))
        for key, access in rules.items()
        if access
    ]


class Ruleset(Struct, frozen=True):
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
    labels: Mapping[ObjectId, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        handled_fs, handled_net = AccessFs(self.handled_fs), AccessNet(self.handled_net)
        fs = _as_flags(self.fs, AccessFs)
        net = _as_flags(self.net, AccessNet)
        # Plain ints find the rare offending rule fast; _require_handled words the error.
        unhandled_fs, unhandled_net = ~int(handled_fs), ~int(handled_net)
        for obj, access in fs:
            if int(access) & unhandled_fs:
                _require_handled("filesystem", self.labels.get(obj, obj), access, handled_fs)
        for port, net_access in net:
            _require_port(port)
            if int(net_access) & unhandled_net:
                _require_handled("network", f"port {port}", net_access, handled_net)
        sorted_fs = _sorted_fs(fs)
        labels = [(obj, label) for obj, label in self.labels.items() if obj in sorted_fs]
        self._set(
            handled_fs,
            handled_net,
            Scope(self.scopes),
            sorted_fs,
            _sorted_net(net),
            _sorted_fs(labels),
        )

    def _set(
        self,
        handled_fs: AccessFs,
        handled_net: AccessNet,
        scopes: Scope,
        fs: Mapping[ObjectId, AccessFs],
        net: Mapping[int, AccessNet],
        labels: Mapping[ObjectId, str],
    ) -> None:
        force_setattr(self, "handled_fs", handled_fs)
        force_setattr(self, "handled_net", handled_net)
        force_setattr(self, "scopes", scopes)
        force_setattr(self, "fs", fs)
        force_setattr(self, "net", net)
        force_setattr(self, "labels", labels)

    @classmethod
    def _normalised(
        cls,
        handled_fs: AccessFs,
        handled_net: AccessNet,
        scopes: Scope,
        fs: Mapping[ObjectId, AccessFs],
        net: Mapping[int, AccessNet],
        labels: Mapping[ObjectId, str],
    ) -> Ruleset:
        """A ruleset from parts that already are what ``__post_init__`` makes, kept as given.

        For operations whose result is valid by construction (a union, unchanged rules under
        the same or wider handled rights): normalising 10,000 rules again costs more than the
        operation. The caller guarantees flags of the right kinds, no rule without rights, no
        unhandled right, valid ports, labels only of ruled objects, and read-only mappings
        sorted by key that nothing else can change.
        """
        # A copy is made without __post_init__ (a Struct has no other way around it).
        ruleset = copy.copy(_UNSET)
        ruleset._set(handled_fs, handled_net, scopes, fs, net, labels)
        return ruleset

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ruleset):
            return NotImplemented
        # Labels are for display only.
        return self.handled == other.handled and self.fs == other.fs and self.net == other.net

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
        """Handled rights, scopes and per-rule rights ORed; an absent rule counts as no rights.

        Each side's rules are within its handled rights, so within the union's: the result
        needs no check, and merging the smaller side into the larger keeps a union of a few
        static rules with thousands of supervisor rules cheap. Labels: ``self``'s first.
        """
        return Ruleset._normalised(
            self.handled_fs | other.handled_fs,
            self.handled_net | other.handled_net,
            self.scopes | other.scopes,
            _merged(self.fs, other.fs, _or, _sorted_fs),
            _merged(self.net, other.net, _or, _sorted_net),
            _merged(self.labels, other.labels, _first, _sorted_fs),
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


#: What Ruleset._normalised copies, then sets every field of.
_UNSET = Ruleset(NO_FS)


def _or(a: _R, b: _R) -> _R:
    return a | b


def _first(a: _V, _b: _V) -> _V:
    return a


def _merged(
    a: Mapping[_K, _V],
    b: Mapping[_K, _V],
    combine: Callable[[_V, _V], _V],
    sort: Callable[[Iterable[tuple[_K, _V]]], Mapping[_K, _V]],
) -> Mapping[_K, _V]:
    """Two sorted read-only mappings merged, ``combine(a's, b's)`` where both have a key.

    A side that is empty gives the other one itself; otherwise the smaller side is merged
    into a copy of the larger, which is sorted again only if it gained keys.
    """
    if not b:
        return a
    if not a:
        return b
    if len(a) >= len(b):
        merged, small = _copy(a), b
        for key, value in small.items():
            have = merged.get(key)
            merged[key] = value if have is None else combine(have, value)
    else:
        merged, small = _copy(b), a
        for key, value in small.items():
            have = merged.get(key)
            merged[key] = value if have is None else combine(value, have)
    if len(merged) == max(len(a), len(b)):
        return types.MappingProxyType(merged)  # no new key: still in order
    return sort(merged.items())


def _intersect_rules(a: Mapping[_K, _R], b: Mapping[_K, _R]) -> dict[_K, _R]:
    # A rule absent from one side has no rights there, so only common keys can survive.
    return {key: a[key] & b[key] for key in a.keys() & b.keys()}


# --- operations as data ---------------------------------------------------------------------------


class AddFs(Struct, frozen=True):
    """Grant ``access`` beneath ``obj``, on top of any rights its rule already has."""

    obj: ObjectId
    access: AccessFs
    label: str | None = None


class IntersectFs(Struct, frozen=True):
    """Reduce ``obj``'s rule to ``existing & access``; a rule left empty is removed."""

    obj: ObjectId
    access: AccessFs


class AddNet(Struct, frozen=True):
    port: int
    access: AccessNet


class IntersectNet(Struct, frozen=True):
    port: int
    access: AccessNet


Op: TypeAlias = AddFs | IntersectFs | AddNet | IntersectNet


def apply(ruleset: Ruleset, ops: Iterable[Op]) -> Ruleset:
    """The ruleset after ``ops``, in order.

    Adding no rights raises ModelError (the kernel answers ENOMSG); intersecting an absent rule is
    a no-op; handled rights never change.
    """
    fs, net, labels = _copy(ruleset.fs), _copy(ruleset.net), _copy(ruleset.labels)
    # Only these rules can differ from ``ruleset``'s, valid ones: only they need checking.
    # A key inserted (not updated) lands last in its dict, which then needs sorting again.
    touched_fs: set[ObjectId] = set()
    touched_net: set[int] = set()
    new_fs = new_net = new_label = False
    for op in ops:
        match op:
            case AddFs():
                new_fs |= op.obj not in fs
                _add(fs, op.obj, op.access)
                touched_fs.add(op.obj)
                if op.label is not None:
                    new_label |= op.obj not in labels
                    labels[op.obj] = op.label
            case IntersectFs():
                if not _intersect(fs, op.obj, op.access):
                    labels.pop(op.obj, None)  # a rule added again later is a new rule
                touched_fs.add(op.obj)
            case AddNet():
                new_net |= op.port not in net
                _add(net, op.port, op.access)
                touched_net.add(op.port)
            case IntersectNet():
                _intersect(net, op.port, op.access)
                touched_net.add(op.port)
            case _:
                assert_never(op)
    if not _valid_changes(ruleset, fs, net, touched_fs, touched_net):
        return ruleset.with_rules(fs, net, labels)  # raises the error the constructor words
    for obj in touched_fs:
        if obj in fs and type(fs[obj]) is not AccessFs:
            fs[obj] = AccessFs(fs[obj])
    for port in touched_net:
        if port in net and type(net[port]) is not AccessNet:
            net[port] = AccessNet(net[port])
    return Ruleset._normalised(
        ruleset.handled_fs,
        ruleset.handled_net,
        ruleset.scopes,
        _sorted_fs(fs.items()) if new_fs else types.MappingProxyType(fs),
        _sorted_net(net.items()) if new_net else types.MappingProxyType(net),
        _sorted_fs(labels.items()) if new_label else types.MappingProxyType(labels),
    )


def _valid_changes(
    ruleset: Ruleset,
    fs: Mapping[ObjectId, AccessFs],
    net: Mapping[int, AccessNet],
    touched_fs: Iterable[ObjectId],
    touched_net: Iterable[int],
) -> bool:
    """Whether the touched rules pass the checks of ``Ruleset``'s constructor."""
    unhandled_fs, unhandled_net = ~int(ruleset.handled_fs), ~int(ruleset.handled_net)
    for obj in touched_fs:
        if obj in fs and int(fs[obj]) & unhandled_fs:
            return False
    for port in touched_net:
        if port in net and (int(net[port]) & unhandled_net or not 0 <= port <= MAX_PORT):
            return False
    return True


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
    for obj in sorted(_changed(current.fs, target.fs), key=_object_key):
        have, want = current.fs.get(obj, NO_FS), target.fs.get(obj, NO_FS)
        if int(have) & ~int(want):
            ops.append(IntersectFs(obj, want))
        if int(want) & ~int(have):
            ops.append(AddFs(obj, want, target.labels.get(obj)))
    for port in sorted(_changed(current.net, target.net)):
        have_net, want_net = current.net.get(port, NO_NET), target.net.get(port, NO_NET)
        if int(have_net) & ~int(want_net):
            ops.append(IntersectNet(port, want_net))
        if int(want_net) & ~int(have_net):
            ops.append(AddNet(port, want_net))
    return ops


def _object_key(obj: ObjectId) -> tuple[int, int]:
    return obj.dev, obj.ino


def _changed(current: Mapping[_K, _R], target: Mapping[_K, _R]) -> list[_K]:
    """Keys whose rights differ (absent counts as none): a reload usually changes few rules."""
    changed = [key for key, have in current.items() if target.get(key) != have]
    changed += [key for key in target if key not in current]
    return changed


def _handles_all(ruleset: Ruleset, other: Ruleset) -> bool:
    """Whether ``ruleset`` handles every right ``other`` handles."""
    return not (
        int(other.handled_fs) & ~int(ruleset.handled_fs)
        or int(other.handled_net) & ~int(ruleset.handled_net)
    )


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

    def apply(self, ops: Iterable[Op]) -> None:
        """Apply ``ops`` to the pending ruleset, all or none (a refused op changes nothing)."""
        self._pending = apply(self._pending, ops)

    def replace(self, target: Ruleset) -> None:
        """Make ``target``'s rules (and labels) pending.

        Only rules are taken: the layer keeps its own handled rights and scopes, whatever
        ``target`` says; a target rule granting a right the layer does not handle raises ModelError.
        """
        committed = self._committed
        if not _handles_all(committed, target):
            self._pending = committed.with_rules(target.fs, target.net, target.labels)
        else:
            # ``target``'s rules fit its handled rights, so these: take them as they are.
            self._pending = Ruleset._normalised(
                committed.handled_fs,
                committed.handled_net,
                committed.scopes,
                target.fs,
                target.net,
                target.labels,
            )

    def commit(self) -> int:
        """Publish the pending ruleset atomically; return the new generation."""
        self._committed = self._pending
        self._generation += 1
        return self._generation

    def discard(self) -> None:
        """Forget pending changes."""
        self._pending = self._committed


# --- layers and evaluation ------------------------------------------------------------------------


class Layer(Struct, frozen=True):
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
