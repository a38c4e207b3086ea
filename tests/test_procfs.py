"""Reading a task's /proc status: the fields the supervisor uses, and what a gone task gives."""

from __future__ import annotations

import os

from llsupervise.supervisor.perform.procfs import read_proc, read_status, status_number


def test_status_fields_of_this_process() -> None:
    fields = read_status(os.getpid())
    mask = os.umask(0o027)
    try:
        assert status_number(read_status(os.getpid()), b"Umask", 8, -1) == 0o027
    finally:
        os.umask(mask)
    assert status_number(fields, b"Tgid", 10, -1) == os.getpid()
    assert status_number(fields, b"CapEff", 16, -1) >= 0
    assert status_number(fields, b"NoSuchField", 10, -7) == -7
    assert status_number({b"Umask": b"not octal"}, b"Umask", 8, 0o077) == 0o077


def test_a_gone_task_gives_nothing() -> None:
    assert read_status(2**22 + 1) == {}  # above the largest pid_max
    assert read_proc(2**22 + 1, "exe") == "?"
    assert read_proc(os.getpid(), "exe") == os.path.realpath("/proc/self/exe")
