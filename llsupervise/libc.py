"""The C library, bound once: every ctypes call of llsupervise goes through :data:`libc`.

(The exec helper runs in a bare interpreter with the standard library only, so it binds its
own.)"""

from __future__ import annotations

import ctypes

libc = ctypes.CDLL(None, use_errno=True)

#: The dirfd that means "the current working directory" (a signed 32-bit syscall argument).
AT_FDCWD = -100
