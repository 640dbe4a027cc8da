"""Turns what the addon's hooks captured into rows: recognising the call, metering its response,
building the row, handing it to the storage writer, the per-call lines and the exit summary.

`Engine.handle_all` takes a batch of the hand-over protocol (`addon.capture`), in the order the
hooks made it, in the metering process (`addon.worker`) or on mitmproxy's loop when metering
runs in-process (`addon.backends`). A metering failure is logged once per kind and counted; the
call is still recorded with what could be read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from migrations import upgrade
from storage import RowWriter, enable_wal, open_database
from storage.db import display_location
from storage.timestamps import utc_text
from storage.writer import SOCKET_OVERFLOW

from . import bounds, exposition, pricing
from .agents import identify
from .budget import Limits, Watch
from .capture import (
    Abandon,
    Config,
    End,
    Fail,
    Lost,
    Open,
    Piece,
    Request,
    ResponseHead,
    Shutdown,
    SocketClose,
    SocketMessage,
    SocketOpen,
    Whole,
    iter_batch,
)
from .exposition import Exports, ExportSettings
from .faults import FaultLog
from .formats import (
    ResponseFacts,
    recognise,
    recognise_by_path,
    recognise_by_shape,
    recognise_unreadable,
    unknown_request_fields,
)
from .formats.websocket import RealtimeSession, ResponsesSession, Turn, open_session, outcome
from .metering import MAX_RESPONSE_BYTES, StreamMeter, meter_body, stream_framing
from .prices import PriceBook
from .quota import headroom
from .record import Call, build_row, known_provider, origin_from_user_agent, provider_for
from .redact import redact, redact_path
from .retention import Retention
from .run_summary import RunTotals
from .summary import format_call_line
from .transport import classify_flow_error
from .wire.encoding import decode_whole

log = logging.getLogger(__name__)

CALL_LINES_EVERY_S = 0.1
_MAX_UNPARSED_PATHS = 100
# A request body larger than this, as sent or once decompressed, is not read: the call is
# recognised by its path and recorded without its request's model, limits and message count
# (`llm_metrics_request_body_limit`; the hooks do not even hand over one larger as sent).
REQUEST_BODY_LIMIT = 2 << 20


class Engine:
    """Messages in, rows out (to `writer.submit`)."""

    lines_every = CALL_LINES_EVERY_S

    def __init__(self, writer: Any, *, location: str | None = None, extra_hosts: dict[str, str] | None = None,
                 log_calls: bool = True, request_body_limit: int = REQUEST_BODY_LIMIT,
                 limits: Limits | None = None, prices: PriceBook | None = None, retention_days: int = 0,
                 exports: ExportSettings | None = None) -> None:
        self.writer = writer
        self.retention_days = retention_days  # read by the retention thread (addon/retention.py) each day
        self.retention: Retention | None = None
        self.prices = prices  # the user's prices file, ahead of genai-prices
        self.location = location
        self.extra_hosts = extra_hosts or {}
        self.log_calls = log_calls
        self.request_body_limit = request_body_limit
        self.calls: dict[int, Call] = {}
        self.sockets: dict[int, _Socket] = {}  # WebSockets followed, by their id
        self.warmups = 0  # WebSocket warm-ups (`generate: false`) that succeeded: not calls, not recorded
        self.ignored: set[int] = set()  # calls that turned out not to be LLM calls: their pieces are dropped
        self.ended = 0  # calls handed over that are settled: recorded, dropped, or found not to be LLM calls
        self.run_totals = RunTotals()  # for the summary printed at exit
        self.watch = Watch(limits or Limits())  # budgets and quota thresholds (addon/budget.py)
        self.seed: tuple[str, float, dict[str, float]] | None = None  # today's earlier spending, once read
        self.exports: Exports | None = None  # Prometheus, OpenTelemetry (addon/exposition.py)
        self._set_exports(exports)
        self.unparsed: dict[str, int] = {}  # LLM-looking requests we could not read, by path
        self._faults = FaultLog()
        self.call_lines: list[str] = []  # per-call lines waiting for the next flush
        self.lines_since: float | None = None  # monotonic time of the oldest waiting line
        self._handlers: dict[type, Callable[[Any], None]] = {
            Piece: self._piece, Open: self._open, End: self._end, Whole: self._whole, Fail: self._fail,
            Abandon: self._abandon, Lost: self._lost, Config: self._config, Shutdown: self._shutdown,
            SocketOpen: self._socket_open, SocketMessage: self._socket_message, SocketClose: self._socket_close,
        }

    def handle_all(self, items: list[Any]) -> None:
        """A batch of the hand-over protocol (`addon.capture`)."""
        handlers = self._handlers
        for item in iter_batch(items):
            try:
                handlers[type(item)](item)
            except Exception as exc:  # one bad message must not stop the ones after it
                self._metering_error(type(item).__name__.lower(), exc)

    # -- messages ------------------------------------------------------------------------

    def _open(self, m: Open) -> None:
        call = self._recognise(m.request)
        if call is None:
            if m.streamed:
                self.ignored.add(m.cid)  # its pieces and end are dropped as they come
            else:
                self.ended += 1
            return
        self.calls[m.cid] = call
        if m.head is not None:
            self._head(call, m.head, m.streamed)

    def _piece(self, p: Piece) -> None:
        call = self.calls.get(p.cid)
        if call is None:
            return
        if not call.metering_failed:
            self._feed(call, p.t, p.data)
        if not p.data:
            # The body's end went on to the client: the call is complete, whatever happens to
            # its connections before the response hook runs (the proxy stopping ends them).
            self._complete(self.calls.pop(p.cid), p.t, call.status_code)

    def _feed(self, call: Call, t: float, data: bytes) -> None:
        meter = call.meter
        if meter is None:  # passed on as a stream, metered whole at the end
            if data and call.buffered is not None:
                if len(call.buffered) + len(data) <= MAX_RESPONSE_BYTES:
                    call.buffered.extend(data)
                else:  # not read: what was kept would be taken for a broken body
                    call.buffered = None
                    call.notes.append(f"response body not read: it is larger than {MAX_RESPONSE_BYTES >> 20} MiB")
            return
        try:
            if meter.feed(data) if data else meter.close():
                call.stamp_token(t)
            if call.t_end_marker is None and meter.facts.terminated:
                call.t_end_marker = t  # this piece went on to the client then
        except Exception as exc:
            call.metering_failed = True
            self._metering_error("stream", exc)

    def _end(self, m: End) -> None:
        if m.cid in self.ignored:
            self.ignored.discard(m.cid)
            self.ended += 1
            return
        call = self.calls.pop(m.cid, None)
        if call is not None:  # else complete already, at its body's end
            self._complete(call, m.t, m.status)

    def _complete(self, call: Call, t: float, status: int | None) -> None:
        """A streamed response that arrived whole."""
        try:
            error = None
            if call.meter is not None:
                if call.meter.close():
                    call.stamp_token(t)
                facts = call.meter.facts
                error = _stream_outcome(call)
            elif call.buffered is not None:
                facts = self._meter_whole(call, status, bytes(call.buffered))
                error = _body_empty(call, facts, status)
            else:
                facts = None  # not metered: an encoding we cannot undo, or a body past the limit
            self._finish(call, facts, status, t, error=error)
        except Exception as exc:
            self._metering_error("response", exc)
            self._finish_anyway(call, status, t)

    def _whole(self, m: Whole) -> None:
        call = self._recognise(m.request)
        if call is None:
            self.ended += 1
            return
        try:
            self._head(call, m.head, False)
            facts = self._meter_whole(call, m.status, m.body)
            self._finish(call, facts, m.status, m.t, error=_body_empty(call, facts, m.status))
        except Exception as exc:
            self._metering_error("response", exc)
            self._finish_anyway(call, m.status, m.t)

    def _fail(self, m: Fail) -> None:
        if m.request is not None:
            call = self._recognise(m.request)
            if call is None:
                self.ended += 1
                return
            if m.head is not None:
                self._head(call, m.head, False)
        else:
            if m.cid in self.ignored:
                self.ignored.discard(m.cid)
                self.ended += 1
                return
            call = self.calls.pop(m.cid, None)
            if call is None:  # complete already, at its body's end
                return
        try:
            if self._finish_delivered(call):
                return
            if call.meter is not None and call.meter.close():
                call.stamp_token(m.t)
            error = classify_flow_error(m.message, m.had_response)
            self._finish(call, call.meter.facts if call.meter else None, m.status, m.t, error=error)
        except Exception as exc:
            self._metering_error("error", exc)
            self._finish_anyway(call, m.status, m.t)

    def _abandon(self, m: Abandon) -> None:
        if m.cid in self.ignored:
            self.ignored.discard(m.cid)
        elif self.calls.pop(m.cid, None) is not None:
            self._lost(Lost(1, m.reason))
        elif m.cid in self.sockets:
            still_open = self.sockets.pop(m.cid).session.open_count
            if still_open:
                self._lost(Lost(still_open, m.reason))
        self.ended += 1

    def _shutdown(self, m: Shutdown) -> None:
        """The proxy stopped: a call still open is complete if its stream was, else cut short."""
        for cid in list(self.sockets):
            self._socket_close(SocketClose(cid, m.t, None, False), _SHUTDOWN)
        calls, self.calls = list(self.calls.values()), {}
        self.ended += len(self.ignored)
        self.ignored.clear()
        for call in calls:
            try:
                if self._finish_delivered(call):
                    continue
                self._finish(call, call.meter.facts if call.meter else None, call.status_code, m.t, error=_SHUTDOWN)
            except Exception as exc:
                self._metering_error("done", exc)
                self._finish_anyway(call, call.status_code, m.t)

    # -- WebSockets: each response on one is a call (addon.formats.websocket) ------------------

    def _socket_open(self, m: SocketOpen) -> None:
        request = m.request
        session = open_session(request.path, m.model, _size(self.request_body_limit))
        if session is None:
            self.ignored.add(m.cid)  # its messages and end are dropped as they come
            return
        call = Call(fmt=session.fmt, started_at=request.started_at, t_start=request.t_start, host=request.host,
                    port=request.port, path=request.path,
                    provider=provider_for(request.host, request.port, self.extra_hosts),
                    origin=request.origin or origin_from_user_agent(request.user_agent), request={}, streamed=True,
                    prices=self.prices)
        self._identify(call, request, None)
        if m.head is not None:
            self._headroom(call, m.head)
        self.sockets[m.cid] = _Socket(call, session)

    def _socket_message(self, m: SocketMessage) -> None:
        socket = self.sockets.get(m.cid)
        if socket is not None:
            session = socket.session
            self._turns_ended(socket, (session.client if m.from_client else session.server)(m.t, m.data, m.size))

    def _socket_close(self, m: SocketClose, error: tuple[str, str] | None = None) -> None:
        """The socket ended (the proxy stopping ends it with `error`): each response still open on
        it is cut short. The socket is one call handed over (`ended`), whatever it carried."""
        self.ended += 1
        if m.cid in self.ignored:
            self.ignored.discard(m.cid)
            return
        socket = self.sockets.pop(m.cid, None)
        if socket is not None:
            self._turns_ended(socket, socket.session.close(m.t, error or _closed_early(m)))

    def _turns_ended(self, socket: _Socket, turns: list[Turn]) -> None:
        for turn in turns:
            try:
                self._turn_row(socket, turn)
            except Exception as exc:
                self._metering_error("websocket", exc)

    def _turn_row(self, socket: _Socket, turn: Turn) -> None:
        """A response ended on a socket: its row, as a streamed call's, timed from its request message."""
        if turn.dropped:
            self._lost(Lost(1, SOCKET_OVERFLOW))
            return
        error = outcome(turn)
        if turn.warmup and error is None and turn.facts.error_type is None:
            self.warmups += 1  # nothing generated, nothing failed: no call to count
            return
        base = socket.call
        call = dataclasses.replace(
            base, started_at=base.started_at + (turn.t_start - base.t_start), t_start=turn.t_start,
            request=turn.request, t_headers=turn.t_first_event, status_code=turn.status,
            t_first_token=turn.t_first_token, t_last_token=turn.t_last_token, notes=list(turn.notes))
        if turn.warmup:
            call.notes.append("a warm-up request (generate: false): nothing was to be generated")
        self._finish(call, turn.facts, turn.status, turn.t_end or turn.t_start, error=error, settles=False)

    def _config(self, m: Config) -> None:
        self.extra_hosts = m.settings.get("extra_hosts", self.extra_hosts)
        self.log_calls = m.settings.get("log_calls", self.log_calls)
        self.request_body_limit = m.settings.get("request_body_limit", self.request_body_limit)
        self.prices = m.settings.get("prices", self.prices)
        if "limits" in m.settings:
            self.watch.limits = m.settings["limits"]
        self.retention_days = m.settings.get("retention_days", self.retention_days)
        if "exports" in m.settings:
            self._set_exports(m.settings["exports"])

    def _set_exports(self, settings: ExportSettings | None) -> None:
        self.exports = exposition.reopen(self.exports, settings)
        if self.writer is not None:
            self.writer.on_dropped = self.exports.dropped if self.exports is not None else None

    def _lost(self, m: Lost) -> None:
        if self.writer is not None:
            self.writer.count_dropped(m.n, m.reason)

    # -- the call ------------------------------------------------------------------------

    def _recognise(self, request: Request) -> Call | None:
        """The call a request is, if it is one. A JSON object of no known shape is counted as
        unparsed (named at exit, to be reported); a body that is not a JSON object is the client's
        own mistake: its call is recorded where the path tells its API, and never counted."""
        path = request.path
        notes: list[str] = []
        body = self._request_body(request, notes)
        parsed = None if body is None else _json_object(body, notes)
        if parsed is not None:
            fmt = recognise(path, parsed)
            if fmt is None and request.host in self.extra_hosts:
                fmt = recognise_by_shape(parsed)
            if fmt is None:
                self._count_unparsed(path)
                return None
            fields = fmt.request_fields(path, parsed)
        else:
            if body is None:  # not read: the path alone tells, no field is known
                fmt = recognise_by_path(path)
            else:
                llm_host = request.host in self.extra_hosts or known_provider(request.host, request.port) is not None
                fmt = recognise_unreadable(path, llm_host=llm_host)
            if fmt is None:
                if body is None:
                    self._count_unparsed(path)
                return None
            fields = unknown_request_fields(fmt, path)
        call = Call(
            fmt=fmt,
            started_at=request.started_at,
            t_start=request.t_start,
            host=request.host,
            port=request.port,
            path=path,
            provider=provider_for(request.host, request.port, self.extra_hosts, fmt.family),
            origin=request.origin or origin_from_user_agent(request.user_agent),
            request=fields,
            notes=notes,
            prices=self.prices,
        )
        self._identify(call, request, parsed)
        return call

    def _identify(self, call: Call, request: Request, body: dict[str, Any] | None) -> None:
        try:
            call.identity = identify(dict(request.agent_headers), body, request.auth)
        except Exception as exc:  # who sent it is a detail: the call is recorded without it
            self._metering_error("identify", exc)

    def _headroom(self, call: Call, head: ResponseHead) -> None:
        if not head.quota_headers:
            return
        try:  # the response's wall-clock time: the quota's resets may be relative to it
            call.headroom = headroom(dict(head.quota_headers), call.started_at + head.t_headers - call.t_start)
        except Exception as exc:
            self._metering_error("headroom", exc)

    def _request_body(self, request: Request, notes: list[str]) -> bytes | None:
        """The request body without its Content-Encoding; None when it is not read (`notes`
        says why): larger than the limit as sent (the hooks did not hand it over) or decoded.
        A coding that cannot be undone leaves the body as sent (as mitmproxy's `get_content(strict=False)`)."""
        limit = self.request_body_limit
        if request.body is None:
            notes.append(f"request body not read: it is larger than {_size(limit)}")
            return None
        decoded = decode_whole(request.body, request.content_encoding, limit)
        if decoded.too_large:
            notes.append(f"request body not read: {decoded.problem}")
            return None
        if decoded.data is None:
            notes.append(f"request body not decoded: {decoded.problem}")
            return request.body
        return decoded.data

    def _head(self, call: Call, head: ResponseHead, streamed: bool) -> None:
        call.t_headers, call.status_code, call.content_type, call.content_encoding = head[:4]
        self._headroom(call, head)
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

    def _meter_whole(self, call: Call, status: int | None, body: bytes) -> ResponseFacts | None:
        """A whole body, still as on the wire, read up to MAX_RESPONSE_BYTES once decoded; a
        coding that cannot be undone leaves it as sent (as mitmproxy's `get_content(strict=False)`)."""
        decoded = decode_whole(body, call.content_encoding, MAX_RESPONSE_BYTES)
        if decoded.too_large:
            call.notes.append(f"response body not read: {decoded.problem}")
            return None  # the status says how the call went
        return meter_body(call.fmt, status or 0, call.content_type, body if decoded.data is None else decoded.data)

    def _finish_delivered(self, call: Call) -> bool:
        """A stream whose end marker already went on to the client is complete, whatever then
        happens to its connections before the body's end arrives (the proxy stopping closes
        them): it is recorded as the response hook would have. False for any other call."""
        if call.t_end_marker is None or call.metering_failed:
            return False
        if call.meter.close():
            call.stamp_token(call.t_end_marker)
        self._finish(call, call.meter.facts, call.status_code, call.t_end_marker, error=_stream_outcome(call))
        return True

    def _finish(self, call: Call, facts, status: int | None, t_end: float, *, error=None, settles: bool = True) -> None:
        """`settles`: the call was handed over as one (a response on a WebSocket is not: its socket is)."""
        error_type, error_message = error if error else (None, None)
        row = build_row(call, facts or ResponseFacts(), status_code=status, t_end=t_end,
                        error_type=error_type, error_message=error_message)
        self.ended += settles
        self.run_totals.add(row)
        if self.writer is not None:
            self.writer.submit(row)
        if self.watch.limits.active:
            self._watch(row)
        if self.exports is not None:
            try:
                self.exports.observe(row, call.port)
            except Exception as exc:  # numbers out are a detail: the row is stored whatever happens here
                self._metering_error("export", exc)
        if self.log_calls:
            self.call_lines.append(format_call_line(row))
            if self.lines_since is None:
                self.lines_since = time.monotonic()

    def _watch(self, row: dict[str, Any]) -> None:
        try:
            seed, self.seed = self.seed, None
            lines = self.watch.seed(*seed) if seed is not None else []
            for line in lines + self.watch.observe(row):
                log.warning(line)
        except Exception as exc:  # a budget is a detail: the row is stored whatever happens here
            self._metering_error("budget", exc)

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
        self._shutdown(Shutdown(time.perf_counter()))
        self.flush_lines()
        if self.retention is not None:
            self.retention.stop()
        if self.writer is not None:
            self.writer.close()
            elsewhere = self.writer.written_to_replaced
            log.info("llm-metrics: %d call(s) recorded in %s%s, %d row(s) dropped (%d counted in dropped_rows)",
                     self.writer.written, self.location and display_location(self.location),
                     f" ({elsewhere} of them in a file since deleted or replaced there)" if elsewhere else "",
                     self.writer.dropped, self.writer.drops_recorded)
        for line in self.run_totals.lines(self.unparsed) + self.watch.summary():
            log.info(line)
        if self.warmups:
            log.info("llm-metrics: %d WebSocket warm-up request(s) (generate: false, nothing generated) not recorded "
                     "as calls", self.warmups)
        self._set_exports(None)  # its port free, what OpenTelemetry has yet to send sent

    def _count_unparsed(self, path: str) -> None:
        """Named in the exit summary so a user can report them; bounded in distinct paths, each
        redacted, valid text of bounded length."""
        path = bounds.clean_text(redact_path(path), bounds.TEXT_LIMITS["path"]) or ""
        if path in self.unparsed or len(self.unparsed) < _MAX_UNPARSED_PATHS:
            self.unparsed[path] = self.unparsed.get(path, 0) + 1
        else:
            self.unparsed["(other paths)"] = self.unparsed.get("(other paths)", 0) + 1

    def _metering_error(self, where: str, exc: Exception) -> None:
        self._faults.warn(where, exc)


