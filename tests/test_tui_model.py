"""The interface's plain logic: command output, the feed, questions and answers, rules, status."""

from __future__ import annotations

import unicodedata

from event_records import denial_event
from hypothesis import given
from hypothesis import strategies as st

from llsupervise.messages import (
    QuestionMessage,
    RuleUseEvent,
    State,
    UnboundRule,
)
from llsupervise.supervisor.events.model import Answer, Denial
from llsupervise.supervisor.frontends.hub import denial_json
from llsupervise.tui.feed import Feed
from llsupervise.tui.model import FEED, PROMPT, RULES, STATUS, SessionModel
from llsupervise.tui.prompts import (
    Question,
    format_duration,
    scope_choices,
)
from llsupervise.tui.text import TerminalText

# -- a command's output ---------------------------------------------------------------------


def _safe_char(c: str) -> bool:
    """Output keeps accents and look-alikes (it is the program's own text in its own pane),
    never a control, format, unassigned or separator character other than the space."""
    return c == " " or unicodedata.category(c) not in {
        "Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs",
    }  # fmt: skip


def test_terminal_text_drops_sequences_and_escapes_controls() -> None:
    term = TerminalText()
    out = term.feed(b"\x1b[1;31mred\x1b[0m \x1b]0;title\x07ok\r\nnext\x00\x08line\n")
    assert out == "red ok\nnext\\x00line\n"


def test_terminal_text_joins_sequences_split_across_reads() -> None:
    term = TerminalText()
    out = (
        term.feed(b"a\x1b[3") + term.feed(b"1mb\r") + term.feed(b"\nc\xe2\x82") + term.feed(b"\xac")
    )
    assert out == "ab\nc€"
    assert term.feed(b"\x1b]8;;http://x\x1b") + term.feed(b"\\link\n") == "link\n"


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_terminal_text_output_is_always_safe(chunks: list[bytes]) -> None:
    term = TerminalText()
    out = "".join(term.feed(c) for c in chunks) + term.feed(b"", final=True)
    assert all(c in "\n\t" or _safe_char(c) for c in out)


# -- the feed -----------------------------------------------------------------------------------


def test_feed_coalesces_by_program_access_object_newest_first() -> None:
    feed = Feed()
    feed.add(denial_event("/a", ts=1))
    feed.add(denial_event("/b", ts=2))
    feed.add(denial_event("/a", ts=3, count=4, decision="allow_once"))
    feed.add(denial_event("/a", ts=4, access=("write_file",)))
    feed.add(denial_event("/a", ts=5, exe="/usr/bin/vi"))
    entries = feed.entries()
    assert [(e.exe, e.path, e.access, e.count) for e in entries] == [
        ("/usr/bin/vi", "/a", ("read_file",), 1),
        ("/usr/bin/cat", "/a", ("write_file",), 1),
        ("/usr/bin/cat", "/a", ("read_file",), 5),
        ("/usr/bin/cat", "/b", ("read_file",), 1),
    ]
    assert entries[2].last_seen == 3 and entries[2].first_seen == 1
    assert entries[2].decision == "allow_once"
    assert feed.total == 8


def test_feed_says_when_a_kept_rule_could_not_be_saved() -> None:
    feed = Feed()
    unbound: list[UnboundRule] = [{"path": "/w/sub", "access": ["read_file"], "reason": "moved"}]
    entry = feed.add(denial_event("/w/sub/f", decision="allow_always", unbound=unbound))
    assert entry.decision == "allow_always, path moved: not saved"


def test_feed_filter_needs_every_word() -> None:
    feed = Feed()
    feed.add(denial_event("/home/ada/.netrc"))
    feed.add(denial_event("/etc/shadow", exe="/usr/bin/python3"))
    assert [e.path for e in feed.entries("NETRC")] == ["/home/ada/.netrc"]
    assert [e.path for e in feed.entries("python shadow")] == ["/etc/shadow"]
    assert feed.entries("python netrc") == []
    assert len(feed.entries("read_file deny")) == 2


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyz"), st.integers(1, 5))))
def test_feed_counts_add_up_and_keys_are_unique(
    events: list[tuple[str, str, int]],
) -> None:
    feed = Feed(limit=4)
    for i, (exe, path, count) in enumerate(events):
        feed.add(denial_event(path, exe=exe, count=count, ts=i))
    entries = feed.entries()
    assert len({e.key for e in entries}) == len(entries) <= 4
    assert feed.total == sum(c for _, _, c in events)
    assert [e.last_seen for e in entries] == sorted((e.last_seen for e in entries), reverse=True)
    if len({(e, p) for e, p, _ in events}) <= 4:
        assert sum(e.count for e in entries) == feed.total


# -- questions ----------------------------------------------------------------------------------


