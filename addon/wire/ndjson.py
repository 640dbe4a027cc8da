"""Incremental newline-delimited JSON framing (Ollama's native streams), fed pieces of any size."""

from __future__ import annotations

from . import MAX_EVENT_BYTES


class NDJSONDecoder:
    """Splits a byte stream into complete lines; blank lines are skipped. A line longer than
    `limit` bytes is dropped (counted in `oversized`): no more than `limit` of it is ever held."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self._pending: list[bytes] = []
        self._size = 0
        self._cut = False  # the unfinished line grew past the limit: the rest of it is dropped
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
                self._size += len(chunk)
                if self._size > self.limit:
                    self._pending, self._size, self._cut = [], 0, True
            return []
        buf = b"".join(self._pending) + chunk if self._pending else chunk
        *lines, rest = buf.split(b"\n")
        if self._cut:  # the first line is the end of the one past the limit
            self.oversized += 1
            self._cut = False
            lines = lines[1:]
        self._pending, self._size = ([rest], len(rest)) if rest else ([], 0)
        if self._size > self.limit:
            self._pending, self._size, self._cut = [], 0, True
        out = [line for line in lines if line.strip()]
        if len(buf) > self.limit:  # only a buffer this long can hold a line past the limit
            kept = [line for line in out if len(line) <= self.limit]
            self.oversized += len(out) - len(kept)
            out = kept
        return out

    def close(self) -> list[bytes]:
        if self._cut:
            self.oversized += 1
            self._cut = False
        rest = b"".join(self._pending)
        self._pending, self._size = [], 0
        return [rest] if rest.strip() else []
