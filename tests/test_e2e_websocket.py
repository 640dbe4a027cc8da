"""End to end over WebSockets: a client -> a real mitmdump (reverse mode) with the addon -> the fake
upstream of tests/ws_upstream.py. The Responses API's WebSocket mode (what Codex CLI speaks),
driven by the `websockets` client; the Realtime API, driven by the real `openai` SDK."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import read_drops, wait_until
from tests.ws_upstream import REALTIME_MODEL, RESPONSES_MODEL, WORDS, Turn, WsUpstream

pytestmark = pytest.mark.e2e

DELAY_S = 0.25
API_KEY = "sk-test-DO-NOT-STORE-77ab"
PROBE = Path(__file__).with_name("ws_probe_addon.py")


@pytest.fixture(params=[False, True], ids=["plain", "deflate-fragmented"])
def ws_upstream(request):
    """`deflate-fragmented`: messages compressed on the wire and each sent in three frames, which
    mitmproxy inflates and joins before its hooks see them."""
    on = request.param
    with WsUpstream(first_token_delay=DELAY_S, deflate=on, fragments=3 if on else 1) as server:
        yield server


@pytest.fixture
def reverse_proxy(start_proxy, ws_upstream):
    return start_proxy("--mode", f"reverse:{ws_upstream.url}", "-s", str(PROBE))


def responses_socket(proxy, path: str = "/v1/responses") -> ClientConnection:
    return connect(f"ws://127.0.0.1:{proxy.port}{path}", proxy=None, open_timeout=10, compression="deflate", max_size=None,
                   additional_headers={"Authorization": f"Bearer {API_KEY}",
                                       "OpenAI-Beta": "responses_websockets=2026-02-06",
                                       "User-Agent": "codex_exec/0.171.0 (Debian 12; x86_64)"})


def ask(ws: ClientConnection, **fields: Any) -> list[dict[str, Any]]:
    """One response.create, and the events that answer it, up to the terminal one (or an error)."""
    ws.send(json.dumps({"type": "response.create", "model": "gpt-5-codex", "stream": True,
                        "input": [{"role": "user", "content": "hi"}], **fields}))
    events = []
    while True:
        event = json.loads(ws.recv(timeout=10))
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "response.incomplete", "error"):
            return events


def assert_timed_like(row: dict[str, Any], turn: Turn) -> None:
    """The proxy sees the request before the upstream does and the first token after it was sent:
    its time to first token is at least the upstream's own, and its delay."""
    assert turn.first_content_at is not None
    truth_ms = (turn.first_content_at - turn.received_at) * 1000
    assert row["time_to_first_token_ms"] >= max(DELAY_S * 1000, truth_ms - 1)
    assert row["time_to_first_token_ms"] < truth_ms + 1000
    assert row["time_to_first_byte_ms"] <= row["time_to_first_token_ms"] <= row["response_time_ms"]


def test_two_turns_on_one_socket_are_two_rows_with_the_upstreams_counts_and_time_to_first_token(
        reverse_proxy, ws_upstream):
    with responses_socket(reverse_proxy) as ws:
        assert ws.response is not None
        compressed = ws.response.headers.get("sec-websocket-extensions", "").startswith("permessage-deflate")
        assert compressed == ws_upstream.deflate
        first = ask(ws, max_output_tokens=300)
        second = ask(ws, previous_response_id=first[-1]["response"]["id"])
    assert "".join(e.get("delta", "") for e in second) == "".join(WORDS)  # the client got every event whole
    rows = reverse_proxy.rows(2)
    turns = ws_upstream.wait_turns(2)
    assert len(rows) == 2
    for row, turn in zip(rows, turns):
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
            turn.input_tokens, turn.output_tokens, turn.cached_tokens)
        assert (row["success"], row["operation"], row["model"], row["request_model"], row["path"]) == (
            1, "responses", RESPONSES_MODEL, "gpt-5-codex", "/v1/responses")
        assert (row["finish_reason"], row["origin"], row["is_streaming"], row["usage_source"]) == (
            "completed", "codex_exec", 1, "reported")
        assert_timed_like(row, turn)
    assert rows[0]["max_tokens"] == 300
    log = reverse_proxy.log()
    assert API_KEY not in log and API_KEY.encode() not in reverse_proxy.db_path.read_bytes()


def test_a_warm_up_is_not_recorded_as_a_call_and_is_counted_at_exit(reverse_proxy, ws_upstream):
    with responses_socket(reverse_proxy) as ws:
        warm = ask(ws, generate=False)
        ask(ws, previous_response_id=warm[-1]["response"]["id"])
    [row] = reverse_proxy.rows(1)
    [warm_turn, turn] = ws_upstream.wait_turns(2)
    assert warm_turn.scenario == "warmup" and row["prompt_tokens"] == turn.input_tokens
    reverse_proxy.stop()
    assert len(reverse_proxy.rows(1)) == 1
    assert "1 WebSocket warm-up request(s) (generate: false, nothing generated) not recorded" in reverse_proxy.log()


def test_an_error_event_is_an_error_row_and_the_socket_goes_on(reverse_proxy, ws_upstream):
    with responses_socket(reverse_proxy) as ws:
        refused = ask(ws, metadata={"scenario": "error"})
        ask(ws)
    assert refused[-1]["type"] == "error"
    error, ok = reverse_proxy.rows(2)
    assert (error["success"], error["status_code"], error["error_type"], error["error_message"]) == (
        0, 429, "rate_limit_exceeded", "Rate limit reached for tokens")
    assert error["time_to_first_token_ms"] is None and error["prompt_tokens"] is None
    assert ok["success"] == 1 and ok["prompt_tokens"] == ws_upstream.turns[1].input_tokens


