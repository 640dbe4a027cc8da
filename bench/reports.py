"""How long `python -m reports` takes on big databases: a script, not a timed test.

Generates SQLite databases of N calls spread over 30 days (ending now) and 20 models, through
`storage.open_database` and the real migrations so the schema is the one users have, then times
the real command (a fresh process each run, output to /dev/null, as a user would wait for it):
the default view, and `--since 24h`. Each size is timed as migrated (with m005's report indexes,
built after the rows are in, as an upgrade of an existing database builds them: that time is
printed), and again on a copy without them (--no-baseline skips it).

With --inserts, what the indexes cost the writer: rows/s of the real storage `RowWriter` (a
backlog, 500-row transactions) and of plain `executemany` in 500-row transactions, appending
20,000 more calls like the generated ones to a copy of each N-call database, with and without
the indexes; and the file's bytes per call.

    python bench/reports.py                 # 100k and 1M calls (generated once, then cached)
    python bench/reports.py --10m           # and 10M (several minutes to generate the first time)
    python bench/reports.py --sizes 1000000 --inserts --no-views
    python bench/reports.py --sizes 50000 --runs 5
    python bench/reports.py --sample /tmp/sample.db   # the small database of the README's example

Generated databases are kept in --cache (default: $TMPDIR/llm-metrics-bench) and remade when a
day old (so `--since 24h` keeps selecting about a day of calls).
"""

from __future__ import annotations

import argparse
import io
import os
import random
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

from playhouse.migrate import SqliteMigrator  # noqa: E402

from migrations import STEPS, upgrade  # noqa: E402
from reports.indexes import drop_report_indexes  # noqa: E402
from storage import RowWriter, open_database  # noqa: E402
from storage.timestamps import utc_text  # noqa: E402

DAYS = 30
MODELS = 20
TARGETS_S = {"default view": 2.0, "--since 24h": 0.5}
ENDPOINTS = (
    ("openai", "api.openai.com"), ("anthropic", "api.anthropic.com"),
    ("gemini", "generativelanguage.googleapis.com"), ("mistral", "api.mistral.ai"), ("openai-compatible", "127.0.0.1"),
)
ORIGINS = ("billing-job", "OpenAI/Python", "curl", "support-bot", "evals", "AsyncOpenAI/Python")
FAILURES = ((429, "rate_limit_exceeded", "Rate limit reached"), (500, "http_500", "Internal error"),
            (503, "http_503", "Overloaded"), (None, "connection_refused", None))
COLUMNS = (
    "timestamp", "success", "status_code", "response_time_ms", "model", "request_model", "provider", "host",
    "path", "origin", "is_streaming", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
    "finish_reason", "time_to_first_byte_ms", "time_to_first_token_ms", "time_to_last_token_ms",
    "tokens_per_second", "chunk_count", "error_type", "error_message",
)


MODEL_NAMES = (
    "gpt-4o-mini", "gpt-4o", "claude-3-5-haiku", "claude-sonnet-4", "gemini-2.0-flash", "mistral-small",
    "llama-3.1-8b", "gpt-4.1", "gpt-4.1-mini", "claude-opus-4", "gemini-2.5-pro", "mistral-large",
    "qwen2.5-7b", "o3-mini", "o4-mini", "gpt-4.1-nano", "claude-3-7-sonnet", "gemini-1.5-flash",
    "codestral", "llama-3.3-70b",
)
# the provider each model's calls go to (index into ENDPOINTS)
_MODEL_ENDPOINT = {"gpt": 0, "o3": 0, "o4": 0, "claude": 1, "gemini": 2, "mistral": 3, "codestral": 3, "llama": 4, "qwen": 4}


REPORT_STEP = next(s for s in STEPS if s.name.endswith("_report_indexes"))


