"""End to end for every API besides chat completions: the real `anthropic`, `google-genai` and
`openai` SDKs (and a plain HTTP client for Ollama and Gemini's JSON-array streams) -> a real
mitmdump with the addon -> the fake provider upstream. Each case asserts the stored row.

The upstream listens on 127.0.0.1, so each proxy is told which provider that host stands for
(`llm_metrics_hosts=127.0.0.1=NAME`), as a user does for a gateway: that names the provider and
prices the call from the genai-prices data.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests import provider_upstream as up
from tests.clients import httpx
from tests.provider_upstream import ProviderUpstream

pytestmark = pytest.mark.e2e

DELAY_S = 0.25  # before the first generated content
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
API_KEY = "sk-test-DO-NOT-STORE-77e1"
PER_M = 1e-6
UNCACHED = up.PROMPT_TOKENS - up.CACHE_READ_TOKENS - up.CACHE_WRITE_TOKENS


@pytest.fixture
def upstream():
    with ProviderUpstream(first_token_delay=DELAY_S, chunk_delay=0.01) as server:
        yield server


def proxy_for(start_proxy, provider: str):
    return start_proxy("--set", f"llm_metrics_hosts=127.0.0.1={provider}")


class FirstContent:
    """The client's own time to first generated content: the proxy sees the request after the
    client sent it and the content before the client gets it, so its recorded time to first
    token lies between the upstream's delay and this, however loaded the machine is."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ms: float | None = None

    def saw(self, content) -> None:
        if content and self.ms is None:
            self.ms = (time.perf_counter() - self.started) * 1000


def assert_row(row: dict, *, streamed: bool, first: FirstContent | None = None, **expected) -> None:
    assert TIMESTAMP.match(row["timestamp"])
    assert (row["success"], row["status_code"], row["error_type"], row["error_message"]) == (1, 200, None, None)
    assert row["host"] == "127.0.0.1"
    assert row["is_streaming"] == int(streamed)
    assert 0 <= row["time_to_first_byte_ms"] <= row["response_time_ms"]
    for column, value in expected.items():
        if isinstance(value, float):
            assert row[column] == pytest.approx(value, rel=1e-9), column
        else:
            assert row[column] == value, column
    if streamed:
        ttft = row["time_to_first_token_ms"]
        assert DELAY_S * 1000 - 2 <= ttft <= first.ms + 2, (ttft, first.ms)
        # Stamped as it passed, not after the whole stream was buffered: the last token came later.
        assert ttft < row["time_to_last_token_ms"] <= row["response_time_ms"]
    else:
        assert row["time_to_first_token_ms"] is None and row["chunk_count"] is None


# --- Anthropic Messages, with the anthropic SDK ----------------------------------------------------

ANTHROPIC_COST = (UNCACHED * 3 + up.CACHE_READ_TOKENS * 0.30 + up.CACHE_WRITE_TOKENS * 3.75 + up.OUTPUT_TOKENS * 15) * PER_M


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_call_is_recorded_with_cache_writes_and_cost(start_proxy, upstream, streamed):
    proxy = proxy_for(start_proxy, "anthropic")
    client = anthropic.Anthropic(base_url=upstream.url, api_key=API_KEY, max_retries=0,
                                 http_client=anthropic.DefaultHttpxClient(proxy=proxy.url))
    # anthropic 2.x takes no `temperature` argument; the API still does: send it in the body.
    request = dict(model="claude-3-5-sonnet-20240620", max_tokens=64, extra_body={"temperature": 0.5},
                   messages=[{"role": "user", "content": "Say hello"}])
    first = FirstContent()
    if streamed:
        deltas = []
        for event in client.messages.create(**request, stream=True):
            if event.type == "content_block_delta":
                first.saw(event.delta.text)
                deltas.append(event.delta.text)
        text = "".join(deltas)
    else:
        text = client.messages.create(**request).content[0].text
    assert text == up.TEXT
    [row] = proxy.rows(1)
    assert_row(
        row, streamed=streamed, first=first, provider="anthropic", operation="messages", path="/v1/messages",
        model="claude-3-5-sonnet-20240620", request_model="claude-3-5-sonnet-20240620", origin="Anthropic/Python",
        max_tokens=64, temperature=0.5, message_count=1,
        prompt_tokens=up.PROMPT_TOKENS, cached_tokens=up.CACHE_READ_TOKENS, cache_creation_tokens=up.CACHE_WRITE_TOKENS,
        completion_tokens=up.OUTPUT_TOKENS, total_tokens=up.PROMPT_TOKENS + up.OUTPUT_TOKENS, reasoning_tokens=None,
        finish_reason="end_turn", finish_category="stop", usage_source="reported", cost_usd=ANTHROPIC_COST,
        # message_start, content_block_start, ping, 6 deltas, content_block_stop, message_delta, message_stop
        chunk_count=12 if streamed else None,
    )


