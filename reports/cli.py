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
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from addon.cli import ArgumentParser, add_db_argument
from storage.db import default_location, display_location, hide_password

from . import fmt
from .groups import DIMENSIONS
from .percentiles import METHOD
from .report import DEFAULT_TOP, Report, empty_report, load_report
from .selection import Selection, parse_when, utc_text
from .source import NothingYet, ReportError, open_source

DEFAULT_WATCH_SECONDS = 2.0

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
  python -m reports --since 24h
  python -m reports --model gpt-4o --group-by hour
  python -m reports --errors-only --since 2026-11-22T09:00Z --until 2026-11-22T10:00Z
  python -m reports --format json > report.json      (shape: docs/report-json.md)
  python -m reports --watch 5
  python -m reports --group-by agent --since 7d
  python -m reports --session 5f0e7c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6
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
    view = parser.add_argument_group("what to show")
    view.add_argument("--group-by", choices=tuple(DIMENSIONS), help="one table grouped by this, instead of by model, provider/host and origin")
    view.add_argument("--top", type=_top, default=DEFAULT_TOP, metavar="N",
                      help=f"how many slowest calls and error kinds to list (default {DEFAULT_TOP}, at most {MAX_TOP:,})")
    view.add_argument("--format", choices=("text", "json", "csv"), default="text", help="text (default); json: the whole report; csv: one row per group")
    view.add_argument("--watch", nargs="?", const=DEFAULT_WATCH_SECONDS, type=_seconds, metavar="SECONDS",
                      help=f"redraw in place every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, each checked: a bad one exits 2 with one `error: …` line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in _FILTERS:  # the same value twice is one filter
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    if sum(len(getattr(args, name)) for name in _FILTERS) > MAX_FILTER_VALUES:
        parser.error(f"at most {MAX_FILTER_VALUES:,} values of --model, --provider, --host, --origin, --agent and "
                     "--session together")
    return args


def selection_from(args: argparse.Namespace, now: datetime) -> Selection:
    return Selection(
        since_utc=parse_when(args.since, now) if args.since else None,
        until_utc=parse_when(args.until, now) if args.until else None,
        models=tuple(args.model), providers=tuple(args.provider), hosts=tuple(args.host),
        origins=tuple(args.origin), errors_only=args.errors_only, agents=tuple(args.agent),
        sessions=tuple(args.session),
    )


def make_report(args: argparse.Namespace, location: str) -> Report:
    """Raises NothingYet or ReportError."""
    now = datetime.now(UTC)
    selection = selection_from(args, now)
    if selection.since_utc and selection.until_utc and selection.since_utc >= selection.until_utc:
        raise ReportError(f"--since ({selection.since_utc}) must be before --until ({selection.until_utc})")
    src = open_source(location)
    try:
        return load_report(src, selection, group_by=args.group_by, top=args.top, now=now)
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        raise ReportError(f"cannot read {display_location(location)}: {hide_password(str(exc), location)}") from None
    finally:
        src.close()


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    args = parse_args(argv)
    location = args.db or default_location()
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
    """Redraws the text report in place every `args.watch` seconds until Ctrl-C."""
    if args.format != "text":
        return _error(ReportError("--watch shows the text report; leave out --format"))
    if not console.is_terminal:
        return _error(ReportError("--watch needs a terminal; without it, run the report once"))
    done = 0
    try:
        with Live(console=console, auto_refresh=False) as live:
            while refreshes is None or done < refreshes:
                live.update(_watch_frame(args, location), refresh=True)
                done += 1
                if refreshes is None or done < refreshes:
                    sleep(args.watch)
    except KeyboardInterrupt:
        pass
    except ReportError as exc:
        return _error(exc)
    return 0


def _watch_frame(args: argparse.Namespace, location: str) -> Group:
    header = Text(
        f"updated {datetime.now().strftime('%H:%M:%S')} · every {args.watch:g} s · Ctrl-C to stop", style="dim"
    )
    body: Report | Text
    try:
        body = make_report(args, location)
    except NothingYet as note:
        body = Text(f"{fmt.printable(str(note))} Waiting…")
    return Group(header, body)
