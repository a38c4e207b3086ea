"""One owner per kernel object: the descriptor is closed exactly once."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Self


class FdOwner:
    """Owns a file descriptor: closed by :meth:`close`, at the end of a ``with`` block, or
    when the owner is collected. A closed owner holds -1, never a number that may be reused."""

    #: Class default, so that an owner whose __init__ failed is simply closed.
    _fd: int = -1

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
