"""The one path splitter that the denials, the broker's operations and the recorder share."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from llsupervise.supervisor.engine.requests import split_last

PATHS = st.lists(st.sampled_from([b"a", b"bc", b"/", b".", b".."]), max_size=8).map(b"".join)


@given(PATHS)
def test_the_parts_name_the_same_path(path: bytes) -> None:
    head, tail = split_last(path)
    if head is None:
        # A bare name (trailing slashes allowed), or only slashes.
        assert tail == path and b"/" not in path.rstrip(b"/")
    else:
        assert b"/" not in tail.rstrip(b"/") and tail.rstrip(b"/")
        joined = os.path.join(head, tail)
        assert joined.startswith(b"/") == path.startswith(b"/")
        # (normpath keeps a leading "//", which POSIX leaves to the implementation.)
        assert os.path.normpath(joined).lstrip(b"/") == os.path.normpath(path).lstrip(b"/")


def test_examples() -> None:
    assert split_last(b"a/b/") == (b"a", b"b/")
    assert split_last(b"/a") == (b"/", b"a")
    assert split_last(b"name") == (None, b"name")
    assert split_last(b"/") == (None, b"/")
    assert split_last(b"") == (None, b"")
