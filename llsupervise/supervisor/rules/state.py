"""The supervisor layer's rule state, and the one way it changes: ``replace`` + ``commit``.

The committed supervisor ruleset is always permanent ∪ live temporaries. Permanent rules come
from the policy file and "always" answers; temporaries from "for a while" answers. Quiet objects
and conditional rules sit beside them and are swapped with them on reload. Each commit makes a
new generation's broker first, so a commit that cannot be served is not made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec import Struct

from llsupervise.policy.conditions import ConditionalRule
from llsupervise.policy.model import MutableRuleset, ObjectId, Ruleset
from llsupervise.rights import NO_FS, NO_NET, AccessFs, AccessNet
from llsupervise.supervisor.engine.generations import BrokerSlot
from llsupervise.supervisor.perform.broker import Broker, kernel_ruleset
from llsupervise.supervisor.rules.created import CreatedIndex, PendingCreation
from llsupervise.supervisor.rules.objects import ObjectTable, ResolvedPolicy

if TYPE_CHECKING:  # imported where used: a run starts before trio (supervisor.door)
    import trio


class Temporary(Struct):
    """A grant "for a while": a file rule (``obj``) or a port rule (``port``)."""

    deadline: float
    obj: ObjectId | None = None
    access: AccessFs = NO_FS
    port: int | None = None
    net_access: AccessNet = NO_NET


class RuleState:
    """Static rules (fixed for the run), permanent and temporary supervisor rules, quiet
    objects and conditional rules; and the broker slot serving the committed generation."""

    def __init__(
        self,
        policy: ResolvedPolicy,
        table: ObjectTable,
        on_commit: Callable[[int, Ruleset], None],
    ) -> None:
        self.table = table
        self.static = policy.static
        self.permanent = policy.supervisor
        self.quiet = policy.quiet
        self.conditional: tuple[ConditionalRule, ...] = policy.conditional
        self.created: tuple[PendingCreation, ...] = ()
        #: What the serving threads look pending created-path rules up by (swapped whole).
        self.created_index = CreatedIndex.of(())
        self._set_created(policy.created)
        self.mutable = MutableRuleset.for_layer(policy.static)
        #: Called after each commit with the generation and the committed supervisor rules.
        self.on_commit = on_commit
        self._temporaries: dict[int, Temporary] = {}
        self._next_temporary = 0
        self.slot: BrokerSlot | None = None
        #: Every right the program has held during the run: static, each committed
        #: generation, each allow-once grant. What it may have changed is judged by this,
        #: not by what is in force now (a grant since withdrawn still made its changes).
        self.ever_granted = policy.static
        self.commit()

    @property
    def generation(self) -> int:
        return self.mutable.generation

    @property
    def in_force(self) -> Ruleset:
        """What the kernel judges requests by now: static ∪ committed supervisor rules."""
        return self.static | self.mutable.committed

    def _target(self) -> Ruleset:
        target = self.permanent
        for temp in self._temporaries.values():
            if temp.obj is not None:
                target = target.with_fs(temp.obj, temp.access)
            if temp.port is not None:
                target = target.with_net(temp.port, temp.net_access)
        return target

    def commit(self) -> int:
        """Publish permanent ∪ temporaries atomically; the next request sees it.

        The new generation's broker is made before the commit: if that fails, the committed
        rules and the serving broker are as they were (the caller restores its own state)."""
        self.mutable.replace(self._target())
        try:
            broker = Broker(
                kernel_ruleset(self.static | self.mutable.pending, self.table),
                f"broker-g{self.mutable.generation + 1}",
            )  # fmt: skip
        except BaseException:
            self.mutable.discard()
            raise
        generation = self.mutable.commit()
        self.ever_granted = self.ever_granted | self.mutable.committed
        if self.slot is None:
            self.slot = BrokerSlot(broker, generation)
        else:
            self.slot.swap(broker, generation)
        self.release_objects()
        self.on_commit(generation, self.mutable.committed)
        return generation

    def _set_created(self, created: tuple[PendingCreation, ...]) -> None:
        self.created = created
        self.created_index = CreatedIndex.of(created)

    def bind_created(self, rule: PendingCreation, obj: ObjectId, label: str) -> int:
        """The object ``rule`` waited for was created: make it a permanent rule, committed
        now; return the generation. On error nothing changed."""
        previous = (self.permanent, self.created)
        self.permanent = self.permanent.with_fs(obj, rule.access, label)
        self._set_created(tuple(r for r in self.created if r is not rule))
        try:
            return self.commit()
        except BaseException:
            self.permanent = previous[0]
            self._set_created(previous[1])
            raise

    def reanchor_created(self, rule: PendingCreation, anchor: ObjectId) -> PendingCreation:
        """The first of ``rule``'s missing names was created as a directory: the rule now
        waits for the next name in it."""
        moved = PendingCreation(rule.path, anchor, rule.names[1:], rule.access, rule.location)
        self._set_created(tuple(moved if r is rule else r for r in self.created))
        self.release_objects()
        return moved

    def note_granted(self, obj: ObjectId, access: AccessFs) -> None:
        """A grant made outside the committed rules (allow once, a conditional rule)."""
        self.ever_granted = self.ever_granted.with_fs(obj, access)

    def release_objects(self) -> None:
        """Close the descriptors of objects no rule refers to any more."""
        self.table.release(
            [*self.static.fs, *self.permanent.fs, *self.quiet,
             *(rule.obj for rule in self.conditional),
             *(rule.anchor for rule in self.created),
             *(t.obj for t in self._temporaries.values() if t.obj is not None)]
        )  # fmt: skip

    def replace(
        self,
        rules: Ruleset,
        quiet: frozenset[ObjectId] | None = None,
        conditional: tuple[ConditionalRule, ...] | None = None,
        created: tuple[PendingCreation, ...] | None = None,
    ) -> int:
        """Make ``rules`` the permanent supervisor rules, and swap the quiet objects and
        conditional rules when given, in one step (a reload or an answer); return the
        generation. Commits once, and only if the committed ruleset changes. On error
        nothing changed."""
        previous = (self.permanent, self.quiet, self.conditional)
        previous_created = self.created
        self.permanent = rules
        self.quiet = self.quiet if quiet is None else quiet
        self.conditional = self.conditional if conditional is None else conditional
        if created is not None:
            self._set_created(created)
        try:
            target, committed = self._target(), self.mutable.committed
            if target.fs != committed.fs or target.net != committed.net:
                return self.commit()
            self.release_objects()
            return self.generation
        except BaseException:
            self.permanent, self.quiet, self.conditional = previous
            self._set_created(previous_created)
            raise

    def grant_temporarily(
        self, temporary: Temporary, seconds: float, nursery: trio.Nursery
    ) -> None:
        """Commit ``temporary`` now and withdraw it (another commit) after ``seconds``."""
        key = self._next_temporary
        self._next_temporary += 1
        self._temporaries[key] = temporary
        try:
            self.commit()
        except BaseException:
            del self._temporaries[key]
            raise
        nursery.start_soon(self._expire, key, seconds)

    async def _expire(self, key: int, seconds: float) -> None:
        import trio

        await trio.sleep(seconds)
        del self._temporaries[key]
        self.commit()

    def close(self) -> None:
        if self.slot is not None:
            self.slot.broker.close()
