"""Many proxies, one PostgreSQL database: real mitmdump processes under concurrent load."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from storage import open_database
from tests.clients import httpx
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


def pg_rows(url: str) -> int:
    db = open_database(url)
    try:
        return db.execute_sql("SELECT count(*) FROM completion_requests").fetchone()[0]
    finally:
        db.close()


def wait_rows(url: str, expected: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (found := pg_rows(url)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def send(proxy, upstream, n: int, stream_every: int = 3, errors: list | None = None) -> None:
    client = httpx.Client(proxy=proxy.url, timeout=30)
    for i in range(n):
        body = dict(CHAT, stream=(i % stream_every == 0))
        try:
            response = client.post(f"{upstream.base_url}/chat/completions", json=body)
            assert response.status_code == 200
        except Exception as exc:  # collected: an assertion in a thread would vanish
            (errors if errors is not None else []).append(repr(exc))
    client.close()


def test_three_proxies_start_together_one_migrates_and_all_rows_land(start_proxy, upstream, pg_url):
    proxies = [start_proxy("--set", f"llm_metrics_db={pg_url}", name=f"p{i}", wait=False) for i in range(3)]
    for proxy in proxies:
        proxy.wait_ready()
    logs = [p.log() for p in proxies]
    assert sum("schema upgraded to version" in log for log in logs) == 1, logs
    db = open_database(pg_url)
    versions = [r[0] for r in db.execute_sql("SELECT version FROM schema_version ORDER BY version")]
    db.close()
    assert versions == sorted(set(versions)) and versions[0] == 1

    errors: list[str] = []
    threads = [threading.Thread(target=send, args=(p, upstream, 40, 3, errors)) for p in proxies for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wait_rows(pg_url, 360) == 360
    for proxy in proxies:
        proxy.stop()
    assert pg_rows(pg_url) == 360


def test_server_restart_mid_load_loses_no_row_within_the_buffer_and_counts_drops(start_proxy, upstream, pg_cluster):
    """On a server of the test's own: stopping the shared one would fail every other test using it."""
    url = pg_cluster.url
    upstream.scenarios["default"] = Scenario(words=("a", "b"))
    roomy = start_proxy("--set", f"llm_metrics_db={url}", name="roomy")
    tight = start_proxy("--set", f"llm_metrics_db={url}", "--set", "llm_metrics_queue_size=5", name="tight")
    send(roomy, upstream, 10)
    assert wait_rows(url, 10) == 10
    pg_cluster.stop()
    try:
        errors: list[str] = []
        send(roomy, upstream, 60, errors=errors)  # traffic is unaffected while the store is away
        send(tight, upstream, 30, errors=errors)
        assert errors == []
    finally:
        pg_cluster.start()
    # roomy kept all 60 in its buffer; tight kept what fits (a batch in flight plus its queue of 5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (pg_rows_safe(url) or 0) < 70:
        time.sleep(0.5)
    roomy.stop()
    tight.stop()
    total = pg_rows(url)
    dropped = _dropped(tight.log())
    assert _dropped(roomy.log()) == 0
    assert total == 10 + 60 + (30 - dropped)
    assert dropped > 0  # the tight buffer overflowed, and said so


def pg_rows_safe(url: str) -> int | None:
    try:
        return pg_rows(url)
    except Exception:
        return None


def _dropped(log: str) -> int:
    import re

    found = re.findall(r"(\d+) row\(s\) dropped", log)
    return int(found[-1]) if found else 0


def pg_drops(url: str) -> dict[str, int]:
    db = open_database(url)
    try:
        return {r: int(n) for r, n in db.execute_sql("SELECT reason, sum(row_count) FROM dropped_rows GROUP BY reason")}
    finally:
        db.close()


def test_overflow_while_the_table_is_locked_is_stored_as_drops_and_reported(start_proxy, upstream, pg_url):
    import json
    import sys

    import psycopg

    proxy = start_proxy("--set", f"llm_metrics_db={pg_url}", "--set", "llm_metrics_queue_size=5")
    locker = psycopg.connect(pg_url)
    locker.execute("LOCK TABLE completion_requests IN EXCLUSIVE MODE")  # inserts wait; reads do not
    try:
        errors: list[str] = []
        send(proxy, upstream, 30, errors=errors)  # traffic is unaffected while the writer waits
        assert errors == []
        assert pg_rows(pg_url) == 0
    finally:
        locker.commit()
        locker.close()
    # Rows and drop counts land in several transactions once the lock is gone.
    deadline = time.monotonic() + 30
    while pg_rows(pg_url) + sum(pg_drops(pg_url).values()) < 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    stored, drops = pg_rows(pg_url), pg_drops(pg_url)
    assert set(drops) == {"queue_full"} and stored + drops["queue_full"] == 30
    result = subprocess.run([sys.executable, "-m", "reports", "--db", pg_url, "--format", "json"],
                            cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["overview"]["dropped_rows"]["row_count"] == drops["queue_full"]
    proxy.stop()
    assert _dropped(proxy.log()) == drops["queue_full"] and pg_drops(pg_url) == drops
