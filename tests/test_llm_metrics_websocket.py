"""The addon's WebSocket hooks, driven by hand with mitmproxy's own test helpers: messages pass
unchanged, one handed over is let go (an hours-long socket holds one message), each response on
a followed socket is a row, and a metering that is behind drops and counts, never waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from addon.backends import ChildProcess, InProcess
from addon.formats.websocket import MAX_OPEN_RESPONSES
from addon.handover import BACKLOG_LIMIT
from addon.llm_metrics import LLMMetrics
from tests.conftest import read_drops, read_rows, running_addon, wait_until
from tests.test_formats_websocket import answer, create, msg, realtime_usage, rt_response


@pytest.fixture(params=[True, False], ids=["worker", "inline"])
def metrics(tmp_path, request):
    with running_addon(tmp_path, llm_metrics_worker=request.param) as addon:
        assert isinstance(addon.metering, ChildProcess if request.param else InProcess)
        yield addon


@pytest.fixture
def inline(tmp_path):
    """Metering on the loop, where a test can reach into the engine."""
    with running_addon(tmp_path, llm_metrics_worker=False, llm_metrics_request_body_limit=4096) as addon:
        yield addon


def socket_flow(addon: LLMMetrics, path: str = "/v1/responses", **headers: str) -> http.HTTPFlow:
    """A WebSocket flow through its upgrade's hooks to websocket_start, as mitmproxy runs them."""
    flow = tflow.twebsocketflow()
    flow.websocket.messages = []
    flow.request.path = path
    flow.request.host = "127.0.0.1"
    flow.request.headers.update({"user-agent": "codex_exec/0.171.0 (Debian 12; x86_64)", **headers})
    addon.requestheaders(flow)
    addon.response(flow)
    addon.websocket_start(flow)
    return flow


def send(addon: LLMMetrics, flow: http.HTTPFlow, from_client: bool, content: bytes,
         opcode: Opcode = Opcode.TEXT) -> WebSocketMessage:
    message = WebSocketMessage(opcode, from_client, content)
    flow.websocket.messages.append(message)
    addon.websocket_message(flow)
    return message


def turn(addon: LLMMetrics, flow: http.HTTPFlow, rid: str, words: int, prompt: int, completion: int,
         **fields: Any) -> None:
    send(addon, flow, True, create(**fields))
    for data in answer(rid, words, prompt, completion):
        send(addon, flow, False, data)


def stored(addon: LLMMetrics) -> list[dict]:
    addon.done()
    return read_rows(Path(addon.location))


def test_each_response_on_a_responses_socket_is_a_row_and_messages_pass_unchanged(metrics):
    flow = socket_flow(metrics)
    sent = []
    for rid, prompt in (("r1", 1000), ("r2", 1100)):
        sent.append(send(metrics, flow, True, create(max_output_tokens=64)))
        for data in answer(rid, 3, prompt, 3):
            sent.append(send(metrics, flow, False, data))
    assert not any(m.dropped for m in sent)
    assert [m.content for m in sent[:2]] == [create(max_output_tokens=64), answer("r1", 3, 1000, 3)[0]]
    metrics.websocket_end(flow)
    rows = stored(metrics)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"]) for r in rows] == [(1000, 3, 0), (1100, 3, 0)]
    for row in rows:
        assert (row["success"], row["status_code"], row["operation"], row["model"], row["request_model"]) == (
            1, None, "responses", "gpt-5-codex-2026", "gpt-5-codex")
        assert (row["path"], row["origin"], row["is_streaming"], row["max_tokens"], row["message_count"]) == (
            "/v1/responses", "codex_exec", 1, 64, 2)
        assert (row["finish_reason"], row["finish_category"], row["usage_source"], row["chunk_count"]) == (
            "completed", "stop", "reported", 6)
        assert 0 <= row["time_to_first_byte_ms"] <= row["time_to_first_token_ms"] <= row["time_to_last_token_ms"] \
            <= row["response_time_ms"]
    assert rows[0]["timestamp"] < rows[1]["timestamp"]


