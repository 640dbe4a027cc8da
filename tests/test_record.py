"""addon/record.py: provider and origin naming, row timestamps, and one call turned into a row."""

from __future__ import annotations

from datetime import UTC, datetime

import peewee
import pytest

from addon import bounds
from addon.agents import Identity
from addon.formats import FORMATS, ResponseFacts
from addon.formats.openai_chat import OpenAIChat
from addon.quota import Headroom
from addon.record import Call, build_row, known_provider, origin_from_user_agent, provider_for
from storage.models import CompletionRequest

# --- provider_for -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "provider"),
    [
        ("api.openai.com", "openai"),
        ("api.anthropic.com", "anthropic"),
        ("generativelanguage.googleapis.com", "gemini"),
        ("cloudcode-pa.googleapis.com", "gemini-code-assist"),
        ("aiplatform.googleapis.com", "vertex-ai"),
        ("openrouter.ai", "openrouter"),
        ("api.groq.com", "groq"),
        ("api.mistral.ai", "mistral"),
        ("api.deepseek.com", "deepseek"),
        ("api.together.xyz", "together"),
        ("api.fireworks.ai", "fireworks"),
        ("api.x.ai", "xai"),
        ("api.perplexity.ai", "perplexity"),
        ("api.cerebras.ai", "cerebras"),
        ("API.OpenAI.COM", "openai"),
    ],
)
def test_well_known_host_names_its_provider(host, provider):
    assert provider_for(host, 443) == provider


@pytest.mark.parametrize(
    ("host", "provider"),
    [
        ("my-resource.openai.azure.com", "azure-openai"),
        ("my-resource.cognitiveservices.azure.com", "azure-openai"),
        ("my-project.services.ai.azure.com", "azure-openai"),
        ("us-central1-aiplatform.googleapis.com", "vertex-ai"),
        ("europe-west4-aiplatform.googleapis.com", "vertex-ai"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "aws-bedrock"),
        ("My-Resource.OpenAI.Azure.com", "azure-openai"),
    ],
)
def test_azure_and_vertex_regional_hosts_are_recognised_by_suffix(host, provider):
    assert provider_for(host, 443) == provider


@pytest.mark.parametrize(
    "host",
    [
        "api.openai.com.example.net",  # a well-known name as a prefix only
        "openai.azure.com.example.net",
        "notapi.openai.com",
        "localhost",
        "10.0.0.7",
        "vllm.internal",
    ],
)
def test_unknown_host_is_named_after_the_api_it_speaks(host):
    assert known_provider(host, 8000) is None
    assert provider_for(host, 8000) == "openai-compatible"
    assert provider_for(host, 8000, family="anthropic") == "anthropic-compatible"
    assert provider_for(host, 8000, family="gemini") == "gemini-compatible"


def test_every_format_names_unknown_hosts_after_its_api():
    names = {type(fmt).__name__: provider_for("127.0.0.1", 8000, family=fmt.family) for fmt in FORMATS}
    assert names == {
        "OpenAIChat": "openai-compatible", "OpenAICompletions": "openai-compatible",
        "OpenAIResponses": "openai-compatible", "OpenAIEmbeddings": "openai-compatible",
        "AnthropicMessages": "anthropic-compatible", "GeminiCodeAssist": "gemini-code-assist-compatible",
        "GeminiGenerateContent": "gemini-compatible", "OllamaChat": "ollama-compatible",
        "OllamaGenerate": "ollama-compatible", "BedrockConverse": "aws-bedrock-compatible",
        "BedrockInvokeAnthropic": "aws-bedrock-compatible",
    }


def test_a_known_host_keeps_its_name_whatever_the_api():
    assert provider_for("api.openai.com", 443, family="anthropic") == "openai"
    assert provider_for("gpu-box.lan", 11434, family="openai") == "ollama"
    assert provider_for("llm.internal", 8000, {"llm.internal": "vllm"}, family="gemini") == "vllm"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "gpu-box.lan"])
def test_ollama_default_port_on_unknown_host_is_ollama(host):
    assert provider_for(host, 11434) == "ollama"


def test_well_known_host_wins_over_ollama_port():
    assert provider_for("api.openai.com", 11434) == "openai"


