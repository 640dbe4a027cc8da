"""EventStreamDecoder: AWS event-stream frames (Bedrock), fed pieces of any size, CRCs checked."""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from addon.wire.eventstream import EventStreamDecoder, Frame
from tests.chunking import random_pieces


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    raw = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
                   for k, v in headers.items())
    total = 16 + len(raw) + len(payload)
    prelude = struct.pack(">II", total, len(raw))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return body + struct.pack(">I", zlib.crc32(body))


EVENTS = [
    ({":event-type": "messageStart", ":message-type": "event"}, b'{"role":"assistant"}'),
    ({":event-type": "contentBlockDelta", ":message-type": "event"}, '{"delta":{"text":"caf\u00e9"}}\r\n'.encode()),
    ({":exception-type": "throttlingException", ":message-type": "exception"}, b'{"message":"Too many requests"}'),
]
STREAM = b"".join(frame(h, p) for h, p in EVENTS)


def decode(pieces) -> tuple[list[Frame], EventStreamDecoder]:
    decoder = EventStreamDecoder()
    out = [f for piece in pieces for f in decoder.feed(piece)]
    out.extend(decoder.close())
    return out, decoder


@pytest.mark.parametrize("seed", range(10))
def test_frames_split_anywhere_come_out_whole(seed):
    frames, decoder = decode(random_pieces(STREAM, seed, max_size=7))
    assert [(f.headers, f.payload) for f in frames] == EVENTS
    assert decoder.corrupt is None
    json.loads(frames[1].payload)  # payload bytes (here a CR and LF) are never line-split


def test_a_bad_message_crc_stops_framing_and_says_why():
    broken = bytearray(STREAM)
    first = len(frame(*EVENTS[0]))
    broken[first + 20] ^= 0xFF  # inside the second frame's headers
    frames, decoder = decode([bytes(broken)])
    assert [f.headers for f in frames] == [EVENTS[0][0]]
    assert decoder.corrupt == "message CRC mismatch"


def test_garbage_fails_the_prelude_check():
    frames, decoder = decode([b"this is not an event stream at all"])
    assert frames == [] and decoder.corrupt == "prelude CRC mismatch"


def test_an_unfinished_last_frame_is_reported_at_close():
    frames, decoder = decode([STREAM[:-3]])
    assert len(frames) == 2 and "unfinished frame" in decoder.corrupt
