"""How the metering process's scheduling, and its work, cost requests/s at one concurrency.

    .venv/bin/python bench/metering_priority.py [--quick] [--rounds N] [--seconds S] [--concurrency N]
                                                [--variants nice10,idle,...]

At concurrency 1 on a 2-core machine the client, the upstream, mitmproxy's loop and the metering
process take turns on two cores: whatever the metering does can delay the others. This runs small
non-streamed chat completions through bare mitmdump and through the addon with its metering
process scheduled in different ways (bench/priority_variants_addon.py says what each is), in
rounds whose order alternates, and prints each variant's median of its per-round ratio to bare.
"count-only" separates what the hooks and the pipe cost from what the metering's own work costs.
"""

from __future__ import annotations

import os
import sys

from _harness import (
    BENCH,
    Proxy,
    Upstream,
    bench_options,
    child_pids,
    loadavg,
    median,
    parse_options,
    print_end,
    print_start,
    run_client,
    scratch_dir,
    table,
)

VARIANTS = ("nice10", "idle", "nice19", "short-slice", "count-only")


def _scheduling(pid: int) -> str:
    """The metering process's nice value and policy, as the kernel has them (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    policy = {0: "normal", 3: "batch", 5: "idle"}.get(int(fields[38]), fields[38])
    return f"nice {fields[16]}, {policy}"


def measure(args) -> dict:
    upstream = Upstream()
    work = scratch_dir("priority")
    proxies = {"bare": Proxy("bare", work / "bare")}
    for variant in args.variants:
        os.environ["LLM_BENCH_METERING"] = variant  # read by the script in the proxy's process
        proxies[variant] = Proxy(str(BENCH / "priority_variants_addon.py"), work / variant, metrics=True)
    os.environ.pop("LLM_BENCH_METERING", None)
    rps = {name: [] for name in proxies}
    cpu = dict.fromkeys(proxies, 0.0)
    done = dict.fromkeys(proxies, 0)
    try:
        for proxy in proxies.values():  # first connections, lazy imports, the first row
            run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat", "concurrency": 2,
                        "seconds": 0.5})
        scheduling = {"bare": "-"}
        for name, proxy in proxies.items():
            if name != "bare":
                children = child_pids(proxy.proc.pid)
                if not children:
                    raise SystemExit(f"{name}: no metering process runs:\n{proxy.log()[-2000:]}")
                scheduling[name] = _scheduling(children[0])
        for r in range(args.rounds):
            order = list(proxies) if r % 2 == 0 else list(proxies)[::-1]
            for name in order:
                proxy = proxies[name]
                before = proxy.thread_cpu_s()["worker"]
                result = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat",
                                     "concurrency": args.concurrency, "seconds": args.seconds})
                cpu[name] += proxy.thread_cpu_s()["worker"] - before
                done[name] += result["done"]
                rps[name].append(result["done"] / result["elapsed_s"])
            print(f"  round {r + 1}/{args.rounds} done (load avg {loadavg()})", file=sys.stderr)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()
    return {"rps": rps, "cpu": cpu, "done": done, "scheduling": scheduling}


def render(data: dict, args) -> str:
    rps, base = data["rps"], data["rps"]["bare"]
    rows = []
    for name, values in rps.items():
        ratios = [a / b for a, b in zip(values, base)]
        per_call = data["cpu"][name] / data["done"][name] * 1e6 if data["done"][name] else 0.0
        rows.append([name, data["scheduling"][name], median(values), f"{median(ratios):.3f}", f"{min(ratios):.2f}..{max(ratios):.2f}", per_call])
    return table(["proxy", "metering process", "req/s", "/ bare", "rounds", "metering process CPU us/req"], rows,
                 title=f"Small non-streamed chat completions, concurrency {args.concurrency}, {args.rounds} rounds x "
                       f"{args.seconds:g} s per proxy (median req/s, median of each round's ratio to bare)")


def main() -> None:
    parser = bench_options(__doc__, "4 rounds of 1 s", rounds=16, seconds=2.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parse_options(parser, rounds=4, seconds=1.0)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    print_start()
    print(render(measure(args), args))
    print_end()


if __name__ == "__main__":
    main()
