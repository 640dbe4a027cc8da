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
from .stored import SUCCESS, exact_sum, exact_sum_sql, known, measure

TOKENS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


@dataclass
class Totals:
    """Counts and sums of one combination. A sum covers the calls whose value is known (see
    `reports.stored`); `with_*` counts those calls, so a sum of none reads as unknown, not 0."""

    requests: int = 0
    errors: int = 0
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    with_prompt_tokens: int = 0
    with_completion_tokens: int = 0
    with_cached_tokens: int = 0
    with_reasoning_tokens: int = 0
    with_latency: int = 0  # calls with a known response_time_ms
    with_ttft: int = 0  # calls with a time to first token (streamed)
    with_tokens_per_second: int = 0
    cost_usd: float = 0.0
    priced_calls: int = 0  # calls with a known cost_usd
    unpriced_calls: int = 0  # successful calls without one
    estimated_calls: int = 0  # calls whose token counts (and so cost) are estimates: usage_source 'estimated'

    def add(self, other: Totals) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)

    def tokens(self, name: str) -> int | None:
        """The sum of token count `name` over the calls that had one; None, i.e. unknown, when
        calls were selected and none had one. (Of no calls at all, the sum is 0.)"""
        return getattr(self, name) if getattr(self, f"with_{name}") or not self.requests else None

    def cost(self) -> float | None:
        """cost_usd of the priced calls; None when calls were selected and none was priced."""
        return self.cost_usd if self.priced_calls or not self.requests else None


def _aggregates(has_cost: bool) -> list[tuple[str, str]]:
    """(name, SQL) of every count and sum; an exact sum is two, `name:high` and `name:low`."""
    found = [
        ("requests", "count(*)"),
        ("errors", f"sum(1 - {SUCCESS})"),
        ("streamed", "sum(CASE WHEN is_streaming THEN 1 ELSE 0 END)"),
        ("with_latency", f"count({known('response_time_ms')})"),
        ("with_ttft", f"count({known('time_to_first_token_ms')})"),
        ("with_tokens_per_second", f"count({known('tokens_per_second')})"),
    ]
    for name in TOKENS:
        high, low = exact_sum_sql(name)
        found += [(f"{name}:high", high), (f"{name}:low", low), (f"with_{name}", f"count({known(name)})")]
    if has_cost:
        found += [
            ("cost_usd", f"sum({known('cost_usd')})"),
            ("priced_calls", f"count({known('cost_usd')})"),
            ("unpriced_calls", f"sum(CASE WHEN {measure('cost_usd')} THEN 0 ELSE {SUCCESS} END)"),
        ]
    return found


def totals_sql(src: Source, selection: Selection, keys: Sequence[str]) -> tuple[str, list]:
    where, params = selection.where(src.param)
    if selection.since_utc or selection.until_utc:
        # A time range is best read through the timestamp index. Offered an index in key order,
        # SQLite prefers to skip the sort and walk the whole table instead (2 s, not 0.06 s, for a
        # day of a million calls); a key it cannot find in an index keeps it on the time range.
        keys = [f"coalesce({k}, NULL)" for k in keys]
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    select = ", ".join([*keys, *(sql for _, sql in _aggregates(src.has_cost))])
    return f"SELECT {select} FROM {TABLE}{where}{group}", params


def load_totals(src: Source, selection: Selection, keys: Sequence[str]) -> dict[tuple, Totals]:
    """Key values (one per SQL expression in `keys`) -> Totals, for every combination present."""
    sql, params = totals_sql(src, selection, keys)
    names = [name for name, _ in _aggregates(src.has_cost)]
    found: dict[tuple, Totals] = {}
    for record in src.rows(sql, params):
        values = dict(zip(names, record[len(keys):]))
        if not values["requests"]:  # no GROUP BY and no rows: one row of NULL sums
            continue
        for name in TOKENS:
            values[name] = exact_sum(values.pop(f"{name}:high"), values.pop(f"{name}:low"))
        sums: dict[str, Any] = {
            name: (float(v or 0) if name == "cost_usd" else int(v or 0)) for name, v in values.items()
        }
        found[tuple(record[: len(keys)])] = Totals(**sums)
    for key, n in load_estimated(src, selection, keys).items():
        if key in found:
            found[key].estimated_calls = n
    return found


ESTIMATED = "usage_source = 'estimated'"  # addon/estimate.py


def load_estimated(src: Source, selection: Selection, keys: Sequence[str]) -> dict[tuple, int]:
    """Calls with estimated usage per combination of `keys`. No report index holds usage_source
    (the totals stay an index-only pass without it), so this is a pass over the table's rows of
    the selection (about 0.3 s per million on SQLite, `python bench/reports.py`); SQLite is kept
    from walking a value index in key order for it (`+`), which would read the rows at random."""
    if "usage_source" not in src.columns:
        return {}
    where, params = selection.where(src.param, ESTIMATED)
    plus = "+" if src.is_sqlite else ""
    select = "".join(f"{plus}{k}, " for k in keys)
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    return {tuple(record[:-1]): int(record[-1]) for record in src.rows(f"SELECT {select}count(*) FROM {TABLE}{where}{group}", params)
            if record[-1]}


def merge(totals: dict[tuple, Totals], positions: Sequence[int]) -> dict[tuple, Totals]:
    """Regroups by the keys at `positions` of each combination."""
    merged: dict[tuple, Totals] = {}
    for key, value in totals.items():
        merged.setdefault(tuple(key[i] for i in positions), Totals()).add(value)
    return merged
