"""Prometheus out (`llm_metrics_prometheus`): the metrics of `addon/exposition.py` in a registry of
their own, served on `/metrics` by prometheus_client's server, from threads of its own. Imported
only when Prometheus is on."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import Metric as Family

from storage.writer import DROP_REASONS

from .exposition import DROPPED, METRICS, CallLabels, Metric, label_text, measurements

log = logging.getLogger("addon.exposition")  # said as the exposition's own lines

_BIND_RETRY_S = 5.0  # a metering process restarted after a crash may start before the port is free


class Registry(CollectorRegistry):
    """A registry whose families come without prometheus_client's `_created` samples (Prometheus
    2 stores each as a series of its own, one more beside every counter and histogram series;
    prometheus_client's own switch, `disable_created_metrics`, is global to the process), and
    that tells a scrape's start (`on_collect`, which returns what to call once it has read all)."""

    on_collect: Callable[[], Callable[[], None]] | None = None

    def collect(self) -> Iterator[Family]:
        done = self.on_collect() if self.on_collect is not None else None
        for family in super().collect():
            family.samples = [sample for sample in family.samples if not sample.name.endswith("_created")]
            yield family
        if done is not None:
            done()


class PrometheusMetrics:
    """The metrics in a registry of their own (never prometheus_client's global one).

    A series is first shown at 0, with what was counted into it from the scrape after: rate() and
    increase() take a counter's increase from one sample to the next, so a series whose first sample
    is already 2 (a model's first two errors between two scrapes) would count as no increase at
    all. Values held so wait for the next scrape, at most one scrape interval, once per series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else Registry(auto_describe=True)
        if isinstance(self.registry, Registry):
            self.registry.on_collect = self._collecting
        self.families: dict[Metric, Any] = {}
        # Series a scrape has read, with their child: prometheus_client's labels() is most of the
        # cost of a row otherwise (bench/exposition.py).
        self._shown: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._held: dict[tuple[str, tuple[str, ...]], tuple[Any, str, list[float]]] = {}  # new: held at 0
        self._lock = threading.Lock()
        for metric in METRICS:
            labels = [name.replace(".", "_") for name in metric.labels]
            family: Any
            if metric.kind == "histogram":
                name = metric.prometheus_name
                family = Histogram(name, metric.description, labels, registry=self.registry, buckets=metric.buckets)
            else:  # prometheus_client adds the `_total`
                name = metric.prometheus_name.removesuffix("_total")
                family = Counter(name, metric.description, labels, registry=self.registry)
            self.families[metric] = family
        for reason in DROP_REASONS:  # known from the start: a panel of drops shows 0, not "No data"
            self._add(DROPPED, (reason,), 0)

    def observe(self, labels: CallLabels, row: Mapping[str, Any]) -> None:
        for metric, value, values in measurements(labels, row):
            self._add(metric, values, value)

    def dropped(self, n: int, reason: str) -> None:
        """From the thread that counts the drop (`RowWriter.on_dropped`)."""
        self._add(DROPPED, (label_text(reason),), n)

    def _add(self, metric: Metric, values: tuple[str, ...], value: float) -> None:
        key = (metric.name, values)
        child = self._shown.get(key)
        if child is not None:
            _count(child, metric.kind, value)
            return
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = (self.families[metric].labels(*values), metric.kind, [])
            held[2].append(value)

    def _collecting(self) -> Callable[[], None]:
        """A scrape starts: the series held so far are read at 0, and get what was held for them
        once it has read them (series new while it reads wait for the next)."""
        with self._lock:
            held, self._held = self._held, {}

        def release() -> None:
            for key, (child, kind, values) in held.items():
                for value in values:
                    _count(child, kind, value)
                self._shown[key] = child

        return release


def _count(child: Any, kind: str, value: float) -> None:
    if kind == "histogram":
        child.observe(value)
    elif value:
        child.inc(value)


class MetricsServer:
    """`/metrics` on (host, port), served by prometheus_client's server from a thread of its own.
    Bound from a thread too, trying again for a few seconds: a metering process started after one
    crashed may come up before the port the dead one held is free."""

    def __init__(self, registry: Any, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._registry = registry
        self._httpd: Any = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._binder = threading.Thread(target=self._bind, name="llm-metrics-prometheus", daemon=True)
        self._binder.start()

    def _bind(self) -> None:
        deadline = time.monotonic() + _BIND_RETRY_S
        while not self._closed.is_set():
            try:
                httpd, _ = start_http_server(self.port, addr=self.host, registry=self._registry)
            except OSError as exc:
                if time.monotonic() < deadline:
                    self._closed.wait(0.1)
                    continue
                log.error("llm-metrics: Prometheus metrics cannot be served on %s:%d: %s", self.host, self.port,
                          exc.strerror or exc)
                return
            with self._lock:
                if self._closed.is_set():
                    _stop(httpd)
                    return
                self._httpd = httpd
            log.info("llm-metrics: Prometheus metrics on http://%s/metrics", _netloc(self.host, self.port))
            return

    def close(self) -> None:
        """The port is free again when this returns."""
        self._closed.set()
        self._binder.join(1.0)
        with self._lock:
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            _stop(httpd)


def _stop(httpd: Any) -> None:
    httpd.shutdown()
    httpd.server_close()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


