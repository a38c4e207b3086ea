"""Front-ends that are not in this thread: the question hub and its Unix-socket transport.

The :class:`Hub` is the supervisor's :class:`~llsupervise.supervisor.events.decisions.Frontend` for
any number of *clients*: it fans the supervisor's events and questions out to them and takes
their answers. The terminal interface is one client (in-process); ``llsupervise attach`` is
another, over a Unix socket (:func:`listening`). With no client attached, the policy's default
applies at once, as in headless mode.

Protocol: one JSON object per line, each with a ``type``. Strings are escaped both ways
(see :mod:`llsupervise.supervisor.events.encode`): a byte of a name that is not UTF-8 is
``\\xNN``, a backslash ``\\\\``; :func:`encode` and :func:`decode` do it.

server → client
  ``hello``     ``version``, ``state``: sent first (then past events, then open questions)
  ``state``     ``state``: rules, generation, mode, command; sent again whenever it changes
  ``event``     ``event``: a supervisor event as the event log has it
  ``question``  ``id``, ``denial`` (a Denial's fields), ``timeout_in`` (seconds left)
  ``resolved``  ``id``, ``answer`` (null when the question timed out or went away)
  ``error``     ``message`` (and the ``id`` it concerns): a client message was refused

client → server
  ``token``     ``token``: sent first, the content of SOCKET.token (in the socket's private
                directory, out of the supervised program's reach): a connection without it
                is refused (the program can connect to the socket, not read the token);
                ``terminals``: the client's terminals, protected like the supervisor's
  ``answer``    ``id``, ``answer`` (allow_once allow_for allow_always deny deny_quiet),
                ``duration`` (seconds, allow_for), ``scope`` (one of the denial's
                offered ``scopes``, by label or index), ``rights`` (allow_always: access
                names, at least those asked)
  ``mode``      ``mode``: interactive, enforce or permissive; enforce denies the open
                questions, permissive leaves them open (they are answered or time out)
"""

from __future__ import annotations

import errno
import hmac
import json
import math
import os
import secrets
import socket
import stat
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol, cast

import trio
from msgspec import Struct, field
from msgspec.structs import fields

from llsupervise.errors import LLSuperviseError
from llsupervise.landlock import LandlockRuleset, detect_support
from llsupervise.messages import (
    SERVER_TYPES,
    DenialInfo,
    ErrorMessage,
    Event,
    KeptRule,
    KernelInfo,
    QuestionMessage,
    ReloadEvent,
    RulesInfo,
    ServerMessage,
    State,
    TokenMessage,
)
from llsupervise.policy.document import MODES, Mode
from llsupervise.policy.model import Ruleset
from llsupervise.rights import NO_FS, AccessFs, names, parse_fs
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.encode import EscapeError, escaped, unescaped
from llsupervise.supervisor.events.model import Answer, Decision, Denial
from llsupervise.supervisor.rules.controlplane import (
    ControlFile,
    device_node,
    devices,
    static_violations,
    token_path,
)

PROTOCOL_VERSION = 1
#: What a person may answer; the others are the supervisor's own.
CLIENT_ANSWERS = (
    Answer.ALLOW_ONCE, Answer.ALLOW_FOR, Answer.ALLOW_ALWAYS, Answer.DENY, Answer.DENY_QUIET,
)  # fmt: skip
#: Longest line either side accepts; longer input is an error and ends the connection.
MAX_LINE = 1 << 20
#: Longest "allow for" a client may ask (a year): longer is what "always" is for.
MAX_DURATION = 366 * 24 * 3600.0
#: Messages queued for a client that does not read; beyond, it is disconnected.
CLIENT_BUFFER = 20_000
_UCRED = struct.Struct("3i")  # pid, uid, gid
#: accept() failures that pass (a connection that went away; no fd or memory just now).
_ACCEPT_RETRY = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED, errno.EPROTO}
)
#: First and longest wait before accept() is tried again after one of those.
ACCEPT_BACKOFF = 0.05
ACCEPT_BACKOFF_MAX = 2.0


class RemoteError(LLSuperviseError):
    """A socket that cannot be served or reached safely, or a refused connection."""


class ProtocolError(LLSuperviseError):
    """A client message that was refused; nothing was changed."""


