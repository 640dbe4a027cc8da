"""The background writer on real SQLite files: batches, waits out locks, counts what it drops."""

from __future__ import annotations

import sqlite3
import threading
import time

from migrations import upgrade
from storage import RowWriter, open_database


def make_row(i: int) -> dict:
    return {
        "timestamp": f"2026-11-22T10:00:{i % 60:02d}.000000Z",
        "success": True,
        "status_code": 200,
        "response_time_ms": i,
        "model": "m",
        "is_streaming": False,
    }


def count(path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]
    finally:
        con.close()


def fresh_db(tmp_path):
    path = tmp_path / "m.db"
    db = open_database(str(path))
    upgrade(db)
    return path, db


def test_close_writes_every_queued_row(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, batch_size=50)
    writer.start()
    for i in range(1234):
        assert writer.submit(make_row(i))
    writer.close()
    assert count(path) == 1234
    assert (writer.written, writer.dropped) == (1234, 0)


def test_full_queue_drops_and_counts_rows_without_blocking(tmp_path):
    path, db = fresh_db(tmp_path)
    writer = RowWriter(db, queue_size=10)  # not started: nothing drains the queue
    started = time.perf_counter()
    accepted = sum(writer.submit(make_row(i)) for i in range(25))
    assert time.perf_counter() - started < 0.5
    assert (accepted, writer.dropped) == (10, 15)
    writer.start()
    writer.close()
    assert count(path) == 10
    assert writer.written + writer.dropped == 25


def test_rows_wait_while_another_process_holds_the_lock_then_land(tmp_path):
    path, db = fresh_db(tmp_path)
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    writer = RowWriter(db)
    writer.start()
    for i in range(5):
        writer.submit(make_row(i))
    released = threading.Timer(6.0, lambda: blocker.execute("COMMIT"))  # past busy_timeout (5 s)
    released.start()
    writer.close(timeout=30)
    released.join()
    blocker.close()
    assert count(path) == 5
    assert writer.write_errors >= 1 and writer.dropped == 0


def test_rows_still_unwritable_at_close_deadline_are_counted_as_dropped(tmp_path):
    path, db = fresh_db(tmp_path)
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    writer = RowWriter(db)
    writer.start()
    for i in range(3):
        writer.submit(make_row(i))
    writer.close(timeout=1)
    blocker.execute("COMMIT")
    blocker.close()
    assert writer.dropped == 3 and writer.written == 0
    assert count(path) == 0
