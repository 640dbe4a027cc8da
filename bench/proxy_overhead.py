"""Proxy overhead on small non-streamed chat completions: direct vs bare mitmdump vs the addon.

    .venv/bin/python bench/proxy_overhead.py [--quick] [--rounds N] [--seconds S]

One fake upstream (bench/_upstream.py), three paths to it measured in alternating rounds in one
run: direct, `mitmdump` alone, `mitmdump -s addon/llm_metrics.py` (defaults: its one-line log per
call on, rows to a fresh SQLite file). Each round runs every path at concurrency 1 and 16, in an
order rotated per round so drift on a shared machine falls on all of them alike. The load client
is a separate process; requests/s is the median over rounds, latencies are pooled.

The ratio that matters: requests/s with the addon over bare mitmdump (target >= 0.93, issue 16). The proxy's
CPU per request (from /proc: main thread = mitmproxy's event loop where every hook runs; other
threads; the addon's metering process, which parses, builds rows and writes them) says where the
difference comes from.
"""

from __future__ import annotations

import sys

from _harness import (
    Proxy,
    Upstream,
    bench_options,
    loadavg,
    median,
    parse_options,
    pct,
    print_end,
    print_start,
    run_client,
    scratch_dir,
    table,
    wait_rows,
)

VARIANTS = ("direct", "bare", "addon")


def measure(args) -> dict:
    upstream = Upstream(args.upstream)
    work = scratch_dir("overhead")
    proxies = {v: Proxy(v, work / v) for v in VARIANTS if v != "direct"}
    results = {(v, c): {"rps": [], "lat": [], "cpu_main": 0.0, "cpu_other": 0.0, "cpu_worker": 0.0, "n": 0, "errors": 0, "unfinished": 0, "warm": 0}
               for v in VARIANTS for c in args.concurrency}
    try:
        warm_up = 0
        for v, p in proxies.items():  # first connections, lazy imports, the first row
            done = run_client({"target": p.port, "upstream_port": upstream.port, "mode": "chat",
                               "concurrency": 4, "seconds": 0.5})["done"]
            warm_up += done + 4 if v == "addon" else 0  # + one uncounted request per connection
        for r in range(args.rounds):
            order = VARIANTS[r % 3:] + VARIANTS[: r % 3]
            for conc in args.concurrency:
                for v in order:
                    _one_run(v, conc, proxies.get(v), upstream, args, results[(v, conc)])
            print(f"  round {r + 1}/{args.rounds} done (load avg {loadavg()})", file=sys.stderr)
        completed = warm_up + sum(results[("addon", c)]["n"] + results[("addon", c)]["warm"] for c in args.concurrency)
        unfinished = 4 + sum(results[("addon", c)]["unfinished"] for c in args.concurrency)
        recorded = wait_rows(proxies["addon"].db_path, completed + unfinished, timeout=5)
        return {"results": results, "completed": completed, "unfinished": unfinished, "recorded": recorded}
    finally:
        for p in proxies.values():
            p.stop()
        upstream.stop()


def _one_run(variant, conc, proxy, upstream, args, acc) -> None:
    spec = {"target": "direct" if proxy is None else proxy.port, "upstream_port": upstream.port,
            "mode": "chat", "concurrency": conc, "seconds": args.seconds}
    before = proxy.thread_cpu_s() if proxy else None
    out = run_client(spec)
    if proxy:
        after = proxy.thread_cpu_s()
        acc["cpu_main"] += after["main"] - before["main"]
        acc["cpu_other"] += after["other"] - before["other"]
        acc["cpu_worker"] += after["worker"] - before["worker"]
    acc["rps"].append(out["done"] / out["elapsed_s"])
    acc["lat"].extend(out["latency_us"])
    acc["n"] += out["done"]
    acc["unfinished"] += conc  # at most one request per connection was cut off by the window
    acc["warm"] += conc  # and one uncounted warm-up request per connection
    acc["errors"] += out["errors"]


def render(data: dict, args) -> str:
    res = data["results"]
    rows = []
    for conc in args.concurrency:
        d = res[("direct", conc)]
        d50, d99 = pct(d["lat"], 50), pct(d["lat"], 99)
        for v in VARIANTS:
            a = res[(v, conc)]
            p50, p99 = pct(a["lat"], 50), pct(a["lat"], 99)
            cpu = (f"{a['cpu_main'] * 1000 / a['n']:.2f} + {a['cpu_other'] * 1000 / a['n']:.2f} + "
                   f"{a['cpu_worker'] * 1000 / a['n']:.2f}"
                   if v != "direct" and a["n"] else "-")
            rows.append([v, conc, median(a["rps"]), p50 / 1000, p99 / 1000,
                         "-" if v == "direct" else (p50 - d50) / 1000,
                         "-" if v == "direct" else (p99 - d99) / 1000, cpu, a["errors"]])
    out = [table(["path", "conc", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms",
                  "proxy CPU ms/req (loop + other threads + metering process)", "errors"], rows,
                 title=f"Small non-streamed chat completions, {args.rounds} rounds x {args.seconds:g} s per path and concurrency")]
    out.append("")
    for conc in args.concurrency:
        ratios = [a / b for a, b in zip(res[("addon", conc)]["rps"], res[("bare", conc)]["rps"])]
        out.append(f"addon / bare mitmdump requests/s at concurrency {conc:>2}: {median(ratios):.2f} "
                   f"(rounds {min(ratios):.2f}..{max(ratios):.2f}; target >= 0.93: "
                   f"{'met' if median(ratios) >= 0.93 else 'NOT met'})")
    out.append(f"rows recorded by the addon: {data['recorded']}; requests it served: {data['completed']} counted "
               f"+ up to {data['unfinished']} cut off by a window's end")
    return "\n".join(out)


def main() -> None:
    parser = bench_options(__doc__, "2 rounds of 1 s (about 30 s)", rounds=5, seconds=3.0,
                           seconds_help="per path, concurrency and round")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--upstream", choices=("lean", "tests"), default="lean",
                        help="lean: bench/_upstream.py; tests: the tests' ThreadingHTTPServer FakeUpstream")
    args = parse_options(parser, rounds=2, seconds=1.0)
    print_start()
    print(render(measure(args), args))
    print_end()


if __name__ == "__main__":
    main()
