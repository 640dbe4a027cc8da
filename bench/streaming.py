"""Streaming: chunks/s through the proxy, client time to first chunk, recorded TTFT vs the truth.

    .venv/bin/python bench/streaming.py [--quick] [--rounds N] [--seconds S]

Paths, measured in alternating rounds in one run against one fake upstream (bench/_upstream.py):
direct; `mitmdump -s bench/stream_only_addon.py` (the baseline: bare mitmdump buffers event
streams, this only turns `flow.response.stream` on); `mitmdump -s addon/llm_metrics.py`.

1. Throughput: 50 concurrent streams of 100 content events each, sent by the upstream as fast as
   the path takes them; SSE events/s received by the clients. Target: addon >= 0.95 x baseline (issue 16).
2. Time to first chunk: the client's time from sending the request to receiving the first content
   event, with a true upstream delay (first chunk 50 ms after the request, one stream at a time;
   then 100 ms under load, 50 concurrent streams of 20 events 20 ms apart). Target: through the
   proxy <= direct + 5 ms (p50).
3. Recorded time_to_first_token_ms (rows matched to streams by their x-llm-metrics-origin tag) vs
   the truth the upstream measured (request read -> first content event written) and vs what the
   client saw. Target: within 5 ms of the truth (p50).
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
    rows_by_origin,
    run_client,
    scratch_dir,
    table,
)

VARIANTS = ("direct", "stream-only", "addon")
PHASES = {
    # name: (concurrency, x-bench-* headers, seconds factor, stagger_s)
    "throughput": (50, {"x-bench-words": "100"}, 1.0, 0.0),
    "ttft-1": (1, {"x-bench-words": "5", "x-bench-first-delay-ms": "50", "x-bench-chunk-delay-ms": "5"}, 0.6, 0.0),
    # A stream lasts about 0.5 s: the workers' first streams are spread over that.
    "ttft-50": (50, {"x-bench-words": "20", "x-bench-first-delay-ms": "100", "x-bench-chunk-delay-ms": "20"}, 1.0, 0.5),
}


def measure(args) -> dict:
    upstream = Upstream()
    work = scratch_dir("streaming")
    proxies = {v: Proxy(v, work / v) for v in VARIANTS if v != "direct"}
    acc = {(v, ph): {"eps": [], "streams": [], "cpu": 0.0, "cpu_worker": 0.0, "events": 0} for v in VARIANTS for ph in PHASES}
    try:
        for p in proxies.values():  # warm-up
            run_client({"target": p.port, "upstream_port": upstream.port, "mode": "stream", "concurrency": 4,
                        "seconds": 0.5, "tag": "warmup"})
        for r in range(args.rounds):
            order = VARIANTS[r % 3:] + VARIANTS[: r % 3]
            for phase, (conc, headers, factor, stagger) in PHASES.items():
                for v in order:
                    proxy = proxies.get(v)
                    spec = {"target": proxy.port if proxy else "direct", "upstream_port": upstream.port,
                            "mode": "stream", "concurrency": conc, "seconds": args.seconds * factor,
                            "stream_headers": headers, "tag": f"{phase}-r{r}", "stagger_s": stagger}
                    cpu0 = proxy.thread_cpu_s() if proxy else None
                    out = run_client(spec)
                    a = acc[(v, phase)]
                    if proxy:
                        cpu1 = proxy.thread_cpu_s()
                        a["cpu"] += cpu1["main"] + cpu1["other"] - cpu0["main"] - cpu0["other"]
                        a["cpu_worker"] += cpu1["worker"] - cpu0["worker"]
                    a["eps"].append(out["events_in_window"] / out["elapsed_s"])
                    a["events"] += sum(s["events"] + 1 for s in out["streams"])
                    a["streams"].extend(out["streams"])
            print(f"  round {r + 1}/{args.rounds} done (load avg {loadavg()})", file=sys.stderr)
        addon = proxies["addon"]
        addon.stop()  # flushes every queued row
        rows = rows_by_origin(addon.db_path, "")
        return {"acc": acc, "rows": rows}
    finally:
        for p in proxies.values():
            p.stop()
        upstream.stop()


def render(data: dict, args) -> str:
    acc, rows = data["acc"], data["rows"]
    out = []
    thr = []
    for v in VARIANTS:
        a = acc[(v, "throughput")]
        def per(key, v=v, a=a):
            return "-" if v == "direct" or not a["events"] else a[key] * 1e6 / a["events"]
        thr.append([v, median(a["eps"]), len(a["streams"]), per("cpu"), per("cpu_worker")])
    out.append(table(["path", "events/s", "streams done", "mitmdump CPU us/event", "metering process CPU us/event"], thr,
                     title=f"1. Throughput: 50 concurrent streams of 100 content events, {args.rounds} rounds x {args.seconds:g} s"))
    ratios = [a / b for a, b in zip(acc[("addon", "throughput")]["eps"], acc[("stream-only", "throughput")]["eps"])]
    out.append(f"addon / streaming baseline events/s: {median(ratios):.2f} (rounds {min(ratios):.2f}..{max(ratios):.2f}; "
               f"target >= 0.95: {'met' if median(ratios) >= 0.95 else 'NOT met'})")
    for phase, label in (("ttft-1", "one stream at a time, upstream first-token delay 50 ms"),
                         ("ttft-50", "50 concurrent streams, upstream first-token delay 100 ms")):
        out.append("")
        direct50 = pct([s["ttfc_us"] for s in acc[("direct", phase)]["streams"]], 50)
        trows = []
        for v in VARIANTS:
            streams = [s for s in acc[(v, phase)]["streams"] if s["ttfc_us"] is not None]
            ttfc = [s["ttfc_us"] / 1000 for s in streams]
            over_truth = [(s["ttfc_us"] - s["truth_ttft_us"]) / 1000 for s in streams if s["truth_ttft_us"]]
            p50 = pct(ttfc, 50)
            trows.append([v, len(streams), p50, pct(ttfc, 99),
                          "-" if v == "direct" else p50 - direct50 / 1000, pct(over_truth, 50), pct(over_truth, 99)])
        out.append(table(["path", "streams", "client TTFC p50 ms", "p99 ms", "+p50 vs direct ms",
                          "TTFC - upstream truth p50 ms", "p99 ms"], trows,
                         title=f"2. Client time to first content chunk: {label}"))
        added = trows[2][4]
        out.append(f"addon: client time to first chunk p50 = direct + {added:.1f} ms (target <= +5 ms: "
                   f"{'met' if added <= 5 else 'NOT met'})")
        out.append(_recorded(acc[("addon", phase)]["streams"], rows))
    return "\n".join(out)


def _recorded(streams: list[dict], rows: dict[str, dict]) -> str:
    vs_truth, vs_client, chunk_ok, matched = [], [], 0, 0
    for s in streams:
        row = rows.get(s["tag"])
        if row is None or row["time_to_first_token_ms"] is None or not s["truth_ttft_us"]:
            continue
        matched += 1
        vs_truth.append(row["time_to_first_token_ms"] - s["truth_ttft_us"] / 1000)
        vs_client.append(row["time_to_first_token_ms"] - s["ttfc_us"] / 1000)
        chunk_ok += row["chunk_count"] == s["events"]
    if not matched:
        return "3. recorded TTFT: no rows matched"
    p50 = pct(vs_truth, 50)
    return (f"3. recorded time_to_first_token_ms - upstream truth: p50 {p50:+.1f} ms, p99 {pct(vs_truth, 99):+.1f} ms; "
            f"- client's TTFC: p50 {pct(vs_client, 50):+.1f} ms ({matched} of {len(streams)} streams matched, "
            f"chunk_count right in {chunk_ok}; target |p50| <= 5 ms: {'met' if abs(p50) <= 5 else 'NOT met'}; "
            f"rows keep whole ms)")


def main() -> None:
    parser = bench_options(__doc__, "2 short rounds (about 30 s)", rounds=3, seconds=5.0,
                           seconds_help="per path and phase and round (scaled per phase)")
    args = parse_options(parser, rounds=2, seconds=1.5)
    print_start()
    print(render(measure(args), args))
    print_end()


if __name__ == "__main__":
    main()
