"""What each part of the addon costs the proxy: the same load through mitmdump with parts taken away.

    .venv/bin/python bench/addon_parts.py [--quick] [--rounds N] [--seconds S] [--concurrency N]

Small non-streamed chat completions at one concurrency (16 by default: the proxy's one core is
then the bottleneck, so requests/s follow its CPU per request), in alternating rounds against
one fake upstream (bench/_upstream.py), through:

- bare: mitmdump with no script (the limit);
- empty hooks: an addon whose hooks do nothing (what mitmproxy charges for calling an addon);
- addon, hooks only: addon/llm_metrics.py whose hooks keep what they keep, then throw it away
  instead of handing it over (bench/writer_variants_addon.py `bench_writer=drop`);
- addon, metering on the loop: `llm_metrics_worker=false`, the metering and its writer thread in
  mitmproxy's process (as before the metering process existed);
- addon, no call lines: the addon as shipped with `llm_metrics_log_calls=false`;
- addon: as shipped.

The differences between the rows are what each part costs. Ratios, not absolute figures, are what
holds from one run to the next on a shared machine.
"""

from __future__ import annotations

import sys

from _harness import (
    BENCH,
    Proxy,
    Upstream,
    bench_options,
    loadavg,
    median,
    parse_options,
    print_end,
    print_start,
    run_client,
    scratch_dir,
    table,
)

EMPTY_HOOKS = BENCH / "empty_hooks_addon.py"
VARIANTS = {  # name: (script or kind, --set options, whether it is the metrics addon)
    "bare": ("bare", (), False),
    "empty hooks": (str(EMPTY_HOOKS), (), False),
    "addon, hooks only": (str(BENCH / "writer_variants_addon.py"), ("bench_writer=drop",), True),
    "addon, metering on the loop": ("addon", ("llm_metrics_worker=false",), True),
    "addon, no call lines": ("addon", ("llm_metrics_log_calls=false",), True),
    "addon": ("addon", (), True),
}


def measure(args) -> dict:
    upstream = Upstream()
    work = scratch_dir("parts")
    proxies = {name: Proxy(kind, work / f"v{i}", *sets, metrics=metrics)
               for i, (name, (kind, sets, metrics)) in enumerate(VARIANTS.items())}
    rate = {name: [] for name in VARIANTS}
    cpu = {name: [0.0, 0, 0.0] for name in VARIANTS}  # mitmdump's seconds, requests, metering process's seconds
    try:
        for r in range(args.rounds):
            names = list(VARIANTS)
            names = names[r % len(names):] + names[: r % len(names)]
            for name in names:
                proxy = proxies[name]
                cpu0 = proxy.thread_cpu_s()
                out = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat",
                                  "concurrency": args.concurrency, "seconds": args.seconds, "tag": f"r{r}"})
                rate[name].append(out["done"] / out["elapsed_s"])
                cpu1 = proxy.thread_cpu_s()
                cpu[name][0] += cpu1["main"] + cpu1["other"] - cpu0["main"] - cpu0["other"]
                cpu[name][1] += out["done"]
                cpu[name][2] += cpu1["worker"] - cpu0["worker"]
            print(f"  round {r + 1}/{args.rounds} done (load avg {loadavg()})", file=sys.stderr)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
    return {"rate": rate, "cpu": cpu}


def render(data: dict, args) -> str:
    rate, cpu = data["rate"], data["cpu"]
    bare_cpu = cpu["bare"][0] * 1e6 / max(1, cpu["bare"][1])
    rows = []
    for name in VARIANTS:
        us = cpu[name][0] * 1e6 / max(1, cpu[name][1])
        ratios = [a / b for a, b in zip(rate[name], rate["bare"])]  # each round's, side by side
        rows.append([name, median(rate[name]), f"{median(ratios):.2f}", f"{min(ratios):.2f}..{max(ratios):.2f}",
                     us, us - bare_cpu, cpu[name][2] * 1e6 / max(1, cpu[name][1])])
    return table(["proxy", "req/s", "/ bare", "rounds", "mitmdump CPU us/req", "+ us/req over bare",
                  "metering process us/req"], rows,
                 title=f"Small non-streamed chat completions, concurrency {args.concurrency}, "
                       f"{args.rounds} rounds x {args.seconds:g} s per proxy (median req/s and of each round's ratio to bare; CPU over all rounds)")


def main() -> None:
    parser = bench_options(__doc__, "3 rounds of 1 s (about 30 s)", rounds=6, seconds=2.0,
                           seconds_help="per proxy and round")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parse_options(parser, rounds=3, seconds=1.0)
    print_start()
    print(render(measure(args), args))
    print_end()


if __name__ == "__main__":
    main()
