"""One agent session's calls in the order they were made (`--session ID`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import fmt
from .layout import Column, FitTable
from .selection import TABLE, Selection
from .source import Source
from .stored import STATUS_CODE, SUCCESS, known, text, utc

MAX_SESSION_CALLS = 1_000  # listed; the overview above covers them all


@dataclass
class SessionCall:
    timestamp_utc: str | None
    agent: str | None
    request_kind: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    response_time_ms: int | None
    time_to_first_token_ms: int | None
    status_code: int | None
    success: bool
    error_type: str | None
    retry_count: int | None
    subagent_id: str | None


@dataclass
class SessionCalls:
    session_id: str
    calls: list[SessionCall]  # oldest first, at most MAX_SESSION_CALLS
    total: int

    def as_dict(self) -> dict:
        return {"session_id": self.session_id, "total_calls": self.total, "calls": [asdict(c) for c in self.calls]}


_FIELDS = (
    "timestamp, agent, request_kind, model, "
    f"{known('prompt_tokens')}, {known('completion_tokens')}, {known('cost_usd')}, {known('response_time_ms')}, "
    f"{known('time_to_first_token_ms')}, {STATUS_CODE}, {SUCCESS}, error_type, {known('retry_count')}, subagent_id"
)


def load_session(src: Source, selection: Selection) -> SessionCalls | None:
    """The calls of the one session `--session` names; None unless exactly one is named."""
    if len(selection.sessions) != 1:
        return None
    where, params = selection.where(src.param)
    total = int(src.one(f"SELECT count(*) FROM {TABLE}{where}", params)[0])
    rows = src.rows(f"SELECT {_FIELDS} FROM {TABLE}{where} ORDER BY timestamp, id LIMIT {MAX_SESSION_CALLS}", params)
    calls = [
        SessionCall(ts if utc(ts) else None, text(agent), text(kind), text(model), _int(p), _int(c), _float(cost),
                    _int(ms), _int(ttft), code, bool(ok), text(err), _int(retry), text(sub))
        for ts, agent, kind, model, p, c, cost, ms, ttft, code, ok, err, retry, sub in rows
    ]
    return SessionCalls(selection.sessions[0], calls, total)


def _int(value) -> int | None:
    return None if value is None else int(value)


def _float(value) -> float | None:
    return None if value is None else float(value)


def render_session(session: SessionCalls) -> FitTable:
    calls = session.calls
    columns = [
        Column("time (UTC)", [fmt.when(c.timestamp_utc) for c in calls], keep=100, numeric=False, min_width=19),
        Column("model", [c.model or "(none)" for c in calls], keep=95, numeric=False, min_width=12),
        Column("kind", [c.request_kind or fmt.NONE for c in calls], keep=40, numeric=False),
        Column("in", [fmt.compact(c.prompt_tokens) for c in calls], keep=90),
        Column("out", [fmt.compact(c.completion_tokens) for c in calls], keep=90),
        Column("cost", [fmt.usd(c.cost_usd) for c in calls], keep=85),
        Column("latency\nms", [fmt.ms(c.response_time_ms) for c in calls], keep=88),
        Column("TTFT\nms", [fmt.ms(c.time_to_first_token_ms) for c in calls], keep=60),
        Column("retry", [fmt.count(c.retry_count) for c in calls], keep=50),
        Column("status", [_status(c) for c in calls], keep=80, numeric=False),
        Column("subagent", [c.subagent_id or fmt.NONE for c in calls], keep=30, numeric=False),
    ]
    more = session.total - len(calls)
    caption = f"the first {len(calls):,} of {session.total:,} calls are listed" if more > 0 else None
    return FitTable(f"Session {fmt.printable(session.session_id)}: {session.total:,} call(s) in order", columns, caption)


def _status(call: SessionCall) -> str:
    code = fmt.NONE if call.status_code is None else str(call.status_code)
    return code if call.success else f"{code} {call.error_type or 'error'}"
