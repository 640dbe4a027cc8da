"""The overview panel: time span, requests, success rate, errors, streaming, tokens, cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.markup import escape
from rich.panel import Panel

from . import change, fmt
from .change import Changes
from .drops import Drops, drops_line, load_drops
from .selection import TABLE, Selection, utc_text
from .source import Source
from .stored import time_like, utc
from .totals import TOKENS, Totals

EDGE_PAGE = 100  # stored times read at a time while looking for the first (last) that is a time


@dataclass
class Overview:
    first_utc: str | None  # None: no selected call has a timestamp that is a time
    last_utc: str | None
    requests: int
    errors: int
    streamed: int
    prompt_tokens: int | None  # None: calls were selected, and none reported it
    completion_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None = None  # of the priced calls; None: none priced, or no cost column
    unpriced_calls: int | None = None  # successful calls with no cost_usd; None: no cost column
    estimated_calls: int = 0  # calls whose tokens and cost are estimates (usage_source estimated)
    dropped: Drops | None = None  # None: this database has no dropped_rows table
    # How many calls each sum rests on: those with a known value (see `reports.stored`).
    calls_with: dict[str, int | None] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        return None if not self.requests else (self.requests - self.errors) / self.requests

    def usage_reported(self) -> int | None:
        """How many calls reported token counts, when fewer did than succeeded (the sums are
        then of those only); None when no fewer did."""
        reported = min(self.calls_with.get("prompt_tokens") or 0, self.calls_with.get("completion_tokens") or 0)
        return reported if self.calls_with and reported < self.requests - self.errors else None

    @property
    def span_seconds(self) -> float | None:
        first, last = utc(self.first_utc), utc(self.last_utc)
        return None if first is None or last is None else (last - first).total_seconds()

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
            "estimated_calls": self.estimated_calls,
            "dropped_rows": self.dropped.as_dict() if self.dropped is not None else None,
            "calls_with": self.calls_with,
        }


def empty_overview(cost_known: bool = False) -> Overview:
    zero = 0 if cost_known else None
    return Overview(None, None, 0, 0, 0, 0, 0, 0, 0, zero, zero)


def load_overview(src: Source, selection: Selection, combos: dict[tuple, Totals]) -> Overview:
    """The sums of `combos` (see `reports.totals`), and the first and last call's time."""
    total = Totals()
    for value in combos.values():
        total.add(value)
    first, last = edges(src, selection)
    return Overview(
        first, last, total.requests, total.errors, total.streamed,
        total.tokens("prompt_tokens"), total.tokens("completion_tokens"), total.tokens("cached_tokens"),
        total.tokens("reasoning_tokens"),
        total.cost() if src.has_cost else None, total.unpriced_calls if src.has_cost else None,
        total.estimated_calls, load_drops(src, selection),
        {name: getattr(total, f"with_{name}") for name in TOKENS} | {"cost_usd": total.priced_calls if src.has_cost else None},
    )


def edges(src: Source, selection: Selection) -> tuple[str | None, str | None]:
    """The first and the last selected call's time (see `_edge`)."""
    return _edge(src, selection, last=False), _edge(src, selection, last=True)


def _edge(src: Source, selection: Selection, *, last: bool) -> str | None:
    """The first (last) stored timestamp that is a time, in the row format. Read in order
    through the timestamp index: the first value read is nearly always one, and stored values
    that are not (text of any shape, a blob) are passed over a page at a time."""
    order, beyond = (" DESC", "<") if last else ("", ">")
    after: list = []
    while True:
        terms = [time_like("timestamp")] + ([f"timestamp {beyond} {src.param}"] if after else [])
        where, params = selection.where(src.param, *terms)
        sql = f"SELECT timestamp FROM {TABLE}{where} ORDER BY timestamp{order} LIMIT {EDGE_PAGE}"
        values = [row[0] for row in src.rows(sql, params + after)]
        moment = next((m for m in map(utc, values) if m is not None), None)
        if moment is not None:
            return utc_text(moment)
        if len(values) < EDGE_PAGE:
            return None
        after = [values[-1]]


