"""Calls in flight at once (reports/in_flight.py): peaks and time-weighted p95s per timeline
bucket and per model, on hand-built overlapping calls in real databases, checked against numbers
worked out by hand and against a brute-force count at every millisecond."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

import reports.in_flight
import reports.timeline
from migrations import upgrade
from reports.cli import main
from storage import open_database
from tests.test_reports_agents import make

T0 = datetime(2026, 11, 10, 10, 0, tzinfo=UTC)

# (start in s after T0, latency in ms, model). Worked out in the test below.
CALLS = (
    (0, 10_000, "m1"),   # A [0, 10)
    (2, 4_000, "m1"),    # B [2, 6)
    (4, 8_000, "m2"),    # C [4, 12)
    (6, 1_000, "m2"),    # D [6, 7): starts as B ends, so never open with it
    (30, 0, "m3"),       # H: no time open at all
    (50, 20_000, "m1"),  # E [50, 70): into the next minute
    (65, 5_000, "m2"),   # F [65, 70)
    (65, -1, "m2"),      # G: a stored latency that is no duration is unknown (reports.stored): left out
)


def row(start_s: float, latency_ms, model: str) -> dict:
    return {"timestamp": (T0 + timedelta(seconds=start_s)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "success": 1,
            "status_code": 200, "response_time_ms": latency_ms, "is_streaming": 0, "model": model,
            "provider": "openai", "host": "h", "origin": None}


def report_json(location: str, *args: str, capsys) -> dict:
    assert main(["--db", location, "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_hand_built_overlapping_calls_give_the_worked_out_peaks_and_p95s(tmp_path, capsys):
    path = make(tmp_path / "m.db", [row(*c) for c in CALLS])
    timeline = report_json(path, capsys=capsys)["timeline"]
    # Open calls: [0,2) 1 · [2,4) 2 · [4,6) 3 · [6,7) 3 (A, C, D) · [7,10) 2 · [10,12) 1 · [12,50) 0 ·
    # [50,65) 1 · [65,70) 2. Minute 10:00 (0-60 s): 1 open for 14 s, 2 for 5 s, 3 for 3 s, none for
    # 38 s; 95% of 60 s is 57 s = 38 + 14 + 5, so p95 = 2. Minute 10:01, up to the last end (60-70 s):
    # 1 for 5 s, 2 for 5 s: p95 = 2.
    assert timeline["bucket"] == "minute"
    assert [(b["start_utc"], b["in_flight_peak"], b["in_flight_p95"]) for b in timeline["buckets"]] == [
        ("2026-11-10T10:00:00Z", 3, 2), ("2026-11-10T10:01:00Z", 2, 2),
    ]
    # All 70 s: none 38, 1 for 19, 2 for 10, 3 for 3; 95% is 66.5 s > 38 + 19: p95 = 2.
    # m1 (A, B, E): 1 for 26 s, 2 for 4 s, none 40: 40 + 26 = 66 < 66.5, p95 = 2.
    # m2 (C, D, F): 1 for 12 s, 2 for 1 s, none 57: 57 + 12 = 69, p95 = 1. m3: never open.
    assert timeline["in_flight"] == {
        "peak": 3, "p95": 2, "calls_left_out": 1,
        "by_model": [{"model": "m1", "peak": 2, "p95": 2}, {"model": "m2", "peak": 2, "p95": 1},
                     {"model": "m3", "peak": 0, "p95": 0}],
    }


def test_the_text_timeline_shows_each_buckets_peak_and_a_table_by_model(tmp_path):
    path = make(tmp_path / "m.db", [row(*c) for c in CALLS])
    console = Console(file=io.StringIO(), width=100, color_system=None)
    assert main(["--db", path], console) == 0
    text = console.file.getvalue()
    lines = text.split("Timeline (per minute", 1)[1].splitlines()
    assert lines[1].startswith("2026-11-10 10:00") and lines[1].split()[-2:] == ["peak", "3"]
    assert lines[2].startswith("2026-11-10 10:01") and lines[2].split()[-2:] == ["peak", "2"]
    by_model = text.split("Calls in flight at once, by model", 1)[1]
    assert "1 call(s) of unknown latency left out" in " ".join(by_model.split())
    cells = [line.split() for line in by_model.splitlines()]
    for want in (["(all)", "3", "2"], ["m1", "2", "2"], ["m2", "2", "1"], ["m3", "0", "0"]):
        assert want in cells


def brute_force(calls: list[tuple[int, int, str]], step_ms: int) -> tuple[dict, dict]:
    """Open calls at every millisecond (start and latency in whole ms), then per bucket and per
    model the largest count and the nearest-rank 95th percentile of the counts."""
    first = min(s for s, _, _ in calls)
    last = max(s + latency for s, latency, _ in calls)

    def counts(selected) -> list[int]:
        open_at = [0] * (last - first)
        for s, latency, _ in selected:
            for ms in range(s - first, s - first + latency):
                open_at[ms] += 1
        return open_at

    def peak_p95(values: list[int]) -> tuple[int, int]:
        ordered = sorted(values)
        return ordered[-1], ordered[-(-95 * len(ordered) // 100) - 1]

    everything = counts(calls)
    buckets = {}
    for ms_from in range(first - first % step_ms, last, step_ms):
        part = everything[max(0, ms_from - first):ms_from + step_ms - first]
        buckets[ms_from] = peak_p95(part)
    models = {m: peak_p95(counts([c for c in calls if c[2] == m])) for m in {c[2] for c in calls}}
    return buckets, {"(all)": peak_p95(everything), **models}


def test_random_overlapping_calls_match_a_count_at_every_millisecond(tmp_path, capsys):
    rng = random.Random(5)
    calls = []
    for _ in range(160):
        start = rng.randrange(0, 30 * 60_000, 250)  # whole quarter seconds: starts tie, some on a minute's edge
        calls.append((start, rng.randint(1, 90_000), rng.choice(("a", "b", "c"))))
    calls += [(60_000, 500, "a"), (60_000, 90_000, "b"), (120_000, 1, "c")]  # on a minute's edge, tied
    path = make(tmp_path / "m.db", [row(s / 1000, latency, m) for s, latency, m in calls])
    timeline = report_json(path, capsys=capsys)["timeline"]
    epoch_ms = int(T0.timestamp() * 1000)
    buckets, models = brute_force([(epoch_ms + s, latency, m) for s, latency, m in calls], 60_000)
    got = {int(datetime.fromisoformat(b["start_utc"].replace("Z", "+00:00")).timestamp() * 1000):
           (b["in_flight_peak"], b["in_flight_p95"]) for b in timeline["buckets"]}
    assert got == {k: v for k, v in buckets.items() if k in got} and len(got) == 30
    assert (timeline["in_flight"]["peak"], timeline["in_flight"]["p95"]) == models.pop("(all)")
    assert {m["model"]: (m["peak"], m["p95"]) for m in timeline["in_flight"]["by_model"]} == models


def test_beyond_the_sweeps_limit_calls_in_flight_are_not_counted_and_the_report_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(reports.timeline, "MAX_SWEPT_CALLS", 5)
    path = make(tmp_path / "m.db", [row(*c) for c in CALLS])
    timeline = report_json(path, capsys=capsys)["timeline"]
    assert timeline["in_flight"] is None
    assert {(b["in_flight_peak"], b["in_flight_p95"]) for b in timeline["buckets"]} == {(None, None)}
    console = Console(file=io.StringIO(), width=100, color_system=None)
    assert main(["--db", path], console) == 0
    assert "Calls in flight: not counted over more than 5 calls; narrow the range with --since/--until" in console.file.getvalue()


def test_postgres_counts_the_same_calls_in_flight(pg_url, capsys):
    db = open_database(pg_url)
    upgrade(db)
    for values in (row(*c) for c in CALLS):
        values = {k: (bool(v) if k in ("success", "is_streaming") else v) for k, v in values.items()}
        db.execute_sql(f"INSERT INTO completion_requests ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})",
                       list(values.values()))
    db.close()
    timeline = report_json(pg_url, capsys=capsys)["timeline"]
    assert [(b["in_flight_peak"], b["in_flight_p95"]) for b in timeline["buckets"]] == [(3, 2), (2, 2)]
    assert (timeline["in_flight"]["peak"], timeline["in_flight"]["p95"], timeline["in_flight"]["calls_left_out"]) == (3, 2, 1)


@pytest.mark.parametrize("stored, want", [
    ("2026-11-10T10:00:00.000001Z", 1_794_304_800_000_001),
    ("2026-11-10T12:00:00+02:00", 1_794_304_800_000_000),  # another form of a time: read, not skipped
    ("garbage", None),
])
def test_stored_times_are_read_as_microseconds_since_1970(stored, want):
    assert reports.in_flight.micros(stored) == want
