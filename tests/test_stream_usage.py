"""addon.stream_usage: the request edit, which upstreams get it, and what counts as a refusal."""

from __future__ import annotations

import json
import logging

import pytest

from addon.stream_usage import (
    ServerMemory,
    accepts_stream_options,
    is_refusal,
    parse_usage_hosts,
    request_usage,
    server_from_body,
    server_from_header,
    server_from_models,
)


def test_absent_stream_options_is_added_and_every_other_byte_kept():
    body = b'{ "model": "m",\n  "messages": [{"role": "user", "content": "caf\xc3\xa9 \\u00e9"}], "stream": true }'
    changed = request_usage(body)
    assert changed == b'{"stream_options":{"include_usage":true}, "model": "m",\n  "messages": [{"role": "user", ' \
                      b'"content": "caf\xc3\xa9 \\u00e9"}], "stream": true }'
    assert json.loads(changed)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("options, expected", [
    ('{"include_usage": false}', {"include_usage": True}),
    ('{"include_obfuscation": false}', {"include_obfuscation": False, "include_usage": True}),
    ('{"continuous_usage_stats": true, "include_usage": false}', {"continuous_usage_stats": True, "include_usage": True}),
    ("null", {"include_usage": True}),
])
def test_stream_options_without_usage_keep_their_other_keys(options, expected):
    body = f'{{"model": "m", "stream_options": {options}, "stream": true, "prompt": "x"}}'.encode()
    changed = request_usage(body)
    assert changed is not None
    assert json.loads(changed) == {"model": "m", "stream_options": expected, "stream": True, "prompt": "x"}
    before, after = body.split(options.encode())
    assert changed.startswith(before) and changed.endswith(after)


@pytest.mark.parametrize("body", [
    b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}}',  # asked already
    b'{"model": "m", "stream": false}',
    b'{"model": "m"}',
    b'{"model": "m", "stream": "true"}',
    b'{"model": "m", "extra": {"stream": true}}',  # not the top level's
    b'{"model": "m", "stream": true, "stream_options": "yes"}',
    b'{"model": "m", "stream": true, "stream": true}',  # a key twice: left to the upstream
    b'{"model": "m", "stream": true, "stream_options": null, "stream_options": null}',
    b'{"model": "m", "stream": true',  # cut short
    b'{"model": "m", "stream": true} {}',
    b'[{"stream": true}]',
    b'\xff{"stream": true}',
    b'{"model": "\xff", "stream": true}',  # not UTF-8
])
def test_bodies_that_need_no_change_or_cannot_be_changed_safely(body):
    assert request_usage(body) is None


def test_named_hosts_parse_comma_separated_and_repeated():
    assert parse_usage_hosts(["a.example, B.example:8000", "c.example"]) == {"a.example", "b.example:8000", "c.example"}


@pytest.mark.parametrize("host, port, path, expected", [
    ("api.openai.com", 443, b"/v1/chat/completions", True),
    ("openrouter.ai", 443, b"/api/v1/chat/completions", True),
    ("api.mistral.ai", 443, b"/v1/chat/completions", False),  # refuses unknown fields
    ("api.together.xyz", 443, b"/v1/chat/completions", False),
    ("127.0.0.1", 8000, b"/v1/chat/completions", False),
    ("x.openai.azure.com", 443, b"/openai/deployments/d/chat/completions?api-version=2024-10-21", True),
    ("x.openai.azure.com", 443, b"/openai/deployments/d/chat/completions?api-version=2024-09-01-preview", True),
    ("x.openai.azure.com", 443, b"/openai/deployments/d/chat/completions?api-version=2024-02-01", False),
    ("x.openai.azure.com", 443, b"/openai/deployments/d/chat/completions", False),
    ("x.openai.azure.com", 443, b"/openai/v1/chat/completions", True),
])
def test_known_hosts(host, port, path, expected):
    assert accepts_stream_options(host, port, path, ServerMemory(), frozenset()) is expected


def test_named_identified_and_refusing_hosts():
    memory, named = ServerMemory(), frozenset({"gpu.lan", "127.0.0.1:9000"})
    assert accepts_stream_options("gpu.lan", 8000, b"/v1/completions", memory, named)
    assert accepts_stream_options("127.0.0.1", 9000, b"/v1/completions", memory, named)
    assert not accepts_stream_options("127.0.0.1", 9001, b"/v1/completions", memory, named)
    memory.learn("127.0.0.1", 9001, "vLLM")
    assert accepts_stream_options("127.0.0.1", 9001, b"/v1/completions", memory, named)
    memory.refuse("127.0.0.1", 9001, 400)
    memory.refuse("api.openai.com", 443, 400)
    assert not accepts_stream_options("127.0.0.1", 9001, b"/v1/completions", memory, named)
    assert not accepts_stream_options("api.openai.com", 443, b"/v1/completions", memory, named)


@pytest.mark.parametrize("status, body, documented, expected", [
    (400, b'{"error": {"message": "Unknown parameter: \'stream_options\'."}}', True, True),
    (422, b'{"detail": [{"loc": ["body", "stream_options", "include_usage"]}]}', True, True),
    (400, b'{"error": {"message": "maximum context length is 8192 tokens"}}', True, False),
    (400, b'{"error": "bad request"}', False, True),
    (422, b"", False, True),
    (404, b'{"error": "no such model"}', False, False),
    (429, b"{}", False, False),
    (500, b"stream_options", False, False),
    (200, b"", False, False),
])
def test_refusals(status, body, documented, expected):
    assert is_refusal(status, body, documented) is expected


