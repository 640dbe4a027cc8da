"""mitmproxy addon: one row per LLM API call (latency, time to first token, tokens, errors).

    mitmdump -s addon/llm_metrics.py [--set llm_metrics_db=PATH_OR_URL]

The hooks stay thin, because they run on mitmproxy's one event loop, between the user's bytes:
they pick out requests that may be LLM calls (by method and path, without reading the body),
stamp times, keep references to the bytes, and hand those to the metering (`addon.engine`) in
batches every few milliseconds. The metering runs in a process of its own (`addon.worker`), at
idle CPU priority while the machine has CPU to spare and at nice 10 once it has not, unless
`llm_metrics_worker` is off or no process can be started; then on the loop, as it used to. A
metering failure is logged once and counted; it never changes, stalls or breaks the user's traffic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence

# `mitmdump -s addon/llm_metrics.py` loads this file as a script: make the project importable
# when it was not pip-installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from mitmproxy import ctx, exceptions, hooks, http  # noqa: E402

from addon.engine import CONFIG, END, FAIL, LOST, OPEN, SHUTDOWN, WHOLE, prepare_store, start_engine  # noqa: E402
from addon.formats import CANDIDATE_SUFFIXES  # noqa: E402
from addon.metering import passes_as_stream  # noqa: E402
from addon.worker import WorkerProcess  # noqa: E402
from migrations import DEFAULT_KEEP  # noqa: E402
from storage import default_location  # noqa: E402
from storage.writer import METERING_LOST  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_ORIGIN_HEADER = "x-llm-metrics-origin"
HAND_OVER_EVERY_S = 0.01
HAND_OVER_BYTES = 1 << 20  # or sooner, once stream pieces of this size wait
_CANDIDATE_SUFFIXES = tuple(suffix.encode() for suffix in CANDIDATE_SUFFIXES)


class LLMMetrics:
    def __init__(self) -> None:
        self.metering: WorkerProcess | InlineMetering | None = None
        self.location: str | None = None
        self.extra_hosts: dict[str, str] = {}
        self.origin_header: str | None = None
        self._request_headers: dict[bytes, int] = {}
        self._set_origin_header(DEFAULT_ORIGIN_HEADER)
        # flow.id -> [call id, request, response headers or None, state, flow]; state: False while
        # the call waits to be handed over whole, True once its stream is open in the metering,
        # None when that metering process ended with it (counted as lost then)
        self.inflight: dict[str, list] = {}
        self._next_cid = 0
        self._outbox: list = []  # messages and stream pieces for the metering, handed over together
        self._outbox_bytes = 0  # of stream pieces in it
        self._hand_over_scheduled = False
        self._start: dict | None = None  # what a metering process starts with
        # A metering process being retired (`_escalate`), and the calls whose streams it meters
        self._retiring: WorkerProcess | None = None
        self._retiring_cids: set[int] = set()

    def load(self, loader) -> None:
        logging.getLogger("peewee").setLevel(logging.INFO)  # see addon.engine.start_engine
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
        loader.add_option(
            "llm_metrics_worker", bool, True,
            "Meter calls in a process of their own, off mitmproxy's event loop; false: in mitmproxy's process.",
        )

    def configure(self, updated: set[str]) -> None:
        if "llm_metrics_hosts" in updated:
            self.extra_hosts = _parse_hosts(ctx.options.llm_metrics_hosts)
        if "llm_metrics_origin_header" in updated:
            self._set_origin_header(ctx.options.llm_metrics_origin_header)
        if "llm_metrics_queue_size" in updated and ctx.options.llm_metrics_queue_size < 1:
            raise exceptions.OptionsError("llm_metrics_queue_size must be at least 1")
        if "llm_metrics_backup_keep" in updated and ctx.options.llm_metrics_backup_keep < 1:
            raise exceptions.OptionsError("llm_metrics_backup_keep must be at least 1")
        if updated & {"llm_metrics_db", "llm_metrics_queue_size", "llm_metrics_worker"}:
            self._open_store(ctx.options.llm_metrics_db or default_location())
        elif updated & {"llm_metrics_hosts", "llm_metrics_log_calls"}:
            self._put((CONFIG, self._settings()))

    def _set_origin_header(self, name: str) -> None:
        self.origin_header = name or None
        # Request headers the hooks keep, by lower-case name: user agent, body encoding, origin tag
        self._request_headers = {b"user-agent": 0, b"content-encoding": 1}
        if self.origin_header:
            self._request_headers[self.origin_header.lower().encode("latin-1")] = 2

    def running(self) -> None:
        _warn_unknown_options()
        _warn_open_proxy()
        if isinstance(self.metering, WorkerProcess):
            self.metering.watch()

    def done(self) -> None:
        t = time.perf_counter()
        for cid, request, headers, state, flow in self.inflight.values():
            # Not handed over yet, and its body came (without it, it could not be recognised)
            if state is False and flow.request.raw_content is not None:
                self._outbox.append((OPEN, cid, self._with_body(request, flow), headers, False))
        self.inflight.clear()
        self._outbox.append((SHUTDOWN, t))
        self._close_metering()

    # -- hooks ---------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A POST to an LLM API's path (or to a host named in llm_metrics_hosts) is a possible
        LLM call: its body is read only later, in the metering. One hook, not two: at low
        concurrency each hook mitmproxy calls costs the loop about 10 us."""
        request = flow.request
        data = request.data  # bytes as parsed: the Request properties decode on every access
        if data.method != b"POST":
            return
        try:
            t0 = time.perf_counter()
            host = data.host.lower()
            path = data.path.split(b"?", 1)[0]  # a key in the query (Gemini's ?key=) is never kept
            if not (path.endswith(_CANDIDATE_SUFFIXES) or host in self.extra_hosts):
                return
            path = path.decode("utf-8", "surrogateescape")
            user_agent = encoding = origin = None
            wanted = self._request_headers
            for name, value in request.headers.fields:  # one pass: each Headers.get is a pass too
                key = wanted.get(name.lower())
                if key is not None:
                    if key == 0:
                        user_agent = value
                    elif key == 1:
                        encoding = value
                    else:
                        origin = value
            if origin is not None:
                del request.headers[self.origin_header]  # ours, not the upstream's: never forwarded
                origin = origin.decode("utf-8", "surrogateescape")
            self._next_cid += 1
            self.inflight[flow.id] = [self._next_cid, [
                t0, request.timestamp_start or time.time(), host, request.port, path, None,
                encoding and encoding.decode("latin-1"), user_agent and user_agent.decode("utf-8", "surrogateescape"),
                origin,
            ], None, False, flow]
        except Exception as exc:  # never let metering touch the user's traffic
            _hook_error("requestheaders", exc)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        entry = self.inflight.get(flow.id)
        if entry is None:
            return
        try:
            response = flow.response
            content_type = encoding = None
            for name, value in response.headers.fields:
                name = name.lower()
                if name == b"content-type":
                    content_type = value.decode("latin-1")
                elif name == b"content-encoding":
                    encoding = value.decode("latin-1")
            status = response.status_code
            entry[2] = (time.perf_counter(), status, content_type, encoding)
            if passes_as_stream(entry[1][4], content_type, status):
                entry[3] = True
                self._put((OPEN, entry[0], self._with_body(entry[1], flow), entry[2], True))
                response.stream = self._stream_callable(entry[0])
        except Exception as exc:
            _hook_error("responseheaders", exc)

    def response(self, flow: http.HTTPFlow) -> None:
        entry = self.inflight.pop(flow.id, None)
        if entry is None or entry[3] is None:
            return
        try:
            t = time.perf_counter()
            response = flow.response
            if entry[3]:
                self._put((END, entry[0], t, response.status_code))
            else:
                headers = entry[2] or (None, response.status_code, response.headers.get("content-type"),
                                       response.headers.get("content-encoding"))
                self._put((WHOLE, entry[0], self._with_body(entry[1], flow), headers, t, response.status_code,
                           response.raw_content or b""))
            self._handed(entry[0])
        except Exception as exc:
            _hook_error("response", exc)

    @staticmethod
    def _with_body(request: list, flow: http.HTTPFlow) -> tuple:
        """The request as handed over: with its body, which arrived after its headers."""
        request[5] = flow.request.raw_content or b""
        return tuple(request)

    def error(self, flow: http.HTTPFlow) -> None:
        entry = self.inflight.pop(flow.id, None)
        if entry is None or entry[3] is None:
            return
        try:
            response = flow.response
            message = flow.error.msg if flow.error else ""
            status = response.status_code if response is not None else None
            request, headers = (None, None) if entry[3] else (self._with_body(entry[1], flow), entry[2])
            self._put((FAIL, entry[0], request, headers, time.perf_counter(), message, response is not None, status))
            self._handed(entry[0])
        except Exception as exc:
            _hook_error("error", exc)

    def _stream_callable(self, cid: int):
        put = self._outbox.append
        now = time.perf_counter

        def on_chunk(data: bytes) -> bytes:
            # Runs for every network read of the response: must return `data` unchanged, always.
            try:
                put(cid)  # a piece is three bare items (addon.engine): no tuple for the GC to track
                put(now())
                put(data)
                self._outbox_bytes += len(data)
                if not self._hand_over_scheduled:
                    self._schedule_hand_over()
                elif self._outbox_bytes > HAND_OVER_BYTES:  # a fast stream: not 10 ms of it in memory
                    self._hand_over()
            except Exception as exc:
                _hook_error("stream", exc)
            return data

        return on_chunk

    # -- handing over ----------------------------------------------------------------------

    def _put(self, message: tuple) -> None:
        self._outbox.append(message)
        if not self._hand_over_scheduled:
            self._schedule_hand_over()

    def _handed(self, cid: int) -> None:
        metering = self._retiring if cid in self._retiring_cids else self.metering
        if isinstance(metering, WorkerProcess):
            metering.handed += 1

    def _schedule_hand_over(self) -> None:
        try:
            asyncio.get_running_loop().call_later(HAND_OVER_EVERY_S, self._hand_over)
            self._hand_over_scheduled = True
        except RuntimeError:  # no event loop (hooks called directly): nothing would come back later
            self._hand_over()

    def _hand_over(self) -> None:
        self._hand_over_scheduled = False  # a timer still pending finds nothing, or the next batch
        messages = self._outbox[:]
        self._outbox.clear()  # the same list: stream callables hold it
        self._outbox_bytes = 0
        if messages and self.metering is not None:
            try:
                if isinstance(self.metering, WorkerProcess) and self.metering.starved():
                    self._escalate(messages)
                if self._retiring is not None:
                    messages = self._route(messages)
                self.metering.send(messages)
            except Exception as exc:
                _hook_error("hand-over", exc)

    def _escalate(self, batch: list) -> None:
        """The metering process, at idle CPU priority, gets too little CPU to keep up (the machine
        is busy with other work): new calls go to a new one at nice 10, the streams it meters
        stay with it until they end, then it ends, after storing what it has. `batch` is what is
        about to be handed over: the ends of streams it opened, and calls already counted as
        handed to it."""
        old = self.metering
        old.idle = False  # whatever happens next, it is not asked again
        try:
            new = WorkerProcess({**self._start, **self._settings()}, on_exit=self._worker_ended, idle=False)
        except Exception as exc:
            log.warning("llm-metrics: the metering process gets too little CPU, and no other can start (%r)", exc)
            return
        new.watch()
        old.on_exit = self._retired_ended
        old.send([(CONFIG, {"run_part": "metered at idle priority"})])  # each prints its part at its end
        new.send([(CONFIG, {"run_part": "metered at nice 10, once the machine got busy"})])
        ends, whole = set(), 0
        i, n = 0, len(batch)
        while i < n:
            item = batch[i]
            if type(item) is tuple:
                if item[0] == END or (item[0] == FAIL and item[2] is None):
                    ends.add(item[1])  # a stream's end: every stream so far opened in the first
                elif item[0] in (WHOLE, FAIL):
                    whole += 1  # a whole call, counted by `_handed` as the first's: the second's now
                i += 1
            else:
                i += 3
        old.handed -= whole
        new.handed += whole
        self._retiring = old
        self._retiring_cids = {entry[0] for entry in self.inflight.values() if entry[3] is True} | ends
        self.metering = new
        streams = len(self._retiring_cids)
        log.warning("llm-metrics: the metering process, at idle CPU priority, fell behind (the machine is busy): "
                    "new calls go to a second one at nice 10%s", f"; the {streams} stream(s) open in the first end "
                    "there" if streams else "")
        if not streams:
            old.retire()

    def _route(self, items: list) -> list:
        """Of messages and stream pieces (three items each), those of the retiring process's
        streams go to it; the rest are returned. It is retired after its last stream's end."""
        cids, theirs, ours = self._retiring_cids, [], []
        i, n = 0, len(items)
        while i < n:
            item = items[i]
            if type(item) is tuple:
                if item[0] in (OPEN, END, FAIL) and item[1] in cids:
                    theirs.append(item)
                    if item[0] != OPEN:
                        cids.discard(item[1])
                else:
                    ours.append(item)
                i += 1
            else:
                (theirs if item in cids else ours).extend(items[i : i + 3])
                i += 3
        retiring = self._retiring
        if theirs:
            retiring.send(theirs)
        if not cids and not retiring.retiring:
            retiring.retire()
        return ours

    def _retired_ended(self, code: int | None) -> None:
        """The retired metering process exited: after storing everything (0), or not."""
        retiring, cids = self._retiring, self._retiring_cids
        self._retiring, self._retiring_cids = None, set()
        if code == 0 and not cids:
            return
        lost = max(0, retiring.handed - retiring.settled) + len(cids)
        for entry in self.inflight.values():
            if entry[0] in cids:
                entry[3] = None  # its pieces now go nowhere
        log.error("llm-metrics: the retired metering process ended with exit code %s; up to %d call(s) it had "
                  "not stored are lost and counted as %s.", code, lost, METERING_LOST)
        if lost:
            self._put((LOST, lost, METERING_LOST))

    # -- the metering ----------------------------------------------------------------------

    def _settings(self) -> dict:
        return {"extra_hosts": self.extra_hosts, "log_calls": ctx.options.llm_metrics_log_calls}

    def _open_store(self, location: str) -> None:
        self._close_metering()
        keep = ctx.options.llm_metrics_backup_keep
        try:
            db, migrated = prepare_store(location, keep)
        except Exception as exc:
            # Logged, not raised: mitmdump then exits at start-up with this one paragraph instead
            # of the script loader's traceback.
            log.error("llm-metrics: cannot use llm_metrics_db=%r: %s", location, exc)
            return
        if migrated.applied:
            log.info("llm-metrics: schema upgraded to version %d (backup: %s)",
                     migrated.applied[-1].version, migrated.backup or "none needed, the database was empty")
        self.location = location
        start = {"location": location, "keep_backups": keep, "queue_size": ctx.options.llm_metrics_queue_size,
                 **self._settings()}
        self._start = start
        if ctx.options.llm_metrics_worker and os.name == "posix" and not getattr(sys, "frozen", False):
            db.close()
            try:
                self.metering = WorkerProcess(start, on_exit=self._worker_ended)
            except Exception as exc:
                log.warning("llm-metrics: no metering process (%r): metering in mitmproxy's process", exc)
        if self.metering is None:
            self.metering = InlineMetering(start_engine(db=db if not db.is_closed() else None, **start))
        else:
            self.metering.watch()
        log.info("llm-metrics: recording LLM calls to %s", location)

    def _close_metering(self) -> None:
        if isinstance(self.metering, WorkerProcess):
            self.metering.idle = False  # ending: no switch to another process now
        self._hand_over()
        metering, self.metering = self.metering, None
        if metering is not None:
            metering.close()
        retiring, self._retiring, self._retiring_cids = self._retiring, None, set()
        if retiring is not None:
            retiring.close()

    def _worker_ended(self, code: int | None) -> None:
        """The metering process ended while mitmproxy runs (a bug, or it was killed): metering
        goes on here, and what it had not stored yet is counted as lost."""
        worker = self.metering
        ours = [entry for entry in self.inflight.values() if entry[3] is True and entry[0] not in self._retiring_cids]
        streams = len(ours)
        lost = max(0, worker.handed - worker.settled) + streams
        log.error("llm-metrics: the metering process ended unexpectedly (exit code %s); metering goes on in "
                  "mitmproxy's process. Up to %d call(s) it had not stored are lost and counted as %s.",
                  code, lost, METERING_LOST)
        for entry in ours:
            entry[3] = None  # a stream it was metering: its pieces now go nowhere
        try:
            engine = start_engine(location=self.location, keep_backups=ctx.options.llm_metrics_backup_keep,
                                  queue_size=ctx.options.llm_metrics_queue_size, **self._settings())
        except Exception as exc:
            self.metering = None
            log.error("llm-metrics: cannot meter in mitmproxy's process either, calls are not recorded: %r", exc)
            return
        self.metering = InlineMetering(engine)
        if lost:
            engine.handle((LOST, lost, METERING_LOST))


