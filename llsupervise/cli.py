"""Command line: ``llsupervise abi | check | export | run | attach | learn | policy``.

Each subcommand checks its arguments before it starts anything: an error is one line with
status 2."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from llsupervise.display import escape
from llsupervise.errors import LLSuperviseError

if TYPE_CHECKING:
    from llsupervise.messages import Event
    from llsupervise.policy.document import PolicyDocument
    from llsupervise.supervisor.launch.helper import Helper


def check_log(path: str) -> None:
    """Refuse a ``--log`` file that cannot be appended to, before anything starts; creates
    nothing (the log is created when the run opens it)."""
    try:
        # Non-blocking: a FIFO with no reader is refused here rather than hanging the run.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise LLSuperviseError(f"--log {path}: no such directory {directory}") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise LLSuperviseError(f"--log {path}: cannot create a file in {directory}") from None
        return
    except OSError as exc:
        raise LLSuperviseError(f"--log {path}: {exc.strerror}") from None
    os.close(fd)


def check_socket(path: str) -> None:
    """``attach SOCKET``: it exists and is a socket (whether anyone listens, connect tells)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise LLSuperviseError(f"cannot attach to {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise LLSuperviseError(f"cannot attach to {path}: not a socket")


def cmd_run(args: argparse.Namespace) -> int:
    # Every argument is checked before the supervisor starts: a mistake starts nothing.
    if not args.command:
        raise LLSuperviseError("no command given: llsupervise run [options] -- CMD [ARGS...]")
    if not args.headless and args.same_cpu:
        raise LLSuperviseError("--same-cpu goes with --headless")
    if not args.headless and args.listen:
        raise LLSuperviseError(
            "--listen goes with --headless: the command keeps this terminal and "
            "`llsupervise attach SOCKET` answers from another one"
        )
    if args.explain and not args.headless:
        raise LLSuperviseError("--explain goes with --headless: the interface shows each decision")
    if args.headless and not args.listen:
        # Started now, so that its interpreter starts while ours loads the policy and the
        # supervisor (see launch.helper); it does nothing until it has its spec.
        with _loading_modules():
            from llsupervise.supervisor.launch.helper import Helper

        helper = Helper.start()
        try:
            from llsupervise.supervisor.launch.lifeline import Adoption

            helper.adoption = Adoption(helper.process.pid)
            helper.adoption.start()
            return _checked_run(args, helper)
        finally:
            helper.abandon()  # when the run failed before it had a command for it
    return _checked_run(args, None)


def _checked_run(args: argparse.Namespace, helper: Helper | None) -> int:
    if args.save_answers is not None:
        if args.policy is not None:
            raise LLSuperviseError(
                "--save-answers goes without --policy: answers are written into that file"
            )
        from llsupervise.policies.answers import check_new_file

        check_new_file(args.save_answers)
    with _loading_modules():  # the policy's modules, and the policy
        if args.policy is not None:
            from llsupervise.policy.loader import load_policy

            document = load_policy(args.policy)
        else:
            from llsupervise.policies import load_default

            document = load_default()
    if args.listen:
        from llsupervise.supervisor.frontends.hub import check_socket_path

        check_socket_path(args.listen)
    if args.log is not None:
        check_log(args.log)
    if args.headless:
        return _run_headless(args, document, helper)
    from llsupervise.supervisor.rules.controlplane import check_document, control_files
    from llsupervise.tui.app import run_tui

    # The command runs on a pty of the TUI's: our terminal is the control plane's (refused
    # here, before the interface starts; headless checks its own).
    check_document(document, control_files(args.policy, log=args.log, terminals=(0, 1, 2)))
    return run_tui(
        document, args.command, log_path=args.log, watch=args.policy is not None,
        save_answers=args.save_answers,
    )  # fmt: skip


@contextlib.contextmanager
def _loading_modules() -> Iterator[None]:
    """No cyclic collection while the exec helper's modules, the policy and the supervisor's
    modules load (they make no cyclic garbage worth one: a run's start-up spent ~5 ms in 20
    collections there); what they made is then frozen, so that the run's own collections,
    which hold the GIL while the serving threads wait, do not walk it again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _run_headless(
    args: argparse.Namespace, document: PolicyDocument, helper: Helper | None
) -> int:
    with _loading_modules():
        from llsupervise.supervisor.frontends.headless import run_headless

    listeners: list[Callable[[Event], None]] = []
    kept = None
    if args.policy is None:  # "always" answers: kept for the run, saved only where asked
        from llsupervise.policies.answers import KeptAnswers

        kept = KeptAnswers()
        listeners.append(kept.on_event)
    explainer = None
    if args.explain:
        from llsupervise.explain import Explainer

        explainer = Explainer(sys.stderr, document, asking=args.listen is not None)
        listeners.append(explainer.on_event)
    cpu = min(os.sched_getaffinity(0)) if args.same_cpu else None
    status = run_headless(
        document, args.command, log_path=args.log, listen=args.listen,
        watch=args.policy is not None, cpu=cpu, listeners=listeners, helper=helper,
    )  # fmt: skip
    if explainer is not None:
        print(explainer.summary(status), file=sys.stderr, flush=True)
    if kept:
        if args.save_answers is not None:
            kept.save(args.save_answers)
            print(f"llsupervise: {len(kept)} answer(s) saved in {escape(args.save_answers)}; "
                  f"run with --policy {escape(args.save_answers)} to use them",
                  file=sys.stderr, flush=True)  # fmt: skip
        else:
            print(f"llsupervise: {len(kept)} answer(s) kept for this run only (the built-in "
                  "policy is never written): run with --save-answers FILE to save them in a "
                  "new policy file", file=sys.stderr, flush=True)  # fmt: skip
    return status


def cmd_policy_default(args: argparse.Namespace) -> int:
    from llsupervise.policies import default_text

    sys.stdout.write(default_text())
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    check_socket(args.socket)
    from llsupervise.tui.app import run_attach

    return run_attach(args.socket)


def version() -> str:
    from importlib import metadata  # only for --version: it costs start-up time

    try:
        return metadata.version("llsupervise")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _Version(argparse.Action):
    """``--version``, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"llsupervise {version()}")
        parser.exit(0)


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand of :mod:`llsupervise.report`, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        from llsupervise import report

        command: Callable[[argparse.Namespace], int] = getattr(report, name)
        return command(args)

    return run


