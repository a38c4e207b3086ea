"""Child program for the differential tests: run filesystem operations, print their outcomes.

Usage: ``python -c SOURCE SPEC_JSON`` (a supervised child cannot read this file, so its source is
passed on the command line). The spec::

    {"umask": int,
     "sandbox": null | {"handled": int, "rules": [[path, access], ...]},
     "cases": [{"base": dir, "steps": [{"op", "path", "path2", "mode", "via"}, ...]}, ...]}

With ``sandbox`` the child enforces a plain Landlock domain on itself first (the reference run);
without it the child is expected to run under a supervisor already. Each step yields "ok" or the
errno name it failed with; an open also reports what reading and ``ftruncate`` on the new fd did,
so the rights recorded on the fd are compared too. The output is one JSON line: a list of outcome
lists, one per case. ``via`` says how paths are named: absolute, relative to the working
directory, or relative to an ``O_PATH`` directory fd.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
from collections.abc import Callable
from typing import Any

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
AT_FDCWD = -100

#: Every open also carries O_NONBLOCK: an open of a FIFO made by an earlier step must not block
#: (the supervisor replays a blocking FIFO open in the child's own context, by design).
OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY,
    "rw": os.O_RDWR,
    "append": os.O_WRONLY | os.O_APPEND,
    "trunc": os.O_WRONLY | os.O_TRUNC,
    "rtrunc": os.O_RDONLY | os.O_TRUNC,
    "dir": os.O_RDONLY | os.O_DIRECTORY,
    "nofollow": os.O_RDONLY | os.O_NOFOLLOW,
    "creat": os.O_WRONLY | os.O_CREAT,
    "excl": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "creat_trunc": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
}

_libc = ctypes.CDLL(None, use_errno=True)


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _attempt(fn: Callable[[], object]) -> str:
    try:
        result = fn()
    except OSError as exc:
        return _errname(exc)
    return "ok" if result is None else f"ok {result}"


def _renameat2(dir1: int | None, p1: str, dir2: int | None, p2: str, flags: int) -> None:
    d1 = AT_FDCWD if dir1 is None else dir1
    d2 = AT_FDCWD if dir2 is None else dir2
    if _libc.renameat2(d1, os.fsencode(p1), d2, os.fsencode(p2), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open(path: str, mode: str, dirfd: int | None) -> str:
    fd = os.open(path, OPEN_FLAGS[mode] | os.O_NONBLOCK | os.O_CLOEXEC, 0o666, dir_fd=dirfd)
    try:
        read = _attempt(lambda: os.read(fd, 32).hex() or "-")
        # ftruncate to the current size: the check happens, the content stays comparable.
        size = os.fstat(fd).st_size
        truncated = _attempt(lambda: os.ftruncate(fd, size))
    finally:
        os.close(fd)
    return f"read={read.replace(' ', ':')} ftruncate={truncated}"


def _step(step: dict[str, Any], dirfd: int | None) -> str | None:
    op, path, path2, mode = step["op"], step["path"], step["path2"], step["mode"]
    if op == "open":
        return _open(path, mode, dirfd)
    if op == "mkdir":
        os.mkdir(path, 0o777, dir_fd=dirfd)
    elif op == "mkfifo":
        os.mkfifo(path, 0o666, dir_fd=dirfd)
    elif op == "unlink":
        os.unlink(path, dir_fd=dirfd)
    elif op == "rmdir":
        os.rmdir(path, dir_fd=dirfd)
    elif op == "rename":
        flags = {"": 0, "noreplace": RENAME_NOREPLACE, "exchange": RENAME_EXCHANGE}[mode]
        if flags:
            _renameat2(dirfd, path, dirfd, path2, flags)
        else:
            os.rename(path, path2, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    elif op == "link":
        follow = mode != "nofollow"
        os.link(path, path2, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=follow)
    elif op == "symlink":
        os.symlink(path2, path, dir_fd=dirfd)
    elif op == "truncate":
        os.truncate(path, 1)
    else:
        raise ValueError(f"unknown operation {op!r}")
    return None


def run_case(case: dict[str, Any]) -> list[str]:
    base: str = case["base"]
    outcomes = []
    for step in case["steps"]:
        step = dict(step)
        via = step["via"]
        dirfd = None
        if via == "dirfd" and step["op"] != "truncate":  # truncate(2) has no *at form
            dirfd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        elif via == "abs":
            step["path"] = os.path.join(base, step["path"])
            if step["op"] in ("rename", "link"):
                step["path2"] = os.path.join(base, step["path2"])
        else:
            os.chdir(base)
        try:
            result = _step(step, dirfd)
        except OSError as exc:
            outcomes.append(_errname(exc))
        else:
            outcomes.append("ok" if result is None else f"ok {result}")
        finally:
            if dirfd is not None:
                os.close(dirfd)
    return outcomes


def sandbox(spec: dict[str, Any]) -> None:
    """The reference run: a plain Landlock domain, enforced on this process."""
    from llsupervise.landlock import LandlockRuleset, set_no_new_privs
    from llsupervise.rights import AccessFs

    with LandlockRuleset(AccessFs(spec["handled"])) as ruleset:
        for path, access in spec["rules"]:
            ruleset.add_path(path, AccessFs(access))
        set_no_new_privs()
        ruleset.restrict_self()


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    os.umask(spec["umask"])
    if spec.get("sandbox") is not None:
        sandbox(spec["sandbox"])
    print(json.dumps([run_case(case) for case in spec["cases"]]))


if __name__ == "__main__":
    main()