class Client(Protocol):
    def send(self, message: ServerMessage) -> None:
        """Queue ``message``; must not block nor raise (a broken client drops itself)."""


def denial_json(denial: Denial) -> DenialInfo:
    d = denial
    return {
        "pid": d.pid, "tid": d.tid, "exe": d.exe, "cmdline": d.cmdline, "syscall": d.syscall,
        "path": d.path, "access": list(d.access), "generation": d.generation,
        "next_run_only": d.next_run_only, "scopes": list(d.scopes), "scope_kind": d.scope_kind,
        "protected": d.protected, "ts": d.ts, "count": d.count,
    }  # fmt: skip


def denial_from_json(data: DenialInfo) -> Denial:
    """A denial sent by :func:`denial_json`."""
    known = {f.name for f in fields(Denial)}
    values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
    values["access"] = tuple(values.get("access", ()))
    values["scopes"] = tuple(values.get("scopes", ()))
    return Denial(**values)


def _rules_json(rules: Ruleset, label: Callable[[Any], str]) -> RulesInfo:
    fs: list[KeptRule] = [
        {"path": label(obj), "access": names(access)} for obj, access in rules.fs.items()
    ]
    net: list[KeptRule] = [
        {"port": port, "access": names(access)} for port, access in rules.net.items()
    ]
    return {"fs": sorted(fs, key=lambda r: r.get("path", "")), "net": net}


def kernel_report(sup: Supervisor) -> KernelInfo:
    """What this kernel really enforces of the policy's handled rights (best effort)."""
    support = detect_support()
    doc = sup.policy.document
    if support.abi == 0:
        return {"abi": 0, "lines": ["Landlock is not available: nothing is enforced"]}
    with LandlockRuleset(
        doc.handled_fs, doc.handled_net, doc.scoped, support=support, allow_nothing=True
    ) as ruleset:
        report = ruleset.report
    return {"abi": support.abi, "lines": report.lines(), "missing": report.missing()}


class _Asked(Struct):
    id: int
    denial: Denial
    asked_at: float
    done: trio.Event = field(default_factory=trio.Event)
    decision: Decision | None = None


