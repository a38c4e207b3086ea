"""The running system as synthesis sees it: variables, system hierarchies, the filesystem."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping, Sequence

from llsupervise.landlock import detect_support
from llsupervise.learn.synthesis import Context, Kind
from llsupervise.rights import LATEST_ABI

#: Where programs and libraries live: read-only, and executable once anything is executed.
CODE_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
#: System data: read-only.
DATA_ROOTS = ("/etc", "/proc", "/dev", "/sys")


class LiveFs:
    """The real filesystem, read-only (paths follow symlinks, as Landlock rules do)."""

    def kind(self, path: str) -> Kind:
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            return "missing"
        return "dir" if stat.S_ISDIR(mode) else "file"

    def entries(self, path: str) -> Sequence[str] | None:
        try:
            return sorted(os.listdir(path))
        except (OSError, ValueError):
            return None


def live_variables(env: Mapping[str, str], cwd: str) -> dict[str, str]:
    """``PWD`` (the working directory), ``HOME`` and ``TMPDIR`` (``/tmp`` when unset), resolved
    the way recorded paths are: symlinks followed."""
    found = {"PWD": os.path.realpath(cwd), "TMPDIR": os.path.realpath(env.get("TMPDIR") or "/tmp")}
    if env.get("HOME"):
        found["HOME"] = os.path.realpath(env["HOME"])
    return found


def python_prefixes() -> list[str]:
    """This interpreter's installation (and the one a virtual environment is based on)."""
    prefixes = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    return sorted({os.path.realpath(p) for p in prefixes})


def live_context(variables: Mapping[str, str]) -> Context:
    def existing(paths: Sequence[str]) -> list[str]:
        return sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})

    code = existing([*CODE_ROOTS, *python_prefixes()])
    data = existing(DATA_ROOTS)
    abi = detect_support().abi
    return Context(
        variables=dict(variables),
        system_roots=sorted({*code, *data}),
        code_roots=code,
        fs=LiveFs(),
        abi=min(abi, LATEST_ABI) if abi else LATEST_ABI,
    )
