"""A plain Landlock wrapper: apply one static ruleset to itself, then exec the command.

    python -I -S bench/landlock_exec.py --ro DIR:DIR... --rw PATH:PATH... -- CMD [ARGS...]

Read and execute beneath each ``--ro`` path, everything but execute beneath each ``--rw`` path
(landlockconfig's ``read_execute`` and ``read_write``), every filesystem right this kernel knows
handled. Standard library only, so that its start-up is an interpreter's and nothing more: the
benchmark's "Landlock only" runner, the cost of the kernel's own checks.
"""

from __future__ import annotations

import ctypes
import os
import sys

CREATE_RULESET, ADD_RULE, RESTRICT_SELF = 444, 445, 446  # x86_64 and aarch64 alike
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR, REFER, TRUNCATE, IOCTL_DEV = (
    1, 2, 4, 8, 1 << 13, 1 << 14, 1 << 15)  # fmt: skip
#: Rights that apply to a file (the rest only to directories): a rule on a file may have no other.
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV


class RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64),)


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def call(name: str, nr: int, *args: object) -> int:
    result = int(libc.syscall(ctypes.c_long(nr), *args))
    if result < 0:
        err = ctypes.get_errno()
        raise SystemExit(f"landlock_exec: {name}: {os.strerror(err)}")
    return result


def handled_rights() -> int:
    abi = call("landlock_create_ruleset", CREATE_RULESET, None, ctypes.c_size_t(0),
               ctypes.c_uint32(CREATE_RULESET_VERSION))  # fmt: skip
    rights = (1 << 13) - 1  # ABI 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(ro: list[str], rw: list[str]) -> None:
    handled = handled_rights()
    attr = RulesetAttr(handled)
    ruleset = call("landlock_create_ruleset", CREATE_RULESET, ctypes.byref(attr),
                   ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))  # fmt: skip
    read_execute = (EXECUTE | READ_FILE | READ_DIR | REFER) & handled
    read_write = handled & ~EXECUTE
    for paths, rights in ((ro, read_execute), (rw, read_write)):
        for path in paths:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            allowed = rights if os.path.isdir(path) else rights & FILE_RIGHTS
            rule = ctypes.byref(PathBeneathAttr(allowed, fd))
            call("landlock_add_rule", ADD_RULE, ctypes.c_int(ruleset),
                 ctypes.c_int(RULE_PATH_BENEATH), rule, ctypes.c_uint32(0))  # fmt: skip
            os.close(fd)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
        raise SystemExit(f"landlock_exec: prctl: {os.strerror(ctypes.get_errno())}")
    call("landlock_restrict_self", RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    os.close(ruleset)


def main(argv: list[str]) -> None:
    ro: list[str] = []
    rw: list[str] = []
    while argv and argv[0] != "--":
        if len(argv) < 2 or argv[0] not in ("--ro", "--rw"):
            raise SystemExit("usage: landlock_exec.py --ro DIR:... --rw PATH:... -- CMD [ARGS...]")
        (ro if argv[0] == "--ro" else rw).extend(p for p in argv[1].split(":") if p)
        argv = argv[2:]
    if len(argv) < 2:
        raise SystemExit("landlock_exec.py: no command given")
    program = which(argv[1])
    restrict(ro, rw)
    os.execv(program, argv[1:])


def which(name: str) -> str:
    """The program's path, found before restricting (os.execvp would import modules after)."""
    if "/" in name:
        return name
    for directory in os.environ.get("PATH", os.defpath).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise SystemExit(f"landlock_exec.py: {name}: command not found")


if __name__ == "__main__":
    main(sys.argv[1:])