class Hub:
    """Fans events and questions out to clients; the first valid answer wins."""

    def __init__(self, sup: Supervisor, decisions: ModeDecisions, *, history: int = 1000) -> None:
        self.sup = sup
        self.decisions = decisions
        #: The policy's own mode: switching back from permissive returns to it.
        self.policy_mode: Mode = decisions.mode
        self.clients: list[Client] = []
        self.kernel = kernel_report(sup)
        self._history: deque[Event] = deque(maxlen=history)
        self._asked: dict[int, _Asked] = {}
        self._next_id = 1
        self.argv: list[str] = []
        self.pid: int | None = None
        self.exit_status: int | None = None
        self.last_reload: ReloadEvent | None = None
        decisions.frontend = None
        sup.listeners.append(self.on_event)

    # -- clients --------------------------------------------------------------------------

    def attach(self, client: Client) -> None:
        """Greet ``client`` with the state, past events and open questions."""
        self.clients.append(client)
        self.decisions.frontend = self
        client.send({"type": "hello", "version": PROTOCOL_VERSION, "state": self.state()})
        for event in self._history:
            client.send({"type": "event", "event": event})
        for asked in self._asked.values():
            client.send(self._question(asked))

    def detach(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        if not self.clients:
            self.decisions.frontend = None
            for asked in list(self._asked.values()):
                self._settle(asked, self._headless_decision())

    def _broadcast(self, message: ServerMessage) -> None:
        for client in list(self.clients):
            client.send(message)

    # -- state ----------------------------------------------------------------------------

    def state(self) -> State:
        sup = self.sup

        def label(obj: Any) -> str:
            for rules in (
                sup.rules.permanent,
                sup.rules.mutable.pending,
                sup.rules.mutable.committed,
                sup.static,
            ):
                if obj in rules.labels:
                    return rules.labels[obj]
            try:
                return sup.table.label(obj)
            except KeyError:
                return str(obj)

        doc = sup.policy.document
        return {
            "policy": doc.source,
            "argv": self.argv,
            "pid": self.pid,
            "running": self.pid is not None and self.exit_status is None,
            "exit_status": self.exit_status,
            "mode": self.decisions.mode,
            "policy_mode": self.policy_mode,
            "default": self.decisions.default,
            "prompt_timeout": self.decisions.prompt_timeout,
            "generation": sup.generation,
            "handled_fs": names(sup.static.handled_fs),
            "static": _rules_json(sup.static, label),
            "committed": _rules_json(sup.rules.mutable.committed, label),
            "pending": _rules_json(sup.rules.mutable.pending, label),
            "quiet": sorted(label(obj) for obj in sup.rules.quiet),
            "kernel": self.kernel,
            "reload": self.last_reload,
        }

    def on_event(self, event: Event) -> None:
        """A supervisor listener: every event goes to every client."""
        if event["event"] == "start":
            self.argv, self.pid, self.exit_status = list(event["argv"]), event["pid"], None
        elif event["event"] == "exit":
            self.exit_status = event["status"]
        elif event["event"] == "reload":
            self.last_reload = event
        self._history.append(event)
        self._broadcast({"type": "event", "event": event})
        if event["event"] in ("start", "exit", "commit", "reload"):
            self._broadcast({"type": "state", "state": self.state()})

    # -- questions ------------------------------------------------------------------------

    def _headless_decision(self) -> Decision:
        return Decision(
            Answer.ALLOW_ONCE if self.decisions.default == "allow_once" else Answer.DENY
        )

    def _question(self, asked: _Asked) -> QuestionMessage:
        left = self.decisions.prompt_timeout - (trio.current_time() - asked.asked_at)
        return {
            "type": "question",
            "id": asked.id,
            "denial": denial_json(asked.denial),
            "timeout_in": max(0.0, left),
        }

    async def ask(self, denial: Denial) -> Decision:
        """The Frontend call: wait for a client's answer (ModeDecisions applies the timeout)."""
        if denial.protected:
            return Decision(Answer.DENY)  # the control plane: nothing could allow it
        if not self.clients:
            return self._headless_decision()
        asked = _Asked(self._next_id, denial, trio.current_time())
        self._next_id += 1
        self._asked[asked.id] = asked
        self._broadcast(self._question(asked))
        try:
            await asked.done.wait()
        finally:
            del self._asked[asked.id]
            answer = None if asked.decision is None else str(asked.decision.answer)
            self._broadcast({"type": "resolved", "id": asked.id, "answer": answer})
        assert asked.decision is not None
        return asked.decision

    def _settle(self, asked: _Asked, decision: Decision) -> None:
        if asked.decision is None:
            asked.decision = decision
            asked.done.set()

    # -- client messages ------------------------------------------------------------------

    def receive(self, client: Client, message: Any) -> None:
        """Handle one client message; a refused one is answered with an ``error``."""
        try:
            if not isinstance(message, dict):
                raise ProtocolError("a message must be a JSON object")
            kind = message.get("type")
            if kind == "answer":
                self._answer(message)
            elif kind == "mode":
                self.set_mode(message.get("mode"))
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
        except LLSuperviseError as exc:
            error: ErrorMessage = {"type": "error", "message": str(exc)}
            if isinstance(message, dict) and "id" in message:
                error["id"] = message["id"]
            client.send(error)

    def set_mode(self, mode: object) -> None:
        """The mode for the denials to come. ``enforce`` also denies the open questions;
        ``permissive`` leaves them open: a person answers them, or they time out (a mode
        switch must never allow what a person was asked about)."""
        if mode not in MODES:
            raise ProtocolError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        assert isinstance(mode, str)
        self.decisions.mode = mode
        if mode == "enforce":
            for asked in list(self._asked.values()):
                self._settle(asked, Decision(Answer.DENY))
        self._broadcast({"type": "state", "state": self.state()})

    def _answer(self, message: Mapping[str, Any]) -> None:
        qid = message.get("id")
        asked = self._asked.get(qid) if isinstance(qid, int) else None
        if asked is None or asked.decision is not None:
            raise ProtocolError(f"no open question {qid!r} (answered or timed out)")
        raw = message.get("answer")
        answer = next((a for a in CLIENT_ANSWERS if isinstance(raw, str) and a == raw), None)
        if answer is None:
            allowed = ", ".join(CLIENT_ANSWERS)
            raise ProtocolError(f"answer must be one of {allowed}, not {raw!r}")
        if asked.denial.protected and answer.allows:
            raise ProtocolError(f"{asked.denial.protected} is protected: only deny is offered")
        duration = _duration(message.get("duration")) if answer == Answer.ALLOW_FOR else None
        scope = _scope(message.get("scope"), asked.denial.scopes)
        access = self._rule_rights(message.get("rights"), answer, asked.denial)
        self._settle(asked, Decision(answer, duration=duration, scope=scope, access=access))

    def _rule_rights(self, rights: object, answer: Answer, denial: Denial) -> AccessFs | None:
        """The rights of the rule an answer keeps, when it grants more than was asked."""
        if rights is None:
            return None
        if not isinstance(rights, list) or not all(isinstance(r, str) for r in rights):
            raise ProtocolError("rights must be a list of access names")
        access = parse_fs(rights)
        asked = parse_fs(denial.access)
        if asked & ~access:
            raise ProtocolError(
                f"the rule must grant what was asked ({', '.join(names(asked & ~access))}); "
                "deny instead"
            )
        extra = access & ~asked
        if extra & ~self.sup.static.handled_fs:
            raise ProtocolError(
                f"{', '.join(names(extra & ~self.sup.static.handled_fs))}: not handled by "
                "the policy, so already allowed"
            )
        if extra == NO_FS:
            return None
        if answer not in (Answer.ALLOW_ALWAYS, Answer.ALLOW_FOR):
            raise ProtocolError("more rights than asked go only on a kept rule (always, for)")
        return access


def _duration(value: object) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= MAX_DURATION
    ):
        raise ProtocolError(f"duration must be seconds in (0, {MAX_DURATION:g}], not {value!r}")
    return float(value)


