"""A background thread that writes rows in batches, so no database call runs on mitmproxy's loop.

`submit` never blocks: rows wait in a bounded queue. While the database cannot be written (locked,
read-only, away) the current batch is retried with backoff and new rows keep queueing; when the
queue is full a row is dropped and counted, never silently lost.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import peewee

from .models import CompletionRequest

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 500
# After the first row of a batch arrives, rows that follow within this window join its
# transaction: at a few hundred calls/s that is one commit per window instead of one per call.
BATCH_WINDOW_S = 0.05
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0
_ATTEMPT_MAX_S = 10.0  # longer than any driver's own lock wait (SQLite busy_timeout is 5 s)


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

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> bool:
        """Queues a row; False (and counted) when the queue is full or the writer has stopped."""
        if not self._stop.is_set():
            try:
                self._queue.put_nowait(row)
                return True
            except queue.Full:
                pass
        self._count_dropped(1)
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
            self._count_dropped(leftover)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            before = self.dropped
            self.dropped += n
        # Log the first drop and then each power of ten, so a long outage cannot flood the log.
        if before == 0 or len(str(before)) != len(str(self.dropped)):
            log.warning("llm-metrics: %d row(s) dropped so far: the database cannot keep up or is unavailable", self.dropped)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self._write_with_retry(batch)
            elif self._stop.is_set():
                break
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
                self._insert.write(self._db, batch)
                self.written += len(batch)
                return
            except Exception as exc:
                if not _is_database_error(exc):  # a bug, not an outage: retrying would not help
                    log.exception("llm-metrics: %d row(s) could not be written", len(batch))
                    self._count_dropped(len(batch))
                    return
                self.write_errors += 1
                if self.last_error != str(exc):
                    log.warning("llm-metrics: writing %d row(s) failed, will retry: %s", len(batch), exc)
                self.last_error = str(exc)
                self._drop_connection()  # a server that restarted needs a new connection
            if self._deadline is not None and time.monotonic() + delay > self._deadline:
                self._count_dropped(len(batch))
                return
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

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
            self._db._state.reset()


class _Insert:
    """One prepared INSERT run with `executemany`. peewee's `insert_many` builds a query object
    and its SQL anew for every batch and adapts values row by row in Python; on mitmproxy's
    process that held the GIL for about 0.3 ms per row (bench/writer.py)."""

    def __init__(self, model: type[peewee.Model]) -> None:
        fields = [f for f in model._meta.sorted_fields if not isinstance(f, peewee.AutoField)]
        self._table = model._meta.table_name
        self._names = [f.column_name for f in fields]
        # Only fields whose Python value the driver cannot take as it is get converted.
        self._adapters = [(i, f.db_value) for i, f in enumerate(fields) if isinstance(f, peewee.BooleanField)]
        self._sql: dict[str, str] = {}

    def write(self, db: peewee.Database, rows: list[dict[str, Any]]) -> None:
        sql = self._sql.get(db.param)
        if sql is None:
            columns = ", ".join(f'"{name}"' for name in self._names)
            sql = f'INSERT INTO "{self._table}" ({columns}) VALUES ({", ".join([db.param] * len(self._names))})'
            self._sql[db.param] = sql
        names, adapters = self._names, self._adapters
        params = []
        for row in rows:
            values = [row.get(name) for name in names]
            for i, adapt in adapters:
                values[i] = adapt(values[i])
            params.append(values)
        with peewee.__exception_wrapper__:  # driver errors as peewee's, as insert_many raised them
            with db.atomic():
                db.cursor().executemany(sql, params)


def _is_database_error(exc: Exception) -> bool:
    """Errors of the database or its driver (peewee wraps most, not all: a rollback on a dead
    PostgreSQL connection raises psycopg's own)."""
    if isinstance(exc, peewee.PeeweeException):
        return True
    module = type(exc).__module__
    return module.startswith(("psycopg", "sqlite3"))

def _file_identity(db: peewee.Database) -> tuple[int, int] | None:
    """(device, inode) of a SQLite file; None for other engines, or when the file is gone."""
    if not isinstance(db, peewee.SqliteDatabase) or db.database.startswith(("file:", ":memory:")):
        return None
    try:
        st = os.stat(db.database)
    except FileNotFoundError:
        return (0, 0)
    return (st.st_dev, st.st_ino)
