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
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import peewee

from .db import SQLITE_HEADER, NotSQLiteError
from .models import CompletionRequest, DroppedRows
from .timestamps import utc_text

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_BATCH_SIZE = 500
# After the first row of a batch arrives, rows that follow within this window join its
# transaction: at a few hundred calls/s that is one commit per window instead of one per call.
BATCH_WINDOW_S = 0.05
_MAX_PARAMETERS = 999  # a statement's limit in SQLite before 3.32 (PostgreSQL allows 65,535)
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0
_ATTEMPT_MAX_S = 10.0  # longer than any driver's own lock wait (SQLite's busy timeout, storage/db.py)
_IDLE_S = 0.2

# Why rows were dropped: the `reason` of a `dropped_rows` record.
QUEUE_FULL = "queue_full"  # the database was too slow or unwritable for longer than the buffer holds
WRITER_STOPPED = "writer_stopped"  # a call finished after the writer had been closed
WRITE_ERROR = "write_error"  # writing failed with an error that is not the database's (a bug)
BAD_ROW = "bad_row"  # the database refused this one row's values (e.g. a count too large for its column)
UNWRITTEN_AT_SHUTDOWN = "unwritten_at_shutdown"  # still waiting for the database when the proxy stopped
METERING_LOST = "metering_lost"  # the metering process ended unexpectedly before it stored these calls
METERING_BEHIND = "metering_behind"  # too much waited for the metering: these calls were not handed to it
SOCKET_OVERFLOW = "socket_overflow"  # more responses open at once on one WebSocket than are followed
_DROP_REASONS = {
    QUEUE_FULL: "the database cannot keep up or is unavailable",
    WRITER_STOPPED: "calls finished after the writer stopped",
    WRITE_ERROR: "a row could not be written",
    BAD_ROW: "the database refused a row's values",
    UNWRITTEN_AT_SHUTDOWN: "rows still waited for the database when the proxy stopped",
    METERING_LOST: "the metering process ended before storing them",
    METERING_BEHIND: "the metering fell too far behind the traffic",
}
DROP_REASONS = tuple(_DROP_REASONS)


