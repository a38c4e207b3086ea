"""Widgets that render the session model. Untrusted strings only ever go in as rich ``Text``
built from :func:`~llsupervise.display.escape`, never as markup."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import (
    Button,
    DataTable,
    Input,
    RadioButton,
    RadioSet,
    Select,
    SelectionList,
    Static,
)
from textual.widgets.selection_list import Selection

from llsupervise.display import escape
from llsupervise.messages import ReloadEvent
from llsupervise.tui.feed import Feed
from llsupervise.tui.model import Rules, Status
from llsupervise.tui.prompts import DURATIONS, Question, format_duration

#: Rows the feed shows at most (the model keeps more; the filter reaches all of them).
FEED_ROWS = 500

_DECISION_STYLE = {
    "deny": "bold red",
    "timeout_deny": "red",
    "deny_quiet": "dim red",
    "allow_once": "green",
    "allow_for": "green",
    "allow_always": "bold green",
    "permissive": "yellow",
    "conditional": "cyan",
}


def safe(text: str, style: str = "") -> Text:
    return Text(escape(text), style=style, no_wrap=False)


def clock_time(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


#: A column is never cut below this many cells.
_NARROWEST = 8


def fitted(
    headers: Sequence[str], rows: list[list[Text]], available: int, flexible: Sequence[int]
) -> list[list[Text]]:
    """``rows`` with the ``flexible`` columns cut, widest first, so that the table fits in
    ``available`` cells (a cell is padded by one on each side); a cut text ends with "…"."""
    widths = [max([len(h), *(row[i].cell_len for row in rows)]) for i, h in enumerate(headers)]
    excess = sum(widths) + 2 * len(widths) - available
    while excess > 0:
        column = max(flexible, key=lambda i: widths[i])
        cut = min(excess, widths[column] - _NARROWEST)
        if cut <= 0:
            break
        widths[column] -= cut
        excess -= cut
    out = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in flexible and cell.cell_len > widths[i]:
                cell = cell.copy()
                cell.truncate(widths[i], overflow="ellipsis")
            cells.append(cell)
        out.append(cells)
    return out


class FittedTable(DataTable[Text]):
    """A table whose cells its view cuts to its width: tells the view when that changes."""

    class Resized(Message):
        pass

    def on_resize(self) -> None:
        self.post_message(self.Resized())

    def refill(self, rows: list[list[Text]]) -> None:
        """Replace the rows. The columns are made anew with the width of their widest cell
        (a column never narrows by itself, and measures its cells only later)."""
        headers = [(str(c.label), c.key.value) for c in self.columns.values()]
        self.clear(columns=True)
        for i, (title, key) in enumerate(headers):
            width = max([len(title), *(row[i].cell_len for row in rows)])
            self.add_column(title, key=key, width=width)
        for row in rows:
            self.add_row(*row)


def table_width(table: DataTable[Text]) -> int:
    """Cells a table can show without scrolling sideways (its vertical scrollbar aside)."""
    width = table.size.width or table.app.size.width
    return max(width - table.styles.scrollbar_size_vertical, 20)


def time_left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class StatusBar(Static):
    """Command, its pid and state, mode, generation, and what the kernel really enforces."""

    DEFAULT_CSS = """
    StatusBar {
        height: 2; background: $boost; padding: 0 1;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    """

    def show(
        self,
        status: Status,
        generation: int,
        attached_to: str | None = None,
        reload: ReloadEvent | None = None,
    ) -> None:
        # Separating spaces end the piece before them, never start one: an SVG export draws
        # each styled piece on its own and some viewers drop a piece's leading spaces.
        line = Text()
        line.append("llsupervise  ", style="bold")
        if status.pid is not None:
            line.append(f"pid {status.pid}  ")
        state_style = "green" if status.running else ("red" if status.gone else "yellow")
        line.append_text(safe(status.state + "  ", state_style))  # may quote a path (attach)
        line.append("mode ")
        line.append(
            f"{status.mode or '?'}  ",
            style="bold yellow" if status.mode == "permissive" else "bold",
        )
        line.append(f"gen {generation}  ")
        # The command last: a long one is cut at the edge, the state above stays visible.
        line.append_text(safe(" ".join(status.argv) or "…", "dim"))
        line.append("\n")
        line.append("policy ")
        line.append_text(safe(status.policy or "?", "bold"))
        if reload is not None:
            line.append(" · ")
            line.append_text(reload_text(reload))
        line.append(" · ")
        if status.kernel_abi == 0 and status.kernel_lines:
            line.append(status.kernel_lines[0], style="bold red")
        elif status.kernel_abi:
            line.append(f"Landlock ABI {status.kernel_abi}: ")
            if status.kernel_missing:
                line.append("NOT enforced (kernel lacks it): " + "; ".join(status.kernel_missing),
                            style="bold red")  # fmt: skip
            else:
                line.append("every handled right enforced", style="green")
        if attached_to:
            line.append(" · ")
            line.append_text(safe(attached_to, "italic"))
        self.update(line)


def reload_text(reload: ReloadEvent) -> Text:
    """A reload's outcome in a few words, with the file and line of a rejected one."""
    text = Text()
    if reload["ok"]:
        text.append(f"reloaded: generation {reload['generation']}", style="green")
        if "message" in reload:
            text.append(" · ")
            text.append_text(safe(reload["message"], "yellow"))
    else:
        text.append("reload REJECTED, rules unchanged: ", style="bold red")
        text.append_text(safe(reload.get("error", "")))
    return text


class FeedView(Vertical):
    """Denials, newest first, coalesced by (program, access, object); filter by words."""

    DEFAULT_CSS = """
    FeedView #filter { height: 1; margin: 0 1; }
    FeedView DataTable { height: 1fr; scrollbar-size-horizontal: 0; scrollbar-gutter: stable; }
    """

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter: words that must all appear ( / )", id="filter", compact=True
        )
        table = FittedTable(id="feed-table", cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        table = self.query_one("#feed-table", DataTable)
        for title, key in (("last seen", "last"), ("count", "count"), ("answer", "answer"),
                           ("program", "exe"), ("access", "access"), ("path", "path")):  # fmt: skip
            table.add_column(title, key=key)

    @property
    def filter_text(self) -> str:
        return self.query_one("#filter", Input).value

    _shown: Feed | None = None

    def on_fitted_table_resized(self) -> None:
        if self._shown is not None:  # columns are cut to the width
            self.show(self._shown)

    def show(self, feed: Feed) -> None:
        self._shown = feed
        table = self.query_one("#feed-table", FittedTable)
        rows = []
        styles = []
        for entry in feed.entries(self.filter_text, limit=FEED_ROWS):
            exe = entry.exe.rsplit("/", 1)[-1] or entry.exe
            rows.append([
                Text(clock_time(entry.last_seen)),
                Text(str(entry.count), justify="right"),
                Text(entry.answers() or entry.decision),
                safe(exe),
                Text(", ".join(entry.access)),
                safe(entry.path),
            ])  # fmt: skip
            styles.append(_DECISION_STYLE.get(entry.decision, ""))
        headers = ["last seen", "count", "answer", "program", "access", "path"]
        width = table_width(table)
        # The path matters most: the other columns give way first, down to leaving it 2/5.
        path = max([4, *(row[5].cell_len for row in rows)])
        room = width - min(path, width * 2 // 5) - 2
        rest = fitted(headers[:5], [row[:5] for row in rows], room, (2, 3, 4))
        rows = [front + row[5:] for front, row in zip(rest, rows, strict=True)]
        rows = fitted(headers, rows, width, (5,))
        for row, style in zip(rows, styles, strict=True):
            # The latest answer, with the space after it (see StatusBar.show).
            row[2].stylize(style, 0, len(str(row[2]).split(" ", 1)[0]) + 1)
        table.refill(rows)
        shown = len(feed.entries(self.filter_text))
        table.border_title = f"{shown} of {len(feed)} entries · {feed.total} denials"


class RulesView(Horizontal):
    """Static rules beside supervisor rules (committed / pending), quiet objects, reloads."""

    DEFAULT_CSS = """
    RulesView > Vertical { width: 2fr; }
    RulesView > Vertical#supervisor-side { width: 3fr; }
    RulesView.-narrow { layout: vertical; }
    RulesView.-narrow > Vertical, RulesView.-narrow > Vertical#supervisor-side {
        width: 1fr; height: 1fr;
    }
    RulesView.-narrow #kernel { display: none; }
    RulesView DataTable { height: 1fr; scrollbar-size-horizontal: 0; scrollbar-gutter: stable; }
    RulesView .notes { height: auto; max-height: 12; padding: 0 1; }
    RulesView .title { padding: 0 1; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Static rules: fixed for the run", classes="title")
            yield FittedTable(id="static-rules", cursor_type="row")
            yield Static(id="kernel", classes="notes")
        with Vertical(id="supervisor-side"):
            yield Static(id="supervisor-title", classes="title")
            yield FittedTable(id="supervisor-rules", cursor_type="row")
            yield Static(id="supervisor-notes", classes="notes")

    def on_mount(self) -> None:
        static = self.query_one("#static-rules", DataTable)
        static.add_column("path", key="path")
        static.add_column("rights", key="rights")
        sup = self.query_one("#supervisor-rules", DataTable)
        # "answers": denials whose answer kept this rule; "uses": requests it let through;
        # "last": the latest answer or use.
        for title in ("path", "state", "answers", "uses", "last", "rights"):
            sup.add_column(title, key=title)

    _shown: tuple[Rules, Status, float] | None = None

    def on_resize(self) -> None:
        # Side by side when there is room, one above the other on a narrow terminal.
        self.set_class(self.size.width < 110, "-narrow")

    def on_fitted_table_resized(self) -> None:
        if self._shown is not None:  # columns are cut to the width
            self.show(*self._shown)

    def show(self, rules: Rules, status: Status, now: float) -> None:
        """``now``: the wall clock, for the time temporary grants have left."""
        self._shown = (rules, status, now)
        static = self.query_one("#static-rules", FittedTable)
        rows = [
            [safe(path), Text(", ".join(access))] for path, access in sorted(rules.static.items())
        ]
        for port, net_access in sorted(rules.static_net.items()):
            rows.append([Text(f"tcp port {port}"), Text(", ".join(net_access))])
        static.refill(fitted(["path", "rights"], rows, table_width(static), (0, 1)))
        sup = self.query_one("#supervisor-rules", FittedTable)
        rows = []
        for rule in rules.supervisor_rows():
            use = rules.uses.get(rule.path)
            rights = rule.pending if rule.status != "committed" else rule.committed
            expires = rules.temporary.get(rule.path)
            if rule.status == "committed" and expires is not None:
                left = expires - now
                state = Text(f"{time_left(left)} left" if left > 0 else "expiring",
                             style="cyan")  # fmt: skip
            else:
                state = Text(rule.status, style="green" if rule.status == "committed" else "yellow")
            rows.append([
                safe(rule.path),
                state,
                Text(str(use.answers) if use else "", justify="right"),
                Text(str(use.used) if use else "", justify="right"),
                Text(clock_time(use.last) if use and use.last else ""),
                Text(", ".join(rights)),
            ])  # fmt: skip
        for port, net_access in sorted(rules.committed_net.items()):
            rows.append([Text(f"tcp port {port}"), Text("committed", style="green"), Text(""),
                         Text(""), Text(""), Text(", ".join(net_access))])  # fmt: skip
        headers = ["path", "state", "answers", "uses", "last", "rights"]
        sup.refill(fitted(headers, rows, table_width(sup), (0, 5)))
        pending = " · changes pending" if rules.has_pending else ""
        self.query_one("#supervisor-title", Static).update(
            Text(f"Supervisor rules: generation {rules.generation}{pending}", style="bold")
        )
        notes = Text()
        notes.append("quiet (denied without asking): ", style="bold")
        notes.append_text(safe(", ".join(rules.quiet) or "none"))
        notes.append("\n")
        reload = rules.reload
        if reload is None:
            notes.append("policy reload: no reload yet", style="dim")
        elif reload.get("ok"):
            notes.append(f"policy reload: ok, generation {reload.get('generation')}", style="green")
            if reload.get("message"):
                notes.append(" · ")
                notes.append_text(safe(str(reload["message"]), "yellow"))
        else:
            notes.append("policy reload REJECTED (rules unchanged): ", style="bold red")
            notes.append_text(safe(str(reload.get("error", ""))))
        self.query_one("#supervisor-notes", Static).update(notes)
        kernel = Text()
        for line in status.kernel_lines:
            kernel.append(line + "\n", style="bold red" if line.startswith("NOT") else "")
        self.query_one("#kernel", Static).update(kernel)


#: Answer buttons: (answer, title with its key in brackets, variant).
_BUTTONS: tuple[tuple[str, str, Literal["success", "primary", "error"]], ...] = (
    ("allow_once", "allow [o]nce", "success"),
    ("allow_for", "[t]emporarily", "success"),
    ("allow_always", "[a]llow always", "primary"),
    ("deny", "[d]eny", "error"),
    ("deny_quiet", "deny+[q]uiet", "error"),
)


def _key_label(title: str) -> Text:
    """``"[d]eny"`` → "deny" with the key letter underlined (a Text: brackets are not markup)."""
    before, rest = title.split("[", 1)
    key, after = rest.split("]", 1)
    return Text.assemble(before, (key, "bold underline"), after)


class PromptPanel(Vertical):
    """The question shown: who asked what, scope, rights, duration, answer buttons."""

    DEFAULT_CSS = """
    PromptPanel {
        dock: bottom; height: auto; max-height: 80%;
        border: heavy $warning; background: $panel; padding: 0 1;
    }
    PromptPanel.-hidden { display: none; }
    PromptPanel #prompt-who { height: auto; max-height: 4; }
    PromptPanel #prompt-choices { height: auto; }
    PromptPanel #prompt-choices > Vertical { width: 1fr; height: auto; }
    PromptPanel #prompt-choices > #rights-box { width: 26; margin-left: 1; }
    PromptPanel RadioSet { width: 1fr; height: auto; max-height: 4; border: none; padding: 0; }
    PromptPanel SelectionList { height: auto; max-height: 4; border: none; padding: 0; }
    PromptPanel #prompt-buttons { height: 1; margin-top: 1; }
    PromptPanel #prompt-buttons Button { margin: 0 1 0 0; width: auto; min-width: 0; }
    PromptPanel #prompt-error { color: $error; height: auto; }
    PromptPanel Select { width: 8; margin: 0 1 0 0; }
    """

    def __init__(self, clock: Callable[[], float], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.clock = clock
        self.question: Question | None = None
        self.waiting = 0
        self.default = "deny"
        self._scopes: RadioSet | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="prompt-who")
        with Horizontal(id="prompt-choices"):
            with Vertical(id="scope-box"):
                yield Static("Rule on (s: broader):", classes="label")
            with Vertical(id="rights-box"):
                yield Static("Rights of the rule:", classes="label")
                yield SelectionList[str](id="rights")
        with Horizontal(id="prompt-buttons"):
            for answer, title, variant in _BUTTONS:
                yield Button(_key_label(title), id=answer, variant=variant, compact=True)
                if answer == "allow_for":
                    yield Select[float](
                        [(format_duration(d), d) for d in DURATIONS], id="duration",
                        allow_blank=False, value=DURATIONS[1], compact=True,
                    )  # fmt: skip
        yield Static(id="prompt-error")

    def show(
        self, question: Question | None, waiting: int, default: str, error: str | None
    ) -> None:
        self.waiting, self.default = waiting, default
        self.set_class(question is None, "-hidden")
        changed = question is not self.question
        self.question = question
        if question is None:
            return
        if changed:
            self._fill_choices(question)
        self.border_title = self._title()
        self.query_one("#prompt-who", Static).update(self._who(question))
        self.query_one("#prompt-error", Static).update(safe(error or ""))

    def tick(self) -> None:
        """Refresh the countdown."""
        if self.question is not None:
            self.border_title = self._title()

    def _title(self) -> str:
        assert self.question is not None
        left = max(0, int(self.question.deadline - self.clock() + 0.999))
        queue = f" · {self.waiting} more waiting" if self.waiting else ""
        return f"Question{queue} · {self.default} in {left}s"

    def _who(self, question: Question) -> Text:
        d = question.denial
        # Separating spaces end the piece before them (see StatusBar.show).
        text = Text()
        text.append_text(safe(d.exe + " ", "bold"))
        text.append(f"(pid {d.pid}) was denied ")
        text.append(", ".join(d.access) + " ", style="bold yellow")
        text.append("on ")
        text.append_text(safe(d.path + " ", "bold"))
        text.append(f"[{d.syscall}]\n", style="dim")
        # The program writes its own command line (and can make it say anything).
        text.append("command line (claimed by the program): ", style="dim")
        text.append_text(safe(d.cmdline.replace("\0", " ").strip() or "?"))
        if d.next_run_only:
            text.append(
                "\nexec: the program has already been refused; a grant takes effect on the "
                "next run",
                style="bold magenta",
            )
        return text

    def _fill_choices(self, question: Question) -> None:
        self.fill_scopes(question)
        self.fill_rights(question)
        self.query_one("#duration", Select).value = question.duration
        # An exec was refused already: only a rule for the next run, or a denial, remain.
        for answer in ("allow_once", "allow_for", "duration"):
            self.query_one(f"#{answer}").disabled = question.denial.next_run_only

    def broader(self) -> None:
        """``s``: the rule on the next broader scope (its directory, a parent)."""
        if self.question is not None:
            self.question.broader()
            self.fill_scopes(self.question)
            self.fill_rights(self.question)

    # The controls edit the question shown; the answer carries what they say.

    @on(RadioSet.Changed, ".scope")
    def _scope_changed(self, event: RadioSet.Changed) -> None:
        question = self.question
        if question is not None and event.index != question.scope_index:
            question.choose_scope(event.index)
            self.fill_rights(question)

    @on(SelectionList.SelectedChanged, "#rights")
    def _rights_changed(self, event: SelectionList.SelectedChanged[str]) -> None:
        if self.question is not None:
            self.question.set_rights(list(event.selection_list.selected))

    @on(Select.Changed, "#duration")
    def _duration_changed(self, event: Select.Changed) -> None:
        if self.question is not None and isinstance(event.value, float):
            self.question.duration = event.value

    def fill_scopes(self, question: Question) -> None:
        """A new set each time: a RadioSet only keeps track of the buttons it started with."""
        if self._scopes is not None:
            self._scopes.remove()
        self._scopes = RadioSet(
            *(
                RadioButton(Text(f"{c.title}: ") + safe(c.path), value=i == question.scope_index)
                for i, c in enumerate(question.scopes)
            ),
            classes="scope",
        )
        self.query_one("#scope-box").mount(self._scopes)

    def fill_rights(self, question: Question) -> None:
        rights = self.query_one("#rights", SelectionList)
        rights.clear_options()
        rights.add_options(
            [Selection(Text(r), r, r in question.rights) for r in question.scope.rights()]
        )
