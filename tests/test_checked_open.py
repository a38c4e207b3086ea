"""A serving thread's open in one walk (operations._open_checked) against the general one
(operations._open, then the guard's check): whenever the one walk takes a request, it opens
the same object with the same file flags, or fails alike; what it does not take, it leaves
untouched (no descriptor left open, nothing made)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llsupervise.supervisor.engine._fastpath import open_checked
from llsupervise.supervisor.engine.grants import compiled_grants
from llsupervise.supervisor.perform import blocking
from llsupervise.supervisor.perform.guard import Guard, ProtectedError, build_guard
from llsupervise.supervisor.perform.operations import KernelDecides, _open, _open_checked

#: Names in the tree (see tree()) and what can follow them.
NAMES = [b"f", b"ro", b"d", b"d/g", b"fifo", b"to-f", b"to-d", b"to-d/g", b"dangling",
         b"loop", b"to-fifo", b"to-proc", b"to-null", b"policy", b"to-policy", b"missing",
         b"d/../f", b"./f", b"f/", b"d/", b"to-d/", b"", b"."]  # fmt: skip
ACCESS = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR]
EXTRA = [os.O_DIRECTORY, os.O_NONBLOCK, os.O_APPEND, os.O_CLOEXEC, os.O_NOFOLLOW, os.O_TRUNC,
         os.O_CREAT, os.O_EXCL, os.O_PATH, os.O_NOCTTY, os.O_NOATIME, os.O_SYNC]  # fmt: skip


def tree(root: Path) -> None:
    (root / "f").write_bytes(b"data")
    (root / "ro").write_bytes(b"data")
    (root / "ro").chmod(0o444)
    (root / "d").mkdir()
    (root / "d" / "g").write_bytes(b"data")
    os.mkfifo(root / "fifo")
    (root / "policy").write_bytes(b"protected")
    for name, target in [("to-f", "f"), ("to-d", "d"), ("dangling", "nowhere"),
                         ("loop", "loop"), ("to-fifo", "fifo"), ("to-proc", "/proc/self/status"),
                         ("to-null", "/dev/null"), ("to-policy", "policy")]:  # fmt: skip
        (root / name).symlink_to(target)
    # Every name in the dentry cache, as after a program's first look.
    for each in NAMES:
        with contextlib.suppress(OSError):
            os.lstat(root / os.fsdecode(each))


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """As on a serving thread (see perform.blocking)."""
    blocking.serve_inline()
    try:
        yield
    finally:
        blocking._thread.inline = False


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def outcome(fd: int) -> tuple[int, int, int]:
    """What was opened: the object, and the file's status flags (as F_GETFL gives them)."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, fcntl.fcntl(fd, fcntl.F_GETFL)


def general(guard: Guard | None, path: bytes, dirfd: int | None, flags: int) -> int:
    """The general path, as operations._perform takes it (_guarded_open without O_TRUNC and
    O_CREAT, which the one walk never takes)."""
    fd = _open(path, dirfd, flags, 0)
    if guard is not None:
        try:
            writes = flags & os.O_ACCMODE != os.O_RDONLY
            guard.refuse_open(os.fstat(fd), reading_only=not writes)
        except BaseException:
            os.close(fd)
            raise
    return fd