# --- Gemini, with the google-genai SDK (generateContent, and streamed as SSE) ----------------------

GEMINI_COMPLETION = up.OUTPUT_TOKENS + up.REASONING_TOKENS  # thoughts are output too
GEMINI_COST = ((up.PROMPT_TOKENS - up.CACHE_READ_TOKENS) * 0.30 + up.CACHE_READ_TOKENS * 0.03 + GEMINI_COMPLETION * 2.50) * PER_M


def gemini_row(row: dict, *, streamed: bool, path: str, first: FirstContent) -> None:
    assert_row(
        row, streamed=streamed, first=first, provider="gemini", operation="generate_content", path=path,
        model="gemini-2.5-flash", request_model="gemini-2.5-flash",
        max_tokens=64, temperature=0.5, top_p=0.9, message_count=1,
        prompt_tokens=up.PROMPT_TOKENS, cached_tokens=up.CACHE_READ_TOKENS, cache_creation_tokens=None,
        completion_tokens=GEMINI_COMPLETION, reasoning_tokens=up.REASONING_TOKENS,
        total_tokens=up.PROMPT_TOKENS + GEMINI_COMPLETION,
        finish_reason="STOP", finish_category="stop", usage_source="reported", cost_usd=GEMINI_COST,
        chunk_count=len(up.WORDS) if streamed else None,
    )


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream-sse"])
def test_google_genai_sdk_call_is_recorded_with_thoughts_as_output_and_cost(start_proxy, upstream, streamed):
    proxy = proxy_for(start_proxy, "gemini")
    client = genai.Client(api_key=API_KEY, http_options=genai_types.HttpOptions(
        base_url=upstream.url, api_version="v1beta", client_args={"proxy": proxy.url}))
    config = genai_types.GenerateContentConfig(max_output_tokens=64, temperature=0.5, top_p=0.9)
    first = FirstContent()
    if streamed:
        texts = []
        for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="Say hello", config=config):
            first.saw(chunk.text)
            texts.append(chunk.text or "")
        text = "".join(texts)
    else:
        text = client.models.generate_content(model="gemini-2.5-flash", contents="Say hello", config=config).text
    assert text == up.TEXT
    method = "streamGenerateContent" if streamed else "generateContent"
    assert upstream.last().path.startswith(f"/v1beta/models/gemini-2.5-flash:{method}")
    [row] = proxy.rows(1)
    gemini_row(row, streamed=streamed, path=f"/v1beta/models/gemini-2.5-flash:{method}", first=first)
    assert row["origin"].startswith("google-genai")


def test_gemini_gzip_json_array_stream_is_metered_as_it_arrives(start_proxy, upstream):
    """Without alt=sse Gemini streams one JSON array as gzip-encoded application/json."""
    proxy = proxy_for(start_proxy, "gemini")
    url = f"{upstream.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
            "generationConfig": {"maxOutputTokens": 64, "temperature": 0.5, "topP": 0.9}}
    first = FirstContent()
    with httpx.Client(proxy=proxy.url) as client:
        with client.stream("POST", url, json=body, headers={"accept-encoding": "gzip", "x-goog-api-key": API_KEY}) as response:
            assert response.headers["content-encoding"] == "gzip"
            assert response.headers["content-type"].startswith("application/json")
            wire = b""
            for piece in response.iter_raw():
                wire += piece
                # The first element is complete once its text has arrived (it holds nothing else).
                first.saw(b'"Hello"' in zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(wire))
    elements = json.loads(gzip.decompress(wire))
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in elements) == up.TEXT
    [row] = proxy.rows(1)
    gemini_row(row, streamed=True, path="/v1beta/models/gemini-2.5-flash:streamGenerateContent", first=first)


