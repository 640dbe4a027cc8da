"""Numbers out (addon/exposition.py, addon/prometheus.py): the options, bounded labels, what a row
adds to each metric, a new series shown at 0 first, the /metrics server and its port, and the
metric table of docs/metrics.md."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons
from prometheus_client import CollectorRegistry, generate_latest

from addon.exposition import (
    MAX_ERROR_TYPES,
    METRICS,
    Exports,
    ExportSettings,
    LabelMaker,
    export_settings,
    export_warnings,
    parse_listen,
    parse_signals,
    reopen,
)
from addon.llm_metrics import LLMMetrics
from addon.prometheus import MetricsServer, PrometheusMetrics
from storage.writer import METERING_LOST, RowWriter
from tests.conftest import free_port

METRICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def row(model="gpt-4o", success=True, **extra):
    return {"success": success, "provider": "openai", "operation": "chat", "request_model": model, "model": model,
            "agent": "codex", "is_streaming": True, "response_time_ms": 1500, "time_to_first_token_ms": 400,
            "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.25, "cached_tokens": 3,
            "cache_creation_tokens": None, "reasoning_tokens": 2, "error_type": None if success else "http_500",
            **extra}


def scrape(registry) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    samples = {}
    for family in registry.collect():
        for s in family.samples:
            samples[(s.name, frozenset((k, v) for k, v in s.labels.items() if v))] = s.value
    return samples


def series(samples, name: str) -> list[dict]:
    return [dict(labels) for (n, labels) in samples if n == name]


def exports(max_models: int = 50) -> Exports:
    """Prometheus metrics in a registry, served nowhere; every series already read once."""
    e = Exports(ExportSettings(max_models=max_models), registry=CollectorRegistry())
    scrape(e.prometheus.registry)
    return e


def observed(e: Exports, rows) -> dict:
    for r in rows:
        e.observe(r)
    scrape(e.prometheus.registry)  # new series at 0; what they hold comes with the next scrape
    return scrape(e.prometheus.registry)


# -- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("", None), ("9464", ("127.0.0.1", 9464)), ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ("localhost:9100", ("localhost", 9100)), ("[::1]:9464", ("::1", 9464)),
])
def test_listen_address_is_parsed(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["nope", "127.0.0.1:", ":9464", "127.0.0.1:70000", "127.0.0.1:0", "host:port", "::1",
                                  "::1:9464", "[::1]"])
def test_bad_listen_address_is_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)


def test_signals_are_metrics_traces_or_both():
    assert parse_signals("") == parse_signals("off") == frozenset()
    assert parse_signals("metrics, Traces") == {"metrics", "traces"}
    with pytest.raises(ValueError, match="not 'logs'"):
        parse_signals("metrics,logs")


def test_a_listener_beyond_loopback_is_warned_about():
    assert export_warnings(export_settings("9464", "", 50)) == []
    assert export_warnings(export_settings("[::1]:9464", "", 50)) == []
    [line] = export_warnings(export_settings("0.0.0.0:9464", "", 50))
    assert "0.0.0.0:9464, beyond loopback" in line


@pytest.mark.parametrize("option, value, message", [
    ("llm_metrics_prometheus", "metrics.example", "HOST:PORT"),
    ("llm_metrics_otel", "logs", "metrics, traces or metrics,traces"),
    ("llm_metrics_export_models", 0, "at least 1"),
])
def test_bad_export_options_are_refused_at_configure(tmp_path, option, value, message):
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_worker=False)
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(addon, **{option: value})
        addon.done()


# -- labels -----------------------------------------------------------------------------------------


def test_a_thousand_model_names_give_at_most_the_cap_of_series():
    e = exports(max_models=20)
    samples = observed(e, [row(f"Model-{i}") for i in range(1000)])
    for name in ("llm_metrics_calls_total", "gen_ai_client_operation_duration_seconds_count",
                 "gen_ai_client_operation_time_to_first_chunk_seconds_count", "llm_metrics_cost_usd_total"):
        found = series(samples, name)
        assert len(found) == 20, name
    models = {s["gen_ai_response_model"] for s in series(samples, "llm_metrics_calls_total")}
    assert models == {f"model-{i}" for i in range(19)} | {"other"}
    assert sum(v for (n, _), v in samples.items() if n == "llm_metrics_calls_total") == 1000


def test_a_model_is_named_once_a_call_to_it_succeeded():
    e = exports()
    samples = observed(e, [row("gpt-typo", success=False), row("gpt-4o", success=False), row("gpt-4o"),
                           row("gpt-4o", success=False)])
    errors = {(s["gen_ai_request_model"], s["error_type"]): v for (n, labels), v in samples.items()
              if n == "llm_metrics_errors_total" for s in [dict(labels)]}
    assert errors == {("other", "http_500"): 2.0, ("gpt-4o", "http_500"): 1.0}


def test_error_types_are_capped_with_the_conventions_fallback():
    e = exports()
    samples = observed(e, [row(success=False, error_type=f"Weird Error {i}") for i in range(100)])
    types = {s["error_type"] for s in series(samples, "llm_metrics_errors_total")}
    assert len(types) == MAX_ERROR_TYPES and "_OTHER" in types and "weird_error_0" in types


def test_providers_and_operations_take_the_conventions_names():
    make = LabelMaker(10)
    labels = make(row(provider="gemini", operation="generate_content", agent=None, is_streaming=False))
    assert (labels.provider, labels.operation, labels.agent, labels.stream) == ("gcp.gemini", "generate_content", "",
                                                                              "false")
    assert make(row(provider="anthropic", operation="messages")).operation == "chat"
    assert make(row(provider="aws-bedrock", operation="responses"))[:2] == ("aws.bedrock", "chat")


def test_a_row_adds_its_own_values_in_the_conventions_units():
    samples = observed(exports(), [row(), row(time_to_first_token_ms=None, prompt_tokens=None, cost_usd=None)])
    labels = frozenset({"gen_ai_provider_name": "openai", "gen_ai_operation_name": "chat",
                        "gen_ai_request_model": "gpt-4o", "gen_ai_response_model": "gpt-4o",
                        "gen_ai_agent_name": "codex"}.items())
    assert samples[("gen_ai_client_operation_duration_seconds_sum", labels | {("gen_ai_request_stream", "true")})] == 3.0
    assert samples[("gen_ai_client_operation_time_to_first_chunk_seconds_count", labels)] == 1
    assert samples[("gen_ai_client_token_usage_sum", labels | {("gen_ai_token_type", "input")})] == 10
    assert samples[("gen_ai_client_token_usage_sum", labels | {("gen_ai_token_type", "output")})] == 10
    assert samples[("llm_metrics_cost_usd_total", labels)] == 0.25
    assert samples[("llm_metrics_cache_read_input_tokens_total", labels)] == 6
    assert samples[("llm_metrics_reasoning_output_tokens_total", labels)] == 4
    assert series(samples, "llm_metrics_cache_creation_input_tokens_total") == []  # never reported: no series


def test_a_new_series_is_shown_at_zero_first_and_with_its_values_from_the_next_scrape():
    metrics = PrometheusMetrics()
    metrics.observe(LabelMaker(5)(row()), row())
    metrics.dropped(2, METERING_LOST)
    text = generate_latest(metrics.registry).decode()
    assert re.search(r"^llm_metrics_calls_total\{.*\} 0\.0$", text, re.MULTILINE)
    assert 'llm_metrics_dropped_rows_total{reason="metering_lost"} 0.0' in text
    assert "_created" not in text
    text = generate_latest(metrics.registry).decode()
    assert re.search(r"^llm_metrics_calls_total\{.*\} 1\.0$", text, re.MULTILINE)
    assert 'llm_metrics_dropped_rows_total{reason="metering_lost"} 2.0' in text
    metrics.observe(LabelMaker(5)(row()), row())  # a series already read: at once
    assert re.search(r"^llm_metrics_calls_total\{.*\} 2\.0$", generate_latest(metrics.registry).decode(), re.MULTILINE)


def test_the_writer_tells_every_drop_it_counts():
    told = []
    writer = RowWriter(None)
    writer.on_dropped = lambda n, reason: told.append((n, reason))
    writer.count_dropped(3, METERING_LOST)
    assert told == [(3, METERING_LOST)] and writer.dropped == 3


# -- the server -------------------------------------------------------------------------------------


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _wait_get(port: int, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _get(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _port_free(port: int) -> bool:
    """Whether a server can listen on it now (SO_REUSEADDR, as prometheus_client's server: the
    connections it served may linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_the_server_binds_once_the_port_is_free_and_frees_it_when_closed():
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    server = MetricsServer(PrometheusMetrics().registry, "127.0.0.1", port)
    try:
        time.sleep(0.3)  # it is trying meanwhile
        holder.close()
        assert "# TYPE llm_metrics_calls_total counter" in _wait_get(port)
    finally:
        server.close()
    assert _port_free(port)


def test_reopen_keeps_unchanged_settings_and_moves_the_server_when_they_change():
    first, second = free_port(), free_port()
    settings = ExportSettings(prometheus=("127.0.0.1", first))
    e = reopen(None, settings)
    try:
        _wait_get(first)
        assert reopen(e, settings) is e
        moved = reopen(e, settings._replace(prometheus=("127.0.0.1", second)))
        assert moved is not e and _port_free(first)
        _wait_get(second)
    finally:
        assert reopen(moved, None) is None
    assert _port_free(second)


def test_the_option_changed_while_running_moves_metrics_to_the_new_port(tmp_path):
    first, second = free_port(), free_port()
    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_worker=False,
                       llm_metrics_prometheus=f"127.0.0.1:{first}")
        try:
            assert "llm_metrics_calls_total" in _wait_get(first)
            tctx.configure(addon, llm_metrics_prometheus=f"127.0.0.1:{second}")
            assert "llm_metrics_calls_total" in _wait_get(second)
            assert _port_free(first)
        finally:
            addon.done()
    assert _port_free(second)


# -- docs ---------------------------------------------------------------------------------------------


def test_docs_metric_table_lists_every_metric_with_its_labels():
    """docs/metrics.md's table: one row per metric, `name` | type | unit | labels | meaning."""
    documented = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = re.match(r"\| `(\w+)` \| (\w+) \| [^|]+ \| ([^|]*) \|", line)
        if match:
            documented[match.group(1)] = (match.group(2), set(re.findall(r"`(\w+)`", match.group(3))))
    expected = {m.prometheus_name: (m.kind, {label.replace(".", "_") for label in m.labels}) for m in METRICS}
    assert documented == expected


def test_a_way_out_that_cannot_start_is_said_and_leaves_the_metering_and_the_port_alone(monkeypatch, caplog):
    import addon.otel

    def broken(signals):
        raise RuntimeError("no collector library here")

    monkeypatch.setattr(addon.otel, "OtlpExport", broken)
    port = free_port()
    with caplog.at_level("ERROR", logger="addon.exposition"):
        assert reopen(None, ExportSettings(prometheus=("127.0.0.1", port), otel=frozenset({"metrics"}))) is None
    assert "metrics are not exported: RuntimeError('no collector library here')" in caplog.text
    assert _port_free(port)
