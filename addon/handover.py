"""The outbox between the hooks and the metering: items wait here for a few milliseconds and go
over together, one frame per tick instead of one per hook.

It never makes traffic wait: while more than `BACKLOG_LIMIT` bytes wait for the metering (it is
stopped, starved of CPU, or slower than a flood of bytes), the calls that would add to them are
not handed over and are counted as dropped (`METERING_BEHIND`), and traffic flows on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from storage.writer import METERING_BEHIND

from .backends import Metering
from .capture import Abandon, Lost, Message, Request, ResponseHead, SocketOpen, add_piece

log = logging.getLogger(__name__)

HAND_OVER_EVERY_S = 0.01
HAND_OVER_BYTES = 1 << 20  # or sooner, once stream pieces of this size wait
BACKLOG_LIMIT = 8 << 20  # bytes waiting for the metering before calls are dropped


class CallState(Enum):
    WAITING = "waiting"  # not handed over yet: it goes whole when it ends
    STREAMING = "streaming"  # opened in the metering; its pieces follow as they arrive
    DROPPED = "dropped"  # no longer handed over (counted as dropped)


@dataclass(slots=True)
class Capture:
    """A possible LLM call in flight, as the hooks know it."""

    cid: int
    request: Request  # its body is filled in when the call is handed over (it arrives after the headers)
    state: CallState = CallState.WAITING
    head: ResponseHead | None = None


@dataclass(slots=True)
class Socket:
    """A WebSocket that may carry LLM calls, as the hooks know it."""

    opening: SocketOpen  # what opens it in the metering (again, under a new id, after it was dropped)
    state: CallState = CallState.DROPPED

    @property
    def cid(self) -> int:
        return self.opening.cid


class Handover:
    def __init__(self, metering: Metering) -> None:
        self.metering = metering
        self._items: list[Any] = []  # the same list for the whole run: stream callables append to it
        self._piece_bytes = 0
        self._finals = 0  # calls the waiting items complete
        self._scheduled = False
        self.behind = False  # BACKLOG_LIMIT waits for the metering: calls are dropped
        self._lost: dict[str, int] = {}  # calls counted as dropped, not yet told to the metering

    def put(self, message: Message, final: bool = False, size: int = 0) -> None:
        """`size`: the bytes it carries (a WebSocket message's), which count as a stream's pieces do."""
        self._items.append(message)
        self._finals += final
        self._piece_bytes += size
        if not self._scheduled:
            self._schedule()
        elif size and self._piece_bytes > HAND_OVER_BYTES:
            self.flush()

    def count_lost(self, n: int, reason: str) -> None:
        """Calls that will never be handed over: the metering is told to count them."""
        self._lost[reason] = self._lost.get(reason, 0) + n
        if not self._scheduled:
            self._schedule()

    def drop(self, capture: Capture | Socket, reason: str = METERING_BEHIND) -> None:
        """Stops handing over a call: the metering forgets what it had of it and counts it."""
        if capture.state is CallState.STREAMING:
            self.put(Abandon(capture.cid, reason), final=True)
        elif capture.state is CallState.WAITING:
            self.count_lost(1, reason)
        capture.state = CallState.DROPPED

    def discard(self) -> int:
        """Forgets what waits (the metering it was for is gone); how many calls it completed."""
        finals = self._finals
        self._items.clear()
        self._piece_bytes = self._finals = 0
        return finals

    def stream_callable(self, capture: Capture, on_error: Callable[[str, Exception], None]) -> Callable[[bytes], bytes]:
        items, cid, now = self._items, capture.cid, time.perf_counter

        def on_chunk(data: bytes) -> bytes:
            # Runs for every network read of the response: must return `data` unchanged, always.
            try:
                if capture.state is CallState.STREAMING:
                    if self.behind:
                        self.drop(capture)
                        return data
                    add_piece(items, cid, now(), data)
                    self._piece_bytes += len(data)
                    if not self._scheduled:
                        self._schedule()
                    elif self._piece_bytes > HAND_OVER_BYTES:  # a fast stream: not 10 ms of it in memory
                        self.flush()
            except Exception as exc:
                on_error("stream", exc)
            return data

        return on_chunk

    def _schedule(self) -> None:
        try:
            asyncio.get_running_loop().call_later(HAND_OVER_EVERY_S, self.flush)
            self._scheduled = True
        except RuntimeError:  # no event loop (hooks called by hand): nothing would come back later
            self.flush()

    def flush(self, *, closing: bool = False) -> None:
        """Hands over what waits; counts of calls dropped wait while the metering is behind,
        unless this is the last hand-over."""
        self._scheduled = False  # a timer still pending finds nothing, or the next batch
        if self._lost and (closing or not self.behind):
            self._items.extend(Lost(n, reason) for reason, n in self._lost.items())
            self._lost.clear()
        if self._items:
            items = self._items[:]
            self._items.clear()  # the same list: stream callables hold it
            finals, self._piece_bytes, self._finals = self._finals, 0, 0
            self.metering.send(items, finals)
        behind = self.metering.backlog > BACKLOG_LIMIT
        if behind and not self.behind:
            log.warning("llm-metrics: the metering is %d MB behind the traffic: calls are not recorded (counted "
                        "as %s) until it catches up", BACKLOG_LIMIT >> 20, METERING_BEHIND)
        self.behind = behind
        if (behind or self._lost) and not self._scheduled:  # look again soon, traffic or not
            try:
                asyncio.get_running_loop().call_later(HAND_OVER_EVERY_S, self.flush)
                self._scheduled = True
            except RuntimeError:
                pass
