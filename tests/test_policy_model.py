"""Example-based tests of the policy model: rulesets, operations, diff, commits and evaluation."""

from __future__ import annotations

import pytest

from llsupervise.errors import LLSuperviseError
from llsupervise.policy.model import (
    AddFs,
    AddNet,
    IntersectFs,
    IntersectNet,
    Layer,
    ModelError,
    MutableRuleset,
    ObjectId,
    Ruleset,
    apply,
    denying_layers,
    diff,
    fs_allowed,
    net_allowed,
    net_denying_layers,
    scope_allowed,
)
from llsupervise.rights import NO_FS, NO_NET, NO_SCOPE, AccessFs, AccessNet, Scope

R = AccessFs.READ_FILE
W = AccessFs.WRITE_FILE
X = AccessFs.EXECUTE
D = AccessFs.READ_DIR
RW = R | W
FS = R | W | X | D
NET = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
BIND, CONNECT = AccessNet.BIND_TCP, AccessNet.CONNECT_TCP

ROOT = ObjectId(1, 2)
HOME = ObjectId(1, 10)
WORK = ObjectId(1, 11)
FILE = ObjectId(1, 12)  # /home/work/file
ETC = ObjectId(1, 20)
OTHER_DEV = ObjectId(2, 11)  # same inode number, other filesystem

#: /home/work/file and its ancestors, as evaluation expects.
FILE_CHAIN = [FILE, WORK, HOME, ROOT]
ETC_CHAIN = [ETC, ROOT]


def test_object_ids_compare_by_device_and_inode() -> None:
    assert ObjectId(1, 11) == WORK
    assert WORK != OTHER_DEV
    assert sorted([OTHER_DEV, FILE, WORK]) == [WORK, FILE, OTHER_DEV]
    assert len({ObjectId(1, 11), WORK}) == 1


# --- Ruleset --------------------------------------------------------------------------------------


def test_empty_ruleset_has_no_rules_but_keeps_handled_rights() -> None:
    empty = Ruleset.empty(FS, NET, Scope.SIGNAL)
    assert len(empty) == 0
    assert (empty.handled_fs, empty.handled_net, empty.scopes) == (FS, NET, Scope.SIGNAL)
    assert empty.handled == (FS, NET, Scope.SIGNAL)
    assert empty.fs_rights_on(FILE_CHAIN) == NO_FS
    assert empty.net_rights_on(443) == NO_NET


def test_rules_without_rights_are_dropped_on_construction() -> None:
    ruleset = Ruleset(FS, NET, fs={WORK: R, ETC: NO_FS}, net={80: NO_NET, 443: CONNECT})
    assert dict(ruleset.fs) == {WORK: R}
    assert dict(ruleset.net) == {443: CONNECT}
    assert len(ruleset) == 2


def test_equality_ignores_insertion_order_and_labels() -> None:
    a = Ruleset(FS, fs={WORK: R, ETC: X}, labels={WORK: "/home/work"})
    b = Ruleset(FS, fs={ETC: X, WORK: R}, labels={WORK: "/renamed", ETC: "/etc"})
    assert a == b
    assert hash(a) == hash(b)
    assert a.labels[WORK] != b.labels[WORK]


def test_equality_includes_handled_rights_and_scopes() -> None:
    assert Ruleset(FS) != Ruleset(RW)
    assert Ruleset(FS, NET) != Ruleset(FS)
    assert Ruleset(FS, scopes=Scope.SIGNAL) != Ruleset(FS)


def test_rulesets_are_immutable_and_do_not_alias_their_input() -> None:
    rules = {WORK: R}
    ruleset = Ruleset(FS, fs=rules)
    rules[ETC] = X
    assert ETC not in ruleset.fs
    with pytest.raises(TypeError):
        ruleset.fs[ETC] = X  # type: ignore[index]


def test_labels_only_kept_for_objects_with_rules() -> None:
    ruleset = Ruleset(FS, fs={WORK: R}, labels={WORK: "/home/work", ETC: "/etc"})
    assert dict(ruleset.labels) == {WORK: "/home/work"}