@pytest.mark.parametrize(
    ("host", "port", "extra", "provider"),
    [
        ("llm.internal", 8000, {"llm.internal": "vllm"}, "vllm"),
        ("LLM.Internal", 8000, {"llm.internal": "vllm"}, "vllm"),
        ("api.openai.com", 443, {"api.openai.com": "corp-gateway"}, "corp-gateway"),
        ("x.openai.azure.com", 443, {"x.openai.azure.com": "corp-azure"}, "corp-azure"),
        ("localhost", 11434, {"localhost": "lm-studio"}, "lm-studio"),
        # A host named without a provider (`--set llm_metrics_hosts=host`) is detected as usual.
        ("api.groq.com", 443, {"api.groq.com": ""}, "groq"),
        ("llm.internal", 8000, {"llm.internal": ""}, "openai-compatible"),
        ("other.internal", 8000, {"llm.internal": "vllm"}, "openai-compatible"),
    ],
)
def test_extra_hosts_mapping_overrides_detection(host, port, extra, provider):
    assert provider_for(host, port, extra) == provider


# --- origin_from_user_agent ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "origin"),
    [
        ("OpenAI/Python 1.54.0", "OpenAI/Python"),
        ("AsyncOpenAI/Python 1.54.0", "AsyncOpenAI/Python"),
        ("OpenAI/JS 4.67.3", "OpenAI/JS"),
        ("curl/8.5.0", "curl"),
        ("python-requests/2.32.3", "python-requests"),
        ("python-httpx/0.27.2", "python-httpx"),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)", "Mozilla"),
        ("node-fetch", "node-fetch"),
        ("  litellm/1.50.2  extra", "litellm"),
    ],
)
def test_origin_is_the_client_product_without_its_version(user_agent, origin):
    assert origin_from_user_agent(user_agent) == origin


@pytest.mark.parametrize("user_agent", [None, "", " ", "\t \r\n"])
def test_missing_or_blank_user_agent_has_no_origin(user_agent):
    assert origin_from_user_agent(user_agent) is None


@pytest.mark.parametrize("user_agent", ["x" * 500, "y" * 500 + "/1.0", "z" * 500 + "/Python 1.0"])
def test_origin_is_capped_at_100_characters(user_agent):
    origin = origin_from_user_agent(user_agent)
    assert len(origin) == 100
    assert user_agent.startswith(origin)


EXAMPLE_EPOCH = datetime(2026, 11, 22, 14, 3, 7, 123456, tzinfo=UTC).timestamp()


# --- build_row ----------------------------------------------------------------------------------

T0 = 1000.0  # perf_counter at request start
REQUEST = {
    "request_model": "gpt-4o-mini",
    "is_streaming": True,
    "max_tokens": 256,
    "temperature": 0.2,
    "top_p": 0.9,
    "message_count": 3,
}


def make_call(*, streamed=False, request=None, headers=None, first=None, last=None, origin="OpenAI/Python"):
    return Call(
        fmt=OpenAIChat(),
        started_at=EXAMPLE_EPOCH,
        t_start=T0,
        host="api.openai.com",
        port=443,
        path="/v1/chat/completions",
        provider="openai",
        origin=origin,
        request=dict(REQUEST if request is None else request),
        t_headers=headers,
        t_first_token=first,
        t_last_token=last,
        streamed=streamed,
    )


def test_row_has_exactly_the_stored_columns():
    row = build_row(make_call(), ResponseFacts(), status_code=200, t_end=T0 + 1)
    assert set(row) == set(CompletionRequest._meta.columns) - {"id"}


