"""migrations/ (registry, steps, runner) and storage.db.open_database, on real SQLite files."""

from __future__ import annotations

import ast
import os
import random
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import migrations.registry
import migrations.runner
from migrations import (
    CURRENT_SCHEMA_VERSION,
    STEPS,
    NewerSchemaError,
    applied_versions,
    current_version,
    pending,
    upgrade,
)
from migrations.registry import Step, step
from storage import open_database
from storage.models import MODELS

ROOT = Path(__file__).resolve().parents[1]

# --- frozen copies: what the original LLM Metrics Proxy made (schema version 1) -----------------

ORIGINAL_COMPLETION_REQUESTS_SQL = """
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
ORIGINAL_SCHEMA_VERSION_SQL = "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
ORIGINAL_COLUMNS = (
    "id", "timestamp", "success", "status_code", "response_time_ms", "model", "origin",
    "is_streaming", "max_tokens", "temperature", "top_p", "message_count", "prompt_tokens",
    "completion_tokens", "total_tokens", "finish_reason", "time_to_first_token_ms",
    "time_to_last_token_ms", "tokens_per_second", "error_type", "error_message",
)
ADDED_COLUMNS = (
    "request_model", "provider", "host", "path", "cached_tokens", "reasoning_tokens",
    "time_to_first_byte_ms", "chunk_count",
    # m003
    "cache_creation_tokens", "finish_category", "operation", "usage_source", "cost_usd",
    "prompt_eval_duration_ms", "eval_duration_ms",
    # m006
    "metering_note",
    # m007
    "agent", "agent_version", "session_id", "subagent_id", "parent_id", "request_kind", "retry_count",
    "auth_mode", "rate_remaining_requests", "rate_remaining_tokens", "rate_reset_at", "quota_used_percent",
    "quota_window_minutes", "quota_reset_at", "quota_long_used_percent", "quota_long_window_minutes",
    "quota_long_reset_at", "retry_after_s",
    # m008
    "price_source",
)

# --- the schema a current build makes: name -> (declared type, NOT NULL) -----------------------

EXPECTED_COLUMNS = {
    "completion_requests": {
        "id": ("INTEGER", False),
        "timestamp": ("TEXT", True),
        "success": ("BOOLEAN", True),
        "status_code": ("INTEGER", False),
        "response_time_ms": ("INTEGER", True),
        "model": ("TEXT", False),
        "request_model": ("TEXT", False),
        "provider": ("TEXT", False),
        "host": ("TEXT", False),
        "path": ("TEXT", False),
        "origin": ("TEXT", False),
        "is_streaming": ("BOOLEAN", True),
        "max_tokens": ("INTEGER", False),
        "temperature": ("REAL", False),
        "top_p": ("REAL", False),
        "message_count": ("INTEGER", False),
        "prompt_tokens": ("INTEGER", False),
        "completion_tokens": ("INTEGER", False),
        "total_tokens": ("INTEGER", False),
        "cached_tokens": ("INTEGER", False),
        "reasoning_tokens": ("INTEGER", False),
        "finish_reason": ("TEXT", False),
        "time_to_first_byte_ms": ("INTEGER", False),
        "time_to_first_token_ms": ("INTEGER", False),
        "time_to_last_token_ms": ("INTEGER", False),
        "tokens_per_second": ("REAL", False),
        "chunk_count": ("INTEGER", False),
        "error_type": ("TEXT", False),
        "error_message": ("TEXT", False),
        # m003
        "cache_creation_tokens": ("INTEGER", False),
        "finish_category": ("TEXT", False),
        "operation": ("TEXT", False),
        "usage_source": ("TEXT", False),
        "cost_usd": ("REAL", False),
        "prompt_eval_duration_ms": ("REAL", False),
        "eval_duration_ms": ("REAL", False),
        # m006
        "metering_note": ("TEXT", False),
        # m007
        "agent": ("TEXT", False),
        "agent_version": ("TEXT", False),
        "session_id": ("TEXT", False),
        "subagent_id": ("TEXT", False),
        "parent_id": ("TEXT", False),
        "request_kind": ("TEXT", False),
        "retry_count": ("INTEGER", False),
        "auth_mode": ("TEXT", False),
        "rate_remaining_requests": ("INTEGER", False),  # BIGINT on PostgreSQL
        "rate_remaining_tokens": ("INTEGER", False),
        "rate_reset_at": ("TEXT", False),
        "quota_used_percent": ("REAL", False),
        "quota_window_minutes": ("INTEGER", False),
        "quota_reset_at": ("TEXT", False),
        "quota_long_used_percent": ("REAL", False),
        "quota_long_window_minutes": ("INTEGER", False),
        "quota_long_reset_at": ("TEXT", False),
        "retry_after_s": ("REAL", False),
        # m008
        "price_source": ("TEXT", False),
    },
    # m004
    "dropped_rows": {
        "id": ("INTEGER", False),
        "first_dropped_at": ("TEXT", True),
        "last_dropped_at": ("TEXT", True),
        "row_count": ("INTEGER", True),
        "reason": ("TEXT", True),
        "hostname": ("TEXT", False),
        "pid": ("INTEGER", False),
    },
    # m009
    "daily_totals": {
        "id": ("INTEGER", False),
        "day": ("TEXT", True),
        "model": ("TEXT", False),
        "provider": ("TEXT", False),
        "agent": ("TEXT", False),
        "requests": ("INTEGER", True),
        "errors": ("INTEGER", True),
        "streamed": ("INTEGER", True),
        "prompt_tokens": ("BIGINT", False),
        "completion_tokens": ("BIGINT", False),
        "cached_tokens": ("BIGINT", False),
        "reasoning_tokens": ("BIGINT", False),
        "cost_usd": ("REAL", False),
        "unpriced_calls": ("INTEGER", True),
        "response_time_ms_sum": ("BIGINT", False),
        "response_time_count": ("INTEGER", True),
        "ttft_ms_sum": ("BIGINT", False),
        "ttft_count": ("INTEGER", True),
    },
    "schema_version": {
        "version": ("INTEGER", False),
        "applied_at": ("TEXT", True),
        "description": ("TEXT", False),
    },
}
EXPECTED_PRIMARY_KEYS = {"completion_requests": ["id"], "dropped_rows": ["id"], "daily_totals": ["id"],
                         "schema_version": ["version"]}
_RUN_KEYS = ("model", "provider", "host", "origin")
EXPECTED_INDEXES = {  # name -> (columns in index order, unique)
    "completion_requests_timestamp": (("timestamp",), False),
    "completion_requests_model_timestamp": (("model", "timestamp"), False),
    # m005
    "report_calls": ((*_RUN_KEYS, "response_time_ms", "success", "is_streaming", "prompt_tokens", "completion_tokens",
                      "cached_tokens", "reasoning_tokens", "time_to_first_token_ms", "tokens_per_second", "cost_usd"), False),
    "report_ttft": ((*_RUN_KEYS, "time_to_first_token_ms"), False),
    "report_tps": ((*_RUN_KEYS, "tokens_per_second"), False),
    "report_errors": (("status_code", "error_type", "timestamp", "success"), False),
    # m007
    "calls_by_session": (("session_id", "timestamp"), False),
    "calls_by_agent": (("agent", "timestamp"), False),
}
EXPECTED_PARTIAL_INDEXES = {  # name -> its WHERE clause
    "report_ttft": "time_to_first_token_ms IS NOT NULL",
    "report_tps": "tokens_per_second IS NOT NULL",
    "report_errors": "NOT success",
    "calls_by_session": "session_id IS NOT NULL",
    "calls_by_agent": "agent IS NOT NULL",
}
EXPECTED_DROPPED_ROWS_INDEXES = {"dropped_rows_last_dropped_at": (("last_dropped_at",), False)}


# --- helpers -------------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def columns(path: Path, table: str) -> dict[str, tuple[str, bool]]:
    con = connect(path)
    try:
        return {r[1]: (r[2], bool(r[3])) for r in con.execute(f"PRAGMA table_info({table})")}
    finally:
        con.close()


def primary_key(path: Path, table: str) -> list[str]:
    con = connect(path)
    try:
        return [r[1] for r in sorted(con.execute(f"PRAGMA table_info({table})"), key=lambda r: r[5]) if r[5]]
    finally:
        con.close()


def user_tables(path: Path) -> set[str]:
    con = connect(path)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        return {r[0] for r in rows}
    finally:
        con.close()


def indexes(path: Path, table: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    con = connect(path)
    try:
        found = {}
        for _, name, unique, origin, _partial in con.execute(f"PRAGMA index_list({table})"):
            if origin == "c":  # made by CREATE INDEX, not implied by a constraint
                cols = tuple(r[2] for r in con.execute(f"PRAGMA index_info({name})"))
                found[name] = (cols, bool(unique))
        return found
    finally:
        con.close()


def history(path: Path) -> list[tuple]:
    con = connect(path)
    try:
        rows = con.execute("SELECT version, applied_at, description FROM schema_version ORDER BY version")
        return rows.fetchall()
    finally:
        con.close()


def migrated(path: Path) -> Path:
    db = open_database(str(path))
    upgrade(db)
    db.close()
    return path


def settled_bytes(path: Path) -> bytes:
    """The file's bytes once opened the way the proxy opens it (WAL on) and closed again."""
    open_database(str(path)).close()
    return path.read_bytes()


