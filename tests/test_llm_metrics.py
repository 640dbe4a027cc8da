"""The addon's hooks, driven by hand in flow order with mitmproxy's own test helpers, metering in
its own process (as deployed) and on mitmproxy's loop (`llm_metrics_worker=false`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

from addon.backends import ChildProcess, InProcess
from addon.llm_metrics import LLMMetrics
from tests.conftest import read_rows, running_addon

CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": True, "temperature": 0.2}
SSE = (
    b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


# The metering process starts for each test: the fast default runs the inline cases only.
@pytest.fixture(params=[pytest.param(True, marks=pytest.mark.slow), False], ids=["worker", "inline"])
def metrics(tmp_path, request):
    with running_addon(tmp_path, llm_metrics_worker=request.param) as addon:
        assert isinstance(addon.metering, ChildProcess if request.param else InProcess)
        yield addon


@pytest.fixture
def inline(tmp_path):
    """Metering on the loop, where a test can reach into the engine."""
    with running_addon(tmp_path, llm_metrics_worker=False) as addon:
        yield addon


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
    engine.calls[inline.inflight[flow.id].cid].meter.feed = broken_feed
    with caplog.at_level(logging.WARNING):
        assert flow.response.stream(b"data: {}\n\n") == b"data: {}\n\n"
        assert flow.response.stream(b"data: {}\n\n") == b"data: {}\n\n"
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
    [{"model": "x"}, {"model": "x", "input": "hi"}],  # no messages: JSON, but not a chat call
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


@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/files"), ("PUT", "/v1/chat/completions"),
                                          ("POST", "/v1/chat/completions/")])
def test_origin_tag_header_is_removed_from_requests_that_are_not_llm_calls(metrics, method, path):
    flow = llm_flow(path=path, **{"X-LLM-Metrics-Origin": "nightly-eval", "user-agent": "curl/8.5.0"})
    flow.request.method = method
    run_request(metrics, flow)
    assert "x-llm-metrics-origin" not in flow.request.headers
    assert flow.request.headers["user-agent"] == "curl/8.5.0"
    assert metrics.inflight == {}


OPENAI_400 = b'{"error": {"message": "We could not parse the JSON body of your request.", "type": "invalid_request_error", "param": null, "code": null}}'


@pytest.mark.parametrize(("body", "why"), [
    (b"not json", "request body is not valid JSON"),
    (b'{"model": "gpt-x", "messages": [', "request body is not valid JSON"),  # cut short
    (b"[1, 2]", "request body is not a JSON object"),
    (b"", "request body is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "request body is not valid JSON"),  # deeper than Python's stack
])
@pytest.mark.parametrize(("path", "operation"), [
    ("/v1/chat/completions", "chat"),
    ("/v1/embeddings", "embeddings"),
    ("/v1beta/models/gemini-2.5-flash:generateContent", "generate_content"),
])
def test_a_broken_request_body_at_an_llm_path_is_recorded_with_the_upstreams_error_and_never_counted_unparsed(
        metrics, body, why, path, operation, caplog):
    """The client's own mistake: the upstream answers 400, and the call is recorded by its path."""
    flow = llm_flow(body, path=path)
    run_request(metrics, flow)
    flow.response = http.Response.make(400, OPENAI_400, {"content-type": "application/json"})
    metrics.responseheaders(flow)
    metrics.response(flow)
    with caplog.at_level(logging.INFO):
        [row] = stored(metrics)
    assert (row["operation"], row["status_code"], row["success"]) == (operation, 400, 0)
    assert row["error_type"] == "invalid_request_error"
    assert row["error_message"] == "We could not parse the JSON body of your request."
    assert row["metering_note"] == why
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "not parsed" not in text and "please report" not in text