def test_row_copies_what_the_request_and_response_said():
    facts = ResponseFacts(
        model="gpt-4o-mini-2024-07-18", prompt_tokens=78, completion_tokens=9, total_tokens=87,
        cached_tokens=64, reasoning_tokens=3, finish_reason="stop",
    )
    row = build_row(make_call(headers=T0 + 0.3), facts, status_code=200, t_end=T0 + 0.5)
    assert row == {
        "timestamp": "2026-11-22T14:03:07.123456Z",
        "success": True,
        "status_code": 200,
        "response_time_ms": 500,
        "model": "gpt-4o-mini-2024-07-18",
        "request_model": "gpt-4o-mini",
        "provider": "openai",
        "host": "api.openai.com",
        "path": "/v1/chat/completions",
        "origin": "OpenAI/Python",
        "is_streaming": True,
        "max_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "message_count": 3,
        "prompt_tokens": 78,
        "completion_tokens": 9,
        "total_tokens": 87,
        "cached_tokens": 64,
        "cache_creation_tokens": None,
        "reasoning_tokens": 3,
        "finish_reason": "stop",
        "finish_category": "stop",
        "operation": "chat",
        "usage_source": "reported",
        # gpt-4o-mini: 14 uncached input at $0.15/M, 64 cache reads at $0.075/M, 9 output at $0.6/M
        "cost_usd": pytest.approx((14 * 0.15 + 64 * 0.075 + 9 * 0.6) / 1e6, rel=1e-9),
        "prompt_eval_duration_ms": None,
        "eval_duration_ms": None,
        "time_to_first_byte_ms": 300,
        "time_to_first_token_ms": None,  # the request asked to stream; the response did not
        "time_to_last_token_ms": None,
        "tokens_per_second": None,
        "chunk_count": None,
        "error_type": None,
        "error_message": None,
        "metering_note": None,
        "price_source": "genai-prices",
        **dict.fromkeys(Identity._fields), **dict.fromkeys(Headroom._fields),  # nobody said
    }


def test_row_carries_who_made_the_call_and_the_headroom_left():
    call = make_call()
    call.identity = Identity(agent="codex", agent_version="0.171.0", session_id="s-1", retry_count=2, auth_mode="oauth")
    call.headroom = Headroom(rate_remaining_tokens=5_000_000_000, quota_used_percent=42.5, quota_window_minutes=300)
    row = build_row(call, ResponseFacts(), status_code=200, t_end=T0 + 1)
    assert (row["agent"], row["agent_version"], row["session_id"], row["retry_count"], row["auth_mode"]) == \
        ("codex", "0.171.0", "s-1", 2, "oauth")
    assert (row["rate_remaining_tokens"], row["quota_used_percent"], row["quota_window_minutes"]) == \
        (5_000_000_000, 42.5, 300)


def test_a_retry_count_no_sdk_sends_is_left_out_with_a_note():
    call = make_call()
    call.identity = Identity(retry_count=10**12)
    row = build_row(call, ResponseFacts(), status_code=200, t_end=T0 + 1)
    assert row["retry_count"] is None and "retry_count" in row["metering_note"]


UNKNOWABLE = (
    "model", "request_model", "origin", "max_tokens", "temperature", "top_p", "message_count",
    "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens",
    "finish_reason", "time_to_first_byte_ms", "time_to_first_token_ms", "time_to_last_token_ms",
    "tokens_per_second", "error_type", "error_message",
)


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
def test_values_nobody_reported_stay_none_never_zero(streamed):
    call = make_call(streamed=streamed, request={}, origin=None)
    row = build_row(call, ResponseFacts(), status_code=200, t_end=T0 + 1)
    assert {name: row[name] for name in UNKNOWABLE} == dict.fromkeys(UNKNOWABLE)
    assert row["chunk_count"] == (0 if streamed else None)  # a stream with no events had 0


@pytest.mark.parametrize(
    ("prompt", "completion", "reported_total", "total"),
    [
        (10, 5, None, 15),
        (0, 0, None, 0),
        (10, None, None, None),
        (None, 5, None, None),
        (None, None, None, None),
        (10, 5, 99, 99),  # the provider's own total wins (it may count tokens we do not see)
        (None, None, 42, 42),
    ],
)
def test_total_tokens_is_derived_only_when_prompt_and_completion_are_known(
    prompt, completion, reported_total, total
):
    facts = ResponseFacts(prompt_tokens=prompt, completion_tokens=completion, total_tokens=reported_total)
    assert build_row(make_call(), facts, status_code=200, t_end=T0 + 1)["total_tokens"] == total


def test_streamed_call_records_token_timings_rate_and_chunks():
    call = make_call(streamed=True, headers=T0 + 0.05, first=T0 + 0.2, last=T0 + 1.2)
    facts = ResponseFacts(completion_tokens=50, events=17)
    row = build_row(call, facts, status_code=200, t_end=T0 + 1.25)
    assert (row["time_to_first_byte_ms"], row["time_to_first_token_ms"], row["time_to_last_token_ms"]) == (
        50, 200, 1200,
    )
    assert row["response_time_ms"] == 1250
    assert row["tokens_per_second"] == pytest.approx(49.0)  # the 49 tokens after the first over first..last = 1 s
    assert row["chunk_count"] == 17
    assert row["is_streaming"] is True


