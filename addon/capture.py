"""The hand-over protocol: what the addon's hooks tell the metering, and what the metering tells back.

Both sides import this module; it imports nothing of theirs. docs/architecture.md draws the path.

A batch is a flat list of items in the order the hooks made them. An item is one of the message
types below, except the pieces of streamed bodies: a piece is three bare items, `cid, t, data`
(a call id, a `time.perf_counter()` reading, the bytes as read from the wire; `b""` is the body's
end). No object per piece: a stream callable runs for every network read, and a tuple per read
made the garbage collector stop mitmproxy's loop every few hundred reads. `iter_batch` is the one
function that walks a batch; it yields pieces as `Piece`.

Times `t*` are `time.perf_counter()` readings of the hooks' process; `started_at` is wall-clock
epoch seconds. Nothing else of a flow crosses over: no header that could carry a key, no query.

Frames, on the pipes between the addon and a metering process: a 4-byte little-endian length,
then a pickled list of items.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any, NamedTuple


class Request(NamedTuple):
    """What the hooks keep of a request that may be an LLM call."""

    t_start: float  # when mitmproxy began reading it, on the perf_counter clock
    started_at: float  # the same moment, wall clock (the row's timestamp)
    host: str
    port: int
    path: str  # without its query (Gemini's ?key= is never kept)
    body: bytes | None  # as on the wire; None beyond the body limit: recognised by path alone
    content_encoding: str | None
    user_agent: str | None
    origin: str | None  # the origin tag header's value, if the client sent one
    # The values of addon.agents.AGENT_HEADERS (lower-case names): none can carry a credential.
    agent_headers: tuple[tuple[str, str], ...] = ()
    auth: str | None = None  # the kind of credential sent (addon.agents.auth_mode), never its value


class ResponseHead(NamedTuple):
    t_headers: float
    status: int
    content_type: str | None
    content_encoding: str | None
    quota_headers: tuple[tuple[str, str], ...] = ()  # the values of addon.quota.QUOTA_HEADERS


# -- from the hooks to the metering ------------------------------------------------------------


class Open(NamedTuple):
    """A call whose response is passed on as it arrives (`streamed`: pieces follow); or, at
    shutdown, one still waiting for its response (`streamed` False, `head` maybe None)."""

    cid: int
    request: Request
    head: ResponseHead | None
    streamed: bool


class End(NamedTuple):
    """The response hook of an opened call."""

    cid: int
    t: float
    status: int


class Whole(NamedTuple):
    """A call with a buffered response, complete."""

    cid: int
    request: Request
    head: ResponseHead
    t: float
    status: int
    body: bytes


class Fail(NamedTuple):
    """The error hook; `request` and `head` are None when the call was opened before."""

    cid: int
    request: Request | None
    head: ResponseHead | None
    t: float
    message: str
    had_response: bool
    status: int | None


class Abandon(NamedTuple):
    """The hooks stopped handing over an opened call's pieces (or a socket's messages): it (the
    responses open on the socket) is counted as dropped."""

    cid: int
    reason: str


class Lost(NamedTuple):
    """Calls the hooks could not hand over at all, to be counted as dropped."""

    n: int
    reason: str


class Config(NamedTuple):
    """Option values that changed while running: `extra_hosts`, `log_calls`, `request_body_limit`."""

    settings: dict[str, Any]


class Shutdown(NamedTuple):
    """The proxy stops: every call still open ends now."""

    t: float


class SocketOpen(NamedTuple):
    """`websocket_start` of a WebSocket on a path where LLM APIs take them: its messages follow,
    each response on it a call (`addon.formats.websocket`). Sent again, under a new id, when the
    hooks take up a socket they had stopped handing over."""

    cid: int
    request: Request  # of the upgrade, without a body
    model: str | None  # its query's `model` (the Realtime API is named there), the only part of a query kept
    head: ResponseHead | None = None  # of the upgrade's answer (101): its headroom headers


class SocketMessage(NamedTuple):
    """`websocket_message`: one text message, whole, as it passed the proxy at `t`."""

    cid: int
    t: float
    from_client: bool
    data: bytes | None  # None past its limit (a client's: the request body limit; a server's: MAX_EVENT_BYTES)
    size: int


class SocketClose(NamedTuple):
    """`websocket_end`: a response still open on the socket ends unfinished."""

    cid: int
    t: float
    code: int | None  # the close code (1006: the connection ended without a close frame)
    by_client: bool


class Piece(NamedTuple):
    """One piece of a streamed body, as `iter_batch` yields it (in a batch: three bare items)."""

    cid: int
    t: float
    data: bytes


Message = Open | End | Whole | Fail | Abandon | Lost | Config | Shutdown | SocketOpen | SocketMessage | SocketClose


def add_piece(items: list[Any], cid: int, t: float, data: bytes) -> None:
    """Appends a piece as three bare items (the module's docstring says why)."""
    items.append(cid)
    items.append(t)
    items.append(data)


def iter_batch(items: list[Any]) -> Iterator[Message | Piece]:
    """Every message and piece of a batch, in order."""
    i, n = 0, len(items)
    while i < n:
        item = items[i]
        if type(item) is int:  # a piece's call id: a message is never a bare int
            yield Piece(item, items[i + 1], items[i + 2])
            i += 3
        else:
            yield item
            i += 1


# -- the first frame to a metering process, and what it sends back --------------------------------


class Start(NamedTuple):
    """The first frame's only item: what the metering process starts its engine with."""

    settings: dict[str, Any]


class LogRecord(NamedTuple):
    """A log record of the metering process, logged by mitmproxy as the addon's own."""

    level: int
    name: str
    text: str


class Progress(NamedTuple):
    """Calls handed over whose fate is sealed: stored, counted as dropped, or not LLM calls."""

    settled: int


# -- frames --------------------------------------------------------------------------------------

_HEADER = 4


def frame(items: list[Any]) -> bytes:
    """One frame: the pickled list's length (4 bytes, little-endian), then it."""
    payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(_HEADER, "little") + payload


def add_frame(buf: bytearray, items: list[Any]) -> None:
    """Appends one frame to `buf`."""
    buf += frame(items)


class FrameReader:
    """Frames from a byte stream read in pieces of any size."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        buf = self._buf
        buf.extend(data)
        start = 0
        while len(buf) - start >= _HEADER:
            size = int.from_bytes(buf[start : start + _HEADER], "little")
            end = start + _HEADER + size
            if len(buf) < end:
                break
            yield pickle.loads(memoryview(buf)[start + _HEADER : end])
            start = end
        del buf[:start]
