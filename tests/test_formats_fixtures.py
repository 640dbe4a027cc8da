"""Every recorded body in ../shared/fixtures, through the format its request path selects.

Streams are fed in random pieces down to 1 byte, plain and gzip-encoded; every value must equal
the ground truth in index.json after this project's normalisation (one meaning per column):
`prompt_tokens` adds Anthropic's separately reported cache reads and writes to its input;
`completion_tokens` adds Gemini's separately reported thoughts to its output. The fixtures are
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
from addon.formats.bedrock import BedrockConverse, BedrockInvokeAnthropic
from addon.formats.gemini import GeminiGenerateContent
from addon.formats.ollama import OllamaChat, OllamaGenerate
from addon.formats.openai_chat import OpenAIChat, OpenAICompletions
from addon.formats.openai_embeddings import OpenAIEmbeddings
from addon.formats.openai_responses import OpenAIResponses
from addon.metering import JSON_ARRAY, StreamMeter, meter_body, stream_framing
from tests.chunking import random_pieces

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not (FIXTURES / "index.json").is_file():
    pytest.skip(f"shared fixtures not found at {FIXTURES}", allow_module_level=True)

ENTRIES = json.loads((FIXTURES / "index.json").read_text())
NOT_GENERATIONS = [e for e in ENTRIES if e["api"] == "messages/count_tokens"]
METERED = [e for e in ENTRIES if e not in NOT_GENERATIONS]
STREAMS = [e for e in METERED if e["streaming"] and e["response_status"] < 400]
BODIES = [e for e in METERED if e not in STREAMS]
SEEDS = [0, 1, 2]


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["file"] for e in entries]


def _path(entry: dict[str, Any]) -> str:
    return entry["request"]["path"].split("?", 1)[0]


def _request_body(entry: dict[str, Any], fmt: WireFormat) -> dict[str, Any]:
    """The recorded request's flags, with the body shape of its API."""
    return {fmt.shape_key: [], **entry["request"]["stream_flags"]}


def _format_for(entry: dict[str, Any]) -> WireFormat:
    """What the addon would choose for the recorded request path; error bodies from paths no
    format meters (an image endpoint) are read with the first format, as any would."""
    path = _path(entry)
    for fmt in FORMATS:
        if recognise(path, _request_body(entry, fmt)) is fmt:
            return fmt
    assert entry["api"] == "error", entry["file"]
    return FORMATS[0]


def _wire_body(entry: dict[str, Any]) -> bytes:
    body = (FIXTURES / entry["file"]).read_bytes()
    if entry["body_fidelity"] == "sse-data-payload-per-line":
        # Stored one SSE data payload per line; on the wire each was `event: <type>` + `data:`.
        events = [json.loads(line) for line in body.splitlines() if line.strip()]
        return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events)
    return body


def _content_type(entry: dict[str, Any]) -> str | None:
    return (entry["response_content_type"] or "").replace(" (original)", "") or None


def _framing(entry: dict[str, Any], fmt: WireFormat) -> str | None:
    fields = fmt.request_fields(_path(entry), _request_body(entry, fmt))
    return stream_framing(fmt, _content_type(entry), status=entry["response_status"],
                          requested_stream=fields["is_streaming"])


def _meter_stream(entry: dict[str, Any], seed: int, content_encoding: str | None) -> StreamMeter:
    fmt = _format_for(entry)
    framing = _framing(entry, fmt)
    assert framing is not None, "a streamed response must be metered as it arrives"
    body = _wire_body(entry)
    wire = gzip.compress(body) if content_encoding == "gzip" else body
    meter = StreamMeter(fmt, _content_type(entry), content_encoding, framing)
    for piece in random_pieces(wire, seed):
        meter.feed(piece)
    meter.close()
    return meter


# --- the normalisation: index.json's provider-native values -> this project's columns ----------


def expected_facts(entry: dict[str, Any]) -> dict[str, Any]:
    exp = entry["expected"]
    fmt = _format_for(entry)
    out: dict[str, Any] = {}
    if "model" in exp:
        out["model"] = exp["model"]
    if "input_tokens" in exp:
        out["prompt_tokens"] = exp["input_tokens"]
    if "output_tokens" in exp:
        out["completion_tokens"] = exp["output_tokens"]
    for key in ("cached_tokens", "reasoning_tokens", "finish_reason", "total_tokens",
                "eval_duration_ns", "prompt_eval_duration_ns"):
        if key in exp:
            out[key] = exp[key]
    if "cache_read_tokens" in exp and "input_tokens" in exp:
        # Anthropic (and Bedrock) report input without the cache; the columns count all input.
        cache = (exp["cache_read_tokens"] or 0) + (exp["cache_creation_tokens"] or 0)
        out["prompt_tokens"] = exp["input_tokens"] + cache
        out["cached_tokens"] = exp["cache_read_tokens"]
        out["cache_creation_tokens"] = exp["cache_creation_tokens"]
        out["reasoning_tokens"] = None  # Anthropic does not report thinking apart
    else:
        out["cache_creation_tokens"] = None  # nobody else reports cache writes
    if isinstance(fmt, GeminiGenerateContent) and exp.get("output_tokens") is not None:
        # Gemini reports output without its thoughts; the column counts all output.
        out["completion_tokens"] = exp["output_tokens"] + (exp["reasoning_tokens"] or 0)
    if entry["streaming"] and entry["response_status"] < 400:
        out["events"] = exp["events"]
        out["text_events"] = exp["content_chunks"]
    if "done_sentinel" in exp:
        out["terminated"] = exp["done_sentinel"]
    if "model_from_url" in exp and "model" not in exp:
        out["model"] = None  # Bedrock Converse names the model only in the URL
    return out


