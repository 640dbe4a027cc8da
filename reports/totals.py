"""Counts and sums per combination of every key the report groups by, in one query.

The overview and each per-group table are sums of these rows, so the whole selection is read
once for all of them, and (when SQLite has an index that covers the query) read from that index
in key order, without a sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .selection import TABLE, Selection
from .source import Source


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    with_ttft: int = 0  # calls with a time to first token (streamed)
    with_tokens_per_second: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0  # successful calls with no cost_usd

    def add(self, other: Totals) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


_SUMS = (
    ("requests", "count(*)"),
    ("errors", "sum(CASE WHEN success THEN 0 ELSE 1 END)"),
    ("streamed", "sum(CASE WHEN is_streaming THEN 1 ELSE 0 END)"),
    ("prompt_tokens", "sum(prompt_tokens)"),
    ("completion_tokens", "sum(completion_tokens)"),
    ("cached_tokens", "sum(cached_tokens)"),
    ("reasoning_tokens", "sum(reasoning_tokens)"),
    ("with_ttft", "count(time_to_first_token_ms)"),
    ("with_tokens_per_second", "count(tokens_per_second)"),
)
_COST_SUMS = (
    ("cost_usd", "sum(cost_usd)"),
    ("unpriced_calls", "sum(CASE WHEN success AND cost_usd IS NULL THEN 1 ELSE 0 END)"),
)


def totals_sql(src: Source, selection: Selection, keys: Sequence[str]) -> tuple[str, list]:
    sums = _SUMS + (_COST_SUMS if src.has_cost else ())
    where, params = selection.where(src.param)
    if selection.since_utc or selection.until_utc:
        # A time range is best read through the timestamp index. Offered an index in key order,
        # SQLite prefers to skip the sort and walk the whole table instead (2 s, not 0.06 s, for a
        # day of a million calls); a key it cannot find in an index keeps it on the time range.
        keys = [f"coalesce({k}, NULL)" for k in keys]
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    select = ", ".join([*keys, *(sql for _, sql in sums)])
    return f"SELECT {select} FROM {TABLE}{where}{group}", params


def load_totals(src: Source, selection: Selection, keys: Sequence[str]) -> dict[tuple, Totals]:
    """Key values (one per SQL expression in `keys`) -> Totals, for every combination present."""
    sql, params = totals_sql(src, selection, keys)
    names = [name for name, _ in _SUMS + (_COST_SUMS if src.has_cost else ())]
    found: dict[tuple, Totals] = {}
    for record in src.rows(sql, params):
        values = record[len(keys):]
        if not values[0]:  # no GROUP BY and no rows: one row of NULL sums
            continue
        sums: dict[str, Any] = {
            name: (float(v or 0) if name == "cost_usd" else int(v or 0)) for name, v in zip(names, values)
        }
        found[tuple(record[: len(keys)])] = Totals(**sums)
    return found


def merge(totals: dict[tuple, Totals], positions: Sequence[int]) -> dict[tuple, Totals]:
    """Regroups by the keys at `positions` of each combination."""
    merged: dict[tuple, Totals] = {}
    for key, value in totals.items():
        merged.setdefault(tuple(key[i] for i in positions), Totals()).add(value)
    return merged
