"""Shared fixtures: a fake upstream and real `mitmdump -s addon/llm_metrics.py` processes."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "addon" / "llm_metrics.py"
SHARED = ROOT.parent / "shared"
MITMDUMP = Path(sys.executable).with_name("mitmdump")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """One real mitmdump process with the addon (or bare), its own confdir and SQLite file."""

    def __init__(self, workdir: Path, *extra_args: str, wait: bool = True, new_session: bool = False,
                 scripts_before: Sequence[Path] = (), addon: bool = True, env_unset: Sequence[str] = ()) -> None:
        """`scripts_before`: script addons loaded ahead of ours (their hooks run first);
        `addon=False`: a bare mitmdump, started the same way; `env_unset`: variables removed
        from the environment mitmdump gets."""
        self.port = free_port()
        self.addon = addon
        self.confdir = workdir / "confdir"
        self.db_path = workdir / "metrics.db"
        self.log_path = workdir / "mitmdump.log"
        # mitmproxy mishandles one option given twice with --set: give the database once.
        db_arg = next((a for a in extra_args if a.startswith("llm_metrics_db=")), None)
        if db_arg is None and addon:
            extra_args = ("--set", f"llm_metrics_db={self.db_path}", *extra_args)
        elif db_arg is not None:
            self.db_path = Path(db_arg.split("=", 1)[1])
        scripts = [*scripts_before, *([ADDON] if addon else [])]
        args = [
            str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
            *(arg for script in scripts for arg in ("-s", str(script))),
            "--set", f"confdir={self.confdir}",
            "--set", "flow_detail=0",
            *extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k not in env_unset}
        self._log = open(self.log_path, "wb")
        # new_session: a process group of its own, as a terminal or a service manager starts it
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                     start_new_session=new_session)
        if wait:
            self.wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def wait_ready(self, timeout: float = 20.0, addon_line: bool = True) -> None:
        """Until mitmdump listens and (with the addon, unless `addon_line` is false) the addon
        has said it records."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self.proc.returncode}:\n{self.log()}")
            # mitmproxy 12 may open the listener a few ms before the addon's configure has
            # opened the database: wait for both.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if not (self.addon and addon_line) or "llm-metrics: recording LLM calls" in self.log():
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"mitmdump did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metering_pid(self) -> int | None:
        """The addon's metering process (addon/worker.py), a child of mitmdump."""
        pids = self.metering_pids()
        return pids[0] if pids else None

    def metering_pids(self) -> list[int]:
        """Every metering process of this mitmdump, oldest first."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == self.proc.pid and b"addon.worker" in cmdline:
                found.append((int(stat[stat.rindex(")") + 2 :].split()[19]), int(entry)))  # by start time
        return [pid for _, pid in sorted(found)]

    def rows(self, expected: int = 1, timeout: float = 10.0) -> list[dict]:
        """Rows in insertion order, waiting until at least `expected` are there."""
        deadline = time.monotonic() + timeout
        while True:
            found = read_rows(self.db_path)
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        """Its exit code; -9 when it did not exit within `timeout` (by default the addon's own
        bound on its stop and 15 s more, so a slow machine's stop is not cut short) and was killed."""
        if timeout is None:
            from addon.llm_metrics import CLOSE_TIMEOUT_S  # mitmproxy: imported where a proxy runs, as below

            timeout = CLOSE_TIMEOUT_S + 15
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextmanager
def running_addon(tmp_path: Path, **options):
    """The addon under mitmproxy's test context (`taddons`), recording to `tmp_path/m.db` without
    per-call lines; `options` are more of its options. Its `done` runs on the way out."""
    from mitmproxy.test import taddons

    from addon.llm_metrics import LLMMetrics

    addon = LLMMetrics()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, llm_metrics_db=str(tmp_path / "m.db"), llm_metrics_log_calls=False, **options)
        yield addon
        addon.done()


def wait_until(condition: Callable[[], object], timeout: float = 20.0, every: float = 0.02) -> bool:
    """Whether `condition()` turns true within `timeout` seconds, asked every `every` seconds:
    `assert wait_until(...)` where it must, instead of a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def process_gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether process `pid` exits within `timeout` (a zombie not yet reaped counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rindex(")") + 2 :].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def read_rows(location: Path | str) -> list[dict]:
    """`completion_requests` in insertion order: from a SQLite file, read-only ([] while the file
    or the table is not there yet), or from a database server's URL."""
    try:
        return _query(location, "SELECT * FROM completion_requests ORDER BY id")
    except sqlite3.OperationalError:  # read-only: a file not there yet is not made
        return []


def read_drops(location: Path | str) -> dict[str, int]:
    """`dropped_rows` summed by reason ({} when there are none), from a SQLite file or a server's URL."""
    return {r["reason"]: int(r["n"]) for r in _query(location, "SELECT reason, sum(row_count) AS n FROM dropped_rows GROUP BY reason")}


def count_rows(location: Path | str, where: str | None = None) -> int:
    """Rows of `completion_requests` (that match `where`), in a SQLite file or at a server's URL."""
    condition = f" WHERE {where}" if where else ""
    return _query(location, f"SELECT count(*) AS n FROM completion_requests{condition}")[0]["n"]


def _query(location: Path | str, sql: str) -> list[dict]:
    if "://" in str(location):
        from storage import open_database

        db = open_database(str(location))
        try:
            cursor = db.execute_sql(sql)
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            db.close()
    con = sqlite3.connect(f"file:{location}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql)]
    finally:
        con.close()


@contextmanager
def refusing_new_files(directory):
    """The directory takes no new file: the immutable flag as root (who ignores modes), else mode 0500."""
    if os.geteuid() == 0:
        result = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot set the immutable flag here: {result.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)


@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def tls_upstream(tmp_path):
    with FakeUpstream(tls_dir=tmp_path) as server:
        yield server


@pytest.fixture
def start_proxy(tmp_path):
    started: list[Proxy] = []

    def start(*extra_args: str, name: str = "proxy", **options) -> Proxy:
        """`options`: Proxy's keyword arguments (wait, new_session, scripts_before, addon, env_unset)."""
        workdir = tmp_path / name
        workdir.mkdir()
        proxy = Proxy(workdir, *extra_args, **options)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(start_proxy):
    return start_proxy()


# -- PostgreSQL ----------------------------------------------------------------------------
# Tests get a database of their own on the server at 127.0.0.1:5432 (trust auth). Where no
# server answers they are skipped with the reason shown, unless LLM_METRICS_REQUIRE_POSTGRES=1
# (CI sets it), when that is a failure.

PG_ADMIN_URL = os.environ.get("LLM_METRICS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL.replace("postgresql://", "postgres://", 1), autocommit=True, connect_timeout=3)


@pytest.fixture
def pg_url():
    import uuid

    try:
        admin = _pg_admin()
    except Exception as exc:
        if os.environ.get("LLM_METRICS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here but not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {exc}")
    name = f"lmp_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception:
        pass  # a test that stopped the server restarts it; a leftover test database is harmless


@pytest.fixture
def own_pg(tmp_path):
    """A PostgreSQL server of this test's own (tests/pg_cluster.py) that it may stop, start,
    freeze and thaw: faults are never made on the shared server."""
    from tests.pg_cluster import PgCluster

    cluster = PgCluster(tmp_path)
    yield cluster
    cluster.close()
