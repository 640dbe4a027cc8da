"""SSEDecoder: WHATWG framing of a byte stream fed in pieces of any size."""

from __future__ import annotations

import json

import pytest

from addon.wire.sse import Event, SSEDecoder
from tests.chunking import one_byte_pieces

EOLS = pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])

# One stream exercising every rule at once: a comment, a named event, a 4-byte and a 2-byte
# UTF-8 character, a multi-line data field, and the OpenAI end sentinel.
LINES = [
    b": keep-alive",
    b"event: delta",
    'data: {"t":"caf\u00e9 \U0001f600"}'.encode(),
    b"",
    b"data: line one",
    b"data: line two",
    b"",
    b"data: [DONE]",
    b"",
]
EXPECTED = [
    Event("delta", '{"t":"caf\u00e9 \U0001f600"}'.encode()),
    Event(None, b"line one\nline two"),
    Event(None, b"[DONE]"),
]


def _stream(eol: bytes, lines: list[bytes] = LINES) -> bytes:
    return b"".join(line + eol for line in lines)


def _decode(pieces: list[bytes]) -> tuple[list[Event], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[Event] = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.close()
    return events, decoder


@EOLS
def test_stream_split_at_every_byte_offset_gives_the_same_events(eol):
    data = _stream(eol)
    for offset in range(len(data) + 1):
        events, _ = _decode([data[:offset], data[offset:]])
        assert events == EXPECTED, f"split at byte {offset}"


@EOLS
def test_stream_fed_one_byte_at_a_time_gives_the_same_events(eol):
    data = _stream(eol)
    events, _ = _decode(one_byte_pieces(data))
    assert events == EXPECTED


@EOLS
def test_event_is_dispatched_by_the_feed_that_completes_its_blank_line(eol):
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a" + eol) == []
    # A lone \r may be the first half of \r\n, so CR framing needs the next byte to be sure.
    first = decoder.feed(eol)
    second = decoder.feed(b"data: b" + eol)
    assert first + second == [Event(None, b"a")]
    if eol != b"\r":
        assert first == [Event(None, b"a")]


def test_crlf_split_between_two_pieces_is_one_line_ending():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were the split \r and \n two line endings, the blank line between would end the event.
    assert decoder.feed(b"\ndata: b\r\n") == []
    assert decoder.feed(b"\r\n") == [Event(None, b"a\nb")]


def test_lone_cr_at_end_of_piece_followed_by_text_ends_the_line():
    events, _ = _decode([b"data: a\r", b"\rdata: b\r\r"])
    assert events == [Event(None, b"a"), Event(None, b"b")]


@EOLS
def test_last_event_without_trailing_blank_line_is_emitted_by_close(eol):
    data = b"data: a" + eol + eol + b"data: b"
    for offset in range(len(data) + 1):
        decoder = SSEDecoder()
        fed = decoder.feed(data[:offset]) + decoder.feed(data[offset:])
        closed = decoder.close()
        assert Event(None, b"b") not in fed
        assert fed + closed == [Event(None, b"a"), Event(None, b"b")], f"split at byte {offset}"


@EOLS
def test_last_line_ended_but_event_not_blank_terminated_is_emitted_by_close(eol):
    events, _ = _decode([b"data: a" + eol])
    assert events == [Event(None, b"a")]


def test_lone_cr_held_back_then_unterminated_text_is_split_at_close():
    events, decoder = _decode([b"data: a\r", b"data: b"])
    assert events == [Event(None, b"a\nb")]
    assert decoder.stray == []


@pytest.mark.parametrize("char", ["\u2019", "\U0001f600", "\u00e9"], ids=["u2019", "emoji", "e-acute"])
def test_multibyte_utf8_char_split_across_pieces_yields_its_exact_bytes(char):
    payload = json.dumps({"content": f"a{char}b"}, ensure_ascii=False).encode()
    data = b"data: " + payload + b"\n\n"
    start = data.index(char.encode())
    for offset in range(start + 1, start + len(char.encode())):  # every cut inside the char
        events, _ = _decode([data[:offset], data[offset:]])
        assert events == [Event(None, payload)]
        assert json.loads(events[0].data)["content"] == f"a{char}b"


def test_comment_lines_produce_no_event():
    data = b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n:\ndata: x\n: mid-event\n\n"
    events, decoder = _decode([data])
    assert events == [Event(None, b"x")]
    assert decoder.stray == []


def test_comment_between_data_lines_does_not_break_the_event():
    events, _ = _decode([b"data: a\n: ping\ndata: b\n\n"])
    assert events == [Event(None, b"a\nb")]


def test_multiple_data_lines_are_joined_with_newline():
    events, _ = _decode([b'data: {\ndata:\ndata:   "k": 1\ndata: }\n\n'])
    assert events == [Event(None, b'{\n\n  "k": 1\n}')]
    assert json.loads(events[0].data) == {"k": 1}


def test_event_name_applies_only_to_its_own_event():
    events, _ = _decode([b"event: error\ndata: x\n\ndata: y\n\nevent: message_stop\ndata: z\n\n"])
    assert events == [Event("error", b"x"), Event(None, b"y"), Event("message_stop", b"z")]


def test_event_name_without_data_dispatches_nothing_and_is_reset():
    events, _ = _decode([b"event: ping\n\ndata: y\n\n"])
    assert events == [Event(None, b"y")]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"data:x", Event(None, b"x")),
        (b"data: x", Event(None, b"x")),
        (b"data:  x", Event(None, b" x")),
        (b"data: x ", Event(None, b"x ")),
        (b"data:", Event(None, b"")),
        (b"data", Event(None, b"")),
        (b"data: a: b", Event(None, b"a: b")),
    ],
    ids=["no-space", "one-space", "two-spaces", "trailing-space", "empty", "no-colon", "colon-in-value"],
)
def test_only_one_space_after_the_colon_is_stripped(line, expected):
    events, _ = _decode([line + b"\n\n"])
    assert events == [expected]


def test_only_one_space_is_stripped_from_event_name():
    events, _ = _decode([b"event:  named\ndata: x\n\n"])
    assert events == [Event(" named", b"x")]


def test_id_retry_and_unknown_fields_are_ignored():
    events, decoder = _decode([b"id: 7\nretry: 1000\nfoo: bar\ndata: x\n\n"])
    assert events == [Event(None, b"x")]
    assert decoder.stray == []


def test_bare_json_lines_outside_data_fields_are_kept_as_stray():
    tail = b'{\n  "error": {\n    "code": 503,\n    "status": "UNAVAILABLE"\n  }\n}\n'
    events, decoder = _decode([b"data: x\n\n" + tail])
    assert events == [Event(None, b"x")]
    assert json.loads(b"\n".join(decoder.stray)) == {"error": {"code": 503, "status": "UNAVAILABLE"}}


def test_empty_pieces_change_nothing():
    events, _ = _decode([b"", b"data: x\n", b"", b"\n", b""])
    assert events == [Event(None, b"x")]


def test_close_on_empty_stream_emits_nothing_and_close_twice_is_harmless():
    decoder = SSEDecoder()
    assert decoder.close() == []
    decoder.feed(b"data: x\n\n")
    assert decoder.close() == []


@pytest.mark.parametrize("piece", [1, 2, 3, 64])
def test_leading_byte_order_mark_is_not_part_of_the_first_line(piece):
    stream = b"\xef\xbb\xbfdata: first\n\ndata: second\n\n"
    decoder = SSEDecoder()
    events = [e for i in range(0, len(stream), piece) for e in decoder.feed(stream[i : i + piece])]
    events += decoder.close()
    assert [e.data for e in events] == [b"first", b"second"]