def make_original_database(path: Path, rows: int = 1000, seed: int = 20261122) -> list[tuple]:
    """A version-1 database as the original proxy left it, some rows deleted; returns what it holds."""
    rng = random.Random(seed)
    con = connect(path)
    con.execute(ORIGINAL_COMPLETION_REQUESTS_SQL)
    con.execute(ORIGINAL_SCHEMA_VERSION_SQL)
    con.execute("INSERT INTO schema_version VALUES (1, '2025-06-01 09:30:00')")
    models = [None, "gpt-4o-mini", "gpt-4o-2024-08-06", "llama3.1:8b", "modèle-ünïcode-模型", ""]
    errors = [None, ("http_429", "Rate limit reached for 'gpt-4o'"), ("timeout", "line1\nline2\t\"quoted\""),
              ("connection_error", "x" * 2000)]

    def maybe(value):
        return value if rng.random() < 0.8 else None

    con.execute("BEGIN")
    for i in range(rows):
        streaming = rng.random() < 0.5
        error = rng.choice(errors)
        prompt, completion = maybe(rng.randint(0, 200_000)), maybe(rng.randint(0, 2**40))
        con.execute(
            f"INSERT INTO completion_requests ({', '.join(ORIGINAL_COLUMNS[1:])}) VALUES ({', '.join('?' * 20)})",
            (
                f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}.{i:06d}Z",
                error is None,
                rng.choice([200, 200, 201, 400, 401, 429, 500, 503, 0]),
                rng.randint(0, 600_000),
                rng.choice(models),
                maybe(rng.choice(["OpenAI/Python", "curl", "Mozilla", "my-app"])),
                streaming,
                maybe(rng.randint(1, 32_768)),
                maybe(round(rng.uniform(0, 2), 3)),
                maybe(rng.random()),
                maybe(rng.randint(1, 200)),
                prompt,
                completion,
                prompt + completion if prompt is not None and completion is not None else None,
                maybe(rng.choice(["stop", "length", "tool_calls", "content_filter"])),
                maybe(rng.randint(0, 30_000)) if streaming else None,
                maybe(rng.randint(0, 600_000)) if streaming else None,
                maybe(rng.uniform(0.001, 5000.0)) if streaming else None,
                error[0] if error else None,
                error[1] if error else None,
            ),
        )
    con.execute("COMMIT")
    # Rows deleted in the middle and at the end: their ids must never come back.
    con.execute("DELETE FROM completion_requests WHERE id % 97 = 0 OR id > ?", (rows - 5,))
    original = original_rows(con)
    con.close()
    return original