class _Formatter(argparse.HelpFormatter):
    """argparse's, told the terminal's width: it would import shutil (and bz2, lzma and zlib
    with it) to find it, ~3 ms of every run's start-up, since every parser and argument
    makes one of these."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2  # what argparse takes
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: ``COLUMNS``, else our stdout's terminal, else
    80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (``--help`` has the usage)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)  # subcommands' parsers too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {escape(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="llsupervise", description="Interactive supervisor for mutable Landlock domains."
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="subcommand", required=True)
    abi = sub.add_parser("abi", help="show the kernel's Landlock ABI and what it supports")
    abi.add_argument("--json", action="store_true", help="machine-readable output")
    abi.set_defaults(func=_lazy("cmd_abi"))
    check = sub.add_parser(
        "check",
        help="validate a policy; show what this kernel enforces (status 2: an error finding, "
        "a static rule that hands the program llsupervise's own files, which run refuses)",
    )
    check.add_argument("file")
    check.set_defaults(func=_lazy("cmd_check"))
    export = sub.add_parser("export", help="write a policy as a plain landlockconfig file")
    export.add_argument("--policy", required=True, help="policy file (TOML)")
    export.add_argument("--landlockconfig", required=True, help="landlockconfig file to write")
    export.set_defaults(func=_lazy("cmd_export"))
    run = sub.add_parser("run", help="run a command under supervision")
    run.add_argument(
        "--policy", help="policy file (TOML); without it, the built-in default policy "
        "(`llsupervise policy default` prints it)",
    )  # fmt: skip
    run.add_argument("--headless", action="store_true", help="no interface: mode/default apply")
    run.add_argument("--log", help="append events to this JSON-lines file")
    run.add_argument(
        "--listen", metavar="SOCKET", help="with --headless: answer via `llsupervise attach SOCKET`"
    )
    run.add_argument(
        "--same-cpu",
        action="store_true",
        help="with --headless: keep the command and the supervisor on one CPU (a little "
        "faster per trapped call; the command loses its parallelism)",
    )
    run.add_argument(
        "--explain",
        action="store_true",
        help="with --headless: print each decision, and a summary, on stderr",
    )
    run.add_argument(
        "--save-answers",
        metavar="FILE",
        help='without --policy: save the built-in policy plus this run\'s "always" answers '
        "into FILE, a new file",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=cmd_run)
    attach = sub.add_parser("attach", help="open the interface of a `run --listen` supervisor")
    attach.add_argument("socket", help="the SOCKET given to --listen")
    attach.set_defaults(func=cmd_attach)
    policy = sub.add_parser("policy", help="print a built-in policy (a file to start from)")
    policy.add_argument(
        "name", choices=["default"], help="default: what `run` uses without --policy"
    )
    policy.set_defaults(func=cmd_policy_default)
    from llsupervise.learn.arguments import add_parser as add_learn_parser

    add_learn_parser(sub)  # learn [-o FILE] [--merge FILE] [--runs N] -- CMD
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The exit status: the command's for ``run``; 2 for any error, told in one line.

    Run as the program (no ``argv``: ``sys.argv``'s), a headless run ends the process itself
    once its output is flushed: tearing the interpreter down (every module of trio's and
    ours) costs more than the whole run of a short command, and nothing is left to do."""
    args: argparse.Namespace | None = None
    try:
        try:
            args, status = _main(argv)
        finally:
            sys.stdout.flush()  # here, so that a closed pipe is seen while it can be handled
    except BrokenPipeError:
        # The reader went away (``llsupervise check FILE | head``): stop quietly, as a
        # command killed by SIGPIPE does; the final flush must not find the pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    if argv is None and args is not None and args.func is cmd_run and args.headless:
        sys.stderr.flush()
        os._exit(status & 0xFF)
    return status


def _main(argv: Sequence[str] | None) -> tuple[argparse.Namespace, int]:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    try:
        status: int = args.func(args)
    except LLSuperviseError as exc:
        return args, _fail(str(exc))
    except BrokenPipeError:
        raise  # stdout closed by its reader: not an error to report (see main)
    except OSError as exc:
        # Not foreseen by a check above; still one line that names the file.
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
        return args, _fail(f"{where}{exc.strerror or exc}")
    return args, status


def _fail(message: str) -> int:
    print(f"llsupervise: {escape(message)}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