def test_rule_with_unhandled_right_is_refused() -> None:
    with pytest.raises(ModelError, match="truncate"):
        Ruleset(FS, fs={WORK: R | AccessFs.TRUNCATE})
    with pytest.raises(ModelError, match="bind_tcp"):
        Ruleset(FS, CONNECT, net={80: BIND})
    with pytest.raises(ModelError):
        Ruleset.empty(RW).with_fs(WORK, X)


def test_model_error_is_a_project_error() -> None:
    assert issubclass(ModelError, LLSuperviseError)


def test_port_out_of_range_is_refused() -> None:
    with pytest.raises(ModelError, match="65536"):
        Ruleset.empty(FS, NET).with_net(65536, BIND)
    with pytest.raises(ModelError):
        Ruleset(FS, NET, net={-1: BIND})


def test_with_fs_adds_rights_like_landlock_add_rule() -> None:
    ruleset = Ruleset.empty(FS).with_fs(WORK, R, "/home/work").with_fs(WORK, W)
    assert ruleset.fs[WORK] == RW
    assert ruleset.labels[WORK] == "/home/work"
    assert ruleset.with_fs(WORK, R, "/new/name").labels[WORK] == "/new/name"


def test_with_net_adds_rights() -> None:
    ruleset = Ruleset.empty(FS, NET).with_net(8080, BIND).with_net(8080, CONNECT)
    assert ruleset.net_rights_on(8080) == NET
    assert ruleset.net_rights_on(80) == NO_NET


def test_adding_no_rights_is_refused() -> None:
    with pytest.raises(ModelError, match="at least one right"):
        Ruleset.empty(FS).with_fs(WORK, NO_FS)
    with pytest.raises(ModelError, match="at least one right"):
        Ruleset.empty(FS, NET).with_net(80, NO_NET)


def test_rights_on_a_chain_add_up_from_all_ancestors() -> None:
    ruleset = Ruleset(FS, fs={HOME: R, WORK: W, ETC: X})
    assert ruleset.fs_rights_on(FILE_CHAIN) == RW
    assert ruleset.fs_rights_on([HOME, ROOT]) == R
    assert ruleset.fs_rights_on(ETC_CHAIN) == X
    assert ruleset.fs_rights_on([]) == NO_FS


def test_rule_on_same_inode_of_another_device_does_not_apply() -> None:
    ruleset = Ruleset(FS, fs={OTHER_DEV: RW})
    assert ruleset.fs_rights_on(FILE_CHAIN) == NO_FS


def test_union_ors_handled_rights_scopes_and_rules() -> None:
    a = Ruleset(RW, CONNECT, Scope.SIGNAL, {WORK: R, ETC: R}, {443: CONNECT}, {WORK: "/a"})
    b = Ruleset(R | X, BIND, NO_SCOPE, {WORK: X, HOME: R}, {80: BIND}, {WORK: "/b", HOME: "/h"})
    union = a | b
    assert union == a.union(b)
    assert union.handled == (RW | X, NET, Scope.SIGNAL)
    assert dict(union.fs) == {WORK: R | X, ETC: R, HOME: R}
    assert dict(union.net) == {443: CONNECT, 80: BIND}
    assert union.labels == {WORK: "/a", HOME: "/h"}


def test_intersection_ands_handled_rights_and_rules_and_drops_empty_ones() -> None:
    a = Ruleset(RW | X, NET, Scope.SIGNAL, {WORK: RW, ETC: R, HOME: X}, {443: NET, 80: BIND})
    b = Ruleset(R | X, NET, NO_SCOPE, {WORK: R | X, HOME: R}, {443: CONNECT, 22: BIND})
    meet = a & b
    assert meet == a.intersection(b)
    assert meet.handled == (R | X, NET, NO_SCOPE)
    assert dict(meet.fs) == {WORK: R}  # HOME: X & R is empty, ETC is absent from b
    assert dict(meet.net) == {443: CONNECT}


def test_set_operators_refuse_other_types() -> None:
    with pytest.raises(TypeError):
        _ = Ruleset.empty(FS) | 1
    with pytest.raises(TypeError):
        _ = Ruleset.empty(FS) & "x"


# --- operations -----------------------------------------------------------------------------------