def test_tokens_per_second_ignores_the_wait_for_the_first_token():
    call = make_call(streamed=True, first=T0 + 10.0, last=T0 + 12.0)
    row = build_row(call, ResponseFacts(prompt_tokens=5000, completion_tokens=101), status_code=200, t_end=T0 + 12)
    assert row["tokens_per_second"] == pytest.approx(50.0)


@pytest.mark.parametrize("tokens", [2, 4, 48])
def test_tokens_per_second_is_the_decode_rate_of_n_tokens_sent_at_a_steady_rate(tokens):
    """AIPerf's and vLLM's definition: one token every 10 ms is 100 tokens/s, however few there are
    (N tokens over their N - 1 gaps, never N over N - 1 gaps: 2 tokens would read as 200)."""
    call = make_call(streamed=True, first=T0 + 0.3, last=T0 + 0.3 + (tokens - 1) * 0.010)
    row = build_row(call, ResponseFacts(completion_tokens=tokens), status_code=200, t_end=T0 + 1)
    assert row["tokens_per_second"] == pytest.approx(100.0, rel=1e-4)


@pytest.mark.parametrize(
    ("first", "last", "completion"),
    [
        (T0 + 0.5, T0 + 0.5, 1),  # a single content chunk: no span to divide by
        (T0 + 0.5, T0 + 0.6, 1),  # one token: no gap after it, whatever the chunks (a reasoning chunk)
        (T0 + 0.5, T0 + 0.6, 0),
        (T0 + 0.5, T0 + 0.4, 10),  # clock went backwards
        (T0 + 0.2, T0 + 1.2, None),  # the stream never reported usage
        (None, None, 10),  # no content arrived
    ],
    ids=["zero-span", "one-token", "zero-tokens", "negative-span", "tokens-unknown", "no-token"],
)
def test_tokens_per_second_is_none_without_a_span_or_a_count(first, last, completion):
    call = make_call(streamed=True, first=first, last=last)
    row = build_row(call, ResponseFacts(completion_tokens=completion), status_code=200, t_end=T0 + 2)
    assert row["tokens_per_second"] is None


def test_non_streamed_call_has_no_token_timings_even_if_stamped():
    call = make_call(streamed=False, headers=T0 + 0.1, first=T0 + 0.2, last=T0 + 0.9)
    row = build_row(call, ResponseFacts(completion_tokens=50, events=3), status_code=200, t_end=T0 + 1)
    assert [row[k] for k in ("time_to_first_token_ms", "time_to_last_token_ms", "tokens_per_second",
                             "chunk_count")] == [None, None, None, None]
    assert (row["time_to_first_byte_ms"], row["response_time_ms"]) == (100, 1000)


@pytest.mark.parametrize(
    ("field", "call_kwargs", "t_end"),
    [
        ("response_time_ms", {}, T0 - 0.5),
        ("time_to_first_byte_ms", {"headers": T0 - 0.5}, T0 + 1),
        ("time_to_first_token_ms", {"streamed": True, "first": T0 - 0.5, "last": T0 + 0.5}, T0 + 1),
        ("time_to_last_token_ms", {"streamed": True, "first": T0 - 0.9, "last": T0 - 0.5}, T0 + 1),
    ],
)
def test_durations_are_clamped_at_zero(field, call_kwargs, t_end):
    row = build_row(make_call(**call_kwargs), ResponseFacts(), status_code=200, t_end=t_end)
    assert row[field] == 0