def prepare_store(location: str, keep_backups: int):
    """Opens the database and brings its schema up to date (a verified backup first), before
    any traffic; WAL is switched on only after, so a refused upgrade changes nothing."""
    db = open_database(location, wal=False)
    migrated = upgrade(db, keep_backups=keep_backups)
    enable_wal(db)
    return db, migrated


def start_engine(*, location: str, keep_backups: int, queue_size: int, extra_hosts: dict[str, str],
                 log_calls: bool, request_body_limit: int = REQUEST_BODY_LIMIT, limits: Limits | None = None,
                 prices: PriceBook | None = None, retention_days: int = 0, exports: ExportSettings | None = None,
                 db=None) -> Engine:
    """An engine with its own started writer; `db` when the caller has just prepared the store.

    It never waits for the database: without `db` the writer's thread opens it (and brings its
    schema up to date), retrying while it cannot (a server away when a metering process starts),
    and rows wait in its queue meanwhile."""
    # A root logger at DEBUG (mitmdump's) would have peewee format every query's SQL and
    # parameters into a log record, a cost per row (bench/profile_addon.py).
    logging.getLogger("peewee").setLevel(logging.INFO)
    warm()
    if db is not None:
        # The connection is this thread's (peewee's are per thread): the writer's thread opens its
        # own, and closes it at the end, so that nothing is left in the WAL.
        db.close()
    writer = RowWriter(db, queue_size=queue_size, connect=lambda: _open_store(location, keep_backups))
    writer.start()
    engine = Engine(writer, location=location, extra_hosts=extra_hosts, log_calls=log_calls,
                    request_body_limit=request_body_limit, limits=limits, prices=prices,
                    retention_days=retention_days, exports=exports)
    # Started whatever the days: an option set later, while running, takes effect at the next run.
    engine.retention = Retention(location, lambda: engine.retention_days)
    engine.retention.start()
    if limits is not None and (limits.daily_usd is not None or limits.agents_daily_usd):
        threading.Thread(target=_read_spending, args=(engine, location, time.time()), daemon=True,
                         name="llm-metrics-budget").start()
    return engine


