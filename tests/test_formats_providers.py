"""The non-OpenAI-chat formats on small synthetic streams: what counts as generated content,
errors inside a 200 stream, request fields from the path, and the finish category."""

from __future__ import annotations

import json

import pytest

from addon.formats import CANDIDATE_SUFFIXES, recognise
from addon.formats.anthropic_messages import AnthropicMessages
from addon.formats.finish import CATEGORIES, finish_category
from addon.formats.gemini import GeminiGenerateContent, model_from_path
from addon.formats.ollama import OllamaChat, OllamaGenerate
from addon.formats.openai_chat import OpenAIChat
from addon.formats.openai_embeddings import OpenAIEmbeddings
from addon.formats.openai_responses import OpenAIResponses
from addon.metering import JSON_ARRAY, NDJSON, SSE, StreamMeter, meter_body, stream_framing


def sse(*events: tuple[str | None, dict]) -> bytes:
    out = b""
    for name, obj in events:
        out += (f"event: {name}\n".encode() if name else b"") + b"data: " + json.dumps(obj).encode() + b"\n\n"
    return out


def run(fmt, body: bytes, framing: str = SSE) -> tuple[StreamMeter, list[bool]]:
    """Feeds `body` one event at a time (split on blank lines); returns feed() results."""
    meter = StreamMeter(fmt, None, None, framing)
    sep = b"\n\n" if framing == SSE else b"\n"
    results = [meter.feed(part + sep) for part in body.split(sep) if part.strip()]
    meter.close()
    return meter, results


# --- Anthropic ------------------------------------------------------------------------------------

