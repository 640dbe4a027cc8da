"""A background thread that writes rows in batches, so no database call runs on mitmproxy's loop.

`submit` never blocks: rows wait in a bounded queue. While the database cannot be written (locked,
read-only, away) the current batch is retried with backoff and new rows keep queueing; when the
queue is full a row is dropped and counted, never silently lost: the counts (by reason, with the
first and last time) are stored in `dropped_rows` in the same transaction as the next batch of
rows, so once the database is writable again they are there exactly once. Counts the database
never took (it stayed unwritable until the proxy stopped) are only in the log.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import peewee

from .models import CompletionRequest, DroppedRows

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 500
# After the first row of a batch arrives, rows that follow within this window join its
# transaction: at a few hundred calls/s that is one commit per window instead of one per call.
BATCH_WINDOW_S = 0.05
_MAX_PARAMETERS = 999  # a statement's limit in SQLite before 3.32 (PostgreSQL allows 65,535)
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0
_ATTEMPT_MAX_S = 10.0  # longer than any driver's own lock wait (SQLite busy_timeout is 5 s)

# Why rows were dropped: the `reason` of a `dropped_rows` record.
QUEUE_FULL = "queue_full"  # the database was too slow or unwritable for longer than the buffer holds
WRITER_STOPPED = "writer_stopped"  # a call finished after the writer had been closed
WRITE_ERROR = "write_error"  # writing failed with an error that is not the database's (a bug)
BAD_ROW = "bad_row"  # the database refused this one row's values (e.g. a count too large for its column)
UNWRITTEN_AT_SHUTDOWN = "unwritten_at_shutdown"  # still waiting for the database when the proxy stopped
METERING_LOST = "metering_lost"  # the metering process ended unexpectedly before it stored these calls
METERING_BEHIND = "metering_behind"  # too much waited for the metering: these calls were not handed to it
_DROP_REASONS = {
    QUEUE_FULL: "the database cannot keep up or is unavailable",
    WRITER_STOPPED: "calls finished after the writer stopped",
    WRITE_ERROR: "a row could not be written",
    BAD_ROW: "the database refused a row's values",
    UNWRITTEN_AT_SHUTDOWN: "rows still waited for the database when the proxy stopped",
    METERING_LOST: "the metering process ended before storing them",
    METERING_BEHIND: "the metering fell too far behind the traffic",
}


class RowWriter:
    def __init__(
        self,
        db: peewee.Database,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_window: float = BATCH_WINDOW_S,
        reopen: Callable[[], peewee.Database] | None = None,
    ) -> None:
        self._db = db
        # For a SQLite file deleted or replaced while the proxy runs: make a new one (created
        # and migrated by the caller's function) instead of writing into the unlinked inode.
        self._reopen = reopen
        self._file_identity = _file_identity(db)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._batch_window = batch_window
        self._insert = _Insert(CompletionRequest)
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="llm-metrics-writer", daemon=True)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._last_row_error: str | None = None  # the last error logged for a row dropped alone
        # Drops not yet stored: reason -> [rows, first and last time (epoch seconds)].
        self._drops: dict[str, list] = {}
        self.drops_recorded = 0  # dropped rows whose count is stored in `dropped_rows`
        self._next_drops_attempt = 0.0
        self._host = (socket.gethostname(), os.getpid())

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> bool:
        """Queues a row; False (and counted) when the queue is full or the writer has stopped."""
        if not self._stop.is_set():
            try:
                self._queue.put_nowait(row)
                return True
            except queue.Full:
                self.count_dropped(1, QUEUE_FULL)
                return False
        self.count_dropped(1, WRITER_STOPPED)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Writes everything queued, waiting at most `timeout` seconds; the rest is counted."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            # A write attempt that started before the deadline may wait out SQLite's busy
            # timeout; the loop then sees the deadline and counts the batch as dropped.
            self._thread.join(timeout + _ATTEMPT_MAX_S)
        leftover = self._queue.qsize() + (self._in_flight if self._thread.is_alive() else 0)
        if leftover:
            self.count_dropped(leftover, UNWRITTEN_AT_SHUTDOWN)
        self._store_drops_at_close()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def unsettled(self) -> int:
        """Rows neither written nor counted as dropped yet."""
        return self._queue.qsize() + self._in_flight

    def count_dropped(self, n: int, reason: str) -> None:
        """Counts rows lost, here or before they reached the writer; stored with the next batch."""
        now = time.time()
        with self._lock:
            before = self.dropped
            self.dropped += n
            entry = self._drops.get(reason)
            if entry is None:
                self._drops[reason] = [n, now, now]
            else:
                entry[0] += n
                entry[2] = now
        # Log the first drop and then each power of ten, so a long outage cannot flood the log.
        if before == 0 or len(str(before)) != len(str(self.dropped)):
            log.warning("llm-metrics: %d row(s) dropped so far (the latest: %s)", self.dropped, _DROP_REASONS.get(reason, reason))

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self._write_with_retry(batch)
            elif self._stop.is_set():
                break
            elif self._drops:
                self._store_drops_when_idle()
        self._close_database()

    def _close_database(self) -> None:
        """At the end: a SQLite file is checkpointed so that the file alone holds every row."""
        try:
            if isinstance(self._db, peewee.SqliteDatabase) and not self._db.is_closed():
                self._db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as exc:  # a reader holding the WAL: SQLite checkpoints when the last one closes
            log.warning("llm-metrics: the database could not be checkpointed at exit: %s", exc)
        if not self._db.is_closed():
            self._db.close()

    def _next_batch(self) -> list[dict[str, Any]]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        self._drain_into(batch)
        if len(batch) < self._batch_size and not self._stop.is_set():
            # Waiting costs nothing the user sees (rows are recorded after their call ended)
            # and saves a transaction per row when calls arrive one by one.
            self._stop.wait(self._batch_window)
            self._drain_into(batch)
        return batch

    def _drain_into(self, batch: list[dict[str, Any]]) -> None:
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _write_with_retry(self, batch: list[dict[str, Any]]) -> None:
        delay = _RETRY_MIN_S
        self._in_flight = len(batch)
        try:
            self._retry_until_written(batch, delay)
        finally:
            self._in_flight = 0

    def _retry_until_written(self, batch: list[dict[str, Any]], delay: float) -> None:
        while True:
            try:
                self._follow_file()
                with self._transaction():
                    self._insert.write(self._db, batch)
                self.written += len(batch)
                return
            except Exception as exc:
                if _is_row_error(exc):  # retrying the same rows cannot help: find the one at fault
                    self._write_each(batch, exc)
                    return
                self.write_errors += 1
                if self.last_error != str(exc):
                    log.warning("llm-metrics: writing %d row(s) failed, will retry: %s", len(batch), exc)
                self.last_error = str(exc)
                self._drop_connection()  # a server that restarted needs a new connection
            if self._deadline is not None and time.monotonic() + delay > self._deadline:
                self.count_dropped(len(batch), UNWRITTEN_AT_SHUTDOWN)
                return
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _write_each(self, batch: list[dict[str, Any]], exc: Exception) -> None:
        """A value in one row that the database refuses must not cost the rows beside it: they are
        written one by one and only a row that fails alone is dropped (counted as `bad_row`)."""
        if len(batch) == 1:
            self._drop_bad_row(exc)
            return
        for i, row in enumerate(batch):
            try:
                with self._transaction():
                    self._insert.write(self._db, [row])
                self.written += 1
            except Exception as row_exc:
                if not _is_row_error(row_exc):  # the database went away meanwhile: wait it out
                    self._retry_until_written(batch[i:], _RETRY_MIN_S)
                    return
                self._drop_bad_row(row_exc)

    def _drop_bad_row(self, exc: Exception) -> None:
        refused = _is_database_error(exc) or isinstance(exc, OverflowError)  # a count beyond 64 bits
        # Each new error once: one fault repeated on every row must not write a line per row
        # (`count_dropped` logs the running count).
        if repr(exc) != self._last_row_error:
            self._last_row_error = repr(exc)
            if refused:
                log.error("llm-metrics: the database refused a row, which is dropped and counted: %s", exc)
            else:
                log.error("llm-metrics: a row could not be written (a bug: please report it): %r", exc)
        self.count_dropped(1, BAD_ROW if refused else WRITE_ERROR)

    # -- storing drop counts ---------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One database transaction that also stores the drops counted so far: they land exactly
        when the batch does, and go back to wait for the next one when it fails."""
        if not self._drops:  # the usual case: the batch's own transaction is all there is
            yield
            return
        with self._lock:
            drops, self._drops = self._drops, {}
        try:
            with self._db.atomic():
                yield
                if drops:
                    DroppedRows.insert_many(self._drop_records(drops)).execute(self._db)
        except BaseException:
            self._restore_drops(drops)
            raise
        self.drops_recorded += sum(entry[0] for entry in drops.values())

    def _drop_records(self, drops: dict[str, list]) -> list[dict[str, Any]]:
        hostname, pid = self._host
        return [
            {"first_dropped_at": _utc(first), "last_dropped_at": _utc(last), "row_count": n,
             "reason": reason, "hostname": hostname, "pid": pid}
            for reason, (n, first, last) in drops.items()
        ]

    def _restore_drops(self, drops: dict[str, list]) -> None:
        with self._lock:
            for reason, (n, first, last) in drops.items():
                entry = self._drops.get(reason)
                if entry is None:
                    self._drops[reason] = [n, first, last]
                else:
                    entry[0] += n
                    entry[1] = min(entry[1], first)
                    entry[2] = max(entry[2], last)

    def _store_drops_when_idle(self) -> None:
        """No rows to carry the drops: store them alone, at most once per retry interval."""
        if time.monotonic() < self._next_drops_attempt:
            return
        try:
            self._follow_file()
            with self._transaction():
                pass
        except Exception as exc:
            self._next_drops_attempt = time.monotonic() + _RETRY_MAX_S
            if _is_database_error(exc):
                self._drop_connection()
            else:
                log.exception("llm-metrics: the count of dropped rows could not be stored")

    def _store_drops_at_close(self) -> None:
        """A last attempt; when the database still cannot take them, the log is their only record."""
        if not self._drops:
            return
        if not self._thread.is_alive():
            try:
                with self._transaction():
                    pass
            except Exception as exc:
                self._drop_connection()
                log.warning("llm-metrics: the count of dropped rows could not be stored either: %s", exc)
            finally:
                if not self._db.is_closed():
                    self._db.close()
        with self._lock:
            unstored = {reason: entry[0] for reason, entry in self._drops.items()}
        if unstored:
            log.warning("llm-metrics: %d dropped row(s) are counted in this log only, not in the database (%s)",
                        sum(unstored.values()), ", ".join(f"{r}: {n}" for r, n in sorted(unstored.items())))

    def _follow_file(self) -> None:
        """Reopens when the SQLite file was deleted or replaced since it was opened."""
        if self._reopen is None or self._file_identity is None:
            return
        if _file_identity(self._db) == self._file_identity:
            return
        log.warning("llm-metrics: the database file %s was deleted or replaced; making a new one", self._db.database)
        fresh = self._reopen()  # raises while it cannot: the batch waits and is retried
        self._drop_connection()
        self._db = fresh
        self._file_identity = _file_identity(fresh)

    def _drop_connection(self) -> None:
        try:
            self._db.close()
        except Exception:
            # A dead connection cannot roll back or close cleanly: forget it, reconnect next time.
            self._db._state.reset()  # type: ignore[attr-defined]  # peewee's stubs lack the private _state