#: The opens both properties draw: a name of the tree, by absolute path or relative to it, with
#: an access mode, up to three more flags, and the control plane guarding it or not.
def open_cases(test: Callable[..., None]) -> Callable[..., None]:
    return settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])(
        given(
            name=st.sampled_from(NAMES),
            absolute=st.booleans(),
            access=st.sampled_from(ACCESS),
            extra=st.lists(st.sampled_from(EXTRA), max_size=3),
            guarded=st.booleans(),
        )(test)
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = Path(os.path.realpath(tmp_path_factory.mktemp("checked")))
    tree(root)
    yield root


@open_cases
def test_the_one_walk_opens_what_the_general_path_opens(
    root: Path, name: bytes, absolute: bool, access: int, extra: list[int], guarded: bool
) -> None:
    flags = access
    for flag in extra:
        flags |= flag
    at_first = open_fds()
    guard = build_guard([(str(root / "policy"), "the policy file", False)]) if guarded else None
    dirfd = None if absolute else os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    path = os.fsencode(root) + b"/" + name if absolute else name
    before = open_fds()
    listing = sorted(os.listdir(root))
    try:
        with serving():
            try:
                fast = _open_checked(guard, path, dirfd, flags)
            except (OSError, KernelDecides) as exc:
                event(f"refused: {type(exc).__name__}")
                # Refused alike by the general path (a protected file is ProtectedError there
                # too, and an errno is the kernel's, on the same object).
                with pytest.raises(type(exc)) as slow:
                    os.close(general(guard, path, dirfd, flags))
                if isinstance(exc, OSError):
                    assert isinstance(slow.value, OSError)
                    assert slow.value.errno == exc.errno
                return
            event("left to the general path" if fast is None else "opened")
            if fast is None:
                assert open_fds() == before  # nothing left open
                assert sorted(os.listdir(root)) == listing  # nothing made
                return
            try:
                slow_fd = general(guard, path, dirfd, flags)
            except BaseException:
                os.close(fast)
                raise
        try:
            assert outcome(fast) == outcome(slow_fd)
        finally:
            os.close(fast)
            os.close(slow_fd)
    finally:
        if dirfd is not None:
            os.close(dirfd)
        if guard is not None:
            guard.close()
        assert open_fds() == at_first


def test_the_one_walk_takes_a_plain_open(root: Path) -> None:
    """Not vacuous: a plain read of a file and of a directory are taken (Linux 6.8+, where
    statx gives unique mount ids; the suite's kernel). (A path through a symlink may not
    be: the dentry cache alone does not follow every kind of symlink.)"""
    with serving():
        for name in (b"f", b"d", b"d/g", b"./f"):
            fd = _open_checked(None, os.fsencode(root) + b"/" + name, None, os.O_RDONLY)
            assert fd is not None
            os.close(fd)


def test_the_one_walk_refuses_the_control_plane_before_opening(root: Path) -> None:
    guard = build_guard([(str(root / "policy"), "the policy file", False)])
    try:
        with serving():
            with pytest.raises(ProtectedError):
                _open_checked(guard, os.fsencode(root) + b"/policy", None, os.O_WRONLY)
            fd = _open_checked(guard, os.fsencode(root) + b"/policy", None, os.O_RDONLY)
            assert fd is not None  # not secret: reading it is not refused
            os.close(fd)
    finally:
        guard.close()


def test_a_fifo_is_left_to_the_general_path(root: Path) -> None:
    """A FIFO is not opened by the one walk (even for a moment: a writer waiting in its open
    would be let through)."""
    with serving():
        for flags in (os.O_RDONLY, os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
            assert _open_checked(None, os.fsencode(root) + b"/fifo", None, flags) is None


def test_a_mounts_kind_is_known_by_its_unique_id(root: Path) -> None:
    """statx's unique mount id tells procfs, and an ordinary filesystem, apart (from the
    mount table); what was learnt is kept by that id, which the kernel never reuses."""
    here = os.open(root, os.O_PATH | os.O_CLOEXEC)
    proc = os.open("/proc/self", os.O_PATH | os.O_CLOEXEC)
    try:
        mine, procs = blocking.status(here), blocking.status(proc)
        assert mine is not None and procs is not None
        assert mine.mount == blocking.INLINE
        assert procs.mount == blocking.PROCFS
        st = os.fstat(here)
        assert (mine.dev, mine.ino) == (st.st_dev, st.st_ino)
        assert blocking.INLINE in blocking.MOUNTS._by_unique.values()
    finally:
        os.close(here)
        os.close(proc)


def test_a_forked_child_reopens_its_own_descriptors(root: Path) -> None:
    """The /proc/self/fd the one walk reopens through is the process's own after a fork."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ok = False
        try:
            os.close(read)
            from llsupervise.supervisor.perform import operations

            assert operations._PROC_FD is not None
            ok = os.readlink(f"/proc/self/fd/{operations._PROC_FD}") == f"/proc/{os.getpid()}/fd"
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


@open_cases
def test_the_compiled_loop_opens_what_the_one_walk_opens(
    root: Path, name: bytes, absolute: bool, access: int, extra: list[int], guarded: bool
) -> None:
    """The compiled loop's granted open (engine.grants) against Python's: it opens the same
    object with the same status flags where Python's one walk opens one, and nothing where
    Python's leaves the open to the general path or refuses it (the loop hands those to
    Python untouched)."""
    flags = access
    for flag in extra:
        flags |= flag
    at_first = open_fds()
    guard = build_guard([(str(root / "policy"), "the policy file", False)]) if guarded else Guard()
    grants = compiled_grants(guard)
    assert grants is not None
    dirfd = None if absolute else os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    path = os.fsencode(root) + b"/" + name if absolute else name
    try:
        with serving():
            try:
                python = _open_checked(guard if guarded else None, path, dirfd, flags)
            except (OSError, KernelDecides):
                python = None
        # After Python's: its first look at a mount is what tells the loop it cannot block.
        compiled = open_checked(grants, -1 if dirfd is None else dirfd, path, flags)
        event("opened" if compiled >= 0 else "left to Python")
        try:
            assert (compiled >= 0) == (python is not None)
            if python is not None:
                assert outcome(compiled) == outcome(python)
        finally:
            for fd in (compiled, python):
                if fd is not None and fd >= 0:
                    os.close(fd)
    finally:
        if dirfd is not None:
            os.close(dirfd)
        grants.close()
        guard.close()
    assert open_fds() == at_first
