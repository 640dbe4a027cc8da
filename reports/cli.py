"""`python -m reports`: the command line. Bad input is one `error: …` line on stderr and exit 2."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import peewee
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from addon.cli import ArgumentParser, add_db_argument
from storage.db import default_location, display_location, hide_password

from . import fmt
from .compare import previous_window
from .groups import DIMENSIONS
from .percentiles import METHOD
from .report import DEFAULT_TOP, Report, empty_report, load_report, spaced
from .selection import Selection, parse_when, utc_text
from .source import NothingYet, ReportError, read

DEFAULT_WATCH_SECONDS = 2.0
DEFAULT_PORT = 8321
DEFAULT_BIND = "127.0.0.1"

DESCRIPTION = f"""\
What the proxy recorded, in the terminal: an overview, the quotas providers stated, tables by
model, provider/host and origin (and agent, when several), errors, retries, a timeline and the
slowest calls. Opens the database read-only; never writes or migrates it.

Percentiles are {METHOD}. TTFT, time per output token and tokens/s cover streamed calls only; time
per output token is the time from first to last token over the N - 1 tokens after the first
(AIPerf's and vLLM's decode rate, none below two output tokens) = 1000 / tokens/s.
"""

EPILOG = """\
examples:
  python -m reports --since 24h                  (with the change against the 24 h before)
  python -m reports --since 7d --format json --compare
  python -m reports --model gpt-4o --group-by hour
  python -m reports --errors-only --since 2026-11-22T09:00Z --until 2026-11-22T10:00Z
  python -m reports --format json > report.json      (shape: docs/report-json.md)
  python -m reports --watch 5
  python -m reports --group-by agent --since 7d
  python -m reports --session 5f0e7c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6
  python -m reports --serve                          (http://127.0.0.1:8321/: the dashboard; API: docs/api.md)
"""


MAX_TOP = 100_000  # rows of the slowest-calls and error tables; a bound SQL's LIMIT always takes
MAX_WATCH_SECONDS = 86_400.0
_FILTERS = ("model", "provider", "host", "origin", "agent", "session")
MAX_FILTER_VALUES = 1_000  # --model/--provider/--host/--origin values together: one SQL parameter each


def _top(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_TOP:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_TOP:,}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_WATCH_SECONDS:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, at most {MAX_WATCH_SECONDS:,.0f}, got {text!r}")
    return value


def _when(text: str) -> str:
    try:
        parse_when(text, datetime.now(UTC))  # checked now, resolved when each report is made
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _text(text: str) -> str:
    """A filter value: bytes that are not UTF-8 reach argv as lone surrogates, which no database
    can be asked about."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not UTF-8 text") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m reports", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_db_argument(parser)
    pick = parser.add_argument_group("which calls")
    pick.add_argument("--since", metavar="WHEN", type=_when,
                      help="only calls at or after WHEN: 15m, 24h, 7d, 2w ago, or an ISO time (UTC unless it has an offset)")
    pick.add_argument("--until", metavar="WHEN", type=_when, help="only calls before WHEN (same forms as --since)")
    for name in ("model", "provider", "host", "origin", "agent"):
        pick.add_argument(f"--{name}", action="append", default=[], type=_text, metavar="NAME", help=f"only calls with this {name} (repeat for several)")
    pick.add_argument("--session", action="append", default=[], type=_text, metavar="ID",
                      help="only the calls of this agent session (its session_id); one session also lists its calls in order")
    pick.add_argument("--errors-only", action="store_true", help="only failed calls")
    streaming = pick.add_mutually_exclusive_group()
    streaming.add_argument("--streamed", dest="streamed", action="store_const", const=True, help="only streamed calls")
    streaming.add_argument("--non-streamed", dest="streamed", action="store_const", const=False, help="only calls not streamed")
    view = parser.add_argument_group("what to show")
    view.add_argument("--group-by", choices=tuple(DIMENSIONS), help="one table grouped by this, instead of by model, provider/host and origin")
    view.add_argument("--top", type=_top, default=DEFAULT_TOP, metavar="N",
                      help=f"how many slowest calls and error kinds to list (default {DEFAULT_TOP}, at most {MAX_TOP:,})")
    view.add_argument("--compare", action=argparse.BooleanOptionalAction,
                      help="each figure's change against the window of the same length before --since "
                           "(text: on when --since is given; json and csv: only with --compare)")
    view.add_argument("--format", choices=("text", "json", "csv"), default="text", help="text (default); json: the whole report; csv: one row per group")
    view.add_argument("--watch", nargs="?", const=DEFAULT_WATCH_SECONDS, type=_seconds, metavar="SECONDS",
                      help=f"redraw in place every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C, fitted to the "
                           "terminal's height (the lowest sections left out first, and named)")
    web = parser.add_argument_group("web dashboard and JSON API (docs/api.md)")
    web.add_argument("--serve", action="store_true",
                     help="serve the dashboard and the read-only JSON API until Ctrl-C (filters are the page's, not flags)")
    web.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"with --serve: the port (default {DEFAULT_PORT}; 0: any free one)")
    web.add_argument("--bind", default=DEFAULT_BIND, metavar="ADDRESS",
                     help=f"with --serve: the address to listen on (default {DEFAULT_BIND}); one that is not loopback needs --allow-remote")
    web.add_argument("--allow-remote", action="store_true",
                     help="with --serve: allow a --bind address other machines reach (no login, no TLS: anyone who reaches it reads the calls)")
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, each checked: a bad one exits 2 with one `error: …` line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in _FILTERS:  # the same value twice is one filter
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    if sum(len(getattr(args, name)) for name in _FILTERS) > MAX_FILTER_VALUES:
        parser.error(f"at most {MAX_FILTER_VALUES:,} values of --model, --provider, --host, --origin, --agent and "
                     "--session together")
    if args.compare and not args.since:
        parser.error("--compare needs a window: give --since (and --until, or it ends now)")
    _check_serve(parser, args)
    return args


