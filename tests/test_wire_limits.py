"""Every framer (addon/wire/*) holds at most its limit of one event: an SSE event or line, an
NDJSON line, a JSON array element or an event-stream frame longer than that is skipped unread
and counted in `oversized`, and the events after it are read as usual."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from addon.wire import MAX_EVENT_BYTES
from addon.wire.eventstream import EventStreamDecoder, Frame
from addon.wire.json_array import JSONArrayDecoder
from addon.wire.ndjson import NDJSONDecoder
from addon.wire.sse import Event, SSEDecoder
from tests.test_wire_eventstream import frame

LIMIT = 256 << 10
HUGE = 4 << 20  # the oversized event's length: far past LIMIT
PIECE = 16 << 10


def _pieces(*parts: bytes | tuple[bytes, int]):
    """Pieces of PIECE bytes of each part; (pattern, n) is pattern repeated to n bytes, made
    piece by piece so that the test itself never holds it whole."""
    for part in parts:
        if isinstance(part, bytes):
            for i in range(0, len(part), PIECE):
                yield part[i : i + PIECE]
        else:
            pattern, n = part
            block = pattern * (PIECE // len(pattern))
            for _ in range(n // len(block)):
                yield block


def _run(decoder, pieces) -> tuple[list, int]:
    """Everything the decoder gives for these pieces and at close, and the peak of memory traced
    while it ran."""
    gc.collect()
    tracemalloc.start()
    try:
        out = [item for piece in pieces for item in decoder.feed(piece)]
        out += decoder.close()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_every_framer_keeps_the_documented_limit_by_default():
    assert MAX_EVENT_BYTES == 8 << 20
    assert {SSEDecoder().limit, NDJSONDecoder().limit, JSONArrayDecoder().limit,
            EventStreamDecoder().limit} == {MAX_EVENT_BYTES}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "long_event"), [
    ("one-long-data-line", (b"data: " + b"x" * 10, (b"x", HUGE))),
    ("many-data-lines", (b"", (b"data: xxxxxxxxx\n", HUGE))),
    ("many-empty-data-lines", (b"", (b"data:\n", HUGE))),
    ("one-long-comment-line", (b": ", (b"c", HUGE))),
    ("one-long-stray-line", (b"{", (b"x", HUGE))),
])
def test_an_sse_event_past_the_limit_is_skipped_in_bounded_memory(name, long_event):
    head, body = long_event
    decoder = SSEDecoder(LIMIT)
    events, peak = _run(decoder, _pieces(b'data: {"n":1}\n\n', head, body, b"\n\n", b'data: {"n":2}\n\n'))
    assert events == [Event(None, b'{"n":1}'), Event(None, b'{"n":2}')]
    assert decoder.oversized == 1
    assert peak < 3 * LIMIT, f"{peak >> 20} MiB"


def test_an_sse_event_a_little_shorter_than_the_limit_is_read():
    decoder = SSEDecoder(LIMIT)
    data = b"y" * (LIMIT - 100)
    events, _ = _run(decoder, _pieces(b"data: " + data + b"\n\n"))
    assert events == [Event(None, data)] and decoder.oversized == 0


def test_an_sse_line_past_the_limit_in_one_piece_is_skipped():
    decoder = SSEDecoder(LIMIT)
    events = decoder.feed(b"data: " + b"x" * (2 * LIMIT) + b"\r\n\r\ndata: 2\r\n\r\n") + decoder.close()
    assert events == [Event(None, b"2")] and decoder.oversized == 1


def test_an_sse_line_past_the_limit_ending_in_cr_then_lf_split_across_pieces_ends_once():
    # "\r" | "\n" is one line ending: were the "\n" a blank line of its own, "data: 2" would be
    # an event apart instead of part of the one dropped.
    decoder = SSEDecoder(LIMIT)
    events = []
    for piece in (b"data: " + b"x" * (LIMIT + 10), b"x\r", b"\ndata: 2\r\n", b"\r\ndata: 3\r\n\r\n"):
        events += decoder.feed(piece)
    assert events + decoder.close() == [Event(None, b"3")] and decoder.oversized == 1


def test_sse_stray_lines_are_kept_up_to_a_bound():
    decoder = SSEDecoder()
    for _ in range(10_000):
        decoder.feed(b"{ not an sse field }\n")
    assert sum(map(len, decoder.stray)) <= 64 << 10


@pytest.mark.slow
@pytest.mark.parametrize("split_tail", [False, True])
def test_an_ndjson_line_past_the_limit_is_skipped_in_bounded_memory(split_tail):
    decoder = NDJSONDecoder(LIMIT)
    tail = (b"x", PIECE) if split_tail else b"x\n"
    lines, peak = _run(decoder, _pieces(b'{"n":1}\n{"long":"', (b"x", HUGE), tail, b'\n{"n":2}\n'))
    assert lines == [b'{"n":1}', b'{"n":2}']
    assert decoder.oversized == 1
    assert peak < 3 * LIMIT


def test_an_ndjson_line_past_the_limit_in_one_piece_is_skipped_and_one_at_the_end_too():
    decoder = NDJSONDecoder(LIMIT)
    lines = decoder.feed(b'{"n":1}\n' + b"x" * (LIMIT + 1) + b'\n{"n":2}\n' + b"y" * (2 * LIMIT))
    assert lines + decoder.close() == [b'{"n":1}', b'{"n":2}'] and decoder.oversized == 2


@pytest.mark.slow
def test_a_json_array_element_past_the_limit_is_skipped_in_bounded_memory():
    decoder = JSONArrayDecoder(LIMIT)
    elements, peak = _run(decoder, _pieces(b'[{"n":1},\r\n{"long":[', (b"[0000000000000],", HUGE), b"0]},\r\n{\"n\":2}]"))
    assert elements == [b'{"n":1}', b'{"n":2}']
    assert decoder.oversized == 1
    assert peak < 3 * LIMIT


def test_a_json_array_element_past_the_limit_left_unfinished_is_counted_at_close():
    decoder = JSONArrayDecoder(LIMIT)
    elements, _ = _run(decoder, _pieces(b'[{"n":1},{"s":"', (b"z", HUGE)))
    assert elements == [b'{"n":1}'] and decoder.oversized == 1


def test_an_event_stream_frame_past_the_limit_is_skipped_unread_and_framing_goes_on():
    first, last = frame({":event-type": "a"}, b'{"n":1}'), frame({":event-type": "b"}, b'{"n":2}')
    big = frame({":event-type": "big"}, b"p" * (2 * LIMIT))
    decoder = EventStreamDecoder(LIMIT)
    frames, peak = _run(decoder, _pieces(first + big + last))
    assert frames == [Frame({":event-type": "a"}, b'{"n":1}'), Frame({":event-type": "b"}, b'{"n":2}')]
    assert (decoder.oversized, decoder.corrupt) == (1, None)
    assert peak < 3 * LIMIT + len(big)  # the test's own copy of the frame is traced too


def test_an_event_stream_frame_past_the_limit_cut_short_is_reported_at_close():
    decoder = EventStreamDecoder(LIMIT)
    decoder.feed(frame({":event-type": "big"}, b"p" * (2 * LIMIT))[: LIMIT + 100])
    assert decoder.close() == [] and decoder.oversized == 1
    assert decoder.corrupt is not None and "unfinished frame" in decoder.corrupt
