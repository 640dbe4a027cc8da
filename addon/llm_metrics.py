"""mitmproxy addon: one row per LLM API call (latency, time to first token, tokens, errors).

    mitmdump -s addon/llm_metrics.py --set flow_detail=0 [--set llm_metrics_db=PATH_OR_URL]

(flow_detail=0: mitmdump's own line per request prints each URL whole, a `?key=` included.)

The hooks stay thin, because they run on mitmproxy's one event loop, between the user's bytes:
they pick out requests that may be LLM calls (by method and path, without reading the body),
stamp times, keep references to the bytes and put them in the outbox (`addon.handover`), which
hands them to the metering (`addon.backends`: a process of its own, or this one) every few
milliseconds. docs/architecture.md draws the whole path. A metering failure is logged once and
counted; it never changes, stalls or breaks the user's traffic. The one edit the proxy makes, asking
a stream for its usage where that is safe, is `addon.stream_usage`'s.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from urllib.parse import parse_qsl

# `mitmdump -s addon/llm_metrics.py` loads this file as a script: make the project importable
# when it was not pip-installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from mitmproxy import ctx, exceptions, hooks, http  # noqa: E402

from addon.agents import AGENT_HEADERS, auth_mode  # noqa: E402
from addon.backends import Metering, open_metering  # noqa: E402
from addon.budget import Limits, parse_agent_budgets, parse_amount  # noqa: E402
from addon.capture import (  # noqa: E402
    Config,
    End,
    Fail,
    Open,
    Request,
    ResponseHead,
    Shutdown,
    SocketClose,
    SocketMessage,
    SocketOpen,
    Whole,
)
from addon.engine import REQUEST_BODY_LIMIT, prepare_store  # noqa: E402
from addon.exposition import ExportSettings, export_settings, export_warnings  # noqa: E402
from addon.faults import FaultLog  # noqa: E402
from addon.formats import CANDIDATE_SUFFIXES  # noqa: E402
from addon.formats.websocket import SOCKET_SUFFIXES  # noqa: E402
from addon.handover import CallState, Capture, Handover, Socket  # noqa: E402
from addon.metering import passes_as_stream  # noqa: E402
from addon.options import DEFAULT_ORIGIN_HEADER, add_options, line_buffered_stdout, parse_hosts, warn_at_start  # noqa: E402
from addon.prices import PriceBook, PriceFileError, load_prices  # noqa: E402
from addon.quota import QUOTA_HEADERS  # noqa: E402
from addon.redact import REDACT_WARNINGS  # noqa: E402
from addon.stream_usage import UsageInjector  # noqa: E402
from addon.wire import MAX_EVENT_BYTES  # noqa: E402
from storage import default_location  # noqa: E402
from storage.db import display_location, hide_password, unreachable  # noqa: E402
from storage.writer import METERING_BEHIND, METERING_LOST  # noqa: E402

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 30.0
_CANDIDATE_SUFFIXES = tuple(suffix.encode() for suffix in CANDIDATE_SUFFIXES)
_SOCKET_SUFFIXES = tuple(suffix.encode() for suffix in SOCKET_SUFFIXES)


class LLMMetrics:
    def __init__(self) -> None:
        self.metering: Metering | None = None
        self.handover: Handover | None = None
        self.location: str | None = None
        self.extra_hosts: dict[str, str] = {}
        self.origin_header: bytes | None = DEFAULT_ORIGIN_HEADER.encode()
        self.body_limit = REQUEST_BODY_LIMIT
        self.limits = Limits()
        self.exports = ExportSettings()
        self.prices: PriceBook | None = None
        self.inflight: dict[str, Capture] = {}  # by flow.id (flow.metadata would be saved with the flow)
        self._flows: dict[str, http.HTTPFlow] = {}  # the flows of waiting calls, for their bodies at shutdown
        self.sockets: dict[str, Socket] = {}  # WebSockets that may carry LLM calls, by flow.id
        self._upgrade_origins: dict[str, str] = {}  # origin tags of GET requests, until websocket_start
        self._next_cid = 0
        self.usage = UsageInjector()  # the one place a request or response is changed

    def load(self, loader) -> None:
        line_buffered_stdout()
        for logger in (log, *map(logging.getLogger, ("addon.backends", "addon.engine", "addon.exposition",
                                                     "storage.writer"))):
            logger.addFilter(REDACT_WARNINGS)  # their warnings quote exceptions and drivers' messages
        logging.getLogger("peewee").setLevel(logging.INFO)  # see addon.engine.start_engine
        add_options(loader)

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        if "llm_metrics_hosts" in updated:
            self.extra_hosts = parse_hosts(options.llm_metrics_hosts)
        if "llm_metrics_origin_header" in updated:
            self.origin_header = options.llm_metrics_origin_header.lower().encode("latin-1") or None
        for name in ("llm_metrics_queue_size", "llm_metrics_backup_keep", "llm_metrics_request_body_limit"):
            if name in updated and getattr(options, name) < 1:
                raise exceptions.OptionsError(f"{name} must be at least 1")
        if "llm_metrics_retention_days" in updated and not 0 <= options.llm_metrics_retention_days <= 36_600:
            raise exceptions.OptionsError("llm_metrics_retention_days must be from 0 (keep everything) to 36600")
        self.body_limit = options.llm_metrics_request_body_limit
        if updated & {"llm_metrics_inject_usage", "llm_metrics_usage_hosts"}:
            self.usage.configure(options.llm_metrics_inject_usage, options.llm_metrics_usage_hosts)
        if updated & _LIMIT_OPTIONS:
            self.limits = _limits(options)
        if "llm_metrics_prices" in updated:
            self.prices = _prices(options.llm_metrics_prices)
        if updated & _EXPORT_OPTIONS:
            self.exports = _exports(options)
        if updated & {"llm_metrics_db", "llm_metrics_queue_size", "llm_metrics_worker"}:
            self._open_store(options.llm_metrics_db or default_location())
        elif updated & {"llm_metrics_hosts", "llm_metrics_log_calls", "llm_metrics_request_body_limit",
                        "llm_metrics_prices", "llm_metrics_retention_days", *_LIMIT_OPTIONS, *_EXPORT_OPTIONS} \
                and self.handover is not None:
            self.handover.put(Config(self._settings()))

    def running(self) -> None:
        warn_at_start(ctx.options)
        if self.metering is not None:
            self.metering.watch()

    def done(self) -> None:
        t = time.perf_counter()
        if self.handover is not None:
            for flow_id, capture in self.inflight.items():
                flow = self._flows.get(flow_id)
                if capture.state is CallState.WAITING and flow is not None and flow.request.raw_content is not None:
                    # Its request went upstream whole, its response had not come: cut by the stop.
                    self.handover.put(Open(capture.cid, self._with_body(capture, flow), capture.head, False),
                                      final=True)
            self.handover.put(Shutdown(t))
        self.inflight.clear()
        self._flows.clear()
        self.sockets.clear()
        self._upgrade_origins.clear()
        self.usage.injected.clear()
        self._close_metering()

    # -- hooks, in flow order ----------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Our origin tag comes off every request, an LLM call or not (one look at the headers):
        it never reaches the provider. A POST to an LLM API's path (or to a host named in
        llm_metrics_hosts) is a possible LLM call: its body is read only later, in the metering."""
        data = flow.request.data  # bytes as parsed: the Request properties decode on every access
        try:
            origin = self._take_origin(flow.request.headers)
            if data.method != b"POST" or self.handover is None:
                if origin is not None and data.method == b"GET":
                    self._upgrade_origins[flow.id] = origin  # a WebSocket's upgrade, maybe: its calls have it
                return
            host = data.host.lower()
            path, _, query = data.path.partition(b"?")  # a key in the query (Gemini's ?key=) is never kept
            if not (path.endswith(_CANDIDATE_SUFFIXES) or host in self.extra_hosts):
                return
            self._next_cid += 1
            request = _request(flow, host, path, query, origin)
            self.inflight[flow.id] = Capture(self._next_cid, request)
            self._flows[flow.id] = flow
        except Exception as exc:  # never let metering touch the user's traffic
            _hook_error("requestheaders", exc)

    def _take_origin(self, headers: http.Headers) -> str | None:
        """The origin tag's value (the last, if sent twice), its header removed: ours, never forwarded."""
        tag = self.origin_header
        values = [value for name, value in headers.fields if name.lower() == tag] if tag else None
        if not values:
            return None
        headers.fields = tuple(field for field in headers.fields if field[0].lower() != tag)
        return values[-1].decode("utf-8", "surrogateescape")

    def request(self, flow: http.HTTPFlow) -> None:
        """The whole request of a possible LLM call: a stream that did not ask for its usage asks
        for it, where the upstream is known to accept that (`addon.stream_usage`)."""
        if flow.id not in self.inflight:
            return
        try:
            self.usage.request(flow, self.body_limit)
        except Exception as exc:
            _hook_error("request", exc)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        capture = self.inflight.get(flow.id)
        if capture is None or self.handover is None:
            return
        try:
            response = flow.response
            assert response is not None  # mitmproxy calls this hook with the response's headers
            capture.head = _head(time.perf_counter(), response)
            content_type = capture.head.content_type
            if passes_as_stream(capture.request.path, content_type, response.status_code):
                response.stream = True  # passed on as it arrives, metered or not
                self._flows.pop(flow.id, None)
                if self.handover.behind:
                    self.handover.drop(capture)
                else:
                    capture.state = CallState.STREAMING
                    self.handover.put(Open(capture.cid, self._with_body(capture, flow), capture.head, True))
                    response.stream = self.handover.stream_callable(capture, _hook_error)
        except Exception as exc:
            _hook_error("responseheaders", exc)
        try:
            self.usage.responseheaders(flow, _hook_error)  # after the metering's: it wraps its stream callable
        except Exception as exc:
            _hook_error("responseheaders", exc)

    def response(self, flow: http.HTTPFlow) -> None:
        if self._upgrade_origins and flow.websocket is None:
            self._upgrade_origins.pop(flow.id, None)
        try:
            self.usage.response(flow)
        except Exception as exc:
            _hook_error("response", exc)
        capture = self.inflight.pop(flow.id, None)
        self._flows.pop(flow.id, None)
        if capture is None or self.handover is None or capture.state is CallState.DROPPED:
            return
        try:
            t, response = time.perf_counter(), flow.response
            assert response is not None  # mitmproxy calls this hook with the whole response
            if capture.state is CallState.STREAMING:
                self.handover.put(End(capture.cid, t, response.status_code), final=True)
            elif self.handover.behind:
                self.handover.drop(capture)
            else:
                head = capture.head or _head(t, response)
                self.handover.put(Whole(capture.cid, self._with_body(capture, flow), head, t, response.status_code,
                                        response.raw_content or b""), final=True)
        except Exception as exc:
            _hook_error("response", exc)

    def error(self, flow: http.HTTPFlow) -> None:
        if self._upgrade_origins:
            self._upgrade_origins.pop(flow.id, None)
        self.usage.forget(flow)
        capture = self.inflight.pop(flow.id, None)
        self._flows.pop(flow.id, None)
        if capture is None or self.handover is None or capture.state is CallState.DROPPED:
            return
        try:
            t, response = time.perf_counter(), flow.response
            message = flow.error.msg if flow.error else ""
            status = response.status_code if response is not None else None
            if capture.state is CallState.STREAMING:
                self.handover.put(Fail(capture.cid, None, None, t, message, response is not None, status), final=True)
            elif self.handover.behind:
                self.handover.drop(capture)
            else:
                self.handover.put(Fail(capture.cid, self._with_body(capture, flow), capture.head, t, message,
                                       response is not None, status), final=True)
        except Exception as exc:
            _hook_error("error", exc)

    # -- WebSockets: each response on one is a call (addon.formats.websocket) ---------------

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        """A socket on a path where LLM APIs take them is followed: its text messages are handed
        over as they pass (never changed, never held)."""
        origin = self._upgrade_origins.pop(flow.id, None) if self._upgrade_origins else None
        if self.handover is None:
            return
        try:
            data = flow.request.data
            path, _, query = data.path.partition(b"?")
            if not path.endswith(_SOCKET_SUFFIXES):
                return
            request = _request(flow, data.host.lower(), path, query, origin)
            model = next((value for name, value in parse_qsl(query.decode("utf-8", "replace")) if name == "model"), None)
            self._next_cid += 1
            head = _head(time.perf_counter(), flow.response) if flow.response is not None else None
            socket = Socket(SocketOpen(self._next_cid, request, model or None, head))
            self.sockets[flow.id] = socket
            if not self.handover.behind:
                socket.state = CallState.STREAMING
                self.handover.put(socket.opening)
        except Exception as exc:
            _hook_error("websocket_start", exc)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        socket = self.sockets.get(flow.id)
        if socket is None or self.handover is None:
            return
        try:
            assert flow.websocket is not None  # mitmproxy calls this hook for a WebSocket's flow
            messages = flow.websocket.messages
            message = messages[-1]
            # mitmproxy keeps every message of a flow: one handed over is let go, only the newest
            # stays (for the addons after this one, which read messages[-1]), so an hours-long
            # socket holds one message, not its history.
            del messages[:-1]
            if message.is_text:  # the APIs followed speak JSON text: a binary message is no call's
                self._hand_over_message(socket, message.from_client, message.content)
        except Exception as exc:
            _hook_error("websocket_message", exc)

    def _hand_over_message(self, socket: Socket, from_client: bool, content: bytes) -> None:
        t, handover = time.perf_counter(), self.handover
        assert handover is not None
        if handover.behind:
            if socket.state is CallState.STREAMING:
                handover.drop(socket)  # the responses open on it are counted as dropped
            if from_client and b'"response.create"' in content:
                handover.count_lost(1, METERING_BEHIND)  # a call asked for while the metering is behind
            return
        if socket.state is CallState.DROPPED:  # the metering caught up (or was restarted): follow it again
            self._next_cid += 1
            socket.opening = socket.opening._replace(cid=self._next_cid)
            socket.state = CallState.STREAMING
            handover.put(socket.opening)
        size = len(content)
        limit = self.body_limit if from_client else MAX_EVENT_BYTES
        handover.put(SocketMessage(socket.cid, t, from_client, content if size <= limit else None, size), size=size)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        socket = self.sockets.pop(flow.id, None)
        if socket is None or self.handover is None or socket.state is CallState.DROPPED:
            return
        try:
            websocket = flow.websocket
            assert websocket is not None
            self.handover.put(SocketClose(socket.cid, time.perf_counter(), websocket.close_code,
                                          bool(websocket.closed_by_client)), final=True)
        except Exception as exc:
            _hook_error("websocket_end", exc)

    def _with_body(self, capture: Capture, flow: http.HTTPFlow) -> Request:
        """The request as handed over: with its body, which arrived after its headers, unless
        it is too large to be worth reading (`llm_metrics_request_body_limit`)."""
        body = flow.request.raw_content or b""
        return capture.request._replace(body=body if len(body) <= self.body_limit else None)

    # -- the metering ----------------------------------------------------------------------

    def _settings(self) -> dict:
        return {"extra_hosts": self.extra_hosts, "log_calls": ctx.options.llm_metrics_log_calls,
                "request_body_limit": self.body_limit, "limits": self.limits, "prices": self.prices,
                "retention_days": ctx.options.llm_metrics_retention_days, "exports": self.exports}

    def _open_store(self, location: str) -> None:
        self._close_metering()
        keep = ctx.options.llm_metrics_backup_keep
        queue_size = ctx.options.llm_metrics_queue_size
        try:
            db, migrated = prepare_store(location, keep)
        except Exception as exc:
            if not unreachable(location, exc):
                # Logged, not raised: mitmdump then exits at start-up with this one paragraph
                # instead of the script loader's traceback.
                log.error("llm-metrics: cannot use llm_metrics_db=%r: %s", display_location(location),
                          hide_password(str(exc), location))
                return
            # A database server that is down or restarting must not keep the user's traffic from
            # flowing (nor make it fail when the proxy starts before the server, at boot): the
            # metering opens it once it answers; rows wait meanwhile.
            log.warning("llm-metrics: the database server cannot be reached (%s): the proxy starts anyway; up to "
                        "%d rows wait for it and are written once it answers, later ones are dropped and counted",
                        " ".join(hide_password(str(exc), location).split()), queue_size)
            db, migrated = None, None
        if migrated is not None and migrated.applied:
            log.info("llm-metrics: schema upgraded to version %d (backup: %s)",
                     migrated.applied[-1].version, migrated.backup or "none needed, the database was empty")
        self.location = location
        start = {"location": location, "keep_backups": keep, "queue_size": queue_size, **self._settings()}
        self.metering = open_metering(start, in_process=not ctx.options.llm_metrics_worker, db=db,
                                      on_death=self._metering_died)
        self.handover = Handover(self.metering)
        self.metering.watch()  # a database changed while running: no `running` hook comes again
        log.info("llm-metrics: recording LLM calls to %s", display_location(location))

    def _metering_died(self) -> None:
        """The metering process ended while mitmproxy runs (a bug, or it was killed): the calls it
        had not stored, and those waiting for it or streaming into it, are counted as lost; the
        backend starts a new process."""
        assert self.handover is not None and self.metering is not None
        waiting = self.handover.discard()
        streams: list[Capture | Socket] = [c for c in self.inflight.values() if c.state is CallState.STREAMING]
        streams += [s for s in self.sockets.values() if s.state is CallState.STREAMING]
        for capture in streams:
            capture.state = CallState.DROPPED  # its pieces now go nowhere (a socket's: until the next process)
        lost = self.metering.unsettled + waiting + len(streams)
        if lost:
            self.handover.count_lost(lost, METERING_LOST)
        log.error("llm-metrics: %d call(s) the metering process had not stored are lost (counted as %s)",
                  lost, METERING_LOST)

    def _close_metering(self) -> None:
        handover, metering = self.handover, self.metering
        self.handover = self.metering = None
        if handover is None or metering is None:
            return
        handover.flush(closing=True)
        metering.close(CLOSE_TIMEOUT_S)
        if metering.unsettled > 0:
            log.error("llm-metrics: %d call(s) were not stored: the metering process ended, or did not finish "
                      "within %.0f s",
                      metering.unsettled, CLOSE_TIMEOUT_S)


