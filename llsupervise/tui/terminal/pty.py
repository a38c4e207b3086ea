"""A pseudo-terminal for the supervised command, read in trio and turned into safe text."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
from collections.abc import Callable

import trio


class Pty:
    """The command gets the slave side as stdin/stdout/stderr; we read the master side.

    Output is passed on as bytes: the pane that shows it makes it safe."""

    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        os.set_blocking(self.master, False)
        self.resize(rows, cols)

    def resize(self, rows: int, cols: int) -> None:
        size = struct.pack("HHHH", max(rows, 1), max(cols, 1), 0, 0)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def write(self, data: bytes) -> None:
        """Keys for the command; what the terminal cannot take now is dropped (as a full
        terminal input queue drops it)."""
        try:
            os.write(self.master, data)
        except (BlockingIOError, OSError):
            pass

    def _read(self) -> bytes | None:
        """Available output; b"" when there is none now; None once no writer is left."""
        try:
            return os.read(self.master, 65536) or None
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # every slave descriptor is closed
                return None
            raise

    async def pump(self, emit: Callable[[bytes], None]) -> None:
        """Pass the command's output to ``emit`` as it comes, until cancelled."""
        while True:
            await trio.lowlevel.wait_readable(self.master)
            data = self._read()
            if data is None:
                return
            if data:
                emit(data)

    def drain(self, emit: Callable[[bytes], None]) -> None:
        """What is left once the command has exited."""
        while data := self._read():
            emit(data)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.master)
        os.close(self.master)
        os.close(self.slave)
