"""`python -m reports --compare`: each figure of two adjacent windows of one length, checked
against numbers computed here from the rows the test inserted into a real database (SQLite, and
PostgreSQL), in JSON, CSV and text."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from migrations import upgrade
from reports.cli import main
from reports.selection import utc_text
from storage import open_database
from tests.test_reports import BASE, COLUMNS, expected_group, make_db, make_rows, ts

DAY = timedelta(days=1)
# The window asked for is day 2; the one before it, day 1. Rows run from half a day before day 1
# to the end of day 3, so each bound has rows on both sides.
SINCE, UNTIL = BASE + DAY, BASE + 2 * DAY
START = BASE - DAY / 2


def rows_over_two_windows(n: int = 420, seed: int = 3) -> list[dict]:
    rows = make_rows(n, seed=seed)
    for i, row in enumerate(rows):
        row["timestamp"] = ts(START + (3.5 * DAY) * i / n + timedelta(microseconds=i))
        when = START + (3.5 * DAY) * i / n
        if i % 9 == 0:  # a model seen only in the window before, and one only in the window asked for
            if BASE <= when < SINCE:
                row["model"] = "only-then"
            elif SINCE <= when < UNTIL:
                row["model"] = "only-now"
    return rows


def within(rows: list[dict], start: datetime, end: datetime) -> list[dict]:
    return [r for r in rows if ts(start) <= r["timestamp"] < ts(end)]


def figures(rows: list[dict]) -> dict:
    """The compared figures of these calls, computed apart from the report: sums over no calls
    are 0, a rate or percentile of none is unknown."""
    if not rows:
        return {"requests": 0, "error_rate": None, "latency_p50_ms": None, "latency_p95_ms": None,
                "ttft_p50_ms": None, "ttft_p95_ms": None, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    g = expected_group(rows)
    return {
        "requests": g["requests"], "error_rate": g["errors"] / g["requests"],
        "latency_p50_ms": g["latency_ms"]["p50"], "latency_p95_ms": g["latency_ms"]["p95"],
        "ttft_p50_ms": g["ttft_ms"]["p50"], "ttft_p95_ms": g["ttft_ms"]["p95"],
        "prompt_tokens": g["prompt_tokens"], "completion_tokens": g["completion_tokens"], "cost_usd": g["cost_usd"],
    }


def assert_changes(got: dict, now: dict, then: dict) -> None:
    for name, current in now.items():
        previous = then[name]
        c = got[name]
        assert c["current"] == pytest.approx(current) and c["previous"] == pytest.approx(previous), name
        if current is None or previous is None:
            assert c["change"] is None and c["change_ratio"] is None, name  # unknown stays unknown
            continue
        assert c["change"] == pytest.approx(current - previous), name
        assert c["change_ratio"] == (pytest.approx((current - previous) / previous) if previous else None), name


def report_json(path: str, *args: str, capsys) -> dict:
    assert main(["--db", path, "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


WINDOW = ("--since", SINCE.isoformat(), "--until", UNTIL.isoformat())


@pytest.fixture
def windows(tmp_path):
    rows = rows_over_two_windows()
    return make_db(tmp_path / "m.db", rows), rows


def test_json_compares_every_figure_of_the_overview_with_the_window_before(windows, capsys):
    path, rows = windows
    out = report_json(path, *WINDOW, "--compare", capsys=capsys)
    compare = out["compare"]
    assert (compare["previous_since_utc"], compare["previous_until_utc"]) == (utc_text(BASE), utc_text(SINCE))
    now, then = within(rows, SINCE, UNTIL), within(rows, BASE, SINCE)
    assert len(now) > 100 and len(then) > 100 and len(rows) > len(now) + len(then)  # rows beyond both bounds
    assert out["overview"]["requests"] == len(now)
    assert_changes(compare["overview"], figures(now), figures(then))


@pytest.mark.parametrize("dims", [("model",), ("provider", "host"), ("origin",)])
def test_json_compares_each_group_and_marks_new_and_vanished_ones(windows, capsys, dims):
    path, rows = windows
    out = report_json(path, *WINDOW, "--compare", capsys=capsys)
    [table] = [t for t in out["groups"] if tuple(t["group_by"]) == dims]
    now, then = within(rows, SINCE, UNTIL), within(rows, BASE, SINCE)
    keys_now, keys_then = ({tuple(r[d] for d in dims) for r in part} for part in (now, then))
    got = {tuple(r["key"][d] for d in dims): r for r in table["rows"]}
    assert set(got) == keys_now | keys_then
    for key, row in got.items():
        mine = [r for r in now if tuple(r[d] for d in dims) == key]
        before = [r for r in then if tuple(r[d] for d in dims) == key]
        want = "both" if mine and before else "new" if mine else "vanished"
        assert row["change"]["presence"] == want, key
        assert_changes(row["change"], figures(mine), figures(before))
        assert row["requests"] == len(mine)
    if dims == ("model",):
        assert got[("only-now",)]["change"]["presence"] == "new"
        vanished = got[("only-then",)]
        assert vanished["change"]["presence"] == "vanished" and vanished["requests"] == 0
        assert vanished["latency_ms"]["p50"] is None and vanished["prompt_tokens"] == 0
        assert table["rows"][-1] is not None and table["rows"][-1]["key"] == {"model": "only-then"}  # vanished last


def test_since_alone_compares_with_the_same_length_before_it_up_to_now(tmp_path, capsys):
    now = datetime.now(UTC).replace(microsecond=0)
    base = make_rows(6, seed=2)
    offsets = (170, 100, 70, 50, 20, 5)  # minutes ago: --since 1h makes 50, 20 and 5 the window, 100 and 70 the one before
    for row, minutes in zip(base, offsets):
        row["timestamp"] = utc_text(now - timedelta(minutes=minutes))
    path = make_db(tmp_path / "m.db", base)
    out = report_json(path, "--since", "1h", "--compare", capsys=capsys)
    since = datetime.fromisoformat(out["filters"]["since_utc"].replace("Z", "+00:00"))
    before = datetime.fromisoformat(out["compare"]["previous_since_utc"].replace("Z", "+00:00"))
    generated = datetime.fromisoformat(out["generated_at_utc"].replace("Z", "+00:00"))
    assert out["compare"]["previous_until_utc"] == out["filters"]["since_utc"]
    assert since - before == generated - since  # the same length: up to the report's now
    assert out["overview"]["requests"] == 3
    assert_changes(out["compare"]["overview"], figures(base[3:]), figures(base[1:3]))


def test_csv_carries_each_groups_previous_values_and_changes(windows, capsys):
    path, _ = windows
    out = report_json(path, *WINDOW, "--compare", capsys=capsys)
    assert main(["--db", path, "--format", "csv", *WINDOW, "--compare"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    names = ("requests", "error_rate", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms",
             "prompt_tokens", "completion_tokens", "cost_usd")
    assert list(records[0])[-19:] == ["presence", *(c for n in names for c in (f"previous_{n}", f"{n}_change"))]
    rows = [(t["group_by"], r) for t in out["groups"] for r in t["rows"]]
    assert len(records) == len(rows)
    for record, (group_by, row) in zip(records, rows):
        assert record["group_by"] == "/".join(group_by) and record["presence"] == row["change"]["presence"]
        for n in names:
            c = row["change"][n]
            for cell, value in ((record[f"previous_{n}"], c["previous"]), (record[f"{n}_change"], c["change"])):
                assert (cell == "" if value is None else float(cell) == pytest.approx(value)), (n, record)


def test_json_and_csv_compare_only_when_asked(windows, capsys):
    path, _ = windows
    assert report_json(path, *WINDOW, capsys=capsys)["compare"] is None
    assert main(["--db", path, "--format", "csv", *WINDOW]) == 0
    assert "presence" not in capsys.readouterr().out.splitlines()[0]


def render(path: str, *args: str, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    assert main(["--db", path, *args], console) == 0
    return console.file.getvalue()


def pct_text(ratio: float) -> str:
    sign = "+" if ratio > 0 else "−" if ratio < 0 else "±"
    return sign + (f"{abs(ratio):.1%}" if abs(ratio) < 0.1 else f"{abs(ratio):.0%}")


def test_text_compares_by_default_with_since_and_not_with_no_compare(windows):
    path, rows = windows
    now, then = figures(within(rows, SINCE, UNTIL)), figures(within(rows, BASE, SINCE))
    text = render(path, *WINDOW)
    assert f"{now['requests']:,} requests ({pct_text(now['requests'] / then['requests'] - 1)})" in text
    latency = now["latency_p50_ms"] - then["latency_p50_ms"]
    assert f"latency p50 {now['latency_p50_ms']:,} ms ({'+' if latency > 0 else '−'}{abs(latency):,} ms)" in text
    assert f"( ): change against the 24.0 h before, from {BASE:%Y-%m-%d %H:%M:%S} UTC: {then['requests']:,} requests" in text
    model = text.split("By model", 1)[1].split("By provider", 1)[0].splitlines()
    [new] = [i for i, line in enumerate(model) if line.startswith("only-now ")]
    assert model[new + 1].split() == ["new"]
    [gone] = [i for i, line in enumerate(model) if line.startswith("only-then ")]
    assert model[gone].split()[1:3] == ["0", "0"] and model[gone + 1].split()[:2] == ["vanished", "−100%"]
    assert "second line: change against the window before" in text
    plain = render(path, *WINDOW, "--no-compare")
    assert "( ): change" not in plain and "new" not in plain.split() and "latency p50" not in plain


def test_a_group_without_ttft_in_either_window_shows_no_ttft_change(tmp_path):
    rows = make_rows(40, seed=4)
    for i, row in enumerate(rows):
        row["timestamp"] = ts(BASE + 2 * DAY * i / len(rows))
        row.update(model="batch", is_streaming=False, time_to_first_token_ms=None, tokens_per_second=None,
                   success=True, status_code=200, error_type=None, error_message=None, completion_tokens=3)
    path = make_db(tmp_path / "m.db", rows)
    text = render(path, *WINDOW)
    lines = text.split("By model", 1)[1].split("By provider", 1)[0].splitlines()
    [i] = [i for i, line in enumerate(lines) if line.startswith("batch ")]
    row, change = lines[i], lines[i + 1]
    assert row.split()[6:8] == ["-", "-"]  # TTFT p50, p95 unknown
    assert change.split()[:2] == ["±0.0%", "±0.0pp"]  # same calls, no errors
    assert "TTFT p50 - ms · p95 - ms" in text  # in the overview: unknown, with no change shown


@pytest.mark.parametrize("args, says", [
    (("--compare",), "error: --compare needs a window: give --since (and --until, or it ends now)\n"),
    (("--compare", "--until", "2026-11-02"), "error: --compare needs a window: give --since (and --until, or it ends now)\n"),
    (("--compare", "--since", "9999-01-01"), "error: --compare needs a window that has a length: --since "
                                              "(9999-01-01T00:00:00.000000Z) is not before now\n"),
    (("--compare", "--since", "0001-01-02", "--until", "0001-01-05"), "error: --compare: the window before "
                                                                         "0001-01-02T00:00:00.000000Z would start before year 1\n"),
])
def test_compare_without_a_window_to_move_is_one_error_line_and_exit_2(windows, capsys, args, says):
    try:
        code = main(["--db", windows[0], *args], Console(file=io.StringIO()))
    except SystemExit as exc:  # argparse's own check
        code = exc.code
    assert code == 2 and capsys.readouterr().err == says


def test_on_by_default_a_window_that_cannot_be_moved_is_simply_not_compared(windows):
    text = render(windows[0], "--since", "0001-01-02", "--until", "0001-01-05")
    assert "( ): change" not in text


def test_tables_by_hour_are_compared_as_a_whole_not_row_by_row(windows, capsys):
    path, rows = windows
    out = report_json(path, *WINDOW, "--compare", "--group-by", "hour", capsys=capsys)
    assert {r["change"] is None for r in out["groups"][0]["rows"]} == {True}
    assert out["compare"]["overview"]["requests"]["previous"] == len(within(rows, BASE, SINCE))


def test_an_empty_window_is_compared_with_the_one_before(windows, capsys):
    path, rows = windows
    out = report_json(path, "--since", "2026-11-04", "--until", "2026-11-05", "--compare", capsys=capsys)
    assert out["overview"]["requests"] == 0
    then = within(rows, BASE + 2 * DAY, BASE + 3 * DAY)  # the rows end where the window starts
    assert then and out["compare"]["overview"]["requests"]["previous"] == len(then)


def rounded(value):
    """Sums of floats (costs) read in another order differ in the last bits."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return round(value, 12) if isinstance(value, float) else value