def original_rows(con: sqlite3.Connection) -> list[tuple]:
    """Every value of the 21 original columns, each with its storage class (1 and 1.0 differ)."""
    select = ", ".join(f"{c}, typeof({c})" for c in ORIGINAL_COLUMNS)
    return con.execute(f"SELECT {select} FROM completion_requests ORDER BY id").fetchall()


# --- a new database ------------------------------------------------------------------------------


def test_new_database_gets_exactly_the_expected_tables_and_columns(tmp_path):
    path = migrated(tmp_path / "m.db")
    assert user_tables(path) == set(EXPECTED_COLUMNS)
    for table, expected in EXPECTED_COLUMNS.items():
        assert columns(path, table) == expected, table
        assert primary_key(path, table) == EXPECTED_PRIMARY_KEYS[table]


def test_new_database_gets_exactly_the_expected_indexes(tmp_path):
    path = migrated(tmp_path / "m.db")
    assert indexes(path, "completion_requests") == EXPECTED_INDEXES
    assert indexes(path, "dropped_rows") == EXPECTED_DROPPED_ROWS_INDEXES
    assert indexes(path, "schema_version") == {}


def test_report_indexes_leave_out_the_rows_they_do_not_serve(tmp_path):
    path = migrated(tmp_path / "m.db")
    con = connect(path)
    partial = {name: sql.split(" WHERE ", 1)[1] for name, sql in con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'")}
    rows = [  # (success, ttft, tps, agent, session): a streamed success by an agent, a plain success, a failure
        (1, 300, 80.5, "codex", "s-1"), (1, None, None, None, None), (0, None, None, None, None),
    ]
    con.executemany(
        "INSERT INTO completion_requests (timestamp, success, response_time_ms, is_streaming, "
        "time_to_first_token_ms, tokens_per_second, agent, session_id) "
        "VALUES ('2026-11-22T00:00:00.000000Z', ?, 5, 0, ?, ?, ?, ?)", rows)
    entries = {
        name: con.execute(f"SELECT count(*) FROM completion_requests INDEXED BY {name} WHERE {where}").fetchone()[0]
        for name, where in partial.items()
    }
    con.close()
    assert partial == EXPECTED_PARTIAL_INDEXES
    assert entries == {"report_ttft": 1, "report_tps": 1, "report_errors": 1, "calls_by_agent": 1,
                       "calls_by_session": 1}


def test_new_database_records_every_step_once(tmp_path):
    path = migrated(tmp_path / "m.db")
    expected = [(s.version, f"{s.name}: {s.description}") for s in STEPS]
    assert [(v, description) for v, _, description in history(path)] == expected
    for _, applied_at, _ in history(path):
        assert time.strptime(applied_at, "%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize("model_class", MODELS, ids=lambda m: m._meta.table_name)
def test_model_and_migrated_table_have_the_same_columns(tmp_path, model_class):
    path = migrated(tmp_path / "m.db")
    table = set(columns(path, model_class._meta.table_name)) - {"id"}
    model = {f.column_name for f in model_class._meta.sorted_fields} - {"id"}
    assert table, "no migration creates the table"
    assert sorted(model - table) == [], "model fields no migration creates"
    assert sorted(table - model) == [], "table columns the model does not know"


@pytest.mark.parametrize("model_class", MODELS, ids=lambda m: m._meta.table_name)
def test_model_and_migrated_table_agree_on_nullability(tmp_path, model_class):
    path = migrated(tmp_path / "m.db")
    table = {name: not notnull for name, (_, notnull) in columns(path, model_class._meta.table_name).items()}
    model = {f.column_name: f.null for f in model_class._meta.sorted_fields if f.column_name != "id"}
    assert model == {name: table[name] for name in model}


# --- upgrading a database the original proxy made ---------------------------------------------------


@pytest.fixture
def original_db(tmp_path):
    path = tmp_path / "original.db"
    rows = make_original_database(path)
    return path, rows


def test_upgrading_an_original_database_keeps_every_row_and_value(original_db):
    path, before = original_db
    db = open_database(str(path))
    applied = upgrade(db).applied
    db.close()
    assert [s.version for s in applied] == list(range(2, CURRENT_SCHEMA_VERSION + 1))
    con = connect(path)
    after = original_rows(con)
    con.close()
    assert len(after) == len(before) == 1000 - 10 - 5
    for old, new in zip(before, after, strict=True):
        assert new == old


def test_upgrading_an_original_database_leaves_new_columns_null(original_db):
    path, _ = original_db
    migrated(path)
    con = connect(path)
    non_null = {c: con.execute(f"SELECT count({c}) FROM completion_requests").fetchone()[0] for c in ADDED_COLUMNS}
    con.close()
    assert non_null == dict.fromkeys(ADDED_COLUMNS, 0)


def test_upgrading_an_original_database_makes_status_code_nullable(original_db):
    path, _ = original_db
    assert columns(path, "completion_requests")["status_code"] == ("INTEGER", True)
    migrated(path)
    assert columns(path, "completion_requests")["status_code"] == ("INTEGER", False)
    con = connect(path)
    con.execute(
        "INSERT INTO completion_requests (timestamp, success, status_code, response_time_ms, is_streaming) "
        "VALUES ('2026-11-22T00:00:00.000000Z', 0, NULL, 5, 0)"
    )
    assert con.execute("SELECT count(*) FROM completion_requests WHERE status_code IS NULL").fetchone() == (1,)
    con.close()


def test_upgraded_original_database_has_the_same_schema_as_a_new_one(original_db, tmp_path):
    path, _ = original_db
    migrated(path)
    assert user_tables(path) == set(EXPECTED_COLUMNS)
    for table, expected in EXPECTED_COLUMNS.items():
        assert columns(path, table) == expected, table
    assert indexes(path, "completion_requests") == EXPECTED_INDEXES
    assert indexes(path, "dropped_rows") == EXPECTED_DROPPED_ROWS_INDEXES


def test_upgrading_an_original_database_keeps_its_history_row(original_db):
    path, _ = original_db
    migrated(path)
    rows = history(path)
    assert rows[0] == (1, "2025-06-01 09:30:00", None)
    expected = [(s.version, f"{s.name}: {s.description}") for s in STEPS[1:]]
    assert [(v, description) for v, _, description in rows[1:]] == expected


def test_upgrading_an_original_database_never_reuses_ids_of_deleted_rows(original_db):
    path, _ = original_db
    con = connect(path)
    highest_ever = con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'completion_requests'").fetchone()[0]
    con.close()
    migrated(path)
    con = connect(path)
    cursor = con.execute(
        "INSERT INTO completion_requests (timestamp, success, status_code, response_time_ms, is_streaming) "
        "VALUES ('2026-11-22T00:00:00.000000Z', 1, 200, 5, 0)"
    )
    con.close()
    assert cursor.lastrowid == highest_ever + 1


# --- running twice, reading, refusing -----------------------------------------------------------


def test_second_upgrade_applies_nothing_and_changes_nothing(tmp_path):
    path = migrated(tmp_path / "m.db")
    before_history, before_bytes = history(path), settled_bytes(path)
    db = open_database(str(path))
    assert upgrade(db).applied == []
    db.close()
    assert history(path) == before_history
    assert path.read_bytes() == before_bytes


def test_pending_and_applied_versions_do_not_touch_a_blank_database(tmp_path):
    path = tmp_path / "blank.db"
    before = settled_bytes(path)
    db = open_database(str(path))
    assert pending(db) == STEPS
    assert applied_versions(db) == []
    assert current_version(db) == 0
    db.close()
    assert user_tables(path) == set()
    assert path.read_bytes() == before


def test_pending_and_applied_versions_do_not_touch_a_migrated_database(tmp_path):
    path = migrated(tmp_path / "m.db")
    before = settled_bytes(path)
    db = open_database(str(path))
    assert pending(db) == []
    assert applied_versions(db) == list(range(1, CURRENT_SCHEMA_VERSION + 1))
    assert current_version(db) == CURRENT_SCHEMA_VERSION
    db.close()
    assert path.read_bytes() == before


def test_pending_on_an_original_database_lists_the_later_steps_only(original_db):
    path, _ = original_db
    db = open_database(str(path))
    assert [s.version for s in pending(db)] == list(range(2, CURRENT_SCHEMA_VERSION + 1))
    db.close()
    assert "description" not in columns(path, "schema_version")


def newer_from_current_build(path: Path) -> None:
    migrated(path)
    con = connect(path)
    con.execute("INSERT INTO schema_version VALUES (?, '2030-01-01T00:00:00.000000Z', 'm999_future')",
                (CURRENT_SCHEMA_VERSION + 1,))
    con.close()


def newer_with_original_version_table(path: Path) -> None:
    con = connect(path)
    con.execute(ORIGINAL_COMPLETION_REQUESTS_SQL)
    con.execute(ORIGINAL_SCHEMA_VERSION_SQL)
    con.execute("INSERT INTO schema_version VALUES (?, '2030-01-01 00:00:00')", (CURRENT_SCHEMA_VERSION + 1,))
    con.close()


@pytest.mark.parametrize("make", [newer_from_current_build, newer_with_original_version_table])
def test_newer_schema_is_refused_and_left_untouched(tmp_path, make):
    path = tmp_path / "newer.db"
    make(path)
    before_bytes, before_columns = settled_bytes(path), columns(path, "schema_version")
    db = open_database(str(path))
    with pytest.raises(NewerSchemaError, match=f"version {CURRENT_SCHEMA_VERSION + 1}"):
        upgrade(db)
    with pytest.raises(NewerSchemaError):
        pending(db)
    db.close()
    assert columns(path, "schema_version") == before_columns
    assert path.read_bytes() == before_bytes


def test_failing_step_leaves_no_trace_and_keeps_rows(tmp_path, monkeypatch):
    path = migrated(tmp_path / "m.db")
    con = connect(path)
    con.execute("INSERT INTO completion_requests (timestamp, success, response_time_ms, model, is_streaming) "
                "VALUES ('2026-11-22T00:00:00.000000Z', 1, 5, 'kept', 0)")
    con.close()

    def broken(db, migrator):
        db.execute_sql("ALTER TABLE completion_requests ADD COLUMN doomed TEXT")
        db.execute_sql("UPDATE completion_requests SET model = 'clobbered'")
        raise RuntimeError("step failed half-way")

    failing = Step(CURRENT_SCHEMA_VERSION + 1, "m999_broken", "fails after changing things", broken)
    monkeypatch.setattr(migrations.runner, "STEPS", [*STEPS, failing])
    monkeypatch.setattr(migrations.runner, "CURRENT_SCHEMA_VERSION", failing.version)
    db = open_database(str(path))
    with pytest.raises(RuntimeError, match="half-way"):
        upgrade(db)
    db.close()
    assert [v for v, _, _ in history(path)] == list(range(1, CURRENT_SCHEMA_VERSION + 1))
    assert "doomed" not in columns(path, "completion_requests")
    con = connect(path)
    assert con.execute("SELECT model FROM completion_requests").fetchall() == [("kept",)]
    con.close()


# --- several processes starting at once ----------------------------------------------------------

RACER = """
import os, sys, time
path, ready, go = sys.argv[1:4]
from storage import open_database
from migrations import upgrade
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.0005)
applied = upgrade(open_database(path)).applied
print(",".join(s.name for s in applied))
"""


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_starting_together_apply_each_step_exactly_once(tmp_path, processes):
    path, go = tmp_path / "new" / "m.db", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    readies = [tmp_path / f"ready-{i}" for i in range(processes)]
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(path), str(ready), str(go)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for ready in readies
    ]
    try:
        deadline = time.monotonic() + 10
        while not all(r.exists() for r in readies):  # every process imported and waiting
            assert time.monotonic() < deadline, "racers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.005)
        go.touch()
        results = [p.communicate(timeout=20) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * processes, [err for _, err in results]
    applied = [name for out, _ in results for name in out.strip().split(",") if name]
    assert sorted(applied) == sorted(s.name for s in STEPS)
    expected = [(s.version, f"{s.name}: {s.description}") for s in STEPS]
    assert [(v, description) for v, _, description in history(path)] == expected


# --- the registry --------------------------------------------------------------------------------


@pytest.fixture
def empty_registry(monkeypatch):
    """`step` registering into a fresh list; the real registry is untouched."""
    fresh: list[Step] = []
    monkeypatch.setattr(migrations.registry, "STEPS", fresh)
    return fresh


def _noop(db, migrator):
    pass


def test_step_registers_in_order_and_returns_the_function(empty_registry):
    def m001_a(db, migrator):
        pass

    assert step(1, "m001_a", "first")(m001_a) is m001_a
    step(2, "m002_b", "second")(_noop)
    assert [(s.version, s.name, s.description) for s in empty_registry] == [(1, "m001_a", "first"),
                                                                             (2, "m002_b", "second")]
    assert empty_registry[0].apply is m001_a
    assert len(STEPS) == CURRENT_SCHEMA_VERSION  # the real registry did not grow


def test_duplicate_step_name_is_refused(empty_registry):
    step(1, "m001_a", "first")(_noop)
    with pytest.raises(ValueError, match="duplicate"):
        step(2, "m001_a", "same name again")(_noop)
    assert [s.name for s in empty_registry] == ["m001_a"]


@pytest.mark.parametrize("version", [0, 1, 3, -2])
def test_non_consecutive_step_version_is_refused(empty_registry, version):
    step(1, "m001_a", "first")(_noop)
    with pytest.raises(ValueError, match="expected 2"):
        step(version, "m00x_b", "out of order")(_noop)
    assert len(empty_registry) == 1


def test_first_step_must_be_version_one(empty_registry):
    with pytest.raises(ValueError, match="expected 1"):
        step(2, "m002_a", "no version 1")(_noop)


def test_real_registry_is_consecutive_uniquely_named_and_numbered_by_name():
    assert [s.version for s in STEPS] == list(range(1, len(STEPS) + 1))
    assert CURRENT_SCHEMA_VERSION == len(STEPS)
    assert len({s.name for s in STEPS}) == len(STEPS)
    for s in STEPS:
        assert s.name.startswith(f"m{s.version:03d}_"), s.name


def test_migrations_never_import_the_live_models():
    # The command line (__main__) may open databases through storage.db; the steps and the
    # machinery that runs them must not depend on the live schema.
    for source in sorted(p for p in (ROOT / "migrations").glob("*.py") if p.name != "__main__.py"):
        tree = ast.parse(source.read_text(), str(source))
        imported = [
            name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
        ]
        assert not [m for m in imported if m == "storage" or m.startswith("storage.")], source.name
    cli_imports = (ROOT / "migrations" / "__main__.py").read_text()
    assert "storage.models" not in cli_imports and "CompletionRequest" not in cli_imports


# --- opening the database file -------------------------------------------------------------------


@pytest.fixture
def permissive_umask():
    """The common 022 umask, so a private mode must come from the code, not the environment."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "sqlite-url"])
def test_new_database_file_is_private_in_a_private_directory(tmp_path, permissive_umask, as_url):
    path = tmp_path / "state" / "metrics.db"
    db = open_database(f"sqlite:///{path}" if as_url else str(path))
    upgrade(db)
    db.execute_sql("INSERT INTO completion_requests (timestamp, success, response_time_ms, is_streaming) "
                   "VALUES ('2026-11-22T00:00:00.000000Z', 1, 5, 0)")
    wal = path.with_name(path.name + "-wal")
    assert wal.exists()  # still open: the write sits in the WAL
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (path.parent, path, wal)}
    db.close()
    assert modes == {"state": 0o700, "metrics.db": 0o600, "metrics.db-wal": 0o600}


def test_database_is_opened_in_wal_mode(tmp_path):
    path = tmp_path / "m.db"
    db = open_database(str(path))
    assert db.execute_sql("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    con = connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persisted in the file
    con.close()


def test_opening_without_create_refuses_a_missing_file_and_makes_nothing(tmp_path):
    path = tmp_path / "absent" / "m.db"
    with pytest.raises(FileNotFoundError):
        open_database(str(path), create=False)
    assert not path.parent.exists()
