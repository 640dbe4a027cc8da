"""Applying pending steps so that a failure can never lose data.

One upgrade is one transaction holding the database's write lock (a second process starting at
the same moment waits, then finds nothing to do). Before it writes anything it checks the file
and takes a verified file backup of any non-empty SQLite database. Each step then runs in its own
savepoint with its history row; a table it rebuilds is first copied to a backup table; afterwards
the schema is compared with what the step promised and row counts with what they were. Any
failure rolls the whole upgrade back, and the database is verified to be exactly as before (or
restored from the file backup) before the error is reported.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import peewee
from playhouse.migrate import PostgresqlMigrator, SchemaMigrator, SqliteMigrator

from . import steps as _steps  # noqa: F401  (registers the steps)
from .backup import DEFAULT_KEEP, BackupError, make_backup
from .registry import STEPS, Step
from .schema import differences, promised, row_counts, snapshot, table_digest

CURRENT_SCHEMA_VERSION = len(STEPS)
LOCK_WAIT_S = 600  # how long a second process waits for another's migration
_ORIGINAL_COLUMNS = frozenset(
    "id timestamp success status_code response_time_ms model origin is_streaming max_tokens "
    "temperature top_p message_count prompt_tokens completion_tokens total_tokens finish_reason "
    "time_to_first_token_ms time_to_last_token_ms tokens_per_second error_type error_message".split()
)
_VERSION_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, description TEXT)"
)


class MigrationError(RuntimeError):
    """Nothing was migrated (or everything was put back); the message says why, in a paragraph."""


class NewerSchemaError(MigrationError):
    """The database was written by a newer build; it is never touched."""


@dataclass
class UpgradeResult:
    applied: list[Step] = field(default_factory=list)
    backup: Path | None = None
    adopted: str | None = None  # what lineage was adopted, if any
    failed_step: str | None = None


def _migrator(db: peewee.Database) -> SchemaMigrator:
    if isinstance(db, peewee.PostgresqlDatabase):
        return PostgresqlMigrator(db)
    return SqliteMigrator(db)


def _now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- reading the state (read-only) -----------------------------------------------------------


def _version_columns(db: peewee.Database) -> set[str]:
    if "schema_version" not in db.get_tables():
        return set()
    return {c.name for c in db.get_columns("schema_version")}


def lineage(db: peewee.Database) -> str:
    """Which history the database has: "new", "ours", "original-code" (the original project's
    own version numbers, with an `id` column), or "unversioned-original" (its table, no history)."""
    tables = set(db.get_tables())
    columns = _version_columns(db)
    if "id" in columns:
        return "original-code"
    if columns:
        return "ours"
    if "completion_requests" in tables:
        return "unversioned-original"
    return "new"


def applied_versions(db: peewee.Database) -> list[int]:
    """Read-only: versions in our numbering ([] when there is none)."""
    kind = lineage(db)
    if kind == "ours":
        return [r[0] for r in db.execute_sql("SELECT version FROM schema_version ORDER BY version")]
    if kind in ("original-code", "unversioned-original"):
        return [1]  # the original schema is our version 1, whatever numbers it used
    return []


def current_version(db: peewee.Database) -> int:
    versions = applied_versions(db)
    return max(versions) if versions else 0


def pending(db: peewee.Database) -> list[Step]:
    """Read-only: the steps not yet applied, oldest first."""
    version = current_version(db)
    if version > CURRENT_SCHEMA_VERSION:
        raise NewerSchemaError(
            f"The database is at schema version {version}, newer than this build of "
            f"llm-metrics-proxy understands (version {CURRENT_SCHEMA_VERSION}). It was left "
            "untouched. Upgrade llm-metrics-proxy to read and write it."
        )
    return [s for s in STEPS if s.version > version]


# -- upgrading -----------------------------------------------------------------------------


def upgrade(db: peewee.Database, *, keep_backups: int = DEFAULT_KEEP, backup: bool = True) -> UpgradeResult:
    """Applies every pending step, all or nothing. Raises MigrationError with a user message."""
    result = UpgradeResult()
    if not pending(db):  # the common case, without taking the write lock
        return result
    with _write_lock(db):
        todo = pending(db)  # again, under the lock: another process may have done it
        if not todo:
            return result
        _check_integrity(db)
        before = _state(db)
        path = _sqlite_path(db)
        if backup and path is not None and any(before[2].values()):
            result.backup = _file_backup(path, keep_backups)
        try:
            with db.atomic():  # a savepoint inside the locked transaction: all steps or none
                result.adopted = _adopt(db)
                migrator = _migrator(db)
                for step in todo:
                    result.failed_step = step.name  # until it has run
                    _run_step(db, migrator, step)
                    result.failed_step = None
                    result.applied.append(step)
            return result
        except Exception as exc:
            failure = exc
            intact = _state(db) == before and (result.backup is None or _matches_backup(db, result.backup))
    # The transaction has ended: now the file may be replaced if the rollback was not clean.
    raise _report_failure(db, failure, intact, result) from failure


def _state(db: peewee.Database) -> tuple:
    """Every table's name, the user tables' schema and row counts: what "as before" compares."""
    tables = sorted(db.get_tables())
    schema = snapshot(db)
    return tables, schema, row_counts(db, schema)


def _run_step(db: peewee.Database, migrator: SchemaMigrator, step: Step) -> None:
    start = snapshot(db)
    counts = row_counts(db, start)
    with db.atomic():  # a savepoint: the step and its history row, or neither
        backups = {t: _backup_table(db, t, step.version) for t in step.rewrites if t in start}
        step.apply(db, migrator)
        db.execute_sql(
            f"INSERT INTO schema_version (version, applied_at, description) VALUES ({db.param}, {db.param}, {db.param})",
            (step.version, _now_utc(), f"{step.name}: {step.description}"),
        )
        problems = differences(snapshot(db), promised(start, step.promises)) if step.promises else []
        after_counts = row_counts(db, start)
        problems += [f"{t} had {counts[t]} rows, now {after_counts[t]}" for t in counts if counts[t] != after_counts[t]]
        for table, copy in backups.items():
            kept = [c.name for c in db.get_columns(copy)]  # added columns are new, and NULL
            if table_digest(db, table, kept) != table_digest(db, copy, kept):
                problems.append(f"{table} does not hold the same rows as before the rebuild")
        if problems:
            raise MigrationError(f"step {step.name} did not do what it promised: " + "; ".join(problems))
        for copy in backups.values():
            db.execute_sql(f'DROP TABLE "{copy}"')


def _backup_table(db: peewee.Database, table: str, version: int) -> str:
    """A copy of `table` in the same database, with the same column types, before a rebuild."""
    copy = f"_backup_{table}_v{version}"
    db.execute_sql(f'DROP TABLE IF EXISTS "{copy}"')
    if isinstance(db, peewee.SqliteDatabase):
        sql = db.execute_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
        db.execute_sql(sql.replace(table, copy, 1))
    else:
        db.execute_sql(f'CREATE TABLE "{copy}" (LIKE "{table}" INCLUDING ALL)')
    db.execute_sql(f'INSERT INTO "{copy}" SELECT * FROM "{table}"')
    return copy


def _adopt(db: peewee.Database) -> str | None:
    """Brings the original project's history into our `schema_version`, keeping it."""
    kind = lineage(db)
    if kind == "ours":
        # The original's documented schema_version had no description column.
        db.execute_sql(_VERSION_TABLE_SQL)
        if "description" not in _version_columns(db):
            db.execute_sql("ALTER TABLE schema_version ADD COLUMN description TEXT")
        return None
    if kind == "new":
        db.execute_sql(_VERSION_TABLE_SQL)
        return None
    _require_original_table(db)
    note = "adopted the original LLM Metrics Proxy's schema"
    if kind == "original-code":
        theirs = [r[0] for r in db.execute_sql("SELECT version FROM schema_version ORDER BY version")]
        # Its version numbers are its own: keep its history under another name.
        db.execute_sql("ALTER TABLE schema_version RENAME TO schema_version_original")
        note += f" (its own versions {theirs}, kept in schema_version_original)"
    db.execute_sql(_VERSION_TABLE_SQL)
    db.execute_sql(
        f"INSERT INTO schema_version (version, applied_at, description) VALUES (1, {db.param}, {db.param})",
        (_now_utc(), f"m001_original_schema: {note}"),
    )
    return note


