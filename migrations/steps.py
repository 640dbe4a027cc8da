"""Schema history, oldest first. A shipped step is never edited: change the schema with a new one.

Steps use frozen SQL or `playhouse.migrate` operations with fields declared here, never the live
models in `storage.models`, so each step keeps doing exactly what it did when it shipped.
"""

from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator

from .registry import step
from .schema import AddsColumns, AddsIndex, Creates, MakesNullable, columns_of_create

TABLE = "completion_requests"

# The original LLM Metrics Proxy's schema, verbatim, so its databases upgrade in place.
_ORIGINAL_SQLITE = """
CREATE TABLE IF NOT EXISTS completion_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    success BOOLEAN NOT NULL,
    status_code INTEGER NOT NULL,
    response_time_ms INTEGER NOT NULL,
    model TEXT,
    origin TEXT,
    is_streaming BOOLEAN NOT NULL,
    max_tokens INTEGER,
    temperature REAL,
    top_p REAL,
    message_count INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    finish_reason TEXT,
    time_to_first_token_ms INTEGER,
    time_to_last_token_ms INTEGER,
    tokens_per_second REAL,
    error_type TEXT,
    error_message TEXT
)
"""
_ORIGINAL_POSTGRES = (
    _ORIGINAL_SQLITE.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "SERIAL PRIMARY KEY")
    .replace("REAL", "DOUBLE PRECISION")
)


@step(
    1,
    "m001_original_schema",
    "completion_requests as the original LLM Metrics Proxy made it",
    promises=(Creates(TABLE, columns_of_create(_ORIGINAL_SQLITE)),),
)
def m001_original_schema(db: peewee.Database, migrator: SchemaMigrator) -> None:
    sql = _ORIGINAL_POSTGRES if isinstance(db, peewee.PostgresqlDatabase) else _ORIGINAL_SQLITE
    db.execute_sql(sql)


@step(
    2,
    "m002_capture_columns",
    "where a call went, cache/reasoning tokens, first byte, chunks",
    promises=(
        AddsColumns(TABLE, {"request_model": "text", "provider": "text", "host": "text", "path": "text"}),
        AddsColumns(TABLE, {c: "integer" for c in ("cached_tokens", "reasoning_tokens", "time_to_first_byte_ms", "chunk_count")}),
        MakesNullable(TABLE, "status_code"),
        AddsIndex(TABLE, ("timestamp",)),
        AddsIndex(TABLE, ("model", "timestamp")),
    ),
    rewrites=(TABLE,),  # SQLite cannot drop NOT NULL in place: the table is rebuilt
)
def m002_capture_columns(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Rows recorded before this step keep NULL here: the original never saw these values.
    text = {name: peewee.TextField(null=True) for name in ("request_model", "provider", "host", "path")}
    ints = {
        name: peewee.IntegerField(null=True)
        for name in ("cached_tokens", "reasoning_tokens", "time_to_first_byte_ms", "chunk_count")
    }
    for name, field in {**text, **ints}.items():
        migrator.add_column(TABLE, name, field).run()
    # A call that got no response (connection refused, reset) has no status code: NULL, not 0.
    # On SQLite this rebuilds the table, which would reset AUTOINCREMENT's high-water mark to the
    # largest id left: keep the old one, so ids of deleted rows are never handed out again.
    high_water = _autoincrement_high_water(db)
    migrator.drop_not_null(TABLE, "status_code").run()
    _restore_autoincrement_high_water(db, high_water)
    # Reports select by time range, overall and per model.
    migrator.add_index(TABLE, ("timestamp",)).run()
    migrator.add_index(TABLE, ("model", "timestamp")).run()


def _autoincrement_high_water(db: peewee.Database) -> int | None:
    if not isinstance(db, peewee.SqliteDatabase):
        return None
    if not db.execute_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        return None  # no AUTOINCREMENT table was ever made here
    row = db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name = ?", (TABLE,)).fetchone()
    return row[0] if row else None


def _restore_autoincrement_high_water(db: peewee.Database, high_water: int | None) -> None:
    if high_water is None:
        return
    db.execute_sql("DELETE FROM sqlite_sequence WHERE name = ? AND seq < ?", (TABLE, high_water))
    if db.execute_sql("SELECT 1 FROM sqlite_sequence WHERE name = ?", (TABLE,)).fetchone() is None:
        db.execute_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (TABLE, high_water))