def test_sqlite_and_postgres_compare_alike(tmp_path, pg_url, capsys):
    rows = rows_over_two_windows(240, seed=9)
    lite = make_db(tmp_path / "m.db", rows)  # fills cost_usd into the rows
    db = open_database(pg_url)
    upgrade(db)
    columns = (*COLUMNS, "cost_usd")
    for row in rows:
        db.execute_sql(f"INSERT INTO completion_requests ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                       [row[c] for c in columns])
    db.close()
    outs = [report_json(where, *WINDOW, "--compare", capsys=capsys) for where in (lite, pg_url)]
    for out in outs:
        out.pop("database"), out.pop("generated_at_utc")
    assert json.dumps(rounded(outs[0]), sort_keys=True) == json.dumps(rounded(outs[1]), sort_keys=True)
    now, then = within(rows, SINCE, UNTIL), within(rows, BASE, SINCE)
    assert_changes(outs[1]["compare"]["overview"], figures(now), figures(then))


def test_against_a_window_of_no_calls_the_text_says_so_and_marks_no_row(windows, capsys):
    path, rows = windows
    since = START - DAY  # the window before: no row is that early
    text = render(path, "--since", START.isoformat(), "--until", (START + DAY).isoformat())
    assert f"no calls in the 24.0 h before, from {since:%Y-%m-%d %H:%M:%S} UTC to compare with" in text
    assert "second line:" not in text and "new" not in text.split() and "(+" not in text
    out = report_json(path, "--since", START.isoformat(), "--until", (START + DAY).isoformat(), "--compare", capsys=capsys)
    assert out["compare"]["overview"]["requests"] == {"current": len(within(rows, START, START + DAY)), "previous": 0,
                                                       "change": len(within(rows, START, START + DAY)), "change_ratio": None}
    assert {r["change"]["presence"] for t in out["groups"] for r in t["rows"]} == {"new"}


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_compared_tables_fit_narrow_terminals_and_keep_their_second_lines(windows, width):
    text = render(windows[0], *WINDOW, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    model = text.split("By model", 1)[1].split("By provider", 1)[0].splitlines()
    [gone] = [i for i, line in enumerate(model) if line.startswith("only-then")]
    assert model[gone + 1].split()[0] == "vanished"  # the key column is never the one given up
