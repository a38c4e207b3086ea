"""Landlock rulesets: create with best-effort or strict compatibility, add rules, enforce."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Self

from msgspec import Struct

from llsupervise.fdowner import FdOwner
from llsupervise.landlock import _syscall
from llsupervise.landlock._syscall import LandlockError, LandlockUnsupported
from llsupervise.landlock.support import KernelSupport, detect_support
from llsupervise.rights import (
    FILE_ACCESS,
    NO_FS,
    NO_NET,
    NO_SCOPE,
    AccessFs,
    AccessNet,
    Scope,
    names,
)


def set_no_new_privs() -> None:
    """Set no_new_privs on the calling thread (threads it creates later inherit it).

    ``landlock_restrict_self`` requires it unless the thread has CAP_SYS_ADMIN. It cannot be unset.
    """
    _syscall.prctl(_syscall.PR_SET_NO_NEW_PRIVS, 1)


def no_new_privs() -> bool:
    """Whether the calling thread has no_new_privs."""
    return _syscall.prctl(_syscall.PR_GET_NO_NEW_PRIVS) == 1


def _listed(flags: AccessFs | AccessNet | Scope) -> str:
    return ", ".join(names(flags)) or "none"


class EnforcementReport(Struct, frozen=True):
    """What a ruleset was asked to handle and what this kernel lets it handle."""

    abi: int
    requested_fs: AccessFs
    requested_net: AccessNet
    requested_scopes: Scope
    enforced_fs: AccessFs
    enforced_net: AccessNet
    enforced_scopes: Scope

    @property
    def dropped_fs(self) -> AccessFs:
        # On ABI 1 a dropped ``refer`` is stricter, not looser: ABI 1 always denies reparenting.
        return self.requested_fs & ~self.enforced_fs

    @property
    def dropped_net(self) -> AccessNet:
        return self.requested_net & ~self.enforced_net

    @property
    def dropped_scopes(self) -> Scope:
        return self.requested_scopes & ~self.enforced_scopes

    @property
    def dropped_anything(self) -> bool:
        return bool(self.dropped_fs or self.dropped_net or self.dropped_scopes)

    @property
    def enforced_nothing(self) -> bool:
        return not (self.enforced_fs or self.enforced_net or self.enforced_scopes)

    def missing(self) -> list[str]:
        """One phrase per kind of dropped right, e.g. ``"filesystem access: refer, truncate"``."""
        parts: list[tuple[str, AccessFs | AccessNet | Scope]] = [
            ("filesystem access", self.dropped_fs),
            ("network access", self.dropped_net),
            ("scopes", self.dropped_scopes),
        ]
        return [f"{kind}: {_listed(flags)}" for kind, flags in parts if flags]

    def lines(self) -> list[str]:
        """Human-readable summary, one statement per line."""
        lines = [
            f"Landlock ABI {self.abi}",
            f"enforced filesystem access: {_listed(self.enforced_fs)}",
            f"enforced network access: {_listed(self.enforced_net)}",
            f"enforced scopes: {_listed(self.enforced_scopes)}",
        ]
        lines += [f"NOT enforced (kernel lacks it) {part}" for part in self.missing()]
        if self.enforced_nothing:
            lines.append("nothing is enforced: the sandbox restricts nothing")
        return lines


def _ruleset_attr_size(net: AccessNet, scopes: Scope) -> int:
    # The smallest prefix of the struct that carries every non-zero field, so older kernels
    # (which reject sizes larger than they know unless the tail is zero) see a size they know.
    if scopes:
        return _syscall.RULESET_ATTR_SIZE_SCOPED
    if net:
        return _syscall.RULESET_ATTR_SIZE_NET
    return _syscall.RULESET_ATTR_SIZE_FS


class LandlockRuleset(FdOwner):
    """A Landlock ruleset owning its (close-on-exec) file descriptor.

    With ``allow_nothing=True`` and nothing enforceable, no kernel ruleset exists: rules add
    nothing, ``restrict_self`` does nothing, and ``fileno`` raises.
    """

    _closed = False

    def __init__(
        self,
        handled_fs: AccessFs,
        handled_net: AccessNet = NO_NET,
        scopes: Scope = NO_SCOPE,
        *,
        support: KernelSupport | None = None,
        strict: bool = False,
        allow_nothing: bool = False,
    ) -> None:
        support = detect_support() if support is None else support
        requested = (AccessFs(handled_fs), AccessNet(handled_net), Scope(scopes))
        self.report = EnforcementReport(
            abi=support.abi,
            requested_fs=requested[0],
            requested_net=requested[1],
            requested_scopes=requested[2],
            enforced_fs=requested[0] & support.fs,
            enforced_net=requested[1] & support.net,
            enforced_scopes=requested[2] & support.scopes,
        )
        report = self.report
        if strict and report.dropped_anything:
            raise LandlockUnsupported(
                f"Landlock ABI {support.abi} lacks requested " + "; ".join(report.missing())
            )
        if report.enforced_nothing:
            if allow_nothing:
                return
            if not any(requested):
                raise LandlockError("a ruleset must handle at least one access right or scope")
            raise LandlockUnsupported(
                f"Landlock ABI {support.abi} can enforce none of the requested rights "
                f"({'; '.join(report.missing())}); pass allow_nothing=True to run unsandboxed"
            )
        attr = _syscall.RulesetAttr(
            handled_access_fs=report.enforced_fs,
            handled_access_net=report.enforced_net,
            scoped=report.enforced_scopes,
        )
        size = _ruleset_attr_size(report.enforced_net, report.enforced_scopes)
        self._fd = _syscall.create_ruleset(attr, size)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise LandlockError("the Landlock ruleset is closed")

    def fileno(self) -> int:
        self._check_open()
        if self._fd < 0:
            raise LandlockUnsupported("no kernel ruleset exists: nothing is enforced")
        return self._fd

    def close(self) -> None:
        self._closed = True
        super().close()

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"<LandlockRuleset {state} fs={_listed(self.report.enforced_fs)}>"

    def add_path(self, target: int | str | os.PathLike[str], access: AccessFs) -> AccessFs:
        """Allow ``access`` beneath ``target`` (an O_PATH fd, kept open, or a path); return what was
        added.

        Rights are masked to those this ruleset handles and, for anything but a directory, to
        FILE_ACCESS (the kernel rejects directory rights on files with EINVAL). When nothing is
        left, no rule is added and NO_FS is returned.
        """
        self._check_open()
        rights = AccessFs(access) & self.report.enforced_fs
        if not rights:
            return NO_FS
        if isinstance(target, int):
            return self._add_path_fd(target, rights)
        try:
            fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise LandlockError(
                f"cannot open {os.fsdecode(target)!r}: {exc.strerror}", exc.errno
            ) from exc
        try:
            return self._add_path_fd(fd, rights)
        finally:
            os.close(fd)

    def _add_path_fd(self, fd: int, rights: AccessFs) -> AccessFs:
        masked = self._masked(rights, stat.S_ISDIR(_fstat_mode(fd)))
        if masked:
            _syscall.add_path_rules(self.fileno(), [(fd, masked)])
        return AccessFs(masked)

    def add_paths(self, rules: Iterable[tuple[int, AccessFs, bool]]) -> None:
        """:meth:`add_path` for many ``(O_PATH fd, rights, is a directory)`` at once, masked
        alike: the way to load thousands of rules (a policy reload) without per-rule
        overhead. The caller says which fds are directories (a wrong answer makes the kernel
        refuse the rule with EINVAL, never widens it)."""
        self._check_open()
        masked = self._masked
        _syscall.add_path_rules(
            self.fileno(),
            [(fd, rights) for fd, access, is_dir in rules if (rights := masked(access, is_dir))],
        )

    def _masked(self, access: AccessFs, is_dir: bool) -> int:
        """What the kernel takes on such an object: rights this ruleset handles, and only
        FILE_ACCESS on anything but a directory (it rejects the others with EINVAL). Plain
        ints: flag operators cost more than the syscall on a 10,000-rule load."""
        handled = int(self.report.enforced_fs)
        return int(access) & (handled if is_dir else handled & _FILE_ACCESS)

    def fill(
        self,
        paths: Iterable[tuple[int, AccessFs, bool]],
        ports: Iterable[tuple[int, AccessNet]] = (),
    ) -> Self:
        """Add every rule (see :meth:`add_paths` and :meth:`add_port`) and return the ruleset,
        ready to restrict with; closed if any rule fails."""
        try:
            self.add_paths(paths)
            for port, access in ports:
                self.add_port(port, access)
        except BaseException:
            self.close()
            raise
        return self

    def add_port(self, port: int, access: AccessNet) -> AccessNet:
        """Allow ``access`` on TCP ``port``; return what was added (masked to handled rights)."""
        self._check_open()
        if not 0 <= port <= 0xFFFF:
            raise LandlockError(f"TCP port out of range: {port}")
        rights = AccessNet(access) & self.report.enforced_net
        if not rights:
            return NO_NET
        attr = _syscall.NetPortAttr(allowed_access=rights, port=port)
        _syscall.add_rule(self.fileno(), _syscall.RULE_NET_PORT, attr)
        return rights

    def restrict_self(self, flags: int = 0) -> None:
        """Enforce this ruleset on the CALLING THREAD only (and on what it later creates).

        Other threads of the process stay as they were. The thread needs no_new_privs (see
        ``set_no_new_privs``) or CAP_SYS_ADMIN. A ruleset that enforces nothing does nothing.
        The ruleset stays usable, e.g. to restrict another thread.
        """
        self._check_open()
        if self._fd < 0:
            return
        _syscall.restrict_self(self._fd, flags)


_FILE_ACCESS = int(FILE_ACCESS)


def _fstat_mode(fd: int) -> int:
    try:
        return os.fstat(fd).st_mode
    except OSError as exc:
        raise LandlockError(f"cannot stat fd {fd}: {exc.strerror}", exc.errno) from exc


__all__ = [
    "EnforcementReport",
    "LandlockRuleset",
    "no_new_privs",
    "set_no_new_privs",
]
