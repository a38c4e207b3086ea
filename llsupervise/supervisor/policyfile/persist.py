"""Write answers back into the policy file, keeping the user's comments and layout.

An "allow always" answer becomes (or extends) a ``[[supervisor.path_beneath]]`` entry and a
"deny quietly" answer a ``[[supervisor.quiet]]`` entry; temporary grants are never written.
Paths are written literally (absolute, ``$`` escaped as ``$$``), not through the policy's
variables. The file is re-read right before each write, so an edit the user saved meanwhile
is kept, and replaced atomically (temporary file in the same directory, fsync, rename; mode
and owner kept), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, InlineTable

from llsupervise.errors import LLSuperviseError
from llsupervise.policy.document import PolicyDocument
from llsupervise.rights import parse_fs, parse_net

#: Only entries made of these keys are extended; others (optional, exe, cgroup) are left alone.
_PLAIN_RULE_KEYS = {"allowed_access", "parent"}
_PLAIN_QUIET_KEYS = {"parent"}
_PLAIN_PORT_KEYS = {"allowed_access", "port"}


class PersistError(LLSuperviseError):
    """An answer could not be written into the policy file (it stays in force for this run)."""


@dataclass(frozen=True)
class Kept:
    """One answer to write: a rule on ``path`` (``access`` names), a quiet path (``access``
    None), or, with ``port`` given, a ``net_port`` rule."""

    path: str
    access: tuple[str, ...] | None = None
    port: int | None = None

    def event(self) -> dict[str, Any]:
        if self.port is not None:
            return {"port": self.port, "access": list(self.access or ())}
        if self.access is None:
            return {"quiet": self.path}
        return {"path": self.path, "access": list(self.access)}


def kept_from_event(event: Mapping[str, Any]) -> list[Kept]:
    """What a denial event says to persist: its kept rules, temporary grants excepted."""
    if event.get("event") != "denial":
        return []
    kept = []
    for rule in event.get("rules", ()):
        if "quiet" in rule:
            kept.append(Kept(rule["quiet"]))
        elif "seconds" in rule:
            continue
        elif "port" in rule:
            kept.append(Kept("", tuple(rule["access"]), int(rule["port"])))
        else:
            kept.append(Kept(rule["path"], tuple(rule["access"])))
    return kept


def _literal(path: str) -> str:
    """A path as a policy string: ``$`` would start a variable reference."""
    return path.replace("$", "$$")


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _append(container: Any, key: str, entry: dict[str, Any], comment: str) -> None:
    """Append ``entry`` to the array of tables ``key``, in the style the file already uses."""
    existing = container.get(key)
    if isinstance(container, InlineTable) or (
        existing is not None and not isinstance(existing, AoT)
    ):
        item: Any = tomlkit.inline_table()
        item.update(entry)
        if existing is None:
            array = tomlkit.array()
            array.append(item)
            container[key] = array
        else:
            existing.append(item)
        return
    table = tomlkit.table()
    table.update(entry)
    table.comment(comment)
    table.add(tomlkit.nl())
    if existing is None:
        if not container.as_string().endswith("\n\n"):
            container.add(tomlkit.nl())
        container.append(key, tomlkit.aot())
        existing = container[key]
    existing.append(table)


def _add_rule(supervisor: Any, kept: Kept) -> None:
    assert kept.access is not None
    entries = supervisor.get("path_beneath") or []
    path = _literal(kept.path)
    for entry in entries:
        if set(entry) <= _PLAIN_RULE_KEYS and _strings(entry.get("allowed_access")) == list(
            kept.access
        ):
            if path not in _strings(entry.get("parent")):
                entry["parent"].append(path)
            return
    _append(
        supervisor, "path_beneath",
        {"allowed_access": list(kept.access), "parent": [path]}, 'kept by an "always" answer',
    )  # fmt: skip


def _add_port(supervisor: Any, kept: Kept) -> None:
    assert kept.access is not None and kept.port is not None
    for entry in supervisor.get("net_port") or []:
        if set(entry) <= _PLAIN_PORT_KEYS and _strings(entry.get("allowed_access")) == list(
            kept.access
        ):
            if kept.port not in entry["port"]:
                entry["port"].append(kept.port)
            return
    _append(
        supervisor, "net_port",
        {"allowed_access": list(kept.access), "port": [kept.port]}, 'kept by an "always" answer',
    )  # fmt: skip


def _add_quiet(supervisor: Any, kept: Kept) -> None:
    path = _literal(kept.path)
    entries = supervisor.get("quiet") or []
    for entry in entries:
        if path in _strings(entry.get("parent")):
            return
    for entry in entries:
        if set(entry) <= _PLAIN_QUIET_KEYS and "parent" in entry:
            entry["parent"].append(path)
            return
    _append(supervisor, "quiet", {"parent": [path]}, 'kept by a "deny quietly" answer')


def add_answers(text: str, answers: Iterable[Kept], source: str = "policy") -> str:
    """``text`` with ``answers`` added to its ``[supervisor]`` table, everything else as it was."""
    try:
        document = tomlkit.parse(text)
        supervisor = document.get("supervisor")
        if supervisor is None:
            document.append("supervisor", tomlkit.table())
            supervisor = document["supervisor"]
        for kept in answers:
            if kept.port is not None:
                _add_port(supervisor, kept)
            elif kept.access is None:
                _add_quiet(supervisor, kept)
            else:
                _add_rule(supervisor, kept)
        return tomlkit.dumps(document)
    except (TOMLKitError, AttributeError, TypeError, ValueError) as exc:
        raise PersistError(f"{source}: cannot add the answers to this file: {exc}") from None


def check_answers(document: PolicyDocument, answers: Sequence[Kept]) -> None:
    """Raise unless ``document`` (the file after the write) holds every answer."""
    for kept in answers:
        if kept.port is not None:
            net_access = parse_net(kept.access or ())
            found = any(
                kept.port in entry.ports and net_access & ~entry.access == 0
                for entry in document.supervisor.net_port
            )
        elif kept.access is None:
            found = any(kept.path in entry.paths for entry in document.supervisor.quiet)
        else:
            access = parse_fs(kept.access)
            found = any(
                kept.path in entry.paths and access & ~entry.access == 0
                for entry in document.supervisor.path_beneath
                if not entry.conditional
            )
        if not found:
            what = f"port {kept.port}" if kept.port is not None else kept.path
            raise PersistError(f"{document.source}: the answer for {what} was not written")


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename; keep its mode and, if allowed, owner."""
    target = Path(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            if st is not None:
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def persist(
    path: str, answers: Sequence[Kept], parse: Callable[[str], PolicyDocument]
) -> tuple[str, str]:
    """Add ``answers`` to the policy file at ``path``; return its text before and after.

    ``parse`` loads a text as the policy (it raises PolicyError): the new text must load and
    hold every answer, or nothing is written."""
    try:
        before = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersistError(f"{path}: cannot read the policy file: {exc}") from None
    after = add_answers(before, answers, path)
    check_answers(parse(after), answers)
    if after != before:
        try:
            write_atomically(path, after)
        except OSError as exc:
            raise PersistError(f"{path}: cannot write the policy file: {exc.strerror}") from None
    return before, after
