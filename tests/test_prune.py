"""Retention (migrations/prune.py, `python -m migrations prune`): old calls deleted in batches, their
daily totals kept and equal to the sums of what was deleted, a verified backup first, a proxy
writing to the same database meanwhile losing nothing."""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from migrations import upgrade
from migrations.prune import cutoff, plan, prune
from storage import open_database
from tests.conftest import count_rows

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
COLUMNS = ("timestamp", "success", "response_time_ms", "is_streaming", "model", "provider", "agent", "prompt_tokens",
           "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd", "time_to_first_token_ms")
KEY_SUMS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd")


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_rows(n: int, seed: int = 3, days: int = 30) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        moment = NOW - timedelta(days=days) + timedelta(seconds=i * days * 86400 / n)
        ok = rng.random() > 0.1
        streamed = rng.random() < 0.5
        rows.append((
            stamp(moment), ok, rng.randint(50, 5000), streamed, rng.choice(("gpt-4o", "claude", None)),
            rng.choice(("openai", "anthropic")), rng.choice(("codex", None)),
            rng.choice((None, rng.randint(1, 5000))), rng.randint(1, 500) if ok else None,
            rng.choice((None, 0, 30)), rng.choice((None, 7)),
            rng.choice((None, rng.random() / 100)) if ok else None,
            rng.randint(10, 400) if streamed and ok else None,
        ))
    return rows