def _check_serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--serve takes --db and the web flags only: the page picks its own filters. The web flags
    need --serve."""
    web = {"port": DEFAULT_PORT, "bind": DEFAULT_BIND, "allow_remote": False}
    if not args.serve:
        given = [name for name, default in web.items() if getattr(args, name) != default]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} goes with --serve")
        return
    report_only = {name: default for name, default in vars(build_parser().parse_args([])).items() if name not in web}
    report_only.pop("db")
    report_only.pop("serve")
    given = [name for name, default in report_only.items() if getattr(args, name) != default]
    if given:
        parser.error(f"--serve takes no --{given[0].replace('_', '-')}: the page and the API pick filters per request "
                     "(query parameters, docs/api.md)")


def compares(args: argparse.Namespace) -> bool:
    """--compare, --no-compare, or by default: in the text view, when --since gives a window.
    JSON and CSV compare only when asked, so a script's columns and run time stay as they were."""
    return args.compare if args.compare is not None else (args.format == "text" and args.since is not None)


def selection_from(args: argparse.Namespace, now: datetime) -> Selection:
    return Selection(
        since_utc=parse_when(args.since, now) if args.since else None,
        until_utc=parse_when(args.until, now) if args.until else None,
        models=tuple(args.model), providers=tuple(args.provider), hosts=tuple(args.host),
        origins=tuple(args.origin), errors_only=args.errors_only, agents=tuple(args.agent),
        sessions=tuple(args.session), streamed=args.streamed,
    )