# --- Gemini Code Assist (Gemini CLI signed in with a Google account), with a plain HTTP client -----


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream-sse"])
def test_gemini_code_assist_call_is_metered_as_gemini_inside_its_envelope(start_proxy, upstream, streamed):
    """The request as gemini-cli's CodeAssistServer sends it, to a host of no known name: the row
    is named after the API (the real host, cloudcode-pa.googleapis.com, is `gemini-code-assist`)."""
    proxy = start_proxy()
    method = "streamGenerateContent" if streamed else "generateContent"
    body = {"model": "gemini-2.5-pro", "project": "proj-123", "user_prompt_id": "a1b2c3########0",
            "request": {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
                        "generationConfig": {"maxOutputTokens": 64, "temperature": 0.5, "topP": 0.9},
                        "session_id": "s-1"}}
    first = FirstContent()
    texts = []
    with httpx.Client(proxy=proxy.url) as client:
        url = f"{upstream.url}/v1internal:{method}" + ("?alt=sse" if streamed else "")
        with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {API_KEY}"}) as response:
            if streamed:
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        text = json.loads(line[6:])["response"]["candidates"][0]["content"]["parts"][0]["text"]
                        first.saw(text)
                        texts.append(text)
            else:
                response.read()
                texts.append(response.json()["response"]["candidates"][0]["content"]["parts"][0]["text"])
    assert "".join(texts) == up.TEXT
    [row] = proxy.rows(1)
    assert_row(
        row, streamed=streamed, first=first, provider="gemini-code-assist-compatible", operation="generate_content",
        path=f"/v1internal:{method}", model=up.CODE_ASSIST_MODEL, request_model="gemini-2.5-pro",
        max_tokens=64, temperature=0.5, top_p=0.9, message_count=1,
        prompt_tokens=up.PROMPT_TOKENS, cached_tokens=up.CACHE_READ_TOKENS, cache_creation_tokens=None,
        completion_tokens=GEMINI_COMPLETION, reasoning_tokens=up.REASONING_TOKENS,
        total_tokens=up.PROMPT_TOKENS + GEMINI_COMPLETION, finish_reason="STOP", finish_category="stop",
        usage_source="reported", cost_usd=None,  # no list price: a server of no known name
        chunk_count=len(up.WORDS) if streamed else None,
    )


# --- Provider by API on a host of no known name ----------------------------------------------------


def test_calls_to_an_unknown_host_name_the_provider_after_the_api_they_speak(start_proxy, upstream):
    """Anthropic's, Gemini's and OpenAI's APIs on one 127.0.0.1 server, with no name given to the
    host: each row says which API it spoke, and none is priced (a server anyone can run)."""
    proxy = start_proxy()
    anthropic_client = anthropic.Anthropic(base_url=upstream.url, api_key=API_KEY, max_retries=0,
                                           http_client=anthropic.DefaultHttpxClient(proxy=proxy.url))
    with anthropic_client.messages.stream(model="claude-3-5-sonnet-20240620", max_tokens=64,
                                          messages=[{"role": "user", "content": "Say hello"}]) as stream:
        assert stream.get_final_text() == up.TEXT
    gemini_client = genai.Client(api_key=API_KEY, http_options=genai_types.HttpOptions(
        base_url=upstream.url, api_version="v1beta", client_args={"proxy": proxy.url}))
    assert gemini_client.models.generate_content(model="gemini-2.5-flash", contents="Say hello").text == up.TEXT
    assert openai_client(proxy, upstream).responses.create(model="gpt-4o-mini", input="Say hello").output_text == up.TEXT
    rows = proxy.rows(3)
    assert [(r["provider"], r["operation"], r["host"], r["usage_source"], r["cost_usd"]) for r in rows] == [
        ("anthropic-compatible", "messages", "127.0.0.1", "reported", None),
        ("gemini-compatible", "generate_content", "127.0.0.1", "reported", None),
        ("openai-compatible", "responses", "127.0.0.1", "reported", None),
    ]


# --- OpenAI Responses API and Embeddings, with the openai SDK --------------------------------------

RESPONSES_COST = ((up.PROMPT_TOKENS - up.CACHE_READ_TOKENS) * 0.15 + up.CACHE_READ_TOKENS * 0.075 + up.OUTPUT_TOKENS * 0.60) * PER_M


