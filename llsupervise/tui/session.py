"""Where the interface's messages come from: a supervisor in this process, one reached over
a socket (``attach``), or a fixed list (screenshots and snapshot tests).

Each session delivers protocol messages (:mod:`llsupervise.supervisor.frontends.hub`) to a
:class:`Receiver` and takes the user's messages with :meth:`Session.send`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import outcome
import trio

from llsupervise.messages import ClientMessage, ServerMessage
from llsupervise.policy.document import PolicyDocument
from llsupervise.supervisor.core import Supervisor
from llsupervise.supervisor.events.decisions import ModeDecisions
from llsupervise.supervisor.events.model import EventLog
from llsupervise.supervisor.frontends.hub import (
    Hub,
    LineReader,
    connect,
    decode,
    encode,
    server_message,
)
from llsupervise.tui.guest import GuestRun
from llsupervise.tui.terminal.pty import Pty


class Receiver(Protocol):
    """The app, as sessions see it. Called in the app's thread (trio runs there as a guest)."""

    def receive(self, message: ServerMessage) -> None: ...

    def terminal_output(self, data: bytes) -> None: ...

    def session_ended(self, result: outcome.Outcome[Any]) -> None: ...


class Session:
    #: True when the command's terminal is shown here (it runs in this process).
    local = True
    #: Where the session comes from, for the status line.
    origin = ""
    #: Our terminal hung up (SIGHUP): nobody is left to look at the interface.
    hung_up = False

    def start(self, receiver: Receiver) -> None:
        raise NotImplementedError

    def send(self, message: ClientMessage) -> None:
        raise NotImplementedError

    def terminate(self, force: bool) -> None:
        """The user wants to quit: end the command (local) or just detach (attached)."""

    async def stop(self) -> None:
        """Called when the app closes: everything this session started has ended on return."""

    def resize(self, rows: int, cols: int) -> None:
        """The command's terminal pane changed size."""

    def write_input(self, data: bytes) -> None:
        """Keys typed into the command's terminal pane."""


