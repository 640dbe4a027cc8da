"""The same report from SQLite and PostgreSQL for the same rows: percentiles included, since
both use nearest rank (PostgreSQL's percentile_disc)."""

from __future__ import annotations

import json
import random

from migrations import upgrade
from reports.cli import main
from storage import CompletionRequest, open_database
from storage.models import DroppedRows


def rows(n: int = 400, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        streaming = rng.random() < 0.5
        ok = rng.random() > 0.15
        out.append({
            "timestamp": f"2026-11-{1 + i % 20:02d}T{i % 24:02d}:{i % 60:02d}:00.000000Z",
            "success": ok, "status_code": 200 if ok else rng.choice([429, 500, None]),
            "response_time_ms": rng.randint(40, 9000), "model": rng.choice(["gpt-a", "gpt-b", "claude-c", None]),
            "request_model": "req", "provider": rng.choice(["openai", "anthropic"]), "host": "api.example",
            "path": "/v1/chat/completions", "origin": rng.choice(["svc-a", "svc-b"]), "is_streaming": streaming,
            "time_to_first_token_ms": rng.randint(20, 900) if streaming else None,
            "time_to_last_token_ms": rng.randint(900, 2000) if streaming else None,
            "tokens_per_second": round(rng.uniform(5, 90), 3) if streaming else None,
            "prompt_tokens": rng.randint(1, 3000), "completion_tokens": rng.randint(1, 800),
            "cached_tokens": rng.randint(0, 100), "reasoning_tokens": rng.randint(0, 50),
            "finish_reason": "stop" if ok else None,
            "error_type": None if ok else rng.choice(["rate_limit_exceeded", "http_500", "upstream_disconnected"]),
            "error_message": None if ok else "something went wrong",
        })
    return out


def load(location: str, data: list[dict]) -> None:
    db = open_database(location)
    upgrade(db)
    with db.atomic():
        CompletionRequest.insert_many(data).execute(db)
    db.close()


def report_json(location: str, capsys) -> dict:
    assert main(["--db", location, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    out.pop("database", None)
    out.pop("generated_at_utc")  # when the report ran: the one field that must differ
    return out


def test_sqlite_and_postgres_give_the_same_report_for_the_same_rows(tmp_path, pg_url, capsys):
    data = rows()
    load(str(tmp_path / "m.db"), data)
    load(pg_url, data)
    lite, pg = report_json(str(tmp_path / "m.db"), capsys), report_json(pg_url, capsys)
    assert json.dumps(lite, sort_keys=True).count('"p50"') > 0
    assert lite == pg


def test_sqlite_and_postgres_report_the_same_dropped_rows(tmp_path, pg_url, capsys):
    drops = [
        {"first_dropped_at": "2026-11-02T00:00:00.000000Z", "last_dropped_at": "2026-11-02T00:00:09.000000Z",
         "row_count": 40, "reason": "queue_full", "hostname": "h", "pid": 1},
        {"first_dropped_at": "2026-11-05T00:00:00.000000Z", "last_dropped_at": "2026-11-05T00:00:00.000000Z",
         "row_count": 2, "reason": "unwritten_at_shutdown", "hostname": "h", "pid": 2},
    ]
    data = rows(50)
    for location in (str(tmp_path / "m.db"), pg_url):
        load(location, data)
        db = open_database(location)
        DroppedRows.insert_many(drops).execute(db)
        db.close()
    lite, pg = report_json(str(tmp_path / "m.db"), capsys), report_json(pg_url, capsys)
    assert lite == pg
    assert pg["overview"]["dropped_rows"] == {
        "row_count": 42, "first_dropped_utc": "2026-11-02T00:00:00.000000Z",
        "last_dropped_utc": "2026-11-05T00:00:00.000000Z",
        "by_reason": [{"reason": "queue_full", "row_count": 40}, {"reason": "unwritten_at_shutdown", "row_count": 2}],
    }
    assert main(["--db", pg_url, "--format", "json", "--since", "2026-11-03"]) == 0
    assert json.loads(capsys.readouterr().out)["overview"]["dropped_rows"]["row_count"] == 2


ODD_VALUES = (  # what each database lets a client store: the same report must come of them
    "UPDATE completion_requests SET prompt_tokens = 2147483647 WHERE id % 3 = 0",  # int4's largest
    "UPDATE completion_requests SET cost_usd = 1e308 WHERE id % 5 = 0",  # PostgreSQL's sum(float8) overflowed
    "UPDATE completion_requests SET tokens_per_second = 'NaN' WHERE id % 7 = 0",  # SQLite keeps the text
    "UPDATE completion_requests SET tokens_per_second = 'Infinity' WHERE id % 7 = 1",
    "UPDATE completion_requests SET response_time_ms = -5 WHERE id % 11 = 0",
    "UPDATE completion_requests SET time_to_first_token_ms = -1 WHERE id % 4 = 0 AND time_to_first_token_ms IS NOT NULL",
    "UPDATE completion_requests SET timestamp = 'garbage' WHERE id % 13 = 0",
)


def test_sqlite_and_postgres_give_the_same_report_of_odd_stored_values(tmp_path, pg_url, capsys):
    data = rows()
    for location in (str(tmp_path / "m.db"), pg_url):
        load(location, data)
        db = open_database(location)
        for sql in ODD_VALUES:
            db.execute_sql(sql.replace("%", "%%") if location == pg_url else sql)  # psycopg's placeholders
        db.close()
    lite, pg = report_json(str(tmp_path / "m.db"), capsys), report_json(pg_url, capsys)
    assert lite == pg
    tokens = [2147483647 if i % 3 == 0 else r["prompt_tokens"] for i, r in enumerate(data, start=1)]
    assert pg["overview"]["prompt_tokens"] == sum(tokens)
    assert pg["overview"]["requests"] == len(data)
    assert pg["timeline"]["requests_without_time"] == len(data) // 13
    latencies = sorted(r["response_time_ms"] for i, r in enumerate(data, start=1) if i % 11)
    assert pg["slowest"][-1]["response_time_ms"] >= 0 and pg["slowest"][0]["response_time_ms"] == latencies[-1]
