"""The indexes that let the report read a large SQLite table without sorting it.

The report works without them, exactly, and stays fast on time-limited views (`--since 24h`
uses the timestamp index every database has). Over a whole table of a million calls, though,
SQLite must sort (it has no hash aggregation and no percentile function) and the default view
takes several seconds; with these it takes about a second (numbers: `python bench/reports.py`).

The report never creates them: it opens the database read-only. They are listed here for the
migration that adds them, and for the benchmark and tests, which create them on their own copies.
What each serves:

- `report_totals` covers every count and sum per (model, provider, host, origin): the overview and
  all three per-group tables in one pass over the index, in key order, with no sort.
- `report_<grouping>_<column>` holds one grouping's values in order, so each percentile is one
  `LIMIT 1 OFFSET k` step inside one group's part of the index (and the slowest calls are the
  top of each model's part). TTFT and tokens/s exist only for streamed calls: partial indexes.
- `report_errors` holds the failed calls only (a few percent), for the errors section and the
  timeline's error counts, which would otherwise read every row (`success` is in it so that
  SQLite needs nothing else).
"""

_GROUPINGS = (("model", "model"), ("provider_host", "provider, host"), ("origin", "origin"))

RECOMMENDED_INDEXES: tuple[str, ...] = (
    "CREATE INDEX IF NOT EXISTS report_totals ON completion_requests (model, provider, host, origin, "
    "success, is_streaming, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, "
    "time_to_first_token_ms, tokens_per_second, cost_usd)",
    *(
        f"CREATE INDEX IF NOT EXISTS report_{name}_{short} ON completion_requests ({keys}, {column}){where}"
        for name, keys in _GROUPINGS
        for short, column, where in (
            ("latency", "response_time_ms", ""),
            ("ttft", "time_to_first_token_ms", " WHERE time_to_first_token_ms IS NOT NULL"),
            ("tps", "tokens_per_second", " WHERE tokens_per_second IS NOT NULL"),
        )
    ),
    "CREATE INDEX IF NOT EXISTS report_errors ON completion_requests (status_code, error_type, timestamp, success) "
    "WHERE NOT success",
)