def test_an_abrupt_close_mid_response_is_a_failed_row(reverse_proxy, ws_upstream):
    with responses_socket(reverse_proxy) as ws:
        ask(ws)
        with pytest.raises(ConnectionClosed):
            ask(ws, metadata={"scenario": "drop"})
    done, cut = reverse_proxy.rows(2)
    assert done["success"] == 1
    assert (cut["success"], cut["error_type"], cut["finish_category"], cut["prompt_tokens"]) == (
        0, "upstream_disconnected", "error", None)
    assert "without a close frame (1006)" in cut["error_message"]
    assert cut["time_to_first_token_ms"] >= DELAY_S * 1000  # two deltas had come through


def test_a_long_socket_keeps_one_message_in_mitmproxy(reverse_proxy, ws_upstream):
    ws_upstream.first_token_delay = 0.0
    with responses_socket(reverse_proxy) as ws:
        for _ in range(40):  # 40 turns of 13 messages
            ask(ws)
    assert len(reverse_proxy.rows(40)) == 40
    reverse_proxy.stop()
    [line] = re.findall(r"ws-probe: .*", reverse_proxy.log())
    assert line == "ws-probe: 520 messages seen, at most 1 kept"


def test_realtime_session_with_two_responses_gives_two_rows_with_their_usage(reverse_proxy, ws_upstream):
    client = openai.OpenAI(api_key=API_KEY, base_url=f"http://127.0.0.1:{reverse_proxy.port}/v1",
                           websocket_base_url=f"ws://127.0.0.1:{reverse_proxy.port}/v1", max_retries=0)
    with client.realtime.connect(model="gpt-realtime", websocket_connection_options={"proxy": None}) as conn:
        conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
        for _ in range(2):
            conn.response.create()
            while conn.recv().type != "response.done":
                pass
    rows = reverse_proxy.rows(2)
    turns = ws_upstream.wait_turns(2)
    assert len(rows) == 2
    for row, turn in zip(rows, turns):
        assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"], row["cached_tokens"]) == (
            turn.input_tokens, turn.output_tokens, turn.input_tokens + turn.output_tokens, turn.cached_tokens)
        assert (row["success"], row["operation"], row["model"], row["request_model"], row["path"]) == (
            1, "realtime", REALTIME_MODEL, "gpt-realtime", "/v1/realtime")
        assert (row["finish_reason"], row["finish_category"], row["usage_source"]) == ("completed", "stop", "reported")
        assert row["origin"] == "OpenAI/Python"  # the SDK names itself on the upgrade too
        assert_timed_like(row, turn)


def test_a_stopped_metering_process_never_holds_a_socket_and_the_responses_it_misses_are_counted(
        start_proxy, ws_upstream):
    """SIGSTOP: past the hand-over's memory bound (8 MiB) the socket is no longer handed over, its
    messages pass on at once, each response it carries meanwhile is counted; once the metering
    has caught up, the same socket is followed again."""
    ws_upstream.first_token_delay = 0.0
    proxy = start_proxy("--mode", f"reverse:{ws_upstream.url}", "--set", "llm_metrics_log_calls=false")
    worker = proxy.metering_pid()
    asked, slowest = 0, 0.0
    with responses_socket(proxy) as ws:
        ask(ws)
        asked += 1
        assert len(proxy.rows(1)) == 1
        os.kill(worker, signal.SIGSTOP)
        try:
            for scenario in ("big", "big", "", ""):  # 24 MiB of deltas while nothing takes them
                started = time.perf_counter()
                events = ask(ws, metadata={"scenario": scenario})
                slowest = max(slowest, time.perf_counter() - started)
                asked += 1
                assert events[-1]["type"] == "response.completed"
        finally:
            os.kill(worker, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while len(proxy.rows(0)) < 2:  # until the socket is followed again
            assert time.monotonic() < deadline, "the socket was never followed again"
            ask(ws)
            asked += 1
    assert slowest < 2.0
    assert proxy.stop() == 0
    rows, drops = proxy.rows(0), read_drops(proxy.db_path)
    assert set(drops) == {"metering_behind"} and len(rows) >= 2
    assert len(rows) + drops["metering_behind"] == asked
    assert all(r["success"] for r in rows)


def test_a_killed_metering_process_loses_at_most_the_socket_it_was_following_which_is_then_followed_again(
        start_proxy, ws_upstream):
    ws_upstream.first_token_delay = 0.0
    proxy = start_proxy("--mode", f"reverse:{ws_upstream.url}", "--set", "llm_metrics_log_calls=false")
    with responses_socket(proxy) as ws:
        ask(ws)
        assert len(proxy.rows(1)) == 1
        first = proxy.metering_pid()
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: proxy.metering_pid() not in (None, first))
        for _ in range(2):
            ask(ws)
    assert proxy.stop() == 0
    rows, drops = proxy.rows(3), read_drops(proxy.db_path)
    assert len(rows) == 3 and all(r["success"] for r in rows)
    assert [r["prompt_tokens"] for r in rows] == [turn.input_tokens for turn in ws_upstream.turns]
    # The socket open in it is counted (its response had ended: an over-count of one), and so may be the
    # first call, stored, when the process died before its word of that reached the proxy.
    assert set(drops) == {"metering_lost"} and 1 <= drops["metering_lost"] <= 2
