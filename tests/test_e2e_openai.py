"""End to end: the real `openai` SDK -> a real mitmdump with the addon -> the fake upstream.

Each case asserts the stored row field by field.
"""

from __future__ import annotations

import re
import signal
import ssl
import statistics
import time

import openai
import pytest

from tests.clients import httpx
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
API_KEY = "sk-test-DO-NOT-STORE-4f1c9a"


def client_via(proxy, upstream, **kwargs) -> openai.OpenAI:
    http_client = httpx.Client(proxy=proxy.url, **kwargs) if proxy else httpx.Client(trust_env=False, **kwargs)
    return openai.OpenAI(base_url=upstream.base_url, api_key=API_KEY, max_retries=0, http_client=http_client)


def assert_common(row, upstream, *, streaming: bool, success: bool = True) -> None:
    assert TIMESTAMP.match(row["timestamp"]), row["timestamp"]
    assert row["success"] == int(success)
    assert row["request_model"] == "gpt-fake"
    assert row["provider"] == "openai-compatible"
    assert row["host"] == "127.0.0.1"
    assert row["path"] == "/v1/chat/completions"
    assert row["origin"] == "OpenAI/Python"
    assert row["is_streaming"] == int(streaming)
    assert row["max_tokens"] == 64
    assert row["temperature"] == 0.5
    assert row["top_p"] == 0.9
    assert row["message_count"] == 2
    assert row["response_time_ms"] >= 0
    assert row["time_to_first_byte_ms"] is not None and row["time_to_first_byte_ms"] <= row["response_time_ms"]


def create(client, *, scenario: str = "default", **kwargs):
    return client.chat.completions.create(
        model="gpt-fake", messages=MESSAGES, max_tokens=64, temperature=0.5, top_p=0.9,
        extra_headers={"x-scenario": scenario}, **kwargs,
    )


@pytest.mark.smoke
def test_non_streamed_call_is_recorded_field_by_field(proxy, upstream):
    reply = create(client_via(proxy, upstream))
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=False)
    assert row["status_code"] == 200
    assert row["model"] == "gpt-fake-2026-01-01"
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (11, 6, 17)
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (3, 0)
    assert row["finish_reason"] == "stop"
    assert row["time_to_first_token_ms"] is None
    assert row["time_to_last_token_ms"] is None
    assert row["tokens_per_second"] is None
    assert row["chunk_count"] is None
    assert (row["error_type"], row["error_message"]) == (None, None)


@pytest.mark.smoke
def test_streamed_call_with_include_usage_records_usage_and_token_times(proxy, upstream):
    upstream.scenarios["s"] = Scenario(first_token_delay=0.2, chunk_delay=0.02)
    started = time.perf_counter()
    stream = create(client_via(proxy, upstream), scenario="s", stream=True, stream_options={"include_usage": True})
    pieces, client_ttft_ms = [], None
    for c in stream:
        if c.choices and c.choices[0].delta.content:
            client_ttft_ms = client_ttft_ms or (time.perf_counter() - started) * 1000
            pieces.append(c.choices[0].delta.content)
    assert "".join(pieces) == "Hello from the fake upstream."
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=True)
    assert row["status_code"] == 200
    assert row["model"] == "gpt-fake-2026-01-01"
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (11, 6, 17)
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (3, 0)
    assert row["finish_reason"] == "stop"
    assert row["chunk_count"] == 9  # role + 6 words + finish + usage; [DONE] is not an event
    # The proxy sees the request after the client sent it and the first token before the client
    # gets it: its time to first token lies between the upstream's delay and the client's own.
    assert 198 <= row["time_to_first_token_ms"] <= client_ttft_ms + 2
    # Five more words 20 ms apart: the last token comes at least about 100 ms after the first.
    span = row["time_to_last_token_ms"] - row["time_to_first_token_ms"]
    assert span >= 90
    assert row["tokens_per_second"] == pytest.approx(5 / (span / 1000), rel=0.1)  # the 5 tokens after the first
    assert (row["error_type"], row["error_message"]) == (None, None)


@pytest.mark.smoke
def test_streamed_call_without_include_usage_to_an_unknown_server_stores_estimated_tokens(proxy, upstream):
    stream = create(client_via(proxy, upstream), stream=True)
    assert len([c for c in stream]) == 8
    assert "stream_options" not in upstream.last().body  # 127.0.0.1 is not known to accept it
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=True)
    assert row["model"] == "gpt-fake-2026-01-01"
    # addon/estimate.py: one token per content chunk; (28 prompt characters) / 4 + 3 per message + 3
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == ("estimated", 16, 6, 22)
    for column in ("cached_tokens", "reasoning_tokens", "tokens_per_second", "cost_usd"):
        assert row[column] is None, column
    assert row["finish_reason"] == "stop"
    assert row["chunk_count"] == 8
    assert row["time_to_first_token_ms"] is not None
    assert row["success"] == 1