def denial(
    path: str = "/home/ada/p/f.txt",
    access: tuple[str, ...] = ("read_file",),
    scopes: tuple[str, ...] = ("/home/ada/p/f.txt", "/home/ada/p", "/home/ada", "/home", "/"),
    scope_kind: str = "file",
) -> Denial:
    return Denial(
        pid=7, tid=7, exe="/usr/bin/cat", cmdline="cat f.txt", syscall="openat", path=path,
        access=access, generation=1, ts=0.0, scopes=scopes, scope_kind=scope_kind,
    )  # fmt: skip


def test_scopes_are_those_offered_narrowest_first() -> None:
    choices = scope_choices(denial())
    assert [(c.path, c.title, c.is_dir) for c in choices] == [
        ("/home/ada/p/f.txt", "only this file", False),
        ("/home/ada/p", "its dir and all below", True),
        ("/home/ada", "all below", True),
        ("/home", "all below", True),
        ("/", "all below", True),
    ]
    mkdir = scope_choices(
        denial("/home/ada/p/new", ("make_dir",), ("/home/ada/p", "/"), "changed_directory")
    )
    assert [(c.path, c.is_dir) for c in mkdir] == [("/home/ada/p", True), ("/", True)]
    assert mkdir[0].title == "the dir it changes in, all below"


def test_without_offered_scopes_an_answer_names_none() -> None:
    q = Question.create(2, denial(scopes=(), scope_kind=""), deadline=0.0)
    assert len(q.scopes) == 1
    assert "scope" not in q.answer(Answer.ALLOW_ALWAYS)


def test_answer_messages_carry_scope_rights_and_duration() -> None:
    q = Question.create(3, denial(), deadline=10.0)
    assert q.answer(Answer.ALLOW_ONCE) == {"type": "answer", "id": 3, "answer": "allow_once"}
    assert q.answer(Answer.DENY) == {"type": "answer", "id": 3, "answer": "deny"}
    q.broader()
    q.set_rights(["read_file", "read_dir", "bogus"])
    assert q.answer(Answer.ALLOW_ALWAYS) == {
        "type": "answer", "id": 3, "answer": "allow_always", "scope": "/home/ada/p",
        "rights": ["read_file", "read_dir"],
    }  # fmt: skip
    q.duration = 90.0
    assert q.answer(Answer.ALLOW_FOR)["duration"] == 90.0
    assert q.answer(Answer.DENY_QUIET)["scope"] == "/home/ada/p"


def test_narrowing_the_scope_to_a_file_drops_directory_rights() -> None:
    q = Question.create(1, denial(), deadline=0.0)
    q.choose_scope(1)
    q.set_rights(["read_file", "read_dir"])
    q.choose_scope(0)
    assert q.rights == ["read_file"]
    q.set_rights([])
    assert q.missing_rights() == ["read_file"]
    q.broader()
    assert q.rights == ["read_file"]  # what was asked comes back with a new scope


@given(st.integers(0, 40))
def test_broader_cycles_through_every_scope(steps: int) -> None:
    q = Question.create(1, denial(), deadline=0.0)
    for _ in range(steps):
        q.broader()
    assert q.scope == q.scopes[steps % len(q.scopes)]


def test_durations() -> None:
    assert [format_duration(s) for s in (30, 60, 90, 300, 3600, 86400)] == [
        "30s", "1m", "1m30s", "5m", "1h", "1d",
    ]  # fmt: skip


# -- the session model ----------------------------------------------------------------------------


def _state() -> State:
    return {
        "policy": "p.toml", "argv": ["sh"], "pid": 9, "running": True, "exit_status": None,
        "mode": "interactive", "policy_mode": "interactive", "default": "deny",
        "prompt_timeout": 30.0, "generation": 2, "handled_fs": ["read_file", "read_dir"],
        "static": {"fs": [{"path": "/usr", "access": ["read_file"]}], "net": []},
        "committed": {"fs": [{"path": "/w", "access": ["read_file"]}], "net": []},
        "pending": {"fs": [{"path": "/w", "access": ["read_file"]},
                           {"path": "/x", "access": ["read_dir"]}], "net": []},
        "quiet": ["/q"], "kernel": {"abi": 3, "lines": ["Landlock ABI 3"],
                                    "missing": ["filesystem access: ioctl_dev"]},
        "reload": None,
    }  # fmt: skip


