"""A move or link is never left to the kernel (CONTINUE): there only the static layer judges
it, and its refer check does not know the supervisor's rules. A file the static layer lets the
program move could then land where a supervisor rule gives it more than it had.

The policy here lets the program make, move and remove names anywhere in its tree (static
``make_reg``, ``refer``, ``remove_file``) but read only ``data/`` (a supervisor rule). Each
attempt names the secret through a path that names the caller, which the supervisor cannot
perform in its own context, and then tries to read it through ``data/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from supervised import SECRET, make_tree, policy, run_collecting

MOVES = r"""
import os, sys
os.symlink("/proc/self", "out/self")  # out/ is the program's to write
ATTEMPTS = {
    "link_proc_self": lambda: os.link("/proc/self/cwd/secret/s", "/proc/self/cwd/data/a"),
    "rename_proc_self": lambda: os.rename("/proc/self/cwd/secret/s", "/proc/self/cwd/data/b"),
    "link_symlink": lambda: os.link("out/self/cwd/secret/s", "data/c"),
    "rename_symlink": lambda: os.rename("out/self/cwd/secret/s", "data/d"),
    "link_fd": lambda: os.link(f"/proc/self/fd/{os.open('secret', os.O_PATH)}/s", "data/e"),
}
for name, act in ATTEMPTS.items():
    try:
        act()
        print(name, "moved", flush=True)
    except OSError as e:
        print(name, "errno", e.errno, flush=True)
for entry in sorted(os.listdir("data")):
    try:
        with open(f"data/{entry}", "rb") as f:
            print("read", entry, "LEAK" if f.read() == sys.argv[1].encode() else "other")
    except OSError as e:
        print("read", entry, "errno", e.errno)
"""

#: The program may make, move and remove names in its whole tree, but read nothing there.
TREE_MOVES = """
[[path_beneath]]
allowed_access = ["make_reg", "refer", "remove_file"]
parent = ["{root}"]
"""

DATA_READ = """
[[supervisor.path_beneath]]
allowed_access = ["read_file", "read_dir"]
parent = ["{data}"]
"""


@pytest.mark.trio
async def test_a_move_through_a_path_naming_the_caller_is_refused_not_left_to_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    paths = make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    doc = policy(
        tmp_path,
        supervisor_rules=DATA_READ.format(data=paths["data"]),
        extra_static=TREE_MOVES.format(root=tmp_path),
    )
    status, _ = await run_collecting(doc, MOVES, SECRET.decode())
    out = capfd.readouterr().out
    assert status == 0, out
    assert "LEAK" not in out, out
    for name in ("link_proc_self", "rename_proc_self", "link_symlink", "rename_symlink", "link_fd"):
        assert f"{name} errno 18" in out, out  # EXDEV: programs copy instead
    assert (paths["secret"] / "s").read_bytes() == SECRET  # nothing moved