@pytest.mark.parametrize(
    ("transport", "body_error", "status", "error_type", "error_message"),
    [
        (None, None, 200, None, None),
        (None, None, 399, None, None),
        (None, None, 400, "http_400", None),
        (None, None, 404, "http_404", None),
        (None, None, 503, "http_503", None),
        (None, ("rate_limit_exceeded", "slow down"), 429, "rate_limit_exceeded", "slow down"),
        (None, ("server_error", "stream broke"), 200, "server_error", "stream broke"),
        (("connection_reset", "peer reset"), None, 200, "connection_reset", "peer reset"),
        (("upstream_timeout", "no reply"), ("server_error", "body"), 504, "upstream_timeout", "no reply"),
        (("connection_refused", "refused"), None, None, "connection_refused", "refused"),
    ],
    ids=["ok", "399", "400", "404", "503", "body-over-status", "body-in-200-stream",
         "transport", "transport-over-all", "no-response"],
)
def test_error_type_prefers_transport_then_body_then_http_status(
    transport, body_error, status, error_type, error_message
):
    facts = ResponseFacts()
    if body_error:
        facts.set_error(*body_error)
    kwargs = dict(zip(("error_type", "error_message"), transport)) if transport else {}
    row = build_row(make_call(), facts, status_code=status, t_end=T0 + 1, **kwargs)
    assert (row["success"], row["error_type"], row["error_message"]) == (
        error_type is None, error_type, error_message,
    )
    assert row["status_code"] == status


@pytest.mark.parametrize(
    ("response_model", "requested", "model"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        (None, "gpt-4o-mini", "gpt-4o-mini"),
        ("", "gpt-4o-mini", "gpt-4o-mini"),
        (None, None, None),
    ],
)
def test_model_falls_back_to_the_requested_model(response_model, requested, model):
    call = make_call(request={"request_model": requested} if requested else {})
    row = build_row(call, ResponseFacts(model=response_model), status_code=200, t_end=T0 + 1)
    assert (row["model"], row["request_model"]) == (model, requested)


