"""The quota panel: the latest headroom each provider stated, per kind of credential (an API key's
rate limits, a subscription's quota windows), with when it resets, how fast it went over the last
hour, and how long until it runs out at that pace.

It looks at the last day before the report's end (now, or `--until`): headroom is about now, and
the timestamp index finds those rows without reading older ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from addon.quota import window_name

from . import fmt
from .layout import Column, FitTable
from .selection import TABLE, Selection, utc_text
from .source import Source
from .stored import exact_sum, exact_sum_sql, text, utc

LOOK_BACK = timedelta(hours=24)
BURN_WINDOW = timedelta(hours=1)
_HAS_HEADROOM = ("(quota_used_percent IS NOT NULL OR quota_long_used_percent IS NOT NULL "
                 "OR rate_remaining_requests IS NOT NULL OR rate_remaining_tokens IS NOT NULL)")


@dataclass
class QuotaRow:
    provider: str | None
    auth_mode: str | None  # api_key, oauth (a subscription), none
    limit: str  # "5-hour window", "7-day window", "requests", "tokens"
    as_of_utc: str  # the response that said it
    used_percent: float | None  # a quota window's
    remaining: int | None  # a rate limit's
    resets_at_utc: str | None
    burn_per_hour: float | None  # percent points, requests or tokens, over the last hour before as_of
    runs_out_utc: str | None  # at that pace; None: no pace, or it resets first
    resets_first: bool  # at that pace it would run out, but resets before

    def as_dict(self) -> dict:
        return asdict(self)


def load_quota(src: Source, selection: Selection, now: datetime) -> list[QuotaRow]:
    end = min(utc_text(now), selection.until_utc or utc_text(now))
    end_time = utc(end)
    assert end_time is not None  # both are utc_text's
    start = utc_text(end_time - LOOK_BACK)
    p = src.param
    where, params = selection.where(p, f"timestamp >= {p}", f"timestamp <= {p}", _HAS_HEADROOM)
    params += [start, end]
    groups = src.rows(f"SELECT provider, auth_mode, max(timestamp) FROM {TABLE}{where} GROUP BY 1, 2", params)
    rows: list[QuotaRow] = []
    for provider, auth, latest in sorted(groups, key=lambda g: (text(g[0]) or "", text(g[1]) or "")):
        rows += _group(src, selection, provider, auth, latest)
    return rows


def _group(src: Source, selection: Selection, provider, auth, latest: str) -> list[QuotaRow]:
    p = src.param
    match, match_params = _match(p, provider, auth)
    where, params = selection.where(p, *match, f"timestamp = {p}", _HAS_HEADROOM)
    row = src.one(
        "SELECT quota_used_percent, quota_window_minutes, quota_reset_at, quota_long_used_percent, "
        "quota_long_window_minutes, quota_long_reset_at, rate_remaining_requests, rate_remaining_tokens, rate_reset_at "
        f"FROM {TABLE}{where} ORDER BY id DESC LIMIT 1", params + match_params + [latest])
    if row is None:
        return []
    used, minutes, reset, long_used, long_minutes, long_reset, requests_left, tokens_left, rate_reset = row
    as_of = utc(latest)
    assert as_of is not None
    found = []
    for window_used, window_minutes, window_reset, column, default in (
            (used, minutes, reset, "quota_used_percent", "short window"),
            (long_used, long_minutes, long_reset, "quota_long_used_percent", "long window")):
        if window_used is None:
            continue
        burn = _window_burn(src, selection, provider, auth, column, window_reset, as_of, float(window_used))
        found.append(_row(provider, auth, window_name(window_minutes, default), latest, float(window_used), None,
                          window_reset, burn, 100.0 - float(window_used)))
    for left, what in ((requests_left, "requests"), (tokens_left, "tokens")):
        if left is None:
            continue
        burn = _rate_burn(src, selection, provider, auth, what, as_of)
        found.append(_row(provider, auth, what, latest, None, int(left), rate_reset, burn, float(left)))
    return found


def _row(provider, auth, limit: str, latest: str, used: float | None, remaining: int | None, reset,
         burn: float | None, left: float) -> QuotaRow:
    as_of = utc(latest)
    reset_at = utc(reset)
    runs_out = resets_first = None
    if burn and burn > 0 and as_of is not None:
        runs_out = as_of + timedelta(hours=max(0.0, left) / burn)
        resets_first = reset_at is not None and reset_at <= runs_out
    return QuotaRow(text(provider), text(auth), limit, latest, used, remaining, reset if reset_at else None, burn,
                    utc_text(runs_out) if runs_out is not None and not resets_first else None, bool(resets_first))


def _match(p: str, provider, auth) -> tuple[list[str], list]:
    terms, params = [], []
    for column, value in (("provider", provider), ("auth_mode", auth)):
        if value is None:
            terms.append(f"{column} IS NULL")
        else:
            terms.append(f"{column} = {p}")
            params.append(value)
    return terms, params


def _window_burn(src: Source, selection: Selection, provider, auth, column: str, reset, as_of: datetime,
                 used: float) -> float | None:
    """Percent points an hour: from the first reading of this window (the same reset) in the hour
    before `as_of` to the latest one."""
    p = src.param
    match, match_params = _match(p, provider, auth)
    same_window = [f"quota_reset_at = {p}" if column == "quota_used_percent" else f"quota_long_reset_at = {p}"] \
        if reset is not None else []
    where, params = selection.where(p, *match, f"timestamp >= {p}", f"{column} IS NOT NULL", *same_window)
    first = src.one(f"SELECT timestamp, {column} FROM {TABLE}{where} ORDER BY timestamp LIMIT 1",
                    params + match_params + [utc_text(as_of - BURN_WINDOW)] + ([reset] if reset is not None else []))
    start = utc(first[0]) if first else None
    if start is None or first[1] is None:
        return None
    hours = (as_of - start).total_seconds() / 3600
    if hours < 1 / 60:  # under a minute of readings: no pace to speak of
        return None
    return max(0.0, used - float(first[1])) / hours


def _rate_burn(src: Source, selection: Selection, provider, auth, what: str, as_of: datetime) -> float | None:
    """Requests, or tokens, an hour: what this provider and credential used in the hour before `as_of`."""
    p = src.param
    match, match_params = _match(p, provider, auth)
    where, params = selection.where(p, *match, f"timestamp >= {p}", f"timestamp <= {p}")
    bounds = [utc_text(as_of - BURN_WINDOW), utc_text(as_of)]
    if what == "requests":
        row = src.one(f"SELECT count(*) FROM {TABLE}{where}", params + match_params + bounds)
        return float(row[0]) if row and row[0] else None
    high, low = exact_sum_sql("total_tokens")
    row = src.one(f"SELECT {high}, {low} FROM {TABLE}{where}", params + match_params + bounds)
    total = exact_sum(*row) if row else 0
    return float(total) if total else None


def render_quota(rows: list[QuotaRow], now: datetime) -> FitTable:
    columns = [
        Column("provider", [r.provider or "(none)" for r in rows], keep=100, numeric=False, min_width=12),
        Column("credential", [r.auth_mode or "(none)" for r in rows], keep=60, numeric=False),
        Column("limit", [r.limit for r in rows], keep=99, numeric=False),
        Column("used", [fmt.NONE if r.used_percent is None else f"{r.used_percent:.1f} %" for r in rows], keep=95),
        Column("left", [fmt.compact(r.remaining) for r in rows], keep=94),
        Column("resets (UTC)", [fmt.when(r.resets_at_utc) for r in rows], keep=90, numeric=False, min_width=19),
        Column("pace\n/hour", [_pace(r) for r in rows], keep=80),
        Column("runs out", [_runs_out(r, now) for r in rows], keep=85, numeric=False),
        Column("as of (UTC)", [fmt.when(r.as_of_utc) for r in rows], keep=50, numeric=False, min_width=19),
    ]
    return FitTable("Quotas and rate limits (the latest each provider stated)", columns,
                    "pace: over the hour before the latest reading; runs out: at that pace")


def _pace(row: QuotaRow) -> str:
    if row.burn_per_hour is None:
        return fmt.NONE
    return f"{row.burn_per_hour:.1f} %" if row.used_percent is not None else fmt.compact(round(row.burn_per_hour))


def _runs_out(row: QuotaRow, now: datetime) -> str:
    if row.resets_first:
        return "resets first"
    at = utc(row.runs_out_utc)
    if at is None:
        return fmt.NONE
    seconds = (at - now).total_seconds()
    if seconds <= 0:
        return "now"
    if seconds < 3600:
        return f"in {seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"in {seconds / 3600:.1f} h"
    return f"in {seconds / 86400:.1f} days"
