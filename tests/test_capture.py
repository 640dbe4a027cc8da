"""The hand-over protocol (addon.capture), without processes: frames, batches of messages and
pieces, and the streaming decision the hooks make before a request is known to be an LLM call."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from addon.capture import (
    End,
    FrameReader,
    Lost,
    Open,
    Piece,
    Request,
    ResponseHead,
    Shutdown,
    add_frame,
    add_piece,
    iter_batch,
)
from addon.engine import Engine
from addon.formats import FORMATS
from addon.metering import passes_as_stream, stream_framing

MESSAGES = st.lists(st.lists(st.one_of(st.integers(), st.floats(allow_nan=False), st.binary(max_size=300),
                                       st.tuples(st.integers(0, 6), st.text(max_size=20))), max_size=20), max_size=8)


@settings(max_examples=200, deadline=None)
@given(MESSAGES, st.data())
def test_frames_read_back_whole_and_in_order_however_the_pipe_splits_them(batches, data):
    wire = bytearray()
    for batch in batches:
        add_frame(wire, batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    reader, got = FrameReader(), []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        got.extend(reader.feed(wire[start:end]))
    assert got == batches


MESSAGE_OR_PIECE = st.one_of(
    st.builds(Piece, st.integers(0, 2**40), st.floats(allow_nan=False), st.binary(max_size=50)),
    st.builds(End, st.integers(0, 2**40), st.floats(allow_nan=False), st.integers(100, 599)),
    st.builds(Lost, st.integers(0, 100), st.text(max_size=10)),
    st.builds(Shutdown, st.floats(allow_nan=False)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(MESSAGE_OR_PIECE, max_size=30))
def test_a_batch_of_messages_and_bare_pieces_walks_back_in_order_across_a_frame(sequence):
    items: list = []
    for item in sequence:
        if type(item) is Piece:
            add_piece(items, *item)
        else:
            items.append(item)
    wire = bytearray()
    add_frame(wire, items)
    [received] = list(FrameReader().feed(bytes(wire)))
    assert list(iter_batch(received)) == sequence


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def submit(self, row: dict) -> bool:
        self.rows.append(row)
        return True

    unsettled = 0


REQUEST = Request(0.0, 1_700_000_000.0, "api.openai.com", 443, "/v1/chat/completions",
                  b'{"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": true}', None,
                  "OpenAI/Python 1.54.0", None)
SSE = [b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
       b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
       b"data: [DONE]\n\n", b""]


def test_pieces_between_messages_are_metered_in_order_for_each_call(caplog):
    """Two streams interleaved; each is complete at its body's end (b""), before its response hook."""
    rows = Rows()
    engine = Engine(rows, log_calls=False)
    head = ResponseHead(0.01, 200, "text/event-stream", None)
    items: list = [Open(1, REQUEST, head, True), Open(2, REQUEST, head, True)]
    for i, piece in enumerate(SSE):
        add_piece(items, 1, 0.1 + i, piece)
        add_piece(items, 2, 0.2 + i, piece)
    items += [End(2, 9.0, 200), End(1, 8.0, 200)]
    engine.handle_all(items)
    assert [r["response_time_ms"] for r in rows.rows] == [3100, 3200]
    assert [r["time_to_first_token_ms"] for r in rows.rows] == [100, 200]
    assert all(r["chunk_count"] == 2 and r["finish_reason"] == "stop" and r["success"] for r in rows.rows)
    assert engine.settled() == 2 and "metering failed" not in caplog.text


CONTENT_TYPES = ["text/event-stream", "text/event-stream; charset=utf-8", "application/x-ndjson",
                 "application/vnd.amazon.eventstream", "application/json", "application/json; charset=UTF-8",
                 "text/html", None]
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/messages",
         "/v1beta/models/gemini-2.5-flash:generateContent", "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
         "/api/chat", "/api/generate", "/model/m/converse-stream", "/model/m/invoke-with-response-stream",
         "/gateway/any/path"]


@pytest.mark.parametrize("path", PATHS)
def test_the_hooks_pass_on_as_a_stream_every_response_the_metering_meters_as_one(path):
    """The hooks decide from the path and response headers alone; whatever a format would meter as
    a stream (`stream_framing`), they must have passed on as it arrived (never buffered)."""
    for fmt in FORMATS:
        for requested_stream in (False, True):
            for content_type in CONTENT_TYPES:
                for status in (200, 400, 429, 500):
                    if fmt.array_streams:  # Gemini: the path says whether a stream was asked for
                        requested_stream = path.endswith(":streamGenerateContent")
                    if stream_framing(fmt, content_type, status=status, requested_stream=requested_stream):
                        assert passes_as_stream(path, content_type, status), (fmt, path, content_type, status)
