"""What the running kernel's Landlock supports: ABI, errata, rights, scopes, restrict_self flags."""

from __future__ import annotations

import errno
import functools
import threading

from msgspec import Struct, field

from llsupervise.landlock import _syscall
from llsupervise.landlock._syscall import LandlockError, RestrictFlag
from llsupervise.rights import AccessFs, AccessNet, Scope, fs_all, names, net_all, scope_all

_NOT_AVAILABLE = (errno.ENOSYS, errno.EOPNOTSUPP)


def probe_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is not built in or not enabled."""
    abi, err = _syscall.create_ruleset_raw(None, 0, _syscall.CREATE_RULESET_VERSION)
    if abi >= 0:
        return abi
    if err in _NOT_AVAILABLE:
        return 0
    raise _syscall.error("landlock_create_ruleset(VERSION)", err)


def probe_errata() -> int:
    """Bitmask of fixed Landlock errata; 0 on kernels that predate the query (EINVAL)."""
    errata, err = _syscall.create_ruleset_raw(None, 0, _syscall.CREATE_RULESET_ERRATA)
    if errata >= 0:
        return errata
    if err == errno.EINVAL or err in _NOT_AVAILABLE:
        return 0
    raise _syscall.error("landlock_create_ruleset(ERRATA)", err)


def _try_restrict_flags() -> dict[str, int]:
    # Measured on 6.18 (ABI 7), calling landlock_restrict_self(-1, flag):
    # - without no_new_privs and CAP_SYS_ADMIN every flag gives EPERM (checked before the flags),
    #   so no_new_privs is set first; it is per-thread and this thread is thrown away;
    # - an unknown flag (TSYNC here) gives EINVAL; a known one EBADF, from the fd lookup;
    # - LOG_SUBDOMAINS_OFF alone is the exception: with fd -1 it is a real request that succeeds
    #   (returns 0) and mutes this thread's subdomain logs: another reason for a throwaway thread.
    _syscall.prctl(_syscall.PR_SET_NO_NEW_PRIVS, 1)
    known: dict[str, int] = {}
    for flag in RestrictFlag:
        assert flag.name is not None
        result, err = _syscall.restrict_self_raw(-1, flag)
        if result == 0 or err == errno.EBADF:
            known[flag.name.lower()] = int(flag)
        elif err != errno.EINVAL and err not in _NOT_AVAILABLE:
            raise _syscall.error(f"landlock_restrict_self(-1, {flag.name})", err)
    return known


def probe_restrict_flags() -> dict[str, int]:
    """The ``landlock_restrict_self`` flags this kernel accepts, found by trying each one.

    The calls run in a short-lived thread so that neither the no_new_privs they need nor the one
    flag that takes effect with fd -1 touches the caller. Probed once per process (the kernel
    does not change under it): every ruleset built asks, three times in a run's start-up.
    """
    return dict(_probed_restrict_flags())


@functools.cache
def _probed_restrict_flags() -> dict[str, int]:
    results: list[dict[str, int]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(_try_restrict_flags())
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="landlock-flag-probe", daemon=True)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
    return results[0]


class KernelSupport(Struct, frozen=True):
    """Landlock features of one kernel; a pretended one (``for_abi``) lets tests act old."""

    abi: int
    errata: int
    fs: AccessFs
    net: AccessNet
    scopes: Scope
    #: landlock_restrict_self flags accepted, keyed by lower-case name (``"log_same_exec_off"``).
    restrict_flags: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_abi(
        cls, abi: int, *, errata: int = 0, restrict_flags: dict[str, int] | None = None
    ) -> KernelSupport:
        """What a kernel of ``abi`` supports by the book; nothing is asked of this kernel."""
        return cls(
            abi=abi,
            errata=errata,
            fs=fs_all(abi),
            net=net_all(abi),
            scopes=scope_all(abi),
            restrict_flags=dict(restrict_flags or {}),
        )

    def to_json(self) -> dict[str, int | list[str]]:
        flags = sorted(self.restrict_flags.items(), key=lambda item: item[1])
        return {
            "abi": self.abi,
            "errata": self.errata,
            "fs": names(self.fs),
            "net": names(self.net),
            "scopes": names(self.scopes),
            "restrict_flags": [name for name, _ in flags],
        }


def detect_support() -> KernelSupport:
    """Probe the running kernel; ``abi == 0`` means Landlock is unavailable."""
    abi = probe_abi()
    if abi == 0:
        return KernelSupport.for_abi(0)
    return KernelSupport.for_abi(abi, errata=probe_errata(), restrict_flags=probe_restrict_flags())


__all__ = [
    "KernelSupport",
    "LandlockError",
    "detect_support",
    "probe_abi",
    "probe_errata",
    "probe_restrict_flags",
]