def _require_original_table(db: peewee.Database) -> None:
    columns = {c.name for c in db.get_columns("completion_requests")}
    missing = _ORIGINAL_COLUMNS - columns
    if missing:
        raise MigrationError(
            "completion_requests has no version history and is not the original LLM Metrics "
            f"Proxy's table (it lacks {', '.join(sorted(missing))}), so it is not known how to "
            "upgrade it. Nothing was changed."
        )


# -- safety around the transaction -----------------------------------------------------------


class _write_lock:
    """The database's write lock for the whole upgrade (SQLite: BEGIN IMMEDIATE; PostgreSQL:
    a transaction-scoped advisory lock), waited for while another process migrates."""

    _ADVISORY_KEY = 0x6C6C6D6D  # "llmm"

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self.txn: peewee._atomic | None = None

    def __enter__(self):
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                if isinstance(self.db, peewee.SqliteDatabase):
                    self.txn = self.db.atomic("IMMEDIATE")
                    self.txn.__enter__()
                else:
                    self.txn = self.db.atomic()
                    self.txn.__enter__()
                    self.db.execute_sql(f"SELECT pg_advisory_xact_lock({self._ADVISORY_KEY})")
                return self
            except peewee.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __exit__(self, *exc_info):
        assert self.txn is not None  # set by __enter__, which `with` ran first
        return self.txn.__exit__(*exc_info)


