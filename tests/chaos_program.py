"""The chaos test's supervised program, and the seeded generator of what it does.

The program (run as a file, under ``python -I``) reads its operations from a Python literal
and carries each out, whatever the outcome: opens, creations, renames (also RENAME_EXCHANGE),
links, symlinks, execs, TCP connects, chdir, threads and forks, on hostile names. It also
tries, in many ways, to read a secret file outside every rule; a read that returns the secret
prints ``LEAK <how>``. It ends by printing ``done <count>`` and exiting with a known status.
"""

from __future__ import annotations

import random
from typing import Any

#: Names the program controls: not UTF-8, newlines, terminal escapes, look-alike and bidi
#: characters, near, at and past NAME_MAX.
HOSTILE_NAMES: tuple[bytes, ...] = (
    b"plain",
    b"\xff\xfe",
    b"caf\xe9",
    b"new\nline",
    b"\x1b[2J\x1b]0;pwned\x07title",
    "a\u2215b".encode(),
    "full\uff0fwidth".encode(),
    "\u202egnp.exe".encode(),
    b" lead-space",
    b"-dash",
    b"...",
    b"n" * 254,
    b"m" * 255,
    b"o" * 256,
)
#: 20 levels of 100-byte names: paths of ~2 kB, still under PATH_MAX with a long name.
DEEP = b"work/deep/" + b"/".join([b"d" * 100] * 20)
#: Directories (relative to the test tree) the operations work in.
DIRS: tuple[bytes, ...] = (
    b"", b"data", b"data/sub", b"work", b"work/sub", b"out", DEEP,
    b"work/\xff\n\x1b[31mdir", b"data/" + "x\u2215y".encode(),
)  # fmt: skip
#: Ways of trying to read the secret (see SECRET_WAYS in the program).
SECRET_WAYS = 14

PROGRAM = r'''
import ast, ctypes, os, socket, sys, threading

ROOT = os.fsencode(sys.argv[1])
SECRET = sys.argv[2].encode()
PORTS = {"allowed": int(sys.argv[3]), "denied": int(sys.argv[4])}
EXIT = int(sys.argv[5])
with open(sys.argv[6], "rb") as f:
    OPS = ast.literal_eval(f.read().decode())
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
LEGACY = {"open": 2, "rename": 82, "mkdir": 83, "rmdir": 84, "creat": 85, "link": 86,
          "unlink": 87, "symlink": 88}
threads = []


def say(*words):
    os.write(1, b" ".join(words) + b"\n")  # one write: lines from threads and forks stay whole


def where(rel, absolute):
    full = ROOT + b"/" + rel if rel else ROOT
    return full if absolute else os.path.relpath(full, os.getcwdb())


def check(data, how):
    if SECRET in data:
        say(b"LEAK", how.encode())


def read(path, how="read", flags=os.O_RDONLY, dir_fd=None):
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        check(os.read(fd, 1 << 16), how)
    finally:
        os.close(fd)


def ok(result):
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def exchange(a, b):
    ok(libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE))


def legacy(name, *args):
    ok(libc.syscall(LEGACY[name], *args))


def run_exec(path):
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(path, [path])
        except OSError as e:
            os._exit(100 + e.errno % 100)
    os.waitpid(pid, 0)


def secret(way, i):
    """Try to read the secret file: each way ends in a read that would show it."""
    tag = b"%d-%d" % (os.getpid(), i)
    s = ROOT + b"/secret/s"
    how = "secret-%d" % way
    if way == 0:
        read(s, how)
    elif way == 1:
        read(os.path.relpath(s, os.getcwdb()), how)
    elif way == 2:
        os.symlink(s, ROOT + b"/out/ln-" + tag)
        read(ROOT + b"/out/ln-" + tag, how)
    elif way == 3:
        os.symlink(b"../secret/s", ROOT + b"/work/ln-" + tag)
        read(ROOT + b"/work/ln-" + tag, how)
    elif way == 4:
        os.link(s, ROOT + b"/work/hl-" + tag)
        read(ROOT + b"/work/hl-" + tag, how)
    elif way == 5:
        os.rename(s, ROOT + b"/work/mv-" + tag)
        read(ROOT + b"/work/mv-" + tag, how)
    elif way == 6:
        mine = ROOT + b"/work/x-" + tag
        os.close(os.open(mine, os.O_WRONLY | os.O_CREAT, 0o600))
        exchange(mine, s)
        read(mine, how)
    elif way == 7:
        dirfd = os.open(ROOT + b"/secret", os.O_PATH | os.O_DIRECTORY)
        try:
            read(b"s", how, dir_fd=dirfd)
        finally:
            os.close(dirfd)
    elif way == 8:
        before = os.getcwdb()
        os.chdir(ROOT + b"/secret")
        try:
            read(b"s", how)
        finally:
            os.chdir(before)
    elif way == 9:
        read(b"/proc/self/root" + s, how)
    elif way == 10:
        os.rename(ROOT + b"/secret", ROOT + b"/work/sd-" + tag)
        read(ROOT + b"/work/sd-" + tag + b"/s", how)
    elif way == 11:
        read(s, how, os.O_RDWR)
    elif way == 12:
        os.symlink(ROOT + b"/secret", ROOT + b"/out/c2-" + tag)
        os.symlink(b"c2-" + tag, ROOT + b"/out/c1-" + tag)
        read(ROOT + b"/out/c1-" + tag + b"/s", how)
    else:
        read(ROOT + b"/data/..//secret/./s", how)


def do(op, i, absolute_only):
    kind = op[0]
    if kind in ("thread", "fork"):
        if kind == "thread":
            t = threading.Thread(target=run_all, args=(op[1], True), daemon=True)
            t.start()
            threads.append(t)
            while len(threads) > 4:
                threads.pop(0).join()
            return
        pid = os.fork()
        if pid == 0:
            run_all(op[1], True)
            os._exit(0)
        os.waitpid(pid, 0)
        return
    if kind == "exec":
        run_exec(b"/bin/true" if op[1] == "true" else ROOT + b"/data/true")
        return
    if kind == "connect":
        with socket.socket() as sock:
            sock.settimeout(10)
            sock.connect_ex(("127.0.0.1", PORTS[op[1]]))
        return
    if kind == "secret":
        secret(op[1], i)
        return
    if kind == "chdir":
        if not absolute_only:
            os.chdir(where(op[1], True))
        return
    absolute = op[-1] or absolute_only
    p = where(op[1], absolute)
    if kind == "read":
        read(p)
    elif kind == "write":
        fd = os.open(p, op[2], 0o644)
        try:
            os.write(fd, b"chaos")
            if op[2] & os.O_RDWR:
                os.lseek(fd, 0, os.SEEK_SET)
                check(os.read(fd, 1 << 16), "write")
        finally:
            os.close(fd)
    elif kind == "mkdir":
        os.mkdir(p)
    elif kind == "rmdir":
        os.rmdir(p)
    elif kind == "unlink":
        os.unlink(p)
    elif kind == "rename":
        os.rename(p, where(op[2], absolute))
    elif kind == "exchange":
        exchange(p, where(op[2], absolute))
    elif kind == "link":
        os.link(p, where(op[2], absolute))
    elif kind == "symlink":
        os.symlink(op[2], p)
    elif kind == "legacy":
        name = op[2]
        if name in ("rename", "link"):
            legacy(name, p, where(op[3], absolute))
        elif name == "symlink":
            legacy(name, op[3], p)
        elif name == "open":
            fd = libc.syscall(LEGACY["open"], p, os.O_RDONLY)
            ok(fd)
            try:
                check(os.read(fd, 1 << 16), "legacy-open")
            finally:
                os.close(fd)
        elif name in ("mkdir", "creat"):
            fd = libc.syscall(LEGACY[name], p, 0o755)
            ok(fd)
            if name == "creat":
                os.close(fd)
        else:
            legacy(name, p)
    else:
        raise AssertionError(kind)


def run_all(ops, absolute_only):
    for i, op in enumerate(ops):
        try:
            do(op, i, absolute_only)
        except OSError:
            pass  # refused, missing, exists...: whatever the outcome, go on
        except Exception as e:  # a bug in this program, not an outcome
            say(b"ERROR", repr(e).encode("ascii", "backslashreplace"))


run_all(OPS, False)
for t in threads:
    t.join()
say(b"done", b"%d" % len(OPS))
os._exit(EXIT)
'''


