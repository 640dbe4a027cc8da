"""`python -m reports` on real SQLite files: every section's numbers, in text, JSON and CSV,
checked against values computed here, independently, from the rows the test inserted."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from migrations import upgrade
from reports.cli import main
from reports.report import load_report
from reports.selection import Selection, utc_text
from reports.source import open_source
from storage import open_database

BASE = datetime(2026, 11, 1, tzinfo=UTC)
COLUMNS = (
    "timestamp", "success", "status_code", "response_time_ms", "model", "provider", "host", "origin", "path",
    "is_streaming", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
    "time_to_first_token_ms", "tokens_per_second", "error_type", "error_message", "usage_source",
)
MODELS = ("gpt-a", "gpt-b", "claude-[c]", None)  # [c]: rich markup must print literally
ENDPOINTS = (("openai", "openai.test"), ("anthropic", "claude.test"), ("vllm", "127.0.0.1"))
ORIGINS = ("billing-job", "OpenAI/Python", None)
FAILURES = (
    (429, "rate_limit_exceeded", "Rate limit reached for requests"),
    (500, "http_500", "upstream exploded"),
    (None, "connection_refused", None),
)


# -- test data ---------------------------------------------------------------------------------


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_rows(n: int = 240, seed: int = 7, span: timedelta = timedelta(days=3), estimated: bool = False) -> list[dict]:
    """`estimated`: a successful stream without a rate has estimated usage (addon/estimate.py)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ok = rng.random() > 0.12
        streamed = rng.random() < 0.6
        status, error_type, message = (200, None, None) if ok else rng.choice(FAILURES)
        provider, host = rng.choice(ENDPOINTS)
        latency = rng.randint(40, 9000)
        ttft = rng.randint(10, latency) if streamed and ok else None
        tps = round(rng.uniform(5, 150), 3) if ttft is not None and rng.random() > 0.1 else None
        rows.append({
            "timestamp": ts(BASE + span * i / n + timedelta(microseconds=i)),
            "success": ok,
            "status_code": status,
            "response_time_ms": latency,
            "model": rng.choice(MODELS),
            "provider": provider,
            "host": host,
            "origin": rng.choice(ORIGINS),
            "path": rng.choice(("/v1/chat/completions", "/v1/responses")),
            "is_streaming": streamed,
            "prompt_tokens": rng.randint(1, 40),
            "completion_tokens": rng.randint(1, 25) if ok else None,
            "cached_tokens": rng.randint(0, 5),
            "reasoning_tokens": rng.choice((None, 0, 3)),
            "time_to_first_token_ms": ttft,
            "tokens_per_second": tps,
            "error_type": error_type,
            "error_message": message,
            # A stream that reported no usage has estimated counts (addon/estimate.py), no rate.
            "usage_source": "estimated" if estimated and ok and streamed and tps is None else "reported",
        })
    return rows


def make_db(path, rows: list[dict], *, cost: bool | None = True) -> str:
    """A real database: created by storage.open_database, schema by the real migrations.
    cost=True fills cost_usd (adding the column if this build's schema lacks it), cost=False
    drops the column (the schema before it existed), None leaves the schema as it is."""
    db = open_database(str(path))
    upgrade(db)
    db.close()
    con = sqlite3.connect(path)
    has_cost = "cost_usd" in {r[1] for r in con.execute("PRAGMA table_info(completion_requests)")}
    if cost and not has_cost:
        con.execute("ALTER TABLE completion_requests ADD COLUMN cost_usd REAL")
    if cost is False and has_cost:
        con.execute("DROP INDEX IF EXISTS report_calls")  # it covers cost_usd (m005, after the column)
        con.execute("ALTER TABLE completion_requests DROP COLUMN cost_usd")
    for i, row in enumerate(rows):
        if cost:
            row["cost_usd"] = None if not row["success"] or i % 7 == 0 else (row["prompt_tokens"] * 3 + row["completion_tokens"] * 11) / 1e6
    columns = COLUMNS + (("cost_usd",) if cost else ())
    con.executemany(
        f"INSERT INTO completion_requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [[row[c] for c in columns] for row in rows],
    )
    con.commit()
    con.close()
    return str(path)


# -- independent computation -------------------------------------------------------------------


def pct(values, p):
    """Nearest rank: sort, take the ceil(p% * n)-th; written apart from the code under test."""
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1] if ordered else None


