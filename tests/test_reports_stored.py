"""Stored values of any shape (SQLite keeps any type in any column): the report reads what it can,
treats the rest as unknown, and never crashes, overflows or ranks a value it cannot trust. Rows
are written by raw SQL, as anything but the proxy could write them."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3

import pytest
from rich.console import Console

import reports.groups
from reports.cli import main
from tests.test_reports import add_drops, make_db, make_rows, pct, render, run_json
from tests.test_reports_plans import drop_indexes

HUGE = 2**63 - 1
HOSTILE = {  # column -> values no proxy writes, each of them stored in some row
    "timestamp": ["garbage", "", 12345, 1.5, b"\x00\xff", "2026-13-45T99:99:99Z", "[/]", "0999-01-01T00:00:00.000000Z"],
    "success": ["yes", 2, -1, 0.5, b"\x01"],
    "status_code": ["abc", HUGE, -HUGE, 1.5, b"x", 99_999_999_999],
    "response_time_ms": ["abc", -5, HUGE, -HUGE, 1e308, math.inf, -math.inf, 1.5, b"x"],
    "model": [12, 1.5, b"\xff\x00", "[bold]m[/]", "x" * 300, "a\nb"],
    "provider": [12, b"p", ""],
    "host": [3.5, b"h"],
    "origin": [b"o", "[/]"],
    "path": [7, b"/x"],
    "is_streaming": ["maybe", 7, b"s"],
    "prompt_tokens": ["abc", -5, 2**62, HUGE, -HUGE, 1e300, math.inf, 1.5, b"x"],
    "completion_tokens": ["abc", -5, 2**62, 1e300, b"x"],
    "cached_tokens": ["abc", HUGE, -1],
    "reasoning_tokens": [HUGE, "x", b"r"],
    "time_to_first_token_ms": ["abc", -5, HUGE, 1e308, math.inf, b"x", 0.25],
    "tokens_per_second": ["abc", -5.0, 0.0, 1e-300, 1e308, math.inf, b"x"],
    "error_type": [5, b"e", "[/]"],
    "error_message": [5, b"\xff", "x\n" * 1000, "[/]"],
    "cost_usd": ["abc", -1.0, 1e308, math.inf, b"x", HUGE],
}


def store(path: str, column: str, values: list, every: int = 3) -> list[int]:
    """`values` in turn into `column` of every `every`-th row; returns the ids changed."""
    con = sqlite3.connect(path)
    ids = [r[0] for r in con.execute("SELECT id FROM completion_requests ORDER BY id")][::every]
    for row_id, value in zip(ids, values * len(ids)):
        con.execute(f"UPDATE completion_requests SET {column} = ? WHERE id = ?", (value, row_id))
    con.commit()
    con.close()
    return ids


def strict_json(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def report(path: str, *args: str, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["--db", path, *args], console)
    assert code == 0, err.getvalue()
    return console.file.getvalue() + out.getvalue()


@pytest.mark.parametrize("column", list(HOSTILE))
def test_stored_values_of_any_type_never_crash_a_report(tmp_path, monkeypatch, column):
    path = make_db(tmp_path / "m.db", make_rows(90))
    store(path, column, HOSTILE[column])
    text = report(path)
    assert "By model" in text and "Slowest" in text
    assert strict_json(report(path, "--format", "json"))["overview"]["requests"] == 90
    for args in (("--since", "2000-01-01"), ("--group-by", "hour"), ("--group-by", "path"), ("--errors-only",)):
        strict_json(report(path, "--format", "json", *args))
    records = list(csv.DictReader(io.StringIO(report(path, "--format", "csv"))))
    assert sum(int(r["requests"]) for r in records if r["group_by"] == "model") == 90
    monkeypatch.setattr(reports.groups, "IN_MEMORY_MAX_CALLS", 0)  # percentiles by sorted passes
    strict_json(report(path, "--format", "json", "--since", "2000-01-01"))
    drop_indexes(path)  # and without the index runs
    assert strict_json(report(path, "--format", "json"))["overview"]["requests"] == 90


def known(value) -> bool:
    """Written apart from reports.stored: a number from 0 to 2**63 - 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= HUGE


def stored_rows(path: str) -> list[dict]:
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM completion_requests")]
    con.close()
    return rows


def expected_measures(rows: list[dict]) -> dict:
    latency = [r["response_time_ms"] for r in rows if known(r["response_time_ms"])]
    ttft = [r["time_to_first_token_ms"] for r in rows if known(r["time_to_first_token_ms"])]
    tps = [r["tokens_per_second"] for r in rows if known(r["tokens_per_second"])]
    return {
        "latency_ms": {f"p{p}": pct(latency, p) for p in (50, 95, 99)},
        "ttft_ms": {f"p{p}": pct(ttft, p) for p in (50, 95)},
        "output_tokens_per_second": {"p50": pct(tps, 50)},
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows if known(r["prompt_tokens"])),
        "completion_tokens": sum(r["completion_tokens"] for r in rows if known(r["completion_tokens"])),
    }