@pytest.mark.parametrize(
    ("asked", "streamed", "is_streaming"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_is_streaming_when_the_request_asked_or_the_response_streamed(asked, streamed, is_streaming):
    call = make_call(streamed=streamed, request={"is_streaming": asked})
    assert build_row(call, ResponseFacts(), status_code=200, t_end=T0 + 1)["is_streaming"] is is_streaming


def test_stamp_token_keeps_the_first_and_moves_the_last():
    call = make_call(streamed=True)
    for now in (T0 + 0.1, T0 + 0.4, T0 + 0.9):
        call.stamp_token(now)
    assert (call.t_first_token, call.t_last_token) == (T0 + 0.1, T0 + 0.9)


# --- one meaning per column: usage source, cost, finish category, operation, server timings -------


def test_usage_source_is_reported_only_when_input_and_output_were_reported():
    reported = build_row(make_call(), ResponseFacts(prompt_tokens=5, completion_tokens=2), status_code=200, t_end=T0)
    cut = build_row(make_call(), ResponseFacts(prompt_tokens=5), status_code=200, t_end=T0)
    none = build_row(make_call(), ResponseFacts(), status_code=200, t_end=T0)
    assert [r["usage_source"] for r in (reported, cut, none)] == ["reported", "missing", "missing"]
    assert reported["cost_usd"] > 0
    assert cut["cost_usd"] is None and none["cost_usd"] is None  # never priced from a guess


def test_embeddings_usage_is_reported_without_output_tokens():
    from addon.formats.openai_embeddings import OpenAIEmbeddings

    call = make_call()
    call.fmt = OpenAIEmbeddings()
    row = build_row(call, ResponseFacts(model="text-embedding-ada-002", prompt_tokens=8, total_tokens=8), status_code=200, t_end=T0)
    assert (row["operation"], row["usage_source"], row["completion_tokens"]) == ("embeddings", "reported", None)
    assert row["cost_usd"] == pytest.approx(8 * 0.1e-6)  # $0.10 per million input tokens


def test_unknown_model_is_stored_unpriced():
    row = build_row(make_call(), ResponseFacts(model="gpt-fake-2026", prompt_tokens=5, completion_tokens=2), status_code=200, t_end=T0)
    assert (row["usage_source"], row["cost_usd"]) == ("reported", None)


def test_failed_call_has_the_error_category_whatever_its_finish_reason():
    facts = ResponseFacts(finish_reason="length", error_type="stream_error", error_message="Token limit reached")
    row = build_row(make_call(streamed=True), facts, status_code=200, t_end=T0)
    assert (row["finish_reason"], row["finish_category"], row["success"]) == ("length", "error", False)
    refused = build_row(make_call(), ResponseFacts(), status_code=None, t_end=T0, error_type="connection_refused")
    assert refused["finish_category"] == "error"


def test_cache_writes_and_server_timings_are_stored_in_their_columns():
    facts = ResponseFacts(prompt_tokens=130, completion_tokens=4, cached_tokens=100, cache_creation_tokens=20,
                          prompt_eval_duration_ns=313_560_000, eval_duration_ns=1_577_990_123, finish_reason="end_turn")
    row = build_row(make_call(), facts, status_code=200, t_end=T0)
    assert (row["cache_creation_tokens"], row["prompt_eval_duration_ms"], row["eval_duration_ms"]) == (20, 313.56, 1577.99)
    assert (row["finish_category"], row["operation"]) == ("stop", "chat")


@pytest.mark.parametrize(
    ("facts_error", "transport_error"),
    [
        (("invalid_api_key", "Incorrect API key provided: sk-abc***...w9yz. You can find your API key"), None),
        (None, ("proxy_error", "Invalid request to http://h/v1/chat/completions?key=AIzaSyPLANTED0123456789")),
    ],
    ids=["provider-message", "transport-message"],
)
def test_row_stores_path_origin_and_error_message_without_secrets(facts_error, transport_error):
    call = make_call(origin="nightly token=PLANTEDorigin01")
    call.path = "/v1/keys/sk-PLANTEDpath0123456789/chat/completions"
    facts = ResponseFacts()
    if facts_error:
        facts.set_error(*facts_error)
    row = build_row(call, facts, status_code=401, t_end=T0 + 1, error_type=transport_error and transport_error[0],
                    error_message=transport_error and transport_error[1])
    assert row["path"] == "/v1/keys/***/chat/completions"
    assert row["origin"] == "nightly token=***"
    assert "***" in row["error_message"]
    for secret in ("w9yz", "AIzaSyPLANTED", "sk-PLANTED"):
        assert secret not in row["error_message"] and secret not in row["path"]


# --- values brought within what may be stored (addon/bounds.py) ----------------------------------

TEXT_COLUMNS = [f.column_name for f in CompletionRequest._meta.sorted_fields if isinstance(f, peewee.TextField)]


def test_every_text_column_has_a_documented_limit():
    assert set(bounds.TEXT_LIMITS) == set(TEXT_COLUMNS)


def _long_text_call(text: str) -> tuple[Call, ResponseFacts]:
    call = make_call(origin=text, request={**REQUEST, "request_model": text})
    call.host = call.path = call.provider = text
    call.notes.append(text)
    call.identity = Identity(*[text] * 6, None, text)  # every text of who made it; retry_count is a number
    call.headroom = Headroom(rate_reset_at=text, quota_reset_at=text, quota_long_reset_at=text)
    facts = ResponseFacts(model=text, finish_reason=text, error_type=text, error_message=text)
    return call, facts


@pytest.mark.parametrize("column", sorted(set(bounds.TEXT_LIMITS) - {"timestamp", "finish_category", "operation",
                                                                     "usage_source", "price_source"}))
def test_text_longer_than_its_column_allows_is_cut_and_ends_with_a_marker(column):
    row = build_row(*_long_text_call("x" * 5000), status_code=200, t_end=T0 + 1)
    assert len(row[column]) == bounds.TEXT_LIMITS[column]
    assert row[column].endswith("…")


def test_text_within_its_limit_is_stored_as_it_came():
    row = build_row(*_long_text_call("gpt-4o ✓ café 😀"), status_code=200, t_end=T0 + 1)
    assert row["model"] == row["origin"] == row["metering_note"] == "gpt-4o ✓ café 😀"


def test_undecodable_bytes_lone_surrogates_and_nul_are_stored_as_replacement_characters():
    # The hooks decode a header's non-UTF-8 bytes with surrogateescape (a Latin-1 User-Agent);
    # JSON's "\ud800" escapes give lone surrogates too; PostgreSQL refuses NUL.
    call = make_call(origin="Caf\udce9Bot")
    facts = ResponseFacts(model="gpt\x00x\ud800", error_type="e", error_message="bad \udcff byte")
    row = build_row(call, facts, status_code=200, t_end=T0 + 1)
    assert (row["origin"], row["model"], row["error_message"]) == ("Caf\ufffdBot", "gpt\ufffdx\ufffd", "bad \ufffd byte")
    for value in row.values():
        if isinstance(value, str):
            value.encode("utf-8")  # strict: every driver can write it


def test_a_row_with_every_text_column_at_its_limit_in_four_byte_characters_is_stored_on_postgresql(pg_url):
    from migrations import upgrade
    from storage import RowWriter, open_database

    row = build_row(*_long_text_call("😀" * 5000), status_code=200, t_end=T0 + 1)
    db = open_database(pg_url)
    upgrade(db)
    writer = RowWriter(db, batch_window=0)
    writer.start()
    writer.submit(row)
    writer.close(timeout=20)
    assert (writer.written, writer.dropped) == (1, 0)


USAGE = {"model": "gpt-4o-mini-2024-07-18", "prompt_tokens": 78, "completion_tokens": 9, "total_tokens": 87,
         "cached_tokens": 64, "reasoning_tokens": 3, "finish_reason": "stop"}


@pytest.mark.parametrize("count", ["prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
                                   "cache_creation_tokens", "reasoning_tokens"])
@pytest.mark.parametrize("value", [2**62, -1, 10**9 + 1, int(1e300), 10**5000], ids=["2**62", "negative", "past-10**9", "1e300", "5001-digits"])
def test_an_implausible_token_count_is_not_stored_and_the_row_says_so(count, value):
    facts = ResponseFacts(**{**USAGE, count: value})
    row = build_row(make_call(), facts, status_code=200, t_end=T0 + 1)
    assert row[count] is None
    assert row["usage_source"] == "implausible" and row["cost_usd"] is None
    assert row["metering_note"].startswith(f"{count} ") and "not stored" in row["metering_note"]
    assert len(row["metering_note"]) < 120
    others = {k: v for k, v in USAGE.items() if k.endswith("_tokens") and k != count}
    assert {k: row[k] for k in others} == others  # the plausible counts of the report are kept
    assert row["success"] is True  # the call itself did not fail


def test_counts_at_the_edges_of_the_plausible_range_are_stored():
    facts = ResponseFacts(model="m", prompt_tokens=bounds.MAX_COUNT, completion_tokens=0)
    row = build_row(make_call(), facts, status_code=200, t_end=T0 + 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (10**9, 0, 10**9)
    assert row["usage_source"] == "reported" and row["metering_note"] is None


def test_a_total_of_an_implausible_count_is_not_derived():
    facts = ResponseFacts(model="m", prompt_tokens=2**62, completion_tokens=5)
    row = build_row(make_call(), facts, status_code=200, t_end=T0 + 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (None, 5, None)


@pytest.mark.parametrize(("field", "column"), [("prompt_eval_duration_ns", "prompt_eval_duration_ms"),
                                               ("eval_duration_ns", "eval_duration_ms")])
@pytest.mark.parametrize("value", [-5, 2**62])
def test_an_implausible_server_duration_is_not_stored_and_the_row_says_so(field, column, value):
    row = build_row(make_call(), ResponseFacts(**{field: value}), status_code=200, t_end=T0 + 1)
    assert row[column] is None
    assert "not stored" in row["metering_note"]
    assert row["usage_source"] == "missing"  # a duration is no usage count


@pytest.mark.parametrize(("key", "value"), [("max_tokens", 2**40), ("max_tokens", -1), ("message_count", 10**10),
                                            ("temperature", float("inf")), ("temperature", float("nan")),
                                            ("top_p", -0.5), ("temperature", 1e300)])
def test_an_implausible_request_value_is_not_stored_and_the_row_says_so(key, value):
    row = build_row(make_call(request={**REQUEST, key: value}), ResponseFacts(), status_code=200, t_end=T0 + 1)
    assert row[key] is None
    assert row["metering_note"].startswith(f"{key} ")


def test_the_proxys_own_durations_past_a_32_bit_column_are_stored_as_its_largest_value():
    row = build_row(make_call(headers=T0 + 30 * 86400), ResponseFacts(), status_code=200, t_end=T0 + 40 * 86400)
    assert row["response_time_ms"] == row["time_to_first_byte_ms"] == 2**31 - 1


def test_a_status_code_that_is_no_http_status_is_not_stored():
    row = build_row(make_call(), ResponseFacts(), status_code=2**40, t_end=T0 + 1)
    assert row["status_code"] is None and "status code" in row["metering_note"]


# --- the Realtime API: audio priced apart from text ----------------------------------------------


def _realtime_row(**facts):
    from addon.formats.openai_realtime import OpenAIRealtime

    call = make_call(streamed=True)
    call.fmt, call.path = OpenAIRealtime(), "/v1/realtime"
    return build_row(call, ResponseFacts(model="gpt-realtime", prompt_tokens=1000, completion_tokens=500, **facts),
                     status_code=None, t_end=T0)


def test_realtime_audio_tokens_are_priced_at_their_own_rates():
    # gpt-realtime: text in $4, audio in $32, text out $16, audio out $64 per million tokens
    row = _realtime_row(audio_input_tokens=400, cached_audio_tokens=0, audio_output_tokens=300)
    assert (row["operation"], row["usage_source"]) == ("realtime", "reported")
    assert row["cost_usd"] == pytest.approx((600 * 4 + 400 * 32 + 200 * 16 + 300 * 64) / 1e6, rel=1e-9)


@pytest.mark.parametrize("audio", [{}, {"audio_input_tokens": 400}, {"audio_input_tokens": 1200, "audio_output_tokens": 0}])
def test_realtime_row_without_its_audio_part_or_with_parts_past_their_whole_is_unpriced(audio):
    row = _realtime_row(**audio)
    assert (row["usage_source"], row["prompt_tokens"], row["cost_usd"]) == ("reported", 1000, None)


# --- estimated usage: a stream that reported no count -------------------------------------------


def test_stream_without_usage_gets_estimated_counts_priced_as_estimated():
    call = make_call(streamed=True, request={**REQUEST, "prompt_tokens_estimate": 20}, first=T0 + 0.1, last=T0 + 0.5)
    facts = ResponseFacts(model="gpt-4o-mini-2024-07-18", finish_reason="stop", content_events=9, output_chars=40)
    row = build_row(call, facts, status_code=200, t_end=T0 + 0.6)
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == ("estimated", 20, 9, 29)
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (None, None)
    assert row["cost_usd"] == pytest.approx((20 * 0.15 + 9 * 0.6) / 1e6, rel=1e-9)
    assert row["tokens_per_second"] is None  # a rate is measured, never made of estimates
    assert row["time_to_first_token_ms"] == 100


def test_estimated_output_without_an_estimate_of_the_input_is_unpriced():
    call = make_call(streamed=True, request={**REQUEST, "prompt_tokens_estimate": None})
    row = build_row(call, ResponseFacts(model="gpt-4o-mini", content_events=3, output_chars=9), status_code=200, t_end=T0)
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == ("estimated", None, 3, None)
    assert row["cost_usd"] is None


@pytest.mark.parametrize("facts, streamed", [
    (ResponseFacts(content_events=3, output_chars=9, prompt_tokens=5), True),  # a count was reported: no guess beside it
    (ResponseFacts(content_events=0, finish_reason="stop"), True),  # nothing generated: unknown, never 0
    (ResponseFacts(content_events=3, output_chars=9), False),  # a whole body that lacks usage
])
def test_no_estimate_where_a_count_was_reported_nothing_was_generated_or_nothing_streamed(facts, streamed):
    row = build_row(make_call(streamed=streamed, request={**REQUEST, "prompt_tokens_estimate": 20}), facts,
                    status_code=200, t_end=T0)
    assert row["usage_source"] == "missing"
    assert row["cost_usd"] is None


def test_a_failed_stream_is_never_estimated():
    facts = ResponseFacts(content_events=3, output_chars=9, error_type="stream_error")
    row = build_row(make_call(streamed=True, request={**REQUEST, "prompt_tokens_estimate": 20}), facts,
                    status_code=200, t_end=T0, error_type="upstream_disconnected")
    assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == ("missing", None, None)


def test_other_operations_are_never_estimated():
    from addon.formats.openai_responses import OpenAIResponses

    call = make_call(streamed=True)
    call.fmt = OpenAIResponses()
    row = build_row(call, ResponseFacts(content_events=3, output_chars=9), status_code=200, t_end=T0)
    assert (row["usage_source"], row["completion_tokens"]) == ("missing", None)