def _scope(value: object, offered: tuple[str, ...]) -> str | int | None:
    """One of the scopes the denial offered, by label or index: only there does a rule make
    the request work, and only those are bound to the object that was checked."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(offered):
            return value
    elif isinstance(value, str):
        if value in offered:
            return value
    else:
        raise ProtocolError("scope must be one of the offered scopes, by label or index")
    choices = ", ".join(repr(s) for s in offered) or "none"
    raise ProtocolError(f"scope {value!r} was not offered (offered: {choices})")


# -- the Unix socket --------------------------------------------------------------------------


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    _pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return int(uid)


#: sun_path holds 108 bytes, its NUL included.
_SUN_PATH_MAX = 107


def check_socket_path(path: str) -> None:
    """Refuse a socket path that :func:`bind_private` would refuse, creating nothing (so that
    ``run --listen`` can say so before it starts the command)."""
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise RemoteError(f"{path}: a socket path is at most {_SUN_PATH_MAX} bytes long")
    directory = os.path.dirname(path)
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(directory)):
            raise RemoteError(_NO_PARENT.format(directory)) from None
        return  # bind_private makes it, private
    except OSError as exc:
        raise RemoteError(f"{directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RemoteError(f"{directory} is not a directory")
    _check_private(directory, st)
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise RemoteError(f"{path} exists and is not a socket")


_NO_PARENT = "{0}: its parent directory does not exist (only the socket's own directory is made)"


def _check_private(directory: str, st: os.stat_result) -> None:
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RemoteError(
            f"{directory}: the socket's directory must be private (owned by you, mode 0700); "
            f"name a socket in a directory that does not exist yet, or run: chmod 700 {directory}"
        )


def _private_directory(directory: str) -> None:
    # One level only: a mistyped path must not leave a trail of new directories behind.
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise RemoteError(_NO_PARENT.format(directory)) from None
    _check_private(directory, os.stat(directory))


def _remove_stale(path: str) -> None:
    """A socket nobody listens on (left by a crash) may go; anything else stays."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RemoteError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise RemoteError(f"{path}: another supervisor is listening there")


def bind_private(path: str) -> trio.socket.SocketType:
    """A listening socket at ``path``, mode 0600, in a private directory."""
    path = os.path.abspath(path)
    _private_directory(os.path.dirname(path))
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise RemoteError(f"cannot listen on {path}: {exc.strerror}") from exc
    return trio.socket.from_stdlib_socket(sock)


