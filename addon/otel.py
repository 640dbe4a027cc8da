"""OpenTelemetry out (the `otel` extra, `llm_metrics_otel`): the metrics of `addon/exposition.py`
pushed over OTLP/HTTP with the official SDK, and, when asked, one span per call carrying the GenAI
conventions' `gen_ai.*` attributes (never a prompt or a completion).

Configured the standard way, by the SDK itself: `OTEL_EXPORTER_OTLP_ENDPOINT` (default
http://localhost:4318) or the per-signal `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` and
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
`OTEL_METRIC_EXPORT_INTERVAL` (60 s), `OTEL_BSP_SCHEDULE_DELAY` (5 s),
`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`, `OTEL_SERVICE_NAME` (here `llm-metrics-proxy`
by default) and `OTEL_RESOURCE_ATTRIBUTES`. Providers of their own: the SDK's global ones are left
to the application (none in mitmproxy).
"""

from __future__ import annotations

import calendar
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from storage.writer import DROP_REASONS

from .exposition import DROPPED, METRICS, STREAM, CallLabels, measurements
from .redact import REDACT_WARNINGS

log = logging.getLogger(__name__)

SERVICE_NAME = "llm-metrics-proxy"
CLOSE_TIMEOUT_S = 5.0  # at the end, for the last export: a collector that is away must not hold the stop
SAME_LINE_EVERY_S = 600.0  # the SDK's own lines (a collector away: two a minute), each at most this often


class OtlpExport:
    """`signals`: "metrics", "traces" or both. The exporters are the SDK's OTLP/HTTP ones unless
    given (tests)."""

    def __init__(self, signals: frozenset[str], *, metric_exporter: Any = None, span_exporter: Any = None) -> None:
        resource = Resource.create(_default_resource())
        self.meter_provider: MeterProvider | None = None
        self.tracer_provider: TracerProvider | None = None
        self.instruments: dict[Any, Any] = {}
        if "metrics" in signals:
            if metric_exporter is None:
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

                metric_exporter = OTLPMetricExporter()
            self.meter_provider = MeterProvider(resource=resource,
                                                metric_readers=[PeriodicExportingMetricReader(metric_exporter)])
            meter = self.meter_provider.get_meter("llm-metrics-proxy")
            for metric in METRICS:
                if metric.kind == "histogram":
                    self.instruments[metric] = meter.create_histogram(
                        metric.name, metric.unit, metric.description,
                        explicit_bucket_boundaries_advisory=metric.buckets)
                else:
                    self.instruments[metric] = meter.create_counter(metric.name, metric.unit, metric.description)
            for reason in DROP_REASONS:  # as on /metrics: every reason there from the start, at 0
                self.instruments[DROPPED].add(0, {"reason": reason})
        if "traces" in signals:
            if span_exporter is None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                span_exporter = OTLPSpanExporter()
            self.tracer_provider = TracerProvider(resource=resource)
            self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
            self.tracer = self.tracer_provider.get_tracer("llm-metrics-proxy")
        _quieten_sdk_lines()

    def observe(self, labels: CallLabels, row: Mapping[str, Any], port: int | None) -> None:
        if self.meter_provider is not None:
            for metric, value, values in measurements(labels, row):
                instrument = self.instruments[metric]
                attributes = _attributes(metric.labels, values)
                if metric.kind == "histogram":
                    instrument.record(value, attributes)
                else:
                    instrument.add(value, attributes)
        if self.tracer_provider is not None:
            self._span(labels, row, port)

    def dropped(self, n: int, reason: str) -> None:
        if self.meter_provider is not None:
            self.instruments[DROPPED].add(n, {"reason": reason})

    def _span(self, labels: CallLabels, row: Mapping[str, Any], port: int | None) -> None:
        """One span per call, as the conventions name it (`{operation} {request model}`), timed by
        the row: its wall-clock start and its duration."""
        start_ns = _epoch_ns(row["timestamp"])
        end_ns = start_ns + int((row.get("response_time_ms") or 0) * 1_000_000)
        model = row.get("request_model") or row.get("model")
        span = self.tracer.start_span(f"{labels.operation} {model}" if model else labels.operation,
                                      kind=SpanKind.CLIENT, start_time=start_ns,
                                      attributes=span_attributes(labels, row, port))
        if not row.get("success"):
            span.set_status(Status(StatusCode.ERROR, row.get("error_type") or None))
        span.end(end_time=end_ns)

    def close(self) -> None:
        """Exports what is left, waiting at most CLOSE_TIMEOUT_S."""
        done = threading.Thread(target=self._shutdown, name="llm-metrics-otel-close", daemon=True)
        done.start()
        done.join(CLOSE_TIMEOUT_S)
        if done.is_alive():
            log.warning("llm-metrics: the last OpenTelemetry export did not finish within %.0f s", CLOSE_TIMEOUT_S)

    def _shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=CLOSE_TIMEOUT_S * 1000)


