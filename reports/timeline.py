"""Requests and errors per time bucket (minute, hour or day, chosen from the span), as bars."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from .selection import TABLE, Selection
from .source import Source

# bucket name -> (characters of `timestamp` that name it, its length, strftime of that prefix)
BUCKETS = {
    "minute": (16, timedelta(minutes=1), "%Y-%m-%dT%H:%M"),
    "hour": (13, timedelta(hours=1), "%Y-%m-%dT%H"),
    "day": (10, timedelta(days=1), "%Y-%m-%d"),
}
_SUFFIX = {"minute": ":00Z", "hour": ":00:00Z", "day": "T00:00:00Z"}


@dataclass
class Bucket:
    start_utc: str
    requests: int
    errors: int


@dataclass
class Timeline:
    bucket: str  # minute, hour or day
    buckets: list[Bucket]  # every bucket from the first call's to the last's, empty ones included

    def as_dict(self) -> dict:
        return {"bucket": self.bucket, "buckets": [asdict(b) for b in self.buckets]}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(f"Timeline (per {self.bucket}; █ calls, ░ errors)", style="italic")
        if not self.buckets:
            return
        labels = [_label(self.bucket, b.start_utc) for b in self.buckets]
        counts = [f"{b.requests:,}" for b in self.buckets]
        errors = [f"{b.errors:,} err" if b.errors else "" for b in self.buckets]
        widths = [max(map(len, column)) for column in (labels, counts, errors)]
        bar_width = max(1, options.max_width - sum(widths) - 6)
        peak = max(b.requests for b in self.buckets) or 1
        for bucket, label, n, err in zip(self.buckets, labels, counts, errors):
            line = Text(f"{label:<{widths[0]}}  ")
            line.append_text(_bar(bucket, peak, bar_width))
            line.append(f"  {n:>{widths[1]}}  {err:<{widths[2]}}".rstrip())
            yield line


def choose_bucket(span_seconds: float) -> str:
    if span_seconds <= 3600:
        return "minute"
    if span_seconds <= 2 * 86400:
        return "hour"
    return "day"


def load_timeline(src: Source, selection: Selection, first_utc: str | None, last_utc: str | None, span_seconds: float) -> Timeline:
    bucket = choose_bucket(span_seconds)
    if first_utc is None or last_utc is None:
        return Timeline(bucket, [])
    length, step, pattern = BUCKETS[bucket]
    where, params = selection.where(src.param, "NOT success")
    errors = {
        prefix: int(n)
        for prefix, n in src.rows(
            f"SELECT substr(timestamp, 1, {length}), count(*) FROM {TABLE}{where} GROUP BY substr(timestamp, 1, {length})",
            params,
        )
    }
    # Calls per bucket as range counts: the timestamp index answers each without reading rows.
    where, params = selection.where(src.param, f"timestamp >= {src.param}", f"timestamp < {src.param}")
    count_sql = f"SELECT count(*) FROM {TABLE}{where}"
    buckets = []
    moment = datetime.strptime(first_utc[:length], pattern).replace(tzinfo=UTC)
    end = last_utc[:length]
    while (prefix := moment.strftime(pattern)) <= end:
        following = (moment + step).strftime(pattern)
        n = int(src.one(count_sql, [*params, prefix, following])[0])
        buckets.append(Bucket(prefix + _SUFFIX[bucket], n, errors.get(prefix, 0)))
        moment += step
    return Timeline(bucket, buckets)


def _label(bucket: str, start_utc: str) -> str:
    if bucket == "day":
        return start_utc[:10]
    return start_utc[:16].replace("T", " ")


def _bar(bucket: Bucket, peak: int, width: int) -> Text:
    total = round(bucket.requests / peak * width)
    if bucket.requests and not total:
        total = 1  # any call at all is visible
    failed = min(total, max(1 if bucket.errors else 0, round(bucket.errors / peak * width)))
    bar = Text("█" * (total - failed), style="green")
    bar.append("░" * failed, style="red")
    bar.append(" " * (width - total))
    return bar