@pytest.mark.smoke
def test_rate_limited_call_records_provider_error(proxy, upstream):
    upstream.scenarios["429"] = Scenario(
        status=429,
        error_body=b'{"error": {"message": "Rate limit reached for gpt-fake", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}',
    )
    with pytest.raises(openai.RateLimitError):
        create(client_via(proxy, upstream), scenario="429", stream=True)
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=True, success=False)
    assert row["status_code"] == 429
    assert row["error_type"] == "rate_limit_exceeded"
    assert row["error_message"] == "Rate limit reached for gpt-fake"
    assert row["model"] == "gpt-fake"  # the response named none: as requested
    assert row["prompt_tokens"] is None and row["finish_reason"] is None
    assert row["time_to_first_token_ms"] is None


def test_html_500_records_http_error_with_page_title(proxy, upstream):
    upstream.scenarios["500"] = Scenario(
        status=500,
        error_content_type="text/html",
        error_body=b"<html><head><title>500 Internal Server Error</title></head><body><h1>Oops</h1></body></html>",
    )
    with pytest.raises(openai.InternalServerError):
        create(client_via(proxy, upstream), scenario="500")
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=False, success=False)
    assert row["status_code"] == 500
    assert row["error_type"] == "http_500"
    assert row["error_message"] == "500 Internal Server Error"


def test_upstream_reset_mid_stream_records_partial_stream_as_failed(proxy, upstream):
    upstream.scenarios["reset"] = Scenario(reset_after_chunks=3, chunk_delay=0.02)
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for _ in create(client_via(proxy, upstream), scenario="reset", stream=True):
            pass
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=True, success=False)
    assert row["status_code"] == 200
    assert row["error_type"] == "upstream_disconnected"
    assert row["error_message"]
    assert row["time_to_first_token_ms"] is not None
    assert row["chunk_count"] == 4  # role + 3 words arrived before the reset
    assert row["finish_reason"] is None and row["completion_tokens"] is None


def test_client_disconnecting_mid_stream_is_recorded(proxy, upstream):
    upstream.scenarios["slow"] = Scenario(chunk_delay=0.3, words=tuple(f" w{i}" for i in range(10)))
    stream = create(client_via(proxy, upstream), scenario="slow", stream=True)
    first = next(c for c in stream if c.choices and c.choices[0].delta.content)
    assert first.choices[0].delta.content == " w0"
    stream.close()
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=True, success=False)
    assert row["error_type"] == "client_disconnected"
    assert row["status_code"] == 200
    assert row["time_to_first_token_ms"] is not None
    assert row["finish_reason"] is None


