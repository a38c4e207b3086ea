"""Write learned rules as a policy file (DESIGN section 6 format), every rule with the reason it
exists. Pure: text in, text out.

Paths use ``${PWD}``, ``${HOME}`` and ``${TMPDIR}`` where they apply; access rights are spelled
out by name so the file means the same on every ABI; counts sit in comments (the recording
beside the policy is what ``learn --merge`` reads back, not these comments).

A rule on an object the run created (``${PWD}/out``) is a ``[[supervisor.path_beneath]]`` whose
last line is exactly :data:`CREATED_MARKER`::

    [[supervisor.path_beneath]]
    allowed_access = ["read_file", "write_file", "make_reg"]
    parent = ["${PWD}/out"]
    optional = true  # created by the run

Today's loader skips it while the path does not exist (``optional``) and applies it to the object
found there at load otherwise; a supervisor that binds rules to paths the run creates recognises
the marker.
"""

from __future__ import annotations

import os
import shlex
import textwrap
from collections.abc import Iterable, Mapping, Sequence

from llsupervise.display import escape
from llsupervise.learn.paths import is_beneath, to_template
from llsupervise.learn.synthesis import EXAMPLES, LearnedPolicy, LearnedRule, PortRule, Refusal
from llsupervise.policy.document import Default, Mode
from llsupervise.rights import NO_FS, AccessFs, fs_all, names

#: What each right says a run did, in the order comments list them.
_VERBS: tuple[tuple[AccessFs, str], ...] = (
    (AccessFs.READ_FILE, "read"),
    (AccessFs.READ_DIR, "listed"),
    (AccessFs.EXECUTE, "executed"),
    (AccessFs.WRITE_FILE, "written"),
    (AccessFs.TRUNCATE, "truncated"),
    (
        AccessFs.MAKE_REG
        | AccessFs.MAKE_DIR
        | AccessFs.MAKE_SYM
        | AccessFs.MAKE_FIFO
        | AccessFs.MAKE_SOCK
        | AccessFs.MAKE_CHAR
        | AccessFs.MAKE_BLOCK,
        "entries created",
    ),
    (AccessFs.REMOVE_FILE | AccessFs.REMOVE_DIR, "entries removed"),
    (AccessFs.REFER, "renamed or linked across directories"),
    (AccessFs.IOCTL_DEV, "device ioctl"),
)

#: Comment text width, so that policy lines stay under 100 columns.
COMMENT_WIDTH = 96
LINE_WIDTH = 99

#: The line that ends a rule on a path the run creates (see the module docstring).
CREATED_MARKER = "optional = true  # created by the run"

MODE_NOTE = {
    "interactive": (
        "interactive: under `llsupervise run`, anything the learning runs did not show is "
        "asked about; with --headless it is denied (default below), exactly as in enforce mode."
    ),
    "enforce": "enforce: anything the learning runs did not show is denied without asking.",
    "permissive": "permissive: nothing is denied; denials are only logged.",
}


