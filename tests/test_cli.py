"""The command line as a user runs it: real processes, real kernel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.loader import parse_policy
from llsupervise.supervisor.rules import objects
from llsupervise.supervisor.rules.objects import ObjectTable, ResourceLimitError, resolve

EXAMPLE = Path(__file__).parent.parent / "config" / "example.toml"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", *args],
        capture_output=True, text=True, cwd=cwd, check=False,
    )  # fmt: skip


def test_abi_json_reports_the_kernel() -> None:
    result = cli("abi", "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["abi"] >= 1
    assert "read_file" in report["fs"]


def test_check_example_prints_what_is_enforced() -> None:
    result = cli("check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "enforced filesystem access:" in result.stdout
    assert "static rules, fixed for the run" in result.stdout
    assert "/usr: execute, read_file, read_dir" in result.stdout


def test_check_broken_file_names_file_line_and_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[[path_beneath]]\nallowed_access = ["raed_file"]\nparent = ["/usr"]\n')
    result = cli("check", str(broken))
    assert result.returncode == 2
    assert f"{broken}:2: path_beneath[0].allowed_access[0]" in result.stderr
    assert "raed_file" in result.stderr


def test_check_missing_path_is_an_error_unless_optional(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/nope/x"]\n')
    result = cli("check", str(policy))
    assert result.returncode == 2
    assert f"{policy}:3: path_beneath[0].parent[0]" in result.stderr
    policy.write_text(
        '[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["/nope/x"]\noptional = true\n'
    )
    result = cli("check", str(policy))
    assert result.returncode == 0
    assert "skipped optional path '/nope/x'" in result.stdout


@pytest.mark.kernel
def test_run_headless_keeps_exit_status_and_logs_denials(tmp_path: Path) -> None:
    # Not under /tmp: the example grants /tmp statically, and the log is the control plane's.
    log_dir = Path(tempfile.mkdtemp(dir="/var/tmp"))
    log = log_dir / "events.jsonl"
    # The example policy grants /tmp and the working directory, not /var/tmp.
    secret_dir = Path(tempfile.mkdtemp(dir="/var/tmp"))
    secret = secret_dir / "secret"
    secret.write_text("s")
    result = cli(
        "run", "--headless", "--policy", str(EXAMPLE), "--log", str(log), "--",
        "sh", "-c", f"cat {secret}; exit 7",
        cwd=tmp_path,
    )  # fmt: skip
    shutil.rmtree(secret_dir)
    assert result.returncode == 7
    assert "Permission denied" in result.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    shutil.rmtree(log_dir)
    denials = [e for e in events if e["event"] == "denial"]
    assert denials and denials[0]["path"] == str(secret)
    assert denials[0]["access"] == ["read_file"] and denials[0]["decision"] == "deny"


def _document(tmp_path: Path, count: int) -> PolicyDocument:
    for i in range(count):
        (tmp_path / f"d{i}").mkdir()
    parents = ", ".join(f'"{tmp_path}/d{i}"' for i in range(count))
    text = f'[[path_beneath]]\nallowed_access = ["read_file"]\nparent = [{parents}]\n'
    return parse_policy(text, "many.toml", {"PWD": str(tmp_path)})


def test_too_many_rule_objects_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fd per rule object: beyond RLIMIT_NOFILE the load fails instead of dropping rules."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(objects, "RESERVED_FDS", soft - 5)
    with ObjectTable() as table, pytest.raises(ResourceLimitError, match="RLIMIT_NOFILE"):
        resolve(_document(tmp_path, 10), table)


@pytest.mark.kernel
def test_same_cpu_keeps_the_command_on_one_cpu_and_still_mediates(tmp_path: Path) -> None:
    """The command (and what it starts) sees one CPU, and a denied read is still denied."""
    secret_dir = Path(tempfile.mkdtemp(dir="/var/tmp"))  # not granted by the example policy
    # Not under /tmp: the example grants /tmp statically, and the log is the control plane's.
    log = secret_dir / "events.jsonl"
    secret = secret_dir / "secret"
    secret.write_text("s")
    result = cli(
        "run", "--headless", "--same-cpu", "--policy", str(EXAMPLE), "--log", str(log), "--",
        "sh", "-c", f"grep Cpus_allowed_list /proc/self/status; cat {secret}; exit 3",
        cwd=tmp_path,
    )  # fmt: skip
    denials = [json.loads(line) for line in log.read_text().splitlines()]
    shutil.rmtree(secret_dir)
    assert result.returncode == 3
    allowed = result.stdout.split()[-1]
    assert allowed == str(min(os.sched_getaffinity(0)))
    assert any(e["event"] == "denial" and e["path"] == str(secret) for e in denials)
