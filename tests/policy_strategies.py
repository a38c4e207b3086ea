"""Hypothesis strategies for the policy model, shared by every test file that needs rulesets.

Pools are small on purpose: objects, ports and rights collide often, so unions, intersections
and diffs meet shared rules instead of disjoint ones.
"""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from llsupervise.policy.model import (
    AddFs,
    AddNet,
    Domain,
    IntersectFs,
    IntersectNet,
    Layer,
    MutableRuleset,
    ObjectId,
    Op,
    Ruleset,
)
from llsupervise.rights import AccessFs, AccessNet, Scope, net_all, scope_all

#: A few rights are enough to exercise every set relation, and keep collisions frequent.
FS_POOL = (
    AccessFs.EXECUTE
    | AccessFs.WRITE_FILE
    | AccessFs.READ_FILE
    | AccessFs.READ_DIR
    | AccessFs.MAKE_REG
    | AccessFs.TRUNCATE
)
NET_POOL = net_all(7)
SCOPE_POOL = scope_all(7)
PORTS = (22, 80, 443, 8080)


#: Eight objects on two devices; the same inode number on both devices is two objects.
OBJECTS = tuple(ObjectId(dev, ino) for dev in (1, 2) for ino in (1, 2, 3, 4))


def object_ids() -> st.SearchStrategy[ObjectId]:
    return st.sampled_from(OBJECTS)


def ports() -> st.SearchStrategy[int]:
    return st.sampled_from(PORTS)


@functools.cache
def _subsets(pool: int) -> st.SearchStrategy[int]:
    """Any subset of the bits of ``pool``: an integer whose bits pick among the pool's bits."""
    bits = [1 << i for i in range(pool.bit_length()) if pool & (1 << i)]

    def spread(picks: int) -> int:
        return sum(bit for i, bit in enumerate(bits) if picks >> i & 1)

    return st.integers(0, (1 << len(bits)) - 1).map(spread)


@functools.cache
def fs_access(within: AccessFs = FS_POOL) -> st.SearchStrategy[AccessFs]:
    """Any subset of ``within``, including none."""
    return _subsets(within).map(AccessFs)


@functools.cache
def net_access(within: AccessNet = NET_POOL) -> st.SearchStrategy[AccessNet]:
    return _subsets(within).map(AccessNet)


@functools.cache
def scopes(within: Scope = SCOPE_POOL) -> st.SearchStrategy[Scope]:
    return _subsets(within).map(Scope)


def chains() -> st.SearchStrategy[list[ObjectId]]:
    """An accessed object and its ancestors: distinct objects, possibly none at all."""
    return st.lists(object_ids(), unique=True, max_size=4)


def rulesets(
    handled_fs: AccessFs | None = None,
    handled_net: AccessNet | None = None,
    scoped: Scope | None = None,
    max_rules: int = 6,
) -> st.SearchStrategy[Ruleset]:
    """A ruleset; handled rights and scopes are drawn unless given, rules stay within them."""
    if handled_fs is not None and handled_net is not None and scoped is not None:
        return _rulesets_handling(handled_fs, handled_net, scoped, max_rules)
    handled = st.tuples(
        fs_access() if handled_fs is None else st.just(handled_fs),
        net_access() if handled_net is None else st.just(handled_net),
        scopes() if scoped is None else st.just(scoped),
    )
    return handled.flatmap(lambda h: _rulesets_handling(*h, max_rules))


# Cached: building strategies costs more than drawing from them, and the handled sets are few.
@functools.cache
def _rulesets_handling(
    handled_fs: AccessFs, handled_net: AccessNet, scoped: Scope, max_rules: int
) -> st.SearchStrategy[Ruleset]:
    return st.builds(
        _labelled,
        st.just(Ruleset.empty(handled_fs, handled_net, scoped)),
        st.dictionaries(object_ids(), fs_access(handled_fs), max_size=max_rules),
        st.dictionaries(ports(), net_access(handled_net), max_size=max_rules),
    )


def _labelled(handled: Ruleset, fs: dict[ObjectId, AccessFs], net: dict[int, AccessNet]) -> Ruleset:
    labels = {obj: f"/obj/{obj.dev}/{obj.ino}" for obj in fs}
    return handled.with_rules(fs, net, labels)


@st.composite
def ruleset_pairs(draw: st.DrawFn) -> tuple[Ruleset, Ruleset]:
    """Two rulesets with the same handled rights and scopes (as in one supervisor layer)."""
    first = draw(rulesets())
    second = draw(rulesets(first.handled_fs, first.handled_net, first.scopes))
    return first, second


@functools.cache
def ops(handled_fs: AccessFs = FS_POOL, handled_net: AccessNet = NET_POOL) -> st.SearchStrategy[Op]:
    """Rule operations valid for a ruleset with these handled rights (adds grant something)."""
    nonempty_fs = fs_access(handled_fs).filter(bool)
    nonempty_net = net_access(handled_net).filter(bool)
    choices: list[st.SearchStrategy[Op]] = [
        st.builds(IntersectFs, object_ids(), fs_access(handled_fs)),
        st.builds(IntersectNet, ports(), net_access(handled_net)),
    ]
    if handled_fs:
        choices.append(st.builds(AddFs, object_ids(), nonempty_fs))
    if handled_net:
        choices.append(st.builds(AddNet, ports(), nonempty_net))
    return st.one_of(choices)


@functools.cache
def op_lists(
    handled_fs: AccessFs = FS_POOL, handled_net: AccessNet = NET_POOL, max_size: int = 8
) -> st.SearchStrategy[list[Op]]:
    return st.lists(ops(handled_fs, handled_net), max_size=max_size)


@st.composite
def supervisors(draw: st.DrawFn, supervisee: Ruleset) -> MutableRuleset:
    """A supervisor ruleset for ``supervisee``'s layer: some commits, maybe pending changes."""
    supervisor = MutableRuleset.for_layer(supervisee)
    for _ in range(draw(st.integers(0, 2))):
        supervisor.replace(
            draw(rulesets(supervisee.handled_fs, supervisee.handled_net, supervisee.scopes))
        )
        supervisor.commit()
    supervisor.apply(draw(op_lists(supervisee.handled_fs, supervisee.handled_net, max_size=4)))
    return supervisor


@st.composite
def layers(draw: st.DrawFn) -> Layer:
    supervisee = draw(rulesets())
    supervised = draw(st.booleans())
    return Layer(supervisee, draw(supervisors(supervisee)) if supervised else None)


def domains(max_layers: int = 3) -> st.SearchStrategy[Domain]:
    """A stack of layers; the empty domain (not sandboxed) included."""
    return st.lists(layers(), max_size=max_layers).map(tuple)


def many_examples(count: int) -> settings:
    """Settings for loader properties run on many generated files: reproducible (derandomised,
    no example database) and without the limits meant for small inputs."""
    return settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