def _time_to_first_content_ms(client) -> float:
    started = time.perf_counter()
    stream = create(client, scenario="ttft", stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            elapsed = (time.perf_counter() - started) * 1000
            break
    for _ in stream:
        pass
    return elapsed


def test_streams_are_not_buffered_and_ttft_matches_upstream_delay(proxy, upstream):
    delay_ms = 250
    upstream.scenarios["ttft"] = Scenario(first_token_delay=delay_ms / 1000, chunk_delay=0.05)
    direct, proxied = client_via(None, upstream), client_via(proxy, upstream)
    direct_ms, proxied_ms = [], []
    for _ in range(5):  # interleaved, so drift on the machine hits both alike
        direct_ms.append(_time_to_first_content_ms(direct))
        proxied_ms.append(_time_to_first_content_ms(proxied))
    rows = proxy.rows(5)
    recorded = [r["time_to_first_token_ms"] for r in rows]
    added = statistics.median(proxied_ms) - statistics.median(direct_ms)
    print(f"client TTFT direct p50 {statistics.median(direct_ms):.1f} ms, via proxy p50 "
          f"{statistics.median(proxied_ms):.1f} ms, recorded p50 {statistics.median(recorded)} ms, true {delay_ms} ms")
    assert added <= 10, (direct_ms, proxied_ms)
    # A buffering proxy would show the whole stream time (delay + 5 x 50 ms) here.
    assert abs(statistics.median(recorded) - delay_ms) <= 10, recorded


@pytest.mark.smoke
def test_https_upstream_through_mitmproxy_ca_is_recorded(start_proxy, tls_upstream):
    proxy = start_proxy("--set", "ssl_insecure=true")
    client = client_via(proxy, tls_upstream, verify=ssl.create_default_context(cafile=str(proxy.ca_cert)))
    stream = create(client, stream=True, stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from the fake upstream."
    [row] = proxy.rows(1)
    assert_common(row, tls_upstream, streaming=True)
    assert row["status_code"] == 200 and row["completion_tokens"] == 6 and row["chunk_count"] == 9


@pytest.mark.smoke
def test_sigterm_flushes_every_completed_call(proxy, upstream):
    client = client_via(proxy, upstream)
    for _ in range(20):
        create(client)
    assert proxy.stop(signal.SIGTERM) == 0
    rows = proxy.rows(20, timeout=0)
    assert len(rows) == 20
    assert "20 call(s) recorded" in proxy.log()


@pytest.mark.smoke
def test_api_key_and_auth_headers_never_reach_the_database_or_log(proxy, upstream):
    create(client_via(proxy, upstream), stream=True)
    proxy.rows(1)
    proxy.stop()
    stored = b"".join(p.read_bytes() for p in proxy.db_path.parent.glob("metrics.db*"))
    assert API_KEY.encode() not in stored
    assert API_KEY not in proxy.log()


def test_origin_tag_header_sets_origin_and_is_not_forwarded(proxy, upstream):
    client = client_via(proxy, upstream)
    client.chat.completions.create(model="gpt-fake", messages=MESSAGES, extra_headers={"x-llm-metrics-origin": "billing-job"})
    [row] = proxy.rows(1)
    assert row["origin"] == "billing-job"
    assert "x-llm-metrics-origin" not in upstream.last().headers


def test_non_llm_traffic_passes_through_unrecorded(proxy, upstream):
    client = httpx.Client(proxy=proxy.url)
    response = client.post(f"{upstream.base_url}/files", json={"purpose": "x"})
    assert response.status_code == 501  # the fake serves only LLM paths; it still arrives
    client.post(f"{upstream.base_url}/chat/completions", json={"not": "an llm call"})
    create(client_via(proxy, upstream))
    rows = proxy.rows(1)
    time.sleep(0.5)
    assert len(proxy.rows(1)) == 1 == len(rows)


def _raw_stream(client, upstream, encoding: str) -> tuple[bytes, float | None]:
    """The body as it came on the wire, and the client's time to the first content chunk."""
    from addon.wire.encoding import incremental_decoder

    body = {"model": "gpt-fake", "messages": MESSAGES, "max_tokens": 64, "temperature": 0.5, "top_p": 0.9,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"accept-encoding": encoding, "x-scenario": "enc", "user-agent": "OpenAI/Python 9.9"}
    started, first_ms, wire, plain = time.perf_counter(), None, b"", b""
    decode = incremental_decoder(encoding)
    with client.stream("POST", f"{upstream.base_url}/chat/completions", json=body, headers=headers) as response:
        assert response.headers["content-encoding"] == encoding
        for piece in response.iter_raw():
            wire += piece
            plain += decode(piece)
            if first_ms is None and b'"content":"Hello"' in plain:
                first_ms = (time.perf_counter() - started) * 1000
    return wire, first_ms


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_compressed_stream_is_decoded_incrementally_and_passed_through_byte_identical(proxy, upstream, encoding):
    upstream.scenarios["enc"] = Scenario(content_encoding=encoding, first_token_delay=0.2, chunk_delay=0.05)
    direct, _ = _raw_stream(httpx.Client(trust_env=False), upstream, encoding)
    proxied, client_ttft_ms = _raw_stream(httpx.Client(proxy=proxy.url), upstream, encoding)
    assert proxied == direct
    [row] = proxy.rows(1)
    assert_common(row, upstream, streaming=True)
    assert (row["prompt_tokens"], row["completion_tokens"], row["finish_reason"]) == (11, 6, "stop")
    assert row["chunk_count"] == 9
    # Decoded as it arrived, not at the end (about 450 ms): at or after the upstream's delay, no
    # later than the client itself saw it, and before the last token.
    assert 198 <= row["time_to_first_token_ms"] <= client_ttft_ms + 2
    assert row["time_to_first_token_ms"] < row["time_to_last_token_ms"]


def test_connection_refused_upstream_records_a_row_without_status(proxy, upstream):
    from tests.conftest import free_port

    dead = free_port()  # nothing listens here
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{dead}/v1", api_key=API_KEY, max_retries=0,
                           http_client=httpx.Client(proxy=proxy.url))
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="gpt-fake", messages=MESSAGES, max_tokens=64, temperature=0.5, top_p=0.9)
    assert raised.value.status_code == 502  # mitmproxy answers for the unreachable upstream
    [row] = proxy.rows(1)
    assert (row["success"], row["status_code"], row["error_type"]) == (0, None, "connection_refused")
    assert row["error_message"] and row["model"] == "gpt-fake" and row["time_to_first_byte_ms"] is None


@pytest.mark.smoke
def test_each_call_gets_its_line_in_the_proxy_output_while_it_runs(proxy, upstream):
    client = client_via(proxy, upstream)
    for _ in range(3):
        create(client)
    for _ in create(client, stream=True, stream_options={"include_usage": True}):
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # lines are flushed together within 100 ms, not at exit
        lines = [line for line in proxy.log().splitlines() if "llm openai-compatible" in line]
        if len(lines) == 4:
            break
        time.sleep(0.05)
    assert len(lines) == 4, proxy.log()
    assert proxy.proc.poll() is None
    assert sum("ttft" in line for line in lines) == 1
    assert all(" 200 | latency " in line and "tokens " in line for line in lines), lines