def test_apply_runs_operations_in_order() -> None:
    start = Ruleset(FS, NET, fs={WORK: RW}, net={443: NET})
    result = apply(
        start,
        [
            AddFs(ETC, R, "/etc"),
            IntersectFs(WORK, R | X),
            AddNet(80, BIND),
            IntersectNet(443, CONNECT),
        ],
    )
    assert dict(result.fs) == {WORK: R, ETC: R}
    assert dict(result.net) == {443: CONNECT, 80: BIND}
    assert result.labels == {ETC: "/etc"}
    assert start.fs[WORK] == RW  # rulesets are values: the input is unchanged


def test_intersect_to_zero_removes_the_rule_and_its_label() -> None:
    start = Ruleset(FS, NET, fs={WORK: RW, ETC: R}, net={443: CONNECT}, labels={WORK: "/w"})
    result = apply(start, [IntersectFs(WORK, X), IntersectNet(443, BIND)])
    assert WORK not in result.fs
    assert 443 not in result.net
    assert WORK not in result.labels
    assert len(result) == 1
    readded = apply(result, [AddFs(WORK, R)])
    assert WORK not in readded.labels  # a rule added again is a new rule


def test_intersecting_an_absent_rule_is_a_noop() -> None:
    start = Ruleset(FS, NET, fs={WORK: R})
    assert apply(start, [IntersectFs(ETC, R), IntersectNet(80, BIND)]) == start


def test_apply_never_changes_handled_rights() -> None:
    start = Ruleset(FS, NET, Scope.SIGNAL)
    assert apply(start, [AddFs(WORK, R), AddNet(80, BIND)]).handled == start.handled


# --- diff -----------------------------------------------------------------------------------------


def test_diff_of_equal_rulesets_is_empty() -> None:
    ruleset = Ruleset(FS, NET, fs={WORK: RW}, net={80: BIND})
    assert diff(ruleset, ruleset) == []


def test_diff_emits_only_the_needed_operations() -> None:
    current = Ruleset(FS, NET, fs={WORK: RW, ETC: R, HOME: R}, net={80: BIND, 443: CONNECT})
    target = Ruleset(
        FS,
        NET,
        fs={WORK: R | X, ETC: R, ROOT: X, FILE: RW},
        net={443: NET, 22: CONNECT},
        labels={ROOT: "/"},
    )
    ops = diff(current, target)
    assert set(ops) == {
        IntersectFs(WORK, R | X),  # loses W ...
        AddFs(WORK, R | X),  # ... and gains X
        IntersectFs(HOME, NO_FS),  # gone
        AddFs(ROOT, X, "/"),  # new, with its display label
        AddFs(FILE, RW),
        IntersectNet(80, NO_NET),
        AddNet(443, NET),  # only gains: no intersect
        AddNet(22, CONNECT),
    }
    assert len(ops) == 8  # ETC is unchanged: nothing for it
    assert apply(current, ops) == target


def test_diff_puts_an_objects_intersect_before_its_add() -> None:
    ops = diff(Ruleset(FS, fs={WORK: W}), Ruleset(FS, fs={WORK: R}))
    assert ops == [IntersectFs(WORK, R), AddFs(WORK, R)]


# --- MutableRuleset -------------------------------------------------------------------------------


def test_supervisor_ruleset_starts_empty_at_generation_zero() -> None:
    supervisor = MutableRuleset(FS, NET, Scope.SIGNAL)
    assert supervisor.generation == 0
    assert supervisor.committed == Ruleset.empty(FS, NET, Scope.SIGNAL)
    assert supervisor.pending == supervisor.committed
    assert not supervisor.has_pending
    assert (supervisor.handled_fs, supervisor.handled_net, supervisor.scopes) == (
        FS,
        NET,
        Scope.SIGNAL,
    )


def test_for_layer_takes_the_supervisee_handled_rights() -> None:
    supervisee = Ruleset(RW, CONNECT, Scope.SIGNAL, fs={ETC: R})
    supervisor = MutableRuleset.for_layer(supervisee)
    assert supervisor.committed == Ruleset.empty(RW, CONNECT, Scope.SIGNAL)