class _GuestSession(Session):
    def __init__(self) -> None:
        self.guest = GuestRun()
        self.receiver: Receiver | None = None

    def start(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.guest.start(self.main, receiver.session_ended)

    async def main(self) -> Any:
        raise NotImplementedError

    async def stop(self) -> None:
        await self.guest.stop()

    def _deliver(self, message: ServerMessage) -> None:
        if self.receiver is not None:
            self.receiver.receive(message)


class LocalSession(_GuestSession):
    """Runs the command under a supervisor in this process; its output goes to a pty pane."""

    origin = "this terminal"

    def __init__(
        self,
        document: PolicyDocument,
        argv: Sequence[str],
        *,
        log: EventLog | None = None,
        forward_signals: bool = True,
        watch: bool = False,
    ) -> None:
        """``watch``: reload the policy file on each save (see ``Supervisor.open``)."""
        super().__init__()
        self.watch = watch
        self.document = document
        self.argv = list(argv)
        self.log = log
        self.forward_signals = forward_signals
        self.hub: Hub | None = None
        self.supervisor: Supervisor | None = None
        self.exit_status: int | None = None
        self._pty: Pty | None = None
        self._size = (24, 80)
        self._client = _HubClient(self)

    def send(self, message: ClientMessage) -> None:
        self.guest.call(self._receive, message)

    def _receive(self, message: ClientMessage) -> None:
        if self.hub is not None:
            self.hub.receive(self._client, message)

    # The hub's view of this session: one client.
    def _client_send(self, message: ServerMessage) -> None:
        self._deliver(message)

    def resize(self, rows: int, cols: int) -> None:
        if self._pty is not None:
            self._pty.resize(rows, cols)  # the kernel tells the command (SIGWINCH)
        self._size = (rows, cols)

    def write_input(self, data: bytes) -> None:
        if self._pty is not None:
            self._pty.write(data)

    def terminate(self, force: bool) -> None:
        self.guest.call(self._signal, signal.SIGKILL if force else signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        launched = self.supervisor.launched if self.supervisor else None
        if launched is not None and launched.process.returncode is None:
            try:
                os.kill(launched.pid, signum)
            except ProcessLookupError:
                pass

    async def main(self) -> int:
        doc = self.document.supervisor
        decisions = ModeDecisions(doc.mode, doc.default, doc.prompt_timeout)
        # Made first: the command's terminal is this pty's slave, and rules on ${TTY} bind
        # to that very object (not to a /dev/pts name) for the whole run.
        pty = self._pty = Pty(*self._size)
        try:
            async with Supervisor.open(
                self.document, decisions=decisions, log=self.log, watch=self.watch,
                terminal=pty.slave,
            ) as sup:  # fmt: skip
                self.supervisor = sup
                self.hub = Hub(sup, decisions)
                self.hub.attach(self._client)
                status = await self._run(sup, pty)
        finally:
            self._pty = None
            pty.close()
        self.exit_status = status
        self.hung_up = sup.hung_up
        return status

    async def _run(self, sup: Supervisor, pty: Pty) -> int:
        emit = self._output
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pty.pump, emit)
            try:
                status = await sup.run(
                    self.argv, forward_signals=self.forward_signals,
                    stdio=(pty.slave, pty.slave, pty.slave), new_session=True,
                )  # fmt: skip
            except BaseException:
                self._kill_child()
                raise
            nursery.cancel_scope.cancel()
        pty.drain(emit)
        return status

    def _output(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver.terminal_output(data)

    def _kill_child(self) -> None:
        """Leaving (the app closed) while the command runs: it must not outlive us unsupervised."""
        launched = self.supervisor.launched if self.supervisor else None
        if launched is not None and launched.process.poll() is None:
            launched.process.kill()
            launched.process.wait()


class _HubClient:
    def __init__(self, session: LocalSession) -> None:
        self._session = session

    def send(self, message: ServerMessage) -> None:
        self._session._client_send(message)


class RemoteSession(_GuestSession):
    """Attached to ``llsupervise run --listen SOCKET`` from another terminal."""

    local = False

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.origin = f"attached to {path}"
        self._outgoing: trio.MemorySendChannel[bytes] | None = None

    def send(self, message: ClientMessage) -> None:
        self.guest.call(self._queue, message)

    def _queue(self, message: ClientMessage) -> None:
        if self._outgoing is not None:
            try:
                self._outgoing.send_nowait(encode(message))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def main(self) -> None:
        stream = await connect(self.path)
        send, queue = trio.open_memory_channel[bytes](1000)
        self._outgoing = send
        reason = "the supervisor closed the connection (its command has ended)"
        async with stream, trio.open_nursery() as nursery:

            async def writer() -> None:
                async for line in queue:
                    await stream.send_all(line)

            nursery.start_soon(writer)
            lines = LineReader(stream)
            try:
                while (line := await lines.next()) is not None:
                    if line.strip():
                        self._deliver(server_message(decode(line)))
            except trio.BrokenResourceError:
                reason = "the connection to the supervisor broke"
            nursery.cancel_scope.cancel()
        self._deliver({"type": "closed", "reason": reason})


class ReplaySession(Session):
    """Fixed messages, for screenshots and snapshot tests; what the user sends is kept."""

    def __init__(
        self, messages: Iterable[ServerMessage], *, output: bytes = b"", local: bool = True,
        origin: str = "",
    ) -> None:  # fmt: skip
        self.messages = list(messages)
        self.output = output
        self.local = local
        self.origin = origin or ("this terminal" if local else "attached")
        self.sent: list[ClientMessage] = []

    def start(self, receiver: Receiver) -> None:
        for message in self.messages:
            receiver.receive(message)
        if self.output:
            receiver.terminal_output(self.output)

    def send(self, message: ClientMessage) -> None:
        self.sent.append(message)
