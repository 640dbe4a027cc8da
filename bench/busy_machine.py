"""The proxy on a machine busy with other work: does the metering keep up?

    .venv/bin/python bench/busy_machine.py [--quick] [--hogs N] [--seconds S]

The metering process runs at nice 10 (addon/worker.py): on a machine with every core busy it gets
a small share of the CPU, not none. Here N busy loops at normal priority (default: one per core)
take the machine while the load client sends small non-streamed chat completions at concurrency
16 through `mitmdump -s addon/llm_metrics.py`. The hooks never wait for the metering: if more than
8 MiB wait for it (`addon.handover.BACKLOG_LIMIT`), calls are not handed over and are counted in
the `dropped_rows` table as `metering_behind`.

Prints the client's latencies and errors; how far behind the metering was while the load ran
(every 0.25 s the rows stored, against the calls that had ended by then as the rows stored at the
end say: at most and at the load's end); how long after the load's end (the busy loops stop then)
the last row was stored; the metering process's CPU during the load; the `dropped_rows` table by
reason; and whether the addon said it fell behind or lost calls. It does not run bare mitmdump
beside it: the latencies are those of a proxy sharing the cores with the busy loops, not the
addon's share.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime

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

BEHIND = "llm-metrics: the metering is"  # ... MB behind the traffic: calls are not recorded
LOST = ("are lost (counted as", "were not stored:", "ended unexpectedly")  # addon/llm_metrics.py, addon/backends.py
SUMMARY = "call(s) recorded in"  # the metering's last line: rows written and dropped


def dropped_by_reason(db_path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT reason, sum(row_count) FROM dropped_rows GROUP BY reason ORDER BY reason"))
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def call_ends_utc(db_path) -> list[float]:
    """When each recorded call ended (epoch seconds, sorted): its start plus its response time."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT timestamp, response_time_ms FROM completion_requests").fetchall()
    finally:
        con.close()
    return sorted(datetime.fromisoformat(ts).timestamp() + (ms or 0) / 1000 for ts, ms in rows)


class RowWatch:
    """Samples the rows stored every 0.25 s while the load runs, and the addon's log for its word
    that it fell behind."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, rows stored)
        self.behind_after_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.sample()
            if self.behind_after_s is None and BEHIND in self.proxy.log():
                self.behind_after_s = time.monotonic() - self.started

    def sample(self) -> int:
        n = count_rows(self.proxy.db_path)
        self.samples.append((time.time(), n))
        return n

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def behind(self, ends: list[float]) -> list[int]:
        """At each sample, the calls that had ended (as their rows say, once all are stored) but
        were not stored yet."""
        return [bisect.bisect_right(ends, t) - n for t, n in self.samples]


def _settle(proxy: Proxy, served: int, since: float, quiet_s: float = 1.0, limit_s: float = 60.0):
    """Rows stored after the load, every 50 ms, until every call served is stored and no row came
    for `quiet_s` (the cut-off ones too), or `limit_s`: [(seconds since `since`, rows stored)]."""
    samples = [(time.monotonic() - since, count_rows(proxy.db_path))]
    while samples[-1][0] < limit_s:
        time.sleep(0.05)
        samples.append((time.monotonic() - since, count_rows(proxy.db_path)))
        n = samples[-1][1]
        if n >= served and next(t for t, m in samples if m == n) < samples[-1][0] - quiet_s:
            break
    return samples


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
        wait_rows(proxy.db_path, warm["done"] + 4, timeout=30)
        time.sleep(0.5)  # the warm-up's cut-off ones too: the load starts with the metering idle
        before = count_rows(proxy.db_path)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        watch = RowWatch(proxy)
        cpu0 = proxy.thread_cpu_s()
        watch.start()
        out = run_client({"target": proxy.port, "upstream_port": upstream.port, "mode": "chat",
                          "concurrency": 16, "seconds": args.seconds})
        load_end = time.monotonic()
        cpu1 = proxy.thread_cpu_s()
        watch.stop()
        stored_during = watch.sample()  # the last sample: the load's end
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    try:
        # Every request served: the load client counts neither each connection's first (a warm-up)
        # nor up to one per connection cut off by its window's end, which the proxy still served.
        served_before = warm["done"] + 4
        served = served_before + out["done"] + 16
        after = _settle(proxy, served, load_end)
        stored = after[-1][1]
        caught_up_s = next(t for t, n in after if n == stored) if stored >= served else None
    finally:
        proxy.stop()  # the writer stores what it counted as dropped, at the latest now
        upstream.stop()
    dropped = dropped_by_reason(proxy.db_path)
    behind = watch.behind(call_ends_utc(proxy.db_path))
    log = proxy.log()
    lat = out["latency_us"]
    rate = out["done"] / out["elapsed_s"]
    print(table(["busy loops", "requests", "req/s", "errors", "p50 ms", "p99 ms", "max ms"],
                [[args.hogs, out["done"], rate, out["errors"], pct(lat, 50) / 1000, pct(lat, 99) / 1000,
                  max(lat) / 1000]],
                title=f"Concurrency 16 for {args.seconds:g} s with {args.hogs} busy loop(s) at normal priority: the client"))
    print()
    print(table(["rows stored during load", "behind at most", "behind at the end", "all stored after load",
                 "rows stored at the end", "requests served", "metering process CPU during load"],
                [[stored_during - before, max(behind), behind[-1],
                  "not within 60 s" if caught_up_s is None else f"{caught_up_s:.2f} s after", stored,
                  f"{served:,}..{served + 4 + 16:,}",
                  f"{100 * (cpu1['worker'] - cpu0['worker']) / out['elapsed_s']:.1f} % of a core"]],
                title="The metering ('behind': calls ended but not stored yet, sampled every 0.25 s during the load)"))
    print()
    print(f"dropped_rows by reason: {', '.join(f'{r}: {n:,}' for r, n in dropped.items()) or 'none'}")
    said = (f"yes, after {watch.behind_after_s:.1f} s of load" if watch.behind_after_s is not None
            else "yes (after the load)" if BEHIND in log else "no")
    print(f"the addon said it fell behind (BACKLOG_LIMIT waiting): {said}; calls said lost or not stored: "
          f"{'see the log: ' + str(proxy.log_path) if any(w in log for w in LOST) else 'none'}")
    summary = [line.strip() for line in log.splitlines() if SUMMARY in line]
    print(f"the metering's summary: {summary[-1] if summary else 'none in the log'}")
    print_end()


if __name__ == "__main__":
    main()
