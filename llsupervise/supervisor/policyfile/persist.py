"""Write answers back into the policy file, keeping the user's comments and layout.

An "allow always" answer becomes (or extends) a ``[[supervisor.path_beneath]]`` entry, a "deny
quietly" answer a ``[[supervisor.quiet]]`` entry and a port answer a ``[[supervisor.net_port]]``
entry; temporary grants are never written. Paths are written literally (absolute, ``$`` escaped
as ``$$``), not through the policy's variables.

The file is edited as lines (:mod:`llsupervise.policy.layout`), the way a person would: a new
entry goes after the last entry of its kind, with a blank line and a comment (``# Added by
llsupervise ...``: when, and which answer to which request) above it. Only entries whose comment
block is made of such lines are ever extended, or removed from; a person's entry, or one a
person commented on, is never touched. Nothing else moves.

The file is re-read right before each write, so an edit the user saved meanwhile is kept, and
replaced atomically (temporary file in the same directory, fsync, rename; mode and owner kept),
so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError
from llsupervise.policy.document import PolicyDocument
from llsupervise.policy.layout import Entry, LayoutError, Statement, entries, lines, statements
from llsupervise.rights import FS_NAMES, LATEST_ABI, NO_FS, NO_NET, parse_fs, parse_net
from llsupervise.supervisor.policyfile.kept import KeptAnswer, quoted

# tomlkit (~10 ms to import) is imported where an answer is written, not here.

#: The first words of every comment line llsupervise writes above an entry: its mark of
#: ownership. An entry whose comment block has any other line is the person's.
MARK = "# Added by llsupervise"

#: Only entries made of these keys are extended; others (optional, exe, cgroup) are left alone.
_PLAIN_KEYS = {
    "path_beneath": {"allowed_access", "parent"},
    "quiet": {"parent"},
    "net_port": {"allowed_access", "port"},
}


class PersistError(LLSuperviseError):
    """An answer could not be written into the policy file (it stays in force for this run)."""


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _toml(value: object) -> str:
    import tomlkit

    return tomlkit.item(value).as_string()


def _mark(kept: KeptAnswer, now: float) -> str:
    """The comment line written with an answer (``\\n`` included)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(kept.when or now))
    if kept.reason:
        why = escape(kept.reason)  # the program chose its name and its paths
    else:
        why = '"deny quietly"' if kept.kind == "quiet" else '"allow always"'
    return f"{MARK} {stamp} {_about(kept)} {why}\n"


def _about(kept: KeptAnswer) -> str:
    """What an answer's comment line is about (removal finds the line by it)."""
    return f"for port {kept.port}:" if kept.port is not None else f"for {quoted(kept.value)}:"


class _File:
    """The text being edited, taken apart: lines, statements, entries and loaded data."""

    def __init__(self, text: str) -> None:
        self.data: dict[str, Any] = tomllib.loads(text)
        self.lines = lines(text)
        self.stmts = statements(text)
        self.entries = entries(self.stmts)
        try:
            self.abi = int(self.data.get("abi", LATEST_ABI))
        except (TypeError, ValueError):
            self.abi = LATEST_ABI

    def text(self) -> str:
        return "".join(self.lines)

    def of_kind(self, kind: str) -> list[tuple[Entry, dict[str, Any]]]:
        """The ``[[supervisor.KIND]]`` entries with their loaded tables, in file order."""
        found = [e for e in self.entries if e.key == ("supervisor", kind) and e.array]
        tables = self.supervisor().get(kind)
        if not isinstance(tables, list) or len(tables) != len(found):
            return []
        return list(zip(found, tables, strict=True))

    def supervisor(self) -> dict[str, Any]:
        sup = self.data.get("supervisor")
        return sup if isinstance(sup, dict) else {}

    def written_inline(self, kind: str) -> bool:
        """Whether the kind (or the supervisor table) is written without ``[..]`` headers."""
        if "supervisor" not in self.data:
            return False
        if not any(e.key[:1] == ("supervisor",) for e in self.entries):
            return True
        return kind in self.supervisor() and not self.of_kind(kind)

    def ours(self, entry: Entry, table: dict[str, Any], kind: str) -> bool:
        """Written by llsupervise and untouched: only marked comment lines above, no comment
        inside, plain keys and plain values."""
        if not entry.comments or self.stmts[entry.header].commented:
            return False
        if not all(self.lines[self.stmts[i].first].lstrip().startswith(MARK)
                   for i in entry.comments):  # fmt: skip
            return False
        own: list[Statement] = [self.stmts[i] for i in entry.body]
        if any(s.kind == "header" or s.commented for s in own):
            return False
        if set(table) != _PLAIN_KEYS[kind]:
            return False
        access = table.get("allowed_access", [])
        return isinstance(access, list) and all(a in FS_NAMES or kind == "net_port"
                                                for a in access)  # fmt: skip

    def statement_of(self, entry: Entry, key: str) -> Statement:
        for i in entry.body:
            s = self.stmts[i]
            if s.kind == "keyvalue" and key in tomllib.loads("".join(self.line_span(s))):
                return s
        raise LayoutError(f"no {key} in the entry")

    def line_span(self, s: Statement) -> list[str]:
        return self.lines[s.first : s.last + 1]

    def end_line(self, entry: Entry) -> int:
        """The line index after the entry's last own line."""
        last = self.stmts[entry.body.stop - 1] if entry.body else self.stmts[entry.header]
        return last.last + 1


