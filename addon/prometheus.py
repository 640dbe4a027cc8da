"""Prometheus out (`llm_metrics_prometheus`): the metrics of `addon/exposition.py`, counted in plain
numbers and rendered by prometheus_client at each scrape, served on `/metrics` by its server from
threads of its own. Imported only when Prometheus is on."""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric as Family
from prometheus_client.utils import floatToGoString

from storage.writer import DROP_REASONS

from .exposition import DROPPED, METRICS, CallLabels, Metric, label_text, measurements

log = logging.getLogger("addon.exposition")  # said as the exposition's own lines

_BIND_RETRY_S = 5.0  # a metering process restarted after a crash may start before the port is free


class PrometheusMetrics:
    """The metrics as a collector in a registry of their own (never prometheus_client's global one).

    Each series is a list of numbers: a counter's value; a histogram's count per bucket, then its
    sum. A row adds to them under one lock (prometheus_client's own metric objects cost several
    times as much a row: bench/exposition.py); a scrape renders them (`collect`).

    A series is first shown at 0, with what was counted into it from the scrape after: rate() and
    increase() take a counter's increase from one sample to the next, so a series whose first sample
    is already 2 (a model's first two errors between two scrapes) would count as no increase at
    all. Its values wait for the next scrape, at most one scrape interval, once per series."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self._series: dict[Metric, dict[tuple[str, ...], list[float]]] = {metric: {} for metric in METRICS}
        self._unshown: set[tuple[Metric, tuple[str, ...]]] = set()  # new series, shown at 0 by the next scrape
        self._lock = threading.Lock()
        for reason in DROP_REASONS:  # known from the start: a panel of drops shows 0, not "No data"
            self._add(DROPPED, (reason,), 0)
        self.registry.register(self)

    def observe(self, labels: CallLabels, row: Mapping[str, Any]) -> None:
        with self._lock:
            for metric, value, values in measurements(labels, row):
                self._add(metric, values, value)

    def dropped(self, n: int, reason: str) -> None:
        """From the thread that counts the drop (`RowWriter.on_dropped`)."""
        with self._lock:
            self._add(DROPPED, (label_text(reason),), n)

    def _add(self, metric: Metric, values: tuple[str, ...], value: float) -> None:
        series = self._series[metric]
        numbers = series.get(values)
        if numbers is None:
            numbers = series[values] = [0.0] * (len(metric.buckets) + 2 if metric.buckets else 1)
            self._unshown.add((metric, values))
        if metric.buckets:
            numbers[bisect.bisect_left(metric.buckets, value)] += 1  # the first bucket whose bound is >= value
            numbers[-1] += value
        else:
            numbers[0] += value

    def collect(self) -> Iterator[Family]:
        """A scrape: every series as counted, those new since the last scrape at 0."""
        with self._lock:
            snapshot = {metric: [(values, list(numbers)) for values, numbers in series.items()]
                        for metric, series in self._series.items()}
            unshown, self._unshown = self._unshown, set()
        for metric, series in snapshot.items():
            yield _family(metric, [(values, [0.0] * len(numbers) if (metric, values) in unshown else numbers)
                                   for values, numbers in series])


def _family(metric: Metric, series: list[tuple[tuple[str, ...], list[float]]]) -> Family:
    labels = [name.replace(".", "_") for name in metric.labels]
    if not metric.buckets:
        counter = CounterMetricFamily(metric.prometheus_name, metric.description, labels=labels)
        for values, (value,) in series:
            counter.add_metric(values, value)
        return counter
    histogram = HistogramMetricFamily(metric.prometheus_name, metric.description, labels=labels)
    bounds = [floatToGoString(bound) for bound in metric.buckets] + ["+Inf"]
    for values, numbers in series:
        cumulative, buckets = 0.0, []
        for bound, count in zip(bounds, numbers[:-1]):
            cumulative += count
            buckets.append((bound, cumulative))
        histogram.add_metric(values, buckets, numbers[-1])
    return histogram


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
