"""The database a report reads: opened read-only, its schema version checked, its columns known.

A report never writes, creates or migrates anything: a SQLite file is opened with `mode=ro`, a
server database in a read-only session.

A SQLite file in WAL mode that no process has open (no `-wal` beside it: the proxy is not
running) is read as `immutable`: `mode=ro` alone would create the `-wal` and `-shm` files (SQLite
needs the shared-memory index to read a WAL database) and leave them behind. An immutable read
takes no locks, so `read` checks afterwards that the file was not opened or changed meanwhile
(the proxy started), and reads it again, through its WAL, when it was.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import peewee

from migrations import CURRENT_SCHEMA_VERSION, current_version
from storage.db import BUSY_TIMEOUT_S, connect_server, display_location, hide_password, sqlite_path

from .selection import TABLE

DROPS_TABLE = "dropped_rows"

START_CAPTURING = "start the proxy (python3 dev.py run) and send LLM calls through it"


class ReportError(Exception):
    """A problem the user must fix; the CLI prints `error: <message>` and exits 2."""


class NothingYet(Exception):
    """No calls to report (no file, no table, no rows): the CLI says so and exits 0."""


@dataclass
class Source:
    db: peewee.Database
    location: str
    columns: frozenset[str]
    tables: frozenset[str] = frozenset()
    text_replaced: bool = False  # see replace_undecodable_text
    quiet_stamp: tuple | None = None  # read as immutable: the file as it was then (`_quiet_stamp`)

    @property
    def param(self) -> str:
        return self.db.param

    @property
    def has_cost(self) -> bool:
        return "cost_usd" in self.columns

    @property
    def has_drops(self) -> bool:
        return DROPS_TABLE in self.tables

    @property
    def is_sqlite(self) -> bool:
        return isinstance(self.db, peewee.SqliteDatabase)

    @property
    def walks_runs(self) -> bool:
        """Whether index runs can be walked (`reports.runs`): SQLite, and every key read as
        stored, since a walk sends the keys it read back as parameters."""
        return self.is_sqlite and not self.text_replaced

    def rows(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        return list(self.db.execute_sql(sql, params).fetchall())

    def one(self, sql: str, params: list | tuple = ()) -> tuple:
        return self.db.execute_sql(sql, params).fetchone()

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    def unchanged(self) -> bool:
        """Whether what was read is what the file held: always, unless it was read as immutable
        and a process has opened or changed it since."""
        path = sqlite_path(self.location)
        return self.quiet_stamp is None or (path is not None and _quiet_stamp(path) == self.quiet_stamp)

    def replace_undecodable_text(self) -> None:
        """From now on, stored text that is not UTF-8 (SQLite keeps any bytes as text) is read
        with U+FFFD for the bad bytes, where sqlite3 refuses it. Not the default: a text factory
        in Python makes reading rows about a third slower. A key read so is not the key stored,
        so index runs are no longer walked (`walks_runs`)."""
        self.db.connection().text_factory = _lenient_text
        self.text_replaced = True


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def is_undecodable(exc: Exception) -> bool:
    """sqlite3's refusal of a stored text value that is not UTF-8."""
    return isinstance(exc, (peewee.OperationalError, sqlite3.OperationalError)) and "Could not decode to UTF-8" in str(exc)


T = TypeVar("T")


def read(location: str, load: Callable[[Source], T], *, check: bool = True) -> T:
    """`load(source)` on `location`, opened and checked (raises NothingYet or ReportError), then
    closed. Read as immutable and found opened or changed since (see the module's docstring), it
    is read again the ordinary way: the proxy has the file open now, so that creates nothing."""
    src = open_source(location, check=check)
    try:
        try:
            result = load(src)
        except (peewee.DatabaseError, sqlite3.DatabaseError):
            if src.unchanged():
                raise
        else:
            if src.unchanged():
                return result
    finally:
        src.close()
    src = open_source(location, immutable=False, check=check)
    try:
        return load(src)
    finally:
        src.close()