def test_changes_stay_pending_until_commit() -> None:
    supervisor = MutableRuleset(FS, NET)
    supervisor.apply([AddFs(WORK, R, "/home/work")])
    supervisor.apply([AddNet(80, BIND)])
    assert supervisor.has_pending
    assert len(supervisor.committed) == 0
    assert diff(supervisor.committed, supervisor.pending) == [
        AddFs(WORK, R, "/home/work"),
        AddNet(80, BIND),
    ]


def test_commit_publishes_all_pending_changes_at_once() -> None:
    supervisor = MutableRuleset(FS, NET)
    supervisor.apply([AddFs(WORK, RW)])
    supervisor.apply([AddFs(ETC, R)])
    supervisor.apply([AddNet(443, CONNECT)])
    pending = supervisor.pending
    assert supervisor.commit() == 1
    assert supervisor.committed == pending
    assert dict(supervisor.committed.fs) == {WORK: RW, ETC: R}
    assert dict(supervisor.committed.net) == {443: CONNECT}
    assert not supervisor.has_pending
    assert diff(supervisor.committed, supervisor.pending) == []


def test_generation_counts_every_commit() -> None:
    supervisor = MutableRuleset(FS)
    supervisor.apply([AddFs(WORK, R)])
    assert supervisor.commit() == 1
    assert supervisor.commit() == 2  # a commit without changes still publishes
    supervisor.apply([IntersectFs(WORK, NO_FS)])
    assert supervisor.commit() == 3
    assert supervisor.generation == 3
    assert len(supervisor.committed) == 0


def test_intersect_methods_act_on_pending_only() -> None:
    supervisor = MutableRuleset(FS, NET)
    supervisor.apply([AddFs(WORK, RW), AddNet(80, NET)])
    supervisor.commit()
    supervisor.apply([IntersectFs(WORK, R)])
    supervisor.apply([IntersectNet(80, NO_NET)])
    assert supervisor.committed.fs[WORK] == RW
    assert supervisor.committed.net[80] == NET
    assert supervisor.pending.fs[WORK] == R
    assert 80 not in supervisor.pending.net
    assert diff(supervisor.committed, supervisor.pending) == [
        IntersectFs(WORK, R),
        IntersectNet(80, NO_NET),
    ]


def test_discard_forgets_pending_changes() -> None:
    supervisor = MutableRuleset(FS)
    supervisor.apply([AddFs(WORK, R)])
    supervisor.commit()
    supervisor.apply([AddFs(ETC, R)])
    supervisor.apply([IntersectFs(WORK, NO_FS)])
    supervisor.discard()
    assert not supervisor.has_pending
    assert dict(supervisor.pending.fs) == {WORK: R}
    assert supervisor.generation == 1


def test_a_refused_operation_leaves_pending_untouched() -> None:
    supervisor = MutableRuleset(RW)
    supervisor.apply([AddFs(WORK, R)])
    before = supervisor.pending
    with pytest.raises(ModelError):
        supervisor.apply([AddFs(ETC, R), AddFs(HOME, X)])  # X is not handled
    assert supervisor.pending == before


def test_replace_takes_target_rules_but_keeps_the_layers_handled_rights() -> None:
    supervisor = MutableRuleset(FS, NET)
    supervisor.apply([AddFs(WORK, RW)])
    supervisor.commit()
    target = Ruleset(R | X, CONNECT, Scope.SIGNAL, {ETC: R}, {443: CONNECT}, {ETC: "/etc"})
    supervisor.replace(target)
    assert supervisor.pending.handled == (FS, NET, NO_SCOPE)
    assert dict(supervisor.pending.fs) == {ETC: R}
    assert dict(supervisor.pending.net) == {443: CONNECT}
    assert supervisor.pending.labels == {ETC: "/etc"}
    assert diff(supervisor.committed, supervisor.pending) == [
        IntersectFs(WORK, NO_FS),
        AddFs(ETC, R, "/etc"),
        AddNet(443, CONNECT),
    ]


def test_replace_refuses_rules_the_layer_does_not_handle() -> None:
    supervisor = MutableRuleset(R)
    with pytest.raises(ModelError):
        supervisor.replace(Ruleset(RW, fs={WORK: W}))
    assert not supervisor.has_pending


