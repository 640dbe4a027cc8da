"""The overview panel: time span, requests, success rate, errors, streaming, tokens, cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.markup import escape
from rich.panel import Panel

from . import fmt
from .drops import Drops, drops_line, load_drops
from .selection import TABLE, Selection
from .source import Source
from .totals import Totals


@dataclass
class Overview:
    first_utc: str | None
    last_utc: str | None
    requests: int
    errors: int
    streamed: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float | None = None  # None: this database has no cost column
    unpriced_calls: int | None = None  # successful calls with no cost_usd
    dropped: Drops | None = None  # None: this database has no dropped_rows table

    @property
    def success_rate(self) -> float | None:
        return None if not self.requests else (self.requests - self.errors) / self.requests

    @property
    def span_seconds(self) -> float:
        if not self.first_utc or not self.last_utc:
            return 0.0
        return (_parse(self.last_utc) - _parse(self.first_utc)).total_seconds()

    def as_dict(self) -> dict:
        return {
            "first_utc": self.first_utc,
            "last_utc": self.last_utc,
            "span_seconds": self.span_seconds,
            "requests": self.requests,
            "successes": self.requests - self.errors,
            "errors": self.errors,
            "success_rate": self.success_rate,
            "streamed": self.streamed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": self.cost_usd,
            "unpriced_calls": self.unpriced_calls,
            "dropped_rows": self.dropped.as_dict() if self.dropped is not None else None,
        }


def _parse(utc: str) -> datetime:
    return datetime.fromisoformat(utc.replace("Z", "+00:00"))


def empty_overview(cost_known: bool = False) -> Overview:
    zero = 0 if cost_known else None
    return Overview(None, None, 0, 0, 0, 0, 0, 0, 0, zero, zero)


def load_overview(src: Source, selection: Selection, combos: dict[tuple, Totals]) -> Overview:
    """The sums of `combos` (see `reports.totals`), and the first and last call's time."""
    total = Totals()
    for value in combos.values():
        total.add(value)
    where, params = selection.where(src.param)
    # Alone in its query, min() or max() of an indexed column is one index lookup.
    first = src.one(f"SELECT min(timestamp) FROM {TABLE}{where}", params)[0]
    last = src.one(f"SELECT max(timestamp) FROM {TABLE}{where}", params)[0]
    return Overview(
        first, last, total.requests, total.errors, total.streamed, total.prompt_tokens, total.completion_tokens,
        total.cached_tokens, total.reasoning_tokens,
        total.cost_usd if src.has_cost else None, total.unpriced_calls if src.has_cost else None,
        load_drops(src, selection),
    )


def span_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render_overview(o: Overview, title: str, filters: str | None = None, *, filtered_beyond_time: bool = False) -> Panel:
    lines = [
        f"{fmt.when(o.first_utc)} → {fmt.when(o.last_utc)} UTC ({span_text(o.span_seconds)})",
        f"[bold]{fmt.count(o.requests)}[/] requests · {fmt.share(o.requests - o.errors, o.requests)} succeeded · "
        f"[bold]{fmt.count(o.errors)}[/] errors · {fmt.share(o.streamed, o.requests)} streamed",
        f"tokens in {fmt.count(o.prompt_tokens)} (cached {fmt.count(o.cached_tokens)}) · "
        f"out {fmt.count(o.completion_tokens)} (reasoning {fmt.count(o.reasoning_tokens)})",
    ]
    if o.cost_usd is not None:
        lines.append(f"cost {fmt.usd(o.cost_usd)} · {fmt.count(o.unpriced_calls)} successful calls unpriced")
    if filters:
        lines.append(f"[italic]filters: {escape(filters)}[/]")
    if not o.requests:
        lines = [f"No calls match these filters{': ' + escape(filters) if filters else ''}."]
    dropped = drops_line(o.dropped, filtered=filtered_beyond_time)
    if dropped:
        lines.insert(2 if o.requests else 1, dropped)  # beside the request counts it belongs to
    return Panel("\n".join(lines), title=title, title_align="left", expand=False)
