"""The storage writer: rows/s it sustains into SQLite, and what its writing does to proxy latency.

    .venv/bin/python bench/writer.py [--quick] [--rows N] [--rounds N] [--seconds S]

1. Rows/s, in-process: the real `RowWriter` on a fresh, migrated SQLite file in WAL mode (as the
   proxy opens it), (a) with a backlog (every row queued before it starts: 500-row batches) and
   (b) one row per transaction (each row waits for the previous one, with the writer's batching
   window off: the cost of a transaction that holds a single row; with the window on, rows that
   arrive within 50 ms of each other share one transaction instead). Beside it, the same rows through
   plain `sqlite3.executemany` on the same kind of file: what SQLite itself allows.
   Target: >= 20,000 rows/s.
2. Proxy latency while the writer writes: small non-streamed requests, one at a time, through
   three proxies in alternating rounds (bench/writer_variants_addon.py): the addon as shipped;
   the same with the writer in its metering process kept busy by a backlog of synthetic rows;
   the same with nothing handed over to a metering at all. Target: no measurable change while
   writing.
"""

from __future__ import annotations

import sqlite3
import sys
import time

from _harness import (
    BENCH,
    FLOOD_ROW,
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
)

from migrations import upgrade
from storage import RowWriter, enable_wal, open_database

COLUMNS = list(FLOOD_ROW)


def _rows(n: int) -> list[dict]:
    return [{**FLOOD_ROW, "response_time_ms": 300 + i % 97, "origin": f"bench-{i % 7}"} for i in range(n)]


def _fresh_db(path):
    db = open_database(str(path), wal=False)
    upgrade(db)
    enable_wal(db)
    return db


def writer_backlog(path, rows) -> tuple[float, float]:
    db = _fresh_db(path)
    writer = RowWriter(db, queue_size=len(rows))
    for row in rows:
        writer.submit(row)
    t0 = time.perf_counter()
    writer.start()
    while writer.written < len(rows) and writer.dropped == 0:
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    writer.close()
    return len(rows) / elapsed, writer.written


def writer_one_by_one(path, rows) -> tuple[float, float]:
    db = _fresh_db(path)
    writer = RowWriter(db, batch_window=0)
    writer.start()
    t0 = time.perf_counter()
    for n, row in enumerate(rows, 1):
        writer.submit(row)
        while writer.written < n:
            time.sleep(0)  # yield the GIL until the writer has committed this row
    elapsed = time.perf_counter() - t0
    writer.close()
    return len(rows) / elapsed, writer.written


def sqlite_executemany(path, rows, batch: int) -> float:
    _fresh_db(path).close()
    con = sqlite3.connect(str(path), isolation_level=None)
    con.execute("PRAGMA synchronous=normal")
    sql = f"INSERT INTO completion_requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        con.execute("BEGIN")
        con.executemany(sql, [tuple(r[c] for c in COLUMNS) for r in rows[i : i + batch]])
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return len(rows) / elapsed


def part1(args) -> str:
    work = scratch_dir("writer")
    rows = _rows(args.rows)
    few = rows[: max(500, args.rows // 10)]
    results = {k: [] for k in ("backlog", "one", "sql500", "sql1")}
    for r in range(args.rounds):
        results["backlog"].append(writer_backlog(work / f"w{r}.db", rows)[0])
        results["sql500"].append(sqlite_executemany(work / f"s{r}.db", rows, 500))
        results["one"].append(writer_one_by_one(work / f"o{r}.db", few)[0])
        results["sql1"].append(sqlite_executemany(work / f"t{r}.db", few, 1))
    m = {k: median(v) for k, v in results.items()}
    body = table(["writes", "RowWriter rows/s", "sqlite3 executemany rows/s", "RowWriter / sqlite3"], [
        ["backlog, 500-row batches", m["backlog"], m["sql500"], f"{m['backlog'] / m['sql500']:.2f}"],
        ["one row per transaction", m["one"], m["sql1"], f"{m['one'] / m['sql1']:.2f}"],
    ], title=f"1. Rows/s into SQLite (WAL, synchronous=normal), {len(rows):,} rows backlog / {len(few):,} one by one, "
             f"median of {args.rounds} rounds")
    verdict = "met" if m["backlog"] >= 20_000 else "NOT met"
    return (body + f"\nRowWriter with a backlog: {m['backlog']:,.0f} rows/s (target >= 20,000: {verdict}); "
            f"a transaction holding one row costs {1e6 / m['one']:.0f} us (rows 50 ms apart or more get one each)")


def part2(args) -> str:
    upstream = Upstream()
    work = scratch_dir("writer-proxy")
    script = BENCH / "writer_variants_addon.py"
    variants = {"shipped": "real", "writer busy": "flood", "no metering": "drop"}
    proxies = {name: Proxy(str(script), work / mode, f"bench_writer={mode}") for name, mode in variants.items()}
    acc = {name: {"lat": [], "rows": 0.0, "secs": 0.0, "cpu": 0.0, "n": 0} for name in variants}
    try:
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[: r % 3]:
                p = proxies[name]
                rows0, cpu0 = p.rows(), p.thread_cpu_s()
                out = run_client({"target": p.port, "upstream_port": upstream.port, "mode": "chat",
                                  "concurrency": 1, "seconds": args.seconds})
                cpu1 = p.thread_cpu_s()
                a = acc[name]
                a["lat"].extend(out["latency_us"])
                a["rows"] += p.rows() - rows0
                a["secs"] += out["elapsed_s"]
                a["cpu"] += cpu1["worker"] - cpu0["worker"]
                a["n"] += out["done"]
            print(f"  round {r + 1}/{args.rounds} done (load avg {loadavg()})", file=sys.stderr)
    finally:
        for p in proxies.values():
            p.stop()
        upstream.stop()
    base = acc["shipped"]["lat"]
    rows = []
    for name, a in acc.items():
        rows.append([name, a["n"], pct(a["lat"], 50) / 1000, pct(a["lat"], 99) / 1000,
                     (pct(a["lat"], 50) - pct(base, 50)) / 1000, (pct(a["lat"], 99) - pct(base, 99)) / 1000,
                     a["rows"] / a["secs"], a["cpu"] / a["secs"] * 100])
    body = table(["addon's writer", "requests", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "rows/s written",
                  "metering process CPU %"], rows,
                 title=f"2. Proxy latency, one request at a time, {args.rounds} rounds x {args.seconds:g} s")
    busy, drop = acc["writer busy"]["lat"], acc["no metering"]["lat"]
    return (body + f"\nwhile the writer writes without pause: p50 {pct(busy, 50) / pct(drop, 50):.2f} x, "
            f"p99 {pct(busy, 99) / pct(drop, 99):.2f} x the latency with no writing at all")


def main() -> None:
    parser = bench_options(__doc__, "fewer rows, 2 short rounds (about 30 s)", rounds=3, seconds=5.0,
                           seconds_help="per proxy and round in part 2")
    parser.add_argument("--rows", type=int, default=50_000, help="rows in the backlog test")
    args = parse_options(parser, rows=10_000, rounds=2, seconds=2.0)
    print_start()
    print(part1(args))
    print()
    print(part2(args))
    print_end()


if __name__ == "__main__":
    main()
