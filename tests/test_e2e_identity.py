"""End to end: who made a call and the headroom its response stated, from real requests through a
real mitmdump: agent-shaped headers (recorded from Claude Code and Codex), the openai SDK's own
retries, and quota headers sent by the fake upstream. Credentials never reach the database."""

from __future__ import annotations

import json
import sqlite3
import time

import openai
import pytest

from tests.clients import httpx
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJQTEFOVEVELUNSRUQifQ.c2lnbmF0dXJlLVBMQU5URUQ"
ANTHROPIC_OAUTH = "sk-ant-oat01-PLANTED-oauth-token-9f3a"
BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}


def _post(proxy, upstream, headers: dict[str, str]) -> None:
    with httpx.Client(proxy=proxy.url) as client:
        response = client.post(f"{upstream.base_url}/chat/completions", json=BODY, headers=headers)
        assert response.status_code == 200 and b"[DONE]" in response.content


def _dump(db_path) -> str:
    con = sqlite3.connect(db_path)
    try:
        return "\n".join(repr(row) for row in con.execute("SELECT * FROM completion_requests"))
    finally:
        con.close()


def test_codex_shaped_call_records_agent_session_kind_and_quota(proxy, upstream):
    reset_at = int(time.time()) + 3600
    upstream.scenarios["codex"] = Scenario(extra_headers={
        "x-codex-primary-used-percent": "37.5", "x-codex-primary-window-minutes": "300",
        "x-codex-primary-reset-at": str(reset_at), "x-codex-secondary-used-percent": "12",
        "x-codex-secondary-window-minutes": "10080"})
    meta = {"session_id": "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "turn_id": "t-1", "request_kind": "turn"}
    _post(proxy, upstream, {
        "x-scenario": "codex", "user-agent": "codex_exec/0.171.0 (Debian 12; x86_64) dumb (codex_exec; 0.171.0)",
        "originator": "codex_exec", "x-codex-turn-metadata": json.dumps(meta), "x-openai-subagent": "review",
        "authorization": f"Bearer {JWT}", "chatgpt-account-id": "acct-PLANTED"})
    [row] = proxy.rows(1)
    assert (row["agent"], row["agent_version"], row["session_id"], row["request_kind"], row["subagent_id"]) == \
        ("codex", "0.171.0", meta["session_id"], "turn", "review")
    assert row["auth_mode"] == "oauth" and row["retry_count"] is None
    assert (row["quota_used_percent"], row["quota_window_minutes"]) == (37.5, 300)
    assert (row["quota_long_used_percent"], row["quota_long_window_minutes"]) == (12.0, 10080)
    assert row["quota_reset_at"] == time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(reset_at))
    dump = _dump(proxy.db_path)
    assert "PLANTED" not in dump and JWT[:20] not in dump


def test_claude_code_shaped_call_records_session_subagent_and_unified_quota(proxy, upstream):
    reset_5h = int(time.time()) + 5 * 3600
    upstream.scenarios["claude"] = Scenario(extra_headers={
        "anthropic-ratelimit-unified-5h-utilization": "0.83", "anthropic-ratelimit-unified-5h-reset": str(reset_5h),
        "anthropic-ratelimit-unified-7d-utilization": "0.2", "anthropic-ratelimit-requests-remaining": "49"})
    _post(proxy, upstream, {
        "x-scenario": "claude", "user-agent": "claude-cli/2.1.332 (external, cli)",
        "x-claude-code-session-id": "5f0e7c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6", "x-claude-code-agent-id": "agent-7",
        "x-claude-code-parent-agent-id": "agent-1", "anthropic-beta": "oauth-2025-04-20,claude-code-20250219",
        "authorization": f"Bearer {ANTHROPIC_OAUTH}", "x-stainless-retry-count": "0"})
    [row] = proxy.rows(1)
    assert (row["agent"], row["agent_version"], row["session_id"], row["subagent_id"], row["parent_id"]) == \
        ("claude-code", "2.1.332", "5f0e7c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6", "agent-7", "agent-1")
    assert (row["auth_mode"], row["retry_count"]) == ("oauth", 0)
    assert (row["quota_used_percent"], row["quota_window_minutes"]) == (pytest.approx(83.0), 300)
    assert row["quota_long_used_percent"] == pytest.approx(20.0) and row["rate_remaining_requests"] == 49
    assert "PLANTED" not in _dump(proxy.db_path)


def test_sdk_retries_are_counted_and_the_wait_asked_for_is_kept(proxy, upstream):
    upstream.scenarios["busy"] = Scenario(status=429, error_body=b'{"error": {"type": "rate_limit_exceeded"}}',
                                          extra_headers={"retry-after": "0.2", "x-ratelimit-remaining-tokens": "0"})
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-PLANTED-retries", max_retries=2,
                           http_client=httpx.Client(proxy=proxy.url))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-fake", messages=BODY["messages"],
                                       extra_headers={"x-scenario": "busy"})
    rows = proxy.rows(3)
    assert sorted(r["retry_count"] for r in rows) == [0, 1, 2]
    for row in rows:
        assert (row["agent"], row["auth_mode"], row["status_code"]) == ("openai-python", "api_key", 429)
        assert row["agent_version"] == openai.__version__
        assert row["retry_after_s"] == pytest.approx(0.2) and row["rate_remaining_tokens"] == 0
    assert "PLANTED" not in _dump(proxy.db_path)


