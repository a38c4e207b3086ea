"""Property tests of the policy model: lattice laws, diff, commits and an independent evaluator."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_strategies import (
    FS_POOL,
    NET_POOL,
    chains,
    domains,
    fs_access,
    net_access,
    object_ids,
    op_lists,
    ports,
    ruleset_pairs,
    rulesets,
)

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
    apply,
    denying_layers,
    diff,
    fs_allowed,
    net_allowed,
    net_denying_layers,
)
from llsupervise.rights import NO_FS, AccessFs, AccessNet

# Enough to find collisions in the small pools while keeping the file at a few seconds.
PROPERTY = settings(max_examples=100, deadline=None)


def rules_of(ruleset: Ruleset) -> tuple[dict[ObjectId, AccessFs], dict[int, AccessNet]]:
    return dict(ruleset.fs), dict(ruleset.net)


# --- union and intersection form a lattice -------------------------------------------------------


@PROPERTY
@given(rulesets(), rulesets())
def test_union_and_intersection_are_commutative(a: Ruleset, b: Ruleset) -> None:
    assert a | b == b | a
    assert a & b == b & a


@PROPERTY
@given(rulesets(), rulesets(), rulesets())
def test_union_and_intersection_are_associative(a: Ruleset, b: Ruleset, c: Ruleset) -> None:
    assert (a | b) | c == a | (b | c)
    assert (a & b) & c == a & (b & c)


@PROPERTY
@given(rulesets())
def test_union_and_intersection_are_idempotent(a: Ruleset) -> None:
    assert a | a == a
    assert a & a == a


@PROPERTY
@given(rulesets(), rulesets())
def test_absorption(a: Ruleset, b: Ruleset) -> None:
    assert a | (a & b) == a
    assert a & (a | b) == a


@PROPERTY
@given(rulesets(), rulesets(), chains())
def test_union_grants_what_either_side_grants(
    a: Ruleset, b: Ruleset, chain: list[ObjectId]
) -> None:
    assert (a | b).fs_rights_on(chain) == a.fs_rights_on(chain) | b.fs_rights_on(chain)


@PROPERTY
@given(rulesets(), rulesets(), chains())
def test_intersection_grants_no_more_than_both_sides(
    a: Ruleset, b: Ruleset, chain: list[ObjectId]
) -> None:
    granted = (a & b).fs_rights_on(chain)
    assert granted & ~(a.fs_rights_on(chain) & b.fs_rights_on(chain)) == NO_FS


@PROPERTY
@given(rulesets(), rulesets())
def test_set_operations_keep_only_rules_with_rights(a: Ruleset, b: Ruleset) -> None:
    for ruleset in (a | b, a & b):
        assert all(ruleset.fs.values())
        assert all(ruleset.net.values())


# --- operations and diff -------------------------------------------------------------------------


@PROPERTY
@given(ruleset_pairs())
def test_apply_diff_reaches_the_target(pair: tuple[Ruleset, Ruleset]) -> None:
    current, target = pair
    assert rules_of(apply(current, diff(current, target))) == rules_of(target)
    assert apply(current, diff(current, target)) == target


@PROPERTY
@given(ruleset_pairs())
def test_diff_ops_of_one_rule_commute(pair: tuple[Ruleset, Ruleset]) -> None:
    current, target = pair
    assert apply(current, reversed(diff(current, target))) == target


@PROPERTY
@given(rulesets())
def test_diff_with_itself_is_empty(a: Ruleset) -> None:
    assert diff(a, a) == []


def _key(op: Op) -> tuple[str, object]:
    match op:
        case AddFs(obj) | IntersectFs(obj):
            return "fs", obj
        case AddNet(port) | IntersectNet(port):
            return "net", port
    raise AssertionError(op)


def flat_rules(ruleset: Ruleset) -> dict[tuple[str, object], int]:
    """Filesystem and network rules in one mapping keyed like ``_key``."""
    return {("fs", obj): int(access) for obj, access in ruleset.fs.items()} | {
        ("net", port): int(access) for port, access in ruleset.net.items()
    }


@PROPERTY
@given(ruleset_pairs())
def test_diff_is_minimal(pair: tuple[Ruleset, Ruleset]) -> None:
    current, target = pair
    have, want = flat_rules(current), flat_rules(target)
    ops_ = diff(current, target)
    kinds = [(_key(op), isinstance(op, IntersectFs | IntersectNet)) for op in ops_]
    assert len(kinds) == len(set(kinds)), "more than one intersect or add for a rule"
    for key, is_intersect in kinds:
        assert have.get(key, 0) != want.get(key, 0), f"op for unchanged rule {key}"
        if is_intersect:
            assert have.get(key, 0) & ~want.get(key, 0), "intersect without rights to remove"
        else:
            assert want.get(key, 0) & ~have.get(key, 0), "add without rights to add"


@PROPERTY
@given(rulesets(), object_ids())
def test_intersect_to_zero_removes_only_that_rule(a: Ruleset, obj: ObjectId) -> None:
    result = apply(a, [IntersectFs(obj, NO_FS)])
    assert obj not in result.fs
    assert {k: v for k, v in a.fs.items() if k != obj} == dict(result.fs)
    assert result.net == a.net


@PROPERTY
@given(rulesets(handled_fs=FS_POOL), object_ids(), fs_access(), fs_access())
def test_intersect_keeps_common_rights(
    a: Ruleset, obj: ObjectId, add: AccessFs, keep: AccessFs
) -> None:
    start = a.with_fs(obj, add) if add else a
    result = apply(start, [IntersectFs(obj, keep)])
    assert result.fs.get(obj, NO_FS) == start.fs.get(obj, NO_FS) & keep


@PROPERTY
@given(rulesets(handled_fs=FS_POOL, handled_net=NET_POOL), op_lists())
def test_apply_matches_a_per_bit_reference(ruleset: Ruleset, ops_: list[Op]) -> None:
    # Reference: rules as a set of single-bit grants, updated by set algebra.
    grants = bit_grants(ruleset)
    for op in ops_:
        kind, key = _key(op)
        bits = {int(b) for b in (AccessFs if kind == "fs" else AccessNet) if b & op.access}
        if isinstance(op, AddFs | AddNet):
            grants |= {(kind, key, b) for b in bits}
        else:
            grants -= {g for g in grants if g[:2] == (kind, key) and g[2] not in bits}
    assert bit_grants(apply(ruleset, ops_)) == grants


def bit_grants(ruleset: Ruleset) -> set[tuple[str, object, int]]:
    grants: set[tuple[str, object, int]] = set()
    grants |= {("fs", k, int(b)) for k, v in ruleset.fs.items() for b in AccessFs if b & v}
    grants |= {("net", k, int(b)) for k, v in ruleset.net.items() for b in AccessNet if b & v}
    return grants


# --- the supervisor ruleset ----------------------------------------------------------------------


@PROPERTY
@given(ruleset_pairs(), st.data())
def test_pending_ops_publish_exactly_the_pending_ruleset(
    pair: tuple[Ruleset, Ruleset], data: st.DataObject
) -> None:
    first, second = pair
    supervisor = MutableRuleset.for_layer(first)
    supervisor.replace(first)
    supervisor.commit()
    supervisor.replace(second)
    supervisor.apply(data.draw(op_lists(first.handled_fs, first.handled_net)))
    pending = supervisor.pending
    assert apply(supervisor.committed, diff(supervisor.committed, supervisor.pending)) == pending
    assert supervisor.has_pending == (pending != supervisor.committed)
    generation = supervisor.generation
    assert supervisor.commit() == generation + 1
    assert supervisor.committed == pending
    assert not supervisor.has_pending


# --- evaluation ----------------------------------------------------------------------------------


def _granting(domain: Domain, index: int) -> list[Ruleset]:
    layer = domain[index]
    return [layer.supervisee] + ([layer.supervisor.committed] if layer.supervisor else [])


def reference_denials(
    domain: Domain, chain: Sequence[ObjectId], access: AccessFs
) -> set[tuple[int, AccessFs]]:
    """(layer, right) pairs denied, checking one right on one object of one ruleset at a time."""
    return {
        (index, right)
        for index, layer in enumerate(domain)
        for right in AccessFs
        if right & access and right & layer.supervisee.handled_fs
        if not any(
            right & ruleset.fs[obj]
            for ruleset in _granting(domain, index)
            for obj in chain
            if obj in ruleset.fs
        )
    }


@PROPERTY
@given(domains(), chains(), fs_access())
def test_fs_allowed_matches_per_right_per_layer_definition(
    domain: Domain, chain: list[ObjectId], access: AccessFs
) -> None:
    denials = reference_denials(domain, chain, access)
    assert fs_allowed(domain, chain, access) == (not denials)
    assert denying_layers(domain, chain, access) == sorted({index for index, _ in denials})


@PROPERTY
@given(domains(), ports(), net_access())
def test_net_allowed_matches_per_right_per_layer_definition(
    domain: Domain, port: int, access: AccessNet
) -> None:
    denials = {
        (index, right)
        for index, layer in enumerate(domain)
        for right in AccessNet
        if right & access and right & layer.supervisee.handled_net
        if not any(right & ruleset.net.get(port, 0) for ruleset in _granting(domain, index))
    }
    assert net_allowed(domain, port, access) == (not denials)
    assert net_denying_layers(domain, port, access) == sorted({index for index, _ in denials})


@PROPERTY
@given(domains(), chains(), fs_access(), st.data())
def test_uncommitted_operations_never_change_evaluation(
    domain: Domain, chain: list[ObjectId], access: AccessFs, data: st.DataObject
) -> None:
    before = fs_allowed(domain, chain, access), denying_layers(domain, chain, access)
    for layer in domain:
        if layer.supervisor is not None:
            supervisor = layer.supervisor
            supervisor.apply(data.draw(op_lists(supervisor.handled_fs, supervisor.handled_net)))
    assert (fs_allowed(domain, chain, access), denying_layers(domain, chain, access)) == before


@PROPERTY
@given(domains(), chains(), fs_access())
def test_committing_equals_moving_rules_into_the_supervisee(
    domain: Domain, chain: list[ObjectId], access: AccessFs
) -> None:
    for layer in domain:
        if layer.supervisor is not None:
            layer.supervisor.commit()
    flattened = tuple(
        Layer(
            layer.supervisee | layer.supervisor.committed if layer.supervisor else layer.supervisee
        )
        for layer in domain
    )
    assert fs_allowed(domain, chain, access) == fs_allowed(flattened, chain, access)