@pytest.mark.parametrize(("host", "path", "recorded"), [
    ("127.0.0.1", "/api/messages", False),  # a common path: any app's REST API may have it
    ("127.0.0.1", "/v1/responses", False),
    ("api.anthropic.com", "/v1/messages", True),  # the host tells
    ("api.openai.com", "/v1/responses", True),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/m/invoke", False),  # the body names the format
])
def test_a_broken_body_on_a_path_other_apis_share_is_recorded_only_at_a_known_llm_host(
        metrics, host, path, recorded, caplog):
    flow = llm_flow(b"not json", path=path, host=host)
    run_request(metrics, flow)
    flow.response = http.Response.make(400, OPENAI_400, {"content-type": "application/json"})
    metrics.responseheaders(flow)
    metrics.response(flow)
    with caplog.at_level(logging.INFO):
        rows = stored(metrics)
    assert len(rows) == int(recorded)
    assert "please report" not in "\n".join(r.getMessage() for r in caplog.records)


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
    for body in ({"model": "x"}, {"model": "y"}):
        run_request(metrics, llm_flow(body, path="/v1/chat/completions"))
    with caplog.at_level(logging.INFO):
        metrics.done()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "this run: 1 call, 0 errors, tokens 4 in / 2 out" in text
    assert "gpt-x-1" in text
    assert "2 requests looked like LLM calls but were not parsed (please report them): /v1/chat/completions (2)" in text


def test_every_duration_starts_when_mitmproxy_began_reading_the_request(metrics):
    """Time spent inside the proxy before the addon's hook (other addons, a busy loop) counts."""
    flow = llm_flow()
    flow.request.timestamp_start = time.time() - 0.12  # the request arrived 120 ms before this hook
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    for piece in (SSE, b""):
        flow.response.stream(piece)
    metrics.response(flow)
    [row] = stored(metrics)
    assert 120 <= row["time_to_first_byte_ms"] <= row["time_to_first_token_ms"] <= row["response_time_ms"] < 300


@pytest.mark.parametrize("path, request_model", [
    ("/v1/chat/completions", None),
    ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash"),  # the path names it
])
def test_a_request_body_beyond_the_limit_is_recorded_by_its_path_without_its_fields(tmp_path, path, request_model):
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_log_calls=False,
                       llm_metrics_request_body_limit=1000)
        body = dict(CHAT, contents=[{"parts": [{"text": "x"}]}], messages=[{"role": "user", "content": "x" * 2000}])
        flow = llm_flow(body, path=path)
        run_request(addon, flow)
        flow.response = http.Response.make(
            200, b'{"model": "m-1", "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1}, '
                 b'"usage": {"prompt_tokens": 3, "completion_tokens": 1}}', {"content-type": "application/json"})
        addon.responseheaders(flow)
        addon.response(flow)
        [row] = stored(addon)
    assert (row["success"], row["prompt_tokens"], row["completion_tokens"]) == (1, 3, 1)
    assert row["request_model"] == request_model
    assert (row["message_count"], row["temperature"], row["max_tokens"]) == (None, None, None)


@pytest.mark.parametrize(
    ("modes", "listen_host", "open_hosts"),
    [
        (["regular"], "127.0.0.1", []),
        (["regular"], "", [""]),  # mitmproxy's default: every interface
        (["regular"], "0.0.0.0", ["0.0.0.0"]),
        (["regular@0.0.0.0:8080"], "127.0.0.1", ["0.0.0.0"]),
        (["reverse:https://api.openai.com@0.0.0.0:8081"], "127.0.0.1", ["0.0.0.0"]),
        (["socks5@[::]:1080"], "127.0.0.1", ["[::]"]),
        (["upstream:http://corp-proxy:3128@192.168.1.5:8080"], "127.0.0.1", ["192.168.1.5"]),
        (["regular@8080", "reverse:http://127.0.0.1:8000@10.0.0.2:8085"], "localhost", ["10.0.0.2"]),
        (["regular@::1:8080", "socks5@127.0.0.2:1080"], "", []),
        (["reverse:https://api.openai.com@8081"], "", [""]),  # no host of its own: --listen-host's
        (["local:node", "wireguard", "dns@53"], "", []),  # no listener, or no proxied HTTP
    ],
)
def test_each_listener_beyond_loopback_is_found_in_the_mode_specs(modes, listen_host, open_hosts):
    from addon.options import open_listeners

    assert [host for host, _ in open_listeners(modes, listen_host)] == open_hosts


def test_a_listener_bound_through_a_mode_spec_is_warned_about_unless_proxyauth_guards_it(tmp_path, caplog):
    from mitmproxy.addons.proxyauth import ProxyAuth

    from addon.options import warn_open_proxy

    addon = LLMMetrics()
    with taddons.context(addon, ProxyAuth()) as tctx:
        tctx.configure(addon, listen_host="127.0.0.1", mode=["regular@127.0.0.1:8080", "socks5@0.0.0.0:1080"])
        with caplog.at_level(logging.WARNING):
            warn_open_proxy(tctx.options)
        warned = [r.getMessage() for r in caplog.records if "without proxyauth" in r.getMessage()]
        assert len(warned) == 1 and "listens on 0.0.0.0 without proxyauth (mode socks5@0.0.0.0:1080)" in warned[0]
        caplog.clear()
        tctx.configure(addon, proxyauth="user:pass")
        with caplog.at_level(logging.WARNING):
            warn_open_proxy(tctx.options)
        assert not [r for r in caplog.records if "without proxyauth" in r.getMessage()]


