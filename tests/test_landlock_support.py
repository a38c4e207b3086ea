"""Landlock feature detection and ruleset construction against the real kernel.

Nothing here restricts the test process; the few enforcing calls run in throwaway threads
(Landlock and no_new_privs are per-thread).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from llsupervise.errors import LLSuperviseError
from llsupervise.landlock import (
    KernelSupport,
    LandlockError,
    LandlockRuleset,
    LandlockUnsupported,
    RestrictFlag,
    _syscall,
    detect_support,
    no_new_privs,
    probe_abi,
    probe_errata,
    set_no_new_privs,
    syscall_numbers,
)
from llsupervise.landlock.ruleset import _ruleset_attr_size
from llsupervise.rights import (
    FILE_ACCESS,
    NO_FS,
    NO_NET,
    NO_SCOPE,
    AccessFs,
    AccessNet,
    Scope,
    fs_all,
    fs_read_write,
    net_all,
    scope_all,
)

pytestmark = pytest.mark.kernel

ABI = probe_abi()
needs_landlock = pytest.mark.skipif(ABI < 1, reason="Landlock is not available on this kernel")


def in_thread(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a throwaway thread; return its result or re-raise its exception."""
    box: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


# --- detection ---------------------------------------------------------------------------------


def test_syscall_numbers_known_here_and_unknown_arch_is_a_clear_error() -> None:
    assert syscall_numbers() == (444, 445, 446)
    with pytest.raises(LandlockUnsupported, match="'sparc64'"):
        syscall_numbers("sparc64")


@needs_landlock
def test_probe_abi_agrees_with_detect_support() -> None:
    support = detect_support()
    assert support.abi == probe_abi() >= 1
    assert support.errata == probe_errata() >= 0


@needs_landlock
def test_support_follows_the_rights_tables() -> None:
    support = detect_support()
    assert support.fs == fs_all(support.abi)
    assert support.net == net_all(support.abi)
    assert support.scopes == scope_all(support.abi)
    if support.abi == 7:  # the kernel this project is measured on (DESIGN.md section 4)
        assert (support.fs, support.net, support.scopes) == (0xFFFF, 0x3, 0x3)


@needs_landlock
def test_to_json_lists_names() -> None:
    support = detect_support()
    data = support.to_json()
    assert set(data) == {"abi", "errata", "fs", "net", "scopes", "restrict_flags"}
    assert data["abi"] == support.abi
    assert isinstance(data["fs"], list)
    assert len(data["fs"]) == bin(support.fs).count("1")
    assert "read_file" in data["fs"]
    assert data["restrict_flags"] == list(support.restrict_flags)


@needs_landlock
def test_restrict_flags_are_found_by_trying_them() -> None:
    nnp_before = no_new_privs()
    flags = detect_support().restrict_flags
    assert no_new_privs() is nnp_before  # the probe ran in its own thread
    assert all(RestrictFlag[name.upper()] == bit for name, bit in flags.items())
    if ABI >= 7:
        assert {"log_same_exec_off", "log_new_exec_on", "log_subdomains_off"} <= set(flags)
    # Every flag found is accepted by a real restrict_self; every other one is refused.
    for flag in RestrictFlag:
        assert flag.name is not None

        def restrict(flag: RestrictFlag = flag) -> None:
            with LandlockRuleset(AccessFs.MAKE_BLOCK) as ruleset:
                set_no_new_privs()
                ruleset.restrict_self(flag)

        if flag.name.lower() in flags:
            in_thread(restrict)
        else:
            with pytest.raises(LandlockError) as info:
                in_thread(restrict)
            assert info.value.errno == errno.EINVAL


#: setresuid(2) numbers; the raw call changes only the calling thread (glibc's wrapper, and so
#: os.setresuid, changes every thread of the process).
SETRESUID = {"x86_64": 117, "aarch64": 147}


