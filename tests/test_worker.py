"""The hand-over between the hooks and the metering, without processes: frames, item lists, and
the streaming decision the hooks make before a request is known to be an LLM call."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from addon.engine import END, OPEN, Engine
from addon.formats import FORMATS
from addon.metering import passes_as_stream, stream_framing
from addon.worker import FrameReader, add_frame

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


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def submit(self, row: dict) -> bool:
        self.rows.append(row)
        return True

    unsettled = 0


REQUEST = (0.0, 1_700_000_000.0, "api.openai.com", 443, "/v1/chat/completions",
           b'{"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": true}', None,
           "OpenAI/Python 1.54.0", None)
SSE = [b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
       b'data: {"model":"gpt-x-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
       b"data: [DONE]\n\n", b""]


def test_pieces_between_messages_are_metered_in_order_for_each_call():
    """Two streams interleaved: each piece is three bare items (cid, t, data) between tuples."""
    rows = Rows()
    engine = Engine(rows, log_calls=False)
    headers = (0.01, 200, "text/event-stream", None)
    items: list = [(OPEN, 1, REQUEST, headers, True), (OPEN, 2, REQUEST, headers, True)]
    for i, piece in enumerate(SSE):
        items += [1, 0.1 + i, piece, 2, 0.2 + i, piece]
    items += [(END, 2, 9.0, 200), (END, 1, 8.0, 200)]
    engine.handle_all(items)
    assert [r["response_time_ms"] for r in rows.rows] == [9000, 8000]
    assert [r["time_to_first_token_ms"] for r in rows.rows] == [200, 100]
    assert all(r["chunk_count"] == 2 and r["finish_reason"] == "stop" and r["success"] for r in rows.rows)
    assert engine.settled() == 2 and engine.metering_errors == 0


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
