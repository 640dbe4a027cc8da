"""The addon's hooks, driven by hand in flow order with mitmproxy's own test helpers, metering in
its own process (as deployed) and on mitmproxy's loop (`llm_metrics_worker=false`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from addon.llm_metrics import LLMMetrics
from addon.worker import WorkerProcess
from tests.conftest import read_rows

CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": True, "temperature": 0.2}
SSE = (
    b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.fixture(params=[True, False], ids=["worker", "inline"])
def metrics(tmp_path, request):
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_log_calls=False,
                       llm_metrics_worker=request.param)
        assert isinstance(addon.metering, WorkerProcess) == request.param
        yield addon
        addon.done()


@pytest.fixture
def inline(tmp_path):
    """Metering on the loop, where a test can reach into the engine."""
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_log_calls=False,
                       llm_metrics_worker=False)
        yield addon
        addon.done()


def llm_flow(body: dict | bytes = CHAT, path: str = "/v1/chat/completions", host: str = "127.0.0.1", **headers) -> http.HTTPFlow:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = tutils.treq(method=b"POST", host=host, port=8000, path=path.encode(), content=content)
    request.headers.update(headers)
    return tflow.tflow(req=request)


def sse_response() -> http.Response:
    return http.Response.make(200, b"", {"content-type": "text/event-stream"})


def run_request(addon: LLMMetrics, flow: http.HTTPFlow) -> None:
    addon.requestheaders(flow)


def stored(addon: LLMMetrics) -> list[dict]:
    addon.done()
    return read_rows(Path(addon.location))


def test_stream_callable_returns_every_chunk_unchanged_and_records_the_call(metrics):
    flow = llm_flow()
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    on_chunk = flow.response.stream
    assert callable(on_chunk)
    pieces = [SSE[i : i + 7] for i in range(0, len(SSE), 7)] + [b""]
    assert [on_chunk(p) for p in pieces] == pieces
    metrics.response(flow)
    [row] = stored(metrics)
    assert (row["model"], row["request_model"], row["finish_reason"]) == ("gpt-x-1", "gpt-x", "stop")
    assert (row["is_streaming"], row["chunk_count"], row["success"]) == (1, 3, 1)
    assert row["temperature"] == 0.2 and row["message_count"] == 1
    assert row["time_to_first_token_ms"] is not None


def test_parser_failure_inside_the_stream_is_logged_once_and_chunks_still_pass(inline, caplog):
    flow = llm_flow()
    run_request(inline, flow)
    flow.response = sse_response()
    inline.responseheaders(flow)

    def broken_feed(data: bytes) -> bool:
        raise RuntimeError("parser bug")

    engine = inline.metering.engine
    engine.calls[inline.inflight[flow.id][0]].meter.feed = broken_feed
    with caplog.at_level(logging.WARNING):
        assert flow.response.stream(b"data: {}\n\n") == b"data: {}\n\n"
        assert flow.response.stream(b"data: {}\n\n") == b"data: {}\n\n"
    assert engine.metering_errors == 1
    assert sum("metering failed in stream" in r.message for r in caplog.records) == 1
    inline.response(flow)
    [row] = stored(inline)
    assert row["status_code"] == 200  # what could be recorded, still is


def test_unsupported_content_encoding_still_streams_unparsed(metrics):
    flow = llm_flow()
    run_request(metrics, flow)
    flow.response = sse_response()
    flow.response.headers["content-encoding"] = "compress"  # Response.make would drop it
    metrics.responseheaders(flow)
    on_chunk = flow.response.stream
    assert callable(on_chunk)  # never left buffered
    assert [on_chunk(p) for p in (SSE, b"")] == [SSE, b""]
    metrics.response(flow)
    [row] = stored(metrics)
    assert row["is_streaming"] == 1 and row["error_type"] is None


@pytest.mark.parametrize("method, path", [("GET", "/v1/chat/completions"), ("POST", "/v1/files")])
def test_other_traffic_is_not_looked_at(metrics, method, path):
    flow = llm_flow(path=path)
    flow.request.method = method
    before = flow.request.copy()
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    assert metrics.inflight == {}
    assert flow.response.stream is False
    assert flow.request.content == before.content and flow.request.headers == before.headers
    metrics.response(flow)
    assert stored(metrics) == []


@pytest.mark.parametrize(
    "body",
    [b"not json", {"model": "x"}, b"[1, 2]"],  # {"model": "x"}: no messages, not a chat call
)
def test_a_request_at_an_llm_path_that_is_no_llm_call_passes_unchanged_and_is_counted_unparsed(
        metrics, body, caplog):
    """The hooks do not read bodies: such a request's event stream is passed on as it arrives,
    byte for byte, and the metering finds it is no LLM call (no row; named in the summary)."""
    flow = llm_flow(body)
    before = flow.request.copy()
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    assert flow.request.content == before.content and flow.request.headers == before.headers
    on_chunk = flow.response.stream
    assert [on_chunk(p) for p in (SSE, b"")] == [SSE, b""]
    metrics.response(flow)
    with caplog.at_level(logging.INFO):
        assert stored(metrics) == []
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "1 request looked like LLM calls but were not parsed (please report them): /v1/chat/completions (1)" in text


def test_origin_tag_header_is_recorded_and_removed(metrics):
    flow = llm_flow(**{"x-llm-metrics-origin": "nightly-eval", "user-agent": "curl/8.5.0"})
    run_request(metrics, flow)
    assert "x-llm-metrics-origin" not in flow.request.headers
    flow.response = http.Response.make(200, b'{"choices": []}', {"content-type": "application/json"})
    metrics.responseheaders(flow)
    metrics.response(flow)
    [row] = stored(metrics)
    assert row["origin"] == "nightly-eval"


def test_extra_hosts_name_the_provider_and_match_on_body_shape_at_any_path(tmp_path):
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_hosts=["llm.internal=acme-gateway"])
        flow = llm_flow(path="/gateway/v2/generate", host="llm.internal")
        run_request(addon, flow)
        flow.response = http.Response.make(200, b'{"model": "m", "choices": []}', {"content-type": "application/json"})
        addon.responseheaders(flow)
        addon.response(flow)
        [row] = stored(addon)
    assert (row["provider"], row["host"], row["path"]) == ("acme-gateway", "llm.internal", "/gateway/v2/generate")


@pytest.mark.parametrize(
    "message, had_response, error_type",
    [
        ("Connection refused", False, "connection_refused"),
        ("[Errno 111] Connect call failed ('127.0.0.1', 9)", False, "connection_refused"),
        ("Client disconnected.", True, "client_disconnected"),
        ("peer closed connection", True, "upstream_disconnected"),
        ("Server disconnected.", False, "upstream_disconnected"),
        ("connection timed out", False, "upstream_timeout"),
        ("something new", False, "proxy_error"),
    ],
)
def test_error_hook_records_a_failed_row_naming_the_cause(metrics, message, had_response, error_type):
    flow = llm_flow()
    run_request(metrics, flow)
    if had_response:
        flow.response = sse_response()
        metrics.responseheaders(flow)
    flow.error = tflow.terr(message)
    metrics.error(flow)
    [row] = stored(metrics)
    assert (row["success"], row["error_type"]) == (0, error_type)
    assert row["status_code"] == (200 if had_response else None)
    assert message in row["error_message"]


def test_calls_in_flight_at_shutdown_are_recorded_as_such(metrics):
    flow = llm_flow()
    run_request(metrics, flow)
    [row] = stored(metrics)
    assert (row["success"], row["error_type"], row["status_code"]) == (0, "proxy_shutdown", None)


SSE_WITH_USAGE = SSE.replace(
    b"data: [DONE]",
    b'data: {"model":"gpt-x-1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    b"data: [DONE]",
)


@pytest.mark.parametrize("pieces", [1, 7], ids=["one-piece", "split"])
def test_stream_past_its_end_marker_at_shutdown_is_recorded_complete(metrics, pieces):
    """The client has the whole stream; only the body's end had not arrived when the proxy stopped."""
    flow = llm_flow()
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    size = -(-len(SSE_WITH_USAGE) // pieces)
    for i in range(0, len(SSE_WITH_USAGE), size):
        flow.response.stream(SSE_WITH_USAGE[i:i + size])  # no b"" (end of body), no response hook
    [row] = stored(metrics)
    assert (row["success"], row["error_type"], row["status_code"]) == (1, None, 200)
    assert (row["prompt_tokens"], row["completion_tokens"], row["finish_reason"], row["chunk_count"]) == (7, 2, "stop", 4)
    assert row["time_to_first_token_ms"] <= row["time_to_last_token_ms"] <= row["response_time_ms"]


@pytest.mark.parametrize("message", ["Client disconnected.", "peer closed connection"])
def test_connection_lost_after_the_end_marker_went_through_keeps_the_call_complete(metrics, message):
    """What a stopping proxy does to open streams: it closes their connections first."""
    flow = llm_flow()
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    flow.response.stream(SSE_WITH_USAGE)
    flow.error = tflow.terr(message)
    metrics.error(flow)
    [row] = stored(metrics)
    assert (row["success"], row["error_type"], row["completion_tokens"]) == (1, None, 2)


def test_stream_short_of_its_end_marker_at_shutdown_is_recorded_as_cut_by_the_shutdown(metrics):
    flow = llm_flow()
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    flow.response.stream(SSE_WITH_USAGE[: SSE_WITH_USAGE.index(b"data: [DONE]")])  # usage came, [DONE] not
    [row] = stored(metrics)
    assert (row["success"], row["error_type"], row["status_code"]) == (0, "proxy_shutdown", 200)
    assert row["completion_tokens"] == 2  # what was metered is kept


def test_non_streamed_error_body_is_parsed_from_the_decoded_content(metrics):
    flow = llm_flow(dict(CHAT, stream=False))
    run_request(metrics, flow)
    body = b'{"error": {"message": "model not found", "type": "invalid_request_error", "code": "model_not_found"}}'
    flow.response = http.Response.make(404, body, {"content-type": "application/json"})
    flow.response.encode("gzip")
    metrics.responseheaders(flow)
    metrics.response(flow)
    [row] = stored(metrics)
    assert (row["status_code"], row["error_type"], row["error_message"]) == (404, "model_not_found", "model not found")
    assert row["is_streaming"] == 0 and row["time_to_first_token_ms"] is None


GEMINI_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
GEMINI_ARRAY = (
    b'[{"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}}], "modelVersion": "gemini-2.5-flash"}\n,\r\n'
    b'{"candidates": [{"content": {"parts": [{"text": "!"}], "role": "model"}, "finishReason": "STOP"}],'
    b' "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}, "modelVersion": "gemini-2.5-flash"}\n]'
)


def test_gemini_json_array_stream_arriving_as_application_json_is_metered_as_a_stream(metrics):
    import gzip

    flow = llm_flow(GEMINI, path=GEMINI_PATH, host="generativelanguage.googleapis.com")
    run_request(metrics, flow)
    flow.response = http.Response.make(200, b"", {"content-type": "application/json; charset=UTF-8", "content-encoding": "gzip"})
    metrics.responseheaders(flow)
    on_chunk = flow.response.stream
    assert callable(on_chunk), "a streamed JSON array must be passed on as it arrives"
    wire = gzip.compress(GEMINI_ARRAY)
    pieces = [wire[i : i + 5] for i in range(0, len(wire), 5)] + [b""]
    assert [on_chunk(p) for p in pieces] == pieces
    metrics.response(flow)
    [row] = stored(metrics)
    assert (row["provider"], row["operation"], row["model"], row["request_model"]) == (
        "gemini", "generate_content", "gemini-2.5-flash", "gemini-2.5-flash")
    assert (row["is_streaming"], row["chunk_count"], row["prompt_tokens"], row["completion_tokens"]) == (1, 2, 3, 2)
    assert (row["finish_reason"], row["finish_category"], row["usage_source"]) == ("STOP", "stop", "reported")
    assert row["time_to_first_token_ms"] is not None and row["cost_usd"] > 0


def test_gemini_error_status_with_json_body_is_read_whole(metrics):
    flow = llm_flow(GEMINI, path=GEMINI_PATH, host="generativelanguage.googleapis.com")
    run_request(metrics, flow)
    body = b'{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}'
    flow.response = http.Response.make(429, body, {"content-type": "application/json"})
    metrics.responseheaders(flow)
    assert flow.response.stream is False
    metrics.response(flow)
    [row] = stored(metrics)
    assert (row["error_type"], row["error_message"], row["finish_category"]) == ("RESOURCE_EXHAUSTED", "Quota exceeded", "error")


def test_exit_summary_lists_calls_per_model_and_names_unparsed_llm_looking_requests(metrics, caplog):
    flow = llm_flow(dict(CHAT, stream=False))
    run_request(metrics, flow)
    flow.response = http.Response.make(200, b'{"model": "gpt-x-1", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}',
                                       {"content-type": "application/json"})
    metrics.responseheaders(flow)
    metrics.response(flow)
    for body in ({"model": "x"}, b"not json"):
        run_request(metrics, llm_flow(body, path="/v1/chat/completions"))
    with caplog.at_level(logging.INFO):
        metrics.done()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "this run: 1 call, 0 errors, tokens 4 in / 2 out" in text
    assert "gpt-x-1" in text
    assert "2 requests looked like LLM calls but were not parsed (please report them): /v1/chat/completions (2)" in text


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the switch is from a metering process at SCHED_IDLE (Linux)")
def test_at_the_switch_to_a_second_metering_process_each_message_goes_where_its_call_is(tmp_path):
    """The switch (addon.worker: the first process, at idle priority, fell behind) happens at a
    hand-over. In it, the end of a stream the first process opened goes to the first, a whole
    call to the second, and each call is counted as handed to the process that stores it. The
    first process's verdict is set by hand here: with a real stopped process which messages share
    the deciding hand-over is up to timing (tests/test_e2e_worker.py does that)."""
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_log_calls=False)
        first = addon.metering

        async def calls() -> None:
            stream = llm_flow()
            run_request(addon, stream)
            stream.response = sse_response()
            addon.responseheaders(stream)
            stream.response.stream(SSE)
            await asyncio.sleep(0.05)  # its start and its bytes are handed to the first process
            whole = llm_flow(dict(CHAT, stream=False))
            run_request(addon, whole)
            whole.response = http.Response.make(200, json.dumps({
                "model": "gpt-x-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                                                 "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}).encode(),
                {"content-type": "application/json"})
            addon.responseheaders(whole)
            addon.response(whole)
            addon.response(stream)  # both ends wait for the same hand-over
            first.starved = lambda: True
            await asyncio.sleep(0.05)

        asyncio.run(calls())
        second = addon.metering
        assert isinstance(second, WorkerProcess) and second is not first and not second.idle
        assert first.retiring  # its one stream ended: it stores what it has and exits
        assert (first.handed, second.handed) == (1, 1)
        addon.done()
    rows = read_rows(tmp_path / "m.db")
    assert sorted((r["is_streaming"], r["success"], r["chunk_count"]) for r in rows) == [(0, 1, None), (1, 1, 3)]