START = ("message_start", {"type": "message_start", "message": {"model": "claude-x", "usage": {
    "input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 1}}})
PING = ("ping", {"type": "ping"})
STOP = ("message_stop", {"type": "message_stop"})


def delta(kind: str, key: str, value: str):
    return ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": kind, key: value}})


def test_anthropic_ping_and_block_start_are_not_content_but_thinking_is():
    body = sse(START, PING, ("content_block_start", {"type": "content_block_start", "content_block": {"type": "thinking"}}),
               delta("thinking_delta", "thinking", "Let me see"), delta("signature_delta", "signature", "abc"),
               delta("text_delta", "text", "Hi"), STOP)
    meter, results = run(AnthropicMessages(), body)
    assert results == [False, False, False, True, False, True, False]
    assert (meter.facts.content_events, meter.facts.text_events) == (2, 1)


def test_anthropic_tool_use_block_and_its_json_deltas_are_generated_content():
    body = sse(START, ("content_block_start", {"type": "content_block_start", "content_block": {"type": "tool_use", "name": "f"}}),
               delta("input_json_delta", "partial_json", ""), delta("input_json_delta", "partial_json", '{"a":'), STOP)
    meter, results = run(AnthropicMessages(), body)
    assert results == [False, True, False, True, False]
    assert meter.facts.tool_calls


def test_anthropic_prompt_tokens_add_cache_reads_and_writes_and_placeholder_output_is_ignored():
    body = sse(START, delta("text_delta", "text", "Hi"))
    facts = run(AnthropicMessages(), body)[0].facts
    assert (facts.prompt_tokens, facts.cached_tokens, facts.cache_creation_tokens) == (130, 100, 20)
    assert facts.completion_tokens is None  # message_start's output_tokens is a placeholder


def test_anthropic_message_delta_supersedes_only_the_counts_it_carries():
    body = sse(START, ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                                         "usage": {"output_tokens": 42, "cache_read_input_tokens": 0}}), STOP)
    facts = run(AnthropicMessages(), body)[0].facts
    assert (facts.prompt_tokens, facts.cached_tokens, facts.cache_creation_tokens) == (30, 0, 20)
    assert (facts.completion_tokens, facts.finish_reason, facts.terminated) == (42, "max_tokens", True)


def test_anthropic_overloaded_error_event_in_a_200_stream_fails_the_call():
    body = sse(START, delta("text_delta", "text", "Hi"),
               ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    facts = run(AnthropicMessages(), body)[0].facts
    assert (facts.error_type, facts.error_message, facts.terminated) == ("overloaded_error", "Overloaded", False)


# --- OpenAI Responses -----------------------------------------------------------------------------

CREATED = ("response.created", {"type": "response.created", "response": {"model": "gpt-r", "status": "in_progress", "usage": None}})


def terminal(kind: str, status: str, **extra):
    response = {"model": "gpt-r", "status": status, "output": [], "usage": {
        "input_tokens": 7, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 12}, **extra}
    return (kind, {"type": kind, "response": response})


@pytest.mark.parametrize(("kind", "expected"), [
    ("response.output_text.delta", (True, 1)),
    ("response.reasoning_summary_text.delta", (True, 0)),
    ("response.function_call_arguments.delta", (True, 0)),
    ("response.output_text.done", (False, 0)),
])
def test_responses_deltas_that_are_generated_content(kind, expected):
    meter, results = run(OpenAIResponses(), sse(CREATED, (kind, {"type": kind, "delta": "x"})))
    assert (results[1], meter.facts.text_events) == expected


def test_responses_usage_and_status_come_from_the_terminal_event():
    facts = run(OpenAIResponses(), sse(CREATED, terminal("response.completed", "completed")))[0].facts
    assert (facts.model, facts.prompt_tokens, facts.cached_tokens, facts.completion_tokens, facts.reasoning_tokens) == ("gpt-r", 7, 2, 5, 1)
    assert (facts.finish_reason, facts.terminated) == ("completed", True)


@pytest.mark.parametrize(("reason", "category"), [("max_output_tokens", "length"), ("content_filter", "content_filter"), ("other", "other")])
def test_responses_incomplete_reason_gives_the_category(reason, category):
    event = terminal("response.incomplete", "incomplete", incomplete_details={"reason": reason})
    facts = run(OpenAIResponses(), sse(CREATED, event))[0].facts
    assert facts.finish_reason == "incomplete"
    assert finish_category(facts.finish_reason, override=facts.finish_category) == category


@pytest.mark.parametrize("error_event", [
    {"type": "error", "error": {"type": "server_error", "code": "server_error", "message": "boom"}},
    {"type": "error", "code": "server_error", "message": "boom", "param": None},  # the older flat shape
])
def test_responses_error_event_then_failed_fails_the_call(error_event):
    failed = ("response.failed", {"type": "response.failed", "response": {"status": "failed", "usage": None,
                                                                          "error": {"code": "server_error", "message": "boom"}}})
    facts = run(OpenAIResponses(), sse(CREATED, ("error", error_event), failed))[0].facts
    assert (facts.error_type, facts.error_message, facts.finish_reason) == ("server_error", "boom", "failed")
    assert facts.prompt_tokens is None


# --- Gemini / Vertex ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "model", "streaming"), [
    ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", False),
    ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini-2.5-flash", True),
    ("/v1/projects/p/locations/global/publishers/google/models/gemini-3-flash-preview:streamGenerateContent", "gemini-3-flash-preview", True),
    ("/v1beta/tunedModels/my-model:generateContent", "my-model", False),
])
def test_gemini_model_and_streaming_come_from_the_path(path, model, streaming):
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 9, "temperature": 0.3, "topP": 0.8}}
    fmt = recognise(path, body)
    assert isinstance(fmt, GeminiGenerateContent) and path.endswith(CANDIDATE_SUFFIXES)
    assert fmt.request_fields(path, body) == {"request_model": model, "is_streaming": streaming, "max_tokens": 9,
                                             "temperature": 0.3, "top_p": 0.8, "message_count": 1}
    assert model_from_path(path) == model