@pytest.mark.parametrize(("flow_detail", "warned"), [(0, None), (1, "URL whole"), (2, "URL and headers, API keys")])
def test_mitmdumps_own_request_lines_are_warned_about_when_they_print_urls(flow_detail, warned, caplog):
    from mitmproxy.addons.dumper import Dumper

    from addon.options import warn_flow_detail

    addon = LLMMetrics()
    with taddons.context(addon, Dumper()) as tctx:
        tctx.configure(addon, flow_detail=flow_detail)
        with caplog.at_level(logging.WARNING):
            warn_flow_detail(tctx.options)
    lines = [r.getMessage() for r in caplog.records if "flow_detail=0 keeps them out" in r.getMessage()]
    assert len(lines) == (0 if warned is None else 1)
    assert warned is None or warned in lines[0]


@pytest.mark.parametrize(("web_host", "warned"), [("127.0.0.1", False), ("0.0.0.0", True), ("", True)])
def test_mitmweb_interface_beyond_loopback_without_a_password_is_warned_about(web_host, warned, caplog):
    from mitmproxy.addons.proxyauth import ProxyAuth
    from mitmproxy.tools.web.webaddons import WebAddon

    from addon.options import warn_open_proxy

    addon = LLMMetrics()
    with taddons.context(addon, ProxyAuth(), WebAddon()) as tctx:
        tctx.configure(addon, listen_host="127.0.0.1", web_host=web_host)
        if "web_password" in tctx.options:
            pytest.skip("this mitmweb has a password (mitmproxy 12): its interface is not open")
        with caplog.at_level(logging.WARNING):
            warn_open_proxy(tctx.options)
    assert any("mitmweb's interface listens on" in r.getMessage() for r in caplog.records) is warned


def _zstd_bomb(head: bytes, zeros: int) -> bytes:
    import zstandard

    z = zstandard.ZstdCompressor().compressobj()
    block = b" " * (1 << 20)  # JSON whitespace: the body would parse, were it read whole
    return z.compress(head) + b"".join(z.compress(block) for _ in range(zeros >> 20)) + z.flush()


def test_a_request_body_bomb_is_recorded_by_its_path_without_being_read(metrics):
    body = _zstd_bomb(json.dumps(CHAT).encode(), 64 << 20)
    flow = llm_flow(body, **{"content-encoding": "zstd"})
    run_request(metrics, flow)
    flow.response = sse_response()
    metrics.responseheaders(flow)
    for piece in (SSE, b""):
        flow.response.stream(piece)
    metrics.response(flow)
    [row] = stored(metrics)
    assert (row["success"], row["model"], row["finish_reason"], row["request_model"]) == (1, "gpt-x-1", "stop", None)
    assert row["metering_note"] == "request body not read: it is larger than 2 MiB once decompressed"


def test_a_whole_response_body_bomb_is_recorded_as_the_status_says_without_being_read(metrics):
    flow = llm_flow(dict(CHAT, stream=False))
    run_request(metrics, flow)
    body = _zstd_bomb(b'{"model": "gpt-x-1", "choices": []', 80 << 20)
    flow.response = http.Response.make(200, b"", {"content-type": "application/json", "content-encoding": "zstd"})
    flow.response.raw_content = body  # as it came: `make` would compress it again
    metrics.responseheaders(flow)
    metrics.response(flow)
    [row] = stored(metrics)
    assert (row["success"], row["status_code"], row["error_type"], row["usage_source"]) == (1, 200, None, "missing")
    assert row["metering_note"] == "response body not read: it is larger than 64 MiB once decompressed"


ANTHROPIC = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": True}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
OLLAMA = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
EMBED = {"model": "text-embedding-3-small", "input": "hi"}
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"


def _events(*objs, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs)
    return body + (b"data: [DONE]\n\n" if done else b"")