def test_label_changes_alone_are_not_pending_changes() -> None:
    supervisor = MutableRuleset(FS)
    supervisor.apply([AddFs(WORK, R, "/old")])
    supervisor.commit()
    supervisor.apply([AddFs(WORK, R, "/new")])
    assert not supervisor.has_pending


# --- layers and evaluation ------------------------------------------------------------------------


def test_layer_requires_matching_handled_rights() -> None:
    with pytest.raises(ModelError, match="same rights"):
        Layer(Ruleset.empty(FS), MutableRuleset(RW))
    with pytest.raises(ModelError):
        Layer(Ruleset.empty(FS, NET), MutableRuleset(FS))
    with pytest.raises(ModelError):
        Layer(Ruleset.empty(FS, scopes=Scope.SIGNAL), MutableRuleset(FS))
    Layer(Ruleset(FS, NET, fs={ETC: R}), MutableRuleset(FS, NET))


def test_empty_domain_allows_everything() -> None:
    assert fs_allowed((), FILE_CHAIN, FS)
    assert net_allowed((), 80, NET)
    assert scope_allowed((), Scope.SIGNAL, target_in_domain=False)


def test_layer_allows_through_supervisee_rules() -> None:
    domain = (Layer(Ruleset(FS, fs={HOME: R, WORK: W})),)
    assert fs_allowed(domain, FILE_CHAIN, RW)
    assert not fs_allowed(domain, FILE_CHAIN, RW | X)
    assert fs_allowed(domain, [HOME, ROOT], R)
    assert not fs_allowed(domain, [HOME, ROOT], W)
    assert not fs_allowed(domain, ETC_CHAIN, R)
    assert fs_allowed(domain, ETC_CHAIN, NO_FS)  # nothing requested, nothing denied


def test_rights_the_layer_does_not_handle_are_allowed() -> None:
    domain = (Layer(Ruleset(RW, fs={WORK: R})),)
    assert fs_allowed(domain, ETC_CHAIN, X | AccessFs.TRUNCATE)
    assert not fs_allowed(domain, ETC_CHAIN, X | W)
    assert net_allowed(domain, 80, NET)  # the layer handles no network right


def test_uncommitted_supervisor_rules_never_count() -> None:
    supervisor = MutableRuleset(FS)
    domain = (Layer(Ruleset.empty(FS), supervisor),)
    supervisor.apply([AddFs(WORK, RW)])
    assert not fs_allowed(domain, FILE_CHAIN, R)
    supervisor.commit()
    assert fs_allowed(domain, FILE_CHAIN, RW)
    supervisor.apply([IntersectFs(WORK, NO_FS)])
    assert fs_allowed(domain, FILE_CHAIN, RW)  # removal pending: still allowed
    supervisor.commit()
    assert not fs_allowed(domain, FILE_CHAIN, R)


def test_supervisee_or_committed_supervisor_rules_allow() -> None:
    supervisor = MutableRuleset(FS)
    supervisor.apply([AddFs(WORK, W)])
    supervisor.commit()
    domain = (Layer(Ruleset(FS, fs={HOME: R}), supervisor),)
    # Neither ruleset grants RW alone: the layer sums them.
    assert fs_allowed(domain, FILE_CHAIN, RW)
    assert not fs_allowed(domain, [HOME, ROOT], W)


def test_commit_is_atomic_for_evaluation() -> None:
    supervisor = MutableRuleset(FS, NET)
    domain = (Layer(Ruleset.empty(FS, NET), supervisor),)
    supervisor.apply([AddFs(WORK, R)])
    supervisor.apply([AddFs(ETC, R)])
    supervisor.apply([AddNet(443, CONNECT)])
    seen_before = (
        fs_allowed(domain, FILE_CHAIN, R),
        fs_allowed(domain, ETC_CHAIN, R),
        net_allowed(domain, 443, CONNECT),
    )
    supervisor.commit()
    seen_after = (
        fs_allowed(domain, FILE_CHAIN, R),
        fs_allowed(domain, ETC_CHAIN, R),
        net_allowed(domain, 443, CONNECT),
    )
    assert seen_before == (False, False, False)
    assert seen_after == (True, True, True)


