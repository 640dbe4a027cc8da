"""addon/formats/websocket.py: responses on a WebSocket, fed message by message with the times they
passed the proxy; recorded Responses streams (../shared/fixtures) replayed as WebSocket messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from addon.formats.websocket import (
    MAX_OPEN_RESPONSES,
    RealtimeSession,
    ResponsesSession,
    Turn,
    open_session,
    outcome,
)
from addon.wire.sse import SSEDecoder
from tests.chunking import random_pieces

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
CLOSED = ("upstream_disconnected", "closed")


def msg(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def create(**fields: Any) -> bytes:
    return msg({"type": "response.create", "model": "gpt-5-codex", "stream": True, "input": [{}, {}], **fields})


def response(rid: str, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "response", "status": status, "model": "gpt-5-codex-2026", "output": [],
            "usage": usage}


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + completion}


def answer(rid: str, words: int, prompt: int, completion: int) -> list[bytes]:
    """A Responses API answer as its server sends it, one event a message."""
    events = [{"type": "response.created", "response": response(rid, "in_progress")},
              {"type": "response.in_progress", "response": response(rid, "in_progress")}]
    events += [{"type": "response.output_text.delta", "item_id": "m", "delta": f"w{i}"} for i in range(words)]
    events.append({"type": "response.completed", "response": response(rid, "completed", usage(prompt, completion))})
    return [msg(e) for e in events]


def feed_server(session, messages: list[bytes], t0: float, step: float = 0.01) -> list[Turn]:
    ended = []
    for i, data in enumerate(messages):
        ended += session.server(t0 + i * step, data, len(data))
    return ended


# -- the Responses API over a WebSocket ------------------------------------------------------------


def test_two_responses_on_one_socket_are_two_turns_timed_from_their_create_message():
    session = ResponsesSession("/v1/responses")
    assert session.client(10.0, create(max_output_tokens=50, temperature=0.2), 100) == []
    # created at 10.5; deltas at 10.52, 10.53, 10.54; completed at 10.55
    [first] = feed_server(session, answer("resp_1", 3, 1000, 3), 10.5)
    assert session.client(20.0, create(previous_response_id="resp_1"), 100) == []
    [second] = feed_server(session, answer("resp_2", 2, 1100, 2), 20.25)

    assert (first.t_start, first.t_first_event, first.t_first_token, first.t_last_token) == (10.0, 10.5, 10.52, 10.54)
    assert first.t_end == pytest.approx(10.55)
    assert first.request == {"request_model": "gpt-5-codex", "is_streaming": True, "max_tokens": 50,
                             "temperature": 0.2, "top_p": None, "message_count": 2}
    assert (first.facts.prompt_tokens, first.facts.completion_tokens, first.facts.total_tokens) == (1000, 3, 1003)
    assert (first.facts.model, first.facts.finish_reason, first.facts.events) == ("gpt-5-codex-2026", "completed", 6)
    assert first.response_id == "resp_1" and outcome(first) is None and not first.warmup
    assert (second.t_start, second.t_first_token, second.facts.prompt_tokens) == (20.0, 20.27, 1100)
    assert session.open_count == 0


def test_warm_up_request_is_a_turn_marked_warm_up():
    session = ResponsesSession("/v1/responses")
    session.client(1.0, create(generate=False), 100)
    [turn] = feed_server(session, [msg({"type": "response.created", "response": response("r0", "in_progress")}),
                                   msg({"type": "response.completed", "response": response("r0", "completed", usage(900, 0))})], 1.1)
    assert turn.warmup and outcome(turn) is None
    assert turn.t_first_token is None and turn.facts.content_events == 0


def test_error_event_refusing_a_request_ends_it_with_the_status_it_names():
    session = ResponsesSession("/v1/responses")
    session.client(1.0, create(), 100)
    error = {"type": "error", "status": 429,
             "error": {"type": "tokens", "code": "rate_limit_exceeded", "message": "Rate limit reached"}}
    [turn] = session.server(1.2, msg(error), 10)
    assert (turn.facts.error_type, turn.facts.error_message, turn.status) == ("rate_limit_exceeded", "Rate limit reached", 429)
    assert turn.t_end == 1.2 and session.open_count == 0


def test_error_then_response_failed_is_one_failed_turn_and_the_next_request_is_unaffected():
    session = ResponsesSession("/v1/responses")
    session.client(1.0, create(), 100)
    failed = response("r1", "failed")
    failed["error"] = {"code": "server_error", "message": "boom"}
    ended = feed_server(session, [msg({"type": "response.created", "response": response("r1", "in_progress")}),
                                  msg({"type": "error", "error": {"code": "insufficient_quota", "message": "quota"}}),
                                  msg({"type": "response.failed", "response": failed})], 1.1)
    [turn] = ended
    assert (turn.facts.error_type, turn.facts.finish_reason, turn.facts.events) == ("insufficient_quota", "failed", 3)
    session.client(5.0, create(), 100)
    [after] = feed_server(session, answer("r2", 1, 10, 1), 5.1)
    assert after.facts.error_type is None and after.t_start == 5.0


def test_error_without_its_terminal_event_ends_when_the_client_asks_again():
    session = ResponsesSession("/v1/responses")
    session.client(1.0, create(), 100)
    feed_server(session, [msg({"type": "response.created", "response": response("r1", "in_progress")}),
                          msg({"type": "error", "error": {"code": "server_error", "message": "x"}})], 1.1)
    [turn] = session.client(3.0, create(), 100)
    assert turn.facts.error_type == "server_error" and turn.t_end == pytest.approx(1.11)
    assert session.open_count == 1


@pytest.mark.parametrize("words", [0, 2])
def test_socket_closing_mid_response_ends_it_with_the_close_error(words):
    session = ResponsesSession("/v1/responses")
    session.client(1.0, create(), 100)
    feed_server(session, answer("r1", words, 1, 1)[:-1], 1.1)  # everything but response.completed
    [turn] = session.close(2.0, CLOSED)
    assert outcome(turn) == CLOSED and turn.t_end == 2.0
    assert (turn.t_first_token is not None) == bool(words)
    assert session.close(3.0, CLOSED) == []


def test_socket_closing_after_every_response_ended_ends_nothing():
    session = ResponsesSession("/v1/responses")
    session.client(1.0, create(), 100)
    feed_server(session, answer("r1", 1, 1, 1), 1.1)
    assert session.close(2.0, CLOSED) == []


def test_request_message_too_large_to_read_is_a_turn_of_unknown_request_with_a_note():
    session = ResponsesSession("/v1/responses", limit_note="2 MiB")
    session.client(1.0, None, 3 << 20)
    [turn] = feed_server(session, answer("r1", 2, 5000, 2), 1.1)
    assert turn.request == {"request_model": None, "is_streaming": None}
    assert turn.notes == [f"request message not read: {3 << 20} bytes, larger than 2 MiB"]
    assert not turn.warmup and turn.facts.prompt_tokens == 5000


def test_unread_request_answered_with_no_output_is_taken_for_a_warm_up():
    session = ResponsesSession("/v1/responses")
    session.client(1.0, None, 3 << 20)
    [turn] = feed_server(session, [msg({"type": "response.created", "response": response("r0", "in_progress")}),
                                   msg({"type": "response.completed", "response": response("r0", "completed", usage(9, 0))})], 1.1)
    assert turn.warmup


def test_server_message_too_large_to_read_leaves_the_end_unknown_not_failed():
    session = ResponsesSession("/v1/responses")
    session.client(1.0, create(), 100)
    feed_server(session, answer("r1", 1, 1, 1)[:-1], 1.1)
    session.server(1.5, None, 9 << 20)  # the terminal event, too large to read
    [turn] = session.close(9.0, CLOSED)
    assert outcome(turn) is None and turn.t_end == 1.5 and turn.facts.oversized_events == 1


def test_messages_that_are_not_json_break_the_turn_and_other_client_messages_are_ignored():
    session = ResponsesSession("/v1/responses")
    assert session.client(1.0, b"not json", 8) == []
    assert session.client(1.0, msg({"type": "response.cancel"}), 10) == []
    assert session.open_count == 0
    session.client(1.0, create(), 100)
    session.server(1.1, b"{broken", 7)
    [turn] = feed_server(session, answer("r1", 1, 1, 1), 1.2)
    assert outcome(turn) == ("malformed_stream", "1 message(s) were not valid JSON")


def test_server_messages_before_any_request_are_ignored():
    session = ResponsesSession("/v1/responses")
    assert feed_server(session, answer("r1", 2, 1, 1), 1.0) == []


def test_unanswered_requests_are_bounded_and_the_oldest_given_up():
    session = ResponsesSession("/v1/responses")
    given_up = []
    for i in range(MAX_OPEN_RESPONSES + 10):
        given_up += session.client(float(i), create(), 100)
    assert session.open_count == MAX_OPEN_RESPONSES
    assert [t.t_start for t in given_up] == [float(i) for i in range(10)] and all(t.dropped for t in given_up)


def _fixture_messages(name: str) -> list[bytes]:
    """A recorded Responses stream's events, one WebSocket message each (what the server sends there)."""
    body = (FIXTURES / name).read_bytes()
    if name.endswith(".jsonl"):
        return [line for line in body.splitlines() if line.strip()]
    decoder = SSEDecoder()
    events = [e for piece in random_pieces(body, 0) for e in decoder.feed(piece)] + decoder.close()
    return [e.data for e in events]


