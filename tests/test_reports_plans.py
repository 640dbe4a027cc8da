"""The report's two ways of reading SQLite (sorted passes; walks through m005's index runs) give
the same exact numbers, and the pieces under them: nearest rank, time parsing, filters."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from datetime import UTC, datetime

import pytest

import reports.groups
import reports.runs
from reports.groups import DEFAULT_GROUPINGS, LATENCY, TOKENS_PER_SECOND, TTFT, reads_indexes_only
from reports.indexes import RUN_KEYS, drop_report_indexes
from reports.percentiles import nearest_rank
from reports.report import load_report
from reports.runs import MAX_RUNS_PER_GROUP, SAMPLE_BLOCK, SAMPLE_EVERY, runs_serve_ranks
from reports.selection import Selection, parse_when
from reports.source import open_source
from reports.totals import totals_sql
from tests.test_reports import expected_group, grouped, make_db, make_rows, slowest


def report_dict(path: str, selection: Selection = Selection(), group_by: str | None = None) -> dict:
    src = open_source(path)
    try:
        out = load_report(src, selection, group_by=group_by, now=datetime(2026, 12, 1, tzinfo=UTC)).as_dict()
    finally:
        src.close()
    return _round_costs(out)


def _round_costs(value):
    """Sums of floats read in another order differ in the last bits: compare costs to 1e-12."""
    if isinstance(value, dict):
        return {k: round(v, 12) if k == "cost_usd" and v is not None else _round_costs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round_costs(v) for v in value]
    return value


def drop_indexes(path: str) -> None:
    """The migrated schema without m005's indexes: what the report reads by sorted passes."""
    drop_report_indexes(path)
    con = sqlite3.connect(path)
    try:  # dropped indeed, whatever the helper's IF EXISTS would forgive
        assert not con.execute("SELECT name FROM sqlite_master WHERE name LIKE 'report_%'").fetchall()
    finally:
        con.close()


def index_plan_in_use(path: str) -> bool:
    src = open_source(path)
    try:
        return reads_indexes_only(src, Selection(), DEFAULT_GROUPINGS)
    finally:
        src.close()


def assert_groups_exact(out: dict, rows: list[dict]) -> None:
    for table in out["groups"]:
        want = grouped(rows, tuple(table["group_by"]))
        assert len(table["rows"]) == len(want)
        for got in table["rows"]:
            expected = want[tuple(got["key"][d] for d in table["group_by"])]
            for name in ("requests", "errors", "latency_ms", "ttft_ms", "output_tokens_per_second"):
                assert got[name] == expected[name], (table["group_by"], got["key"], name)
            assert got["time_per_output_token_ms"] == pytest.approx(expected["time_per_output_token_ms"])


@pytest.mark.parametrize("seed", [1, 2])
def test_index_walks_sorted_passes_and_in_memory_sorts_give_identical_reports(tmp_path, monkeypatch, seed):
    rows = make_rows(600, seed=seed)
    path = make_db(tmp_path / "m.db", rows)
    assert index_plan_in_use(path)  # the migrated schema has the indexes the report walks
    walked = report_dict(path)
    drop_indexes(path)
    assert not index_plan_in_use(path)
    in_memory = report_dict(path)
    monkeypatch.setattr(reports.groups, "IN_MEMORY_MAX_CALLS", len(rows) - 1)  # too many: streamed
    assert report_dict(path) == in_memory == walked
    assert_groups_exact(walked, rows)  # and all are right


def many_rows(n: int, seed: int) -> list[dict]:
    """Enough calls per group that ranks are walked to from sampled bounds, not from an end."""
    rows = make_rows(n, seed=seed)
    for row in rows:  # few groups, so each holds thousands of values
        row["origin"] = row["origin"] or "OpenAI/Python"
    return rows


def walks(monkeypatch) -> list:
    """Records every rank walk's plan (the real function still runs)."""
    seen, real = [], reports.runs._walk

    def recording(src, keys, value, plan):
        seen.append(plan)
        return real(src, keys, value, plan)

    monkeypatch.setattr(reports.runs, "_walk", recording)
    return seen


def test_ranks_walked_from_sampled_bounds_are_exact(tmp_path, monkeypatch):
    rows = many_rows(12_000, seed=5)
    path = make_db(tmp_path / "m.db", rows)
    plans = walks(monkeypatch)
    out = report_dict(path)
    bounded = [p for p in plans if p.bound is not None and p.skipped < p.steps]
    assert len(bounded) > len(plans) / 2  # most ranks took the short way
    assert {p.ascending for p in bounded} == {True, False}
    assert_groups_exact(out, rows)
    assert [c["response_time_ms"] for c in out["slowest"]] == [r["response_time_ms"] for r in slowest(rows)]


def test_a_sample_that_misleads_only_costs_time(tmp_path, monkeypatch):
    rows = many_rows(12_000, seed=6)
    for block_start in range(0, len(rows), SAMPLE_EVERY * SAMPLE_BLOCK):  # every sampled row is the slowest
        for row in rows[block_start:block_start + SAMPLE_BLOCK]:
            row["response_time_ms"] = 900_000 + block_start
    path = make_db(tmp_path / "m.db", rows)
    plans = walks(monkeypatch)
    out = report_dict(path)
    misled = [p for p in plans if p.bound is not None and p.skipped >= p.steps]
    assert misled  # bounds past their rank: walked the whole way instead
    assert_groups_exact(out, rows)


