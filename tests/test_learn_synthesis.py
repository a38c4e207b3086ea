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

from llsupervise.learn.recording import Recording, RecordingError
from llsupervise.learn.render import render
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


def test_system_reads_become_one_read_only_rule_per_hierarchy() -> None:
    policy = learned(
        recording(
            ("/usr/bin/cc", X, X), ("/usr/lib/libc.so", R), ("/etc/passwd", R),
            ("/proc/cpuinfo", R, R),
        )
    )  # fmt: skip
    doc = parsed(policy)
    assert sorted(rule_paths(doc)) == [("/etc", R), ("/proc", R), ("/usr", X | R)]
    assert doc.supervisor.path_beneath == ()
    assert {r.kind for r in policy.rules} == {"system"}


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


def test_created_directories_anchor_on_the_first_existing_parent() -> None:
    rec = recording(
        ("${PWD}", AccessFs.MAKE_DIR), ("${PWD}/.git", MAKE), ("${PWD}/.git/HEAD", W | R),
        created=("${PWD}/.git", "${PWD}/.git/HEAD"),
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
    assert "caf\\udce9" in render(policy)


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
