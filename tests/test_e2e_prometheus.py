"""End to end: a real Prometheus server scraping a real mitmdump with the addon's /metrics
(`llm_metrics_prometheus`), after calls made with the real openai SDK through the fake upstream.
PromQL through Prometheus's HTTP API must give the counts, token sums and a time to first chunk
the stored rows give, and every query of the shipped Grafana dashboard must return data."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.clients import httpx
from tests.conftest import free_port
from tests.prometheus_server import PrometheusServer, has_number, prometheus_binary
from tests.upstream import Scenario

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a real Prometheus server

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "llm-metrics-proxy.json"
MESSAGES = [{"role": "user", "content": "Say hello"}]
MODEL = "gpt-4o-mini"  # priced by genai-prices: the cost counters get values
TTFT_S = 0.33  # the upstream's wait before the first content: p50 in the bucket (0.3, 0.5]
CLAUDE_CODE_UA = "claude-cli/2.1.3 (external, cli)"


def _client(proxy, upstream, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.base_url, api_key="sk-test-not-stored", max_retries=0,
                         http_client=httpx.Client(proxy=proxy.url), default_headers=headers or None)


def _stream(client, scenario: str) -> None:
    for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_headers={"x-scenario": scenario}):
        pass


def _whole(client) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers={"x-scenario": "whole"})


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _wait_metrics(port: int, pattern: str, timeout: float = 15.0) -> str:
    """/metrics once it answers and matches `pattern` (a regular expression)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = _metrics_text(port)
            if re.search(pattern, text, re.MULTILINE):
                return text
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"/metrics never matched {pattern!r}:\n{text[-3000:]}")


def _dashboard_queries() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(panel title, expression) of every panel's target, and (variable, label_values query)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    variables = [(v["name"], v["definition"]) for v in dashboard["templating"]["list"]]
    return exprs, variables


def _as_grafana_sends(expr: str) -> str:
    """The expression with Grafana's variables as it substitutes them: every variable at "All"
    (`.*`), the intervals of a dashboard looking at the last few minutes."""
    for name in ("provider", "agent", "model"):
        expr = expr.replace(f"${name}", ".*")
    return expr.replace("$__rate_interval", "1m").replace("$__range", "5m")


@pytest.fixture
def scraped(start_proxy, upstream, tmp_path):
    prometheus_binary()  # skips (or fails in CI) before starting anything
    port = free_port()
    proxy = start_proxy("--set", f"llm_metrics_prometheus=127.0.0.1:{port}",
                        "--set", "llm_metrics_hosts=127.0.0.1=openai")
    _wait_metrics(port, r"^# TYPE llm_metrics_calls_total counter")
    server = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{port}"])
    try:
        # Calls only once Prometheus has scraped the proxy: rates then see them increase.
        assert server.wait_for('up{job="llm-metrics-proxy"}', lambda v: v == 1.0) == 1.0, server.log()
        yield proxy, server, port
    finally:
        server.stop()


