"""incremental_decoder: Content-Encoding undone piece by piece, whatever the piece sizes."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from addon.wire.encoding import PIECE_BYTES, UnsupportedEncoding, decode_whole, incremental_decoder
from tests.chunking import one_byte_pieces, random_pieces

# SSE-looking text plus incompressible bytes, so every coding produces a long compressed body.
PLAIN = b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9 \xf0\x9f\x98\x80"}}]}\n\n' * 40 + random.Random(
    7
).randbytes(3000)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}

CASES = [
    pytest.param("gzip", gzip.compress, id="gzip"),
    pytest.param("x-gzip", gzip.compress, id="x-gzip"),
    pytest.param("deflate", zlib.compress, id="deflate-zlib-wrapped"),
    pytest.param("deflate", _raw_deflate, id="deflate-raw"),
    pytest.param("br", brotli.compress, id="br"),
    pytest.param("zstd", ENCODERS["zstd"], id="zstd"),
    # Codings are listed in the order they were applied: "gzip, br" is br(gzip(body)).
    pytest.param("gzip, br", lambda d: brotli.compress(gzip.compress(d)), id="gzip-then-br"),
    pytest.param("deflate, zstd", lambda d: ENCODERS["zstd"](zlib.compress(d)), id="deflate-then-zstd"),
    pytest.param("br,gzip", lambda d: gzip.compress(brotli.compress(d)), id="br-then-gzip-no-space"),
    pytest.param(" GZIP , Br ", lambda d: brotli.compress(gzip.compress(d)), id="case-and-spaces"),
    pytest.param("identity, gzip", gzip.compress, id="identity-skipped-in-chain"),
]


def _decode(content_encoding: str | None, pieces: list[bytes]) -> bytes:
    decode = incremental_decoder(content_encoding)
    return b"".join(decode(piece) for piece in pieces)


@pytest.mark.parametrize(("content_encoding", "encode"), CASES)
def test_body_fed_one_byte_at_a_time_is_decoded_exactly(content_encoding, encode):
    assert _decode(content_encoding, one_byte_pieces(encode(PLAIN))) == PLAIN


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("content_encoding", "encode"), CASES)
def test_body_fed_in_random_pieces_is_decoded_exactly(content_encoding, encode, seed):
    assert _decode(content_encoding, random_pieces(encode(PLAIN), seed)) == PLAIN


def _flushing_encoder(coding: str) -> Callable[[bytes], bytes]:
    """Compresses and flushes one piece at a time, as a streaming server does after each event."""
    if coding in ("gzip", "deflate"):
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)
        return lambda data: c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    if coding == "br":
        b = brotli.Compressor()
        return lambda data: b.process(data) + b.flush()
    z = zstandard.ZstdCompressor().compressobj()
    return lambda data: z.compress(data) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_each_flushed_event_is_decoded_as_soon_as_its_bytes_arrive(coding):
    encode = _flushing_encoder(coding)
    decode = incremental_decoder(coding)
    events = [b'data: {"n":%d}\n\n' % i for i in range(20)]
    seen = b""
    for i, event in enumerate(events):
        seen += b"".join(decode(piece) for piece in random_pieces(encode(event), seed=i))
        assert seen == b"".join(events[: i + 1])


def test_zstd_body_of_several_frames_is_decoded_whole():
    # RFC 8878: a zstd-coded body is one or more frames (e.g. a server compressing each write).
    frames = [zstandard.ZstdCompressor().compress(b"data: %d\n\n" % i) for i in range(3)]
    expected = b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert _decode("zstd", frames) == expected
    assert _decode("zstd", [b"".join(frames)]) == expected
    assert _decode("zstd", one_byte_pieces(b"".join(frames))) == expected


@pytest.mark.parametrize("content_encoding", [None, "", "identity", "Identity", " , "])
def test_identity_or_no_coding_passes_bytes_through(content_encoding):
    decode = incremental_decoder(content_encoding)
    assert [decode(p) for p in (b"data: x", b"\n\n", b"")] == [b"data: x", b"\n\n", b""]


@pytest.mark.parametrize(
    ("content_encoding", "unknown"),
    [("compress", "compress"), ("xz", "xz"), ("gzip, lzma", "lzma"), ("aes128gcm", "aes128gcm")],
)
def test_unknown_coding_raises_unsupported_encoding_naming_it(content_encoding, unknown):
    with pytest.raises(UnsupportedEncoding) as excinfo:
        incremental_decoder(content_encoding)
    assert excinfo.value.args == (unknown,)


def test_unsupported_encoding_is_a_value_error():
    assert issubclass(UnsupportedEncoding, ValueError)


# -- decompression bombs: a few compressed bytes for gigabytes --------------------------------

BOMB_PLAIN = 256 << 20  # bytes of zeros each bomb stands for


def _bomb(coding: str) -> bytes:
    """BOMB_PLAIN zeros compressed, made a MiB at a time (never the whole in memory)."""
    zeros = bytes(1 << 20)
    if coding in ("gzip", "deflate"):
        c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)
        return b"".join(c.compress(zeros) for _ in range(BOMB_PLAIN >> 20)) + c.flush()
    if coding == "br":
        b = brotli.Compressor(quality=5)
        return b"".join(b.process(zeros) for _ in range(BOMB_PLAIN >> 20)) + b.finish()
    z = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(z.compress(zeros) for _ in range(BOMB_PLAIN >> 20)) + z.flush()


_BOMBS: dict[str, bytes] = {}


def bomb(coding: str) -> bytes:
    if coding not in _BOMBS:
        _BOMBS[coding] = _bomb(coding)
    return _BOMBS[coding]


def _peak_while(run) -> int:
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize("pieces", ["whole", "4k-pieces"])
def test_a_decompression_bomb_stops_at_the_limit_in_bounded_pieces_and_memory(coding, pieces):
    body = bomb(coding)
    assert len(body) < 2 << 20  # the whole bomb is small: the hooks would hand it over
    limit = 64 << 20
    decoder = incremental_decoder(coding, limit)
    seen = {"bytes": 0, "largest": 0}

    def run():
        parts = [body] if pieces == "whole" else [body[i : i + 4096] for i in range(0, len(body), 4096)]
        for part in parts:
            for piece in decoder.pieces(part):
                seen["bytes"] += len(piece)
                seen["largest"] = max(seen["largest"], len(piece))

    peak = _peak_while(run)
    assert decoder.exceeded and seen["bytes"] == decoder.produced == limit
    assert seen["largest"] <= PIECE_BYTES
    # At most one codec call's output at a time (brotli's is the largest, two 16 MiB meta-blocks),
    # never the 256 MiB the bomb stands for.
    assert peak < 40 << 20, f"{peak >> 20} MiB"


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_past_its_limit_a_decoder_ignores_every_later_piece(coding):
    decoder = incremental_decoder(coding, 1000)
    assert len(decoder(bomb(coding)[:65536])) == 1000 and decoder.exceeded
    assert decoder(bomb(coding)[65536:]) == b""


def test_a_limit_applies_to_identity_bodies_too():
    decoder = incremental_decoder(None, 10)
    assert decoder(b"0123456789abc") == b"0123456789" and decoder.exceeded


@pytest.mark.parametrize(("content_encoding", "encode"), CASES)
def test_a_whole_body_within_its_limit_is_decoded_exactly(content_encoding, encode):
    decoded = decode_whole(encode(PLAIN), content_encoding, len(PLAIN))
    assert (decoded.data, decoded.problem) == (PLAIN, None)


@pytest.mark.parametrize(("content_encoding", "body", "problem"), [
    ("zstd", None, "it is larger than 1 MiB once decompressed"),
    (None, b"x" * ((1 << 20) + 1), "it is larger than 1 MiB"),
    ("compress", b"abc", "its Content-Encoding compress cannot be undone"),
    ("gzip", b"not gzip at all", "it is not valid gzip"),
])
def test_a_whole_body_that_cannot_be_read_says_why(content_encoding, body, problem):
    decoded = decode_whole(bomb("zstd") if body is None else body, content_encoding, 1 << 20)
    assert (decoded.data, decoded.problem) == (None, problem)