def _holds(f: _File, kept: KeptAnswer, table: dict[str, Any]) -> bool:
    """Whether an entry already holds the answer (the file needs no change for it)."""
    key = "port" if kept.kind == "net_port" else "parent"
    values = table.get(key)
    if not isinstance(values, list) or kept.value not in values:
        return False
    if kept.kind == "quiet":
        return True
    if "exe" in table or "cgroup" in table:
        return False
    try:
        if kept.kind == "net_port":
            have_net, want_net = (
                parse_net(_strings(table.get("allowed_access")), f.abi),
                parse_net(kept.access or ()),
            )
            return want_net & ~have_net == NO_NET
        have, want = (
            parse_fs(_strings(table.get("allowed_access")), f.abi),
            parse_fs(kept.access or ()),
        )
    except LLSuperviseError:
        return False
    return want & ~have == NO_FS


def _replace(f: _File, s: Statement, new: list[str]) -> None:
    f.lines[s.first : s.last + 1] = new


def _new_entry(kept: KeptAnswer, mark: str) -> list[str]:
    assert kept.kind != "quiet" or kept.access is None
    body = [] if kept.access is None else [f"allowed_access = {_toml(list(kept.access))}\n"]
    body.append(f"{'port' if kept.port is not None else 'parent'} = {_toml([kept.value])}\n")
    return ["\n", mark, f"[[supervisor.{kept.kind}]]\n", *body]


def _insert_new(f: _File, kept: KeptAnswer, mark: str) -> None:
    same = f.of_kind(kept.kind)
    if same:
        at = f.end_line(same[-1][0])
    else:
        # After the supervisor's last table, or at the end of the file.
        sup = [e for e in f.entries if e.key[:1] == ("supervisor",)]
        if sup:
            at = f.end_line(sup[-1])
        else:
            at = len(f.lines)
            while at > 0 and not f.lines[at - 1].strip():
                at -= 1
    block = _new_entry(kept, mark)
    if at == 0:
        block = block[1:]  # an empty file: no blank line first
    elif not f.lines[at - 1].endswith("\n"):
        f.lines[at - 1] += "\n"
    f.lines[at:at] = block


def _add_one(f: _File, kept: KeptAnswer, now: float) -> bool:
    """Add one answer to ``f``'s lines; False if the file already held it."""
    same = f.of_kind(kept.kind)
    if any(_holds(f, kept, table) for _, table in same):
        return False
    mark = _mark(kept, now)
    key = "port" if kept.kind == "net_port" else "parent"
    ours = [(e, t) for e, t in same if f.ours(e, t, kept.kind)]
    for entry, table in ours:
        if kept.access is None:
            break
        values = table[key]
        have = _strings(table.get("allowed_access"))
        if values == [kept.value] and set(have) != set(kept.access):
            # Widen the answer's own entry: same object, more rights.
            wider = [*have, *(a for a in kept.access if a not in have)]
            _replace(f, f.statement_of(entry, "allowed_access"),
                     [f"allowed_access = {_toml(wider)}\n"])  # fmt: skip
            f.lines.insert(f.stmts[entry.header].first, mark)
            return True
    for entry, table in ours:
        if kept.access is not None and set(_strings(table.get("allowed_access"))) != set(
            kept.access
        ):
            continue
        values = list(table[key])
        _replace(f, f.statement_of(entry, key), [f"{key} = {_toml([*values, kept.value])}\n"])
        f.lines.insert(f.stmts[entry.header].first, mark)
        return True
    _insert_new(f, kept, mark)
    return True


def _add_inline(text: str, kept: KeptAnswer) -> str:
    """For a supervisor table (or kind) written inline: one more inline table, through tomlkit
    (there are no headers, hence no comments above entries, to keep)."""
    import tomlkit

    document = tomlkit.parse(text)
    supervisor: Any = document["supervisor"]
    entry: dict[str, Any] = {} if kept.access is None else {"allowed_access": list(kept.access)}
    entry["port" if kept.port is not None else "parent"] = [kept.value]
    item = tomlkit.inline_table()
    item.update(entry)
    existing = supervisor.get(kept.kind)
    if existing is None:
        array = tomlkit.array()
        array.append(item)
        supervisor[kept.kind] = array
    else:
        existing.append(item)
    return tomlkit.dumps(document)


