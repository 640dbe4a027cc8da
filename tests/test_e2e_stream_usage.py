"""End to end: the real `openai` SDK streaming without stream_options -> a real mitmdump -> the
fake upstream, which sends a usage chunk (empty choices) only when asked, as OpenAI does.

Where the upstream is known to accept stream_options the proxy asks for the usage and the client
still gets exactly the chunks of a direct call; elsewhere nothing is changed and the row's usage
is estimated.
"""

from __future__ import annotations

import openai
import pytest

from tests.conftest import wait_until
from tests.test_e2e_openai import client_via, create
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

TEXT = "Hello from the fake upstream."
# Estimates of the default scenario (addon/estimate.py): six words streamed one per chunk; the
# prompt's 28 characters (two roles, "Be brief.", "Say hello") / 4, 3 per message, 3 for the reply.
ESTIMATED = {"prompt_tokens": 7 + 3 * 2 + 3, "completion_tokens": 6, "total_tokens": 16 + 6}


def chunks(stream) -> list[dict]:
    return [c.model_dump() for c in stream]


def direct_chunks(upstream) -> list[dict]:
    """What the client gets from the upstream without the proxy, asking for no usage."""
    got = chunks(create(client_via(None, upstream), stream=True))
    assert "stream_options" not in upstream.last().body
    return got


def assert_estimated(row) -> None:
    assert row["usage_source"] == "estimated"
    assert {name: row[name] for name in ESTIMATED} == ESTIMATED
    assert (row["cached_tokens"], row["reasoning_tokens"], row["tokens_per_second"]) == (None, None, None)
    assert row["cost_usd"] is None  # a server anyone can run is never priced
    assert (row["success"], row["finish_reason"], row["chunk_count"]) == (1, "stop", 8)


@pytest.mark.parametrize("known", ["named", "model_list", "server_header"])
def test_stream_without_stream_options_gets_the_upstreams_usage_and_the_chunks_of_a_direct_call(start_proxy, upstream, known):
    proxy = start_proxy(*(("--set", "llm_metrics_usage_hosts=127.0.0.1") if known == "named" else ()))
    client = client_via(proxy, upstream)
    if known == "model_list":  # vLLM names itself as its models' owner
        upstream.models_owner = "vllm"
        assert [m.owned_by for m in client.models.list()] == ["vllm"]
    elif known == "server_header":  # llama-server sends `Server: llama.cpp`
        upstream.scenarios["default"] = Scenario(server="llama.cpp")
        assert create(client).choices[0].message.content == TEXT
    expected = direct_chunks(upstream)

    got = chunks(create(client, stream=True))

    assert got == expected
    assert len(got) == 8 and all(c["choices"] for c in got)  # role, six words, finish: no usage chunk
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in got) == TEXT
    sent = upstream.last()
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["accept-encoding"] == "identity"
    assert int(sent.headers["content-length"]) == len(sent.raw)
    row = proxy.rows(2 if known == "server_header" else 1)[-1]
    assert row["usage_source"] == "reported"
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"], row["cached_tokens"]) == (11, 6, 17, 3)
    assert row["chunk_count"] == 9  # the upstream's events, its usage chunk included
    assert (row["success"], row["finish_reason"], row["model"]) == (1, "stop", "gpt-fake-2026-01-01")
    assert row["time_to_first_token_ms"] is not None and row["tokens_per_second"] is not None


def test_upstream_that_rejects_stream_options_never_sees_it_and_its_row_is_estimated(proxy, upstream):
    upstream.scenarios["default"] = Scenario(refuse_stream_options=True)  # 127.0.0.1 is known to accept nothing
    got = chunks(create(client_via(proxy, upstream), stream=True))
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in got) == TEXT
    assert "stream_options" not in upstream.last().body
    [row] = proxy.rows(1)
    assert_estimated(row)
    assert wait_until(lambda: "tokens ~16→~6" in proxy.log(), timeout=10), proxy.log()  # the per-call line


