"""HTTP/2 between the client and the proxy (negotiated over TLS), HTTP/1.1 to the upstream:
streams still pass chunk by chunk and are metered as over HTTP/1.1."""

from __future__ import annotations

import ssl

import pytest

from tests.clients import httpx

pytestmark = pytest.mark.e2e


class H2First(ssl.SSLContext):
    """Offers h2 before http/1.1 (httpx 0.28 offers http/1.1 first, and mitmproxy honours the
    client's order), so both SDK stacks really negotiate HTTP/2."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


@pytest.mark.parametrize("stream", [False, True])
def test_http2_client_through_the_proxy_is_recorded(start_proxy, tls_upstream, stream):
    # lazy: mitmproxy answers the client's ALPN itself (h2) instead of mirroring the HTTP/1.1-only
    # upstream, so the two sides really speak different versions
    proxy = start_proxy("--set", "ssl_insecure=true", "--set", "connection_strategy=lazy")
    context = H2First(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(proxy.ca_cert))
    client = httpx.Client(proxy=proxy.url, verify=context, http2=True)
    body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "stream_options": {"include_usage": True}}
    response = client.post(f"{tls_upstream.base_url}/chat/completions", json=body)
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    [row] = proxy.rows(1)
    assert (row["success"], row["model"], row["completion_tokens"]) == (1, "gpt-fake-2026-01-01", 6)
    assert row["is_streaming"] == int(stream)
    assert (row["chunk_count"] == 9) if stream else (row["chunk_count"] is None)


@pytest.mark.parametrize("stream", [False, True])
def test_http2_on_both_sides_is_recorded(start_proxy, tmp_path, stream):
    from tests.h2_upstream import H2Upstream

    with H2Upstream(tmp_path) as upstream:
        proxy = start_proxy("--set", "ssl_insecure=true")
        context = H2First(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(proxy.ca_cert))
        client = httpx.Client(proxy=proxy.url, verify=context, http2=True)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        response = client.post(f"{upstream.base_url}/chat/completions", json=body)
        assert response.status_code == 200 and response.http_version == "HTTP/2"
        assert upstream.protocols_seen == ["h2"]  # mitmproxy spoke HTTP/2 to the upstream too
        [row] = proxy.rows(1)
    assert (row["success"], row["model"], row["prompt_tokens"], row["completion_tokens"]) == (1, "h2-model", 3, 2)
    assert row["finish_reason"] == "stop"
    assert (row["chunk_count"] == 5 and row["time_to_first_token_ms"] is not None) if stream else row["chunk_count"] is None
