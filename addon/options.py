"""The addon's options, and what it checks of mitmproxy's own at start.

Pure of mitmproxy's global state: `addon.llm_metrics` passes the loader and the options in.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mitmproxy.proxy.mode_specs import ProxyMode

from migrations import DEFAULT_KEEP
from storage import default_location

from .engine import REQUEST_BODY_LIMIT
from .exposition import DEFAULT_MAX_MODELS
from .redact import redact

log = logging.getLogger("addon.llm_metrics")  # said as the addon's own lines

DEFAULT_ORIGIN_HEADER = "x-llm-metrics-origin"

# name, type, default, help: `mitmdump --options` lists them
OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("llm_metrics_db", str, default_location(),
     "Where rows are stored: a SQLite file path or a database URL "
     "(default: $LLM_METRICS_DB, else ~/.llm_metrics_proxy/metrics.db)."),
    ("llm_metrics_hosts", Sequence[str], [],
     "Extra hosts to treat as LLM APIs whatever the request path, as HOST or HOST=PROVIDER."),
    ("llm_metrics_origin_header", str, DEFAULT_ORIGIN_HEADER,
     "Request header that tags a call's origin; it is removed before the request is forwarded."),
    ("llm_metrics_queue_size", int, 10_000,
     "Rows that may wait for the database before new ones are dropped (and counted)."),
    ("llm_metrics_backup_keep", int, DEFAULT_KEEP,
     "How many verified backups (taken before each schema upgrade) to keep."),
    ("llm_metrics_log_calls", bool, True,
     "Print a one-line summary of each captured call."),
    ("llm_metrics_worker", bool, True,
     "Meter calls in a process of their own, off mitmproxy's event loop; false: in mitmproxy's process."),
    ("llm_metrics_inject_usage", bool, True,
     "Ask upstreams known to accept it for the usage of streamed Chat Completions and Completions "
     "calls that did not ask (stream_options.include_usage), and hide the extra usage chunk from "
     "the client; false: never change a request (such streams get estimated usage)."),
    ("llm_metrics_usage_hosts", Sequence[str], [],
     "Extra upstreams, as HOST or HOST:PORT, known to accept stream_options.include_usage."),
    ("llm_metrics_request_body_limit", int, REQUEST_BODY_LIMIT,
     "Request bodies larger than this many bytes, as sent or once decompressed, are not read: such "
     "a call is recorded by its path, without its request's model, limits and message count."),
    ("llm_metrics_prices", str, "",
     "A TOML file of your own prices (self-hosted models, negotiated rates), ahead of genai-prices: "
     "[[price]] entries with model (a name or glob), optional host or provider, and USD per million "
     "input_per_million, output_per_million, cached_input_per_million, cache_write_per_million."),
    ("llm_metrics_retention_days", int, 0,
     "Delete calls older than this many days, once a day while the proxy runs, keeping their daily "
     "totals per model, provider and agent (reports still count them). 0: keep everything."),
    ("llm_metrics_budget_daily_usd", str, "",
     "A daily budget in USD for all calls (UTC days; e.g. 25): one line is logged as 80, 90 and 100 % "
     "of it are reached. Nothing is blocked. Empty: off."),
    ("llm_metrics_budget_agents", Sequence[str], [],
     "Daily budgets per agent, as AGENT=USD (e.g. claude-code=20,codex=10): one line at 80, 90 and 100 %."),
    ("llm_metrics_quota_alert_percent", str, "",
     "Log one line when a response says a subscription quota window (Claude's 5-hour, Codex's) is this "
     "percent used (e.g. 80), again at 90 and 100 %. Empty: off."),
    ("llm_metrics_prometheus", str, "",
     "Serve Prometheus metrics of the calls on http://HOST:PORT/metrics (PORT alone: on 127.0.0.1). Empty: off."),
    ("llm_metrics_otel", str, "",
     "Push OpenTelemetry metrics ('metrics'), a span per call ('traces') or both ('metrics,traces') over "
     "OTLP/HTTP, configured by the OTEL_EXPORTER_OTLP_* variables; needs the otel extra. Empty: off."),
    ("llm_metrics_export_models", int, DEFAULT_MAX_MODELS,
     "How many model names Prometheus and OpenTelemetry metrics name apart, 'other' included; the rest are "
     "'other'. A model is named once a call to it succeeded."),
)


def add_options(loader: Any) -> None:
    for name, typespec, default, help_text in OPTIONS:
        loader.add_option(name, typespec, default, help_text)


def warn_at_start(options: Any) -> None:
    warn_unknown_options(options)
    warn_open_proxy(options)
    warn_flow_detail(options)


def line_buffered_stdout() -> None:
    """mitmproxy prints its log to sys.stdout without flushing: to a file or a pipe (a service
    manager, `> proxy.log`), lines would appear only at exit unless PYTHONUNBUFFERED is set."""
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass  # not a text stream of its own kind: leave it as it is


def parse_hosts(values: Sequence[str]) -> dict[str, str]:
    hosts: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            host, _, provider = item.strip().partition("=")
            if host:
                hosts[host.lower()] = provider.strip()
    return hosts


def warn_open_proxy(options: Any) -> None:
    """Anyone who can reach a non-loopback listener can send traffic through it (and read the
    CA's trust): say so, for each such listener, when no proxyauth guards them. mitmweb's
    interface shows every request, headers (API keys) included: before mitmproxy 12 (no
    web_password) it has no password at all."""
    if not options.proxyauth:
        for host, spec in open_listeners(options.mode, options.listen_host):
            log.warning(
                "llm-metrics: the proxy listens on %s without proxyauth (mode %s): anyone who can reach this "
                "machine can use it. Use --listen-host 127.0.0.1 (or MODE@127.0.0.1:PORT), or set proxyauth.",
                host or "all interfaces", spec)
    if "web_host" in options and "web_password" not in options and not _is_loopback(options.web_host):
        log.warning(
            "llm-metrics: mitmweb's interface listens on %s with no password: anyone who can reach it reads "
            "every request, API keys in their headers included. Use --set web_host=127.0.0.1.",
            options.web_host or "all interfaces")


def open_listeners(modes: Sequence[str], listen_host: str) -> list[tuple[str, str]]:
    """(host, mode spec) of each listener beyond loopback: a mode's own `@host:port`, else
    --listen-host. Modes that open no listener (local, tun), and WireGuard and DNS, which carry
    no proxied HTTP anyone could send, are not listed. A spec's URL is shown without secrets."""
    found = []
    for spec in modes:
        try:
            mode = ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy refuses it itself
        if mode.listen_port() is None or mode.type_name in ("wireguard", "dns"):
            continue
        host = mode.listen_host(listen_host)
        if not _is_loopback(host):
            found.append((host, spec.replace(mode.data, redact(mode.data)) if mode.data else spec))
    return found


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every interface) or a name that may resolve anywhere


def warn_flow_detail(options: Any) -> None:
    """mitmdump's own line per request (flow_detail 1, its default) prints the URL whole, a key
    in its query (Gemini's ?key=) included; from 2 on it prints every header (Authorization)."""
    detail = options.flow_detail if "flow_detail" in options else 0  # mitmweb has no such option
    if detail >= 1:
        shown = "URL and headers, API keys" if detail >= 2 else "URL whole, a key in its query (?key=)"
        log.warning("llm-metrics: mitmproxy prints each request's %s included (flow_detail=%d): "
                    "--set flow_detail=0 keeps them out of this output (python3 dev.py run sets it)", shown, detail)


def warn_unknown_options(options: Any) -> None:
    """mitmproxy keeps `--set` names no addon declared and says nothing: catch our typos."""
    deferred = getattr(options, "deferred", None) or {}
    for name in deferred:
        if name.startswith("llm_metrics"):
            log.error("llm-metrics: unknown option %r (ignored); see `mitmdump --options`", name)
