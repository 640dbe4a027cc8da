"""storage.db: a database location as it may be shown (no password), and a server URL opened
without the URL parser's message, which can quote part of the password."""

from __future__ import annotations

import sqlite3
import time

import peewee
import pytest

from storage.db import connect_server, display_location, hide_password, open_database


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("postgresql://metrics:s3cretPW@db.internal:5432/llm", "postgresql://metrics:***@db.internal:5432/llm"),
        ("postgresql://metrics@db.internal/llm", "postgresql://metrics@db.internal/llm"),
        ("postgresql://db.internal/llm?password=s3cretPW&sslmode=require",
         "postgresql://db.internal/llm?password=***&sslmode=require"),
        ("postgresql://m@db/llm?sslmode=require&sslpassword=s3cretPW", "postgresql://m@db/llm?sslmode=require&sslpassword=***"),
        ("postgresql://metrics:p@ss/w#rd@db:5432/llm", "postgresql://metrics:***@db:5432/llm"),  # not percent-encoded
        ("postgresql://metrics:p%40ss@db/llm", "postgresql://metrics:***@db/llm"),
        ("mysql://root:s3cretPW@localhost/llm", "mysql://root:***@localhost/llm"),
        ("/home/me/.llm_metrics_proxy/metrics.db", "/home/me/.llm_metrics_proxy/metrics.db"),
        ("sqlite:////tmp/m.db", "sqlite:////tmp/m.db"),
    ],
)
def test_display_location_masks_the_password_and_keeps_the_rest(location, shown):
    assert display_location(location) == shown


@pytest.mark.parametrize(
    ("location", "forms"),
    [
        ("postgresql://metrics:s3cretPW@db/llm", ["s3cretPW"]),
        ("postgresql://metrics@db/llm?password=s3cretPW", ["s3cretPW"]),
        ("postgresql://metrics:s3cret%2FPW@db/llm", ["s3cret%2FPW", "s3cret/PW"]),  # a driver may echo it decoded
    ],
)
def test_hide_password_removes_every_form_of_the_password_from_a_message(location, forms):
    message = f"connection to {location} failed for {', '.join(forms)}; also postgresql://other:an0therPW@h/db"
    hidden = hide_password(message, location)
    for secret in [*forms, "an0therPW"]:
        assert secret not in hidden
    assert display_location(location) in hidden


def test_unparsable_database_url_is_refused_without_quoting_the_password():
    # urllib reads "p" of "p/ssw0rd" as the port and says so: "…cast to integer value as 'p'".
    location = "postgresql://metrics:p/ssw0rdXY@db:5432/llm"
    with pytest.raises(ValueError) as refused:
        connect_server(location)
    assert "p/ssw0rdXY" not in str(refused.value) and "'p'" not in str(refused.value)
    assert "postgresql://metrics:***@db:5432/llm" in str(refused.value)
    assert "percent-encode" in str(refused.value)


@pytest.mark.parametrize(("given", "waits_ms"), [({}, 5000), ({"busy_timeout_s": 0.25}, 250)])
def test_a_sqlite_statement_waits_out_another_connections_lock_for_the_busy_timeout(tmp_path, given, waits_ms):
    db = open_database(str(tmp_path / "m.db"), **given)
    try:
        assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == waits_ms
    finally:
        db.close()


def test_a_lock_held_past_the_busy_timeout_fails_the_statement_after_it(tmp_path):
    path = tmp_path / "m.db"
    db = open_database(str(path), busy_timeout_s=0.2)
    db.execute_sql("CREATE TABLE t (x)")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    try:
        with pytest.raises(peewee.OperationalError, match="locked"):
            db.execute_sql("INSERT INTO t VALUES (1)")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        db.close()
    assert 0.15 < time.monotonic() - started < 4  # waited about the timeout, not the default's 5 s
