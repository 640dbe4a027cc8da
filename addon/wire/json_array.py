"""Incremental framing of one JSON array written element by element (Gemini without `alt=sse`).

The body is `[{…}\\n,\\r\\n{…}\\n]`: one array whose elements arrive as the model produces them.
Each top-level element is emitted, as bytes, as soon as its closing brace arrives; the `[`, `,`,
whitespace and `]` between elements are skipped. A body that is a bare object (an error sent
instead of the array) comes out as one element. Scanning jumps from one structural byte to the
next with a regex, so long strings cost one search, not one Python step per byte.
"""

from __future__ import annotations

import re

from . import MAX_EVENT_BYTES

_STRUCTURAL = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')
_OPEN = frozenset(b"{[")


class JSONArrayDecoder:
    """Splits a streamed JSON array into its top-level elements, fed pieces of any size. An
    element longer than `limit` bytes is dropped (counted in `oversized`): it is scanned to its
    end, but no more than `limit` of it is ever held."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self._element: list[bytes] = []  # bytes of the element being read
        self._size = 0
        self._in_element = False
        self._too_long = False  # the element being read is past the limit: it is dropped at its end
        self._base: int | None = None  # 1 inside the outer array, 0 for a bare value
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the previous byte, at the end of a piece, was a backslash in a string
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, end = 0, len(chunk)
        start = 0 if self._in_element else None  # where the current element's bytes begin in chunk
        while pos < end:
            if self._in_string:
                pos = self._skip_string(chunk, pos)
                continue
            if self._base is None:
                pos = self._read_start(chunk, pos)
                continue
            m = _STRUCTURAL.search(chunk, pos)
            if m is None:
                break
            pos, byte = m.start(), chunk[m.start()]
            if byte == 34:  # "
                self._in_string = True
            elif byte in _OPEN:
                if self._depth == self._base:
                    start = pos
                    self._in_element = True
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == self._base and start is not None:
                    self._finish(chunk[start : pos + 1], out)
                    start = None
            pos += 1
        if start is not None:
            self._keep(chunk[start:])
        return out

    def close(self) -> list[bytes]:
        """End of body: an element left unfinished is returned as it is (it will not parse)."""
        rest = b"".join(self._element)
        if self._too_long:
            self.oversized += 1
        self._element, self._size, self._in_element, self._too_long = [], 0, False, False
        return [rest] if rest.strip() else []

    def _keep(self, part: bytes) -> None:
        if self._too_long:
            return
        self._element.append(part)
        self._size += len(part)
        if self._size > self.limit:
            self._element, self._size, self._too_long = [], 0, True

    def _finish(self, last: bytes, out: list[bytes]) -> None:
        if self._too_long or self._size + len(last) > self.limit:
            self.oversized += 1
        else:
            self._element.append(last)
            out.append(b"".join(self._element))
        self._element, self._size, self._in_element, self._too_long = [], 0, False, False

    def _skip_string(self, chunk: bytes, pos: int) -> int:
        if self._escaped:
            self._escaped = False
            return pos + 1
        m = _IN_STRING.search(chunk, pos)
        if m is None:
            return len(chunk)
        if chunk[m.start()] == 34:
            self._in_string = False
            return m.end()
        if m.end() == len(chunk):
            self._escaped = True  # the escaped byte is in the next piece
            return m.end()
        return m.end() + 1

    def _read_start(self, chunk: bytes, pos: int) -> int:
        """Skips leading whitespace; `[` opens the outer array, anything else is a bare value."""
        stripped = chunk[pos:].lstrip()
        if not stripped:
            return len(chunk)
        pos = len(chunk) - len(stripped)
        self._base = 1 if stripped[:1] == b"[" else 0
        if self._base:
            self._depth = 1
            return pos + 1
        return pos
