"""Calls carried on a WebSocket: one socket, many responses, each of them a call.

Two APIs: the OpenAI Responses API in WebSocket mode (Codex CLI's default transport: the client
sends `{"type": "response.create", …}` text messages, the server answers with the events its SSE
stream carries, one response after another), and the OpenAI Realtime API (`response.create` from
the client, `response.created` … `response.done` from the server, responses told apart by their
`response_id`). `open_session` picks the API by the socket's path.

Pure: no mitmproxy and no clock. A session is fed each text message whole, in the order it
passed the proxy, with the time it did (`client`, `server`), and the socket's end (`close`); each
returns the responses that ended (`Turn`: its request's fields, the `ResponseFacts` read from its
events, its times). A message too large to read comes as None with its size. What a session
keeps is bounded: at most MAX_OPEN_RESPONSES responses followed at once (an older one is then
given up, `Turn.dropped`), a few small values each; no message is kept.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import unknown_request_fields
from .base import ResponseFacts, WireFormat, non_empty_str
from .openai_realtime import DONE as REALTIME_DONE, OpenAIRealtime
from .openai_responses import OpenAIResponses

RESPONSES_SUFFIX, REALTIME_SUFFIX = "/responses", "/realtime"
# Paths whose WebSockets are followed (the query stripped): the hooks hand over no other socket.
SOCKET_SUFFIXES = (RESPONSES_SUFFIX, REALTIME_SUFFIX)
MAX_OPEN_RESPONSES = 64
RESPONSES = OpenAIResponses()
REALTIME = OpenAIRealtime()


@dataclass(slots=True)
class Turn:
    """One response on a socket: asked for at `t_start` (the client's `response.create`, or the
    server's `response.created` for one it started itself), ended at `t_end`."""

    t_start: float
    request: dict[str, Any]  # request_model, is_streaming, max_tokens, … (`WireFormat.request_fields`)
    facts: ResponseFacts = field(default_factory=ResponseFacts)
    warmup: bool = False  # a Responses `generate: false`: the request prepared, nothing generated
    request_read: bool = True  # False: its message was too large to read (`notes` says so)
    response_id: str | None = None
    client_event_id: str | None = None  # the Realtime client's `event_id` of its response.create
    t_first_event: float | None = None  # the first server message about it
    t_first_token: float | None = None
    t_last_token: float | None = None
    t_last_event: float | None = None
    t_end: float | None = None
    t_error: float | None = None  # an `error` event about it came then (its terminal event may follow)
    status: int | None = None  # the HTTP status an `error` event names
    error: tuple[str, str] | None = None  # (error_type, message) of an end the events did not say
    dropped: bool = False  # given up unended (too many open at once): to be counted, not recorded
    notes: list[str] = field(default_factory=list)

    def seen(self, t: float) -> None:
        if self.t_first_event is None:
            self.t_first_event = t
        self.t_last_event = t

    def token(self, t: float) -> None:
        if self.t_first_token is None:
            self.t_first_token = t
        self.t_last_token = t

    @property
    def may_have_ended(self) -> bool:
        """It failed (an `error` event), or a message about it was too large to read: the client
        may move on without its terminal event, and so may the socket end."""
        return self.t_error is not None or self.facts.oversized_events > 0


def open_session(path: str, query_model: str | None = None,
                 limit_note: str = "the request body limit") -> ResponsesSession | RealtimeSession | None:
    """The session for a socket opened on `path` (query stripped); None: no API this module knows.
    `limit_note` names the limit past which a client's message comes unread."""
    if path.endswith(REALTIME_SUFFIX):
        return RealtimeSession(path, query_model, limit_note)
    if path.endswith(RESPONSES_SUFFIX):
        return ResponsesSession(path, limit_note)
    return None


def outcome(turn: Turn) -> tuple[str, str] | None:
    """What a turn that ended by its own events says beyond them: events that were not JSON break it."""
    facts = turn.facts
    if turn.error is None and facts.error_type is None and facts.malformed_events:
        return ("malformed_stream", f"{facts.malformed_events} message(s) were not valid JSON")
    return turn.error


class _Session:
    fmt: WireFormat

    def __init__(self, path: str, limit_note: str) -> None:
        self.path = path
        self._limit_note = limit_note

    def _read_request(self, data: bytes | None, size: int) -> tuple[dict[str, Any] | None, list[str]]:
        """A client message as a JSON object; None (with a note) when it was not read or is not one."""
        if data is None:
            return None, [f"request message not read: {size} bytes, larger than {self._limit_note}"]
        try:
            obj = _loads(data)
        except (ValueError, RecursionError):
            return None, []
        return (obj, []) if isinstance(obj, dict) else (None, [])

    def _unknown_request(self) -> dict[str, Any]:
        return unknown_request_fields(self.fmt, self.path)


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogatepass"))


OVERSIZED, MALFORMED, OTHER = "oversized", "malformed", "other"


def _event(data: bytes | None) -> dict[str, Any] | str:
    """A server message as a JSON object, or what it is instead: OVERSIZED, MALFORMED, OTHER."""
    if data is None:
        return OVERSIZED
    try:
        obj = _loads(data)
    except (ValueError, RecursionError):
        return MALFORMED
    return obj if isinstance(obj, dict) else OTHER


def _count(turn: Turn, t: float, obj: dict[str, Any] | str) -> None:
    """A server message about `turn`, counted as one of its events."""
    turn.seen(t)
    facts = turn.facts
    facts.events += 1
    if obj == OVERSIZED:
        facts.oversized_events += 1
    elif obj == MALFORMED:
        facts.malformed_events += 1


def _response_id(obj: dict[str, Any]) -> str | None:
    """The response an event is about: named by `response_id`, or the `response` it carries."""
    response = obj.get("response")
    return non_empty_str(obj.get("response_id")) or (
        non_empty_str(response.get("id")) if isinstance(response, dict) else None)


class ResponsesSession(_Session):
    """The Responses API over a WebSocket: responses follow one another, each answering the oldest
    `response.create` not answered yet. An `error` event before any `response.created` ends the
    request (the API refuses it so); after one, the response's terminal event (`response.failed`)
    still follows, as on its SSE stream."""

    fmt = RESPONSES

    def __init__(self, path: str, limit_note: str = "the request body limit") -> None:
        super().__init__(path, limit_note)
        self._pending: deque[Turn] = deque()

    @property
    def open_count(self) -> int:
        return len(self._pending)

    def client(self, t: float, data: bytes | None, size: int) -> list[Turn]:
        obj, notes = self._read_request(data, size)
        if obj is None and not notes:
            return []  # not a JSON object: no request the API would answer
        if obj is not None and obj.get("type") != "response.create":
            return []
        ended = []
        if self._pending and self._pending[0].may_have_ended:
            # The client asks again: it had its answer (a failure, or a message too large to read).
            ended.append(self._end(self._pending.popleft(), None))
        if obj is not None:
            turn = Turn(t, self.fmt.request_fields(self.path, obj), warmup=obj.get("generate") is False)
        else:
            turn = Turn(t, self._unknown_request(), request_read=False, notes=notes)
        self._pending.append(turn)
        if len(self._pending) > MAX_OPEN_RESPONSES:
            given_up = self._pending.popleft()
            given_up.dropped = True
            ended.append(given_up)
        return ended

    def server(self, t: float, data: bytes | None, size: int) -> list[Turn]:
        if not self._pending:
            return []  # about no request seen (the socket was followed from its middle)
        turn = self._pending[0]
        obj = _event(data)
        _count(turn, t, obj)
        if not isinstance(obj, dict):
            return []
        if turn.response_id is None:
            turn.response_id = _response_id(obj)
        kind = obj.get("type")
        if self.fmt.on_event(turn.facts, kind if isinstance(kind, str) else None, obj):
            turn.token(t)
        if kind == "error":
            turn.t_error = turn.t_error or t
            if isinstance(obj.get("status"), int) and turn.status is None:
                turn.status = obj["status"]
            if turn.response_id is None:  # refused before it began: nothing else comes for it
                return [self._end(self._pending.popleft(), t)]
        if turn.facts.terminated:
            return [self._end(self._pending.popleft(), t)]
        return []

    def close(self, t: float, error: tuple[str, str]) -> list[Turn]:
        """The socket ended: every response still open ends with `error`, unless it may have
        ended already (`Turn.may_have_ended`)."""
        ended = [self._end(turn, None if turn.may_have_ended else t, error) for turn in self._pending]
        self._pending.clear()
        return ended

    def _end(self, turn: Turn, t: float | None, error: tuple[str, str] | None = None) -> Turn:
        """`t` None: it ended with its error event, else its last message (how, is not known)."""
        turn.t_end = t if t is not None else turn.t_error or turn.t_last_event or turn.t_start
        if error is not None and t is not None and turn.facts.error_type is None:
            turn.error = error
        if not turn.request_read:
            # Its request was not read: a response with no output at all answered a warm-up.
            facts = turn.facts
            turn.warmup = (facts.terminated and not facts.content_events and not facts.tool_calls
                           and not facts.completion_tokens and facts.error_type is None)
        return turn


class RealtimeSession(_Session):
    """The Realtime API: responses may overlap, and each event names its `response_id`. A client
    `response.create` is answered by the next `response.created`; one the server starts itself
    (voice activity detection) starts at its `response.created`. An `error` event naming the
    client event of a `response.create` ends it unanswered (one naming none is not told apart from
    an error about any other client event: its request then pairs with the next response)."""

    fmt = REALTIME

    def __init__(self, path: str, query_model: str | None = None,
                 limit_note: str = "the request body limit") -> None:
        super().__init__(path, limit_note)
        self.request_model = query_model  # the socket's `?model=`, or the client's session.update
        self.model: str | None = None  # the session's, as the server says it
        self._asked: deque[Turn] = deque()  # response.create not answered by a response.created yet
        self._open: dict[str, Turn] = {}  # by response_id, oldest first

    @property
    def open_count(self) -> int:
        return len(self._asked) + len(self._open)

    def client(self, t: float, data: bytes | None, size: int) -> list[Turn]:
        obj, _ = self._read_request(data, size)
        kind = obj.get("type") if obj is not None else None
        if obj is None or kind not in ("session.update", "response.create"):
            return []  # audio appended, items created, a response cancelled; or too large to read
        if kind == "session.update":
            session = obj.get("session")
            if isinstance(session, dict) and non_empty_str(session.get("model")):
                self.request_model = session["model"]
            return []
        request = self.fmt.request_fields(self.path, obj)
        turn = Turn(t, request, client_event_id=non_empty_str(obj.get("event_id")))
        self._asked.append(turn)
        return self._bound()

    def server(self, t: float, data: bytes | None, size: int) -> list[Turn]:
        obj = _event(data)
        if not isinstance(obj, dict):
            return []  # not read (an audio delta, most likely) or not JSON: no saying which response
        kind = obj.get("type")
        if kind in ("session.created", "session.updated"):
            session = obj.get("session")
            if isinstance(session, dict) and non_empty_str(session.get("model")):
                self.model = session["model"]
            return []
        if kind == "error":
            return self._error(t, obj)
        response_id = _response_id(obj)
        if response_id is None:
            return []
        if kind == "response.created" and response_id not in self._open:
            turn = self._asked.popleft() if self._asked else Turn(t, self._server_request())
            turn.response_id = response_id
            self._open[response_id] = turn
        found = self._open.get(response_id)
        if found is None:
            return []  # a response begun before the socket was followed
        _count(found, t, obj)
        if self.fmt.on_event(found.facts, kind if isinstance(kind, str) else None, obj):
            found.token(t)
        if kind == REALTIME_DONE:
            return [self._end(self._open.pop(response_id), t)]
        return self._bound()

    def close(self, t: float, error: tuple[str, str]) -> list[Turn]:
        ended = [self._end(turn, t, error) for turn in (*self._asked, *self._open.values())]
        self._asked.clear()
        self._open.clear()
        return ended

    def _error(self, t: float, obj: dict[str, Any]) -> list[Turn]:
        """An error about a client's response.create (named by its event_id) ends that request."""
        err = obj.get("error")
        event_id = non_empty_str(err.get("event_id")) if isinstance(err, dict) else None
        for turn in self._asked:
            if event_id is not None and turn.client_event_id == event_id:
                self._asked.remove(turn)
                turn.seen(t)
                self.fmt.on_event(turn.facts, "error", obj)
                return [self._end(turn, t)]
        return []

    def _server_request(self) -> dict[str, Any]:
        """The request of a response the server started: only the session tells its model."""
        return {**self._unknown_request(), "is_streaming": True}

    def _end(self, turn: Turn, t: float, error: tuple[str, str] | None = None) -> Turn:
        turn.t_end = t
        if error is not None and turn.facts.error_type is None:
            turn.error = error
        turn.facts.set_model(self.model)
        if turn.request.get("request_model") is None:
            turn.request["request_model"] = self.request_model
        return turn

    def _bound(self) -> list[Turn]:
        given_up = []
        while self.open_count > MAX_OPEN_RESPONSES:
            if self._asked:
                turn = self._asked.popleft()
            else:
                turn = self._open.pop(next(iter(self._open)))
            turn.dropped = True
            given_up.append(turn)
        return given_up
