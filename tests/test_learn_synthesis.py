"""From recordings to policies: plain cases of the synthesis, rendering and recording files."""

from __future__ import annotations

import json

import pytest
from learn_helpers import (
    ENV,
    HOME,
    PWD,
    FakeFs,
    context,
    parsed,
    rule_paths,
    static_rights,
    supervisor_rights,
)

from llsupervise.learn import places
from llsupervise.learn.paths import is_beneath
from llsupervise.learn.recording import Recording, RecordingError
from llsupervise.learn.render import CREATED_MARKER, render
from llsupervise.learn.summary import summary
from llsupervise.learn.synthesis import WRITE_RIGHTS, LearnedPolicy, synthesize
from llsupervise.policy.loader import parse_policy
from llsupervise.rights import NO_FS, AccessFs, AccessNet

R, W, X = AccessFs.READ_FILE, AccessFs.WRITE_FILE, AccessFs.EXECUTE
MAKE, REMOVE = AccessFs.MAKE_REG, AccessFs.REMOVE_FILE


def recording(
    *accesses: tuple[str, AccessFs] | tuple[str, AccessFs, AccessFs],
    created: tuple[str, ...] = (),
    removed: tuple[str, ...] = (),
    run_id: str = "run1",
    exe: str = "/usr/bin/cc",
) -> Recording:
    rec = Recording.new_run(["cc"], run_id)
    for path, access, *static in accesses:
        rec.record_path(path, access, exe, static=static[0] if static else NO_FS)
    for path in created:
        rec.record_created(path)
    for path in removed:
        rec.record_removed(path)
    return rec


def learned(rec: Recording, fs: FakeFs | None = None) -> LearnedPolicy:
    return synthesize(rec, context(fs))


def test_code_hierarchies_are_whole_and_system_data_is_listed_file_by_file() -> None:
    policy = learned(
        recording(
            ("/usr/bin/cc", X, X), ("/usr/lib/libc.so", R), ("/etc/passwd", R),
            ("/proc/cpuinfo", R, R), ("/dev/null", R),
        )
    )  # fmt: skip
    doc = parsed(policy)
    assert sorted(rule_paths(doc)) == [
        ("/dev/null", R), ("/etc/passwd", R), ("/proc/cpuinfo", R), ("/usr", X | R),
    ]  # fmt: skip
    assert doc.supervisor.path_beneath == ()
    assert {r.kind for r in policy.rules} == {"system", "sysdata"}
    assert static_rights(doc, "/etc/shadow") == NO_FS
    assert "System data, read-only" in render(policy)


def test_code_hierarchies_are_executable_once_anything_ran() -> None:
    """ld.so and #! interpreters are executed by the kernel without a trapped call."""
    without = parsed(learned(recording(("/usr/lib/libc.so", R))))
    assert static_rights(without, "/usr/lib/ld.so") == R
    ran = parsed(learned(recording(("/usr/lib/libc.so", R), (f"{PWD}/build/prog", X, X))))
    assert static_rights(ran, "/usr/lib/ld.so") == R | X


def test_temporary_files_are_covered_by_their_directory() -> None:
    tmp = "${TMPDIR}/ccX.s"
    rec = recording(
        ("${TMPDIR}", MAKE), (tmp, R | W), ("${TMPDIR}", REMOVE),
        created=(tmp,), removed=(tmp,),
    )  # fmt: skip
    policy = learned(rec)
    doc = parsed(policy)
    assert [(p, a) for p, a in rule_paths(doc)] == [("/tmp", R | W | MAKE | REMOVE)]
    [rule] = policy.rules
    assert rule.transient == ("/tmp/ccX.s",)
    assert rule.exposes == ("/tmp/other-user-file",)
    text = render(policy)
    assert 'parent = ["${TMPDIR}"]' in text
    assert "It also exposes existing entries no run touched: other-user-file." in text


def test_temporary_directories_anchor_on_the_first_existing_parent() -> None:
    """Created and gone by the end: no rule can name them."""
    rec = recording(
        ("${PWD}", AccessFs.MAKE_DIR), ("${PWD}/t", MAKE), ("${PWD}/t/x", W | R),
        created=("${PWD}/t", "${PWD}/t/x"), removed=("${PWD}/t",),
    )  # fmt: skip
    doc = parsed(learned(rec))
    assert rule_paths(doc) == [(PWD, AccessFs.MAKE_DIR | MAKE | W | R)]