def _read_spending(engine: Engine, location: str, run_start: float) -> None:
    """Today's (UTC) spending recorded before this run, for the budgets: read once, on a thread
    and a connection of its own, so that a slow database never holds the metering. The calls of
    this run are those started since it began; they are counted as they are recorded."""
    day = utc_text(run_start)[:10]
    try:
        db = open_database(location, create=False)
        try:
            rows = db.execute_sql(
                "SELECT agent, SUM(cost_usd) FROM completion_requests WHERE timestamp >= %s AND timestamp < %s "
                "AND cost_usd IS NOT NULL GROUP BY agent".replace("%s", db.param),
                (f"{day}T00:00:00.000000Z", utc_text(run_start))).fetchall()
        finally:
            db.close()
    except Exception as exc:
        log.warning("llm-metrics: budgets count only this run's calls: today's earlier spending could not be read "
                    "(%s)", redact(type(exc).__name__ + ": " + str(exc))[:200])
        return
    by_agent = {agent: float(cost) for agent, cost in rows if agent and cost is not None}
    engine.seed = (day, sum(float(cost) for _, cost in rows if cost is not None), by_agent)


def _open_store(location: str, keep_backups: int):
    """The writer's way in: at its start without a database, and to a file found in place of the
    one it had."""
    db, migrated = prepare_store(location, keep_backups)
    if migrated.applied:
        log.info("llm-metrics: schema upgraded to version %d (backup: %s)", migrated.applied[-1].version,
                 migrated.backup or "none needed, the database was empty")
    return db


