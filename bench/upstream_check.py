"""Is the fake upstream fast enough to measure the proxy? The tests' upstream vs bench/_upstream.py.

    .venv/bin/python bench/upstream_check.py [--quick]

A benchmark whose upstream (or load client) is slower than the proxy measures nothing. For each
upstream: requests/s straight to it and through bare mitmdump, at concurrency 1 and 16, with the
upstream's and the client's CPU per request. The upstream is fast enough when direct requests/s is
many times the proxied one and the proxied figure does not change with the upstream.
"""

from __future__ import annotations

from _harness import Proxy, Upstream, bench_options, median, parse_options, print_start, run_client, scratch_dir, table


def main() -> None:
    args = parse_options(bench_options(__doc__, "1 s per cell instead of 3"))
    seconds, rounds = (1.0, 1) if args.quick else (3.0, 2)
    print_start()
    ups = {impl: Upstream(impl) for impl in ("lean", "tests")}
    proxy = Proxy("bare", scratch_dir("upcheck"))
    acc: dict = {}
    try:
        for _ in range(rounds):
            for impl, up in ups.items():
                for via in ("direct", "bare mitmdump"):
                    for conc in (1, 16):
                        u0 = up.cpu_s()
                        out = run_client({"target": "direct" if via == "direct" else proxy.port,
                                          "upstream_port": up.port, "mode": "chat", "concurrency": conc,
                                          "seconds": seconds})
                        a = acc.setdefault((impl, via, conc), {"rps": [], "up": 0.0, "cl": 0.0, "n": 0})
                        a["rps"].append(out["done"] / out["elapsed_s"])
                        a["up"] += up.cpu_s() - u0
                        a["cl"] += out["client_cpu_s"]
                        a["n"] += out["done"]
    finally:
        proxy.stop()
        for up in ups.values():
            up.stop()
    rows = [[f"{impl} upstream", via, conc, median(a["rps"]), a["up"] * 1e6 / a["n"], a["cl"] * 1e6 / a["n"]]
            for (impl, via, conc), a in acc.items()]
    print(table(["upstream", "path", "conc", "req/s", "upstream CPU us/req", "client CPU us/req"], rows,
                title="Small non-streamed chat completions"))
    for impl in ups:
        head = median(acc[(impl, "direct", 16)]["rps"]) / median(acc[(impl, "bare mitmdump", 16)]["rps"])
        print(f"{impl} upstream: direct / through bare mitmdump at concurrency 16 = {head:.1f} x headroom")


if __name__ == "__main__":
    main()
