"""The lexical static check (engine.fastpath) against a plain computation of the same rule:
the rights of the static rules on a path's lexical ancestors cover what the request needs."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.requests import FsRequest, open_rights
from llsupervise.supervisor.rules.objects import ObjectTable

DIRS = ["a", "a/b", "a/b/c", "d"]
NAMES = st.sampled_from([b"a", b"b", b"c", b"d", b"x", b"..", b"."])
READ = AccessFs.READ_FILE | AccessFs.READ_DIR
RIGHTS = [READ, AccessFs.WRITE_FILE, READ | AccessFs.WRITE_FILE, AccessFs.EXECUTE]
FLAGS = st.sampled_from([os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, -1])


def slow(root: Path, rules: dict[str, AccessFs], path: bytes, flags: int) -> bool:
    """The same judgement, by the enum flags and string paths."""
    if b"/.." in path:
        return False
    need = AccessFs.EXECUTE if flags == -1 else open_rights(flags, False) | open_rights(flags, True)
    granted = AccessFs(0)
    for d, access in rules.items():
        prefix = os.fsencode(str(root / d))
        if path == prefix or path.startswith(prefix + b"/"):
            granted |= access
    return need & ~granted == AccessFs(0)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rules=st.dictionaries(st.sampled_from(DIRS), st.sampled_from(RIGHTS)),
    rel=st.lists(NAMES, min_size=1, max_size=4).map(b"/".join),
    flags=FLAGS,
)
def test_the_fast_check_is_the_plain_one(
    tmp_path: Path, rules: dict[str, AccessFs], rel: bytes, flags: int
) -> None:
    for d in DIRS:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    with ObjectTable() as table:
        static = Ruleset.empty(AccessFs(0xFFFF))
        for d, access in rules.items():
            static = static.with_fs(table.open(str(tmp_path / d)), access)
        prefixes = StaticPrefixes(static, table)
        path = os.fsencode(str(tmp_path)) + b"/" + rel
        if flags == -1:
            request = FsRequest("execve", "execute", -100, path)
        else:
            request = FsRequest("openat", "open", -100, path, flags)
        assert prefixes.allows(request) == slow(tmp_path, rules, path, flags)
        # Relative paths are never taken for static ones (a symlink beside them may lead out).
        assert not prefixes.allows(FsRequest("openat", "open", -100, rel, max(flags, 0)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rules=st.dictionaries(st.sampled_from(DIRS), st.sampled_from(RIGHTS)),
    rel=st.lists(NAMES, min_size=0, max_size=3).map(b"/".join),
    flags=FLAGS,
)
def test_a_link_in_root_is_taken_as_its_target(
    tmp_path: Path, rules: dict[str, AccessFs], rel: bytes, flags: int
) -> None:
    """``/L`` standing for ``tmp/a`` (as ``/lib`` for ``/usr/lib``): a path through it is
    judged as the same path under the target, and one beside it (``/Lx``) is not."""
    for d in DIRS:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    target = os.fsencode(str(tmp_path / "a"))
    with ObjectTable() as table:
        static = Ruleset.empty(AccessFs(0xFFFF))
        for d, access in rules.items():
            static = static.with_fs(table.open(str(tmp_path / d)), access)
        prefixes = StaticPrefixes(static, table, links={b"/L": target})
        for link, resolved in ((b"/L", target), (b"/Lx", b"/Lx")):
            path = link + b"/" + rel if rel else link
            real = resolved + b"/" + rel if rel else resolved
            if flags == -1:
                request = FsRequest("execve", "execute", -100, path)
            else:
                request = FsRequest("openat", "open", -100, path, flags)
            assert prefixes.allows(request) == slow(tmp_path, rules, real, flags)


def test_root_links_are_the_symlinks_in_root() -> None:
    from llsupervise.supervisor.engine.fastpath import root_links

    links = root_links()
    for name in os.listdir("/"):
        path = "/" + name
        if os.path.islink(path) and os.path.isdir(path):
            assert links[os.fsencode(path)] == os.fsencode(os.path.realpath(path))
        else:
            assert os.fsencode(path) not in links


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    root_rights=st.sampled_from(RIGHTS),
    rules=st.dictionaries(st.sampled_from(DIRS), st.sampled_from(RIGHTS)),
    rel=st.lists(NAMES, min_size=0, max_size=4).map(b"/".join),
    flags=FLAGS,
)
def test_a_rule_on_root_covers_every_path(
    tmp_path: Path, root_rights: AccessFs, rules: dict[str, AccessFs], rel: bytes, flags: int
) -> None:
    """A rule on "/" adds its rights to every absolute path, "/" itself included."""
    for d in DIRS:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    with ObjectTable() as table:
        static = Ruleset.empty(AccessFs(0xFFFF)).with_fs(table.open("/"), root_rights)
        for d, access in rules.items():
            static = static.with_fs(table.open(str(tmp_path / d)), access)
        prefixes = StaticPrefixes(static, table, links={})
        for path in (os.fsencode(str(tmp_path)) + b"/" + rel, b"/", b"/" + rel):
            if b"/.." in path:
                continue
            need = (
                AccessFs.EXECUTE
                if flags == -1
                else open_rights(flags, False) | open_rights(flags, True)
            )
            expected = need & ~(root_rights | _under(tmp_path, rules, path)) == AccessFs(0)
            if flags == -1:
                request = FsRequest("execve", "execute", -100, path)
            else:
                request = FsRequest("openat", "open", -100, path, flags)
            assert prefixes.allows(request) == expected


def _under(root: Path, rules: dict[str, AccessFs], path: bytes) -> AccessFs:
    granted = AccessFs(0)
    for d, access in rules.items():
        prefix = os.fsencode(str(root / d))
        if path == prefix or path.startswith(prefix + b"/"):
            granted |= access
    return granted