def toml_string(text: str) -> str:
    """A TOML basic string."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _comment_safe(text: str) -> str:
    # A comment ends at a newline; TOML forbids other control characters in comments too, and
    # the file is UTF-8 while a file name need not be: escaped as everywhere a person reads it.
    return escape(text)


def listed(items: Sequence[str], limit: int = EXAMPLES) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _verbs(access: AccessFs) -> str:
    return ", ".join(verb for right, verb in _VERBS if access & right) or "no access"


class _Writer:
    def __init__(self, policy: LearnedPolicy) -> None:
        self.policy = policy
        self.variables: Mapping[str, str] = policy.variables
        self.lines: list[str] = []

    def t(self, path: str) -> str:
        return to_template(path, self.variables)

    def relative(self, path: str, base: str) -> str:
        """``path`` as shown under a rule on ``base``."""
        if path != base and is_beneath(path, base):
            return path[len(base) :].lstrip("/")
        return self.t(path)

    def comment(self, *texts: str) -> None:
        for text in texts:
            wrapped = textwrap.wrap(
                _comment_safe(text), width=COMMENT_WIDTH, break_long_words=False,
                break_on_hyphens=False, subsequent_indent="  ",
            )  # fmt: skip
            self.lines += [f"# {line}" for line in wrapped] or ["#"]

    def blank(self) -> None:
        self.lines.append("")

    def array(self, key: str, items: Iterable[str]) -> None:
        """``key = [...]``, one line when it fits, else one indented line per few items."""
        strings = [toml_string(item) for item in items]
        line = f"{key} = [{', '.join(strings)}]"
        if len(line) <= LINE_WIDTH:
            self.lines.append(line)
            return
        self.lines.append(f"{key} = [")
        current = "   "
        for item in strings:
            if len(current) + len(item) + 2 > LINE_WIDTH and current.strip():
                self.lines.append(current)
                current = "   "
            current += f" {item},"
        self.lines += [current, "]"]

    def table(
        self, header: str, access: Iterable[str], parents: Sequence[str], created: bool = False
    ) -> None:
        self.lines.append(f"[[{header}]]")
        self.array("allowed_access", access)
        self.array("parent", [self.t(p) for p in parents])
        if created:
            self.lines.append(CREATED_MARKER)

    def seen(self, count: int, runs: int, exes: Sequence[str]) -> str:
        total = self.policy.runs
        rare = " (rare)" if runs < total else ""
        programs = sorted({os.path.basename(e) or e for e in exes})
        by = f", by {listed(programs, 4)}" if programs else ""
        times = "1 access" if count == 1 else f"{count} accesses"
        return f"{times} in {runs} of {total} runs{rare}{by}"

    def rule(self, rule: LearnedRule) -> None:
        base = rule.paths[0]
        if rule.kind == "sysdata":
            what = "System data, read-only"
        elif rule.kind != "system":
            what = _verbs(rule.access).capitalize()
        elif rule.access & AccessFs.EXECUTE:
            what = "System hierarchy, read-only and executable (programs and libraries)"
        else:
            what = "System hierarchy, read-only (programs and libraries)"
        self.comment(f"{what}: {self.seen(rule.count, rule.runs, rule.exes)}.")
        examples = ["(itself)" if p == base else self.relative(p, base) for p in rule.examples]
        self.comment(f"Accessed: {listed(examples)}.")
        if rule.created:
            self.comment(
                "Created by the run: this path did not exist when the run began. The rule is for "
                "the object the run creates here; nothing beside it is exposed."
            )
        if rule.churn:
            self.comment(
                f"Names here churn ({'; '.join(rule.churn)}): one rule for the directory, not "
                "one per name."
            )
        if rule.many:
            read, total = rule.many
            self.comment(f"{read} of its {total} entries were read: one rule for the directory.")
        if rule.transient:
            created = [self.relative(p, base) for p in rule.transient]
            self.comment(
                "Widened to this directory for objects no rule can name (created or removed "
                "during the runs, or not UTF-8): "
                f"{listed(created)}."
            )
        if rule.transient or rule.churn or rule.many:
            if rule.exposes:
                exposes = [self.relative(p, base) for p in rule.exposes]
                self.comment(f"It also exposes existing entries no run touched: {listed(exposes)}.")
            else:
                self.comment("It exposes no other existing entry.")
        if rule.complete:
            self.comment(f"Every one of its {rule.complete} entries was accessed: nothing more "
                         "is exposed.")  # fmt: skip
        header = "path_beneath" if rule.part == "static" else "supervisor.path_beneath"
        self.table(header, names(rule.access), rule.paths, created=rule.created)
        self.blank()

    def port(self, rule: PortRule) -> None:
        self.comment(self.seen(rule.count, rule.runs, rule.exes) + ".")
        self.lines.append("[[net_port]]")
        self.array("allowed_access", names(rule.access))
        self.lines.append(f"port = [{rule.port}]")
        self.blank()

    def refusal(self, refusal: Refusal) -> None:
        examples = [self.t(p) for p in refusal.examples]
        self.comment(
            f"{self.t(refusal.path)}: {', '.join(names(refusal.access))} NOT granted "
            f"({refusal.reason}); e.g. {listed(examples)}"
        )


def render(
    policy: LearnedPolicy,
    *,
    mode: Mode = "interactive",
    default: Default = "deny",
    prompt_timeout: float = 30,
    recording_file: str | None = None,
) -> str:
    w = _Writer(policy)
    runs = "run" if policy.runs == 1 else "runs"
    w.comment(
        f"Least-privilege policy learned by `llsupervise learn` from {policy.runs} {runs} of:"
    )
    w.comment(*(f"  {shlex.join(argv)}" for argv in policy.commands))
    w.comment(
        "Review it before use: each rule says why it exists (what was done, how often, in how",
        "many runs, by which programs, examples). Rules marked (rare) were not needed by every",
        "run.",
    )
    if recording_file is not None:
        w.comment(
            f"The recording these rules come from: {recording_file}",
            "(`llsupervise learn --merge` adds runs to it and writes the policy again).",
        )
    w.blank()
    w.lines.append(f"abi = {policy.abi}")
    w.blank()
    used = NO_FS
    for rule in policy.rules:
        used |= rule.access
    handled = ["abi.all", *names(used & ~fs_all(policy.abi))]
    w.lines.append("[[ruleset]]")
    w.comment("Every filesystem right is handled: whatever no rule below allows is denied.")
    w.lines.append(f"handled_access_fs = [{', '.join(toml_string(h) for h in handled)}]")
    if policy.handle_net:
        w.lines.append('handled_access_net = ["bind_tcp", "connect_tcp"]')
    else:
        w.comment("TCP bind/connect were not recorded, so the network is not handled (allowed).")
    w.comment(
        "Scopes (abstract UNIX sockets, signals) cannot be observed, so they are not restricted."
    )
    w.blank()
    static = [r for r in policy.rules if r.part == "static"]
    dynamic = [r for r in policy.rules if r.part == "supervisor"]
    w.comment("---- Static rules: fixed for the whole run (exec can only be granted here). ----")
    w.blank()
    for rule in static:
        w.rule(rule)
    for port in policy.ports:
        w.port(port)
    w.lines.append("[supervisor]")
    w.comment(MODE_NOTE[mode])
    w.lines.append(f"mode = {toml_string(mode)}")
    w.lines.append(f"prompt_timeout = {prompt_timeout:g}")
    w.lines.append(f"default = {toml_string(default)}")
    w.blank()
    w.comment("---- Supervisor rules: revocable while the program runs (save to reload). ----")
    w.blank()
    for rule in dynamic:
        w.rule(rule)
    if policy.refused:
        w.comment("---- Used by the runs but NOT granted: the program will be denied these. ----")
        for refusal in policy.refused:
            w.refusal(refusal)
        w.blank()
    if policy.unplaced:
        w.comment("---- Recorded but not expressible as a rule here: ----")
        for template, why in policy.unplaced:
            w.comment(f"{template}: {why}")
        w.blank()
    return "\n".join(w.lines).rstrip("\n") + "\n"