@needs_landlock
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_restrict_self_without_no_new_privs_or_capability_is_refused() -> None:
    libc = ctypes.CDLL(None, use_errno=True)

    def as_nobody() -> None:
        with LandlockRuleset(AccessFs.MAKE_BLOCK) as ruleset:
            # Leaving uid 0 drops this thread's capabilities, CAP_SYS_ADMIN included.
            assert libc.syscall(SETRESUID[os.uname().machine], 65534, 65534, 65534) == 0
            ruleset.restrict_self()

    with pytest.raises(LandlockError, match="no_new_privs") as info:
        in_thread(as_nobody)
    assert info.value.errno == errno.EPERM
    assert os.getuid() == 0


def test_struct_layouts_match_the_kernel() -> None:
    assert ctypes.sizeof(_syscall.PathBeneathAttr) == struct.calcsize("<Qi") == 12
    assert ctypes.sizeof(_syscall.NetPortAttr) == 16
    assert ctypes.sizeof(_syscall.RulesetAttr) == 24


def test_ruleset_attr_size_is_the_smallest_covering_prefix() -> None:
    assert _ruleset_attr_size(NO_NET, NO_SCOPE) == 8
    assert _ruleset_attr_size(AccessNet.BIND_TCP, NO_SCOPE) == 16
    assert _ruleset_attr_size(NO_NET, Scope.SIGNAL) == 24


# --- compatibility: strict and best effort -------------------------------------------------


@needs_landlock
def test_strict_names_exactly_what_an_older_kernel_lacks() -> None:
    old = KernelSupport.for_abi(1)
    with pytest.raises(LandlockUnsupported) as info:
        LandlockRuleset(
            AccessFs.READ_FILE | AccessFs.REFER | AccessFs.TRUNCATE,
            AccessNet.BIND_TCP,
            Scope.SIGNAL,
            support=old,
            strict=True,
        )
    message = str(info.value)
    assert "ABI 1" in message
    assert "filesystem access: refer, truncate" in message
    assert "network access: bind_tcp" in message
    assert "scopes: signal" in message
    assert "read_file" not in message
    assert isinstance(info.value, LLSuperviseError)


@needs_landlock
def test_strict_accepts_what_the_kernel_has() -> None:
    with LandlockRuleset(fs_all(ABI), net_all(ABI), scope_all(ABI), strict=True) as ruleset:
        assert not ruleset.report.dropped_anything
        assert ruleset.report.enforced_fs == fs_all(ABI)


@needs_landlock
def test_best_effort_drops_and_reports() -> None:
    old = KernelSupport.for_abi(1)
    requested = AccessFs.READ_FILE | AccessFs.REFER | AccessFs.TRUNCATE
    with LandlockRuleset(requested, AccessNet.CONNECT_TCP, support=old) as ruleset:
        report = ruleset.report
        assert report.enforced_fs == AccessFs.READ_FILE
        assert report.dropped_fs == AccessFs.REFER | AccessFs.TRUNCATE
        assert report.dropped_net == AccessNet.CONNECT_TCP
        assert report.dropped_scopes == NO_SCOPE
        assert not report.enforced_nothing
        text = "\n".join(report.lines())
        assert "Landlock ABI 1" in text
        assert "NOT enforced (kernel lacks it) filesystem access: refer, truncate" in text
        assert "NOT enforced (kernel lacks it) network access: connect_tcp" in text
        # Rules only carry what the ruleset handles.
        assert ruleset.add_path("/", requested) == AccessFs.READ_FILE
        assert ruleset.add_port(443, AccessNet.CONNECT_TCP) == NO_NET


