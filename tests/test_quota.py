"""addon/quota.py: rate-limit and quota headroom from response headers as providers send them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from addon.quota import QUOTA_HEADERS, Headroom, headroom

NOW = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC).timestamp()


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_openai_rate_limits_with_duration_resets():
    found = headroom({"x-ratelimit-remaining-requests": "9999", "x-ratelimit-remaining-tokens": "149984",
                      "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "1m2.5s"}, NOW)
    assert found.rate_remaining_requests == 9999
    assert found.rate_remaining_tokens == 149984
    assert found.rate_reset_at == utc(NOW + 62.5)  # the later of the two
    assert found.quota_used_percent is None


def test_anthropic_rate_limits_and_unified_quota():
    found = headroom({
        "anthropic-ratelimit-requests-remaining": "49", "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-requests-reset": "2026-12-07T10:00:30Z",
        "anthropic-ratelimit-tokens-reset": "2026-12-07T10:00:05Z",
        "anthropic-ratelimit-unified-5h-utilization": "0.42", "anthropic-ratelimit-unified-5h-reset": str(int(NOW) + 3600),
        "anthropic-ratelimit-unified-7d-utilization": "0.071", "anthropic-ratelimit-unified-7d-reset": str(int(NOW) + 86400),
    }, NOW)
    assert (found.rate_remaining_requests, found.rate_remaining_tokens) == (49, 39000)
    assert found.rate_reset_at == utc(NOW + 30)
    assert (found.quota_used_percent, found.quota_window_minutes, found.quota_reset_at) == (42.0, 300, utc(NOW + 3600))
    assert (found.quota_long_used_percent, found.quota_long_window_minutes, found.quota_long_reset_at) == \
        (7.1, 10080, utc(NOW + 86400))


def test_codex_primary_and_secondary_windows():
    found = headroom({"x-codex-primary-used-percent": "61.5", "x-codex-primary-window-minutes": "300",
                      "x-codex-primary-reset-at": str(int(NOW) + 1800),
                      "x-codex-secondary-used-percent": "9", "x-codex-secondary-window-minutes": "10080",
                      "x-codex-secondary-reset-after-seconds": "86400"}, NOW)
    assert (found.quota_used_percent, found.quota_window_minutes, found.quota_reset_at) == (61.5, 300, utc(NOW + 1800))
    assert (found.quota_long_used_percent, found.quota_long_window_minutes, found.quota_long_reset_at) == \
        (9.0, 10080, utc(NOW + 86400))


@pytest.mark.parametrize(("value", "expected"), [
    ("30", 30.0), ("0", 0.0), ("Mon, 07 Dec 2026 10:01:00 GMT", 60.0), ("soon", None), ("-5", None), ("1e12", None),
])
def test_retry_after_in_seconds_or_as_a_date(value, expected):
    assert headroom({"retry-after": value}, NOW).retry_after_s == expected


@pytest.mark.parametrize("headers", [
    {"x-ratelimit-remaining-requests": "-1"}, {"x-ratelimit-remaining-tokens": "1.5"},
    {"x-ratelimit-remaining-tokens": "nan"}, {"x-ratelimit-reset-tokens": "6 minutes"},
    {"anthropic-ratelimit-tokens-reset": "2026-12-07T10:00:05"},  # no zone: not a moment
    {"anthropic-ratelimit-unified-5h-utilization": "inf"}, {"x-codex-primary-used-percent": "5000"},
    {"x-codex-primary-reset-at": "12"}, {"x-ratelimit-reset-requests": "99999999h"},
])
def test_unreadable_values_are_unknown_never_zero(headers):
    assert headroom(headers, NOW) == Headroom()


def test_no_headers_no_headroom():
    assert headroom({}, NOW) == Headroom()


def test_every_header_read_is_one_the_hooks_keep():
    import inspect

    import addon.quota as quota
    source = inspect.getsource(quota)
    import re
    read = set(re.findall(r'"((?:x-|anthropic-|retry-)[a-z0-9-]+)"', source))
    read |= {f"x-codex-{w}-{k}" for w in ("primary", "secondary")
             for k in ("used-percent", "window-minutes", "reset-at", "reset-after-seconds")}
    read = {name for name in read if not name.endswith("-")}
    assert {name.encode() for name in read} <= QUOTA_HEADERS
