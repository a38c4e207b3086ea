"""Differential tests: a rule in the supervisor layer means what it means in a plain domain.

For generated rulesets and operation scripts, the same script runs twice against the real kernel:
in a child whose plain Landlock domain is the system directories plus the generated rules, and in
a supervised child (mode "enforce") whose static layer is the system directories only, the
generated rules being supervisor rules. Every operation's outcome (success, with what reading and
``ftruncate`` then did, or the errno) and the tree left behind (names, types, permission bits,
link counts, contents) must be the same. Where it applies (opens of existing objects, creating,
removing, truncating), the pure model's ``fs_allowed`` is a third opinion.

Each case runs in its own copy of a small tree, made afresh for both runs, so the two runs start
from the same state; a rule on a relative path is a rule on that path in every copy.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from grant_paths import grant_path  # noqa: F401 (the fixture, used by pytestmark)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from supervised import SYSTEM_DIRS, policy

from llsupervise.policy.model import Domain, Layer, MutableRuleset, ObjectId, Ruleset, fs_allowed
from llsupervise.rights import (
    FILE_ACCESS,
    FS_NAMES,
    LATEST_ABI,
    NO_FS,
    SUPERVISOR_ONLY_FS,
    AccessFs,
    fs_all,
    fs_read_execute,
    fs_read_write,
    parse_fs,
)
from llsupervise.supervisor.core import Supervisor

#: On both implementations of a granted open (see grant_paths).
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("grant_path")]

CHILD_SOURCE = Path(__file__).with_name("differential_child.py").read_text()
HANDLED = fs_all(LATEST_ABI)

#: Rule targets: directories at several depths, files, a hard link, symlinks (rules follow them).
RULE_TARGETS = (".", "a", "a/b", "a/b/c", "a/e", "d", "a/f", "a/b/g", "d/h", "d/hl", "d/sl_b")
#: Paths that exist in a fresh tree, including ones reached through symlinks and "..".
EXISTING = (
    "a", "a/f", "a/b", "a/b/g", "a/b/c", "a/e", "d", "d/h", "d/hl",
    "d/sl_f", "d/sl_b", "d/dangling", "d/sl_b/g", "a/../d/h",
)  # fmt: skip
FRESH = ("new", "a/new", "a/b/new", "a/e/new", "d/new", "d/sl_b/new")
OPEN_MODES = (
    "r", "w", "rw", "append", "trunc", "rtrunc", "dir", "nofollow", "creat", "excl", "creat_trunc",
)  # fmt: skip
VIAS = ("abs", "cwd", "dirfd")
# Landlock's rights only: connect_unix is llsupervise's own, judged outside Landlock.
RIGHT_NAMES = tuple(name for name, right in FS_NAMES.items() if not right & SUPERVISOR_ONLY_FS)
ALL_RIGHTS = frozenset(RIGHT_NAMES)


def build_tree(base: Path) -> None:
    """a/{f, b/{g, c/}, e/}, d/{h, hl (= a/f), sl_f -> ../a/f, sl_b -> ../a/b, dangling}.

    Runs under SUPERVISOR_UMASK, so that files are rw-r--r-- and directories rwxr-xr-x."""
    os.makedirs(base / "a" / "b" / "c")
    os.mkdir(base / "a" / "e")
    os.mkdir(base / "d")
    for path, content in (("a/f", b"A"), ("a/b/g", b"G"), ("d/h", b"H")):
        (base / path).write_bytes(content)
    os.link(base / "a" / "f", base / "d" / "hl")
    os.symlink("../a/f", base / "d" / "sl_f")
    os.symlink("../a/b", base / "d" / "sl_b")
    os.symlink("../a/made", base / "d" / "dangling")


@dataclass(frozen=True)
class Step:
    op: str
    path: str
    path2: str = ""
    mode: str = ""
    via: str = "abs"

    def __repr__(self) -> str:
        args = " ".join(a for a in (self.path, self.path2) if a)
        mode = f" [{self.mode}]" if self.mode else ""
        return f"<{self.op} {args}{mode} via {self.via}>"

    def to_json(self) -> dict[str, str]:
        return {
            "op": self.op,
            "path": self.path,
            "path2": self.path2,
            "mode": self.mode,
            "via": self.via,
        }


@dataclass(frozen=True)
class Rule:
    path: str
    rights: frozenset[str]

    def __repr__(self) -> str:
        if len(self.rights) > len(RIGHT_NAMES) // 2:
            missing = sorted(ALL_RIGHTS - self.rights)
            return f"<{self.path}: all but {', '.join(missing) or 'nothing'}>"
        return f"<{self.path}: {', '.join(sorted(self.rights))}>"

    @property
    def access(self) -> AccessFs:
        return parse_fs(self.rights)


def _steps() -> st.SearchStrategy[Step]:
    via = st.sampled_from(VIAS)
    # Mostly new names: an existing one mostly makes creation fail early with EEXIST.
    targets = st.sampled_from(FRESH * 4 + EXISTING)
    return st.one_of(
        st.builds(Step, st.just("open"), st.sampled_from((".", *EXISTING, *FRESH)),
                  mode=st.sampled_from(OPEN_MODES), via=via),
        st.builds(Step, st.sampled_from(("mkdir", "mkfifo")), targets, via=via),
        st.builds(Step, st.sampled_from(("unlink", "rmdir", "truncate")),
                  st.sampled_from(EXISTING + FRESH[:2]), via=via),
        st.builds(Step, st.just("rename"), st.sampled_from(EXISTING), targets,
                  mode=st.sampled_from(("", "noreplace", "exchange")), via=via),
        st.builds(Step, st.just("link"), st.sampled_from(EXISTING), targets,
                  mode=st.sampled_from(("", "nofollow")), via=via),
        st.builds(Step, st.just("symlink"), targets, st.sampled_from(("../a/f", "b", "/x")),
                  via=via),
    )  # fmt: skip


#: A few rights, or all rights but a few: most outcomes then hinge on one right.
_ALL_BUT_A_FEW = st.frozensets(st.sampled_from(RIGHT_NAMES), max_size=3).map(
    lambda missing: ALL_RIGHTS - missing
)
RIGHTS = st.one_of(
    st.frozensets(st.sampled_from(RIGHT_NAMES), min_size=1, max_size=4),
    _ALL_BUT_A_FEW,
    _ALL_BUT_A_FEW,
)
#: The top directories twice as often: their rules cover most operations.
RULES = st.lists(
    st.builds(Rule, st.sampled_from((*RULE_TARGETS, ".", "a", "d")), RIGHTS), min_size=1, max_size=5
)
#: Opens of what a fresh tree holds, without creating anything: the model judges all of them.
_PROBES = st.builds(
    Step,
    st.just("open"),
    st.sampled_from((".", *EXISTING)),
    mode=st.sampled_from([m for m in OPEN_MODES if m not in ("creat", "excl", "creat_trunc")]),
    via=st.sampled_from(VIAS),
)
#: A case is a short script of any operations, or a longer run of probes.
CASES = st.lists(
    st.one_of(
        st.lists(_steps(), min_size=1, max_size=3),
        st.lists(_PROBES, min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=12,
)
#: The supervisor's own umask in these tests; the children's are narrower, the same or wider:
#: what is created on a child's behalf must get the child's umask only.
SUPERVISOR_UMASK = 0o022
UMASKS = st.sampled_from((0o022, 0o077, 0o002, 0))


# --- the pure model as an oracle ------------------------------------------------------------------


def _object(path: str | Path) -> ObjectId:
    st_ = os.stat(path)
    return ObjectId(st_.st_dev, st_.st_ino)


def _chain(path: str) -> list[ObjectId]:
    """The object at a resolved path and its ancestors up to the root, as Landlock walks them."""
    chain = [_object(path)]
    while path != "/":
        path = os.path.dirname(path)
        chain.append(_object(path))
    return chain


def _static(root: Path) -> Ruleset:
    fs: dict[ObjectId, AccessFs] = {}
    for d in SYSTEM_DIRS:
        fs[_object(d)] = fs.get(_object(d), NO_FS) | fs_read_execute(LATEST_ABI)
    fs[_object(root / "out")] = fs_read_write(LATEST_ABI)
    return Ruleset(HANDLED, fs=fs)


def model_domain(root: Path, copy: Path, rules: Sequence[Rule]) -> Domain:
    static = _static(root)
    granted: dict[ObjectId, AccessFs] = {}
    for rule in rules:
        target = copy / rule.path
        access = rule.access if target.is_dir() else rule.access & FILE_ACCESS
        obj = _object(target)
        granted[obj] = granted.get(obj, NO_FS) | access
    supervisor = MutableRuleset.for_layer(static)
    supervisor.replace(Ruleset(HANDLED, fs=granted))
    supervisor.commit()
    return (Layer(static, supervisor),)


_READS = ("r", "rw", "rtrunc", "dir", "nofollow")
_WRITES = ("w", "rw", "append", "trunc")
_CREATING = ("creat", "excl", "creat_trunc")
_MAKE = {"mkdir": AccessFs.MAKE_DIR, "mkfifo": AccessFs.MAKE_FIFO, "symlink": AccessFs.MAKE_SYM}


def _open_rights(mode: int, how: str) -> AccessFs | None:
    if stat.S_ISDIR(mode):
        return AccessFs.READ_DIR if how in ("r", "dir", "nofollow") else None  # else EISDIR
    if not stat.S_ISREG(mode) or how == "dir":
        return None
    access = AccessFs.READ_FILE if how in _READS else NO_FS
    if how in _WRITES:
        access |= AccessFs.WRITE_FILE
    if how in ("trunc", "rtrunc"):
        access |= AccessFs.TRUNCATE
    return access


def landlock_check(copy: Path, step: Step) -> tuple[str, AccessFs, bool] | None:
    """What Landlock checks for ``step`` in a fresh tree: the resolved path its walk starts
    from, the rights, and whether an allowed step must then succeed. None where the model does
    not apply: rename and link (``refer`` is out of its scope), creation of an existing name,
    missing targets, errors the VFS raises before Landlock."""
    full = copy / step.path
    parent = os.path.dirname(full)
    try:
        if step.op == "open" and step.mode not in _CREATING:
            if step.mode == "nofollow" and full.is_symlink():
                return None  # ELOOP
            real = os.path.realpath(full, strict=True)
            access = _open_rights(os.stat(real).st_mode, step.mode)
            return None if access is None else (real, access, True)
        if step.op in _MAKE and not os.path.lexists(full):
            return os.path.realpath(parent, strict=True), _MAKE[step.op], True
        if step.op in ("unlink", "rmdir") and os.path.lexists(full):
            is_dir = stat.S_ISDIR(os.lstat(full).st_mode)
            if is_dir != (step.op == "rmdir"):
                return None  # EISDIR, ENOTDIR
            access = AccessFs.REMOVE_DIR if is_dir else AccessFs.REMOVE_FILE
            # An allowed rmdir may still find the directory not empty.
            return os.path.realpath(parent, strict=True), access, not is_dir
        if step.op == "truncate":
            real = os.path.realpath(full, strict=True)
            return (real, AccessFs.TRUNCATE, True) if os.path.isfile(real) else None
    except OSError:
        return None
    return None


def model_verdict(domain: Domain, copy: Path, step: Step) -> str | None:
    """The model's verdict: "ok" (allowed, and nothing else can fail), "allowed" (Landlock
    allows it; the VFS may still refuse) or "EACCES"; None where the model does not apply."""
    check = landlock_check(copy, step)
    if check is None:
        return None
    path, access, exact = check
    if not fs_allowed(domain, _chain(path), access):
        return "EACCES"
    return "ok" if exact else "allowed"


def model_verdicts(
    root: Path, index: int, case: Sequence[Step], rules: Sequence[Rule]
) -> list[tuple[str | None, str | None]]:
    """The model's verdicts on a case's steps in both fresh copies (plain, supervised).

    The model judges the fresh trees, before either run changes them, so it applies to a
    case's steps up to the first that may change the tree's shape."""
    copies = [root / side / f"t{index}" for side in ("plain", "sup")]
    domains = [model_domain(root, copy, rules) for copy in copies]
    verdicts: list[tuple[str | None, str | None]] = []
    for j, step in enumerate(case):
        if any(mutates(earlier) for earlier in case[:j]):
            verdicts.append((None, None))
        else:
            plain, sup = (model_verdict(d, c, step) for d, c in zip(domains, copies, strict=True))
            verdicts.append((plain, sup))
    return verdicts


def agrees(verdict: str | None, outcome: str) -> bool:
    first = outcome.split()[0]
    if verdict is None:
        return True
    if verdict == "allowed":
        return first != "EACCES"
    return first == verdict


def mutates(step: Step) -> bool:
    """Whether ``step`` may change the tree's shape (the model judges a fresh tree)."""
    return step.op != "open" or step.mode in _CREATING