def test_servers_say_what_they_are():
    assert server_from_header("llama.cpp") == "llama.cpp"
    assert server_from_header("uvicorn") is None  # vLLM's, and any FastAPI app's
    assert server_from_header(None) is None
    assert server_from_models(b'{"object":"list","data":[{"id":"m","object":"model","owned_by":"vllm"}]}') == "vLLM"
    assert server_from_models(b'{"data": [{"id": "m", "owned_by": "organization_owner"}]}') == "LM Studio"
    assert server_from_models(b'{"data": [{"id": "m", "owned_by": "openai"}]}') is None
    assert server_from_body(b'data: {"id":"chatcmpl-1","system_fingerprint":"fp_ollama","choices":[]}\n\n') == "Ollama"
    assert server_from_body(b'data: {"system_fingerprint":"fp_d0469e1700"}\n\n') is None


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr("addon.stream_usage.MEMORY_LIMIT", 2)
    memory = ServerMemory()
    for port in range(5):
        memory.learn("h", port, "vLLM")
    assert len(memory.servers) == 2


# --- the hooks, driven by hand in flow order (mitmproxy's test helpers) --------------------------

USAGE_CHUNK = b'data: {"model":"gpt-x-1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}\n\n'


@pytest.fixture
def addon(tmp_path):
    from mitmproxy.test import taddons

    from addon.llm_metrics import LLMMetrics

    metrics = LLMMetrics()
    with taddons.context(metrics) as tctx:
        tctx.configure(metrics, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_log_calls=False,
                       llm_metrics_worker=False)
        yield metrics
        metrics.done()


def known_flow(body: dict | None = None, path: str = "/v1/chat/completions", **headers):
    from tests.test_llm_metrics import CHAT, llm_flow

    flow = llm_flow(CHAT if body is None else body, path=path, host="api.openai.com", **headers)
    flow.request.headers["accept-encoding"] = "gzip, br"
    return flow


def through_request(addon, flow) -> None:
    addon.requestheaders(flow)
    addon.request(flow)


def rows(addon) -> list[dict]:
    from tests.test_llm_metrics import stored

    return stored(addon)


def test_hooks_ask_for_usage_and_the_client_gets_every_other_byte(addon):
    from tests.test_llm_metrics import SSE, sse_response

    flow = known_flow()
    through_request(addon, flow)
    assert json.loads(flow.request.content)["stream_options"] == {"include_usage": True}
    assert flow.request.headers["content-length"] == str(len(flow.request.raw_content))
    assert flow.request.headers["accept-encoding"] == "identity"
    flow.response = sse_response()
    flow.response.headers["content-length"] = str(len(SSE) + len(USAGE_CHUNK))  # a server that knew its length
    addon.responseheaders(flow)
    assert "content-length" not in flow.response.headers
    assert flow.response.headers["transfer-encoding"] == "chunked"
    upstream = SSE.replace(b"data: [DONE]", USAGE_CHUNK + b"data: [DONE]")
    pieces = [upstream[i : i + 50] for i in range(0, len(upstream), 50)]
    out = [flow.response.stream(p) for p in pieces]
    assert all(o != b"" for o in out), "an empty piece before the end would end a chunked body"
    assert b"".join(b"".join(o) if isinstance(o, list) else o for o in out) + flow.response.stream(b"") == SSE
    addon.response(flow)
    [row] = rows(addon)
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"], row["chunk_count"]) == ("reported", 9, 1, 4)


def test_a_compressed_answer_is_passed_on_as_it_came(addon, caplog):
    from tests.test_llm_metrics import sse_response

    flow = known_flow()
    through_request(addon, flow)
    flow.response = sse_response()
    flow.response.headers["content-encoding"] = "gzip"
    with caplog.at_level(logging.WARNING):
        addon.responseheaders(flow)
    assert flow.response.stream(USAGE_CHUNK) == USAGE_CHUNK
    assert "compressed a stream asked for uncompressed" in caplog.text


def test_a_filter_failure_passes_what_it_held_and_everything_after(addon, monkeypatch):
    from tests.test_llm_metrics import sse_response

    flow = known_flow()
    through_request(addon, flow)
    flow.response = sse_response()
    addon.responseheaders(flow)
    assert flow.response.stream(b"data: {") == []
    monkeypatch.setattr("addon.wire.sse_filter.is_usage_only", lambda event: 1 / 0)
    assert flow.response.stream(b'"a": 1}\n\ndata: {') == b'data: {"a": 1}\n\ndata: {'
    usage = USAGE_CHUNK
    assert flow.response.stream(usage) == usage  # passed untouched from then on


@pytest.mark.parametrize("case", ["compressed body", "not streamed", "responses path", "option off", "unknown host"])
def test_requests_left_as_they_are(addon, case):
    from mitmproxy.test import taddons

    from tests.test_llm_metrics import CHAT, llm_flow

    flow = {
        "compressed body": lambda: known_flow(**{"content-encoding": "gzip"}),
        "not streamed": lambda: known_flow({**CHAT, "stream": False}),
        "responses path": lambda: known_flow({"model": "m", "input": "hi", "stream": True}, path="/v1/responses"),
        "option off": known_flow,
        "unknown host": lambda: llm_flow(CHAT),
    }[case]()
    if case == "option off":
        with taddons.context(addon) as tctx:
            tctx.configure(addon, llm_metrics_inject_usage=False)
    before = flow.request.raw_content
    through_request(addon, flow)
    assert flow.request.raw_content == before
    assert flow.request.headers.get("accept-encoding") != "identity"
    assert flow.id not in addon.usage.injected
