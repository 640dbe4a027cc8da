"""Many proxies, one PostgreSQL database: real mitmdump processes under concurrent load."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from storage import open_database
from tests.clients import httpx
from tests.conftest import count_rows, process_gone, read_drops, wait_until
from tests.upstream import Scenario

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


def wait_rows(url: str, expected: int, timeout: float = 30) -> int:
    """Rows stored, once `expected` are or at `timeout`; meanwhile the server may still be away,
    or the table not made yet."""
    deadline = time.monotonic() + timeout
    while (found := pg_rows_safe(url) or 0) < expected and time.monotonic() < deadline:
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
    assert count_rows(pg_url) == 360


def test_server_restart_mid_load_loses_no_row_within_the_buffer_and_counts_drops(start_proxy, upstream, own_pg):
    upstream.scenarios["default"] = Scenario(words=("a", "b"))
    url = own_pg.create_database("metrics")
    roomy = start_proxy("--set", f"llm_metrics_db={url}", name="roomy")
    tight = start_proxy("--set", f"llm_metrics_db={url}", "--set", "llm_metrics_queue_size=5", name="tight")
    send(roomy, upstream, 10)
    assert wait_rows(url, 10) == 10
    own_pg.stop()
    try:
        errors: list[str] = []
        send(roomy, upstream, 60, errors=errors)  # traffic is unaffected while the store is away
        send(tight, upstream, 30, errors=errors)
        assert errors == []
    finally:
        own_pg.start()
    # roomy kept all 60 in its buffer; tight kept what fits (a batch in flight plus its queue of 5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (pg_rows_safe(url) or 0) < 70:
        time.sleep(0.5)
    roomy.stop()
    tight.stop()
    total = count_rows(url)
    dropped = _dropped(tight.log())
    assert _dropped(roomy.log()) == 0
    assert total == 10 + 60 + (30 - dropped)
    assert dropped > 0  # the tight buffer overflowed, and said so
    assert read_drops(url) == {"queue_full": dropped}  # stored once the server was back


def _started_line(log: str) -> list[str]:
    return [line for line in log.splitlines() if "the database server cannot be reached" in line]


@pytest.mark.parametrize("worker", [True, False], ids=["metering process", "metering in mitmproxy's process"])
def test_proxy_started_while_the_server_is_down_serves_calls_and_stores_them_once_it_is_up(
        start_proxy, upstream, own_pg, worker):
    url = own_pg.create_database("metrics")
    own_pg.stop()
    proxy = start_proxy("--set", f"llm_metrics_db={url}", "--set", "llm_metrics_log_calls=false",
                        "--set", f"llm_metrics_worker={str(worker).lower()}")
    assert len(_started_line(proxy.log())) == 1  # it starts, and says why rows will wait
    errors: list[str] = []
    send(proxy, upstream, 20, errors=errors)
    assert errors == []
    own_pg.start()
    assert wait_rows(url, 20) == 20  # migrated by the metering process once it could, then written
    proxy.stop()
    log = proxy.log()
    assert count_rows(url) == 20 and read_drops(url) == {}
    assert "20 call(s) recorded" in log and _dropped(log) == 0


def test_proxy_started_while_the_server_hangs_starts_within_the_connect_timeout(start_proxy, upstream, own_pg):
    url = own_pg.create_database("metrics")
    own_pg.freeze()
    try:
        started = time.monotonic()
        proxy = start_proxy("--set", f"llm_metrics_db={url}", "--set", "llm_metrics_log_calls=false")
        assert time.monotonic() - started < 20
        assert len(_started_line(proxy.log())) == 1
        errors: list[str] = []
        send(proxy, upstream, 10, errors=errors)
        assert errors == []
    finally:
        own_pg.thaw()
    assert wait_rows(url, 10, timeout=60) == 10
    proxy.stop()
    assert "10 call(s) recorded" in proxy.log()


def test_server_hanging_mid_load_delays_rows_not_traffic(start_proxy, upstream, own_pg):
    url = own_pg.create_database("metrics")
    proxy = start_proxy("--set", f"llm_metrics_db={url}", "--set", "llm_metrics_log_calls=false")
    send(proxy, upstream, 5)
    assert wait_rows(url, 5) == 5
    own_pg.freeze()  # the writer's next statement waits for an answer that does not come
    try:
        errors: list[str] = []
        started = time.monotonic()
        send(proxy, upstream, 30, errors=errors)
        assert errors == [] and time.monotonic() - started < 15  # traffic does not wait for it
    finally:
        own_pg.thaw()
    assert wait_rows(url, 35, timeout=60) == 35
    proxy.stop()
    assert "35 call(s) recorded" in proxy.log() and _dropped(proxy.log()) == 0


@pytest.mark.parametrize("queue_size", [10_000, 5])
def test_metering_process_restarted_while_the_server_is_down_keeps_calls_within_the_buffer(
        start_proxy, upstream, own_pg, queue_size):
    url = own_pg.create_database("metrics")
    proxy = start_proxy("--set", f"llm_metrics_db={url}", "--set", "llm_metrics_log_calls=false",
                        "--set", f"llm_metrics_queue_size={queue_size}")
    send(proxy, upstream, 5)
    assert wait_rows(url, 5) == 5
    time.sleep(0.5)  # its progress report says all 5 are stored: nothing is lost with it
    own_pg.stop()
    try:
        first = proxy.metering_pid()
        os.kill(first, signal.SIGKILL)
        assert process_gone(first)
        assert wait_until(lambda: proxy.metering_pid() not in (None, first), timeout=15)
        errors: list[str] = []
        send(proxy, upstream, 20, errors=errors)  # into the new process, while the server is down
        assert errors == []
        time.sleep(1)
        assert proxy.metering_pid() not in (None, first)  # it keeps running: no restart loop
    finally:
        own_pg.start()
    deadline = time.monotonic() + 60
    while (pg_rows_safe(url) or 0) + sum(read_drops(url).values()) < 25 and time.monotonic() < deadline:
        time.sleep(0.3)
    proxy.stop()
    stored, drops, log = count_rows(url), read_drops(url), proxy.log()
    if queue_size == 10_000:
        assert (stored, drops) == (25, {})  # every call, none dropped
    else:
        assert set(drops) == {"queue_full"} and stored + drops["queue_full"] == 25  # each stored or counted
    assert f"{stored - 5} call(s) recorded" in log  # the new process's summary: what it wrote
    assert _dropped(log) == sum(drops.values())
    assert "ended unexpectedly" in log and log.count("the metering process ended") == 1


def test_proxy_pointed_at_a_database_that_does_not_exist_fails_at_start_with_one_line(start_proxy, own_pg):
    proxy = start_proxy("--set", f"llm_metrics_db={own_pg.url('no_such_db')}", wait=False)
    assert proxy.proc.wait(30) != 0  # a mistake in the URL is said at once, not waited for
    lines = [line for line in proxy.log().splitlines() if "llm-metrics:" in line]
    assert len(lines) == 1 and "cannot use llm_metrics_db" in lines[0] and "does not exist" in lines[0], lines


def pg_rows_safe(url: str) -> int | None:
    try:
        return count_rows(url)
    except Exception:
        return None


def _dropped(log: str) -> int:
    import re

    found = re.findall(r"(\d+) row\(s\) dropped", log)
    return int(found[-1]) if found else 0




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
        assert count_rows(pg_url) == 0
    finally:
        locker.commit()
        locker.close()
    # Rows and drop counts land in several transactions once the lock is gone.
    deadline = time.monotonic() + 30
    while count_rows(pg_url) + sum(read_drops(pg_url).values()) < 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    stored, drops = count_rows(pg_url), read_drops(pg_url)
    assert set(drops) == {"queue_full"} and stored + drops["queue_full"] == 30
    result = subprocess.run([sys.executable, "-m", "reports", "--db", pg_url, "--format", "json"],
                            cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["overview"]["dropped_rows"]["row_count"] == drops["queue_full"]
    proxy.stop()
    assert _dropped(proxy.log()) == drops["queue_full"] and read_drops(pg_url) == drops
