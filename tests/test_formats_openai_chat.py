"""OpenAIChat / OpenAICompletions against recorded bodies from every OpenAI-compatible provider.

Ground truth is ../shared/fixtures/index.json (conventions in INDEX.md there). The fixtures are
read in place, never copied into the project.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from addon.formats import FORMATS, WireFormat, recognise
from addon.formats.anthropic_messages import AnthropicMessages
from addon.formats.openai_chat import OpenAIChat, OpenAICompletions
from addon.formats.openai_embeddings import OpenAIEmbeddings
from addon.formats.openai_responses import OpenAIResponses
from addon.metering import StreamMeter, meter_body
from tests.chunking import random_pieces

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not (FIXTURES / "index.json").is_file():
    pytest.skip(f"shared fixtures not found at {FIXTURES}", allow_module_level=True)

# Error bodies from OpenAI itself on endpoints this module does not meter (e.g. images) use the
# same envelope as its chat errors, so they belong to this family's grid too.
ERROR_PROVIDERS = ("openai", "azure-openai")

SEEDS = [0, 1, 2]

# index.json name -> ResponseFacts attribute.
FACT_OF = {
    "model": "model",
    "input_tokens": "prompt_tokens",
    "output_tokens": "completion_tokens",
    "cached_tokens": "cached_tokens",
    "reasoning_tokens": "reasoning_tokens",
    "finish_reason": "finish_reason",
    "events": "events",
    "content_chunks": "text_events",
    "done_sentinel": "terminated",
}


def _path(entry: dict[str, Any]) -> str:
    return entry["request"]["path"].split("?", 1)[0]


def _is_openai_family(entry: dict[str, Any]) -> bool:
    if entry["api"] == "error" and entry["provider"] in ERROR_PROVIDERS:
        return True
    return _path(entry).endswith("/completions")


def _load_entries() -> list[dict[str, Any]]:
    entries = json.loads((FIXTURES / "index.json").read_text())
    return [e for e in entries if _is_openai_family(e)]


ENTRIES = _load_entries()
# Every stream selected here is raw SSE. The one `sse-data-payload-per-line` fixture in the set
# (openai_responses_stream_error_1.jsonl) is a Responses API stream, for that format's own tests.
STREAMS = [e for e in ENTRIES if e["streaming"] and e["response_status"] < 400]
BODIES = [e for e in ENTRIES if e not in STREAMS]
assert all(e["body_fidelity"] != "sse-data-payload-per-line" for e in STREAMS)


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["file"] for e in entries]


def _format_for(entry: dict[str, Any]) -> WireFormat:
    """By path suffix, most specific first; error bodies (any path) are read format-independently."""
    path = _path(entry)
    return next((f for f in FORMATS if path.endswith(f.path_suffix)), FORMATS[0])


def _body(entry: dict[str, Any]) -> bytes:
    return (FIXTURES / entry["file"]).read_bytes()


def _meter_stream(
    entry: dict[str, Any], seed: int, content_encoding: str | None
) -> tuple[StreamMeter, list[bool]]:
    body = _body(entry)
    wire = gzip.compress(body) if content_encoding == "gzip" else body
    meter = StreamMeter(_format_for(entry), entry["response_content_type"], content_encoding)
    results = [meter.feed(piece) for piece in random_pieces(wire, seed)]
    results.append(meter.close())
    return meter, results


def _error_messages(expected: dict[str, Any]) -> list[str]:
    error = expected.get("error")
    errors = error if isinstance(error, list) else [error] if error else []
    return [" ".join(e["message"].split()) for e in errors]


def _assert_facts_match(facts, expected: dict[str, Any]) -> None:
    for key, attr in FACT_OF.items():
        if key in expected:
            # None in the ground truth means "the body does not say": unknown, never 0.
            assert getattr(facts, attr) == expected[key], f"{attr} (index.json {key})"
            assert (getattr(facts, attr) is None) == (expected[key] is None), attr
    messages = _error_messages(expected)
    if messages:
        assert facts.error_type, "an error in the body must set error_type"
        assert messages[0] in facts.error_message
    else:
        assert (facts.error_type, facts.error_message) == (None, None)
    if "reasoning_chunks" in expected:
        assert facts.content_events == facts.text_events + expected["reasoning_chunks"]
    assert facts.malformed_events == 0


@pytest.mark.parametrize("content_encoding", [None, "gzip"], ids=["plain", "gzip"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("entry", STREAMS, ids=_ids(STREAMS))
def test_stream_fixture_fed_in_random_pieces_gives_ground_truth(entry, seed, content_encoding):
    meter, _ = _meter_stream(entry, seed, content_encoding)
    _assert_facts_match(meter.facts, entry["expected"])


@pytest.mark.parametrize("entry", BODIES, ids=_ids(BODIES))
def test_whole_body_fixture_gives_ground_truth(entry):
    facts = meter_body(
        _format_for(entry), entry["response_status"], entry["response_content_type"], _body(entry)
    )
    _assert_facts_match(facts, entry["expected"])
    assert facts.events == 0


def test_selection_covers_every_openai_family_provider():
    providers = {e["provider"] for e in ENTRIES}
    assert providers >= {
        "openai",
        "azure-openai",
        "deepseek",
        "groq",
        "mistral",
        "openrouter",
        "together",
        "vllm",
        "ollama",
    }
    assert {e["file"] for e in ENTRIES} >= {
        "openai_error_400_1.json",
        "openrouter_error_429_1.json",
        "azure_error_404_1.json",
        "ollama_openai_nonstream_1.json",
    }
    assert {type(_format_for(e)) for e in STREAMS} == {OpenAIChat, OpenAICompletions}


def _first_content_event_end(body: bytes) -> int:
    """Offset of the newline that completes the first event with non-empty delta.content."""
    offset = 0
    for block in body.split(b"\n\n"):
        offset += len(block) + 2
        obj = json.loads(block.removeprefix(b"data: "))
        if any(c["delta"].get("content") for c in obj["choices"]):
            return offset - 1
    raise AssertionError("no content event")


@pytest.mark.parametrize("seed", SEEDS)
def test_feed_is_true_first_for_the_piece_completing_the_first_content_event(seed):
    entry = next(e for e in STREAMS if e["file"] == "openai_chat_stream_1.sse")
    body = _body(entry)
    end = _first_content_event_end(body)
    meter = StreamMeter(OpenAIChat(), entry["response_content_type"], None)
    pos = 0
    for piece in random_pieces(body, seed):
        generated = meter.feed(piece)
        pos += len(piece)
        if pos <= end:
            assert not generated, f"piece ending at byte {pos} completes no content event"
        else:
            assert generated, f"piece ending at byte {pos} completes the first content event"
            break


def test_role_only_first_chunk_is_not_generated_content():
    entry = next(e for e in STREAMS if e["file"] == "openai_chat_stream_1.sse")
    first_event = _body(entry).split(b"\n\n")[0] + b"\n\n"
    delta = json.loads(first_event.removeprefix(b"data: "))["choices"][0]["delta"]
    assert delta["role"] == "assistant" and delta["content"] == ""
    meter = StreamMeter(OpenAIChat(), entry["response_content_type"], None)
    assert meter.feed(first_event) is False
    assert (meter.facts.events, meter.facts.content_events, meter.facts.text_events) == (1, 0, 0)
    assert meter.facts.model == entry["expected"]["model"]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": []}, OpenAIChat),
        ("/openai/deployments/gpt-5-nano/chat/completions", {"messages": []}, OpenAIChat),
        ("/api/v1/chat/completions", {"messages": [], "prompt": "x"}, OpenAIChat),
        ("/v1/completions", {"model": "davinci-002", "prompt": "Say"}, OpenAICompletions),
        ("/v1/completions", {"messages": []}, None),
        ("/v1/chat/completions", {"input": "x"}, None),
        ("/v1/embeddings", {"input": "x"}, OpenAIEmbeddings),
        ("/v1/messages", {"model": "claude-x", "messages": []}, AnthropicMessages),
        ("/api/v2/messages", {"messages": [], "channel": "general"}, None),  # a chat app's own API
        ("/v1/responses", {"input": "x"}, OpenAIResponses),
        ("/v1/messages/count_tokens", {"messages": []}, None),  # free, and not a generation
        ("/v1/embeddings", {"messages": []}, None),
    ],
)
def test_recognise_matches_path_suffix_and_body_shape(path, body, expected):
    fmt = recognise(path, body)
    assert (type(fmt) if fmt else None) is expected
