"""The background writer on real SQLite files (and PostgreSQL, for the values it refuses): batches,
waits out locks, counts what it drops and stores those counts in `dropped_rows` once the database
takes writes again."""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import sqlite3
import string
import threading
import time

import peewee
import pytest

from migrations import upgrade
from storage import RowWriter, open_database
from storage.models import CompletionRequest
from tests.conftest import count_rows, read_rows, refusing_new_files, wait_until


def make_row(i: int) -> dict:
    return {
        "timestamp": f"2026-11-22T10:00:{i % 60:02d}.000000Z",
        "success": True,
        "status_code": 200,
        "response_time_ms": i,
        "model": "m",
        "is_streaming": False,
    }


BUSY_TIMEOUT_S = 0.3  # SQLite's wait for another connection's lock, lowered from the proxy's own


def fresh_db(tmp_path):
    path = tmp_path / "m.db"
    db = open_database(str(path), busy_timeout_s=BUSY_TIMEOUT_S)
    upgrade(db)
    return path, db


def test_close_writes_every_queued_row(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_size=50)
    writer.start()
    for i in range(1234):
        assert writer.submit(make_row(i))
    writer.close()
    assert count_rows(path) == 1234
    assert (writer.written, writer.dropped) == (1234, 0)


def test_close_wakes_an_idle_writer_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr("storage.writer._IDLE_S", 60.0)  # how long the idle thread waits for rows unless woken
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db)
    writer.start()
    assert writer.submit(make_row(1))
    assert wait_until(lambda: writer.written == 1)  # the thread waits for the next rows now
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 10
    assert count_rows(path) == 1

def test_full_queue_drops_and_counts_rows_without_blocking(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, queue_size=10)  # not started: nothing drains the queue
    started = time.perf_counter()
    accepted = sum(writer.submit(make_row(i)) for i in range(25))
    assert time.perf_counter() - started < 0.5
    assert (accepted, writer.dropped) == (10, 15)
    writer.start()
    writer.close()
    assert count_rows(path) == 10
    assert writer.written + writer.dropped == 25


RETRYING = "will retry"  # the writer's log line for a failed attempt at a batch


