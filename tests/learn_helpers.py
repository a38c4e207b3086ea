"""Helpers for the learning-mode tests: a fake filesystem for synthesis, and a policy reader
that answers "which rights does this path get" lexically (the fake tree has no symlinks)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence

from llsupervise.learn.paths import ancestors
from llsupervise.learn.render import render
from llsupervise.learn.synthesis import Context, Kind, LearnedPolicy
from llsupervise.policy.document import PathBeneathEntry, PolicyDocument
from llsupervise.policy.loader import parse_policy
from llsupervise.rights import NO_FS, AccessFs

HOME = "/home/u"
PWD = "/home/u/proj"
TMPDIR = "/tmp"
VARIABLES = {"HOME": HOME, "PWD": PWD, "TMPDIR": TMPDIR}
ENV = {"HOME": HOME, "PWD": PWD, "TMPDIR": TMPDIR}
SYSTEM_ROOTS = ("/usr", "/etc", "/proc", "/dev")
CODE_ROOTS = ("/usr",)

#: Files of the fake tree; every parent directory exists too.
FILES = (
    "/usr/bin/cc",
    "/usr/lib/libc.so",
    "/etc/passwd",
    "/etc/shadow",
    "/dev/null",
    "/proc/cpuinfo",
    f"{HOME}/.bashrc",
    f"{HOME}/.ssh/id_ed25519",
    f"{HOME}/.ssh/known_hosts",
    f"{HOME}/.aws/credentials",
    f"{PWD}/Makefile",
    f"{PWD}/secret.key",
    f"{PWD}/src/a.c",
    f"{PWD}/src/b.c",
    f"{PWD}/src/inc/a.h",
    f"{PWD}/out/old.txt",
    "/tmp/other-user-file",
    "/srv/data/file",
)
DIRS = (f"{PWD}/build",)


class FakeFs:
    """A read-only tree given as files and (empty) directories."""

    def __init__(self, files: Iterable[str] = FILES, dirs: Iterable[str] = DIRS) -> None:
        self.files = set(files)
        self.dirs = {"/"}
        for path in [*self.files, *dirs]:
            self.dirs.update(list(ancestors(path))[1:])
        self.dirs.update(dirs)

    def kind(self, path: str) -> Kind:
        if path in self.dirs:
            return "dir"
        return "file" if path in self.files else "missing"

    def entries(self, path: str) -> Sequence[str] | None:
        if path not in self.dirs:
            return None
        found = {
            p[len(path) :].lstrip("/").split("/")[0]
            for p in (*self.files, *self.dirs)
            if p != path and p.startswith(path.rstrip("/") + "/")
        }
        return sorted(found)


def context(fs: FakeFs | None = None, variables: dict[str, str] | None = None) -> Context:
    return Context(
        variables=VARIABLES if variables is None else variables,
        system_roots=SYSTEM_ROOTS,
        code_roots=CODE_ROOTS,
        fs=fs or FakeFs(),
        abi=7,
    )


def parsed(policy: LearnedPolicy, env: dict[str, str] | None = None) -> PolicyDocument:
    """The rendered policy, read back by the real policy loader."""
    return parse_policy(render(policy), "learned.toml", ENV if env is None else env)


def _granted(entries: Sequence[PathBeneathEntry], path: str) -> AccessFs:
    rights = NO_FS
    for entry in entries:
        for parent in entry.paths:
            parent = posixpath.normpath(parent)
            if parent == "/" or path == parent or path.startswith(parent + "/"):
                rights |= entry.access
    return rights


def static_rights(document: PolicyDocument, path: str) -> AccessFs:
    """Rights the static layer grants on ``path`` (rules on it and above add up)."""
    return _granted(document.path_beneath, path)


def supervisor_rights(document: PolicyDocument, path: str) -> AccessFs:
    return _granted(document.supervisor.path_beneath, path)


def rule_paths(document: PolicyDocument) -> list[tuple[str, AccessFs]]:
    """Every (path, rights) of both layers."""
    entries = [*document.path_beneath, *document.supervisor.path_beneath]
    return [(posixpath.normpath(p), e.access) for e in entries for p in e.paths]