# --- running both sides ---------------------------------------------------------------------------


def snapshot(copy: Path) -> dict[str, tuple[Any, ...]]:
    """What a copy holds: types, permission bits, link counts, contents, symlink targets."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(copy):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, copy)
            st_ = os.lstat(path)
            perms = oct(stat.S_IMODE(st_.st_mode))
            if stat.S_ISLNK(st_.st_mode):
                found[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                found[rel] = ("dir", perms)
            elif stat.S_ISREG(st_.st_mode):
                found[rel] = ("file", perms, st_.st_nlink, Path(path).read_bytes())
            else:
                found[rel] = (stat.filemode(st_.st_mode), perms)
    return found


def _cases_json(base: Path, cases: Sequence[Sequence[Step]]) -> list[dict[str, Any]]:
    return [
        {"base": str(base / f"t{i}"), "steps": [s.to_json() for s in case]}
        for i, case in enumerate(cases)
    ]


def _supervisor_rules(base: Path, rules: Sequence[Rule], copies: int) -> str:
    text = ""
    for rule in rules:
        # Written as the real path, as check asks: at launch a supervisor rule through a
        # symlink the program may have planted (here, in a directory it may change) is left
        # out (rules.binding.resolve_at_launch). The rule binds to the same object either way.
        parents = ", ".join(
            json.dumps(os.path.realpath(base / f"t{i}" / rule.path)) for i in range(copies)
        )
        access = ", ".join(json.dumps(r) for r in sorted(rule.rights))
        text += (
            f"\n[[supervisor.path_beneath]]\nallowed_access = [{access}]\nparent = [{parents}]\n"
        )
    return text


async def _plain(
    root: Path, rules: Sequence[Rule], cases: Sequence[Sequence[Step]], umask: int
) -> list[list[str]]:
    base = root / "plain"
    kernel_rules: list[list[Any]] = [[d, int(fs_read_execute(LATEST_ABI))] for d in SYSTEM_DIRS]
    kernel_rules.append([str(root / "out"), int(fs_read_write(LATEST_ABI))])
    for i in range(len(cases)):
        kernel_rules += [[str(base / f"t{i}" / r.path), int(r.access)] for r in rules]
    spec = {
        "umask": umask,
        "sandbox": {"handled": int(HANDLED), "rules": kernel_rules},
        "cases": _cases_json(base, cases),
    }
    proc = await trio.run_process(
        [sys.executable, "-c", CHILD_SOURCE, json.dumps(spec)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    outcomes: list[list[str]] = json.loads(proc.stdout)
    return outcomes


async def _supervised(
    root: Path, rules: Sequence[Rule], cases: Sequence[Sequence[Step]], umask: int
) -> list[list[str]]:
    base = root / "sup"
    doc = policy(root, supervisor_rules=_supervisor_rules(base, rules, len(cases)))
    spec = {"umask": umask, "sandbox": None, "cases": _cases_json(base, cases)}
    out_path, err_path = root / "out" / "stdout", root / "out" / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        async with Supervisor.open(doc) as sup:
            status = await sup.run(
                [sys.executable, "-c", CHILD_SOURCE, json.dumps(spec)],
                forward_signals=False,
                stdio=(None, out.fileno(), err.fileno()),
            )
    assert status == 0, err_path.read_text()
    outcomes: list[list[str]] = json.loads(out_path.read_bytes())
    return outcomes


@dataclass
class Comparison:
    mismatches: list[str]
    #: Every outcome seen, from both runs.
    outcomes: list[str]


def run_both(rules: Sequence[Rule], cases: Sequence[Sequence[Step]], umask: int) -> Comparison:
    """Run ``cases`` (each in a fresh copy) in a plain domain and under the supervisor."""
    saved_umask = os.umask(SUPERVISOR_UMASK)
    try:
        return _run_both(rules, cases, umask)
    finally:
        os.umask(saved_umask)


def _run_both(rules: Sequence[Rule], cases: Sequence[Sequence[Step]], umask: int) -> Comparison:
    with tempfile.TemporaryDirectory(prefix="llsupervise-diff-") as tmp:
        root = Path(tmp)
        (root / "out").mkdir()
        for side in ("plain", "sup"):
            for i in range(len(cases)):
                build_tree(root / side / f"t{i}")
        oracle = [model_verdicts(root, i, case, rules) for i, case in enumerate(cases)]
        results: dict[str, list[list[str]]] = {}

        async def main() -> None:
            async def side(name: str, fn: Any) -> None:
                results[name] = await fn(root, rules, cases, umask)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(side, "plain", _plain)
                nursery.start_soon(side, "sup", _supervised)

        trio.run(main)
        plain, sup = results["plain"], results["sup"]
        mismatches: list[str] = []
        for i, case in enumerate(cases):
            for j, step in enumerate(case):
                p, s = plain[i][j], sup[i][j]
                plain_v, sup_v = oracle[i][j]
                if p != s or not agrees(plain_v, p) or not agrees(sup_v, s):
                    model = "" if plain_v is None else f" model={plain_v}/{sup_v}"
                    mismatches.append(
                        f"case {i} step {j} {step!r}: kernel={p!r} supervised={s!r}{model}"
                    )
            before, after = snapshot(root / "plain" / f"t{i}"), snapshot(root / "sup" / f"t{i}")
            if before != after:
                differing = sorted(
                    k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
                )
                mismatches.append(
                    f"case {i}: trees differ: "
                    + "; ".join(
                        f"{k}: kernel={before.get(k)} supervised={after.get(k)}" for k in differing
                    )
                )
        seen = [o for side_results in (plain, sup) for case_out in side_results for o in case_out]
        return Comparison(mismatches, seen)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rules=RULES, cases=CASES, umask=UMASKS)
def test_supervisor_rules_match_a_plain_domain(
    rules: list[Rule], cases: list[list[Step]], umask: int
) -> None:
    result = run_both(rules, cases, umask)
    assert not result.mismatches, "\n".join(result.mismatches)


def test_fixed_script_covers_grants_denials_and_refer() -> None:
    """A hand-written script whose outcomes are known: the harness can tell them apart."""
    rules = [
        Rule("a", frozenset({"read_file", "read_dir", "write_file", "make_reg", "remove_file"})),
        Rule("d", frozenset({"read_file", "make_reg", "make_dir", "remove_file", "make_sym"})),
        Rule("a/b/g", frozenset({"truncate"})),
    ]
    cases = [
        [Step("open", "a/f", mode="r", via="abs")],  # granted on a
        [Step("open", "d/sl_f", mode="r", via="cwd")],  # a symlink into a: judged on a/f
        [Step("open", "a/f", mode="trunc", via="dirfd")],  # no truncate on a
        [Step("open", "a/b/g", mode="trunc", via="abs")],  # truncate on the file itself
        # An fd carries the truncate right of its open: a/b/g's has it, a/f's refuses ftruncate.
        [Step("open", "a/b/g", mode="w", via="cwd"), Step("open", "a/f", mode="rw", via="cwd")],
        [Step("rename", "a/f", "d/new", via="abs")],  # remove+make, but no refer: EXDEV
        [Step("mkdir", "d/new", via="cwd"), Step("open", "d/new/x", mode="creat", via="cwd")],
        [Step("unlink", "d/h", via="dirfd")],
        [Step("rmdir", "a/e", via="abs")],  # no remove_dir: EACCES
        [Step("symlink", "d/new", "../a/f", via="abs"), Step("open", "d/new", mode="r")],
    ]
    result = run_both(rules, cases, 0o027)
    assert not result.mismatches, "\n".join(result.mismatches)
    firsts = {o.split()[0] for o in result.outcomes}
    assert {"ok", "EACCES", "EXDEV"} <= firsts
    assert "ok read=ok:41 ftruncate=EACCES" in result.outcomes  # the rights travel with the fd


def every_operation() -> list[list[Step]]:
    """Each operation and mode on paths of every kind (file, directory, symlinks to each,
    a dangling one, a hard link, a new name, a name through a symlinked directory)."""
    probes = (".", "a", "a/f", "d/sl_f", "d/sl_b", "d/dangling", "d/hl", "a/../d/h", "d/new")
    cases: list[list[Step]] = []
    steps: list[Step] = []
    for mode in OPEN_MODES:
        opens = [Step("open", path, mode=mode) for path in probes]
        if mode in _CREATING:
            steps += opens
        else:  # these change no names: one copy serves them all
            cases.append([replace(o, via=VIAS[i % len(VIAS)]) for i, o in enumerate(opens)])
    for op in ("mkdir", "mkfifo", "symlink"):
        for path in ("d/new", "d/sl_b/new", "a/f", "new"):
            steps.append(Step(op, path, "../a/f" if op == "symlink" else ""))
    for op in ("unlink", "rmdir", "truncate"):
        for path in ("a/f", "d/sl_f", "d/hl", "a/e", "a/b", "d/dangling"):
            steps.append(Step(op, path))
    renames = (
        ("a/f", "d/new"), ("d/h", "d/hl"), ("d/h", "d/new"), ("a/e", "d/new"),
        ("a", "d/sl_b/new"), ("d/sl_f", "a/new"), ("a/b/g", "a/f"), ("a/e", "a/b"),
    )  # fmt: skip
    for mode in ("", "noreplace", "exchange"):
        steps += [Step("rename", src, dst, mode) for src, dst in renames]
    for mode in ("", "nofollow"):
        for src, dst in (("a/f", "d/new"), ("d/sl_f", "d/new"), ("d/h", "d/new"), ("a/f", "a/b")):
            steps.append(Step("link", src, dst, mode))
    return cases + [[replace(step, via=VIAS[i % len(VIAS)])] for i, step in enumerate(steps)]


@pytest.mark.parametrize(
    ("rules", "seen", "unseen"),
    [
        ([Rule(".", ALL_RIGHTS)], {"ok"}, {"EACCES", "EXDEV"}),
        ([Rule(".", ALL_RIGHTS - {"refer"})], {"ok", "EXDEV"}, {"EACCES"}),
        (
            [
                Rule(".", ALL_RIGHTS - {"truncate", "make_reg"}),
                Rule("a/f", frozenset({"truncate"})),
            ],
            {"ok", "EACCES"},
            set(),
        ),
        (
            [
                Rule(
                    "a", frozenset({"read_file", "write_file", "remove_file", "refer", "make_dir"})
                ),
                Rule("d", frozenset({"read_dir", "make_reg", "make_sym", "make_fifo", "refer"})),
                Rule("d/sl_b", frozenset({"remove_dir", "make_reg", "read_dir"})),
            ],
            {"ok", "EACCES"},
            set(),
        ),
    ],
    ids=["all", "all-but-refer", "truncate-on-one-file", "split"],
)
def test_every_operation_matches_a_plain_domain(
    rules: list[Rule], seen: set[str], unseen: set[str]
) -> None:
    result = run_both(rules, every_operation(), 0o022)
    assert not result.mismatches, "\n".join(result.mismatches)
    firsts = {o.split()[0] for o in result.outcomes}
    assert seen <= firsts and not unseen & firsts, firsts


def test_created_objects_get_a_wider_child_umask() -> None:
    """The supervisor's umask (0o022 here) must not narrow what the child (0o002) creates."""
    rules = [Rule("d", frozenset({"make_dir", "make_reg", "make_fifo", "write_file"}))]
    cases = [
        [Step("mkdir", "d/new")],  # 0o777 & ~0o002: rwxrwxr-x, not rwxr-xr-x
        [Step("open", "d/new", mode="creat")],
        [Step("mkfifo", "d/new")],
    ]
    result = run_both(rules, cases, 0o002)
    assert not result.mismatches, "\n".join(result.mismatches)
