"""The report's numbers, computed from the database before anything is rendered.

Percentiles are exact for the selected rows, by the nearest-rank method (the smallest value with
at least p of the rows at or below it; PostgreSQL's `percentile_disc`). Each is computed in one
pass over one column read sorted from SQL, never by loading rows as Python objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import peewee


def nearest_rank(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


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

    @property
    def success_rate(self) -> float | None:
        return None if not self.requests else (self.requests - self.errors) / self.requests


@dataclass
class GroupStats:
    key: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p95, p99
    ttft_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p95


@dataclass
class Report:
    location: str
    overview: Overview
    by_model: list[GroupStats]

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"database": self.location, "overview": asdict(self.overview), "by_model": [asdict(g) for g in self.by_model]}


_TABLE = "completion_requests"


def load_overview(db: peewee.Database) -> Overview:
    row = db.execute_sql(
        f"SELECT min(timestamp), max(timestamp), count(*), "
        f"coalesce(sum(CASE WHEN success THEN 0 ELSE 1 END), 0), "
        f"coalesce(sum(CASE WHEN is_streaming THEN 1 ELSE 0 END), 0), "
        f"coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
        f"coalesce(sum(cached_tokens), 0), coalesce(sum(reasoning_tokens), 0) FROM {_TABLE}"
    ).fetchone()
    return Overview(*row)


def _percentiles_by_model(db: peewee.Database, column: str, ps: dict[str, float], where: str = "") -> dict[str, dict]:
    """One sorted pass over (model, column): exact nearest-rank percentiles per model."""
    cursor = db.execute_sql(
        f"SELECT coalesce(model, '?'), {column} FROM {_TABLE} WHERE {column} IS NOT NULL {where} "
        f"ORDER BY 1, 2"
    )
    result: dict[str, dict] = {}
    current: str | None = None
    values: list[float] = []
    for model, value in cursor:
        if model != current:
            if current is not None:
                result[current] = {name: nearest_rank(values, p) for name, p in ps.items()}
            current, values = model, []
        values.append(value)
    if current is not None:
        result[current] = {name: nearest_rank(values, p) for name, p in ps.items()}
    return result


def load_by_model(db: peewee.Database) -> list[GroupStats]:
    rows = db.execute_sql(
        f"SELECT coalesce(model, '?'), count(*), coalesce(sum(CASE WHEN success THEN 0 ELSE 1 END), 0), "
        f"coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
        f"FROM {_TABLE} GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall()
    latency = _percentiles_by_model(db, "response_time_ms", {"p50": 0.5, "p95": 0.95, "p99": 0.99})
    ttft = _percentiles_by_model(db, "time_to_first_token_ms", {"p50": 0.5, "p95": 0.95}, "AND is_streaming")
    return [
        GroupStats(model, n, errors, pt, ct, latency.get(model, {}), ttft.get(model, {}))
        for model, n, errors, pt, ct in rows
    ]


def load_report(db: peewee.Database, location: str) -> Report:
    return Report(location, load_overview(db), load_by_model(db))