def make_db(path, rows) -> str:
    db = open_database(str(path))
    upgrade(db)
    db.close()
    con = sqlite3.connect(path)
    con.executemany(f"INSERT INTO completion_requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                    rows)
    con.commit()
    con.close()
    return str(path)


def expected_totals(rows, cut: str) -> dict[tuple, dict]:
    """The daily totals of the rows before `cut`, computed apart from the code under test."""
    totals: dict[tuple, dict] = defaultdict(lambda: {"requests": 0, "errors": 0, "streamed": 0, "unpriced_calls": 0,
                                                     "response_time_count": 0, "ttft_count": 0,
                                                     "response_time_ms_sum": 0, "ttft_ms_sum": None,
                                                     **dict.fromkeys(KEY_SUMS)})
    for row in rows:
        r = dict(zip(COLUMNS, row))
        if r["timestamp"] >= cut:
            continue
        t = totals[(r["timestamp"][:10], r["model"], r["provider"], r["agent"])]
        t["requests"] += 1
        t["errors"] += not r["success"]
        t["streamed"] += bool(r["is_streaming"])
        t["unpriced_calls"] += bool(r["success"]) and r["cost_usd"] is None
        t["response_time_count"] += 1
        t["response_time_ms_sum"] += r["response_time_ms"]
        for name in KEY_SUMS:
            if r[name] is not None:
                t[name] = (t[name] or 0) + r[name]
        if r["time_to_first_token_ms"] is not None:
            t["ttft_count"] += 1
            t["ttft_ms_sum"] = (t["ttft_ms_sum"] or 0) + r["time_to_first_token_ms"]
    return dict(totals)


def stored_totals(path) -> dict[tuple, dict]:
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    found = {}
    for row in con.execute("SELECT * FROM daily_totals"):
        r = dict(row)
        key = (r.pop("day"), r.pop("model"), r.pop("provider"), r.pop("agent"))
        r.pop("id")
        assert key not in found, f"two totals rows for {key}"
        found[key] = r
    con.close()
    return found


def assert_same_totals(stored: dict, expected: dict) -> None:
    assert set(stored) == set(expected)
    for key, values in expected.items():
        for name, value in values.items():
            assert stored[key][name] == (pytest.approx(value) if isinstance(value, float) else value), (key, name)


def test_cutoff_reads_days_and_weeks():
    assert cutoff("90d", NOW) == "2026-09-08T12:00:00.000000Z"
    assert cutoff("2w", NOW) == "2026-11-23T12:00:00.000000Z"
    for bad in ("90", "0d", "3m", "-1d", "99999999d"):
        with pytest.raises(ValueError):
            cutoff(bad, NOW)


def test_old_calls_go_their_totals_stay_and_equal_what_was_deleted(tmp_path):
    rows = make_rows(3000)
    path = make_db(tmp_path / "m.db", rows)
    cut = stamp(NOW - timedelta(days=10))
    expected = expected_totals(rows, cut)
    assert plan(open_database(path), cut).rows == sum(t["requests"] for t in expected.values())
    done = prune(open_database(path), cut, batch_rows=250, pause_s=0)
    assert done.rows == sum(t["requests"] for t in expected.values()) and done.batches > 5
    assert count_rows(path, f"timestamp < '{cut}'") == 0
    assert count_rows(path) == len(rows) - done.rows
    assert_same_totals(stored_totals(path), expected)


def test_pruning_again_later_adds_to_the_same_days_totals(tmp_path):
    rows = make_rows(2000)
    path = make_db(tmp_path / "m.db", rows)
    first = stamp(NOW - timedelta(days=20, hours=7))  # mid-day: that day's totals are made twice
    second = stamp(NOW - timedelta(days=10, hours=3))
    prune(open_database(path), first, batch_rows=100, pause_s=0)
    prune(open_database(path), second, batch_rows=100, pause_s=0)
    assert_same_totals(stored_totals(path), expected_totals(rows, second))


def test_a_prune_stopped_midway_has_totals_for_exactly_what_it_deleted(tmp_path):
    rows = make_rows(2000)
    path = make_db(tmp_path / "m.db", rows)
    stop = threading.Event()
    done = prune(open_database(path), stamp(NOW), batch_rows=300, pause_s=0,
                 stop=stop, on_batch=lambda d: stop.set() if d.batches == 2 else None)
    assert done.stopped and done.rows == 600
    stored = stored_totals(path)
    assert sum(t["requests"] for t in stored.values()) == 600 == len(rows) - count_rows(path)


def test_sums_no_deleted_call_reported_stay_null(tmp_path):
    rows = [(stamp(NOW - timedelta(days=40)), 0, 100, 0, "m", "p", None, None, None, None, None, None, None)]
    path = make_db(tmp_path / "m.db", rows)
    prune(open_database(path), stamp(NOW), pause_s=0)
    [(key, totals)] = stored_totals(path).items()
    assert (totals["requests"], totals["errors"], totals["prompt_tokens"], totals["cost_usd"], totals["ttft_ms_sum"]) \
        == (1, 1, None, None, None)


def test_values_a_report_would_not_trust_are_not_summed(tmp_path):
    rows = [(stamp(NOW - timedelta(days=40)), 1, 100, 0, "m", "p", None, -5, 10, None, None, float("inf"), None),
            (stamp(NOW - timedelta(days=40)), 1, 100, 0, "m", "p", None, 7, "text", None, None, 0.5, None)]
    path = make_db(tmp_path / "m.db", rows)
    prune(open_database(path), stamp(NOW), pause_s=0)
    [totals] = stored_totals(path).values()
    assert (totals["prompt_tokens"], totals["completion_tokens"], totals["cost_usd"], totals["unpriced_calls"]) == \
        (7, 10, 0.5, 1)


def migrations_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrations", *args], capture_output=True, text=True, timeout=timeout)


def test_dry_run_changes_nothing_and_says_what_it_would_do(tmp_path):
    path = make_db(tmp_path / "m.db", make_rows(500, days=100))
    before = (tmp_path / "m.db").read_bytes()
    done = migrations_cli("prune", "--db", path, "--older-than", "30d", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("would delete ") and "keeping their daily totals" in done.stdout
    assert (tmp_path / "m.db").read_bytes() == before and not (tmp_path / "backups").exists()


@pytest.mark.parametrize("args, says", [
    (("--older-than", "ninety"), "expected an age like 90d or 12w"),
    ((), "the following arguments are required: --older-than"),
])
def test_bad_arguments_are_one_error_line(tmp_path, args, says):
    path = make_db(tmp_path / "m.db", make_rows(10))
    done = migrations_cli("prune", "--db", path, *args)
    assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1


def test_postgresql_needs_its_own_backup_first(pg_url):
    upgrade(open_database(pg_url))
    done = migrations_cli("prune", "--db", pg_url, "--older-than", "30d")
    assert done.returncode == 2 and "take a pg_dump" in done.stderr
    db = open_database(pg_url)
    db.execute_sql("INSERT INTO completion_requests (timestamp, success, response_time_ms, is_streaming, model, "
                   "prompt_tokens) VALUES (%s, true, 10, false, 'm', 5), (%s, true, 10, false, 'm', 6)",
                   (stamp(NOW - timedelta(days=400)), stamp(datetime.now(UTC))))
    db.close()
    done = migrations_cli("prune", "--db", pg_url, "--older-than", "30d", "--no-backup")
    assert done.returncode == 0, done.stderr
    db = open_database(pg_url)
    assert db.execute_sql("SELECT count(*) FROM completion_requests").fetchone()[0] == 1
    assert db.execute_sql("SELECT requests, prompt_tokens FROM daily_totals").fetchall() == [(1, 5)]
    db.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_a_million_calls_half_old_while_a_proxy_writes(tmp_path, start_proxy, upstream):
    """1M calls over 60 days, the older half pruned by the command, a backup first, while a real
    mitmdump records calls into the same file: none of those is lost."""
    from bench.reports import generate
    from tests.clients import httpx

    path = tmp_path / "big.db"
    generate(path, 1_000_000, days=60)
    proxy = start_proxy("--set", f"llm_metrics_db={path}")
    sent, stop = [0], threading.Event()

    def traffic() -> None:
        with httpx.Client(proxy=proxy.url, timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{upstream.base_url}/chat/completions",
                                       json={"model": "during-prune", "messages": []})
                assert response.status_code == 200
                sent[0] += 1

    writer = threading.Thread(target=traffic)
    writer.start()
    try:
        done = migrations_cli("prune", "--db", str(path), "--older-than", "30d", timeout=900)
    finally:
        stop.set()
        writer.join(60)
    assert done.returncode == 0, done.stderr
    assert "backup: " in done.stdout and "vacuumed" in done.stdout, done.stdout
    # What was there when it began is in its backup: the calls before its cut are what it deleted.
    backup = done.stdout.split("backup: ", 1)[1].split("\n", 1)[0]
    cut = re.search(r"older than (\S+Z)", done.stdout).group(1)
    con = sqlite3.connect(backup)
    expected = {(day, m, p, a): (n, prompt, cost) for day, m, p, a, n, prompt, cost in con.execute(
        "SELECT substr(timestamp, 1, 10), model, provider, agent, count(*), sum(prompt_tokens), sum(cost_usd) "
        "FROM completion_requests WHERE timestamp < ? GROUP BY 1, 2, 3, 4", (cut,))}
    con.close()
    old = sum(n for n, _, _ in expected.values())
    assert 400_000 < old < 600_000 and f"deleted {old} call(s)" in done.stdout
    assert count_rows(backup) == 1_000_000 + count_rows(backup, "request_model = 'during-prune'")
    proxy.stop()  # every call it recorded is written by the time it has exited
    assert sent[0] > 0 and count_rows(str(path), "request_model = 'during-prune'") == sent[0]
    assert count_rows(str(path), f"timestamp < '{cut}'") == 0
    con = sqlite3.connect(path)
    stored = {(day, m, p, a): (n, prompt, cost) for day, m, p, a, n, prompt, cost in con.execute(
        "SELECT day, model, provider, agent, requests, prompt_tokens, cost_usd FROM daily_totals")}
    con.close()
    assert set(stored) == set(expected)
    for key, (n, prompt, cost) in expected.items():
        assert stored[key][:2] == (n, prompt) and stored[key][2] == pytest.approx(cost), key


@pytest.mark.e2e
def test_the_proxy_prunes_by_itself_with_retention_days(tmp_path, start_proxy, upstream):
    from tests.clients import httpx

    now = datetime.now(UTC)
    rows = [(stamp((now - timedelta(days=40)).replace(hour=12, minute=i)), 1, 100, 0, "old-model", "openai", None, 10, 2, None, None,
             0.001, None) for i in range(30)]
    rows += [(stamp(now - timedelta(days=5)), 1, 100, 0, "recent", "openai", None, 10, 2, None, None, None, None)]
    path = make_db(tmp_path / "m.db", rows)
    proxy = start_proxy("--set", f"llm_metrics_db={path}", "--set", "llm_metrics_retention_days=30")
    with httpx.Client(proxy=proxy.url) as client:
        client.post(f"{upstream.base_url}/chat/completions", json={"model": "gpt-fake", "messages": []})
    deadline = time.monotonic() + 60
    while "retention: deleted" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "llm-metrics: retention: deleted 30 call(s) older than 30 days" in proxy.log()
    proxy.stop()
    assert count_rows(path, "model = 'old-model'") == 0 and count_rows(path) == 2  # the recent one, and the call just made
    [totals] = stored_totals(path).values()
    assert (totals["requests"], totals["prompt_tokens"], totals["cost_usd"]) == (30, 300, pytest.approx(0.03))


@pytest.mark.e2e
def test_a_negative_retention_stops_the_proxy_with_one_line(start_proxy):
    proxy = start_proxy("--set", "llm_metrics_retention_days=-1", wait=False)
    assert proxy.proc.wait(timeout=30) != 0
    assert "llm_metrics_retention_days must be from 0 (keep everything) to 36600" in proxy.log()


# -- the report reads the kept totals -----------------------------------------------------------------


def report_json(path: str, *args: str) -> dict:
    import io
    import json

    from rich.console import Console

    from reports.cli import main

    console = Console(file=io.StringIO(), width=160, color_system=None)
    assert main(["--db", path, "--format", "json", *args], console) == 0
    return json.loads(console.file.getvalue())


def test_the_report_counts_pruned_calls_from_their_totals(tmp_path):
    rows = make_rows(2000)
    path = make_db(tmp_path / "m.db", rows)
    cut = stamp(NOW - timedelta(days=10))
    expected = expected_totals(rows, cut)
    prune(open_database(path), cut, pause_s=0)
    pruned = report_json(path)["pruned"]
    assert pruned["requests"] == sum(t["requests"] for t in expected.values())
    assert pruned["errors"] == sum(t["errors"] for t in expected.values())
    assert pruned["cost_usd"] == pytest.approx(sum(t["cost_usd"] or 0 for t in expected.values()))
    gpt = next(m for m in pruned["by_model"] if m["model"] == "gpt-4o")
    mine = [t for k, t in expected.items() if k[1] == "gpt-4o"]
    assert gpt["requests"] == sum(t["requests"] for t in mine)
    assert gpt["mean_latency_ms"] == pytest.approx(sum(t["response_time_ms_sum"] for t in mine)
                                                   / sum(t["response_time_count"] for t in mine))
    # filters it knows apply; one it cannot apply keeps the totals out, and says so
    only = report_json(path, "--model", "claude")["pruned"]
    assert only["requests"] == sum(t["requests"] for k, t in expected.items() if k[1] == "claude")
    blocked = report_json(path, "--host", "h")["pruned"]
    assert blocked["requests"] == 0 and "host" in blocked["not_selectable"]
    assert report_json(path, "--until", "2026-10-01")["pruned"] is None  # before any of them


def test_a_database_whose_every_call_was_pruned_still_reports_them(tmp_path):
    import io

    from rich.console import Console

    from reports.cli import main

    path = make_db(tmp_path / "m.db", make_rows(100))
    prune(open_database(path), stamp(NOW + timedelta(days=1)), pause_s=0)
    assert count_rows(path) == 0
    console = Console(file=io.StringIO(), width=140, color_system=None)
    assert main(["--db", path], console) == 0
    text = console.file.getvalue()
    assert "Older calls kept as daily totals (100 calls" in text
