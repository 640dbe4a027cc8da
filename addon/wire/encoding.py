"""Incremental `Content-Encoding` decoders for streamed and whole bodies, bounded.

mitmproxy hands a stream callable the bytes as they are on the wire, still compressed; only
buffered bodies are decoded for us (`flow.response.content`). These decoders undo gzip, deflate,
br and zstd piece by piece so the stream parser sees plain bytes as soon as they arrive.

A few compressed bytes can stand for gigabytes (a decompression bomb: 32 KB of zstd, 1 GB of
output), so a decoder never makes more than it is asked for: it hands its output on in pieces
of at most `PIECE_BYTES`, and stops for good once it has made `limit` bytes (`exceeded`). What
one call to a codec can make at once is bounded too: zlib's by its `max_length`; brotli 1.1 (the
newest mitmproxy 11 allows) and zstandard 0.23 have no such limit, so they are fed their input
in slices small enough that no slice can make more than about 32 MiB (see the constants).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import brotli
import zstandard

# Decoded output goes on in pieces of at most this many bytes: a framer splits each at once,
# and a piece of 256 KiB of bare newlines is a list of 256 Ki lines, not of a gigabyte's worth.
PIECE_BYTES = 256 << 10
# A brotli meta-block (at most 16 MiB of output) needs about 13 bytes of input at the least; fed
# 8 bytes at a time, one call makes at most two meta-blocks' worth (measured: 16 MiB from 1 byte).
_BROTLI_SLICE = 8
# A zstd block makes at most 128 KiB from at least 4 bytes (an RLE block): 512 bytes make at most
# 128 blocks, 16 MiB.
_ZSTD_SLICE = 512


class UnsupportedEncoding(ValueError):
    """The response uses a content coding we cannot undo; the stream is passed through unparsed."""


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)
        # "deflate" is often sent raw, without the zlib header the RFC asks for. The header check
        # may fail only on a later piece (one byte at a time, on the second), so the input is kept
        # until the first output shows the header was right, to be replayed as raw deflate.
        self._replay: list[bytes] | None = [] if wbits == zlib.MAX_WBITS else None

    def __call__(self, data: bytes) -> Iterator[bytes]:
        if self._replay is None:
            return self._rest(data)
        return self._first(data)

    def _first(self, data: bytes) -> Iterator[bytes]:
        if self._replay is not None:
            self._replay.append(data)
            try:
                out = self._d.decompress(data, PIECE_BYTES)
            except zlib.error:
                data, self._replay = b"".join(self._replay), None
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
                out = self._d.decompress(data, PIECE_BYTES)
            if out:
                self._replay = None
                yield out
            data = self._d.unconsumed_tail
            if not data and len(out) < PIECE_BYTES:
                return
        yield from self._rest(data)

    def _rest(self, data: bytes) -> Iterator[bytes]:
        d = self._d
        while True:
            out = d.decompress(data, PIECE_BYTES)  # at most PIECE_BYTES; the input left is kept
            data = d.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < PIECE_BYTES:  # a full piece may leave output inside zlib
                return


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def __call__(self, data: bytes) -> Iterator[bytes]:
        process = self._d.process
        for start in range(0, len(data), _BROTLI_SLICE):
            out = process(data[start : start + _BROTLI_SLICE])
            if out:
                yield out


class _Zstd:
    """A zstd body is one or more frames (RFC 8878); a decompressobj reads only one frame."""

    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def __call__(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), _ZSTD_SLICE):
            part = data[start : start + _ZSTD_SLICE]
            while part:
                if self._d.eof:
                    self._d = zstandard.ZstdDecompressor().decompressobj()
                out = self._d.decompress(part)
                part = self._d.unused_data if self._d.eof else b""
                if out:
                    yield out


_FACTORIES: dict[str, Callable[[], Callable[[bytes], Iterator[bytes]]]] = {
    "gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS),
    "br": _Brotli,
    "zstd": _Zstd,
}


class Decoder:
    """Undoes a body's codings, fed its pieces in order; at most `limit` bytes in all (None: no
    limit), in pieces of at most `PIECE_BYTES`. Past the limit `exceeded` is set and every later
    piece is ignored: nothing more is decompressed."""

    def __init__(self, steps: list[Callable[[bytes], Iterator[bytes]]], limit: int | None) -> None:
        self._steps = steps
        self.limit = limit
        self.produced = 0
        self.exceeded = False

    def pieces(self, data: bytes) -> Iterator[bytes]:
        if self.exceeded or not data:
            return
        steps = self._steps
        for piece in steps[0](data) if len(steps) == 1 else self._through(data, 0):
            if self.limit is not None and self.produced + len(piece) > self.limit:
                piece = piece[: self.limit - self.produced]
                self.exceeded = True
            self.produced += len(piece)
            if len(piece) <= PIECE_BYTES:
                yield piece
            else:
                for start in range(0, len(piece), PIECE_BYTES):
                    yield piece[start : start + PIECE_BYTES]
            if self.exceeded:
                return  # the generators below are dropped: no more is decompressed

    @property
    def compressed(self) -> bool:
        return bool(self._steps)

    def __call__(self, data: bytes) -> bytes:
        """The plain bytes of one piece at once (its pieces joined)."""
        return b"".join(self.pieces(data))

    def _through(self, data: bytes, i: int) -> Iterator[bytes]:
        if i == len(self._steps):
            yield data
            return
        for out in self._steps[i](data):
            yield from self._through(out, i + 1)


def incremental_decoder(content_encoding: str | None, limit: int | None = None) -> Decoder:
    """A decoder to call on each piece, in order; codings listed first were applied first."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    steps = []
    for coding in reversed(codings):
        factory = _FACTORIES.get(coding)
        if factory is None:
            raise UnsupportedEncoding(coding)
        steps.append(factory())
    return Decoder(steps, limit)


class Decoded:
    """A whole body decoded: `data`, or None with `problem` saying why it was not; `too_large`
    when that is its size (any other problem: its coding cannot be undone)."""

    __slots__ = ("data", "problem", "too_large")

    def __init__(self, data: bytes | None, problem: str | None = None, too_large: bool = False) -> None:
        self.data = data
        self.problem = problem
        self.too_large = too_large


def decode_whole(body: bytes, content_encoding: str | None, limit: int) -> Decoded:
    """A whole body without its codings, if that is at most `limit` bytes."""
    try:
        decoder = incremental_decoder(content_encoding, limit)
        data = b"".join(decoder.pieces(body))
    except UnsupportedEncoding as exc:
        return Decoded(None, f"its Content-Encoding {exc.args[0]} cannot be undone")
    except (zlib.error, brotli.error, zstandard.ZstdError):
        return Decoded(None, f"it is not valid {content_encoding}")
    if decoder.exceeded:
        once = " once decompressed" if decoder.compressed else ""
        return Decoded(None, f"it is larger than {_size(limit)}{once}", too_large=True)
    return Decoded(data)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
