"""``check`` shows rule paths that pass through symlinks, with where they lead, and names the
supervisor rules left out because the program may have planted the symlink."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from supervised import policy, policy_text

from llsupervise.supervisor.core import Supervisor


def test_check_names_symlinked_rule_paths_and_leaves_out_redirectable_ones(
    tmp_path: Path,
) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "work").mkdir()
    (root / "secret").mkdir()
    (root / "real").mkdir()
    (root / "work" / "pub").symlink_to(root / "secret")  # in work/, which the program changes
    (root / "fixed").symlink_to(root / "real")  # in root/, which it does not
    policy = root / "p.toml"
    policy.write_text(f"""
[[ruleset]]
handled_access_fs = ["abi.all"]

[[path_beneath]]
allowed_access = ["make_sym", "remove_dir", "make_dir"]
parent = ["{root}/work"]

[[supervisor.path_beneath]]
allowed_access = ["read_file"]
parent = ["{root}/work/pub", "{root}/fixed"]
""")
    done = subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", "check", str(policy)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert (
        f"rule path '{root}/work/pub' passes through a symlink: it leads to '{root}/secret'" in out
    )
    assert f"rule path '{root}/fixed' passes through a symlink: it leads to '{root}/real'" in out
    assert f"supervisor rule on '{root}/work/pub' left out" in out
    assert f"supervisor rule on '{root}/fixed' left out" not in out
    # The rule kept is on fixed/ (labelled as written); none reaches the secret.
    assert f"  {root}/fixed: read_file" in out
    assert "secret: read_file" not in out and "pub: read_file" not in out


@pytest.mark.kernel
@pytest.mark.trio
async def test_a_run_says_which_rule_paths_pass_through_symlinks(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "real").mkdir()
    (root / "fixed").symlink_to(root / "real")
    (root / "out").mkdir()
    rule = (
        f'\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{root}/fixed"]'
    )
    doc = policy(root, supervisor_rules=rule)
    events: list[Mapping[str, Any]] = []
    async with Supervisor.open(doc) as sup:
        sup.listeners.append(events.append)
        assert await sup.run(["true"], forward_signals=False) == 0
    [start] = [e for e in events if e["event"] == "start"]
    assert {"path": f"{root}/fixed", "leads_to": f"{root}/real"} in start["through_symlinks"]


@pytest.mark.kernel
def test_run_headless_says_which_rules_it_left_out(tmp_path: Path) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "work").mkdir()
    (root / "secret").mkdir()
    (root / "work" / "pub").symlink_to(root / "secret")
    (root / "out").mkdir()
    rule = '\n[[supervisor.path_beneath]]\nallowed_access = ["read_file"]\n'
    rule += f'parent = ["{root}/work/pub"]'
    changing = (
        '[[path_beneath]]\nallowed_access = ["make_sym", "remove_dir", "make_dir"]\n'
        f'parent = ["{root}/work"]\n'
    )
    (root / "p.toml").write_text(policy_text(root, supervisor_rules=rule, extra_static=changing))
    done = subprocess.run(
        [sys.executable, "-m", "llsupervise.cli", "run", "--headless", "--policy",
         str(root / "p.toml"), "--", "true"],
        capture_output=True, text=True, check=False, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"llsupervise: supervisor rule on {root}/work/pub left out" in done.stderr