def chunk(parts, usage=None, finish=None):
    candidate = {"content": {"parts": parts, "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage or {"promptTokenCount": 4}, "modelVersion": "gemini-x"}


def test_gemini_array_stream_thoughts_and_function_calls_are_content_and_usage_is_the_last():
    elements = [chunk([{"text": "think", "thought": True}], {"promptTokenCount": 4, "thoughtsTokenCount": 3}),
                chunk([{"functionCall": {"name": "f", "args": {}}}],
                      {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 3, "totalTokenCount": 9}, "STOP")]
    body = b"[" + b"\n,\r\n".join(json.dumps(e, indent=2).encode() for e in elements) + b"\n]"
    meter = StreamMeter(GeminiGenerateContent(), "application/json", None, JSON_ARRAY)
    assert [meter.feed(body[i : i + 1]) for i in range(len(body))].count(True) == 2
    meter.close()
    facts = meter.facts
    assert (facts.prompt_tokens, facts.completion_tokens, facts.reasoning_tokens, facts.total_tokens) == (4, 5, 3, 9)
    assert (facts.events, facts.content_events, facts.text_events, facts.tool_calls) == (2, 2, 0, True)
    assert finish_category(facts.finish_reason, tool_calls=facts.tool_calls) == "tool_calls"


def test_gemini_error_element_in_an_array_stream_fails_the_call():
    body = json.dumps([chunk([{"text": "a"}]), {"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}]).encode()
    meter = StreamMeter(GeminiGenerateContent(), "application/json", None, JSON_ARRAY)
    meter.feed(body)
    meter.close()
    assert (meter.facts.error_type, meter.facts.error_message) == ("RESOURCE_EXHAUSTED", "Quota")


def test_gemini_blocked_prompt_is_a_content_filter_finish():
    facts = meter_body(GeminiGenerateContent(), 200, "application/json",
                       json.dumps({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}).encode())
    assert (facts.finish_reason, finish_category(facts.finish_reason, override=facts.finish_category)) == ("SAFETY", "content_filter")


@pytest.mark.parametrize(("content_type", "status", "requested", "framing"), [
    ("text/event-stream", 200, True, SSE),
    ("application/json; charset=UTF-8", 200, True, JSON_ARRAY),
    ("application/json; charset=UTF-8", 200, False, None),  # :generateContent, a whole body
    ("application/json; charset=UTF-8", 429, True, None),  # an error body, not an array
])
def test_gemini_stream_framing_follows_content_type_request_and_status(content_type, status, requested, framing):
    assert stream_framing(GeminiGenerateContent(), content_type, status=status, requested_stream=requested) == framing


def test_only_gemini_meters_an_application_json_body_as_a_stream():
    assert stream_framing(OpenAIChat(), "application/json", status=200, requested_stream=True) is None


# --- Ollama ---------------------------------------------------------------------------------------


def test_ollama_chat_stream_counts_timings_and_tool_calls_from_the_done_line():
    lines = [{"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": False},
             {"model": "llama3", "message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": False},
             {"model": "llama3", "message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}, "done": False},
             {"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
              "prompt_eval_count": 17, "eval_count": 50, "prompt_eval_duration": 313560000, "eval_duration": 1577990000}]
    meter, results = run(OllamaChat(), b"\n".join(json.dumps(line).encode() for line in lines), NDJSON)
    facts = meter.facts
    assert results == [False, True, True, False]
    assert (facts.prompt_tokens, facts.completion_tokens, facts.finish_reason, facts.terminated) == (17, 50, "stop", True)
    assert (facts.prompt_eval_duration_ns, facts.eval_duration_ns) == (313560000, 1577990000)
    assert finish_category(facts.finish_reason, tool_calls=facts.tool_calls) == "tool_calls"


def test_ollama_error_line_in_a_200_stream_fails_the_call():
    body = b'{"model":"llama3","response":"Hi","done":false}\n{"error":"an error was encountered while running the model"}\n'
    meter, _ = run(OllamaGenerate(), body, NDJSON)
    assert meter.facts.error_type == "ollama_error"
    assert meter.facts.error_message == "an error was encountered while running the model"
    assert not meter.facts.terminated


@pytest.mark.parametrize(("fmt", "body", "streaming"), [
    (OllamaChat(), {"model": "llama3", "messages": []}, True),  # Ollama streams unless told not to
    (OllamaChat(), {"model": "llama3", "messages": [], "stream": False}, False),
    (OllamaGenerate(), {"model": "llama3", "prompt": "x", "options": {"num_predict": 5, "temperature": 0.1}}, True),
])
def test_ollama_streams_by_default(fmt, body, streaming):
    fields = fmt.request_fields(fmt.path_suffix, body)
    assert fields["is_streaming"] is streaming
    if "options" in body:
        assert (fields["max_tokens"], fields["temperature"]) == (5, 0.1)


# --- Azure deployment paths, embeddings -----------------------------------------------------------


@pytest.mark.parametrize("fmt", [OpenAIChat(), OpenAIEmbeddings()])
def test_azure_request_model_is_the_deployment_in_the_path(fmt):
    path = f"/openai/deployments/my%20deploy/{fmt.path_suffix.lstrip('/')}"
    assert fmt.request_fields(path, {"model": "ignored", fmt.shape_key: []})["request_model"] == "my deploy"
    assert fmt.request_fields("/v1" + fmt.path_suffix, {"model": "m", fmt.shape_key: []})["request_model"] == "m"


def test_embeddings_report_input_only():
    facts = meter_body(OpenAIEmbeddings(), 200, "application/json",
                       b'{"data": [], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}}')
    assert (facts.model, facts.prompt_tokens, facts.completion_tokens, facts.total_tokens) == ("text-embedding-3-small", 8, None, 8)


# --- finish_category --------------------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "category"), [
    ("stop", "stop"), ("end_turn", "stop"), ("STOP", "stop"), ("completed", "stop"), ("eos", "stop"), ("stop_sequence", "stop"),
    ("length", "length"), ("max_tokens", "length"), ("MAX_TOKENS", "length"), ("model_length", "length"),
    ("tool_calls", "tool_calls"), ("tool_use", "tool_calls"), ("function_call", "tool_calls"),
    ("content_filter", "content_filter"), ("SAFETY", "content_filter"), ("refusal", "content_filter"), ("RECITATION", "content_filter"),
    ("failed", "error"), ("error", "error"),
    ("pause_turn", "other"), ("MALFORMED_FUNCTION_CALL", "other"), ("load", "other"), ("incomplete", "other"),
])
def test_finish_reason_maps_to_one_category(reason, category):
    assert finish_category(reason) == category
    assert category in CATEGORIES


def test_finish_category_is_error_for_any_failed_call_and_none_without_a_reason():
    assert finish_category("stop", failed=True) == "error"
    assert finish_category(None, failed=True) == "error"
    assert finish_category(None) is None


# --- AWS Bedrock (event streams) --------------------------------------------------------------------


def bedrock_stream(*frames: tuple[dict, dict]) -> bytes:
    from tests.test_wire_eventstream import frame

    return b"".join(frame(headers, json.dumps(payload).encode()) for headers, payload in frames)


def event(kind: str) -> dict:
    return {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}


CONVERSE_PATH = "/model/us.amazon.nova-micro-v1%3A0/converse-stream"


def test_bedrock_converse_stream_reads_text_stop_reason_and_usage_with_the_cache_added():
    from addon.formats.bedrock import BedrockConverse

    body = bedrock_stream(
        (event("messageStart"), {"role": "assistant", "p": "abc"}),
        (event("contentBlockDelta"), {"contentBlockIndex": 0, "delta": {"text": "Hi"}, "p": "abcdef"}),
        (event("messageStop"), {"stopReason": "max_tokens"}),
        (event("metadata"), {"usage": {"inputTokens": 13, "outputTokens": 2, "cacheReadInputTokens": 100,
                                       "cacheWriteInputTokens": 7, "totalTokens": 122}, "metrics": {"latencyMs": 5}}))
    fmt = recognise(CONVERSE_PATH, {"messages": []})
    assert isinstance(fmt, BedrockConverse) and CONVERSE_PATH.endswith(CANDIDATE_SUFFIXES)
    assert fmt.request_fields(CONVERSE_PATH, {"messages": [], "inferenceConfig": {"maxTokens": 9}})["request_model"] == "us.amazon.nova-micro-v1:0"
    framing = stream_framing(fmt, "application/vnd.amazon.eventstream", status=200, requested_stream=True)
    meter = StreamMeter(fmt, "application/vnd.amazon.eventstream", None, framing)
    assert [meter.feed(body[i : i + 1]) for i in range(len(body))].count(True) == 1
    meter.close()
    facts = meter.facts
    assert (facts.prompt_tokens, facts.cached_tokens, facts.cache_creation_tokens, facts.completion_tokens) == (120, 100, 7, 2)
    assert (facts.finish_reason, facts.terminated, facts.events, facts.text_events) == ("max_tokens", True, 4, 1)


def test_bedrock_exception_frame_in_a_200_stream_fails_the_call():
    from addon.formats.bedrock import BedrockConverse

    body = bedrock_stream((event("messageStart"), {"role": "assistant"}),
                          ({":exception-type": "modelStreamErrorException", ":message-type": "exception"}, {"message": "Model failed"}))
    meter = StreamMeter(BedrockConverse(), "application/vnd.amazon.eventstream", None)
    meter.feed(body)
    meter.close()
    assert (meter.facts.error_type, meter.facts.error_message) == ("modelStreamErrorException", "Model failed")


def test_bedrock_invoke_chunk_that_is_not_base64_json_is_malformed():
    from addon.formats.bedrock import BedrockInvokeAnthropic

    meter = StreamMeter(BedrockInvokeAnthropic(), "application/vnd.amazon.eventstream", None)
    meter.feed(bedrock_stream((event("chunk"), {"bytes": "not base64!"})))
    meter.close()
    assert meter.facts.malformed_events == 1
