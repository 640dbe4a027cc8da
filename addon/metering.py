"""Turns response bytes into `ResponseFacts`: decompress, frame, parse JSON, hand to a format.

Pure: no mitmproxy and no clock. `StreamMeter.feed` says whether a piece completed an event that
carried generated content, so the caller (the addon) can stamp time to first and last token.
"""

from __future__ import annotations

import json
from typing import Any

from .formats import ARRAY_STREAM_SUFFIXES, ResponseFacts, WireFormat
from .formats.errors import describe_body, error_from_body
from .wire.encoding import incremental_decoder
from .wire.eventstream import EventStreamDecoder, Frame
from .wire.json_array import JSONArrayDecoder
from .wire.ndjson import NDJSONDecoder
from .wire.sse import SSEDecoder

SSE_TYPES = ("text/event-stream",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
EVENTSTREAM_TYPES = ("application/vnd.amazon.eventstream",)
JSON_TYPES = ("application/json", "")

SSE, NDJSON, JSON_ARRAY, EVENTSTREAM = "sse", "ndjson", "json-array", "eventstream"
Framer = SSEDecoder | NDJSONDecoder | JSONArrayDecoder | EventStreamDecoder
_FRAMERS: dict[str, type[Framer]] = {
    SSE: SSEDecoder, NDJSON: NDJSONDecoder, JSON_ARRAY: JSONArrayDecoder, EVENTSTREAM: EventStreamDecoder
}


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_stream_type(content_type: str | None) -> bool:
    mt = media_type(content_type)
    return mt in SSE_TYPES or mt in NDJSON_TYPES or mt in EVENTSTREAM_TYPES


def passes_as_stream(path: str, content_type: str | None, status: int) -> bool:
    """Whether the hooks pass a response to a possible LLM call on as it arrives, before the
    request is known to be one: every event stream, and a JSON array where a Gemini stream
    (`:streamGenerateContent` without alt=sse) may come as one. `stream_framing` then decides
    how it is metered; it never asks for a stream where this said no."""
    mt = media_type(content_type)
    if mt in SSE_TYPES or mt in NDJSON_TYPES or mt in EVENTSTREAM_TYPES:
        return True
    return status < 400 and mt in JSON_TYPES and path.endswith(ARRAY_STREAM_SUFFIXES)


def stream_framing(fmt: WireFormat, content_type: str | None, *, status: int, requested_stream: bool) -> str | None:
    """How a response is to be metered as it arrives; None: read the whole body at the end.

    Event streams and NDJSON say so in their content type. A streamed JSON array (Gemini
    without alt=sse) arrives as plain `application/json`: only the request tells it apart from
    a whole body, and an error status means a plain error body instead.
    """
    mt = media_type(content_type)
    if mt in SSE_TYPES:
        return SSE
    if mt in NDJSON_TYPES:
        return NDJSON
    if mt in EVENTSTREAM_TYPES:
        return EVENTSTREAM
    if fmt.array_streams and requested_stream and status < 400 and mt in JSON_TYPES:
        return JSON_ARRAY
    return None


class StreamMeter:
    """Incremental parser for one streamed response body, fed raw (still encoded) bytes."""

    def __init__(self, fmt: WireFormat, content_type: str | None, content_encoding: str | None,
                 framing: str | None = None) -> None:
        self.facts = ResponseFacts()
        self._fmt = fmt
        self._decode = incremental_decoder(content_encoding)  # UnsupportedEncoding propagates
        if framing is None:
            mt = media_type(content_type)
            framing = SSE if mt in SSE_TYPES else EVENTSTREAM if mt in EVENTSTREAM_TYPES else NDJSON
        self._sse = framing == SSE
        self._framer: Framer = _FRAMERS[framing]()
        self.closed = False

    def feed(self, data: bytes) -> bool:
        """Parses one piece; True when it completed an event with generated content."""
        plain = self._decode(data)
        if not plain:
            return False
        return self._handle(self._framer.feed(plain))

    def close(self) -> bool:
        """End of body: flushes a last event that had no terminating blank line."""
        if self.closed:
            return False
        self.closed = True
        generated = self._handle(self._framer.close())
        if isinstance(self._framer, SSEDecoder):  # SSE: lines outside any field were kept aside
            self._read_stray(self._framer.stray)
        if isinstance(self._framer, EventStreamDecoder) and self._framer.corrupt:
            self.facts.malformed_events += 1  # framing stopped: the rest could not be read
        return generated

    def _handle(self, events: list) -> bool:
        generated = False
        facts, fmt = self.facts, self._fmt
        for item in events:
            if self._sse:
                name, data = item
                if data[:6] == b"[DONE]":
                    facts.terminated = True
                    continue
            elif isinstance(item, Frame):
                name, data = _frame_name(item), item.payload
            else:
                name, data = None, item
            facts.events += 1
            try:
                obj = _loads_utf8(data)
            except ValueError:
                facts.malformed_events += 1
                continue
            if fmt.on_event(facts, name, obj):
                generated = True
        return generated

    def _read_stray(self, lines: list[bytes]) -> None:
        """A bare JSON error appended to an SSE body, outside any `data:` line."""
        if not lines:
            return
        try:
            obj = json.loads(b"\n".join(lines))
        except ValueError:
            return
        self._fmt.on_body(self.facts, obj)


_json_decode = json.JSONDecoder().decode


def _loads_utf8(data: bytes) -> Any:
    """`json.loads(data)` for the UTF-8 every streaming API sends, without its per-call encoding
    detection (a tenth of the metering's time per event). Errors are ValueErrors, as there."""
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]  # json.loads drops a UTF-8 byte-order mark too
    return _json_decode(data.decode("utf-8", "surrogatepass"))


def _frame_name(frame: Frame) -> str | None:
    """An event frame's `:event-type`; an exception frame as `exception:<its type>`."""
    if frame.headers.get(":message-type") == "exception":
        return f"exception:{frame.headers.get(':exception-type') or ''}"
    name = frame.headers.get(":event-type")
    return name if isinstance(name, str) else None


def meter_body(fmt: WireFormat, status: int, content_type: str | None, body: bytes) -> ResponseFacts:
    """Facts from a whole, already decoded body (the non-streamed path)."""
    if status >= 400:
        facts = ResponseFacts()
        facts.set_error(*error_from_body(status, body, content_type))
        return facts
    if is_stream_type(content_type):
        # Streaming was not switched on for this flow (it should have been): parse it whole.
        meter = StreamMeter(fmt, content_type, None)
        meter.feed(body)
        meter.close()
        return meter.facts
    facts = ResponseFacts()
    try:
        obj = json.loads(body)
    except ValueError:
        # Its text is what the model generated (or a page standing in for it): never stored.
        facts.set_error("malformed_response", describe_body("response body is not JSON", body, content_type))
        return facts
    if isinstance(obj, list):
        # A streamed JSON array that was buffered (Gemini without alt=sse): its elements are
        # the stream's events.
        for element in obj:
            facts.events += 1
            fmt.on_event(facts, None, element)
        return facts
    fmt.on_body(facts, obj)
    return facts
