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
    db.execute_sql(_VERSION_TABLE_SQL)
    while True:
        # IMMEDIATE takes SQLite's write lock before reading the version, so two processes
        # starting together apply each step once: the second waits, then finds nothing to do.
        with _write_transaction(db):
            todo = pending(db)
            if not todo:
                return done
            first = todo[0]
            first.apply(db, migrator)
            db.execute_sql(
                f"INSERT INTO schema_version (version, applied_at, description) VALUES ({db.param}, {db.param}, {db.param})",
                (first.version, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), first.name),
            )
            done.append(first)


def _write_transaction(db: peewee.Database):
    if isinstance(db, peewee.SqliteDatabase):
        return db.atomic("IMMEDIATE")
    return db.atomic()
