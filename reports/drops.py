"""Rows the proxy had to drop (`dropped_rows`): how many, why, and when, in the selected time.

Dropped rows were never stored, so nothing is known of them but their count, reason and time:
only the time range applies to them, never the model, provider, host, origin or error filters.
A record belongs to the range that holds the time its last row was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .selection import Selection
from .source import Source

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
    rows = src.rows(
        f"SELECT reason, sum(row_count), min(first_dropped_at), max(last_dropped_at) FROM {TABLE}{where} "
        "GROUP BY reason ORDER BY 2 DESC, 1",
        params,
    )
    if not rows:
        return Drops()
    return Drops(
        row_count=sum(int(n) for _, n, _, _ in rows),
        first_dropped_utc=min(first for _, _, first, _ in rows),
        last_dropped_utc=max(last for _, _, _, last in rows),
        by_reason={reason: int(n) for reason, n, _, _ in rows},
    )


def _time_range(selection: Selection, param: str) -> tuple[str, list]:
    terms, params = selection.time_terms("last_dropped_at", param)
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def drops_line(drops: Drops | None, filtered: bool) -> str | None:
    """The overview's line (rich markup), shown only when rows were dropped."""
    if drops is None or not drops.row_count:
        return None
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in drops.by_reason.items())
    when = drops.last_dropped_utc[:19].replace("T", " ") if drops.last_dropped_utc else "?"
    scope = " · in this time range, whatever the other filters" if filtered else ""
    return (f"[bold red]{drops.row_count:,} row(s) dropped by the proxy[/] (never stored: {reasons}) · "
            f"last at {when} UTC{scope}")