def openai_client(proxy, upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{upstream.url}/v1", api_key=API_KEY, max_retries=0,
                         http_client=httpx.Client(proxy=proxy.url))


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "stream"])
def test_openai_responses_api_call_is_recorded(start_proxy, upstream, streamed):
    proxy = proxy_for(start_proxy, "openai")
    client = openai_client(proxy, upstream)
    request = dict(model="gpt-4o-mini", input="Say hello", max_output_tokens=64, temperature=0.5, top_p=0.9)
    first = FirstContent()
    if streamed:
        deltas = []
        for event in client.responses.create(**request, stream=True):
            if event.type == "response.output_text.delta":
                first.saw(event.delta)
                deltas.append(event.delta)
        text = "".join(deltas)
    else:
        text = client.responses.create(**request).output_text
    assert text == up.TEXT
    [row] = proxy.rows(1)
    assert_row(
        row, streamed=streamed, first=first, provider="openai", operation="responses", path="/v1/responses",
        model="gpt-4o-mini-2024-07-18", request_model="gpt-4o-mini", origin="OpenAI/Python",
        max_tokens=64, temperature=0.5, top_p=0.9, message_count=None,
        prompt_tokens=up.PROMPT_TOKENS, cached_tokens=up.CACHE_READ_TOKENS, cache_creation_tokens=None,
        completion_tokens=up.OUTPUT_TOKENS, reasoning_tokens=up.REASONING_TOKENS,
        total_tokens=up.PROMPT_TOKENS + up.OUTPUT_TOKENS,
        finish_reason="completed", finish_category="stop", usage_source="reported", cost_usd=RESPONSES_COST,
        # created, in_progress, output_item.added, content_part.added, 6 deltas, output_text.done, completed
        chunk_count=12 if streamed else None,
    )


def test_openai_embeddings_call_is_recorded_with_input_tokens_only(start_proxy, upstream):
    proxy = proxy_for(start_proxy, "openai")
    result = openai_client(proxy, upstream).embeddings.create(model="text-embedding-ada-002", input="Say hello")
    assert result.data[0].embedding == [0.25, -0.5, 0.125]
    [row] = proxy.rows(1)
    assert_row(
        row, streamed=False, provider="openai", operation="embeddings", path="/v1/embeddings",
        model="text-embedding-ada-002", request_model="text-embedding-ada-002", origin="OpenAI/Python",
        prompt_tokens=up.EMBEDDING_TOKENS, completion_tokens=None, total_tokens=up.EMBEDDING_TOKENS,
        cached_tokens=None, reasoning_tokens=None, finish_reason=None, finish_category=None,
        usage_source="reported", cost_usd=up.EMBEDDING_TOKENS * 0.10 * PER_M,
    )


# --- Ollama's native API, NDJSON, with a plain HTTP client -----------------------------------------


@pytest.mark.parametrize(("path", "streamed"), [("/api/chat", True), ("/api/chat", False), ("/api/generate", True)])
def test_ollama_native_call_records_the_servers_own_timings(start_proxy, upstream, path, streamed):
    proxy = proxy_for(start_proxy, "ollama")
    chat = path == "/api/chat"
    body = {"model": "llama3", "options": {"num_predict": 64, "temperature": 0.5, "top_p": 0.9},
            **({"messages": [{"role": "user", "content": "Say hello"}]} if chat else {"prompt": "Say hello"}),
            **({} if streamed else {"stream": False})}
    first = FirstContent()
    lines = []
    with httpx.Client(proxy=proxy.url) as client:
        with client.stream("POST", f"{upstream.url}{path}", json=body) as response:
            for raw in response.iter_lines():
                if raw:
                    lines.append(json.loads(raw))
                    first.saw(lines[-1]["message"]["content"] if chat else lines[-1]["response"])
    text = "".join(line["message"]["content"] if chat else line["response"] for line in lines)
    assert text == up.TEXT and lines[-1]["done"] is True
    [row] = proxy.rows(1)
    assert_row(
        row, streamed=streamed, first=first, provider="ollama", operation="chat" if chat else "text_completion", path=path,
        model="llama3", request_model="llama3", max_tokens=64, temperature=0.5, top_p=0.9,
        message_count=1 if chat else None,
        prompt_tokens=17, completion_tokens=up.OUTPUT_TOKENS, total_tokens=17 + up.OUTPUT_TOKENS,
        prompt_eval_duration_ms=313.56, eval_duration_ms=1577.99,
        finish_reason="stop", finish_category="stop", usage_source="reported",
        cost_usd=None,  # a model on your own machine has no list price
        chunk_count=len(up.WORDS) + 1 if streamed else None,
    )