_LIMIT_OPTIONS = {"llm_metrics_budget_daily_usd", "llm_metrics_budget_agents", "llm_metrics_quota_alert_percent"}


def _limits(options) -> Limits:
    """The budgets and quota threshold the options ask for; OptionsError names a bad one."""
    try:
        return Limits(
            daily_usd=parse_amount(options.llm_metrics_budget_daily_usd, "llm_metrics_budget_daily_usd"),
            agents_daily_usd=parse_agent_budgets(options.llm_metrics_budget_agents),
            quota_percent=parse_amount(options.llm_metrics_quota_alert_percent, "llm_metrics_quota_alert_percent",
                                       most=100.0),
        )
    except ValueError as exc:
        raise exceptions.OptionsError(str(exc)) from None


_EXPORT_OPTIONS = {"llm_metrics_prometheus", "llm_metrics_otel", "llm_metrics_export_models"}


def _exports(options) -> ExportSettings:
    """Prometheus and OpenTelemetry as the options ask (addon/exposition.py); OptionsError names a bad one."""
    try:
        settings = export_settings(options.llm_metrics_prometheus, options.llm_metrics_otel,
                                   options.llm_metrics_export_models)
    except ValueError as exc:
        raise exceptions.OptionsError(str(exc)) from None
    for line in export_warnings(settings):
        log.warning(line)
    return settings


