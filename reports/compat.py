"""The original LLM Metrics Proxy's read-only API (`GET /metrics`, `GET /completion_requests`),
in its field names where the meaning is the same, made from this project's report: every number
is one `python -m reports --format json` gives for the same filters (docs/api.md maps them).

Where the original averaged (response time, TTFT), this gives the report's exact percentiles
under their own names instead: a mean is not what the report measures, and a field named as the
original's must mean what it meant.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from .calls import Call
from .errors import Errors
from .report import Report, load_report
from .selection import Selection, utc_text
from .source import Source

DEFAULT_LIMIT = 1_000  # rows of /completion_requests (the original had no bound)
MAX_LIMIT = 10_000
ERROR_KINDS = 1_000  # error kinds read per mode for `error_types`
MODES = (("streamed", True), ("non_streamed", False))


def metrics(src: Source, selection: Selection, now: datetime) -> dict:
    """Totals, streamed and non-streamed calls, error types, model and origin distributions.
    Three reports, read one after the other: all calls, then each mode on its own."""
    whole = load_report(src, selection, top=1, now=now)
    modes = {}
    for name, streamed in MODES:
        if selection.streamed in (None, streamed):
            mode = load_report(src, replace(selection, streamed=streamed), group_by="streamed", top=ERROR_KINDS, now=now)
            modes[name] = _mode(mode)
        else:  # the filter leaves this mode out
            modes[name] = _empty_mode(whole.cost_known)
    return _document(whole.generated_at_utc, selection, _total(whole), modes, _distribution(whole, "model"),
                     _distribution(whole, "origin"))


def no_metrics(selection: Selection, now: datetime) -> dict:
    """`/metrics` of no calls (no database, or nothing in it yet)."""
    empty = {name: _empty_mode(False) for name, _ in MODES}
    total = {"total": 0, "successful": 0, "failed": 0, "success_rate": None,
             "tokens": {"total": 0, "prompt_total": 0, "completion_total": 0}, "cost_usd": None}
    return _document(utc_text(now), selection, total, empty, {}, {})


def _document(generated: str, selection: Selection, total: dict, modes: dict, models: dict, origins: dict) -> dict:
    return {
        "timestamp": generated,
        "filters": selection.as_dict(),
        "requests": {"total": total, **modes},
        "model_distribution": models,
        "origin_distribution": origins,
    }


def _tokens(prompt: int | None, completion: int | None) -> dict:
    total = None if prompt is None or completion is None else prompt + completion
    return {"total": total, "prompt_total": prompt, "completion_total": completion}


def _total(report: Report) -> dict:
    o = report.overview
    return {
        "total": o.requests, "successful": o.requests - o.errors, "failed": o.errors, "success_rate": o.success_rate,
        "tokens": _tokens(o.prompt_tokens, o.completion_tokens), "cost_usd": o.cost_usd,
    }


def _mode(report: Report) -> dict:
    block = _total(report)
    del block["success_rate"]
    rows = report.groups[0].rows if report.groups else []
    if rows:  # one row: the report is of one mode, grouped by mode
        row = rows[0]
        block |= {"error_types": _error_types(report.errors), "response_time_ms": row.latency_ms,
                  "time_to_first_token_ms": row.ttft_ms, "output_tokens_per_second": row.output_tokens_per_second}
    else:
        block |= _empty_timings()
    return block


def _empty_mode(cost_known: bool) -> dict:
    return {"total": 0, "successful": 0, "failed": 0, "tokens": _tokens(0, 0), "cost_usd": 0.0 if cost_known else None,
            **_empty_timings()}


def _empty_timings() -> dict:
    return {"error_types": {}, "response_time_ms": {"p50": None, "p95": None, "p99": None},
            "time_to_first_token_ms": {"p50": None, "p95": None}, "output_tokens_per_second": {"p50": None}}


def _error_types(errors: Errors) -> dict[str, int]:
    """Failed calls per error_type, most first: the report's error kinds (by status code and
    type) added up by type. As the original, calls of no error_type are left out."""
    counts: dict[str, int] = {}
    for kind in errors.kinds:
        if kind.error_type:
            counts[kind.error_type] = counts.get(kind.error_type, 0) + kind.count
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _distribution(report: Report, dim: str) -> dict[str, int]:
    """Calls per model (origin), most first; as the original, calls of none are left out."""
    table = next((t for t in report.groups if t.dims == (dim,)), None)
    rows = table.rows if table is not None else []
    counts: dict[str, int] = {}
    for row in rows:
        name = row.key[dim]
        if name:
            counts[name] = row.requests
    return counts


def completion_request(call: Call) -> dict:
    """One row of `/completion_requests`, in the original's shape."""
    return {
        "timestamp": call.timestamp_utc,
        "is_streaming": call.is_streaming,
        "success": call.success,
        "error_type": call.error_type,
        "message_count": call.message_count,
        "timing": {
            "time_to_first_token_ms": call.time_to_first_token_ms,
            "time_to_last_token_ms": call.time_to_last_token_ms,
            "response_time_ms": call.response_time_ms,
        },
        "tokens": {"total": call.total_tokens, "prompt": call.prompt_tokens, "completion": call.completion_tokens},
        "model": call.model,
        "origin": call.origin,
    }
