"""An OTLP/HTTP receiver for tests: on a free port of 127.0.0.1, it takes what an OpenTelemetry
exporter POSTs to /v1/metrics and /v1/traces, decodes it with `opentelemetry-proto` (the
protocol's own generated classes) and keeps it, with the raw bodies."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

_SERVICES = {
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
}


class OtlpReceiver:
    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.raw: list[bytes] = []
        self.content_types: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def keep(self, path: str, body: bytes, content_type: str) -> bytes:
        request_type, response_type = _SERVICES[path]
        message = request_type.FromString(body)
        with self._lock:
            self.raw.append(body)
            self.content_types.add(content_type)
            (self.metrics if path == "/v1/metrics" else self.traces).append(message)
        return response_type().SerializeToString()

    def spans(self) -> list[Any]:
        with self._lock:
            return [span for request in self.traces for resource in request.resource_spans
                    for scope in resource.scope_spans for span in scope.spans]

    def latest_metrics(self) -> dict[str, Any]:
        """Each metric as last exported (cumulative: the last export holds every point)."""
        found: dict[str, Any] = {}
        with self._lock:
            for request in self.metrics:
                for resource in request.resource_metrics:
                    for scope in resource.scope_metrics:
                        for metric in scope.metrics:
                            found[metric.name] = metric
        return found

    def resources(self) -> list[dict[str, Any]]:
        with self._lock:
            return [attributes(r.resource.attributes) for request in self.metrics for r in request.resource_metrics] + \
                [attributes(r.resource.attributes) for request in self.traces for r in request.resource_spans]

    def wait(self, done: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of Python values."""
    return {kv.key: value_of(kv.value) for kv in key_values}


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


def _handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path not in _SERVICES:
                self.send_response(404)
                self.end_headers()
                return
            answer = receiver.keep(self.path, body, self.headers.get("content-type", ""))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    return Handler
