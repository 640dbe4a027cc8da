"""Takes the usage-only event out of an OpenAI-style SSE stream, every other byte left as it was.

Where the proxy asked the upstream for usage the client did not ask for (`addon.stream_usage`),
the upstream adds one last event before `data: [DONE]`: `{"choices": [], "usage": {…}}`. A
client that reads `chunk.choices[0]` of every chunk would fail on it, so it is removed on its way
to the client. Fed the stream in pieces of any size (network reads bear no relation to events), it
holds the bytes of the event being read until its blank line, then passes the event on whole, or
drops it. Line endings may be `\\n`, `\\r\\n` or `\\r`; a `\\r` at the end of a piece waits for the
next piece, which may begin with its `\\n`.
"""

from __future__ import annotations

import json
import re

# An event longer than this cannot be the usage-only one (a few hundred bytes): past it, it is
# passed on as it arrives instead of held whole.
HOLD_LIMIT = 64 << 10

_LINE_END = re.compile(rb"[\r\n]")
_EOL = re.compile(rb"\r\n|\r|\n")
# Looked for before an event is parsed at all: only an event with empty choices can be dropped.
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def is_usage_only(event: bytes) -> bool:
    """Whether the bytes of one SSE event (its lines and blank line) are an unnamed event whose
    data is a JSON object with `"choices": []` and a `usage` object."""
    if not _EMPTY_CHOICES.search(event):
        return False
    data: list[bytes] = []
    name = None
    for line in _EOL.split(event):
        field, _, value = line.partition(b":")
        value = value[1:] if value[:1] == b" " else value
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    if not data or name not in (None, b"message"):
        return False
    try:
        obj = json.loads(b"\n".join(data))
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


class UsageChunkFilter:
    """`feed(piece)` returns the bytes to pass on now (possibly none); `close()` what is left at
    the stream's end."""

    def __init__(self, hold_limit: int = HOLD_LIMIT) -> None:
        self.hold_limit = hold_limit
        self._held = bytearray()  # the event being read, from its first byte
        self._scan = 0  # where in `_held` the next line end is looked for
        self._line_empty = True  # the line being read has no byte yet
        self._passing = False  # the event being read grew past the limit: it goes on as it comes
        self._off = False  # `abandon` was called: everything passes

    def feed(self, piece: bytes) -> bytes:
        """Should it raise, `piece` is held already: `abandon` passes it on."""
        if self._off:
            return piece
        held = self._held
        held += piece
        out: list[bytes] = []
        start, pos, end_of_data = 0, self._scan, len(held)
        while True:
            m = _LINE_END.search(held, pos)
            if m is None:
                self._line_empty = self._line_empty and pos == end_of_data
                pos = end_of_data
                break
            i = m.start()
            if held[i] == 13 and i + 1 == end_of_data:  # perhaps the first half of \r\n: wait
                self._line_empty = self._line_empty and i == pos
                pos = i
                break
            blank = self._line_empty and i == pos
            pos = i + 2 if held[i] == 13 and held[i + 1] == 10 else i + 1
            self._line_empty = True
            if blank:  # the event ends with this line
                self._end_event(bytes(held[start:pos]), out)
                start = pos
        if start:
            del held[:start]
            pos -= start
        if not self._passing and len(held) > self.hold_limit:
            self._passing = True
        if self._passing and pos:
            out.append(bytes(held[:pos]))  # a long event: what is read of it goes on at once
            del held[:pos]
            pos = 0
        self._scan = pos
        return b"".join(out)

    def close(self) -> bytes:
        """The stream's end: an event without its blank line is passed on (or dropped) as well."""
        rest = bytes(self._held)
        self._held.clear()
        self._scan = 0
        if self._off or self._passing or not is_usage_only(rest):
            return rest
        return b""

    def abandon(self) -> bytes:
        """What is held (the piece a failed `feed` was given included), to be passed on: from now
        on every byte passes untouched."""
        self._off = True
        rest = bytes(self._held)
        self._held.clear()
        return rest

    def _end_event(self, event: bytes, out: list[bytes]) -> None:
        if self._passing:
            self._passing = False
            out.append(event)
        elif not is_usage_only(event):
            out.append(event)