def test_an_unread_file_beside_read_ones_is_not_covered() -> None:
    rec = recording(("${PWD}/src/a.c", R), ("${PWD}/Makefile", R))
    doc = parsed(learned(rec))
    assert supervisor_rights(doc, f"{PWD}/src/a.c") == R
    assert supervisor_rights(doc, f"{PWD}/secret.key") == NO_FS
    assert supervisor_rights(doc, f"{PWD}/src/b.c") == NO_FS


def test_a_directory_whose_every_entry_was_read_becomes_one_rule() -> None:
    rec = recording(("${PWD}/src/a.c", R), ("${PWD}/src/b.c", R), ("${PWD}/src/inc/a.h", R))
    policy = learned(rec)
    doc = parsed(policy)
    assert rule_paths(doc) == [(f"{PWD}/src", R)]
    assert policy.rules[0].complete == 3 and policy.rules[0].exposes == ()


def test_writes_in_home_are_refused_and_reported() -> None:
    rec = recording(
        ("${HOME}", MAKE | AccessFs.READ_DIR), ("${HOME}/.history", W),
        created=("${HOME}/.history",),
    )  # fmt: skip
    policy = learned(rec)
    doc = parsed(policy)
    assert supervisor_rights(doc, HOME) == AccessFs.READ_DIR  # listing it was exact
    assert not any(a & WRITE_RIGHTS for p, a in rule_paths(doc) if p in ("/", "/home", HOME))
    [refusal] = policy.refused
    assert refusal.path == HOME and refusal.access == MAKE | W
    assert any("NOT granted" in line for line in summary(policy))
    assert "NOT granted" in render(policy)


def test_secrets_touched_are_reported_and_never_widened() -> None:
    key, temp = "${HOME}/.ssh/id_ed25519", "${HOME}/.ssh/tmp123"
    rec = recording(
        (key, R), ("${HOME}/.ssh", MAKE | REMOVE), (temp, W),
        created=(temp,), removed=(temp,),
    )  # fmt: skip
    policy = learned(rec)
    doc = parsed(policy)
    assert supervisor_rights(doc, f"{HOME}/.ssh/id_ed25519") == R
    assert supervisor_rights(doc, f"{HOME}/.ssh/known_hosts") == NO_FS
    assert [s.path for s in policy.sensitive] == [f"{HOME}/.ssh", f"{HOME}/.ssh/id_ed25519",
                                                  f"{HOME}/.ssh/tmp123"]  # fmt: skip
    assert any(line.startswith("SENSITIVE") for line in summary(policy))


def test_exec_and_accesses_judged_in_the_callers_context_are_static() -> None:
    rec = recording(
        ("${PWD}/build/prog", X, X), ("${PWD}/out/old.txt", W, W), ("${PWD}/Makefile", R)
    )
    doc = parsed(learned(rec))
    assert static_rights(doc, f"{PWD}/build/prog") == X
    assert static_rights(doc, f"{PWD}/out/old.txt") == W
    assert static_rights(doc, f"{PWD}/Makefile") == NO_FS
    assert supervisor_rights(doc, f"{PWD}/Makefile") == R


def test_device_writes_stay_on_the_device() -> None:
    rec = recording(("/dev/null", W | AccessFs.IOCTL_DEV, AccessFs.IOCTL_DEV))
    doc = parsed(learned(rec))
    assert sorted(rule_paths(doc)) == [("/dev/null", W), ("/dev/null", AccessFs.IOCTL_DEV)]
    assert supervisor_rights(doc, "/dev/zero") == NO_FS


def test_rights_granted_above_are_not_repeated_below() -> None:
    rec = recording(("${PWD}", AccessFs.READ_DIR | R), ("${PWD}/src/a.c", R),
                    ("${PWD}/out/old.txt", R | W))  # fmt: skip
    doc = parsed(learned(rec))
    assert sorted(rule_paths(doc)) == [(PWD, AccessFs.READ_DIR | R), (f"{PWD}/out/old.txt", W)]


