"""Incremental AWS event-stream framing (`application/vnd.amazon.eventstream`, AWS Bedrock).

A binary, length-prefixed format, never split on lines (payloads may hold any byte):

    frame   := total_len:u32 | headers_len:u32 | prelude_crc:u32 | headers | payload | message_crc:u32
    header  := name_len:u8 | name | value_type:u8 | value

Both CRC32s are checked: a frame that fails either, or a length that cannot be right, stops the
decoder (the rest of the body cannot be framed again) and is reported through `corrupt`. A frame
within the format's 16 MiB but longer than the decoder's `limit` is skipped unread (its length
says where the next one starts) and counted in `oversized`.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from . import MAX_EVENT_BYTES

_PRELUDE = struct.Struct(">III")
_MIN_FRAME = 16  # prelude + message CRC, no headers, no payload
_MAX_FRAME = 16 * 1024 * 1024  # the format's own limit: a longer length is corruption
# value_type -> fixed value size in bytes (bool true/false carry none); 6 and 7 are u16-prefixed.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class Frame(NamedTuple):
    headers: dict[str, object]
    payload: bytes


class EventStreamDecoder:
    """Turns a byte stream into `Frame`s, fed pieces of any size."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = min(limit, _MAX_FRAME)
        self._buf = bytearray()
        self._skip = 0  # bytes still to drop of a frame past the limit
        self.corrupt: str | None = None  # why framing stopped, if it did
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[Frame]:
        if self.corrupt is not None:
            return []
        if self._skip:
            if len(chunk) <= self._skip:
                self._skip -= len(chunk)
                return []
            chunk, self._skip = chunk[self._skip :], 0
        self._buf += chunk
        out: list[Frame] = []
        while len(self._buf) >= _PRELUDE.size:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(self._buf)
            if zlib.crc32(self._buf[:8]) != prelude_crc:
                return self._stop(out, "prelude CRC mismatch")
            if not _MIN_FRAME + headers_len <= total <= _MAX_FRAME:
                return self._stop(out, f"impossible frame length {total}")
            if total > self.limit:  # a frame of the format, too long to keep: skipped unread
                self.oversized += 1
                if len(self._buf) >= total:
                    del self._buf[:total]
                    continue
                self._skip = total - len(self._buf)
                self._buf.clear()
                break
            if len(self._buf) < total:
                break
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            if zlib.crc32(frame[:-4]) != struct.unpack(">I", frame[-4:])[0]:
                return self._stop(out, "message CRC mismatch")
            headers = _headers(frame[12 : 12 + headers_len])
            if headers is None:
                return self._stop(out, "malformed headers")
            out.append(Frame(headers, frame[12 + headers_len : -4]))
        return out

    def close(self) -> list[Frame]:
        if (self._buf or self._skip) and self.corrupt is None:
            self.corrupt = f"{len(self._buf) or self._skip} byte(s) of an unfinished frame at the end"
        self._buf.clear()
        self._skip = 0
        return []

    def _stop(self, out: list[Frame], why: str) -> list[Frame]:
        self.corrupt = why
        self._buf.clear()
        return out


def _headers(raw: bytes) -> dict[str, object] | None:
    headers: dict[str, object] = {}
    pos = 0
    try:
        while pos < len(raw):
            name_len = raw[pos]
            name = raw[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = raw[pos]
            pos += 1
            if kind in (6, 7):  # bytes, string
                size = struct.unpack_from(">H", raw, pos)[0]
                value = raw[pos + 2 : pos + 2 + size]
                headers[name] = value.decode("utf-8") if kind == 7 else value
                pos += 2 + size
            elif kind in _FIXED:
                headers[name] = kind == 0 if kind in (0, 1) else raw[pos : pos + _FIXED[kind]]
                pos += _FIXED[kind]
            else:
                return None
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return headers if pos == len(raw) else None
