"""OpenTelemetry out (addon/otel.py): a real mitmdump with `llm_metrics_otel=metrics,traces` pushes
over OTLP/HTTP to a receiver that decodes with `opentelemetry-proto`; the metrics and the spans
carry the GenAI conventions' names, units and attributes, the rows' values, and no content."""

from __future__ import annotations

import calendar
import time

import openai
import pytest

from addon.exposition import DURATION_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS
from tests.clients import httpx
from tests.otlp_receiver import OtlpReceiver, attributes
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

MODEL = "gpt-4o-mini"
PROMPT = "Say hello, secret-prompt-words"
WORDS = ("Hidden", " completion", " words")


def _points(metric) -> list:
    kind = metric.WhichOneof("data")
    return list(getattr(metric, kind).data_points)


def _value(point) -> float:
    return point.as_double if point.WhichOneof("value") == "as_double" else point.as_int


def _epoch_ns(timestamp: str) -> int:
    seconds = calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(timestamp[20:26]) * 1000


@pytest.fixture
def receiver(monkeypatch):
    with OtlpReceiver() as server:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.endpoint)
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
        yield server


def test_metrics_and_spans_reach_an_otlp_receiver_with_the_conventions_names(start_proxy, upstream, receiver):
    proxy = start_proxy("--set", "llm_metrics_otel=metrics,traces", "--set", "llm_metrics_hosts=127.0.0.1=openai")
    upstream.scenarios["stream"] = Scenario(model=MODEL, words=WORDS, first_token_delay=0.1)
    upstream.scenarios["429"] = Scenario(status=429, error_body=b'{"error": {"message": "slow down", '
                                         b'"type": "requests", "code": "rate_limit_exceeded"}}')
    client = openai.OpenAI(base_url=upstream.base_url, api_key="sk-test-otel-not-sent", max_retries=0,
                           http_client=httpx.Client(proxy=proxy.url),
                           default_headers={"User-Agent": "claude-cli/2.1.3 (external, cli)"})
    messages = [{"role": "user", "content": PROMPT}]
    for _ in range(2):
        for _ in client.chat.completions.create(model=MODEL, messages=messages, stream=True, max_tokens=64,
                                                stream_options={"include_usage": True},
                                                extra_headers={"x-scenario": "stream"}):
            pass
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=messages, extra_headers={"x-scenario": "429"})
    rows = proxy.rows(3)
    assert len(rows) == 3

    def calls_counted() -> float:
        metric = receiver.latest_metrics().get("llm_metrics.calls")
        return sum(_value(p) for p in _points(metric)) if metric else 0

    assert receiver.wait(lambda: calls_counted() == 3 and len(receiver.spans()) == 3), \
        (calls_counted(), len(receiver.spans()), proxy.log()[-3000:])
    assert receiver.content_types == {"application/x-protobuf"}
    assert {r.get("service.name") for r in receiver.resources()} == {"llm-metrics-proxy"}

    # Metrics: the conventions' instruments, units and bucket boundaries, and the project's counters.
    metrics = receiver.latest_metrics()
    assert {"gen_ai.client.operation.duration", "gen_ai.client.operation.time_to_first_chunk",
            "gen_ai.client.token.usage", "llm_metrics.calls", "llm_metrics.errors", "llm_metrics.cost_usd",
            "llm_metrics.cache_read.input_tokens", "llm_metrics.dropped_rows"} <= set(metrics)
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration.unit == "s" and duration.WhichOneof("data") == "histogram"
    points = _points(duration)
    assert {tuple(p.explicit_bounds) for p in points} == {DURATION_BUCKETS}
    assert sum(p.count for p in points) == 3
    assert abs(sum(p.sum for p in points) - sum(r["response_time_ms"] for r in rows) / 1000) < 1e-9
    by_outcome = {attributes(p.attributes).get("error.type"): attributes(p.attributes) for p in points}
    assert set(by_outcome) == {None, "rate_limit_exceeded"}
    assert by_outcome[None] == {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                                "gen_ai.request.model": MODEL, "gen_ai.response.model": MODEL,
                                "gen_ai.agent.name": "claude-code", "gen_ai.request.stream": True}
    ttft = metrics["gen_ai.client.operation.time_to_first_chunk"]
    assert ttft.unit == "s" and {tuple(p.explicit_bounds) for p in _points(ttft)} == {TTFT_BUCKETS}
    assert sum(p.count for p in _points(ttft)) == 2
    tokens = metrics["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}" and {tuple(p.explicit_bounds) for p in _points(tokens)} == {TOKEN_BUCKETS}
    assert {attributes(p.attributes)["gen_ai.token.type"]: p.sum for p in _points(tokens)} == \
        {"input": sum(r["prompt_tokens"] for r in rows[:2]), "output": sum(r["completion_tokens"] for r in rows[:2])}
    assert metrics["llm_metrics.calls"].sum.is_monotonic
    [error] = _points(metrics["llm_metrics.errors"])
    assert _value(error) == 1 and attributes(error.attributes)["error.type"] == "rate_limit_exceeded"
    cost = sum(_value(p) for p in _points(metrics["llm_metrics.cost_usd"]))
    assert cost > 0 and abs(cost - sum(r["cost_usd"] for r in rows if r["cost_usd"] is not None)) < 1e-12

    # Spans: one per call, named and timed as the conventions and the rows say.
    spans = sorted(receiver.spans(), key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in spans] == [f"chat {MODEL}"] * 3
    assert {s.kind for s in spans} == {3}  # SPAN_KIND_CLIENT
    for span, row in zip(spans, rows):
        assert span.start_time_unix_nano == _epoch_ns(row["timestamp"])
        assert span.end_time_unix_nano - span.start_time_unix_nano == row["response_time_ms"] * 1_000_000
    ok = attributes(spans[0].attributes)
    assert ok["gen_ai.usage.input_tokens"] == rows[0]["prompt_tokens"]
    assert ok["gen_ai.usage.output_tokens"] == rows[0]["completion_tokens"]
    assert ok["gen_ai.usage.cache_read.input_tokens"] == rows[0]["cached_tokens"]
    assert ok["gen_ai.response.finish_reasons"] == ("stop",)
    assert ok["gen_ai.request.max_tokens"] == 64
    assert ok["server.address"] == "127.0.0.1" and ok["server.port"] == upstream.port
    assert ok["gen_ai.response.time_to_first_chunk"] == rows[0]["time_to_first_token_ms"] / 1000
    assert "error.type" not in ok and spans[0].status.code != 2
    failed = attributes(spans[2].attributes)
    assert failed["error.type"] == "rate_limit_exceeded" and failed["http.response.status_code"] == 429
    assert spans[2].status.code == 2  # STATUS_CODE_ERROR

    # No content and no credential went out.
    sent = b"".join(receiver.raw)
    for secret in (b"secret-prompt-words", b"Hidden", b"completion words", b"sk-test-otel-not-sent"):
        assert secret not in sent