@needs_landlock
def test_enforcing_nothing_is_never_silent() -> None:
    none = KernelSupport.for_abi(0)
    with pytest.raises(LandlockUnsupported, match="allow_nothing"):
        LandlockRuleset(AccessFs.READ_FILE, support=none)
    # Network rights alone on a kernel without them leave nothing either.
    with pytest.raises(LandlockUnsupported, match="network access: bind_tcp"):
        LandlockRuleset(NO_FS, AccessNet.BIND_TCP, support=KernelSupport.for_abi(3))
    with pytest.raises(LandlockError, match="at least one"):
        LandlockRuleset(NO_FS)

    ruleset = LandlockRuleset(AccessFs.READ_FILE, support=none, allow_nothing=True)
    assert ruleset.report.enforced_nothing
    assert "nothing is enforced" in ruleset.report.lines()[-1]
    assert ruleset.add_path("/", AccessFs.READ_FILE) == NO_FS
    with pytest.raises(LandlockUnsupported):
        ruleset.fileno()
    in_thread(ruleset.restrict_self)  # a no-op, but kept off the test thread regardless
    ruleset.close()


# --- the ruleset object ---------------------------------------------------------------------


@needs_landlock
def test_ruleset_fd_is_close_on_exec() -> None:
    with LandlockRuleset(AccessFs.READ_FILE) as ruleset:
        assert fcntl.fcntl(ruleset.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC


@needs_landlock
def test_ruleset_close_and_context_manager() -> None:
    with LandlockRuleset(AccessFs.READ_FILE) as ruleset:
        fd = ruleset.fileno()
        assert not ruleset.closed
        os.fstat(fd)
    assert ruleset.closed
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    with pytest.raises(LandlockError, match="closed"):
        ruleset.fileno()
    with pytest.raises(LandlockError, match="closed"):
        ruleset.add_path("/", AccessFs.READ_FILE)
    ruleset.close()  # idempotent


@needs_landlock
def test_add_path_masks_rights_by_file_type(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with LandlockRuleset(fs_all(ABI)) as ruleset:
        assert ruleset.add_path(target, fs_read_write(ABI)) == fs_read_write(ABI) & FILE_ACCESS
        assert ruleset.add_path(str(tmp_path), fs_read_write(ABI)) == fs_read_write(ABI)
        assert ruleset.add_path(target, AccessFs.READ_DIR | AccessFs.MAKE_DIR) == NO_FS
        fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
        try:
            assert ruleset.add_path(fd, AccessFs.READ_FILE) == AccessFs.READ_FILE
            os.fstat(fd)  # a caller's fd stays open
        finally:
            os.close(fd)
        with pytest.raises(LandlockError) as info:
            ruleset.add_path(tmp_path / "missing", AccessFs.READ_FILE)
        assert info.value.errno == errno.ENOENT


@needs_landlock
def test_kernel_rejects_directory_rights_on_a_file(tmp_path: Path) -> None:
    # The reason add_path masks: unmasked, the same rule is an EINVAL.
    target = tmp_path / "file"
    target.write_text("x")
    fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
    try:
        with LandlockRuleset(fs_all(ABI)) as ruleset:
            attr = _syscall.PathBeneathAttr(allowed_access=AccessFs.READ_DIR, parent_fd=fd)
            with pytest.raises(LandlockError) as info:
                _syscall.add_rule(ruleset.fileno(), _syscall.RULE_PATH_BENEATH, attr)
    finally:
        os.close(fd)
    assert info.value.errno == errno.EINVAL


@pytest.mark.skipif(ABI < 4, reason=f"needs Landlock ABI 4, kernel has {ABI}")
def test_add_port_masks_and_validates() -> None:
    with LandlockRuleset(AccessFs.READ_FILE, AccessNet.BIND_TCP) as ruleset:
        assert ruleset.add_port(8080, net_all(ABI)) == AccessNet.BIND_TCP
        assert ruleset.add_port(8080, AccessNet.CONNECT_TCP) == NO_NET
        with pytest.raises(LandlockError, match="out of range"):
            ruleset.add_port(70000, AccessNet.BIND_TCP)


@needs_landlock
def test_restrict_flags_are_probed_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ruleset built asks for them: one probe thread, and each caller its own copy."""
    from llsupervise.landlock import support

    first = support.probe_restrict_flags()
    started: list[str] = []
    original = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    first["mutated"] = 1
    assert support.probe_restrict_flags() == detect_support().restrict_flags
    assert "mutated" not in support.probe_restrict_flags()
    assert "landlock-flag-probe" not in started
