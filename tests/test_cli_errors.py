"""Bad command lines: one line on stderr, status 2, no traceback, nothing created or run.

Each refused ``run`` would have touched a marker file: that it does not exist shows that the
command never started. The valid twin of the same line shows that it would have."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "config" / "example.toml"
#: The child imports this tree's llsupervise, whatever its working directory.
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(
    *args: str, cwd: Path, stdin: int | None = subprocess.DEVNULL, stdout: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llsupervise", *args], cwd=cwd, stdin=stdin,
        stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE,
        text=True, env=ENV, check=False,
    )  # fmt: skip


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one line of the error, once checked; ``words`` must be in it."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(("llsupervise: ", "llsupervise run: "))
    for word in words:
        assert word in lines[0]
    assert result.returncode == 2
    assert not result.stdout
    return lines[0]


def run_touching(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return cli("run", *options, "--", "touch", str(tmp_path / "marker"), cwd=tmp_path)


@pytest.mark.kernel
def test_the_valid_run_would_touch_the_marker(tmp_path: Path) -> None:
    result = run_touching(tmp_path, "--headless", "--policy", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "marker").exists()


def test_version_is_the_installed_package_version(tmp_path: Path) -> None:
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"llsupervise {metadata.version('llsupervise')}\n"


@pytest.mark.parametrize("headless", [True, False], ids=["headless", "interface"])
def test_a_log_in_a_missing_directory_starts_nothing(tmp_path: Path, headless: bool) -> None:
    log = tmp_path / "nowhere" / "x.jsonl"
    mode = ["--headless"] if headless else []
    result = run_touching(tmp_path, *mode, "--policy", str(EXAMPLE), "--log", str(log))
    refused(result, "--log", str(log), "no such directory")
    assert not (tmp_path / "marker").exists()
    assert not log.parent.exists()


def test_a_log_in_a_missing_directory_is_refused_before_the_interface_takes_the_terminal(
    tmp_path: Path,
) -> None:
    """On a real terminal too: the check comes before the interface would start."""
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "llsupervise", "run", "--policy", str(EXAMPLE),
             "--log", str(tmp_path / "nowhere" / "x.jsonl"), "--", "touch", "marker"],
            cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, text=True,
            env=ENV, check=False,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"llsupervise: --log {tmp_path}/nowhere/x.jsonl: no such directory {tmp_path}/nowhere"
    ]
    assert not (tmp_path / "marker").exists()


def test_a_log_that_is_a_directory_starts_nothing(tmp_path: Path) -> None:
    result = run_touching(tmp_path, "--headless", "--policy", str(EXAMPLE), "--log", ".")
    refused(result, "--log .", "Is a directory")
    assert not (tmp_path / "marker").exists()


def test_listen_in_a_missing_directory_tree_creates_nothing(tmp_path: Path) -> None:
    sock = tmp_path / "a" / "b" / "s"
    log = tmp_path / "events.jsonl"
    result = run_touching(
        tmp_path, "--headless", "--policy", str(EXAMPLE), "--log", str(log), "--listen", str(sock)
    )
    refused(result, str(tmp_path / "a" / "b"), "parent directory does not exist")
    assert not (tmp_path / "a").exists()
    assert not log.exists()  # checked, not created, before the listen path was refused
    assert not (tmp_path / "marker").exists()


@pytest.mark.kernel
def test_listen_makes_the_sockets_own_directory_only(tmp_path: Path) -> None:
    """The valid twin: a new directory for the socket, whose parent exists, is made private.
    Not under /tmp, which the example grants statically: the socket is the control plane's."""
    parent = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        result = run_touching(
            tmp_path, "--headless", "--policy", str(EXAMPLE), "--listen", str(parent / "new" / "s")
        )
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "marker").exists()
        assert (parent / "new").stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(parent)