def make_report(args: argparse.Namespace, location: str) -> Report:
    """Raises NothingYet or ReportError."""
    now = datetime.now(UTC)
    selection = selection_from(args, now)
    if selection.since_utc and selection.until_utc and selection.since_utc >= selection.until_utc:
        raise ReportError(f"--since ({selection.since_utc}) must be before --until ({selection.until_utc})")
    previous = None
    if compares(args):
        try:
            previous = previous_window(selection, now)
        except ValueError as exc:
            if args.compare:  # asked for: an error; on by default: no comparison
                raise ReportError(str(exc)) from None
    try:
        return read(location, lambda src: load_report(src, selection, group_by=args.group_by, top=args.top, now=now,
                                                      previous=previous))
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        raise ReportError(f"cannot read {display_location(location)}: {hide_password(str(exc), location)}") from None


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    args = parse_args(argv)
    location = args.db or default_location()
    if args.serve:
        from .server import serve

        return serve(location, args.bind, args.port, allow_remote=args.allow_remote)
    console = console or Console()
    if args.watch is not None:
        return watch(args, location, console)
    try:
        report = make_report(args, location)
    except NothingYet as note:
        return _nothing(args, location, str(note), console)
    except ReportError as exc:
        return _error(exc)
    _emit(report, args.format, console)
    return 0


def _error(exc: Exception) -> int:
    print(f"error: {fmt.one_line(str(exc))}", file=sys.stderr)
    return 2


def _nothing(args: argparse.Namespace, location: str, note: str, console: Console) -> int:
    """Nothing recorded yet is not an error. Machine formats still get a valid, empty document
    on stdout (the note goes to stderr) so a script's parser never chokes on prose."""
    if args.format == "text":
        console.print(Text(fmt.printable(note)), soft_wrap=True)  # one line, however narrow the terminal
        return 0
    print(note, file=sys.stderr)
    now = datetime.now(UTC)
    _emit(empty_report(location, selection_from(args, now), False, utc_text(now)), args.format, console)
    return 0


def _emit(report: Report, fmt: str, console: Console) -> None:
    if fmt == "json":
        console.file.write(json.dumps(report.as_dict(), indent=2) + "\n")
    elif fmt == "csv":
        console.file.write(report.as_csv())
    else:
        console.print(report)


def watch(
    args: argparse.Namespace, location: str, console: Console,
    *, sleep: Callable[[float], None] = time.sleep, refreshes: int | None = None,
) -> int:
    """Redraws the text report in place every `args.watch` seconds until Ctrl-C, fitted to the
    terminal's height (`fit_height`)."""
    if args.format != "text":
        return _error(ReportError("--watch shows the text report; leave out --format"))
    if not console.is_terminal:
        return _error(ReportError("--watch needs a terminal; without it, run the report once"))
    done = 0
    try:
        with Live(console=console, auto_refresh=False) as live:
            while refreshes is None or done < refreshes:
                live.update(_watch_frame(args, location, console), refresh=True)
                done += 1
                if refreshes is None or done < refreshes:
                    sleep(args.watch)
    except KeyboardInterrupt:
        pass
    except ReportError as exc:
        return _error(exc)
    return 0


def _watch_frame(args: argparse.Namespace, location: str, console: Console) -> Group:
    header = Text(
        f"updated {datetime.now().strftime('%H:%M:%S')} · every {args.watch:g} s · Ctrl-C to stop", style="dim"
    )
    try:
        report = make_report(args, location)
    except NothingYet as note:
        return Group(header, Text(f"{fmt.printable(str(note))} Waiting…"))
    # The header takes a row, and one is left free: a frame as tall as the terminal scrolls it.
    return Group(header, *fit_height(console, report.sections(), console.size.height - 2))


def fit_height(console: Console, sections: list[tuple[str, RenderableType]], rows: int) -> list[RenderableType]:
    """The sections that fit in `rows` rows of `console`, blank lines between: the lower ones are
    left out first, and a last line names them. The first (the overview) stays, whatever its height."""
    heights = [len(console.render_lines(renderable, console.options, pad=False)) for _, renderable in sections]
    if sum(heights) + len(heights) - 1 <= rows:
        return spaced(renderable for _, renderable in sections)
    kept, used = 1, heights[0]
    while kept < len(sections) and used + 1 + heights[kept] <= rows - 1:  # a row for the note
        used += 1 + heights[kept]
        kept += 1
    left_out = [name for name, _ in sections[kept:]]
    note = Text(f"too short for: {', '.join(left_out)} ({console.size.height} rows)", style="italic", no_wrap=True,
                overflow="ellipsis")
    return [*spaced(renderable for _, renderable in sections[:kept]), note]
