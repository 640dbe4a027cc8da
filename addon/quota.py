"""How much room a provider says is left: rate limits, subscription quotas and `retry-after`, from a
response's headers. Pure: no mitmproxy.

The hooks keep the values of `QUOTA_HEADERS` (lower-case names); `headroom` turns them into a row's
columns. Every value is what the provider said, NULL when it said nothing or something unreadable.

- Rate limits: `x-ratelimit-remaining-{requests,tokens}` and `x-ratelimit-reset-{requests,tokens}`
  (OpenAI and most compatible servers; resets are durations such as `6m0s`, `1s`, `20ms`), or
  `anthropic-ratelimit-{requests,tokens}-{remaining,reset}` (resets in RFC 3339).
- Subscription quotas, a short and a long window: Claude's `anthropic-ratelimit-unified-5h-*` and
  `-7d-*` (utilization as a fraction, reset as epoch seconds), Codex's
  `x-codex-{primary,secondary}-{used-percent,window-minutes,reset-at,reset-after-seconds}`.
- `retry-after`: seconds, or an HTTP date.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from storage.timestamps import utc_text

QUOTA_HEADERS = frozenset({
    b"x-ratelimit-remaining-requests", b"x-ratelimit-remaining-tokens",
    b"x-ratelimit-reset-requests", b"x-ratelimit-reset-tokens",
    b"anthropic-ratelimit-requests-remaining", b"anthropic-ratelimit-tokens-remaining",
    b"anthropic-ratelimit-requests-reset", b"anthropic-ratelimit-tokens-reset",
    b"anthropic-ratelimit-unified-5h-utilization", b"anthropic-ratelimit-unified-5h-reset",
    b"anthropic-ratelimit-unified-7d-utilization", b"anthropic-ratelimit-unified-7d-reset",
    b"x-codex-primary-used-percent", b"x-codex-primary-window-minutes", b"x-codex-primary-reset-at",
    b"x-codex-primary-reset-after-seconds",
    b"x-codex-secondary-used-percent", b"x-codex-secondary-window-minutes", b"x-codex-secondary-reset-at",
    b"x-codex-secondary-reset-after-seconds",
    b"retry-after",
})

_MAX_COUNT = 10**15
_MAX_SECONDS = 400 * 86400.0  # a reset or wait beyond a year and a month is not a reading


class Headroom(NamedTuple):
    rate_remaining_requests: int | None = None
    rate_remaining_tokens: int | None = None
    rate_reset_at: str | None = None  # UTC, the later of the two resets the provider gave
    quota_used_percent: float | None = None  # the short window (5 h, Codex's primary)
    quota_window_minutes: int | None = None
    quota_reset_at: str | None = None
    quota_long_used_percent: float | None = None  # the long window (7 d, Codex's secondary)
    quota_long_window_minutes: int | None = None
    quota_long_reset_at: str | None = None
    retry_after_s: float | None = None


def headroom(headers: Mapping[str, str], now: float) -> Headroom:
    """The row's headroom columns from the kept headers; `now`: the response's epoch seconds."""
    if not headers:
        return Headroom()
    get = headers.get
    resets = [r for r in (_duration_reset(get("x-ratelimit-reset-requests"), now),
                          _duration_reset(get("x-ratelimit-reset-tokens"), now),
                          _date_reset(get("anthropic-ratelimit-requests-reset")),
                          _date_reset(get("anthropic-ratelimit-tokens-reset"))) if r is not None]
    short = _window(get("anthropic-ratelimit-unified-5h-utilization"), None, 300,
                    _epoch_reset(get("anthropic-ratelimit-unified-5h-reset"))) \
        or _codex_window(headers, "primary", now)
    long = _window(get("anthropic-ratelimit-unified-7d-utilization"), None, 7 * 24 * 60,
                   _epoch_reset(get("anthropic-ratelimit-unified-7d-reset"))) \
        or _codex_window(headers, "secondary", now)
    return Headroom(
        rate_remaining_requests=_count(get("x-ratelimit-remaining-requests") or get("anthropic-ratelimit-requests-remaining")),
        rate_remaining_tokens=_count(get("x-ratelimit-remaining-tokens") or get("anthropic-ratelimit-tokens-remaining")),
        rate_reset_at=utc_text(max(resets)) if resets else None,
        quota_used_percent=short[0] if short else None,
        quota_window_minutes=short[1] if short else None,
        quota_reset_at=utc_text(short[2]) if short and short[2] is not None else None,
        quota_long_used_percent=long[0] if long else None,
        quota_long_window_minutes=long[1] if long else None,
        quota_long_reset_at=utc_text(long[2]) if long and long[2] is not None else None,
        retry_after_s=_retry_after(get("retry-after"), now),
    )


Window = tuple[float, int | None, float | None]  # used percent, window minutes, reset (epoch s)


def window_name(minutes: object, unknown: str) -> str:
    """A quota window as people say it (`5-hour window`, `7-day window`); `unknown` when its
    length was not stated."""
    if isinstance(minutes, int) and minutes > 0:
        if minutes % 1440 == 0:
            return f"{minutes // 1440}-day window"
        if minutes % 60 == 0:
            return f"{minutes // 60}-hour window"
        return f"{minutes}-minute window"
    return unknown


def _window(fraction: str | None, percent: str | None, minutes: int | None, reset: float | None) -> Window | None:
    used = _number(fraction)
    if used is not None:
        used *= 100.0
    elif (used := _number(percent)) is None:
        return None
    if not 0.0 <= used <= 1000.0:  # past 100 % is possible (overage); beyond that it is not a reading
        return None
    return round(used, 3), minutes, reset


def _codex_window(headers: Mapping[str, str], which: str, now: float) -> Window | None:
    prefix = f"x-codex-{which}-"
    reset = _epoch_reset(headers.get(prefix + "reset-at")) or _date_reset(headers.get(prefix + "reset-at"))
    if reset is None:
        after = _number(headers.get(prefix + "reset-after-seconds"))
        reset = now + after if after is not None and 0 <= after <= _MAX_SECONDS else None
    minutes = _count(headers.get(prefix + "window-minutes"))
    return _window(None, headers.get(prefix + "used-percent"), minutes, reset)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _count(value: str | None) -> int | None:
    number = _number(value)
    if number is None or number < 0 or number > _MAX_COUNT or number != int(number):
        return None
    return int(number)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _duration_reset(value: str | None, now: float) -> float | None:
    """OpenAI's reset durations: `6m0s`, `1s`, `20ms`, `1h2m3.5s`."""
    if not value:
        return None
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    seconds = sum(float(n) * scale[u] for n, u in parts)
    return now + seconds if seconds <= _MAX_SECONDS else None


def _date_reset(value: str | None) -> float | None:
    """An RFC 3339 time (`2026-12-07T10:00:00Z`)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _epoch_reset(value: str | None) -> float | None:
    number = _number(value)
    if number is None or not 1e9 <= number <= 1e11:  # epoch seconds between 2001 and 5138
        return None
    return number


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    seconds = _number(value)
    if seconds is None:
        try:
            seconds = parsedate_to_datetime(value.strip()).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if not 0 <= seconds <= _MAX_SECONDS:
        return None
    return round(seconds, 3)


