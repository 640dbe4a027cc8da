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
from tests.conftest import count_rows, read_drops, refusing_new_files
from tests.test_migrations_safety import make_original

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}


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
    while not read_drops(proxy.db_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    stored, drops = count_rows(proxy.db_path), read_drops(proxy.db_path)
    assert set(drops) == {"queue_full"}
    assert stored + drops["queue_full"] == 32  # every call: stored, or counted in the database
    text = report(proxy.db_path)
    assert f"{stored} requests" in text
    assert f"{drops['queue_full']} row(s) dropped by the proxy (never stored: queue_full {drops['queue_full']})" in text
    overview = json.loads(report(proxy.db_path, "--format", "json"))["overview"]
    assert overview["dropped_rows"]["row_count"] == drops["queue_full"]
    proxy.stop()
    assert dropped_in_log(proxy.log()) == drops["queue_full"]
    assert read_drops(proxy.db_path) == drops  # stored once, not again at exit
    assert "counted in this log only" not in proxy.log()


def count_rows_unlocked(con) -> int:
    return con.execute("SELECT count(*) FROM completion_requests").fetchone()[0]


def integrity(path) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def summary(log: str) -> str:
    """The metering's last line of counts: "N call(s) recorded in ..., M row(s) dropped (...)"."""
    return [line for line in log.splitlines() if "call(s) recorded in" in line][-1]


@pytest.mark.parametrize("leftovers", ["main file only", "with its -wal and -shm"])
def test_database_deleted_while_running_gets_a_new_file_with_exactly_the_new_rows(start_proxy, upstream, leftovers):
    proxy = start_proxy()
    send(proxy, upstream, 3)
    assert wait_for(proxy.db_path, 3) == 3
    for suffix in ("",) if leftovers == "main file only" else ("", "-wal", "-shm"):
        proxy.db_path.with_name(proxy.db_path.name + suffix).unlink()
    send(proxy, upstream, 5)
    assert wait_for(proxy.db_path, 5) == 5  # a new file, migrated, holding the new rows
    proxy.stop()
    assert count_rows(proxy.db_path) == 5 and integrity(proxy.db_path) == "ok"  # the old WAL was not read into it
    log = proxy.log()
    assert log.count("was deleted or moved away") == 1
    assert oct(proxy.db_path.stat().st_mode & 0o777) == "0o600"
    assert "8 call(s) recorded" in summary(log) and "(3 of them in a file since deleted or replaced there)" in summary(log)


def _overwrite_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:  # the same file, new contents: what `cp notes.txt metrics.db` does
        f.truncate(0)
        f.write(data)


def _move_over(path: Path, data: bytes) -> None:
    other = path.with_name("notes.txt")
    other.write_bytes(data)
    other.replace(path)  # what `mv notes.txt metrics.db` does


@pytest.mark.parametrize("replace", [_move_over, _overwrite_in_place], ids=["moved over it", "written over it in place"])
def test_database_replaced_by_a_non_sqlite_file_is_never_written_and_its_rows_are_counted(
        start_proxy, upstream, replace):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    send(proxy, upstream, 3)
    assert wait_for(proxy.db_path, 3) == 3
    notes = b"my notes, not a database\n" * 100
    replace(proxy.db_path, notes)
    latencies = send(proxy, upstream, 5)
    time.sleep(2.5)  # several attempts to write them
    assert max(latencies) < 1.0
    assert proxy.db_path.read_bytes() == notes
    proxy.stop()
    assert proxy.db_path.read_bytes() == notes  # not at exit either (no checkpoint into it)
    log = proxy.log()
    assert log.count("is not a SQLite database") == 1
    # What it wrote, and what it could not: the 5 rows waited, and are counted at the end.
    assert "3 call(s) recorded" in summary(log) and "5 row(s) dropped (0 counted in dropped_rows)" in summary(log)
    assert "counted in this log only, not in the database (unwritten_at_shutdown: 5)" in log


def test_database_replaced_by_another_database_is_migrated_and_written_keeping_its_rows(start_proxy, upstream):
    proxy = start_proxy("--set", "llm_metrics_log_calls=false")
    send(proxy, upstream, 3)
    assert wait_for(proxy.db_path, 3) == 3
    _move_over(proxy.db_path, b"my notes, not a database\n")
    send(proxy, upstream, 4)  # these wait: the file is not a database
    time.sleep(1)
    other = proxy.db_path.with_name("original.db")
    make_original(other, 7)  # the original project's schema: upgraded when it is found there
    other.replace(proxy.db_path)
    assert wait_for(proxy.db_path, 7 + 4) == 11
    send(proxy, upstream, 2)
    assert wait_for(proxy.db_path, 13) == 13
    proxy.stop()
    assert count_rows(proxy.db_path) == 13 and integrity(proxy.db_path) == "ok"
    log = proxy.log()
    assert log.count("was replaced by another file") == 1 and log.count("is not a SQLite database") == 1
    assert "9 call(s) recorded" in summary(log) and "(3 of them in a file since deleted or replaced there)" in summary(log)
    assert dropped_in_log(log) == 0
    assert list((proxy.db_path.parent / "backups").glob("metrics.db.*.backup"))  # a verified backup first


def test_database_deleted_where_no_new_one_can_be_made_keeps_rows_within_the_buffer_and_says_so_once(
        start_proxy, upstream, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "metrics.db"
    proxy = start_proxy("--set", f"llm_metrics_db={db}", "--set", "llm_metrics_queue_size=5",
                        "--set", "llm_metrics_log_calls=false")
    send(proxy, upstream, 3)
    assert wait_for(db, 3) == 3
    db.unlink()  # as `rm metrics.db` does: its -wal and -shm stay
    with refusing_new_files(data):
        latencies = send(proxy, upstream, 10)
        time.sleep(2.5)  # several attempts to make a new file
        assert not db.exists()
        log = proxy.log()
        assert log.count("was deleted or moved away") == 1
        assert log.count("no new one can be made there") == 1
    assert max(latencies) < 1.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _drops_stored(db):
        time.sleep(0.2)
    proxy.stop()
    stored, drops = count_rows(db), read_drops(db)
    assert integrity(db) == "ok"
    assert set(drops) == {"queue_full"} and stored + drops["queue_full"] == 10  # each call stored or counted
    log = proxy.log()
    assert f"{3 + stored} call(s) recorded" in summary(log)
    assert dropped_in_log(log) == drops["queue_full"]


def _drops_stored(path) -> bool:
    try:
        return bool(read_drops(path))
    except sqlite3.Error:  # no file yet, or one not migrated yet
        return False


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
    # Fill the file system to the last byte; unbuffered, so that closing it has nothing left to write.
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
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
    assert sum(read_drops(db).values()) == dropped  # in the database too, once there was room