class _Insert:
    """Rows go in as multi-row INSERT statements (`VALUES (...), (...), ...`), as many a statement
    as `_MAX_PARAMETERS` allows, each size prepared once. Not peewee's `insert_many`, which
    builds a query object and its SQL anew for every batch (about 0.3 ms a row of the GIL), and
    not `executemany`, whose driver lets go of the GIL and takes it back for every row: with
    mitmproxy's loop busy each of those hand-overs costs the loop a switch (bench/writer.py)."""

    def __init__(self, model: type[peewee.Model]) -> None:
        fields = [f for f in model._meta.sorted_fields if not isinstance(f, peewee.AutoField)]
        self._table = model._meta.table_name
        self._names = [f.column_name for f in fields]
        # Only fields whose Python value the driver cannot take as it is get converted.
        self._adapters = [(i, f.db_value) for i, f in enumerate(fields) if isinstance(f, peewee.BooleanField)]
        self._per_statement = max(1, _MAX_PARAMETERS // len(self._names))
        self._sql: dict[tuple[str, int], str] = {}

    def write(self, db: peewee.Database, rows: list[dict[str, Any]]) -> None:
        names, adapters = self._names, self._adapters
        statements = []
        step = self._per_statement
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            params: list[Any] = []
            for row in chunk:
                values = [row.get(name) for name in names]
                for i, adapt in adapters:
                    values[i] = adapt(values[i])
                params.extend(values)
            statements.append((self._statement(db.param, len(chunk)), params))
        # Driver errors as peewee's, as insert_many raised them (peewee's stubs lack __exception_wrapper__).
        with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
            with db.atomic():
                cursor = db.cursor()
                for sql, params in statements:
                    cursor.execute(sql, params)

    def _statement(self, param: str, n: int) -> str:
        sql = self._sql.get((param, n))
        if sql is None:
            columns = ", ".join(f'"{name}"' for name in self._names)
            row = f"({', '.join([param] * len(self._names))})"
            sql = f'INSERT INTO "{self._table}" ({columns}) VALUES {", ".join([row] * n)}'
            self._sql[(param, n)] = sql
        return sql


def _is_database_error(exc: Exception) -> bool:
    """Errors of the database or its driver (peewee wraps most, not all: a rollback on a dead
    PostgreSQL connection raises psycopg's own)."""
    if isinstance(exc, peewee.PeeweeException):
        return True
    module = type(exc).__module__
    return module.startswith(("psycopg", "sqlite3"))

def _utc(epoch_seconds: float) -> str:
    """The form of `completion_requests.timestamp`: 2026-11-22T14:03:07.123456Z."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_row_error(exc: Exception) -> bool:
    """The rows, not the database: a constraint or a value out of its column's range, a value the
    driver cannot bind, or a Python error while preparing them. Anything else the database or its
    driver raises (locked, read-only, full, disconnected, a table missing) is waited out."""
    if not _is_database_error(exc):
        return True
    if isinstance(exc, (peewee.IntegrityError, peewee.DataError)):
        return True
    # psycopg's own subclasses (NumericValueOutOfRange, ...) are not mapped to peewee's by name.
    if any(cls.__name__ in ("IntegrityError", "DataError") for cls in type(exc).__mro__):
        return True
    return isinstance(exc, peewee.ProgrammingError) and "binding parameter" in str(exc)


def _file_identity(db: peewee.Database) -> tuple[int, int] | None:
    """(device, inode) of a SQLite file; None for other engines, or when the file is gone."""
    if not isinstance(db, peewee.SqliteDatabase) or db.database.startswith(("file:", ":memory:")):
        return None
    try:
        st = os.stat(db.database)
    except FileNotFoundError:
        return (0, 0)
    return (st.st_dev, st.st_ino)
