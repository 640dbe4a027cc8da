"""PostgreSQL as the store: same schema, same migrations, same safety, on the real server."""

from __future__ import annotations

import dataclasses

import peewee
import pytest

import migrations.runner as runner
from migrations import CURRENT_SCHEMA_VERSION, STEPS, MigrationError, current_version, upgrade
from migrations.schema import snapshot
from storage import CompletionRequest, RowWriter, open_database


def row(i: int) -> dict:
    return {"timestamp": f"2026-11-22T10:00:00.{i:06d}Z", "success": True, "status_code": 200,
            "response_time_ms": i, "model": "m", "is_streaming": False}


def test_new_postgres_database_gets_the_same_schema_as_sqlite(pg_url, tmp_path):
    pg = open_database(pg_url)
    result = upgrade(pg)
    assert [s.version for s in result.applied] == list(range(1, CURRENT_SCHEMA_VERSION + 1))
    assert result.backup is None  # file backups are SQLite's; pg_dump is the user's (README)
    lite = open_database(str(tmp_path / "m.db"))
    upgrade(lite)
    assert snapshot(pg) == snapshot(lite)
    assert upgrade(pg).applied == []
    pg.close()


@pytest.mark.parametrize("failing", [s.version for s in STEPS])
def test_failure_in_a_step_on_postgres_rolls_everything_back(pg_url, monkeypatch, failing):
    db = open_database(pg_url)
    if failing > 1:
        with monkeypatch.context() as m:
            m.setattr(runner, "STEPS", STEPS[: failing - 1])
            m.setattr(runner, "CURRENT_SCHEMA_VERSION", failing - 1)
            upgrade(db)
        with db.bind_ctx([CompletionRequest]):
            db.execute_sql("INSERT INTO completion_requests (timestamp, success, status_code, response_time_ms, is_streaming) "
                           "VALUES ('2026-01-01T00:00:00.000000Z', true, 200, 5, false)")
    before = (sorted(db.get_tables()), snapshot(db))
    real = STEPS[failing - 1]

    def broken(database, migrator):
        real.apply(database, migrator)
        raise RuntimeError("injected failure")

    patched = list(STEPS)
    patched[failing - 1] = dataclasses.replace(real, apply=broken)
    monkeypatch.setattr(runner, "STEPS", patched)
    with pytest.raises(MigrationError, match="exactly as before"):
        upgrade(db)
    assert (sorted(db.get_tables()), snapshot(db)) == before
    assert current_version(db) == failing - 1
    db.close()


def test_writer_batches_rows_into_postgres(pg_url):
    db = open_database(pg_url)
    upgrade(db)
    writer = RowWriter(db, batch_size=100)
    writer.start()
    for i in range(1000):
        writer.submit(row(i))
    writer.close()
    check = open_database(pg_url)
    assert check.execute_sql("SELECT count(*), sum(response_time_ms) FROM completion_requests").fetchone() == (1000, sum(range(1000)))
    assert (writer.written, writer.dropped) == (1000, 0)
    check.close()


def test_writer_stores_drop_counts_in_postgres_once(pg_url):
    db = open_database(pg_url)
    upgrade(db)
    writer = RowWriter(db, queue_size=2)
    accepted = sum(writer.submit(row(i)) for i in range(5))  # not started yet: 3 dropped
    writer.start()
    writer.close()
    check = open_database(pg_url)
    assert check.execute_sql("SELECT count(*) FROM completion_requests").fetchone() == (accepted,) == (2,)
    records = check.execute_sql("SELECT reason, row_count, first_dropped_at <= last_dropped_at FROM dropped_rows").fetchall()
    assert records == [("queue_full", 3, True)]
    assert (writer.dropped, writer.drops_recorded) == (3, 3)
    check.close()


def test_a_count_beyond_postgres_integer_range_costs_only_its_row(pg_url):
    db = open_database(pg_url)
    upgrade(db)
    writer = RowWriter(db, batch_window=0.5)  # the three rows share one batch
    rows = [row(i) for i in range(3)]
    rows[1]["prompt_tokens"] = 2**31  # one past PostgreSQL's `integer`
    for r in rows:
        writer.submit(r)
    writer.start()
    writer.close()
    check = open_database(pg_url)
    stored = check.execute_sql("SELECT response_time_ms FROM completion_requests ORDER BY id").fetchall()
    drops = check.execute_sql("SELECT reason, row_count FROM dropped_rows").fetchall()
    check.close()
    assert [r[0] for r in stored] == [rows[0]["response_time_ms"], rows[2]["response_time_ms"]]
    assert drops == [("bad_row", 1)]
    assert (writer.written, writer.dropped) == (2, 1)


def test_url_with_a_bad_host_fails_clearly():
    db = open_database("postgresql://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(peewee.OperationalError):
        upgrade(db)
