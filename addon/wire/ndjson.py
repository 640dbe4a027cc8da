"""Incremental newline-delimited JSON framing (Ollama's native streams), fed pieces of any size."""

from __future__ import annotations


class NDJSONDecoder:
    """Splits a byte stream into complete lines; blank lines are skipped."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return []
        buf = b"".join(self._pending) + chunk if self._pending else chunk
        *lines, rest = buf.split(b"\n")
        self._pending = [rest] if rest else []
        return [line for line in lines if line.strip()]

    def close(self) -> list[bytes]:
        rest = b"".join(self._pending)
        self._pending = []
        return [rest] if rest.strip() else []