class RowWriter:
    def __init__(
        self,
        db: peewee.Database | None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_window: float = BATCH_WINDOW_S,
        connect: Callable[[], peewee.Database] | None = None,
    ) -> None:
        # `db` open already, or None: the writer's thread then opens it with `connect` (which also
        # brings its schema up to date), retrying while it cannot, rows waiting meanwhile. With
        # `connect`, a SQLite file deleted or replaced while the proxy runs is followed: the
        # writer opens (or makes) the file found at its path, never writing into the old one.
        self._database = db  # None while it is not open (`_db` is it, once `_ready()` said so)
        self._connect = connect
        self._path: str | None = None  # where the SQLite file is
        self._file: _WatchedFile | None = None  # the SQLite file open, watched for another taking its place
        if db is not None:
            self._watch(db)
        self._unusable: str | None = None  # why the database cannot be written now, as said in the log
        self._unusable_since = 0.0
        self._next_open_attempt = 0.0
        self._followed: str | None = None  # how the file at the path changed, until the one there is open
        self._leftovers = False  # the WAL and shared-memory files of the file let go of are still at the path
        self._queue = _Rows(queue_size)
        self._batch_size = batch_size
        self._batch_window = batch_window
        self._insert = _Insert(CompletionRequest)
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="llm-metrics-writer", daemon=True)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.written = 0  # rows committed to the database at its place (file or server)
        self.written_to_replaced = 0  # of those, rows in SQLite files since deleted or replaced at the path
        self.dropped = 0
        self.last_error: str | None = None
        self._last_row_error: str | None = None  # the last error logged for a row dropped alone
        # Drops not yet stored: reason -> [rows, first and last time (epoch seconds)].
        self._drops: dict[str, list] = {}
        self.drops_recorded = 0  # dropped rows whose count is stored in `dropped_rows`
        self._next_drops_attempt = 0.0
        self._host = (socket.gethostname(), os.getpid())
        # Told of every drop counted (the metrics out, addon/exposition.py), from the counting thread.
        self.on_dropped: Callable[[int, str], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> bool:
        """Queues a row; False (and counted) when the queue is full or the writer has stopped."""
        if self._stop.is_set():
            self.count_dropped(1, WRITER_STOPPED)
            return False
        if not self._queue.put(row):
            self.count_dropped(1, QUEUE_FULL)
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Writes everything queued, waiting at most `timeout` seconds; the rest is counted."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._queue.wake()  # a thread waiting for rows: at once
        if self._thread.is_alive():
            # A write attempt that started before the deadline may wait out SQLite's busy
            # timeout; the loop then sees the deadline and counts the batch as dropped.
            self._thread.join(timeout + _ATTEMPT_MAX_S)
        leftover = len(self._queue) + (self._in_flight if self._thread.is_alive() else 0)
        if leftover:
            self.count_dropped(leftover, UNWRITTEN_AT_SHUTDOWN)
        self._store_drops_at_close()

    @property
    def unsettled(self) -> int:
        """Rows neither written nor counted as dropped yet."""
        return len(self._queue) + self._in_flight

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
        if self.on_dropped is not None:
            self.on_dropped(n, reason)
        # Log the first drop and then each power of ten, so a long outage cannot flood the log.
        if before == 0 or len(str(before)) != len(str(self.dropped)):
            log.warning("llm-metrics: %d row(s) dropped so far (the latest: %s)", self.dropped, _DROP_REASONS.get(reason, reason))

    def _run(self) -> None:
        if self._database is None:
            self._ready()  # at once, not at the first row: the schema is upgraded before calls come
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
        if self._database is not None and self._path_change() is not None:
            self._follow()  # never checkpointed into what took the file's place
        db = self._database
        if db is None:
            return
        try:
            if isinstance(db, peewee.SqliteDatabase) and not db.is_closed():
                db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as exc:  # a reader holding the WAL: SQLite checkpoints when the last one closes
            log.warning("llm-metrics: the database could not be checkpointed at exit: %s", exc)
        if not db.is_closed():
            db.close()

    def _next_batch(self) -> list[dict[str, Any]]:
        # Idle, the thread looks up every _IDLE_S: drop counts to store wait for it.
        batch = self._queue.take(self._batch_size, timeout=_IDLE_S)
        if batch and len(batch) < self._batch_size and not self._stop.is_set():
            # Waiting costs nothing the user sees (rows are recorded after their call ended)
            # and saves a transaction per row when calls arrive one by one.
            self._stop.wait(self._batch_window)
            batch.extend(self._queue.take(self._batch_size - len(batch)))
        return batch

    def _write_with_retry(self, batch: list[dict[str, Any]]) -> None:
        delay = _RETRY_MIN_S
        self._in_flight = len(batch)
        try:
            self._retry_until_written(batch, delay)
        finally:
            self._in_flight = 0

    def _retry_until_written(self, batch: list[dict[str, Any]], delay: float) -> None:
        while True:
            if self._ready():  # else it cannot be opened yet (said once): the batch waits
                try:
                    with self._transaction():
                        self._insert.write(self._db, batch)
                    self.written += len(batch)
                    return
                except _FileReplaced:
                    continue  # committed into a file no longer at the path: again, into the one there
                except Exception as exc:
                    if _is_row_error(exc):  # retrying the same rows cannot help: find the one at fault
                        self._write_each(batch, exc)
                        return
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
        # A count beyond 64 bits (OverflowError), text the driver cannot encode (UnicodeError):
        # values the database cannot take, as much as the ones it refuses itself.
        refused = _is_database_error(exc) or isinstance(exc, (OverflowError, UnicodeError))
        # Each new error once: one fault repeated on every row must not write a line per row
        # (`count_dropped` logs the running count). Never the offending value itself: it may be
        # kilobytes long, or not printable (the message is cut, as `_describe` says).
        described = _describe(exc)
        if described != self._last_row_error:
            self._last_row_error = described
            if refused:
                log.error("llm-metrics: the database refused a row, which is dropped and counted: %s", described)
            else:
                log.error("llm-metrics: a row could not be written (a bug: please report it): %s", described)
        self.count_dropped(1, BAD_ROW if refused else WRITE_ERROR)

    # -- storing drop counts ---------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One database transaction that also stores the drops counted so far: they land exactly
        when the batch does, and go back to wait for the next one when it fails. It fails too
        (`_FileReplaced`) when, once committed, the SQLite file is no longer the one at the path:
        what it holds is not where users look, so it is not counted as written."""
        if not self._drops:  # the usual case: the batch's own transaction is all there is
            yield
            self._check_file()
            return
        with self._lock:
            drops, self._drops = self._drops, {}
        try:
            with self._db.atomic():
                yield
                if drops:
                    DroppedRows.insert_many(self._drop_records(drops)).execute(self._db)
            self._check_file()
        except BaseException:
            self._restore_drops(drops)
            raise
        self.drops_recorded += sum(entry[0] for entry in drops.values())

    def _drop_records(self, drops: dict[str, list]) -> list[dict[str, Any]]:
        hostname, pid = self._host
        return [
            {"first_dropped_at": utc_text(first), "last_dropped_at": utc_text(last), "row_count": n,
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
            if not self._ready():
                self._next_drops_attempt = time.monotonic() + _RETRY_MAX_S
                return
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
        if not self._thread.is_alive() and self._database is not None:
            try:
                with self._transaction():
                    pass
            except Exception as exc:
                self._drop_connection()
                log.warning("llm-metrics: the count of dropped rows could not be stored either: %s", exc)
            finally:
                if self._database is not None and not self._database.is_closed():
                    self._database.close()
        with self._lock:
            unstored = {reason: entry[0] for reason, entry in self._drops.items()}
        if unstored:
            log.warning("llm-metrics: %d dropped row(s) are counted in this log only, not in the database (%s)",
                        sum(unstored.values()), ", ".join(f"{r}: {n}" for r, n in sorted(unstored.items())))

    # -- opening the database, and following its file ---------------------------------------

    @property
    def _db(self) -> peewee.Database:
        """The database, where `_ready()` has said it is open."""
        assert self._database is not None
        return self._database

    def _ready(self) -> bool:
        """Whether the database can be written: opened now if it is not open (a SQLite file deleted
        or replaced at its path is let go of first). While it cannot be, the caller's rows wait;
        why is said once, and again only when the reason changes."""
        if self._database is not None and self._path_change() is not None:
            self._follow()
        if self._database is None:
            if time.monotonic() < self._next_open_attempt:
                return False
            try:
                self._open()
            except Exception as exc:
                self._cannot_open(exc)
                return False
        if self._unusable is not None:
            log.warning("llm-metrics: the database can be written again, after %.0f s: the rows that waited are "
                        "written now", time.monotonic() - self._unusable_since)
            self._unusable = None
        return True

    def _open(self) -> None:
        if self._connect is None:
            raise RuntimeError("the database was closed and the writer was given no way to open it")
        if self._leftovers and self._path is not None:  # they could not be removed at once (a read-only directory)
            self._leftovers = not _clear_leftovers(self._path)
        db = self._connect()
        if self._followed is not None and self._path is not None:
            log.warning("llm-metrics: rows go into the database file now at %s", self._path)
        self._followed = None
        self._database = db
        self._watch(db)

    def _watch(self, db: peewee.Database) -> None:
        """Notes which file a SQLite database is, to notice when its path holds another."""
        path = _file_path(db) if self._connect is not None else None
        if path is not None:
            self._path = path
        self._file = _WatchedFile(path) if path is not None else None

    def _path_change(self) -> str | None:
        return self._file.change() if self._file is not None else None

    def _check_file(self) -> None:
        if self._path_change() is not None:
            raise _FileReplaced(self._path)

    def _follow(self) -> None:
        """The SQLite file open is no longer at its path: said once, and let go of."""
        change = self._path_change()
        if change is None:
            return
        log.warning("llm-metrics: the database file %s %s", self._path, _CHANGES[change])
        self.written_to_replaced = self.written
        self._followed = change
        self._let_go(change)

    def _let_go(self, change: str) -> None:
        """Closes the connection to a file no longer at its path. Its WAL is checkpointed into that
        file first (wherever it was moved to, or the deleted file: closing alone does not, once a
        file has moved), and the WAL and shared-memory files at the path, which are its own, are
        removed: SQLite would read them as the WAL of the file that took its place, and overwrite
        that one's pages with the old file's. A file overwritten in place is that same file: the
        connection's descriptor of it is pointed elsewhere, so that nothing goes into it."""
        if change == "overwritten" and self._file is not None:
            self._file.divert()
        elif not self._db.is_closed():  # else nothing of ours is in a WAL (and a new connection would open the new file)
            try:
                self._db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except Exception as exc:  # what it could not take is kept beside the path (_clear_leftovers)
                log.warning("llm-metrics: the WAL of the database file that was at %s could not be checkpointed "
                            "into it: %s", self._path, exc)
        self._drop_connection()
        self._database = None
        self._file = None
        self._leftovers = not _clear_leftovers(self._path)

    def _cannot_open(self, exc: Exception) -> None:
        if _is_migration_error(exc):  # it would fail the same way (and take a backup each time)
            self._next_open_attempt = time.monotonic() + _MIGRATION_RETRY_S
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # psycopg's messages span lines
        if reason == self._unusable:
            return
        if self._unusable is None:
            self._unusable_since = time.monotonic()
        self._unusable = reason
        waits = (f"Rows wait (up to {self._queue.maxsize:,}) and are written once it can be; past that they are "
                 "dropped and counted.")
        if isinstance(exc, NotSQLiteError):
            log.warning("llm-metrics: %s %s", exc, waits)
        elif self._followed == "deleted" and isinstance(exc, OSError):
            log.warning("llm-metrics: the database file %s was deleted and no new one can be made there (%s). %s",
                        self._path, exc, waits)
        else:
            log.warning("llm-metrics: the database cannot be opened (%s). %s", " ".join(str(exc).split()), waits)

    def _drop_connection(self) -> None:
        db = self._database
        if db is None:
            return
        try:
            db.close()
        except Exception:
            # A dead connection cannot roll back or close cleanly: forget it, reconnect next time.
            db._state.reset()  # type: ignore[attr-defined]  # peewee's stubs lack the private _state


_CHANGES = {
    "deleted": "was deleted or moved away: a new one is made at that path",
    "replaced": "was replaced by another file: rows go into that one if it is a SQLite database (migrated if need be)",
    "overwritten": "was overwritten in place: what it held is gone; rows go into it only if it is a SQLite database",
}
_MIGRATION_RETRY_S = 60.0


class _Rows:
    """The bounded queue of rows for the writer's thread. Unlike `queue.Queue`, a thread waiting
    for rows is woken at once by `wake` (the writer's close), not at the end of its wait."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._rows: deque[dict[str, Any]] = deque()
        self._changed = threading.Condition(threading.Lock())
        self._woken = False

    def __len__(self) -> int:
        return len(self._rows)

    def put(self, row: dict[str, Any]) -> bool:
        """False, and the row not taken, when the queue is full."""
        with self._changed:
            if len(self._rows) >= self.maxsize:
                return False
            self._rows.append(row)
            self._changed.notify()
        return True

    def take(self, limit: int, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Up to `limit` rows, oldest first, waiting up to `timeout` seconds for one (not once woken)."""
        with self._changed:
            if not self._rows and not self._woken and timeout > 0:
                self._changed.wait(timeout)
            return [self._rows.popleft() for _ in range(min(limit, len(self._rows)))]

    def wake(self) -> None:
        with self._changed:
            self._woken = True
            self._changed.notify_all()


class _FileReplaced(peewee.OperationalError):
    """What was just committed went into a SQLite file that is no longer the one at its path. A
    database error, so that it is waited out (the file at the path is followed), never taken for
    a fault of the rows."""


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


# SQLSTATE classes (PostgreSQL's first two characters) that are about the values of the rows
# being written, never the database's state: 22 data exception (a number out of its column's
# range, text right-truncated, a character the database's encoding has no equivalent for), 23 a
# constraint, 54 a program limit ("index row size 3032 exceeds maximum 2704 for index
# report_calls"). psycopg files class 54 under OperationalError, beside "server closed the
# connection": by class alone a refused value would be retried forever.
_ROW_SQLSTATE_CLASSES = ("22", "23", "54")


def _is_row_error(exc: Exception) -> bool:
    """The rows, not the database: a constraint or a value out of its column's range or limits, a
    value the driver cannot bind, or a Python error while preparing them. Anything else the
    database or its driver raises (locked, read-only, full, disconnected, a table missing) is
    waited out."""
    if not _is_database_error(exc):
        return True
    if isinstance(exc, (peewee.IntegrityError, peewee.DataError)):
        return True
    state = _sqlstate(exc)
    if state is not None:
        return state[:2] in _ROW_SQLSTATE_CLASSES
    # psycopg's own subclasses (NumericValueOutOfRange, ...) are not mapped to peewee's by name.
    if any(cls.__name__ in ("IntegrityError", "DataError") for cls in type(exc).__mro__):
        return True
    return isinstance(exc, peewee.ProgrammingError) and "binding parameter" in str(exc)


def _sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of a driver error, also when peewee wrapped it (`orig`) or it was
    raised while handling it; None for SQLite's errors, which have none."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
        todo.extend((getattr(current, "orig", None), current.__cause__, current.__context__))
    return None


_DESCRIBE_MAX_CHARS = 200


def _describe(exc: BaseException) -> str:
    """One short printable line for a log: the error's type and the first line of its message,
    cut at `_DESCRIBE_MAX_CHARS`. Not `repr`, which repeats a UnicodeError's whole string."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate cannot be printed
    return text if len(text) <= _DESCRIBE_MAX_CHARS else text[: _DESCRIBE_MAX_CHARS - 1] + "…"


def _file_path(db: peewee.Database) -> str | None:
    """The file of a SQLite database; None for other engines and in-memory or URI databases."""
    if not isinstance(db, peewee.SqliteDatabase) or db.database.startswith(("file:", ":memory:")) or not db.database:
        return None
    return db.database


class _WatchedFile:
    """The SQLite file the writer has open, and what has become of its path since.

    Its first bytes are read through a descriptor SQLite has open, never a new one: closing any
    descriptor of a file releases every POSIX lock the process holds on it (fcntl(2)), SQLite's
    own included, and another process could then write under this one's feet."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            st = os.stat(path)
            self.identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            self.identity = None  # gone already: the next look follows the path
        self._fd: int | None = None

    def change(self) -> str | None:
        """None while the file at the path is this one; else "deleted", "replaced" (another file
        is there) or "overwritten" (this file, no longer starting as a SQLite database does:
        `cp` or `>` onto it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None  # unreadable to us: the write itself will tell
        if (st.st_dev, st.st_ino) != self.identity:
            return "replaced"
        if self._header() != SQLITE_HEADER:
            return "overwritten"
        return None

    def _header(self) -> bytes:
        fd = self._descriptor()
        if fd is not None:
            return os.pread(fd, len(SQLITE_HEADER), 0)
        try:  # no descriptor of it is open here, so no lock of this process can be lost by closing one
            with open(self.path, "rb") as f:
                return f.read(len(SQLITE_HEADER))
        except OSError:
            return SQLITE_HEADER  # unreadable to us: the write itself will tell

    def _descriptor(self) -> int | None:
        if self._fd is not None and _identity_of(self._fd) == self.identity:
            return self._fd
        self._fd = next(iter(self._descriptors()), None)  # None before SQLite has opened it
        return self._fd

    def _descriptors(self) -> list[int]:
        fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
        try:
            fds = [int(name) for name in os.listdir(fd_dir)]
        except OSError:
            return []
        return [fd for fd in fds if _identity_of(fd) == self.identity]

    def divert(self) -> None:
        """Points this process's descriptors of the file at an anonymous temporary file. Closing a
        SQLite connection checkpoints its WAL into the database file, and Python before 3.12
        cannot switch that off (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE): a file overwritten in place by
        the user would get the old database's pages written into it."""
        with tempfile.TemporaryFile() as scratch:
            for fd in self._descriptors():
                os.dup2(scratch.fileno(), fd)


def _identity_of(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _clear_leftovers(path: str | None) -> bool:
    """Removes the WAL and shared-memory files of a SQLite file that is no longer at `path`. A WAL
    still holding pages (its checkpoint failed) is kept under another name, never deleted."""
    if path is None:
        return True
    try:
        wal = path + "-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            kept = f"{wal}.{int(time.time())}.orphaned"
            os.replace(wal, kept)
            log.warning("llm-metrics: the WAL of the database file that was at %s is kept as %s", path, kept)
        for leftover in (wal, path + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    except OSError:
        return False  # the directory takes no change now: tried again before a file is opened there
    return True


def _is_migration_error(exc: Exception) -> bool:
    """A schema upgrade refused or failed (no backup could be made, a newer schema, a step that
    failed): trying again at once would fail the same way."""
    from migrations import MigrationError  # migrations never imports storage's writer: no cycle

    return isinstance(exc, MigrationError)
