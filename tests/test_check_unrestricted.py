"""``check`` says what a policy leaves open: rights it does not handle are not restricted at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llsupervise.policy.analysis import unrestricted
from llsupervise.rights import AccessFs, AccessNet, Scope, fs_all, net_all, scope_all

READ_ONLY = """\
abi = 7

[[path_beneath]]
allowed_access = ["abi.read_execute"]
parent = ["/usr", "/lib", "/lib64", "/etc"]
optional = true
"""

HANDLES_ALL = """\
[[ruleset]]
handled_access_fs = ["abi.all"]
"""


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", *args],
        capture_output=True, text=True, cwd=cwd, check=False,
    )  # fmt: skip


@pytest.mark.kernel
def test_a_read_only_policy_without_ruleset_reports_removal_and_creation_open(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(READ_ONLY)
    result = cli("check", str(policy))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    [line] = [x for x in out if x.startswith("not restricted:")]
    assert line == (
        "not restricted: filesystem write_file, remove_dir, remove_file, make_char, make_dir, "
        "make_reg, make_sock, make_fifo, make_block, make_sym, truncate, ioctl_dev; "
        "tcp bind_tcp, connect_tcp; scopes abstract_unix_socket"  # signal: scoped by default
    )
    assert "findings: none" not in out
    found = [x for x in out[[x.startswith("findings") for x in out].index(True) :]
             if x.startswith("  unrestricted:")]  # fmt: skip
    assert len(found) == 2
    assert found[0].startswith(
        "  unrestricted: no removal right is handled (remove_dir, remove_file)"
    )
    assert found[1].startswith("  unrestricted: no creation right is handled (make_char, make_dir")

    # What the finding warns about is real: the program deletes a file no rule grants.
    victim = tmp_path / "victim"
    victim.write_text("x")
    run = cli("run", "--headless", "--policy", str(policy), "--", "rm", str(victim))
    assert run.returncode == 0, run.stderr
    assert not victim.exists()


@pytest.mark.kernel
def test_handling_every_right_leaves_nothing_open_and_denies_the_removal(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(READ_ONLY.replace("abi = 7\n", "abi = 7\n" + HANDLES_ALL))
    result = cli("check", str(policy))
    assert result.returncode == 0, result.stderr
    assert "not restricted: filesystem none; tcp bind_tcp, connect_tcp; scopes " in result.stdout
    assert "unrestricted:" not in result.stdout
    victim = tmp_path / "victim"
    victim.write_text("x")
    run = cli("run", "--headless", "--policy", str(policy), "--", "rm", str(victim))
    assert run.returncode != 0
    assert victim.read_text() == "x"


def test_one_handled_right_of_a_family_is_enough_to_drop_its_finding() -> None:
    everything = fs_all(7)
    open_ = unrestricted(AccessFs.REMOVE_FILE, net_all(7), scope_all(7), 7)
    assert open_.fs == everything & ~AccessFs.REMOVE_FILE
    assert open_.net == AccessNet(0) and open_.scopes == Scope(0)
    [message] = open_.messages()
    assert message.startswith("unrestricted: no creation right")
    assert unrestricted(everything, AccessNet(0), Scope(0), 7).messages() == []
    # An older ABI has fewer rights to leave open.
    assert "ioctl_dev" not in unrestricted(AccessFs(0), AccessNet(0), Scope(0), 1).line()
