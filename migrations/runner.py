"""Applying pending steps, each with its history row in one transaction."""

from __future__ import annotations

from datetime import datetime, timezone

import peewee
from playhouse.migrate import PostgresqlMigrator, SchemaMigrator, SqliteMigrator

from . import steps as _steps  # noqa: F401  (registers the steps)
from .registry import STEPS, Step

CURRENT_SCHEMA_VERSION = len(STEPS)

_VERSION_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, description TEXT)"
)


class NewerSchemaError(RuntimeError):
    """The database was written by a newer build; it is never touched."""


def _migrator(db: peewee.Database) -> SchemaMigrator:
    if isinstance(db, peewee.PostgresqlDatabase):
        return PostgresqlMigrator(db)
    return SqliteMigrator(db)


def applied_versions(db: peewee.Database) -> list[int]:
    """Read-only: versions recorded in schema_version ([] when there is none)."""
    if "schema_version" not in db.get_tables():
        return []
    return [row[0] for row in db.execute_sql("SELECT version FROM schema_version ORDER BY version")]


def current_version(db: peewee.Database) -> int:
    versions = applied_versions(db)
    return max(versions) if versions else 0


def pending(db: peewee.Database) -> list[Step]:
    """Read-only: the steps not yet applied, oldest first."""
    version = current_version(db)
    if version > CURRENT_SCHEMA_VERSION:
        raise NewerSchemaError(
            f"the database is at schema version {version}, newer than this build's "
            f"{CURRENT_SCHEMA_VERSION}: upgrade llm-metrics-proxy instead"
        )
    return [s for s in STEPS if s.version > version]


def upgrade(db: peewee.Database) -> list[Step]:
    """Applies every pending step; safe when several processes start at once."""
    done: list[Step] = []
    migrator = _migrator(db)
    while True:
        # IMMEDIATE takes SQLite's write lock before reading the version, so two processes
        # starting together apply each step once: the second waits, then finds nothing to do.
        with _write_transaction(db):
            todo = pending(db)  # raises NewerSchemaError before anything is written
            if not todo:
                return done
            _ensure_version_table(db)
            first = todo[0]
            first.apply(db, migrator)
            db.execute_sql(
                f"INSERT INTO schema_version (version, applied_at, description) VALUES ({db.param}, {db.param}, {db.param})",
                (first.version, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), f"{first.name}: {first.description}"),
            )
            done.append(first)


def _ensure_version_table(db: peewee.Database) -> None:
    db.execute_sql(_VERSION_TABLE_SQL)
    # The original LLM Metrics Proxy made schema_version without `description`: add it, so its
    # databases upgrade in place and keep their history rows.
    if "description" not in {c.name for c in db.get_columns("schema_version")}:
        db.execute_sql("ALTER TABLE schema_version ADD COLUMN description TEXT")


def _write_transaction(db: peewee.Database):
    if isinstance(db, peewee.SqliteDatabase):
        return db.atomic("IMMEDIATE")
    return db.atomic()
