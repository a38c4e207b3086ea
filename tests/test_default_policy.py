"""The built-in default policy: ``run`` without ``--policy``, headless, against the real kernel.

Each run is a child ``llsupervise`` with a temporary HOME (holding a fake secret) and a
temporary working directory, neither of which the default policy gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from event_records import denial_event

from llsupervise.policies import DEFAULT_SOURCE, default_text, load_default
from llsupervise.policies.answers import KeptAnswers
from llsupervise.policy.loader import parse_policy

ROOT = Path(__file__).parent.parent


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("SECRET KEY\n")
    return home


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "PWD": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "llsupervise", *args], cwd=cwd, env=env, text=True,
        stdin=subprocess.DEVNULL, capture_output=True, check=False,
    )  # fmt: skip


def events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_system_is_readable_and_the_policy_is_named(home: Path, work: Path) -> None:
    log = work.parent / "events.jsonl"
    result = cli("run", "--headless", "--log", str(log), "--", "ls", "/usr", home=home, cwd=work)
    assert result.returncode == 0, result.stderr
    assert "bin" in result.stdout.split()
    assert "policy: built-in default" in result.stderr
    assert events(log)[0] == {"event": "policy", "source": DEFAULT_SOURCE}


def test_a_secret_in_home_is_denied_quietly(home: Path, work: Path) -> None:
    log = work.parent / "events.jsonl"
    secret = str(home / ".ssh" / "id_rsa")
    result = cli("run", "--headless", "--explain", "--log", str(log), "--", "cat", secret,
                 home=home, cwd=work)  # fmt: skip
    assert result.returncode == 1
    assert "SECRET" not in result.stdout
    assert "Permission denied" in result.stderr
    denials = [e for e in events(log) if e["event"] == "denial"]
    assert [(e["path"], e["decision"]) for e in denials] == [(secret, "deny_quiet")]
    assert "DENIED  read_file ~/.ssh/id_rsa  by cat" in result.stderr
    assert "denied quietly: the policy lists it as a secret" in result.stderr


def test_a_write_into_the_working_directory_is_denied_headless(home: Path, work: Path) -> None:
    log = work.parent / "events.jsonl"
    result = cli("run", "--headless", "--log", str(log), "--", "sh", "-c", "echo x > made",
                 home=home, cwd=work)  # fmt: skip
    assert result.returncode != 0
    assert not (work / "made").exists()
    denials = [e for e in events(log) if e["event"] == "denial"]
    assert [e["decision"] for e in denials] == ["deny"]
    assert denials[0]["path"] == str(work / "made")


@pytest.mark.parametrize("status", [0, 3, 125])
def test_exit_statuses_come_through(home: Path, work: Path, status: int) -> None:
    result = cli("run", "--headless", "--", "sh", "-c", f"exit {status}", home=home, cwd=work)
    assert result.returncode == status, result.stderr


def test_policy_default_prints_a_file_that_checks(home: Path, work: Path) -> None:
    printed = cli("policy", "default", home=home, cwd=work)
    assert printed.returncode == 0
    assert printed.stdout == default_text()
    assert printed.stdout.startswith("# llsupervise's built-in default policy")
    (work / "mine.toml").write_text(printed.stdout)
    checked = cli("check", "mine.toml", home=home, cwd=work)
    assert checked.returncode == 0, checked.stderr
    assert "/usr" in checked.stdout


def test_the_default_handles_everything_and_quiets_secrets(home: Path) -> None:
    document = load_default({"HOME": str(home), "PWD": "/nonexistent", "USER": "u"})
    assert document.handled_fs == (1 << 16) - 1  # every right of ABI 7
    assert document.handled_net
    quiet = {p for entry in document.supervisor.quiet for p in entry.paths}
    assert {f"{home}/.ssh", f"{home}/.gnupg", f"{home}/.aws", f"{home}/.netrc"} <= quiet
    assert not document.supervisor.path_beneath  # the working directory is asked about
    assert document.supervisor.default == "deny"
    statics = {p for entry in document.path_beneath for p in entry.paths}
    assert "/etc" not in statics and "/etc/shadow" not in statics
    assert {"/usr", "/dev/null", "/etc/ld.so.cache"} <= statics


def test_answers_are_saved_into_a_new_file_only(tmp_path: Path) -> None:
    kept = KeptAnswers()
    kept.on_event(denial_event("/srv/data", exe="/usr/bin/ls", access=("read_dir",),
                               decision="allow_always",
                               rules=[{"path": "/srv/data", "access": ["read_dir"]}]))  # fmt: skip
    kept.on_event(denial_event("/x"))
    assert len(kept) == 1
    target = tmp_path / "mine.toml"
    kept.save(str(target))
    document = parse_policy(target.read_text(), str(target), {"HOME": "/h", "PWD": "/p"})
    rules = [(e.paths, e.access) for e in document.supervisor.path_beneath]
    assert len(rules) == 1 and rules[0][0] == ("/srv/data",)
    before = target.read_text()
    with pytest.raises(Exception, match="already exists"):
        kept.save(str(target))
    assert target.read_text() == before


def test_save_answers_refuses_an_existing_file(home: Path, work: Path) -> None:
    (work / "taken.toml").write_text("keep me\n")
    result = cli("run", "--headless", "--save-answers", "taken.toml", "--", "true",
                 home=home, cwd=work)  # fmt: skip
    assert result.returncode == 2
    assert "already exists" in result.stderr
    assert (work / "taken.toml").read_text() == "keep me\n"


def test_option_combinations_are_refused(home: Path, work: Path) -> None:
    (work / "p.toml").write_text(default_text())
    with_policy = cli("run", "--headless", "--policy", "p.toml", "--save-answers", "new.toml",
                      "--", "true", home=home, cwd=work)  # fmt: skip
    assert with_policy.returncode == 2 and "--save-answers goes without --policy" in (
        with_policy.stderr
    )
    explain = cli("run", "--explain", "--", "true", home=home, cwd=work)
    assert explain.returncode == 2 and "--explain goes with --headless" in explain.stderr