def open_source(location: str, *, immutable: bool = True, check: bool = True) -> Source:
    """Opens and checks `location`. Raises NothingYet or ReportError. `immutable=False`: never
    read a quiet WAL file as immutable (see the module's docstring); prefer `read`, which checks.
    `check=False`: only opens it (NothingYet only when there is no file), e.g. to read its schema
    version whatever it is."""
    db, stamp = _connect_read_only(location, immutable)
    try:
        tables = frozenset(db.get_tables())
        columns = _check(db, location, tables) if check else frozenset()
        return Source(db, location, columns, tables, quiet_stamp=stamp)
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        db.close()
        raise ReportError(f"cannot read {display_location(location)}: {hide_password(str(exc), location)}") from None
    except Exception:
        db.close()
        raise


def _connect_read_only(location: str, immutable: bool) -> tuple[peewee.Database, tuple | None]:
    path = sqlite_path(location)
    if path is None:
        try:
            db = connect_server(location)
            db.connect()
            db.execute_sql("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        except Exception as exc:  # driver missing, refused, bad URL: one line, not a traceback
            raise ReportError(f"cannot open {display_location(location)}: {hide_password(str(exc), location)}") from None
        return db, None
    if not path.exists():
        raise NothingYet(f"No database at {path} yet: {START_CAPTURING}.")
    # A URI, for mode=ro: the path is percent-encoded, or a `?` or `#` in it would end the path and
    # a `%` start an escape (`a?b.db` would open, even create, a file named `a`, read-write).
    stamp = _quiet_stamp(path) if immutable else None
    uri = f"file:{quote(os.fsencode(path))}?mode=ro" + ("&immutable=1" if stamp else "")
    db = peewee.SqliteDatabase(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        db.connect()
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        raise ReportError(f"cannot open {path}: {exc}") from None
    return db, stamp


_WAL_HEADER = b"\x02\x02"  # bytes 18-19 of a SQLite header: the file format versions WAL sets


def _quiet_stamp(path: Path) -> tuple | None:
    """For a file in WAL mode with no `-wal` or `-shm` beside it (no process has it open): its
    identity, size and modification time, which any change alters. None otherwise."""
    if any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm")):
        return None
    try:
        with open(path, "rb") as file:
            header = file.read(20)
            stat = os.fstat(file.fileno())
    except OSError:
        return None
    if header[:16] != b"SQLite format 3\x00" or header[18:20] != _WAL_HEADER:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _check(db: peewee.Database, location: str, tables: frozenset[str]) -> frozenset[str]:
    location = display_location(location)  # named in messages: never with its password
    if TABLE not in tables:
        raise NothingYet(f"{location} holds no LLM calls yet: {START_CAPTURING}.")
    version = current_version(db)
    if version < CURRENT_SCHEMA_VERSION:
        raise ReportError(
            f"{location} is at schema version {version}, older than this build's "
            f"{CURRENT_SCHEMA_VERSION}: run `python -m migrations upgrade` first"
        )
    if version > CURRENT_SCHEMA_VERSION:
        raise ReportError(
            f"{location} is at schema version {version}, newer than this build's "
            f"{CURRENT_SCHEMA_VERSION}: upgrade llm-metrics-proxy to read it"
        )
    if db.execute_sql(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchone() is None and not _has_drops(db, tables) \
            and not _has_totals(db, tables):
        raise NothingYet(f"{location} holds no LLM calls yet: {START_CAPTURING}.")
    return frozenset(c.name for c in db.get_columns(TABLE))


def _has_totals(db: peewee.Database, tables: frozenset[str]) -> bool:
    """Calls were pruned into daily totals: something to report, even with no call left."""
    return "daily_totals" in tables and db.execute_sql("SELECT 1 FROM daily_totals LIMIT 1").fetchone() is not None


def _has_drops(db: peewee.Database, tables: frozenset[str]) -> bool:
    """Rows were dropped: then there is something to report, even with no call stored."""
    return DROPS_TABLE in tables and db.execute_sql(f"SELECT 1 FROM {DROPS_TABLE} LIMIT 1").fetchone() is not None