def test_every_layer_handling_a_right_must_allow_it() -> None:
    outer = Layer(Ruleset(FS, fs={ROOT: R | X}))
    inner = Layer(Ruleset(FS, fs={WORK: RW}))
    domain = (outer, inner)
    assert fs_allowed(domain, FILE_CHAIN, R)
    assert not fs_allowed(domain, FILE_CHAIN, W)  # outer denies
    assert not fs_allowed(domain, FILE_CHAIN, X)  # inner denies
    assert denying_layers(domain, FILE_CHAIN, W) == [0]
    assert denying_layers(domain, FILE_CHAIN, X) == [1]
    assert denying_layers(domain, FILE_CHAIN, W | X) == [0, 1]
    assert denying_layers(domain, FILE_CHAIN, R) == []


def test_right_handled_by_one_layer_only_is_judged_by_that_layer() -> None:
    first = Layer(Ruleset(RW | X, fs={WORK: X}))
    second = Layer(Ruleset(RW, fs={WORK: RW}))  # does not handle X
    domain = (first, second)
    assert fs_allowed(domain, FILE_CHAIN, X)
    assert not fs_allowed(domain, ETC_CHAIN, X)
    assert denying_layers(domain, ETC_CHAIN, X) == [0]
    assert not fs_allowed(domain, FILE_CHAIN, R)  # handled by both, first denies
    assert denying_layers(domain, FILE_CHAIN, R) == [0]


def test_supervisor_of_one_layer_cannot_override_another_layer() -> None:
    supervisor = MutableRuleset(FS)
    supervisor.apply([AddFs(ROOT, FS)])
    supervisor.commit()
    domain = (Layer(Ruleset(FS, fs={ETC: R})), Layer(Ruleset.empty(FS), supervisor))
    assert fs_allowed(domain, ETC_CHAIN, R)
    assert not fs_allowed(domain, FILE_CHAIN, R)
    assert denying_layers(domain, FILE_CHAIN, R) == [0]


def test_one_supervisor_shared_by_several_layers_is_seen_by_all() -> None:
    supervisor = MutableRuleset(FS)
    domain_a = (Layer(Ruleset.empty(FS), supervisor),)
    domain_b = (Layer(Ruleset(FS, fs={ETC: R}), supervisor),)
    supervisor.apply([AddFs(WORK, R)])
    supervisor.commit()
    assert fs_allowed(domain_a, FILE_CHAIN, R)
    assert fs_allowed(domain_b, FILE_CHAIN, R)


def test_net_evaluation() -> None:
    supervisor = MutableRuleset(FS, NET)
    domain = (
        Layer(Ruleset(FS, NET, net={443: CONNECT}), supervisor),
        Layer(Ruleset(FS, CONNECT, net={443: CONNECT, 80: CONNECT})),
    )
    assert net_allowed(domain, 443, CONNECT)
    assert not net_allowed(domain, 80, CONNECT)
    assert net_denying_layers(domain, 80, CONNECT) == [0]
    assert not net_allowed(domain, 8080, BIND)
    supervisor.apply([AddNet(8080, BIND)])
    assert not net_allowed(domain, 8080, BIND)
    supervisor.commit()
    assert net_allowed(domain, 8080, BIND)  # the second layer does not handle bind
    assert net_denying_layers(domain, 8080, NET) == [0, 1]


def test_scope_evaluation() -> None:
    domain = (
        Layer(Ruleset.empty(FS, scopes=Scope.SIGNAL)),
        Layer(Ruleset.empty(FS)),
    )
    assert scope_allowed(domain, Scope.SIGNAL, target_in_domain=True)
    assert not scope_allowed(domain, Scope.SIGNAL, target_in_domain=False)
    assert scope_allowed(domain, Scope.ABSTRACT_UNIX_SOCKET, target_in_domain=False)
    both = Scope.SIGNAL | Scope.ABSTRACT_UNIX_SOCKET
    assert not scope_allowed(domain, both, target_in_domain=False)
    assert scope_allowed(domain, NO_SCOPE, target_in_domain=False)
