"""Numbers out: each row, as it is built, counted into Prometheus metrics served on `/metrics`
(`llm_metrics_prometheus`) and, with the `otel` extra, pushed as OpenTelemetry metrics and spans
over OTLP/HTTP (`llm_metrics_otel`, `addon/otel.py`). docs/metrics.md lists every metric.

It runs where rows are built (the metering process, or mitmproxy's with llm_metrics_worker=false),
fed the row `build_row` made: the numbers out are the stored ones, never a second measurement.
Names and units are the OpenTelemetry GenAI semantic conventions' (`METRICS`), spelt for
Prometheus as the OTLP -> Prometheus translation spells them, so one dashboard
(dashboards/llm-metrics-proxy.json) reads either way out.

Labels have few values: provider, operation and agent come from this project's own tables; model
names are normalised and capped (`llm_metrics_export_models`, the rest `other`; a name gets a
value of its own only once a call to it succeeded, so typos stay `other`); error types are capped
at `MAX_ERROR_TYPES` (the rest `_OTHER`). Never a session, user, key or request id.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from .redact import redact

log = logging.getLogger(__name__)

# Buckets, in the conventions' units. Durations: the conventions' 0.01 ... 81.92 s doubling, and two
# more for agent calls that think for minutes; time to first chunk: up to 2 minutes; tokens:
# the conventions' powers of 4 up to 67,108,864.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
                    163.84, 327.68)
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))

DEFAULT_MAX_MODELS = 50
MAX_ERROR_TYPES = 30
_MAX_NAMES = 64  # providers (a user may name hosts) and agents: tables of this project, bounded all the same
OTHER = "other"
OTHER_ERROR = "_OTHER"  # the conventions' fallback value of error.type
_LABEL_MAX_CHARS = 128

# This project's provider names and operations -> the conventions' well-known values.
_PROVIDERS = {"gemini": "gcp.gemini", "vertex-ai": "gcp.vertex_ai", "aws-bedrock": "aws.bedrock",
              "azure-openai": "azure.ai.openai", "mistral": "mistral_ai", "xai": "x_ai"}
_OPERATIONS = {"messages": "chat", "responses": "chat"}

# Attributes (OpenTelemetry) and labels (Prometheus: dots become underscores).
PROVIDER, OPERATION = "gen_ai.provider.name", "gen_ai.operation.name"
REQUEST_MODEL, RESPONSE_MODEL = "gen_ai.request.model", "gen_ai.response.model"
AGENT, STREAM, ERROR_TYPE, TOKEN_TYPE = "gen_ai.agent.name", "gen_ai.request.stream", "error.type", "gen_ai.token.type"
CALL = (PROVIDER, OPERATION, REQUEST_MODEL, RESPONSE_MODEL, AGENT)


class Metric(NamedTuple):
    """One instrument: its OpenTelemetry name and unit; `prometheus_name` is how it is exposed."""

    name: str
    kind: str  # "histogram" or "counter"
    unit: str  # UCUM, as the conventions give it
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The OTLP -> Prometheus translation: dots to underscores, `s` as `_seconds`, braced
        units dropped, `_total` on counters."""
        name = self.name.replace(".", "_") + ("_seconds" if self.unit == "s" else "")
        return name + "_total" if self.kind == "counter" else name


DURATION = Metric("gen_ai.client.operation.duration", "histogram", "s",
                  "Duration of LLM API calls, from the request's start to the response's end.",
                  (*CALL, STREAM, ERROR_TYPE), DURATION_BUCKETS)
TIME_TO_FIRST_CHUNK = Metric("gen_ai.client.operation.time_to_first_chunk", "histogram", "s",
                             "Time from a streamed call's start to its first content chunk.",
                             (*CALL, ERROR_TYPE), TTFT_BUCKETS)
TOKEN_USAGE = Metric("gen_ai.client.token.usage", "histogram", "{token}",
                     "Input and output tokens of each call, as its response reported them.",
                     (*CALL, TOKEN_TYPE), TOKEN_BUCKETS)
CALLS = Metric("llm_metrics.calls", "counter", "{call}", "LLM API calls recorded.", (*CALL, STREAM))
ERRORS = Metric("llm_metrics.errors", "counter", "{call}", "LLM API calls that failed, by error type.",
                (*CALL, ERROR_TYPE))
COST = Metric("llm_metrics.cost_usd", "counter", "{USD}", "Cost of the calls in USD, where the price is known.", CALL)
CACHE_READ = Metric("llm_metrics.cache_read.input_tokens", "counter", "{token}",
                    "Input tokens read from the provider's prompt cache.", CALL)
CACHE_CREATION = Metric("llm_metrics.cache_creation.input_tokens", "counter", "{token}",
                        "Input tokens written to the provider's prompt cache.", CALL)