def expected_group(rows: list[dict]) -> dict:
    latency = [r["response_time_ms"] for r in rows]
    ttft = [r["time_to_first_token_ms"] for r in rows if r["time_to_first_token_ms"] is not None]
    tps = [r["tokens_per_second"] for r in rows if r["tokens_per_second"] is not None]
    return {
        "requests": len(rows),
        "errors": sum(not r["success"] for r in rows),
        "prompt_tokens": known_sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": known_sum(r["completion_tokens"] for r in rows),
        "cost_usd": known_sum(r.get("cost_usd") for r in rows),
        "unpriced_calls": sum(1 for r in rows if r["success"] and r.get("cost_usd") is None),
        "estimated_calls": sum(r.get("usage_source") == "estimated" for r in rows),
        "latency_ms": {f"p{p}": pct(latency, p) for p in (50, 95, 99)},
        "ttft_ms": {f"p{p}": pct(ttft, p) for p in (50, 95)},
        "time_per_output_token_ms": {"p50": pct([1000 / t for t in tps], 50)},
        "output_tokens_per_second": {"p50": pct(tps, 50)},
        "calls_with": {
            "latency_ms": len(latency), "ttft_ms": len(ttft), "time_per_output_token_ms": len(tps),
            "output_tokens_per_second": len(tps),
            **{name: sum(r.get(name) is not None for r in rows) for name in ("prompt_tokens", "completion_tokens", "cost_usd")},
        },
        "change": None,  # without --compare
    }


def known_sum(values) -> int | float | None:
    """The sum of the values stored; None (unknown) when none was."""
    stored = [v for v in values if v is not None]
    return sum(stored) if stored else None


def grouped(rows: list[dict], dims: tuple[str, ...]) -> dict[tuple, dict]:
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[d] for d in dims)].append(row)
    return {key: expected_group(members) for key, members in groups.items()}


def expected_errors(rows: list[dict]) -> dict[tuple, dict]:
    kinds = defaultdict(list)
    for row in rows:
        if not row["success"]:
            kinds[(row["status_code"], row["error_type"])].append(row)
    return {
        key: {"count": len(m), "last_seen_utc": max(r["timestamp"] for r in m), "sample_message": max(m, key=lambda r: r["timestamp"])["error_message"]}
        for key, m in kinds.items()
    }


def expected_days(rows: list[dict]) -> dict[str, tuple[int, int]]:
    days = defaultdict(lambda: [0, 0])
    for row in rows:
        day = days[row["timestamp"][:10]]
        day[0] += 1
        day[1] += not row["success"]
    return {k: tuple(v) for k, v in days.items()}


def slowest(rows: list[dict], n: int = 10) -> list[dict]:
    return sorted(rows, key=lambda r: (r["response_time_ms"], r["timestamp"]), reverse=True)[:n]


# -- helpers over the output -------------------------------------------------------------------


def render(path: str, width: int = 100, **kwargs) -> str:
    src = open_source(path)
    try:
        report = load_report(src, kwargs.pop("selection", Selection()), **kwargs)
    finally:
        src.close()
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(report)
    return console.file.getvalue()


