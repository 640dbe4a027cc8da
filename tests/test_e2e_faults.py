"""Upstream and client faults through a real mitmdump: what the client receives equals what it
receives direct, each fault gives exactly one row naming it, and the next request is served."""

from __future__ import annotations

import pytest

from tests.clients import httpx
from tests.faulty_upstream import FaultyUpstream, big_completion

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def faulty():
    with FaultyUpstream() as server:
        yield server


def fetch(client, url: str, timeout: float = 3.0):
    """(status, headers, raw body bytes) or the exception's type name."""
    try:
        with client.stream("POST", url, json=BODY, timeout=timeout) as response:
            body = b"".join(response.iter_raw())
            return response.status_code, dict(response.headers), body
    except httpx.HTTPError as exc:
        return type(exc).__name__


# proxy-owned headers differ by design (mitmproxy may re-frame); everything else must not
OWNED = {"transfer-encoding", "connection", "content-length", "keep-alive", "date"}


def same_response(direct, proxied) -> bool:
    if isinstance(direct, str) or isinstance(proxied, str):
        return False
    strip = lambda headers: {k: v for k, v in headers.items() if k not in OWNED}  # noqa: E731
    return direct[0] == proxied[0] and strip(direct[1]) == strip(proxied[1]) and direct[2] == proxied[2]


PASSTHROUGH = [
    ("truncated-sse", 200, "incomplete_stream"),
    ("invalid-json", 200, "malformed_stream"),
    ("invalid-utf8", 200, "malformed_stream"),
    ("html-502", 502, "http_502"),
]


@pytest.mark.parametrize("script, status, error_type", PASSTHROUGH)
def test_faulty_responses_pass_through_byte_identical_and_are_recorded(proxy, faulty, script, status, error_type):
    direct = fetch(httpx.Client(trust_env=False), faulty.url(script))
    proxied = fetch(httpx.Client(proxy=proxy.url), faulty.url(script))
    assert same_response(direct, proxied), (direct, proxied)
    [row] = proxy.rows(1)
    assert (row["success"], row["status_code"], row["error_type"]) == (0, status, error_type)
    assert row["error_message"]
    assert_next_request_served(proxy, faulty)


def assert_next_request_served(proxy, faulty, already: int = 1) -> None:
    client = httpx.Client(proxy=proxy.url)
    response = client.post(faulty.url("ok"), json=dict(BODY, stream=False))
    assert response.status_code == 200 and response.json()["model"] == "m-ok"
    rows = proxy.rows(already + 1)
    assert len(rows) == already + 1 and rows[-1]["success"] == 1


CONNECTION_FAULTS = [
    ("reset-before-headers", None, "upstream_disconnected", 3.0),
    ("reset-mid-stream", 200, "upstream_disconnected", 3.0),
    ("stall-before-headers", None, "client_disconnected", 1.0),
    ("stall-mid-stream", 200, "client_disconnected", 1.0),
]


@pytest.mark.parametrize("script, status, error_type, timeout", CONNECTION_FAULTS)
def test_connection_faults_give_one_row_naming_them(proxy, faulty, script, status, error_type, timeout):
    direct = fetch(httpx.Client(trust_env=False), faulty.url(script), timeout)
    proxied = fetch(httpx.Client(proxy=proxy.url), faulty.url(script), timeout)
    assert isinstance(direct, str)  # the client sees an error either way
    assert isinstance(proxied, str) or proxied[0] == 502  # or mitmproxy's own 502 for no response
    [row] = proxy.rows(1)
    assert (row["success"], row["status_code"], row["error_type"]) == (0, status, error_type), row["error_message"]
    assert_next_request_served(proxy, faulty)


def test_50_mb_json_body_is_passed_and_metered(proxy, faulty):
    faulty.big_body = big_completion(50)
    client = httpx.Client(proxy=proxy.url, timeout=60)
    response = client.post(faulty.url("big-json"), json=dict(BODY, stream=False))
    assert response.status_code == 200 and len(response.content) == len(faulty.big_body)
    assert response.content == faulty.big_body
    [row] = proxy.rows(1)
    assert (row["success"], row["model"], row["completion_tokens"], row["finish_reason"]) == (1, "m-big", 4096, "length")
    assert_next_request_served(proxy, faulty)
