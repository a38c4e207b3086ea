"""Properties of learning: whatever was recorded, the learned policy loads, covers it (or says
why not), never writes to protected places, and merging runs does not depend on their order."""

from __future__ import annotations

import posixpath

from hypothesis import given, settings
from hypothesis import strategies as st
from learn_helpers import (
    DIRS,
    FILES,
    HOME,
    PWD,
    SYSTEM_ROOTS,
    VARIABLES,
    FakeFs,
    context,
    parsed,
    rule_paths,
    static_rights,
    supervisor_rights,
)

from llsupervise.learn import synthesis
from llsupervise.learn.paths import expand, is_beneath, to_template
from llsupervise.learn.recording import Recording
from llsupervise.learn.render import render
from llsupervise.learn.synthesis import WRITE_RIGHTS, synthesize
from llsupervise.rights import NO_FS, AccessFs, fs_all

#: The places the policy must never grant write rights on (nor on a directory above them).
PROTECTED = ("/", HOME, f"{HOME}/.ssh", f"{HOME}/.gnupg", f"{HOME}/.aws", "/etc")

#: Existing objects, plus objects a run could create: temporary files, build outputs, files in
#: protected and secret places, odd names.
POOL = sorted(
    {
        *FILES,
        *FakeFs().dirs,
        *DIRS,
        f"{PWD}/build/main.o",
        f"{PWD}/build/sub/deep.o",
        "/tmp/cc1.s",
        "/tmp/dir/x",
        f"{HOME}/.history",
        f"{HOME}/.cache/app/x",
        f"{HOME}/.ssh/tmp",
        f"{HOME}/.gnupg/key",
        "/etc/new.conf",
        "/usr/lib/__pycache__/m.pyc",
        f'{PWD}/odd $name "quoted"\\',
        f"{PWD}/ünïcode",
        f"{PWD}/src/not-utf8-\udcff",
        "/opt/tool/bin/run",
    }
)
EXES = ("/usr/bin/cc", f"{PWD}/build/prog", "/usr/bin/make")


def rights() -> st.SearchStrategy[AccessFs]:
    return st.integers(1, int(fs_all(7))).map(AccessFs)


@st.composite
def recordings(draw: st.DrawFn, run_id: str = "run") -> Recording:
    rec = Recording.new_run(["cmd", run_id], run_id)
    for path, access, static_mask, exe in draw(
        st.lists(
            st.tuples(st.sampled_from(POOL), rights(), st.integers(0, int(fs_all(7))),
                      st.sampled_from(EXES)),
            min_size=1, max_size=25,
        )
    ):  # fmt: skip
        rec.record_path(path, access, exe, static=access & AccessFs(static_mask))
    for path in draw(st.sets(st.sampled_from(POOL), max_size=6)):
        rec.record_created(path)
    for path in draw(st.sets(st.sampled_from(POOL), max_size=6)):
        rec.record_removed(path)
    return rec.templated(VARIABLES)


def _protected(path: str) -> bool:
    return any(is_beneath(point, path) for point in PROTECTED)


def _refusable(path: str) -> bool:
    """Places where rights may be refused: the protected ones, the system hierarchies and the
    standard top-level directories (and their parents), and anything inside secret places."""
    points = (*PROTECTED, *SYSTEM_ROOTS, *synthesis.PROTECTED)
    secrets = (f"{HOME}/.ssh", f"{HOME}/.gnupg", f"{HOME}/.aws", *synthesis.SYSTEM_SECRETS)
    return any(is_beneath(p, path) for p in points) or any(is_beneath(path, s) for s in secrets)


@settings(deadline=None, max_examples=300)
@given(recordings())
def test_never_a_write_rule_on_a_protected_place(rec: Recording) -> None:
    policy = synthesize(rec, context())
    for path, access in rule_paths(parsed(policy)):
        assert not (access & WRITE_RIGHTS and _protected(path)), (path, access)
    for rule in policy.rules:
        if rule.widened and rule.kind != "system":
            assert not _protected(rule.paths[0]), rule


@settings(deadline=None, max_examples=300)
@given(recordings())
def test_every_recorded_access_is_covered_or_refused_with_a_reason(rec: Recording) -> None:
    policy = synthesize(rec, context())
    doc = parsed(policy)
    for template, use in rec.paths.items():
        path = posixpath.normpath(expand(template, VARIABLES))
        need_static = use.static | (use.access & AccessFs.EXECUTE)
        got_static = static_rights(doc, path)
        missing = (need_static & ~got_static) | (
            use.access & ~(got_static | supervisor_rights(doc, path))
        )
        if not missing:
            continue
        refused = NO_FS
        for refusal in policy.refused:
            if is_beneath(path, refusal.path):
                refused |= refusal.access
                assert _refusable(refusal.path), refusal
        assert missing & ~refused == NO_FS, (path, missing, policy.refused)


@settings(deadline=None)
@given(recordings("a"), recordings("b"), recordings("c"))
def test_merging_is_commutative_and_associative(a: Recording, b: Recording, c: Recording) -> None:
    assert a.merged(b) == b.merged(a)
    assert a.merged(b).merged(c) == a.merged(b.merged(c))
    ab, ba = a.merged(b), b.merged(a)
    for template, use in ab.paths.items():
        counts = [r.paths[template].count for r in (a, b) if template in r.paths]
        assert use.count == sum(counts)
        assert use.runs == {r.run_id for r in (a, b) if template in r.paths}
    assert render(synthesize(ab, context())) == render(synthesize(ba, context()))


@settings(deadline=None)
@given(recordings())
def test_recording_files_round_trip(rec: Recording) -> None:
    assert Recording.from_json(rec.to_json(), "r.json") == rec


@given(st.text(st.characters(codec="utf-8"), max_size=30))
def test_templates_round_trip(tail: str) -> None:
    for base in ("/", PWD + "/", HOME + "/", "/tmp/", "/elsewhere/"):
        path = posixpath.normpath(base + tail.replace("\0", ""))
        assert expand(to_template(path, VARIABLES), VARIABLES) == path