def _errors(entry: dict[str, Any]) -> list[dict[str, Any]]:
    error = entry["expected"].get("error")
    return error if isinstance(error, list) else [error] if error else []


def assert_ground_truth(facts, entry: dict[str, Any]) -> None:
    for attr, value in expected_facts(entry).items():
        # None in the ground truth means "the body does not say": unknown, never 0.
        assert getattr(facts, attr) == value, f"{attr}: {getattr(facts, attr)!r} != {value!r}"
    errors = _errors(entry)
    if errors:
        assert facts.error_type, "an error in the body or stream must set error_type"
        assert " ".join(errors[0]["message"].split()) in facts.error_message
    else:
        assert (facts.error_type, facts.error_message) == (None, None)
    assert facts.malformed_events == 0


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_encoding", [None, "gzip"], ids=["plain", "gzip"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("entry", STREAMS, ids=_ids(STREAMS))
def test_stream_fixture_in_random_pieces_gives_the_ground_truth(entry, seed, content_encoding):
    assert_ground_truth(_meter_stream(entry, seed, content_encoding).facts, entry)


@pytest.mark.parametrize("entry", BODIES, ids=_ids(BODIES))
def test_whole_body_fixture_gives_the_ground_truth(entry):
    fmt = _format_for(entry)
    facts = meter_body(fmt, entry["response_status"], _content_type(entry), _wire_body(entry))
    assert_ground_truth(facts, entry)
    assert facts.events == 0  # a whole body is not a stream


@pytest.mark.parametrize("entry", [e for e in BODIES if "events" in e["expected"]],
                         ids=_ids([e for e in BODIES if "events" in e["expected"]]))
def test_whole_gemini_body_is_the_one_event_of_a_stream(entry):
    """index.json counts a whole Gemini response as one chunk: it is one element of a stream."""
    meter = StreamMeter(_format_for(entry), "application/json", None, JSON_ARRAY)
    meter.feed(_wire_body(entry))
    meter.close()
    assert (meter.facts.events, meter.facts.text_events) == (entry["expected"]["events"], entry["expected"]["content_chunks"])


@pytest.mark.parametrize("entry", STREAMS, ids=_ids(STREAMS))
def test_generated_content_events_include_reasoning_and_tool_output(entry):
    """Reasoning, thinking and tool-call chunks count for time to first token besides text."""
    exp = entry["expected"]
    other = sum(exp.get(k, 0) for k in ("reasoning_chunks", "thinking_chunks", "thought_chunks", "function_calls"))
    facts = _meter_stream(entry, 0, None).facts
    assert facts.content_events >= facts.text_events + other


def test_every_fixture_is_covered_by_a_test_here():
    covered = set(_ids(STREAMS)) | set(_ids(BODIES)) | set(_ids(NOT_GENERATIONS))
    on_disk = {p.name for p in FIXTURES.iterdir() if p.name not in ("index.json", "INDEX.md")}
    assert covered == on_disk == set(_ids(ENTRIES))
    assert len(METERED) == len(ENTRIES) - len(NOT_GENERATIONS) == 51


def test_each_format_meets_its_own_fixtures():
    chosen = {type(_format_for(e)) for e in METERED}
    assert chosen == {OpenAIChat, OpenAICompletions, OpenAIResponses, OpenAIEmbeddings,
                      AnthropicMessages, GeminiGenerateContent, OllamaChat, OllamaGenerate,
                      BedrockConverse, BedrockInvokeAnthropic}


@pytest.mark.parametrize("entry", NOT_GENERATIONS, ids=_ids(NOT_GENERATIONS))
def test_count_tokens_is_not_recognised_as_a_call(entry):
    """Anthropic's count_tokens is free and generates nothing: it is not recorded."""
    assert recognise(_path(entry), {"messages": [], **entry["request"]["stream_flags"]}) is None


BEDROCK = [e for e in ENTRIES if e["provider"] == "aws-bedrock"]


@pytest.mark.parametrize("entry", BEDROCK, ids=_ids(BEDROCK))
def test_bedrock_model_is_the_url_encoded_id_in_the_path(entry):
    fmt = _format_for(entry)
    fields = fmt.request_fields(_path(entry), _request_body(entry, fmt))
    assert fields["request_model"] == entry["expected"]["model_from_url"]
    assert fields["is_streaming"] is True


@pytest.mark.parametrize("entry", BEDROCK, ids=_ids(BEDROCK))
def test_bedrock_frame_with_a_bad_crc_makes_the_stream_malformed(entry):
    body = bytearray(_wire_body(entry))
    body[len(body) // 2] ^= 0x01
    meter = StreamMeter(_format_for(entry), _content_type(entry), None)
    meter.feed(bytes(body))
    meter.close()
    assert meter.facts.malformed_events == 1
    assert meter.facts.events < entry["expected"]["events"]
