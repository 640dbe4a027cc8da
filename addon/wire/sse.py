"""Incremental Server-Sent Events framing (WHATWG rules), fed bytes in pieces of any size.

Works on bytes end to end: lines are split on the byte delimiters (which never occur inside a
multi-byte UTF-8 sequence) and `data` stays bytes, because `json.loads` takes bytes and decoding
each network read on its own would corrupt characters split across reads.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class Event(NamedTuple):
    """One dispatched SSE event: `event` is None when the stream named no type."""

    event: str | None
    data: bytes


class SSEDecoder:
    """Turns a byte stream into `Event`s; `stray` collects lines that are not SSE fields."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # bytes of an unfinished line
        self._started = False  # past a possible leading byte-order mark
        self._data: list[bytes] = []
        self._event: str | None = None
        self.comments = 0
        # Lines with no `field:` shape. Gemini appends a bare JSON error object this way;
        # a format handler may look at them, an SSE parser proper would drop them.
        self.stray: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._started and b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)  # mid-line: avoid re-joining a growing buffer
            return []
        buf = b"".join(self._pending) + chunk if self._pending else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._pending = [buf]  # could still be the start of a byte-order mark
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]  # WHATWG: one leading BOM is not part of the first line
        out: list[Event] = []
        if b"\r" not in buf:
            # Nearly every server ends lines with \n alone: split without the regular expression,
            # and take `data: ` lines, most of any stream, without the general field parsing.
            lines = buf.split(b"\n")
            rest = lines.pop()
            data = self._data
            for line in lines:
                if line[:6] == b"data: ":
                    data.append(line[6:])
                else:
                    self._line(line, out)
            self._pending = [rest] if rest else []
            return out
        pos = 0
        end = len(buf)
        for m in _EOL.finditer(buf):
            if m.end() == end and buf[m.start()] == 13 and m.end() - m.start() == 1:
                break  # a trailing lone \r may be the first half of \r\n: wait for more
            self._line(buf[pos : m.start()], out)
            pos = m.end()
        self._pending = [buf[pos:]] if pos < end else []
        return out

    def close(self) -> list[Event]:
        """End of stream: an unterminated last line and event are processed, not dropped."""
        # The pending bytes may hold a lone \r that was waiting for a \n, with more text after it:
        # ending them with \n splits them exactly as `feed` would (a trailing \r\n is one ending).
        out = self.feed(b"\n") if self._pending else []
        self._dispatch(out)
        return out

    def _line(self, line: bytes, out: list[Event]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == 58:  # ":" comment
            self.comments += 1
            return
        name, sep, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name in (b"id", b"retry"):
            pass
        elif not sep or name.strip()[:1] in (b"{", b"}", b"[", b"]", b'"'):
            self.stray.append(line)

    def _dispatch(self, out: list[Event]) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            out.append(Event(self._event, data))
        self._data.clear()  # in place: `feed` holds the list while it loops
        self._event = None