def run_json(path: str, *args: str, capsys) -> dict:
    assert main(["--db", path, "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def section(text: str, title: str) -> list[str]:
    """The lines of one table, from its title to the next blank-line-free title."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    out = []
    for line in lines[start + 1:]:
        if line.startswith(("By ", "Errors", "Timeline", "Slowest", "No errors")):
            break
        out.append(line)
    return out


def row_cells(lines: list[str], label: tuple[str, ...]) -> list[str]:
    """The cells after `label` on the one line that starts with it."""
    matches = [line.split() for line in lines if line.split()[: len(label)] == list(label)]
    assert len(matches) == 1, (label, lines)
    return matches[0][len(label):]


def label(value) -> str:
    return "(none)" if value is None else value


def ms(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def dec(v) -> str:
    return "-" if v is None else f"{v:,.1f}"


def usd(v) -> str:
    return f"${v:,.2f}" if v >= 1 or v == 0 else f"${v:.4f}"


def cost(group: dict) -> str:
    """As the text report shows a group's cost: ≥ when some successful calls are unpriced, ~ when
    some calls' usage is estimated."""
    if group["cost_usd"] is None:
        return "-"
    return about(group) + ("≥" if group["unpriced_calls"] else "") + usd(group["cost_usd"])


def largest(cell: str, n: int, p: int) -> str:
    """A percentile cell as the text report marks one whose nearest rank is the last of n: over
    so few calls that it is simply their largest value."""
    return cell + ("*" if cell != "-" and math.ceil(p / 100 * n) == n else "")


def about(group: dict) -> str:
    return "~" if group["estimated_calls"] else ""


# -- text --------------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path):
    rows = make_rows()
    return make_db(tmp_path / "metrics.db", rows), rows


def test_text_overview_states_span_counts_tokens_and_cost(database):
    path, rows = database
    text = render(path)
    errors = sum(not r["success"] for r in rows)
    assert f"{rows[0]['timestamp'][:19].replace('T', ' ')} → {rows[-1]['timestamp'][:19].replace('T', ' ')} UTC" in text
    assert f"{len(rows):,} requests · {(len(rows) - errors) / len(rows):.1%} succeeded · {errors:,} errors" in text
    assert f"{sum(r['is_streaming'] for r in rows) / len(rows):.1%} streamed" in text
    assert f"tokens in {sum(r['prompt_tokens'] for r in rows):,} (cached {sum(r['cached_tokens'] for r in rows):,})" in text
    assert f"out {sum(r['completion_tokens'] or 0 for r in rows):,} (reasoning {sum(r['reasoning_tokens'] or 0 for r in rows):,})" in text
    whole = expected_group(rows)
    assert f"cost {cost(whole)} · {whole['unpriced_calls']:,} successful calls unpriced" in text
    assert "~" not in text  # no call's usage is estimated


def test_estimated_usage_is_marked_in_the_overview_the_tables_json_and_csv(tmp_path, capsys):
    rows = make_rows(estimated=True)
    path = make_db(tmp_path / "m.db", rows)
    whole = expected_group(rows)
    assert 0 < whole["estimated_calls"] < len(rows)
    text = render(path)
    assert f"tokens in ~{sum(r['prompt_tokens'] for r in rows):,} (cached" in text
    assert f"out ~{sum(r['completion_tokens'] or 0 for r in rows):,} (reasoning" in text
    assert f"~: {whole['estimated_calls']:,} streamed calls reported no usage; their tokens and cost are estimated" in text
    assert f"cost {cost(whole)} · " in text and cost(whole).startswith("~")
    assert "~: includes estimated usage (streams that reported none: usage_source estimated)" in " ".join(text.split())
    for dims in (("model",), ("provider", "host"), ("origin",)):
        lines = section(text, "By " + "/".join(dims))
        for key, want in grouped(rows, dims).items():
            cells = row_cells(lines, tuple(label(k) for k in key))
            assert cells[-3:] == [f"{about(want)}{want['prompt_tokens']:,}", f"{about(want)}{want['completion_tokens']:,}",
                                  cost(want)], key
    out = run_json(path, capsys=capsys)
    assert out["overview"]["estimated_calls"] == whole["estimated_calls"]
    for table in out["groups"]:
        want = grouped(rows, tuple(table["group_by"]))
        assert {tuple(r["key"].values()): r["estimated_calls"] for r in table["rows"]} == {
            k: v["estimated_calls"] for k, v in want.items()}


@pytest.mark.parametrize("title, dims", [
    ("By model", ("model",)), ("By provider/host", ("provider", "host")), ("By origin", ("origin",)),
])
def test_text_group_tables_match_independent_numbers(database, title, dims):
    path, rows = database
    text = render(path)
    assert "too narrow" not in text  # every column is checked below
    lines = section(text, title)
    members = defaultdict(list)
    for row in rows:
        members[tuple(row[d] for d in dims)].append(row)
    for key, want in grouped(rows, dims).items():
        cells = row_cells(lines, tuple(label(k) for k in key))
        n = {c: sum(r[c] is not None for r in members[key]) for c in ("response_time_ms", "time_to_first_token_ms", "tokens_per_second")}
        assert cells == [
            f"{want['requests']:,}", f"{want['errors']:,}",
            *(largest(ms(want["latency_ms"][p]), n["response_time_ms"], int(p[1:])) for p in ("p50", "p95", "p99")),
            *(largest(ms(want["ttft_ms"][p]), n["time_to_first_token_ms"], int(p[1:])) for p in ("p50", "p95")),
            largest(dec(want["time_per_output_token_ms"]["p50"]), n["tokens_per_second"], 50),
            largest(dec(want["output_tokens_per_second"]["p50"]), n["tokens_per_second"], 50),
            f"{about(want)}{want['prompt_tokens']:,}", f"{about(want)}{want['completion_tokens']:,}", cost(want),
        ], key


def test_text_errors_timeline_and_slowest_match_independent_numbers(database):
    path, rows = database
    text = render(path)
    errors = section(text, "Errors")
    for (code, kind), want in expected_errors(rows).items():
        cells = row_cells(errors, ("-" if code is None else str(code), kind))
        assert cells[:3] == [f"{want['count']:,}", *want["last_seen_utc"][:19].split("T")]
        assert " ".join(cells[3:]) == (want["sample_message"] or "-")
    timeline = section(text, "Timeline (per day")
    for day, (n, failed) in expected_days(rows).items():
        [line] = [line for line in timeline if line.startswith(day)]
        cells = line.split()
        assert cells[-2] == "peak"  # calls in flight at once: tests/test_reports_in_flight.py
        cells = cells[:-2]
        assert cells[-3:] == [f"{n:,}", str(failed), "err"] if failed else cells[-1] == f"{n:,}"
    slow = section(text, "Slowest 10 calls")
    data_lines = [line for line in slow if line[:1] == " " and line.split()[0].replace(",", "").isdigit()]
    for line, row in zip(data_lines, slowest(rows), strict=True):
        assert line.split()[:4] == [f"{row['response_time_ms']:,}", *row["timestamp"][:19].split("T"), label(row["model"])]


def test_text_has_no_control_codes_and_prints_markup_literally(database):
    text = render(database[0])
    assert "\x1b" not in text
    assert "claude-[c]" in text


@pytest.mark.parametrize("width", [40, 60, 80])
def test_narrow_terminals_get_lines_that_fit_and_a_note_of_what_is_hidden(database, width):
    text = render(database[0], width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "too narrow for:" in text
    assert "gpt-a" in text  # keys are never the column given up


# -- JSON and CSV ------------------------------------------------------------------------------


def test_json_every_section_matches_independent_numbers(database, capsys):
    path, rows = database
    out = run_json(path, capsys=capsys)
    assert out["report_version"] == 1 and out["cost_known"] is True
    assert "nearest rank" in out["percentile_method"]
    overview = out["overview"]
    whole = expected_group(rows)
    assert overview["requests"] == len(rows) and overview["errors"] == whole["errors"]
    assert overview["successes"] == len(rows) - whole["errors"]
    assert overview["streamed"] == sum(r["is_streaming"] for r in rows)
    assert overview["first_utc"] == rows[0]["timestamp"] and overview["last_utc"] == rows[-1]["timestamp"]
    assert overview["prompt_tokens"] == whole["prompt_tokens"] and overview["completion_tokens"] == whole["completion_tokens"]
    assert overview["cached_tokens"] == sum(r["cached_tokens"] for r in rows)
    assert overview["reasoning_tokens"] == sum(r["reasoning_tokens"] or 0 for r in rows)
    assert overview["cost_usd"] == pytest.approx(whole["cost_usd"]) and overview["unpriced_calls"] == whole["unpriced_calls"]
    assert [g["group_by"] for g in out["groups"]] == [["model"], ["provider", "host"], ["origin"]]
    for table in out["groups"]:
        want = grouped(rows, tuple(table["group_by"]))
        assert len(table["rows"]) == len(want)
        for got in table["rows"]:
            expected = want[tuple(got["key"][d] for d in table["group_by"])]
            assert got.pop("cost_usd") == pytest.approx(expected.pop("cost_usd"))
            assert {k: v for k, v in got.items() if k != "key"} == expected
        assert [r["requests"] for r in table["rows"]] == sorted((r["requests"] for r in table["rows"]), reverse=True)
    kinds = expected_errors(rows)
    assert out["errors"]["total_errors"] == whole["errors"] and out["errors"]["total_kinds"] == len(kinds)
    for got in out["errors"]["kinds"]:
        assert {k: got[k] for k in ("count", "last_seen_utc", "sample_message")} == kinds[(got["status_code"], got["error_type"])]
    assert out["timeline"]["bucket"] == "day"
    assert {b["start_utc"][:10]: (b["requests"], b["errors"]) for b in out["timeline"]["buckets"]} == expected_days(rows)
    assert [(c["timestamp_utc"], c["response_time_ms"], c["model"], c["origin"]) for c in out["slowest"]] == [
        (r["timestamp"], r["response_time_ms"], r["model"], r["origin"]) for r in slowest(rows)
    ]


def test_csv_has_one_row_per_group_with_the_json_numbers(database, capsys):
    path, rows = database
    assert main(["--db", path, "--format", "csv"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(records[0]) == [
        "group_by", "model", "provider", "host", "origin", "requests", "errors", "latency_p50_ms", "latency_p95_ms",
        "latency_p99_ms", "ttft_p50_ms", "ttft_p95_ms", "time_per_output_token_p50_ms",
        "output_tokens_per_second_p50", "prompt_tokens", "completion_tokens", "cost_usd", "unpriced_calls",
        "estimated_calls", "calls_with_latency_ms", "calls_with_ttft_ms", "calls_with_output_tokens_per_second",
    ]
    for group_by, dims in (("model", ("model",)), ("provider/host", ("provider", "host")), ("origin", ("origin",))):
        mine = [r for r in records if r["group_by"] == group_by]
        want = grouped(rows, dims)
        assert len(mine) == len(want)
        for record in mine:
            expected = want[tuple(record[d] or None for d in dims)]
            assert int(record["requests"]) == expected["requests"] and int(record["errors"]) == expected["errors"]
            assert [record[f"latency_{p}_ms"] for p in ("p50", "p95", "p99")] == [str(expected["latency_ms"][p]) for p in ("p50", "p95", "p99")]
            assert [record[f"ttft_{p}_ms"] for p in ("p50", "p95")] == [str(expected["ttft_ms"][p]) for p in ("p50", "p95")]
            assert float(record["output_tokens_per_second_p50"]) == expected["output_tokens_per_second"]["p50"]
            assert float(record["time_per_output_token_p50_ms"]) == pytest.approx(expected["time_per_output_token_ms"]["p50"])
            assert int(record["prompt_tokens"]) == expected["prompt_tokens"]
            assert float(record["cost_usd"]) == pytest.approx(expected["cost_usd"])
            assert int(record["unpriced_calls"]) == expected["unpriced_calls"]
            assert int(record["estimated_calls"]) == expected["estimated_calls"]
            assert [int(record[f"calls_with_{n}"]) for n in ("latency_ms", "ttft_ms", "output_tokens_per_second")] == [
                expected["calls_with"][n] for n in ("latency_ms", "ttft_ms", "output_tokens_per_second")]
            if group_by != "model":
                assert record["model"] == ""


@pytest.mark.parametrize("dim, column, key_of", [
    ("path", "path", lambda r: r["path"]),
    ("hour", "hour", lambda r: r["timestamp"][:13] + ":00:00Z"),
    ("day", "day", lambda r: r["timestamp"][:10] + "T00:00:00Z"),
])
def test_group_by_gives_one_table_with_exact_numbers(database, capsys, dim, column, key_of):
    path, rows = database
    out = run_json(path, "--group-by", dim, capsys=capsys)
    [table] = out["groups"]
    assert table["group_by"] == [dim]
    groups = defaultdict(list)
    for row in rows:
        groups[key_of(row)].append(row)
    assert {r["key"][column]: (r["requests"], r["latency_ms"]["p95"]) for r in table["rows"]} == {
        k: (len(m), expected_group(m)["latency_ms"]["p95"]) for k, m in groups.items()
    }
    keys = [r["key"][column] for r in table["rows"]]
    if dim in ("hour", "day"):
        assert keys == sorted(keys)  # time order
    else:
        assert [r["requests"] for r in table["rows"]] == sorted((r["requests"] for r in table["rows"]), reverse=True)


@pytest.mark.parametrize("args, keep", [
    (["--since", "2026-11-02", "--until", "2026-11-03T12:00Z"], lambda r: "2026-11-02" <= r["timestamp"] < "2026-11-03T12:00"),
    (["--model", "gpt-a", "--model", "claude-[c]"], lambda r: r["model"] in ("gpt-a", "claude-[c]")),
    (["--provider", "anthropic"], lambda r: r["provider"] == "anthropic"),
    (["--host", "127.0.0.1", "--origin", "billing-job"], lambda r: r["host"] == "127.0.0.1" and r["origin"] == "billing-job"),
    (["--errors-only"], lambda r: not r["success"]),
])
def test_filters_select_exactly_the_matching_calls(database, capsys, args, keep):
    path, rows = database
    mine = [r for r in rows if keep(r)]
    out = run_json(path, *args, capsys=capsys)
    assert out["overview"]["requests"] == len(mine)
    assert out["overview"]["first_utc"] == min(r["timestamp"] for r in mine)
    by_model = {r["key"]["model"]: r for r in out["groups"][0]["rows"]}
    for (model,), want in grouped(mine, ("model",)).items():
        assert by_model[model]["latency_ms"] == want["latency_ms"]
        assert by_model[model]["ttft_ms"] == want["ttft_ms"]
    assert sum(b["requests"] for b in out["timeline"]["buckets"]) == len(mine)


def test_a_filter_that_matches_nothing_says_so(database, capsys):
    path, _ = database
    assert main(["--db", path, "--model", "nope"], Console(file=io.StringIO(), width=100)) == 0
    out = run_json(path, "--model", "nope", capsys=capsys)
    assert out["overview"]["requests"] == 0 and out["groups"] == [] and out["slowest"] == []
    console = Console(file=io.StringIO(), width=100, color_system=None)
    assert main(["--db", path, "--model", "nope"], console) == 0
    assert "No calls match these filters: model nope." in console.file.getvalue()


def test_without_a_cost_column_cost_is_left_out_not_zero(tmp_path, capsys):
    rows = make_rows(60)
    path = make_db(tmp_path / "m.db", rows, cost=False)
    text = render(path).replace(path, "DB")
    assert "cost" not in text and "$" not in text and "unpriced" not in text
    out = run_json(path, capsys=capsys)
    assert out["cost_known"] is False and out["overview"]["cost_usd"] is None
    assert all(r["cost_usd"] is None and r["unpriced_calls"] is None for r in out["groups"][0]["rows"])
    assert out["overview"]["requests"] == len(rows)


# -- the documented shape ----------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "report-json.md"


def documented_example() -> dict:
    block = DOC.read_text().split("```json\n", 1)[1].split("```", 1)[0]
    return json.loads(re.sub(r"\s*//[^\n]*", "", block))


def shape(value):
    """Keys all the way down; a list by its first item."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "value"


def test_json_has_exactly_the_shape_docs_report_json_md_documents(database, capsys):
    add_drops(database[0])  # so that every list has an item to compare
    con = sqlite3.connect(database[0])
    con.execute("INSERT INTO completion_requests (timestamp, success, response_time_ms, is_streaming, provider, "
                "auth_mode, quota_used_percent, quota_window_minutes) VALUES (?, 1, 5, 0, 'anthropic', 'oauth', 40, 300)",
                (utc_text(datetime.now(UTC) - timedelta(minutes=1)),))
    con.commit()
    con.close()
    plain = run_json(database[0], capsys=capsys)
    assert plain["compare"] is None and {r["change"] for t in plain["groups"] for r in t["rows"]} == {None}
    out = run_json(database[0], "--since", "2026-11-02", "--compare", capsys=capsys)  # every field set
    documented = documented_example()
    documented["groups"][0]["rows"][0]["key"] = {"model": "value"}  # the example shows provider/host
    assert shape(out) == shape(documented)


def test_csv_header_is_the_documented_one(database, capsys):
    assert main(["--db", database[0], "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header in DOC.read_text()


# -- rows the proxy dropped --------------------------------------------------------------------

DROPS = (  # (first, last, rows, reason)
    ("2026-11-01T05:00:00.000000Z", "2026-11-01T05:00:09.500000Z", 40, "queue_full"),
    ("2026-11-02T07:00:00.000000Z", "2026-11-02T07:00:01.000000Z", 3, "unwritten_at_shutdown"),
    ("2026-11-03T09:00:00.000000Z", "2026-11-03T09:30:00.000000Z", 12, "queue_full"),
)


def add_drops(path: str, drops=DROPS) -> None:
    con = sqlite3.connect(path)
    con.executemany(
        "INSERT INTO dropped_rows (first_dropped_at, last_dropped_at, row_count, reason, hostname, pid) "
        "VALUES (?, ?, ?, ?, 'host-a', 4242)", drops,
    )
    con.commit()
    con.close()


def overview_lines(text: str) -> list[str]:
    return [line.strip("│ ") for line in text.split("╰", 1)[0].splitlines()]


@pytest.mark.parametrize("args, rows, reasons, first, last", [
    ((), 55, {"queue_full": 52, "unwritten_at_shutdown": 3}, DROPS[0][0], DROPS[2][1]),
    (("--since", "2026-11-02", "--until", "2026-11-03"), 3, {"unwritten_at_shutdown": 3}, DROPS[1][0], DROPS[1][1]),
    (("--until", "2026-11-01T05:00:09.5Z"), 0, {}, None, None),  # its last row was dropped at the bound: outside
])
def test_dropped_rows_in_the_time_range_are_in_json_and_the_overview(database, capsys, args, rows, reasons, first, last):
    path, _ = database
    add_drops(path)
    out = run_json(path, *args, capsys=capsys)["overview"]["dropped_rows"]
    assert out == {"row_count": rows, "first_dropped_utc": first, "last_dropped_utc": last,
                   "by_reason": [{"reason": r, "row_count": n} for r, n in reasons.items()]}
    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert main(["--db", path, *args], console) == 0
    text = " ".join(overview_lines(console.file.getvalue()))
    if rows:
        reason_text = ", ".join(f"{r} {n:,}" for r, n in reasons.items())
        assert f"{rows:,} row(s) dropped by the proxy (never stored: {reason_text}) · last at {last[:19].replace('T', ' ')} UTC" in text
    else:
        assert "dropped by the proxy" not in text


def test_without_drops_the_overview_says_nothing_of_them_and_json_counts_zero(database, capsys):
    path, _ = database
    assert "dropped by the proxy" not in render(path)
    assert run_json(path, capsys=capsys)["overview"]["dropped_rows"] == {
        "row_count": 0, "first_dropped_utc": None, "last_dropped_utc": None, "by_reason": []}


def test_drops_ignore_call_filters_and_the_overview_says_so(database, capsys):
    path, _ = database
    add_drops(path)
    assert run_json(path, "--model", "gpt-a", "--errors-only", capsys=capsys)["overview"]["dropped_rows"]["row_count"] == 55
    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert main(["--db", path, "--model", "nope"], console) == 0
    text = " ".join(overview_lines(console.file.getvalue()))
    assert "No calls match these filters: model nope." in text
    assert "55 row(s) dropped by the proxy" in text and "in this time range, whatever the other filters" in text


def test_a_database_holding_only_drops_reports_them(tmp_path, capsys):
    path = make_db(tmp_path / "m.db", [])
    add_drops(path, DROPS[:1])
    out = run_json(path, capsys=capsys)
    assert out["overview"]["requests"] == 0 and out["overview"]["dropped_rows"]["row_count"] == 40
    assert "40 row(s) dropped by the proxy" in render(path)


def test_without_a_dropped_rows_table_drops_are_null_not_zero(database, capsys):
    path, _ = database
    con = sqlite3.connect(path)
    con.execute("DROP TABLE dropped_rows")
    con.commit()
    con.close()
    assert run_json(path, capsys=capsys)["overview"]["dropped_rows"] is None
    assert "dropped by the proxy" not in render(path)


# -- unknown is not zero -----------------------------------------------------------------------


@pytest.fixture
def partly_unknown(tmp_path):
    """gpt-a: priced and reported as usual; local: no usage reported and no price; gpt-b: usage
    reported, some successful calls priced and some not."""
    rows = make_rows(120)
    for row in rows:
        if row["model"] in (None, "claude-[c]"):
            row["model"] = "local"
    path = make_db(tmp_path / "m.db", rows)
    con = sqlite3.connect(path)
    con.execute("UPDATE completion_requests SET prompt_tokens = NULL, completion_tokens = NULL, cached_tokens = NULL, "
                "reasoning_tokens = NULL, cost_usd = NULL WHERE model = 'local'")
    con.execute("UPDATE completion_requests SET cost_usd = 0.5 WHERE model = 'gpt-a' AND success")
    con.execute("UPDATE completion_requests SET cost_usd = CASE WHEN id % 2 THEN 0.25 END WHERE model = 'gpt-b' AND success")
    con.commit()
    con.close()
    return path, rows


def test_a_group_of_unpriced_calls_without_usage_reads_unknown_not_zero(partly_unknown, capsys):
    path, rows = partly_unknown
    out = run_json(path, capsys=capsys)
    local = next(r for r in out["groups"][0]["rows"] if r["key"]["model"] == "local")
    assert (local["prompt_tokens"], local["completion_tokens"], local["cost_usd"]) == (None, None, None)
    assert local["unpriced_calls"] == sum(r["model"] == "local" and r["success"] for r in rows)
    cells = row_cells(section(render(path), "By model"), ("local",))
    assert cells[-3:] == ["-", "-", "-"]  # in, out, cost
    assert main(["--db", path, "--format", "csv"]) == 0
    record = next(r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["model"] == "local")
    assert (record["prompt_tokens"], record["completion_tokens"], record["cost_usd"]) == ("", "", "")


def test_a_group_with_some_unpriced_calls_shows_at_least_the_priced_cost_and_how_many_were_not(partly_unknown, capsys):
    path, _ = partly_unknown
    out = run_json(path, capsys=capsys)
    by_model = {r["key"]["model"]: r for r in out["groups"][0]["rows"]}
    con = sqlite3.connect(path)
    priced, unpriced = con.execute(
        "SELECT sum(cost_usd), sum(success AND cost_usd IS NULL) FROM completion_requests WHERE model = 'gpt-b'").fetchone()
    con.close()
    assert unpriced > 0
    assert by_model["gpt-b"]["cost_usd"] == pytest.approx(priced) and by_model["gpt-b"]["unpriced_calls"] == unpriced
    assert by_model["gpt-a"]["unpriced_calls"] == 0
    text = render(path)
    lines = section(text, "By model")
    assert row_cells(lines, ("gpt-b",))[-1] == f"≥{usd(priced)}"
    assert row_cells(lines, ("gpt-a",))[-1] == usd(by_model["gpt-a"]["cost_usd"])  # all priced: no mark
    under_the_last_table = " ".join(section(text, "By origin")[-8:])
    assert "cost ≥$x: the priced calls cost $x, some others are unpriced; -: no call priced" in " ".join(under_the_last_table.split())


def test_an_overview_of_calls_without_usage_or_price_says_unknown(partly_unknown, capsys):
    path, _ = partly_unknown
    out = run_json(path, "--model", "local", capsys=capsys)["overview"]
    assert [out[k] for k in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd")] == [None] * 5
    console = Console(file=io.StringIO(), width=200, color_system=None)
    assert main(["--db", path, "--model", "local"], console) == 0
    text = " ".join(overview_lines(console.file.getvalue()))
    assert "tokens in - (cached -) · out - (reasoning -)" in text
    assert f"cost unknown: no call priced · {out['unpriced_calls']} successful calls unpriced" in text


def test_token_sums_that_fewer_calls_reported_than_succeeded_say_so(partly_unknown, capsys):
    path, rows = partly_unknown
    out = run_json(path, capsys=capsys)
    reported = [r for r in rows if r["model"] != "local"]  # local's calls reported no usage
    succeeded = sum(r["success"] for r in rows)
    assert out["overview"]["calls_with"]["prompt_tokens"] == len(reported)
    assert out["overview"]["calls_with"]["completion_tokens"] == sum(r["success"] for r in reported)
    text = render(path, width=200)
    overview = " ".join(overview_lines(text))
    assert f"tokens in ≥{out['overview']['prompt_tokens']:,} (cached" in overview
    assert (f"≥: only {sum(r['success'] for r in reported):,} calls reported usage, fewer than the {succeeded:,} "
            "that succeeded; the token sums are of those") in overview
    by_provider = section(text, "By provider/host")
    for table in out["groups"]:
        if table["group_by"] != ["provider", "host"]:
            continue
        for row in table["rows"]:
            cells = row_cells(by_provider, tuple(row["key"].values()))
            partial = row["calls_with"]["completion_tokens"] < row["requests"] - row["errors"]
            assert partial == any(r["model"] == "local" and r["provider"] == row["key"]["provider"] and r["success"] for r in rows)
            assert cells[-3].startswith("≥") == partial and cells[-2].startswith("≥") == partial, row["key"]
    assert "≥ before tokens: fewer calls reported them than succeeded; the sum is of those that did" in " ".join(text.split())


def test_percentiles_over_few_calls_are_marked_and_explained_once(database):
    text = render(database[0])
    assert " ".join(text.split()).count("*: a percentile over so few calls that it is their largest value") == 1
    marked = [line for line in section(text, "By model") if "*" in line]
    assert marked  # 50-odd calls per model: each p99 rests on fewer than 100


# -- client-chosen text never becomes live content ---------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil.test","click")', "+1+1", "-5", "@SUM(A1:A9)", "\tx", "\rx", "\nx", "'quoted"]


def test_csv_writes_client_chosen_formulas_as_text_and_numbers_as_numbers(tmp_path, capsys):
    rows = make_rows(len(FORMULAS) * 3)
    for i, row in enumerate(rows):
        row["model"] = FORMULAS[i % len(FORMULAS)]
        row["origin"] = "=cmd|' /C calc'!A0" if i % 2 else "plain-origin"
    path = make_db(tmp_path / "m.db", rows)
    assert main(["--db", path, "--format", "csv"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    models = [r["model"] for r in records if r["group_by"] == "model"]
    assert sorted(models) == sorted("'" + f for f in FORMULAS)  # each with one ' in front
    origins = {r["origin"] for r in records if r["group_by"] == "origin"}
    assert origins == {"'=cmd|' /C calc'!A0", "plain-origin"}
    for record in records:
        assert record["model"][:1] not in ("=", "+", "-", "@", "\t", "\r", "\n")
        assert int(record["requests"]) > 0 and int(record["prompt_tokens"]) > 0 and float(record["latency_p50_ms"]) > 0


CONTROLS = {"model": "\x1b[2J\x1b[31mevil", "origin": "two\nlines", "provider": "\u202eeulav", "error_message": "bell\x07\x1b]0;title\x07"}


def test_control_characters_in_stored_text_are_shown_escaped_never_sent_to_the_terminal(tmp_path):
    rows = make_rows(40)
    for row in rows:
        row.update({k: v for k, v in CONTROLS.items() if k != "error_message" or not row["success"]})
    path = make_db(tmp_path / "m.db", rows)
    text = render(path, width=200)
    assert not any(c in text for c in "\x1b\x07\u202e")
    for shown in ("\\x1b[2J\\x1b[31mevil", "two\\nlines", "\\u202eeulav", "bell\\x07\\x1b]0;title\\x07"):
        assert shown in text, shown


def test_control_characters_in_a_db_path_are_shown_escaped(tmp_path, capsys):
    folder = tmp_path / "x\x1b[2Jy"
    console = Console(file=io.StringIO(), width=100, color_system=None)
    assert main(["--db", str(folder / "m.db")], console) == 0  # no database there yet
    assert "\x1b" not in console.file.getvalue() and "x\\x1b[2Jy" in console.file.getvalue()
    folder.mkdir()
    with pytest.raises(SystemExit):
        main(["--db", str(folder)])  # a directory: argparse's error line
    err = capsys.readouterr().err
    assert "\x1b" not in err and "x\\x1b[2Jy is a directory" in err


# -- secrets stored by builds that did not redact them ------------------------------------------


def test_keys_in_rows_stored_before_redaction_are_not_reported(tmp_path, capsys):
    rows = make_rows(20)
    rows[3].update(success=False, status_code=401, error_type="invalid_api_key",
                   error_message="Incorrect API key provided: sk-abc***...OLDtail. You can find your API key …")
    rows[4].update(path="/v1/keys/sk-OLDpathKEY0123456789/chat/completions")
    path = make_db(tmp_path / "old.db", rows)
    outputs = [render(path, width=200), render(path, width=200, group_by="path")]
    for args in ((), ("--group-by", "path"), ("--group-by", "path", "--format", "csv")):
        assert main(["--db", path, *(args if "--format" in args else ("--format", "json", *args))]) == 0
        outputs.append(capsys.readouterr().out)
    assert any("Incorrect API key provided: ***" in out for out in outputs)
    assert any("/v1/keys/***/chat/completions" in out for out in outputs)
    for out in outputs:
        assert "OLDtail" not in out and "sk-OLDpathKEY" not in out


def test_a_key_in_stored_text_with_control_characters_is_both_redacted_and_escaped(tmp_path, capsys):
    rows = make_rows(20)
    rows[3].update(success=False, status_code=401, error_type="invalid_api_key",
                   error_message="bad key sk-abc***...OLDtail\x1b[31m\nnext line")
    rows[4].update(path="/v1/keys/sk-OLDpathKEY0123456789/\x1b[2Jchat")
    path = make_db(tmp_path / "old.db", rows)
    texts = [render(path, width=200), render(path, width=200, group_by="path")]
    assert "bad key ***\\x1b[31m" in texts[0] and "/v1/keys/***/\\x1b[2Jchat" in texts[1]
    outputs = list(texts)
    for args in (("--format", "json"), ("--format", "json", "--group-by", "path"), ("--format", "csv", "--group-by", "path")):
        assert main(["--db", path, *args]) == 0
        outputs.append(capsys.readouterr().out)
    for out in outputs:
        assert "OLDtail" not in out and "sk-OLDpathKEY" not in out
    for out in texts:
        assert "\x1b" not in out
