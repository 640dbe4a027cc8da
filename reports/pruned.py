"""Calls deleted by a prune (`python -m migrations prune`, `llm_metrics_retention_days`), as the
daily totals it kept: per model, with their calls, errors, tokens, cost and mean latency.

Totals are per UTC day: `--since`/`--until` select whole days (every day they touch). They know
model, provider and agent only: with a filter on anything else (host, origin, session, errors
only) they cannot be selected, and the report says so instead of counting them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.console import RenderableType
from rich.text import Text

from . import fmt
from .layout import Column, FitTable
from .selection import Selection
from .source import Source
from .stored import text

TOTALS = "daily_totals"


@dataclass
class PrunedModel:
    model: str | None
    requests: int
    errors: int
    prompt_tokens: int | None  # None: no deleted call of the group reported them
    completion_tokens: int | None
    cost_usd: float | None
    unpriced_calls: int
    mean_latency_ms: float | None
    mean_ttft_ms: float | None


@dataclass
class Pruned:
    first_day: str | None
    last_day: str | None
    requests: int
    errors: int
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    by_model: list[PrunedModel]  # most calls first
    not_selectable: str | None = None  # the filter that keeps these totals out, if one does

    def as_dict(self) -> dict:
        return asdict(self)


def load_pruned(src: Source, selection: Selection) -> Pruned | None:
    """The kept totals the selection covers; None when nothing was ever pruned (or none match)."""
    if TOTALS not in src.tables:
        return None
    blocking = [name for name, values in (("host", selection.hosts), ("origin", selection.origins),
                                          ("session", selection.sessions)) if values]
    if selection.errors_only:
        blocking.append("errors-only")
    terms, params = [], []
    p = src.param
    if selection.since_utc:
        terms.append(f"day >= {p}")
        params.append(selection.since_utc[:10])
    if selection.until_utc:
        terms.append(f"day <= {p}")
        params.append(selection.until_utc[:10])
    for column, values in (("model", selection.models), ("provider", selection.providers),
                           ("agent", selection.agents)):
        if values:
            terms.append(f"{column} IN ({', '.join([p] * len(values))})")
            params.extend(values)
    where = (" WHERE " + " AND ".join(terms)) if terms else ""
    rows = src.rows(
        "SELECT model, min(day), max(day), sum(requests), sum(errors), sum(prompt_tokens), count(prompt_tokens), "
        "sum(completion_tokens), count(completion_tokens), sum(cost_usd), count(cost_usd), sum(unpriced_calls), "
        "sum(response_time_ms_sum), sum(response_time_count), sum(ttft_ms_sum), sum(ttft_count) "
        f"FROM {TOTALS}{where} GROUP BY model", params)
    if not rows:
        return None
    if blocking:
        return Pruned(None, None, 0, 0, None, None, None, [],
                      not_selectable=f"the filter on {', '.join(blocking)} does not apply to daily totals")
    models = []
    for (model, _, _, n, errors, prompt, has_prompt, completion, has_completion, cost, has_cost, unpriced,
         ms_sum, ms_count, ttft_sum, ttft_count) in rows:
        models.append(PrunedModel(
            text(model), int(n), int(errors), int(prompt) if has_prompt else None,
            int(completion) if has_completion else None, float(cost) if has_cost else None, int(unpriced or 0),
            float(ms_sum) / int(ms_count) if ms_count else None, float(ttft_sum) / int(ttft_count) if ttft_count else None))
    models.sort(key=lambda m: (-m.requests, m.model or ""))
    return Pruned(
        min(r[1] for r in rows), max(r[2] for r in rows), sum(m.requests for m in models),
        sum(m.errors for m in models), _sum(m.prompt_tokens for m in models),
        _sum(m.completion_tokens for m in models), _sum(m.cost_usd for m in models), models)


def _sum(values):
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def render_pruned(pruned: Pruned, cost_known: bool) -> RenderableType:
    if pruned.not_selectable:
        return Text(f"Older calls kept as daily totals are not shown: {pruned.not_selectable}.", style="italic")
    rows = pruned.by_model
    columns = [
        Column("model", [m.model or "(none)" for m in rows], keep=100, numeric=False, min_width=20),
        Column("calls", [fmt.count(m.requests) for m in rows], keep=90),
        Column("err", [fmt.count(m.errors) for m in rows], keep=80),
        Column("mean\nms", [fmt.ms(m.mean_latency_ms) for m in rows], keep=70),
        Column("mean\nTTFT", [fmt.ms(m.mean_ttft_ms) for m in rows], keep=60),
        Column("in", [fmt.compact(m.prompt_tokens) for m in rows], keep=50),
        Column("out", [fmt.compact(m.completion_tokens) for m in rows], keep=50),
    ]
    if cost_known:
        columns.append(Column("cost", [fmt.cost(m.cost_usd, m.unpriced_calls) for m in rows], keep=65))
    title = (f"Older calls kept as daily totals ({fmt.count(pruned.requests)} calls, {pruned.first_day} to "
             f"{pruned.last_day}, pruned)")
    return FitTable(title, columns, "whole UTC days; means, not percentiles: the calls themselves were deleted")
