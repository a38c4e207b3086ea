"""The one escaping function: unambiguous, and nothing it returns can hide or disguise."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llsupervise.display import BLANKS, LOOK_ALIKES, escape

#: Categories no shown character may have (controls, formats, surrogates, private use,
#: unassigned, separators, combining marks); ASCII space is the one space allowed.
_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "Mn", "Me"}


def _shown_safely(shown: str) -> bool:
    return all(
        (" " <= c <= "~")
        or (unicodedata.category(c) not in _HIDDEN and c not in LOOK_ALIKES and c not in BLANKS)
        for c in shown
    )


@given(st.text())
def test_text_is_shown_with_nothing_hidden(text: str) -> None:
    shown = escape(text)
    assert _shown_safely(shown)
    assert "\n" not in shown and "\x1b" not in shown


@given(st.binary())
def test_bytes_are_shown_with_nothing_hidden(data: bytes) -> None:
    assert _shown_safely(escape(data))


@given(st.text(), st.text())
def test_text_escapes_are_unambiguous(a: str, b: str) -> None:
    if a != b:
        assert escape(a) != escape(b)


@given(st.binary(), st.binary())
def test_byte_escapes_are_unambiguous(a: bytes, b: bytes) -> None:
    if a != b:
        assert escape(a) != escape(b)


#: Characters that each take a different escape form, shown side by side so that two
#: forms meeting cannot read as a third.
_TRICKY = st.sampled_from(
    ["\\", "x", "u", "0", "1", "b", "n", "\n", "\x1b", "\x9b", "\udc9b", "\udcff", "\xff",
     "\u2215", "\U0001f600", "\U000e0041", "\u0338", "\u202e"]
)  # fmt: skip


@given(st.lists(_TRICKY), st.lists(_TRICKY))
def test_escapes_of_look_alike_forms_are_unambiguous(a: list[str], b: list[str]) -> None:
    if a != b:
        assert escape("".join(a)) != escape("".join(b))


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("/home/ada/notes.txt", "/home/ada/notes.txt"),
        ("/home/ada/café/ü.txt", "/home/ada/café/ü.txt"),  # composed letters stay
        ("a\x1b[31mb", "a\\x1b[31mb"),
        ("a\x1b]0;title\x07", "a\\x1b]0;title\\x07"),
        ("tab\there\n\r", "tab\\there\\n\\r"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("c1\x9b", "c1\\u009b"),  # a C1 control is not a stray byte
        ("bad\udcffbyte", "bad\\xffbyte"),  # os.fsdecode of a non-UTF-8 byte
        (b"bad\xffbyte", "bad\\xffbyte"),
        (b"\xc3\xa9", "é"),
        ("back\\slash", "back\\\\slash"),
        ("back\\x1bslash", "back\\\\x1bslash"),  # spells an escape; is not one
        ("etc\u2215passwd", "etc\\u2215passwd"),  # division slash
        ("etc\u2044passwd", "etc\\u2044passwd"),  # fraction slash
        ("etc\uff0fpasswd", "etc\\uff0fpasswd"),  # fullwidth solidus
        ("etc\u29f8passwd", "etc\\u29f8passwd"),  # big solidus
        ("\u2024\u2024/x", "\\u2024\\u2024/x"),  # one dot leaders for ".."
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("word\u2060joiner", "word\\u2060joiner"),
        ("filler\u3164\u115f\u1160\uffa0", "filler\\u3164\\u115f\\u1160\\uffa0"),
        ("braille\u2800blank", "braille\\u2800blank"),
        ("/\u0338etc", "/\\u0338etc"),  # a combining overlay on its own
        ("enclosed\u20dd", "enclosed\\u20dd"),  # Me
        ("x\u202ey\u2066z\u061c", "x\\u202ey\\u2066z\\u061c"),  # bidi controls
        ("no\u00a0break\u3000", "no\\u00a0break\\u3000"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("emoji\U0001f600", "emoji\U0001f600"),
    ],
)
def test_escape_examples(raw: str | bytes, shown: str) -> None:
    assert escape(raw) == shown
