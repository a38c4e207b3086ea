"""The escaped form of names: valid UTF-8, one name per form, and the name back from it."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llsupervise.supervisor.events.encode import EscapeError, escape, escaped, unescape, unescaped

#: Names as the kernel has them, with the bytes that matter here drawn often.
names = st.lists(
    st.one_of(st.sampled_from([b"\\", b"x", b"f", b"\xff", b"\xc3", b"\xa9", b"u"]), st.binary()),
    max_size=12,
).map(b"".join)


@given(names)
def test_an_escaped_name_is_utf8_and_comes_back(raw: bytes) -> None:
    name = os.fsdecode(raw)
    text = escape(name)
    text.encode("utf-8")  # never raises
    assert unescape(text) == name
    assert os.fsencode(unescape(text)) == raw


@given(names, names)
def test_distinct_names_have_distinct_escapes(a: bytes, b: bytes) -> None:
    if a != b:
        assert escape(os.fsdecode(a)) != escape(os.fsdecode(b))


@given(st.text())
def test_any_text_even_lone_surrogates_round_trips(text: str) -> None:
    assert unescape(escape(text)) == text
    escape(text).encode("utf-8")


def test_examples() -> None:
    assert escape("/data/" + os.fsdecode(b"\xff\xfe")) == "/data/\\xff\\xfe"
    assert escape("a\\xff") == "a\\\\xff"
    assert escape("plain é") == "plain é"


@pytest.mark.parametrize("text", ["\\", "a\\q", "\\x4", "\\x41", "\\udc80", "\\u0041", "x\\"])
def test_what_escape_cannot_have_written_is_refused(text: str) -> None:
    with pytest.raises(EscapeError):
        unescape(text)


def test_nested_values_escape_every_string() -> None:
    odd = os.fsdecode(b"\xff")
    value = {"path": odd, "rules": [{odd: [odd, 1, None]}], "n": 2.5}
    line = json.dumps(escaped(value), ensure_ascii=False).encode("utf-8")
    assert unescaped(json.loads(line)) == {"path": odd, "rules": [{odd: [odd, 1, None]}], "n": 2.5}
