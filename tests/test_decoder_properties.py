"""Property-based: any chunking of a stream gives the events of the whole, and arbitrary bytes
never raise out of a decoder (a metering failure must never reach the user's traffic)."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings, strategies as st

from addon.formats import FORMATS
from addon.metering import StreamMeter
from addon.wire.ndjson import NDJSONDecoder
from addon.wire.sse import SSEDecoder

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
field_value = text.map(lambda t: t.replace("\n", " ").replace("\r", " "))
eol = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def sse_streams(draw) -> bytes:
    """Well-formed SSE: events of data/event/id lines and comments, any line endings."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        lines = []
        if draw(st.booleans()):
            lines.append(b": " + draw(field_value).encode())
        if draw(st.booleans()):
            lines.append(b"event: " + draw(field_value).encode())
        for _ in range(draw(st.integers(1, 3))):
            lines.append(b"data: " + draw(field_value).encode())
        end = draw(eol)
        parts.append(end.join(lines) + end + end)
    return b"".join(parts)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *marks, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


def sse_events(pieces: list[bytes]) -> list:
    decoder = SSEDecoder()
    events = [e for piece in pieces for e in decoder.feed(piece)]
    return events + decoder.close()


@SETTINGS
@given(sse_streams(), st.lists(st.integers(0, 10_000), max_size=40))
def test_any_chunking_of_an_sse_stream_gives_the_events_of_the_whole(stream, points):
    assert sse_events(cut(stream, points)) == sse_events([stream])


@SETTINGS
@given(st.binary(max_size=400), st.lists(st.integers(0, 10_000), max_size=40))
def test_any_chunking_of_arbitrary_bytes_gives_the_same_sse_events(data, points):
    assert sse_events(cut(data, points)) == sse_events([data])


def reference_sse_events(data: bytes) -> list[tuple[str | None, bytes]]:
    """The WHATWG event-stream algorithm written out plainly, on the whole body at once: an
    independent check of the decoder's fast paths (LF-only lines, `data: ` lines)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines and lines[-1] == b"":
        lines.pop()  # the body ended with a line ending
    events, buffer, name = [], [], None
    for line in [*lines, b""]:  # end of body dispatches a pending event (as `close` does)
        if line == b"":
            if buffer:
                events.append((name, b"\n".join(buffer)))
            buffer, name = [], None
        elif line.startswith(b":"):
            continue
        else:
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                buffer.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace")
    return events


@SETTINGS
@given(st.one_of(sse_streams(), st.binary(max_size=400)), st.lists(st.integers(0, 10_000), max_size=40))
def test_sse_events_equal_the_reference_algorithm(data, points):
    got = [(e.event, e.data) for e in sse_events(cut(data, points))]
    assert got == reference_sse_events(data)


@SETTINGS
@given(st.lists(st.dictionaries(text, st.integers() | text, max_size=3), max_size=6), st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_of_ndjson_gives_the_lines_of_the_whole(objects, points):
    stream = b"".join(json.dumps(o).encode() + b"\n" for o in objects)

    def lines(pieces):
        decoder = NDJSONDecoder()
        return [line for p in pieces for line in decoder.feed(p)] + decoder.close()

    assert [json.loads(x) for x in lines(cut(stream, points))] == objects


@SETTINGS
@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=30),
       st.sampled_from(["text/event-stream", "application/x-ndjson"]), st.sampled_from(range(len(FORMATS))))
def test_arbitrary_bytes_never_raise_out_of_a_stream_meter(data, points, content_type, fmt_index):
    meter = StreamMeter(FORMATS[fmt_index], content_type, None)
    for piece in cut(data, points):
        assert meter.feed(piece) in (True, False)
    assert meter.close() in (True, False)


@SETTINGS
@given(st.binary(max_size=300), st.lists(st.integers(0, 10_000), max_size=20))
def test_arbitrary_json_shaped_events_never_raise_out_of_a_format(payload_bytes, points):
    """Valid JSON of any shape (not what the format expects) is read without raising."""
    values = [None, True, 3, -1.5, "x", [], {}, {"choices": "no"}, {"choices": [None, 1, {"delta": 5}]},
              {"usage": {"prompt_tokens": "7"}}, {"error": 3}, {"model": ["m"]}]
    stream = b"".join(b"data: " + json.dumps(values[b % len(values)]).encode() + b"\n\n" for b in payload_bytes)
    for fmt in FORMATS:
        meter = StreamMeter(fmt, "text/event-stream", None)
        for piece in cut(stream, points):
            meter.feed(piece)
        meter.close()
