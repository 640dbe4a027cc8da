"""Retries and waste: calls an SDK retried, calls refused for rate or load (429, 529), and what
the failed calls cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import fmt
from .layout import Column, FitTable
from .selection import TABLE, Selection
from .source import Source
from .stored import STATUS_CODE, known, measure


@dataclass
class Retries:
    retried_calls: int  # calls with retry_count > 0: a second or later attempt
    retried_cost_usd: float | None  # what those attempts cost (None: none priced)
    rate_limited: int  # 429 Too Many Requests
    overloaded: int  # 529 (Anthropic's overloaded_error)
    failed_calls: int
    failed_cost_usd: float | None  # cost of the failed calls that had one: spent for nothing

    @property
    def any(self) -> bool:
        return bool(self.retried_calls or self.rate_limited or self.overloaded or self.failed_cost_usd)

    def as_dict(self) -> dict:
        return asdict(self)


def load_retries(src: Source, selection: Selection) -> Retries:
    where, params = selection.where(src.param)
    cost = known("cost_usd") if src.has_cost else "NULL"
    retried = f"{measure('retry_count')} AND retry_count > 0"
    row = src.one(
        f"SELECT sum(CASE WHEN {retried} THEN 1 ELSE 0 END), sum(CASE WHEN {retried} THEN {cost} END), "
        f"sum(CASE WHEN {STATUS_CODE} = 429 THEN 1 ELSE 0 END), sum(CASE WHEN {STATUS_CODE} = 529 THEN 1 ELSE 0 END), "
        f"sum(CASE WHEN NOT success THEN 1 ELSE 0 END), sum(CASE WHEN NOT success THEN {cost} END) "
        f"FROM {TABLE}{where}",
        params,
    )
    n = [int(v or 0) for v in (row[0], row[2], row[3], row[4])]
    return Retries(n[0], _usd(row[1]), n[1], n[2], n[3], _usd(row[5]))


def _usd(value) -> float | None:
    return None if value is None else float(value)


def render_retries(retries: Retries, cost_known: bool = True) -> FitTable:
    lines = [
        ("retried calls (an SDK's 2nd or later attempt)", fmt.count(retries.retried_calls), fmt.usd(retries.retried_cost_usd)),
        ("429 rate limited", fmt.count(retries.rate_limited), fmt.NONE),
        ("529 overloaded", fmt.count(retries.overloaded), fmt.NONE),
        ("failed calls", fmt.count(retries.failed_calls), fmt.usd(retries.failed_cost_usd)),
    ]
    columns = [
        Column("", [what for what, _, _ in lines], keep=100, numeric=False, min_width=20),
        Column("calls", [n for _, n, _ in lines], keep=90),
    ]
    if not cost_known:
        return FitTable("Retries and rate limits", columns)
    columns.append(Column("cost", [c for _, _, c in lines], keep=80))
    return FitTable("Retries and rate limits", columns, "cost: of the calls priced; a failed call is priced when it reported usage")
