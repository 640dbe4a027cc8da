"""The whole report: every section's data, loaded in one read transaction, then rendered as text
(rich), JSON or CSV. JSON and CSV come from this data, never from the rendering."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text

from storage.db import display_location

from . import fmt
from .change import FIGURES
from .compare import Comparison, load_comparison, overall_row
from .errors import Errors, load_errors, render_errors
from .groups import (
    DEFAULT_GROUPINGS,
    DIMENSIONS,
    GROUP_TABLE_NOTE,
    GroupTable,
    compare_note,
    group_title,
    load_agent_table,
    load_groups,
    render_group_table,
    totals_keys,
)
from .indexes import RUN_KEYS
from .overview import Overview, empty_overview, load_overview, render_overview, span_text
from .percentiles import METHOD
from .pruned import Pruned, load_pruned, render_pruned
from .quota import QuotaRow, load_quota, render_quota
from .retries import Retries, load_retries, render_retries
from .selection import TABLE, Selection, utc_text
from .session import SessionCalls, load_session, render_session
from .slowest import SlowCall, load_slowest, render_slowest
from .source import Source, is_undecodable
from .stored import utc
from .timeline import Timeline, choose_bucket, load_timeline
from .totals import load_totals

REPORT_VERSION = 1  # bump when a field of the JSON or CSV changes meaning or goes away
DEFAULT_TOP = 10

CSV_METRICS = (
    "requests", "errors",
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p95_ms",
    "time_per_output_token_p50_ms", "output_tokens_per_second_p50",
    "prompt_tokens", "completion_tokens", "cost_usd", "unpriced_calls", "estimated_calls",
    "calls_with_latency_ms", "calls_with_ttft_ms", "calls_with_output_tokens_per_second",
)


@dataclass
class Report:
    database: str  # as display_location shows it: a URL without its password
    generated_at_utc: str
    selection: Selection
    cost_known: bool
    overview: Overview
    groups: list[GroupTable]
    errors: Errors
    timeline: Timeline
    slowest: list[SlowCall]
    quota: list[QuotaRow] = field(default_factory=list)
    retries: Retries | None = None
    session: SessionCalls | None = None  # with one --session
    pruned: Pruned | None = None  # calls deleted by a prune, as the daily totals it kept
    comparison: Comparison | None = None  # with --compare

    def as_dict(self) -> dict:
        return {
            "report_version": REPORT_VERSION,
            "database": self.database,
            "generated_at_utc": self.generated_at_utc,
            "filters": self.selection.as_dict(),
            "percentile_method": METHOD,
            "cost_known": self.cost_known,
            "overview": self.overview.as_dict(),
            "groups": [
                {"group_by": list(t.dims), "rows": [asdict(r) for r in t.rows]} for t in self.groups
            ],
            "errors": self.errors.as_dict(),
            "timeline": self.timeline.as_dict(),
            "slowest": [asdict(c) for c in self.slowest],
            "quota": [q.as_dict() for q in self.quota],
            "retries": self.retries.as_dict() if self.retries is not None else None,
            "session": self.session.as_dict() if self.session is not None else None,
            "pruned": self.pruned.as_dict() if self.pruned is not None else None,
            "compare": self.comparison.as_dict() if self.comparison is not None else None,
        }

    def as_csv(self) -> str:
        """One row per group of every table: `group_by`, one column per key dimension used by any
        table (empty where a table does not group by it), then CSV_METRICS, then with --compare
        `presence` and each compared figure's previous value and change. Text cells go through
        `_text_cell`; numbers, which the report computed, are written as numbers."""
        dims = [d for d in DIMENSIONS if any(d in t.dims for t in self.groups)]
        compared = CSV_COMPARED if self.comparison is not None else ()
        out = io.StringIO()
        # RFC 4180's CRLF: with "\n" alone, the csv module leaves a cell holding a carriage return
        # unquoted, and that stored "\r" would split the row for every reader.
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["group_by", *dims, *CSV_METRICS, *compared])
        for table in self.groups:
            for row in table.rows:
                keys = ["/".join(table.dims), *(row.key.get(d) for d in dims)]
                writer.writerow([*map(_text_cell, keys), *_csv_metrics(row), *(_csv_changes(row) if compared else ())])
        return out.getvalue()

    def __rich__(self) -> RenderableType:
        return Group(*spaced(renderable for _, renderable in self.sections()))

    def sections(self) -> list[tuple[str, RenderableType]]:
        """The text report's sections, top to bottom, each with the name a note gives it when
        `--watch` leaves it out to fit the terminal."""
        title = f"LLM calls · {escape(fmt.printable(self.database))}"
        parts: list[tuple[str, RenderableType]] = [("overview", render_overview(
            self.overview, title, _filters_text(self.selection), filtered_beyond_time=self.selection.filters_calls,
            changes=self.comparison.overview if self.comparison else None, against=self._against(),
        ))]
        if not self.overview.requests:
            if self.pruned is not None:
                parts.append(("pruned", render_pruned(self.pruned, self.cost_known)))
            return parts
        if self.quota:
            parts.append(("quota", render_quota(self.quota, utc(self.generated_at_utc) or datetime.now(UTC))))
        if self.session is not None:
            parts.append(("session", render_session(self.session)))
        # Against a window of no calls every group is new: the overview says so, the tables need no second lines.
        changes = compare_note() if self.comparison and self.comparison.overview.requests.previous else None
        explained: set[str] = set()  # notes shown under a table above
        for i, table in enumerate(self.groups):
            note = GROUP_TABLE_NOTE if i == len(self.groups) - 1 else None
            parts.append((group_title(table.dims).lower(), render_group_table(table, self.cost_known, note, changes, explained)))
        parts.append(("errors", render_errors(self.errors) if self.errors.kinds else Text("No errors.", style="italic")))
        if self.retries is not None and self.retries.any:
            parts.append(("retries", render_retries(self.retries, self.cost_known)))
        if self.pruned is not None:
            parts.append(("older calls (daily totals)", render_pruned(self.pruned, self.cost_known)))
        parts += [("timeline", self.timeline), ("slowest calls", render_slowest(self.slowest))]
        return parts

    def _against(self) -> str | None:
        """The previous window, as the text report names it."""
        if self.comparison is None:
            return None
        previous = self.comparison.previous
        since, until = utc(previous.since_utc), utc(previous.until_utc)
        length = span_text((until - since).total_seconds()) if since and until else "?"
        return f"the {length} before, from {fmt.when(previous.since_utc)} UTC"


def spaced(renderables: Iterable[RenderableType]) -> list[RenderableType]:
    """Sections with a blank line between each two."""
    out: list[RenderableType] = []
    for renderable in renderables:
        out += [Text(""), renderable] if out else [renderable]
    return out


def _cell(value) -> str:
    return "" if value is None else str(value)


# A spreadsheet runs a cell that starts with one of OWASP's list (=, +, -, @, tab, carriage
# return; line feed too) as a formula: `=HYPERLINK(…)` as a model name would be a live link. Such
# a text cell gets a ' in front, as OWASP advises, and so does one that starts with ' already, so
# that taking one leading ' off a text cell always gives back the stored value.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "'")


def _text_cell(value: str | None) -> str:
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _csv_metrics(row) -> list[str]:
    values = [
        row.requests, row.errors,
        row.latency_ms.get("p50"), row.latency_ms.get("p95"), row.latency_ms.get("p99"),
        row.ttft_ms.get("p50"), row.ttft_ms.get("p95"),
        row.time_per_output_token_ms.get("p50"), row.output_tokens_per_second.get("p50"),
        row.prompt_tokens, row.completion_tokens, row.cost_usd, row.unpriced_calls, row.estimated_calls,
        *(row.calls_with.get(name) for name in ("latency_ms", "ttft_ms", "output_tokens_per_second")),
    ]
    return [_cell(v) for v in values]


CSV_COMPARED = ("presence", *(f"{prefix}{f.name}{suffix}" for f in FIGURES for prefix, suffix in (("previous_", ""), ("", "_change"))))


def _csv_changes(row) -> list[str]:
    if row.change is None:  # a table by hour or day: not compared row by row
        return [""] * len(CSV_COMPARED)
    cells = [str(row.change.presence)]
    for f in FIGURES:
        c = getattr(row.change, f.name)
        cells += [_cell(c.previous), _cell(c.change)]
    return cells


def _filters_text(selection: Selection) -> str | None:
    parts = []
    if selection.since_utc:
        parts.append(f"since {selection.since_utc[:19].replace('T', ' ')}")
    if selection.until_utc:
        parts.append(f"until {selection.until_utc[:19].replace('T', ' ')}")
    for name, values in (("model", selection.models), ("provider", selection.providers), ("host", selection.hosts),
                         ("origin", selection.origins), ("agent", selection.agents), ("session", selection.sessions)):
        if values:
            parts.append(f"{name} {', '.join(values)}")
    if selection.errors_only:
        parts.append("errors only")
    if selection.streamed is not None:
        parts.append("streamed" if selection.streamed else "not streamed")
    return " · ".join(parts) or None


def load_report(
    src: Source,
    selection: Selection,
    *,
    group_by: str | None = None,
    top: int = DEFAULT_TOP,
    now: datetime | None = None,
    previous: Selection | None = None,
) -> Report:
    """Every section from one snapshot of the database (one read transaction). `previous`: the
    window to compare with (`reports.compare.previous_window`), None for no comparison."""
    try:
        return _load_report(src, selection, group_by, top, now, previous)
    except Exception as exc:
        if not (src.is_sqlite and is_undecodable(exc)):
            raise
    src.replace_undecodable_text()  # rare, and slower: only once a value needs it
    return _load_report(src, selection, group_by, top, now, previous)


def _load_report(
    src: Source, selection: Selection, group_by: str | None, top: int, now: datetime | None, previous: Selection | None,
) -> Report:
    groupings = ((group_by,),) if group_by else DEFAULT_GROUPINGS
    now = now or datetime.now(UTC)
    generated = utc_text(now)
    with src.db.atomic():
        keys = totals_keys(src, selection, groupings)
        combos = load_totals(src, selection, keys)
        overview = load_overview(src, selection, combos)
        groups: list[GroupTable] = []
        comparison = None
        if previous is not None:  # the same loaders, and the row of every call for the overview's percentiles
            groups, overall = overall_row(src, selection, groupings, keys, combos)
        elif overview.requests:
            groups = load_groups(src, selection, groupings, keys, combos)
        if overview.requests and group_by is None and _agents_seen(src, selection) > 1:
            groups.append(load_agent_table(src, selection))
        if previous is not None:
            comparison = load_comparison(src, previous, groupings, groups, overall)
        pruned = load_pruned(src, selection)
        if not overview.requests:
            report = empty_report(src.location, selection, src.has_cost, generated, overview)
            report.comparison = comparison
            report.pruned = pruned
            return report
        return Report(
            display_location(src.location), generated, selection, src.has_cost, overview, groups,
            load_errors(src, selection, top),
            load_timeline(src, selection, overview.first_utc, overview.last_utc, overview.span_seconds, overview.requests),
            load_slowest(src, selection, top, combos if keys == list(RUN_KEYS) else ()),
            load_quota(src, selection, now), load_retries(src, selection), load_session(src, selection),
            pruned=pruned, comparison=comparison,
        )


def _agents_seen(src: Source, selection: Selection) -> int:
    """How many agents made the selected calls (calls no agent is known for count as one more), up
    to 2: the default view adds a table by agent when there is more than one. Each probe finds its
    row through the agent index, or stops at the first."""
    where, params = selection.where(src.param, "agent IS NOT NULL")
    first = src.one(f"SELECT agent FROM {TABLE}{where} LIMIT 1", params)
    if first is None:
        return 0
    p = src.param
    where, params = selection.where(p, f"(agent IS NULL OR agent <> {p})")
    other = src.one(f"SELECT 1 FROM {TABLE}{where} LIMIT 1", params + [first[0]])
    return 2 if other is not None else 1


def empty_report(
    location: str, selection: Selection, cost_known: bool, generated_utc: str, overview: Overview | None = None
) -> Report:
    """The report of no calls: what JSON and CSV print when there is nothing to report yet."""
    return Report(
        display_location(location), generated_utc, selection, cost_known, overview or empty_overview(cost_known),
        [], Errors([], 0, 0), Timeline(choose_bucket(0), []), [],
    )