class _SameLineRarely(logging.Filter):
    """Passes a line (by its logger and format) at most once every SAME_LINE_EVERY_S."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, str(record.msg)), time.monotonic()
        if now - self.last.get(key, -SAME_LINE_EVERY_S) < SAME_LINE_EVERY_S:
            return False
        self.last[key] = now
        return True


_SAME_LINE_RARELY = _SameLineRarely()


def _quieten_sdk_lines() -> None:
    """The exporters' loggers (their modules are loaded by now): a collector that is away is said
    once every ten minutes, not at every export; an endpoint's credentials never."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("opentelemetry") and isinstance(logger, logging.Logger):
            for line_filter in (_SAME_LINE_RARELY, REDACT_WARNINGS):  # by its format, before the redaction formats it
                if line_filter not in logger.filters:
                    logger.addFilter(line_filter)


def _attributes(names: tuple[str, ...], values: tuple[str, ...]) -> dict[str, Any]:
    """A metric's attributes: none for an unknown value (''), `gen_ai.request.stream` a boolean."""
    return {name: (value == "true" if name == STREAM else value) for name, value in zip(names, values) if value}


# Span attributes from a row's columns, as the conventions name them.
_SPAN_COUNTS = (
    ("gen_ai.usage.input_tokens", "prompt_tokens"),
    ("gen_ai.usage.output_tokens", "completion_tokens"),
    ("gen_ai.usage.cache_read.input_tokens", "cached_tokens"),
    ("gen_ai.usage.cache_creation.input_tokens", "cache_creation_tokens"),
    ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
    ("gen_ai.request.max_tokens", "max_tokens"),
    ("gen_ai.request.temperature", "temperature"),
    ("gen_ai.request.top_p", "top_p"),
    ("http.response.status_code", "status_code"),
    ("llm_metrics.cost_usd", "cost_usd"),
)


def span_attributes(labels: CallLabels, row: Mapping[str, Any], port: int | None) -> dict[str, Any]:
    """The span's attributes: the metrics' (the models as named, not capped: a span is no series)
    and the row's counts, settings and identifiers of the agent's session. No content."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": labels.operation,
        "gen_ai.provider.name": labels.provider,
        "gen_ai.request.model": row.get("request_model"),
        "gen_ai.response.model": row.get("model"),
        "gen_ai.request.stream": labels.stream == "true",
        "gen_ai.agent.name": row.get("agent"),
        "gen_ai.conversation.id": row.get("session_id"),
        "server.address": row.get("host"),
        "server.port": port,
        "error.type": labels.error_type or None,
    }
    for name, column in _SPAN_COUNTS:
        attributes[name] = row.get(column)
    if row.get("finish_reason"):
        attributes["gen_ai.response.finish_reasons"] = (row["finish_reason"],)
    if row.get("time_to_first_token_ms") is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = row["time_to_first_token_ms"] / 1000
    return {name: value for name, value in attributes.items() if value is not None and value != ""}


def _epoch_ns(timestamp: str) -> int:
    """`2026-11-22T14:03:07.123456Z` (a row's `timestamp`) in nanoseconds since the epoch."""
    seconds = calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(timestamp[20:26].ljust(6, "0")) * 1000


def _default_resource() -> dict[str, str]:
    """service.name `llm-metrics-proxy`, unless the environment names the service."""
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return {} if named else {"service.name": SERVICE_NAME}
