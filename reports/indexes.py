"""What the report expects of the indexes that migration m005 (`m005_report_indexes`) creates.

The report works without them, exactly, and stays fast on time-limited views (`--since 24h`
uses the timestamp index every database has). Over a whole table of a million calls, though,
SQLite must sort (it has no hash aggregation and no percentile function) and the default view
takes several seconds; with them it reads index runs in order (numbers: `python bench/reports.py`).

The report never creates or requires them: it opens the database read-only, and before using
one it asks SQLite's query planner whether the index serves the query (`reports.runs.
streams_from_index`), so a database without them gets the same numbers, only slower. The step
freezes its own SQL; this module only names what the report relies on:

- RUN_KEYS lead every value index: each combination of them (a "run") is one contiguous range of
  the index, sorted by the value. A report group (a model, a provider/host, an origin) is a few
  runs, which SQLite merges in order without sorting (`reports.runs`).
- `report_calls` holds the run keys, then `response_time_ms`, then every column the counts and
  sums need: the totals per run in one ordered pass, the latency runs, the slowest calls.
- `report_ttft` and `report_tps` are the runs of time to first token and tokens/s, only for
  the streamed calls that have them (partial indexes).
- `report_errors` holds the failed calls only, for the errors section and the timeline.

Why one index per value over all run keys, not one per grouping and value: a value-ordered index
puts each new row on a random page, which the writer pays for on every insert (appending to a
million-call file with these, plain executemany does 5,900 rows/s instead of 39,000:
`python bench/reports.py --inserts`), so the report gets three of them, not nine. Walking a
merge of runs costs more than walking one index; `reports.runs` keeps most of each walk inside
single runs, so the default view over a million calls still takes about 1.5 s (docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3

RUN_KEYS: tuple[str, ...] = ("model", "provider", "host", "origin")

REPORT_INDEXES: tuple[str, ...] = ("report_calls", "report_ttft", "report_tps", "report_errors")
"""Their names (for the benchmark and tests, which drop them on copies to compare)."""


def drop_report_indexes(path: str) -> None:
    """For the benchmark and tests only (the report never writes): a copy of a migrated SQLite
    file without these indexes, i.e. what a database before m005 held."""
    con = sqlite3.connect(path)
    try:
        for name in REPORT_INDEXES:
            con.execute(f"DROP INDEX IF EXISTS {name}")
        con.commit()
    finally:
        con.close()
