"""Report filters cannot inject SQL: any string as a filter value selects exactly the rows whose
column equals it, and the database is unchanged afterwards (property-based)."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from migrations import upgrade
from reports.cli import main
from storage import CompletionRequest, open_database

NASTY = ["x' OR '1'='1", "'; DROP TABLE completion_requests; --", 'a"b', "%", "_", "\\", "gpt-a", "ü ✓", ""]


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inj") / "m.db"
    db = open_database(str(path))
    upgrade(db)
    rows = [{"timestamp": f"2026-11-01T00:00:{i:02d}.000000Z", "success": True, "status_code": 200, "response_time_ms": 10 + i,
             "model": NASTY[i % len(NASTY)], "provider": NASTY[(i + 3) % len(NASTY)], "origin": NASTY[(i + 5) % len(NASTY)],
             "is_streaming": False} for i in range(45)]
    with db.atomic():
        CompletionRequest.insert_many(rows).execute(db)
    db.close()
    return path


def expected(path, column: str, value: str) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT count(*) FROM completion_requests WHERE {column} = ?", (value,)).fetchone()[0]
    finally:
        con.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.sampled_from(NASTY), st.text(max_size=30)),
       flag=st.sampled_from([("--model", "model"), ("--provider", "provider"), ("--origin", "origin")]))
def test_any_filter_value_selects_exactly_its_rows_and_changes_nothing(db_path, value, flag):
    option, column = flag
    if value.startswith("-") or "\x00" in value:
        return  # argparse would read it as an option; NUL cannot be passed in argv
    before = db_path.read_bytes()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--db", str(db_path), "--format", "json", option, value])
    want = expected(db_path, column, value)
    if want == 0:
        assert code == 0  # nothing selected: said so, not an error
    else:
        assert code == 0 and json.loads(buf.getvalue())["overview"]["requests"] == want
    assert db_path.read_bytes() == before
