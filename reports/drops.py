"""Rows the proxy had to drop (`dropped_rows`): how many, why, and when, in the selected time.

Dropped rows were never stored, so nothing is known of them but their count, reason and time:
only the time range applies to them, never the model, provider, host, origin or error filters.
A record belongs to the range that holds the time its last row was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.markup import escape

from .fmt import printable
from .selection import Selection
from .source import Source
from .stored import exact_sum, exact_sum_sql, text, time_like, utc

TABLE = "dropped_rows"


@dataclass
class Drops:
    row_count: int = 0
    first_dropped_utc: str | None = None
    last_dropped_utc: str | None = None
    by_reason: dict[str, int] = field(default_factory=dict)  # most rows first

    def as_dict(self) -> dict:
        return {
            "row_count": self.row_count,
            "first_dropped_utc": self.first_dropped_utc,
            "last_dropped_utc": self.last_dropped_utc,
            "by_reason": [{"reason": r, "row_count": n} for r, n in self.by_reason.items()],
        }


def load_drops(src: Source, selection: Selection) -> Drops | None:
    """None when the database has no `dropped_rows` table (a schema before it)."""
    if not src.has_drops:
        return None
    where, params = _time_range(selection, src.param)
    high, low = exact_sum_sql("row_count")  # any stored value: see reports.stored
    rows = src.rows(
        f"SELECT reason, {high}, {low}, min(CASE WHEN {time_like('first_dropped_at')} THEN first_dropped_at END), "
        f"max(CASE WHEN {time_like('last_dropped_at')} THEN last_dropped_at END) FROM {TABLE}{where} GROUP BY reason",
        params,
    )
    counts: dict[str, int] = {}
    for reason, high_sum, low_sum, _, _ in rows:
        name = text(reason) or "(none)"
        counts[name] = counts.get(name, 0) + exact_sum(high_sum, low_sum)
    firsts = [t for _, _, _, t, _ in rows if utc(t)]
    lasts = [t for _, _, _, _, t in rows if utc(t)]
    return Drops(
        row_count=sum(counts.values()),
        first_dropped_utc=min(firsts, default=None),
        last_dropped_utc=max(lasts, default=None),
        by_reason=dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
    )


def _time_range(selection: Selection, param: str) -> tuple[str, list]:
    terms, params = selection.time_terms("last_dropped_at", param)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def drops_line(drops: Drops | None, filtered: bool) -> str | None:
    """The overview's line (rich markup), shown only when rows were dropped."""
    if drops is None or not drops.row_count:
        return None
    reasons = ", ".join(f"{escape(printable(reason))} {n:,}" for reason, n in drops.by_reason.items())
    when = drops.last_dropped_utc[:19].replace("T", " ") if drops.last_dropped_utc else "?"
    scope = " · in this time range, whatever the other filters" if filtered else ""
    return (f"[bold red]{drops.row_count:,} row(s) dropped by the proxy[/] (never stored: {reasons}) · "
            f"last at {when} UTC{scope}")
