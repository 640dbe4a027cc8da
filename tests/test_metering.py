"""StreamMeter and meter_body: bytes of an OpenAI-style response in, ResponseFacts out."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import brotli
import pytest
import zstandard

from addon.formats import ResponseFacts, WireFormat
from addon.formats.openai_chat import OpenAIChat, OpenAICompletions
from addon.metering import StreamMeter, is_stream_type, meter_body
from addon.wire.encoding import UnsupportedEncoding

CHAT = OpenAIChat()
COMPLETIONS = OpenAICompletions()
SSE = "text/event-stream; charset=utf-8"
MODEL = "gpt-4o-mini-2024-07-18"
USAGE = {
    "prompt_tokens": 78,
    "completion_tokens": 9,
    "total_tokens": 87,
    "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0},
}


def _chunk(
    delta: dict[str, Any] | None = None, finish_reason: str | None = None, **fields: Any
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }
    chunk.update(fields)
    return chunk


def _sse(*objs: Any, done: bool = True) -> bytes:
    events = [b"data: " + json.dumps(obj).encode() + b"\n\n" for obj in objs]
    return b"".join(events) + (b"data: [DONE]\n\n" if done else b"")


def _feed_bytewise(meter: StreamMeter, body: bytes) -> list[bool]:
    return [meter.feed(body[i : i + 1]) for i in range(len(body))]


def _stream(body: bytes, fmt: WireFormat = CHAT, content_type: str = SSE) -> ResponseFacts:
    meter = StreamMeter(fmt, content_type, None)
    _feed_bytewise(meter, body)
    meter.close()
    return meter.facts


def _tokens(facts: ResponseFacts) -> tuple:
    return (
        facts.prompt_tokens,
        facts.completion_tokens,
        facts.total_tokens,
        facts.cached_tokens,
        facts.reasoning_tokens,
    )


TEXT_STREAM = [
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Hi"}),
    _chunk({"content": " there"}),
    _chunk({}, "stop"),
]


def test_usage_only_in_final_empty_choices_chunk_is_read_and_keeps_finish_reason():
    facts = _stream(_sse(*TEXT_STREAM, _chunk(choices=[], usage=USAGE)))
    assert _tokens(facts) == (78, 9, 87, 64, 3)
    assert (facts.model, facts.finish_reason) == (MODEL, "stop")
    assert (facts.events, facts.content_events, facts.text_events) == (5, 2, 2)


def test_usage_null_in_every_chunk_leaves_token_counts_unknown():
    facts = _stream(_sse(*TEXT_STREAM))
    assert _tokens(facts) == (None, None, None, None, None)
    assert facts.finish_reason == "stop"


@pytest.mark.parametrize(
    ("last_chunk", "tokens"),
    [
        pytest.param(
            _chunk(choices=[], usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
            (5, 2, 7, None, None),
            id="no-details-means-unknown-not-zero",
        ),
        pytest.param(
            _chunk(
                choices=[], usage={**USAGE, "prompt_tokens_details": None, "completion_tokens_details": None}
            ),
            (78, 9, 87, None, None),
            id="null-details",
        ),
        pytest.param(
            _chunk(
                choices=[],
                usage={
                    "prompt_tokens": 6,
                    "completion_tokens": 212,
                    "total_tokens": 218,
                    "prompt_cache_hit_tokens": 4,
                    "prompt_cache_miss_tokens": 2,
                    "completion_tokens_details": {"reasoning_tokens": 198},
                },
            ),
            (6, 212, 218, 4, 198),
            id="deepseek-cache-hit-tokens",
        ),
        pytest.param(
            _chunk(
                {},
                "stop",
                x_groq={
                    "id": "req_1",
                    "usage": {
                        "prompt_tokens": 18,
                        "completion_tokens": 73,
                        "total_tokens": 91,
                        "queue_time": 0.01,
                    },
                },
            ),
            (18, 73, 91, None, None),
            id="groq-x_groq-usage",
        ),
        pytest.param(
            _chunk({}, "stop", usage={"prompt_tokens": True, "completion_tokens": "9", "total_tokens": 12.0}),
            (None, None, 12, None, None),
            id="non-integer-values-are-unknown",
        ),
        pytest.param(
            _chunk({}, "stop", timings={"prompt_n": 10, "cache_n": 30, "predicted_n": 5}),
            (40, 5, 45, 30, None),
            id="llama-cpp-timings",
        ),
        pytest.param(
            _chunk(
                {},
                "stop",
                usage={"prompt_tokens": 41, "completion_tokens": 6, "total_tokens": 47},
                timings={"prompt_n": 10, "cache_n": 30, "predicted_n": 5},
            ),
            (41, 6, 47, None, None),
            id="usage-wins-over-timings",
        ),
    ],
)
def test_usage_shapes_of_each_provider_are_read(last_chunk, tokens):
    assert _tokens(_stream(_sse(*TEXT_STREAM, last_chunk))) == tokens


def test_repeated_usage_is_cumulative_so_the_last_block_replaces_earlier_ones():
    first = _chunk({"content": "a"}, usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})
    second = _chunk(
        {"content": "b"}, "stop", usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    )
    assert _tokens(_stream(_sse(first, second))) == (5, 2, 7, None, None)


def test_model_is_the_first_non_empty_one():
    azure_first = _chunk(model="", choices=[], prompt_filter_results=[])
    facts = _stream(_sse(azure_first, _chunk({"content": "x"}, model="gpt-4.1-mini"), _chunk(model="other")))
    assert facts.model == "gpt-4.1-mini"


@pytest.mark.parametrize("done", [True, False], ids=["with-done", "without-done"])
def test_done_sentinel_sets_terminated_and_is_not_an_event(done):
    facts = _stream(_sse(*TEXT_STREAM, done=done))
    assert facts.terminated is done
    assert facts.events == len(TEXT_STREAM)
    assert facts.malformed_events == 0


@pytest.mark.parametrize(
    ("event", "obj", "error_type", "message"),
    [
        pytest.param(
            None,
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            "server_error",
            "The server had an error while processing your request.",
            id="openai",
        ),
        pytest.param(
            None,
            {**_chunk(choices=[]), "error": {"code": 400, "message": "Token limit reached"}},
            "stream_error",
            "Token limit reached",
            id="openrouter-int-code",
        ),
        pytest.param(
            "error",
            {
                "error": {
                    "message": "Tool call validation failed",
                    "type": "invalid_request_error",
                    "code": "tool_use_failed",
                    "status_code": 400,
                }
            },
            "tool_use_failed",
            "Tool call validation failed",
            id="groq-error-event",
        ),
        pytest.param(
            "error", {"message": "overloaded"}, "stream_error", None, id="error-event-unknown-shape"
        ),
    ],
)
def test_error_in_200_stream_sets_error_type_and_message(event, obj, error_type, message):
    name = b"event: %s\n" % event.encode() if event else b""
    body = _sse(*TEXT_STREAM, done=False) + name + b"data: " + json.dumps(obj).encode() + b"\n\n"
    facts = _stream(body)
    assert (facts.error_type, facts.error_message) == (error_type, message)
    assert facts.finish_reason == "stop"


def test_first_error_in_a_stream_is_kept():
    body = _sse({"error": {"message": "first", "code": "a"}}, {"error": {"message": "second", "code": "b"}})
    facts = _stream(body)
    assert (facts.error_type, facts.error_message) == ("a", "first")


def test_long_in_stream_error_message_is_truncated_to_300_chars():
    facts = _stream(_sse({"error": {"message": "m" * 900, "type": "server_error"}}))
    assert facts.error_message == "m" * 299 + "\u2026"


def test_bare_json_error_after_the_events_is_read_at_close():
    tail = (
        b'{\n  "error": {\n    "code": 503,\n    "message": "The model is overloaded.",\n'
        b'    "status": "UNAVAILABLE"\n  }\n}\n'
    )
    facts = _stream(_sse(*TEXT_STREAM, done=False) + tail)
    assert (facts.error_type, facts.error_message) == ("UNAVAILABLE", "The model is overloaded.")
    assert facts.text_events == 2


def test_event_that_is_not_json_counts_as_malformed_and_the_rest_is_read():
    body = _sse(TEXT_STREAM[0], done=False) + b"data: {not json\n\n" + _sse(*TEXT_STREAM[1:])
    facts = _stream(body)
    assert facts.malformed_events == 1
    assert facts.events == len(TEXT_STREAM) + 1
    assert (facts.text_events, facts.finish_reason, facts.terminated) == (2, "stop", True)
    assert facts.error_type is None


@pytest.mark.parametrize(
    "delta",
    [
        {"reasoning_content": "Let me think"},
        {"reasoning": "Let me think", "channel": "analysis"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"function_call": {"name": "get_weather", "arguments": ""}},
        {"refusal": "I can't help with that."},
    ],
    ids=[
        "reasoning_content",
        "reasoning",
        "tool-call-start",
        "tool-call-arguments",
        "function_call",
        "refusal",
    ],
)
def test_non_text_generated_delta_makes_feed_true_but_is_not_a_text_event(delta):
    meter = StreamMeter(CHAT, SSE, None)
    assert meter.feed(_sse(_chunk(delta), done=False)) is True
    assert (meter.facts.content_events, meter.facts.text_events) == (1, 0)


@pytest.mark.parametrize(
    "delta",
    [
        {"role": "assistant"},
        {"role": "assistant", "content": "", "refusal": None},
        {},
        {"content": None, "tool_calls": [], "reasoning_content": ""},
    ],
    ids=["role-only", "role-empty-content", "empty", "all-empty"],
)
def test_delta_without_generated_content_makes_feed_false(delta):
    meter = StreamMeter(CHAT, SSE, None)
    assert meter.feed(_sse(_chunk(delta), done=False)) is False
    assert (meter.facts.events, meter.facts.content_events, meter.facts.text_events) == (1, 0, 0)


@pytest.mark.parametrize(
    ("fmt", "chunk", "generated"),
    [
        (CHAT, _chunk({"content": "Hi"}), True),
        (
            COMPLETIONS,
            {
                "object": "text_completion",
                "model": "davinci-002",
                "choices": [{"index": 0, "text": " Hi", "finish_reason": None}],
            },
            True,
        ),
        (
            COMPLETIONS,
            {
                "object": "text_completion",
                "model": "davinci-002",
                "choices": [{"index": 0, "text": "", "finish_reason": "length"}],
            },
            False,
        ),
    ],
    ids=["chat-content", "legacy-text", "legacy-empty-text"],
)
def test_visible_text_is_generated_and_a_text_event(fmt, chunk, generated):
    meter = StreamMeter(fmt, SSE, None)
    assert meter.feed(_sse(chunk, done=False)) is generated
    assert (meter.facts.content_events, meter.facts.text_events) == (int(generated), int(generated))


def test_event_with_several_text_choices_counts_as_one_text_event():
    chunk = _chunk(
        choices=[
            {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
            {"index": 1, "delta": {"content": "b"}, "finish_reason": None},
        ]
    )
    facts = _stream(_sse(chunk, chunk))
    assert (facts.events, facts.content_events, facts.text_events) == (2, 2, 2)


def test_feed_is_true_only_for_the_byte_that_completes_a_content_event():
    role, content = (_sse(c, done=False) for c in TEXT_STREAM[:2])
    meter = StreamMeter(CHAT, SSE, None)
    results = _feed_bytewise(meter, role + content + _sse(TEXT_STREAM[3]))
    assert [i for i, generated in enumerate(results) if generated] == [len(role) + len(content) - 1]


def test_last_event_without_blank_line_is_read_and_reported_by_close():
    meter = StreamMeter(CHAT, SSE, None)
    body = _sse(TEXT_STREAM[0], done=False) + b"data: " + json.dumps(TEXT_STREAM[1]).encode()
    assert not any(_feed_bytewise(meter, body))
    assert meter.close() is True
    assert meter.close() is False
    assert (meter.facts.events, meter.facts.text_events) == (2, 1)


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("coding", list(ENCODERS))
def test_compressed_stream_is_decoded_before_framing(coding):
    meter = StreamMeter(CHAT, SSE, coding)
    _feed_bytewise(meter, ENCODERS[coding](_sse(*TEXT_STREAM, _chunk(choices=[], usage=USAGE))))
    meter.close()
    assert (meter.facts.events, meter.facts.text_events, meter.facts.terminated) == (5, 2, True)
    assert _tokens(meter.facts) == (78, 9, 87, 64, 3)


def test_unsupported_content_encoding_raises_when_the_meter_is_made():
    with pytest.raises(UnsupportedEncoding):
        StreamMeter(CHAT, SSE, "compress")


def test_ndjson_stream_counts_one_event_per_line():
    lines = [json.dumps(c).encode() for c in TEXT_STREAM]
    body = (
        b"\n".join(lines) + b"\n\n" + json.dumps(_chunk(choices=[], usage=USAGE)).encode()
    )  # no final newline
    facts = _stream(body, content_type="application/x-ndjson")
    assert (facts.events, facts.text_events, facts.finish_reason) == (5, 2, "stop")
    assert _tokens(facts) == (78, 9, 87, 64, 3)
    assert facts.terminated is False


def _summary(facts: ResponseFacts) -> tuple:
    return (facts.model, *_tokens(facts), facts.finish_reason, facts.error_type, facts.error_message)


def _chat_body(message: dict[str, Any], finish_reason: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


AGREEMENT_CASES = [
    pytest.param(
        CHAT,
        [*TEXT_STREAM, _chunk(choices=[], usage=USAGE)],
        _chat_body({"role": "assistant", "content": "Hi there"}, "stop", USAGE),
        (MODEL, 78, 9, 87, 64, 3, "stop", None, None),
        id="chat-text-with-usage",
    ),
    pytest.param(
        CHAT,
        [
            _chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ],
                }
            ),
            _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            _chunk({}, "tool_calls"),
        ],
        _chat_body(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "tool_calls",
            None,
        ),
        (MODEL, None, None, None, None, None, "tool_calls", None, None),
        id="chat-tool-call-without-usage",
    ),
    pytest.param(
        COMPLETIONS,
        [
            {"object": "text_completion", "model": "davinci-002", "choices": [{"index": 0, "text": " Hi"}]},
            {
                "object": "text_completion",
                "model": "davinci-002",
                "choices": [{"index": 0, "text": "!", "finish_reason": "length"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
            },
        ],
        {
            "object": "text_completion",
            "model": "davinci-002",
            "choices": [{"index": 0, "text": " Hi!", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
        },
        ("davinci-002", 8, 2, 10, None, None, "length", None, None),
        id="legacy-completions",
    ),
]


@pytest.mark.parametrize(("fmt", "chunks", "body", "expected"), AGREEMENT_CASES)
def test_streamed_and_non_streamed_equivalents_give_the_same_facts(fmt, chunks, body, expected):
    streamed = _stream(_sse(*chunks), fmt)
    whole = meter_body(fmt, 200, "application/json", json.dumps(body).encode())
    assert _summary(streamed) == _summary(whole) == expected


@pytest.mark.parametrize(("fmt", "chunks", "body", "expected"), AGREEMENT_CASES)
def test_event_stream_body_on_the_buffered_path_is_parsed_as_a_stream(fmt, chunks, body, expected):
    facts = meter_body(fmt, 200, SSE, _sse(*chunks))
    assert _summary(facts) == expected
    assert (facts.events, facts.terminated) == (len(chunks), True)


def test_error_status_body_gives_only_the_error():
    body = json.dumps(
        {
            "error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
            "model": MODEL,
        }
    ).encode()
    facts = meter_body(CHAT, 429, "application/json", body)
    assert (facts.error_type, facts.error_message) == ("rate_limit_exceeded", "Rate limit reached")
    assert (facts.model, facts.events) == (None, 0)


def test_error_status_with_event_stream_type_is_still_read_as_an_error_body():
    facts = meter_body(CHAT, 502, SSE, b"<html><title>502 Bad Gateway</title></html>")
    assert (facts.error_type, facts.error_message) == ("http_502", "502 Bad Gateway")


def test_error_envelope_in_a_200_body_is_an_error():
    facts = meter_body(
        CHAT, 200, "application/json", b'{"error": {"message": "quota", "code": "insufficient_quota"}}'
    )
    assert (facts.error_type, facts.error_message) == ("insufficient_quota", "quota")


def test_invalid_json_200_body_is_a_malformed_response_described_not_quoted():
    facts = meter_body(CHAT, 200, "application/json", b"<html>oops</html>")
    assert (facts.error_type, facts.error_message) == (
        "malformed_response", "response body is not JSON (17 bytes, application/json)")


def test_generated_text_of_a_non_json_200_body_is_never_kept():
    body = b"Sure! Here is the plan, and my password is hunter2. " * 40
    facts = meter_body(CHAT, 200, "text/plain; charset=utf-8", body)
    assert facts.error_message == f"response body is not JSON ({len(body)} bytes, text/plain)"


@pytest.mark.parametrize(
    ("content_type", "streamed"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream; charset=utf-8", True),
        ("application/x-ndjson", True),
        ("application/jsonl", True),
        ("application/json", False),
        ("application/json; charset=utf-8", False),
        ("", False),
        (None, False),
    ],
)
def test_stream_media_types_are_recognised(content_type, streamed):
    assert is_stream_type(content_type) is streamed


# -- bounds: a decompression bomb, an event past the framer's limit --------------------------------


def _sse_bomb(coding: str, zeros: int = 256 << 20) -> bytes:
    """A real event, then `zeros` NUL bytes (one endless line), compressed piece by piece."""
    from tests.test_wire_encoding import _flushing_encoder

    encode = _flushing_encoder(coding)
    head = encode(_sse(_chunk({"content": "Hi"}), done=False))
    block = bytes(1 << 20)
    return head + b"".join(encode(block) for _ in range(zeros >> 20))


@pytest.mark.slow
@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_compressed_stream_is_metered_only_up_to_the_response_limit_in_bounded_memory(coding):
    import gc
    import tracemalloc

    from addon.metering import MAX_RESPONSE_BYTES

    body = _sse_bomb(coding)
    meter = StreamMeter(CHAT, SSE, coding)
    gc.collect()
    tracemalloc.start()
    try:
        generated = [meter.feed(body[i : i + 16384]) for i in range(0, len(body), 16384)]
        meter.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert generated[0] is True and meter.facts.content_events == 1  # the event before the bomb
    assert meter.facts.read_limit == MAX_RESPONSE_BYTES == 64 << 20
    assert meter.facts.oversized_events == 0  # the endless line was never ended: no event
    assert peak < 60 << 20, f"{peak >> 20} MiB"  # at most a framer's limit and a codec call's output


def test_a_stream_event_past_the_framers_limit_is_skipped_and_counted():
    from addon.wire import MAX_EVENT_BYTES

    long_event = b"data: " + json.dumps(_chunk({"content": "x" * MAX_EVENT_BYTES})).encode() + b"\n\n"
    meter = StreamMeter(CHAT, SSE, None)
    body = _sse(_chunk({"content": "Hi"}), done=False) + long_event + _sse(_chunk({}, "stop"))
    for i in range(0, len(body), 65536):
        meter.feed(body[i : i + 65536])
    meter.close()
    facts = meter.facts
    assert (facts.oversized_events, facts.content_events, facts.finish_reason, facts.terminated) == (1, 1, "stop", True)
    assert facts.malformed_events == 0


def test_json_nested_deeper_than_pythons_stack_is_a_malformed_event_not_a_failure():
    meter = StreamMeter(CHAT, SSE, None)
    meter.feed(b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n" + _sse(_chunk({"content": "Hi"}, "stop")))
    meter.close()
    assert (meter.facts.malformed_events, meter.facts.content_events) == (1, 1)