def _prices(path: str) -> PriceBook | None:
    """The user's prices file, read now: a bad one stops the proxy with one line."""
    if not path:
        return None
    try:
        book = load_prices(os.path.expanduser(path))
    except PriceFileError as exc:
        raise exceptions.OptionsError(str(exc)) from None
    log.info("llm-metrics: %d price(s) from %s, ahead of genai-prices", len(book.prices), path)
    return book


def _request(flow: http.HTTPFlow, host: str, path: bytes, query: bytes, origin: str | None) -> Request:
    """What crosses of a request's line and headers (one pass over them): who sent it, its
    session and retry (`AGENT_HEADERS`, never a credential), the kind of credential, its coding."""
    user_agent = encoding = None
    agent_headers = []
    fields = flow.request.headers.fields
    for name, value in fields:  # one pass: each Headers.get is a pass too
        name = name.lower()
        if name == b"content-encoding":
            encoding = value.decode("latin-1")
        elif name in AGENT_HEADERS:
            text = value.decode("utf-8", "surrogateescape")
            agent_headers.append((name.decode("latin-1"), text))
            if name == b"user-agent":
                user_agent = text
    started = flow.request.timestamp_start
    return Request(_started(started), started or time.time(), host, flow.request.data.port,
                   path.decode("utf-8", "surrogateescape"), b"", encoding, user_agent, origin, tuple(agent_headers),
                   auth_mode(fields, _has_key_parameter(query)))


