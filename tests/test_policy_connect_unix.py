"""The connect_unix right in the policy format: where it may appear, and export without it."""

from __future__ import annotations

import pytest

from llsupervise.policy.document import PolicyError
from llsupervise.policy.export import to_landlockconfig
from llsupervise.policy.loader import parse_policy
from llsupervise.rights import AccessFs

ENV = {"PWD": "/tmp", "HOME": "/tmp"}
RULE = (
    '[[supervisor.path_beneath]]\nallowed_access = ["connect_unix", "read_file"]\n'
    'parent = ["/tmp"]\n'
)


def test_handled_only_when_the_supervisor_section_says_so() -> None:
    doc = parse_policy(f"[supervisor]\nhandle_connect_unix = true\n{RULE}", "p.toml", ENV)
    assert doc.supervisor.handle_connect_unix
    assert AccessFs.CONNECT_UNIX in doc.handled_fs
    assert doc.supervisor.path_beneath[0].access == AccessFs.CONNECT_UNIX | AccessFs.READ_FILE
    plain = parse_policy('[supervisor]\nmode = "enforce"\n', "p.toml", ENV)
    assert not plain.handled_fs & AccessFs.CONNECT_UNIX


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"[supervisor]\n{RULE}", "supervisor.path_beneath[0].allowed_access: "
         "connect_unix not handled: add handle_connect_unix = true to [supervisor]"),
        ('[[path_beneath]]\nallowed_access = ["connect_unix"]\nparent = ["/tmp"]\n',
         "path_beneath[0].allowed_access: connect_unix is judged by the supervisor layer only"),
        ('[[ruleset]]\nhandled_access_fs = ["connect_unix"]\n',
         "ruleset[0].handled_access_fs: connect_unix is llsupervise's own right"),
        ("[supervisor]\nhandle_connect_unix = 1\n",
         "supervisor.handle_connect_unix: expected a boolean"),
        ('[supervisor]\nhandle_connect_unix = true\n[[supervisor.path_beneath]]\n'
         'allowed_access = ["connect_unix"]\nparent = ["/tmp"]\nexe = ["/usr/bin/ssh"]\n',
         "connect_unix cannot be granted conditionally"),
    ],
)  # fmt: skip
def test_refused_where_landlockconfig_would_see_it(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml", ENV)
    assert message in str(info.value)


def test_export_leaves_it_out() -> None:
    doc = parse_policy(f"[supervisor]\nhandle_connect_unix = true\n{RULE}", "p.toml", ENV)
    rules = [("/tmp", e.access) for e in doc.supervisor.path_beneath]
    rules.append(("/run", AccessFs.CONNECT_UNIX))
    text = to_landlockconfig(doc.handled_fs, doc.handled_net, doc.scoped, rules, {})
    assert "connect_unix" not in text
    assert 'handled_access_fs = ["read_file"]' in text
    assert '"/run"' not in text  # a rule left with no right is no rule