PATHS = ["index runs", "sorted in memory", "sorted passes"]


def set_path(path: str, how: str, monkeypatch) -> None:
    if how != "index runs":
        drop_indexes(path)
    if how == "sorted passes":
        monkeypatch.setattr(reports.groups, "IN_MEMORY_MAX_CALLS", 0)


@pytest.mark.parametrize("how", PATHS)
def test_unknown_measures_are_left_out_of_percentiles_sums_and_the_slowest_calls(tmp_path, monkeypatch, capsys, how):
    path = make_db(tmp_path / "m.db", make_rows(300, seed=3))
    for column in ("response_time_ms", "time_to_first_token_ms", "tokens_per_second", "prompt_tokens", "completion_tokens"):
        store(path, column, ["abc", -5, 1e308, math.inf, b"x", -HUGE], every=7)
    set_path(path, how, monkeypatch)
    rows = stored_rows(path)
    out = run_json(path, capsys=capsys)
    for got in out["groups"][0]["rows"]:
        mine = [r for r in rows if r["model"] == got["key"]["model"]]
        want = expected_measures(mine)
        assert {k: got[k] for k in want} == want, got["key"]
    fastest_first = sorted((r for r in rows if known(r["response_time_ms"])), key=lambda r: (r["response_time_ms"], r["timestamp"]))
    assert [c["response_time_ms"] for c in out["slowest"]] == [r["response_time_ms"] for r in fastest_first[::-1][:10]]


def test_a_timestamp_that_is_not_a_time_is_counted_but_in_no_time_range_and_no_bucket(tmp_path, capsys):
    rows = make_rows(60)
    path = make_db(tmp_path / "m.db", rows)
    changed = store(path, "timestamp", ["garbage", "", 12345, b"\x00\xff", "[/]"], every=6)
    readable = sorted(r["timestamp"] for i, r in enumerate(rows) if i not in {c - 1 for c in changed})
    out = run_json(path, capsys=capsys)
    assert out["overview"]["requests"] == 60
    assert (out["overview"]["first_utc"], out["overview"]["last_utc"]) == (readable[0], readable[-1])
    assert out["timeline"]["requests_without_time"] == len(changed)
    assert sum(b["requests"] for b in out["timeline"]["buckets"]) == 60 - len(changed)
    for args in (("--since", "2000-01-01"), ("--until", "9999-01-01")):
        assert run_json(path, *args, capsys=capsys)["overview"]["requests"] == 60 - len(changed)
    hours = run_json(path, "--group-by", "hour", capsys=capsys)["groups"][0]["rows"]
    assert [r["requests"] for r in hours if r["key"]["hour"] is None] == [len(changed)]
    assert "(no time)" in render(path, group_by="hour")
    text = render(path)
    assert f"{len(changed)} call(s) in no day: their stored timestamp is not a time" in text


def test_only_timestamps_that_are_not_times_leave_the_time_unknown(tmp_path, capsys):
    path = make_db(tmp_path / "m.db", make_rows(5))
    store(path, "timestamp", ["garbage"], every=1)
    out = run_json(path, capsys=capsys)
    assert out["overview"]["requests"] == 5
    assert out["overview"]["first_utc"] is None and out["overview"]["span_seconds"] is None
    assert out["timeline"] == {"bucket": "minute", "buckets": [], "requests_without_time": 5, "empty_buckets_left_out": False,
                               "in_flight": {"peak": 0, "p95": 0, "calls_left_out": 0, "by_model": []}}  # none has a time
    assert all(c["timestamp_utc"] is None for c in out["slowest"])
    assert all(k["last_seen_utc"] is None for k in out["errors"]["kinds"])


def test_a_call_stored_in_year_1_lists_only_the_days_with_calls(tmp_path, capsys):
    rows = make_rows(40)
    rows[0]["timestamp"] = "0001-01-01T00:00:00.000000Z"  # 740,000 days before the others
    path = make_db(tmp_path / "m.db", rows)
    timeline = run_json(path, capsys=capsys)["timeline"]
    assert timeline["empty_buckets_left_out"] is True and timeline["requests_without_time"] == 0
    # alone all that day: open once, and idle for far more than 5% of it
    assert timeline["buckets"][0] == {"start_utc": "0001-01-01T00:00:00Z", "requests": 1, "errors": int(not rows[0]["success"]),
                                      "in_flight_peak": 1, "in_flight_p95": 0}
    assert len(timeline["buckets"]) == 1 + len({r["timestamp"][:10] for r in rows[1:]})
    assert "only the days with calls: more than 1,000 from the first to the last" in render(path)


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000000Z"])
def test_calls_at_the_ends_of_the_calendar_are_in_the_timeline(tmp_path, capsys, moment):
    rows = make_rows(3)
    for row in rows:
        row["timestamp"] = moment
    path = make_db(tmp_path / "m.db", rows)
    timeline = run_json(path, capsys=capsys)["timeline"]
    # All three start at once; in year 1 they are open from 00:00:00 to the end of the longest
    # (p95 is the most open for 95% of that time); in year 9999 the minute ends a microsecond later.
    shortest, middle, longest = sorted(r["response_time_ms"] for r in rows)
    p95 = 1 if longest - middle >= 0.95 * longest else 2 if longest - shortest >= 0.95 * longest else 3
    assert timeline["buckets"] == [{"start_utc": moment[:16] + ":00Z", "requests": 3, "errors": sum(not r["success"] for r in rows),
                                    "in_flight_peak": 3, "in_flight_p95": p95 if moment.startswith("0001") else 3}]


