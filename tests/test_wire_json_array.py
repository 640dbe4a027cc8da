"""JSONArrayDecoder: a streamed JSON array split into its elements, fed pieces of any size."""

from __future__ import annotations

import json

import pytest

from addon.wire.json_array import JSONArrayDecoder
from tests.chunking import one_byte_pieces, random_pieces

ELEMENTS = [
    {"candidates": [{"content": {"parts": [{"text": "brace } and bracket ] in a string"}]}}], "n": 1},
    {"text": 'escaped \\" quote, backslash \\\\ and unicode caf\u00e9 \U0001f600', "list": [1, [2, {"x": []}]]},
    {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
]
# Gemini's own layout: pretty-printed elements separated by "\n,\r\n", closed by "\n]".
GEMINI_BODY = (
    "[" + "\n,\r\n".join(json.dumps(e, indent=2, ensure_ascii=False) for e in ELEMENTS) + "\n]"
).encode()


def _decode(pieces) -> list:
    decoder = JSONArrayDecoder()
    out = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    return [json.loads(e) for e in out]


def test_whole_body_gives_every_element():
    assert _decode([GEMINI_BODY]) == ELEMENTS


def test_body_fed_one_byte_at_a_time_gives_every_element():
    assert _decode(one_byte_pieces(GEMINI_BODY)) == ELEMENTS


@pytest.mark.parametrize("seed", range(20))
def test_body_fed_in_random_pieces_gives_every_element(seed):
    assert _decode(random_pieces(GEMINI_BODY, seed, max_size=9)) == ELEMENTS


def test_element_is_emitted_by_the_piece_holding_its_closing_brace():
    first = json.dumps(ELEMENTS[0]).encode()
    decoder = JSONArrayDecoder()
    assert decoder.feed(b"[" + first[:-1]) == []
    assert decoder.feed(first[-1:]) == [first]
    assert decoder.feed(b"\n,\r\n") == []


def test_bare_object_body_is_one_element():
    """An error sent instead of the array (a plain JSON object) still comes out."""
    body = json.dumps(ELEMENTS[2], indent=2).encode()
    assert _decode([body[:5], body[5:]]) == [ELEMENTS[2]]


def test_leading_whitespace_and_empty_array_give_nothing():
    assert _decode([b"  \r\n", b" [", b"\n]"]) == []


def test_unfinished_element_is_returned_at_close_as_it_is():
    decoder = JSONArrayDecoder()
    assert decoder.feed(b'[{"a": 1}, {"b": ') == [b'{"a": 1}']
    assert decoder.close() == [b'{"b": ']