def generate(path: Path, n: int, *, days: int = DAYS, models: int = MODELS, seed: int = 1) -> float:
    """N calls in time order over `days` days ending now; 3 % fail, 60 % are streamed. The rows go
    in before the report indexes, which the real step then builds: returns the seconds that took."""
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)
    db = open_database(str(path))
    upgrade(db)
    db.close()
    drop_report_indexes(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous = OFF")
    sql, columns = insert_sql(con)
    rows = _rows(n, seed, "cost_usd" in columns, days, models)
    while batch := [row for _, row in zip(range(50_000), rows)]:
        con.executemany(sql, batch)
    con.commit()
    con.close()
    db = open_database(str(path))
    started = time.perf_counter()
    with db.atomic():
        REPORT_STEP.apply(db, SqliteMigrator(db))
    built = time.perf_counter() - started
    db.close()
    return built


def insert_sql(con: sqlite3.Connection) -> tuple[str, tuple[str, ...]]:
    has_cost = "cost_usd" in {row[1] for row in con.execute("PRAGMA table_info(completion_requests)")}
    columns = COLUMNS + (("cost_usd",) if has_cost else ())
    return f"INSERT INTO completion_requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", columns


def _rows(n: int, seed: int, has_cost: bool, days: int, count: int):
    rng = random.Random(seed)
    # name, endpoint, median TTFT (log ms), median output tokens/s
    models = [
        (name, ENDPOINTS[next(v for k, v in _MODEL_ENDPOINT.items() if name.startswith(k))],
         rng.uniform(5.0, 6.8), rng.uniform(35, 180))
        for name in MODEL_NAMES[:count]
    ]
    weights = [1 / (i + 1) ** 1.3 for i in range(count)]  # a few models take most calls
    end = time.time()
    start = end - days * 86400
    for i in range(n):
        moment = start + (i + rng.random()) * (end - start) / n
        model, (provider, host), ttft_mu, speed = rng.choices(models, weights)[0]
        ok = rng.random() > 0.03
        streamed = rng.random() < 0.6
        prompt = rng.randint(10, 8000)
        completion = max(1, int(rng.lognormvariate(5.3, 0.9))) if ok else None
        ttft = int(rng.lognormvariate(ttft_mu, 0.5))
        if ok:
            generation_ms = completion / (speed * rng.lognormvariate(0, 0.25)) * 1000
            latency = int(ttft + generation_ms + rng.uniform(0, 30))
        else:
            latency = rng.choice((int(rng.uniform(80, 600)), 30_000 + rng.randint(0, 500)))
        first = last = tokens_per_second = None
        if streamed and ok:
            first, last = ttft, int(ttft + generation_ms)
            # as addon/record.py has it: the tokens after the first over first to last token
            tokens_per_second = round((completion - 1) / ((last - first) / 1000), 3) if last > first and completion > 1 else None
        status, error_type, message = (200, None, None) if ok else rng.choice(FAILURES)
        row = (
            utc_text(moment), ok, status, latency,
            model, model, provider, host, "/v1/chat/completions", rng.choice(ORIGINS), streamed, prompt, completion,
            prompt + (completion or 0), prompt // 3, "stop" if ok else None, min(latency, ttft), first, last,
            tokens_per_second, completion if streamed else None, error_type, message,
        )
        if has_cost:
            priced = ok and rng.random() > 0.02
            row += ((prompt * 2.5 + completion * 10) / 1e6 if priced else None,)
        yield row


def without_indexes(indexed: Path) -> Path:
    """A compacted copy without the report indexes (what a database before m005 holds)."""
    plain = indexed.with_name(indexed.stem + "-without.db")
    if not plain.exists() or plain.stat().st_mtime < indexed.stat().st_mtime:
        scratch = indexed.with_name(indexed.stem + "-scratch.db")
        shutil.copyfile(indexed, scratch)
        drop_report_indexes(scratch)
        plain.unlink(missing_ok=True)
        con = sqlite3.connect(scratch)
        con.execute("VACUUM INTO ?", (str(plain),))
        con.close()
        scratch.unlink()
    return plain


def insert_rates(path: Path, n: int = 20_000) -> tuple[float, float]:
    """Rows/s of RowWriter and of plain executemany (500-row transactions) appending n calls to
    copies of `path`, opened as the proxy opens it (WAL, synchronous=normal)."""
    rates = []
    for how in ("writer", "executemany"):
        copy = path.with_name(path.stem + "-inserts.db")
        shutil.copyfile(path, copy)
        db = open_database(str(copy))
        con = db.connection()
        sql, columns = insert_sql(con)
        rows = list(_rows(n, 7, "cost_usd" in columns, 1, MODELS))
        started = time.perf_counter()
        if how == "writer":
            writer = RowWriter(db, queue_size=n)
            for row in rows:
                writer.submit(dict(zip(columns, row)))
            started = time.perf_counter()
            writer.start()
            while writer.written < n and writer.dropped == 0:
                time.sleep(0.002)
            elapsed = time.perf_counter() - started
            writer.close()
        else:
            for i in range(0, n, 500):
                with db.atomic():
                    con.executemany(sql, rows[i : i + 500])
            elapsed = time.perf_counter() - started
        rates.append(n / elapsed)
        db.close()
        for leftover in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
            leftover.unlink(missing_ok=True)
    return rates[0], rates[1]


def database(cache: Path, n: int, fresh: bool) -> Path:
    path = cache / f"calls-{n}.db"
    if fresh or not path.exists() or time.time() - path.stat().st_mtime > 86400:
        started = time.perf_counter()
        print(f"generating {n:,} calls in {path} …", file=sys.stderr, flush=True)
        built = generate(path, n)
        print(f"  {time.perf_counter() - started:.0f} s, of which {REPORT_STEP.name} building its indexes on "
              f"{n:,} rows: {built:.1f} s (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return path


def time_command(path: Path, args: list[str], runs: int) -> list[float]:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("LLM_METRICS_DB", None)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "reports", "--db", str(path), *args], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return times


def time_in_process(path: Path, args: list[str], runs: int) -> tuple[float, float, float]:
    """Median seconds to load and render the report inside this process (the command minus
    interpreter start-up and imports), its CPU seconds, and the MB it read from files: CPU well
    under the wall time means waiting for the disk (pages the OS did not keep cached)."""
    from rich.console import Console

    from reports.cli import build_parser, make_report

    samples = []
    for _ in range(runs):
        read, cpu, started = _bytes_read(), time.process_time(), time.perf_counter()
        Console(file=io.StringIO(), width=100).print(make_report(build_parser().parse_args(args), str(path)))
        samples.append((time.perf_counter() - started, time.process_time() - cpu, (_bytes_read() - read) / 2**20))
    return sorted(samples)[len(samples) // 2]


def _bytes_read() -> int:
    with open("/proc/self/io") as io_stats:
        return next(int(line.split()[1]) for line in io_stats if line.startswith("rchar:"))


def selected(path: Path, args: list[str]) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    if not args:
        return con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]
    since = utc_text(time.time() - 86400)
    return con.execute("SELECT count(*) FROM completion_requests WHERE timestamp >= ?", (since,)).fetchone()[0]


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:,.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of calls")
    parser.add_argument("--10m", dest="ten_million", action="store_true", help="also 10,000,000 calls")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell (median shown)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "llm-metrics-bench")
    parser.add_argument("--fresh", action="store_true", help="generate the databases again")
    parser.add_argument("--no-baseline", action="store_true", help="skip the copies without the report indexes")
    parser.add_argument("--no-views", action="store_true", help="skip timing the report")
    parser.add_argument("--inserts", action="store_true", help="also the writer's rows/s with and without the indexes")
    parser.add_argument("--sample", type=Path, metavar="PATH",
                        help="only write a small database (3,000 calls over the last day, 6 models) to PATH: the README's example")
    args = parser.parse_args()
    if args.sample:
        generate(args.sample, 3000, days=1, models=6, seed=11)
        print(f"wrote {args.sample}: python -m reports --db {args.sample} --since 12h --top 5")
        return 0
    sizes = [int(s) for s in args.sizes.split(",")] + ([10_000_000] if args.ten_million else [])
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.runs} runs per cell, median (min)")
    floor = time_command(Path("unused"), ["--help"], args.runs)
    print(f"start-up floor (python -m reports --help): {statistics.median(floor):.2f} s")
    print(f"{'calls':>12}  {'indexes':<8} {'file':>9}  {'view':<13} {'selected':>10}  {'seconds':>13}  "
          f"{'in-process':>10} {'cpu':>5} {'read MB':>8}  target")
    inserts = []
    for n in sizes:
        indexed = database(args.cache, n, args.fresh)
        variants = [("m005", indexed)] + ([] if args.no_baseline and not args.inserts else [("none", without_indexes(indexed))])
        for label, path in variants:
            if args.inserts:
                inserts.append((n, label, path.stat().st_size / n, *insert_rates(path)))
            if args.no_views or (label == "none" and args.no_baseline):
                continue
            for view, view_args in (("default view", []), ("--since 24h", ["--since", "24h"])):
                times = time_command(path, view_args, args.runs)
                inside, cpu, read_mb = time_in_process(path, view_args, args.runs)
                target = TARGETS_S[view]
                verdict = "ok" if statistics.median(times) < target else "MISSED"
                print(
                    f"{n:>12,}  {label:<8} {_size(path):>9}  {view:<13} {selected(path, view_args):>10,}  "
                    f"{statistics.median(times):>6.2f} ({min(times):.2f})  {inside:>10.2f} {cpu:>5.2f} {read_mb:>8,.0f}  "
                    f"< {target:g} s {verdict}",
                    flush=True,
                )
    if inserts:
        print(f"\nappending 20,000 calls (500-row transactions; load {os.getloadavg()[0]:.2f})")
        print(f"{'calls':>12}  {'indexes':<8} {'bytes/call':>10}  {'RowWriter rows/s':>16}  {'executemany rows/s':>18}")
        for n, label, per_row, writer, plain in inserts:
            print(f"{n:>12,}  {label:<8} {per_row:>10,.0f}  {writer:>16,.0f}  {plain:>18,.0f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