def test_rows_wait_while_another_process_holds_the_lock_then_land(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    writer = RowWriter(db)
    writer.start()
    for i in range(5):
        writer.submit(make_row(i))
    released = threading.Timer(BUSY_TIMEOUT_S * 4, lambda: blocker.execute("COMMIT"))  # past the busy timeout
    released.start()
    with caplog.at_level(logging.WARNING, logger="storage.writer"):
        writer.close(timeout=30)
    released.join()
    blocker.close()
    assert count_rows(path) == 5
    assert RETRYING in caplog.text and writer.dropped == 0


def drop_records(path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(
            "SELECT reason, row_count, first_dropped_at, last_dropped_at, hostname, pid FROM dropped_rows ORDER BY id"
        ).fetchall()
    finally:
        con.close()


def test_drops_during_a_lock_are_stored_exactly_once_when_the_database_is_writable_again(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, queue_size=3)
    accepted = sum(writer.submit(make_row(i)) for i in range(5))  # not started: 2 dropped
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING, logger="storage.writer"):
        writer.start()
        # The writer took the 3 rows, and the 2 drops, into its attempt; it failed and the drops went back.
        assert wait_until(lambda: RETRYING in caplog.text)
    accepted += sum(writer.submit(make_row(i)) for i in range(5, 9))  # 3 fit the queue, 1 dropped
    blocker.execute("COMMIT")
    blocker.close()
    writer.close(timeout=30)
    records = drop_records(path)
    assert (accepted, writer.dropped, writer.drops_recorded) == (6, 3, 3)
    assert count_rows(path) == 6
    assert sum(r[1] for r in records) == 3  # exactly once: neither lost with the failed attempt nor doubled
    assert {r[0] for r in records} == {"queue_full"}
    assert all(r[2] <= r[3] and r[3].endswith("Z") and len(r[3]) == 27 for r in records)
    assert all((r[4], r[5]) == (socket.gethostname(), os.getpid()) for r in records)


def test_drops_with_no_rows_after_them_are_stored_on_their_own(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db)
    writer.start()
    with caplog.at_level(logging.ERROR):
        assert writer.submit(["not", "a", "row"])  # a bug, not an outage: never retried
        assert wait_until(lambda: writer.drops_recorded == 1)
    assert [r[:2] for r in drop_records(path)] == [("write_error", 1)]  # stored while the writer runs
    writer.close()
    assert [r[:2] for r in drop_records(path)] == [("write_error", 1)]
    assert count_rows(path) == 0


def test_drops_counted_at_close_are_stored_by_reason_in_a_last_attempt(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, queue_size=1)  # never started: nothing is written before close
    for i in range(3):
        writer.submit(make_row(i))
    writer.close(timeout=0.5)
    assert sorted(r[:2] for r in drop_records(path)) == [("queue_full", 2), ("unwritten_at_shutdown", 1)]
    assert (writer.dropped, writer.drops_recorded, count_rows(path)) == (3, 3, 0)


def test_rows_still_unwritable_at_close_deadline_are_counted_as_dropped(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    writer = RowWriter(db)
    writer.start()
    for i in range(3):
        writer.submit(make_row(i))
    with caplog.at_level(logging.WARNING):
        writer.close(timeout=1)
    blocker.execute("COMMIT")
    blocker.close()
    assert writer.dropped == 3 and writer.written == 0
    assert count_rows(path) == 0
    # The database never took writes again: the count is in the log only, and says so.
    assert drop_records(path) == [] and writer.drops_recorded == 0
    assert "3 dropped row(s) are counted in this log only, not in the database (unwritten_at_shutdown: 3)" in caplog.text


def _recording_batch_sizes(writer: RowWriter) -> list[int]:
    """Spies on the writer's real INSERT: each call is one transaction."""
    sizes: list[int] = []
    write = writer._insert.write

    def spy(db, rows):
        write(db, rows)
        sizes.append(len(rows))

    writer._insert.write = spy
    return sizes


def test_rows_arriving_within_the_window_share_one_transaction(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_window=0.5)
    sizes = _recording_batch_sizes(writer)
    writer.start()
    writer.submit(make_row(1))
    time.sleep(0.1)  # well inside the window opened by the first row
    writer.submit(make_row(2))
    deadline = time.monotonic() + 5
    while writer.written < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()
    assert sizes == [2]
    assert count_rows(path) == 2


def test_without_a_window_each_lone_row_is_written_at_once(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_window=0)
    sizes = _recording_batch_sizes(writer)
    writer.start()
    for i in range(3):
        writer.submit(make_row(i))
        deadline = time.monotonic() + 5
        while writer.written < i + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    writer.close()
    assert sizes == [1, 1, 1]


def test_close_does_not_wait_out_the_window(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_window=30)
    writer.start()
    writer.submit(make_row(1))
    time.sleep(0.3)  # the writer now waits in its window for more rows
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5
    assert count_rows(path) == 1


def test_every_column_is_stored_as_given(tmp_path):
    path, db = fresh_db(tmp_path)
    row = {}
    for i, field in enumerate(f for f in CompletionRequest._meta.sorted_fields if f.name != "id"):
        if isinstance(field, peewee.BooleanField):
            row[field.column_name] = i % 2 == 0
        elif isinstance(field, peewee.TextField):
            row[field.column_name] = f"{field.column_name}-é-{i}"
        elif isinstance(field, peewee.IntegerField):
            row[field.column_name] = 1000 + i
        else:
            row[field.column_name] = i + 0.25
    writer = RowWriter(db)
    writer.start()
    writer.submit(row)
    writer.close()
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    stored = dict(con.execute("SELECT * FROM completion_requests").fetchone())
    con.close()
    assert stored.pop("id") == 1
    assert stored == {k: (int(v) if isinstance(v, bool) else v) for k, v in row.items()}


def test_a_row_the_database_refuses_costs_only_itself(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_window=0.5)  # all five rows in one batch
    writer.start()
    rows = [make_row(i) for i in range(5)]
    rows[1]["model"] = {"not": "bindable"}  # the driver cannot bind it
    rows[3]["prompt_tokens"] = 2**70  # beyond SQLite's 64-bit INTEGER
    for row in rows:
        writer.submit(row)
    writer.close()
    assert (writer.written, writer.dropped) == (3, 2)
    con = sqlite3.connect(path)
    try:
        stored = [r[0] for r in con.execute("SELECT response_time_ms FROM completion_requests ORDER BY id")]
        drops = con.execute("SELECT reason, sum(row_count) FROM dropped_rows GROUP BY reason").fetchall()
    finally:
        con.close()
    assert stored == [0, 2, 4]
    assert drops == [("bad_row", 2)]


def test_after_a_refused_row_the_writer_goes_on_writing(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_window=0)
    writer.start()
    writer.submit({**make_row(0), "model": ["x"]})
    deadline = time.monotonic() + 5
    while writer.dropped < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(1, 4):
        writer.submit(make_row(i))
    writer.close()
    assert (writer.written, writer.dropped) == (3, 1)
    assert count_rows(path) == 3


def test_the_same_refusal_on_many_rows_is_logged_once(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_window=0.5)
    for i in range(20):
        writer.submit({**make_row(i), "model": {"not": "bindable"}})
    writer.start()
    with caplog.at_level("ERROR", logger="storage.writer"):
        writer.close()
    assert (writer.written, writer.dropped) == (0, 20)
    assert len([r for r in caplog.records if "refused a row" in r.getMessage()]) == 1


# -- values the database refuses: the row alone is dropped, on SQLite and PostgreSQL -----------

_RANDOM = random.Random(17)
# Incompressible: PostgreSQL compresses a long value before indexing it, and a repeated letter
# would fit the index after all.
_LONG_TEXT = "".join(_RANDOM.choices(string.ascii_letters + string.digits, k=3000))

REFUSED = {
    # PostgreSQL: "index row size 3032 exceeds btree version 4 maximum 2704 for index report_calls"
    # (SQLSTATE 54000, which psycopg files under OperationalError, as it does a lost connection).
    "index-entry-too-large": ("postgresql", {"origin": _LONG_TEXT}),
    "model-too-large-for-the-index": ("postgresql", {"model": _LONG_TEXT}),
    "nul-character": ("postgresql", {"model": "gpt\x00x"}),  # PostgreSQL text cannot hold NUL
    "count-beyond-32-bits": ("postgresql", {"prompt_tokens": 2**40}),  # integer out of range (22003)
    "count-beyond-64-bits": ("sqlite", {"prompt_tokens": 2**70}),
    "lone-surrogate-pg": ("postgresql", {"origin": "Caf\udce9Bot"}),  # no encoding can write it
    "lone-surrogate-sqlite": ("sqlite", {"origin": "Caf\udce9Bot"}),
}


def _database(kind: str, tmp_path, pg_url_factory):
    if kind == "sqlite":
        return fresh_db(tmp_path)[1]
    db = open_database(pg_url_factory())
    upgrade(db)
    return db


def _stored(db) -> tuple[list[int], dict[str, int]]:
    db.connect(reuse_if_open=True)
    try:
        times = [r[0] for r in db.execute_sql("SELECT response_time_ms FROM completion_requests ORDER BY id")]
        drops = dict(db.execute_sql("SELECT reason, sum(row_count) FROM dropped_rows GROUP BY reason").fetchall())
    finally:
        db.close()
    return times, {reason: int(n) for reason, n in drops.items()}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_value_the_database_refuses_costs_only_its_row_and_never_the_rows_after_it(case, tmp_path, request):
    kind, values = REFUSED[case]
    db = _database(kind, tmp_path, lambda: request.getfixturevalue("pg_url"))
    writer = RowWriter(db, batch_window=0)
    writer.start()
    writer.submit({**make_row(0), **values})  # alone in its batch: nothing else to blame
    assert wait_until(lambda: writer.dropped == 1, timeout=10)
    for i in range(1, 51):
        writer.submit(make_row(i))
    writer.close(timeout=20)
    assert (writer.written, writer.dropped, writer.drops_recorded) == (50, 1, 1)
    times, drops = _stored(db)
    assert times == list(range(1, 51))
    assert drops == {"bad_row": 1}


@pytest.mark.parametrize("case", ["index-entry-too-large", "lone-surrogate-pg"])
def test_a_refused_row_in_a_batch_costs_only_itself_on_postgresql(case, pg_url):
    db = open_database(pg_url)
    upgrade(db)
    writer = RowWriter(db, batch_window=0.5)  # the five rows in one batch
    rows = [make_row(i) for i in range(5)]
    rows[2].update(REFUSED[case][1])
    for row in rows:
        writer.submit(row)
    writer.start()
    writer.close(timeout=20)
    assert (writer.written, writer.dropped) == (4, 1)
    assert _stored(db) == ([0, 1, 3, 4], {"bad_row": 1})


def test_a_refused_rows_log_line_is_one_short_line_without_the_value(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_window=0)
    offending = "Caf\udce9Bot/1.0 " + "x" * 5000
    writer.submit({**make_row(0), "origin": offending})
    with caplog.at_level(logging.ERROR, logger="storage.writer"):  # before the thread can write
        writer.start()
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "storage.writer"]
    assert len(lines) == 1
    assert "refused a row" in lines[0] and "please report" not in lines[0]
    assert len(lines[0]) < 300 and "\n" not in lines[0] and "xxxxxxxxxx" not in lines[0]
    lines[0].encode("utf-8")  # printable: no lone surrogate
    assert drop_records(path)[0][:2] == ("bad_row", 1)


# -- the database cannot be opened yet, or its file is deleted or replaced ------------------


def prepared(path):
    """What the proxy passes as `connect`: open (making the file if needed) and migrate."""

    def connect():
        db = open_database(str(path), busy_timeout_s=BUSY_TIMEOUT_S)
        upgrade(db)
        return db

    return connect


def test_rows_wait_while_the_database_cannot_be_opened_then_land(tmp_path, caplog):
    path = tmp_path / "m.db"
    attempts = []

    def connect():
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise peewee.OperationalError("connection refused (the server is away)")
        return prepared(path)()

    writer = RowWriter(None, connect=connect)
    with caplog.at_level(logging.WARNING, logger="storage.writer"):
        writer.start()  # returns at once: the writer's thread opens the database
        for i in range(5):
            assert writer.submit(make_row(i))
        assert wait_until(lambda: writer.written == 5)
        writer.close()
    assert count_rows(path) == 5 and (writer.written, writer.dropped) == (5, 0)
    assert len([r for r in caplog.records if "connection refused" in r.getMessage()]) == 1  # said once
    assert all(b - a < 2.5 for a, b in itertools.pairwise(attempts))  # bounded backoff


def _write_and_wait(writer, rows) -> None:
    target = writer.written + len(rows)
    for row in rows:
        assert writer.submit(row)
    assert wait_until(lambda: writer.written >= target)


def test_file_overwritten_in_place_by_a_non_sqlite_file_is_never_written(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    db.execute_sql("PRAGMA wal_autocheckpoint=0")  # the rows stay in the WAL until the connection closes
    db.close()
    writer = RowWriter(db, connect=prepared(path))
    writer.start()
    _write_and_wait(writer, [make_row(i) for i in range(3)])
    text = b"notes, not a database\n" * 10
    with open(path, "r+b") as f:  # the same file, new contents (as `cp notes.txt m.db` does)
        f.truncate(0)
        f.write(text)
    with caplog.at_level(logging.WARNING, logger="storage.writer"):
        for i in range(3, 5):
            writer.submit(make_row(i))
        time.sleep(1)
        writer.close(timeout=1)
    assert path.read_bytes() == text  # neither the new rows nor the old WAL went into it
    assert (writer.written, writer.dropped) == (3, 2)
    assert len([r for r in caplog.records if "not a SQLite database" in r.getMessage()]) == 1


@pytest.mark.slow  # waits out several retries
def test_file_replaced_by_a_non_sqlite_file_is_never_written_and_said_once(tmp_path, caplog):
    path, db = fresh_db(tmp_path)
    db.close()
    writer = RowWriter(db, connect=prepared(path))
    writer.start()
    _write_and_wait(writer, [make_row(i) for i in range(3)])
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"notes, not a database\n")
    notes.replace(path)
    with caplog.at_level(logging.WARNING, logger="storage.writer"):
        for i in range(3, 7):
            writer.submit(make_row(i))
        time.sleep(2.5)  # more than one retry
        writer.close(timeout=1)
    assert path.read_bytes() == b"notes, not a database\n"
    assert (writer.written, writer.dropped) == (3, 4)
    assert len([r for r in caplog.records if "not a SQLite database" in r.getMessage()]) == 1


def test_file_replaced_by_another_database_is_followed_and_keeps_its_own_rows(tmp_path):
    path, db = fresh_db(tmp_path)
    db.close()
    writer = RowWriter(db, connect=prepared(path))
    writer.start()
    _write_and_wait(writer, [make_row(i) for i in range(3)])  # uncheckpointed, in m.db-wal
    other_path = tmp_path / "other.db"
    other = open_database(str(other_path))
    upgrade(other)
    other.execute_sql("INSERT INTO completion_requests (timestamp, success, response_time_ms, is_streaming) "
                      "VALUES ('2026-01-01T00:00:00.000000Z', 1, 7, 0)")
    other.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    other.close()
    other_path.replace(path)
    _write_and_wait(writer, [make_row(i) for i in range(3, 5)])
    writer.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert [r[0] for r in con.execute("SELECT response_time_ms FROM completion_requests ORDER BY id")] == [7, 3, 4]
    finally:
        con.close()


@pytest.mark.parametrize("leftovers", ["main file only", "with its -wal and -shm"])
def test_file_deleted_gets_a_new_file_with_only_the_new_rows(tmp_path, leftovers):
    path, db = fresh_db(tmp_path)
    db.close()
    writer = RowWriter(db, connect=prepared(path))
    writer.start()
    _write_and_wait(writer, [make_row(i) for i in range(3)])
    for suffix in ("",) if leftovers == "main file only" else ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink()
    _write_and_wait(writer, [make_row(i) for i in range(3, 5)])
    writer.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert [r[0] for r in con.execute("SELECT response_time_ms FROM completion_requests ORDER BY id")] == [3, 4]
    finally:
        con.close()
    assert writer.written == 5


def test_rows_committed_after_the_file_was_deleted_are_written_again_into_the_new_file(tmp_path):
    path, db = fresh_db(tmp_path)
    db.close()
    writer = RowWriter(db, connect=prepared(path), batch_window=0)
    write = writer._insert.write
    deleted = []

    def deleting_first(db, rows):  # the file goes between the writer's look at it and its commit
        if rows[0]["response_time_ms"] == 3 and not deleted:
            path.unlink()
            deleted.append(True)
        write(db, rows)

    writer._insert.write = deleting_first
    writer.start()
    _write_and_wait(writer, [make_row(i) for i in range(3)])
    _write_and_wait(writer, [make_row(3)])
    writer.close()
    assert [r["response_time_ms"] for r in read_rows(path)] == [3]
    assert writer.written == 4  # 3 into the first file while it was there, 1 into the new one


@pytest.mark.slow  # waits out several retries
def test_file_deleted_where_no_new_one_can_be_made_holds_rows_says_so_once_then_lands_them(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    path, db = fresh_db(folder)
    db.close()
    writer = RowWriter(db, connect=prepared(path))
    writer.start()
    _write_and_wait(writer, [make_row(i) for i in range(3)])
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="storage.writer"), refusing_new_files(folder):
        for i in range(3, 6):
            writer.submit(make_row(i))
        time.sleep(2.5)  # more than one retry
        assert writer.written == 3 and not path.exists()
    assert wait_until(lambda: writer.written == 6)
    writer.close()
    assert [r["response_time_ms"] for r in read_rows(path)] == [3, 4, 5]
    cannot = [r for r in caplog.records if "no new one can be made" in r.getMessage()]
    assert len(cannot) == 1, [r.getMessage() for r in caplog.records]


def test_file_moved_away_keeps_every_row_written_to_it_and_new_rows_go_to_a_new_file(tmp_path):
    path, db = fresh_db(tmp_path)
    db.close()
    writer = RowWriter(db, connect=prepared(path))
    writer.start()
    _write_and_wait(writer, [make_row(i) for i in range(3)])  # in m.db-wal, not yet in the file
    moved = tmp_path / "kept.db"
    path.replace(moved)  # as `mv m.db kept.db` does, its -wal staying behind under the old name
    _write_and_wait(writer, [make_row(i) for i in range(3, 5)])
    writer.close()
    assert [r["response_time_ms"] for r in read_rows(moved)] == [0, 1, 2]  # its WAL went into it
    assert [r["response_time_ms"] for r in read_rows(path)] == [3, 4]