def test_an_hours_long_socket_keeps_one_message_and_bounded_metering_state(inline):
    flow = socket_flow(inline)
    engine = inline.metering.engine
    for i in range(300):  # 300 turns, 2,700 messages
        turn(inline, flow, f"r{i}", 5, 100 + i, 5)
        assert len(flow.websocket.messages) == 1
    for _ in range(5 * MAX_OPEN_RESPONSES):  # requests never answered
        send(inline, flow, True, create())
    [socket] = engine.sockets.values()
    assert socket.session.open_count == MAX_OPEN_RESPONSES
    assert len(flow.websocket.messages) == 1 and len(inline.sockets) == 1
    inline.websocket_end(flow)
    assert engine.sockets == {} and inline.sockets == {}
    rows = stored(inline)
    assert len(rows) == 300 + MAX_OPEN_RESPONSES  # the unanswered ones still open at the end: failed rows
    assert read_drops(Path(inline.location)) == {"socket_overflow": 4 * MAX_OPEN_RESPONSES}


def test_a_socket_on_another_path_is_not_followed_nor_touched(metrics):
    flow = socket_flow(metrics, path="/socket.io/")
    for _ in range(3):
        send(metrics, flow, True, create())
    assert len(flow.websocket.messages) == 3  # not ours: mitmproxy's history stays as it is
    metrics.websocket_end(flow)
    assert stored(metrics) == []


def test_binary_messages_are_let_go_and_carry_no_call(inline):
    flow = socket_flow(inline)
    send(inline, flow, True, create(), Opcode.BINARY)
    send(inline, flow, True, b"\x00\x01", Opcode.BINARY)
    assert len(flow.websocket.messages) == 1
    inline.websocket_end(flow)
    assert stored(inline) == []


def test_a_warm_up_is_not_a_row_and_is_said_at_exit(inline, caplog):
    flow = socket_flow(inline)
    send(inline, flow, True, create(generate=False))
    send(inline, flow, False, msg({"type": "response.created", "response": {"id": "w", "status": "in_progress"}}))
    send(inline, flow, False, msg({"type": "response.completed", "response": {"id": "w", "status": "completed",
                                                                            "usage": {"input_tokens": 5, "output_tokens": 0}}}))
    turn(inline, flow, "r1", 1, 10, 1)
    inline.websocket_end(flow)
    with caplog.at_level("INFO"):
        rows = stored(inline)
    assert [r["prompt_tokens"] for r in rows] == [10]
    assert any("1 WebSocket warm-up request(s)" in r.message for r in caplog.records)


def test_error_event_and_a_close_mid_response_are_failed_rows(metrics):
    flow = socket_flow(metrics)
    send(metrics, flow, True, create())
    send(metrics, flow, False, msg({"type": "error", "status": 429,
                                    "error": {"code": "rate_limit_exceeded", "message": "Rate limit reached"}}))
    send(metrics, flow, True, create())
    for data in answer("r2", 2, 10, 2)[:-1]:
        send(metrics, flow, False, data)
    flow.websocket.close_code, flow.websocket.closed_by_client = 1006, False
    metrics.websocket_end(flow)
    refused, cut = stored(metrics)
    assert (refused["success"], refused["status_code"], refused["error_type"], refused["error_message"]) == (
        0, 429, "rate_limit_exceeded", "Rate limit reached")
    assert (cut["success"], cut["error_type"], cut["finish_category"]) == (0, "upstream_disconnected", "error")
    assert "closed by the server without a close frame (1006)" in cut["error_message"]
    assert cut["time_to_first_token_ms"] is not None and cut["prompt_tokens"] is None


def test_a_response_open_at_shutdown_is_recorded_as_cut_by_the_stop(metrics):
    flow = socket_flow(metrics)
    send(metrics, flow, True, create())
    [row] = stored(metrics)
    assert row["error_type"] == "proxy_shutdown"


