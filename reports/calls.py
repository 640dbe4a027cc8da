"""The selected calls one page at a time, newest first: the columns the report shows, read as the
report reads them (`reports.stored`), with paths and messages redacted as the report redacts them.
Never a header, a key, a query string or a body: the database holds none of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from addon.redact import redact, redact_path

from .errors import SAMPLE_CHARS
from .selection import TABLE, Selection
from .source import Source
from .stored import STATUS_CODE, SUCCESS, known, text, utc

MAX_PAGE_SIZE = 500  # calls in one page of /api/calls
DEFAULT_PAGE_SIZE = 50
ORDER = "timestamp DESC, id DESC"  # newest first; the timestamp index serves it (it holds the id)


@dataclass
class Call:
    id: int
    timestamp_utc: str | None  # None: the stored timestamp is not a time
    model: str | None
    provider: str | None
    host: str | None
    path: str | None  # redacted as the report's path groups are
    origin: str | None
    agent: str | None
    session_id: str | None
    request_kind: str | None
    is_streaming: bool
    status_code: int | None
    success: bool
    error_type: str | None
    error_message: str | None  # redacted, at most SAMPLE_CHARS characters
    response_time_ms: int | None
    time_to_first_token_ms: int | None
    time_to_last_token_ms: int | None
    output_tokens_per_second: float | None
    message_count: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    cost_usd: float | None  # None: unpriced, or this database has no cost column
    retry_count: int | None


@dataclass
class CallsPage:
    total: int  # calls selected, over all pages
    page: int  # 1-based
    page_size: int
    calls: list[Call]

    @property
    def pages(self) -> int:
        return -(-self.total // self.page_size)

    def as_dict(self) -> dict:
        return {
            "total": self.total, "page": self.page, "page_size": self.page_size, "pages": self.pages,
            "calls": [asdict(c) for c in self.calls],
        }


_MEASURES = ("response_time_ms", "time_to_first_token_ms", "time_to_last_token_ms", "tokens_per_second", "message_count",
             "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")


def _fields(src: Source) -> str:
    cost = known("cost_usd") if src.has_cost else "NULL"
    measures = ", ".join(known(m) for m in _MEASURES)
    return (f"id, timestamp, model, provider, host, path, origin, agent, session_id, request_kind, "
            f"CASE WHEN is_streaming THEN 1 ELSE 0 END, {STATUS_CODE}, {SUCCESS}, error_type, error_message, "
            f"{measures}, {cost}, {known('retry_count')}")


def load_calls(src: Source, selection: Selection, page: int = 1, page_size: int = DEFAULT_PAGE_SIZE) -> CallsPage:
    """Page `page` (1-based) of the selected calls, `page_size` to a page, newest first, and how
    many calls are selected in all (one read transaction for both)."""
    where, params = selection.where(src.param)
    with src.db.atomic():
        total = int(src.one(f"SELECT count(*) FROM {TABLE}{where}", params)[0])
        offset = (page - 1) * page_size
        rows = src.rows(
            f"SELECT {_fields(src)} FROM {TABLE}{where} ORDER BY {ORDER} LIMIT {int(page_size)} OFFSET {int(offset)}", params,
        )
    return CallsPage(total, page, page_size, [_call(row) for row in rows])


def _call(row: tuple) -> Call:
    (id_, ts, model, provider, host, path, origin, agent, session, kind, streamed, code, ok, error_type, message,
     latency, ttft, ttlt, tps, messages, prompt, completion, total, cached, reasoning, cost, retries) = row
    path = text(path)
    message = text(message)
    return Call(
        int(id_), ts if utc(ts) else None, text(model), text(provider), text(host),
        redact_path(path) if path is not None else None, text(origin), text(agent), text(session), text(kind),
        bool(streamed), code, bool(ok), text(error_type),
        # Rows stored before messages were redacted on the way in may still hold a key.
        redact(message)[:SAMPLE_CHARS] if message else message,
        _int(latency), _int(ttft), _int(ttlt), _float(tps), _int(messages), _int(prompt), _int(completion), _int(total),
        _int(cached), _int(reasoning), _float(cost), _int(retries),
    )


def _int(value) -> int | None:
    return None if value is None else int(value)


def _float(value) -> float | None:
    return None if value is None else float(value)