def test_paths_become_variables_and_odd_names_survive_the_file() -> None:
    odd = '${PWD}/we$$ird "name"\\x'
    rec = recording((odd, R), ("/srv/data/file", R))
    fs = FakeFs([*FakeFs().files, f'{PWD}/we$ird "name"\\x'])
    policy = synthesize(rec, context(fs))
    text = render(policy)
    assert 'parent = ["${PWD}/we$$ird \\"name\\"\\\\x"]' in text
    elsewhere = parse_policy(text, "p.toml", {**ENV, "PWD": "/elsewhere"})
    assert sorted(p for e in elsewhere.supervisor.path_beneath for p in e.paths) == [
        '/elsewhere/we$ird "name"\\x', "/srv/data",  # its only entry was read
    ]  # fmt: skip


def test_names_a_policy_file_cannot_hold_are_covered_by_their_directory() -> None:
    bad = "${PWD}/src/caf\udce9"
    fs = FakeFs([*FakeFs().files, f"{PWD}/src/caf\udce9"])
    policy = synthesize(recording((bad, R)), context(fs))
    doc = parsed(policy)
    assert rule_paths(doc) == [(f"{PWD}/src", R)]
    assert policy.rules[0].exposes == (f"{PWD}/src/a.c", f"{PWD}/src/b.c", f"{PWD}/src/inc")
    assert "caf\\xe9" in render(policy)  # the stray byte, escaped as everywhere


def test_unset_variable_is_reported() -> None:
    rec = recording(("${HOME}/.bashrc", R), ("${PWD}/Makefile", R))
    policy = synthesize(rec, context(variables={"PWD": PWD, "TMPDIR": "/tmp"}))
    assert [u for u, _ in policy.unplaced] == ["${HOME}/.bashrc"]


def test_merged_runs_count_runs_per_rule() -> None:
    a = recording(("${PWD}/Makefile", R), ("${PWD}/src/a.c", R), run_id="a")
    b = recording(("${PWD}/Makefile", R), run_id="b")
    policy = learned(a.merged(b))
    by_path = {r.paths[0]: r for r in policy.rules}
    assert by_path[f"{PWD}/Makefile"].runs == 2 and by_path[f"{PWD}/Makefile"].count == 2
    assert by_path[f"{PWD}/src/a.c"].runs == 1
    text = render(policy)
    assert "1 access in 1 of 2 runs (rare)" in text and "2 accesses in 2 of 2 runs," in text


def test_merging_a_run_twice_is_refused() -> None:
    a = recording(("${PWD}/Makefile", R), run_id="a")
    with pytest.raises(RecordingError, match="run a"):
        a.merged(Recording.from_json(a.to_json(), "again.json"))


