"""What Prometheus metrics cost the proxy: the addon with `llm_metrics_prometheus` on (and its
/metrics scraped every second) against the addon without, side by side in one run.

    .venv/bin/python bench/exposition.py [--quick] [--rounds N] [--seconds S] [--concurrency 1,16]

Small non-streamed chat completions against one fake upstream (bench/_upstream.py), in alternating
rounds (the order rotated per round) through three mitmdump processes: the addon as shipped, the
addon with /metrics on, which a thread of this script scrapes every second as Prometheus would
(every 15 s by default: this is 15 times as often), and a second addon as shipped, the control:
its ratio to the first is what the machine's own noise makes of two identical proxies. The ratio
that matters: requests/s with /metrics on over off (target >= 0.98), beside the control's. CPU
per request: mitmdump's own (its event loop, where the hooks run) and its metering process's,
where rows are counted into the metrics and /metrics is served. Then, in this process, what one
row costs the metering (`Exports.observe`) and what one scrape of the series they make costs.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.request

from _harness import (
    Proxy,
    Upstream,
    bench_options,
    free_port,
    loadavg,
    median,
    parse_options,
    print_end,
    print_start,
    run_client,
    scratch_dir,
    table,
)

SCRAPE_EVERY_S = 1.0


class Scraper:
    """GET /metrics every SCRAPE_EVERY_S from a thread, counting scrapes and their bytes."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = self.failures = self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_EVERY_S):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.bytes += len(response.read())
                self.scrapes += 1
            except OSError:
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def measure(args) -> dict:
    upstream = Upstream()
    work = scratch_dir("exposition")
    metrics_port = free_port()
    proxies = {"off": Proxy("addon", work / "off"),
               "on": Proxy("addon", work / "on", f"llm_metrics_prometheus=127.0.0.1:{metrics_port}"),
               "control": Proxy("addon", work / "control")}
    scraper = Scraper(metrics_port)
    keys = [(v, c) for c in args.concurrency for v in proxies]
    rate = {k: [] for k in keys}
    cpu = {k: [0.0, 0.0, 0] for k in keys}  # mitmdump's seconds, its metering process's, requests
    try:
        for r in range(args.rounds):
            for conc in args.concurrency:
                names = list(proxies)[r % 3:] + list(proxies)[: r % 3]
                for name in names:
                    proxy = proxies[name]
                    cpu0 = proxy.thread_cpu_s()
                    out = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat",
                                      "concurrency": conc, "seconds": args.seconds, "tag": f"r{r}"})
                    cpu1 = proxy.thread_cpu_s()
                    rate[(name, conc)].append(out["done"] / out["elapsed_s"])
                    acc = cpu[(name, conc)]
                    acc[0] += cpu1["main"] + cpu1["other"] - cpu0["main"] - cpu0["other"]
                    acc[1] += cpu1["worker"] - cpu0["worker"]
                    acc[2] += out["done"]
            print(f"  round {r + 1}/{args.rounds} done (load avg {loadavg()})", file=sys.stderr)
    finally:
        scraper.stop()
        rows = {name: proxy.rows() for name, proxy in proxies.items()}
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
    return {"rate": rate, "cpu": cpu, "scraper": scraper, "rows": rows}


def observe_cost(n: int = 20_000) -> dict:
    """µs per row of `Exports.observe` (10 models, streamed and not, a failure in ten), and ms per
    scrape of the series they make."""
    from prometheus_client import CollectorRegistry, generate_latest

    from addon.exposition import Exports, ExportSettings

    exports = Exports(ExportSettings(), registry=CollectorRegistry())
    rows = [{"success": i % 10 != 0, "provider": "openai", "operation": "chat", "request_model": f"gpt-{i % 10}",
             "model": f"gpt-{i % 10}", "agent": ("codex", "claude-code")[i % 2], "is_streaming": i % 3 == 0,
             "response_time_ms": 300 + i % 5000, "time_to_first_token_ms": 100 + i % 900 if i % 3 == 0 else None,
             "prompt_tokens": 1000 + i, "completion_tokens": 200 + i % 300, "cost_usd": 0.001,
             "cached_tokens": 500, "cache_creation_tokens": None, "reasoning_tokens": 64,
             "error_type": None if i % 10 else "http_429"} for i in range(n)]
    for row in rows[:100]:
        exports.observe(row)
    start = time.perf_counter()
    for row in rows:
        exports.observe(row)
    per_row = (time.perf_counter() - start) / n
    start = time.perf_counter()
    text = generate_latest(exports.prometheus.registry)
    scrape = time.perf_counter() - start
    return {"row_us": per_row * 1e6, "scrape_ms": scrape * 1e3, "bytes": len(text),
            "samples": text.count(b"\n") - text.count(b"# ")}


def render(data: dict, args) -> str:
    rate, cpu, scraper = data["rate"], data["cpu"], data["scraper"]
    rows, lines = [], []
    for conc in args.concurrency:
        for name, title in (("off", "addon"), ("on", "addon, /metrics on"), ("control", "addon again (control)")):
            seconds, worker, n = cpu[(name, conc)]
            rows.append([title, conc, median(rate[(name, conc)]), seconds * 1e6 / max(1, n), worker * 1e6 / max(1, n)])
        ratios = [a / b for a, b in zip(rate[("on", conc)], rate[("off", conc)])]
        control = [a / b for a, b in zip(rate[("control", conc)], rate[("off", conc)])]
        lines.append(f"on / off requests/s at concurrency {conc:>2}: {median(ratios):.3f} (rounds {min(ratios):.2f}.."
                     f"{max(ratios):.2f}; target >= 0.98: {'met' if median(ratios) >= 0.98 else 'NOT met'}); "
                     f"control / off: {median(control):.3f} (rounds {min(control):.2f}..{max(control):.2f})")
    out = [table(["proxy", "conc", "req/s", "mitmdump CPU us/req", "metering process us/req"], rows,
                 title=f"Small non-streamed chat completions, {args.rounds} rounds x {args.seconds:g} s per proxy and "
                       "concurrency (median req/s; CPU over all rounds)"), ""]
    out += lines
    out.append(f"/metrics scraped {scraper.scrapes} times ({scraper.failures} failed), "
               f"{scraper.bytes / max(1, scraper.scrapes) / 1024:.1f} KiB each; rows stored: {data['rows']}")
    cost = data["observe"]
    out.append(f"in-process: Exports.observe {cost['row_us']:.1f} us a row; a scrape of its {cost['samples']:,} samples "
               f"({cost['bytes'] / 1024:.0f} KiB) {cost['scrape_ms']:.1f} ms")
    return "\n".join(out)


def main() -> None:
    parser = bench_options(__doc__, "3 rounds of 1 s (about 30 s)", rounds=12, seconds=1.5,
                           seconds_help="per proxy, concurrency and round")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    args = parse_options(parser, rounds=3, seconds=1.0)
    print_start()
    data = measure(args)
    data["observe"] = observe_cost()
    print(render(data, args))
    print_end()


if __name__ == "__main__":
    main()
