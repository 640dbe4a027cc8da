"""The slowest calls: top N by latency, with what they were and when."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import fmt
from .indexes import RUN_KEYS
from .layout import Column, FitTable
from .runs import runs_serve_ranks
from .selection import TABLE, Selection
from .source import Source
from .stored import STATUS_CODE, SUCCESS, measure, text, utc


@dataclass
class SlowCall:
    timestamp_utc: str | None  # None: the stored timestamp is not a time
    response_time_ms: int | float
    model: str | None
    provider: str | None
    host: str | None
    origin: str | None
    status_code: int | None
    success: bool
    error_type: str | None


_FIELDS = f"timestamp, response_time_ms, model, provider, host, origin, {STATUS_CODE}, {SUCCESS}, error_type, id"
_ORDER = "response_time_ms DESC, timestamp DESC, id DESC"
_KNOWN = measure("response_time_ms")  # a call whose latency is not known is not among the slowest


def load_slowest(src: Source, selection: Selection, top: int, runs: Iterable[tuple] = ()) -> list[SlowCall]:
    """The `top` slowest calls. Over a whole SQLite table with latencies in index runs (`runs`:
    every combination of `reports.indexes.RUN_KEYS` there is), the slowest of each run are merged
    instead of reading every row."""
    runs = list(runs)
    if runs and src.walks_runs and selection.is_everything and runs_serve_ranks(src, RUN_KEYS, "response_time_ms"):
        match = " AND ".join([*(f"{k} IS {src.param}" for k in RUN_KEYS), _KNOWN])
        sql = f"SELECT {_FIELDS} FROM {TABLE} WHERE {match} ORDER BY {_ORDER} LIMIT {int(top)}"
        rows = [row for run in runs for row in src.rows(sql, list(run))]
        # As _ORDER; SQLite sorts text before blobs, and a stored timestamp may be either.
        rows.sort(key=lambda r: (r[1], isinstance(r[0], bytes), r[0], r[-1]), reverse=True)
        rows = rows[:top]
    else:
        where, params = selection.where(src.param, _KNOWN)
        rows = src.rows(f"SELECT {_FIELDS} FROM {TABLE}{where} ORDER BY {_ORDER} LIMIT {int(top)}", params)
    return [
        SlowCall(ts if utc(ts) else None, ms, text(m), text(p), text(h), text(o), code, bool(ok), text(err))
        for ts, ms, m, p, h, o, code, ok, err, _ in rows
    ]


def render_slowest(calls: list[SlowCall]) -> FitTable:
    columns = [
        Column("latency\nms", [fmt.ms(c.response_time_ms) for c in calls], keep=100),
        Column("time (UTC)", [fmt.when(c.timestamp_utc) for c in calls], keep=90, numeric=False, min_width=19),
        Column("model", [c.model or "(none)" for c in calls], keep=95, numeric=False, min_width=12),
        Column("origin", [c.origin or "(none)" for c in calls], keep=70, numeric=False, min_width=12),
        Column("provider", [c.provider or "(none)" for c in calls], keep=60, numeric=False, min_width=10),
        Column("outcome", [_outcome(c) for c in calls], keep=80, numeric=False, min_width=10),
    ]
    return FitTable(f"Slowest {len(calls)} calls", columns)


def _outcome(call: SlowCall) -> str:
    outcome = "ok" if call.success else (call.error_type or "error")
    return outcome if call.status_code is None else f"{call.status_code} {outcome}"
