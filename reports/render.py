"""Rich renderables for a `Report`; the numbers come from `reports.data`, never from here."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from .data import Report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def overview_panel(report: Report) -> Panel:
    o = report.overview
    rate = "-" if o.success_rate is None else f"{o.success_rate:.1%}"
    lines = [
        f"[bold]{o.requests:,}[/] requests   {rate} succeeded   {o.errors:,} errors   {o.streamed:,} streamed",
        f"from {o.first_utc} to {o.last_utc}",
        f"tokens in {o.prompt_tokens:,} (cached {o.cached_tokens:,})   out {o.completion_tokens:,} "
        f"(reasoning {o.reasoning_tokens:,})",
    ]
    return Panel("\n".join(lines), title=f"LLM calls in {report.location}", expand=False)


def model_table(report: Report) -> Table:
    table = Table(title="By model (latency and TTFT in ms, exact nearest-rank percentiles)")
    table.add_column("model")
    for name in ("requests", "errors", "p50", "p95", "p99", "TTFT p50", "TTFT p95", "tokens in", "tokens out"):
        table.add_column(name, justify="right")
    for g in report.by_model:
        table.add_row(
            g.key, f"{g.requests:,}", f"{g.errors:,}",
            _ms(g.latency_ms.get("p50")), _ms(g.latency_ms.get("p95")), _ms(g.latency_ms.get("p99")),
            _ms(g.ttft_ms.get("p50")), _ms(g.ttft_ms.get("p95")),
            f"{g.prompt_tokens:,}", f"{g.completion_tokens:,}",
        )
    return table


def render(report: Report) -> Group:
    return Group(overview_panel(report), model_table(report))
