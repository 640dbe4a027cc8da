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
        self._raw_fallback = wbits == zlib.MAX_WBITS

    def __call__(self, data: bytes) -> bytes:
        try:
            return self._d.decompress(data)
        except zlib.error:
            # "deflate" is often sent raw, without the zlib header the RFC asks for.
            if not self._raw_fallback:
                raise
            self._raw_fallback = False
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._d.decompress(data)


def _brotli() -> Callable[[bytes], bytes]:
    return brotli.Decompressor().process


def _zstd() -> Callable[[bytes], bytes]:
    return zstandard.ZstdDecompressor().decompressobj().decompress


_FACTORIES: dict[str, Callable[[], Callable[[bytes], bytes]]] = {
    "gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS),
    "br": _brotli,
    "zstd": _zstd,
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