def add_answers(
    text: str, answers: Iterable[KeptAnswer], source: str = "policy", now: float | None = None
) -> str:
    """``text`` with ``answers`` added to its ``[supervisor]`` table, everything else as it was."""
    from tomlkit.exceptions import TOMLKitError

    now = time.time() if now is None else now
    try:
        for kept in answers:
            f = _File(text)
            if f.written_inline(kept.kind):
                if not any(_holds(f, kept, t) for t in f.supervisor().get(kept.kind) or []
                           if isinstance(t, dict)):  # fmt: skip
                    text = _add_inline(text, kept)
            elif _add_one(f, kept, now):
                text = f.text()
        tomllib.loads(text)
        return text
    except (tomllib.TOMLDecodeError, LayoutError, TOMLKitError, AttributeError, TypeError,
            ValueError) as exc:  # fmt: skip
        raise PersistError(f"{source}: cannot add the answers to this file: {exc}") from None


def _delete_entry(f: _File, entry: Entry) -> None:
    """Remove an entry with its comment block and one blank line next to it."""
    first = f.stmts[entry.comments.start].first if entry.comments else f.stmts[entry.header].first
    end = f.end_line(entry)
    if first > 0 and not f.lines[first - 1].strip():
        first -= 1
    elif end < len(f.lines) and not f.lines[end].strip():
        end += 1
    del f.lines[first:end]


def _remove_one(f: _File, kept: KeptAnswer, source: str) -> bool:
    key = "port" if kept.kind == "net_port" else "parent"
    holders = [(e, t) for e, t in f.of_kind(kept.kind)
               if isinstance(t.get(key), list) and kept.value in t[key]]  # fmt: skip
    if not holders:
        if kept.kind in f.supervisor() and not f.of_kind(kept.kind):
            raise PersistError(f"{source}: {kept.kind} is written inline: edit it yourself")
        return False
    for entry, table in holders:
        if not f.ours(entry, table, kept.kind):
            line = f.stmts[entry.header].first + 1
            raise PersistError(
                f"{source}:{line}: {quoted(kept.value)} is in an entry llsupervise did not "
                "write (or that has your comment): edit it yourself"
            )
    # Last entry first: line numbers above stay valid.
    for entry, table in reversed(holders):
        rest = [v for v in table[key] if v != kept.value]
        if not rest:
            _delete_entry(f, entry)
            continue
        _replace(f, f.statement_of(entry, key), [f"{key} = {_toml(rest)}\n"])
        about = _about(kept)
        marks = [f.stmts[i].first for i in entry.comments if about in f.lines[f.stmts[i].first]]
        if len(marks) < len(entry.comments):  # the block stays, saying what is left
            for n in reversed(marks):
                del f.lines[n]
    return True


def remove_answers(text: str, answers: Iterable[KeptAnswer], source: str = "policy") -> str:
    """``text`` without ``answers``: taken out of the entries llsupervise wrote (an entry left
    empty goes, with its comment); an answer held by a person's entry is refused."""
    try:
        for kept in answers:
            f = _File(text)
            if _remove_one(f, kept, source):
                text = f.text()
        tomllib.loads(text)
        return text
    except (tomllib.TOMLDecodeError, LayoutError, TypeError, ValueError) as exc:
        raise PersistError(f"{source}: cannot remove the answers from this file: {exc}") from None


def check_answers(document: PolicyDocument, answers: Sequence[KeptAnswer]) -> None:
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
    path: str, answers: Sequence[KeptAnswer], parse: Callable[[str], PolicyDocument]
) -> tuple[str, str]:
    """Add ``answers`` to the policy file at ``path``; return its text before and after.

    ``parse`` loads a text as the policy (it raises PolicyError): the new text must load and
    hold every answer, or nothing is written."""
    try:
        before = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersistError(f"{path}: cannot read the policy file: {exc}") from None
    after = add_answers(before, answers, path)
    try:
        after.encode("utf-8")
    except UnicodeEncodeError:  # a path with bytes that are not UTF-8: TOML cannot hold it
        raise PersistError(f"{path}: an answer's path is not valid UTF-8") from None
    check_answers(parse(after), answers)
    if after != before:
        try:
            write_atomically(path, after)
        except OSError as exc:
            raise PersistError(f"{path}: cannot write the policy file: {exc.strerror}") from None
    return before, after