def test_realtime_responses_are_rows_with_usage_and_the_model_from_query_and_session(metrics):
    flow = socket_flow(metrics, path="/v1/realtime?model=gpt-realtime&key=sk-secret", **{"x-llm-metrics-origin": "voice-app"})
    assert flow.request.headers.get("x-llm-metrics-origin") is None  # our tag never reaches the provider
    send(metrics, flow, False, msg({"type": "session.created", "session": {"model": "gpt-realtime-2025-08-28"}}))
    for i in range(2):
        send(metrics, flow, True, msg({"type": "response.create", "response": {"output_modalities": ["audio"]}}))
        send(metrics, flow, False, msg({"type": "response.created", "response": rt_response(f"a{i}", "in_progress")}))
        send(metrics, flow, False, msg({"type": "response.output_audio.delta", "response_id": f"a{i}", "delta": "AAAA"}))
        send(metrics, flow, False, msg({"type": "response.done",
                                        "response": rt_response(f"a{i}", "completed", realtime_usage(100 + i, 40, 60, 30))}))
    metrics.websocket_end(flow)
    rows = stored(metrics)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["total_tokens"]) for r in rows] == [(100, 40, 140), (101, 40, 141)]
    for row in rows:
        assert (row["operation"], row["model"], row["request_model"], row["path"], row["origin"]) == (
            "realtime", "gpt-realtime-2025-08-28", "gpt-realtime", "/v1/realtime", "voice-app")
        assert row["success"] == 1 and row["time_to_first_token_ms"] is not None


def test_client_message_past_the_body_limit_crosses_unread_and_the_row_says_so(inline):
    flow = socket_flow(inline)
    send(inline, flow, True, create(input=[{"text": "x" * 5000}]))
    for data in answer("r1", 2, 9000, 2):
        send(inline, flow, False, data)
    inline.websocket_end(flow)
    [row] = stored(inline)
    assert row["request_model"] is None and row["prompt_tokens"] == 9000
    assert "request message not read" in row["metering_note"] and "larger than 4096 bytes" in row["metering_note"]


def test_metering_behind_drops_and_counts_then_follows_the_socket_again(inline):
    flow = socket_flow(inline)
    send(inline, flow, True, create())  # a response open when the metering falls behind
    inline.metering.backlog = BACKLOG_LIMIT + 1
    inline.handover.flush()
    assert inline.handover.behind
    turn(inline, flow, "r-missed", 1, 5, 1)  # asked for while behind: not handed over, counted
    assert len(flow.websocket.messages) == 1
    inline.metering.backlog = 0
    inline.handover.flush()
    turn(inline, flow, "r-after", 2, 7, 2)
    inline.websocket_end(flow)
    rows = stored(inline)
    assert [r["prompt_tokens"] for r in rows] == [7]
    assert read_drops(Path(inline.location)) == {"metering_behind": 2}


def test_a_failing_hook_is_logged_and_the_message_still_passes(inline, monkeypatch, caplog):
    flow = socket_flow(inline)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(inline.handover, "put", broken)
    with caplog.at_level("WARNING"):
        message = send(inline, flow, True, create())
    assert not message.dropped and message.content == create()
    assert len(flow.websocket.messages) == 1
    assert any("metering failed in websocket_message" in r.message for r in caplog.records)


def test_a_socket_is_one_call_handed_over_whatever_it_carried(inline, tmp_path):
    """What the metering settles (stored, or counted) is counted in sockets, as the hooks hand them
    over: a metering process that dies counts what it had not settled from the same numbers."""
    flow = socket_flow(inline)
    for i in range(3):
        turn(inline, flow, f"r{i}", 1, 1, 1)
    metering = inline.metering
    assert metering.handed == 0
    assert wait_until(lambda: len(read_rows(tmp_path / "m.db")) == 3)  # a row per response
    inline.websocket_end(flow)
    assert metering.handed == 1 and len(read_rows(tmp_path / "m.db")) == 3
    assert wait_until(lambda: metering.unsettled == 0)