def test_listen_where_a_static_rule_reaches_starts_nothing(tmp_path: Path) -> None:
    """The example grants /tmp read-write statically: a socket (and its token) there would
    be the program's to replace and read."""
    result = run_touching(
        tmp_path, "--headless", "--policy", str(EXAMPLE), "--listen", str(tmp_path / "new" / "s")
    )
    refused(result, "control plane: static rule /tmp", "listen socket")
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "new").exists()


def test_listen_in_a_shared_directory_starts_nothing(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    result = run_touching(
        tmp_path, "--headless", "--policy", str(EXAMPLE), "--listen", str(shared / "s")
    )
    refused(result, "must be private")
    assert not (tmp_path / "marker").exists()


def test_listen_on_a_path_too_long_for_a_socket_starts_nothing(tmp_path: Path) -> None:
    sock = tmp_path / ("s" * 120)
    result = run_touching(tmp_path, "--headless", "--policy", str(EXAMPLE), "--listen", str(sock))
    refused(result, "at most 107 bytes")
    assert not (tmp_path / "marker").exists()


def test_a_missing_policy_starts_nothing(tmp_path: Path) -> None:
    result = run_touching(tmp_path, "--headless", "--policy", "nope.toml")
    refused(result, "nope.toml", "cannot read policy file", "No such file or directory")
    assert not (tmp_path / "marker").exists()


def test_an_invalid_policy_starts_nothing_even_with_the_interface(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("[[path_beneath]\n")
    for mode in (["--headless"], []):
        result = run_touching(tmp_path, *mode, "--policy", "p.toml")
        refused(result, "p.toml:1", "TOML syntax error")
    assert not (tmp_path / "marker").exists()


def test_check_of_a_missing_file(tmp_path: Path) -> None:
    refused(cli("check", "nope.toml", cwd=tmp_path), "nope.toml", "cannot read policy file")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_attach_to_no_socket(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "s"
    if kind == "file":
        target.write_text("")
    line = refused(cli("attach", str(target), cwd=tmp_path), f"cannot attach to {target}")
    assert line.endswith("No such file or directory" if kind == "missing" else "not a socket")


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    refused(cli("bogus", cwd=tmp_path), "invalid choice", "--help")
    refused(cli("run", "--headless", cwd=tmp_path), "no command given")  # --policy optional
    refused(cli("run", "--headless", "--policy", str(EXAMPLE), cwd=tmp_path), "no command given")


def test_an_error_quoting_a_hostile_name_is_one_escaped_line(tmp_path: Path) -> None:
    name = "p\x1b[2J\nforged line.toml"
    line = refused(cli("check", name, cwd=tmp_path), "cannot read policy file")
    assert "\x1b" not in line
    assert "p\\x1b[2J\\nforged line.toml" in line


def test_check_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """``llsupervise check FILE | head``: the reader left; no traceback, the SIGPIPE status."""
    reader, writer = os.pipe()
    os.close(reader)  # before the child writes: its first write meets a closed pipe
    try:
        result = cli("check", str(EXAMPLE), cwd=tmp_path, stdout=writer)
    finally:
        os.close(writer)
    assert result.stderr == ""
    assert result.returncode == 128 + 13  # as if killed by SIGPIPE


def test_check_shows_an_escape_sequence_in_a_rule_path_escaped(tmp_path: Path) -> None:
    """A directory named by the program (kept by "allow always"): its name reaches the
    terminal as visible escapes, never as a sequence the terminal would act on."""
    hostile = "\x1b]0;pwned\x07\x1b[2Jdir\u2215x"
    (tmp_path / hostile).mkdir()
    toml_name = hostile.replace("\x1b", "\\u001b").replace("\x07", "\\u0007")
    (tmp_path / "p.toml").write_text(
        f'[[path_beneath]]\nallowed_access = ["read_file"]\nparent = ["{tmp_path}/{toml_name}"]\n'
    )
    result = cli("check", "p.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert f"{tmp_path}/\\x1b]0;pwned\\x07\\x1b[2Jdir\\u2215x: read_file" in result.stdout