def test_text_that_is_not_utf8_is_read_with_replacement_characters(tmp_path, capsys):
    rows = make_rows(80)
    path = make_db(tmp_path / "m.db", rows)
    con = sqlite3.connect(path)
    con.execute("UPDATE completion_requests SET model = CAST(X'6D6FFF' AS TEXT), error_message = CAST(X'FFFE' AS TEXT) WHERE id % 4 = 0")
    con.commit()
    con.close()
    out = run_json(path, capsys=capsys)
    [group] = [r for r in out["groups"][0]["rows"] if r["key"]["model"] == "mo\ufffd"]
    latencies = [r["response_time_ms"] for i, r in enumerate(rows, start=1) if i % 4 == 0]
    assert group["requests"] == len(latencies)
    assert group["latency_ms"] == {f"p{p}": pct(latencies, p) for p in (50, 95, 99)}
    assert "mo\ufffd" in render(path)


def test_a_blob_in_a_text_column_reads_as_hex(tmp_path, capsys):
    path = make_db(tmp_path / "m.db", make_rows(20))
    changed = store(path, "model", [b"hi"], every=2)
    out = run_json(path, capsys=capsys)
    assert {r["key"]["model"]: r["requests"] for r in out["groups"][0]["rows"]}["X'6869'"] == len(changed)


def test_markup_in_stored_text_prints_literally(tmp_path):
    path = make_db(tmp_path / "m.db", make_rows(30))
    store(path, "origin", ["[/]"], every=2)
    add_drops(path, [("2026-11-01T05:00:00.000000Z", "2026-11-01T05:00:01.000000Z", 3, "[/]")])
    text = render(path, width=200)
    assert "never stored: [/] 3" in text and "[/]" in text.split("By origin")[1]


# -- sums that do not fit 64 bits ---------------------------------------------------------------


@pytest.mark.parametrize("how", PATHS)
def test_two_calls_of_2_62_prompt_tokens_sum_exactly_in_every_section(tmp_path, monkeypatch, capsys, how):
    rows = make_rows(50)
    for row in rows[:2]:  # one combination of every key: SQLite sums them in one sum()
        row.update(model="big", provider="openai", host="openai.test", origin="billing-job", prompt_tokens=2**62)
    path = make_db(tmp_path / "m.db", rows)
    set_path(path, how, monkeypatch)
    whole = 2**63 + sum(r["prompt_tokens"] for r in rows[2:])
    out = run_json(path, capsys=capsys)
    assert out["overview"]["prompt_tokens"] == whole
    assert {r["key"]["model"]: r["prompt_tokens"] for r in out["groups"][0]["rows"]}["big"] == 2**63
    for table in out["groups"]:
        assert sum(r["prompt_tokens"] for r in table["rows"]) == whole
    assert f"tokens in {whole:,}" in render(path)
    records = list(csv.DictReader(io.StringIO(report(path, "--format", "csv"))))
    assert [int(r["prompt_tokens"]) for r in records if r["model"] == "big"] == [2**63]


def test_every_token_count_at_sqlites_largest_integer_sums_exactly(tmp_path, capsys):
    rows = make_rows(10)
    for row in rows:
        row.update(prompt_tokens=HUGE, completion_tokens=HUGE, cached_tokens=HUGE, reasoning_tokens=HUGE)
    path = make_db(tmp_path / "m.db", rows)
    overview = run_json(path, capsys=capsys)["overview"]
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
        assert overview[name] == 10 * HUGE, name


def test_dropped_row_counts_past_64_bits_sum_exactly(tmp_path, capsys):
    path = make_db(tmp_path / "m.db", make_rows(10))
    add_drops(path, [("2026-11-01T05:00:00.000000Z", "2026-11-01T05:00:01.000000Z", 2**62, "queue_full")] * 2
              + [("2026-11-01T06:00:00.000000Z", "2026-11-01T06:00:01.000000Z", -5, "bad_row"),
                 ("garbage", b"\xff", "many", "bad_row")])
    dropped = run_json(path, capsys=capsys)["overview"]["dropped_rows"]
    assert dropped == {
        "row_count": 2**63, "first_dropped_utc": "2026-11-01T05:00:00.000000Z", "last_dropped_utc": "2026-11-01T06:00:01.000000Z",
        "by_reason": [{"reason": "queue_full", "row_count": 2**63}, {"reason": "bad_row", "row_count": 0}],
    }