@pytest.mark.parametrize(("path", "request_body", "content_type", "stream", "error_type"), [
    pytest.param("/v1/chat/completions", CHAT, EVENT_STREAM, b"data: [DONE]\n\n", "empty_stream", id="chat-done-only"),
    pytest.param("/v1/chat/completions", CHAT, EVENT_STREAM,
                 _events({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
                 "empty_stream", id="chat-role-chunk-then-done"),
    pytest.param("/v1/chat/completions", CHAT, EVENT_STREAM,
                 _events({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 0}}),
                 "empty_stream", id="chat-usage-only"),
    pytest.param("/v1/chat/completions", CHAT, EVENT_STREAM, b"", "empty_stream", id="chat-no-event-at-all"),
    pytest.param("/v1/messages", ANTHROPIC, EVENT_STREAM,
                 b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x","usage":'
                 b'{"input_tokens":3,"output_tokens":1}}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n',
                 "empty_stream", id="anthropic-start-and-stop-only"),
    pytest.param("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI, EVENT_STREAM, b"",
                 "empty_stream", id="gemini-sse-no-event"),
    pytest.param("/v1beta/models/gemini-2.5-flash:streamGenerateContent", GEMINI, "application/json", b"[]",
                 "empty_stream", id="gemini-empty-array"),
    pytest.param("/api/chat", OLLAMA, NDJSON, b'{"model":"llama3","done":true}\n', "empty_stream",
                 id="ollama-done-line-only"),
    pytest.param("/v1/embeddings", EMBED, EVENT_STREAM, b"", "empty_stream", id="embeddings-no-event"),
    # Not empty: a finish reason without content, content without a finish reason but ended,
    # and an embedding streamed whole (no API has finish reasons for them).
    pytest.param("/v1/chat/completions", CHAT, EVENT_STREAM,
                 _events({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}), None,
                 id="chat-finish-reason-without-content"),
    pytest.param("/v1/chat/completions", CHAT, EVENT_STREAM,
                 _events({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}), None,
                 id="chat-content-then-done"),
    pytest.param("/v1/embeddings", EMBED, EVENT_STREAM,
                 _events({"model": "m", "data": [], "usage": {"prompt_tokens": 1, "total_tokens": 1}}, done=False),
                 None, id="embeddings-one-event"),
])
def test_a_200_stream_with_no_content_and_no_finish_reason_is_not_a_plain_success(
        metrics, path, request_body, content_type, stream, error_type):
    flow = llm_flow(request_body, path=path)
    run_request(metrics, flow)
    flow.response = http.Response.make(200, b"", {"content-type": content_type})
    metrics.responseheaders(flow)
    for piece in (stream, b""):
        flow.response.stream(piece)
    metrics.response(flow)
    [row] = stored(metrics)
    assert (row["error_type"], row["success"]) == (error_type, int(error_type is None))


@pytest.mark.parametrize(("path", "request_body", "body", "error_type"), [
    ("/v1/chat/completions", dict(CHAT, stream=False), b"{}", "empty_response"),
    ("/v1/chat/completions", dict(CHAT, stream=False), b'{"choices": []}', "empty_response"),
    ("/v1/chat/completions", dict(CHAT, stream=False), b'{"model": "gpt-x-1", "choices": []}', None),
    ("/v1/embeddings", EMBED, b'{"object": "list", "data": []}', None),
])
def test_a_200_body_that_tells_nothing_is_not_a_plain_success(metrics, path, request_body, body, error_type):
    flow = llm_flow(request_body, path=path)
    run_request(metrics, flow)
    flow.response = http.Response.make(200, body, {"content-type": "application/json"})
    metrics.responseheaders(flow)
    metrics.response(flow)
    [row] = stored(metrics)
    assert row["error_type"] == error_type


def test_a_database_changed_while_the_proxy_runs_gets_a_metering_process_that_is_watched(tmp_path):
    """No `running` hook comes again: the new process's pipes must be watched by the loop all the
    same, or its log lines and its death would go unseen and a full pipe would make hooks wait."""
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "a.db"), llm_metrics_log_calls=False)

        async def reconfigure() -> tuple[bool, bool]:
            addon.metering.watch()  # what `running` does for it
            first = addon.metering
            tctx.configure(addon, llm_metrics_db=str(tmp_path / "b.db"))
            return addon.metering is not first, addon.metering._watching

        replaced, watched = asyncio.run(reconfigure())
        addon.done()
    assert replaced and watched
