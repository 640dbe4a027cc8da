"""Retention at scale: a script, not a timed test.

1. Prune: N calls over 60 days (bench/reports.py's generator), the older half deleted by
   `python -m migrations prune --older-than 30d` (verified backup, batches, VACUUM), timed as a user
   waits for it, each phase from its own output; and `migrations.prune.prune` alone on a fresh copy.
2. A year kept as totals: N calls over 365 days, everything older than 30 days pruned, then
   `python -m reports` (default view, and `--since 365d`) timed, fresh process per run.

    python bench/prune.py                     # 1M calls (a few minutes)
    python bench/prune.py --rows 200000 --runs 2

Databases go to a temporary folder removed at exit (LLM_BENCH_KEEP=1 keeps it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reports import generate  # noqa: E402
from migrations.prune import cutoff, prune  # noqa: E402
from storage import open_database  # noqa: E402


def count(path: Path, where: str = "1") -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT count(*) FROM completion_requests WHERE {where}").fetchone()[0]
    finally:
        con.close()


def timed(args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, check=True)
    return time.perf_counter() - started, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each report command")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="llm-bench-prune-"))
    try:
        print(f"== prune: {args.rows:,} calls over 60 days, the older half")
        big = folder / "sixty-days.db"
        made = time.perf_counter()
        generate(big, args.rows, days=60)
        print(f"generated in {time.perf_counter() - made:.1f} s, {big.stat().st_size / 2**20:.0f} MiB")
        copy = folder / "copy.db"
        shutil.copy(big, copy)
        old = count(big, f"timestamp < '{cutoff('30d')}'")
        seconds, out = timed([sys.executable, "-m", "migrations", "prune", "--db", str(big), "--older-than", "30d"])
        print(f"python -m migrations prune --older-than 30d: {seconds:.1f} s for {old:,} calls deleted "
              f"({old / seconds:,.0f} calls/s, backup and VACUUM included)")
        for line in out.splitlines():
            print(f"  {line}")
        db = open_database(str(copy))
        started = time.perf_counter()
        done = prune(db, cutoff("30d"))
        alone = time.perf_counter() - started
        db.close()
        print(f"migrations.prune.prune alone (no backup, no VACUUM, 5,000-row batches with 50 ms pauses): {alone:.1f} s, "
              f"{done.rows / alone:,.0f} calls/s, {done.batches} batches")

        print(f"\n== a year kept: {args.rows:,} calls over 365 days, all but the last 30 days pruned")
        year = folder / "year.db"
        generate(year, args.rows, days=365)
        db = open_database(str(year))
        started = time.perf_counter()
        done = prune(db, cutoff("30d"), pause_s=0)
        print(f"pruned {done.rows:,} calls into {len(done.totals_rows):,} daily totals rows in "
              f"{time.perf_counter() - started:.1f} s; {count(year):,} calls left")
        db.close()
        for view in ([], ["--since", "365d"]):
            times = [timed([sys.executable, "-m", "reports", "--db", str(year), *view])[0] for _ in range(args.runs)]
            name = " ".join(view) or "default view"
            print(f"python -m reports {name}: median {statistics.median(times):.2f} s of {args.runs} "
                  f"({', '.join(f'{t:.2f}' for t in times)})")
    finally:
        if os.environ.get("LLM_BENCH_KEEP"):
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
