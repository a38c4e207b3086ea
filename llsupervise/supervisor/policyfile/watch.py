"""The policy file while a command runs: reloaded on every save, answers written back.

A save is parsed, validated and resolved whole; only then are the supervisor rules, quiet
objects and conditional rules swapped in one step (one commit, and only if the committed
ruleset changes). A file that does not load changes nothing. The static part (top-level
rules, ``[[ruleset]]``, ``abi``) is the running domain and cannot change: an edit of it is
reported as taking effect on the next run, and the supervisor part is applied anyway.

Every reload is one event: ``{"event": "reload", "ok", "generation", ["error"],
["static_changed", "message"]}``. "Always" and "deny quietly" answers are written into the
file (:mod:`llsupervise.supervisor.policyfile.persist`); a write of ours is recognised and not
reloaded, while a user edit it had to merge is.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from llsupervise.errors import LLSuperviseError
from llsupervise.policy.document import Location, PolicyDocument, PolicyError
from llsupervise.policy.loader import PREDEFINED_VARIABLES, parse_policy
from llsupervise.policy.locate import LineIndex
from llsupervise.policy.model import ObjectId, Ruleset
from llsupervise.rights import names, parse_fs
from llsupervise.supervisor.events.decisions import DecisionSource, ModeDecisions
from llsupervise.supervisor.policyfile.kept import KeptAnswer, kept_from_event
from llsupervise.supervisor.rules.binding import could_be_changed
from llsupervise.supervisor.rules.created import CreatedResolver
from llsupervise.supervisor.rules.objects import ResolvedPolicy, resolve
from llsupervise.supervisor.rules.state import RuleState

if TYPE_CHECKING:  # imported where used: a run starts before trio (supervisor.door)
    import trio
    import watchfiles

    from llsupervise.messages import Event, ReloadEvent


class Supervised(Protocol):
    """What the policy file keeps in step with: a running supervisor."""

    policy: ResolvedPolicy
    decisions: DecisionSource
    rules: RuleState
    listeners: list[Callable[[Event], None]]

    @property
    def generation(self) -> int: ...

    def emit(self, event: Event) -> None: ...


#: Milliseconds: group a burst of writes (an editor's save) into one reload: a burst ends
#: after STEP_MS without a change (a save's writes and rename come within a millisecond or
#: two; a reload that still caught a half-written file reports it and is followed by the
#: complete one), and lasts DEBOUNCE_MS at most. The watching thread wakes every STEP_MS,
#: and takes the interpreter lock each time, even with nothing changed: at 5 ms that was
#: 200 times a second, each one able to hold up a serving thread.
DEBOUNCE_MS = 50
STEP_MS = 50
#: Milliseconds the watching thread blocks at most: bounds shutdown, and how often the file
#: is also checked by its status in case a change notification was missed.
RUST_TIMEOUT_MS = 200
#: Seconds into the run before watching starts: a command that ends sooner never pays for
#: the watch (importing watchfiles and starting its thread, ~20 ms), and a save made before
#: is caught by the check the watch starts with.
WATCH_AFTER_S = 0.1

STATIC_CHANGED = (
    "the static part (top-level rules, [[ruleset]], abi) changed: it takes effect on the next "
    "run; the supervisor part was applied"
)


KEPT_BINDING = (
    "this path now leads to another object, and the program may make, remove or move names "
    "in a directory on the way: the rule stays bound to the object it named before"
)


def predefined_env(document: PolicyDocument) -> dict[str, str]:
    """HOME, PWD, TMPDIR, USER as the document was loaded with: a reload expands alike."""
    return {
        name: document.variables[name][0]
        for name in PREDEFINED_VARIABLES
        if document.variables.get(name)
    }


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a policy loads: a large policy allocates enough
    objects to trigger full collections of the whole heap (a third of a 10k-rule reload),
    and what it allocates is acyclic, freed by reference counting anyway."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _signature(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PolicyFile:
    """Keeps a running supervisor and its policy file in step (reload and persistence)."""

    def __init__(self, sup: Supervised, source: str, env: Mapping[str, str] | None = None) -> None:
        self.sup = sup
        #: The name errors use; ``path`` is the real file (a symlinked policy stays a symlink).
        self.source = source
        self.path = os.path.realpath(source)
        self.env = dict(env) if env is not None else predefined_env(sup.policy.document)
        self._started_abi = sup.policy.document.abi
        #: The last text seen whole: applied, rejected, or written by us over an applied one.
        self._known: bytes | None = self._read()
        if self._known is None:
            raise PolicyError(Location(source, None, ""), "cannot read the policy file to watch")
        self._known_applied = True
        self._signature = _signature(self.path)
        #: Answers not yet in the file (written at the next chance; part of every reload).
        self.unpersisted: list[KeptAnswer] = []
        sup.listeners.append(self._on_event)

    # -- watching -------------------------------------------------------------------------

    async def watch(self) -> None:
        """Reload on every change until cancelled (from ``WATCH_AFTER_S`` on)."""
        import trio

        await trio.sleep(WATCH_AFTER_S)
        # The watching thread returns at its next step once ``stop`` is set; cancelling
        # awatch alone would wait for its timeout (it cannot interrupt the thread), and every
        # run would end RUST_TIMEOUT_MS late.
        stop = trio.Event()  # only read (is_set) by the watching thread
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, stop)
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

    async def _watch(self, stop: trio.Event) -> None:
        # Imported here, once the run has started: watchfiles (and anyio, multiprocessing)
        # cost ~20 ms of start-up, and only a run with --policy watches.
        import watchfiles

        directory, name = os.path.split(self.path)

        def only_the_policy(_change: watchfiles.Change, path: str) -> bool:
            return os.path.basename(path) == name

        self.check(force=True)  # a save made before watching started
        watcher = watchfiles.awatch(
            directory,
            watch_filter=only_the_policy,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=stop,
            rust_timeout=RUST_TIMEOUT_MS,
            yield_on_timeout=True,
            recursive=False,
        )
        try:
            async with contextlib.aclosing(watcher):
                async for changes in watcher:
                    self.check(force=bool(changes))
        except OSError as exc:
            # The directory went away or cannot be watched: the command keeps its rules.
            self.sup.emit({"event": "reload", "ok": False, "generation": self.sup.generation,
                           "error": f"{self.source}: stopped watching: {exc}"})  # fmt: skip

    def check(self, force: bool = True) -> ReloadEvent | None:
        """Reload if the file changed; ``force=False`` first compares its status only."""
        signature = _signature(self.path)
        if not force and signature == self._signature:
            return None
        self._signature = signature
        return self.reload()

    # -- reloading ------------------------------------------------------------------------

    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def reload(self) -> ReloadEvent | None:
        """Apply the file's current text; the event, or None if the text was already seen."""
        text = self._read()
        if text is None or text == self._known:
            return None  # a save in progress (renamed away) shows up again when done
        self._known = text
        try:
            with _collector_paused():
                event = self.apply(text.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = text.count(b"\n", 0, exc.start) + 1
            event = {"event": "reload", "ok": False, "generation": self.sup.generation,
                     "error": f"{self.source}:{line}: not valid UTF-8"}  # fmt: skip
        self._known_applied = bool(event["ok"])
        self.sup.emit(event)
        if event["ok"] and self.unpersisted:
            self.flush()
        return event

    def apply(self, text: str) -> ReloadEvent:
        """Load ``text`` and swap its supervisor part in, all or nothing; the reload event."""
        sup = self.sup
        try:
            document = parse_policy(text, self.source, self.env)
            self._check_handled(document, text)
            # Pending created-path rules stay pending, on their anchors (see rules.created).
            created = CreatedResolver(sup.rules.created)
            resolved = resolve(document, sup.rules.table, self._may_rebind, created)
            permanent, quiet = self._with_unpersisted(resolved)
            static_changed = (
                resolved.static != sup.rules.static or document.abi != self._started_abi
            )
            generation = sup.rules.replace(permanent, quiet, resolved.conditional, resolved.created)
        except (LLSuperviseError, OSError) as exc:
            sup.rules.release_objects()  # what the failed load opened
            error = str(exc) if isinstance(exc, PolicyError) else f"{self.source}: {exc}"
            return {"event": "reload", "ok": False, "generation": sup.generation, "error": error}
        sup.policy = resolved
        if isinstance(sup.decisions, ModeDecisions):
            settings = document.supervisor
            sup.decisions.mode = settings.mode
            sup.decisions.default = settings.default
            sup.decisions.prompt_timeout = settings.prompt_timeout
        event: ReloadEvent = {"event": "reload", "ok": True, "generation": generation}
        if resolved.kept_bindings:
            event["kept_bindings"] = [
                {"path": path, "reason": KEPT_BINDING} for path in resolved.kept_bindings
            ]
        if static_changed:
            event |= {"static_changed": True, "message": STATIC_CHANGED}
        return event

    def _may_rebind(self, path: str) -> bool:
        """A supervisor path now leads to another object: follow it only if the program
        cannot have made that change (no directory on the way lets it make, remove or move
        names)."""
        return not could_be_changed(path, self.sup.rules.ever_granted)

    def _check_handled(self, document: PolicyDocument, text: str) -> None:
        """Supervisor rules must use rights the running layer handles: it cannot change."""
        handled_fs, handled_net = (
            self.sup.rules.static.handled_fs,
            self.sup.rules.static.handled_net,
        )
        # Plain ints for the per-rule test: a flag's own operators are slow on 10k rules.
        not_fs, not_net = ~int(handled_fs), ~int(handled_net)
        unhandled: list[tuple[Location, list[str]]] = [
            (e.location, names(e.access & ~handled_fs))
            for e in document.supervisor.path_beneath
            if int(e.access) & not_fs
        ]
        unhandled += [
            (e.location, names(e.access & ~handled_net))
            for e in document.supervisor.net_port
            if int(e.access) & not_net
        ]
        for location, extra in unhandled[:1]:
            key = f"{location.key}.allowed_access"
            raise PolicyError(
                Location(location.file, LineIndex(text).line(key), key),
                f"{', '.join(extra)} not handled by the running layer (its [[ruleset]] is "
                "fixed until the next run): the rule cannot be enforced",
            )

    def _with_unpersisted(self, resolved: ResolvedPolicy) -> tuple[Ruleset, frozenset[ObjectId]]:
        """The file's supervisor rules and quiet objects plus answers not written yet."""
        permanent, quiet = resolved.supervisor, set(resolved.quiet)
        table = self.sup.rules.table
        for kept in self.unpersisted:
            try:
                obj = table.open(kept.path, self._may_rebind)
            except OSError:
                continue  # gone since: nothing to grant or silence there
            if kept.access is None:
                quiet.add(obj)
            else:
                access = parse_fs(kept.access) & self.sup.rules.static.handled_fs
                if access:
                    permanent = permanent.with_fs(obj, access, kept.path)
        return permanent, frozenset(quiet)

    # -- persisting -----------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        kept = kept_from_event(event)
        if kept:
            self.unpersisted.extend(kept)
            self.flush()

    def flush(self) -> None:
        """Write the answers not yet in the file; on failure keep them for the next chance."""
        # The writer loads with the first answer to write: most runs never write.
        from llsupervise.supervisor.policyfile.persist import PersistError, persist

        answers = list(self.unpersisted)
        try:
            before, after = persist(
                self.path, answers, lambda text: parse_policy(text, self.source, self.env)
            )
        except LLSuperviseError as exc:
            ok = False
            error = str(exc) if isinstance(exc, (PolicyError, PersistError)) else repr(exc)
            self.sup.emit({"event": "persist", "ok": ok, "error": error,
                           "rules": [k.event() for k in answers]})  # fmt: skip
            return
        del self.unpersisted[: len(answers)]
        if before.encode() == self._known and self._known_applied:
            # Our own write over what is in force: the running policy already says it.
            self._known = after.encode()
            self._signature = _signature(self.path)
        self.sup.emit({"event": "persist", "ok": True, "rules": [k.event() for k in answers]})