def _path(rng: random.Random) -> bytes:
    directory = rng.choice(DIRS)
    name = rng.choice(HOSTILE_NAMES)
    return directory + b"/" + name if directory else name


#: The open(2) flags a write uses: plain, create, truncate, exclusive, append, read-write.
WRITE_FLAGS = (
    0o1 | 0o100,  # O_WRONLY | O_CREAT
    0o2 | 0o1000,  # O_RDWR | O_TRUNC
    0o1 | 0o100 | 0o200,  # O_WRONLY | O_CREAT | O_EXCL
    0o1 | 0o2000,  # O_WRONLY | O_APPEND
    0o2 | 0o100,  # O_RDWR | O_CREAT
)
LEGACY_CALLS = ("open", "rename", "mkdir", "rmdir", "creat", "link", "unlink", "symlink")


def _simple(rng: random.Random) -> tuple[Any, ...]:
    """One filesystem or network operation (no exec, thread or fork)."""
    kind = rng.choices(
        ("read", "write", "mkdir", "rmdir", "unlink", "rename", "exchange", "link", "symlink",
         "legacy", "connect"),
        weights=(25, 15, 6, 4, 6, 6, 4, 4, 5, 5, 6),
    )[0]  # fmt: skip
    absolute = rng.random() < 0.5
    if kind == "connect":
        return (kind, rng.choice(("allowed", "denied")))
    if kind == "write":
        return (kind, _path(rng), rng.choice(WRITE_FLAGS), absolute)
    if kind in ("rename", "exchange", "link"):
        return (kind, _path(rng), _path(rng), absolute)
    if kind == "symlink":
        target = rng.choice((b"../secret/s", b"/etc/passwd", b"plain", _path(rng), b"\xff\n"))
        return (kind, _path(rng), target, absolute)
    if kind == "legacy":
        call = rng.choice(LEGACY_CALLS)
        second = _path(rng) if call != "symlink" else rng.choice((b"../secret", b"plain"))
        return (kind, _path(rng), call, second, absolute)
    return (kind, _path(rng), absolute)


def operations(seed: int, count: int) -> list[tuple[Any, ...]]:
    """``count`` operations drawn from ``seed``; threads and forks carry a few of their own."""
    rng = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.03:
            ops.append(("exec", rng.choice(("true", "denied"))))
        elif roll < 0.07:
            ops.append(("secret", rng.randrange(SECRET_WAYS)))
        elif roll < 0.10:
            ops.append(("chdir", rng.choice(DIRS)))
        elif roll < 0.13:
            ops.append(("thread", [_simple(rng) for _ in range(rng.randint(2, 8))]))
        elif roll < 0.15:
            ops.append(("fork", [_simple(rng) for _ in range(rng.randint(2, 8))]))
        else:
            ops.append(_simple(rng))
    # Every way of reaching the secret, at least once, from the main thread.
    ops.extend(("secret", way) for way in range(SECRET_WAYS))
    return ops