def test_recorded_responses_streams_replayed_on_one_socket_give_their_ground_truth():
    if not (FIXTURES / "index.json").is_file():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    entries = {e["file"]: e for e in json.loads((FIXTURES / "index.json").read_text())}
    names = ["openai_responses_stream_1.sse", "openai_responses_stream_2.sse", "openai_responses_stream_error_1.jsonl"]
    session = ResponsesSession("/v1/responses")
    turns = []
    for i, name in enumerate(names):
        session.client(100.0 * i, create(), 100)
        turns += feed_server(session, _fixture_messages(name), 100.0 * i + 1)
    assert len(turns) == 3
    for turn, name in zip(turns, names):
        exp, facts = entries[name]["expected"], turn.facts
        assert (facts.model, facts.prompt_tokens, facts.completion_tokens) == (exp["model"], exp["input_tokens"], exp["output_tokens"])
        assert (facts.cached_tokens, facts.reasoning_tokens, facts.finish_reason) == (exp["cached_tokens"], exp["reasoning_tokens"], exp["finish_reason"])
        assert facts.events == exp["events"]
        assert facts.text_events == exp["content_chunks"]
    assert turns[1].facts.tool_calls and turns[1].t_first_token is not None  # tool arguments are generated tokens
    assert turns[2].facts.error_type == exp["error"][0]["code"]


