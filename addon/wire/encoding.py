"""Incremental `Content-Encoding` decoders for streamed bodies.

mitmproxy hands a stream callable the bytes as they are on the wire, still compressed; only
buffered bodies are decoded for us (`flow.response.content`). These decoders undo gzip, deflate,
br and zstd piece by piece so the stream parser sees plain bytes as soon as they arrive.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard


class UnsupportedEncoding(ValueError):
    """The response uses a content coding we cannot undo; the stream is passed through unparsed."""


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)
        # "deflate" is often sent raw, without the zlib header the RFC asks for. The header check
        # may fail only on a later piece (one byte at a time, on the second), so the input is kept
        # until the first output shows the header was right, to be replayed as raw deflate.
        self._replay: list[bytes] | None = [] if wbits == zlib.MAX_WBITS else None

    def __call__(self, data: bytes) -> bytes:
        if self._replay is None:
            return self._d.decompress(data)
        self._replay.append(data)
        try:
            out = self._d.decompress(data)
        except zlib.error:
            data, self._replay = b"".join(self._replay), None
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._d.decompress(data)
        if out:
            self._replay = None
        return out


def _brotli() -> Callable[[bytes], bytes]:
    return brotli.Decompressor().process


class _Zstd:
    """A zstd body is one or more frames (RFC 8878); a decompressobj reads only one frame."""

    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def __call__(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._d.eof:
                self._d = zstandard.ZstdDecompressor().decompressobj()
            out.append(self._d.decompress(data))
            data = self._d.unused_data if self._d.eof else b""
        return b"".join(out)


_FACTORIES: dict[str, Callable[[], Callable[[bytes], bytes]]] = {
    "gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS),
    "br": _brotli,
    "zstd": _Zstd,
}


def _identity(data: bytes) -> bytes:
    return data


def incremental_decoder(content_encoding: str | None) -> Callable[[bytes], bytes]:
    """A function to call on each piece, in order; codings listed first were applied first."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return _identity
    steps = []
    for coding in reversed(codings):
        factory = _FACTORIES.get(coding)
        if factory is None:
            raise UnsupportedEncoding(coding)
        steps.append(factory())
    if len(steps) == 1:
        return steps[0]

    def chain(data: bytes) -> bytes:
        for step in steps:
            data = step(data)
        return data

    return chain
