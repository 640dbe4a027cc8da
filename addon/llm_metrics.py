"""mitmproxy addon: one row per LLM API call (latency, time to first token, tokens, errors).

    mitmdump -s addon/llm_metrics.py [--set llm_metrics_db=PATH_OR_URL]

Hooks stay thin: they stamp times, hand bytes to the pure parsers in `addon.metering` and hand a
finished row to the background writer in `storage`. A metering failure is logged once and
counted; it never changes, stalls or breaks the user's traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

# `mitmdump -s addon/llm_metrics.py` loads this file as a script: make the project importable
# when it was not pip-installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from mitmproxy import ctx, exceptions, http  # noqa: E402

from addon.formats import CANDIDATE_SUFFIXES, ResponseFacts, recognise, recognise_by_shape  # noqa: E402
from addon import pricing  # noqa: E402
from addon.metering import StreamMeter, meter_body, stream_framing  # noqa: E402
from addon.record import Call, build_row, origin_from_user_agent, provider_for  # noqa: E402
from addon.run_summary import RunTotals  # noqa: E402
from addon.summary import format_call_line  # noqa: E402
from addon.transport import classify_flow_error  # noqa: E402
from migrations import DEFAULT_KEEP, upgrade  # noqa: E402
from storage import RowWriter, default_location, enable_wal, open_database  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_ORIGIN_HEADER = "x-llm-metrics-origin"
_MAX_UNPARSED_PATHS = 100
_CALL_LINES_EVERY_S = 0.1
_T0 = "llm_metrics_t0"  # flow.metadata key: perf_counter when the request headers arrived


class LLMMetrics:
    def __init__(self) -> None:
        self.writer: RowWriter | None = None
        self.location: str | None = None
        self.extra_hosts: dict[str, str] = {}
        self.inflight: dict[str, Call] = {}
        self.recorded = 0
        self.run_totals = RunTotals()  # for the summary printed at exit
        self.unparsed: dict[str, int] = {}  # LLM-looking requests we could not read, by path
        self.metering_errors = 0
        self._logged_errors: set[str] = set()
        self._call_lines: list[str] = []  # per-call lines waiting for the next flush

    def load(self, loader) -> None:
        # mitmdump sets the root logger to DEBUG: peewee would then format every query's SQL and
        # parameters into a log record handed to the event loop (~27 us a row, bench/profile_addon.py).
        logging.getLogger("peewee").setLevel(logging.INFO)
        loader.add_option(
            "llm_metrics_db", str, default_location(),
            "Where rows are stored: a SQLite file path or a database URL "
            "(default: $LLM_METRICS_DB, else ~/.llm_metrics_proxy/metrics.db).",
        )
        loader.add_option(
            "llm_metrics_hosts", Sequence[str], [],
            "Extra hosts to treat as LLM APIs whatever the request path, as HOST or HOST=PROVIDER.",
        )
        loader.add_option(
            "llm_metrics_origin_header", str, DEFAULT_ORIGIN_HEADER,
            "Request header that tags a call's origin; it is removed before the request is forwarded.",
        )
        loader.add_option(
            "llm_metrics_queue_size", int, 10_000,
            "Rows that may wait for the database before new ones are dropped (and counted).",
        )
        loader.add_option(
            "llm_metrics_backup_keep", int, DEFAULT_KEEP,
            "How many verified backups (taken before each schema upgrade) to keep.",
        )
        loader.add_option(
            "llm_metrics_log_calls", bool, True,
            "Print a one-line summary of each captured call.",
        )
        # Read the bundled price data now: on the first call it would stall every flow.
        try:
            pricing.warm()
        except Exception as exc:  # no prices means NULL costs, never a proxy that cannot start
            log.warning("llm-metrics: price data unavailable, cost_usd will be NULL: %r", exc)

    def configure(self, updated: set[str]) -> None:
        if "llm_metrics_hosts" in updated:
            self.extra_hosts = _parse_hosts(ctx.options.llm_metrics_hosts)
        if "llm_metrics_queue_size" in updated and ctx.options.llm_metrics_queue_size < 1:
            raise exceptions.OptionsError("llm_metrics_queue_size must be at least 1")
        if "llm_metrics_backup_keep" in updated and ctx.options.llm_metrics_backup_keep < 1:
            raise exceptions.OptionsError("llm_metrics_backup_keep must be at least 1")
        if "llm_metrics_db" in updated or "llm_metrics_queue_size" in updated:
            self._open_store(ctx.options.llm_metrics_db or default_location())

    def running(self) -> None:
        _warn_unknown_options()
        _warn_open_proxy()

    def done(self) -> None:
        now = time.perf_counter()
        for call in list(self.inflight.values()):
            self._finish_at_shutdown(call, now)
        self.inflight.clear()
        self._flush_call_lines()
        if self.writer is not None:
            self.writer.close()
            log.info("llm-metrics: %d call(s) recorded in %s, %d row(s) dropped (%d counted in dropped_rows)",
                     self.writer.written, self.location, self.writer.dropped, self.writer.drops_recorded)
            self.writer = None
        for line in self.run_totals.lines(self.unparsed):
            log.info(line)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.metadata[_T0] = time.perf_counter()

    def request(self, flow: http.HTTPFlow) -> None:
        try:
            call = self._recognise(flow)
        except Exception as exc:  # never let metering touch the user's traffic
            self._metering_error("request", exc)
            return
        if call is not None:
            self.inflight[flow.id] = call

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.inflight.get(flow.id)
        if call is None:
            return
        call.t_headers = time.perf_counter()
        response = flow.response
        call.status_code = response.status_code
        content_type = response.headers.get("content-type")
        framing = stream_framing(call.fmt, content_type, status=response.status_code,
                                 requested_stream=bool(call.request.get("is_streaming")))
        if framing is None:
            return
        call.streamed = True
        try:
            call.meter = StreamMeter(call.fmt, content_type, response.headers.get("content-encoding"), framing)
            response.stream = self._stream_callable(call)
        except Exception as exc:
            # Still stream: buffering an event stream would be worse than not metering it.
            self._metering_error("responseheaders", exc)
            call.metering_failed = True
            response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        call = self.inflight.pop(flow.id, None)
        if call is None:
            return
        try:
            now = time.perf_counter()
            if call.meter is not None:
                if call.meter.close():
                    call.stamp_token(now)
                facts = call.meter.facts
            else:
                response = flow.response
                body = response.get_content(strict=False) or b""
                facts = meter_body(call.fmt, response.status_code,
                                   response.headers.get("content-type"), body)
            error = _stream_incomplete(call) if call.meter is not None else None
            self._finish(call, facts, flow.response.status_code, now, error=error)
        except Exception as exc:
            self._metering_error("response", exc)

    def error(self, flow: http.HTTPFlow) -> None:
        call = self.inflight.pop(flow.id, None)
        if call is None:
            return
        try:
            if self._finish_delivered(call):
                return
            now = time.perf_counter()
            if call.meter is not None and call.meter.close():
                call.stamp_token(now)
            status = flow.response.status_code if flow.response is not None else None
            error = classify_flow_error(flow.error.msg if flow.error else "", flow.response is not None)
            self._finish(call, call.meter.facts if call.meter else None, status, now, error=error)
        except Exception as exc:
            self._metering_error("error", exc)

    # -- helpers -------------------------------------------------------------------------

    def _open_store(self, location: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        keep = ctx.options.llm_metrics_backup_keep
        try:
            db, migrated = _prepare_store(location, keep)
        except Exception as exc:
            # Logged, not raised: mitmdump then exits at start-up with this one paragraph instead
            # of the script loader's traceback.
            log.error("llm-metrics: cannot use llm_metrics_db=%r: %s", location, exc)
            return
        if migrated.applied:
            log.info("llm-metrics: schema upgraded to version %d (backup: %s)",
                     migrated.applied[-1].version, migrated.backup or "none needed, the database was empty")
        self.location = location
        self.writer = RowWriter(db, queue_size=ctx.options.llm_metrics_queue_size,
                                reopen=lambda: _prepare_store(location, keep)[0])
        self.writer.start()
        log.info("llm-metrics: recording LLM calls to %s", location)

    def _recognise(self, flow: http.HTTPFlow) -> Call | None:
        request = flow.request
        host = request.host.lower()
        path = request.path.split("?", 1)[0]
        extra = host in self.extra_hosts
        if request.method != "POST" or not (extra or path.endswith(CANDIDATE_SUFFIXES)):
            return None
        try:
            body = json.loads(request.get_content(strict=False) or b"")
        except ValueError:
            body = None
        fmt = None
        if isinstance(body, dict):
            fmt = recognise(path, body) or (recognise_by_shape(body) if extra else None)
        if fmt is None:
            self._count_unparsed(path)
            return None
        tag_header = ctx.options.llm_metrics_origin_header
        origin = request.headers.get(tag_header) if tag_header else None
        if origin is not None:
            del request.headers[tag_header]  # ours, not the upstream's: never forwarded
        return Call(
            fmt=fmt,
            started_at=request.timestamp_start or time.time(),
            t_start=flow.metadata.get(_T0) or time.perf_counter(),
            host=host,
            port=request.port,
            path=path,
            provider=provider_for(host, request.port, self.extra_hosts),
            origin=origin or origin_from_user_agent(request.headers.get("user-agent")),
            request=fmt.request_fields(path, body),
        )

    def _stream_callable(self, call: Call):
        meter = call.meter

        def on_chunk(data: bytes) -> bytes:
            # Runs for every network read of the response: must return `data` unchanged, always.
            if call.metering_failed:
                return data
            try:
                if meter.feed(data) if data else meter.close():
                    call.stamp_token(time.perf_counter())
                if call.t_end_marker is None and meter.facts.terminated:
                    call.t_end_marker = time.perf_counter()  # this piece goes on to the client now
            except Exception as exc:
                call.metering_failed = True
                self._metering_error("stream", exc)
            return data

        return on_chunk

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

    def _finish_at_shutdown(self, call: Call, now: float) -> None:
        """A call still open when the proxy stops: complete if its stream was, else cut short."""
        try:
            if self._finish_delivered(call):
                return
            self._finish(call, call.meter.facts if call.meter else None, call.status_code, now,
                         error=("proxy_shutdown", "the proxy stopped before the call completed"))
        except Exception as exc:
            self._metering_error("done", exc)

    def _finish(self, call: Call, facts, status: int | None, t_end: float, *, error=None) -> None:
        error_type, error_message = error if error else (None, None)
        row = build_row(call, facts or ResponseFacts(), status_code=status, t_end=t_end,
                        error_type=error_type, error_message=error_message)
        self.recorded += 1
        self.run_totals.add(row)
        if self.writer is not None:
            self.writer.submit(row)
        if ctx.options.llm_metrics_log_calls:
            self._log_call_line(format_call_line(row))

    def _log_call_line(self, line: str) -> None:
        """Lines go out together, at most 100 ms after their call ended. Each log record costs
        about 0.3 ms of the event loop in mitmproxy's log machinery (it is handed to every
        addon), a third of all the addon costs per call under load (bench/addon_parts.py)."""
        self._call_lines.append(line)
        if len(self._call_lines) > 1:
            return  # a flush is already scheduled
        try:
            asyncio.get_running_loop().call_later(_CALL_LINES_EVERY_S, self._flush_call_lines)
        except RuntimeError:  # no event loop (a direct call): nothing would flush later
            self._flush_call_lines()

    def _flush_call_lines(self) -> None:
        lines, self._call_lines = self._call_lines, []
        if lines:
            log.info("\n".join(lines))

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


def _prepare_store(location: str, keep_backups: int):
    """Opens the database and brings its schema up to date (a verified backup first), before
    any traffic; WAL is switched on only after, so a refused upgrade changes nothing."""
    db = open_database(location, wal=False)
    migrated = upgrade(db, keep_backups=keep_backups)
    enable_wal(db)
    return db, migrated


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


def _parse_hosts(values: Sequence[str]) -> dict[str, str]:
    hosts: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            host, _, provider = item.strip().partition("=")
            if host:
                hosts[host.lower()] = provider.strip()
    return hosts


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _warn_open_proxy() -> None:
    """Anyone who can reach a non-loopback listener can send traffic through it (and read the
    CA's trust): say so when no proxyauth guards it."""
    host = ctx.options.listen_host
    if host not in _LOOPBACK and not ctx.options.proxyauth:
        log.warning(
            "llm-metrics: the proxy listens on %s without proxyauth: anyone who can reach this "
            "machine can use it. Use --listen-host 127.0.0.1, or set proxyauth.", host or "all interfaces")


def _warn_unknown_options() -> None:
    """mitmproxy keeps `--set` names no addon declared and says nothing: catch our typos."""
    deferred = getattr(ctx.options, "deferred", None) or {}
    for name in deferred:
        if name.startswith("llm_metrics"):
            log.error("llm-metrics: unknown option %r (ignored); see `mitmdump --options`", name)


addons = [LLMMetrics()]