def test_model_follows_state_events_questions() -> None:
    now = [100.0]
    model = SessionModel(lambda: now[0])
    assert model.apply({"type": "hello", "version": 1, "state": _state()}) == {RULES, STATUS}
    assert model.status.state == "running" and model.status.kernel_abi == 3
    assert [(r.path, r.status) for r in model.rules.supervisor_rows()] == [
        ("/w", "committed"), ("/x", "pending add"),
    ]  # fmt: skip
    assert model.rules.has_pending

    changed = model.apply({"type": "question", "id": 4, "denial": denial_json(denial()),
                           "timeout_in": 12.0})  # fmt: skip
    assert changed == {PROMPT}
    question = model.prompts.current
    assert question is not None and question.deadline == 112.0 and question.denial == denial()
    model.apply({"type": "question", "id": 5, "denial": denial_json(denial("/b")),
                 "timeout_in": 30.0})  # fmt: skip
    assert model.prompts.waiting == 1
    model.apply({"type": "error", "id": 4, "message": "no"})
    assert model.prompts.error == "no"
    model.apply({"type": "resolved", "id": 4, "answer": "deny"})
    assert model.prompts.current is not None and model.prompts.current.id == 5
    assert model.prompts.error is None

    kept = denial_event("/w/f", ts=50.0, decision="allow_always",
                        rules=[{"path": "/w", "access": ["read_file"]}])  # fmt: skip
    assert model.apply({"type": "event", "event": kept}) == {FEED, RULES}
    assert model.rules.uses["/w"].answers == 1 and model.rules.uses["/w"].last == 50.0
    used: RuleUseEvent = {"event": "rule_use", "uses": [{"path": "/w", "count": 7, "last": 60.0}]}
    assert model.apply({"type": "event", "event": used}) == {RULES}
    assert model.rules.uses["/w"].used == 7 and model.rules.uses["/w"].last == 60.0
    assert model.rules.uses["/w"].answers == 1
    model.apply({"type": "event", "event": {"event": "reload", "ok": False, "generation": 2,
                                            "error": "p.toml:3: bad"}})  # fmt: skip
    assert model.rules.reload is not None and model.rules.reload["error"] == "p.toml:3: bad"
    model.apply({"type": "event", "event": {"event": "exit", "pid": 9, "status": 3}})
    assert model.status.state == "exited with status 3"
    model.apply({"type": "closed", "reason": "gone"})
    assert model.status.state == "gone" and model.prompts.current is None


def test_a_port_denial_is_answered_on_the_port_alone() -> None:
    """No directory scope and no filesystem rights: the rule goes on the port asked for."""
    q = Question.create(4, denial("tcp://127.0.0.1:8080", ("connect_tcp",)), deadline=0.0)
    assert [(c.path, c.title) for c in q.scopes] == [("tcp://127.0.0.1:8080", "this port")]
    q.broader()
    assert q.rights == ["connect_tcp"] and q.missing_rights() == []
    assert q.answer(Answer.ALLOW_ALWAYS) == {"type": "answer", "id": 4, "answer": "allow_always"}
    assert "scope" not in q.answer(Answer.DENY_QUIET)
    assert q.answer(Answer.ALLOW_FOR)["duration"] == q.duration


def _exec_question(qid: int, path: str) -> QuestionMessage:
    denial = Denial(pid=7, tid=7, exe="?", cmdline="", syscall="execve", path=path,
                    access=("execute",), generation=1, next_run_only=True, ts=5.0)  # fmt: skip
    return {"type": "question", "id": qid, "timeout_in": 30.0, "denial": denial_json(denial)}


def test_an_unanswered_exec_of_a_command_that_ended_with_126_is_a_feed_row() -> None:
    model = SessionModel(lambda: 0.0)
    model.apply(_exec_question(1, "/opt/tool"))
    model.apply({"type": "resolved", "id": 1, "answer": None})  # the run ended: nobody answered
    changed = model.apply({"type": "event", "event": {"event": "exit", "pid": 7, "status": 126}})
    assert FEED in changed
    [entry] = model.feed.entries()
    assert (entry.path, entry.access, entry.decision) == ("/opt/tool", ("execute",), "deny")
    assert model.refused_exec is not None and model.refused_exec.path == "/opt/tool"


def test_an_answered_exec_is_not_added_twice_and_other_statuses_add_nothing() -> None:
    model = SessionModel(lambda: 0.0)
    model.apply(_exec_question(1, "/opt/tool"))
    answered = denial_event("/opt/tool", exe="?", syscall="execve", access=("execute",),
                            decision="allow_always", ts=6.0)  # fmt: skip
    answered["next_run_only"] = True
    model.apply({"type": "event", "event": answered})
    model.apply({"type": "event", "event": {"event": "exit", "pid": 7, "status": 126}})
    assert [e.decision for e in model.feed.entries()] == ["allow_always"]
    other = SessionModel(lambda: 0.0)
    other.apply(_exec_question(1, "/opt/tool"))
    other.apply({"type": "event", "event": {"event": "exit", "pid": 7, "status": 1}})
    assert len(other.feed) == 0 and other.refused_exec is None
