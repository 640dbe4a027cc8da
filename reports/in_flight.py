"""Calls in flight: how many calls were open at once, per timeline bucket and per model.

A call is open from its start (`timestamp`) to its end (start + `response_time_ms`), a half-open
interval: one that ends as another starts is not in flight with it. A sweep reads the calls in
start order, through the timestamp index a bucket at a time, and keeps only the ends of the calls
still open (a heap), and per bucket and per model how long each number of calls was open: memory
is bounded by the most calls open at once (and, on a server, the rows of one bucket), not by the
rows read. Calls whose latency is unknown
(`reports.stored`) have no end and are left out (counted in `calls_left_out`).

- `peak`: the most calls open at once (for any time at all: an instant is not enough, since two
  calls that only touch are not in flight together).
- `p95`: time-weighted, the smallest number that the calls open stay at or below for 95 % of the
  time from the first selected call's start to the last one's end (idle time counts as 0), within
  the bucket. For a model: over the same span.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .groups import key_value
from .selection import TABLE, Selection
from .source import Source
from .stored import known, utc

# The sweep runs in Python, a few µs per call (`python bench/reports.py`: the default view of a
# million calls would take twice as long): beyond this many selected calls it is not run, and the
# report says so. A time range (--since) brings it within reach.
MAX_SWEPT_CALLS = 250_000
PCT = 95
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)


@dataclass
class InFlight:
    peak: int = 0
    p95: int = 0


@dataclass
class ModelInFlight:
    model: str | None
    peak: int
    p95: int


@dataclass
class Sweep:
    """The numbers the sweep found: per bucket start (µs since 1970), overall and per model."""

    buckets: dict[int, InFlight] = field(default_factory=dict)
    overall: InFlight = field(default_factory=InFlight)
    by_model: list[ModelInFlight] = field(default_factory=list)
    calls_left_out: int = 0  # latency unknown: no end, not counted


def micros(stored) -> int | None:
    """A stored time as µs since 1970 (UTC); None if it is not one."""
    if isinstance(stored, str) and len(stored) == 27 and stored[26] == "Z":  # the row format: no offset to read
        try:
            return (datetime.fromisoformat(stored[:26]) - _NAIVE_EPOCH) // _US
        except ValueError:
            pass
    moment = utc(stored)
    return None if moment is None else (moment - _EPOCH) // _US


class _Open:
    """The calls open in one stream (all calls, or one model's), and how long each number of them
    was open: per bucket (when `step` is given), and in all."""

    def __init__(self, step: int = 0, buckets: Sequence[int] = ()) -> None:
        self.ends: list[int] = []
        self.at = -(2**63)  # µs: everything before it is accounted for (years before 1970 are negative)
        self.step = step
        self.buckets = buckets  # the starts of those to account for, in order
        self.bucket = 0  # the index of the first that may hold `at`: time only moves forward
        self.per_bucket: dict[int, dict[int, int]] = {}  # bucket -> number open -> µs
        self.total: dict[int, int] = {}

    def start(self, moment: int, end: int) -> None:
        ends = self.ends
        if ends and ends[0] <= moment:
            self.advance(moment)
        else:  # nothing ended since the last start: the usual case, kept short (bench/reports.py)
            self._account(moment, len(ends))
        heapq.heappush(ends, end)

    def advance(self, moment: int) -> None:
        ends = self.ends
        while ends and ends[0] <= moment:
            end = heapq.heappop(ends)
            self._account(end, len(ends) + 1)
        self._account(moment, len(ends))

    def _account(self, until: int, level: int) -> None:
        """`level` calls were open from `self.at` to `until`."""
        start = self.at
        if until <= start:
            return
        self.at = until
        if not level:
            return
        total = self.total
        total[level] = total.get(level, 0) + until - start
        if self.buckets:
            self._per_bucket(start, until, level)

    def _per_bucket(self, start: int, until: int, level: int) -> None:
        """Only into the buckets listed: a stored latency of centuries spans billions of minutes."""
        buckets, step, i = self.buckets, self.step, self.bucket
        while i + 1 < len(buckets) and buckets[i + 1] <= start:
            i += 1
        self.bucket = i
        while i < len(buckets) and buckets[i] < until:
            piece = min(until, buckets[i] + step) - max(start, buckets[i])
            if piece > 0:
                times = self.per_bucket.get(buckets[i])
                if times is None:
                    times = self.per_bucket[buckets[i]] = {}
                times[level] = times.get(level, 0) + piece
            i += 1


def in_flight(times: dict[int, int], span: int) -> InFlight:
    """Peak and time-weighted p95 of `times` (number open -> µs) over `span` µs."""
    busy = sum(times.values())
    if not busy or span <= 0:
        return InFlight()
    covered = max(0, span - busy)  # idle: 0 open
    p95 = 0
    for level in sorted(times):
        if covered * 100 >= PCT * span:
            break
        covered += times[level]
        p95 = level
    return InFlight(max(times), p95)


def sweep(rows: Iterator[tuple], step: int, buckets: Sequence[int]) -> Sweep:
    """`rows`: (stored timestamp, latency ms or None, stored model) in start order; `step`: the
    buckets' length and `buckets` their starts, in order (µs)."""
    everything = _Open(step, buckets)
    models: dict[Any, _Open] = {}  # by the model as stored: read as text once, at the end
    first = last = None
    left_out = 0
    for stored, latency, model in rows:
        start = micros(stored)
        if start is None:
            continue
        if latency is None:
            left_out += 1
            continue
        end = start + round(latency * 1000)
        if first is None:
            first = last = end
            first = start
        elif end > last:
            last = end
        everything.start(start, end)
        stream = models.get(model)
        if stream is None:
            stream = models[model] = _Open()
        stream.start(start, end)
    if first is None or last is None:
        return Sweep(calls_left_out=left_out)
    for stream in (everything, *models.values()):
        stream.advance(last)
    found = Sweep(calls_left_out=left_out)
    for bucket, times in everything.per_bucket.items():
        found.buckets[bucket] = in_flight(times, min(last, bucket + step) - max(first, bucket))
    found.overall = in_flight(everything.total, last - first)
    found.by_model = sorted(
        (ModelInFlight(key_value("model", model), *_pair(in_flight(stream.total, last - first)))
         for model, stream in models.items()),
        key=lambda m: (-m.peak, -m.p95, m.model is None, m.model or ""),
    )
    return found


def _pair(numbers: InFlight) -> tuple[int, int]:
    return numbers.peak, numbers.p95


def load_sweep(
    src: Source, selection: Selection, slices: Sequence[tuple[str, str]], step: timedelta, buckets: Sequence[int],
) -> Sweep:
    """`slices`: the stored timestamps to read, [from, to) in order (the timeline's buckets with
    calls); `buckets`: the starts of the timeline's buckets (µs since 1970), in order."""
    return sweep(_starts(src, selection, slices), step // _US, buckets)


def _starts(src: Source, selection: Selection, slices: Sequence[tuple[str, str]]) -> Iterator[tuple]:
    """(timestamp, latency ms or None, model) as stored, of the selected calls, in start order:
    one query per slice of time, each read through the timestamp index and sorted on its own (a
    sort over the whole selection, which a filter on two models needs, would be redone per page
    by LIMIT paging). SQLite hands rows over as they are read; a server's driver holds one slice."""
    p = src.param
    where, params = selection.where(p, f"timestamp >= {p}", f"timestamp < {p}")
    sql = f"SELECT timestamp, {known('response_time_ms')}, model FROM {TABLE}{where} ORDER BY timestamp"
    for lo, hi in slices:
        yield from src.db.execute_sql(sql, [*params, lo, hi])
