"""Creations that bind a pending created-path rule (see :mod:`..rules.created`).

In a serving thread: a creation (``mkdir``, ``mknod``, ``open`` with ``O_CREAT``) whose last
name a pending rule waits for is performed in the directory object its path's directory part
leads to, opened once (:func:`anchored`); if that object is the rule's anchor, the creation is
made there under that name, and the new object is opened at once (O_PATH). The notification
stays unanswered and goes to trio (:class:`CreatedBinder`), which verifies the object is the
new one, binds the rule to it and commits, then replies: the program's next call runs under
the new generation.

An open's file is made by ``mknod``: it creates or fails, and needs only make_reg, where the
old generation may well refuse to open the new file. It is opened when the reply is sent,
under the generation then serving (the rule's, if it was bound).

From the creation to that commit, moves (rename, link) wait (:class:`MoveGate`): the object
is checked empty in trio, but the serving thread goes on serving the program's other threads
under the old generation, where nothing keeps a file from being moved or linked into the new
directory before the rule on it is committed (after it, Landlock's refer check does).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec import Struct
from msgspec.structs import replace

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError
from llsupervise.libc import AT_FDCWD, openat2
from llsupervise.seccomp import Listener, Notification, NotificationGone, SeccompError
from llsupervise.supervisor.door import Door
from llsupervise.supervisor.engine.pending import reply
from llsupervise.supervisor.engine.requests import FsRequest, split_last
from llsupervise.supervisor.perform.broker import Broker
from llsupervise.supervisor.perform.credentials import Credentials, CredentialsError, acting_as
from llsupervise.supervisor.perform.operations import Target
from llsupervise.supervisor.perform.stalls import waiting_on_purpose
from llsupervise.supervisor.rules.created import (
    CreatedIndex,
    PendingCreation,
    why_not_new,
)
from llsupervise.supervisor.rules.objects import object_id
from llsupervise.supervisor.rules.state import RuleState

if TYPE_CHECKING:
    from llsupervise.messages import CreatedPathEvent, Event

_RESOLVE_NO_MAGICLINKS = 0x02
_CREATING_OPS = ("mkdir", "mknod", "open")
NO_LONGER_PENDING = "the rule no longer waits for this name (reloaded, or bound already)"
#: Refused bindings remembered so as to be told once (reasons are a few fixed texts).
_REFUSALS_TOLD = 4096
#: What can put an object that existed before into a directory.
MOVES = ("rename", "link")


def names_pending(request: FsRequest, index: CreatedIndex) -> bool:
    """Whether ``request`` creates a name some pending rule waits for (a cheap first look)."""
    if not index.names or request.op not in _CREATING_OPS:
        return False
    if request.op == "open" and request.flags & (os.O_CREAT | os.O_DIRECTORY) != os.O_CREAT:
        return False  # no creation, or one the kernel refuses (O_CREAT | O_DIRECTORY)
    return split_last(request.path)[1].rstrip(b"/") in index.names


class MoveGate:
    """Holds moves back while creations are being bound, so none lands in a new directory
    between its emptiness check and the commit of its rule.

    A serving thread calls :meth:`begin` when it hands a creation over, and waits in
    :meth:`wait` before performing a move; trio calls :meth:`end` once the creation is
    answered. Any commit meanwhile (the binding's own, or an answer's) swaps brokers before
    the old generation's serving thread is let go and joined: :meth:`swapped`, called first
    (the broker slot's first ``on_swap`` callback), hands the waiting moves the new
    generation's broker, which performs them under the rules just committed.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._binding = 0
        #: The newest generation swapped in, and its broker (alive until the next swap,
        #: which comes only after every older serving thread has been joined).
        self._newest: tuple[Broker, int] | None = None

    def begin(self) -> None:
        with self._changed:
            self._binding += 1

    def end(self) -> None:
        with self._changed:
            self._binding -= 1
            self._changed.notify_all()

    def swapped(self, broker: Broker, generation: int) -> None:
        with self._changed:
            self._newest = (broker, generation)
            self._changed.notify_all()

    def wait(self, generation: int) -> Broker | None:
        """Before a move served in ``generation``: None to perform it here, or a newer
        generation's broker to perform it with."""
        with waiting_on_purpose(), self._changed:
            while self._binding and not self._newer_than(generation):
                self._changed.wait()
            return self._newest[0] if self._newest and self._newer_than(generation) else None

    def _newer_than(self, generation: int) -> bool:
        return self._newest is not None and self._newest[1] > generation


class Creation(Struct):
    """A creation made for a pending rule's name, its notification not answered yet."""

    notification: Notification
    #: The request, its path the bare name relative to ``anchor_fd`` (an open's file was made
    #: by mknod, and is opened when the reply is sent).
    request: FsRequest
    #: What the reply carries, but for an open: 0.
    result: int
    rules: tuple[PendingCreation, ...]
    #: O_PATH fd of the directory the object was created in (the rule's anchor object).
    anchor_fd: int
    #: The object found under the name right after the creation (O_PATH, not followed).
    created_fd: int | None
    #: Read before the creation: the new object was born at this time or later.
    before_ns: int
    cpu: int | None
    #: Holds moves back until this creation is answered (begun by the serving thread).
    gate: MoveGate
    #: The program's credentials when they are not ours (an open's file is opened with them).
    credentials: Credentials | None = None

    @property
    def kind(self) -> int:
        if self.request.op == "mkdir":
            return stat.S_IFDIR
        if self.request.op == "mknod":
            return stat.S_IFMT(self.request.mode) or stat.S_IFREG
        return stat.S_IFREG

    @property
    def name(self) -> bytes:
        return self.request.path.rstrip(b"/")

    def close(self) -> None:
        for fd in (self.anchor_fd, self.created_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.created_fd = None


def anchored(
    target: Target, index: CreatedIndex
) -> tuple[Target, tuple[PendingCreation, ...]] | None:
    """``target`` made in the directory object its path's directory part leads to, when that
    object is the anchor of pending rules waiting for its last name: (the target to perform,
    those rules). The returned target owns that directory's fd, and ``target``'s own dirs
    are closed; None leaves ``target`` as it was."""
    r = target.request
    parent, name = split_last(r.path)
    if parent is None:
        if target.dir1 is None or r.path.startswith(b"/"):
            return None
        fd = os.dup(target.dir1)
    else:
        start = AT_FDCWD if target.dir1 is None or r.path.startswith(b"/") else target.dir1
        try:
            fd = openat2(start, parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                         _RESOLVE_NO_MAGICLINKS)  # fmt: skip
        except OSError:
            return None  # the usual path reports the error as the kernel would
    rules = index.by_key.get((object_id(os.fstat(fd)), name.rstrip(b"/")))
    if not rules:
        os.close(fd)
        return None
    request = replace(r, path=name)
    for old in (target.dir1, target.dir2):
        if old is not None:
            os.close(old)
    return replace(target, request=request, dir1=fd, dir2=None), rules


def made_by(target: Target) -> Target:
    """What creates ``target``'s object: an open's file is made by mknod (see above)."""
    r = target.request
    if r.op != "open":
        return target
    mode = stat.S_IFREG | (r.mode & 0o7777)
    return replace(target, request=replace(r, op="mknod", mode=mode))


def open_created(anchor_fd: int, request: FsRequest) -> int | None:
    """The object now under the created name (as made: no open), not followed (None: gone
    already)."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    if request.op == "mkdir":
        flags |= os.O_DIRECTORY
    try:
        return os.open(request.path.rstrip(b"/"), flags, dir_fd=anchor_fd)
    except OSError:
        return None


class CreatedBinder:
    """In trio: verifies each creation, binds (or re-anchors) its rules, commits, replies."""

    def __init__(self, rules: RuleState, emit: Callable[[Event], None]) -> None:
        self.rules = rules
        self.emit = emit
        #: Into trio's thread, while a run lasts.
        self.door: Door | None = None
        self.listener: Listener | None = None
        #: (rule path, reason) of each binding refused so far: told once, as a program
        #: repeating a creation that never binds must not write an event each time.
        self._refused: set[tuple[str, str]] = set()

    def created(self, creation: Creation) -> None:
        """From a serving thread: hand ``creation`` to trio."""
        if self.door is None or not self.door.call_soon(self._bind_and_reply, creation):
            self._reply(creation)

    def _bind_and_reply(self, creation: Creation) -> None:
        try:
            # The rules pending now: a reload since the serving thread looked them up may
            # have removed or changed them, and an earlier creation may have bound them.
            current = self.rules.created_index.by_key.get(creation.rules[0].key, ())
            for rule in creation.rules:
                if not any(r.path == rule.path for r in current):
                    self.emit({"event": "created_path", "path": escape(rule.path),
                               "bound": False, "reason": NO_LONGER_PENDING})  # fmt: skip
            for rule in current:
                self._bind(creation, rule)
        finally:
            self._reply(creation)

    def _bind(self, c: Creation, rule: PendingCreation) -> None:
        event: CreatedPathEvent = {"event": "created_path", "path": escape(rule.path),
                                   "bound": False}  # fmt: skip
        reason = None
        if c.created_fd is None:
            reason = "the name no longer leads to the object created"
        else:
            try:
                reason = why_not_new(c.created_fd, c.anchor_fd, c.name, c.before_ns, c.kind)
            except OSError as exc:
                reason = f"the object cannot be examined: {exc.strerror}"
        if reason is None and c.kind in (stat.S_IFCHR, stat.S_IFBLK):
            # A new node for an old device (the disk, memory): its data is not new.
            reason = "a device node never receives a created-path rule"
        if reason is None and len(rule.names) > 1 and c.kind != stat.S_IFDIR:
            reason = f"{escape(c.name)} was created as a file, and the rule names beneath it"
        if reason is not None:
            if (rule.path, reason) not in self._refused:
                if len(self._refused) < _REFUSALS_TOLD:
                    self._refused.add((rule.path, reason))
                self.emit(event | {"bound": False, "reason": reason})
            return
        assert c.created_fd is not None
        table = self.rules.table
        try:
            obj = table.adopt(os.dup(c.created_fd))
            if len(rule.names) > 1:
                moved = self.rules.reanchor_created(rule, obj)
                self.emit(event | {"bound": False, "anchored": escape(table.label(obj)),
                                   "waiting_for": escape(b"/".join(moved.names))})  # fmt: skip
                return
            table.remember(rule.path, obj)
            generation = self.rules.bind_created(rule, obj, table.label(obj))
        except (LLSuperviseError, OSError) as exc:
            self.emit(event | {"bound": False, "reason": f"cannot commit the rule: {exc}"})
            return
        self.emit(event | {"bound": True, "generation": generation,
                           "object": escape(table.label(obj))})  # fmt: skip

    def _reply(self, c: Creation) -> None:
        try:
            if self.listener is None:
                return
            # The task gone, or the run over (its listener closed): nothing to answer.
            with contextlib.suppress(NotificationGone, SeccompError, OSError):
                if c.request.op == "open":
                    self._reply_open(self.listener, c)
                else:
                    reply(self.listener, c.notification, c.request, c.result, c.cpu)
        finally:
            c.close()
            c.gate.end()

    def _reply_open(self, listener: Listener, c: Creation) -> None:
        """Open the file made for an open, under the generation now serving (the rule just
        committed, if it was bound), and answer with it."""
        n = c.notification
        slot = self.rules.slot
        if c.created_fd is None or slot is None:
            listener.send_error(n.id, errno.ENOENT)
            return
        try:
            fd = slot.broker.call(lambda: reopen(c))
        except CredentialsError:
            listener.send_continue(n.id)  # the program's own open: the kernel decides
            return
        except OSError as exc:
            listener.send_error(n.id, exc.errno or errno.EIO)
            return
        reply(listener, n, c.request, fd, c.cpu)


def reopen(c: Creation) -> int:
    """In a broker's thread: the file ``c`` made, opened as the program asked (the very
    object: through our descriptor of it). Never waits for a lease holder."""
    assert c.created_fd is not None
    if not stat.S_ISREG(os.fstat(c.created_fd).st_mode):
        # Not what mknod made (swapped in by the kernel's own rename): never opened here.
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    flags = c.request.flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
    with acting_as(c.credentials) if c.credentials else contextlib.nullcontext():
        fd = os.open(f"/proc/self/fd/{c.created_fd}", flags | os.O_NONBLOCK | os.O_CLOEXEC)
    if not c.request.flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd
