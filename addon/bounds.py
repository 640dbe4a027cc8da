"""What a stored value may be: each text column's longest length, the range a number must be in
to be stored, and the functions `addon.record.build_row` brings every value of a row within them
with. Pure: no mitmproxy, no database.

Text comes from clients (the origin header, the User-Agent, the path), from upstreams (model,
finish reason, error messages) and from the proxy itself. Before it is stored it is made valid
text for every database: a lone surrogate (which the hooks' `surrogateescape` decoding of a
header's undecodable bytes makes, and which JSON's `"\\ud800"` escapes make) becomes U+FFFD, as
does NUL (PostgreSQL refuses it in text); then it is cut to its column's limit, the last
character kept being `TRUNCATION_MARK`. The indexed columns model, provider, host and origin
(PostgreSQL's btree entry of `report_calls` holds them all, and may not exceed 2704 bytes) are
short enough that their entry fits even in 4-byte characters: 4 x (200 + 64 + 255 + 128) = 2588
bytes, plus its ten numbers.

Numbers from the wire (token counts, a server's own durations, a request's settings) that no
real call can have are not stored: the column is NULL and the row's `metering_note` says which
value was left out; token counts so left out also make `usage_source` `implausible`.
"""

from __future__ import annotations

import math
import re
from typing import Any

TRUNCATION_MARK = "…"

# Every text column of completion_requests: the most characters it holds.
TEXT_LIMITS: dict[str, int] = {
    "timestamp": 32,  # the proxy's own, 27 characters
    "model": 200,  # the longest real ids (Bedrock inference-profile ARNs) are about 120
    "request_model": 200,
    "provider": 64,  # a name the user gave a host, or the proxy's own
    "host": 255,  # DNS names are at most 253
    "path": 1000,
    "origin": 128,  # from the origin header, or the User-Agent's product (at most 100)
    "finish_reason": 64,
    "finish_category": 32,  # the proxy's own vocabulary
    "operation": 32,
    "usage_source": 32,
    "error_type": 128,
    "error_message": 1000,  # error bodies are cut at 500 before (formats.base.truncate)
    "metering_note": 500,
    "price_source": 32,  # genai-prices or custom
    # who made the call (addon.agents): names and ids as the client sent them
    "agent": 64,
    "agent_version": 64,
    "session_id": 200,
    "subagent_id": 200,
    "parent_id": 200,
    "request_kind": 64,
    "auth_mode": 16,
    # when the provider says its limits reset (addon.quota), UTC
    "rate_reset_at": 32,
    "quota_reset_at": 32,
    "quota_long_reset_at": 32,
}

# A token count (and a request's max_tokens, message count) outside 0..MAX_COUNT is no count of a
# real call: the largest context windows hold about 10**7 tokens. The bound also keeps every
# count, and a total of two of them, within PostgreSQL's 32-bit INTEGER columns.
MAX_COUNT = 10**9
# A server's own timing of one call (Ollama's prompt_eval_duration, eval_duration) above a week
# is no timing of a real call.
MAX_SERVER_DURATION_MS = 7 * 24 * 3600 * 1000
# The proxy's own measurements (durations, events counted) are true however large; what a 32-bit
# INTEGER column cannot hold (a call open for 25 days) is stored as its largest value.
MAX_MEASURED = 2**31 - 1
# A request's temperature and top_p: every API takes 0 to 2; outside 0..100 is no setting.
MAX_SETTING = 100.0

_NOT_TEXT = re.compile("[\ud800-\udfff\x00]")


def clean_text(value: Any, limit: int) -> str | None:
    """`value` as text any database takes, at most `limit` characters (see the module's doc)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if not text.isascii() or "\x00" in text:
        text = _NOT_TEXT.sub("\ufffd", text)
    if len(text) > limit:
        text = text[: limit - 1] + TRUNCATION_MARK
    return text


def count_or_none(value: int | None, name: str, notes: list[str]) -> int | None:
    """A count within 0..MAX_COUNT, else None with a note saying so."""
    if value is None or 0 <= value <= MAX_COUNT:
        return value
    notes.append(f"{name} {_shown(value)} is outside 0..{MAX_COUNT}: not stored")
    return None


def server_ms_or_none(value_ns: int | None, name: str, notes: list[str]) -> float | None:
    """A server's own duration in ns, as ms; None with a note when no call could take it."""
    if value_ns is None:
        return None
    ms = value_ns / 1e6
    if 0 <= ms <= MAX_SERVER_DURATION_MS:
        return round(ms, 3)
    notes.append(f"{name} {_shown(value_ns)} ns is outside 0..{MAX_SERVER_DURATION_MS} ms: not stored")
    return None


def setting_or_none(value: float | None, name: str, notes: list[str]) -> float | None:
    if value is None or (math.isfinite(value) and 0 <= value <= MAX_SETTING):
        return value
    notes.append(f"{name} {_shown(value)} is outside 0..{MAX_SETTING:g}: not stored")
    return None


def measured(value: int | None) -> int | None:
    """The proxy's own measurement, within what its column holds."""
    return None if value is None else min(value, MAX_MEASURED)


def finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def status_or_none(value: int | None, notes: list[str]) -> int | None:
    if value is None or 100 <= value <= 999:
        return value
    notes.append(f"status code {_shown(value)} is not an HTTP status: not stored")
    return None


def _shown(value: float) -> str:
    """A number for a note: never thousands of digits (Python refuses to print past 4300)."""
    if isinstance(value, int) and abs(value) < 10**15:
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{'-' if value < 0 else ''}beyond 10**15"
