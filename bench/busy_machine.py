"""The proxy on a machine busy with other work: does the metering keep up, and does it cost the
traffic anything?

    .venv/bin/python bench/busy_machine.py [--quick] [--hogs N] [--seconds S]

The metering process runs at SCHED_IDLE (addon/worker.py): it gets only CPU nobody else wants.
Here N busy loops at normal priority (default: one per core) take all of it, while the load
client sends small non-streamed chat completions at concurrency 16 through `mitmdump -s
addon/llm_metrics.py`. The idle-priority process falls behind; the addon should hand new calls
to a second one at nice 10 (its log says when), and every call served should become a row, with
no drop. Prints the client's latencies and errors, when the switch came, and the rows stored
once the busy loops stop.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

from _harness import (
    Proxy,
    Upstream,
    bench_options,
    count_rows,
    parse_options,
    pct,
    print_end,
    print_start,
    run_client,
    scratch_dir,
    table,
    wait_rows,
)

SWITCH = "llm-metrics: the metering process, at idle CPU priority, fell behind"


def main() -> None:
    parser = bench_options(__doc__, "4 s of load instead of 10")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy loops (default: one per core)")
    parser.add_argument("--seconds", type=float, default=10.0, help="of load, with the busy loops running")
    args = parse_options(parser, seconds=4.0)
    print_start()
    upstream = Upstream()
    proxy = Proxy("addon", scratch_dir("busy") / "addon")
    hogs: list[subprocess.Popen] = []
    try:
        warm = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat",
                           "concurrency": 4, "seconds": 0.5})
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        switch: list[float] = []
        watching = threading.Event()
        started = time.monotonic()

        def watch() -> None:
            while not watching.wait(0.05):
                if not switch and SWITCH in proxy.log():
                    switch.append(time.monotonic() - started)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        out = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat",
                          "concurrency": 16, "seconds": args.seconds})
        stored_during = count_rows(proxy.db_path)
        watching.set()
        watcher.join()
    finally:
        for hog in hogs:
            hog.kill()
    try:
        # Every request served: the load client counts neither each connection's first (a warm-up)
        # nor up to one per connection cut off by its window's end, which the proxy still served.
        served = warm["done"] + 4 + out["done"] + 16
        wait_rows(proxy.db_path, served, timeout=60)
        time.sleep(1.0)  # the cut-off ones too
        stored = count_rows(proxy.db_path)
    finally:
        proxy.stop()
        upstream.stop()
    log = proxy.log()
    switched = f"after {switch[0]:.1f} s of load" if switch else "none"
    lat = out["latency_us"]
    print(table(["busy loops", "requests", "req/s", "errors", "p50 ms", "p99 ms", "max ms", "switch to nice 10",
                 "rows stored during load", "rows stored at the end", "requests served"],
                [[args.hogs, out["done"], out["done"] / out["elapsed_s"], out["errors"], pct(lat, 50) / 1000,
                  pct(lat, 99) / 1000, max(lat) / 1000, switched, stored_during, stored,
                  f"{served:,}..{served + 4 + 16:,}"]],
                title=f"Concurrency 16 for {args.seconds:g} s with {args.hogs} busy loop(s) at normal priority"))
    dropped = re.findall(r"(\d+) row\(s\) dropped", log)
    print(f"rows dropped: {sum(int(d) for d in dropped)}; calls lost: "
          f"{'none said' if 'lost' not in log else 'see the log: ' + str(proxy.log_path)}")
    print_end()


if __name__ == "__main__":
    main()
