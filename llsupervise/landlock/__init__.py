"""Typed ctypes bindings over the Landlock syscalls: create_ruleset, add_rule, restrict_self."""

from llsupervise.landlock._syscall import (
    LandlockError,
    LandlockUnsupported,
    RestrictFlag,
    syscall_numbers,
)
from llsupervise.landlock.ruleset import (
    EnforcementReport,
    LandlockRuleset,
    no_new_privs,
    set_no_new_privs,
)
from llsupervise.landlock.support import (
    KernelSupport,
    detect_support,
    probe_abi,
    probe_errata,
    probe_restrict_flags,
)

__all__ = [
    "EnforcementReport",
    "KernelSupport",
    "LandlockError",
    "LandlockRuleset",
    "LandlockUnsupported",
    "RestrictFlag",
    "detect_support",
    "no_new_privs",
    "probe_abi",
    "probe_errata",
    "probe_restrict_flags",
    "set_no_new_privs",
    "syscall_numbers",
]
