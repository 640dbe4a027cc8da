"""A fake upstream for the WebSocket APIs, on 127.0.0.1: the OpenAI Responses API over a WebSocket
(Codex CLI's default transport) and over HTTP SSE (its fallback), and the OpenAI Realtime API.

The WebSocket side is `wsproto` (mitmproxy's own dependency) on the sockets of `LocalServer`'s
handler, so one server answers Codex's upgrades and its HTTP calls alike. A response's behaviour
is picked by `metadata.scenario` in the client's `response.create` (Realtime: in its `response`):

- `""` (none): `response.created`, text deltas (`first_token_delay` before the first), `response.completed`
- `"error"`: an `error` event alone, as the API answers a request it refuses (status 429)
- `"drop"`: `response.created` and two deltas, then the TCP connection is reset
- `"big"`: the usual answer, with 12 more deltas of 1 MiB each before it completes
- a warm-up (`"generate": false`, what Codex sends first): `response.created`, `response.completed`,
  no output

Token counts differ per response (`Turn.input_tokens`, `Turn.output_tokens`), so a test can tell
which response a row came from. `turns` lists every response as the upstream served it. With
`deflate` the upstream accepts a client's permessage-deflate (messages are compressed on the
wire); with `fragments` > 1 it sends each message in that many frames.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from tests.upstream import LocalServer, Served, UpstreamHandler

WORDS = ("Hello", " over", " a", " socket", ".")
TEXT = "".join(WORDS)
RESPONSES_MODEL = "gpt-5-codex-fake"
REALTIME_MODEL = "gpt-realtime-fake-2025-08-28"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's, for Sec-WebSocket-Accept


@dataclass
class Turn:
    """One response as the upstream served it (times on `time.perf_counter`)."""

    kind: str  # responses-ws, responses-sse, realtime
    scenario: str  # "", "error", "drop", "warmup"
    received_at: float
    input_tokens: int
    output_tokens: int
    first_content_at: float | None = None
    cached_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0


@dataclass
class WsUpstream(LocalServer):
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    deflate: bool = False
    fragments: int = 1
    served: list[Served] = field(default_factory=list)  # HTTP requests, upgrades included
    turns: list[Turn] = field(default_factory=list)
    client_frames: list[dict[str, Any]] = field(default_factory=list)  # every JSON text frame clients sent

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listen(_handler_for(self))

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def new_turn(self, kind: str, scenario: str, received_at: float) -> Turn:
        with self._lock:
            n = len(self.turns)
            turn = Turn(kind, scenario, received_at, input_tokens=1000 + 100 * n, output_tokens=len(WORDS) + n,
                        cached_tokens=10 * n)
            if kind == "realtime":
                turn.audio_input_tokens, turn.audio_output_tokens = 40 + n, 20 + n
            self.turns.append(turn)
        return turn

    def wait_turns(self, n: int, timeout: float = 10.0) -> list[Turn]:
        deadline = time.monotonic() + timeout
        while len(self.turns) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.turns)


def _handler_for(upstream: WsUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(UpstreamHandler):
        def do_GET(self) -> None:
            self._receive(upstream)
            path = self.path.split("?", 1)[0]
            if self.headers.get("upgrade", "").lower() != "websocket":
                self._send_whole(200, "application/json", b'{"object": "list", "data": []}')
                return
            if not path.endswith(("/responses", "/realtime")):
                self._send_whole(404, "application/json", b'{"error": "not found"}')
                return
            socket_ = _Socket(self, upstream.deflate, upstream.fragments)
            if path.endswith("/realtime"):
                _Realtime(upstream, socket_).run()
            else:
                _ResponsesSocket(upstream, socket_).run()

        def do_POST(self) -> None:
            served = self._receive(upstream)
            body = served.body or {}
            if not self.path.split("?", 1)[0].endswith("/responses"):
                self._send_whole(404, "application/json", b'{"error": "not found"}')
                return
            turn = upstream.new_turn("responses-sse", _scenario(body), served.received_at)
            self._start_chunked(200, "text/event-stream; charset=utf-8")
            for delay, event in _responses_events(body, turn, upstream):
                time.sleep(delay)
                if event["type"].endswith(".delta"):  # stamped as it starts on its way
                    turn.first_content_at = turn.first_content_at or time.perf_counter()
                self._chunk(b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(event).encode()))
            self._end_chunked()

    return Handler


class _Socket:
    """The server side of one WebSocket on a handler's connection: handshake, frames, close."""

    def __init__(self, handler: UpstreamHandler, deflate: bool, fragments: int) -> None:
        self._handler = handler
        self._fragments = fragments
        key = handler.headers.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        handler.send_response(101)
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept)
        extensions = []
        offer = handler.headers.get("sec-websocket-extensions", "")
        if deflate and offer.startswith(PerMessageDeflate.name):
            extension = PerMessageDeflate()
            accepted = extension.accept(offer.split(",", 1)[0])
            if accepted:
                handler.send_header("Sec-WebSocket-Extensions", f"{PerMessageDeflate.name}; {accepted}"
                                    if isinstance(accepted, str) else PerMessageDeflate.name)
                extensions.append(extension)
        handler.end_headers()
        handler.wfile.flush()
        self._ws = Connection(ConnectionType.SERVER, extensions)
        self._text: list[str] = []
        self.closed = False

    def frames(self) -> Iterator[tuple[float, str]]:
        """Each text message the client sends, with when it arrived, until the socket closes."""
        while not self.closed:
            data = self._handler.rfile.read1(65536)
            t = time.perf_counter()
            if not data:
                self.closed = True
                return
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text, self._text = "".join(self._text), []
                        yield t, text
                elif isinstance(event, Ping):
                    self._write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._write(self._ws.send(event.response()))
                    self.closed = True
                    return

    def send(self, obj: dict[str, Any]) -> None:
        text = json.dumps(obj)
        n, size = self._fragments, -(-len(text) // self._fragments)
        data = b"".join(self._ws.send(TextMessage(data=text[i * size : (i + 1) * size], message_finished=i == n - 1))
                        for i in range(n))
        self._write(data)

    def reset(self) -> None:
        """Ends the TCP connection with a reset: no close frame, an abnormal end."""
        conn = self._handler.connection
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        self.closed = True
        self._handler.close_connection = True

    def _write(self, data: bytes) -> None:
        self._handler.wfile.write(data)
        self._handler.wfile.flush()


def _scenario(obj: dict[str, Any]) -> str:
    if obj.get("generate") is False:
        return "warmup"
    metadata = obj.get("metadata")
    return str(metadata.get("scenario", "")) if isinstance(metadata, dict) else ""


def _usage(turn: Turn) -> dict[str, Any]:
    output = 0 if turn.scenario == "warmup" else turn.output_tokens
    return {"input_tokens": turn.input_tokens, "input_tokens_details": {"cached_tokens": turn.cached_tokens},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": turn.input_tokens + output}


def _response(n: int, status: str, turn: Turn | None, text: str | None) -> dict[str, Any]:
    output = [{"id": f"msg_{n}", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "annotations": [], "text": text}]}] if text else []
    return {"id": f"resp_{n}", "object": "response", "created_at": int(time.time()), "status": status,
            "model": RESPONSES_MODEL, "output": output, "usage": _usage(turn) if turn else None, "error": None,
            "incomplete_details": None, "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


def _responses_events(body: dict[str, Any], turn: Turn, upstream: WsUpstream) -> Iterator[tuple[float, dict[str, Any]]]:
    """(delay before it, event) of one Responses API response, as SSE or WebSocket frames carry them."""
    n = len(upstream.turns)
    if turn.scenario == "error":
        yield 0.0, {"type": "error", "status": 429,
                    "error": {"type": "tokens", "code": "rate_limit_exceeded", "message": "Rate limit reached for tokens"}}
        return
    yield 0.0, {"type": "response.created", "response": _response(n, "in_progress", None, None)}
    if turn.scenario == "warmup":
        yield 0.0, {"type": "response.completed", "response": _response(n, "completed", turn, None)}
        return
    yield 0.0, {"type": "response.in_progress", "response": _response(n, "in_progress", None, None)}
    item = {"id": f"msg_{n}", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    yield 0.0, {"type": "response.output_item.added", "output_index": 0, "item": item}
    yield 0.0, {"type": "response.content_part.added", "item_id": f"msg_{n}", "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "annotations": [], "text": ""}}
    for i, word in enumerate(WORDS):
        if turn.scenario == "drop" and i == 2:
            yield 0.0, {"type": "drop"}
            return
        yield (upstream.first_token_delay if i == 0 else upstream.chunk_delay), {
            "type": "response.output_text.delta", "item_id": f"msg_{n}", "output_index": 0, "content_index": 0,
            "delta": word}
    if turn.scenario == "big":
        for _ in range(12):
            yield 0.0, {"type": "response.output_text.delta", "item_id": f"msg_{n}", "output_index": 0,
                        "content_index": 0, "delta": "x" * (1 << 20)}
    yield 0.0, {"type": "response.output_text.done", "item_id": f"msg_{n}", "output_index": 0, "content_index": 0,
                "text": TEXT}
    done = {**item, "status": "completed", "content": [{"type": "output_text", "annotations": [], "text": TEXT}]}
    yield 0.0, {"type": "response.output_item.done", "output_index": 0, "item": done}
    yield 0.0, {"type": "response.completed", "response": _response(n, "completed", turn, TEXT)}


class _ResponsesSocket:
    def __init__(self, upstream: WsUpstream, socket_: _Socket) -> None:
        self.upstream, self.socket = upstream, socket_

    def run(self) -> None:
        for t, text in self.socket.frames():
            obj = json.loads(text)
            self.upstream.client_frames.append(obj)
            if obj.get("type") != "response.create":
                continue
            turn = self.upstream.new_turn("responses-ws", _scenario(obj), t)
            for delay, event in _responses_events(obj, turn, self.upstream):
                time.sleep(delay)
                if event["type"] == "drop":
                    self.socket.reset()
                    return
                if event["type"].endswith(".delta"):  # stamped as it starts on its way
                    turn.first_content_at = turn.first_content_at or time.perf_counter()
                self.socket.send(event)


class _Realtime:
    """The Realtime API's documented events (GA names): a session, and a response per `response.create`."""

    def __init__(self, upstream: WsUpstream, socket_: _Socket) -> None:
        self.upstream, self.socket = upstream, socket_

    def run(self) -> None:
        self.socket.send({"type": "session.created", "event_id": "ev_0",
                          "session": {"id": "sess_1", "object": "realtime.session", "type": "realtime",
                                      "model": REALTIME_MODEL, "output_modalities": ["audio"]}})
        for t, text in self.socket.frames():
            obj = json.loads(text)
            self.upstream.client_frames.append(obj)
            kind = obj.get("type")
            if kind == "session.update":
                self.socket.send({"type": "session.updated", "event_id": "ev_s",
                                  "session": {**obj.get("session", {}), "model": REALTIME_MODEL}})
            elif kind == "response.create":
                request = obj.get("response") if isinstance(obj.get("response"), dict) else {}
                turn = self.upstream.new_turn("realtime", _scenario(request), t)
                self._respond(turn)

    def _respond(self, turn: Turn) -> None:
        n = len(self.upstream.turns)
        rid = f"resp_rt_{n}"
        send = self.socket.send
        base = {"id": rid, "object": "realtime.response", "status": "in_progress", "status_details": None,
                "output": [], "conversation_id": "conv_1", "output_modalities": ["audio"], "usage": None}
        send({"type": "response.created", "event_id": f"ev_{n}_0", "response": base})
        send({"type": "response.output_item.added", "event_id": f"ev_{n}_1", "response_id": rid, "output_index": 0,
              "item": {"id": f"item_{n}", "type": "message", "role": "assistant", "status": "in_progress", "content": []}})
        for i, word in enumerate(WORDS):
            time.sleep(self.upstream.first_token_delay if i == 0 else self.upstream.chunk_delay)
            turn.first_content_at = turn.first_content_at or time.perf_counter()
            send({"type": "response.output_audio.delta", "event_id": f"ev_{n}_a{i}", "response_id": rid,
                  "item_id": f"item_{n}", "output_index": 0, "content_index": 0,
                  "delta": base64.b64encode(b"\x00\x01" * 480).decode()})
            send({"type": "response.output_audio_transcript.delta", "event_id": f"ev_{n}_t{i}", "response_id": rid,
                  "item_id": f"item_{n}", "output_index": 0, "content_index": 0, "delta": word})
        usage = {"total_tokens": turn.input_tokens + turn.output_tokens, "input_tokens": turn.input_tokens,
                 "output_tokens": turn.output_tokens,
                 "input_token_details": {"text_tokens": turn.input_tokens - turn.audio_input_tokens,
                                         "audio_tokens": turn.audio_input_tokens, "image_tokens": 0,
                                         "cached_tokens": turn.cached_tokens,
                                         "cached_tokens_details": {"text_tokens": turn.cached_tokens, "audio_tokens": 0}},
                 "output_token_details": {"text_tokens": turn.output_tokens - turn.audio_output_tokens,
                                          "audio_tokens": turn.audio_output_tokens}}
        output = [{"id": f"item_{n}", "type": "message", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_audio", "transcript": TEXT}]}]
        send({"type": "response.done", "event_id": f"ev_{n}_d",
              "response": {**base, "status": "completed", "output": output, "usage": usage}})
