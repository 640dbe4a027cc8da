"""The report's view of agents, sessions, quotas and retries (reports/quota.py, session.py,
retries.py, and the agent and session groupings), on real databases: SQLite, and PostgreSQL."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from migrations import upgrade
from reports.cli import main
from reports.selection import utc_text
from storage import open_database

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(autouse=True)
def _now_is_when_each_test_starts():
    """Rows are made relative to now, and the report judges them against its own now: the two must
    be seconds apart, not the minutes a long test run takes to reach a test."""
    global NOW
    NOW = datetime.now(UTC).replace(microsecond=0)


def at(minutes_ago: float) -> str:
    return utc_text(NOW - timedelta(minutes=minutes_ago))


def call(minutes_ago: float, **values) -> dict:
    row = {"timestamp": at(minutes_ago), "success": 1, "status_code": 200, "response_time_ms": 900,
           "is_streaming": 0, "model": "m", "provider": "anthropic", "host": "h", "origin": None}
    row.update(values)
    return row


def make(path, rows: list[dict]) -> str:
    db = open_database(str(path))
    upgrade(db)
    db.close()
    con = sqlite3.connect(path)
    for row in rows:
        con.execute(f"INSERT INTO completion_requests ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    list(row.values()))
    con.commit()
    con.close()
    return str(path)


def report(path: str, *args: str, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    assert main(["--db", path, *args], console) == 0
    return console.file.getvalue()


def report_json(path: str, *args: str, capsys) -> dict:
    assert main(["--db", path, "--format", "json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def line_with(text: str, *words: str) -> str:
    return next(line for line in text.splitlines() if all(w in line for w in words))


SESSION_A = "5f0e7c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6"
AGENT_ROWS = [
    call(50, agent="claude-code", session_id=SESSION_A, model="claude-sonnet-4-5", prompt_tokens=100,
         completion_tokens=10, cost_usd=0.25, request_kind=None, subagent_id=None),
    call(40, agent="claude-code", session_id=SESSION_A, model="claude-haiku-4-5", prompt_tokens=200,
         completion_tokens=20, cost_usd=0.5, subagent_id="agent-7", retry_count=1),
    call(45, agent="codex", session_id="s-codex", model="gpt-5-codex", prompt_tokens=1000, completion_tokens=50,
         cost_usd=1.0, request_kind="turn"),
    call(30, agent=None, model="gpt-4o", prompt_tokens=5, completion_tokens=1, cost_usd=0.01),
]


def test_default_view_adds_a_table_by_agent_when_several_agents_made_the_calls(tmp_path, capsys):
    path = make(tmp_path / "m.db", AGENT_ROWS)
    out = report_json(path, capsys=capsys)
    by_agent = out["groups"][-1]
    assert by_agent["group_by"] == ["agent"]
    rows = {r["key"]["agent"]: r for r in by_agent["rows"]}
    assert (rows["claude-code"]["requests"], rows["claude-code"]["cost_usd"]) == (2, pytest.approx(0.75))
    assert (rows["codex"]["requests"], rows[None]["requests"]) == (1, 1)
    assert "By agent" in report(path)


def test_no_table_by_agent_when_one_agent_made_every_call(tmp_path, capsys):
    path = make(tmp_path / "m.db", AGENT_ROWS[:2])
    out = report_json(path, capsys=capsys)
    assert [g["group_by"] for g in out["groups"]] == [["model"], ["provider", "host"], ["origin"]]
    assert "By agent" not in report(path)


def test_group_by_session_and_filter_by_agent(tmp_path, capsys):
    path = make(tmp_path / "m.db", AGENT_ROWS)
    [table] = report_json(path, "--group-by", "session", capsys=capsys)["groups"]
    assert {r["key"]["session"]: r["requests"] for r in table["rows"]} == {SESSION_A: 2, "s-codex": 1, None: 1}
    out = report_json(path, "--agent", "codex", capsys=capsys)
    assert out["overview"]["requests"] == 1 and out["filters"]["agent"] == ["codex"]


def test_session_view_lists_its_calls_in_order_with_tokens_cost_and_time(tmp_path, capsys):
    path = make(tmp_path / "m.db", AGENT_ROWS)
    out = report_json(path, "--session", SESSION_A, capsys=capsys)
    assert out["overview"]["requests"] == 2 and out["overview"]["cost_usd"] == pytest.approx(0.75)
    session = out["session"]
    assert (session["session_id"], session["total_calls"]) == (SESSION_A, 2)
    assert [(c["model"], c["prompt_tokens"], c["completion_tokens"], c["cost_usd"], c["retry_count"])
            for c in session["calls"]] == [("claude-sonnet-4-5", 100, 10, 0.25, None), ("claude-haiku-4-5", 200, 20, 0.5, 1)]
    text = report(path, "--session", SESSION_A)
    assert f"Session {SESSION_A}: 2 call(s) in order" in text
    first, second = line_with(text, "claude-sonnet-4-5", "$0.2500"), line_with(text, "claude-haiku-4-5", "agent-7")
    assert text.index(first) < text.index(second)
    assert report_json(path, capsys=capsys)["session"] is None


def test_quota_panel_shows_the_latest_stated_headroom_its_pace_and_when_it_runs_out(tmp_path, capsys):
    reset_5h = at(-120)  # in two hours
    rows = [
        # A subscription's 5-hour window: 40 % used 30 min before the latest reading of 55 %: 30 points an
        # hour, so the 45 points left last 1.5 h, before the reset in 2 h.
        call(31, auth_mode="oauth", quota_used_percent=40.0, quota_window_minutes=300, quota_reset_at=reset_5h),
        call(1, auth_mode="oauth", quota_used_percent=55.0, quota_window_minutes=300, quota_reset_at=reset_5h,
             quota_long_used_percent=12.0, quota_long_window_minutes=10080),
        # An API key's rate limits
        call(20, provider="openai", auth_mode="api_key", total_tokens=3000, rate_remaining_requests=499,
             rate_remaining_tokens=90_000, rate_reset_at=at(-1)),
        call(2, provider="openai", auth_mode="api_key", total_tokens=6000, rate_remaining_requests=498,
             rate_remaining_tokens=84_000, rate_reset_at=at(-1)),
        call(60 * 30, provider="mistral", auth_mode="api_key", rate_remaining_tokens=5),  # 30 hours ago: not shown
    ]
    path = make(tmp_path / "m.db", rows)
    quota = {(q["provider"], q["limit"]): q for q in report_json(path, capsys=capsys)["quota"]}
    assert set(quota) == {("anthropic", "5-hour window"), ("anthropic", "7-day window"), ("openai", "requests"),
                          ("openai", "tokens")}
    five = quota[("anthropic", "5-hour window")]
    assert (five["auth_mode"], five["used_percent"], five["resets_at_utc"], five["as_of_utc"]) == \
        ("oauth", 55.0, reset_5h, at(1))
    assert five["burn_per_hour"] == pytest.approx(30.0)
    assert five["runs_out_utc"] == utc_text(NOW - timedelta(minutes=1) + timedelta(hours=1.5))
    assert not five["resets_first"]
    assert quota[("anthropic", "7-day window")]["burn_per_hour"] is None  # one reading: no pace
    tokens = quota[("openai", "tokens")]
    assert (tokens["remaining"], tokens["burn_per_hour"]) == (84_000, 9000.0)
    assert tokens["resets_first"] and tokens["runs_out_utc"] is None  # 84k at 9k/h: the reset in a minute comes first
    assert quota[("openai", "requests")]["remaining"] == 498
    text = report(path)
    row = line_with(text, "anthropic", "5-hour window")
    assert "55.0 %" in row and "30.0 %" in row and "in 1.5 h" in row and reset_5h[:19].replace("T", " ") in row
    assert "resets first" in line_with(text, "openai", "tokens") and " 84k " in line_with(text, "openai", "tokens")


def test_quota_panel_is_left_out_when_no_response_stated_any(tmp_path, capsys):
    path = make(tmp_path / "m.db", AGENT_ROWS)
    assert report_json(path, capsys=capsys)["quota"] == []
    assert "Quotas and rate limits" not in report(path)


def test_watch_shows_the_quota_panel(tmp_path):
    path = make(tmp_path / "m.db", [call(1, auth_mode="oauth", quota_used_percent=91.5, quota_window_minutes=300)])
    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=True)
    from reports.cli import parse_args, watch
    assert watch(parse_args(["--db", path, "--watch", "1"]), path, console, refreshes=1) == 0
    assert "91.5 %" in line_with(console.file.getvalue(), "5-hour window")


def test_retries_and_rate_limits_are_counted_with_their_cost(tmp_path, capsys):
    rows = [
        call(10, retry_count=0, cost_usd=0.1),
        call(9, retry_count=1, cost_usd=0.2),
        call(8, retry_count=2, cost_usd=0.3),
        call(7, success=0, status_code=429, error_type="rate_limit_error", retry_count=0),
        call(6, success=0, status_code=529, error_type="overloaded_error"),
        call(5, success=0, status_code=500, cost_usd=0.05),
    ]
    path = make(tmp_path / "m.db", rows)
    retries = report_json(path, capsys=capsys)["retries"]
    assert retries == {"retried_calls": 2, "retried_cost_usd": pytest.approx(0.5), "rate_limited": 1,
                       "overloaded": 1, "failed_calls": 3, "failed_cost_usd": pytest.approx(0.05)}
    text = report(path)
    assert "$0.5000" in line_with(text, "retried calls") and " 2 " in line_with(text, "retried calls")
    assert " 1 " in line_with(text, "429 rate limited") and " 1 " in line_with(text, "529 overloaded")


def test_the_same_views_on_postgresql(pg_url, tmp_path, capsys):
    import peewee

    db = open_database(pg_url)
    upgrade(db)
    rows = AGENT_ROWS + [call(31, quota_used_percent=40.0, quota_window_minutes=300, auth_mode="oauth"),
                         call(1, quota_used_percent=55.0, quota_window_minutes=300, auth_mode="oauth",
                              status_code=429, success=0, retry_count=1)]
    for row in rows:
        values = {k: (bool(v) if k in ("success", "is_streaming") else v) for k, v in row.items()}
        db.execute_sql(f"INSERT INTO completion_requests ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})",
                       list(values.values()))
    assert isinstance(db, peewee.PostgresqlDatabase)
    db.close()
    out = report_json(pg_url, "--session", SESSION_A, capsys=capsys)
    assert out["session"]["total_calls"] == 2
    out = report_json(pg_url, capsys=capsys)
    assert out["groups"][-1]["group_by"] == ["agent"]
    [five] = [q for q in out["quota"] if q["limit"] == "5-hour window"]
    assert five["used_percent"] == 55.0 and five["burn_per_hour"] == pytest.approx(30.0)
    assert out["retries"]["rate_limited"] == 1 and out["retries"]["retried_calls"] == 2
