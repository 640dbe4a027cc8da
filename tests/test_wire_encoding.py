"""incremental_decoder: Content-Encoding undone piece by piece, whatever the piece sizes."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from addon.wire.encoding import UnsupportedEncoding, incremental_decoder
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