def _about(o: Overview, tokens: int | None) -> str:
    if tokens is None:
        return fmt.count(tokens)
    return fmt.about(o.estimated_calls) + (fmt.AT_LEAST if o.usage_reported() is not None else "") + fmt.count(tokens)


def span_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render_overview(
    o: Overview, title: str, filters: str | None = None, *, filtered_beyond_time: bool = False,
    changes: Changes | None = None, against: str | None = None,
) -> Panel:
    """`changes` (with --compare): each figure's change against `against`, the window before."""
    compared = changes is not None and bool(changes.requests.previous)  # with no calls then: no change to show
    def by(name: str, then: str = "", what: str = "") -> str:  # " (+12%)", " (+12%; then)", or " (then)"
        shown = change.text(name, getattr(changes, name)) if compared else ""
        inside = "; ".join(part for part in (what + shown if shown else "", then) if part)
        return f" ({inside})" if inside else ""

    span = f"{fmt.when(o.first_utc)} → {fmt.when(o.last_utc)} UTC ({span_text(o.span_seconds)})"
    lines = [
        span if o.first_utc else "time unknown: no stored timestamp of these calls is a time",
        f"[bold]{fmt.count(o.requests)}[/] requests{by('requests')} · {fmt.share(o.requests - o.errors, o.requests)} succeeded · "
        f"[bold]{fmt.count(o.errors)}[/] errors{by('error_rate', what='error rate ')} · {fmt.share(o.streamed, o.requests)} streamed",
        f"tokens in {_about(o, o.prompt_tokens)}{by('prompt_tokens', f'cached {fmt.count(o.cached_tokens)}')} · "
        f"out {_about(o, o.completion_tokens)}{by('completion_tokens', f'reasoning {fmt.count(o.reasoning_tokens)}')}",
    ]
    if changes is not None:  # percentiles of every call: the overview has them only when compared
        for what in ("latency", "ttft"):
            lines.append(f"{'TTFT' if what == 'ttft' else what} " + " · ".join(
                f"{p} {fmt.ms(getattr(changes, f'{what}_{p}_ms').current)} ms{by(f'{what}_{p}_ms')}" for p in ("p50", "p95")
            ))
    if o.estimated_calls:
        lines.append(f"{fmt.ABOUT}: {fmt.count(o.estimated_calls)} streamed calls reported no usage; their tokens "
                     "and cost are estimated")
    reported = o.usage_reported()
    if reported is not None:
        lines.append(f"{fmt.AT_LEAST}: only {fmt.count(reported)} calls reported usage, fewer than the "
                     f"{fmt.count(o.requests - o.errors)} that succeeded; the token sums are of those")
    if o.unpriced_calls is not None:  # the database has a cost column
        cost = "unknown: no call priced" if o.cost_usd is None else fmt.cost(o.cost_usd, o.unpriced_calls, o.estimated_calls)
        lines.append(f"cost {cost}{by('cost_usd')} · {fmt.count(o.unpriced_calls)} successful calls unpriced")
    if filters:
        lines.append(f"[italic]filters: {escape(fmt.printable(filters))}[/]")
    if not o.requests:
        lines = [f"No calls match these filters{': ' + escape(fmt.printable(filters)) if filters else ''}."]
    if changes is not None and against:
        before = fmt.count(int(changes.requests.previous or 0))
        lines.append(f"[italic]( ): change against {escape(against)}: {before} requests[/]" if compared
                     else f"[italic]no calls in {escape(against)} to compare with[/]")
    dropped = drops_line(o.dropped, filtered=filtered_beyond_time)
    if dropped:
        lines.insert(2 if o.requests else 1, dropped)  # beside the request counts it belongs to
    return Panel("\n".join(lines), title=title, title_align="left", expand=False)