REASONING = Metric("llm_metrics.reasoning.output_tokens", "counter", "{token}",
                   "Output tokens spent on reasoning.", CALL)
DROPPED = Metric("llm_metrics.dropped_rows", "counter", "{row}",
                 "Calls not stored (counted in the dropped_rows table), by reason.", ("reason",))
METRICS = (DURATION, TIME_TO_FIRST_CHUNK, TOKEN_USAGE, CALLS, ERRORS, COST, CACHE_READ, CACHE_CREATION, REASONING,
           DROPPED)

# -- settings -----------------------------------------------------------------------------------

SIGNALS = ("metrics", "traces")


class ExportSettings(NamedTuple):
    """What goes out, from the options; crosses to the metering process (`start_engine`, `Config`)."""

    prometheus: tuple[str, int] | None = None  # where /metrics is served
    otel: frozenset[str] = frozenset()  # "metrics", "traces"
    max_models: int = DEFAULT_MAX_MODELS

    @property
    def active(self) -> bool:
        return self.prometheus is not None or bool(self.otel)


def export_settings(prometheus: str, otel: str, max_models: int) -> ExportSettings:
    """The settings the options ask for; ValueError says what is wrong with one."""
    if max_models < 1:
        raise ValueError("llm_metrics_export_models must be at least 1")
    listen, signals = parse_listen(prometheus), parse_signals(otel)
    if listen is not None and importlib.util.find_spec("prometheus_client") is None:
        raise ValueError("llm_metrics_prometheus needs prometheus_client: pip install -e . (or python3 dev.py run)")
    if signals and importlib.util.find_spec("opentelemetry.sdk") is None:
        raise ValueError("llm_metrics_otel needs the OpenTelemetry SDK: pip install 'llm-metrics-proxy[otel]'")
    return ExportSettings(listen, signals, max_models)


def parse_listen(text: str) -> tuple[str, int] | None:
    """`HOST:PORT`, `[IPv6]:PORT` or `PORT` (on 127.0.0.1); '' is None (off)."""
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not host or (":" in host and not bracketed) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"llm_metrics_prometheus takes HOST:PORT (e.g. 127.0.0.1:9464) or PORT, not {text!r}")
    return host, int(port)


def parse_signals(text: str) -> frozenset[str]:
    """`metrics`, `traces` or both, comma-separated; '' (or `off`) is none."""
    signals = frozenset(s.strip().lower() for s in text.split(",") if s.strip())
    signals -= {"off"}
    unknown = sorted(signals - set(SIGNALS))
    if unknown:
        raise ValueError(f"llm_metrics_otel takes metrics, traces or metrics,traces, not {', '.join(unknown)!r}")
    return signals


