"""The lexical static check: a path relative to the cwd is judged as the absolute path it
names (the fast path is the slow one, applied to the joined path)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs
from llsupervise.supervisor.engine.fastpath import StaticPrefixes
from llsupervise.supervisor.engine.requests import FsRequest
from llsupervise.supervisor.rules.objects import ObjectTable

DIRS = ["a", "a/b", "a/b/c", "d"]
NAMES = st.sampled_from([b"a", b"b", b"c", b"d", b"x", b"..", b"."])
READ = AccessFs.READ_FILE | AccessFs.READ_DIR
RIGHTS = [READ, AccessFs.WRITE_FILE, READ | AccessFs.WRITE_FILE]
FLAGS = st.sampled_from([os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC])


def _prefixes(root: Path, rules: dict[str, AccessFs], table: ObjectTable) -> StaticPrefixes:
    static = Ruleset.empty(AccessFs(0xFFFF))
    for d, access in rules.items():
        static = static.with_fs(table.open(str(root / d)), access)
    return StaticPrefixes(static, table)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rules=st.dictionaries(
        st.sampled_from(DIRS),
        st.sampled_from(RIGHTS),
    ),
    cwd=st.sampled_from(["", *DIRS]),
    rel=st.lists(NAMES, min_size=1, max_size=4).map(b"/".join),
    flags=FLAGS,
)
def test_a_cwd_relative_open_is_judged_as_its_absolute_path(
    tmp_path: Path, rules: dict[str, AccessFs], cwd: str, rel: bytes, flags: int
) -> None:
    for d in DIRS:
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    with ObjectTable() as table:
        prefixes = _prefixes(tmp_path, rules, table)
        base = os.fsencode(str(tmp_path / cwd)).rstrip(b"/")
        relative = FsRequest("openat", "open", -100, rel, flags)
        absolute = FsRequest("openat", "open", -100, base + b"/" + rel, flags)
        assert prefixes.allows(relative, base) == prefixes.allows(absolute)
        # Without the cwd's path a relative open is never taken for a static one.
        assert not prefixes.allows(relative)


def test_an_open_under_a_static_directory_relative_to_it_is_static(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with ObjectTable() as table:
        prefixes = _prefixes(tmp_path, {"a": AccessFs.READ_FILE | AccessFs.READ_DIR}, table)
        base = os.fsencode(str(tmp_path / "a"))
        assert prefixes.allows(FsRequest("openat", "open", -100, b"f", os.O_RDONLY), base)
        assert not prefixes.allows(FsRequest("openat", "open", -100, b"../f", os.O_RDONLY), base)
        assert not prefixes.allows(FsRequest("openat", "open", -100, b"f", os.O_WRONLY), base)