# -- the Realtime API ------------------------------------------------------------------------------


def realtime_usage(prompt: int, completion: int, audio_in: int, audio_out: int, cached: int = 0) -> dict[str, Any]:
    return {"total_tokens": prompt + completion, "input_tokens": prompt, "output_tokens": completion,
            "input_token_details": {"text_tokens": prompt - audio_in, "audio_tokens": audio_in, "cached_tokens": cached,
                                    "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0}},
            "output_token_details": {"text_tokens": completion - audio_out, "audio_tokens": audio_out}}


def rt(kind: str, rid: str | None = None, **fields: Any) -> bytes:
    obj: dict[str, Any] = {"type": kind, "event_id": "ev", **fields}
    if rid is not None and kind not in ("response.created", "response.done"):
        obj["response_id"] = rid
    return msg(obj)


def rt_response(rid: str, status: str, usage_: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "object": "realtime.response", "status": status, "status_details": None, "output": [],
            "usage": usage_, **fields}


def test_realtime_two_responses_are_two_turns_with_their_usage_and_the_session_model():
    session = open_session("/v1/realtime", "gpt-realtime")
    assert isinstance(session, RealtimeSession)
    session.server(0.1, msg({"type": "session.created", "session": {"model": "gpt-realtime-2025-08-28"}}), 0)
    session.client(0.5, msg({"type": "input_audio_buffer.append", "audio": "AAAA"}), 0)
    turns = []
    for i, t0 in enumerate((1.0, 5.0)):
        rid = f"resp_{i}"
        session.client(t0, msg({"type": "response.create", "response": {"max_output_tokens": 200}}), 0)
        turns += feed_server(session, [
            msg({"type": "response.created", "response": rt_response(rid, "in_progress")}),
            rt("response.output_audio.delta", rid, delta="AAAA"),
            rt("response.output_audio_transcript.delta", rid, delta="Hi"),
            msg({"type": "response.done", "response": rt_response(rid, "completed", realtime_usage(100 + i, 50, 40, 30, 10))}),
        ], t0 + 0.2)
    first, second = turns
    assert (first.t_start, first.t_first_event, first.t_first_token, first.t_end) == pytest.approx((1.0, 1.2, 1.21, 1.23))
    assert second.t_start == 5.0 and second.facts.prompt_tokens == 101
    facts = first.facts
    assert (facts.model, facts.finish_reason, facts.prompt_tokens, facts.completion_tokens, facts.total_tokens) == (
        "gpt-realtime-2025-08-28", "completed", 100, 50, 150)
    assert (facts.cached_tokens, facts.audio_input_tokens, facts.cached_audio_tokens, facts.audio_output_tokens) == (10, 40, 0, 30)
    assert first.request["request_model"] == "gpt-realtime" and first.request["max_tokens"] == 200
    assert facts.content_events == 2 and facts.text_events == 0 and outcome(first) is None


def test_realtime_overlapping_responses_are_told_apart_by_response_id():
    session = RealtimeSession("/v1/realtime")
    session.client(1.0, msg({"type": "response.create"}), 0)
    session.client(1.1, msg({"type": "response.create", "response": {"conversation": "none"}}), 0)
    ended = feed_server(session, [
        msg({"type": "response.created", "response": rt_response("a", "in_progress")}),
        msg({"type": "response.created", "response": rt_response("b", "in_progress")}),
        rt("response.output_text.delta", "b", delta="x"),
        rt("response.output_text.delta", "a", delta="y"),
        msg({"type": "response.done", "response": rt_response("b", "completed", realtime_usage(7, 1, 0, 0))}),
    ], 2.0)
    [b] = ended
    assert (b.t_start, b.t_first_token, b.facts.prompt_tokens, b.facts.text_events) == (1.1, 2.02, 7, 1)
    [a] = session.close(9.0, CLOSED)
    assert (a.t_start, a.t_first_token, outcome(a)) == (1.0, 2.03, CLOSED)


def test_realtime_response_the_server_starts_is_timed_from_its_response_created():
    session = RealtimeSession("/v1/realtime")
    [turn] = feed_server(session, [
        msg({"type": "response.created", "response": rt_response("v", "in_progress")}),
        rt("response.output_audio.delta", "v", delta="AAAA"),
        msg({"type": "response.done", "response": rt_response("v", "cancelled", realtime_usage(5, 2, 5, 2),
                                                               status_details={"type": "cancelled", "reason": "turn_detected"})}),
    ], 3.0)
    assert (turn.t_start, turn.t_first_token, turn.facts.finish_reason, outcome(turn)) == (3.0, 3.01, "cancelled", None)


def test_realtime_failed_and_incomplete_responses():
    session = RealtimeSession("/v1/realtime")
    for rid, details in (("f", {"type": "failed", "error": {"type": "server_error", "code": "overloaded", "message": "busy"}}),
                         ("i", {"type": "incomplete", "reason": "max_output_tokens"})):
        session.client(1.0, msg({"type": "response.create"}), 0)
        session.server(1.1, msg({"type": "response.created", "response": rt_response(rid, "in_progress")}), 0)
        status = details["type"]
        [turn] = session.server(1.2, msg({"type": "response.done", "response": rt_response(rid, status, None, status_details=details)}), 0)
        if rid == "f":
            assert (turn.facts.error_type, turn.facts.error_message) == ("overloaded", "busy")
        else:
            assert (turn.facts.error_type, turn.facts.finish_category) == (None, "length")


def test_realtime_error_naming_a_response_create_ends_that_request():
    session = RealtimeSession("/v1/realtime")
    session.client(1.0, msg({"type": "response.create", "event_id": "mine"}), 0)
    assert session.server(1.1, msg({"type": "error", "error": {"type": "invalid_request_error", "code": "x",
                                                               "event_id": "other"}}), 0) == []
    [turn] = session.server(1.2, msg({"type": "error", "error": {"type": "invalid_request_error",
                                                                 "code": "conversation_already_has_active_response",
                                                                 "message": "busy", "event_id": "mine"}}), 0)
    assert turn.facts.error_type == "conversation_already_has_active_response" and turn.t_end == 1.2
    assert session.open_count == 0


def test_realtime_open_responses_are_bounded():
    session = RealtimeSession("/v1/realtime")
    given_up = []
    for i in range(MAX_OPEN_RESPONSES + 3):
        given_up += session.server(float(i), msg({"type": "response.created", "response": rt_response(f"r{i}", "in_progress")}), 0)
    assert session.open_count == MAX_OPEN_RESPONSES and len(given_up) == 3 and all(t.dropped for t in given_up)


def test_open_session_picks_the_api_by_path():
    assert isinstance(open_session("/backend-api/codex/responses"), ResponsesSession)
    assert isinstance(open_session("/openai/realtime"), RealtimeSession)
    assert open_session("/socket.io/") is None
