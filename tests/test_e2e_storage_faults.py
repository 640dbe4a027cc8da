"""Storage faults under a real mitmdump: traffic is unaffected, rows wait in the bounded buffer
and land when the fault clears; past the buffer they are dropped and counted, never silently:
in the log, and in `dropped_rows` once the database is writable again, where reports show them.

The faults are real: a lock held by another process, the immutable flag (read-only even for
open descriptors), a full file system (a small tmpfs, root only), the file deleted."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clients import httpx

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


def count_rows(path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]
    finally:
        con.close()


def wait_for(path, expected: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (n := count_rows(path)) >= expected:
                return n
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    return count_rows(path)


def send(proxy, upstream, n: int) -> list[float]:
    """Sends n calls; returns each one's latency as the client saw it."""
    client = httpx.Client(proxy=proxy.url, timeout=30)
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        response = client.post(f"{upstream.base_url}/chat/completions", json=dict(BODY, stream=i % 2 == 0))
        assert response.status_code == 200
        latencies.append(time.perf_counter() - started)
    return latencies


def dropped_in_db(path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return dict(con.execute("SELECT reason, sum(row_count) FROM dropped_rows GROUP BY reason").fetchall())
    finally:
        con.close()


def report(path, *args: str) -> str:
    """`python -m reports` as a user runs it, piped."""
    result = subprocess.run([sys.executable, "-m", "reports", "--db", str(path), *args],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def dropped_in_log(log: str) -> int:
    found = re.findall(r"(\d+) row\(s\) dropped", log)
    return int(found[-1]) if found else 0


def test_database_locked_for_seconds_delays_rows_not_traffic(start_proxy, upstream):
    proxy = start_proxy()
    send(proxy, upstream, 2)
    assert wait_for(proxy.db_path, 2) == 2
    blocker = sqlite3.connect(proxy.db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        latencies = send(proxy, upstream, 20)
        time.sleep(6)  # longer than SQLite's busy timeout: the writer must retry, not give up
        assert count_rows_unlocked(blocker) == 2
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert max(latencies) < 1.0, latencies  # traffic never waited for the database
    assert wait_for(proxy.db_path, 22) == 22
    proxy.stop()
    assert dropped_in_log(proxy.log()) == 0


def test_overflow_while_locked_is_stored_as_drops_once_the_lock_is_released(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_queue_size=5")
    send(proxy, upstream, 2)
    assert wait_for(proxy.db_path, 2) == 2
    blocker = sqlite3.connect(proxy.db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        latencies = send(proxy, upstream, 30)  # the buffer holds 5 (and the batch being retried)
        assert dropped_in_log(proxy.log()) > 0
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert max(latencies) < 1.0, latencies
    deadline = time.monotonic() + 30
    while not dropped_in_db(proxy.db_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    stored, drops = count_rows(proxy.db_path), dropped_in_db(proxy.db_path)
    assert set(drops) == {"queue_full"}
    assert stored + drops["queue_full"] == 32  # every call: stored, or counted in the database
    text = report(proxy.db_path)
    assert f"{stored} requests" in text
    assert f"{drops['queue_full']} row(s) dropped by the proxy (never stored: queue_full {drops['queue_full']})" in text
    overview = json.loads(report(proxy.db_path, "--format", "json"))["overview"]
    assert overview["dropped_rows"]["row_count"] == drops["queue_full"]
    proxy.stop()
    assert dropped_in_log(proxy.log()) == drops["queue_full"]
    assert dropped_in_db(proxy.db_path) == drops  # stored once, not again at exit
    assert "counted in this log only" not in proxy.log()


def count_rows_unlocked(con) -> int:
    return con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]


def test_database_deleted_while_running_is_recreated_and_rows_keep_landing(start_proxy, upstream):
    proxy = start_proxy()
    send(proxy, upstream, 3)
    assert wait_for(proxy.db_path, 3) == 3
    for suffix in ("", "-wal", "-shm"):
        path = proxy.db_path.with_name(proxy.db_path.name + suffix)
        if path.exists():
            path.unlink()
    send(proxy, upstream, 5)
    assert wait_for(proxy.db_path, 5) == 5  # a new file, migrated, holding the new rows
    assert "was deleted or replaced" in proxy.log()
    assert oct(proxy.db_path.stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def tmpfs(tmp_path):
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a read-only or full file system needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _immutable(paths, on: bool) -> None:
    for path in paths:
        if path.exists():
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, capture_output=True)


def test_database_made_read_only_holds_rows_until_it_is_writable_again(start_proxy, upstream):
    """Read-only for real: the immutable flag fails writes even through open descriptors."""
    proxy = start_proxy()
    send(proxy, upstream, 2)
    assert wait_for(proxy.db_path, 2) == 2
    files = [proxy.db_path.with_name(proxy.db_path.name + s) for s in ("", "-wal")]
    try:
        _immutable(files, True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot set the immutable flag here: {exc}")
    try:
        latencies = send(proxy, upstream, 15)
        time.sleep(1.5)
        assert "will retry" in proxy.log()  # the writer saw the fault
    finally:
        _immutable(files, False)
    assert max(latencies) < 1.0
    assert wait_for(proxy.db_path, 17) == 17
    proxy.stop()
    assert dropped_in_log(proxy.log()) == 0


def test_full_file_system_holds_rows_and_overflow_is_dropped_and_counted(start_proxy, upstream, tmpfs):
    db = tmpfs / "metrics.db"
    proxy = start_proxy("--set", f"llm_metrics_db={db}", "--set", "llm_metrics_queue_size=10")
    send(proxy, upstream, 2)
    assert wait_for(db, 2) == 2
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:  # fill the file system to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    try:
        latencies = send(proxy, upstream, 40)  # far more than the buffer of 10 holds
        time.sleep(1)
    finally:
        filler.unlink()
    assert max(latencies) < 1.0
    proxy.stop()
    stored = count_rows(db)
    dropped = dropped_in_log(proxy.log())
    assert dropped > 0  # the overflow was counted...
    assert stored + dropped == 42  # ...and every row is either stored or counted
    assert sum(dropped_in_db(db).values()) == dropped  # in the database too, once there was room
