"""``llsupervise learn`` as a user runs it: outputs, merging runs, and refusals of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from landlockconfig_schema import landlockconfig_errors

import llsupervise
from llsupervise.learn.paths import is_beneath
from llsupervise.learn.recording import Recording
from llsupervise.policy.loader import load_policy, parse_policy
from llsupervise.rights import AccessFs

pytestmark = pytest.mark.kernel

ROOT = Path(llsupervise.__file__).resolve().parent.parent


def cli(*args: str, work: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work.parent / "home"),
        "TMPDIR": str(work.parent / "tmp"),
        "PWD": str(work),
        "LC_ALL": "C",
        "PYTHONPATH": str(ROOT),  # this checkout's llsupervise, whatever the cwd
    }
    return subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", *args],
        capture_output=True, text=True, cwd=work, env=env, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture
def work(tmp_path: Path) -> Path:
    for d in ("home", "tmp", "work"):
        (tmp_path / d).mkdir()
    work = tmp_path / "work"
    (work / "a.txt").write_text("A\n")
    (work / "b.txt").write_text("B\n")
    (work / "c.txt").write_text("never read\n")
    return work


def env_of(work: Path) -> dict[str, str]:
    return {"PWD": str(work), "HOME": str(work.parent / "home"), "TMPDIR": str(work.parent / "tmp")}


def rules(policy: Path, work: Path) -> dict[str, list[str]]:
    """Supervisor rule path -> comment lines just above its table."""
    lines = policy.read_text().splitlines()
    found: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        if line.startswith("parent = ") and lines[i - 2] == "[[supervisor.path_beneath]]":
            start = i - 2
            while start > 0 and lines[start - 1].startswith("#"):
                start -= 1
            found[line.removeprefix("parent = ")] = lines[start : i - 2]
    return found


def test_without_output_the_policy_is_standard_output_alone(work: Path) -> None:
    result = cli("learn", "--", "sh", "-c", "echo from-the-command; cat a.txt", work=work)
    assert result.returncode == 0, result.stderr
    document = parse_policy(result.stdout, "<stdout>", env_of(work))
    paths = [p for e in document.supervisor.path_beneath for p in e.paths]
    assert str(work / "a.txt") in paths and str(work / "b.txt") not in paths
    assert "from-the-command" in result.stderr and "A" in result.stderr
    assert "no recording kept" in result.stderr


def test_runs_and_merges_count_how_many_runs_needed_each_rule(work: Path) -> None:
    policy = work.parent / "policy.toml"
    first = cli("learn", "-o", str(policy), "--", "cat", "a.txt", work=work)
    assert first.returncode == 0, first.stderr
    merged = cli("learn", "--merge", str(policy), "-o", str(policy), "--runs", "2", "--",
                 "cat", "b.txt", work=work)  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    recording = Recording.from_json(
        (work.parent / "policy.toml.recording.json").read_text(), "recording"
    )
    assert sorted(recording.runs.values()) == [("cat", "a.txt"), ("cat", "b.txt"), ("cat", "b.txt")]
    comments = rules(policy, work)
    assert "in 1 of 3 runs (rare)" in comments['["${PWD}/a.txt"]'][0]
    assert "in 2 of 3 runs (rare)" in comments['["${PWD}/b.txt"]'][0]
    assert "rare: 2 rules were needed by only some of the 3 runs" in merged.stderr
    assert "#   cat a.txt" in policy.read_text() and "#   cat b.txt" in policy.read_text()
    load_policy(policy, env_of(work))


def test_merging_the_recording_file_itself_works_too(work: Path) -> None:
    policy, again = work.parent / "p.toml", work.parent / "q.toml"
    assert cli("learn", "-o", str(policy), "--", "cat", "a.txt", work=work).returncode == 0
    recording = f"{policy}.recording.json"
    result = cli("learn", "--merge", recording, "-o", str(again), "--", "true", work=work)
    assert result.returncode == 0, result.stderr
    assert '"${PWD}/a.txt"' in again.read_text()


def test_the_commands_exit_status_is_learns_and_the_policy_is_still_written(work: Path) -> None:
    policy = work.parent / "policy.toml"
    result = cli("learn", "-o", str(policy), "--", "sh", "-c", "cat a.txt; exit 3", work=work)
    assert result.returncode == 3
    assert "the command exited with status 3" in result.stderr
    assert '"${PWD}/a.txt"' in policy.read_text()


def test_no_command_is_an_error(work: Path) -> None:
    result = cli("learn", "-o", "p.toml", work=work)
    assert result.returncode == 2
    assert "no command given" in result.stderr
    assert not (work / "p.toml").exists()


def test_runs_must_be_positive(work: Path) -> None:
    result = cli("learn", "--runs", "0", "--", "true", work=work)
    assert result.returncode == 2 and "at least 1" in result.stderr


def test_merge_without_a_recording_changes_nothing(work: Path) -> None:
    policy = work.parent / "policy.toml"
    policy.write_text("# hand-written\n")
    result = cli("learn", "--merge", str(policy), "-o", str(policy), "--", "touch", "x", work=work)
    assert result.returncode == 2
    assert f"{policy}.recording.json: no recording to merge" in result.stderr
    assert policy.read_text() == "# hand-written\n"
    assert not (work / "x").exists()  # the command did not even run


def test_a_broken_recording_names_the_file_and_key(work: Path) -> None:
    policy = work.parent / "policy.toml"
    assert cli("learn", "-o", str(policy), "--", "cat", "a.txt", work=work).returncode == 0
    side = Path(f"{policy}.recording.json")
    document = json.loads(side.read_text())
    first = next(iter(document["paths"]))
    document["paths"][first]["access"] = ["raed_file"]
    side.write_text(json.dumps(document))
    before = policy.read_text()
    result = cli("learn", "--merge", str(policy), "-o", str(policy), "--", "true", work=work)
    assert result.returncode == 2
    assert f"{side}: paths[{first!r}].access" in result.stderr and "raed_file" in result.stderr
    assert policy.read_text() == before


def test_a_learned_policy_exports_to_landlockconfigs_format(work: Path) -> None:
    policy, exported = work.parent / "learned.toml", work.parent / "plain.toml"
    learned = cli("learn", "-o", str(policy), "--", "sh", "-c", "cat a.txt > out.txt", work=work)
    assert learned.returncode == 0, learned.stderr
    result = cli("export", "--policy", str(policy), "--landlockconfig", str(exported), work=work)
    assert result.returncode == 0, result.stderr
    assert landlockconfig_errors(exported.read_text()) == []


def test_a_command_that_cannot_be_started_writes_no_policy(work: Path) -> None:
    policy = work.parent / "policy.toml"
    for command in (["nosuchprog-llsupervise"], [str(work / "a.txt")]):  # 127, then 126
        result = cli("learn", "-o", str(policy), "--", *command, work=work)
        assert result.returncode == 2, result.stderr
        assert "could not be started" in result.stderr and "no policy was written" in result.stderr
        assert "Traceback" not in result.stderr
        assert not policy.exists() and not Path(f"{policy}.recording.json").exists()


def test_an_output_in_a_missing_directory_is_refused_before_running(work: Path) -> None:
    result = cli("learn", "-o", "/nonexistent/l.toml", "--", "touch", "ran", work=work)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("llsupervise: -o /nonexistent/l.toml: no such directory")
    assert not (work / "ran").exists()


def test_the_policy_is_never_written_where_the_program_may_write(work: Path) -> None:
    result = cli("learn", "-o", "l.toml", "--", "sh", "-c", "echo x > new.txt", work=work)
    assert result.returncode == 2
    assert "would let the program change its own policy" in result.stderr
    assert f"-o {work.parent / 'l.toml'}" in result.stderr  # a place outside
    assert not (work / "l.toml").exists()
    beside = cli("learn", "-o", "l.toml", "--", "cat", "a.txt", work=work)  # reads only
    assert beside.returncode == 0, beside.stderr


def test_git_log_is_given_the_files_it_read_not_etc_or_dev(work: Path) -> None:
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@b"}  # fmt: skip
    repo = work / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f").write_text("f\n")
    for args in (["add", "-A"], ["commit", "-qm", "m"]):
        subprocess.run(["git", *args], cwd=repo, env={**os.environ, **env}, check=True)
    policy = work.parent / "learned.toml"
    result = cli("learn", "-o", str(policy), "--", "git", "-C", str(repo), "log", "-3", work=work)
    assert result.returncode == 0, result.stderr
    document = load_policy(policy, env_of(work))
    for entry in (*document.path_beneath, *document.supervisor.path_beneath):
        for path in entry.paths:
            assert path not in ("/", "/etc", "/dev", "/proc", "/home", "/sys"), entry
            if entry.access & AccessFs.READ_FILE:
                assert not is_beneath("/etc/shadow", path), entry
    comments = " ".join(line.lstrip("# ") for line in policy.read_text().splitlines()
                        if line.startswith("#"))  # fmt: skip
    programs = re.findall(r"of [0-9]+ runs(?: \(rare\))?, by ([^.]*)\.", comments)
    assert programs and all(p == "git" for p in programs), programs
