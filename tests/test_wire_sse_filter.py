"""UsageChunkFilter: the usage-only event out of an SSE stream, every other byte as it came."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addon.wire.sse import SSEDecoder
from addon.wire.sse_filter import UsageChunkFilter, is_usage_only
from tests.chunking import one_byte_pieces, random_pieces

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
EOLS = pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])

USAGE = {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}


def chunk(choices, **extra) -> dict:
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": "m", "choices": choices, **extra}


def event(obj_or_text, eol: bytes = b"\n", name: bytes | None = None) -> bytes:
    data = obj_or_text if isinstance(obj_or_text, bytes) else json.dumps(obj_or_text).encode()
    head = b"event: " + name + eol if name else b""
    return head + b"data: " + data + eol + eol


def stream(eol: bytes) -> tuple[bytes, bytes]:
    """(what the upstream sends, what the client must get): the usage-only event is the one left
    out; everything else, the empty-choices events that are not usage-only included, stays."""
    kept = [
        b": keep-alive" + eol + eol,
        event(chunk([], prompt_filter_results=[{"prompt_index": 0}]), eol),  # Azure's first chunk
        event(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}], usage=None), eol),
        event(chunk([{"index": 0, "delta": {"content": "caf\u00e9 \U0001f600"}}], usage=None), eol),
        event(chunk([], usage=None), eol),  # empty choices, no usage: not the usage chunk
        event(chunk([], usage=USAGE), eol, name=b"other"),  # a named event: not OpenAI's
        event(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=USAGE), eol),  # OpenRouter, Mistral
    ]
    removed = event(chunk([], usage=USAGE), eol)
    done = event(b"[DONE]", eol)
    return b"".join(kept) + removed + done, b"".join(kept) + done


def run(pieces: list[bytes], filt: UsageChunkFilter | None = None) -> bytes:
    filt = filt or UsageChunkFilter()
    return b"".join(filt.feed(p) for p in pieces) + filt.close()


@EOLS
def test_usage_only_event_is_removed_and_every_other_byte_kept(eol):
    sent, expected = stream(eol)
    filt = UsageChunkFilter()
    assert run([sent], filt) == expected


@EOLS
def test_split_at_every_byte_offset_gives_the_same_bytes(eol):
    sent, expected = stream(eol)
    for offset in range(len(sent) + 1):
        assert run([sent[:offset], sent[offset:]]) == expected, f"split at byte {offset}"


@EOLS
def test_one_byte_pieces_give_the_same_bytes(eol):
    sent, expected = stream(eol)
    assert run(one_byte_pieces(sent)) == expected


@EOLS
@pytest.mark.parametrize("seed", range(20))
def test_random_pieces_give_the_same_bytes(eol, seed):
    sent, expected = stream(eol)
    assert run(random_pieces(sent, seed)) == expected


def test_each_event_goes_on_as_soon_as_its_blank_line_arrives():
    filt = UsageChunkFilter()
    first = event(chunk([{"index": 0, "delta": {"content": "Hi"}}]))
    assert filt.feed(first[:-1]) == b""  # its blank line has not come
    assert filt.feed(first[-1:] + b"data: {") == first
    assert filt.feed(b'"a": 1}\n\n') == b'data: {"a": 1}\n\n'


def test_a_trailing_cr_waits_for_a_possible_lf():
    filt = UsageChunkFilter()
    usage = event(chunk([], usage=USAGE), b"\r\n")
    # The blank line's \r ends the piece: only the next piece tells whether \n belongs to it.
    assert filt.feed(usage[:-1]) == b""
    assert filt.feed(usage[-1:] + b"data: [DONE]\r\n\r\n") == b"data: [DONE]\r\n\r\n"


def test_recorded_openai_stream_loses_only_its_usage_chunk():
    sent = (FIXTURES / "openai_chat_stream_1.sse").read_bytes()
    events = list(_events(sent))
    filt = UsageChunkFilter()
    out = run(random_pieces(sent, 7), filt)
    objs = [json.loads(e.data) for e in _events(out) if e.data != b"[DONE]"]
    assert [json.loads(e.data) for e in events if e.data != b"[DONE]"][:-1] == objs
    assert all(obj["choices"] for obj in objs)
    assert out.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("name", ["azure_chat_stream_1.sse", "vllm_chat_stream_1.sse", "openrouter_chat_stream_1.sse",
                                  "mistral_chat_stream_1.sse", "deepseek_chat_stream_1.sse", "groq_chat_stream_1.sse"])
def test_recorded_streams_without_a_usage_only_chunk_pass_unchanged(name):
    sent = (FIXTURES / name).read_bytes()
    assert run(random_pieces(sent, 3)) == sent


def test_an_event_longer_than_the_hold_limit_passes_as_it_comes():
    filt = UsageChunkFilter(hold_limit=100)
    long = event(chunk([{"index": 0, "delta": {"content": "x" * 500}}]))
    out = [filt.feed(p) for p in random_pieces(long, 1, max_size=40)]
    assert any(out[:-1]), "held whole although past the limit"
    assert b"".join(out) + filt.close() == long


def test_a_usage_only_event_past_the_hold_limit_is_passed_on():
    """Never held beyond the limit: an event that long is no usage chunk of any server."""
    usage = event(chunk([], usage={**USAGE, "padding": "p" * 300}))
    assert run(random_pieces(usage, 2, max_size=30), UsageChunkFilter(hold_limit=100)) == usage


def test_stream_ending_without_a_blank_line_is_passed_on_unless_usage_only():
    partial = b'data: {"choices": [{"index": 0}]}'
    assert run([partial]) == partial
    assert run([b'data: [DONE]\n\ndata: {"choices": [], "usage": {"prompt_tokens": 1}}']) == b"data: [DONE]\n\n"


def test_abandon_returns_what_is_held_and_then_passes_everything():
    filt = UsageChunkFilter()
    assert filt.feed(b"data: {") == b""
    assert filt.abandon() == b"data: {"
    usage = event(chunk([], usage=USAGE))
    assert filt.feed(usage) == usage
    assert filt.close() == b""


@pytest.mark.parametrize("raw, expected", [
    (b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n', True),
    (b'data: {"choices":[],\ndata: "usage":{"total_tokens":3}}\n\n', True),  # data over two lines
    (b'event: message\ndata: {"choices": [], "usage": {}}\n\n', True),
    (b'data: {"choices": [], "usage": null}\n\n', False),
    (b'data: {"choices": []}\n\n', False),
    (b'data: {"choices": [], "usage": {}\n\n', False),  # not JSON
    (b'data: [{"choices": [], "usage": {}}]\n\n', False),  # not an object
    (b'event: error\ndata: {"choices": [], "usage": {}}\n\n', False),
    (b": comment\n\n", False),
])
def test_is_usage_only(raw, expected):
    assert is_usage_only(raw) is expected


def _events(data: bytes):
    decoder = SSEDecoder()
    yield from decoder.feed(data)
    yield from decoder.close()