class InlineMetering:
    """The metering on mitmproxy's loop (`llm_metrics_worker=false`, or no process possible)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self._flush_scheduled = False

    def send(self, messages: list) -> None:
        engine = self.engine
        engine.handle_all(messages)
        if engine.call_lines and not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_later(engine.lines_every, self._flush_lines)
                self._flush_scheduled = True
            except RuntimeError:  # no event loop (a direct call): nothing would flush later
                engine.flush_lines()

    def _flush_lines(self) -> None:
        self._flush_scheduled = False
        self.engine.flush_lines()

    def close(self) -> None:
        self.engine.close()


_logged_hook_errors: set[str] = set()


def _hook_error(where: str, exc: Exception) -> None:
    """Each kind once per process: a fault repeated on every flow must not flood the log."""
    key = f"{where}:{type(exc).__name__}"
    if key not in _logged_hook_errors:
        _logged_hook_errors.add(key)
        log.warning("llm-metrics: metering failed in %s (traffic unaffected): %r", where, exc)


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

# mitmproxy looks up each event's name on this module too (a script's module is an addon), for
# every event of every flow. On Python 3.11 a name the module lacks costs two raised and cleared
# AttributeErrors; a name set to None is skipped at once: about 8 us less of the loop's time per
# request (mitmproxy's dispatch timed in-process, alternating both ways, 2026-12-05).
def _skip_unhandled_hooks(namespace: dict) -> None:
    for name in tuple(hooks.all_hooks):
        if name != "add_log":  # deprecated: mitmproxy warns about an addon that has it at all
            namespace.setdefault(name, None)


_skip_unhandled_hooks(globals())