def export_warnings(settings: ExportSettings) -> list[str]:
    """A line for a /metrics anyone beyond this machine can read."""
    if settings.prometheus is None or _is_loopback(settings.prometheus[0]):
        return []
    host, port = settings.prometheus
    return [f"llm-metrics: Prometheus metrics are served on {host}:{port}, beyond loopback: anyone who can reach it "
            "reads the models, agents, call counts and spending (never contents or credentials)"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- labels -------------------------------------------------------------------------------------


class Bounded:
    """Label values admitted in the order first seen, at most `limit` of them counting `overflow`:
    past that, and for a value not admitted, `overflow`."""

    def __init__(self, limit: int, overflow: str) -> None:
        self.limit = limit
        self.overflow = overflow
        self.admitted: set[str] = set()

    def get(self, value: str, admit: bool = True) -> str:
        if not value or value in self.admitted:
            return value
        if admit and len(self.admitted) < self.limit - 1:
            self.admitted.add(value)
            return value
        return self.overflow


_NOT_IN_LABEL = re.compile(r"[^a-z0-9._:/@+-]+")


@functools.lru_cache(maxsize=4096)  # the same few names row after row: the regex once each
def label_text(value: Any) -> str:
    """Lower case, runs of other characters than letters, digits and `._:/@+-` as one `_`, at most
    128 characters; '' for none."""
    if value is None:
        return ""
    return _NOT_IN_LABEL.sub("_", str(value).strip().lower())[:_LABEL_MAX_CHARS]


class CallLabels(NamedTuple):
    """A row's label values ('' where unknown)."""

    provider: str
    operation: str
    request_model: str
    response_model: str
    agent: str
    stream: str  # "true" or "false"
    error_type: str


class LabelMaker:
    """A row's label values, bounded (module docstring)."""

    def __init__(self, max_models: int) -> None:
        self.models = Bounded(max_models, OTHER)
        self.error_types = Bounded(MAX_ERROR_TYPES, OTHER_ERROR)
        self.providers = Bounded(_MAX_NAMES, OTHER)
        self.agents = Bounded(_MAX_NAMES, OTHER)

    def __call__(self, row: Mapping[str, Any]) -> CallLabels:
        succeeded = bool(row.get("success"))
        provider = row.get("provider")
        operation = row.get("operation")
        return CallLabels(
            provider=self.providers.get(label_text(_PROVIDERS.get(provider, provider))),  # type: ignore[arg-type]
            operation=_OPERATIONS.get(operation, label_text(operation)),  # type: ignore[arg-type]
            request_model=self.models.get(label_text(row.get("request_model")), succeeded),
            response_model=self.models.get(label_text(row.get("model")), succeeded),
            agent=self.agents.get(label_text(row.get("agent"))),
            stream="true" if row.get("is_streaming") else "false",
            error_type="" if succeeded else self.error_types.get(label_text(row.get("error_type")) or OTHER_ERROR),
        )


def measurements(labels: CallLabels, row: Mapping[str, Any]) -> Iterator[tuple[Metric, float, tuple[str, ...]]]:
    """What a row adds to each metric: (metric, value, label values in `metric.labels`' order).
    The one walk of a row, for Prometheus and OpenTelemetry alike."""
    call = labels[:5]
    yield CALLS, 1, (*call, labels.stream)
    if labels.error_type:
        yield ERRORS, 1, (*call, labels.error_type)
    if row.get("response_time_ms") is not None:
        yield DURATION, row["response_time_ms"] / 1000, (*call, labels.stream, labels.error_type)
    if row.get("time_to_first_token_ms") is not None:
        yield TIME_TO_FIRST_CHUNK, row["time_to_first_token_ms"] / 1000, (*call, labels.error_type)
    for column, token_type in (("prompt_tokens", "input"), ("completion_tokens", "output")):
        if row.get(column) is not None:
            yield TOKEN_USAGE, row[column], (*call, token_type)
    for column, metric in (("cost_usd", COST), ("cached_tokens", CACHE_READ),
                           ("cache_creation_tokens", CACHE_CREATION), ("reasoning_tokens", REASONING)):
        if row.get(column) is not None:
            yield metric, row[column], call


# -- both ---------------------------------------------------------------------------------------


class Exports:
    """Every way out the settings ask for, fed rows (`observe`) and drops (`dropped`)."""

    def __init__(self, settings: ExportSettings, *, registry: Any = None, otel: Any = None) -> None:
        """`registry`, `otel`: what tests put in place of a registry and an `addon.otel.OtlpExport`."""
        self.settings = settings
        self.labels = LabelMaker(settings.max_models)
        self.prometheus: Any = None  # addon.prometheus's PrometheusMetrics and MetricsServer
        self.server: Any = None
        if settings.prometheus is not None or registry is not None:
            from .prometheus import MetricsServer, PrometheusMetrics

            self.prometheus = PrometheusMetrics(registry)
            if settings.prometheus is not None:
                self.server = MetricsServer(self.prometheus.registry, *settings.prometheus)
        self.otel = otel
        if otel is None and settings.otel:
            try:
                from .otel import OtlpExport

                self.otel = OtlpExport(settings.otel)
            except BaseException:
                self.close()  # the port free again
                raise

    def observe(self, row: Mapping[str, Any], port: int | None = None) -> None:
        """A row as built; `port`: the server's behind the proxy (spans name it, rows do not store it)."""
        labels = self.labels(row)
        if self.prometheus is not None:
            self.prometheus.observe(labels, row)
        if self.otel is not None:
            self.otel.observe(labels, row, port)

    def dropped(self, n: int, reason: str) -> None:
        """Called by the writer (`RowWriter.on_dropped`), from whichever thread counts the drop."""
        try:
            if self.prometheus is not None:
                self.prometheus.dropped(n, reason)
            if self.otel is not None:
                self.otel.dropped(n, reason)
        except Exception as exc:  # a count out must never fail the writer's own counting
            log.warning("llm-metrics: a drop was not counted in the metrics: %r", exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.otel is not None:
            self.otel.close()


def reopen(exports: Exports | None, settings: ExportSettings | None) -> Exports | None:
    """The exports for new settings: the same object when they did not change, else the old one
    closed (its port freed) and a new one opened (counters start again from zero, as after a
    restart; Prometheus takes that as a counter reset)."""
    if exports is not None and exports.settings == settings:
        return exports
    if exports is not None:
        exports.close()
    if settings is None or not settings.active:
        return None
    try:
        return Exports(settings)
    except Exception as exc:  # a way out that cannot start must not stop the metering with it
        log.error("llm-metrics: metrics are not exported: %s", redact(repr(exc))[:300])
        return None