def _head(t: float, response: http.Response) -> ResponseHead:
    """What crosses of a response's headers: its type and coding, and what it says of the headroom left."""
    content_type = encoding = None
    quota = []
    for name, value in response.headers.fields:  # one pass
        name = name.lower()
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-encoding":
            encoding = value.decode("latin-1")
        elif name in QUOTA_HEADERS:
            quota.append((name.decode("latin-1"), value.decode("latin-1")))
    return ResponseHead(t, response.status_code, content_type, encoding, tuple(quota))


_KEY_PARAMETERS = (b"key", b"api_key", b"api-key", b"apikey", b"access_token")


def _has_key_parameter(query: bytes) -> bool:
    """Whether a query string carries a credential (Gemini's ?key=): its kind is kept, never its value."""
    if not query:
        return False
    return any(part.split(b"=", 1)[0].lower() in _KEY_PARAMETERS for part in query.split(b"&"))


def _started(timestamp_start: float | None) -> float:
    """When mitmproxy began reading the request, on the perf_counter clock: whatever kept it
    inside the proxy before this hook (a busy loop, other addons) is part of every duration."""
    now = time.perf_counter()
    if not timestamp_start:
        return now
    return now - max(0.0, time.time() - timestamp_start)


_hook_error = FaultLog().warn  # each kind once per process


addons = [LLMMetrics()]

# mitmproxy looks up each event's name on this module too (a script's module is an addon), for
# every event of every flow. On Python 3.11 a name the module lacks costs two raised and cleared
# AttributeErrors; a name set to None is skipped at once, which takes that from the loop's time per
# request (bench/hook_dispatch.py).
def _skip_unhandled_hooks(namespace: dict) -> None:
    for name in tuple(hooks.all_hooks):
        if name != "add_log":  # deprecated: mitmproxy warns about an addon that has it at all
            namespace.setdefault(name, None)


_skip_unhandled_hooks(globals())