def test_recording_file_round_trip() -> None:
    rec = recording(("${PWD}/Makefile", R), ("/usr/bin/cc", X, X), created=("${PWD}/x",))
    rec.record_port(443, AccessNet.CONNECT_TCP, "/usr/bin/curl")
    assert Recording.from_json(rec.to_json(), "r.json") == rec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "r.json: format"),
        (lambda d: d.update(version=99), "r.json: version"),
        (lambda d: d["paths"]["/x"].update(access=["raed_file"]), "paths['/x'].access"),
        (lambda d: d["paths"]["/x"].update(runs=["nope"]), "unknown run 'nope'"),
        (lambda d: d["paths"]["/x"].update(count=-1), "paths['/x'].count"),
        (lambda d: d.update(extra=1), "r.json: extra: unknown key"),
        (lambda d: d["ports"].update({"99999": {}}), "expected a TCP port number"),
    ],
)
def test_bad_recording_files_name_the_key(change: object, message: str) -> None:
    rec = recording(("/x", R))
    document = json.loads(rec.to_json())
    change(document)  # type: ignore[operator]
    with pytest.raises(RecordingError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Recording.from_json(json.dumps(document), "r.json")


def test_not_json_is_a_clear_error() -> None:
    with pytest.raises(RecordingError, match=r"r\.json: not a recording"):
        Recording.from_json("{", "r.json")


def test_network_stays_unhandled_unless_it_was_recorded() -> None:
    plain = parsed(learned(recording(("${PWD}/Makefile", R))))
    assert not plain.handled_net
    rec = recording(("${PWD}/Makefile", R))
    rec.record_port(443, AccessNet.CONNECT_TCP, "/usr/bin/curl")
    doc = parsed(learned(rec))
    assert doc.handled_net == AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
    # Network goes into the static part, like exec.
    [entry] = doc.net_port
    assert entry.ports == (443,) and entry.access == AccessNet.CONNECT_TCP
    assert doc.supervisor.net_port == ()
    assert render(learned(rec)).count("[[net_port]]") == 1


def test_summary_lists_rules_by_kind_and_widenings() -> None:
    tmp = "${TMPDIR}/t"
    rec = recording(
        ("/usr/bin/cc", X, X), ("${PWD}/Makefile", R), ("${TMPDIR}", MAKE), (tmp, W),
        created=(tmp,),
    )  # fmt: skip
    lines = summary(learned(rec))
    assert lines[0] == "static rules: 1 system hierarchies (read-only)"
    assert lines[1] == "supervisor rules: 1 read, 1 write/create/remove"
    assert any(
        line.startswith("  ${TMPDIR} [write_file, make_reg]: for 1 objects") for line in lines
    )


def test_a_created_directory_gets_its_own_rule_and_its_parent_only_make_dir() -> None:
    """`mkdir out` and writes in it: `${PWD}` gets make_dir, `${PWD}/out` what was done in it,
    and the untouched `secret.key` beside it nothing."""
    rec = recording(
        ("${PWD}", AccessFs.MAKE_DIR), ("${PWD}/new", MAKE), ("${PWD}/new/a.txt", W | R),
        ("${PWD}/src/a.c", R), created=("${PWD}/new", "${PWD}/new/a.txt"),
    )  # fmt: skip
    fs = FakeFs([*FakeFs().files, f"{PWD}/new/a.txt"])
    policy = learned(rec, fs)
    doc = parsed(policy)
    assert supervisor_rights(doc, PWD) == AccessFs.MAKE_DIR
    assert supervisor_rights(doc, f"{PWD}/secret.key") == AccessFs.MAKE_DIR
    assert supervisor_rights(doc, f"{PWD}/new/a.txt") == AccessFs.MAKE_DIR | MAKE | W | R
    [created] = [r for r in policy.rules if r.created]
    assert created.paths == (f"{PWD}/new",) and not created.widened
    text = render(policy)
    assert 'parent = ["${PWD}/new"]\n' + CREATED_MARKER in text
    assert "Created by the run" in text
    assert any(line == "  ${PWD}/new [write_file, read_file, make_reg]" for line in summary(policy))
    [entry] = [e for e in doc.supervisor.path_beneath if e.paths == (f"{PWD}/new",)]
    assert entry.optional  # today's loader skips it while the path does not exist


def test_a_file_created_in_pwd_gets_its_own_rule_but_one_in_a_subdirectory_widens() -> None:
    rec = recording(
        ("${PWD}", MAKE), ("${PWD}/out.txt", W), ("${PWD}/build", MAKE), ("${PWD}/build/a.o", W),
        created=("${PWD}/out.txt", "${PWD}/build/a.o"),
    )  # fmt: skip
    fs = FakeFs([*FakeFs().files, f"{PWD}/out.txt", f"{PWD}/build/a.o"])
    doc = parsed(learned(rec, fs))
    assert supervisor_rights(doc, f"{PWD}/secret.key") == MAKE
    assert supervisor_rights(doc, f"{PWD}/out.txt") == MAKE | W
    assert supervisor_rights(doc, f"{PWD}/build/other.o") == MAKE | W


def test_pwd_beats_tmpdir_and_complete_directories_stop_at_pwd() -> None:
    pwd = "/tmp/x/proj"
    fs = FakeFs([f"{pwd}/f", "/usr/bin/cc"])
    variables = {"PWD": pwd, "HOME": HOME, "TMPDIR": "/tmp"}
    rec = recording((f"{pwd}/f", R)).templated(variables)
    policy = synthesize(rec, context(fs, variables))
    text = render(policy)
    assert "${TMPDIR}" not in text and 'parent = ["${PWD}"]' in text
    assert all(is_beneath(p, pwd) for r in policy.rules for p in r.paths)


def test_many_entries_read_widen_to_their_directory_unless_it_holds_secrets() -> None:
    fonts = [f"/etc/fonts/conf.d/{i}.conf" for i in range(6)]
    keys = [f"/etc/ssl/private/{i}.pem" for i in range(6)]
    fs = FakeFs([*FakeFs().files, *fonts, *keys, "/etc/ssl/certs/ca.pem"])
    rec = recording(*[(p, R) for p in fonts[:5]], *[(p, R) for p in keys[:5]])
    policy = learned(rec, fs)
    doc = parsed(policy)
    assert static_rights(doc, fonts[5]) == R  # widened: 5 of 6 entries were read
    assert static_rights(doc, "/etc/fonts/other") == NO_FS
    assert static_rights(doc, keys[5]) == NO_FS  # never in a sensitive place
    assert static_rights(doc, keys[0]) == R
    [wide] = [r for r in policy.rules if r.many]
    assert wide.paths == ("/etc/fonts/conf.d",) and wide.many == (5, 6)
    assert wide.exposes == (fonts[5],)
    lines = summary(policy)
    assert any(line.startswith("  /etc/fonts/conf.d [read_file]: 5 of its 6") for line in lines)
    assert "SENSITIVE places were read and have a rule of their own (review these):" in lines
    assert f"  {keys[0]} [read_file] by cc" in lines


def test_the_system_data_hierarchies_are_never_opened_whole() -> None:
    etc = [f"/etc/f{i}" for i in range(8)]
    fs = FakeFs(["/usr/bin/cc", *etc, "/dev/null", "/dev/zero"])
    rec = recording(*[(p, R) for p in etc], ("/dev/null", R), ("/dev/zero", R), ("/etc", R))
    doc = parsed(learned(rec, fs))
    for root in ("/etc", "/dev", "/proc", "/"):
        assert static_rights(doc, f"{root}/shadow".replace("//", "/")) == NO_FS, root


def test_sensitive_system_files_read_are_named_in_the_review() -> None:
    policy = learned(recording(("/etc/shadow", R), ("/etc/passwd", R)))
    doc = parsed(policy)
    assert static_rights(doc, "/etc/shadow") == R
    assert static_rights(doc, "/etc/gshadow") == NO_FS
    assert "  /etc/shadow [read_file] by cc" in summary(policy)


def test_churning_names_get_one_rule_on_their_directory() -> None:
    packs = [f"{PWD}/.git/objects/pack/pack-1.{ext}" for ext in ("pack", "idx")]
    lock = f"{PWD}/.git/index.lock"
    fs = FakeFs([*FakeFs().files, *packs, f"{PWD}/.git/HEAD", f"{PWD}/.git/config", lock])
    rec = recording(*[(p, R) for p in packs], ("${PWD}/.git/HEAD", R), (lock, W))
    policy = learned(rec, fs)
    paths = sorted(p for r in policy.rules for p in r.paths)
    assert paths == [f"{PWD}/.git", f"{PWD}/.git/HEAD", f"{PWD}/.git/objects"]
    text = render(policy)
    assert "Names here churn (git's object store" in text and "lock files" in text


def test_a_processs_own_proc_entries_are_reported_not_granted() -> None:
    policy = learned(recording(("/proc/1234/status", R), ("/proc/cpuinfo", R)))
    assert [p for r in policy.rules for p in r.paths] == ["/proc/cpuinfo"]
    assert [u for u, _ in policy.unplaced] == ["/proc/1234/status"]


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        ("/etc/shadow", True), ("/etc/gshadow-", True), ("/etc/ssh/ssh_host_rsa_key", True),
        ("/etc/sudoers.d/x", True), ("/root/.bashrc", True), ("/home/v/notes", True),
        (f"{HOME}/.aws/credentials", True), (f"{PWD}/deploy.key", True),
        (f"{PWD}/id_ed25519", True), ("/etc/passwd", False), (f"{HOME}/.bashrc", False),
        ("/home", False), (f"{PWD}/main.c", False), (f"{PWD}/id_ed25519.pub", False),
    ],
)  # fmt: skip
def test_the_documented_sensitive_places(path: str, secret: bool) -> None:
    assert places.is_secret(path, HOME, places.secret_points(HOME)) is secret