def test_prometheus_gives_the_rows_counts_tokens_and_ttft_and_every_dashboard_query_returns_data(scraped, upstream):
    proxy, prometheus, _ = scraped
    upstream.scenarios["stream"] = Scenario(model=MODEL, first_token_delay=TTFT_S)
    upstream.scenarios["whole"] = Scenario(model=MODEL)
    upstream.scenarios["429"] = Scenario(status=429, error_body=b'{"error": {"message": "slow down", '
                                         b'"type": "requests", "code": "rate_limit_exceeded"}}')
    sdk = _client(proxy, upstream)
    claude = _client(proxy, upstream, **{"User-Agent": CLAUDE_CODE_UA})
    for _ in range(4):
        _stream(sdk, "stream")
    for _ in range(3):
        _whole(sdk)
    for _ in range(2):
        _whole(claude)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            _stream(sdk, "429")
    rows = proxy.rows(11)
    assert len(rows) == 11

    calls = prometheus.wait_for("sum(llm_metrics_calls_total)", lambda v: v == 11.0)
    assert calls == 11.0, prometheus.log()
    # Every counted series has been scraped once the total has.
    by_agent = {s["gen_ai_agent_name"]: s["value"] for s in prometheus.query(
        "sum by (gen_ai_agent_name) (llm_metrics_calls_total)")}
    assert by_agent == {"openai-python": 9.0, "claude-code": 2.0}
    assert {(s["gen_ai_provider_name"], s["gen_ai_operation_name"], s["gen_ai_response_model"]) for s in
            prometheus.query("sum by (gen_ai_provider_name, gen_ai_operation_name, gen_ai_response_model) "
                             "(llm_metrics_calls_total)")} == {("openai", "chat", MODEL)}
    errors = prometheus.query("sum by (error_type) (llm_metrics_errors_total)")
    assert [(s["error_type"], s["value"]) for s in errors] == [("rate_limit_exceeded", 2.0)]
    assert prometheus.value('sum(llm_metrics_calls_total{gen_ai_request_stream="true"})') == 6.0

    # Token sums, cost and durations: the rows' own values.
    tokens = {s["gen_ai_token_type"]: s["value"] for s in prometheus.query(
        "sum by (gen_ai_token_type) (gen_ai_client_token_usage_sum)")}
    assert tokens == {"input": sum(r["prompt_tokens"] or 0 for r in rows),
                      "output": sum(r["completion_tokens"] or 0 for r in rows)} == {"input": 99.0, "output": 54.0}
    assert prometheus.value("sum(llm_metrics_cache_read_input_tokens_total)") == 27.0
    cost = prometheus.value("sum(llm_metrics_cost_usd_total)")
    assert cost is not None and cost > 0
    assert math.isclose(cost, sum(r["cost_usd"] for r in rows if r["cost_usd"] is not None), rel_tol=1e-9)
    assert prometheus.value("sum(gen_ai_client_operation_duration_seconds_count)") == 11.0
    assert math.isclose(prometheus.value("sum(gen_ai_client_operation_duration_seconds_sum)"),
                        sum(r["response_time_ms"] for r in rows) / 1000, rel_tol=1e-9)

    # Time to first chunk: the four streams that had content, p50 in the bucket of the upstream's wait.
    assert prometheus.value("sum(gen_ai_client_operation_time_to_first_chunk_seconds_count)") == 4.0
    p50 = prometheus.value("histogram_quantile(0.5, sum by (le) (gen_ai_client_operation_time_to_first_chunk_seconds_bucket))")
    truth = sorted(r["time_to_first_token_ms"] / 1000 for r in rows if r["time_to_first_token_ms"] is not None)
    assert len(truth) == 4 and all(0.3 < t <= 0.5 for t in truth), truth
    assert p50 is not None and 0.3 < p50 <= 0.5, p50

    # No series of prometheus_client's `_created` samples and no label beyond the documented ones.
    assert prometheus.query('count({__name__=~".+_created", job="llm-metrics-proxy"})') == []
    names = prometheus.api("labels", **{"match[]": '{job="llm-metrics-proxy", __name__=~"gen_ai_.+|llm_metrics_.+"}'})
    assert set(names) <= {"__name__", "job", "instance", "le", "reason", "error_type", "gen_ai_provider_name",
                          "gen_ai_operation_name", "gen_ai_request_model", "gen_ai_response_model",
                          "gen_ai_agent_name", "gen_ai_request_stream", "gen_ai_token_type"}, names

    # The dashboard: every variable lists values, every target returns a number.
    exprs, variables = _dashboard_queries()
    assert len(exprs) >= 15
    for name, definition in variables:
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", definition).groups()
        assert prometheus.api(f"label/{label}/values", **{"match[]": metric}), f"variable {name}: {definition}"
    empty = [(title, expr) for title, expr in exprs if not has_number(prometheus.query(_as_grafana_sends(expr)))]
    assert not empty, f"dashboard queries without data: {empty}"
    # A series' first increments count: the two errors came in one scrape interval, in series new then.
    increase = prometheus.value("sum(increase(llm_metrics_errors_total[5m]))")
    assert increase is not None and 1.9 < increase < 3.0, increase


def test_a_restarted_metering_process_serves_metrics_on_the_same_port_and_counts_what_was_lost(start_proxy, upstream):
    port = free_port()
    proxy = start_proxy("--set", f"llm_metrics_prometheus={port}")  # PORT alone: 127.0.0.1
    upstream.scenarios["slow"] = Scenario(first_token_delay=0.2, chunk_delay=0.3)
    client = _client(proxy, upstream)
    _stream(client, "default")
    first = _wait_metrics(port, r"^llm_metrics_calls_total\{.*\} 1\.0$")
    assert re.search(r'^llm_metrics_dropped_rows_total\{reason="metering_lost"\} 0\.0$', first, re.MULTILINE)
    worker = proxy.metering_pid()

    # A stream in flight when the metering process is killed: lost with it, counted by the next one.
    streaming = threading.Thread(target=_stream, args=(client, "slow"))
    streaming.start()
    deadline = time.monotonic() + 10
    while len(upstream.served) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # its first chunk is through the proxy
    os.kill(worker, signal.SIGKILL)
    streaming.join(20)
    assert not streaming.is_alive()
    text = _wait_metrics(port, r'^llm_metrics_dropped_rows_total\{reason="metering_lost"\} 1\.0$')
    assert proxy.metering_pid() not in (None, worker)
    # Counters of the new process start from zero (Prometheus takes it as a counter reset).
    assert not re.search(r"^llm_metrics_calls_total\{", text, re.MULTILINE), text
    _stream(client, "default")
    _wait_metrics(port, r"^llm_metrics_calls_total\{.*\} 1\.0$")
    assert len(proxy.rows(2)) == 2