def test_named_host_that_refuses_is_asked_once_then_never_again(start_proxy, upstream):
    upstream.scenarios["default"] = Scenario(refuse_stream_options=True)
    proxy = start_proxy("--set", "llm_metrics_usage_hosts=127.0.0.1")
    client = client_via(proxy, upstream)
    with pytest.raises(openai.BadRequestError):  # the one call the user's naming of the host costs
        create(client, stream=True)
    assert upstream.last().body["stream_options"] == {"include_usage": True}
    got = chunks(create(client, stream=True))
    assert len(got) == 8
    assert "stream_options" not in upstream.last().body
    first, second = proxy.rows(2)
    assert (first["status_code"], first["error_type"]) == (400, "unknown_parameter")
    assert_estimated(second)
    assert wait_until(lambda: "tokens ~16→~6" in proxy.log(), timeout=10)  # every line of both calls is out
    assert proxy.log().count("refused stream_options (HTTP 400)") == 1


def test_option_off_changes_no_request_and_the_row_is_estimated(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_inject_usage=false", "--set", "llm_metrics_usage_hosts=127.0.0.1")
    expected = direct_chunks(upstream)
    direct_sent = upstream.last()
    assert chunks(create(client_via(proxy, upstream), stream=True)) == expected
    sent = upstream.last()
    assert sent.raw == direct_sent.raw
    assert sent.headers["accept-encoding"] == direct_sent.headers["accept-encoding"] != "identity"
    [row] = proxy.rows(1)
    assert_estimated(row)


def test_client_that_asks_for_usage_itself_gets_its_request_and_usage_chunk_untouched(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_usage_hosts=127.0.0.1")
    options = {"include_usage": True}
    expected = chunks(create(client_via(None, upstream), stream=True, stream_options=options))
    direct_sent = upstream.last()
    got = chunks(create(client_via(proxy, upstream), stream=True, stream_options=options))
    assert got == expected
    assert got[-1]["choices"] == [] and got[-1]["usage"]["total_tokens"] == 17
    assert upstream.last().raw == direct_sent.raw
    [row] = proxy.rows(1)
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == ("reported", 11, 6)


def test_stream_options_without_usage_keep_their_other_keys(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_usage_hosts=127.0.0.1")
    got = chunks(create(client_via(proxy, upstream), stream=True,
                        stream_options={"include_usage": False}, extra_body={"extra": "kept"}))
    assert len(got) == 8 and all(c["choices"] for c in got)
    assert upstream.last().body["stream_options"] == {"include_usage": True}
    assert upstream.last().body["extra"] == "kept"
    [row] = proxy.rows(1)
    assert (row["usage_source"], row["completion_tokens"]) == ("reported", 6)


def test_http2_client_gets_the_stream_without_the_usage_chunk(start_proxy, tls_upstream):
    """HTTP/2 to the client (no chunked framing; an empty DATA frame is never sent), HTTP/1.1 to
    the upstream."""
    import ssl

    from tests.clients import httpx
    from tests.test_e2e_http2 import H2First

    proxy = start_proxy("--set", "ssl_insecure=true", "--set", "connection_strategy=lazy",
                        "--set", "llm_metrics_usage_hosts=127.0.0.1")
    context = H2First(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(proxy.ca_cert))
    client = httpx.Client(proxy=proxy.url, verify=context, http2=True)
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with client.stream("POST", f"{tls_upstream.base_url}/chat/completions", json=body) as response:
        assert response.http_version == "HTTP/2"
        received = b"".join(response.iter_raw())
    events = [e for e in received.split(b"\n\n") if e]
    assert len(events) == 9 and events[-1] == b"data: [DONE]"  # role, six words, finish, [DONE]
    assert b'"choices":[]' not in received
    assert tls_upstream.last().body["stream_options"] == {"include_usage": True}
    [row] = proxy.rows(1)
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == ("reported", 11, 6)