class SocketClient:
    """One attached process: messages go out through a bounded queue."""

    def __init__(self) -> None:
        self._out, self._queue = trio.open_memory_channel[bytes](CLIENT_BUFFER)

    def send(self, message: ServerMessage) -> None:
        try:
            self._out.send_nowait(encode(message))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._out.close()  # too slow or gone: the writer ends, then the connection

    def close(self) -> None:
        """No more messages: the writer sends what is queued and ends."""
        self._out.close()

    async def write(self, stream: trio.SocketStream) -> None:
        async with self._queue:
            async for line in self._queue:
                await stream.send_all(line)


def encode(message: Mapping[str, object]) -> bytes:
    """One line of the protocol. Strings go escaped (see :mod:`..events.encode`): a name
    that is not UTF-8 crosses as ``\\xNN``, and :func:`decode` gives it back as it was."""
    return json.dumps(escaped(message), ensure_ascii=False).encode() + b"\n"


class LineReader:
    """Lines without their newline; a line longer than MAX_LINE raises ProtocolError."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._lines: deque[bytes] = deque()

    async def next(self) -> bytes | None:
        """The next line; None at the end of the stream."""
        while not self._lines:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            *lines, self._buffer = (self._buffer + chunk).split(b"\n")
            self._lines.extend(lines)
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
        return self._lines.popleft()


def server_message(value: object) -> ServerMessage:
    """A decoded line from a hub, as the message it says it is. The hub is trusted (its
    socket is checked in :func:`connect`); this only refuses what no hub sends."""
    if not isinstance(value, dict) or value.get("type") not in SERVER_TYPES:
        raise ProtocolError(f"not a message a supervisor sends: {str(value)[:80]!r}")
    return cast(ServerMessage, value)


def decode(line: bytes) -> Any:
    try:
        return unescaped(json.loads(line))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from exc
    except EscapeError as exc:
        raise ProtocolError(str(exc)) from exc


def make_token(path: str) -> str:
    """Write a new attach token beside the socket ``path`` (in its private directory, made
    here if need be); return it. Replaces a token a crash left behind."""
    path = os.path.abspath(path)
    _private_directory(os.path.dirname(path))
    token = secrets.token_hex(32)
    target = token_path(path)
    temporary = f"{target}.{os.getpid()}.new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(temporary, target)
    return token


def read_token(path: str) -> str:
    """The token of the supervisor listening on ``path`` (what ``attach`` sends first)."""
    try:
        with open(token_path(path), encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a token"
        raise RemoteError(
            f"cannot attach to {path}: its token {token_path(path)}: {reason}"
        ) from exc


def protect_terminals(sup: Supervisor, names: object) -> str | None:
    """Protect the terminals of an attach client (their device identity, like ours) for the
    rest of the run; why not, if a static rule hands one to the program."""
    if not isinstance(names, list):
        return None
    found = []
    for name in names:
        if isinstance(name, str) and name.startswith("/dev/"):
            try:
                st = os.stat(name)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode):
                found.append(ControlFile(name, "the terminal of llsupervise attach", True, True))
    violations = static_violations(sup.policy, found)
    if violations:
        return f"{violations[0]}: attach from a terminal the policy does not reach"
    sup.guard.add_devices(devices(found))
    return None


async def _refuse(stream: trio.SocketStream, refusal: str) -> None:
    with trio.move_on_after(1):
        await stream.send_all(encode({"type": "error", "message": refusal}))


async def _serve_connection(
    hub: Hub, conn: trio.socket.SocketType, clients: list[SocketClient], token: str
) -> None:
    try:
        await _serve_stream(hub, conn, clients, token)
    except OSError:
        pass  # this connection failed (the peer vanished, no fd for a pipe): not the others


async def _serve_stream(
    hub: Hub, conn: trio.socket.SocketType, clients: list[SocketClient], token: str
) -> None:
    stream = trio.SocketStream(conn)
    async with stream:
        uid = peer_uid(conn)
        if uid != os.geteuid():
            refusal = f"refused: this supervisor belongs to uid {os.geteuid()}, you are uid {uid}"
            await _refuse(stream, refusal)
            return
        lines = LineReader(stream)
        # Same uid proves nothing (the supervised program has it): the token does.
        try:
            first = await lines.next()
            message = decode(first) if first is not None else None
        except (ProtocolError, trio.BrokenResourceError):
            message = None
        sent = message.get("token") if isinstance(message, dict) else None
        if (
            not isinstance(message, dict)
            or message.get("type") != "token"
            or not isinstance(sent, str)
            or not hmac.compare_digest(sent.encode(), token.encode())
        ):
            await _refuse(
                stream, "refused: no valid attach token (sent first by llsupervise attach)"
            )
            return
        problem = protect_terminals(hub.sup, message.get("terminals"))
        if problem is not None:
            await _refuse(stream, f"refused: {problem}")
            return
        client = SocketClient()
        clients.append(client)
        hub.attach(client)
        try:
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    try:
                        while (line := await lines.next()) is not None:
                            if line.strip():
                                try:
                                    hub.receive(client, decode(line))
                                except ProtocolError as exc:
                                    client.send({"type": "error", "message": str(exc)})
                    except (ProtocolError, trio.BrokenResourceError):
                        pass
                    # The client hung up: stop writing to it.
                    nursery.cancel_scope.cancel()

                nursery.start_soon(reader)
                try:
                    await client.write(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()
        finally:
            hub.detach(client)
            clients.remove(client)


@asynccontextmanager
async def listening(
    hub: Hub, path: str, *, grace: float = 2.0, token: str | None = None
) -> AsyncIterator[str]:
    """Serve attach clients on ``path`` for the duration of the block; yields the path.

    ``token``: made by :func:`make_token` (default: made here). On the way out, queued
    messages (the command's exit) get ``grace`` seconds to reach the
    clients; then connections close and the socket file is removed."""
    if token is None:
        token = make_token(path)
    sock = bind_private(path)
    path = os.path.abspath(path)
    clients: list[SocketClient] = []
    try:
        async with trio.open_nursery() as nursery:

            async def accept() -> None:
                backoff = ACCEPT_BACKOFF
                while True:
                    try:
                        conn, _ = await sock.accept()
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_RETRY:
                            raise
                        # Out of fds (or buffers): the connection waits in the backlog.
                        print(f"llsupervise: cannot accept an attach connection now "
                              f"({exc.strerror}); retrying in {backoff:g} s",
                              file=sys.stderr, flush=True)  # fmt: skip
                        await trio.sleep(backoff)
                        backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                        continue
                    backoff = ACCEPT_BACKOFF
                    nursery.start_soon(_serve_connection, hub, conn, clients, token)

            nursery.start_soon(accept)
            try:
                yield path
            finally:
                for client in clients:
                    client.close()
                with trio.move_on_after(grace) as scope:
                    scope.shield = True
                    while clients:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    finally:
        sock.close()
        for name in (path, token_path(path)):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass


async def connect(path: str) -> trio.SocketStream:
    """Connect to a listening supervisor; refuse one run by another user."""
    try:
        stream = await trio.open_unix_socket(path)
    except OSError as exc:
        reason = "nobody listens there" if exc.errno == errno.ECONNREFUSED else exc.strerror
        raise RemoteError(f"cannot attach to {path}: {reason}") from exc
    uid = peer_uid(stream.socket)
    if uid != os.geteuid():
        await stream.aclose()
        raise RemoteError(f"{path} is served by uid {uid}, not by you (uid {os.geteuid()})")
    try:
        terminals = list(dict.fromkeys(device_node(fd) for fd in (0, 1, 2) if os.isatty(fd)))
        hello: TokenMessage = {"type": "token", "token": read_token(path),
                               "terminals": terminals}  # fmt: skip
        await stream.send_all(encode(hello))
    except BaseException:
        await stream.aclose()
        raise
    return stream


__all__ = [
    "CLIENT_ANSWERS",
    "PROTOCOL_VERSION",
    "Client",
    "Hub",
    "LineReader",
    "ProtocolError",
    "RemoteError",
    "bind_private",
    "check_socket_path",
    "connect",
    "decode",
    "denial_from_json",
    "denial_json",
    "encode",
    "listening",
]