# m003's columns: name -> (type family, the field the step adds). Frozen here, never the models.
_M003_COLUMNS = {
    # Prompt-cache writes: part of prompt_tokens, billed at their own rate (Anthropic).
    "cache_creation_tokens": ("integer", peewee.IntegerField),
    # The provider's finish_reason mapped to stop/length/tool_calls/content_filter/error/other.
    "finish_category": ("text", peewee.TextField),
    # Which API the call used: chat, text_completion, responses, embeddings, messages,
    # generate_content.
    "operation": ("text", peewee.TextField),
    # Whether the provider reported the call's token usage (reported) or not (missing).
    "usage_source": ("text", peewee.TextField),
    "cost_usd": ("real", peewee.DoubleField),
    # The server's own timings (Ollama's prompt_eval_duration and eval_duration), in ms.
    "prompt_eval_duration_ms": ("real", peewee.DoubleField),
    "eval_duration_ms": ("real", peewee.DoubleField),
}


@step(
    3,
    "m003_provider_semantics",
    "cache writes, finish category, operation, usage source, cost, server timings",
    promises=(AddsColumns(TABLE, {name: family for name, (family, _) in _M003_COLUMNS.items()}),),
)
def m003_provider_semantics(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Every provider measured the same way (Anthropic, Gemini, Ollama, the Responses API and
    # embeddings besides OpenAI chat). Columns are only added, never rebuilt: rows recorded
    # before keep NULL in them, as nothing recorded then says what they would hold. A cost can be
    # filled in later from the stored counts (`migrations.reprice`).
    for name, (_, field) in _M003_COLUMNS.items():
        migrator.add_column(TABLE, name, field(null=True)).run()


# m004's table, frozen. One row per reason each time the writer stores what it had to drop.
_DROPPED_ROWS_SQLITE = """
CREATE TABLE IF NOT EXISTS dropped_rows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_dropped_at TEXT NOT NULL,
    last_dropped_at TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    hostname TEXT,
    pid INTEGER
)
"""
_DROPPED_ROWS_POSTGRES = _DROPPED_ROWS_SQLITE.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "SERIAL PRIMARY KEY")
_DROPPED_ROWS_INDEX = "CREATE INDEX IF NOT EXISTS dropped_rows_last_dropped_at ON dropped_rows (last_dropped_at)"


@step(
    4,
    "m004_dropped_rows",
    "counts of rows the proxy had to drop, by reason",
    promises=(Creates("dropped_rows", columns_of_create(_DROPPED_ROWS_SQLITE), (("last_dropped_at",),)),),
)
def m004_dropped_rows(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Issue #6: a row the proxy cannot store (its buffer full while the database is unwritable,
    # or still unwritten when it stops) must be counted where reports can see it, not only in a
    # log. Calls are never reconstructed from these counts; they only say how many are missing.
    # Reports select by time range, by when the last row of a record was dropped.
    sql = _DROPPED_ROWS_POSTGRES if isinstance(db, peewee.PostgresqlDatabase) else _DROPPED_ROWS_SQLITE
    db.execute_sql(sql)
    db.execute_sql(_DROPPED_ROWS_INDEX)


# m005's indexes, frozen: what `python -m reports` reads on SQLite to summarise a whole table
# without sorting it (reports/indexes.py says how). Every one is ordered by the report's four
# group keys first, so each combination of model, provider, host and origin is one run of rows,
# sorted by the value the run is for.
_M005_KEYS = ("model", "provider", "host", "origin")
_M005_INDEXES = (
    # Counts and sums per combination in one ordered pass, and each combination's latencies in
    # order (percentiles, slowest calls). One wide index instead of a covering one plus one per
    # grouping: a value-ordered index costs the writer a random page per row, whatever its width.
    ("report_calls", (
        *_M005_KEYS, "response_time_ms", "success", "is_streaming", "prompt_tokens",
        "completion_tokens", "cached_tokens", "reasoning_tokens", "time_to_first_token_ms",
        "tokens_per_second", "cost_usd",
    ), ""),
    # Only streamed calls have these (about 60 % of rows): partial, so the others cost nothing.
    ("report_ttft", (*_M005_KEYS, "time_to_first_token_ms"), " WHERE time_to_first_token_ms IS NOT NULL"),
    ("report_tps", (*_M005_KEYS, "tokens_per_second"), " WHERE tokens_per_second IS NOT NULL"),
    # Failed calls only (a few percent): the errors section and the timeline's error counts.
    ("report_errors", ("status_code", "error_type", "timestamp", "success"), " WHERE NOT success"),
)


@step(
    5,
    "m005_report_indexes",
    "indexes for the report over a whole table (about 8 s per million calls already recorded)",
    promises=tuple(AddsIndex(TABLE, columns) for _, columns, _ in _M005_INDEXES),
)
def m005_report_indexes(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Without them `python -m reports` sorts the whole table several times (11.7 s for a million
    # calls on two cores); with them it walks index runs in order (1.5 s). Building them on an
    # existing database holds the proxy's start-up: 8.5 s for a million calls, backup included
    # (README, upgrade notes).
    for name, columns, where in _M005_INDEXES:
        db.execute_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {TABLE} ({', '.join(columns)}){where}")


@step(
    6,
    "m006_metering_note",
    "why a row holds less than its call said: a value left out, a body not read",
    promises=(AddsColumns(TABLE, {"metering_note": "text"}),),
)
def m006_metering_note(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Issue 17: a number no real call can have (a token count of 2**62, a negative duration) is
    # not stored, and a body past what the proxy reads (a decompression bomb) is not read; the
    # row says which and why here, so that a NULL is never silent. Only added: rows recorded
    # before keep NULL, as nothing then was left out this way.
    migrator.add_column(TABLE, "metering_note", peewee.TextField(null=True)).run()


# m007's columns, frozen: who made a call (addon/agents.py) and what its response said is left of
# the provider's limits (addon/quota.py).
_M007_COLUMNS = (
    ("agent", peewee.TextField(null=True)),
    ("agent_version", peewee.TextField(null=True)),
    ("session_id", peewee.TextField(null=True)),
    ("subagent_id", peewee.TextField(null=True)),
    ("parent_id", peewee.TextField(null=True)),
    ("request_kind", peewee.TextField(null=True)),
    ("retry_count", peewee.IntegerField(null=True)),
    ("auth_mode", peewee.TextField(null=True)),
    ("rate_remaining_requests", peewee.BigIntegerField(null=True)),
    ("rate_remaining_tokens", peewee.BigIntegerField(null=True)),
    ("rate_reset_at", peewee.TextField(null=True)),
    ("quota_used_percent", peewee.DoubleField(null=True)),
    ("quota_window_minutes", peewee.IntegerField(null=True)),
    ("quota_reset_at", peewee.TextField(null=True)),
    ("quota_long_used_percent", peewee.DoubleField(null=True)),
    ("quota_long_window_minutes", peewee.IntegerField(null=True)),
    ("quota_long_reset_at", peewee.TextField(null=True)),
    ("retry_after_s", peewee.DoubleField(null=True)),
)
_M007_FAMILIES = {peewee.TextField: "text", peewee.IntegerField: "integer", peewee.BigIntegerField: "integer",
                  peewee.DoubleField: "real"}
# A session's calls and an agent's calls in time order, for `--session` and `--group-by agent`;
# partial: rows without them (most calls not made by an agent) cost the writer nothing.
_M007_INDEXES = (
    ("calls_by_session", ("session_id", "timestamp"), " WHERE session_id IS NOT NULL"),
    ("calls_by_agent", ("agent", "timestamp"), " WHERE agent IS NOT NULL"),
)


@step(
    7,
    "m007_agents_and_headroom",
    "who made each call (agent, session, retries, kind of credential) and the rate limits and quota left",
    promises=(
        AddsColumns(TABLE, {name: _M007_FAMILIES[type(f)] for name, f in _M007_COLUMNS}),
        *(AddsIndex(TABLE, columns) for _, columns, _ in _M007_INDEXES),
    ),
)
def m007_agents_and_headroom(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Issue 19: coding agents and SDKs say who they are, their session and their retries in
    # headers; providers say in response headers how much of a rate limit or subscription quota
    # is left. Only added, all NULL for rows recorded before: nothing was known of them then.
    # Remaining counts are 64-bit: a tokens-per-minute limit can pass 2**31 on PostgreSQL.
    for name, field in _M007_COLUMNS:
        migrator.add_column(TABLE, name, field).run()
    for name, columns, where in _M007_INDEXES:
        db.execute_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {TABLE} ({', '.join(columns)}){where}")


@step(
    8,
    "m008_price_source",
    "where each cost's price came from: genai-prices, or the user's prices file",
    promises=(AddsColumns(TABLE, {"price_source": "text"}),),
)
def m008_price_source(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Issue 22: a prices file (llm_metrics_prices) can price self-hosted models and negotiated
    # rates ahead of genai-prices, so a cost must say which it came from. Every cost recorded
    # before this step came from genai-prices, the only source there was: they say so.
    migrator.add_column(TABLE, "price_source", peewee.TextField(null=True)).run()
    db.execute_sql(f"UPDATE {TABLE} SET price_source = 'genai-prices' WHERE cost_usd IS NOT NULL")


# m009's table, frozen: what `python -m migrations prune` keeps of the rows it deletes.
_DAILY_TOTALS_SQLITE = """
CREATE TABLE IF NOT EXISTS daily_totals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    day TEXT NOT NULL,
    model TEXT,
    provider TEXT,
    agent TEXT,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    streamed INTEGER NOT NULL,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cached_tokens BIGINT,
    reasoning_tokens BIGINT,
    cost_usd REAL,
    unpriced_calls INTEGER NOT NULL,
    response_time_ms_sum BIGINT,
    response_time_count INTEGER NOT NULL,
    ttft_ms_sum BIGINT,
    ttft_count INTEGER NOT NULL
)
"""
_DAILY_TOTALS_POSTGRES = (
    _DAILY_TOTALS_SQLITE.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "SERIAL PRIMARY KEY")
    .replace("REAL", "DOUBLE PRECISION")
)
_DAILY_TOTALS_INDEX = "CREATE INDEX IF NOT EXISTS daily_totals_day ON daily_totals (day, model, provider, agent)"


@step(
    9,
    "m009_daily_totals",
    "daily totals per model, provider and agent of the calls a prune deletes",
    promises=(Creates("daily_totals", columns_of_create(_DAILY_TOTALS_SQLITE), (("day", "model", "provider", "agent"),)),),
)
def m009_daily_totals(db: peewee.Database, migrator: SchemaMigrator) -> None:
    # Issue 22: months of rows grow without bound; `python -m migrations prune` (and the proxy's
    # llm_metrics_retention_days) delete old rows, keeping these totals so that reports over
    # long ranges still count them. Sums are NULL when no call of the group reported them.
    sql = _DAILY_TOTALS_POSTGRES if isinstance(db, peewee.PostgresqlDatabase) else _DAILY_TOTALS_SQLITE
    db.execute_sql(sql)
    db.execute_sql(_DAILY_TOTALS_INDEX)