def _sqlite_path(db: peewee.Database) -> Path | None:
    if not isinstance(db, peewee.SqliteDatabase) or db.database in ("", ":memory:"):
        return None
    name = db.database
    if name.startswith("file:"):
        name = name[5:].split("?", 1)[0]
    return Path(name)


def _check_integrity(db: peewee.Database) -> None:
    if not isinstance(db, peewee.SqliteDatabase):
        return
    try:
        result = [r[0] for r in db.execute_sql("PRAGMA quick_check")]
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:  # rows are read unwrapped
        result = [str(exc)]
    if result != ["ok"]:
        raise MigrationError(
            f"The database file fails SQLite's integrity check ({'; '.join(result[:3])}). It was "
            "not migrated. Restore a backup (python -m migrations backups / restore FILE) or "
            "move the file aside to start a new one."
        )


def _file_backup(path: Path, keep: int) -> Path:
    try:
        return make_backup(path, keep=keep)
    except BackupError as exc:
        raise MigrationError(
            f"The database {path} needs a schema upgrade, and a verified backup must be taken "
            f"first, but none could be made ({exc}). Nothing was migrated. Make "
            f"{path.parent / 'backups'} or ~/.llm_metrics_proxy/backups writable (and check the "
            "free disk space), then start again."
        ) from exc


def _report_failure(db, exc: Exception, intact: bool, result: UpgradeResult) -> MigrationError:
    failed = result.failed_step or "adopting the original schema"
    reason = str(exc) if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
    if intact:
        where = f" A verified backup is at {result.backup}." if result.backup else ""
        return MigrationError(
            f"Upgrading the database failed at {failed} ({reason}). Everything was rolled "
            f"back and the database was verified to be exactly as before.{where}"
        )
    if result.backup is None:
        return MigrationError(
            f"Upgrading the database failed at {failed} ({reason}), and the rollback could "
            "not be verified. Stop the proxy and check the database with python -m migrations verify."
        )
    from .backup import restore

    db.close()
    path = _sqlite_path(db)
    assert path is not None  # result.backup is only ever taken of a SQLite file
    restore(path, result.backup)
    return MigrationError(
        f"Upgrading the database failed at {failed} ({reason}). The rollback left it "
        f"different from before, so it was restored from the verified backup {result.backup}."
    )


def _matches_backup(db: peewee.Database, backup: Path) -> bool:
    copy = peewee.SqliteDatabase(f"file:{backup}?mode=ro", uri=True)
    try:
        tables = [t for t in snapshot(copy)]
        return all(table_digest(db, t) == table_digest(copy, t) for t in tables)
    finally:
        copy.close()
