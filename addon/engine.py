"""Turns what the addon's hooks captured into rows: recognising the call, metering its response,
building the row, handing it to the storage writer, the per-call lines and the exit summary.

The hooks (`addon.llm_metrics`) only stamp times and keep references to bytes; everything here
runs in the metering process (`addon.worker`), off mitmproxy's event loop, or on that loop when
metering runs in-process. Either way it receives the same list of items, in the order the hooks
made them: messages, as tuples whose first item says what they are, and between them the pieces
of streamed bodies, each as three bare items (no tuple: a stream callable then allocates nothing
the garbage collector tracks, which made every hundredth hook wait ~0.3 ms for a collection):

    cid, t, data                              one piece of a streamed body, as on the wire;
                                              b"" is the body's end
    (OPEN, cid, request, headers, streamed)   a call whose response is passed on as it arrives
                                              (`streamed`: pieces follow), or, at shutdown, one
                                              still waiting for its response
    (END, cid, t, status)                     the response hook of an OPENed call
    (WHOLE, cid, request, headers, t, status, body)   a buffered call, complete
    (FAIL, cid, request, headers, t, message, had_response, status)   the error hook; `request`
                                              and `headers` are None when the call was OPENed
    (SHUTDOWN, t)                             the proxy stops: every call still open ends
    (CONFIG, settings)                        option values (extra hosts, per-call lines)
    (LOST, n, reason)                         calls the hooks could not hand over, to be counted

`request` is (t_start, started_at, host, port, path, body, content_encoding, user_agent, origin)
with the body as on the wire and the path without its query; `headers` is (t_headers, status,
content_type, content_encoding) or None before the response headers arrived. Times `t*` are
`time.perf_counter()` readings of the hooks' process; `started_at` is wall-clock epoch seconds.
Nothing else of the flow crosses over: no header that could carry a key, no query string.

A metering failure is logged once per kind and counted; the call is still recorded with what
could be read.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from migrations import upgrade
from storage import RowWriter, enable_wal, open_database

from . import pricing
from .formats import ResponseFacts, recognise, recognise_by_shape
from .metering import StreamMeter, meter_body, stream_framing
from .record import Call, build_row, origin_from_user_agent, provider_for
from .run_summary import RunTotals
from .summary import format_call_line
from .transport import classify_flow_error
from .wire.encoding import incremental_decoder

log = logging.getLogger(__name__)

OPEN, END, WHOLE, FAIL, SHUTDOWN, CONFIG, LOST = range(7)

CALL_LINES_EVERY_S = 0.1
_MAX_UNPARSED_PATHS = 100
# A response the hooks passed on as a stream that turns out not to be one of its format's
# streams is metered whole at its end: this much of it is kept for that.
_MAX_BUFFERED_STREAM = 64 * 1024 * 1024


class Engine:
    """Messages in, rows out (to `writer.submit`)."""

    lines_every = CALL_LINES_EVERY_S

    def __init__(self, writer: Any, *, location: str | None = None, extra_hosts: dict[str, str] | None = None,
                 log_calls: bool = True) -> None:
        self.writer = writer
        self.location = location
        self.extra_hosts = extra_hosts or {}
        self.log_calls = log_calls
        self.calls: dict[int, Call] = {}
        self.ignored: set[int] = set()  # calls that turned out not to be LLM calls: their pieces are dropped
        self.recorded = 0
        self.ended = 0  # calls handed over that are settled: recorded, or found not to be LLM calls
        self.run_totals = RunTotals()  # for the summary printed at exit
        self.run_part: str | None = None  # what part of the run it covers, when not all of it
        self.unparsed: dict[str, int] = {}  # LLM-looking requests we could not read, by path
        self.metering_errors = 0
        self._logged_errors: set[str] = set()
        self.call_lines: list[str] = []  # per-call lines waiting for the next flush
        self.lines_since: float | None = None  # monotonic time of the oldest waiting line
        self._handlers = {OPEN: self._open, END: self._end, WHOLE: self._whole,
                          FAIL: self._fail, SHUTDOWN: self._shutdown, CONFIG: self._config, LOST: self._lost}

    def handle(self, message: tuple) -> None:
        try:
            self._handlers[message[0]](*message[1:])
        except Exception as exc:  # one bad message must not stop the ones after it
            self._metering_error("message", exc)

    def handle_all(self, items: list) -> None:
        """Messages and pieces, as the hooks made them (the module's docstring)."""
        i, n = 0, len(items)
        while i < n:
            item = items[i]
            if type(item) is tuple:
                self.handle(item)
                i += 1
            else:
                self._piece(item, items[i + 1], items[i + 2])
                i += 3

    # -- messages ------------------------------------------------------------------------

    def _open(self, cid: int, request: tuple, headers: tuple | None, streamed: bool) -> None:
        call = self._recognise(request)
        if call is None:
            if streamed:
                self.ignored.add(cid)  # its pieces and end are dropped as they come
            else:
                self.ended += 1
            return
        self.calls[cid] = call
        if headers is not None:
            self._headers(call, headers, streamed)

    def _piece(self, cid: int, t: float, data: bytes) -> None:
        call = self.calls.get(cid)
        if call is None or call.metering_failed:
            return
        meter = call.meter
        if meter is None:  # passed on as a stream, metered whole at the end
            if call.buffered is not None and len(call.buffered) < _MAX_BUFFERED_STREAM:
                call.buffered.extend(data)
            return
        try:
            if meter.feed(data) if data else meter.close():
                call.stamp_token(t)
            if call.t_end_marker is None and meter.facts.terminated:
                call.t_end_marker = t  # this piece went on to the client then
        except Exception as exc:
            call.metering_failed = True
            self._metering_error("stream", exc)

    def _end(self, cid: int, t: float, status: int | None) -> None:
        if cid in self.ignored:
            self.ignored.discard(cid)
            self.ended += 1
            return
        call = self.calls.pop(cid, None)
        if call is None:
            return
        try:
            if call.meter is not None:
                if call.meter.close():
                    call.stamp_token(t)
                facts = call.meter.facts
            elif call.buffered is not None:
                facts = self._meter_whole(call, status, bytes(call.buffered))
            else:
                facts = None  # its stream could not be metered (an encoding we cannot undo)
            error = _stream_incomplete(call) if call.meter is not None else None
            self._finish(call, facts, status, t, error=error)
        except Exception as exc:
            self._metering_error("response", exc)
            self._finish_anyway(call, status, t)

    def _whole(self, cid: int, request: tuple, headers: tuple, t: float, status: int, body: bytes) -> None:
        call = self._recognise(request)
        if call is None:
            self.ended += 1
            return
        try:
            self._headers(call, headers, False)
            facts = self._meter_whole(call, status, body)
            self._finish(call, facts, status, t)
        except Exception as exc:
            self._metering_error("response", exc)
            self._finish_anyway(call, status, t)

    def _fail(self, cid: int, request: tuple | None, headers: tuple | None, t: float, message: str,
              had_response: bool, status: int | None) -> None:
        if request is not None:
            call = self._recognise(request)
            if call is None:
                self.ended += 1
                return
            if headers is not None:
                self._headers(call, headers, False)
        else:
            if cid in self.ignored:
                self.ignored.discard(cid)
                self.ended += 1
                return
            call = self.calls.pop(cid, None)
            if call is None:
                return
        try:
            if self._finish_delivered(call):
                return
            if call.meter is not None and call.meter.close():
                call.stamp_token(t)
            error = classify_flow_error(message, had_response)
            self._finish(call, call.meter.facts if call.meter else None, status, t, error=error)
        except Exception as exc:
            self._metering_error("error", exc)
            self._finish_anyway(call, status, t)

    def _shutdown(self, t: float) -> None:
        """The proxy stopped: a call still open is complete if its stream was, else cut short."""
        calls, self.calls = list(self.calls.values()), {}
        self.ended += len(self.ignored)
        self.ignored.clear()
        for call in calls:
            try:
                if self._finish_delivered(call):
                    continue
                self._finish(call, call.meter.facts if call.meter else None, call.status_code, t,
                             error=("proxy_shutdown", "the proxy stopped before the call completed"))
            except Exception as exc:
                self._metering_error("done", exc)
                self._finish_anyway(call, call.status_code, t)

    def _config(self, settings: dict[str, Any]) -> None:
        if "extra_hosts" in settings:
            self.extra_hosts = settings["extra_hosts"]
        if "log_calls" in settings:
            self.log_calls = settings["log_calls"]
        if "run_part" in settings:
            self.run_part = settings["run_part"]

    def _lost(self, n: int, reason: str) -> None:
        if self.writer is not None:
            self.writer.count_dropped(n, reason)

    # -- the call ------------------------------------------------------------------------

    def _recognise(self, request: tuple) -> Call | None:
        t_start, started_at, host, port, path, body, encoding, user_agent, origin = request
        try:
            parsed = json.loads(_decoded(body, encoding) or b"")
        except ValueError:
            parsed = None
        fmt = None
        extra = host in self.extra_hosts
        if isinstance(parsed, dict):
            fmt = recognise(path, parsed) or (recognise_by_shape(parsed) if extra else None)
        if fmt is None:
            self._count_unparsed(path)
            return None
        return Call(
            fmt=fmt,
            started_at=started_at,
            t_start=t_start,
            host=host,
            port=port,
            path=path,
            provider=provider_for(host, port, self.extra_hosts),
            origin=origin or origin_from_user_agent(user_agent),
            request=fmt.request_fields(path, parsed),
        )

    def _headers(self, call: Call, headers: tuple, streamed: bool) -> None:
        call.t_headers, call.status_code, call.content_type, call.content_encoding = headers
        if not streamed:
            return
        framing = stream_framing(call.fmt, call.content_type, status=call.status_code,
                                 requested_stream=bool(call.request.get("is_streaming")))
        if framing is None:
            call.buffered = bytearray()  # not one of this format's streams: metered whole at its end
            return
        call.streamed = True
        try:
            call.meter = StreamMeter(call.fmt, call.content_type, call.content_encoding, framing)
        except Exception as exc:  # an encoding we cannot undo: recorded without what the body says
            self._metering_error("responseheaders", exc)
            call.metering_failed = True

    def _meter_whole(self, call: Call, status: int | None, body: bytes) -> ResponseFacts:
        """A whole body, still as on the wire."""
        return meter_body(call.fmt, status or 0, call.content_type, _decoded(body, call.content_encoding))

    def _finish_delivered(self, call: Call) -> bool:
        """A stream whose end marker already went on to the client is complete, whatever then
        happens to its connections before the body's end arrives (the proxy stopping closes
        them): it is recorded as the response hook would have. False for any other call."""
        if call.t_end_marker is None or call.metering_failed:
            return False
        if call.meter.close():
            call.stamp_token(call.t_end_marker)
        self._finish(call, call.meter.facts, call.status_code, call.t_end_marker, error=_stream_incomplete(call))
        return True

    def _finish(self, call: Call, facts, status: int | None, t_end: float, *, error=None) -> None:
        error_type, error_message = error if error else (None, None)
        row = build_row(call, facts or ResponseFacts(), status_code=status, t_end=t_end,
                        error_type=error_type, error_message=error_message)
        self.recorded += 1
        self.ended += 1
        self.run_totals.add(row)
        if self.writer is not None:
            self.writer.submit(row)
        if self.log_calls:
            self.call_lines.append(format_call_line(row))
            if self.lines_since is None:
                self.lines_since = time.monotonic()

    def _finish_anyway(self, call: Call, status: int | None, t: float) -> None:
        """After a metering failure: the call is still recorded, with what its request said."""
        try:
            self._finish(call, None, status, t)
        except Exception as exc:
            self.ended += 1
            self._metering_error("row", exc)

    # -- lines and counts ----------------------------------------------------------------

    def settled(self) -> int:
        """Calls handed over whose fate is sealed: stored, counted as dropped, or not LLM calls."""
        return self.ended - (self.writer.unsettled if self.writer is not None else 0)

    def flush_lines(self) -> None:
        """Per-call lines go out together: each log record costs mitmproxy's loop about 0.3 ms
        (it is handed to every addon)."""
        lines, self.call_lines, self.lines_since = self.call_lines, [], None
        if lines:
            log.info("\n".join(lines))

    def close(self) -> None:
        """The end of the run: rows written (or counted), then the summary."""
        self._shutdown(time.perf_counter())
        self.flush_lines()
        if self.writer is not None:
            self.writer.close()
            log.info("llm-metrics: %d call(s) recorded in %s, %d row(s) dropped (%d counted in dropped_rows)",
                     self.writer.written, self.location, self.writer.dropped, self.writer.drops_recorded)
        for line in self.run_totals.lines(self.unparsed, self.run_part):
            log.info(line)

    def _count_unparsed(self, path: str) -> None:
        """Named in the exit summary so a user can report them; bounded in distinct paths."""
        if path in self.unparsed or len(self.unparsed) < _MAX_UNPARSED_PATHS:
            self.unparsed[path] = self.unparsed.get(path, 0) + 1
        else:
            self.unparsed["(other paths)"] = self.unparsed.get("(other paths)", 0) + 1

    def _metering_error(self, where: str, exc: Exception) -> None:
        self.metering_errors += 1
        key = f"{where}:{type(exc).__name__}"
        if key not in self._logged_errors:
            self._logged_errors.add(key)
            log.warning("llm-metrics: metering failed in %s (traffic unaffected): %r", where, exc)


def prepare_store(location: str, keep_backups: int):
    """Opens the database and brings its schema up to date (a verified backup first), before
    any traffic; WAL is switched on only after, so a refused upgrade changes nothing."""
    db = open_database(location, wal=False)
    migrated = upgrade(db, keep_backups=keep_backups)
    enable_wal(db)
    return db, migrated


def start_engine(*, location: str, keep_backups: int, queue_size: int, extra_hosts: dict[str, str],
                 log_calls: bool, db=None) -> Engine:
    """An engine with its own started writer; `db` when the caller has just prepared the store."""
    # A root logger at DEBUG (mitmdump's) would have peewee format every query's SQL and
    # parameters into a log record (~27 us a row, bench/profile_addon.py).
    logging.getLogger("peewee").setLevel(logging.INFO)
    warm()
    if db is None:
        db = prepare_store(location, keep_backups)[0]
    writer = RowWriter(db, queue_size=queue_size, reopen=lambda: prepare_store(location, keep_backups)[0])
    writer.start()
    return Engine(writer, location=location, extra_hosts=extra_hosts, log_calls=log_calls)


def warm() -> None:
    """Reads the bundled price data now: on the first call it would stall the metering."""
    try:
        pricing.warm()
    except Exception as exc:  # no prices means NULL costs, never a proxy that cannot start
        log.warning("llm-metrics: price data unavailable, cost_usd will be NULL: %r", exc)


def _decoded(body: bytes, content_encoding: str | None) -> bytes:
    """A whole body without its Content-Encoding; as it is when that cannot be undone (as
    mitmproxy's `get_content(strict=False)`)."""
    if not body or not content_encoding:
        return body
    try:
        decode = incremental_decoder(content_encoding)
        return decode(body)
    except Exception:
        return body


def _stream_incomplete(call: Call) -> tuple[str, str] | None:
    """A stream with events that were not JSON is broken; one that ended with neither its end
    marker nor a finish reason was cut short."""
    facts = call.meter.facts
    if call.metering_failed or facts.error_type:
        return None
    if facts.malformed_events:  # a client SDK fails on these too, whatever came after
        return ("malformed_stream", f"{facts.malformed_events} stream event(s) were not valid JSON")
    if facts.terminated or facts.finish_reason:
        return None
    return ("incomplete_stream", "the stream ended without a finish reason or end marker")
