"""Gemini Code Assist (Gemini CLI signed in with a Google account): the wrapped request and answers.

No recording of Code Assist traffic is public; its shape is gemini-cli's own converter
(`packages/core/src/code_assist/converter.ts`: `{model, project, user_prompt_id, request}` out,
`{response, traceId}` back, per SSE event). The recorded Gemini streams in ../shared/fixtures,
wrapped event by event in that envelope, must give what the same streams give unwrapped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from addon.formats import CANDIDATE_SUFFIXES, recognise, recognise_by_path, recognise_by_shape, recognise_unreadable
from addon.formats.gemini import GeminiGenerateContent
from addon.formats.gemini_code_assist import GeminiCodeAssist, unwrap
from addon.metering import JSON_ARRAY, SSE, StreamMeter, meter_body, stream_framing
from tests.chunking import random_pieces

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
STREAM_PATH = "/v1internal:streamGenerateContent"
WHOLE_PATH = "/v1internal:generateContent"


def code_assist_body(**request) -> dict:
    return {"model": "gemini-2.5-pro", "project": "proj-123", "user_prompt_id": "6f1c########0",
            "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **request}}


# --- recognising the call ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "streaming"), [(STREAM_PATH, True), (WHOLE_PATH, False),
                                                 ("/gateway/v1internal:streamGenerateContent", True)])
def test_wrapped_request_is_code_assist_with_the_model_from_the_body(path, streaming):
    body = code_assist_body(generationConfig={"maxOutputTokens": 64, "temperature": 0.5, "topP": 0.9})
    fmt = recognise(path, body)
    assert isinstance(fmt, GeminiCodeAssist) and path.endswith(CANDIDATE_SUFFIXES)
    assert fmt.request_fields(path, body) == {
        "request_model": "gemini-2.5-pro", "is_streaming": streaming, "max_tokens": 64,
        "temperature": 0.5, "top_p": 0.9, "message_count": 1,
    }
    assert fmt.operation == "generate_content"


def test_request_without_settings_or_model_leaves_them_unknown():
    body = {"request": {"contents": "not a list"}, "model": ""}
    assert GeminiCodeAssist().request_fields(STREAM_PATH, body) == {
        "request_model": None, "is_streaming": True, "max_tokens": None, "temperature": None, "top_p": None,
        "message_count": None,
    }


def test_gemini_calls_stay_gemini_and_code_assist_stays_code_assist():
    gemini_body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    assert isinstance(recognise("/v1beta/models/gemini-2.5-flash:streamGenerateContent", gemini_body),
                      GeminiGenerateContent)
    # Code Assist's envelope at Gemini's path is no call of either API.
    assert recognise("/v1beta/models/gemini-2.5-flash:streamGenerateContent", code_assist_body()) is None


def test_a_body_too_large_to_read_is_told_apart_by_its_path():
    assert isinstance(recognise_by_path(STREAM_PATH), GeminiCodeAssist)
    assert isinstance(recognise_by_path("/v1beta/models/g:streamGenerateContent"), GeminiGenerateContent)
    assert isinstance(recognise_unreadable(WHOLE_PATH, llm_host=False), GeminiCodeAssist)


def test_a_named_host_recognises_the_envelope_by_its_shape():
    assert isinstance(recognise_by_shape(code_assist_body()), GeminiCodeAssist)


def test_count_tokens_is_no_generation_and_no_candidate():
    assert not "/v1internal:countTokens".endswith(CANDIDATE_SUFFIXES)
    assert recognise("/v1internal:countTokens", {"request": {"model": "models/g", "contents": []}}) is None


# --- the answers ---------------------------------------------------------------------------------


def _events(sse: bytes) -> list[bytes]:
    return [m.group(1) for m in re.finditer(rb"^data: ?(.*?)\r?$", sse, re.MULTILINE)]


def _wrapped(sse: bytes, eol: bytes = b"\r\n\r\n") -> bytes:
    """Each data event of a Gemini stream inside Code Assist's envelope; anything else (a bare
    error appended after the events) as it was."""
    out = []
    for i, data in enumerate(_events(sse)):
        out.append(b"data: " + json.dumps({"response": json.loads(data), "traceId": f"t{i:04x}"}).encode() + eol)
    tail = sse[sse.rfind(b"data: "):].split(b"\n\n", 1)
    return b"".join(out) + (tail[1] if len(tail) > 1 else b"")


def _meter(fmt, body: bytes, seed: int):
    meter = StreamMeter(fmt, "text/event-stream", None, SSE)
    generated = [meter.feed(piece) for piece in random_pieces(body, seed)]
    meter.close()
    return meter.facts, sum(generated) > 0


@pytest.mark.parametrize("name", ["gemini_stream_sse_1.sse", "gemini_stream_sse_2.sse", "gemini_stream_sse_error_1.sse"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recorded_gemini_stream_wrapped_as_code_assist_gives_what_gemini_gives(name, seed):
    if not (FIXTURES / name).is_file():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    raw = (FIXTURES / name).read_bytes()
    wrapped = _wrapped(raw)
    assert b'"response": {"candidates"' in wrapped
    gemini, _ = _meter(GeminiGenerateContent(), raw, seed)
    code_assist, generated = _meter(GeminiCodeAssist(), wrapped, seed)
    assert code_assist == gemini
    assert generated and code_assist.content_events > 0


def test_recorded_stream_wrapped_gives_the_ground_truth():
    entry = next(e for e in json.loads((FIXTURES / "index.json").read_text()) if e["file"] == "gemini_stream_sse_1.sse")
    facts, _ = _meter(GeminiCodeAssist(), _wrapped((FIXTURES / entry["file"]).read_bytes()), 0)
    want = entry["expected"]
    assert (facts.model, facts.prompt_tokens, facts.completion_tokens, facts.reasoning_tokens, facts.total_tokens,
            facts.finish_reason, facts.events) == (
        want["model"], want["input_tokens"], want["output_tokens"] + want["reasoning_tokens"], want["reasoning_tokens"],
        want["total_tokens"], want["finish_reason"], want["events"])


def test_whole_answer_is_unwrapped():
    body = {"response": {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": "STOP"}],
                         "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 3,
                                           "cachedContentTokenCount": 4, "totalTokenCount": 14},
                         "modelVersion": "gemini-2.5-pro"},
            "traceId": "abc"}
    facts = meter_body(GeminiCodeAssist(), 200, "application/json", json.dumps(body).encode())
    assert (facts.model, facts.prompt_tokens, facts.completion_tokens, facts.reasoning_tokens, facts.cached_tokens,
            facts.total_tokens, facts.finish_reason, facts.error_type) == ("gemini-2.5-pro", 9, 5, 3, 4, 14, "STOP", None)


def test_error_status_body_is_googles_error():
    body = b'{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}'
    facts = meter_body(GeminiCodeAssist(), 429, "application/json", body)
    assert (facts.error_type, facts.error_message) == ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")


def test_error_event_inside_a_200_stream_fails_the_call():
    first = {"response": {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}],
                          "usageMetadata": {"promptTokenCount": 5}}}
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in (first, error))
    facts, generated = _meter(GeminiCodeAssist(), body, 0)
    assert generated and (facts.error_type, facts.error_message) == ("UNAVAILABLE", "The model is overloaded.")


def test_an_answer_without_a_response_tells_nothing():
    facts, generated = _meter(GeminiCodeAssist(), b'data: {"traceId": "x"}\r\n\r\ndata: []\r\n\r\n', 0)
    assert not generated and (facts.events, facts.model, facts.prompt_tokens, facts.error_type) == (2, None, None, None)
    assert unwrap({"response": "text"}) == {"response": "text"}


def test_stream_framing_is_geminis():
    fmt = GeminiCodeAssist()
    assert stream_framing(fmt, "text/event-stream", status=200, requested_stream=True) == SSE
    assert stream_framing(fmt, "application/json; charset=UTF-8", status=200, requested_stream=True) == JSON_ARRAY
    assert stream_framing(fmt, "application/json", status=429, requested_stream=True) is None