def test_a_group_of_more_runs_than_one_merge_takes_is_read_by_a_sorted_pass(tmp_path):
    rows = make_rows(MAX_RUNS_PER_GROUP + 20, seed=8)
    for i, row in enumerate(rows):
        row["model"], row["origin"] = "one-model", f"origin-{i}"  # one model of 520 runs
    path = make_db(tmp_path / "m.db", rows)
    out = report_dict(path, group_by="model")
    assert_groups_exact(out, rows)


def test_ties_everywhere_still_give_the_nearest_rank_value(tmp_path):
    rows = many_rows(3000, seed=3)
    for i, row in enumerate(rows):
        row["response_time_ms"] = (100, 200, 200, 300)[i % 4]
    path = make_db(tmp_path / "m.db", rows)
    walked = report_dict(path)
    drop_indexes(path)
    assert report_dict(path) == walked
    model_rows = walked["groups"][0]["rows"]
    assert {r["key"]["model"]: r["latency_ms"] for r in model_rows} == {k[0]: v["latency_ms"] for k, v in grouped(rows, ("model",)).items()}
    assert expected_group(rows)["latency_ms"] == {"p50": 200, "p95": 300, "p99": 300}


@pytest.mark.parametrize("group_by", ["model", "provider", "origin", "host"])
def test_group_by_one_run_key_walks_the_same_runs_exactly(tmp_path, group_by):
    rows = make_rows(800, seed=9)
    path = make_db(tmp_path / "m.db", rows)
    out = report_dict(path, group_by=group_by)
    assert [t["group_by"] for t in out["groups"]] == [[group_by]]
    assert_groups_exact(out, rows)


def test_filtered_reports_use_sorted_passes_and_stay_exact(tmp_path):
    rows = make_rows(400, seed=4)
    path = make_db(tmp_path / "m.db", rows)
    selection = Selection(since_utc="2026-11-02T00:00:00.000000Z", origins=("billing-job",))
    mine = [r for r in rows if r["timestamp"] >= selection.since_utc and r["origin"] == "billing-job"]
    out = report_dict(path, selection)
    assert out["overview"]["requests"] == len(mine)
    want = grouped(mine, ("model",))
    for got in out["groups"][0]["rows"]:
        assert got["latency_ms"] == want[(got["key"]["model"],)]["latency_ms"]


def test_a_time_range_is_read_through_the_timestamp_index_even_beside_covering_indexes(tmp_path):
    path = make_db(tmp_path / "m.db", make_rows(50))
    src = open_source(path)
    try:
        sql, params = totals_sql(src, Selection(since_utc="2026-11-02"), list(RUN_KEYS))
        plan = " | ".join(row[-1] for row in src.rows("EXPLAIN QUERY PLAN " + sql, params))
        assert "timestamp" in plan and "report_calls" not in plan
        for metric in (LATENCY, TTFT, TOKENS_PER_SECOND):
            assert runs_serve_ranks(src, RUN_KEYS, metric.column)
    finally:
        src.close()


@pytest.mark.parametrize("n, pct, rank", [
    (1, 50, 1), (1, 99, 1), (2, 50, 1), (3, 50, 2), (4, 50, 2), (20, 95, 19), (21, 95, 20),
    (100, 99, 99), (101, 99, 100), (1000, 95, 950), (7, 100, 7),
])
def test_nearest_rank_is_ceil_of_p_times_n(n, pct, rank):
    assert nearest_rank(n, pct) == rank


NOW = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize("text, utc", [
    ("15m", "2026-11-22T13:45:00.000000Z"),
    ("24h", "2026-11-21T14:00:00.000000Z"),
    ("7d", "2026-11-15T14:00:00.000000Z"),
    ("2w", "2026-11-08T14:00:00.000000Z"),
    ("90s", "2026-11-22T13:58:30.000000Z"),
    ("2026-11-20", "2026-11-20T00:00:00.000000Z"),
    ("2026-11-20T09:30Z", "2026-11-20T09:30:00.000000Z"),
    ("2026-11-20T09:30:00+02:00", "2026-11-20T07:30:00.000000Z"),
    ("2026-11-20 09:30", "2026-11-20T09:30:00.000000Z"),
    ("0999-01-01", "0999-01-01T00:00:00.000000Z"),  # padded: "999-…" would sort after "2026-…"
    ("0001-01-01T00:00Z", "0001-01-01T00:00:00.000000Z"),
    ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
])
def test_since_and_until_accept_durations_and_iso_times_in_row_format(text, utc):
    assert parse_when(text, NOW) == utc


@pytest.mark.parametrize("text", ["yesterday", "15", "-3h", "3 days", "2026-13-01", ""])
def test_a_time_that_is_not_one_is_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="15m, 24h, 7d"):
        parse_when(text, NOW)


@pytest.mark.parametrize("text", ["99999999999d", "3000000w", "0001-01-01T00:00+14:00", "9999-12-31T23:59-10:00"])
def test_a_time_before_year_1_or_after_9999_is_refused_as_out_of_range(text):
    with pytest.raises(ValueError, match="out of range: a time must fall between 0001-01-01 and 9999-12-31 UTC"):
        parse_when(text, NOW)


def test_selection_where_clause_is_parametrised_and_portable():
    where, params = Selection(
        since_utc="a", until_utc="b", models=("m1", "m2"), origins=("o",), errors_only=True
    ).where("%s")
    assert where == (
        " WHERE substr(timestamp, 1, 10) LIKE '____-__-__' AND timestamp >= %s AND timestamp < %s AND model IN (%s, %s) AND origin IN (%s)"
        " AND NOT success"
    )
    assert params == ["a", "b", "m1", "m2", "o"]
    assert Selection().where("?") == ("", [])
    assert asdict(Selection(hosts=("h",)))["hosts"] == ("h",)
