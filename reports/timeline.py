"""Requests and errors per time bucket (minute, hour or day, chosen from the span), as bars, and
the calls in flight at once (`reports.in_flight`) per bucket and per model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from .fmt import printable
from .in_flight import MAX_SWEPT_CALLS, InFlight, ModelInFlight, load_sweep, micros
from .layout import Column, FitTable
from .selection import TABLE, Selection
from .source import Source
from .stored import time_like

# bucket name -> (characters of `timestamp` that name it, its length, strftime of that prefix)
BUCKETS = {
    "minute": (16, timedelta(minutes=1), "%Y-%m-%dT%H:%M"),
    "hour": (13, timedelta(hours=1), "%Y-%m-%dT%H"),
    "day": (10, timedelta(days=1), "%Y-%m-%d"),
}
_SUFFIX = {"minute": ":00Z", "hour": ":00:00Z", "day": "T00:00:00Z"}
# Up to this many buckets from the first call's to the last's, every one is listed, empty or not;
# beyond, only those with calls (one stray call stored in year 1 would make 740,000 days).
MAX_BUCKETS = 1_000


@dataclass
class Bucket:
    start_utc: str
    requests: int
    errors: int
    in_flight_peak: int | None = None  # the most calls open at once in the bucket; None: not counted
    in_flight_p95: int | None = None  # time-weighted (reports.in_flight)


@dataclass
class Timeline:
    bucket: str  # minute, hour or day
    buckets: list[Bucket]  # every bucket from the first call's to the last's, empty ones included
    requests_without_time: int = 0  # calls in no bucket: their stored timestamp is not a time
    empty_buckets_left_out: bool = False  # more than MAX_BUCKETS: only buckets with calls listed
    # over the whole span; None: not counted (more than MAX_SWEPT_CALLS calls)
    in_flight: InFlight | None = field(default_factory=InFlight)
    in_flight_by_model: list[ModelInFlight] = field(default_factory=list)  # most at once first
    in_flight_calls_left_out: int = 0  # calls of unknown latency: no end, not counted in flight

    def as_dict(self) -> dict:
        return {
            "bucket": self.bucket, "buckets": [asdict(b) for b in self.buckets],
            "requests_without_time": self.requests_without_time, "empty_buckets_left_out": self.empty_buckets_left_out,
            "in_flight": None if self.in_flight is None else {
                **asdict(self.in_flight), "calls_left_out": self.in_flight_calls_left_out,
                "by_model": [asdict(m) for m in self.in_flight_by_model],
            },
        }

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(f"Timeline (per {self.bucket}; █ calls, ░ errors; peak: most calls in flight at once)", style="italic")
        if self.empty_buckets_left_out:
            yield Text(f"only the {self.bucket}s with calls: more than {MAX_BUCKETS:,} from the first to the last", style="italic")
        if self.requests_without_time:
            yield Text(f"{self.requests_without_time:,} call(s) in no {self.bucket}: their stored timestamp is not a time", style="italic")
        if not self.buckets:
            return
        labels = [_label(self.bucket, b.start_utc) for b in self.buckets]
        counts = [f"{b.requests:,}" for b in self.buckets]
        errors = [f"{b.errors:,} err" if b.errors else "" for b in self.buckets]
        peaks = [f"peak {b.in_flight_peak:,}" if b.in_flight_peak else "" for b in self.buckets]
        widths = [max(map(len, column)) for column in (labels, counts, errors, peaks)]
        bar_width = max(1, options.max_width - sum(widths) - 8)
        most = max(b.requests for b in self.buckets) or 1
        for bucket, label, n, err, peak in zip(self.buckets, labels, counts, errors, peaks):
            line = Text(f"{label:<{widths[0]}}  ")
            line.append_text(_bar(bucket, most, bar_width))
            line.append(f"  {n:>{widths[1]}}  {err:<{widths[2]}}  {peak:>{widths[3]}}".rstrip())
            yield line
        if self.in_flight is None:
            yield Text(f"Calls in flight: not counted over more than {MAX_SWEPT_CALLS:,} calls; narrow the range "
                       "with --since/--until", style="italic")
        elif self.in_flight.peak:
            yield Text("")
            yield from self._by_model(self.in_flight)

    def _by_model(self, everything: InFlight) -> RenderResult:
        note = ("Calls in flight at once, by model (peak; p95: the number open for 95% of the time from the "
                "first call's start to the last one's end)")
        if self.in_flight_calls_left_out:
            note += f"; {self.in_flight_calls_left_out:,} call(s) of unknown latency left out"
        yield Text(note, style="italic")
        rows = [("(all)", everything)] + [(m.model, m) for m in self.in_flight_by_model]
        yield FitTable("", [
            Column("model", [printable("(none)" if m is None else m) for m, _ in rows], keep=100, numeric=False, min_width=20),
            Column("peak", [f"{n.peak:,}" for _, n in rows], keep=90),
            Column("p95", [f"{n.p95:,}" for _, n in rows], keep=80),
        ])


def choose_bucket(span_seconds: float | None) -> str:
    if span_seconds is None or span_seconds <= 3600:
        return "minute"
    if span_seconds <= 2 * 86400:
        return "hour"
    return "day"


def load_timeline(
    src: Source, selection: Selection, first_utc: str | None, last_utc: str | None, span_seconds: float | None, requests: int,
    bucket: str | None = None,
) -> Timeline:
    """`first_utc` and `last_utc`: the first and last call's time in the row format (the
    overview's), None when no call's timestamp is a time; `requests`: the calls selected;
    `bucket`: one of BUCKETS, else chosen from the span (`choose_bucket`)."""
    bucket = bucket or choose_bucket(span_seconds)
    if first_utc is None or last_utc is None:
        return Timeline(bucket, [], requests)
    length, step, pattern = BUCKETS[bucket]
    start, end = _start(first_utc[:length], pattern), _start(last_utc[:length], pattern)
    if start is None or end is None:
        return Timeline(bucket, [], requests)
    errors = _counts(src, selection, length, "NOT success")
    too_many = (end - start) // step >= MAX_BUCKETS
    if not too_many:
        buckets = _every_bucket(src, selection, bucket, start, end, errors)
    else:
        found = [(prefix, n) for prefix, n in _counts(src, selection, length).items() if _start(prefix, pattern)]
        buckets = [Bucket(prefix + _SUFFIX[bucket], n, errors.get(prefix, 0)) for prefix, n in sorted(found)]
    placed = sum(b.requests for b in buckets)
    if requests > MAX_SWEPT_CALLS:
        return Timeline(bucket, buckets, requests - placed, too_many, None)
    starts = [micros(b.start_utc) or 0 for b in buckets]  # every listed bucket has a time
    slices = [_bounds(moment, step, pattern) for b in buckets
              if b.requests and (moment := _start(b.start_utc[:length], pattern)) is not None]
    swept = load_sweep(src, selection, slices, step, starts)
    for b, begins in zip(buckets, starts):
        at = swept.buckets.get(begins, InFlight())
        b.in_flight_peak, b.in_flight_p95 = at.peak, at.p95
    return Timeline(bucket, buckets, requests - placed, too_many, swept.overall, swept.by_model, swept.calls_left_out)


def _start(prefix, pattern: str) -> datetime | None:
    """The time a bucket named by `prefix` (the first characters of a timestamp) starts."""
    try:
        return datetime.strptime(prefix, pattern).replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def _counts(src: Source, selection: Selection, length: int, *terms: str) -> dict:
    """Calls per bucket prefix, for those whose timestamp looks like a time."""
    where, params = selection.where(src.param, time_like("timestamp"), *terms)
    prefix = f"substr(timestamp, 1, {length})"
    return {p: int(n) for p, n in src.rows(f"SELECT {prefix}, count(*) FROM {TABLE}{where} GROUP BY {prefix}", params)}


def _every_bucket(src: Source, selection: Selection, bucket: str, start: datetime, end: datetime, errors: dict) -> list[Bucket]:
    """Every bucket from `start` to `end`, by range counts: the timestamp index answers each
    without reading rows. Each count's range is the bucket's within the selection's own: given
    two lower bounds, SQLite may walk the index from the selection's, not the bucket's (168
    hours of a week of a million calls: 8 s, not 0.2 s)."""
    _, step, pattern = BUCKETS[bucket]
    buckets = []
    moment: datetime | None = start
    while moment is not None and moment <= end:
        prefix, bound = _bounds(moment, step, pattern)
        n = _range_count(src, selection, prefix, bound)
        buckets.append(Bucket(prefix + _SUFFIX[bucket], n, errors.get(prefix, 0)))
        moment = None if bound.endswith("~") else moment + step
    return buckets


def _range_count(src: Source, selection: Selection, low: str, high: str) -> int:
    """Selected calls from `low` (inclusive) to `high` (exclusive), bounds in the rows' text form
    (a prefix sorts before every time it starts)."""
    low = max(low, selection.since_utc) if selection.since_utc is not None else low
    high = min(high, selection.until_utc) if selection.until_utc is not None else high
    if low >= high:
        return 0
    where, params = replace(selection, since_utc=low, until_utc=high).where(src.param)
    return int(src.one(f"SELECT count(*) FROM {TABLE}{where}", params)[0])


def _bounds(moment: datetime, step: timedelta, pattern: str) -> tuple[str, str]:
    """The stored timestamps of the bucket that starts at `moment`: from its prefix (inclusive)
    to the next bucket's (exclusive)."""
    prefix = _prefix(moment, pattern)
    try:
        following = moment + step
    except OverflowError:  # the last bucket of year 9999
        return prefix, prefix + "~"  # "~" sorts after every character of the row format
    return prefix, _prefix(following, pattern)


def _prefix(moment: datetime, pattern: str) -> str:
    """`pattern` (which starts with %Y) of `moment`, the year padded as in the rows' format."""
    return f"{moment.year:04d}" + moment.strftime(pattern[2:])


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