def warm() -> None:
    """Reads the bundled price data now: on the first call it would stall the metering."""
    try:
        pricing.warm()
    except Exception as exc:  # no prices means NULL costs, never a proxy that cannot start
        log.warning("llm-metrics: price data unavailable, cost_usd will be NULL: %r", exc)


_SHUTDOWN = ("proxy_shutdown", "the proxy stopped before the call completed")


@dataclasses.dataclass(slots=True)
class _Socket:
    call: Call  # what every response on it shares: host, path, provider, origin; the upgrade's times
    session: ResponsesSession | RealtimeSession


def _closed_early(m: SocketClose) -> tuple[str, str]:
    """The error of a response the socket's end cut short: the side that ended it names it."""
    how = "without a close frame (1006)" if m.code == 1006 else f"with code {m.code}"
    if m.by_client:
        return "client_disconnected", f"the client closed the WebSocket {how} before the response completed"
    return "upstream_disconnected", f"the WebSocket was closed by the server {how} before the response completed"


def _json_object(body: bytes, notes: list[str]) -> dict[str, Any] | None:
    """The body's JSON object; None with a note when it is not one."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        notes.append("request body is not valid JSON")
        return None
    if not isinstance(parsed, dict):
        notes.append("request body is not a JSON object")
        return None
    return parsed


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


# Operations with no generated output: no content, no finish reason (no API streams them).
_NO_OUTPUT = ("embeddings",)


def _stream_outcome(call: Call) -> tuple[str, str] | None:
    """A stream with events that were not JSON is broken; one that ended with no content and
    no finish reason (its end marker alone, or no event at all) is empty; one that ended with
    neither its end marker nor a finish reason was cut short. None: as its status says."""
    facts = call.meter.facts
    if call.metering_failed or facts.error_type:
        return None
    if facts.read_limit is not None or facts.oversized_events:
        return None  # what was not read may have ended it: not known (metering_note says why)
    if facts.malformed_events:  # a client SDK fails on these too, whatever came after
        return ("malformed_stream", f"{facts.malformed_events} stream event(s) were not valid JSON")
    if call.fmt.operation in _NO_OUTPUT:  # complete with its one event, whatever it lacks
        return None if facts.events else ("empty_stream", "the stream carried no event")
    if not facts.content_events and facts.finish_reason is None and (facts.terminated or not facts.events):
        return ("empty_stream", "the stream ended without any content or finish reason")
    if facts.terminated or facts.finish_reason:
        return None
    return ("incomplete_stream", "the stream ended without a finish reason or end marker")


def _body_empty(call: Call, facts: ResponseFacts | None, status: int | None) -> tuple[str, str] | None:
    """A successful whole body that told nothing at all (no model, output, finish reason, usage
    or error: `{}`, `{"choices": []}`) is no plain success. None: as its status says."""
    if facts is None or status is None or not 200 <= status < 300 or call.fmt.operation in _NO_OUTPUT:
        return None
    told = (facts.model or facts.finish_reason or facts.error_type or facts.tool_calls or facts.events
            or facts.prompt_tokens is not None or facts.completion_tokens is not None)
    return None if told else ("empty_response", "the response carried no output, finish reason or usage")
