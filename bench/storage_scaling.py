"""Measures what docs/scaling.md quotes: writer rows/s and bytes per row, SQLite and PostgreSQL.

    .venv/bin/python bench/storage_scaling.py [--rows N]

Needs a PostgreSQL server at 127.0.0.1:5432 (trust auth, database `test`) for the second line.
Its SQLite file and PostgreSQL database are scratch: both are removed at the end.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid

import psycopg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from migrations import upgrade
from storage import RowWriter, open_database


def row(i):
    return {"timestamp": f"2026-11-{1+i%28:02d}T{i%24:02d}:00:00.{i%1000000:06d}Z", "success": i % 20 != 0, "status_code": 200,
            "response_time_ms": 100 + i % 5000, "model": f"model-{i%20}", "request_model": f"model-{i%20}", "provider": "openai",
            "host": "api.openai.com", "path": "/v1/chat/completions", "origin": "OpenAI/Python", "is_streaming": i % 2 == 0,
            "max_tokens": 256, "temperature": 0.7, "top_p": None, "message_count": 3, "prompt_tokens": 500 + i % 300,
            "completion_tokens": 100 + i % 200, "total_tokens": 700, "cached_tokens": 0, "reasoning_tokens": 0,
            "finish_reason": "stop", "time_to_first_byte_ms": 80, "time_to_first_token_ms": 300, "time_to_last_token_ms": 900,
            "tokens_per_second": 55.5, "chunk_count": 120, "error_type": None, "error_message": None}

def measure(location, n):
    db = open_database(location)
    upgrade(db)
    w = RowWriter(db, queue_size=n + 10)
    for i in range(n):
        w.submit(row(i))
    t = time.perf_counter()
    w.start()
    w.close(timeout=600)
    dt = time.perf_counter() - t
    return w.written, dt

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--rows", type=int, default=100_000, help="rows written into each database")
n = parser.parse_args().rows
d = tempfile.mkdtemp()
try:
    written, dt = measure(f"{d}/m.db", n)
    size = sum(os.path.getsize(f"{d}/{f}") for f in os.listdir(d) if f.startswith("m.db"))
    print(f"sqlite: {written} rows in {dt:.2f} s = {written/dt:,.0f} rows/s; {size/written:.0f} bytes/row on disk (WAL included)")
finally:
    shutil.rmtree(d, ignore_errors=True)
name = "lmp_scale_" + uuid.uuid4().hex[:8]
with psycopg.connect("postgres://postgres@127.0.0.1:5432/test", autocommit=True) as c:
    c.execute(f'CREATE DATABASE "{name}"')
try:
    written, dt = measure(f"postgresql://postgres@127.0.0.1:5432/{name}", n)
    db = open_database(f"postgresql://postgres@127.0.0.1:5432/{name}")
    size = db.execute_sql("select pg_total_relation_size('completion_requests')").fetchone()[0]
    db.close()
    print(f"postgresql: {written} rows in {dt:.2f} s = {written/dt:,.0f} rows/s; {size/written:.0f} bytes/row (table + indexes)")
finally:
    with psycopg.connect("postgres://postgres@127.0.0.1:5432/test", autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
