"""What the supervisor reads about a trapped task in /proc: names for events, status fields.

All of it needs the supervisor's own standing (a Landlock-restricted thread may not read the
/proc entries of a process outside its domain) and none of it is trusted for access checks.
"""

from __future__ import annotations

import os


def read_whole(fd: int) -> bytes:
    """All of a /proc file opened earlier (``/proc/self/mountinfo``, ``/proc/locks``), read
    again from its start: a restricted thread may read what it could not open."""
    chunks, offset = [], 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_proc(tid: int, name: str) -> str:
    """``exe`` or ``cwd`` (a link), or a NUL-separated file such as ``cmdline``; "?" if gone."""
    try:
        if name in ("exe", "cwd"):
            return os.readlink(f"/proc/{tid}/{name}")
        with open(f"/proc/{tid}/{name}", "rb") as f:
            return " ".join(os.fsdecode(a) for a in f.read().split(b"\0") if a)
    except OSError:
        return "?"


def status_fields(text: bytes) -> dict[bytes, bytes]:
    """The ``Key:<tab>value`` lines of a /proc/TID/status text."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        fields[key] = value.strip()
    return fields


def read_status(tid: int) -> dict[bytes, bytes]:
    """The fields of /proc/TID/status; none if the task is gone."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            return status_fields(f.read())
    except OSError:
        return {}


def status_number(fields: dict[bytes, bytes], name: bytes, base: int, default: int) -> int:
    """A numeric field (Umask in octal, Tgid in decimal, CapEff in hex...), or ``default``."""
    try:
        return int(fields[name], base)
    except (KeyError, ValueError):
        return default