def test_a_key_in_the_query_is_an_api_key_and_is_never_kept(proxy, upstream):
    with httpx.Client(proxy=proxy.url) as client:
        client.post(f"{upstream.base_url}/chat/completions?key=AIzaPLANTEDquerykey", json=BODY,
                    headers={"user-agent": "curl/8.5.0"})
    [row] = proxy.rows(1)
    assert (row["agent"], row["agent_version"], row["auth_mode"]) == ("curl", "8.5.0", "api_key")
    assert "PLANTED" not in _dump(proxy.db_path)


# -- budgets and quota thresholds (addon/budget.py), with a real mitmdump ------------------------


def _level_lines(log: str, what: str) -> list[str]:
    return [line for line in log.splitlines() if what in line]


def test_daily_budget_levels_are_logged_once_each_counting_earlier_runs(start_proxy, upstream, tmp_path):
    db = tmp_path / "shared.db"
    upstream.scenarios["priced"] = Scenario(model="gpt-4o-mini")
    headers = {"x-scenario": "priced", "user-agent": "curl/8.5.0"}
    first = start_proxy("--set", f"llm_metrics_db={db}", "--set", "llm_metrics_hosts=127.0.0.1=openai", name="first")
    _post(first, upstream, headers)
    [row] = first.rows(1)
    cost = row["cost_usd"]
    assert cost and cost > 0
    first.stop()
    # 11.9 calls' worth: the earlier run's call is 8.4 %; the 10th call of the day passes 80 %, the
    # 11th 90 %, the 12th 100 %; the 13th says nothing more.
    budget = cost * 11.9
    second = start_proxy("--set", f"llm_metrics_db={db}", "--set", "llm_metrics_hosts=127.0.0.1=openai",
                         "--set", f"llm_metrics_budget_daily_usd={budget!r}", name="second")
    for _ in range(12):
        _post(second, upstream, headers)
    second.rows(13)
    code = second.stop()
    assert code == 0, f"mitmdump exited with {code}:\n{second.log()[-3000:]}"
    lines = _level_lines(second.log(), "llm-metrics: ")
    crossed = [line.split("llm-metrics: ")[1].split(" %")[0] for line in lines if "of the daily budget" in line]
    assert crossed == ["80", "90", "100"]
    assert "budget and quota levels crossed this run: 3" in second.log(), second.log()[-3000:]
    summary = second.log().split("budget and quota levels crossed this run: 3")[1]
    assert summary.count("of the daily budget reached") == 3  # the summary lists them again
    spent = [line for line in second.log().splitlines() if "budget: $" in line]
    assert len(spent) == 1 and f"of ${budget:.6f}".rstrip("0") in spent[0]


def test_quota_threshold_lines_follow_the_headers_the_upstream_sent(proxy_with_quota, upstream):
    proxy = proxy_with_quota
    for utilization in ("0.70", "0.85", "0.95", "0.99", "1.0"):
        upstream.scenarios[utilization] = Scenario(extra_headers={
            "anthropic-ratelimit-unified-5h-utilization": utilization,
            "anthropic-ratelimit-unified-5h-reset": "1796000000"})
        _post(proxy, upstream, {"x-scenario": utilization, "user-agent": "claude-cli/2.1.332 (external, cli)"})
    rows = proxy.rows(5)
    assert sorted(r["quota_used_percent"] for r in rows) == pytest.approx([70.0, 85.0, 95.0, 99.0, 100.0])
    lines = _level_lines(proxy.log(), "quota of claude-code (5-hour window)")
    assert [line.split("llm-metrics: ")[1] for line in lines] == [
        f"quota of claude-code (5-hour window) at {used} % used, past {level} %; it resets at "
        + time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(1796000000)) for used, level in (("85", "80"), ("95", "90"), ("100", "100"))]


@pytest.fixture
def proxy_with_quota(start_proxy):
    return start_proxy("--set", "llm_metrics_quota_alert_percent=80")


def test_a_bad_budget_option_stops_the_proxy_with_one_clear_line(start_proxy):
    proxy = start_proxy("--set", "llm_metrics_budget_agents=codex", wait=False)
    assert proxy.proc.wait(timeout=30) != 0
    assert "llm_metrics_budget_agents takes AGENT=USD items, not 'codex'" in proxy.log()


def test_the_report_quota_panel_shows_what_the_upstream_headers_said(proxy, upstream):
    import subprocess
    import sys

    upstream.scenarios["limits"] = Scenario(extra_headers={
        "x-ratelimit-remaining-requests": "4999", "x-ratelimit-remaining-tokens": "1234567",
        "x-ratelimit-reset-tokens": "6m0s", "x-codex-primary-used-percent": "63",
        "x-codex-primary-window-minutes": "300", "x-codex-primary-reset-after-seconds": "7200"})
    _post(proxy, upstream, {"x-scenario": "limits", "user-agent": "codex_exec/0.171.0", "authorization": f"Bearer {JWT}"})
    proxy.rows(1)
    proxy.stop()
    command = [sys.executable, "-m", "reports", "--db", str(proxy.db_path)]
    out = json.loads(subprocess.run([*command, "--format", "json"], capture_output=True, text=True, timeout=60,
                                    check=True).stdout)
    quota = {q["limit"]: q for q in out["quota"]}
    assert (quota["requests"]["remaining"], quota["tokens"]["remaining"]) == (4999, 1234567)
    assert quota["5-hour window"]["used_percent"] == 63.0 and quota["5-hour window"]["auth_mode"] == "oauth"
    text = subprocess.run([*command], capture_output=True, text=True, timeout=60, check=True,
                          env={**__import__("os").environ, "COLUMNS": "200"}).stdout
    assert "63.0 %" in next(line for line in text.splitlines() if "5-hour window" in line)
    assert "1.23M" in next(line for line in text.splitlines() if "openai-compatible" in line and " tokens " in line)
