"""Incremental Server-Sent Events framing (WHATWG rules), fed bytes in pieces of any size.

Works on bytes end to end: lines are split on the byte delimiters (which never occur inside a
multi-byte UTF-8 sequence) and `data` stays bytes, because `json.loads` takes bytes and decoding
each network read on its own would corrupt characters split across reads.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from . import MAX_EVENT_BYTES

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_MAX_STRAY = 64 << 10  # bytes of stray lines kept: a bare JSON error object is far shorter
# What Python holds for one data line besides its bytes (a bytes object and a list slot): an
# event of a million empty `data:` lines is a million objects, and counts as such.
_LINE_COST = 48


class Event(NamedTuple):
    """One dispatched SSE event: `event` is None when the stream named no type."""

    event: str | None
    data: bytes


class SSEDecoder:
    """Turns a byte stream into `Event`s; `stray` collects lines that are not SSE fields.

    An event any line of which is longer than `limit` bytes, or whose data lines take more than
    `limit` to hold, is not dispatched: it is counted in `oversized`, and never more than `limit`
    of it is held."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self._pending: list[bytes] = []  # bytes of an unfinished line
        self._pending_size = 0
        self._line_cut = False  # the unfinished line grew past `limit`: the rest of it is dropped
        self._started = False  # past a possible leading byte-order mark
        self._data: list[bytes] = []
        self._counted = 0  # entries of `_data` counted in `_data_size` (counted once per feed)
        self._data_size = 0
        self._too_long = False  # the event being read is past `limit`: it is dropped at its end
        self._event: str | None = None
        self.oversized = 0
        # Lines with no `field:` shape. Gemini appends a bare JSON error object this way;
        # a format handler may look at them, an SSE parser proper would drop them.
        self.stray: list[bytes] = []
        self._stray_size = 0

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._started and b"\n" not in chunk and b"\r" not in chunk:
            self._pending.append(chunk)  # mid-line: avoid re-joining a growing buffer
            self._pending_size += len(chunk)
            if self._pending_size > self.limit:
                self._cut_line()
            return []
        if self._pending:
            buf = b"".join(self._pending) + chunk
            self._pending, self._pending_size = [], 0
        else:
            buf = chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._keep(buf)  # could still be the start of a byte-order mark
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]  # WHATWG: one leading BOM is not part of the first line
        if self._line_cut:
            buf = self._end_cut_line(buf)
            if not buf:
                return []
        out: list[Event] = []
        if b"\r" not in buf and len(buf) <= self.limit:
            # Nearly every server ends lines with \n alone: split without the regular expression,
            # and take `data: ` lines, most of any stream, without the general field parsing. No
            # line of a buffer this short can be past the limit.
            lines = buf.split(b"\n")
            rest = lines.pop()
            data = self._data
            for line in lines:
                if line[:6] == b"data: ":
                    data.append(line[6:])
                else:
                    self._line(line, out)
            if rest:
                self._keep(rest)
            if data:  # an event goes on into the next piece
                self._count_data()
            return out
        pos = 0
        end = len(buf)
        for m in _EOL.finditer(buf):
            if m.end() == end and buf[m.start()] == 13 and m.end() - m.start() == 1:
                break  # a trailing lone \r may be the first half of \r\n: wait for more
            self._line(buf[pos : m.start()], out)
            pos = m.end()
        self._keep(buf[pos:])
        self._count_data()
        return out

    def close(self) -> list[Event]:
        """End of stream: an unterminated last line and event are processed, not dropped."""
        if self._line_cut and not self._pending:  # the stream ended inside a line past the limit
            self._line_cut, self._too_long = False, True
        # The pending bytes may hold a lone \r that was waiting for a \n, with more text after it:
        # ending them with \n splits them exactly as `feed` would (a trailing \r\n is one ending).
        out = self.feed(b"\n") if self._pending else []
        self._dispatch(out)
        return out

    def _line(self, line: bytes, out: list[Event]) -> None:
        if not line:
            self._dispatch(out)
            return
        if len(line) > self.limit:
            self._too_long = True
            return
        if line[0] == 58:  # ":" comment
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
            if self._stray_size + len(line) <= _MAX_STRAY:
                self.stray.append(line)
                self._stray_size += len(line)

    def _dispatch(self, out: list[Event]) -> None:
        data = self._data
        if self._too_long:
            self.oversized += 1
        elif len(data) == 1 and not self._data_size:  # the usual event: one line, within the limit
            out.append(Event(self._event, data[0]))
        elif data:
            if self._data_size + self._uncounted() > self.limit:
                self.oversized += 1
            else:
                out.append(Event(self._event, b"\n".join(data)))
        self._data.clear()  # in place: `feed` holds the list while it loops
        self._counted = self._data_size = 0
        self._too_long = False
        self._event = None

    def _keep(self, rest: bytes) -> None:
        """The unfinished line after a feed."""
        self._pending, self._pending_size = ([rest], len(rest)) if rest else ([], 0)
        if self._pending_size > self.limit:
            self._cut_line()

    def _cut_line(self) -> None:
        self._pending, self._pending_size = [], 0
        self._line_cut = True

    def _end_cut_line(self, buf: bytes) -> bytes:
        """Drops the rest of a line past the limit, up to its end; what follows it."""
        m = _EOL.search(buf)
        if m is None:  # cannot be: a buffer is joined only when its piece has an end of line
            return b""
        if m.end() == len(buf) and buf[m.start()] == 13 and m.end() - m.start() == 1:
            self._keep(b"\r")  # a lone \r at the end: wait for a possible \n
            return b""
        self._line_cut = False
        self._too_long = True  # the event the line was part of is dropped
        return buf[m.end() :]

    def _uncounted(self) -> int:
        data = self._data
        return sum(map(len, data[self._counted :])) + _LINE_COST * (len(data) - self._counted)

    def _count_data(self) -> None:
        """The data held for the event being read, counted once per feed (each line as its bytes
        and `_LINE_COST`); past the limit it is let go."""
        self._data_size += self._uncounted()
        self._counted = len(self._data)
        if self._data_size > self.limit:
            self._data.clear()
            self._counted = self._data_size = 0
            self._too_long = True
